//! Node-to-node control messages: presence queries, and server-side events between
//! nodes (Socket.IO's `serverSideEmit`, for embedders).
//!
//! Presence: who is in a room, cluster-wide, asked when needed rather than kept.
//!
//! A query goes to every node on the namespace's control channel; each answers with the
//! users of its own sockets in that room (from the socket identities it holds), and the
//! asking node merges the answers. Nothing is written per join or leave. A node that does
//! not answer within [`ANSWER_WITHIN`] (crashed, partitioned) is left out of the answer
//! and counted as missing: a dead node's sockets vanish from presence at once, not after
//! a TTL. Users online across the cluster are the presence of their `user:` room.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

/// How long a query waits for the other nodes.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(1);

pub(crate) use envelope::Control;
pub use envelope::Presence;

/// A server-side event from another node (see `Cluster::server_side_emit`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerEvent {
    /// The namespace it was emitted in.
    pub ns: String,
    /// The node that emitted it.
    pub from: String,
    /// Event name.
    pub event: String,
    /// Its arguments.
    pub args: Vec<serde_json::Value>,
}

/// A handler of server-side events: returns its answer, for senders that wait for one.
pub type ServerEventHandler =
    std::sync::Arc<dyn Fn(&ServerEvent) -> Option<serde_json::Value> + Send + Sync>;

/// One node's answer to a query: the node and what it said.
pub(crate) type Answer = (String, serde_json::Value);

/// Queries waiting for answers, by id.
#[derive(Debug, Default)]
pub(crate) struct Pending(Mutex<HashMap<String, mpsc::Sender<Answer>>>);

impl Pending {
    pub(crate) fn open(&self, id: &str) -> mpsc::Receiver<Answer> {
        let (tx, rx) = mpsc::channel(64);
        self.lock().insert(id.to_owned(), tx);
        rx
    }

    pub(crate) fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    pub(crate) fn answer(&self, id: &str, answer: Answer) {
        if let Some(tx) = self.lock().get(id) {
            let _ = tx.try_send(answer);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Answer>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The handlers of server-side events registered on a node.
#[derive(Default)]
pub(crate) struct ServerHandlers(std::sync::RwLock<Vec<ServerEventHandler>>);

impl std::fmt::Debug for ServerHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerHandlers({})", self.all().len())
    }
}

impl ServerHandlers {
    pub(crate) fn add(&self, handler: ServerEventHandler) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handler);
    }

    pub(crate) fn all(&self) -> Vec<ServerEventHandler> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The event a room's members receive when a socket joins it (`PRESENCE_EVENTS`).
pub const JOIN_EVENT: &str = "presence_join";
/// The event a room's members receive when a socket leaves it or disconnects.
pub const LEAVE_EVENT: &str = "presence_leave";
/// Announcements a node holds before it drops new ones.
const ANNOUNCE_QUEUE: usize = 4096;

/// Join/leave events for the rooms that have them: queued in the order they happen
/// and published by one task.
#[derive(Debug)]
pub(crate) struct Announcements {
    patterns: Vec<rooms::Pattern>,
    tx: mpsc::Sender<envelope::Envelope>,
    rx: Mutex<Option<mpsc::Receiver<envelope::Envelope>>>,
}

impl Announcements {
    pub(crate) fn new(patterns: Vec<rooms::Pattern>) -> Self {
        let (tx, rx) = mpsc::channel(ANNOUNCE_QUEUE);
        Self {
            patterns,
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Whether `room` announces its joins and leaves.
    pub(crate) fn wanted(&self, room: &rooms::ScopedRoom) -> bool {
        !self.patterns.is_empty()
            && rooms::Room::parse(room.room())
                .is_ok_and(|r| self.patterns.iter().any(|p| p.matches(&r)))
    }

    /// Queues one announcement; false when the queue is full (it is dropped).
    pub(crate) fn queue(&self, env: envelope::Envelope) -> bool {
        self.tx.try_send(env).is_ok()
    }

    /// The queue's receiving end, for the one task that publishes.
    pub(crate) fn take_queue(&self) -> Option<mpsc::Receiver<envelope::Envelope>> {
        self.rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// The envelope announcing that socket `sid` of `user` joined or left `room` (`event`,
/// `reason`): to the room's other members, in the room's tenant and namespace `ns`.
pub(crate) fn announcement(
    origin: &str,
    ns: &str,
    sid: &str,
    user: &str,
    room: &rooms::ScopedRoom,
    event: &str,
    reason: &str,
) -> envelope::Envelope {
    let data = serde_json::json!({"room": room.room(), "user": user, "sid": sid, "reason": reason});
    let mut env = envelope::Envelope::new(origin, event, data)
        .to_rooms([room.room()])
        .in_ns(ns);
    env.tenant = room.tenant();
    env.sender = Some(sid.to_owned());
    env
}

// What the cluster does with control messages: presence queries and server-side events.
#[allow(
    clippy::wildcard_imports,
    reason = "the cluster's own imports, for its methods"
)]
mod behaviour {
    use super::super::*;

    impl Cluster {
        /// Who is in the scoped `room` of namespace `ns`, on every node that answers within
        /// [`presence::ANSWER_WITHIN`].
        pub async fn presence(&self, ns: &str, room: &ScopedRoom) -> presence::Presence {
            let mut presence = presence::Presence::default();
            presence.add(&self.local_users(ns, room.as_str()));
            let id = envelope::new_id();
            let query = presence::Control::Presence {
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
        /// answers until each live node answered or [`presence::ANSWER_WITHIN`]
        /// passed; returns how many answers were expected, and the answers.
        pub(in crate::cluster) async fn ask_others(
            &self,
            ns: &str,
            id: &str,
            query: &presence::Control,
        ) -> (usize, Vec<presence::Answer>) {
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
                let deadline = tokio::time::Instant::now() + presence::ANSWER_WITHIN;
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
            let message = presence::Control::ServerEvent {
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
        /// [`presence::ANSWER_WITHIN`] for every other live node's answer (what its
        /// handler returned); returns them as (node id, answer).
        pub async fn server_side_emit_with_ack(
            &self,
            ns: &str,
            event: &str,
            args: Vec<Value>,
        ) -> Vec<(String, Value)> {
            let id = envelope::new_id();
            let message = presence::Control::ServerEvent {
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
            handler: impl Fn(&presence::ServerEvent) -> Option<Value> + Send + Sync + 'static,
        ) {
            self.server_handlers.add(Arc::new(handler));
        }

        /// The users of this node's sockets in `room` (a scoped name), with their counts.
        pub(in crate::cluster) fn local_users(&self, ns: &str, room: &str) -> HashMap<String, u32> {
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
        pub(in crate::cluster) async fn on_control(&self, ns: &str, payload: &[u8]) {
            use presence::Control;
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
                    let event = presence::ServerEvent {
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
                Control::Sockets {
                    id,
                    from,
                    tenant,
                    any_tenant,
                    target,
                    action,
                } if from != self.node_id => {
                    let asked = super::super::sockets::Asked {
                        id,
                        from,
                        tenant,
                        any_tenant,
                    };
                    self.on_sockets_query(ns, asked, target, action).await;
                }
                Control::Presence { .. }
                | Control::ServerEvent { .. }
                | Control::Sockets { .. } => {}
                Control::SocketsReply { id, node, sockets } => {
                    let sockets = serde_json::to_value(sockets).unwrap_or(Value::Null);
                    self.presence.answer(&id, (node, sockets));
                }
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
        pub(in crate::cluster) async fn reply(
            &self,
            ns: &str,
            to: &str,
            reply: &presence::Control,
        ) {
            let Ok(bytes) = serde_json::to_vec(reply) else {
                return;
            };
            let channel = self.channels().control_for(ns, to);
            if let Err(e) = self.bus().publish(&channel, Bytes::from(bytes)).await {
                tracing::debug!(error = %e, "could not answer another node");
            }
        }
    }
}
