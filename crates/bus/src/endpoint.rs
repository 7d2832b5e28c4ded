//! Which Redis the bus talks to: the one of its URL, or — with Sentinel — whichever server
//! the Sentinels name master of the set right now, followed through failovers.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_redis::{Pool, Runtime};
use tokio::sync::watch;
use tokio::time::timeout;

use crate::redis::{RedisConfig, RedisSetupError, mask_url, redis_client};

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
