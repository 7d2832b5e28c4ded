//! The node's view of the cluster: delivery of what this node and others publish, on
//! top of [`Membership`] (who is in which room) and the registry (which nodes are alive).
//!
//! Dependencies run one way: the socket handlers and the adapter use the cluster; the
//! cluster uses membership, the registry and the bus; membership and the registry use
//! only the bus.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use bus::{Bus, Inbox, Message, Outbox, SendError, SubscribeError};
use bytes::Bytes;
use std::time::Duration;

use envelope::{Envelope, LegacyMessage, Limits};
use futures_util::StreamExt;
use rooms::{Audience, ChannelKind, Channels, Room, ScopedRoom, Target, legacy_target};
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use socketioxide::operators::BroadcastOperators;
use socketioxide::socket::DisconnectReason;

mod compat;
mod dispatch;
mod host;
mod payload;
pub(crate) mod presence;
pub(crate) mod recovery;
mod sockets;

pub(crate) use payload::Args;

pub use presence::{
    ANSWER_WITHIN, JOIN_EVENT, LEAVE_EVENT, Presence, ServerEvent, ServerEventHandler,
};
pub use recovery::RecoveryConfig;
pub use sockets::{SocketsAnswer, SocketsError};

use crate::adapter::BusAdapter;
use crate::membership::{
    AttachRefused, ConnectionLimits, JoinRefused, Membership, SocketKey, UserKey,
};
use crate::metrics::Metrics;
use crate::registry::Registry;
use tracing::Instrument as _;

/// Shared state of one node: membership, the registry, and the handle used to deliver
/// to local sockets.
#[derive(Debug)]
pub struct Cluster {
    node_id: String,
    outbox: Outbox,
    limits: Limits,
    namespaces: Vec<String>,
    legacy_channel: Option<String>,
    require_tenant: bool,
    membership: Membership,
    registry: Registry,
    io: OnceLock<SocketIo<BusAdapter>>,
    /// The adapter of each namespace, to route adapter requests and responses.
    adapters: Mutex<HashMap<String, Weak<BusAdapter>>>,
    /// Counters exported on `/health` and `/metrics`.
    pub stats: Stats,
    metrics: Metrics,
    /// Set once shutdown began: the node wants no new clients.
    draining: std::sync::atomic::AtomicBool,
    /// Set once the bus was up: until then a new node is of no use to the cluster.
    bus_seen_up: std::sync::atomic::AtomicBool,
    /// Connection state recovery.
    recovery: recovery::Recovery,
    /// Presence queries and server-side events waiting for other nodes' answers.
    presence: presence::Pending,
    /// Handlers of server-side events from other nodes.
    server_handlers: presence::ServerHandlers,
    /// Join and leave events waiting to be published.
    announcements: presence::Announcements,
    /// Other Socket.IO servers' Redis formats, when enabled.
    compat: Option<Arc<crate::compat::Compat>>,
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
    /// Messages from the bus that could not be decoded or routed.
    pub rejected: AtomicU64,
    /// Publishes to the bus that failed.
    pub publish_errors: AtomicU64,
    /// Sockets disconnected because their token expired.
    pub expired: AtomicU64,
    /// Joins refused (not allowed, invalid room, too many rooms).
    pub joins_refused: AtomicU64,
    /// Connections refused: bad token, or a connection cap.
    pub connections_refused: AtomicU64,
    /// Client events refused for going over a rate limit.
    pub rate_limited: AtomicU64,
    /// Sockets disconnected for sustained abuse of the rate limits.
    pub rate_disconnects: AtomicU64,
    /// Messages waiting in the bus inbox for the dispatcher (the backlog), as last seen.
    pub inbox_depth: AtomicU64,
    /// Sockets disconnected because they did not read what was sent to them (their
    /// outbound queue went over its byte or packet budget).
    pub slow_consumers: AtomicU64,
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

/// What a [`Cluster`] is built from, besides its node id and bus.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Decoding limits for what arrives from the bus.
    pub limits: Limits,
    /// The namespaces this node serves.
    pub namespaces: Vec<String>,
    /// The channel of the legacy JSON form, if enabled.
    pub legacy_channel: Option<String>,
    /// Connection and room caps.
    pub connection_limits: ConnectionLimits,
    /// Drop legacy messages that name no tenant.
    pub require_tenant: bool,
    /// Distinct `event_type` labels in the metrics before new names count as `other`.
    pub max_event_types: usize,
    /// Connection state recovery.
    pub recovery: crate::RecoveryConfig,
    /// Rooms whose joins and leaves are announced to their members.
    pub presence_events: Vec<rooms::Pattern>,
    /// Other Socket.IO servers' Redis formats read (and written), when enabled.
    pub compat: Option<crate::compat::CompatConfig>,
}

/// The event a socket receives just before the node disconnects it, saying why.
pub const DISCONNECT_REASON_EVENT: &str = "disconnect_reason";

impl Cluster {
    /// A cluster view for `node_id` over `outbox`.
    pub fn new(node_id: String, outbox: Outbox, settings: ClusterSettings) -> Self {
        let compat = settings
            .compat
            .filter(crate::compat::CompatConfig::enabled)
            .map(|c| Arc::new(crate::compat::Compat::new(c, &node_id)));
        let mut membership = Membership::new(
            outbox.bus().clone(),
            outbox.channels().clone(),
            settings.connection_limits,
        );
        if let Some(compat) = compat.clone().filter(|c| c.config().node_key.is_some()) {
            membership = membership
                .with_extra_channels(Arc::new(move |ns, room| compat.room_channels(ns, room)));
        }
        let registry = Registry::new(outbox.bus().clone(), outbox.channels(), &node_id);
        let metrics = Metrics::new(&node_id, settings.max_event_types);
        Self {
            draining: std::sync::atomic::AtomicBool::new(false),
            bus_seen_up: std::sync::atomic::AtomicBool::new(false),
            metrics,
            node_id,
            outbox,
            limits: settings.limits,
            namespaces: settings.namespaces,
            legacy_channel: settings.legacy_channel,
            require_tenant: settings.require_tenant,
            membership,
            registry,
            io: OnceLock::new(),
            adapters: Mutex::default(),
            stats: Stats::default(),
            recovery: recovery::Recovery::new(settings.recovery),
            presence: presence::Pending::default(),
            server_handlers: presence::ServerHandlers::default(),
            announcements: presence::Announcements::new(settings.presence_events),
            compat,
        }
    }

    /// The outbox (publishing, and reading recovery histories).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Connection state recovery.
    pub(crate) fn recovery(&self) -> &recovery::Recovery {
        &self.recovery
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

    /// Whether a load balancer should send this node new clients, and if not why:
    /// not while shutting down, not at its connection cap, and not before its bus was up
    /// once. A later Redis outage does not make a node unready: it keeps serving its
    /// own clients, and pulling every node out of the balancer at once would help no one.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("shutting down");
        }
        if !self.note_bus_up() {
            return Err("the bus has not connected yet");
        }
        if self.membership.check_capacity(None).is_err() {
            return Err("at its connection cap");
        }
        Ok(())
    }

    /// Whether the bus was ever up (checked now, and every second by the expiry task).
    fn note_bus_up(&self) -> bool {
        if self.bus_seen_up.load(Ordering::Relaxed) {
            return true;
        }
        let up = self.bus().health().is_up();
        if up {
            self.bus_seen_up.store(true, Ordering::Relaxed);
        }
        up
    }

    /// Marks the node as shutting down: not ready from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Tells every socket the node is going away (`disconnect_reason {reason:
    /// "server_shutting_down"}`) without disconnecting it: a server-side disconnect would
    /// stop Socket.IO clients from reconnecting, while a dropped connection makes them
    /// reconnect — to another node.
    pub fn announce_shutdown(&self) {
        let Some(io) = self.io.get() else {
            return;
        };
        let reason = serde_json::json!({
            "reason": "server_shutting_down",
            "message": "this node is shutting down; the client reconnects to another node",
        });
        for (ns, sid) in self.membership.sockets() {
            if let Some(socket) = io.of(&*ns).and_then(|op| op.get_socket(sid)) {
                socket.emit(DISCONNECT_REASON_EVENT, &reason).ok();
            }
        }
        // Their connections drop with the process: each session stays recoverable for
        // a window from now.
        for (sid, pid, record) in self.recovery.all() {
            self.save_session(pid, Some(record), Some(sid));
        }
    }

    /// This node's Prometheus metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Room membership on this node.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The cluster registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Number of rooms (across namespaces) with at least one local member.
    pub fn room_count(&self) -> usize {
        self.membership.room_count()
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
            .flat_map(|ns| {
                [
                    channels.namespace(ns),
                    channels.control(ns),
                    channels.control_for(ns, &self.node_id),
                ]
            })
            .collect();
        all.extend(self.legacy_channel.iter().cloned());
        if let Some(compat) = &self.compat {
            all.extend(compat.base_channels(&self.namespaces));
        }
        all
    }

    /// Starts tracking a newly connected socket of `user` (counted against the per-user
    /// cap; `None`: not counted) whose token expires at `expires_at` (seconds since the
    /// epoch, 0: never), and installs its disconnect hook, which forgets every room it
    /// joined. Call it once per socket, from its connect handler, before any join; do not
    /// install another `on_disconnect` afterwards.
    ///
    /// Not from a connect middleware: a socket whose handshake fails after the middleware
    /// (the client left meanwhile) is dropped by socketioxide without its disconnect
    /// handler, and would stay tracked. A socket that disconnects while this runs is
    /// forgotten again here.
    pub fn attach(
        self: &Arc<Self>,
        socket: &SocketRef<BusAdapter>,
        expires_at: u64,
        user: Option<UserKey>,
    ) -> Result<(), AttachRefused> {
        self.membership.attach(key(socket), expires_at, user)?;
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.admin_connected(socket);
        let cluster = Arc::downgrade(self);
        #[allow(clippy::disallowed_methods, reason = "the one disconnect hook")]
        socket.on_disconnect(move |s: SocketRef<BusAdapter>, reason: DisconnectReason| {
            // Synchronously, before socketioxide removes the socket from its rooms: a join
            // racing this disconnect either finished before (and is undone here) or finds
            // the socket detached and changes nothing.
            if let Some(cluster) = cluster.upgrade() {
                for room in cluster.membership.detach(&key(&s)) {
                    cluster.announce(&s, &room, presence::LEAVE_EVENT, "disconnected");
                }
                cluster.stats.connections.fetch_sub(1, Ordering::Relaxed);
                cluster.admin_disconnected(&s, &reason.to_string());
                // Closed as a transport error; the engine remembers it was a slow one.
                let slow = s.is_slow_consumer();
                if slow {
                    cluster.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                }
                if let Some((pid, record)) = cluster.recovery.untrack(s.id) {
                    // Kept for a window unless the client left on purpose or was sent away.
                    let keep = !matches!(
                        reason,
                        DisconnectReason::ClientNSDisconnect | DisconnectReason::ServerNSDisconnect
                    );
                    cluster.save_session(pid, keep.then_some(record), Some(s.id));
                }
                if slow {
                    tracing::info!(sid = %s.id, ns = s.ns(), reason = "SlowConsumer", detail = "client did not read what was sent to it in time", "client disconnected");
                } else {
                    tracing::info!(sid = %s.id, ns = s.ns(), reason = ?reason, detail = %reason, "client disconnected");
                }
            }
            async {}
        });
        // Closed before the hook was in place: its close found no hook to run.
        if !socket.connected() {
            drop(self.membership.detach(&key(socket)));
            self.stats.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(AttachRefused::Gone);
        }
        Ok(())
    }

    /// Whether a socket of `user` would be accepted now; a connect middleware's early
    /// refusal (the client gets it as its connect error). [`Cluster::attach`] decides.
    pub fn check_capacity(&self, user: Option<&UserKey>) -> Result<(), AttachRefused> {
        self.membership.check_capacity(user)
    }

    /// Adds `socket` to `room` now (local delivery starts at once) and returns a future
    /// that resolves once the bus confirmed the room's channel, so a message published
    /// anywhere after it resolves reaches the socket. If the bus is down the socket
    /// stays joined (local delivery works) and the future yields a warning.
    pub fn join(
        &self,
        socket: &SocketRef<BusAdapter>,
        room: &ScopedRoom,
    ) -> Result<impl Future<Output = Result<(), JoinWarning>> + Send + 'static + use<>, JoinRefused>
    {
        let (confirmation, new) = self.membership.join(&key(socket), room, || {
            #[allow(clippy::disallowed_methods, reason = "the one sanctioned local join")]
            socket.join(room.as_str().to_owned());
        })?;
        if new {
            self.announce(socket, room, presence::JOIN_EVENT, "joined");
            self.admin_room(socket, room, "room_joined");
        }
        Ok(async move { confirmation.await.map_err(JoinWarning::BusUnavailable) })
    }

    /// Removes `socket` from `room`; unsubscribes the channel when it was the last
    /// member. False if the socket was not in the room.
    pub fn leave(&self, socket: &SocketRef<BusAdapter>, room: &ScopedRoom) -> bool {
        let left = self.membership.leave(&key(socket), room, || {
            #[allow(clippy::disallowed_methods, reason = "the one sanctioned local leave")]
            socket.leave(room.as_str().to_owned());
        });
        if left {
            self.announce(socket, room, presence::LEAVE_EVENT, "left");
            self.admin_room(socket, room, "room_left");
        }
        left
    }

    /// Tells the other members of `room` that `socket` joined or left it (`event`,
    /// `reason`), when the room has presence events (`PRESENCE_EVENTS`). Queued, so that
    /// one socket's announcements go out in the order of its joins and leaves; a full
    /// queue drops the announcement (logged and counted).
    fn announce(
        &self,
        socket: &SocketRef<BusAdapter>,
        room: &ScopedRoom,
        event: &'static str,
        reason: &'static str,
    ) {
        if !self.announcements.wanted(room) {
            return;
        }
        let Some(identity) = socket.extensions.get::<Arc<crate::auth::Identity>>() else {
            return;
        };
        let env = presence::announcement(
            &self.node_id,
            socket.ns(),
            &socket.id.to_string(),
            &identity.user_id,
            room,
            event,
            reason,
        );
        if !self.announcements.queue(env) {
            self.metrics.presence_event_dropped();
            tracing::warn!(room = %room.room(), "presence events are backing up; one dropped");
        }
    }

    /// Publishes the queued presence announcements, in order, forever.
    pub(crate) async fn announcements(self: Arc<Self>) {
        let Some(mut queue) = self.announcements.take_queue() else {
            return;
        };
        while let Some(env) = queue.recv().await {
            if let Err(e) = self.publish(&env).await {
                tracing::debug!(error = %e, "a presence event did not reach the other nodes");
            }
        }
    }

    /// Tells `socket` why (the [`DISCONNECT_REASON_EVENT`] event) and disconnects it.
    pub fn disconnect_with_reason(socket: &SocketRef<BusAdapter>, reason: &str, message: &str) {
        let reason = serde_json::json!({"reason": reason, "message": message});
        socket.emit(DISCONNECT_REASON_EVENT, &reason).ok();
        socket.clone().disconnect().ok();
    }

    /// Disconnects every socket whose token has expired, every second, and forgets
    /// sockets socketioxide no longer has, every 30 seconds; forever.
    pub(crate) async fn expire_tokens(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            tick.tick().await;
            ticks += 1;
            self.note_bus_up();
            if ticks.is_multiple_of(30) {
                self.sweep();
            }
            for (ns, sid) in self.membership.expired(crate::auth::unix_now()) {
                let socket = self
                    .io
                    .get()
                    .and_then(|io| io.of(&*ns))
                    .and_then(|op| op.get_socket(sid));
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
                // Counted once, whatever the disconnect below does.
                self.membership.set_expiry(&(ns.clone(), sid), 0);
                match socket {
                    Some(s) => Self::disconnect_with_reason(
                        &s,
                        "token_expired",
                        "token expired: reconnect with a fresh token, or send `refresh` before it expires",
                    ),
                    // Already gone: make sure nothing of it is left.
                    None => drop(self.membership.detach(&(ns, sid))),
                }
            }
        }
    }

    /// Forgets tracked sockets that socketioxide no longer has: it drops a socket whose
    /// handshake fails late without running its disconnect hook.
    fn sweep(&self) {
        let Some(io) = self.io.get() else { return };
        for (ns, sid) in self.membership.sockets() {
            let gone = io.of(&*ns).is_none_or(|op| op.get_socket(sid).is_none());
            if gone {
                tracing::debug!(%sid, %ns, "forgetting a socket socketioxide dropped without its disconnect hook");
                drop(self.membership.detach(&(ns, sid)));
            }
        }
    }

    /// Delivers `env` to this node's sockets, then publishes it to the cluster.
    ///
    /// Local delivery does not depend on the bus, so a node keeps serving its own
    /// sockets while Redis is away; the bus error is still returned so the caller knows
    /// other nodes did not get the message.
    pub async fn publish(&self, env: &Envelope) -> Result<(), SendError> {
        self.publish_from(env, None).await
    }

    /// [`Cluster::publish`] on behalf of a local socket, which does not receive its own
    /// message when `sender` is given (Socket.IO's `socket.broadcast`).
    pub async fn publish_from(
        &self,
        env: &Envelope,
        sender: Option<&SocketRef<BusAdapter>>,
    ) -> Result<(), SendError> {
        // Resolved once for both the local delivery and the bus.
        let (to, except) = bus::targets(env)?;
        // One line per publish: what and where to, never the payload.
        tracing::info!(
            id = %env.id,
            event = %env.event,
            ns = %env.ns,
            tenant = env.tenant.as_deref().unwrap_or(""),
            rooms = ?env.to,
            user = env.to.iter().find_map(|r| r.strip_prefix("user:")).unwrap_or(""),
            server_id = %self.node_id,
            "realtime_publish"
        );
        self.mirror(env).await;
        if self.outbox.records(&env.ns) && !env.flags.local {
            // Recorded: every node, this one too, delivers it from the bus in the
            // history's order, with its offset.
            if let Some(sender) = sender {
                let mut env = env.clone();
                env.sender = Some(sender.id.to_string());
                return self.send_to_bus(&env, &to).await;
            }
            return self.send_to_bus(env, &to).await;
        }
        self.deliver_resolved(env, &to, &except, sender, None).await;
        if env.flags.local {
            self.metrics.published(&env.event);
            return Ok(());
        }
        self.send_to_bus(env, &to).await
    }

    /// Publishes an envelope whose targets are already resolved (`to`: its audience),
    /// counting the outcome.
    pub(crate) async fn send_to_bus(&self, env: &Envelope, to: &Audience) -> Result<(), SendError> {
        match self.outbox.send_to(env, to).await {
            Ok(_) => {
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                self.metrics.published(&env.event);
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
        self.deliver_at(env, None).await;
    }

    /// [`Cluster::deliver_local`] of a recorded message, whose offset every delivered
    /// event carries as its last argument.
    async fn deliver_at(&self, env: &Envelope, offset: Option<&str>) {
        match bus::targets(env) {
            Ok((to, except)) => self.deliver_resolved(env, &to, &except, None, offset).await,
            Err(e) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(id = %env.id, error = %e, "dropped a message with invalid targets");
            }
        }
    }

    /// Delivers `env`, whose targets are resolved, to the local sockets it targets.
    async fn deliver_resolved(
        &self,
        env: &Envelope,
        to: &Audience,
        except: &[ScopedRoom],
        sender: Option<&SocketRef<BusAdapter>>,
        offset: Option<&str>,
    ) {
        if let Some(sid) = &env.socket {
            return self.deliver_to_socket(env, to, except, sid, offset).await;
        }
        // A recorded client publish: its sender, if on this node, is left out.
        let recorded_sender = match (sender, &env.sender) {
            (None, Some(sid)) => self.local_socket(&env.ns, sid),
            _ => None,
        };
        let sender = sender.or(recorded_sender.as_ref());
        // Recovering sockets skip what their replay covers.
        let held = match offset {
            Some(offset) => self.hand_over(&env.ns, offset),
            None => Vec::new(),
        };
        let Some(op) = self
            .operator(env, to, except, sender)
            .map(|op| if held.is_empty() { op } else { op.except(held) })
        else {
            return;
        };
        let args = Args {
            args: env.arguments(),
            attachments: &env.attachments,
            offset,
        };
        // A child of the publish span, whichever node published.
        let span = tracing::info_span!(
            "deliver",
            server_id = %self.node_id,
            id = %env.id,
            event = %env.event,
            sockets = tracing::field::Empty
        );
        crate::telemetry::continue_trace(&span, env.trace.as_deref());
        let (sent, targets) = crate::adapter::count_local_targets(
            op.local().emit(&env.event, &args).instrument(span.clone()),
        )
        .await;
        span.record("sockets", targets);
        // Counted once per socket written to: the targets, less those that failed.
        let failed = match sent {
            Ok(()) => 0,
            Err(e) => {
                tracing::debug!(id = %env.id, error = %e, "some local sockets could not be reached");
                match e {
                    socketioxide::BroadcastError::Socket(errors) => errors.len(),
                    _ => targets,
                }
            }
        };
        self.metrics
            .delivered(&env.event, targets.saturating_sub(failed) as u64);
    }

    /// Delivers `env` to the one socket `sid`, if it is on this node and among the
    /// targets (a reply to a socket that sent an event).
    async fn deliver_to_socket(
        &self,
        env: &Envelope,
        to: &Audience,
        except: &[ScopedRoom],
        sid: &str,
        offset: Option<&str>,
    ) {
        // Not a socket id: nothing here can match it.
        let Ok(sid) = sid.parse::<socketioxide::socket::Sid>() else {
            return;
        };
        // Only if that socket is among the targets (its user's room, say).
        let Some(socket) = self
            .operator(env, to, except, None)
            .map(|op| op.local().sockets())
            .and_then(|sockets| sockets.into_iter().find(|s| s.id == sid))
        else {
            return;
        };
        let args = Args {
            args: env.arguments(),
            attachments: &env.attachments,
            offset,
        };
        let sent = if env.flags.volatile {
            socket.volatile().emit(&env.event, &args)
        } else {
            socket.emit(&env.event, &args)
        };
        match sent {
            Ok(()) => self.metrics.delivered(&env.event, 1),
            Err(e) => tracing::debug!(id = %env.id, %sid, error = %e, "could not reach the socket"),
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
        let (to, except) = bus::targets(env)?;
        self.mirror(env).await;
        let Some(op) = self.operator(env, &to, &except, None) else {
            return Ok(Vec::new());
        };
        let op = if env.flags.local { op.local() } else { op };
        let args = Args {
            args: env.arguments(),
            attachments: &env.attachments,
            offset: None,
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

    /// The broadcast operator for `env`'s namespace and flags and its resolved targets;
    /// `None` (logged) when this node does not serve the namespace.
    fn operator(
        &self,
        env: &Envelope,
        to: &Audience,
        except: &[ScopedRoom],
        sender: Option<&SocketRef<BusAdapter>>,
    ) -> Option<BroadcastOperators<BusAdapter>> {
        let io = self.io.get()?;
        let Some(ns) = io.of(&env.ns) else {
            tracing::debug!(ns = %env.ns, id = %env.id, "message for a namespace this node does not serve");
            return None;
        };
        let names = |rooms: &[ScopedRoom]| {
            rooms
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        // From the sender's socket: every target but the sender itself.
        let mut op = match sender {
            Some(s) => s.broadcast(),
            None => ns.broadcast(),
        };
        if let Audience::Rooms(rooms) = to {
            op = op.to(names(rooms));
        }
        if !except.is_empty() {
            op = op.except(names(except));
        }
        if env.flags.volatile {
            op = op.volatile();
        }
        Some(op)
    }

    /// The local socket `sid` of namespace `ns`, if it is here.
    fn local_socket(&self, ns: &str, sid: &str) -> Option<SocketRef<BusAdapter>> {
        let sid = sid.parse::<socketioxide::socket::Sid>().ok()?;
        self.io.get()?.of(ns)?.get_socket(sid)
    }

    /// For a recorded message at `offset`: the hold rooms of recovering sockets that
    /// must skip it; sockets whose replay it passes leave theirs.
    fn hand_over(&self, ns: &str, offset: &str) -> Vec<String> {
        let (held, released) = self.recovery.skip(offset);
        for sid in released {
            if let Some(s) = self.local_socket(ns, &sid.to_string()) {
                #[allow(
                    clippy::disallowed_methods,
                    reason = "the hold room is node-local: no membership, no bus channel"
                )]
                s.leave(recovery::hold_room(sid));
            }
        }
        held
    }

    /// This node's registry record now.
    pub fn node_info(
        &self,
        address: &str,
        started_ms: u64,
        sid_tag: Option<&str>,
    ) -> envelope::NodeInfo {
        envelope::NodeInfo {
            node_id: self.node_id.clone(),
            address: address.to_owned(),
            connections: self.stats.connections.load(Ordering::Relaxed),
            rooms: self.room_count() as u64,
            started_ms,
            ts: envelope::now_ms(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            sid_tag: sid_tag.map(str::to_owned),
        }
    }

    /// Announces this node every third of `ttl`, forever.
    /// `sid_tag` is the mark of this node's session ids (see `forward::SidTag`).
    pub async fn heartbeat(&self, address: String, sid_tag: Option<String>, ttl: Duration) {
        let started_ms = envelope::now_ms();
        self.registry
            .heartbeat(ttl, || {
                self.node_info(&address, started_ms, sid_tag.as_deref())
            })
            .await;
    }

    fn adapter(&self, ns: &str) -> Option<Arc<BusAdapter>> {
        self.adapters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(ns)
            .and_then(Weak::upgrade)
    }
}

/// Whether the recorded `env` was for a socket in the scoped `rooms` whose id was
/// `old_sid`.
fn reaches(env: &Envelope, rooms: &std::collections::HashSet<String>, old_sid: &str) -> bool {
    if env.sender.as_deref() == Some(old_sid) || env.socket.as_deref().is_some_and(|s| s != old_sid)
    {
        return false;
    }
    let Ok((to, except)) = bus::targets(env) else {
        return false;
    };
    let targeted = match &to {
        Audience::Everyone => true,
        Audience::Rooms(targets) => targets.iter().any(|r| rooms.contains(r.as_str())),
    };
    targeted && !except.iter().any(|r| rooms.contains(r.as_str()))
}

/// How membership names a socket.
fn key(socket: &SocketRef<BusAdapter>) -> SocketKey {
    (Arc::from(socket.ns()), socket.id)
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
