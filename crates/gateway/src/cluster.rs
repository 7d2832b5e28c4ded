//! The node's view of the cluster: room membership and bus interest, publishing, and the
//! dispatcher that delivers what other nodes publish.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use bus::{Bus, BusFuture, Inbox, Message, Outbox, SendError, SubscribeError};
use bytes::Bytes;
use std::time::Duration;

use envelope::{Envelope, LegacyMessage, Limits, NodeInfo};
use futures_util::future::Shared;
use futures_util::{FutureExt, StreamExt};
use rooms::{ChannelKind, Channels, Interest, Room, Target, legacy_target};
use serde::ser::{Serialize, SerializeTuple, Serializer};
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use socketioxide::operators::BroadcastOperators;
use socketioxide::socket::Sid;

use crate::adapter::BusAdapter;

pub(crate) type Confirmation = Shared<BusFuture<Result<(), SubscribeError>>>;

/// Shared state of one node: which rooms have local members, what the bus is subscribed
/// to, and the handle used to deliver to local sockets.
#[derive(Debug)]
pub struct Cluster {
    node_id: String,
    outbox: Outbox,
    limits: Limits,
    namespaces: Vec<String>,
    legacy_channel: Option<String>,
    state: Mutex<State>,
    io: OnceLock<SocketIo<BusAdapter>>,
    /// The adapter of each namespace, to route adapter requests and responses.
    adapters: Mutex<HashMap<String, Weak<BusAdapter>>>,
    /// Counters exported on `/health` and `/metrics`.
    pub stats: Stats,
}

/// Node counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sockets currently connected (all namespaces).
    pub connections: AtomicU64,
    /// Messages this node published to the bus.
    pub published: AtomicU64,
    /// Messages received from the bus and delivered to local sockets.
    pub delivered: AtomicU64,
    /// Messages from the bus that could not be decoded.
    pub rejected: AtomicU64,
    /// Publishes to the bus that failed.
    pub publish_errors: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Local members per room channel.
    interest: Interest<String>,
    /// The subscribe confirmation of each channel with members, shared by every join
    /// that needs it, so a second joiner also waits for the first joiner's SUBSCRIBE.
    confirmations: HashMap<String, Confirmation>,
    /// Rooms each local socket joined through [`Cluster::join`], to undo on disconnect.
    members: HashMap<(Arc<str>, Sid), HashSet<Room>>,
}

/// Why a join did not complete cleanly.
#[derive(Debug, thiserror::Error)]
pub enum JoinWarning {
    /// Joined locally, but the bus did not confirm the subscription: until it does,
    /// messages published on other nodes may be missed.
    #[error(
        "joined, but the cluster bus is unavailable: events from other nodes may be delayed or missed ({0})"
    )]
    BusUnavailable(SubscribeError),
}

impl Cluster {
    /// A cluster view for `node_id` over `outbox`, serving `namespaces`, listening for
    /// the legacy JSON form on `legacy_channel`.
    pub fn new(
        node_id: String,
        outbox: Outbox,
        limits: Limits,
        namespaces: Vec<String>,
        legacy_channel: Option<String>,
    ) -> Self {
        Self {
            node_id,
            outbox,
            limits,
            namespaces,
            legacy_channel,
            state: Mutex::default(),
            io: OnceLock::new(),
            adapters: Mutex::default(),
            stats: Stats::default(),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The bus.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        self.outbox.bus()
    }

    /// Channel naming.
    pub fn channels(&self) -> &Channels {
        self.outbox.channels()
    }

    /// Decoding limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Number of rooms (across namespaces) with at least one local member.
    pub fn room_count(&self) -> usize {
        self.lock().interest.len()
    }

    pub(crate) fn set_io(&self, io: SocketIo<BusAdapter>) {
        // Set once at start-up; a second call would be a programming error we ignore.
        let _ = self.io.set(io);
    }

    /// The channels every node subscribes to from the start: each namespace's broadcast
    /// channel and the legacy channel. (Adapter request/response channels are
    /// subscribed by each namespace's adapter when it starts.)
    pub fn base_channels(&self) -> Vec<String> {
        let channels = self.channels();
        let mut all: Vec<String> = self
            .namespaces
            .iter()
            .map(|ns| channels.namespace(ns))
            .collect();
        all.extend(self.legacy_channel.iter().cloned());
        all
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No critical section can panic half-way through an update.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that socket `sid` of namespace `ns` is in `room`, subscribing the room's
    /// channel if it is the first local member. Returns the subscription's confirmation,
    /// shared by every member that joins before it is confirmed.
    pub(crate) fn track_join(&self, ns: &str, sid: Sid, room: &Room) -> Confirmation {
        let channel = self.channels().room(ns, room);
        let mut st = self.lock();
        let newly_joined = st
            .members
            .entry((Arc::from(ns), sid))
            .or_default()
            .insert(room.clone());
        let first = newly_joined && st.interest.add(channel.clone()).is_some();
        match st.confirmations.get(&channel) {
            // A failed subscription is retried by the next joiner.
            Some(c) if !first && !matches!(c.peek(), Some(Err(_))) => c.clone(),
            _ => {
                let c = self.bus().subscribe(vec![channel.clone()]).shared();
                st.confirmations.insert(channel, c.clone());
                c
            }
        }
    }

    /// Records that socket `sid` left `room`; unsubscribes the channel after the last
    /// local member.
    pub(crate) fn track_leave(&self, ns: &str, sid: Sid, room: &Room) {
        let unsubscribe = {
            let mut st = self.lock();
            let key = (Arc::from(ns), sid);
            let was_member = st.members.get_mut(&key).is_some_and(|set| set.remove(room));
            if st.members.get(&key).is_some_and(HashSet::is_empty) {
                st.members.remove(&key);
            }
            was_member
                .then(|| self.release(&mut st, self.channels().room(ns, room)))
                .flatten()
        };
        self.unsubscribe(unsubscribe.into_iter().collect());
    }

    /// Adds `socket` to `room`. Returns once the bus confirmed the room's channel, so a
    /// message published anywhere after this returns reaches the socket. If the bus is
    /// down the socket still joins (local delivery works) and a warning is returned.
    pub async fn join(
        &self,
        socket: &SocketRef<BusAdapter>,
        room: &Room,
    ) -> Result<(), JoinWarning> {
        let result = self.track_join(socket.ns(), socket.id, room).await;
        if socket.connected() {
            socket.join(room.as_str().to_owned());
            // The socket may have disconnected while joining; its disconnect handler has
            // then already run, so undo the local join ourselves.
            if !socket.connected() {
                socket.leave_all();
            }
        }
        result.map_err(JoinWarning::BusUnavailable)
    }

    /// Removes `socket` from `room`; unsubscribes the channel when it was the last member.
    pub fn leave(&self, socket: &SocketRef<BusAdapter>, room: &Room) {
        socket.leave(room.as_str().to_owned());
        self.track_leave(socket.ns(), socket.id, room);
    }

    /// Forgets every room of a disconnected socket.
    pub fn leave_all(&self, ns: &str, sid: Sid) {
        let unsubscribe: Vec<String> = {
            let mut st = self.lock();
            let rooms = st.members.remove(&(Arc::from(ns), sid)).unwrap_or_default();
            rooms
                .iter()
                .filter_map(|room| self.release(&mut st, self.channels().room(ns, room)))
                .collect()
        };
        self.unsubscribe(unsubscribe);
    }

    /// One member fewer for `channel`; the channel to unsubscribe if it was the last.
    fn release(&self, st: &mut State, channel: String) -> Option<String> {
        st.interest.remove(&channel).map(|_| {
            st.confirmations.remove(&channel);
            channel
        })
    }

    fn unsubscribe(&self, channels: Vec<String>) {
        if channels.is_empty() {
            return;
        }
        // Ordered now (see `Bus`); only the confirmation is awaited in the background.
        let fut = self.bus().unsubscribe(channels);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::warn!(error = %e, "unsubscribe failed; the bus will drop it on reconnect");
            }
        });
    }

    /// Delivers `env` to this node's sockets, then publishes it to the cluster.
    ///
    /// Local delivery does not depend on the bus, so a node keeps serving its own
    /// sockets while Redis is away; the bus error is still returned so the caller knows
    /// other nodes did not get the message.
    pub async fn publish(&self, env: &Envelope) -> Result<(), SendError> {
        let to = bus::parse_rooms(&env.to)?;
        bus::parse_rooms(&env.except)?;
        self.deliver_local(env).await;
        if env.flags.local {
            return Ok(());
        }
        self.send_to_bus(env, &to).await
    }

    /// Publishes an envelope whose rooms are already validated (`to`: its target rooms),
    /// counting the outcome.
    pub(crate) async fn send_to_bus(&self, env: &Envelope, to: &[Room]) -> Result<(), SendError> {
        match self.outbox.send_to(env, to).await {
            Ok(_) => {
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Delivers `env` to the local sockets it targets.
    pub async fn deliver_local(&self, env: &Envelope) {
        let Some(op) = self.operator(env) else { return };
        let args = Args {
            args: env.arguments(),
            attachments: &env.attachments,
        };
        if let Err(e) = op.local().emit(&env.event, &args).await {
            tracing::debug!(id = %env.id, error = %e, "some local sockets could not be reached");
        }
    }

    /// Sends `env` to its target sockets on every node (only this one with the `local`
    /// flag) and collects their acknowledgements until each socket answered or `timeout`
    /// passed. The rooms must be valid; [`Cluster::publish`] checks the same way.
    pub async fn publish_with_ack(
        &self,
        env: &Envelope,
        timeout: Duration,
    ) -> Result<Vec<AckReply>, SendError> {
        bus::parse_rooms(&env.to)?;
        bus::parse_rooms(&env.except)?;
        let Some(op) = self.operator(env) else {
            return Ok(Vec::new());
        };
        let op = if env.flags.local { op.local() } else { op };
        let args = Args {
            args: env.arguments(),
            attachments: &env.attachments,
        };
        let stream = op
            .timeout(timeout)
            .emit_with_ack::<_, Value>(&env.event, &args)
            .await
            .map_err(|e| SendError::Publish(bus::PublishError::Unavailable(e.to_string())))?;
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        Ok(StreamExt::map(stream, |(sid, result)| match result {
            Ok(data) => AckReply::Answered {
                sid: sid.to_string(),
                data,
            },
            Err(e) => AckReply::Failed {
                sid: sid.to_string(),
                error: e.to_string(),
            },
        })
        .collect()
        .await)
    }

    /// The broadcast operator for `env`'s namespace, rooms and flags; `None` (logged)
    /// when this node does not serve the namespace.
    fn operator(&self, env: &Envelope) -> Option<BroadcastOperators<BusAdapter>> {
        let io = self.io.get()?;
        let Some(op) = io.of(&env.ns) else {
            tracing::debug!(ns = %env.ns, id = %env.id, "message for a namespace this node does not serve");
            return None;
        };
        let mut op = op.broadcast();
        if !env.to.is_empty() {
            op = op.to(env.to.clone());
        }
        if !env.except.is_empty() {
            op = op.except(env.except.clone());
        }
        if env.flags.volatile {
            op = op.volatile();
        }
        Some(op)
    }

    /// Handles one message from the bus.
    pub async fn on_message(&self, msg: Message) {
        if self.legacy_channel.as_deref() == Some(&*msg.channel) {
            return self.on_legacy(&msg).await;
        }
        match self.channels().classify(&msg.channel) {
            ChannelKind::Request(ns) => {
                if let Some(adapter) = self.adapter(ns) {
                    adapter.recv_request(&msg.payload).await;
                }
                return;
            }
            ChannelKind::Response(ns) => {
                if let Some(adapter) = self.adapter(ns) {
                    adapter.recv_response(msg.payload);
                }
                return;
            }
            ChannelKind::Event | ChannelKind::Other => {}
        }
        let env = match Envelope::decode(&msg.payload, self.limits) {
            Ok(env) => env,
            Err(e) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(channel = %msg.channel, error = %e, "dropped an undecodable message");
                return;
            }
        };
        // This node delivered its own messages locally before publishing them.
        if env.origin == self.node_id {
            return;
        }
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        self.deliver_local(&env).await;
    }

    fn registry_prefix(&self) -> String {
        format!("{}:nodes:", self.channels().prefix())
    }

    /// This node's registry record now.
    pub fn node_info(&self, address: &str, started_ms: u64) -> NodeInfo {
        NodeInfo {
            node_id: self.node_id.clone(),
            address: address.to_owned(),
            connections: self.stats.connections.load(Ordering::Relaxed),
            rooms: self.room_count() as u64,
            started_ms,
            ts: envelope::now_ms(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// Announces this node every third of `ttl`, forever.
    pub async fn heartbeat(&self, address: String, ttl: Duration) {
        let started_ms = envelope::now_ms();
        let key = format!("{}{}", self.registry_prefix(), self.node_id);
        let mut tick = tokio::time::interval(ttl / 3);
        loop {
            tick.tick().await;
            let info = self.node_info(&address, started_ms);
            let Ok(json) = serde_json::to_vec(&info) else {
                continue;
            };
            if let Err(e) = self.bus().register(&key, json.into(), ttl).await {
                tracing::debug!(error = %e, "heartbeat not recorded");
            }
        }
    }

    /// Leaves the registry (on graceful shutdown).
    pub async fn deregister(&self) {
        let key = format!("{}{}", self.registry_prefix(), self.node_id);
        if let Err(e) = self.bus().unregister(&key).await {
            tracing::debug!(error = %e, "could not leave the registry");
        }
    }

    /// The live nodes of the cluster, by node id.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, bus::PublishError> {
        let values = self.bus().registered(&self.registry_prefix()).await?;
        let mut nodes: Vec<NodeInfo> = values
            .iter()
            .filter_map(|v| serde_json::from_slice(v).ok())
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }

    pub(crate) fn register_adapter(&self, ns: &str, adapter: &Arc<BusAdapter>) {
        self.adapters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ns.to_owned(), Arc::downgrade(adapter));
    }

    fn adapter(&self, ns: &str) -> Option<Arc<BusAdapter>> {
        self.adapters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(ns)
            .and_then(Weak::upgrade)
    }

    /// The legacy JSON form: every node receives it and delivers to its own sockets.
    async fn on_legacy(&self, msg: &Message) {
        let legacy = match LegacyMessage::decode(&msg.payload, self.limits) {
            Ok(m) => m,
            Err(e) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(channel = %msg.channel, error = %e, "dropped an undecodable legacy message");
                return;
            }
        };
        let target = legacy_target(
            legacy.room.as_deref(),
            legacy.user.as_deref(),
            legacy.doctype.as_deref(),
            legacy.docname.as_deref(),
        );
        let to = match target {
            Ok(Target::Broadcast) => Vec::new(),
            Ok(Target::Rooms(rooms)) => rooms.into_iter().map(Room::into_string).collect(),
            Err(e) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(channel = %msg.channel, error = %e, "dropped a legacy message with an invalid room");
                return;
            }
        };
        let mut env = Envelope::new("legacy", legacy.event, legacy.message).to_rooms(to);
        if let Some(ns) = legacy.namespace {
            env.ns = ns;
        }
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        self.deliver_local(&env).await;
    }

    /// Runs the dispatcher until the bus closes its inbox.
    pub async fn dispatch(self: Arc<Self>, mut inbox: Inbox) {
        while let Some(msg) = inbox.recv().await {
            self.on_message(msg).await;
        }
        tracing::debug!("bus inbox closed; dispatcher stopped");
    }
}

/// Event arguments serialized as a tuple, which Socket.IO's parser expands into
/// separate arguments (`["event", a, b]` rather than `["event", [a, b]]`). Placeholders
/// naming one of `attachments` are written as bytes, which the parser sends as binary.
pub(crate) struct Args<'a> {
    pub(crate) args: &'a [Value],
    pub(crate) attachments: &'a [Bytes],
}

impl Serialize for Args<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(self.args.len())?;
        for arg in self.args {
            if self.attachments.is_empty() {
                tuple.serialize_element(arg)?;
            } else {
                tuple.serialize_element(&WithBinary(arg, self.attachments))?;
            }
        }
        tuple.end()
    }
}

/// A JSON value whose placeholders are replaced by the attachments they name.
struct WithBinary<'a>(&'a Value, &'a [Bytes]);

impl Serialize for WithBinary<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        let Self(value, attachments) = *self;
        if let Some(bytes) = envelope::placeholder_index(value).and_then(|n| attachments.get(n)) {
            return serializer.serialize_bytes(bytes);
        }
        match value {
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&WithBinary(item, attachments))?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut out = serializer.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    out.serialize_entry(k, &WithBinary(v, attachments))?;
                }
                out.end()
            }
            scalar => scalar.serialize(serializer),
        }
    }
}

/// One socket's answer to [`Cluster::publish_with_ack`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum AckReply {
    /// The socket acknowledged with `data`.
    Answered {
        /// The socket's id.
        sid: String,
        /// What the client passed to its acknowledgement callback.
        data: Value,
    },
    /// The socket did not answer in time, or its answer could not be read.
    Failed {
        /// The socket's id.
        sid: String,
        /// Why.
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_become_bytes_and_everything_else_stays() {
        let attachments = [Bytes::from_static(&[1, 2]), Bytes::from_static(&[3])];
        let args = [
            json!({"a": envelope::placeholder(1), "b": [envelope::placeholder(0), "x"]}),
            json!({"_placeholder": true, "num": 7}),
            json!(5),
        ];
        let args = Args {
            args: &args,
            attachments: &attachments,
        };
        // serde_json writes bytes as an array of numbers, which makes the swap visible.
        assert_eq!(
            serde_json::to_value(&args).unwrap(),
            json!([{"a": [3], "b": [[1, 2], "x"]}, {"_placeholder": true, "num": 7}, 5])
        );
    }
}
