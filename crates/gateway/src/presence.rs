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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// How long a query waits for the other nodes.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// One room's presence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Presence {
    /// Each user in the room and how many sockets they have there, by user id.
    pub users: BTreeMap<String, u32>,
    /// Sockets in the room, all users together.
    pub sockets: u32,
    /// Nodes that answered (this one included).
    pub nodes_answered: usize,
    /// Nodes the registry knows (this one included); more than answered means some
    /// did not answer in time and their sockets are not counted.
    pub nodes_expected: usize,
}

impl Presence {
    /// The users as the API and the client request list them: `[{user, sockets}]`.
    pub fn users_json(&self) -> Vec<serde_json::Value> {
        self.users
            .iter()
            .map(|(user, sockets)| serde_json::json!({"user": user, "sockets": sockets}))
            .collect()
    }

    /// Adds one node's answer.
    pub(crate) fn add(&mut self, users: &HashMap<String, u32>) {
        for (user, n) in users {
            *self.users.entry(user.clone()).or_default() += n;
            self.sockets += n;
        }
        self.nodes_answered += 1;
    }
}

/// A control message on the bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Control {
    /// Who of yours is in `room` (a scoped room name)? Answer on `from`'s channel.
    Presence {
        id: String,
        from: String,
        room: String,
    },
    /// This node's answer.
    PresenceReply {
        id: String,
        node: String,
        users: HashMap<String, u32>,
    },
    /// A server-side event for the other nodes' handlers; `id` when the sender waits
    /// for their answers.
    ServerEvent {
        id: Option<String>,
        from: String,
        event: String,
        args: Vec<serde_json::Value>,
    },
    /// One node's answer to a server-side event.
    ServerEventReply {
        id: String,
        node: String,
        data: serde_json::Value,
    },
}

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
