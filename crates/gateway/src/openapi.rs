//! The HTTP API's schemas (the JSON bodies as the handlers read and write them) and the
//! rooms resource's operations, for the OpenAPI document `api_doc` assembles.

use utoipa::ToSchema;

/// An envelope to publish; `v`, `id`, `ts` and `origin` are filled in when absent.
#[derive(ToSchema)]
#[schema(example = json!({"tenant": "acme", "event": "invoice.paid", "to": ["user:ann"], "data": {"id": 7}}))]
#[allow(dead_code, reason = "a schema: read by the OpenAPI generator only")]
pub(crate) struct PublishRequest {
    /// Envelope version (1).
    v: Option<u32>,
    /// Message id (for de-duplication and logs).
    id: Option<String>,
    /// Namespace [default: /].
    ns: Option<String>,
    /// The tenant whose rooms `to` and `except` name (absent: the shared scope).
    tenant: Option<String>,
    /// The event name the clients receive.
    event: String,
    /// One argument (exclusive with `args`).
    data: Option<serde_json::Value>,
    /// Several arguments.
    args: Option<Vec<serde_json::Value>>,
    /// Binary attachments (base64), referenced by `{"_placeholder": true, "num": N}`.
    attachments: Option<Vec<String>>,
    /// Target rooms (`kind:id`); `["*"]` is the whole namespace (of the tenant).
    to: Vec<String>,
    /// Rooms whose members must not receive it.
    except: Option<Vec<String>>,
    /// `{"volatile": true}` may drop it for clients not ready.
    flags: Option<serde_json::Value>,
    /// Wait this long (1-30000 ms) for every target socket's acknowledgement.
    ack_timeout_ms: Option<u64>,
}

/// A publish accepted: delivered to this node's sockets and published to the others.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema")]
pub(crate) struct Accepted {
    /// The message id.
    id: String,
}

/// The acknowledgements of a publish with `ack_timeout_ms`.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema")]
pub(crate) struct Acks {
    /// The message id.
    id: String,
    /// One per target socket.
    acks: Vec<Ack>,
}

/// One socket's answer, or why there is none.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema")]
pub(crate) struct Ack {
    /// The socket.
    sid: String,
    /// What it answered.
    data: Option<serde_json::Value>,
    /// Why it did not (e.g. `ack timeout error`).
    error: Option<String>,
}

/// A refused request.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema")]
pub(crate) struct ErrorBody {
    /// Why.
    error: String,
    /// The message id, when a publish reached this node's sockets only (503).
    id: Option<String>,
    /// True on a 503 publish: this node's sockets got it, the others did not.
    delivered_locally: Option<bool>,
}

/// One page of a room's history.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema")]
pub(crate) struct HistoryPage {
    room: String,
    ns: String,
    tenant: Option<String>,
    /// Oldest first.
    messages: Vec<HistoryMessage>,
    /// Pass as `since` for the next page; null at the end.
    next: Option<String>,
}

/// A recorded message.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema")]
pub(crate) struct HistoryMessage {
    /// Its offset in the history (`<ms>-<seq>`).
    offset: String,
    id: String,
    ts: u64,
    event: String,
    args: Vec<serde_json::Value>,
}

/// Who is in a room, cluster-wide.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema")]
pub(crate) struct PresenceAnswer {
    room: String,
    ns: String,
    tenant: Option<String>,
    users: Vec<PresenceUser>,
    /// Users.
    count: usize,
    /// Sockets, all users together.
    sockets: u32,
    nodes_answered: usize,
    /// More than answered: some nodes' sockets are missing.
    nodes_expected: usize,
}

/// A user in a room.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema")]
pub(crate) struct PresenceUser {
    user: String,
    sockets: u32,
}

/// The sockets acted on, cluster-wide.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema")]
pub(crate) struct SocketsAnswer {
    sockets: Vec<Socket>,
    count: usize,
    nodes_answered: usize,
    nodes_expected: usize,
}

/// A connected socket.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema")]
pub(crate) struct Socket {
    sid: String,
    node: String,
    ns: String,
    user: String,
    tenant: Option<String>,
    /// `kind:id`, without the tenant scope.
    rooms: Vec<String>,
    /// `websocket` or `polling`.
    transport: String,
}

/// The nodes in the registry.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema")]
pub(crate) struct ClusterAnswer {
    /// The node that answered.
    node_id: String,
    count: usize,
    nodes: Vec<serde_json::Value>,
}

/// This node's health.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema")]
pub(crate) struct HealthAnswer {
    /// `ok` or `degraded`.
    status: String,
    node_id: String,
    mode: String,
    bus: serde_json::Value,
    connections: u64,
    rooms: usize,
    timestamp: u64,
}

/// `GET /v1/rooms/{room}/history` (served by the rooms resource handler).
#[utoipa::path(
    get,
    path = "/v1/rooms/{room}/history",
    tag = "rooms",
    params(
        ("room" = String, Path, description = "The room (`kind:id`)", example = "doc:Task:1"),
        ("tenant" = Option<String>, Query, description = "The room's tenant"),
        ("ns" = Option<String>, Query, description = "Namespace (a recovery namespace) [default: /]"),
        ("since" = Option<String>, Query, description = "Messages after this offset"),
        ("limit" = Option<usize>, Query, description = "1-1000 [default: 100]"),
    ),
    responses(
        (status = 200, description = "One page, oldest first", body = HistoryPage),
        (status = 400, description = "Invalid room, namespace without history, bad offset", body = ErrorBody),
        (status = 401, description = "Missing or wrong publish key", body = ErrorBody),
    ),
    security(("publish_key" = []))
)]
#[allow(dead_code, reason = "an operation's description")]
pub(crate) fn history() {}

/// `GET /v1/rooms/{room}/presence`.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room}/presence",
    tag = "rooms",
    params(
        ("room" = String, Path, description = "The room (`kind:id`)", example = "doc:Task:1"),
        ("tenant" = Option<String>, Query, description = "The room's tenant"),
        ("ns" = Option<String>, Query, description = "Namespace [default: /]"),
    ),
    responses(
        (status = 200, description = "Who is in the room on every node that answered", body = PresenceAnswer),
        (status = 400, description = "Invalid room", body = ErrorBody),
        (status = 401, description = "Missing or wrong publish key", body = ErrorBody),
    ),
    security(("publish_key" = []))
)]
#[allow(dead_code, reason = "an operation's description")]
pub(crate) fn presence() {}

/// `GET /v1/rooms/{room}/sockets`.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room}/sockets",
    tag = "sockets",
    params(
        ("room" = String, Path, description = "The room (`kind:id`)", example = "user:ann"),
        ("tenant" = Option<String>, Query, description = "The room's tenant"),
        ("ns" = Option<String>, Query, description = "Namespace [default: /]"),
    ),
    responses(
        (status = 200, description = "The room's sockets on every node that answered", body = SocketsAnswer),
        (status = 400, description = "Invalid room or namespace", body = ErrorBody),
        (status = 401, description = "Missing or wrong publish key", body = ErrorBody),
    ),
    security(("publish_key" = []))
)]
#[allow(dead_code, reason = "an operation's description")]
pub(crate) fn room_sockets() {}
