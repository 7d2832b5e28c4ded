//! What a node announces in the cluster registry.

use serde::{Deserialize, Serialize};

/// One node's heartbeat record, stored as JSON under `{prefix}:nodes:{node_id}` with a
/// TTL; a node that stops refreshing it disappears from the registry when it expires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node id.
    pub node_id: String,
    /// Where clients and operators reach it (`http://host:port`).
    pub address: String,
    /// Sockets connected.
    pub connections: u64,
    /// Rooms with local members.
    pub rooms: u64,
    /// Start time, ms since the epoch.
    pub started_ms: u64,
    /// Time of this heartbeat, ms since the epoch.
    pub ts: u64,
    /// Gateway version.
    pub version: String,
    /// The first characters of every Engine.IO session id this node hands out: a node
    /// receiving a request of another node's session finds its owner by this tag.
    /// Absent in the records of nodes older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid_tag: Option<String>,
}
