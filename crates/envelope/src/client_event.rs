//! What a service receives for one client event the gateway forwards to it (a Redis
//! Stream entry's `event` field, or a webhook's body), as JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One client event forwarded to a service, with who sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientEvent {
    /// Format version, 1.
    pub v: u32,
    /// Unique id of this forwarding (not the stream entry id).
    pub id: String,
    /// When the gateway received the event, ms since the Unix epoch.
    pub ts: u64,
    /// The gateway node the client is connected to.
    pub node: String,
    /// Namespace.
    pub ns: String,
    /// The client's Socket.IO socket id: reply to it with an envelope's `socket`.
    pub sid: String,
    /// The sender's user id (token subject).
    pub user: String,
    /// The sender's tenant, if its token has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Event name.
    pub event: String,
    /// The event's arguments, as the client sent them (without its ack callback).
    #[serde(default)]
    pub args: Vec<Value>,
    /// W3C `traceparent`, when the gateway traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}
