//! Any node serves any Engine.IO session's requests, so a load balancer needs no session
//! affinity, for long-polling as for WebSocket.
//!
//! Each node marks the session ids it hands out with its [`SidTag`] (the id's first
//! four characters) and announces the tag with its address in the cluster registry. A
//! request whose `sid` carries another node's tag is handed to that node: a polling
//! `GET` or `POST` is relayed and its answer returned; a WebSocket upgrade is relayed
//! and, once the owner accepts it, tunnelled byte for byte. Handed-on requests carry the
//! sending node's [`credentials`]; a node serves one only with valid credentials, and
//! never hands it on again. A session whose owner is gone is answered as Engine.IO
//! answers an unknown session, so the client reconnects at once. docs/architecture.md
//! says why the owner is found this way.

mod credentials;
mod proxy;
mod tag;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::cluster::Cluster;
use crate::registry::Registry;
pub use credentials::{CredentialError, HEADER as FORWARDED_HEADER, MAX_SKEW, NodeKey};
pub use tag::SidTag;

/// How soon after one registry read a lookup of an unknown tag may read it again.
const REFRESH_MIN: Duration = Duration::from_millis(250);
/// How long a peer's address is used before the registry is read again for it.
const PEER_TTL: Duration = Duration::from_secs(10);

/// What a node hands on for other nodes, and within which bounds.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// The cluster's secret for node credentials; `None`: this node neither hands
    /// requests on nor accepts handed-on ones (requests for other nodes' sessions are
    /// answered as unknown sessions).
    pub key: Option<NodeKey>,
    /// Polling requests handed on at once; past it, `503`.
    pub max_requests: usize,
    /// WebSocket tunnels open at once; past it, `503`.
    pub max_tunnels: usize,
    /// How long a handed-on polling request may take (a long-poll `GET` waits up to the
    /// ping interval for messages), and a WebSocket upgrade for the owner's answer.
    pub timeout: Duration,
    /// The largest polling body handed on (the Engine.IO `maxPayload`).
    pub max_body: usize,
}

/// Where another node is reached.
#[derive(Debug, Clone)]
struct Peer {
    node_id: String,
    /// `http://host:port`, no trailing slash.
    base: String,
}

/// The registry's view of the other nodes, by tag.
#[derive(Debug, Default)]
struct Peers {
    by_tag: HashMap<SidTag, Peer>,
    read_at: Option<Instant>,
}

/// Hands requests for other nodes' sessions to their owners; see the module
/// documentation.
#[derive(Debug)]
pub struct Forwarder {
    tag: SidTag,
    settings: ForwardSettings,
    socketio_path: Arc<str>,
    cluster: Arc<Cluster>,
    peers: tokio::sync::Mutex<Peers>,
    client: proxy::Client,
    requests: Arc<tokio::sync::Semaphore>,
    tunnels: Arc<tokio::sync::Semaphore>,
}

impl Forwarder {
    /// A forwarder for the node of `cluster`, whose sessions carry `tag`.
    pub fn new(
        tag: SidTag,
        settings: ForwardSettings,
        socketio_path: &str,
        cluster: Arc<Cluster>,
    ) -> Self {
        Self {
            tag,
            requests: Arc::new(tokio::sync::Semaphore::new(settings.max_requests)),
            tunnels: Arc::new(tokio::sync::Semaphore::new(settings.max_tunnels)),
            settings,
            socketio_path: socketio_path.into(),
            cluster,
            peers: tokio::sync::Mutex::default(),
            client: proxy::client(),
        }
    }

    /// This node's tag.
    pub fn tag(&self) -> SidTag {
        self.tag
    }

    /// The owner of `tag`, from the registry (read again when the tag is unknown or its
    /// address old, at most every [`REFRESH_MIN`]).
    async fn peer(&self, tag: SidTag) -> Option<Peer> {
        let mut peers = self.peers.lock().await;
        let fresh = peers.read_at.is_some_and(|t| t.elapsed() < PEER_TTL);
        if fresh && let Some(peer) = peers.by_tag.get(&tag) {
            return Some(peer.clone());
        }
        if peers.read_at.is_none_or(|t| t.elapsed() >= REFRESH_MIN) {
            match self.cluster.registry().nodes().await {
                Ok(nodes) => {
                    peers.by_tag = nodes
                        .into_iter()
                        .filter(|n| n.node_id != self.cluster.node_id())
                        .filter_map(|n| {
                            let tag = SidTag::parse(n.sid_tag.as_deref()?)?;
                            let base = n.address.trim_end_matches('/').to_owned();
                            Some((
                                tag,
                                Peer {
                                    node_id: n.node_id,
                                    base,
                                },
                            ))
                        })
                        .collect();
                    peers.read_at = Some(Instant::now());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the registry to find a session's node")
                }
            }
        }
        peers.by_tag.get(&tag).cloned()
    }

    /// Forgets `tag`'s owner (unreachable): the next request reads the registry again.
    async fn forget(&self, tag: SidTag) {
        self.peers.lock().await.by_tag.remove(&tag);
    }
}

/// A random tag no live node of the registry holds (a registry that cannot be read
/// leaves the first draw; two nodes drawing the same tag at once is a 1 in 16.7 million
/// chance, and costs the sessions of one of them a reconnect).
pub(crate) async fn unused_tag(registry: &Registry) -> SidTag {
    let taken: Vec<String> = match registry.nodes().await {
        Ok(nodes) => nodes.into_iter().filter_map(|n| n.sid_tag).collect(),
        Err(_) => Vec::new(),
    };
    loop {
        let tag = SidTag::random();
        if !taken.iter().any(|t| t == tag.as_str()) {
            return tag;
        }
    }
}

/// The middleware in front of the Engine.IO layer: serves this node's sessions and
/// handshakes here, hands other nodes' sessions to them, checks handed-on requests.
pub(crate) async fn route(
    State(fwd): State<Arc<Forwarder>>,
    mut req: Request,
    next: Next,
) -> Response {
    if !req.uri().path().starts_with(&*fwd.socketio_path) {
        return next.run(req).await;
    }
    let tag = session_id(&req).and_then(|sid| SidTag::of_sid(&sid));
    if let Some(credentials) = req.headers_mut().remove(credentials::HEADER) {
        // Handed on by another node: served here or not at all.
        let Some(key) = &fwd.settings.key else {
            return refuse(&fwd, CredentialError::NoKey);
        };
        let path = req.uri().path_and_query().map_or("", |p| p.as_str());
        if let Err(e) = key.verify(&credentials, envelope::now_ms(), req.method(), path) {
            return refuse(&fwd, e);
        }
        fwd.cluster.metrics().forwarded_in(true);
        if tag.is_some_and(|t| t != fwd.tag) {
            return unknown_session();
        }
        return next.run(req).await;
    }
    match tag {
        Some(tag) if tag != fwd.tag => proxy::hand_on(&fwd, tag, req).await,
        // Handshakes, this node's sessions, and ids no node hands out (the engine
        // answers those as unknown).
        _ => next.run(req).await,
    }
}

/// The `sid` query parameter.
fn session_id(req: &Request) -> Option<String> {
    form_urlencoded::parse(req.uri().query()?.as_bytes())
        .find(|(k, _)| k == "sid")
        .map(|(_, v)| v.into_owned())
}

/// A handed-on request whose credentials do not hold.
fn refuse(fwd: &Forwarder, why: CredentialError) -> Response {
    fwd.cluster.metrics().forwarded_in(false);
    tracing::warn!(reason = %why, "refused a request handed on as from another node");
    (StatusCode::FORBIDDEN, why.to_string()).into_response()
}

/// What Engine.IO answers for a session it does not hold (engineioxide's exact
/// response), so every client reconnects at once.
fn unknown_session() -> Response {
    let mut res = Response::new(Body::from(r#"{"code":"1","message":"Session ID unknown"}"#));
    *res.status_mut() = StatusCode::BAD_REQUEST;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
