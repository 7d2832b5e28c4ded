//! Room membership: which local socket is in which scoped room, which bus channels that
//! makes this node subscribe, and when each subscription is confirmed.
//!
//! Membership is the one owner of "who is where" on a node. Every change happens
//! synchronously under one lock, in the order callers make them; Socket.IO calls a
//! socket's event handlers in the order its packets arrive, and the gateway changes
//! membership in the synchronous part of each handler, so a socket's joins and leaves
//! take effect in the order the client sent them. Only the *confirmation* that the bus
//! subscribed a channel is awaited afterwards.
//!
//! A socket exists for membership between [`Membership::attach`] and
//! [`Membership::detach`]; a join for a socket that is not attached (it disconnected
//! while its request was in flight) changes nothing, so nothing is ever left behind for
//! a socket that is gone. The local Socket.IO room is changed inside the same critical
//! section (the `local` callbacks), so the two views cannot drift apart.
//!
//! Membership knows nothing about Socket.IO servers: it is given the bus and the channel
//! naming, nothing else.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bus::{Bus, BusFuture, SubscribeError};
use futures_util::FutureExt;
use futures_util::future::Shared;
use rooms::{Channels, Interest, ScopedRoom};
use socketioxide::socket::Sid;

/// The bus's confirmation that a room channel is subscribed, shared by every member that
/// joined before it arrived.
pub(crate) type Confirmation = Shared<BusFuture<Result<(), SubscribeError>>>;

/// A socket, as membership knows it: its namespace and id.
pub(crate) type SocketKey = (Arc<str>, Sid);

/// Who a socket belongs to, for the per-user connection cap: (tenant, user).
pub type UserKey = (Option<Arc<str>>, Arc<str>);

/// Why a socket may not connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachRefused {
    /// The node holds as many sockets as it allows.
    #[error("this node is full ({max} connections); try again or another node")]
    NodeFull {
        /// The limit.
        max: usize,
    },
    /// The user has as many sockets as it may.
    #[error("too many connections for this user (at most {max})")]
    UserFull {
        /// The limit.
        max: usize,
    },
    /// The socket disconnected before it could be tracked.
    #[error("the socket is disconnected")]
    Gone,
}

/// How many sockets a node, and one user, may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Sockets per node (all namespaces). Default 50 000.
    pub per_node: usize,
    /// Sockets per user (per tenant and user id, all namespaces). Default 32.
    pub per_user: usize,
    /// Rooms one socket may be in, its automatic rooms included. Default 128.
    pub rooms_per_socket: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            per_node: 50_000,
            per_user: 32,
            rooms_per_socket: 128,
        }
    }
}

/// Why a join changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinRefused {
    /// The socket disconnected before its join was handled.
    #[error("the socket is disconnected")]
    Gone,
    /// The socket is already in as many rooms as the node allows.
    #[error("too many rooms: a socket may be in at most {max}")]
    TooManyRooms {
        /// The limit.
        max: usize,
    },
}

/// One attached socket.
#[derive(Debug, Default)]
struct Member {
    rooms: HashSet<ScopedRoom>,
    /// When its token expires (seconds since the epoch); 0 for never.
    expires_at: u64,
    /// Its user, when counted against the per-user cap.
    user: Option<UserKey>,
}

#[derive(Debug, Default)]
struct State {
    /// Local members per room channel.
    interest: Interest<String>,
    /// The subscribe confirmation of each channel with members.
    confirmations: HashMap<String, Confirmation>,
    /// Every attached socket and its rooms.
    members: HashMap<SocketKey, Member>,
    /// Attached sockets by token expiry, soonest first.
    expiries: BTreeSet<(u64, SocketKey)>,
    /// Attached sockets per user.
    users: HashMap<UserKey, usize>,
}

/// More channels to follow with a room's own (another server's name for it), given the
/// namespace and the room.
pub(crate) type ExtraChannels = Arc<dyn Fn(&str, &ScopedRoom) -> Vec<String> + Send + Sync>;

/// The node's room membership and the bus interest it implies.
pub struct Membership {
    bus: Arc<dyn Bus>,
    channels: Channels,
    limits: ConnectionLimits,
    state: Mutex<State>,
    extra: Option<ExtraChannels>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("channels", &self.channels)
            .field("limits", &self.limits)
            .field("extra", &self.extra.is_some())
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Membership over `bus`, naming channels with `channels`, within `limits`.
    pub(crate) fn new(bus: Arc<dyn Bus>, channels: Channels, limits: ConnectionLimits) -> Self {
        Self {
            bus,
            channels,
            limits,
            state: Mutex::default(),
            extra: None,
        }
    }

    /// Also subscribes, with each room's channel, the channels `extra` names for it (and
    /// unsubscribes them with it).
    pub(crate) fn with_extra_channels(mut self, extra: ExtraChannels) -> Self {
        self.extra = Some(extra);
        self
    }

    /// The room's channel and the extra channels that go with it.
    fn with_extras(&self, ns: &str, room: &ScopedRoom, channel: String) -> Vec<String> {
        let mut all = vec![channel];
        if let Some(extra) = &self.extra {
            all.extend(extra(ns, room));
        }
        all
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No critical section can panic half-way through an update.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of rooms (across namespaces) with at least one local member.
    pub fn room_count(&self) -> usize {
        self.lock().interest.len()
    }

    /// Number of attached sockets.
    pub fn socket_count(&self) -> usize {
        self.lock().members.len()
    }

    /// Every attached socket.
    pub(crate) fn sockets(&self) -> Vec<SocketKey> {
        self.lock().members.keys().cloned().collect()
    }

    /// The scoped rooms `socket` is in.
    pub(crate) fn rooms_of(&self, socket: &SocketKey) -> Vec<ScopedRoom> {
        self.lock()
            .members
            .get(socket)
            .map(|m| m.rooms.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether a socket of `user` would be accepted now (the connect middleware's early
    /// answer; [`Membership::attach`] decides).
    pub(crate) fn check_capacity(&self, user: Option<&UserKey>) -> Result<(), AttachRefused> {
        let st = self.lock();
        self.capacity(&st, user)
    }

    fn capacity(&self, st: &State, user: Option<&UserKey>) -> Result<(), AttachRefused> {
        if st.members.len() >= self.limits.per_node {
            return Err(AttachRefused::NodeFull {
                max: self.limits.per_node,
            });
        }
        if let Some(user) = user
            && st.users.get(user).copied().unwrap_or(0) >= self.limits.per_user
        {
            return Err(AttachRefused::UserFull {
                max: self.limits.per_user,
            });
        }
        Ok(())
    }

    /// Starts tracking `socket` of `user`, whose token expires at `expires_at` (0:
    /// never), unless the node or the user is at its connection cap.
    pub(crate) fn attach(
        &self,
        socket: SocketKey,
        expires_at: u64,
        user: Option<UserKey>,
    ) -> Result<(), AttachRefused> {
        let mut st = self.lock();
        self.capacity(&st, user.as_ref())?;
        if let Some(user) = &user {
            *st.users.entry(user.clone()).or_default() += 1;
        }
        if expires_at > 0 {
            st.expiries.insert((expires_at, socket.clone()));
        }
        st.members.insert(
            socket,
            Member {
                rooms: HashSet::new(),
                expires_at,
                user,
            },
        );
        Ok(())
    }

    /// Moves `socket`'s expiry to `expires_at` (a refreshed token). False if it is gone.
    pub(crate) fn set_expiry(&self, socket: &SocketKey, expires_at: u64) -> bool {
        let mut st = self.lock();
        let Some(member) = st.members.get_mut(socket) else {
            return false;
        };
        let old = std::mem::replace(&mut member.expires_at, expires_at);
        st.expiries.remove(&(old, socket.clone()));
        if expires_at > 0 {
            st.expiries.insert((expires_at, socket.clone()));
        }
        true
    }

    /// The attached sockets whose token expired at or before `now`.
    pub(crate) fn expired(&self, now: u64) -> Vec<SocketKey> {
        let st = self.lock();
        st.expiries
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, key)| key.clone())
            .collect()
    }

    /// Adds `socket` to `room`, subscribing the room's channel if it is the first local
    /// member, and runs `local` (the Socket.IO room change) inside the same critical
    /// section. Returns the subscription's confirmation, and whether the socket was not
    /// in the room before.
    pub(crate) fn join(
        &self,
        socket: &SocketKey,
        room: &ScopedRoom,
        local: impl FnOnce(),
    ) -> Result<(Confirmation, bool), JoinRefused> {
        let channel = self.channels.room(&socket.0, room);
        let mut st = self.lock();
        let max = self.limits.rooms_per_socket;
        let member = st.members.get_mut(socket).ok_or(JoinRefused::Gone)?;
        let newly_joined = if member.rooms.contains(room) {
            false
        } else if member.rooms.len() >= max {
            return Err(JoinRefused::TooManyRooms { max });
        } else {
            member.rooms.insert(room.clone())
        };
        local();
        let first = newly_joined && st.interest.add(channel.clone()).is_some();
        let confirmation = match st.confirmations.get(&channel) {
            // A failed subscription is retried by the next joiner.
            Some(c) if !first && !matches!(c.peek(), Some(Err(_))) => c.clone(),
            _ => {
                let c = self
                    .bus
                    .subscribe(self.with_extras(&socket.0, room, channel.clone()))
                    .shared();
                st.confirmations.insert(channel, c.clone());
                c
            }
        };
        Ok((confirmation, newly_joined))
    }

    /// Removes `socket` from `room` (running `local` inside the critical section);
    /// unsubscribes the channel after the last local member. False if it was not in it.
    pub(crate) fn leave(
        &self,
        socket: &SocketKey,
        room: &ScopedRoom,
        local: impl FnOnce(),
    ) -> bool {
        let (was_member, unsubscribe) = {
            let mut st = self.lock();
            let was_member = st
                .members
                .get_mut(socket)
                .is_some_and(|m| m.rooms.remove(room));
            local();
            let channel = self.channels.room(&socket.0, room);
            let unsubscribe = was_member.then(|| release(&mut st, channel)).flatten();
            (was_member, unsubscribe)
        };
        self.unsubscribe(
            unsubscribe
                .map(|c| self.with_extras(&socket.0, room, c))
                .unwrap_or_default(),
        );
        was_member
    }

    /// Forgets `socket` and every room it was in, which it returns; later joins for it
    /// change nothing.
    pub(crate) fn detach(&self, socket: &SocketKey) -> Vec<ScopedRoom> {
        let (unsubscribe, rooms): (Vec<String>, _) = {
            let mut st = self.lock();
            let Some(member) = st.members.remove(socket) else {
                return Vec::new();
            };
            st.expiries.remove(&(member.expires_at, socket.clone()));
            if let Some(user) = &member.user
                && let Some(count) = st.users.get_mut(user)
            {
                *count -= 1;
                if *count == 0 {
                    st.users.remove(user);
                }
            }
            let unsubscribe = member
                .rooms
                .iter()
                .filter_map(|room| {
                    release(&mut st, self.channels.room(&socket.0, room))
                        .map(|c| self.with_extras(&socket.0, room, c))
                })
                .flatten()
                .collect();
            (unsubscribe, member.rooms)
        };
        self.unsubscribe(unsubscribe);
        rooms.into_iter().collect()
    }

    fn unsubscribe(&self, channels: Vec<String>) {
        if channels.is_empty() {
            return;
        }
        // Ordered now (see `Bus`); only the confirmation is awaited in the background.
        let fut = self.bus.unsubscribe(channels);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::warn!(error = %e, "unsubscribe failed; the bus will drop it on reconnect");
            }
        });
    }
}

/// One member fewer for `channel`; the channel to unsubscribe if it was the last.
fn release(st: &mut State, channel: String) -> Option<String> {
    st.interest.remove(&channel).map(|_| {
        st.confirmations.remove(&channel);
        channel
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus::MemoryHub;
    use rooms::{Room, TenantId};

    fn scoped(tenant: Option<&str>, room: &str) -> ScopedRoom {
        let tenant = tenant.map(|t| TenantId::parse(t).unwrap());
        ScopedRoom::new(tenant.as_ref(), &Room::parse(room).unwrap()).unwrap()
    }

    fn membership(max: usize) -> Membership {
        let (bus, _inbox) = MemoryHub::new().connect();
        let limits = ConnectionLimits {
            per_node: 3,
            per_user: 2,
            rooms_per_socket: max,
        };
        Membership::new(Arc::new(bus), Channels::new("t"), limits)
    }

    fn user(name: &str) -> Option<UserKey> {
        Some((Some(Arc::from("t")), Arc::from(name)))
    }

    #[test]
    fn connection_caps_per_node_and_per_user() {
        let m = membership(10);
        m.attach(key(1), 0, user("a")).unwrap();
        m.attach(key(2), 0, user("a")).unwrap();
        assert_eq!(
            m.attach(key(3), 0, user("a")),
            Err(AttachRefused::UserFull { max: 2 })
        );
        m.attach(key(3), 0, user("b")).unwrap();
        assert_eq!(
            m.attach(key(4), 0, None),
            Err(AttachRefused::NodeFull { max: 3 })
        );
        m.detach(&key(1));
        m.attach(key(4), 0, user("a")).unwrap();
    }

    fn key(n: u8) -> SocketKey {
        (Arc::from("/"), Sid::from_str(&format!("{n:016}")).unwrap())
    }

    use std::str::FromStr;

    #[tokio::test]
    async fn a_detached_socket_joins_nothing() {
        let m = membership(10);
        let room = scoped(None, "room:a");
        assert_eq!(
            m.join(&key(1), &room, || panic!("no local join")).err(),
            Some(JoinRefused::Gone)
        );
        m.attach(key(1), 0, None).unwrap();
        let (confirmation, new) = m.join(&key(1), &room, || {}).unwrap();
        confirmation.await.unwrap();
        assert!(new);
        assert_eq!(m.room_count(), 1);
        assert_eq!(m.detach(&key(1)), vec![room.clone()]);
        assert_eq!(m.room_count(), 0);
        assert!(m.join(&key(1), &room, || {}).is_err());
        assert_eq!((m.room_count(), m.socket_count()), (0, 0));
    }

    #[tokio::test]
    async fn same_room_in_two_tenants_is_two_rooms() {
        let m = membership(10);
        m.attach(key(1), 0, None).unwrap();
        m.attach(key(2), 0, None).unwrap();
        for (k, tenant) in [(key(1), "a"), (key(2), "b")] {
            m.join(&k, &scoped(Some(tenant), "user:admin"), || {})
                .unwrap()
                .0
                .await
                .unwrap();
        }
        assert_eq!(m.room_count(), 2);
        assert!(m.leave(&key(1), &scoped(Some("a"), "user:admin"), || {}));
        assert!(!m.leave(&key(1), &scoped(Some("b"), "user:admin"), || {}));
        assert_eq!(m.room_count(), 1);
    }

    #[tokio::test]
    async fn room_cap_counts_distinct_rooms() {
        let m = membership(2);
        m.attach(key(1), 0, None).unwrap();
        for (room, new) in [("room:a", true), ("room:b", true), ("room:a", false)] {
            let (confirmation, newly) = m.join(&key(1), &scoped(None, room), || {}).unwrap();
            confirmation.await.unwrap();
            assert_eq!(newly, new, "{room}");
        }
        assert_eq!(
            m.join(&key(1), &scoped(None, "room:c"), || {}).err(),
            Some(JoinRefused::TooManyRooms { max: 2 })
        );
        m.leave(&key(1), &scoped(None, "room:a"), || {});
        let joined = m.join(&key(1), &scoped(None, "room:c"), || {});
        joined.unwrap().0.await.unwrap();
    }

    #[tokio::test]
    async fn expiries_in_order_and_moved_by_refresh() {
        let m = membership(2);
        m.attach(key(1), 100, None).unwrap();
        m.attach(key(2), 50, None).unwrap();
        m.attach(key(3), 0, None).unwrap();
        assert_eq!(m.expired(49), vec![]);
        assert_eq!(m.expired(100), vec![key(2), key(1)]);
        assert!(m.set_expiry(&key(2), 200));
        assert_eq!(m.expired(150), vec![key(1)]);
        m.detach(&key(1));
        assert_eq!(m.expired(1000), vec![key(2)]);
        assert!(!m.set_expiry(&key(1), 5));
    }
}
