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
