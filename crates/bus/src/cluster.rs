//! The Redis Cluster transport: room, namespace and node-to-node channels on sharded
//! pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis ≥ 7), so each message travels only to the shard
//! that owns its channel and a node holds a subscription only on the shards of its rooms;
//! the legacy channel on classic pub/sub (what existing publishers send with `PUBLISH`,
//! which a cluster relays to every shard).
//!
//! One RESP3 connection manager (redis-rs's `ClusterConnection`) carries commands and
//! subscriptions: it follows `MOVED` and failovers by itself and re-makes the
//! subscriptions on the node that now owns their slots. Publishes go out in call order
//! (one queue, pipelined by submission order), subscribe and unsubscribe in call order
//! (one queue), like the single-server bus.
//!
//! Keys: every key Roomcast uses is a single-key command (streams, sessions) except the
//! node registry, which lives under one hash tag (see [`crate::Bus::colocated`]) so one
//! `SCAN` on one shard lists it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};

use crate::{Bus, BusFuture, Health, Inbox, LinkState, Message, PublishError, SubscribeError};

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
            builder = builder.certs(redis::TlsCertificates {
                client_tls: tls.client.clone().map(|(client_cert, client_key)| {
                    redis::ClientTlsConfig {
                        client_cert,
                        client_key,
                    }
                }),
                root_cert: tls.root_ca.clone(),
            });
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
    publish_tx: mpsc::Sender<Publish>,
    command_tx: mpsc::UnboundedSender<Command>,
    health: Arc<Mutex<Health>>,
    command_timeout: Duration,
    publish_deadline: Duration,
}

/// The cluster connection, remade when the cluster's topology changes (a failover):
/// a new connection learns the new slot owners, and the subscriber re-makes every
/// subscription on it.
struct Connector {
    client: redis::cluster::ClusterClient,
    current: tokio::sync::Mutex<Option<Current>>,
    /// The generation of the current connection; bumps with each new one.
    generation: tokio::sync::watch::Sender<u64>,
}

struct Current {
    generation: u64,
    conn: ClusterConnection,
    /// Who owned which slots when it was made (`CLUSTER SLOTS`, masters only).
    topology: String,
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
        let make = async {
            let mut conn = self.client.get_async_connection().await?;
            let topology = topology(&mut conn).await?;
            Ok::<_, redis::RedisError>((conn, topology))
        };
        // Longer than one connection attempt: the seeds are tried before slots are known.
        let (conn, topology) = match timeout(limit * 2, make).await {
            Ok(Ok(made)) => made,
            Ok(Err(e)) => return Err(format!("cannot connect to the Redis Cluster: {e}")),
            Err(_) => return Err("timed out connecting to the Redis Cluster".to_owned()),
        };
        let generation = *self.generation.borrow() + 1;
        *current = Some(Current {
            generation,
            conn: conn.clone(),
            topology,
        });
        self.generation.send_replace(generation);
        Ok((generation, conn))
    }

    /// Drops the current connection if the cluster's topology is no longer the one it
    /// was made with; the next call makes a new one.
    async fn check_topology(&self, limit: Duration) -> Result<(), String> {
        let (generation, mut conn) = self.current(limit).await?;
        let now = timeout(limit, topology(&mut conn))
            .await
            .map_err(|_| "timed out reading the cluster's topology".to_owned())?
            .map_err(|e| format!("cannot read the cluster's topology: {e}"))?;
        let mut current = self.current.lock().await;
        if let Some(c) = &*current
            && c.generation == generation
            && c.topology != now
        {
            tracing::info!(
                "the Redis Cluster's topology changed (failover or resharding); reconnecting"
            );
            *current = None;
        }
        Ok(())
    }

    /// Drops connection `generation` after an error that may mean a stale topology.
    async fn invalidate(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            *current = None;
        }
    }
}

/// The masters and their slot ranges, as one comparable string.
async fn topology(conn: &mut ClusterConnection) -> Result<String, redis::RedisError> {
    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
    let slots = conn
        .route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), route)
        .await?;
    let mut ranges: Vec<String> = Vec::new();
    if let redis::Value::Array(entries) = slots {
        for entry in entries {
            if let redis::Value::Array(fields) = entry
                && let [
                    redis::Value::Int(from),
                    redis::Value::Int(to),
                    redis::Value::Array(master),
                    ..,
                ] = fields.as_slice()
            {
                let addr: Vec<String> = master
                    .iter()
                    .take(2)
                    .map(|v| match v {
                        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                        redis::Value::Int(n) => n.to_string(),
                        other => format!("{other:?}"),
                    })
                    .collect();
                ranges.push(format!("{from}-{to}@{}", addr.join(":")));
            }
        }
    }
    ranges.sort();
    Ok(ranges.join(","))
}

struct Publish {
    channel: String,
    payload: Bytes,
    reply: oneshot::Sender<Result<usize, PublishError>>,
    deadline: Instant,
}

impl crate::commands::Expiring for Publish {
    fn deadline(&self) -> Instant {
        self.deadline
    }

    fn expire(&mut self, why: &str) {
        let reply = std::mem::replace(&mut self.reply, oneshot::channel().0);
        let _ = reply.send(Err(PublishError::Unavailable(why.to_owned())));
    }
}

enum Command {
    Subscribe(Vec<String>, oneshot::Sender<Result<(), SubscribeError>>),
    Unsubscribe(Vec<String>, oneshot::Sender<Result<(), SubscribeError>>),
}

/// Messages between the cluster connection and the inbox.
const PUSH_QUEUE: usize = 8192;

/// Publishes sent in one go.
const MAX_BATCH: usize = 512;

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
        // Bounded: the connection cannot wait for a slow node, so a node that falls this far
        // behind loses the oldest messages (counted in the log) instead of growing.
        // (Its ring is allocated up front: a few thousand slots, the inbox behind it holds more.)
        let (push_tx, push_rx) = tokio::sync::broadcast::channel(PUSH_QUEUE);
        let client = config
            .client_builder()
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push_tx)
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let conn = Arc::new(Connector {
            client,
            current: tokio::sync::Mutex::new(None),
            generation: tokio::sync::watch::channel(0).0,
        });
        let health = Arc::new(Mutex::new(Health::CONNECTING));
        let (publish_tx, publish_rx) = mpsc::channel(config.publish_queue.max(1));
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let (inbox_tx, inbox) = mpsc::channel(crate::INBOX_CAPACITY);
        tokio::spawn(publisher(
            conn.clone(),
            config.clone(),
            publish_rx,
            health.clone(),
        ));
        tokio::spawn(subscriber(
            conn.clone(),
            config.clone(),
            command_rx,
            health.clone(),
        ));
        tokio::spawn(receive(push_rx, inbox_tx));
        tokio::spawn(watch(conn.clone(), config.clone(), health.clone()));
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
}

fn set_health(health: &Mutex<Health>, f: impl FnOnce(&mut Health)) {
    f(&mut health.lock().unwrap_or_else(PoisonError::into_inner));
}

/// Sends queued publishes in call order: a batch is submitted in order (the connection
/// keeps per-node order), then awaited together.
async fn publisher(
    conn: Arc<Connector>,
    config: RedisClusterConfig,
    mut rx: mpsc::Receiver<Publish>,
    health: Arc<Mutex<Health>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let retry_until = Instant::now() + config.publish_retry_budget;
        loop {
            crate::commands::drop_expired(&mut batch, "Redis Cluster did not answer in time");
            if batch.is_empty() {
                break;
            }
            let (generation, c) = match conn.current(config.command_timeout).await {
                Ok(c) => c,
                Err(e) if Instant::now() < retry_until => {
                    set_health(&health, |h| h.publisher = LinkState::Down { error: e });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => {
                    set_health(&health, |h| {
                        h.publisher = LinkState::Down { error: e.clone() }
                    });
                    for p in batch.drain(..) {
                        let _ = p.reply.send(Err(PublishError::Unavailable(e.clone())));
                    }
                    break;
                }
            };
            let sends = batch.iter().map(|p| {
                let mut c = c.clone();
                let mut cmd = redis::cmd("SPUBLISH");
                cmd.arg(&p.channel).arg(&p.payload[..]);
                // Straight to the master of the channel's slot.
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(&p.channel, SlotAddr::Master),
                ));
                async move {
                    let value = c.route_command(cmd, route).await?;
                    redis::from_redis_value::<usize>(value).map_err(redis::RedisError::from)
                }
            });
            let results = timeout(
                config.command_timeout,
                futures_util::future::join_all(sends),
            )
            .await;
            let results = match results {
                Ok(r) => r,
                Err(_) => batch
                    .iter()
                    .map(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))))
                    .collect(),
            };
            let failed = results
                .iter()
                .find_map(|r| r.as_ref().err())
                .map(ToString::to_string);
            if failed.is_some() {
                // Perhaps a failover: the next attempt uses a fresh view of the slots.
                conn.invalidate(generation).await;
            }
            match failed {
                Some(e) if Instant::now() < retry_until => {
                    // Retry the whole batch in order, keeping what succeeded answered.
                    let mut keep = Vec::new();
                    for (p, r) in batch.drain(..).zip(results) {
                        match r {
                            Ok(n) => {
                                let _ = p.reply.send(Ok(n));
                            }
                            Err(_) => keep.push(p),
                        }
                    }
                    batch = keep;
                    set_health(&health, |h| h.publisher = LinkState::Down { error: e });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => {
                    set_health(&health, |h| {
                        h.publisher = match &failed {
                            Some(e) => LinkState::Down { error: e.clone() },
                            None => LinkState::Up,
                        }
                    });
                    for (p, r) in batch.drain(..).zip(results) {
                        let _ =
                            p.reply.send(r.map_err(|e| {
                                PublishError::Unavailable(format!("Redis Cluster: {e}"))
                            }));
                    }
                    break;
                }
            }
        }
    }
}

/// Applies subscribe and unsubscribe commands in call order, a sharded one per slot
/// (a cluster refuses one command across slots); on each new connection (a failover
/// was seen) makes every wanted subscription again.
async fn subscriber(
    conn: Arc<Connector>,
    config: RedisClusterConfig,
    mut rx: mpsc::UnboundedReceiver<Command>,
    health: Arc<Mutex<Health>>,
) {
    let classic: HashSet<String> = config.classic_channels.iter().cloned().collect();
    let mut desired: HashSet<String> = HashSet::new();
    let mut generations = conn.generation.subscribe();
    // The connection the subscriptions are on.
    let mut on: u64 = 0;
    let limit = config.command_timeout;
    loop {
        let (subscribe, channels, reply) = tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Command::Subscribe(c, r)) => (true, c, Some(r)),
                Some(Command::Unsubscribe(c, r)) => (false, c, Some(r)),
                None => return,
            },
            Ok(()) = generations.changed() => (true, Vec::new(), None),
        };
        for c in &channels {
            if subscribe {
                desired.insert(c.clone());
            } else {
                desired.remove(c);
            }
        }
        let n = desired.len();
        set_health(&health, |h| h.channels = n);
        let result = match conn.current(limit).await {
            Err(e) => Err(SubscribeError::Unavailable(e)),
            Ok((generation, c)) => {
                // A new connection holds none of the old subscriptions: all of them.
                let (subscribe, channels) = if generation == on {
                    (subscribe, channels)
                } else {
                    (true, desired.iter().cloned().collect())
                };
                let done = apply(&c, &classic, subscribe, channels, limit).await;
                if done.is_ok() {
                    if generation != on && !desired.is_empty() {
                        tracing::info!(
                            channels = desired.len(),
                            "subscriptions made on the Redis Cluster"
                        );
                    }
                    on = generation;
                } else {
                    conn.invalidate(generation).await;
                }
                done
            }
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, "Redis Cluster subscription change failed; made again on the next connection");
        }
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

/// (Un)subscribes `channels` on `c`: classic ones with `(UN)SUBSCRIBE`, the rest with
/// `S(UN)SUBSCRIBE`, one command per slot, concurrently.
async fn apply(
    c: &ClusterConnection,
    classic: &HashSet<String>,
    subscribe: bool,
    channels: Vec<String>,
    limit: Duration,
) -> Result<(), SubscribeError> {
    let mut by_slot: HashMap<Option<Route>, Vec<String>> = HashMap::new();
    for ch in channels {
        let key = (!classic.contains(&ch)).then(|| Route::with_key(&ch, SlotAddr::Master));
        by_slot.entry(key).or_default().push(ch);
    }
    let calls = by_slot.into_iter().map(|(route, chs)| {
        let mut c = c.clone();
        async move {
            match (route.is_some(), subscribe) {
                (true, true) => c.ssubscribe(chs).await,
                (true, false) => c.sunsubscribe(chs).await,
                (false, true) => c.subscribe(chs).await,
                (false, false) => c.unsubscribe(chs).await,
            }
        }
    });
    match timeout(limit, futures_util::future::join_all(calls)).await {
        Err(_) => Err(SubscribeError::Timeout),
        Ok(results) => match results.into_iter().find_map(Result::err) {
            Some(e) => Err(SubscribeError::Unavailable(e.to_string())),
            None => Ok(()),
        },
    }
}

/// Turns the connection's push messages into inbox messages. The connection cannot be
/// made to wait (unlike a single Redis's subscriber, which stops reading), so the queue
/// between them is bounded and a node that falls behind by more than it holds loses
/// messages, logged with their number.
async fn receive(
    mut pushes: tokio::sync::broadcast::Receiver<redis::PushInfo>,
    inbox: mpsc::Sender<Message>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let push = match pushes.recv().await {
            Ok(push) => push,
            Err(RecvError::Lagged(lost)) => {
                tracing::warn!(
                    lost,
                    "this node fell behind the Redis Cluster's messages; the oldest were dropped"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if !matches!(
            push.kind,
            redis::PushKind::SMessage | redis::PushKind::Message
        ) {
            continue;
        }
        let [
            redis::Value::BulkString(channel),
            redis::Value::BulkString(payload),
        ] = push.data.as_slice()
        else {
            continue;
        };
        let message = Message {
            channel: Arc::from(String::from_utf8_lossy(channel).as_ref()),
            payload: Bytes::copy_from_slice(payload),
        };
        if inbox.send(message).await.is_err() {
            return;
        }
    }
}

/// How often the cluster's topology is compared with the connection's.
const TOPOLOGY_EVERY: Duration = Duration::from_secs(1);

/// Checks the cluster every second (and at start): both links follow it, and a changed
/// topology (a failover, resharding) makes the bus reconnect and resubscribe.
async fn watch(conn: Arc<Connector>, config: RedisClusterConfig, health: Arc<Mutex<Health>>) {
    let mut was_up = false;
    loop {
        let state = match conn.check_topology(config.command_timeout).await {
            Ok(()) => LinkState::Up,
            Err(error) => LinkState::Down { error },
        };
        let up = state.is_up();
        set_health(&health, |h| {
            if up && !was_up && h.subscriber != LinkState::Connecting {
                h.reconnects += 1;
            }
            h.subscriber = state.clone();
            if !matches!(h.publisher, LinkState::Down { .. }) || up {
                h.publisher = state;
            }
        });
        was_up = up;
        if Arc::strong_count(&conn) == 1 {
            return;
        }
        tokio::time::sleep(TOPOLOGY_EVERY.min(config.ping_interval)).await;
    }
}

impl Bus for RedisClusterBus {
    fn publish(&self, channel: &str, payload: Bytes) -> BusFuture<Result<usize, PublishError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.publish_tx.try_send(Publish {
            channel: channel.to_owned(),
            payload,
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
