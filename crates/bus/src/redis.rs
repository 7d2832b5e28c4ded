//! The Redis transport: a pipelined publisher over a deadpool-redis pool and one
//! dedicated subscriber connection that batches SUBSCRIBE/UNSUBSCRIBE, reconnects with
//! backoff and resubscribes everything after a reconnect.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::Pool;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep, timeout};

use crate::commands::{
    Expiring, REGISTER_OWNED, StreamEntry, TAKE, TOMBSTONE, drop_expired, escape_glob, millis,
    publish_answer, recorded_publish,
};
use crate::endpoint::{RedisConfig, RedisSetupError, mask_url};
use crate::{Bus, BusFuture, Health, Inbox, LinkState, Message, PublishError, SubscribeError};

/// A [`Bus`] over Redis pub/sub.
#[derive(Debug)]
pub struct RedisBus {
    publish_tx: mpsc::Sender<PublishRequest>,
    command_tx: mpsc::UnboundedSender<Command>,
    health: Arc<Mutex<Health>>,
    endpoint: Arc<crate::endpoint::Endpoint>,
    masked_url: String,
    command_timeout: Duration,
    publish_deadline: Duration,
}

#[derive(Debug)]
struct PublishRequest {
    channel: String,
    payload: Bytes,
    /// A recorded publish: the history it is appended to.
    record: Option<crate::History>,
    /// Subscribers reached, and the entry id of a recorded publish.
    reply: oneshot::Sender<Result<(usize, Option<String>), PublishError>>,
    /// Past this the caller has its answer (a timeout); the publish is not attempted.
    deadline: Instant,
}

impl Expiring for PublishRequest {
    fn deadline(&self) -> Instant {
        self.deadline
    }

    fn expire(&mut self, why: &str) {
        let reply = std::mem::replace(&mut self.reply, oneshot::channel().0);
        let _ = reply.send(Err(PublishError::Unavailable(why.to_owned())));
    }
}

#[derive(Debug)]
enum Command {
    Subscribe(Vec<String>, oneshot::Sender<Result<(), SubscribeError>>),
    Unsubscribe(Vec<String>, oneshot::Sender<Result<(), SubscribeError>>),
}

impl Command {
    fn is_subscribe(&self) -> bool {
        matches!(self, Self::Subscribe(..))
    }
}

/// The most publishes sent in one pipeline.
const MAX_PIPELINE: usize = 512;
/// Channels per SUBSCRIBE when resubscribing after a reconnect.
const RESUBSCRIBE_CHUNK: usize = 2_000;
/// How often the subscriptions are checked against what Redis reports.
const VERIFY_EVERY: Duration = Duration::from_secs(3);
/// Channels per verification, in turns: its cost does not grow with the room count.
const VERIFY_BATCH: usize = 1_000;

/// `fut`, failing as unavailable after `limit`.
fn with_timeout<T: Send + 'static>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, PublishError>> + Send + 'static,
) -> BusFuture<Result<T, PublishError>> {
    Box::pin(async move {
        timeout(limit, fut)
            .await
            .map_err(|_| PublishError::Unavailable("Redis did not answer in time".into()))?
    })
}

impl RedisBus {
    /// Creates the bus and starts its connection tasks; returns at once. Redis need not
    /// be reachable yet: the bus reports `connecting`/`down` in [`Bus::health`] and
    /// connects as soon as it can. With [`RedisConfig::sentinel`] it asks the Sentinels
    /// for the master every 500 ms and moves to a new one within that of a failover.
    pub fn connect(config: RedisConfig) -> Result<(Self, Inbox), RedisSetupError> {
        let masked_url = mask_url(&config.url);
        let endpoint = crate::endpoint::Endpoint::new(config.clone())?;
        tokio::spawn(endpoint.clone().follow_sentinels());

        let health = Arc::new(Mutex::new(Health::CONNECTING));
        let (publish_tx, publish_rx) = mpsc::channel(config.publish_queue.max(1));
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let (inbox_tx, inbox) = mpsc::channel(crate::INBOX_CAPACITY);

        tokio::spawn(publisher_task(
            endpoint.clone(),
            config.clone(),
            publish_rx,
            health.clone(),
        ));
        let command_timeout = config.command_timeout;
        let publish_deadline = config.publish_deadline();
        tokio::spawn(
            Subscriber {
                moves: endpoint.moves(),
                endpoint: endpoint.clone(),
                config,
                commands: command_rx,
                inbox: inbox_tx,
                health: health.clone(),
                desired: HashSet::new(),
                verify_from: 0,
                held: None,
            }
            .run(),
        );
        Ok((
            Self {
                publish_tx,
                command_tx,
                health,
                endpoint,
                masked_url,
                command_timeout,
                publish_deadline,
            },
            inbox,
        ))
    }

    /// The URL with its password masked.
    pub fn masked_url(&self) -> &str {
        &self.masked_url
    }

    /// The publishing pool of the current Redis (the master, with Sentinel; `None`
    /// until the Sentinels named one), for other commands.
    pub fn pool(&self) -> Option<Pool> {
        self.endpoint.pool().ok()
    }

    /// Waits until both links are up, or `within` has passed.
    pub async fn wait_up(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.health().is_up() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(20)).await;
        }
    }
}

fn set_health(health: &Mutex<Health>, f: impl FnOnce(&mut Health)) {
    f(&mut health.lock().unwrap_or_else(PoisonError::into_inner));
}

/// Exponential backoff with full jitter between `min` and the current cap.
fn backoff(config: &RedisConfig, attempt: u32) -> Duration {
    use rand::Rng;
    let cap = config
        .reconnect_min
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(config.reconnect_max);
    let min = config.reconnect_min.min(cap);
    let jittered = rand::rng().random_range(min.as_millis()..=cap.as_millis());
    Duration::from_millis(u64::try_from(jittered).unwrap_or(u64::MAX))
}

async fn publisher_task(
    endpoint: Arc<crate::endpoint::Endpoint>,
    config: RedisConfig,
    mut rx: mpsc::Receiver<PublishRequest>,
    health: Arc<Mutex<Health>>,
) {
    let mut batch = Vec::with_capacity(MAX_PIPELINE);
    // Failed probes in a row: paces the health probe like a reconnect.
    let mut failures: u32 = 0;
    let mut next_probe = Instant::now();
    loop {
        let first = tokio::select! {
            req = rx.recv() => match req {
                Some(req) => req,
                None => return,
            },
            () = tokio::time::sleep_until(next_probe) => {
                // Probing when idle keeps `/health` true without waiting for traffic.
                match probe(&endpoint, config.command_timeout).await {
                    Ok(()) => {
                        failures = 0;
                        set_health(&health, |h| h.publisher = LinkState::Up);
                        next_probe = Instant::now() + config.ping_interval;
                    }
                    Err(error) => {
                        set_health(&health, |h| h.publisher = LinkState::Down { error });
                        next_probe = Instant::now() + backoff(&config, failures);
                        failures = failures.saturating_add(1);
                    }
                }
                continue;
            }
        };
        batch.push(first);
        while batch.len() < MAX_PIPELINE {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        let deadline = Instant::now() + config.publish_retry_budget;
        let mut attempt = 0;
        loop {
            drop_expired(&mut batch, "Redis did not answer in time");
            if batch.is_empty() {
                break;
            }
            match publish_batch(&endpoint, &batch, config.command_timeout).await {
                Ok(counts) => {
                    failures = 0;
                    set_health(&health, |h| h.publisher = LinkState::Up);
                    for (req, count) in batch.drain(..).zip(counts) {
                        let _ = req.reply.send(Ok(count));
                    }
                    break;
                }
                Err(error) => {
                    set_health(&health, |h| {
                        h.publisher = LinkState::Down {
                            error: error.clone(),
                        }
                    });
                    next_probe = Instant::now() + config.reconnect_min;
                    let wait = backoff(&config, attempt);
                    attempt += 1;
                    if Instant::now() + wait > deadline {
                        for req in batch.drain(..) {
                            let _ = req
                                .reply
                                .send(Err(PublishError::Unavailable(error.clone())));
                        }
                        break;
                    }
                    sleep(wait).await;
                }
            }
        }
    }
}

async fn probe(endpoint: &crate::endpoint::Endpoint, limit: Duration) -> Result<(), String> {
    let pool = endpoint.pool()?;
    let mut conn = timeout(limit, pool.get())
        .await
        .map_err(|_| "timed out connecting to Redis".to_owned())?
        .map_err(|e| format!("cannot connect to Redis: {e}"))?;
    let _: String = timeout(limit, redis::cmd("PING").query_async(&mut conn))
        .await
        .map_err(|_| "timed out waiting for PONG".to_owned())?
        .map_err(|e| format!("ping failed: {e}"))?;
    Ok(())
}

async fn publish_batch(
    endpoint: &crate::endpoint::Endpoint,
    batch: &[PublishRequest],
    limit: Duration,
) -> Result<Vec<(usize, Option<String>)>, String> {
    let pool = endpoint.pool()?;
    let mut conn = timeout(limit, pool.get())
        .await
        .map_err(|_| "timed out connecting to Redis".to_owned())?
        .map_err(|e| format!("cannot connect to Redis: {e}"))?;
    let mut pipe = redis::pipe();
    for req in batch {
        match &req.record {
            None => {
                pipe.cmd("PUBLISH").arg(&req.channel).arg(&req.payload[..]);
            }
            Some(history) => {
                pipe.add_command(recorded_publish(
                    "PUBLISH",
                    &req.channel,
                    &req.payload,
                    history,
                ));
            }
        }
    }
    let answers: Vec<redis::Value> = timeout(limit, pipe.query_async(&mut conn))
        .await
        .map_err(|_| "timed out publishing to Redis".to_owned())?
        .map_err(|e| format!("publish failed: {e}"))?;
    answers.into_iter().map(publish_answer).collect()
}

struct Subscriber {
    /// The Redis to subscribe on (the master, with Sentinel).
    endpoint: Arc<crate::endpoint::Endpoint>,
    /// Changes when the master does: the connection is then moved to the new one.
    moves: tokio::sync::watch::Receiver<u64>,
    config: RedisConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    inbox: mpsc::Sender<Message>,
    health: Arc<Mutex<Health>>,
    /// Every channel the node wants, whether or not Redis has confirmed it; resubscribed
    /// in full after each reconnect.
    desired: HashSet<String>,
    /// Where the next verification starts in `desired` ([`VERIFY_BATCH`] at a time).
    verify_from: usize,
    /// A command taken from the queue that did not fit the current batch.
    held: Option<Command>,
}

enum Exit {
    /// The bus was dropped.
    Closed,
    /// The connection failed; reconnect.
    Lost(String),
}

impl Subscriber {
    fn count_channels(&self) {
        let n = self.desired.len();
        set_health(&self.health, |h| h.channels = n);
    }

    async fn run(mut self) {
        let mut attempt: u32 = 0;
        let mut was_up = false;
        loop {
            set_health(&self.health, |h| h.subscriber = LinkState::Connecting);
            let error = match self.connect().await {
                Ok((sink, stream)) => {
                    attempt = 0;
                    if was_up {
                        // Every wanted channel was lost with the connection and is back.
                        let n = self.desired.len() as u64;
                        set_health(&self.health, |h| {
                            h.reconnects += 1;
                            h.repaired += n;
                        });
                    }
                    was_up = true;
                    match self.serve(sink, stream).await {
                        Exit::Closed => return,
                        Exit::Lost(e) => e,
                    }
                }
                Err(e) => e,
            };
            tracing::warn!(url = %mask_url(&self.config.url), %error, "Redis subscriber connection lost; reconnecting");
            set_health(&self.health, |h| {
                h.subscriber = LinkState::Down {
                    error: error.clone(),
                }
            });
            attempt = attempt.saturating_add(1);
            if self
                .config
                .max_reconnect_attempts
                .is_some_and(|max| attempt > max)
            {
                tracing::error!("giving up on Redis after {attempt} attempts");
                self.fail_commands_forever(&error).await;
                return;
            }
            let wait = backoff(&self.config, attempt - 1);
            if self.wait_offline(wait, &error).await.is_err() {
                return;
            }
        }
    }

    async fn connect(
        &mut self,
    ) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), String> {
        let limit = self.config.command_timeout;
        self.moves.borrow_and_update();
        let client = self.endpoint.link()?.client;
        let pubsub = timeout(limit, client.get_async_pubsub())
            .await
            .map_err(|_| "timed out connecting to Redis".to_owned())?
            .map_err(|e| format!("cannot connect to Redis: {e}"))?;
        let (mut sink, stream) = pubsub.split();
        if !self.desired.is_empty() {
            // In chunks, each with its own timeout, so that a node with very many
            // channels resubscribes them all instead of timing out on one giant command.
            let all: Vec<&String> = self.desired.iter().collect();
            for chunk in all.chunks(RESUBSCRIBE_CHUNK) {
                timeout(limit, sink.subscribe(chunk))
                    .await
                    .map_err(|_| "timed out resubscribing".to_owned())?
                    .map_err(|e| format!("resubscribe failed: {e}"))?;
            }
            tracing::info!(
                channels = self.desired.len(),
                "resubscribed after connecting to Redis"
            );
        }
        set_health(&self.health, |h| h.subscriber = LinkState::Up);
        Ok((sink, stream))
    }

    /// Wanted channels that Redis reports no subscriber for (`PUBSUB NUMSUB`): this node
    /// should hold them, so they are missing. (A channel another node also holds is not
    /// proven to be ours this way; on one Redis only a lost connection removes a classic
    /// subscription, and that the connection itself reports.)
    ///
    /// Checks the next [`VERIFY_BATCH`] wanted channels, round the set in turns.
    async fn missing(&mut self) -> Result<Vec<String>, PublishError> {
        if self.desired.is_empty() {
            return Ok(Vec::new());
        }
        if self.verify_from >= self.desired.len() {
            self.verify_from = 0;
        }
        let batch: Vec<String> = self
            .desired
            .iter()
            .skip(self.verify_from)
            .take(VERIFY_BATCH)
            .cloned()
            .collect();
        self.verify_from += batch.len();
        let mut conn = pooled(&self.endpoint).await?;
        let numsub = redis::cmd("PUBSUB").arg("NUMSUB").arg(&batch).clone();
        let counts: Vec<(String, usize)> =
            timeout(self.config.command_timeout, numsub.query_async(&mut conn))
                .await
                .map_err(|_| unavailable("PUBSUB NUMSUB timed out"))?
                .map_err(unavailable)?;
        Ok(counts
            .into_iter()
            .filter(|(_, n)| *n == 0)
            .map(|(c, _)| c)
            .collect())
    }

    /// While disconnected: keep the wanted set up to date and answer at once, so callers
    /// never hang on an outage.
    async fn wait_offline(&mut self, wait: Duration, error: &str) -> Result<(), ()> {
        let until = Instant::now() + wait;
        loop {
            let cmd = match self.held.take() {
                Some(cmd) => cmd,
                None => tokio::select! {
                    () = tokio::time::sleep_until(until) => return Ok(()),
                    // A new master: try it now rather than after the backoff.
                    Ok(()) = self.moves.changed() => return Ok(()),
                    cmd = self.commands.recv() => cmd.ok_or(())?,
                },
            };
            match cmd {
                Command::Subscribe(channels, reply) => {
                    self.desired.extend(channels);
                    let _ = reply.send(Err(SubscribeError::Unavailable(error.to_owned())));
                }
                Command::Unsubscribe(channels, reply) => {
                    for c in &channels {
                        self.desired.remove(c);
                    }
                    let _ = reply.send(Ok(()));
                }
            }
            self.count_channels();
        }
    }

    async fn fail_commands_forever(&mut self, error: &str) {
        while let Some(cmd) = self.commands.recv().await {
            let reply = match cmd {
                Command::Subscribe(_, r) | Command::Unsubscribe(_, r) => r,
            };
            let _ = reply.send(Err(SubscribeError::Unavailable(error.to_owned())));
        }
    }

    async fn serve(
        &mut self,
        mut sink: redis::aio::PubSubSink,
        mut stream: redis::aio::PubSubStream,
    ) -> Exit {
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.tick().await;
        let mut verify = tokio::time::interval(VERIFY_EVERY);
        verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        verify.tick().await;
        loop {
            let cmd = match self.held.take() {
                Some(cmd) => Some(cmd),
                None => tokio::select! {
                    cmd = self.commands.recv() => match cmd {
                        Some(cmd) => Some(cmd),
                        None => return Exit::Closed,
                    },
                    Ok(()) = self.moves.changed() => {
                        return Exit::Lost("the Redis master changed (Sentinel failover)".into());
                    }
                    msg = stream.next() => {
                        let Some(msg) = msg else { return Exit::Lost("connection closed".into()) };
                        let channel: Arc<str> = Arc::from(msg.get_channel_name());
                        let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                        // Waits while the node's inbox is full: back-pressure onto Redis.
                        if self.inbox.send(Message { channel, payload }).await.is_err() {
                            return Exit::Closed;
                        }
                        None
                    }
                    _ = verify.tick() => {
                        match self.missing().await {
                            Ok(missing) if !missing.is_empty() => {
                                tracing::warn!(
                                    missing = missing.len(),
                                    "Redis holds no subscription for channels this node wants; subscribing them again"
                                );
                                let n = missing.len() as u64;
                                let done = timeout(self.config.command_timeout, sink.subscribe(&missing)).await;
                                match done {
                                    Ok(Ok(())) => set_health(&self.health, |h| h.repaired += n),
                                    Ok(Err(e)) => return Exit::Lost(format!("resubscribe failed: {e}")),
                                    Err(_) => return Exit::Lost("timed out resubscribing".into()),
                                }
                            }
                            Ok(_) => {}
                            Err(e) => tracing::debug!(error = %e, "cannot check the subscriptions"),
                        }
                        None
                    }
                    _ = ping.tick() => {
                        match timeout(self.config.command_timeout, sink.ping::<redis::Value>()).await {
                            Ok(Ok(_)) => None,
                            Ok(Err(e)) => return Exit::Lost(format!("ping failed: {e}")),
                            Err(_) => return Exit::Lost("ping timed out".into()),
                        }
                    }
                },
            };
            if let Some(first) = cmd
                && let Err(e) = self.apply_batch(&mut sink, first).await
            {
                return Exit::Lost(e);
            }
        }
    }

    /// Applies `first` and every queued command of the same kind in one round trip.
    /// Commands of the other kind wait for the next batch, so order is preserved.
    async fn apply_batch(
        &mut self,
        sink: &mut redis::aio::PubSubSink,
        first: Command,
    ) -> Result<(), String> {
        let subscribe = first.is_subscribe();
        let mut batch = vec![first];
        while let Ok(next) = self.commands.try_recv() {
            if next.is_subscribe() == subscribe {
                batch.push(next);
            } else {
                self.held = Some(next);
                break;
            }
        }
        let mut channels: Vec<String> = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        for cmd in batch {
            match cmd {
                Command::Subscribe(list, reply) => {
                    for c in list {
                        if self.desired.insert(c.clone()) {
                            channels.push(c);
                        }
                    }
                    replies.push(reply);
                }
                Command::Unsubscribe(list, reply) => {
                    for c in list {
                        if self.desired.remove(&c) {
                            channels.push(c);
                        }
                    }
                    replies.push(reply);
                }
            }
        }
        self.count_channels();
        let result = if channels.is_empty() {
            Ok(())
        } else {
            let limit = self.config.command_timeout;
            let op = async {
                if subscribe {
                    sink.subscribe(&channels).await
                } else {
                    sink.unsubscribe(&channels).await
                }
            };
            match timeout(limit, op).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("redis refused: {e}")),
                Err(_) => Err("timed out waiting for Redis to confirm".to_owned()),
            }
        };
        match result {
            Ok(()) => {
                for reply in replies {
                    let _ = reply.send(Ok(()));
                }
                Ok(())
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(SubscribeError::Unavailable(e.clone())));
                }
                Err(e)
            }
        }
    }
}

impl Bus for RedisBus {
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
        let answer = self.enqueue(channel, payload, Some(history.clone()));
        Box::pin(async move {
            match answer.await? {
                (_, Some(id)) => Ok(id),
                (_, None) => Err(PublishError::Unavailable(
                    "Redis did not return the entry id".into(),
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
        let endpoint = self.endpoint.clone();
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(stream).arg(from).arg("+").arg("COUNT").arg(count);
        with_timeout(self.command_timeout, async move {
            let mut conn = pooled(&endpoint).await?;
            let entries: Vec<StreamEntry> =
                cmd.query_async(&mut conn).await.map_err(unavailable)?;
            Ok(entries
                .into_iter()
                .filter_map(|(id, mut fields)| Some((id, Bytes::from(fields.pop()?.1))))
                .collect())
        })
    }

    fn take(&self, key: &str, ttl: Duration) -> BusFuture<Result<Option<Bytes>, PublishError>> {
        let endpoint = self.endpoint.clone();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(TAKE).arg(1).arg(key).arg(millis(ttl));
        with_timeout(self.command_timeout, async move {
            let mut conn = pooled(&endpoint).await?;
            let value: Option<Vec<u8>> = cmd.query_async(&mut conn).await.map_err(unavailable)?;
            Ok(value
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
        let endpoint = self.endpoint.clone();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(REGISTER_OWNED)
            .arg(1)
            .arg(key)
            .arg(&value[..])
            .arg(millis(ttl))
            .arg(owner);
        with_timeout(self.command_timeout, async move {
            let mut conn = pooled(&endpoint).await?;
            let written: i64 = cmd.query_async(&mut conn).await.map_err(unavailable)?;
            Ok(written == 1)
        })
    }

    fn subscribe(&self, channels: Vec<String>) -> BusFuture<Result<(), SubscribeError>> {
        self.command(|reply| Command::Subscribe(channels, reply))
    }

    fn unsubscribe(&self, channels: Vec<String>) -> BusFuture<Result<(), SubscribeError>> {
        self.command(|reply| Command::Unsubscribe(channels, reply))
    }

    fn subscriber_count(&self, channel: &str) -> BusFuture<Result<usize, PublishError>> {
        let endpoint = self.endpoint.clone();
        let channel = channel.to_owned();
        with_timeout(self.command_timeout, async move {
            let mut conn = pooled(&endpoint).await?;
            let reply: Vec<(String, usize)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .map_err(|e| PublishError::Unavailable(format!("PUBSUB NUMSUB failed: {e}")))?;
            Ok(reply.first().map_or(0, |(_, n)| *n))
        })
    }

    fn register(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> BusFuture<Result<(), PublishError>> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(&value[..]).arg("PX").arg(ttl_ms);
        self.run(cmd)
    }

    fn append(
        &self,
        key: &str,
        max_len: usize,
        field: &str,
        value: Bytes,
    ) -> BusFuture<Result<String, PublishError>> {
        let endpoint = self.endpoint.clone();
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(max_len)
            .arg("*")
            .arg(field)
            .arg(&value[..]);
        with_timeout(self.command_timeout, async move {
            let mut conn = pooled(&endpoint).await?;
            cmd.query_async::<String>(&mut conn)
                .await
                .map_err(unavailable)
        })
    }

    fn unregister(&self, key: &str) -> BusFuture<Result<(), PublishError>> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key);
        self.run(cmd)
    }

    fn registered(&self, prefix: &str) -> BusFuture<Result<Vec<Bytes>, PublishError>> {
        let endpoint = self.endpoint.clone();
        let pattern = format!("{}*", escape_glob(prefix));
        with_timeout(self.command_timeout, async move {
            let mut conn = pooled(&endpoint).await?;
            let mut keys: Vec<String> = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            keys.sort();
            keys.dedup();
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            // A key may expire between SCAN and MGET.
            Ok(values.into_iter().flatten().map(Bytes::from).collect())
        })
    }

    fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

fn unavailable(e: impl std::fmt::Display) -> PublishError {
    PublishError::Unavailable(format!("Redis: {e}"))
}

/// A pooled connection to the current Redis.
async fn pooled(
    endpoint: &crate::endpoint::Endpoint,
) -> Result<deadpool_redis::Connection, PublishError> {
    let pool = endpoint.pool().map_err(PublishError::Unavailable)?;
    pool.get()
        .await
        .map_err(|e| PublishError::Unavailable(format!("cannot connect to Redis: {e}")))
}

impl RedisBus {
    /// Queues a publish for the publisher task, in call order.
    fn enqueue(
        &self,
        channel: &str,
        payload: Bytes,
        record: Option<crate::History>,
    ) -> BusFuture<Result<(usize, Option<String>), PublishError>> {
        let (reply, rx) = oneshot::channel();
        let deadline = Instant::now() + self.publish_deadline;
        let sent = self.publish_tx.try_send(PublishRequest {
            channel: channel.to_owned(),
            payload,
            record,
            reply,
            deadline,
        });
        Box::pin(async move {
            match sent {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(PublishError::Unavailable(
                        "publish queue full: Redis is not keeping up".into(),
                    ));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(PublishError::Closed),
            }
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(answer) => answer.map_err(|_| PublishError::Closed)?,
                Err(_) => Err(PublishError::Unavailable(
                    "Redis did not answer in time".into(),
                )),
            }
        })
    }

    /// Runs one command on a pooled connection, ignoring its reply.
    fn run(&self, cmd: redis::Cmd) -> BusFuture<Result<(), PublishError>> {
        let endpoint = self.endpoint.clone();
        with_timeout(self.command_timeout, async move {
            let mut conn = pooled(&endpoint).await?;
            cmd.query_async::<redis::Value>(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn command(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), SubscribeError>>) -> Command,
    ) -> BusFuture<Result<(), SubscribeError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.command_tx.send(make(reply));
        Box::pin(async move {
            sent.map_err(|_| SubscribeError::Closed)?;
            rx.await.map_err(|_| SubscribeError::Closed)?
        })
    }
}
