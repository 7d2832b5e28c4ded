//! The Redis Cluster transport: room, namespace and node-to-node channels on sharded
//! pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis ≥ 7), so each message travels only to the shard
//! that owns its channel and a node holds a subscription only on the shards of its rooms;
//! the legacy channel on classic pub/sub (what existing publishers send with `PUBLISH`,
//! which a cluster relays to every shard).
//!
//! Three parts, so that one shard's failover is felt by that shard only:
//! - commands and keys go through one redis-rs `ClusterConnection`, which follows `MOVED`
//!   by itself and is remade when the topology changes;
//! - publishes are queued per master (the owner of the channel's slot), so a master that
//!   does not answer holds back its own channels' publishes and nobody else's; each queue
//!   keeps call order;
//! - subscriptions live on one connection per master ([`subscriber`]), moved channel by
//!   channel when a slot changes owner, checked against what Redis reports, repaired.
//!
//! The topology (`CLUSTER SLOTS`) is read every second; each change is handed to the
//! publisher and the subscriber.
//!
//! Keys: every key Roomcast uses is a single-key command (streams, sessions) except the
//! node registry, which lives under one hash tag (see [`crate::Bus::colocated`]) so one
//! `SCAN` on one shard lists it; a recorded publish touches a history stream and a channel
//! that share a hash tag ([`rooms::Channels::colocating`]).

mod publisher;
pub(crate) mod slots;
mod subscriber;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout};

use crate::commands::{REGISTER_OWNED, StreamEntry, TAKE, TOMBSTONE, millis};
use crate::{Bus, BusFuture, Health, Inbox, LinkState, PublishError, SubscribeError};
use slots::SlotMap;
use subscriber::Command;

/// Settings of a [`RedisClusterBus`].
#[derive(Clone)]
pub struct RedisClusterConfig {
    /// Seed nodes (`redis://host:port`, `rediss://`), any of the cluster's; the rest is
    /// discovered. Credentials and TLS come from these URLs.
    pub nodes: Vec<String>,
    /// Channels on classic pub/sub (the legacy channel): subscribed with `SUBSCRIBE`.
    pub classic_channels: Vec<String>,
    /// Timeout of a connection, a command, a subscription. Default 3 s.
    pub command_timeout: Duration,
    /// How often the links are checked (`PING`). Default 5 s.
    pub ping_interval: Duration,
    /// Publishes waiting at most; past it a publish fails at once. Default 10 000.
    pub publish_queue: usize,
    /// How long a publish retries while the cluster is unreachable. Default 0.
    pub publish_retry_budget: Duration,
    /// A private CA / client certificate for `rediss://` nodes.
    pub tls: Option<crate::RedisTls>,
}

impl std::fmt::Debug for RedisClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClusterConfig")
            .field(
                "nodes",
                &self
                    .nodes
                    .iter()
                    .map(|n| crate::mask_url(n))
                    .collect::<Vec<_>>(),
            )
            .field("classic_channels", &self.classic_channels)
            .finish_non_exhaustive()
    }
}

impl RedisClusterConfig {
    /// Defaults for the seed `nodes`.
    pub fn new(nodes: Vec<String>) -> Self {
        Self {
            nodes,
            classic_channels: Vec::new(),
            command_timeout: Duration::from_secs(3),
            ping_interval: Duration::from_secs(5),
            publish_queue: 10_000,
            publish_retry_budget: Duration::ZERO,
            tls: None,
        }
    }

    /// Seed node URLs from a comma-separated list of `host:port` or URLs (as
    /// `REDIS_CLUSTER_NODES` takes them): `host:port` becomes `redis://host:port`.
    pub fn seeds(list: &str) -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.contains("://") {
                    s.to_owned()
                } else {
                    format!("redis://{s}")
                }
            })
            .collect()
    }

    /// A `redis` cluster client builder for these seeds, timeouts and TLS material (for
    /// code with its own cluster connection, like the SDK's stream consumer).
    pub fn client_builder(&self) -> redis::cluster::ClusterClientBuilder {
        let mut builder = redis::cluster::ClusterClientBuilder::new(self.nodes.clone())
            // Short: a dead node's address may swallow the SYN (a killed container), and
            // a new connection tries every seed before it is usable.
            .connection_timeout(self.command_timeout / 3)
            .response_timeout(self.command_timeout)
            // A dead master is replaced within about the cluster's node timeout: retry
            // often and briefly (the default backoff starts at 1.3 s and grows to
            // minutes), so requests reach the promoted replica as soon as it is there.
            .retries(8)
            .min_retry_wait(50)
            .max_retry_wait(500);
        if let Some(tls) = &self.tls {
            builder = builder.certs(tls.certificates());
        }
        builder
    }

    /// Sets how long publishes retry while the cluster is unreachable.
    pub fn with_publish_retry_budget(mut self, budget: Duration) -> Self {
        self.publish_retry_budget = budget;
        self
    }
}

/// A [`Bus`] over Redis Cluster with sharded pub/sub.
#[derive(Debug)]
pub struct RedisClusterBus {
    conn: Arc<Connector>,
    publish_tx: mpsc::Sender<publisher::Publish>,
    command_tx: mpsc::UnboundedSender<Command>,
    health: Arc<Mutex<Health>>,
    command_timeout: Duration,
    publish_deadline: Duration,
}

/// The cluster connection for commands and publishes, remade when the cluster's topology
/// changes (a failover): a new connection learns the new slot owners at once.
struct Connector {
    client: redis::cluster::ClusterClient,
    current: tokio::sync::Mutex<Option<Current>>,
    /// The generation of the current connection; bumps with each new one.
    generation: std::sync::atomic::AtomicU64,
    /// The latest slot map, for the publisher and the subscriber.
    maps: watch::Sender<Arc<SlotMap>>,
    /// Where a master announced without a host lives.
    seed_host: String,
    /// Set while a shard looks down (a lost link, channels waiting for their owner): the
    /// topology is then read every [`TOPOLOGY_URGENT`] instead of every second, so a
    /// promoted replica is followed as soon as the cluster names it.
    urgent: Arc<std::sync::atomic::AtomicBool>,
}

struct Current {
    generation: u64,
    conn: ClusterConnection,
    /// Who owned which slots when it was made.
    topology: Arc<SlotMap>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

impl Connector {
    /// The current connection, made when there is none.
    async fn get(&self, limit: Duration) -> Result<ClusterConnection, String> {
        self.current(limit).await.map(|(_, c)| c)
    }

    async fn current(&self, limit: Duration) -> Result<(u64, ClusterConnection), String> {
        let mut current = timeout(limit, self.current.lock())
            .await
            .map_err(|_| "timed out waiting for the Redis Cluster connection".to_owned())?;
        if let Some(c) = &*current {
            return Ok((c.generation, c.conn.clone()));
        }
        let (conn, topology) = self.make(limit).await?;
        Ok(self.install(&mut current, conn, topology))
    }

    /// A new connection and the topology it starts from.
    async fn make(&self, limit: Duration) -> Result<(ClusterConnection, SlotMap), String> {
        let make = async {
            let mut conn = self.client.get_async_connection().await?;
            let topology = topology(&mut conn, &self.seed_host).await?;
            Ok::<_, redis::RedisError>((conn, topology))
        };
        // Longer than one connection attempt: the seeds are tried before slots are known.
        match timeout(limit * 2, make).await {
            Ok(Ok(made)) => Ok(made),
            Ok(Err(e)) => Err(format!("cannot connect to the Redis Cluster: {e}")),
            Err(_) => Err("timed out connecting to the Redis Cluster".to_owned()),
        }
    }

    fn install(
        &self,
        current: &mut Option<Current>,
        conn: ClusterConnection,
        topology: SlotMap,
    ) -> (u64, ClusterConnection) {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let topology = Arc::new(topology);
        self.publish_map(&topology);
        *current = Some(Current {
            generation,
            conn: conn.clone(),
            topology,
        });
        (generation, conn)
    }

    fn publish_map(&self, map: &Arc<SlotMap>) {
        if !map.is_empty() {
            self.maps.send_if_modified(|m| {
                if **m == **map {
                    false
                } else {
                    *m = map.clone();
                    true
                }
            });
        }
    }

    /// Reads the topology; a change is handed on and makes the next command use a new
    /// connection.
    async fn check_topology(&self, limit: Duration) -> Result<(), String> {
        let (generation, mut conn) = self.current(limit).await?;
        // A random master answers; if it is the one that just died, ask another.
        let mut last = String::new();
        let mut now = None;
        for _ in 0..3 {
            match timeout(limit, topology(&mut conn, &self.seed_host)).await {
                Ok(Ok(map)) if !map.is_empty() => {
                    now = Some(map);
                    break;
                }
                Ok(Ok(_)) => last = "the cluster reports no slots".to_owned(),
                Ok(Err(e)) => last = format!("cannot read the cluster's topology: {e}"),
                Err(_) => last = "timed out reading the cluster's topology".to_owned(),
            }
        }
        let now = Arc::new(now.ok_or(last)?);
        self.publish_map(&now);
        let stale = {
            let current = self.current.lock().await;
            current
                .as_ref()
                .is_some_and(|c| c.generation == generation && *c.topology != *now)
        };
        if stale {
            tracing::info!(
                "the Redis Cluster's topology changed (failover or resharding); following it"
            );
            // Made before the old one is dropped: commands and publishes keep the old
            // connection (which follows MOVED by itself) until the new one is ready.
            let (conn, topology) = self.make(limit).await?;
            let mut current = self.current.lock().await;
            if current.as_ref().is_some_and(|c| c.generation == generation) {
                self.install(&mut current, conn, topology);
            }
        }
        Ok(())
    }
}

/// The masters and their slot ranges.
async fn topology(
    conn: &mut ClusterConnection,
    seed_host: &str,
) -> Result<SlotMap, redis::RedisError> {
    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
    let slots = conn
        .route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), route)
        .await?;
    Ok(SlotMap::parse(&slots, seed_host))
}

impl RedisClusterBus {
    /// Creates the bus and starts its tasks; returns at once (the cluster is contacted on
    /// first use and the links show `connecting` until then).
    pub fn connect(config: RedisClusterConfig) -> Result<(Self, Inbox), crate::RedisSetupError> {
        let invalid = |reason: String| crate::RedisSetupError::InvalidUrl {
            url: config
                .nodes
                .iter()
                .map(|n| crate::mask_url(n))
                .collect::<Vec<_>>()
                .join(","),
            reason,
        };
        if config.nodes.is_empty() {
            return Err(invalid("no cluster node given".into()));
        }
        if config.nodes.iter().any(|n| n.starts_with("rediss://")) {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = config
            .client_builder()
            .use_protocol(redis::ProtocolVersion::RESP3)
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let factory = Arc::new(subscriber::LinkFactory::new(&config).map_err(invalid)?);
        let (maps, maps_rx) = watch::channel(Arc::new(SlotMap::default()));
        let conn = Arc::new(Connector {
            client,
            current: tokio::sync::Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
            maps,
            seed_host: factory.seed_host(),
            urgent: Arc::default(),
        });
        let health = Arc::new(Mutex::new(Health::CONNECTING));
        let (publish_tx, publish_rx) = mpsc::channel(config.publish_queue.max(1));
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let (inbox_tx, inbox) = mpsc::channel(crate::INBOX_CAPACITY);
        tokio::spawn(publisher::run(
            conn.clone(),
            factory.clone(),
            config.clone(),
            publish_rx,
            maps_rx.clone(),
            health.clone(),
        ));
        let subscriber = subscriber::Subscriber::new(
            factory,
            &config,
            maps_rx,
            inbox_tx,
            health.clone(),
            conn.urgent.clone(),
        );
        tokio::spawn(subscriber.run(command_rx));
        tokio::spawn(watch_topology(conn.clone(), config.clone(), health.clone()));
        let publish_deadline = config
            .publish_retry_budget
            .saturating_add(config.command_timeout.saturating_mul(2));
        Ok((
            Self {
                conn,
                publish_tx,
                command_tx,
                health,
                command_timeout: config.command_timeout,
                publish_deadline,
            },
            inbox,
        ))
    }

    /// Runs `cmd` on the node that owns its key (redis-rs routes it).
    fn run<T: redis::FromRedisValue + Send + 'static>(
        &self,
        cmd: redis::Cmd,
    ) -> BusFuture<Result<T, PublishError>> {
        let conn = self.conn.clone();
        let limit = self.command_timeout;
        Box::pin(async move {
            let mut c = conn.get(limit).await.map_err(PublishError::Unavailable)?;
            timeout(limit, cmd.query_async::<T>(&mut c))
                .await
                .map_err(|_| {
                    PublishError::Unavailable("Redis Cluster did not answer in time".into())
                })?
                .map_err(|e| PublishError::Unavailable(format!("Redis Cluster: {e}")))
        })
    }

    /// Queues a publish (recorded when `history` is set) on its master's queue.
    fn enqueue(
        &self,
        channel: &str,
        payload: Bytes,
        history: Option<crate::History>,
    ) -> BusFuture<Result<(usize, Option<String>), PublishError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.publish_tx.try_send(publisher::Publish {
            channel: channel.to_owned(),
            payload,
            history,
            reply,
            deadline: Instant::now() + self.publish_deadline,
        });
        let limit = self.publish_deadline;
        Box::pin(async move {
            if sent.is_err() {
                return Err(PublishError::Unavailable(
                    "too many publishes waiting for Redis Cluster".into(),
                ));
            }
            match timeout(limit, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(PublishError::Closed),
                Err(_) => Err(PublishError::Unavailable(
                    "Redis Cluster did not answer in time".into(),
                )),
            }
        })
    }
}

pub(crate) fn set_health(health: &Mutex<Health>, f: impl FnOnce(&mut Health)) {
    f(&mut health.lock().unwrap_or_else(PoisonError::into_inner));
}

/// How often the cluster's topology is read.
const TOPOLOGY_EVERY: Duration = Duration::from_secs(1);

/// How often while a shard looks down.
const TOPOLOGY_URGENT: Duration = Duration::from_millis(100);

/// Reads the cluster's topology every second (and at start): the publisher and the
/// subscriber follow each change.
async fn watch_topology(
    conn: Arc<Connector>,
    config: RedisClusterConfig,
    health: Arc<Mutex<Health>>,
) {
    loop {
        let state = match conn.check_topology(config.command_timeout).await {
            Ok(()) => LinkState::Up,
            Err(error) => LinkState::Down { error },
        };
        set_health(&health, |h| {
            if state.is_up() || !matches!(h.publisher, LinkState::Down { .. }) {
                h.publisher = state;
            }
        });
        if Arc::strong_count(&conn) == 1 {
            return;
        }
        let urgent = conn.urgent.load(std::sync::atomic::Ordering::Relaxed);
        let every = if urgent {
            TOPOLOGY_URGENT
        } else {
            TOPOLOGY_EVERY.min(config.ping_interval)
        };
        tokio::time::sleep(every).await;
    }
}

impl Bus for RedisClusterBus {
    fn publish(&self, channel: &str, payload: Bytes) -> BusFuture<Result<usize, PublishError>> {
        let answer = self.enqueue(channel, payload, None);
        Box::pin(async move { answer.await.map(|(n, _)| n) })
    }

    fn publish_recorded(
        &self,
        channel: &str,
        payload: Bytes,
        history: &crate::History,
    ) -> BusFuture<Result<String, PublishError>> {
        if slots::slot(channel.as_bytes()) != slots::slot(history.stream.as_bytes()) {
            // A script cannot reach across slots: the naming must colocate them.
            return Box::pin(std::future::ready(Err(PublishError::Unsupported(
                "on Redis Cluster a recorded channel must share its history's hash tag (Channels::colocating)",
            ))));
        }
        let answer = self.enqueue(channel, payload, Some(history.clone()));
        Box::pin(async move {
            match answer.await? {
                (_, Some(id)) => Ok(id),
                (_, None) => Err(PublishError::Unavailable(
                    "Redis Cluster did not return the entry id".into(),
                )),
            }
        })
    }

    fn history(
        &self,
        stream: &str,
        from: &str,
        count: usize,
    ) -> BusFuture<Result<Vec<(String, Bytes)>, PublishError>> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(stream).arg(from).arg("+").arg("COUNT").arg(count);
        let fut = self.run::<Vec<StreamEntry>>(cmd);
        Box::pin(async move {
            Ok(fut
                .await?
                .into_iter()
                .filter_map(|(id, mut fields)| Some((id, Bytes::from(fields.pop()?.1))))
                .collect())
        })
    }

    fn take(&self, key: &str, ttl: Duration) -> BusFuture<Result<Option<Bytes>, PublishError>> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(TAKE).arg(1).arg(key).arg(millis(ttl));
        let fut = self.run::<Option<Vec<u8>>>(cmd);
        Box::pin(async move {
            Ok(fut
                .await?
                .filter(|v| v.as_slice() != TOMBSTONE.as_bytes())
                .map(Bytes::from))
        })
    }

    fn register_owned(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        owner: &str,
    ) -> BusFuture<Result<bool, PublishError>> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(REGISTER_OWNED)
            .arg(1)
            .arg(key)
            .arg(&value[..])
            .arg(millis(ttl))
            .arg(owner);
        let fut = self.run::<i64>(cmd);
        Box::pin(async move { Ok(fut.await? == 1) })
    }

    fn subscribe(&self, channels: Vec<String>) -> BusFuture<Result<(), SubscribeError>> {
        self.command(|reply| Command::Subscribe(channels, reply))
    }

    fn unsubscribe(&self, channels: Vec<String>) -> BusFuture<Result<(), SubscribeError>> {
        self.command(|reply| Command::Unsubscribe(channels, reply))
    }

    fn subscriber_count(&self, channel: &str) -> BusFuture<Result<usize, PublishError>> {
        // Sharded subscribers are counted on the shard that owns the channel.
        let conn = self.conn.clone();
        let limit = self.command_timeout;
        let channel = channel.to_owned();
        Box::pin(async move {
            let mut c = conn.get(limit).await.map_err(PublishError::Unavailable)?;
            let mut cmd = redis::cmd("PUBSUB");
            cmd.arg("SHARDNUMSUB").arg(&channel);
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                Route::with_key(&channel, SlotAddr::Master),
            ));
            let value = timeout(limit, c.route_command(cmd, route))
                .await
                .map_err(|_| {
                    PublishError::Unavailable("Redis Cluster did not answer in time".into())
                })?
                .map_err(|e| PublishError::Unavailable(format!("Redis Cluster: {e}")))?;
            let pairs: Vec<(String, usize)> = redis::from_redis_value(value)
                .map_err(|e| PublishError::Unavailable(format!("PUBSUB SHARDNUMSUB: {e}")))?;
            Ok(pairs.first().map_or(0, |(_, n)| *n))
        })
    }

    fn register(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> BusFuture<Result<(), PublishError>> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(&value[..])
            .arg("PX")
            .arg(crate::commands::millis(ttl));
        let fut = self.run::<redis::Value>(cmd);
        Box::pin(async move { fut.await.map(drop) })
    }

    fn unregister(&self, key: &str) -> BusFuture<Result<(), PublishError>> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key);
        let fut = self.run::<redis::Value>(cmd);
        Box::pin(async move { fut.await.map(drop) })
    }

    fn registered(&self, prefix: &str) -> BusFuture<Result<Vec<Bytes>, PublishError>> {
        // The keys share the prefix's hash tag (`colocated`): one shard holds them all.
        let conn = self.conn.clone();
        let limit = self.command_timeout;
        let prefix = prefix.to_owned();
        Box::pin(async move {
            let mut c = conn.get(limit).await.map_err(PublishError::Unavailable)?;
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                Route::with_key(&prefix, SlotAddr::Master),
            ));
            let pattern = format!("{}*", crate::commands::escape_glob(&prefix));
            fn fail(e: impl std::fmt::Display) -> PublishError {
                PublishError::Unavailable(format!("Redis Cluster: {e}"))
            }
            let mut keys: Vec<String> = Vec::new();
            let mut cursor: u64 = 0;
            let scan = async {
                loop {
                    let mut cmd = redis::cmd("SCAN");
                    cmd.arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(500);
                    let value = c.route_command(cmd, route.clone()).await.map_err(fail)?;
                    let (next, batch): (u64, Vec<String>) =
                        redis::from_redis_value(value).map_err(fail)?;
                    keys.extend(batch);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                keys.sort();
                keys.dedup();
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
                let mut get = redis::cmd("MGET");
                get.arg(&keys);
                let values: Vec<Option<Vec<u8>>> = get.query_async(&mut c).await.map_err(fail)?;
                Ok(values.into_iter().flatten().map(Bytes::from).collect())
            };
            timeout(limit, scan).await.map_err(|_| {
                PublishError::Unavailable("Redis Cluster did not answer in time".into())
            })?
        })
    }

    fn append(
        &self,
        key: &str,
        max_len: usize,
        field: &str,
        value: Bytes,
    ) -> BusFuture<Result<String, PublishError>> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(max_len)
            .arg("*")
            .arg(field)
            .arg(&value[..]);
        self.run::<String>(cmd)
    }

    fn colocated(&self, prefix: &str) -> String {
        format!("{{{prefix}}}")
    }

    fn is_sharded(&self) -> bool {
        true
    }

    fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn kind(&self) -> &'static str {
        "redis-cluster"
    }
}

impl RedisClusterBus {
    fn command(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), SubscribeError>>) -> Command,
    ) -> BusFuture<Result<(), SubscribeError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.command_tx.send(make(reply)).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(SubscribeError::Closed);
            }
            rx.await.map_err(|_| SubscribeError::Closed)?
        })
    }

    /// Waits until both links are up, or `within` has passed.
    pub async fn wait_up(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.health().is_up() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}
