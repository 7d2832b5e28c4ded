//! Server assembly: a [`Node`] is the cluster view, the Socket.IO layer with its
//! namespaces and the HTTP routes, built from a [`Config`] over a bus; [`run`] serves one
//! until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bus::{Bus, Inbox, MemoryHub, Outbox};
use envelope::Limits;
use rooms::Channels;
use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::adapter::{BusAdapter, InitRes};
use crate::auth::Authenticator;
use crate::cluster::{Cluster, ClusterSettings};
use crate::config::{Config, Mode};
use crate::forward::Forwarder;
use crate::registry::RegistryError;
use crate::{demo, http, sio};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The JWT key is unusable.
    #[error("{0}")]
    Key(String),
    /// The Redis configuration (URL, TLS material, cluster nodes) is unusable.
    #[error("redis: {0}")]
    Redis(String),
    /// The bus refused the node's base subscriptions.
    #[error("cannot subscribe to the bus: {0}")]
    Bus(#[from] bus::SubscribeError),
    /// Another live node holds this node's id.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The TLS certificate or key is unusable.
    #[error("{0}")]
    Tls(String),
    /// Serving failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// A built node, ready to serve.
#[derive(Debug)]
pub struct Node {
    /// The HTTP + Socket.IO application.
    pub router: axum::Router,
    /// The cluster view (for tests and embedding).
    pub cluster: Arc<Cluster>,
    /// The Socket.IO handle, e.g. to emit from embedding code.
    pub io: SocketIo<BusAdapter>,
    /// Hands requests of other nodes' sessions to them.
    pub forwarder: Arc<Forwarder>,
    node_ttl: std::time::Duration,
    advertised_url: Option<String>,
    header_timeout: Duration,
    /// Native TLS on every accepted connection.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Not ready but serving this long after the shutdown signal.
    shutdown_drain: Duration,
    /// The node's background tasks (bus dispatcher, token expiry); stopped when the
    /// node is dropped, so a stopped node leaves nothing running.
    tasks: Tasks,
}

/// Background tasks aborted on drop.
#[derive(Debug, Default)]
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Node {
    /// Builds a node over `bus`, whose incoming messages arrive on `inbox`, serving the
    /// gateway's own namespaces (JWT auth, automatic rooms, `join`/`leave`).
    pub async fn build(
        config: &Config,
        bus: Arc<dyn Bus>,
        inbox: Inbox,
    ) -> Result<Self, StartError> {
        let auth = Authenticator::new(
            &config.jwt_keys,
            config.token_rules.clone(),
            config.claims.clone(),
        )
        .map_err(StartError::Key)?;
        Self::build_with(config, bus, inbox, move |io, cluster| {
            let ctx = Arc::new(sio::SocketCtx {
                auth,
                cluster,
                rate_limits: config.rate_limits,
                upstream: Arc::new(crate::upstream::Upstream::new(config.upstream.clone())),
            });
            let mut ready: Vec<_> = config
                .namespaces
                .iter()
                .map(|ns| sio::register(io, ns, ctx.clone()))
                .collect();
            if let Some(admin) = &config.admin_ui {
                ready.push(crate::admin::register(
                    io,
                    ctx.cluster.clone(),
                    admin.clone(),
                ));
            }
            ready
        })
        .await
    }

    /// Builds a node whose namespaces are registered by `namespaces` (which returns each
    /// namespace's start-up future) instead of the gateway's own handlers: the same
    /// cluster adapter, bus and HTTP API, with other socket behaviour. Used by the
    /// benchmark server; handlers should join rooms through [`Cluster::join`].
    pub async fn build_with<F>(
        config: &Config,
        bus: Arc<dyn Bus>,
        inbox: Inbox,
        namespaces: F,
    ) -> Result<Self, StartError>
    where
        F: FnOnce(&SocketIo<BusAdapter>, Arc<Cluster>) -> Vec<InitRes>,
    {
        let tls = match &config.tls {
            Some(files) => Some(crate::tls::server_config(files).map_err(StartError::Tls)?),
            None => None,
        };
        let limits = Limits::default().with_max_size(config.max_payload);
        let outbox = Outbox::new(bus, Channels::new(config.channel_prefix.clone())).with_recording(
            bus::Recording {
                namespaces: config.recovery.namespaces.clone(),
                max_len: config.recovery.max_len,
                ttl: config.recovery.window,
            },
        );
        let cluster = Arc::new(Cluster::new(
            config.node_id.clone(),
            outbox,
            ClusterSettings {
                limits,
                // The Admin UI's namespace too: its events cross the bus like any other.
                namespaces: config
                    .namespaces
                    .iter()
                    .cloned()
                    .chain(
                        config
                            .admin_ui
                            .as_ref()
                            .map(|_| crate::admin::NAMESPACE.to_owned()),
                    )
                    .collect(),
                legacy_channel: config.legacy_channel.clone(),
                connection_limits: config.connection_limits,
                require_tenant: config.token_rules.require_tenant,
                max_event_types: config.max_event_types,
                recovery: config.recovery.clone(),
                presence_events: config.presence_events.clone(),
                compat: config.compat.clone(),
            },
        ));
        cluster.registry().check_unique(config.node_ttl).await?;
        let sid_tag = crate::forward::unused_tag(cluster.registry()).await;
        // A bus that is down at start is not fatal: the subscription is remembered and
        // made when the bus connects; meanwhile the node serves local sockets.
        if let Err(e) = cluster.bus().subscribe(cluster.base_channels()).await {
            tracing::warn!(error = %e, "bus unavailable at start; serving local sockets until it connects");
        }

        let (layer, io) = SocketIo::builder()
            .req_path(config.socketio_path.clone())
            .ping_interval(config.ping_interval)
            .ping_timeout(config.ping_timeout)
            .max_payload(config.max_payload as u64)
            // The same limit for WebSocket messages (engineioxide's default is 64 MiB).
            .ws_max_message_size(config.max_payload)
            .ws_max_frame_size(config.max_payload)
            .ws_read_buffer_size(config.ws_read_buffer)
            .max_buffer_size(config.socket_buffer)
            // A socket that does not read what is sent to it is disconnected as a slow
            // consumer once this much waits for it, instead of losing messages silently.
            .max_queued_bytes(config.socket_buffer_bytes)
            // Frames written by the sender, one task per connection (vendor/README.md).
            .ws_direct_writes(config.ws_direct_writes)
            // A session must authenticate this soon, or it is closed: an unauthenticated
            // connection holds as little as possible for as short as possible.
            .connect_timeout(config.connect_timeout)
            // Session ids carry this node's tag: any node can hand it its requests.
            .engine_sid_generator(move || sid_tag.new_sid())
            .with_adapter::<BusAdapter>(cluster.clone() as Arc<dyn crate::adapter::AdapterHost>)
            .build_layer();
        cluster.set_io(io.clone());

        for ready in namespaces(&io, cluster.clone()) {
            ready.await;
        }
        let mut tasks = Tasks(vec![
            tokio::spawn(cluster.clone().dispatch(inbox)),
            tokio::spawn(cluster.clone().expire_tokens()),
        ]);
        if !config.recovery.namespaces.is_empty() {
            tasks.0.push(tokio::spawn(cluster.clone().sessions()));
        }
        if !config.presence_events.is_empty() {
            tasks.0.push(tokio::spawn(cluster.clone().announcements()));
        }

        let http_ctx = Arc::new(http::HttpCtx {
            cluster: cluster.clone(),
            publish_api_key: config.publish_api_key.clone(),
            mode: config.mode,
            require_tenant: config.token_rules.require_tenant,
        });
        let mut router = http::router(http_ctx, config.max_payload, config.request_timeout).route(
            "/v1/openapi.json",
            axum::routing::get(|| async { axum::Json(crate::api_doc::document()) }),
        );
        if let Some(dir) = config.admin_ui.as_ref().and_then(|a| a.static_dir.as_ref()) {
            // The official UI's static build, from the same origin as its socket.
            router = router.nest_service("/admin/ui", tower_http::services::ServeDir::new(dir));
        }
        if config.mode == Mode::Development {
            let dev = config.dev.as_ref();
            router = router.merge(demo::router(Arc::new(demo::DemoCtx {
                node_id: config.node_id.clone(),
                socketio_path: config.socketio_path.clone(),
                namespaces: config.namespaces.clone(),
                // Pre-filled only on a loopback listener: on any other address the page
                // would hand credentials to the whole network (pass them in the URL
                // fragment instead).
                dev_token: dev
                    .filter(|_| config.host.is_loopback())
                    .and_then(|d| d.token().ok()),
                publish_key: dev
                    .filter(|d| d.generated_publish_key && config.host.is_loopback())
                    .and(config.publish_api_key.clone()),
            })));
        }
        if config.forward.key.is_none()
            && (!config.redis_cluster_nodes.is_empty() || config.redis_url.is_some())
        {
            tracing::warn!(
                "no CLUSTER_SECRET or PUBLISH_API_KEY: requests of sessions held by other nodes are answered as unknown sessions, so long-polling clients need sticky sessions"
            );
        }
        let forwarder = Arc::new(Forwarder::new(
            sid_tag,
            config.forward.clone(),
            &config.socketio_path,
            cluster.clone(),
        ));
        let router = router
            .layer(layer)
            .layer(axum::middleware::map_request_with_state(
                Arc::<str>::from(config.socketio_path.as_str()),
                detach_request,
            ))
            // Inside CORS, so that answers from other nodes get this node's CORS headers.
            .layer(axum::middleware::from_fn_with_state(
                forwarder.clone(),
                crate::forward::route,
            ))
            .layer(cors(&config.cors_allowed_origins));
        Ok(Self {
            router,
            cluster,
            io,
            forwarder,
            node_ttl: config.node_ttl,
            advertised_url: config.advertised_url.clone(),
            header_timeout: config.header_timeout,
            tls,
            shutdown_drain: config.shutdown_drain,
            tasks,
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then closes every socket (an
    /// Engine.IO `close` packet each) and waits for in-flight requests. For embedding
    /// and tests, where the process lives on; the `gateway` binary uses [`run`], which
    /// leaves the sockets to drop with the process instead.
    /// Builds a node over the bus its configuration selects: everything that can fail
    /// on configuration (keys, TLS material, the Redis client, the node id's registry
    /// record) fails here, before the caller binds a port.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let (bus, inbox) = connect_bus(config)?;
        Self::build(config, bus, inbox).await
    }

    /// Serves as a production node does: on `shutdown` it stops accepting, gives
    /// in-flight requests `grace`, and returns without closing open sockets (they drop
    /// when the process exits, so every client library reconnects elsewhere).
    pub async fn serve_until_exit(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        grace: std::time::Duration,
    ) -> Result<(), StartError> {
        self.serve_with(listener, shutdown, Drain::DropAfter(grace))
            .await
    }

    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        self.serve_with(listener, shutdown, Drain::CloseSockets)
            .await
    }

    async fn serve_with(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        drain: Drain,
    ) -> Result<(), StartError> {
        let io = self.io.clone();
        let address = match &self.advertised_url {
            Some(url) => url.clone(),
            None => {
                let addr = listener.local_addr()?;
                if addr.ip().is_unspecified() {
                    tracing::warn!(%addr, "listening on all addresses with no ADVERTISED_URL: other nodes cannot reach this one to hand it requests of its sessions (set ADVERTISED_URL to this node's address on the cluster network)");
                }
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{addr}")
            }
        };
        let header_timeout = self.header_timeout;
        let tls = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let router = self.router;
        let cluster = self.cluster.clone();
        let drain_first = self.shutdown_drain;
        // On the signal: not ready at once, still serving while the balancer notices.
        let shutdown = {
            let cluster = cluster.clone();
            async move {
                shutdown.await;
                cluster.start_draining();
                if !drain_first.is_zero() {
                    tracing::info!(
                        drain_ms = drain_first.as_millis() as u64,
                        "shutting down: not ready; serving until the load balancer notices"
                    );
                    tokio::time::sleep(drain_first).await;
                }
            }
        };
        let server = async move {
            let graceful = accept(listener, router, shutdown, header_timeout, tls).await;
            match drain {
                Drain::CloseSockets => {
                    tracing::info!("shutting down: disconnecting sockets");
                    // Open WebSockets would otherwise keep the graceful shutdown waiting.
                    io.close().await;
                    graceful.shutdown().await;
                }
                Drain::DropAfter(grace) => {
                    tracing::info!(
                        grace_ms = grace.as_millis() as u64,
                        "shutting down: no new connections; open sockets drop when the process exits"
                    );
                    cluster.announce_shutdown();
                    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
                }
            }
            Ok::<(), std::io::Error>(())
        };
        // The heartbeat lives exactly as long as the server: if this future is dropped
        // (a crash, from the cluster's point of view) the record simply expires.
        let result = tokio::select! {
            r = server => r,
            () = self.cluster.heartbeat(address, Some(self.forwarder.tag().to_string()), self.node_ttl) => Ok(()),
        };
        self.cluster.registry().deregister().await;
        drop(self.tasks);
        result?;
        Ok(())
    }
}

/// Accepts connections on `listener` and serves `router` on each (HTTP/1 with upgrades
/// for WebSocket, and HTTP/2; over TLS when `tls` is set) until `shutdown` resolves;
/// returns the handle that waits for the connections still open. A client must finish
/// its TLS handshake and send a whole request head within `header_timeout` (slowloris),
/// and each connection costs one task.
async fn accept(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()>,
    header_timeout: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> hyper_util::server::graceful::GracefulShutdown {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use hyper_util::server::conn::auto::Builder;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Small frames go out at once (Node's Socket.IO does the same): with
                    // Nagle, a frame written while the previous one is unacknowledged
                    // waits for the client's delayed ACK, ~40 ms on Linux.
                    let _ = stream.set_nodelay(true);
                    stream
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (builder, router, watcher) = (builder.clone(), router.clone(), graceful.watcher());
        match &tls {
            None => {
                tokio::spawn(serve_connection(builder, router, watcher, stream));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(builder, router, watcher, stream).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        }
    }
    graceful
}

async fn serve_connection<S>(
    builder: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    router: axum::Router,
    watcher: hyper_util::server::graceful::Watcher,
    stream: S,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(router);
    let conn =
        builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// What a stopping node does with the sockets still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Close each one with an Engine.IO `close` packet.
    CloseSockets,
    /// Stop accepting, give in-flight requests this long, then return; the process
    /// exits and every client sees its connection drop. Clients treat that as a network
    /// failure and reconnect, where some (python-socketio) take a `close` packet as
    /// "do not come back".
    DropAfter(std::time::Duration),
}

/// Copies the request's URI and headers out of hyper's connection read buffer.
///
/// hyper parses the request head zero-copy: the URI and every header are slices of the
/// connection's 8–16 KiB read buffer, and axum keeps a clone of the URI in the
/// `OriginalUri` extension (removed here). engineioxide stores a session's request parts for the
/// socket's whole life (`SocketRef::req_parts`), so without these copies every socket
/// pins that whole buffer (measured: 16 KiB per idle socket with the JS client). Only
/// Socket.IO requests are copied; nothing else keeps its request.
async fn detach_request(
    axum::extract::State(socketio_path): axum::extract::State<Arc<str>>,
    req: axum::extract::Request,
) -> axum::extract::Request {
    use axum::extract::OriginalUri;
    use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
    if !req.uri().path().starts_with(&*socketio_path) {
        return req;
    }
    let (mut parts, body) = req.into_parts();
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        // Standard names are static; custom names and every value become fresh copies.
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    parts.headers = headers;
    if let Ok(uri) = Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    // axum's copy of the URI is the URI itself here (the Socket.IO service is not nested):
    // dropped rather than copied, ~0.2 KiB less per socket. `SocketRef::req_parts().uri`
    // has it.
    parts.extensions.remove::<OriginalUri>();
    axum::extract::Request::from_parts(parts, body)
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new().allow_methods(Any).allow_headers(Any);
    if origins.iter().any(|o| o == "*") {
        return layer.allow_origin(Any);
    }
    let list = origins
        .iter()
        .filter_map(|o| o.parse().ok())
        .collect::<Vec<_>>();
    layer.allow_origin(AllowOrigin::list(list))
}

/// Runs one node with the bus its configuration selects until `shutdown` resolves; then
/// stops accepting, deregisters, gives in-flight requests `SHUTDOWN_GRACE_MS` and
/// returns without closing open sockets, which drop when the process exits so that
/// every client library reconnects (to another node behind the load balancer).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let node = Node::start(&config).await?;
    node.serve_until_exit(listener, shutdown, config.shutdown_grace)
        .await
}

/// The bus the configuration selects: Redis when a URL is set, else in-memory.
pub fn connect_bus(config: &Config) -> Result<(Arc<dyn Bus>, Inbox), StartError> {
    if !config.redis_cluster_nodes.is_empty() {
        let mut cluster = bus::RedisClusterConfig::new(config.redis_cluster_nodes.clone());
        cluster.classic_channels = config.legacy_channel.iter().cloned().collect();
        // python-socketio publishes on one classic channel.
        cluster.classic_channels.extend(
            config
                .compat
                .iter()
                .flat_map(|c| c.python_channels.iter().cloned()),
        );
        cluster.tls = config.redis_tls.clone();
        let (bus, inbox) =
            bus::RedisClusterBus::connect(cluster).map_err(|e| StartError::Redis(e.to_string()))?;
        return Ok((Arc::new(bus), inbox));
    }
    match &config.redis_url {
        Some(url) => {
            let mut redis = bus::RedisConfig::new(url.clone());
            redis.max_reconnect_attempts = config.redis_max_reconnect_attempts;
            redis.tls = config.redis_tls.clone();
            redis.sentinel = config.redis_sentinel.clone();
            let (bus, inbox) =
                bus::RedisBus::connect(redis).map_err(|e| StartError::Redis(e.to_string()))?;
            Ok((Arc::new(bus), inbox))
        }
        None => {
            let (bus, inbox) = MemoryHub::new().connect();
            Ok((Arc::new(bus), inbox))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unusable_redis_url_is_a_redis_error_before_any_port() {
        let mut config = Config::for_tests(
            "a-test-secret-of-at-least-32-bytes!",
            "a-publish-key-of-at-least-32-bytes!",
        );
        config.redis_url = Some("redis://:pw@[not-a-host".to_owned());
        let err = Node::start(&config).await.map(|_| ()).unwrap_err();
        assert!(matches!(err, StartError::Redis(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with("redis: "), "{text}");
        assert!(
            !text.contains(":pw@"),
            "the password stays out of the message: {text}"
        );
    }
}
