//! Command-line and environment configuration, parsed and validated before any port is
//! bound.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::{ClaimNames, JwtKey, TokenRules};

mod args;
mod compat;

pub use args::{Args, CompatArgs, Mode};

/// The shortest HS secret and publish key production accepts, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Secrets generated because none were configured (development only).
#[derive(Clone)]
pub struct DevCredentials {
    /// The generated JWT secret.
    pub jwt_secret: String,
    /// Whether the publish key was generated (else it came from the environment).
    pub generated_publish_key: bool,
}

impl DevCredentials {
    /// A token for the development user: user `dev`, tenant `dev`, may join any room,
    /// valid for 24 hours. Printed in the banner and pre-filled on the demo page when the
    /// node listens on loopback.
    pub fn token(&self) -> Result<String, String> {
        let claims = serde_json::json!({
            "sub": "dev", "tenant_id": "dev", "rooms": ["*"],
            "exp": crate::auth::unix_now() + 24 * 3600,
        });
        crate::auth::sign_hs256(&self.jwt_secret, &claims).map_err(|e| e.to_string())
    }
}

impl fmt::Debug for DevCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCredentials").finish_non_exhaustive()
    }
}

/// The validated configuration of one node.
#[derive(Clone)]
pub struct Config {
    /// Listen address.
    pub host: IpAddr,
    /// Listen port (0: any free port).
    pub port: u16,
    /// Node id.
    pub node_id: String,
    /// Mode.
    pub mode: Mode,
    /// Token verification keys (besides the JWKS in `token_rules`).
    pub jwt_keys: Vec<JwtKey>,
    /// Audience, issuer, JWKS and tenant rules for tokens.
    pub token_rules: TokenRules,
    /// Claim names.
    pub claims: ClaimNames,
    /// Key for HTTP publish; `None` disables it.
    pub publish_api_key: Option<String>,
    /// CORS origins (`*` = any).
    pub cors_allowed_origins: Vec<String>,
    /// Socket.IO path.
    pub socketio_path: String,
    /// Namespaces served.
    pub namespaces: Vec<String>,
    /// Ping interval.
    pub ping_interval: Duration,
    /// Ping timeout.
    pub ping_timeout: Duration,
    /// Largest packet / envelope in bytes.
    pub max_payload: usize,
    /// Present when development secrets were generated.
    pub dev: Option<DevCredentials>,
    /// `text` or `json` logs.
    pub log_json: bool,
    /// Redis URL; `None` runs on the in-memory bus (development only).
    pub redis_url: Option<String>,
    /// TLS material for a `rediss://` URL beyond the Web PKI (private CA, client
    /// certificate); `None`: the Web PKI roots.
    pub redis_tls: Option<bus::RedisTls>,
    /// A Sentinel set naming the master; `None`: the URL's server.
    pub redis_sentinel: Option<bus::SentinelConfig>,
    /// Redis Cluster seed nodes (URLs); empty: not a cluster.
    pub redis_cluster_nodes: Vec<String>,
    /// Channel prefix.
    pub channel_prefix: String,
    /// Give up reconnecting after this many attempts (`None`: never).
    pub redis_max_reconnect_attempts: Option<u32>,
    /// Legacy JSON channel; `None` disables it.
    pub legacy_channel: Option<String>,
    /// Other Socket.IO servers' Redis formats (`COMPAT_*`); `None`: off.
    pub compat: Option<crate::CompatConfig>,
    /// The Socket.IO Admin UI's `/admin` namespace (`ADMIN_UI_*`); `None`: off.
    pub admin_ui: Option<crate::AdminUiConfig>,
    /// Registry TTL; heartbeats every third of it.
    pub node_ttl: Duration,
    /// How long a stopping node waits for in-flight requests before it exits.
    pub shutdown_grace: Duration,
    /// How long the node is not-ready but serving, on shutdown, before it stops accepting.
    pub shutdown_drain: Duration,
    /// Advertised address; `None`: derived from the bound address.
    pub advertised_url: Option<String>,
    /// Handing requests of other nodes' sessions to them (no sticky sessions).
    pub forward: crate::ForwardSettings,
    /// Native TLS; `None`: plain HTTP (TLS terminated by a proxy, or none).
    pub tls: Option<crate::TlsFiles>,
    /// Connection state recovery.
    pub recovery: crate::RecoveryConfig,
    /// Rooms with join/leave events (`PRESENCE_EVENTS`); empty: none.
    pub presence_events: Vec<rooms::Pattern>,
    /// WebSocket read buffer per connection.
    pub ws_read_buffer: usize,
    /// Packets queued per socket.
    pub socket_buffer: usize,
    /// Bytes queued per socket before it is a slow consumer.
    pub socket_buffer_bytes: usize,
    /// Whether plain-TCP WebSocket sessions use the direct write path (`WS_WRITE_PATH`).
    pub ws_direct_writes: bool,
    /// Connection and room caps.
    pub connection_limits: crate::ConnectionLimits,
    /// Per-socket event and join rates.
    pub rate_limits: crate::RateLimits,
    /// How long a new session has to authenticate.
    pub connect_timeout: Duration,
    /// How long a client has to send a whole HTTP request head.
    pub header_timeout: Duration,
    /// Whole-request limit of the HTTP API.
    pub request_timeout: Duration,
    /// Distinct `event_type` metric labels before `other`.
    pub max_event_types: usize,
    /// Client events forwarded to services.
    pub upstream: crate::UpstreamConfig,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("node_id", &self.node_id)
            .field("mode", &self.mode)
            .field("jwt_keys", &self.jwt_keys)
            .field("token_rules", &self.token_rules)
            .field("claims", &self.claims)
            .field(
                "publish_api_key",
                &self.publish_api_key.as_ref().map(|_| "***"),
            )
            .field("cors_allowed_origins", &self.cors_allowed_origins)
            .field("socketio_path", &self.socketio_path)
            .field("namespaces", &self.namespaces)
            .field("max_payload", &self.max_payload)
            .field("redis_url", &self.redis_url.as_deref().map(bus::mask_url))
            .field("channel_prefix", &self.channel_prefix)
            .field("legacy_channel", &self.legacy_channel)
            .field("compat", &self.compat)
            .field("admin_ui", &self.admin_ui.as_ref().map(|a| &a.username))
            .field("forward", &self.forward)
            .finish_non_exhaustive()
    }
}

/// Why the configuration is unusable. Printed as one line before exiting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Production mode without a way to verify tokens.
    #[error(
        "GATEWAY_MODE=production needs JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL to verify client tokens"
    )]
    MissingJwtKey,
    /// Production mode with a secret short enough to brute-force.
    #[error(
        "GATEWAY_MODE=production needs {name} of at least {min} bytes (got {len}); generate one with `openssl rand -hex 32`"
    )]
    WeakSecret {
        /// The setting.
        name: &'static str,
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// Production mode without Redis.
    #[error(
        "GATEWAY_MODE=production needs Redis: set REDIS_URL (or REDIS_SOCKETIO_URL, or REDIS_HOST/REDIS_PORT/REDIS_PASSWORD)"
    )]
    MissingRedis,
    /// The key file cannot be read.
    #[error("cannot read JWT_PUBLIC_KEY_FILE {path}: {source}")]
    KeyFile {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A value is out of range or malformed.
    #[error("invalid {name}: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

/// `UPSTREAM_*` into an [`crate::UpstreamConfig`].
fn upstream_config(
    args: &Args,
    strong: &dyn Fn(&'static str, &str) -> Result<(), ConfigError>,
) -> Result<crate::UpstreamConfig, ConfigError> {
    let routes = crate::Routes::parse(&args.upstream_routes)?;
    let webhook = match (&args.upstream_webhook_url, &args.upstream_webhook_secret) {
        (Some(url), Some(secret)) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid("UPSTREAM_WEBHOOK_URL", "must be an http(s) URL"));
            }
            if secret.is_empty() {
                return Err(invalid("UPSTREAM_WEBHOOK_SECRET", "must not be empty"));
            }
            strong("UPSTREAM_WEBHOOK_SECRET", secret)?;
            Some(crate::WebhookConfig {
                url: url.clone(),
                secret: secret.clone(),
                timeout: Duration::from_millis(args.upstream_webhook_timeout_ms.max(1)),
                retries: args.upstream_webhook_retries,
            })
        }
        (Some(_), None) => {
            return Err(invalid(
                "UPSTREAM_WEBHOOK_SECRET",
                "is required with UPSTREAM_WEBHOOK_URL: services verify the signature",
            ));
        }
        (None, _) => None,
    };
    if routes.uses(crate::Transport::Webhook) && webhook.is_none() {
        return Err(invalid(
            "UPSTREAM_ROUTES",
            "webhook routes need UPSTREAM_WEBHOOK_URL and UPSTREAM_WEBHOOK_SECRET",
        ));
    }
    Ok(crate::UpstreamConfig {
        routes,
        stream_max_len: args.upstream_stream_maxlen.max(1),
        webhook,
    })
}

fn invalid(name: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        reason: reason.into(),
    }
}

fn non_empty(values: Vec<String>) -> Vec<String> {
    values
        .into_iter()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Percent-encodes a password for the userinfo part of a URL.
fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A random hex string of `bytes` random bytes.
pub(crate) fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

impl From<crate::upstream::RoutesError> for ConfigError {
    fn from(e: crate::upstream::RoutesError) -> Self {
        Self::Invalid {
            name: "UPSTREAM_ROUTES",
            reason: e.0,
        }
    }
}

impl Config {
    /// Validates parsed arguments into a configuration. Generates development secrets when
    /// allowed.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let mut dev = None;
        let production = args.mode == Mode::Production;
        let strong = |name: &'static str, value: &str| {
            if production && value.len() < MIN_SECRET_BYTES {
                return Err(ConfigError::WeakSecret {
                    name,
                    len: value.len(),
                    min: MIN_SECRET_BYTES,
                });
            }
            Ok(())
        };
        let upstream = upstream_config(&args, &strong)?;
        let mut jwt_keys = Vec::new();
        for (name, secret) in args.jwt_secret.iter().map(|s| ("JWT_SECRET", s)).chain(
            args.jwt_previous_secrets
                .iter()
                .map(|s| ("JWT_PREVIOUS_SECRETS", s)),
        ) {
            if secret.is_empty() {
                return Err(invalid(name, "must not be empty"));
            }
            strong(name, secret)?;
            jwt_keys.push(JwtKey::Secret(secret.clone()));
        }
        for path in args.jwt_public_key_file {
            let pem = std::fs::read(&path).map_err(|source| ConfigError::KeyFile {
                path: path.clone(),
                source,
            })?;
            // Checked now, so a bad key stops start-up with one line.
            crate::auth::Authenticator::new(
                &[JwtKey::PublicKeyPem(pem.clone())],
                TokenRules::default(),
                ClaimNames::default(),
            )
            .map_err(|e| invalid("JWT_PUBLIC_KEY_FILE", format!("{}: {e}", path.display())))?;
            jwt_keys.push(JwtKey::PublicKeyPem(pem));
        }
        let jwks_url = args.jwt_jwks_url.filter(|u| !u.trim().is_empty());
        if let Some(url) = &jwks_url
            && !(url.starts_with("https://") || (!production && url.starts_with("http://")))
        {
            return Err(invalid(
                "JWT_JWKS_URL",
                "must be an https:// URL (http:// only in development)",
            ));
        }
        if jwt_keys.is_empty() && jwks_url.is_none() {
            if production {
                return Err(ConfigError::MissingJwtKey);
            }
            let secret = random_hex(32);
            dev = Some(DevCredentials {
                jwt_secret: secret.clone(),
                generated_publish_key: false,
            });
            jwt_keys.push(JwtKey::Secret(secret));
        }
        let token_rules = TokenRules {
            audience: non_empty(args.jwt_audience),
            issuer: non_empty(args.jwt_issuer),
            jwks_url,
            jwks_refresh: Duration::from_secs(args.jwt_jwks_refresh_secs.max(10)),
            require_tenant: args.require_tenant,
            ..TokenRules::default()
        };
        let publish_api_key = match args.publish_api_key {
            Some(key) if key.is_empty() => {
                return Err(invalid("PUBLISH_API_KEY", "must not be empty"));
            }
            Some(key) => {
                strong("PUBLISH_API_KEY", &key)?;
                Some(key)
            }
            None if args.mode == Mode::Development => {
                if let Some(dev) = dev.as_mut() {
                    dev.generated_publish_key = true;
                }
                Some(format!("dev-{}", random_hex(16)))
            }
            None => None,
        };
        let forward_key = match &args.cluster_secret {
            Some(secret) if secret.is_empty() => {
                return Err(invalid("CLUSTER_SECRET", "must not be empty"));
            }
            Some(secret) => {
                strong("CLUSTER_SECRET", secret)?;
                Some(crate::NodeKey::new(secret.as_bytes()))
            }
            // A generated publish key differs on every node: nothing to derive from.
            None if dev.as_ref().is_some_and(|d| d.generated_publish_key) => None,
            None => publish_api_key.as_deref().map(crate::NodeKey::derived),
        };
        if args.forward_max_requests == 0 || args.forward_max_tunnels == 0 {
            return Err(invalid(
                "FORWARD_MAX_REQUESTS/FORWARD_MAX_TUNNELS",
                "must be at least 1",
            ));
        }
        if let Some(url) = &args.advertised_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                "ADVERTISED_URL",
                "must be an http:// or https:// URL",
            ));
        }
        if !args.socketio_path.starts_with('/') {
            return Err(invalid("SOCKETIO_PATH", "must start with '/'"));
        }
        let mut namespaces = Vec::new();
        for ns in args
            .namespaces
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            if !ns.starts_with('/') || ns.contains('#') || ns.chars().any(char::is_whitespace) {
                return Err(invalid(
                    "NAMESPACES",
                    format!("{ns:?} must start with '/' and contain no '#' or spaces"),
                ));
            }
            if !namespaces.iter().any(|n| n == ns) {
                namespaces.push(ns.to_owned());
            }
        }
        if namespaces.is_empty() {
            return Err(invalid("NAMESPACES", "at least one namespace is required"));
        }
        if args.ping_interval_ms == 0 || args.ping_timeout_ms == 0 {
            return Err(invalid(
                "PING_INTERVAL_MS/PING_TIMEOUT_MS",
                "must be positive",
            ));
        }
        if args.ws_read_buffer_bytes < 256 || args.socket_buffer_packets == 0 {
            return Err(invalid(
                "WS_READ_BUFFER_BYTES/SOCKET_BUFFER_PACKETS",
                "need at least 256 bytes and 1 packet",
            ));
        }
        if args.socket_buffer_bytes < 1024 {
            return Err(invalid("SOCKET_BUFFER_BYTES", "must be at least 1024"));
        }
        if args.max_rooms_per_socket < 2 {
            return Err(invalid(
                "MAX_ROOMS_PER_SOCKET",
                "must be at least 2 (a socket's user and tenant rooms)",
            ));
        }
        let rates = [
            args.events_per_sec,
            args.event_burst,
            args.joins_per_sec,
            args.join_burst,
        ];
        if rates.iter().any(|r| !r.is_finite() || *r < 1.0) {
            return Err(invalid(
                "EVENTS_PER_SEC/EVENT_BURST/JOINS_PER_SEC/JOIN_BURST",
                "must be at least 1",
            ));
        }
        if args.max_connections == 0 || args.max_connections_per_user == 0 {
            return Err(invalid(
                "MAX_CONNECTIONS/MAX_CONNECTIONS_PER_USER",
                "must be at least 1",
            ));
        }
        if args.connect_timeout_ms < 100
            || args.http_header_timeout_ms < 100
            || args.http_request_timeout_ms < 100
        {
            return Err(invalid(
                "CONNECT_TIMEOUT_MS/HTTP_HEADER_TIMEOUT_MS/HTTP_REQUEST_TIMEOUT_MS",
                "must be at least 100",
            ));
        }
        if args.node_ttl_secs < 3 {
            return Err(invalid("NODE_TTL_SECS", "must be at least 3"));
        }
        if args.max_payload_bytes < 1024 {
            return Err(invalid("MAX_PAYLOAD_BYTES", "must be at least 1024"));
        }
        let log_json = match args.log_format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(invalid(
                    "LOG_FORMAT",
                    format!("{other:?} is not text or json"),
                ));
            }
        };
        let node_id = match args.node_id {
            Some(id)
                if id.is_empty() || id.chars().any(|c| c.is_control() || c.is_whitespace()) =>
            {
                return Err(invalid(
                    "GATEWAY_NODE_ID",
                    "must be non-empty without spaces",
                ));
            }
            Some(id) => id,
            // A container's or pod's name, so metrics and logs say which one; the
            // registry refuses a second live node with the same id.
            None => args
                .hostname
                .map(|h| h.trim().to_owned())
                .filter(|h| {
                    !h.is_empty() && !h.chars().any(|c| c.is_control() || c.is_whitespace())
                })
                .unwrap_or_else(|| format!("node-{}", random_hex(4))),
        };
        let redis_sentinel =
            bus::SentinelConfig::parse(&args.redis_sentinels, &args.redis_sentinel_master)
                .map_err(|e| invalid("REDIS_SENTINELS", e))?;
        let redis_cluster_nodes = bus::RedisClusterConfig::seeds(&args.redis_cluster_nodes);
        if !redis_cluster_nodes.is_empty() && redis_sentinel.is_some() {
            return Err(invalid(
                "REDIS_CLUSTER_NODES",
                "Redis Cluster and Sentinel exclude each other: set one of REDIS_CLUSTER_NODES and REDIS_SENTINELS",
            ));
        }
        let has_redis = !redis_cluster_nodes.is_empty()
            || redis_sentinel.is_some()
            || [&args.redis_url, &args.redis_socketio_url, &args.redis_host]
                .iter()
                .any(|v| v.as_deref().is_some_and(|v| !v.trim().is_empty()));
        if upstream.routes.uses(crate::Transport::Stream) && !has_redis {
            return Err(invalid(
                "UPSTREAM_ROUTES",
                "stream routes need Redis (set REDIS_URL)",
            ));
        }
        let redis_url = match (args.redis_url, args.redis_socketio_url, args.redis_host) {
            (Some(url), _, _) | (None, Some(url), _) if !url.trim().is_empty() => {
                Some(url.trim().to_owned())
            }
            (_, _, Some(host)) if !host.trim().is_empty() => {
                let auth = args
                    .redis_password
                    .filter(|p| !p.is_empty())
                    .map(|p| format!(":{}@", percent_encode(&p)))
                    .unwrap_or_default();
                Some(format!("redis://{auth}{}:{}", host.trim(), args.redis_port))
            }
            // With Sentinels the URL only carries credentials, database and TLS; the
            // host is the master they name.
            _ if redis_sentinel.is_some() => Some("redis://sentinel-master".to_owned()),
            // The first seed names the cluster in logs; the bus uses every seed.
            _ if !redis_cluster_nodes.is_empty() => redis_cluster_nodes.first().cloned(),
            _ => None,
        };
        let recovery = {
            let mut list: Vec<String> = Vec::new();
            for ns in args
                .recovery_namespaces
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                if !namespaces.iter().any(|n| n == ns) {
                    return Err(invalid(
                        "RECOVERY_NAMESPACES",
                        format!("{ns:?} is not one of NAMESPACES"),
                    ));
                }
                if !list.iter().any(|n| n == ns) {
                    list.push(ns.to_owned());
                }
            }
            if !list.is_empty() && redis_url.is_none() {
                return Err(invalid(
                    "RECOVERY_NAMESPACES",
                    "connection state recovery keeps its history in Redis: set REDIS_URL",
                ));
            }
            if args.recovery_window_ms < 1000 || args.recovery_max_messages == 0 {
                return Err(invalid(
                    "RECOVERY_WINDOW_MS/RECOVERY_MAX_MESSAGES",
                    "the window must be at least 1000 ms and the history at least 1 message",
                ));
            }
            crate::RecoveryConfig {
                namespaces: list,
                window: Duration::from_millis(args.recovery_window_ms),
                max_len: args.recovery_max_messages,
            }
        };
        if let Some(url) = &redis_url {
            if production && url.contains("#insecure") {
                return Err(invalid(
                    "REDIS_URL",
                    "#insecure (no TLS certificate check) is for development only",
                ));
            }
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    "REDIS_URL",
                    format!(
                        "{} must start with redis:// or rediss://",
                        bus::mask_url(url)
                    ),
                ));
            }
        } else if args.mode == Mode::Production {
            return Err(ConfigError::MissingRedis);
        }
        if args.redis_channel_prefix.is_empty()
            || args
                .redis_channel_prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "REDIS_CHANNEL_PREFIX",
                "must be non-empty without spaces",
            ));
        }
        let legacy_channel = Some(args.legacy_channel.trim().to_owned()).filter(|c| !c.is_empty());
        let compat = compat::compat_config(
            &args.compat,
            args.require_tenant,
            redis_url.is_some(),
            !redis_cluster_nodes.is_empty(),
            legacy_channel.as_deref(),
        )?;
        let admin_ui = match (&args.admin_ui.username, &args.admin_ui.password_hash) {
            (None, None) => None,
            (Some(username), Some(hash)) => {
                if !crate::admin::is_bcrypt_hash(hash) {
                    return Err(invalid(
                        "ADMIN_UI_PASSWORD_HASH",
                        "must be a bcrypt hash ($2b$…, $2y$…)",
                    ));
                }
                if namespaces.iter().any(|n| n == crate::admin::NAMESPACE) {
                    return Err(invalid(
                        "NAMESPACES",
                        "/admin is the Admin UI's namespace when ADMIN_UI_USERNAME is set",
                    ));
                }
                Some(crate::AdminUiConfig {
                    username: username.clone(),
                    password_hash: hash.clone(),
                    readonly: args.admin_ui.readonly,
                    static_dir: args.admin_ui.static_dir.clone(),
                })
            }
            _ => {
                return Err(invalid(
                    "ADMIN_UI_USERNAME/ADMIN_UI_PASSWORD_HASH",
                    "set both, or neither",
                ));
            }
        };
        let redis_tls = match (
            &args.redis_tls_ca_file,
            args.redis_tls_cert_file
                .as_deref()
                .zip(args.redis_tls_key_file.as_deref()),
        ) {
            (None, None) => None,
            (ca, client) => {
                if !redis_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("rediss://"))
                {
                    return Err(invalid(
                        "REDIS_TLS_CA_FILE",
                        "the Redis TLS files need a rediss:// REDIS_URL",
                    ));
                }
                Some(
                    bus::RedisTls::from_files(ca.as_deref(), client)
                        .map_err(|e| invalid("REDIS_TLS_CA_FILE", format!("cannot read {e}")))?,
                )
            }
        };
        let presence_events = args
            .presence_events
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                rooms::Pattern::parse(p).map_err(|e| invalid("PRESENCE_EVENTS", e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cors_allowed_origins = match (args.cors_allowed_origins, args.mode) {
            (origins, _) if !origins.is_empty() => origins
                .into_iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            (_, Mode::Development) => vec!["*".to_owned()],
            (_, Mode::Production) => Vec::new(),
        };
        let host = args.host.unwrap_or(match args.mode {
            // A development node hands out credentials on its demo page: loopback only
            // unless HOST says otherwise.
            Mode::Development => IpAddr::from([127, 0, 0, 1]),
            Mode::Production => IpAddr::from([0, 0, 0, 0]),
        });
        Ok(Self {
            host,
            port: args.port,
            node_id,
            mode: args.mode,
            jwt_keys,
            token_rules,
            claims: ClaimNames {
                user: args.jwt_user_claim,
                tenant: args.jwt_tenant_claim,
                rooms: args.jwt_rooms_claim,
                publish: args.jwt_publish_claim,
            },
            publish_api_key,
            cors_allowed_origins,
            socketio_path: args.socketio_path,
            namespaces,
            ping_interval: Duration::from_millis(args.ping_interval_ms),
            ping_timeout: Duration::from_millis(args.ping_timeout_ms),
            max_payload: args.max_payload_bytes,
            dev,
            log_json,
            redis_url,
            redis_tls,
            redis_sentinel,
            redis_cluster_nodes,
            channel_prefix: args.redis_channel_prefix,
            redis_max_reconnect_attempts: args.redis_max_reconnect_attempts,
            legacy_channel,
            compat,
            admin_ui,
            node_ttl: Duration::from_secs(args.node_ttl_secs),
            shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
            shutdown_drain: Duration::from_millis(args.shutdown_drain_ms.unwrap_or(
                match args.mode {
                    Mode::Production => 3000,
                    Mode::Development => 0,
                },
            )),
            advertised_url: args.advertised_url,
            forward: crate::ForwardSettings {
                key: forward_key,
                max_requests: args.forward_max_requests,
                max_tunnels: args.forward_max_tunnels,
                // A long-poll GET is answered within the ping interval (with a ping at
                // the latest); the owner may take its ping timeout more to notice a
                // dead session.
                timeout: Duration::from_millis(args.ping_interval_ms + args.ping_timeout_ms)
                    + Duration::from_secs(5),
                max_body: args.max_payload_bytes,
            },
            recovery,
            presence_events,
            tls: args
                .tls_cert_file
                .zip(args.tls_key_file)
                .map(|(cert, key)| crate::TlsFiles { cert, key }),
            ws_read_buffer: args.ws_read_buffer_bytes,
            socket_buffer: args.socket_buffer_packets,
            socket_buffer_bytes: args.socket_buffer_bytes,
            ws_direct_writes: args.ws_write_path == "direct",
            connection_limits: crate::ConnectionLimits {
                per_node: args.max_connections,
                per_user: args.max_connections_per_user,
                rooms_per_socket: args.max_rooms_per_socket,
            },
            rate_limits: crate::RateLimits {
                events_per_sec: args.events_per_sec,
                event_burst: args.event_burst,
                joins_per_sec: args.joins_per_sec,
                join_burst: args.join_burst,
                max_strikes: args.rate_limit_strikes,
            },
            connect_timeout: Duration::from_millis(args.connect_timeout_ms),
            header_timeout: Duration::from_millis(args.http_header_timeout_ms),
            request_timeout: Duration::from_millis(args.http_request_timeout_ms),
            max_event_types: args.metrics_max_event_types,
            upstream,
        })
    }

    /// A development configuration for tests and embedding: the given HS256 secret and
    /// publish key, port 0 on 127.0.0.1, namespace `/`.
    pub fn for_tests(jwt_secret: &str, publish_api_key: &str) -> Self {
        let args = Args::try_parse_hermetic([
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--jwt-secret",
            jwt_secret,
            "--publish-api-key",
            publish_api_key,
        ]);
        // The arguments above are fixed and valid.
        #[allow(clippy::expect_used, reason = "fixed, known-valid arguments")]
        Self::from_args(args.expect("test arguments parse")).expect("test configuration is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["gateway"];
        all.extend_from_slice(args);
        Config::from_args(Args::try_parse_hermetic(all).unwrap())
    }

    #[test]
    fn development_generates_secrets() {
        let c = parse(&["--mode", "development"]).unwrap();
        assert!(c.dev.is_some());
        assert!(c.publish_api_key.as_deref().unwrap().starts_with("dev-"));
        assert_eq!(c.cors_allowed_origins, vec!["*"]);
        assert_eq!(c.port, 3000);
        assert_eq!(c.socketio_path, "/socket.io/");
        assert_eq!(c.namespaces, vec!["/"]);
        assert!(!format!("{c:?}").contains(c.publish_api_key.as_deref().unwrap()));
    }

    const STRONG: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn production_requires_a_key_and_redis() {
        assert!(matches!(
            parse(&["--mode", "production"]),
            Err(ConfigError::MissingJwtKey)
        ));
        assert!(matches!(
            parse(&["--mode", "production", "--jwt-secret", STRONG]),
            Err(ConfigError::MissingRedis)
        ));
        let c = parse(&[
            "--mode",
            "production",
            "--jwt-secret",
            STRONG,
            "--redis-url",
            "redis://r:6379",
        ])
        .unwrap();
        assert!(c.dev.is_none());
        assert_eq!(c.publish_api_key, None);
        assert!(c.cors_allowed_origins.is_empty());
        assert_eq!(c.host, IpAddr::from([0, 0, 0, 0]));
    }

    #[test]
    fn production_refuses_weak_secrets_and_insecure_tls() {
        let prod = |extra: &[&str]| {
            let mut args = vec!["--mode", "production", "--redis-url", "redis://r:1"];
            args.extend_from_slice(extra);
            parse(&args)
        };
        for (args, name) in [
            (&["--jwt-secret", "x"][..], "JWT_SECRET"),
            (
                &["--jwt-secret", STRONG, "--jwt-previous-secrets", "short"],
                "JWT_PREVIOUS_SECRETS",
            ),
            (
                &["--jwt-secret", STRONG, "--publish-api-key", "k"],
                "PUBLISH_API_KEY",
            ),
        ] {
            let err = prod(args).unwrap_err();
            assert!(
                matches!(err, ConfigError::WeakSecret { name: n, len: _, min: MIN_SECRET_BYTES } if n == name),
                "{args:?}: {err}"
            );
            assert!(err.to_string().contains("at least 32 bytes"), "{err}");
        }
        let err = parse(&[
            "--mode",
            "production",
            "--jwt-secret",
            STRONG,
            "--redis-url",
            "rediss://r:1/#insecure",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("development only"), "{err}");
        // Development accepts short secrets and #insecure.
        parse(&["--jwt-secret", "x", "--redis-url", "rediss://r:1/#insecure"]).unwrap();
    }

    #[test]
    fn development_binds_loopback_unless_told() {
        assert_eq!(parse(&[]).unwrap().host, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(
            parse(&["--host", "0.0.0.0"]).unwrap().host,
            IpAddr::from([0, 0, 0, 0])
        );
    }

    #[test]
    fn token_rules() {
        let c = parse(&[
            "--jwt-audience",
            "roomcast, other",
            "--jwt-issuer",
            "https://idp",
            "--jwt-jwks-url",
            "http://127.0.0.1:9/jwks.json",
            "--require-tenant",
            "true",
        ])
        .unwrap();
        assert_eq!(c.token_rules.audience, vec!["roomcast", "other"]);
        assert_eq!(c.token_rules.issuer, vec!["https://idp"]);
        assert!(c.token_rules.require_tenant);
        // A JWKS alone is a key source: no development secret is generated.
        assert!(c.dev.is_none());
        assert!(c.jwt_keys.is_empty());
        assert!(matches!(
            parse(&[
                "--mode",
                "production",
                "--redis-url",
                "redis://r:1",
                "--jwt-jwks-url",
                "http://idp/jwks"
            ]),
            Err(ConfigError::Invalid {
                name: "JWT_JWKS_URL",
                ..
            })
        ));
    }

    #[test]
    fn rejects_bad_values() {
        for args in [
            &["--socketio-path", "ws"][..],
            &["--namespaces", "chat"],
            &["--max-payload-bytes", "10"],
            &["--log-format", "xml"],
            &["--jwt-secret", ""],
            &["--node-id", "a b"],
        ] {
            assert!(
                matches!(parse(args), Err(ConfigError::Invalid { .. })),
                "{args:?}"
            );
        }
        assert!(matches!(
            parse(&["--jwt-public-key-file", "/nonexistent/key.pem"]),
            Err(ConfigError::KeyFile { .. })
        ));
    }

    #[test]
    fn redis_url_from_aliases() {
        let url = |args: &[&str]| parse(args).unwrap().redis_url;
        assert_eq!(url(&[]), None);
        assert_eq!(
            url(&["--redis-url", "redis://a:1"]).as_deref(),
            Some("redis://a:1")
        );
        assert_eq!(
            url(&["--redis-socketio-url", "rediss://b:2"]).as_deref(),
            Some("rediss://b:2")
        );
        assert_eq!(
            url(&[
                "--redis-host",
                "c",
                "--redis-port",
                "7000",
                "--redis-password",
                "p@ss word"
            ])
            .as_deref(),
            Some("redis://:p%40ss%20word@c:7000")
        );
        assert_eq!(
            url(&["--redis-host", "c"]).as_deref(),
            Some("redis://c:6379")
        );
        assert!(matches!(
            parse(&["--redis-url", "http://x"]),
            Err(ConfigError::Invalid { .. })
        ));
        let c = parse(&["--redis-url", "redis://:topsecret@h:1"]).unwrap();
        assert!(!format!("{c:?}").contains("topsecret"));
        assert_eq!(
            parse(&["--legacy-channel", ""]).unwrap().legacy_channel,
            None
        );
        assert_eq!(
            parse(&[]).unwrap().legacy_channel.as_deref(),
            Some("realtime")
        );
    }

    #[test]
    fn compat_sources_are_off_by_default_and_checked_when_on() {
        assert_eq!(parse(&[]).unwrap().compat, None);
        let redis = ["--redis-url", "redis://127.0.0.1:6379"];
        let with = |extra: &[&str]| {
            let mut all = redis.to_vec();
            all.extend_from_slice(extra);
            parse(&all)
        };
        let c = with(&["--compat-sources", "python,node", "--compat-tenant", "acme"])
            .unwrap()
            .compat
            .unwrap();
        assert_eq!(c.python_channels, ["socketio", "flask-socketio"]);
        assert_eq!(c.node_key.as_deref(), Some("socket.io"));
        assert!(!c.node_outbound);
        assert_eq!(c.tenant.as_ref().map(rooms::TenantId::as_str), Some("acme"));
        assert_eq!(c.room_kind.as_deref(), Some("room"));
        let refused = |args: &[&str], var: &str| {
            let err = with(args).unwrap_err().to_string();
            assert!(err.contains(var), "{args:?}: {err}");
        };
        refused(&["--compat-sources", "ruby"], "COMPAT_SOURCES");
        refused(&["--compat-node-outbound", "true"], "COMPAT_NODE_OUTBOUND");
        refused(
            &[
                "--compat-sources",
                "python",
                "--compat-python-channels",
                "realtime",
            ],
            "COMPAT_PYTHON_CHANNELS",
        );
        refused(
            &[
                "--compat-sources",
                "node",
                "--compat-room-kind",
                "Not A Kind",
            ],
            "COMPAT_ROOM_KIND",
        );
        refused(
            &["--compat-sources", "node", "--require-tenant", "true"],
            "COMPAT_TENANT",
        );
        let err = parse(&["--compat-sources", "python"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("REDIS_URL"), "{err}");
        let err = parse(&[
            "--compat-sources",
            "node",
            "--redis-cluster-nodes",
            "redis://127.0.0.1:7000",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("REDIS_CLUSTER_NODES"), "{err}");
    }

    #[test]
    fn namespaces_are_deduplicated() {
        let c = parse(&["--namespaces", "/,/billing, /billing,/notifications"]).unwrap();
        assert_eq!(c.namespaces, vec!["/", "/billing", "/notifications"]);
    }
}
