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
use serde::ser::{Serialize, SerializeTuple, Serializer};
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use socketioxide::operators::BroadcastOperators;
use socketioxide::socket::DisconnectReason;

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
    recovery: crate::recovery::Recovery,
    /// Presence queries and server-side events waiting for other nodes' answers.
    presence: crate::presence::Pending,
    /// Handlers of server-side events from other nodes.
    server_handlers: crate::presence::ServerHandlers,
    /// Join and leave events waiting to be published.
    announcements: crate::presence::Announcements,
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
}

/// The event a socket receives just before the node disconnects it, saying why.
pub const DISCONNECT_REASON_EVENT: &str = "disconnect_reason";

impl Cluster {
    /// A cluster view for `node_id` over `outbox`.
    pub fn new(node_id: String, outbox: Outbox, settings: ClusterSettings) -> Self {
        let membership = Membership::new(
            outbox.bus().clone(),
            outbox.channels().clone(),
            settings.connection_limits,
        );
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
            recovery: crate::recovery::Recovery::new(settings.recovery),
            presence: crate::presence::Pending::default(),
            server_handlers: crate::presence::ServerHandlers::default(),
            announcements: crate::presence::Announcements::new(settings.presence_events),
        }
    }

    /// The outbox (publishing, and reading recovery histories).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Connection state recovery.
    pub(crate) fn recovery(&self) -> &crate::recovery::Recovery {
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
        let cluster = Arc::downgrade(self);
        #[allow(clippy::disallowed_methods, reason = "the one disconnect hook")]
        socket.on_disconnect(move |s: SocketRef<BusAdapter>, reason: DisconnectReason| {
            // Synchronously, before socketioxide removes the socket from its rooms: a join
            // racing this disconnect either finished before (and is undone here) or finds
            // the socket detached and changes nothing.
            if let Some(cluster) = cluster.upgrade() {
                for room in cluster.membership.detach(&key(&s)) {
                    cluster.announce(&s, &room, crate::presence::LEAVE_EVENT, "disconnected");
                }
                cluster.stats.connections.fetch_sub(1, Ordering::Relaxed);
                if reason == DisconnectReason::SlowConsumer {
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
                tracing::info!(sid = %s.id, ns = s.ns(), reason = ?reason, detail = %reason, "client disconnected");
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
            self.announce(socket, room, crate::presence::JOIN_EVENT, "joined");
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
            self.announce(socket, room, crate::presence::LEAVE_EVENT, "left");
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
        let env = crate::presence::announcement(
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

    /// Adds local socket `sid` of namespace `ns` to `room` on another node's request,
    /// through `local` (the adapter's own room change).
    pub(crate) fn join_remote(
        &self,
        ns: &str,
        sid: socketioxide::socket::Sid,
        room: &ScopedRoom,
        local: impl FnOnce(),
    ) -> Option<crate::membership::Confirmation> {
        self.membership
            .join(&(Arc::from(ns), sid), room, local)
            .ok()
            .map(|(confirmation, _)| confirmation)
    }

    /// Removes local socket `sid` from `room` on another node's request.
    pub(crate) fn leave_remote(
        &self,
        ns: &str,
        sid: socketioxide::socket::Sid,
        room: &ScopedRoom,
        local: impl FnOnce(),
    ) {
        self.membership.leave(&(Arc::from(ns), sid), room, local);
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
        let operator = || {
            self.operator(env, to, except, sender).map(|op| {
                if held.is_empty() {
                    op
                } else {
                    op.except(held.clone())
                }
            })
        };
        let Some(op) = operator() else {
            return;
        };
        let args = Args {
            args: env.arguments(),
            attachments: &env.attachments,
            offset,
        };
        // Counted once per socket written to: the targets, less those that failed.
        let targets = operator().map_or(0, |op| op.local().sockets().len());
        // A child of the publish span, whichever node published.
        let span = tracing::info_span!(
            "deliver",
            server_id = %self.node_id,
            id = %env.id,
            event = %env.event,
            sockets = targets
        );
        crate::telemetry::continue_trace(&span, env.trace.as_deref());
        let failed = match op.local().emit(&env.event, &args).instrument(span).await {
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
            ChannelKind::Control(ns) => return self.on_control(ns, &msg.payload).await,
            ChannelKind::Event | ChannelKind::Other => {}
        }
        if let Some((offset, payload)) = bus::recorded_frame(&msg.payload) {
            return self.on_recorded(&msg.channel, offset, payload).await;
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
        // Clocks of different machines: a message "from the future" counts as 0 ms.
        self.metrics
            .bus_latency(envelope::now_ms().saturating_sub(env.ts) as f64);
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        self.deliver_local(&env).await;
    }

    /// A recorded message: delivered by every node, its publisher's included, with its
    /// offset, at the hand-over point with replays.
    async fn on_recorded(&self, channel: &str, offset: &str, payload: &[u8]) {
        let env = match Envelope::decode(payload, self.limits) {
            Ok(env) => env,
            Err(e) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%channel, error = %e, "dropped an undecodable recorded message");
                return;
            }
        };
        if env.origin != self.node_id {
            self.metrics
                .bus_latency(envelope::now_ms().saturating_sub(env.ts) as f64);
        }
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        let _turn = self.recovery.dispatch.lock().await;
        self.deliver_at(&env, Some(offset)).await;
    }

    /// Takes the recoverable session `pid` of a client of `user`/`tenant` reconnecting to
    /// `ns` after `offset`: the record, if it exists, belongs to them, and the history
    /// still holds `offset` (nothing was trimmed away since). Someone else's session is
    /// left to its owner. The caller hands the session to its new socket
    /// ([`Cluster::adopt_session`]) before answering.
    pub(crate) async fn take_session(
        &self,
        ns: &str,
        pid: &str,
        offset: &str,
        user: &str,
        tenant: Option<&str>,
    ) -> Option<crate::recovery::SessionRecord> {
        let key = self.channels().session(pid);
        let bytes = match self.bus().take(&key, self.recovery.window()).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a recovery session; starting a new one");
                return None;
            }
        };
        let record: crate::recovery::SessionRecord = serde_json::from_slice(&bytes).ok()?;
        if record.ns != ns || record.user != user || record.tenant.as_deref() != tenant {
            tracing::info!(%ns, %user, "a recovery session of another user or namespace was presented; starting a new one");
            // Not theirs: it stays its owner's.
            if let Err(e) = self
                .bus()
                .register(&key, bytes, self.recovery.window())
                .await
            {
                tracing::debug!(error = %e, "could not put a recovery session back");
            }
            return None;
        }
        let history = self.channels().history(ns);
        match self.bus().history(&history, offset, 1).await {
            Ok(page) if page.first().is_some_and(|(id, _)| id == offset) => Some(record),
            Ok(_) => {
                tracing::info!(%ns, %offset, "the offset is no longer in the history; starting a new session");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the history; starting a new session");
                None
            }
        }
    }

    /// Replays to `socket` what its namespace's history holds after `offset` for the
    /// scoped `rooms` it is in (and the replies addressed to its previous id), in order,
    /// each with its offset; then releases it to live delivery from where the replay
    /// ended. Runs at the dispatcher's hand-over point. Returns how many events it sent.
    pub(crate) async fn replay(
        &self,
        socket: &SocketRef<BusAdapter>,
        offset: &str,
        old_sid: &str,
        rooms: &std::collections::HashSet<String>,
    ) -> Result<usize, ReplayError> {
        let stream = self.channels().history(socket.ns());
        let page_size = self.recovery.page();
        let _turn = self.recovery.dispatch.lock().await;
        let mut from = offset.to_owned();
        let (mut sent, mut read) = (0, 0);
        loop {
            let page = self
                .bus()
                .history(&stream, &from, page_size + 1)
                .await
                .map_err(|e| ReplayError::Failed(e.to_string()))?;
            let full = page.len() > page_size;
            for (id, bytes) in page {
                // The range starts at `from` itself, already handled.
                if bus::offset_cmp(&id, &from).is_le() {
                    continue;
                }
                read += 1;
                if let Ok(env) = Envelope::decode(&bytes, self.limits)
                    && reaches(&env, rooms, old_sid)
                {
                    let args = Args {
                        args: env.arguments(),
                        attachments: &env.attachments,
                        offset: Some(&id),
                    };
                    socket
                        .emit(&*env.event, &args)
                        .map_err(|_| ReplayError::Gone)?;
                    sent += 1;
                }
                from = id;
            }
            if !full {
                break;
            }
            if read > self.recovery.max_replay() {
                return Err(ReplayError::Failed(format!(
                    "more than {read} messages to replay"
                )));
            }
        }
        tracing::debug!(sid = %socket.id, %offset, upto = %from, sent, "replayed");
        self.recovery.replayed(socket.id, from);
        self.metrics.delivered_replay(sent as u64);
        Ok(sent)
    }

    /// Makes the socket that recovers `record` its owner at once (same pid, its own id),
    /// before the client hears back: if this node dies during the replay, the client
    /// recovers again elsewhere, and writes from the session's previous socket no longer
    /// land.
    pub(crate) async fn adopt_session(
        &self,
        pid: &str,
        record: &crate::recovery::SessionRecord,
        sid: socketioxide::socket::Sid,
    ) {
        let adopted = crate::recovery::SessionRecord {
            sid: sid.to_string(),
            ..record.clone()
        };
        let Ok(bytes) = serde_json::to_vec(&adopted) else {
            return;
        };
        let key = self.channels().session(pid);
        if let Err(e) = self
            .bus()
            .register(&key, Bytes::from(bytes), self.recovery.window())
            .await
        {
            tracing::warn!(error = %e, "could not keep a recovered session");
        }
    }

    /// Keeps the session of `socket` (a recovery namespace) as it is now: its rooms.
    pub(crate) fn session_changed(&self, socket: &SocketRef<BusAdapter>) {
        if !self.recovery.enabled(socket.ns()) {
            return;
        }
        let rooms = socket
            .rooms()
            .into_iter()
            .filter(|r| !r.starts_with('~'))
            .filter_map(|r| {
                rooms::ScopedRoom::parse(&r)
                    .ok()
                    .map(|s| s.room().to_owned())
            })
            .collect();
        if let Some((pid, bytes)) = self.recovery.update_rooms(socket.id, rooms) {
            self.save_session(pid, Some(bytes), Some(socket.id));
        }
    }

    /// Writes (for one window) or removes a session record, in the background, after
    /// every write queued before. With `owner`, only over that socket's own record (never
    /// over a tombstone left by a recovery elsewhere, or over the record of the socket
    /// that recovered it).
    pub(crate) fn save_session(
        &self,
        pid: String,
        record: Option<Bytes>,
        owner: Option<socketioxide::socket::Sid>,
    ) {
        let queued = self
            .recovery
            .queue(crate::recovery::SessionWrite { pid, record, owner });
        if !queued {
            tracing::debug!("recovery session writes are backing up; one dropped");
        }
    }

    async fn write_session(&self, write: crate::recovery::SessionWrite) {
        let key = self.channels().session(&write.pid);
        let window = self.recovery.window();
        let bus = self.bus();
        let result = match (write.record, write.owner) {
            (Some(bytes), None) => bus.register(&key, bytes, window).await,
            (Some(bytes), Some(sid)) => bus
                .register_owned(&key, bytes, window, &crate::recovery::owner(sid))
                .await
                .map(drop),
            (None, _) => bus.unregister(&key).await,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "could not store a recovery session");
        }
    }

    /// Applies session writes in order, and refreshes every live session's record each
    /// third of the window, so that the sessions of a node that dies stay recoverable
    /// for a window.
    pub(crate) async fn sessions(self: Arc<Self>) {
        let Some(mut writes) = self.recovery.take_queue() else {
            return;
        };
        let period = (self.recovery.window() / 3).max(Duration::from_secs(1));
        let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                write = writes.recv() => match write {
                    Some(write) => self.write_session(write).await,
                    None => return,
                },
                _ = refresh.tick() => {
                    for (sid, pid, record) in self.recovery.all() {
                        let write = crate::recovery::SessionWrite {
                            pid,
                            record: Some(record),
                            owner: Some(sid),
                        };
                        self.write_session(write).await;
                    }
                }
            }
        }
    }

    /// Holds a recovering socket: live recorded messages skip it until its replay is
    /// done (it is in its node-local hold room, which deliveries exclude).
    pub(crate) fn hold(&self, socket: &SocketRef<BusAdapter>) {
        self.recovery.hold(socket.id);
        #[allow(
            clippy::disallowed_methods,
            reason = "the hold room is node-local: no membership, no bus channel"
        )]
        socket.join(crate::recovery::hold_room(socket.id));
    }

    /// Who is in the scoped `room` of namespace `ns`, on every node that answers within
    /// [`crate::presence::ANSWER_WITHIN`].
    pub async fn presence(&self, ns: &str, room: &ScopedRoom) -> crate::presence::Presence {
        let mut presence = crate::presence::Presence::default();
        presence.add(&self.local_users(ns, room.as_str()));
        let id = envelope::new_id();
        let query = crate::presence::Control::Presence {
            id: id.clone(),
            from: self.node_id.clone(),
            room: room.as_str().to_owned(),
        };
        let (expected, answers) = self.ask_others(ns, &id, &query).await;
        for (_, users) in answers {
            if let Ok(users) = serde_json::from_value(users) {
                presence.add(&users);
            }
        }
        presence.nodes_expected = (expected + 1).max(presence.nodes_answered);
        presence
    }

    /// Sends `query` (whose id is `id`) to the other nodes of `ns` and collects their
    /// answers until each live node answered or [`crate::presence::ANSWER_WITHIN`]
    /// passed; returns how many answers were expected, and the answers.
    async fn ask_others(
        &self,
        ns: &str,
        id: &str,
        query: &crate::presence::Control,
    ) -> (usize, Vec<crate::presence::Answer>) {
        let expected = match self.registry.nodes().await {
            Ok(nodes) => nodes.iter().filter(|n| n.node_id != self.node_id).count(),
            Err(e) => {
                tracing::debug!(error = %e, "registry unreadable; no other node asked");
                0
            }
        };
        let mut answers = Vec::new();
        if expected == 0 {
            return (0, answers);
        }
        let mut rx = self.presence.open(id);
        let sent = match serde_json::to_vec(query) {
            Ok(bytes) => self
                .bus()
                .publish(&self.channels().control(ns), Bytes::from(bytes))
                .await
                .is_ok(),
            Err(_) => false,
        };
        if sent {
            let deadline = tokio::time::Instant::now() + crate::presence::ANSWER_WITHIN;
            while answers.len() < expected {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(answer)) => answers.push(answer),
                    _ => break,
                }
            }
        }
        self.presence.close(id);
        (expected, answers)
    }

    /// Socket.IO's `serverSideEmit`: `event` with `args` to the handlers of every other
    /// node serving `ns` ([`Cluster::on_server_event`]); not to sockets. Fails only when
    /// the bus refuses it.
    pub async fn server_side_emit(
        &self,
        ns: &str,
        event: &str,
        args: Vec<Value>,
    ) -> Result<(), bus::PublishError> {
        let message = crate::presence::Control::ServerEvent {
            id: None,
            from: self.node_id.clone(),
            event: event.to_owned(),
            args,
        };
        let bytes = serde_json::to_vec(&message)
            .map_err(|e| bus::PublishError::Unavailable(e.to_string()))?;
        self.bus()
            .publish(&self.channels().control(ns), Bytes::from(bytes))
            .await
            .map(drop)
    }

    /// `serverSideEmitWithAck`: like [`Cluster::server_side_emit`], and waits up to
    /// [`crate::presence::ANSWER_WITHIN`] for every other live node's answer (what its
    /// handler returned); returns them as (node id, answer).
    pub async fn server_side_emit_with_ack(
        &self,
        ns: &str,
        event: &str,
        args: Vec<Value>,
    ) -> Vec<(String, Value)> {
        let id = envelope::new_id();
        let message = crate::presence::Control::ServerEvent {
            id: Some(id.clone()),
            from: self.node_id.clone(),
            event: event.to_owned(),
            args,
        };
        self.ask_others(ns, &id, &message).await.1
    }

    /// Registers a handler of server-side events from other nodes (all namespaces); what
    /// it returns answers senders that wait ([`Cluster::server_side_emit_with_ack`]).
    pub fn on_server_event(
        &self,
        handler: impl Fn(&crate::presence::ServerEvent) -> Option<Value> + Send + Sync + 'static,
    ) {
        self.server_handlers.add(Arc::new(handler));
    }

    /// The users of this node's sockets in `room` (a scoped name), with their counts.
    fn local_users(&self, ns: &str, room: &str) -> HashMap<String, u32> {
        let mut users = HashMap::new();
        let Some(op) = self.io.get().and_then(|io| io.of(ns)) else {
            return users;
        };
        for socket in op.to(room.to_owned()).local().sockets() {
            if let Some(identity) = socket.extensions.get::<Arc<crate::auth::Identity>>() {
                *users.entry(identity.user_id.clone()).or_default() += 1;
            }
        }
        users
    }

    /// A control message from another node (or this node's own query, ignored).
    async fn on_control(&self, ns: &str, payload: &[u8]) {
        use crate::presence::Control;
        let control = match serde_json::from_slice::<Control>(payload) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%ns, error = %e, "undecodable control message");
                return;
            }
        };
        match control {
            Control::Presence { id, from, room } if from != self.node_id => {
                let reply = Control::PresenceReply {
                    id,
                    node: self.node_id.clone(),
                    users: self.local_users(ns, &room),
                };
                self.reply(ns, &from, &reply).await;
            }
            Control::ServerEvent {
                id,
                from,
                event,
                args,
            } if from != self.node_id => {
                let event = crate::presence::ServerEvent {
                    ns: ns.to_owned(),
                    from,
                    event,
                    args,
                };
                let handlers = self.server_handlers.all();
                let mut answer = None;
                for handler in &handlers {
                    if let Some(a) = handler(&event) {
                        answer.get_or_insert(a);
                    }
                }
                if let Some(id) = id {
                    let reply = Control::ServerEventReply {
                        id,
                        node: self.node_id.clone(),
                        data: answer.unwrap_or(Value::Null),
                    };
                    self.reply(ns, &event.from, &reply).await;
                }
            }
            Control::Presence { .. } | Control::ServerEvent { .. } => {}
            Control::PresenceReply { id, node, users } => {
                let users = serde_json::to_value(users).unwrap_or(Value::Null);
                self.presence.answer(&id, (node, users));
            }
            Control::ServerEventReply { id, node, data } => {
                self.presence.answer(&id, (node, data));
            }
            // A kind this node does not know (a newer node's): nothing to do.
            _ => {}
        }
    }

    /// Answers node `to` on its control channel of `ns`.
    async fn reply(&self, ns: &str, to: &str, reply: &crate::presence::Control) {
        let Ok(bytes) = serde_json::to_vec(reply) else {
            return;
        };
        let channel = self.channels().control_for(ns, to);
        if let Err(e) = self.bus().publish(&channel, Bytes::from(bytes)).await {
            tracing::debug!(error = %e, "could not answer another node");
        }
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
                s.leave(crate::recovery::hold_room(sid));
            }
        }
        held
    }

    /// This node's registry record now.
    pub fn node_info(&self, address: &str, started_ms: u64) -> envelope::NodeInfo {
        envelope::NodeInfo {
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
        self.registry
            .heartbeat(ttl, || self.node_info(&address, started_ms))
            .await;
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
        env.tenant = legacy.tenant;
        if self.require_tenant && env.tenant.is_none() {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(channel = %msg.channel, "dropped a legacy message that names no tenant (REQUIRE_TENANT)");
            return;
        }
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        self.deliver_local(&env).await;
    }

    /// Runs the dispatcher until the bus closes its inbox.
    pub async fn dispatch(self: Arc<Self>, mut inbox: Inbox) {
        while let Some(msg) = inbox.recv().await {
            self.stats
                .inbox_depth
                .store(inbox.len() as u64, Ordering::Relaxed);
            self.on_message(msg).await;
        }
        tracing::debug!("bus inbox closed; dispatcher stopped");
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

/// Event arguments serialized as a tuple, which Socket.IO's parser expands into
/// separate arguments (`["event", a, b]` rather than `["event", [a, b]]`). Placeholders
/// naming one of `attachments` are written as bytes, which the parser sends as binary.
pub(crate) struct Args<'a> {
    pub(crate) args: &'a [Value],
    pub(crate) attachments: &'a [Bytes],
    /// The message's offset in its namespace history (connection state recovery): sent
    /// as the last argument, where Socket.IO clients look for it.
    pub(crate) offset: Option<&'a str>,
}

impl Serialize for Args<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = self.args.len() + usize::from(self.offset.is_some());
        let mut tuple = serializer.serialize_tuple(len)?;
        for arg in self.args {
            if self.attachments.is_empty() {
                tuple.serialize_element(arg)?;
            } else {
                tuple.serialize_element(&WithBinary(arg, self.attachments))?;
            }
        }
        if let Some(offset) = self.offset {
            tuple.serialize_element(offset)?;
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
            offset: None,
        };
        // serde_json writes bytes as an array of numbers, which makes the swap visible.
        assert_eq!(
            serde_json::to_value(&args).unwrap(),
            json!([{"a": [3], "b": [[1, 2], "x"]}, {"_placeholder": true, "num": 7}, 5])
        );
    }
}

/// Why a replay stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplayError {
    /// The client's connection closed meanwhile: it will come back and try again.
    Gone,
    /// The history could not be read, or holds more than one replay may send.
    Failed(String),
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gone => f.write_str("the connection closed during the replay"),
            Self::Failed(e) => f.write_str(e),
        }
    }
}
