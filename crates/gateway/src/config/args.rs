//! The command line and environment, as clap reads them: every flag with its variable and
//! its default. Turned into a validated [`Config`](super::Config) by `Config::from_args`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// How strict the node is about missing configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Generates missing secrets and prints a ready-to-use dev token.
    Development,
    /// Refuses to start without real secrets.
    Production,
}

impl Mode {
    /// `development` or `production`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Production => "production",
        }
    }
}

/// The gateway's flags; each can also be set by the environment variable shown.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "gateway",
    version,
    about = "Roomcast gateway: one Socket.IO server across many nodes"
)]
pub struct Args {
    /// Address to listen on [default: 127.0.0.1 in development, 0.0.0.0 in production]
    #[arg(long, env = "HOST")]
    pub host: Option<IpAddr>,
    /// Port to listen on; 0 picks a free port [default: 3000]
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// This node's id in the cluster [default: node-RANDOM]
    #[arg(long, env = "GATEWAY_NODE_ID")]
    pub node_id: Option<String>,
    /// The host's name (set by Docker and Kubernetes): the node id when
    /// `GATEWAY_NODE_ID` is not set.
    #[arg(long, env = "HOSTNAME", hide = true)]
    pub hostname: Option<String>,
    /// `development` generates missing secrets; `production` requires them [default: development]
    #[arg(long, env = "GATEWAY_MODE", value_enum, default_value_t = Mode::Development)]
    pub mode: Mode,
    /// HS256 secret that client tokens are signed with; at least 32 bytes in production [default: generated in development]
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Comma-separated secrets still accepted while clients move to JWT_SECRET (rotation) [default: none]
    #[arg(
        long,
        env = "JWT_PREVIOUS_SECRETS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub jwt_previous_secrets: Vec<String>,
    /// Comma-separated PEM public key files (RSA, EC or Ed25519) to verify RS*/PS*/ES*/EdDSA tokens [default: none]
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE", value_delimiter = ',')]
    pub jwt_public_key_file: Vec<PathBuf>,
    /// URL of a JWKS (the identity provider's keys, selected by `kid`, refetched on rotation) [default: none]
    #[arg(long, env = "JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// Seconds a fetched JWKS is used before it is fetched again [default: 300]
    #[arg(long, env = "JWT_JWKS_REFRESH_SECS", default_value_t = 300)]
    pub jwt_jwks_refresh_secs: u64,
    /// Comma-separated accepted `aud` values; when set a token must carry one [default: not checked]
    #[arg(long, env = "JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,
    /// Comma-separated accepted `iss` values; when set a token must carry one [default: not checked]
    #[arg(long, env = "JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,
    /// Refuse tokens without a tenant claim and publishes that name no tenant [default: false]
    #[arg(long, env = "REQUIRE_TENANT", default_value_t = false, action = clap::ArgAction::Set)]
    pub require_tenant: bool,
    /// Claim holding the user id [default: sub]
    #[arg(long, env = "JWT_USER_CLAIM", default_value = "sub")]
    pub jwt_user_claim: String,
    /// Claim holding the tenant id [default: tenant_id]
    #[arg(long, env = "JWT_TENANT_CLAIM", default_value = "tenant_id")]
    pub jwt_tenant_claim: String,
    /// Claim listing the room patterns a client may join [default: rooms]
    #[arg(long, env = "JWT_ROOMS_CLAIM", default_value = "rooms")]
    pub jwt_rooms_claim: String,
    /// Claim holding the room patterns a client may publish to [default: publish]
    #[arg(long, env = "JWT_PUBLISH_CLAIM", default_value = "publish")]
    pub jwt_publish_claim: String,
    /// Bearer key for POST /v1/publish [default: generated in development; HTTP publish off in production]
    #[arg(long, env = "PUBLISH_API_KEY", hide_env_values = true)]
    pub publish_api_key: Option<String>,
    /// Comma-separated origins allowed by CORS, or `*` [default: `*` in development, none in production]
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
    /// Socket.IO endpoint path, e.g. /ws/socket.io/ for apps mounted under /ws [default: /socket.io/]
    #[arg(long, env = "SOCKETIO_PATH", default_value = "/socket.io/")]
    pub socketio_path: String,
    /// Comma-separated Socket.IO namespaces to serve [default: /]
    #[arg(long, env = "NAMESPACES", value_delimiter = ',', default_value = "/")]
    pub namespaces: Vec<String>,
    /// Engine.IO ping interval in milliseconds [default: 25000]
    #[arg(long, env = "PING_INTERVAL_MS", default_value_t = 25_000)]
    pub ping_interval_ms: u64,
    /// Engine.IO ping timeout in milliseconds [default: 20000]
    #[arg(long, env = "PING_TIMEOUT_MS", default_value_t = 20_000)]
    pub ping_timeout_ms: u64,
    /// Largest client packet and published envelope, in bytes [default: 1048576]
    #[arg(long, env = "MAX_PAYLOAD_BYTES", default_value_t = envelope::DEFAULT_MAX_SIZE)]
    pub max_payload_bytes: usize,
    /// Redis URL (`redis://`, `rediss://` for TLS); unset in development = single node on the in-memory bus
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Alias of REDIS_URL used by existing Socket.IO deployments
    #[arg(long, env = "REDIS_SOCKETIO_URL", hide_env_values = true, hide = true)]
    pub redis_socketio_url: Option<String>,
    /// Redis host, when REDIS_URL is not set
    #[arg(long, env = "REDIS_HOST")]
    pub redis_host: Option<String>,
    /// Redis port, with REDIS_HOST [default: 6379]
    #[arg(long, env = "REDIS_PORT", default_value_t = 6379)]
    pub redis_port: u16,
    /// Redis password, with REDIS_HOST
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// Redis Cluster seed nodes (comma-separated redis://host:port or host:port): rooms on sharded pub/sub (Redis ≥ 7); replaces REDIS_URL [default: none]
    #[arg(long, env = "REDIS_CLUSTER_NODES", default_value = "")]
    pub redis_cluster_nodes: String,
    /// Redis Sentinels (comma-separated host:port): the master of REDIS_SENTINEL_MASTER is asked of them and followed through failovers; REDIS_URL then gives only credentials, database and TLS [default: none]
    #[arg(long, env = "REDIS_SENTINELS", default_value = "")]
    pub redis_sentinels: String,
    /// The master's name in the Sentinels' configuration [default: mymaster]
    #[arg(long, env = "REDIS_SENTINEL_MASTER", default_value = "mymaster")]
    pub redis_sentinel_master: String,
    /// PEM CA certificate(s) the Redis server's certificate must chain to (a private CA), for a rediss:// REDIS_URL [default: the Web PKI roots]
    #[arg(long, env = "REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate for a Redis that verifies clients (with REDIS_TLS_KEY_FILE)
    #[arg(long, env = "REDIS_TLS_CERT_FILE", requires = "redis_tls_key_file")]
    pub redis_tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of REDIS_TLS_CERT_FILE
    #[arg(long, env = "REDIS_TLS_KEY_FILE", requires = "redis_tls_cert_file")]
    pub redis_tls_key_file: Option<std::path::PathBuf>,
    /// Prefix of every Redis channel, so several apps can share one Redis [default: roomcast]
    #[arg(long, env = "REDIS_CHANNEL_PREFIX", default_value = "roomcast")]
    pub redis_channel_prefix: String,
    /// Give up reconnecting to Redis after this many attempts [default: never]
    #[arg(long, env = "REDIS_MAX_RECONNECT_ATTEMPTS")]
    pub redis_max_reconnect_attempts: Option<u32>,
    /// Redis channel carrying the legacy JSON form ({"event","message","room","user","doctype","docname"}); empty disables [default: realtime]
    #[arg(long, env = "LEGACY_CHANNEL", default_value = "realtime")]
    pub legacy_channel: String,
    /// Other Socket.IO servers' Redis formats (`COMPAT_*`).
    #[command(flatten)]
    pub compat: CompatArgs,
    /// The official Socket.IO Admin UI (`ADMIN_UI_*`).
    #[command(flatten)]
    pub admin_ui: AdminUiArgs,
    /// Seconds a node stays in the cluster registry without a heartbeat [default: 15]
    #[arg(long, env = "NODE_TTL_SECS", default_value_t = 15)]
    pub node_ttl_secs: u64,
    /// On SIGTERM: stop accepting, give in-flight HTTP requests this long, then exit; open sockets drop and their clients reconnect elsewhere [default: 2000]
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 2000)]
    pub shutdown_grace_ms: u64,
    /// On SIGTERM, first answer /health/ready 503 this long while still serving, so the load balancer stops sending new clients before the node stops accepting [default: 3000 in production, 0 in development]
    #[arg(long, env = "SHUTDOWN_DRAIN_MS")]
    pub shutdown_drain_ms: Option<u64>,
    /// Namespaces with connection state recovery (comma-separated, e.g. `/`): a client that reconnects within RECOVERY_WINDOW_MS gets what it missed; needs Redis [default: none]
    #[arg(long, env = "RECOVERY_NAMESPACES", default_value = "")]
    pub recovery_namespaces: String,
    /// How long after a disconnect a client can recover its session [default: 120000]
    #[arg(long, env = "RECOVERY_WINDOW_MS", default_value_t = 120_000)]
    pub recovery_window_ms: u64,
    /// Messages kept per recovery namespace's history (about) [default: 10000]
    #[arg(long, env = "RECOVERY_MAX_MESSAGES", default_value_t = 10_000)]
    pub recovery_max_messages: usize,
    /// Rooms whose members are told of each other's joins and leaves (`presence_join`/`presence_leave` events); comma-separated room patterns, e.g. `doc:*,chat:lobby` [default: none]
    #[arg(long, env = "PRESENCE_EVENTS", default_value = "")]
    pub presence_events: String,
    /// PEM certificate chain: serve `https://` and `wss://` on PORT (with TLS_KEY_FILE) [default: plain HTTP]
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of TLS_CERT_FILE
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Address other nodes reach this node at (to hand it requests of its sessions) and operators see in GET /v1/cluster; an http:// URL on the cluster's network [default: http://HOST:PORT]
    #[arg(long, env = "ADVERTISED_URL")]
    pub advertised_url: Option<String>,
    /// Secret the nodes share to prove to each other that a request of a session was handed on by a node; at least 32 bytes in production [default: derived from PUBLISH_API_KEY; with neither, nodes hand nothing on and polling needs sticky sessions]
    #[arg(long, env = "CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Polling requests this node hands to other nodes at once; more are answered 503 [default: 10000]
    #[arg(long, env = "FORWARD_MAX_REQUESTS", default_value_t = 10_000)]
    pub forward_max_requests: usize,
    /// WebSocket tunnels to other nodes this node keeps open at once (a client upgrading a session held by another node); more are answered 503 [default: 20000]
    #[arg(long, env = "FORWARD_MAX_TUNNELS", default_value_t = 20_000)]
    pub forward_max_tunnels: usize,
    /// WebSocket read buffer per connection, in bytes; larger frames are read in several chunks [default: 1024]
    #[arg(long, env = "WS_READ_BUFFER_BYTES", default_value_t = 1024)]
    pub ws_read_buffer_bytes: usize,
    /// Rooms one socket may be in, its automatic rooms included; joins past it are refused [default: 128]
    #[arg(long, env = "MAX_ROOMS_PER_SOCKET", default_value_t = 128)]
    pub max_rooms_per_socket: usize,
    /// Sockets this node accepts; more are refused at connect [default: 50000]
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,
    /// Sockets one user (tenant + user id) may hold on this node [default: 32]
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value_t = 32)]
    pub max_connections_per_user: usize,
    /// Client events per second per socket, sustained [default: 50]
    #[arg(long, env = "EVENTS_PER_SEC", default_value_t = 50.0)]
    pub events_per_sec: f64,
    /// Client events per socket allowed in one burst (above JOIN_BURST: a join is also an event) [default: 200]
    #[arg(long, env = "EVENT_BURST", default_value_t = 200.0)]
    pub event_burst: f64,
    /// Joins per second per socket, sustained [default: 20]
    #[arg(long, env = "JOINS_PER_SEC", default_value_t = 20.0)]
    pub joins_per_sec: f64,
    /// Joins per socket allowed in one burst [default: 128]
    #[arg(long, env = "JOIN_BURST", default_value_t = 128.0)]
    pub join_burst: f64,
    /// Refused events within 10 s after which a socket is disconnected [default: 200]
    #[arg(long, env = "RATE_LIMIT_STRIKES", default_value_t = 200)]
    pub rate_limit_strikes: u32,
    /// How long a client has to send a whole HTTP request head, in ms (slowloris) [default: 10000]
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,
    /// Longest an HTTP API request (`/v1/*`, health, metrics) may take, body included;
    /// past it the answer is 408 [default: 30000]
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub http_request_timeout_ms: u64,
    /// Distinct `event_type` label values in the metrics; past them new event names
    /// count as `other` [default: 64]
    #[arg(long, env = "METRICS_MAX_EVENT_TYPES", default_value_t = 64)]
    pub metrics_max_event_types: usize,
    /// Client events forwarded to services: `[/ns:]event=stream|webhook`, comma-separated
    /// (`event` may end in `*`) [default: none]
    #[arg(long, env = "UPSTREAM_ROUTES", default_value = "")]
    pub upstream_routes: String,
    /// Entries kept in each namespace's upstream stream [default: 100000]
    #[arg(long, env = "UPSTREAM_STREAM_MAXLEN", default_value_t = 100_000)]
    pub upstream_stream_maxlen: usize,
    /// Webhook for `webhook` routes
    #[arg(long, env = "UPSTREAM_WEBHOOK_URL")]
    pub upstream_webhook_url: Option<String>,
    /// HMAC-SHA256 key signing webhook bodies
    #[arg(long, env = "UPSTREAM_WEBHOOK_SECRET", hide_env_values = true)]
    pub upstream_webhook_secret: Option<String>,
    /// One webhook attempt's limit [default: 5000]
    #[arg(long, env = "UPSTREAM_WEBHOOK_TIMEOUT_MS", default_value_t = 5000)]
    pub upstream_webhook_timeout_ms: u64,
    /// Webhook retries after a timeout, connection failure or 5xx [default: 2]
    #[arg(long, env = "UPSTREAM_WEBHOOK_RETRIES", default_value_t = 2)]
    pub upstream_webhook_retries: u32,
    /// How long a new session has to authenticate (send its Socket.IO CONNECT), in ms [default: 10000]
    #[arg(long, env = "CONNECT_TIMEOUT_MS", default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// Packets a socket's outbound queue holds; a socket with all of them taken is
    /// disconnected as a slow consumer [default: 1024]
    #[arg(long, env = "SOCKET_BUFFER_PACKETS", default_value_t = 1024)]
    pub socket_buffer_packets: usize,
    /// Bytes a socket's outbound queue may hold (what the kernel's socket buffer did not
    /// take); past it the socket is disconnected as a slow consumer [default: 1048576]
    #[arg(long, env = "SOCKET_BUFFER_BYTES", default_value_t = 1 << 20)]
    pub socket_buffer_bytes: usize,
    /// WebSocket write path: `direct` (a message is framed once and written to each
    /// socket by the sender, one task per connection) or `queued` (engineioxide's
    /// per-socket writer task). Over native TLS, and for sessions upgraded from
    /// polling, the queued path is used either way [default: direct]
    #[arg(long, env = "WS_WRITE_PATH", default_value = "direct", value_parser = ["direct", "queued"])]
    pub ws_write_path: String,
    /// Log format: `text` or `json` [default: text]
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl Args {
    /// Parses `argv` only, ignoring the process environment: the same flags and
    /// defaults as the binary, but hermetic, so a test's result does not depend on
    /// whatever `PORT` or `REDIS_URL` the machine has set.
    ///
    /// ```
    /// let args = gateway::Args::try_parse_hermetic(["gateway", "--port", "0"])?;
    /// assert_eq!(args.port, 0);
    /// # Ok::<(), clap::Error>(())
    /// ```
    pub fn try_parse_hermetic<I, T>(argv: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let command = Self::command().mut_args(|arg| arg.env(clap::builder::Resettable::Reset));
        Self::from_arg_matches(&command.try_get_matches_from(argv)?)
    }
}

/// `COMPAT_*`: reading (and writing) the Redis formats of python-socketio and Node's
/// Socket.IO adapter ([`crate::CompatConfig`]).
#[derive(Debug, Clone, clap::Args)]
pub struct CompatArgs {
    /// Other Socket.IO servers' Redis formats to read, comma-separated: `python` (python-socketio / Flask-SocketIO message queues), `node` (@socket.io/redis-adapter and redis-emitter) [default: none]
    #[arg(long = "compat-sources", env = "COMPAT_SOURCES", value_delimiter = ',')]
    pub sources: Vec<String>,
    /// The python-socketio channels (their `channel=` argument), comma-separated: python-socketio's default and Flask-SocketIO's [default: socketio,flask-socketio]
    #[arg(
        long = "compat-python-channels",
        env = "COMPAT_PYTHON_CHANNELS",
        value_delimiter = ',',
        default_value = "socketio,flask-socketio"
    )]
    pub python_channels: Vec<String>,
    /// The Node adapter's and emitter's key (their `key` option) [default: socket.io]
    #[arg(
        long = "compat-node-key",
        env = "COMPAT_NODE_KEY",
        default_value = "socket.io"
    )]
    pub node_key: String,
    /// Also publish every Roomcast delivery in the Node adapter's format, for clients still on Node servers (needs `node` in COMPAT_SOURCES) [default: false]
    #[arg(long = "compat-node-outbound", env = "COMPAT_NODE_OUTBOUND", default_value_t = false, action = clap::ArgAction::Set)]
    pub node_outbound: bool,
    /// The tenant messages of other servers are delivered in (they name none) [default: the shared scope]
    #[arg(long = "compat-tenant", env = "COMPAT_TENANT")]
    pub tenant: Option<String>,
    /// The kind given to other servers' room names that are not `kind:id` (`lobby` becomes `room:lobby`); empty refuses such names [default: room]
    #[arg(
        long = "compat-room-kind",
        env = "COMPAT_ROOM_KIND",
        default_value = "room"
    )]
    pub room_kind: String,
}

/// `ADMIN_UI_*`: the `/admin` namespace the official Socket.IO Admin UI connects to
/// ([`crate::AdminUiConfig`]).
#[derive(Debug, Clone, clap::Args)]
pub struct AdminUiArgs {
    /// Admin UI login (with ADMIN_UI_PASSWORD_HASH): serves the `/admin` namespace the official Socket.IO Admin UI connects to, cluster-wide [default: off]
    #[arg(long = "admin-ui-username", env = "ADMIN_UI_USERNAME")]
    pub username: Option<String>,
    /// bcrypt hash of the Admin UI password (e.g. `htpasswd -nbBC 10 "" 'password' | cut -d: -f2`)
    #[arg(
        long = "admin-ui-password-hash",
        env = "ADMIN_UI_PASSWORD_HASH",
        hide_env_values = true
    )]
    pub password_hash: Option<String>,
    /// The Admin UI only shows: no disconnect, join or leave [default: false]
    #[arg(long = "admin-ui-readonly", env = "ADMIN_UI_READONLY", default_value_t = false, action = clap::ArgAction::Set)]
    pub readonly: bool,
    /// Serve the Admin UI's static build (the `ui/dist` directory of npm's `@socket.io/admin-ui`) at /admin/ui/ [default: not served]
    #[arg(long = "admin-ui-static-dir", env = "ADMIN_UI_STATIC_DIR")]
    pub static_dir: Option<std::path::PathBuf>,
}
