//! Handing a request to the node that holds its session: a polling request relayed and
//! its answer returned, a WebSocket upgrade relayed and then tunnelled.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{Forwarder, Peer, SidTag, credentials, unknown_session};

/// The HTTP/1 client nodes reach each other with (pooled connections).
pub(super) type Client = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// How long connecting to another node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Headers of one hop only (RFC 9110 §7.6.1), never relayed.
const HOP_BY_HOP: [header::HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub(super) fn client() -> Client {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(http)
}

/// What became of a handed-on request: the `result` label of
/// `roomcast_forwarded_requests_total`.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ok,
    OwnerGone,
    Busy,
    Timeout,
    TooLarge,
    NoKey,
    Error,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::OwnerGone => "owner_gone",
            Outcome::Busy => "busy",
            Outcome::Timeout => "timeout",
            Outcome::TooLarge => "too_large",
            Outcome::NoKey => "no_key",
            Outcome::Error => "error",
        }
    }
}

/// Hands `req`, of a session `tag`'s node holds, to that node.
pub(super) async fn hand_on(fwd: &Forwarder, tag: SidTag, req: Request) -> Response {
    let websocket = is_websocket_upgrade(req.headers());
    let kind = if websocket { "websocket" } else { "polling" };
    let started = Instant::now();
    let (outcome, response) = relay(fwd, tag, req, websocket).await;
    let seconds = matches!(outcome, Outcome::Ok).then(|| started.elapsed().as_secs_f64());
    fwd.cluster
        .metrics()
        .forwarded(kind, outcome.as_str(), seconds);
    response
}

async fn relay(
    fwd: &Forwarder,
    tag: SidTag,
    mut req: Request,
    websocket: bool,
) -> (Outcome, Response) {
    let Some(key) = &fwd.settings.key else {
        return (Outcome::NoKey, unknown_session());
    };
    let Some(peer) = fwd.peer(tag).await else {
        return (Outcome::OwnerGone, unknown_session());
    };
    let limit = if websocket {
        &fwd.tunnels
    } else {
        &fwd.requests
    };
    let Ok(permit) = limit.clone().try_acquire_owned() else {
        let busy = (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests handed to other nodes",
        );
        return (Outcome::Busy, busy.into_response());
    };
    let Some(uri) = peer_uri(&peer, req.uri()) else {
        tracing::warn!(node = %peer.node_id, address = %peer.base, "another node's address is not a plain http:// URL; cannot hand it requests (set its ADVERTISED_URL)");
        return (Outcome::Error, bad_gateway());
    };
    let on_client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let body = if websocket {
        Bytes::new()
    } else {
        match Limited::new(body, fwd.settings.max_body).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                return (
                    Outcome::TooLarge,
                    StatusCode::PAYLOAD_TOO_LARGE.into_response(),
                );
            }
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = hyper::Request::new(Full::new(body));
    *out.method_mut() = parts.method.clone();
    *out.uri_mut() = uri;
    *out.headers_mut() = end_to_end(&parts.headers);
    out.headers_mut().remove(header::HOST);
    if websocket {
        out.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        out.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    out.headers_mut().insert(
        credentials::HEADER,
        key.sign(fwd.tag, envelope::now_ms(), &parts.method, path),
    );

    let mut res = match tokio::time::timeout(fwd.settings.timeout, fwd.client.request(out)).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) if e.is_connect() => {
            tracing::debug!(node = %peer.node_id, error = %e, "a session's node is unreachable; answered as an unknown session");
            fwd.forget(tag).await;
            return (Outcome::OwnerGone, unknown_session());
        }
        Ok(Err(e)) => {
            // The owner dropped the request (it crashed or is stopping): to the client
            // the session is gone, and a 5xx would make balancers count this node as
            // failing.
            tracing::debug!(node = %peer.node_id, error = %e, "handing a request to its session's node failed; answered as an unknown session");
            return (Outcome::Error, unknown_session());
        }
        Err(_) => {
            return (
                Outcome::Timeout,
                StatusCode::GATEWAY_TIMEOUT.into_response(),
            );
        }
    };

    if let Some(on_client_upgrade) = on_client_upgrade
        && res.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let on_owner_upgrade = hyper::upgrade::on(&mut res);
        let node = peer.node_id.clone();
        tokio::spawn(async move {
            // Held as long as the tunnel is open.
            let _permit = permit;
            match tokio::join!(on_client_upgrade, on_owner_upgrade) {
                (Ok(client), Ok(owner)) => {
                    let (mut client, mut owner) = (TokioIo::new(client), TokioIo::new(owner));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut owner).await {
                        tracing::debug!(%node, error = %e, "WebSocket tunnel ended with an error");
                    }
                }
                (client, owner) => tracing::debug!(
                    %node,
                    client = ?client.err(),
                    owner = ?owner.err(),
                    "WebSocket tunnel not established"
                ),
            }
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *response.headers_mut() = res.headers().clone();
        return (Outcome::Ok, response);
    }

    let status = res.status();
    let headers = end_to_end(res.headers());
    // A polling answer is at most a few payloads; read it whole within the same bound.
    let limit = fwd
        .settings
        .max_body
        .saturating_mul(4)
        .saturating_add(64 << 10);
    let body = match Limited::new(res.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            tracing::debug!(node = %peer.node_id, error = %e, "reading another node's answer failed; answered as an unknown session");
            return (Outcome::Error, unknown_session());
        }
    };
    drop(permit);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    (Outcome::Ok, response)
}

/// `uri`'s path and query on `peer`, if `peer` is reached over plain HTTP.
fn peer_uri(peer: &Peer, uri: &Uri) -> Option<Uri> {
    if !peer.base.starts_with("http://") {
        return None;
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{}{path}", peer.base).parse().ok()
}

/// `headers` without the hop-by-hop ones, and without CORS headers (this node's CORS
/// layer answers for itself).
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if HOP_BY_HOP.contains(name)
            || name.as_str().starts_with("access-control-")
            || name == header::CONTENT_LENGTH
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Whether the request asks for a WebSocket upgrade.
fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn bad_gateway() -> Response {
    (
        StatusCode::BAD_GATEWAY,
        "the node holding this session did not answer",
    )
        .into_response()
}
