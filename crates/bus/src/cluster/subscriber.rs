//! Subscriptions on Redis Cluster: one RESP3 connection per master, each holding the shard
//! channels of the slots that master owns (and the classic channels that hash there).
//!
//! Why not one cluster connection for everything: when it is remade for a new topology
//! every subscription goes with it, so a failover of one shard made every node miss
//! messages on all shards. Here a topology change moves only the channels whose owner
//! changed — subscribed on the new owner first, then dropped from the old one (make before
//! break) — and the links to healthy masters are never touched.
//!
//! Nothing drifts silently: the wanted set is compared with what each link holds after
//! every topology change and lost link, every second for channels not yet placed, and
//! every [`VERIFY_EVERY`] against what Redis itself reports (`CLIENT INFO`'s `ssub` and
//! `sub` counts on the link). Every channel subscribed again by that repair is counted in
//! [`crate::Health::repaired`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout};

use super::slots::{Master, SlotMap};
use super::{RedisClusterConfig, set_health};
use crate::{Health, LinkState, Message, SubscribeError};

/// How often each link's subscriptions are checked against what Redis reports.
pub(crate) const VERIFY_EVERY: Duration = Duration::from_secs(3);

/// A master that refused a connection is not tried again sooner than this.
const RETRY_CONNECT: Duration = Duration::from_millis(500);

/// Subscribe commands sent in one pipeline.
const PIPELINE: usize = 1_000;

pub(super) enum Command {
    Subscribe(Vec<String>, oneshot::Sender<Result<(), SubscribeError>>),
    Unsubscribe(Vec<String>, oneshot::Sender<Result<(), SubscribeError>>),
}

/// What a link's connection reports besides messages.
enum Event {
    /// The connection closed.
    Lost(u64),
    /// Redis removed subscriptions (a confirmation of ours, or a slot moved away).
    Unsubscribed(u64),
}

/// Makes connections to one master with the seeds' credentials and TLS.
pub(super) struct LinkFactory {
    seed: redis::ConnectionInfo,
    tls: Option<crate::RedisTls>,
    limit: Duration,
}

impl LinkFactory {
    pub(super) fn new(config: &RedisClusterConfig) -> Result<Self, String> {
        use redis::IntoConnectionInfo;
        let first = config.nodes.first().ok_or("no cluster node given")?;
        let seed = first
            .as_str()
            .into_connection_info()
            .map_err(|e| e.to_string())?;
        if matches!(seed.addr(), redis::ConnectionAddr::Unix(_)) {
            return Err("cluster nodes must be TCP addresses".into());
        }
        Ok(Self {
            seed,
            tls: config.tls.clone(),
            limit: config.command_timeout,
        })
    }

    /// The host of the first seed (where a master announced without a host lives).
    pub(super) fn seed_host(&self) -> String {
        match self.seed.addr() {
            redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. } => {
                host.clone()
            }
            _ => String::new(),
        }
    }

    /// A plain connection to `master` for commands (the publisher's own, per master).
    pub(super) async fn command_link(
        &self,
        master: &Master,
    ) -> Result<MultiplexedConnection, String> {
        let client = self.client(master)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.limit / 3))
            .set_response_timeout(Some(self.limit));
        timeout(
            self.limit,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| "timed out connecting".to_owned())?
        .map_err(|e| e.to_string())
    }

    fn client(&self, master: &Master) -> Result<redis::Client, String> {
        let addr = match self.seed.addr() {
            redis::ConnectionAddr::TcpTls { insecure, .. } => redis::ConnectionAddr::TcpTls {
                host: master.host.clone(),
                port: master.port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => redis::ConnectionAddr::Tcp(master.host.clone(), master.port),
        };
        let settings = self
            .seed
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let info = self
            .seed
            .clone()
            .set_addr(addr)
            .set_redis_settings(settings);
        match &self.tls {
            None => redis::Client::open(info),
            Some(tls) => redis::Client::build_with_tls(info, tls.certificates()),
        }
        .map_err(|e| e.to_string())
    }
}

struct Link {
    id: u64,
    conn: MultiplexedConnection,
    /// Channels confirmed on this connection.
    held: HashSet<String>,
}

pub(super) struct Subscriber {
    factory: Arc<LinkFactory>,
    /// Which channel names go on classic pub/sub.
    classic: Arc<HashSet<String>>,
    desired: HashSet<String>,
    map: Arc<SlotMap>,
    maps: watch::Receiver<Arc<SlotMap>>,
    links: HashMap<Master, Link>,
    /// When connecting to a master last failed.
    failed: HashMap<Master, (Instant, String)>,
    next_id: u64,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    inbox: mpsc::Sender<Message>,
    /// Messages dropped because the inbox was full, since the last report.
    dropped: Arc<AtomicU64>,
    /// Links that reported unsubscriptions: verified on the next tick.
    suspect: HashSet<u64>,
    health: Arc<Mutex<Health>>,
    /// Asks for the topology to be read often (a shard looks down).
    urgent: Arc<std::sync::atomic::AtomicBool>,
}

impl Subscriber {
    pub(super) fn new(
        factory: Arc<LinkFactory>,
        config: &RedisClusterConfig,
        maps: watch::Receiver<Arc<SlotMap>>,
        inbox: mpsc::Sender<Message>,
        health: Arc<Mutex<Health>>,
        urgent: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Self {
            factory,
            classic: Arc::new(config.classic_channels.iter().cloned().collect()),
            desired: HashSet::new(),
            map: Arc::new(SlotMap::default()),
            maps,
            links: HashMap::new(),
            failed: HashMap::new(),
            next_id: 0,
            events_tx,
            events,
            inbox,
            dropped: Arc::new(AtomicU64::new(0)),
            suspect: HashSet::new(),
            health,
            urgent,
        }
    }

    pub(super) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut verified = Instant::now();
        loop {
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    self.command(cmd, &mut commands).await;
                }
                changed = self.maps.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let map = self.maps.borrow_and_update().clone();
                    if map.is_empty() || map == self.map {
                        continue;
                    }
                    self.map = map;
                    self.reconcile("the cluster's topology changed").await;
                }
                Some(event) = self.events.recv() => match event {
                    Event::Lost(id) => {
                        if let Some(master) = self.master_of_link(id) {
                            tracing::warn!(%master, "Redis Cluster subscriber link lost; its channels are subscribed again");
                            self.links.remove(&master);
                            set_health(&self.health, |h| h.reconnects += 1);
                            self.reconcile("a subscriber link was lost").await;
                        }
                    }
                    Event::Unsubscribed(id) => {
                        self.suspect.insert(id);
                    }
                },
                _ = tick.tick() => {
                    let lost = self.dropped.swap(0, Ordering::Relaxed);
                    if lost > 0 {
                        tracing::warn!(lost, "this node fell behind the Redis Cluster's messages; the newest were dropped");
                    }
                    if self.unplaced() > 0 {
                        self.reconcile("channels were waiting for their shard").await;
                    }
                    if verified.elapsed() >= VERIFY_EVERY || !self.suspect.is_empty() {
                        verified = Instant::now();
                        self.verify().await;
                    }
                    self.report();
                }
            }
        }
    }

    fn master_of_link(&self, id: u64) -> Option<Master> {
        self.links
            .iter()
            .find(|(_, l)| l.id == id)
            .map(|(m, _)| m.clone())
    }

    /// Wanted channels that no link holds on their owner.
    fn unplaced(&self) -> usize {
        self.desired.iter().filter(|ch| !self.placed(ch)).count()
    }

    fn placed(&self, ch: &str) -> bool {
        self.map
            .owner_of(ch)
            .and_then(|m| self.links.get(m))
            .is_some_and(|l| l.held.contains(ch))
    }

    fn report(&self) {
        let unplaced = self.unplaced();
        // Channels without their shard: look for the new owner often until it is there.
        self.urgent.store(unplaced > 0, Ordering::Relaxed);
        let n = self.desired.len();
        let error = self
            .failed
            .iter()
            .map(|(m, (_, e))| format!("{m}: {e}"))
            .next();
        set_health(&self.health, |h| {
            h.channels = n;
            h.subscriber = if self.map.is_empty() {
                LinkState::Down {
                    error: "the cluster's slots are not known yet".into(),
                }
            } else if unplaced > 0 && unplaced == n {
                LinkState::Down {
                    error: error.unwrap_or_else(|| "no subscription is in place".into()),
                }
            } else {
                // One shard failing over leaves the others serving: the node stays up.
                LinkState::Up
            };
        });
    }

    /// Applies `first` and the queued commands of the same kind.
    async fn command(&mut self, first: Command, queue: &mut mpsc::UnboundedReceiver<Command>) {
        let subscribe = matches!(first, Command::Subscribe(..));
        let mut replies = Vec::new();
        let mut channels = Vec::new();
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Subscribe(list, reply) if subscribe => {
                    for c in list {
                        if self.desired.insert(c.clone()) {
                            channels.push(c);
                        }
                    }
                    replies.push(reply);
                }
                Command::Unsubscribe(list, reply) if !subscribe => {
                    for c in list {
                        if self.desired.remove(&c) {
                            channels.push(c);
                        }
                    }
                    replies.push(reply);
                }
                other => {
                    // The other kind: applied after this batch, in order.
                    self.finish(subscribe, channels, replies).await;
                    Box::pin(self.command(other, queue)).await;
                    return;
                }
            }
            if let Ok(cmd) = queue.try_recv() {
                next = Some(cmd);
            }
        }
        self.finish(subscribe, channels, replies).await;
    }

    async fn finish(
        &mut self,
        subscribe: bool,
        channels: Vec<String>,
        replies: Vec<oneshot::Sender<Result<(), SubscribeError>>>,
    ) {
        let result = if subscribe {
            self.place(channels).await.map(|_| ())
        } else {
            self.remove(channels).await;
            Ok(())
        };
        // Not a full report (it walks every channel): the count, and a failure asks for
        // the topology early; the next tick reports in full.
        let n = self.desired.len();
        set_health(&self.health, |h| h.channels = n);
        if let Err(e) = &result {
            self.urgent.store(true, Ordering::Relaxed);
            tracing::warn!(error = %e, "Redis Cluster subscribe failed; retried until it holds");
        }
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }

    /// Subscribes `channels` on their owners' links (made when missing); resolves to how
    /// many were subscribed, or the first failure (the rest are still applied; what failed
    /// is retried every second).
    async fn place(&mut self, channels: Vec<String>) -> Result<usize, SubscribeError> {
        if channels.is_empty() {
            return Ok(0);
        }
        if self.map.is_empty() {
            return Err(SubscribeError::Unavailable(
                "the Redis Cluster's slots are not known yet".into(),
            ));
        }
        let mut by_master: HashMap<Master, Vec<String>> = HashMap::new();
        for ch in channels {
            if let Some(m) = self.map.owner_of(&ch) {
                by_master.entry(m.clone()).or_default().push(ch);
            }
        }
        let mut first_error = None;
        self.connect(by_master.keys().cloned().collect()).await;
        let work: Vec<(Master, MultiplexedConnection, Vec<String>)> = by_master
            .into_iter()
            .filter_map(|(m, chs)| match self.links.get(&m) {
                Some(l) => Some((m, l.conn.clone(), chs)),
                None => {
                    let why = self
                        .failed
                        .get(&m)
                        .map_or_else(|| "not connected".to_owned(), |(_, e)| e.clone());
                    first_error.get_or_insert(SubscribeError::Unavailable(format!("{m}: {why}")));
                    None
                }
            })
            .collect();
        let limit = self.factory.limit;
        let classic = self.classic.clone();
        let results = futures_util::future::join_all(work.into_iter().map(|(m, conn, chs)| {
            let classic = classic.clone();
            async move {
                let r = run_subscriptions(conn, &classic, true, &chs, limit).await;
                (m, chs, r)
            }
        }))
        .await;
        let mut placed = 0;
        for (m, chs, r) in results {
            match r {
                Ok(()) => {
                    placed += chs.len();
                    if let Some(l) = self.links.get_mut(&m) {
                        l.held.extend(chs);
                    }
                }
                Err(e) => {
                    // The link is suspect: the next attempt makes a new one.
                    self.links.remove(&m);
                    self.failed.insert(m.clone(), (Instant::now(), e.clone()));
                    first_error.get_or_insert(SubscribeError::Unavailable(format!("{m}: {e}")));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(placed),
        }
    }

    /// Unsubscribes `channels` wherever they are held; links left with nothing close.
    async fn remove(&mut self, channels: Vec<String>) {
        let mut by_master: HashMap<Master, Vec<String>> = HashMap::new();
        for ch in channels {
            for (m, l) in &mut self.links {
                if l.held.remove(&ch) {
                    by_master.entry(m.clone()).or_default().push(ch.clone());
                }
            }
        }
        self.unsubscribe_from(by_master).await;
    }

    async fn unsubscribe_from(&mut self, by_master: HashMap<Master, Vec<String>>) {
        let limit = self.factory.limit;
        let classic = self.classic.clone();
        let work: Vec<_> = by_master
            .into_iter()
            .filter_map(|(m, chs)| self.links.get(&m).map(|l| (m, l.conn.clone(), chs)))
            .collect();
        let results = futures_util::future::join_all(work.into_iter().map(|(m, conn, chs)| {
            let classic = classic.clone();
            async move {
                (
                    m,
                    run_subscriptions(conn, &classic, false, &chs, limit).await,
                )
            }
        }))
        .await;
        for (m, r) in results {
            if let Err(e) = r {
                tracing::debug!(master = %m, error = %e, "unsubscribe failed; the link is dropped");
                self.links.remove(&m);
            }
        }
        self.links.retain(|_, l| !l.held.is_empty());
    }

    /// Makes links to `masters` that have none (concurrently), except those that failed
    /// less than [`RETRY_CONNECT`] ago.
    async fn connect(&mut self, masters: Vec<Master>) {
        let todo: Vec<Master> = masters
            .into_iter()
            .filter(|m| !self.links.contains_key(m))
            .filter(|m| {
                self.failed
                    .get(m)
                    .is_none_or(|(at, _)| at.elapsed() >= RETRY_CONNECT)
            })
            .collect();
        if todo.is_empty() {
            return;
        }
        let made = futures_util::future::join_all(todo.into_iter().map(|m| {
            self.next_id += 1;
            let id = self.next_id;
            let sender = push_sender(
                id,
                self.inbox.clone(),
                self.events_tx.clone(),
                self.dropped.clone(),
            );
            let factory = self.factory.clone();
            async move {
                let made = async {
                    let client = factory.client(&m)?;
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(factory.limit / 3))
                        .set_response_timeout(Some(factory.limit))
                        .set_push_sender(sender);
                    timeout(
                        factory.limit,
                        client.get_multiplexed_async_connection_with_config(&config),
                    )
                    .await
                    .map_err(|_| "timed out connecting".to_owned())?
                    .map_err(|e| e.to_string())
                }
                .await;
                (m, id, made)
            }
        }))
        .await;
        for (m, id, made) in made {
            match made {
                Ok(conn) => {
                    self.failed.remove(&m);
                    self.links.insert(
                        m,
                        Link {
                            id,
                            conn,
                            held: HashSet::new(),
                        },
                    );
                }
                Err(e) => {
                    tracing::debug!(master = %m, error = %e, "cannot connect a subscriber link");
                    self.failed.insert(m, (Instant::now(), e));
                }
            }
        }
    }

    /// Puts every wanted channel on its owner and removes what is held elsewhere or no
    /// longer wanted: first the new subscriptions, then the old ones go.
    async fn reconcile(&mut self, why: &str) {
        if self.map.is_empty() {
            return;
        }
        let missing: Vec<String> = self
            .desired
            .iter()
            .filter(|ch| !self.placed(ch))
            .cloned()
            .collect();
        let mut stale: HashMap<Master, Vec<String>> = HashMap::new();
        for (m, l) in &mut self.links {
            let gone: Vec<String> = l
                .held
                .iter()
                .filter(|ch| !self.desired.contains(*ch) || self.map.owner_of(ch) != Some(m))
                .cloned()
                .collect();
            for ch in &gone {
                l.held.remove(ch);
            }
            if !gone.is_empty() {
                stale.insert(m.clone(), gone);
            }
        }
        let wanted = missing.len();
        let placed = match self.place(missing).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "some channels are not placed yet");
                0
            }
        };
        let total: usize = self.links.values().map(|l| l.held.len()).sum();
        if placed > 0 {
            set_health(&self.health, |h| h.repaired += placed as u64);
            tracing::info!(
                repaired = placed,
                waiting = wanted - placed,
                held = total,
                "{why}: Redis Cluster subscriptions repaired"
            );
        }
        if !stale.is_empty() {
            self.unsubscribe_from(stale).await;
        }
        self.links.retain(|_, l| !l.held.is_empty());
        self.report();
    }

    /// Compares what each link holds with what Redis reports for it; a link holding
    /// fewer subscribes them all again (idempotent), one holding more is replaced.
    async fn verify(&mut self) {
        self.suspect.clear();
        let limit = self.factory.limit;
        let checks: Vec<_> = self
            .links
            .iter()
            .map(|(m, l)| (m.clone(), l.conn.clone()))
            .collect();
        let counts =
            futures_util::future::join_all(checks.into_iter().map(|(m, mut conn)| async move {
                let info = timeout(
                    limit,
                    redis::cmd("CLIENT")
                        .arg("INFO")
                        .query_async::<String>(&mut conn),
                )
                .await;
                (m, info)
            }))
            .await;
        let mut lost = Vec::new();
        let mut drifted = Vec::new();
        for (m, info) in counts {
            let Some(link) = self.links.get(&m) else {
                continue;
            };
            let info = match info {
                Ok(Ok(info)) => info,
                Ok(Err(e)) => {
                    lost.push((m, e.to_string()));
                    continue;
                }
                Err(_) => {
                    lost.push((m, "CLIENT INFO timed out".to_owned()));
                    continue;
                }
            };
            let classic = link
                .held
                .iter()
                .filter(|c| self.classic.contains(*c))
                .count();
            let sharded = link.held.len() - classic;
            let (Some(ssub), Some(sub)) = (info_field(&info, "ssub"), info_field(&info, "sub"))
            else {
                continue;
            };
            if ssub != sharded || sub != classic {
                tracing::warn!(
                    master = %m,
                    expected_shard = sharded,
                    redis_shard = ssub,
                    expected_classic = classic,
                    redis_classic = sub,
                    "Redis Cluster subscriptions drifted; repairing"
                );
                drifted.push((m, ssub + sub < sharded + classic));
            }
        }
        for (m, e) in lost {
            tracing::warn!(master = %m, error = %e, "Redis Cluster subscriber link does not answer; made again");
            self.links.remove(&m);
        }
        for (m, fewer) in drifted {
            if fewer {
                // Subscribing again what the link should hold adds what is missing.
                if let Some(l) = self.links.get_mut(&m) {
                    let chs: Vec<String> = l.held.drain().collect();
                    let n = chs.len();
                    let conn = l.conn.clone();
                    match run_subscriptions(conn, &self.classic, true, &chs, limit).await {
                        Ok(()) => {
                            if let Some(l) = self.links.get_mut(&m) {
                                l.held.extend(chs);
                            }
                            set_health(&self.health, |h| h.repaired += n as u64);
                        }
                        Err(_) => {
                            self.links.remove(&m);
                        }
                    }
                }
            } else {
                // Subscriptions nobody wants: a fresh link holds exactly the wanted ones.
                self.links.remove(&m);
            }
        }
        self.reconcile("subscriptions were checked").await;
    }
}

/// The `name=value` field of a `CLIENT INFO` line, as a number.
fn info_field(info: &str, name: &str) -> Option<usize> {
    info.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// (Un)subscribes `channels` on one master's link: one command per channel, pipelined,
/// so each confirmation answers its own command.
async fn run_subscriptions(
    mut conn: MultiplexedConnection,
    classic: &HashSet<String>,
    subscribe: bool,
    channels: &[String],
    limit: Duration,
) -> Result<(), String> {
    for chunk in channels.chunks(PIPELINE) {
        let mut pipe = redis::pipe();
        for ch in chunk {
            let name = match (classic.contains(ch), subscribe) {
                (true, true) => "SUBSCRIBE",
                (true, false) => "UNSUBSCRIBE",
                (false, true) => "SSUBSCRIBE",
                (false, false) => "SUNSUBSCRIBE",
            };
            pipe.cmd(name).arg(ch);
        }
        timeout(limit, pipe.query_async::<redis::Value>(&mut conn))
            .await
            .map_err(|_| "timed out waiting for the shard to confirm".to_owned())?
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Where a link's connection sends what Redis pushes: messages straight to the inbox
/// (dropped and counted when it is full: a connection cannot wait), the rest to the
/// subscriber task.
fn push_sender(
    id: u64,
    inbox: mpsc::Sender<Message>,
    events: mpsc::UnboundedSender<Event>,
    dropped: Arc<AtomicU64>,
) -> impl Fn(redis::PushInfo) -> Result<(), std::convert::Infallible> + Send + Sync + 'static {
    move |push: redis::PushInfo| {
        match push.kind {
            redis::PushKind::SMessage | redis::PushKind::Message => {
                if let [
                    redis::Value::BulkString(channel),
                    redis::Value::BulkString(payload),
                ] = push.data.as_slice()
                {
                    let message = Message {
                        channel: Arc::from(String::from_utf8_lossy(channel).as_ref()),
                        payload: Bytes::copy_from_slice(payload),
                    };
                    if inbox.try_send(message).is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            redis::PushKind::Disconnection => {
                let _ = events.send(Event::Lost(id));
            }
            redis::PushKind::SUnsubscribe | redis::PushKind::Unsubscribe => {
                let _ = events.send(Event::Unsubscribed(id));
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::info_field;

    #[test]
    fn reads_client_info_counts() {
        let info = "id=7 addr=127.0.0.1:5 fd=8 name= db=0 sub=1 psub=0 ssub=12 multi=-1";
        assert_eq!(info_field(info, "ssub"), Some(12));
        assert_eq!(info_field(info, "sub"), Some(1));
        assert_eq!(info_field(info, "psub"), Some(0));
        assert_eq!(info_field(info, "nope"), None);
    }
}
