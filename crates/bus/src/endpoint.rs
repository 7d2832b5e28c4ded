//! Which Redis the bus talks to: the one of its URL, or — with Sentinel — whichever server
//! the Sentinels name master of the set right now, followed through failovers.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_redis::{Pool, Runtime};
use tokio::sync::watch;
use tokio::time::timeout;

/// Settings of a [`RedisBus`](crate::RedisBus).
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` for TLS.
    pub url: String,
    /// First reconnect delay. Default 100 ms.
    pub reconnect_min: Duration,
    /// Longest reconnect delay. Default 3 s.
    pub reconnect_max: Duration,
    /// Give up reconnecting after this many consecutive failures; `None` (default) never
    /// gives up.
    pub max_reconnect_attempts: Option<u32>,
    /// How long a publish keeps retrying while Redis is unreachable before it fails.
    /// Default 0: fail at once (the gateway then delivers locally only).
    pub publish_retry_budget: Duration,
    /// How often the subscriber connection is pinged to detect a silent network
    /// failure. Default 5 s.
    pub ping_interval: Duration,
    /// How long to wait for a connection, a reply or a subscription confirmation.
    /// Default 3 s.
    pub command_timeout: Duration,
    /// Publishes waiting for Redis at most; past it a publish fails at once instead of
    /// queueing (a blackholed Redis must not grow memory or latency). Default 10 000.
    pub publish_queue: usize,
    /// Certificates for `rediss://` beyond the Web PKI: a private CA, and a client
    /// certificate for servers that ask for one. `None` (default): the Web PKI roots.
    pub tls: Option<RedisTls>,
    /// A Sentinel set naming the master (which then replaces the URL's host and port),
    /// followed through failovers. `None` (default): the URL's server.
    pub sentinel: Option<crate::SentinelConfig>,
}

/// TLS material for `rediss://` (PEM contents, not paths).
#[derive(Clone, Default)]
pub struct RedisTls {
    /// The CA certificate(s) the server's certificate must chain to, instead of the
    /// Web PKI roots.
    pub root_ca: Option<Vec<u8>>,
    /// A client certificate chain and its private key, for servers that verify clients.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl RedisTls {
    /// The material as the `redis` client takes it.
    pub(crate) fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self.client.clone().map(|(client_cert, client_key)| {
                redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }
            }),
            root_cert: self.root_ca.clone(),
        }
    }
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("RedisTls")
            .field("root_ca", &self.root_ca.as_ref().map(Vec::len))
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl RedisTls {
    /// Reads a CA file and, when both are given, a client certificate and key (PEM).
    pub fn from_files(
        ca: Option<&std::path::Path>,
        client: Option<(&std::path::Path, &std::path::Path)>,
    ) -> std::io::Result<Self> {
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        Ok(Self {
            root_ca: ca.map(read).transpose()?,
            client: match client {
                Some((cert, key)) => Some((read(cert)?, read(key)?)),
                None => None,
            },
        })
    }
}

/// The `redis` client for `config`: its URL, with the private CA and client certificate
/// of [`RedisConfig::tls`] when set (which needs a `rediss://` URL). For code that talks
/// to the same Redis as the bus with its own connections (the SDK's stream consumer).
pub fn redis_client(config: &RedisConfig) -> Result<redis::Client, RedisSetupError> {
    let invalid = |reason: String| RedisSetupError::InvalidUrl {
        url: mask_url(&config.url),
        reason,
    };
    if config.url.starts_with("rediss://") {
        // A process may install its own provider first; then ours is not needed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    match &config.tls {
        None => redis::Client::open(config.url.as_str()).map_err(|e| invalid(e.to_string())),
        Some(_) if !config.url.starts_with("rediss://") => Err(invalid(
            "a CA or client certificate is set, but the URL is not rediss://".into(),
        )),
        Some(tls) => redis::Client::build_with_tls(config.url.as_str(), tls.certificates())
            .map_err(|e| invalid(e.to_string())),
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &mask_url(&self.url))
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("max_reconnect_attempts", &self.max_reconnect_attempts)
            .field("publish_retry_budget", &self.publish_retry_budget)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(3),
            max_reconnect_attempts: None,
            publish_retry_budget: Duration::ZERO,
            ping_interval: Duration::from_secs(5),
            command_timeout: Duration::from_secs(3),
            publish_queue: 10_000,
            tls: None,
            sentinel: None,
        }
    }

    /// Finds the master through `sentinel` (and follows its failovers); the URL then
    /// gives only the credentials, database and TLS of the connection.
    pub fn with_sentinel(mut self, sentinel: crate::SentinelConfig) -> Self {
        self.sentinel = Some(sentinel);
        self
    }

    /// Sets the TLS material for `rediss://` (a private CA, a client certificate).
    pub fn with_tls(mut self, tls: RedisTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The longest a publish can take from call to answer: its retry budget plus one
    /// attempt (connect and reply), whatever Redis does.
    pub fn publish_deadline(&self) -> Duration {
        self.publish_retry_budget
            .saturating_add(self.command_timeout.saturating_mul(2))
    }

    /// Sets how long publishes retry while Redis is unreachable.
    pub fn with_publish_retry_budget(mut self, budget: Duration) -> Self {
        self.publish_retry_budget = budget;
        self
    }

    /// Sets the reconnect backoff bounds.
    pub fn with_reconnect(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }
}

/// Why a Redis bus could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisSetupError {
    /// The URL is not a Redis URL.
    #[error("invalid Redis URL {url}: {reason}")]
    InvalidUrl {
        /// The URL with its password masked.
        url: String,
        /// Why.
        reason: String,
    },
    /// No Sentinel answered with the master's address.
    #[error("no Sentinel named the Redis master: {0}")]
    NoMaster(String),
}

/// `url` with any password replaced by `***`, safe to log.
///
/// ```
/// assert_eq!(bus::mask_url("redis://:s3cret@cache:6379/0"), "redis://:***@cache:6379/0");
/// assert_eq!(bus::mask_url("rediss://app:pw@h"), "rediss://app:***@h");
/// assert_eq!(bus::mask_url("redis://h:6379"), "redis://h:6379");
/// ```
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                format!("{scheme}://***@{host}{path}")
            }
        }
        None => url.to_owned(),
    }
}

/// A Redis Sentinel set: where its Sentinels listen, and the name of the master they
/// watch. The master's credentials, database and TLS come from the bus's URL and
/// [`RedisConfig::tls`]; its host and port from the Sentinels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// `host:port` of each Sentinel; asked in order until one answers.
    pub sentinels: Vec<String>,
    /// The master's name in the Sentinels' configuration (`sentinel monitor <name> …`).
    pub master: String,
}

impl SentinelConfig {
    /// The Sentinels of a comma-separated `host:port` list (as `REDIS_SENTINELS` takes
    /// them) watching `master`; `None` for an empty list, the offending entry for one that
    /// is not `host:port`.
    pub fn parse(list: &str, master: &str) -> Result<Option<Self>, String> {
        let sentinels: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(bad) = sentinels.iter().find(|s| {
            s.rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        }) {
            return Err(format!("{bad:?} is not host:port"));
        }
        Ok((!sentinels.is_empty()).then(|| Self {
            sentinels,
            master: master.trim().to_owned(),
        }))
    }
}

/// How often the Sentinels are asked who the master is.
const ASK_EVERY: Duration = Duration::from_millis(500);

/// The current master's client and publishing pool.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) addr: String,
    pub(crate) client: redis::Client,
    pub(crate) pool: Pool,
}

/// The Redis a bus uses, and news of a change of master.
pub(crate) struct Endpoint {
    config: RedisConfig,
    link: Mutex<Option<Link>>,
    moved: watch::Sender<u64>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &mask_url(&self.config.url))
            .field("sentinel", &self.config.sentinel)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The endpoint for `config`: with a URL alone, that server (checked now); with
    /// Sentinels, none until [`Endpoint::follow_sentinels`] learns the master.
    pub(crate) fn new(config: RedisConfig) -> Result<Arc<Self>, RedisSetupError> {
        let link = match config.sentinel {
            None => Some(link_for(&config, None)?),
            Some(_) => {
                // The template must be usable, whatever master it will name.
                link_for(&config, Some("127.0.0.1:6379"))?;
                None
            }
        };
        Ok(Arc::new(Self {
            config,
            link: Mutex::new(link),
            moved: watch::channel(0).0,
        }))
    }

    /// The current master's link; `Err` (for the caller's error) while none is known.
    pub(crate) fn link(&self) -> Result<Link, String> {
        self.link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| "no Redis master known yet (asking the Sentinels)".to_owned())
    }

    /// The publishing pool of the current master.
    pub(crate) fn pool(&self) -> Result<Pool, String> {
        self.link().map(|l| l.pool)
    }

    /// Changes whenever the master does.
    pub(crate) fn moves(&self) -> watch::Receiver<u64> {
        self.moved.subscribe()
    }

    /// Asks the Sentinels who the master is every [`ASK_EVERY`], and switches the bus to
    /// it when it changes (the subscriber then reconnects there). Returns at once without
    /// Sentinels; stops when the bus is dropped.
    pub(crate) async fn follow_sentinels(self: Arc<Self>) {
        let Some(sentinel) = self.config.sentinel.clone() else {
            return;
        };
        let mut warned = false;
        loop {
            // The bus and its tasks are gone.
            if Arc::strong_count(&self) == 1 {
                return;
            }
            match ask_sentinels(&sentinel, self.config.command_timeout).await {
                Ok(addr) => {
                    warned = false;
                    let current = self.link().ok().map(|l| l.addr);
                    if current.as_deref() != Some(addr.as_str()) {
                        match link_for(&self.config, Some(&addr)) {
                            Ok(link) => {
                                tracing::info!(master = %sentinel.master, %addr, previous = current.as_deref().unwrap_or("none"), "Redis master (from Sentinel)");
                                *self.link.lock().unwrap_or_else(PoisonError::into_inner) =
                                    Some(link);
                                self.moved.send_modify(|n| *n += 1);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot use the master the Sentinels name")
                            }
                        }
                    }
                }
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(master = %sentinel.master, error = %e, "no Sentinel answered; keeping the last known master");
                }
                Err(_) => {}
            }
            tokio::time::sleep(ASK_EVERY).await;
        }
    }
}

/// The master's `host:port` according to the first Sentinel that knows it.
pub(crate) async fn ask_sentinels(
    sentinel: &SentinelConfig,
    limit: Duration,
) -> Result<String, String> {
    let mut errors = Vec::new();
    for addr in &sentinel.sentinels {
        let ask = async {
            let client =
                redis::Client::open(format!("redis://{addr}")).map_err(|e| e.to_string())?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let answer: Option<(String, String)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&sentinel.master)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            answer
                .map(|(host, port)| format!("{host}:{port}"))
                .ok_or_else(|| format!("does not know a master named {:?}", sentinel.master))
        };
        match timeout(limit, ask).await {
            Ok(Ok(master)) => return Ok(master),
            Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
            Err(_) => errors.push(format!("{addr}: no answer")),
        }
    }
    Err(errors.join("; "))
}

/// The `redis` client for the current master of `config` (its URL's server without
/// Sentinels): for code with its own connections, like the SDK's stream consumer. It does
/// not follow later failovers; connect again after an error.
pub async fn resolve_client(config: &RedisConfig) -> Result<redis::Client, RedisSetupError> {
    match &config.sentinel {
        None => redis_client(config),
        Some(sentinel) => {
            let addr = ask_sentinels(sentinel, config.command_timeout)
                .await
                .map_err(RedisSetupError::NoMaster)?;
            let mut config = config.clone();
            config.url = with_host(&config.url, &addr);
            redis_client(&config)
        }
    }
}

/// A client and pool for the URL of `config`, with its host and port replaced by `addr`.
fn link_for(config: &RedisConfig, addr: Option<&str>) -> Result<Link, RedisSetupError> {
    let mut config = config.clone();
    if let Some(addr) = addr {
        config.url = with_host(&config.url, addr);
    }
    let client = redis_client(&config)?;
    let invalid = |reason: String| RedisSetupError::InvalidUrl {
        url: mask_url(&config.url),
        reason,
    };
    // The pool's connections carry the client's TLS settings (its connection info).
    let manager = deadpool_redis::Manager::new(client.get_connection_info().clone())
        .map_err(|e| invalid(e.to_string()))?;
    let pool = Pool::builder(manager)
        .max_size(4)
        .wait_timeout(Some(config.command_timeout))
        .create_timeout(Some(config.command_timeout))
        .recycle_timeout(Some(config.command_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| invalid(e.to_string()))?;
    Ok(Link {
        addr: addr.unwrap_or_default().to_owned(),
        client,
        pool,
    })
}

/// `url` with its `host:port` replaced by `addr`; scheme, credentials, database and
/// fragment kept.
///
/// ```text
/// redis://:pw@placeholder:6379/2  +  10.0.0.5:6380  →  redis://:pw@10.0.0.5:6380/2
/// ```
fn with_host(url: &str, addr: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let end = rest.find(['/', '#', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    format!("{scheme}://{}{addr}{tail}", userinfo.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::with_host;

    #[test]
    fn the_masters_address_replaces_only_host_and_port() {
        assert_eq!(
            with_host("redis://:pw@placeholder:6379/2", "10.0.0.5:6380"),
            "redis://:pw@10.0.0.5:6380/2"
        );
        assert_eq!(with_host("redis://sentinel-master", "h:1"), "redis://h:1");
        assert_eq!(
            with_host("rediss://app:pw@x#insecure", "h:1"),
            "rediss://app:pw@h:1#insecure"
        );
    }
}
