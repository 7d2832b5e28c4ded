//! In-process gateway nodes.

use std::net::SocketAddr;
use std::sync::Arc;

use bus::{Bus, Inbox, MemoryHub};
use gateway::{Cluster, Config, Node};
use serde_json::Value;
use tokio::sync::oneshot;

/// JWT secret of test nodes (long enough for production mode, which the e2e containers run).
pub const TEST_SECRET: &str = "roomcast-test-secret-at-least-32-bytes";
/// Publish key of test nodes.
pub const TEST_KEY: &str = "roomcast-test-publish-key-of-32-bytes";

/// A node serving on `127.0.0.1:<port>`; stopped when dropped.
#[derive(Debug)]
pub struct TestNode {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its cluster view.
    pub cluster: Arc<Cluster>,
    /// Its Socket.IO handle, to act as gateway code would.
    pub io: socketioxide::SocketIo<gateway::BusAdapter>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestNode {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connects a Socket.IO client to namespace `/` with the handshake `auth` and waits
    /// for the gateway's `connected` event.
    pub async fn client(&self, auth: Value) -> anyhow::Result<crate::SioClient> {
        let mut c = crate::SioClient::connect(&self.url(), "/", Some(auth)).await?;
        c.expect("connected").await?;
        Ok(c)
    }

    /// [`TestNode::client`] for `user` (no tenant) with a token allowing `room`, joined
    /// to `room` (the join acknowledged).
    pub async fn member_of(&self, user: &str, room: &str) -> anyhow::Result<crate::SioClient> {
        let mut c = self
            .client(serde_json::json!({"token": token(serde_json::json!({"sub": user, "rooms": [room]}))}))
            .await?;
        let ack = c.join(room).await?;
        anyhow::ensure!(ack["ok"] == true, "join {room} refused: {ack}");
        Ok(c)
    }

    /// Publishes `body` over HTTP with the test key; fails unless it is accepted (202).
    /// Returns the message id.
    pub async fn publish_accepted(&self, body: Value) -> anyhow::Result<String> {
        let (status, res) = publish(&self.url(), TEST_KEY, &body.to_string()).await?;
        anyhow::ensure!(status == 202, "publish answered {status}: {res}");
        res["id"]
            .as_str()
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("202 without an id: {res}"))
    }

    /// `GET /metrics`, the exposition text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.url()))
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// The sum of the samples of the metric `name` (from `GET /metrics`) whose labels
    /// include every one of `labels` (`key="value"`).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> anyhow::Result<f64> {
        Ok(metric_sum(&self.metrics().await?, name, labels))
    }

    /// `GET /health`, as JSON.
    pub async fn health(&self) -> anyhow::Result<Value> {
        Ok(reqwest::get(format!("{}/health", self.url()))
            .await?
            .json()
            .await?)
    }

    /// Kills the node abruptly: no goodbye to the registry, sockets dropped.
    pub fn crash(&mut self) {
        self.stop = None;
        self.task.abort();
    }

    /// Stops the node (disconnecting its sockets).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a node with `config` over `bus`.
pub async fn spawn_node(
    config: Config,
    bus: Arc<dyn Bus>,
    inbox: Inbox,
) -> anyhow::Result<TestNode> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let node = Node::build(&config, bus, inbox).await?;
    let cluster = node.cluster.clone();
    let io = node.io.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = node
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(TestNode {
        addr,
        cluster,
        io,
        stop: Some(stop),
        task,
    })
}

/// Starts `n` nodes sharing one in-memory hub (a cluster without Redis), configured by
/// `configure` from the standard test configuration.
pub async fn spawn_memory_cluster(
    n: usize,
    configure: impl Fn(usize, &mut Config),
) -> anyhow::Result<(MemoryHub, Vec<TestNode>)> {
    let hub = MemoryHub::new();
    let mut nodes = Vec::new();
    for i in 0..n {
        let mut config = Config::for_tests(TEST_SECRET, TEST_KEY);
        config.node_id = format!("test-node-{i}");
        configure(i, &mut config);
        let (bus, inbox) = hub.connect();
        nodes.push(spawn_node(config, Arc::new(bus), inbox).await?);
    }
    Ok((hub, nodes))
}

/// An HS256 token for the test secret with `claims`; `exp` is added (one hour) when absent.
pub fn token(mut claims: Value) -> String {
    if let Some(map) = claims.as_object_mut() {
        map.entry("exp")
            .or_insert_with(|| (gateway::unix_now() + 3600).into());
    }
    match gateway::sign_hs256(TEST_SECRET, &claims) {
        Ok(t) => t,
        Err(e) => panic!("cannot sign a test token: {e}"),
    }
}

/// One HTTP client for every test request: building a client loads its TLS roots, which
/// costs more than the request (a test publishing a hundred times a second spent its CPU
/// there). No idle connections are kept: each test has its own runtime, and a pooled
/// connection cannot outlive the runtime that opened it.
pub fn http_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_else(|e| panic!("cannot build the test HTTP client: {e}"))
    })
}

/// POSTs `body` to `{url}/v1/publish` with `key`; returns status and JSON body.
pub async fn publish(url: &str, key: &str, body: &str) -> anyhow::Result<(u16, Value)> {
    let res = http_client()
        .post(format!("{url}/v1/publish"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await?;
    let status = res.status().as_u16();
    let json = res.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, json))
}

/// Starts `n` nodes on Redis at `redis_url`, each with its own connection, sharing a
/// channel prefix unique to this call (so tests sharing a Redis do not see each other).
pub async fn spawn_redis_cluster(
    n: usize,
    redis_url: &str,
    configure: impl Fn(usize, &mut Config),
) -> anyhow::Result<Vec<TestNode>> {
    let prefix = format!(
        "t{}",
        gateway::unix_now() % 100_000 * 1000 + u64::from(rand_suffix())
    );
    let mut nodes = Vec::new();
    for i in 0..n {
        let mut config = Config::for_tests(TEST_SECRET, TEST_KEY);
        config.node_id = format!("redis-node-{i}");
        config.redis_url = Some(redis_url.to_owned());
        config.channel_prefix = prefix.clone();
        configure(i, &mut config);
        let ping = std::time::Duration::from_secs(1);
        let within = std::time::Duration::from_secs(10);
        let (bus, inbox, up): (Arc<dyn bus::Bus>, _, bool) =
            if config.redis_cluster_nodes.is_empty() {
                let mut redis = bus::RedisConfig::new(redis_url.to_owned()).with_reconnect(
                    std::time::Duration::from_millis(50),
                    std::time::Duration::from_millis(500),
                );
                redis.ping_interval = ping;
                redis.tls = config.redis_tls.clone();
                redis.sentinel = config.redis_sentinel.clone();
                let (bus, inbox) = bus::RedisBus::connect(redis)?;
                let up = bus.wait_up(within).await;
                (Arc::new(bus), inbox, up)
            } else {
                let mut redis = bus::RedisClusterConfig::new(config.redis_cluster_nodes.clone());
                redis.ping_interval = ping;
                redis.classic_channels = config.legacy_channel.iter().cloned().collect();
                let (bus, inbox) = bus::RedisClusterBus::connect(redis)?;
                let up = bus.wait_up(within).await;
                (Arc::new(bus), inbox, up)
            };
        anyhow::ensure!(up, "node {i} could not reach Redis at {redis_url}");
        nodes.push(spawn_node(config, bus, inbox).await?);
    }
    // Ready as a cluster once each node is in the registry (its first heartbeat): until
    // then the others do not count it among the nodes a query waits for.
    for node in &nodes {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let me = node.cluster.node_id();
            let listed = node.cluster.registry().nodes().await.unwrap_or_default();
            if listed.iter().any(|n| n.node_id == me) {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "node {me} did not appear in the registry"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    Ok(nodes)
}

fn rand_suffix() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u16)
}

/// The sum of the samples of `name` in the exposition text `metrics` whose labels include
/// every one of `labels`.
pub fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    let open = format!("{name}{{");
    metrics
        .lines()
        .filter(|l| l.starts_with(&open) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
