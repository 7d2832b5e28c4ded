//! Starting the stacks under test and reading their processes' CPU time and memory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

/// The servers compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Socket.IO's Node server with `@socket.io/redis-adapter`.
    Node,
    /// socketioxide with `socketioxide-redis`.
    Socketioxide,
    /// Roomcast's gateway library (bench contract).
    Roomcast,
    /// The `gateway` binary as deployed: clients authenticate with a JWT (user `<i>`,
    /// tenant `bench`), messages are published over `POST /v1/publish`.
    Gateway,
    /// `../shared/peer-raw`: a minimal fan-out server (not Socket.IO), the machine's
    /// ceiling.
    PeerRaw,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Node => "node socket.io + redis-adapter",
            Self::Socketioxide => "socketioxide + socketioxide-redis",
            Self::Roomcast => "roomcast",
            Self::Gateway => "roomcast gateway (JWT, HTTP publish)",
            Self::PeerRaw => "peer-raw (ceiling)",
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::Node => "node",
            Self::Socketioxide => "socketioxide",
            Self::Roomcast => "roomcast",
            Self::Gateway => "gateway",
            Self::PeerRaw => "peer-raw",
        }
    }

    /// Whether this stack can run here (peer-raw is built from a directory outside the
    /// repository that may be absent).
    pub(crate) fn available(self) -> bool {
        self != Self::PeerRaw || bin_dir().join("peer-raw").exists()
    }
}

/// The JWT secret and publish key of the [`Kind::Gateway`] stack.
pub(crate) const GATEWAY_SECRET: &str = "roomcast-bench-secret-at-least-32-bytes";

/// Running server processes of one stack.
pub(crate) struct Stack {
    pub(crate) kind: Kind,
    pub(crate) ports: Vec<u16>,
    children: Vec<Child>,
}

/// Where the benchmark's binaries are (and its Python virtualenvs go).
pub(crate) fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_default()
}

pub(crate) fn node_peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/peers/node")
}

/// Installs the Node peer's packages from its lockfile if needed.
pub(crate) fn prepare_node_peer() -> anyhow::Result<()> {
    let dir = node_peer_dir();
    if dir.join("node_modules/socket.io").exists() {
        return Ok(());
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .context("npm ci for the Node peer (is Node.js installed?)")?;
    ensure!(status.success(), "npm ci failed in {}", dir.display());
    Ok(())
}

/// `program`, under `BENCH_NODE_WRAPPER` when set (`valgrind --tool=massif`, `perf record
/// -g --`): Roomcast's nodes, either kind, run under a profiler.
fn wrapped(program: PathBuf) -> Command {
    let wrapper = std::env::var("BENCH_NODE_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    match words.next() {
        Some(profiler) => {
            let mut c = Command::new(profiler);
            c.args(words).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Stack {
    /// Starts `n` servers of `kind` sharing Redis at `redis_url`; returns when each has
    /// said it is listening.
    pub(crate) fn start(kind: Kind, n: usize, redis_url: &str) -> anyhow::Result<Self> {
        Self::start_with_env(kind, n, redis_url, &[])
    }

    /// [`Stack::start`], with extra environment variables for every server.
    pub(crate) fn start_with_env(
        kind: Kind,
        n: usize,
        redis_url: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let mut stack = Stack {
            kind,
            ports: Vec::new(),
            children: Vec::new(),
        };
        for i in 0..n {
            let port = free_port()?;
            let mut cmd = match kind {
                Kind::Node => {
                    let mut c = Command::new("node");
                    c.arg("server.js").current_dir(node_peer_dir());
                    c.args([port.to_string(), redis_url.to_owned()]);
                    c
                }
                Kind::Socketioxide => {
                    let mut c = Command::new(bin_dir().join("peer-socketioxide-redis"));
                    c.args([port.to_string(), redis_url.to_owned()]);
                    c
                }
                Kind::Gateway => {
                    let mut c = wrapped(bin_dir().join("gateway"));
                    c.env("HOST", "127.0.0.1")
                        .env("PORT", port.to_string())
                        .env("REDIS_URL", redis_url)
                        .env("GATEWAY_NODE_ID", format!("bench-{i}"))
                        .env("JWT_SECRET", GATEWAY_SECRET)
                        .env("PUBLISH_API_KEY", GATEWAY_SECRET)
                        .env("MAX_CONNECTIONS", "1000000")
                        .env("SHUTDOWN_DRAIN_MS", "0")
                        .env("RUST_LOG", "warn");
                    c
                }
                Kind::PeerRaw => {
                    let mut c = Command::new(bin_dir().join("peer-raw"));
                    c.env("HOST", "127.0.0.1")
                        .env("PORT", port.to_string())
                        .env("REDIS_URL", redis_url)
                        .env("MODE", "direct")
                        .env("WORKERS", "0");
                    c
                }
                Kind::Roomcast => {
                    let mut c = wrapped(bin_dir().join("roomcast-bench-node"));
                    c.args([port.to_string(), redis_url.to_owned(), format!("bench-{i}")]);
                    c.env("RUST_LOG", "warn");
                    c
                }
            };
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {}", kind.name()))?;
            let stdout = child.stdout.take().context("piped stdout")?;
            let stderr = child.stderr.take().context("piped stderr")?;
            stack.children.push(child);
            // Some servers say it on stdout, peer-raw on stderr; both are read to the end
            // so that a chatty server never blocks on a full pipe.
            let (tx, rx) = std::sync::mpsc::channel();
            let readers: [Box<dyn std::io::Read + Send>; 2] = [Box::new(stdout), Box::new(stderr)];
            for stream in readers {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        if line.contains("listening on") {
                            let _ = tx.send(());
                        }
                    }
                });
            }
            rx.recv_timeout(Duration::from_secs(30))
                .with_context(|| format!("{} on port {port} did not start", kind.name()))?;
            stack.ports.push(port);
        }
        Ok(stack)
    }

    /// Process ids of the servers.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Sends SIGTERM to every server and waits (up to `limit`) for each to exit; the time
    /// the last one took, or `None` if one was still running at `limit` (it is killed).
    pub(crate) fn terminate(&mut self, limit: Duration) -> Option<Duration> {
        let started = std::time::Instant::now();
        for child in &self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let mut all = true;
        for child in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && started.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(5));
            }
            if matches!(child.try_wait(), Ok(None)) {
                all = false;
            }
        }
        all.then(|| started.elapsed())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Under a profiler (`BENCH_NODE_WRAPPER`) the nodes stop with SIGTERM, so the
        // profiler writes its report on the way out.
        let profiled = std::env::var_os("BENCH_NODE_WRAPPER").is_some();
        for child in &mut self.children {
            if profiled {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Clock ticks per second for `/proc/<pid>/stat` times.
fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU time (user + system) a process has used, in milliseconds.
pub(crate) fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.len() < 13 {
        bail!("unexpected /proc/{pid}/stat");
    }
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks * 1000.0 / ticks_per_second())
}

/// Resident memory of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}
