//! A real Redis Sentinel set for tests: a master, one replica and three Sentinels
//! (`redis-server --sentinel`), all on loopback, quick to fail over (the master counts as
//! down after 1 s of silence).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::redis::{RedisServer, free_port};

/// The master's name in the Sentinels' configuration.
pub const SENTINEL_MASTER: &str = "mymaster";

/// A master, a replica and three Sentinels watching them; every process is killed and
/// every file removed when dropped.
#[derive(Debug)]
pub struct SentinelSet {
    /// The master at start (after a failover, a dead or demoted server).
    pub master: RedisServer,
    /// The replica at start (after a failover, the master).
    pub replica: RedisServer,
    sentinels: Vec<(u16, Child)>,
    dir: std::path::PathBuf,
}

impl SentinelSet {
    /// Starts the set and waits until every Sentinel knows the replica and the other
    /// Sentinels (so that a failover can be agreed).
    pub fn start() -> anyhow::Result<Self> {
        let master = RedisServer::start()?;
        let replica = RedisServer::start_replica_of(master.port())?;
        let dir = std::env::temp_dir().join(format!(
            "roomcast-sentinel-{}-{}",
            std::process::id(),
            master.port()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut set = Self {
            master,
            replica,
            sentinels: Vec::new(),
            dir,
        };
        for i in 0..3 {
            let port = free_port()?;
            let conf = set.dir.join(format!("sentinel-{i}.conf"));
            // Sentinel rewrites its file: one each, writable.
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 5000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                    set.master.port()
                ),
            )?;
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot run redis-server --sentinel")?;
            set.sentinels.push((port, child));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if set.ready() {
                return Ok(set);
            }
            if Instant::now() > deadline {
                bail!("the Sentinels did not discover the replica and each other within 30 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every Sentinel knows the replica and the two other Sentinels.
    fn ready(&self) -> bool {
        let replica = format!("{}", self.replica.port());
        self.sentinels.iter().all(|(port, _)| {
            let replicas = sentinel_cli(*port, &["SENTINEL", "REPLICAS", SENTINEL_MASTER]);
            let peers = sentinel_cli(*port, &["SENTINEL", "SENTINELS", SENTINEL_MASTER]);
            match (replicas, peers) {
                (Ok(r), Ok(p)) => {
                    r.lines().any(|l| l.trim() == replica)
                        && p.lines().filter(|l| l.trim() == "runid").count() == 2
                }
                _ => false,
            }
        })
    }

    /// `127.0.0.1:<port>` of each Sentinel.
    pub fn addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// The master's `host:port` according to the first Sentinel.
    pub fn master_addr(&self) -> anyhow::Result<String> {
        let (port, _) = self.sentinels.first().context("no Sentinel")?;
        let out = sentinel_cli(
            *port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER],
        )?;
        let mut lines = out.lines().map(str::trim);
        match (lines.next(), lines.next()) {
            (Some(host), Some(port)) => Ok(format!("{host}:{port}")),
            _ => bail!("unexpected answer: {out:?}"),
        }
    }
}

fn sentinel_cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    crate::redis::redis_cli(port, &[], args)
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
