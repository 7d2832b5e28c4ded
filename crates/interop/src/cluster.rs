//! Three `gateway` processes on one `redis-server`, each on a fixed port so that a node
//! can be stopped and started again where its clients expect it.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The shared secrets of the test cluster (generated per run, never printed).
#[derive(Debug, Clone)]
pub(crate) struct Secrets {
    pub(crate) jwt: String,
    pub(crate) publish_key: String,
    /// Routes of client events to services, and the webhook (URL, secret), if any.
    pub(crate) upstream: Option<(String, String)>,
    /// The Admin UI's login: password and its bcrypt hash, and where its static build is.
    pub(crate) admin: Option<AdminLogin>,
}

/// The Admin UI's login on the test cluster.
#[derive(Debug, Clone)]
pub(crate) struct AdminLogin {
    pub(crate) password: String,
    pub(crate) hash: String,
    pub(crate) static_dir: PathBuf,
}

/// The Admin UI's user name on the test cluster.
pub(crate) const ADMIN_USER: &str = "admin";

/// One gateway process.
#[derive(Debug)]
struct Node {
    id: String,
    port: u16,
    child: Option<Child>,
    /// Native TLS: the certificate and key files.
    tls: Option<(PathBuf, PathBuf)>,
}

/// The running cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    binary: PathBuf,
    redis_url: String,
    secrets: Secrets,
    logs: PathBuf,
    nodes: Vec<Node>,
}

/// The namespaces every node serves besides `/`.
pub(crate) const EXTRA_NAMESPACE: &str = "/notifications";

/// The namespace with connection state recovery.
pub(crate) const RECOVERY_NAMESPACE: &str = "/recovery";
/// Its recovery window: short, so that a case can outwait it.
pub(crate) const RECOVERY_WINDOW_MS: u64 = 8000;
/// The user prefix of the compat suite, whose tenant (`{prefix}-acme`) the nodes deliver
/// python-socketio's and Node's messages in (`COMPAT_TENANT`).
pub(crate) const COMPAT_PREFIX: &str = "compat";

impl Cluster {
    /// Starts `n` nodes and waits until each is ready: on ports `first_port..` when given
    /// and all free, else on any free ports.
    pub(crate) async fn start(
        binary: &Path,
        redis_url: &str,
        secrets: Secrets,
        logs: &Path,
        n: usize,
        first_port: Option<u16>,
    ) -> anyhow::Result<Self> {
        let mut cluster = Self {
            binary: binary.to_owned(),
            redis_url: redis_url.to_owned(),
            secrets,
            logs: logs.to_owned(),
            nodes: Vec::new(),
        };
        let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        let ports: Vec<u16> = match first_port.filter(|&p| (p..).take(n).all(free)) {
            Some(first) => (first..).take(n).collect(),
            None => (0..n)
                .map(|_| testkit::free_port())
                .collect::<anyhow::Result<_>>()?,
        };
        for (i, port) in ports.into_iter().enumerate() {
            cluster.nodes.push(Node {
                id: format!("node-{i}"),
                port,
                child: None,
                tls: None,
            });
            cluster.spawn(i).await?;
        }
        Ok(cluster)
    }

    /// Adds a node that serves `https://` and `wss://` itself with `cert` and `key`;
    /// returns its base URL (`https://localhost:PORT`, the name on the certificate).
    pub(crate) async fn add_tls_node(&mut self, cert: &Path, key: &Path) -> anyhow::Result<String> {
        let port = testkit::free_port()?;
        self.nodes.push(Node {
            id: format!("node-{}", self.nodes.len()),
            port,
            child: None,
            tls: Some((cert.to_owned(), key.to_owned())),
        });
        self.spawn(self.nodes.len() - 1).await?;
        Ok(format!("https://localhost:{port}"))
    }

    /// The plain-HTTP nodes' base URLs.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.tls.is_none())
            .map(|n| format!("http://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The nodes' ids.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.tls.is_none())
            .map(|n| n.id.clone())
            .collect()
    }

    /// Stops node `i` the way an orchestrator does (SIGTERM, then SIGKILL after 10 s)
    /// and starts it again on the same port.
    pub(crate) async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let Some(node) = self.nodes.get_mut(i) else {
            bail!("no node {i}");
        };
        if let Some(mut child) = node.child.take() {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                child.kill().await.ok();
            }
        }
        self.spawn(i).await
    }

    /// Kills node `i` (SIGKILL: no goodbye to anyone, its registry record left to
    /// expire) and starts it again on the same port.
    pub(crate) async fn kill_and_start(&mut self, i: usize) -> anyhow::Result<()> {
        let Some(node) = self.nodes.get_mut(i) else {
            bail!("no node {i}");
        };
        if let Some(mut child) = node.child.take() {
            child.kill().await?;
        }
        self.spawn(i).await
    }

    async fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}.log", node.id)))?;
        let child = Command::new(&self.binary)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", node.port.to_string())
            .env("GATEWAY_NODE_ID", &node.id)
            // Development mode serves the demo page the browser test drives.
            .env("GATEWAY_MODE", "development")
            .env("REDIS_URL", &self.redis_url)
            .env("JWT_SECRET", &self.secrets.jwt)
            .env("PUBLISH_API_KEY", &self.secrets.publish_key)
            .env(
                "NAMESPACES",
                format!("/,{EXTRA_NAMESPACE},{RECOVERY_NAMESPACE}"),
            )
            .env("RECOVERY_NAMESPACES", RECOVERY_NAMESPACE)
            .env("RECOVERY_WINDOW_MS", RECOVERY_WINDOW_MS.to_string())
            // Only the presence case's rooms, so that no other case sees these events.
            .env("PRESENCE_EVENTS", "doc:Presence:*")
            .env("NODE_TTL_SECS", "6")
            // The compat cases: python-socketio and Node formats, in that suite's tenant.
            .env("COMPAT_SOURCES", "python,node")
            .env("COMPAT_NODE_OUTBOUND", "true")
            .env("COMPAT_TENANT", format!("{COMPAT_PREFIX}-acme"))
            // INTEROP_RUST_LOG: the nodes' log filter, for debugging a case.
            .env(
                "RUST_LOG",
                std::env::var("INTEROP_RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .envs(self.secrets.upstream.iter().flat_map(|(url, secret)| {
                [
                    ("UPSTREAM_ROUTES", crate::service::ROUTES),
                    ("UPSTREAM_WEBHOOK_URL", url.as_str()),
                    ("UPSTREAM_WEBHOOK_SECRET", secret.as_str()),
                ]
            }))
            .envs(self.secrets.admin.iter().flat_map(|a| {
                [
                    ("ADMIN_UI_USERNAME", std::ffi::OsStr::new(ADMIN_USER)),
                    ("ADMIN_UI_PASSWORD_HASH", std::ffi::OsStr::new(&a.hash)),
                    ("ADMIN_UI_STATIC_DIR", a.static_dir.as_os_str()),
                ]
            }))
            .envs(node.tls.iter().flat_map(|(cert, key)| {
                [
                    ("TLS_CERT_FILE", cert.as_os_str()),
                    ("TLS_KEY_FILE", key.as_os_str()),
                ]
            }))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let scheme = if node.tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{}/health/ready", node.port);
        let id = node.id.clone();
        // Readiness only: the certificate is checked by the clients under test.
        let probe = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()?;
        self.nodes[i].child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if probe
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{id} was not ready within 30 s (see its log)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
