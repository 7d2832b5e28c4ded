//! The HTTP API: health, readiness, metrics and publish.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use envelope::{DecodeError, Draft, SocketAction, SocketTarget};
use serde_json::json;

use crate::cluster::{Cluster, SocketsAnswer, SocketsError};
use crate::config::Mode;
use crate::metrics::{Refusal, Snapshot};
use crate::telemetry::{self, TRACEPARENT};
use tracing::Instrument as _;

/// What the HTTP handlers share.
#[derive(Debug)]
pub(crate) struct HttpCtx {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) publish_api_key: Option<String>,
    pub(crate) mode: Mode,
    pub(crate) require_tenant: bool,
}

/// The one error type of the HTTP edge: a safe message for the caller, the status chosen
/// in one place.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("missing or wrong publish key (send Authorization: Bearer <PUBLISH_API_KEY>)")]
    Unauthorized,
    #[error("publishing over HTTP is disabled on this node: set PUBLISH_API_KEY")]
    PublishDisabled,
    #[error("{0}")]
    BadEnvelope(#[from] DecodeError),
    #[error("{0}")]
    BadRoom(String),
    #[error("{0}")]
    BadOption(String),
    #[error("the cluster bus is unavailable: delivered to this node's sockets only ({detail})")]
    BusUnavailable {
        /// The message id (delivered locally).
        id: String,
        /// The bus error.
        detail: String,
    },
    #[error("the cluster bus is unavailable: {0}")]
    BusUnavailableRead(String),
    #[error("internal error")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::PublishDisabled => StatusCode::FORBIDDEN,
            Self::BadEnvelope(_) | Self::BadRoom(_) | Self::BadOption(_) => StatusCode::BAD_REQUEST,
            Self::BusUnavailableRead(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BusUnavailable { id, .. } => {
                let body = json!({"error": self.to_string(), "id": id, "delivered_locally": true});
                return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
            }
            Self::Internal(detail) => {
                tracing::error!(%detail, "publish failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, axum::Json(json!({"error": self.to_string()}))).into_response()
    }
}

/// The HTTP routes.
/// Every request of this API is answered, or refused with 408, within `timeout`: a
/// client sending its body slowly holds a connection no longer.
pub(crate) fn router(ctx: Arc<HttpCtx>, max_payload: usize, timeout: Duration) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/health/live", get(|| async { "ok" }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(cluster_view))
        // Room names may hold `/`: the room is everything before the last segment.
        .route("/v1/rooms/{*path}", get(room_resource))
        .route("/v1/sockets/disconnect", post(disconnect))
        .route("/v1/sockets/join", post(join))
        .route("/v1/sockets/leave", post(leave))
        .route(
            "/v1/publish",
            // Twice the envelope limit, so a slightly oversize envelope gets the clear
            // "exceeds the limit" message rather than a bare 413.
            post(publish).layer(DefaultBodyLimit::max(max_payload.saturating_mul(2))),
        )
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .route_layer(axum::middleware::from_fn_with_state(ctx.clone(), observe))
        .with_state(ctx)
}

/// `GET /health`.
#[utoipa::path(
    get,
    path = "/health",
    tag = "cluster",
    responses((status = 200, description = "This node and its bus", body = crate::openapi::HealthAnswer))
)]
pub(crate) async fn health(State(ctx): State<Arc<HttpCtx>>) -> impl IntoResponse {
    let cluster = &ctx.cluster;
    let bus = cluster.bus().health();
    let status = if bus.is_up() { "ok" } else { "degraded" };
    axum::Json(json!({
        "status": status,
        "node_id": cluster.node_id(),
        "mode": ctx.mode.as_str(),
        "bus": {
            "kind": cluster.bus().kind(),
            "publisher": bus.publisher.to_string(),
            "subscriber": bus.subscriber.to_string(),
        },
        "connections": cluster.stats.connections.load(Ordering::Relaxed),
        "rooms": cluster.room_count(),
        "timestamp": envelope::now_ms(),
    }))
}

async fn ready(State(ctx): State<Arc<HttpCtx>>) -> impl IntoResponse {
    match ctx.cluster.readiness() {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn metrics(State(ctx): State<Arc<HttpCtx>>) -> impl IntoResponse {
    let c = &ctx.cluster;
    let s = &c.stats;
    let bus = c.bus().health();
    let n = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    let snapshot = Snapshot {
        gauges: vec![
            (
                "socketio_connections_total",
                "Sockets connected to this node.",
                n(&s.connections) as f64,
            ),
            (
                "socketio_rooms_total",
                "Rooms with at least one member on this node.",
                c.room_count() as f64,
            ),
            (
                "socketio_bus_up",
                "1 when both bus links (publishing and subscribing) are up.",
                f64::from(u8::from(bus.is_up())),
            ),
            (
                "roomcast_bus_publisher_up",
                "1 when the bus's publishing link is up.",
                f64::from(u8::from(bus.publisher.is_up())),
            ),
            (
                "roomcast_bus_subscriber_up",
                "1 when the bus's subscribing link is up.",
                f64::from(u8::from(bus.subscriber.is_up())),
            ),
            (
                "roomcast_bus_channels",
                "Bus channels this node subscribes (its rooms', its namespaces', its own).",
                bus.channels as f64,
            ),
            (
                "roomcast_bus_inbox_depth",
                "Messages from the bus waiting for this node's dispatcher: a backlog that grows means the node cannot keep up.",
                n(&s.inbox_depth) as f64,
            ),
            (
                "roomcast_sockets",
                "Sockets tracked by room membership (all namespaces).",
                c.membership().socket_count() as f64,
            ),
        ],
        counters: vec![
            (
                "roomcast_bus_reconnects_total",
                "Times the bus's subscribing link reconnected.",
                bus.reconnects,
            ),
            (
                "roomcast_bus_subscriptions_repaired_total",
                "Subscriptions made again after the node found them missing (a lost link, a failover, drift from what Redis reports).",
                bus.repaired,
            ),
            (
                "roomcast_bus_messages_total",
                "Messages from other nodes received from the bus.",
                n(&s.delivered),
            ),
            (
                "roomcast_messages_rejected_total",
                "Messages from the bus dropped as undecodable or unroutable.",
                n(&s.rejected),
            ),
            (
                "roomcast_publish_errors_total",
                "Publishes to the bus that failed (the caller got 503).",
                n(&s.publish_errors),
            ),
            (
                "roomcast_connections_refused_total",
                "Connections refused: bad or expired token, or a connection cap.",
                n(&s.connections_refused),
            ),
            (
                "roomcast_joins_refused_total",
                "Joins refused: not allowed, invalid room, another tenant's room, too many rooms.",
                n(&s.joins_refused),
            ),
            (
                "roomcast_rate_limited_total",
                "Client events refused for going over the socket's rate limit.",
                n(&s.rate_limited),
            ),
            (
                "roomcast_rate_limit_disconnects_total",
                "Sockets disconnected for sustained abuse of the rate limits.",
                n(&s.rate_disconnects),
            ),
            (
                "roomcast_slow_consumer_disconnects_total",
                "Sockets disconnected because they did not read what was sent to them.",
                n(&s.slow_consumers),
            ),
            (
                "roomcast_token_expiry_disconnects_total",
                "Sockets disconnected because their token expired without a refresh.",
                n(&s.expired),
            ),
        ],
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        c.metrics().render(&snapshot),
    )
}

/// Counts every API request by route and status, with its duration; a publish refused
/// as malformed counts as a `bad_input` refusal.
async fn observe(
    State(ctx): State<Arc<HttpCtx>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    let status = res.status();
    let metrics = ctx.cluster.metrics();
    metrics.http(&route, status.as_u16(), started.elapsed().as_secs_f64());
    if route == "/v1/publish"
        && matches!(
            status,
            StatusCode::BAD_REQUEST
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::UNPROCESSABLE_ENTITY
        )
    {
        metrics.refused(Refusal::BadInput);
    }
    res
}

/// Checks the `Authorization: Bearer` publish key.
pub(crate) fn check_key(ctx: &HttpCtx, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = ctx.publish_api_key.as_deref() else {
        return Err(ApiError::PublishDisabled);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant time, so the key cannot be guessed byte by byte from response times.
    if bool::from(subtle::ConstantTimeEq::ct_eq(
        given.as_bytes(),
        expected.as_bytes(),
    )) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// The registry's view of the cluster (needs the publish key: it lists node addresses).
/// `GET /v1/cluster`.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "cluster",
    responses(
        (status = 200, description = "The nodes in the registry", body = crate::openapi::ClusterAnswer),
        (status = 401, description = "Missing or wrong publish key", body = crate::openapi::ErrorBody),
        (status = 503, description = "The registry cannot be read", body = crate::openapi::ErrorBody),
    ),
    security(("publish_key" = []))
)]
pub(crate) async fn cluster_view(
    State(ctx): State<Arc<HttpCtx>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    check_key(&ctx, &headers)?;
    let nodes = ctx
        .cluster
        .registry()
        .nodes()
        .await
        .map_err(|e| ApiError::BusUnavailableRead(e.to_string()))?;
    Ok(axum::Json(json!({
        "node_id": ctx.cluster.node_id(),
        "count": nodes.len(),
        "nodes": nodes,
    })))
}

/// Query of `GET /v1/rooms/{room}/history`.
#[derive(Debug, serde::Deserialize)]
struct HistoryQuery {
    /// The room's tenant (absent: the shared scope).
    tenant: Option<String>,
    /// Namespace [default: /].
    ns: Option<String>,
    /// Messages after this offset (exclusive) [default: from the oldest kept].
    since: Option<String>,
    /// At most this many messages, 1-1000 [default: 100].
    limit: Option<usize>,
}

/// `GET /v1/rooms/{room}/history`: the messages addressed to a room of a recovery
/// namespace, oldest first, with their offsets, a page at a time.
async fn room_resource(
    State(ctx): State<Arc<HttpCtx>>,
    headers: HeaderMap,
    axum::extract::Path(path): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    check_key(&ctx, &headers)?;
    if let Some(room) = path.strip_suffix("/presence") {
        return room_presence(&ctx, room, &query).await;
    }
    if let Some(room) = path.strip_suffix("/sockets") {
        return room_sockets(&ctx, &headers, room, query.tenant, query.ns).await;
    }
    let Some(room) = path.strip_suffix("/history") else {
        return Ok((
            StatusCode::NOT_FOUND,
            axum::Json(json!({
                "error": "unknown resource: use /v1/rooms/{room}/history, /presence or /sockets"
            })),
        )
            .into_response());
    };
    if let Some(since) = &query.since
        && !bus::is_offset(since)
    {
        return Err(ApiError::BadOption(format!(
            "since {since:?} is not an offset (<ms>-<seq>, as delivered)"
        )));
    }
    let ns = query.ns.as_deref().unwrap_or("/");
    let page = ctx
        .cluster
        .outbox()
        .room_history(
            ns,
            query.tenant.as_deref(),
            room,
            query.since.as_deref(),
            query.limit.unwrap_or(100),
        )
        .await
        .map_err(|e| match e {
            bus::HistoryError::Bus(e) => ApiError::BusUnavailableRead(e.to_string()),
            other => ApiError::BadRoom(other.to_string()),
        })?;
    let messages: Vec<serde_json::Value> = page
        .messages
        .iter()
        .map(|(offset, env)| {
            json!({
                "offset": offset,
                "id": env.id,
                "ts": env.ts,
                "event": env.event,
                "args": env.arguments(),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "room": room,
        "ns": ns,
        "tenant": query.tenant,
        "messages": messages,
        "next": page.next,
    }))
    .into_response())
}

/// `GET /v1/rooms/{room}/presence`: who is in a room, cluster-wide.
async fn room_presence(
    ctx: &HttpCtx,
    room: &str,
    query: &HistoryQuery,
) -> Result<Response, ApiError> {
    let ns = query.ns.as_deref().unwrap_or("/");
    let (target, _) = rooms::resolve_targets(query.tenant.as_deref(), &[room.to_owned()], &[])
        .map_err(|e| ApiError::BadRoom(e.to_string()))?;
    let rooms::Audience::Rooms(scoped) = target else {
        return Err(ApiError::BadRoom("name one room".into()));
    };
    let Some(scoped) = scoped.first() else {
        return Err(ApiError::BadRoom("name one room".into()));
    };
    let presence = ctx.cluster.presence(ns, scoped).await;
    Ok(axum::Json(json!({
        "room": room,
        "ns": ns,
        "tenant": query.tenant,
        "users": presence.users_json(),
        "count": presence.users.len(),
        "sockets": presence.sockets,
        "nodes_answered": presence.nodes_answered,
        "nodes_expected": presence.nodes_expected,
    }))
    .into_response())
}

/// Options of `POST /v1/publish` that are not part of the envelope.
#[derive(Debug, Default, serde::Deserialize)]
struct PublishOptions {
    /// Wait up to this long for every target socket to acknowledge, and return the
    /// answers (Socket.IO's `emitWithAck`, cluster-wide).
    #[serde(default)]
    ack_timeout_ms: Option<u64>,
}

/// The longest `ack_timeout_ms` accepted: an HTTP request should not hang for minutes.
const MAX_ACK_TIMEOUT_MS: u64 = 30_000;

/// `POST /v1/publish`.
#[utoipa::path(
    post,
    path = "/v1/publish",
    tag = "publish",
    request_body = crate::openapi::PublishRequest,
    responses(
        (status = 202, description = "Delivered to this node's sockets and published to the others", body = crate::openapi::Accepted),
        (status = 200, description = "With ack_timeout_ms: every target socket's answer", body = crate::openapi::Acks),
        (status = 400, description = "Malformed envelope, invalid room, bad option, too large", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong publish key", body = crate::openapi::ErrorBody),
        (status = 503, description = "The bus is down: delivered to this node's sockets only", body = crate::openapi::ErrorBody),
    ),
    security(("publish_key" = []))
)]
pub(crate) async fn publish(
    State(ctx): State<Arc<HttpCtx>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_key(&ctx, &headers)?;
    let cluster = &ctx.cluster;
    let draft = Draft::decode_json(&body, cluster.limits())?;
    if draft.to.is_empty() {
        return Err(ApiError::BadRoom(
            "name the target rooms in \"to\"; [\"*\"] is the whole namespace (of the tenant, when one is named)".into(),
        ));
    }
    let names_tenant =
        draft.tenant.is_some() || draft.to.iter().all(|room| room.starts_with("tenant:"));
    if ctx.require_tenant && !names_tenant {
        return Err(ApiError::BadRoom(
            "this gateway requires a \"tenant\" on every publish (REQUIRE_TENANT)".into(),
        ));
    }
    // A second parse only for the rare request that asks for acks; the common publish
    // reads its body once.
    let options: PublishOptions = if contains(&body, b"\"ack_timeout_ms\"") {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadEnvelope(DecodeError::Malformed(e.to_string())))?
    } else {
        PublishOptions::default()
    };
    // The node stamps itself as origin: it delivers to its own sockets directly and
    // recognises (and skips) its own message when the bus echoes it back.
    let mut env = draft.finish(cluster.node_id());
    env.origin = cluster.node_id().to_owned();
    // The publish span continues the caller's trace (a `traceparent` header, or the
    // body's `trace`), and its context travels in the envelope to every node.
    let incoming = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| env.trace.take());
    let span = tracing::info_span!("publish", server_id = %cluster.node_id(), id = %env.id, event = %env.event);
    telemetry::continue_trace(&span, incoming.as_deref());
    env.trace = telemetry::traceparent_of(&span).or(incoming);
    let bus_error = |e: bus::SendError| match e {
        bus::SendError::InvalidTarget(_) => ApiError::BadRoom(e.to_string()),
        bus::SendError::Publish(e) => ApiError::BusUnavailable {
            id: env.id.clone(),
            detail: e.to_string(),
        },
        other => ApiError::Internal(other.to_string()),
    };
    if let Some(ms) = options.ack_timeout_ms {
        if ms == 0 || ms > MAX_ACK_TIMEOUT_MS {
            return Err(ApiError::BadOption(format!(
                "ack_timeout_ms must be between 1 and {MAX_ACK_TIMEOUT_MS}"
            )));
        }
        let acks = cluster
            .publish_with_ack(&env, Duration::from_millis(ms))
            .instrument(span)
            .await
            .map_err(bus_error)?;
        let body = json!({"id": env.id, "acks": acks});
        return Ok((StatusCode::OK, axum::Json(body)).into_response());
    }
    cluster
        .publish(&env)
        .instrument(span)
        .await
        .map_err(bus_error)?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"id": env.id}))).into_response())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// The server API: act on connected sockets cluster-wide, behind the publish key and
// inside one tenant's scope.
//
// The server API over HTTP: act on connected sockets cluster-wide, behind the publish
// key and inside one tenant's scope.
//
// - `POST /v1/sockets/disconnect` — `{tenant, ns, user|room|socket, reason}`: the sockets
//   receive `disconnect_reason {reason: "disconnected_by_server", message: reason}` and
//   are disconnected (Socket.IO clients do not reconnect after a server disconnect);
// - `POST /v1/sockets/join` / `POST /v1/sockets/leave` — `{tenant, ns, user|room|socket,
//   rooms}`: Socket.IO's `socketsJoin`/`socketsLeave`, through the same membership as a
//   client's own join (subscriptions follow; a join is answered once the rooms' channels
//   are confirmed, so the next publish reaches the sockets);
// - `GET /v1/rooms/{room}/sockets?tenant=&ns=` — the room's sockets on every node.
//
// Each answers `{"sockets": [{sid, node, ns, user, tenant, rooms, transport}], "count",
// "nodes_answered", "nodes_expected"}`.

/// Which sockets a request names (exactly one of `user`, `room`, `socket`), and in
/// which scope.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"tenant": "acme", "user": "ann", "rooms": ["doc:Task:1"], "reason": "account suspended"}))]
pub(crate) struct SocketsRequest {
    /// The tenant whose sockets are meant (absent: the shared scope).
    tenant: Option<String>,
    /// Namespace [default: /].
    ns: Option<String>,
    /// Every socket of this user.
    user: Option<String>,
    /// The members of this room.
    room: Option<String>,
    /// This one socket (its Socket.IO id).
    socket: Option<String>,
    /// Why (disconnect): the client receives it.
    reason: Option<String>,
    /// The rooms to join or leave.
    rooms: Option<Vec<String>>,
}

impl SocketsRequest {
    fn target(&self) -> Result<SocketTarget, ApiError> {
        match (&self.user, &self.room, &self.socket) {
            (Some(u), None, None) => Ok(SocketTarget::User(u.clone())),
            (None, Some(r), None) => Ok(SocketTarget::Room(r.clone())),
            (None, None, Some(s)) => Ok(SocketTarget::Socket(s.clone())),
            _ => Err(ApiError::BadOption(
                "name exactly one of user, room and socket".into(),
            )),
        }
    }

    fn rooms(&self) -> Result<Vec<String>, ApiError> {
        match &self.rooms {
            Some(rooms) if !rooms.is_empty() => Ok(rooms.clone()),
            _ => Err(ApiError::BadOption("rooms: name at least one room".into())),
        }
    }
}

/// Runs `action` for the request; the answer as JSON.
pub(crate) async fn act(
    ctx: &HttpCtx,
    headers: &HeaderMap,
    request: &SocketsRequest,
    action: SocketAction,
) -> Result<Response, ApiError> {
    check_key(ctx, headers)?;
    if ctx.require_tenant && request.tenant.is_none() {
        return Err(ApiError::BadOption(
            "tenant is required on this deployment (REQUIRE_TENANT)".into(),
        ));
    }
    let target = request.target()?;
    let ns = request.ns.as_deref().unwrap_or("/");
    let answer = ctx
        .cluster
        .act_on_sockets(ns, request.tenant.as_deref(), target, action)
        .await
        .map_err(|e| match e {
            SocketsError::Target(e) => ApiError::BadRoom(e.to_string()),
            other => ApiError::BadOption(other.to_string()),
        })?;
    Ok(answer_json(&answer).into_response())
}

fn answer_json(answer: &SocketsAnswer) -> axum::Json<serde_json::Value> {
    axum::Json(json!({
        "sockets": answer.sockets,
        "count": answer.sockets.len(),
        "nodes_answered": answer.nodes_answered,
        "nodes_expected": answer.nodes_expected,
    }))
}

/// `POST /v1/sockets/disconnect`.
#[utoipa::path(
    post,
    path = "/v1/sockets/disconnect",
    tag = "sockets",
    request_body = SocketsRequest,
    responses(
        (status = 200, description = "The sockets told why and disconnected", body = crate::openapi::SocketsAnswer),
        (status = 400, description = "No or several targets, invalid or foreign room, unknown namespace", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong publish key", body = crate::openapi::ErrorBody),
    ),
    security(("publish_key" = []))
)]
pub(crate) async fn disconnect(
    State(ctx): State<Arc<HttpCtx>>,
    headers: HeaderMap,
    axum::Json(request): axum::Json<SocketsRequest>,
) -> Result<Response, ApiError> {
    let reason = request
        .reason
        .clone()
        .unwrap_or_else(|| "disconnected by the server".to_owned());
    act(
        &ctx,
        &headers,
        &request,
        SocketAction::Disconnect { reason },
    )
    .await
}

/// `POST /v1/sockets/join`.
#[utoipa::path(
    post,
    path = "/v1/sockets/join",
    tag = "sockets",
    request_body = SocketsRequest,
    responses(
        (status = 200, description = "The sockets made to join (once the rooms' channels are confirmed)", body = crate::openapi::SocketsAnswer),
        (status = 400, description = "No or several targets, invalid or foreign room, unknown namespace", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong publish key", body = crate::openapi::ErrorBody),
    ),
    security(("publish_key" = []))
)]
pub(crate) async fn join(
    State(ctx): State<Arc<HttpCtx>>,
    headers: HeaderMap,
    axum::Json(request): axum::Json<SocketsRequest>,
) -> Result<Response, ApiError> {
    let rooms = request.rooms()?;
    act(&ctx, &headers, &request, SocketAction::Join { rooms }).await
}

/// `POST /v1/sockets/leave`.
#[utoipa::path(
    post,
    path = "/v1/sockets/leave",
    tag = "sockets",
    request_body = SocketsRequest,
    responses(
        (status = 200, description = "The sockets made to leave", body = crate::openapi::SocketsAnswer),
        (status = 400, description = "No or several targets, invalid or foreign room, unknown namespace", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong publish key", body = crate::openapi::ErrorBody),
    ),
    security(("publish_key" = []))
)]
pub(crate) async fn leave(
    State(ctx): State<Arc<HttpCtx>>,
    headers: HeaderMap,
    axum::Json(request): axum::Json<SocketsRequest>,
) -> Result<Response, ApiError> {
    let rooms = request.rooms()?;
    act(&ctx, &headers, &request, SocketAction::Leave { rooms }).await
}

/// `GET /v1/rooms/{room}/sockets` (the query's tenant and namespace).
pub(crate) async fn room_sockets(
    ctx: &HttpCtx,
    headers: &HeaderMap,
    room: &str,
    tenant: Option<String>,
    ns: Option<String>,
) -> Result<Response, ApiError> {
    let request = SocketsRequest {
        tenant,
        ns,
        user: None,
        room: Some(room.to_owned()),
        socket: None,
        reason: None,
        rooms: None,
    };
    act(ctx, headers, &request, SocketAction::List).await
}
