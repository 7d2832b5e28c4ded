//! A real Redis Cluster for tests: 3 masters and 3 replicas (`redis-server
//! --cluster-enabled yes`, joined with `redis-cli --cluster create`), on loopback, quick
//! to fail over (`cluster-node-timeout 1000`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::redis::{RedisServer, free_port, redis_cli};

/// Six `redis-server` processes forming one cluster; killed and cleaned up when dropped.
#[derive(Debug)]
pub struct RedisClusterSet {
    servers: Vec<RedisServer>,
    dir: std::path::PathBuf,
}

impl RedisClusterSet {
    /// Starts 3 masters with one replica each and waits until the cluster is `ok`.
    pub fn start() -> anyhow::Result<Self> {
        let first = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "roomcast-redis-cluster-{}-{first}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut servers = Vec::new();
        for i in 0..6 {
            let port = if i == 0 { first } else { free_port()? };
            servers.push(RedisServer::start_on(
                port,
                vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    dir.join(format!("nodes-{port}.conf")).display().to_string(),
                    "--cluster-node-timeout".into(),
                    "1000".into(),
                    "--dir".into(),
                    dir.display().to_string(),
                ],
            )?);
        }
        let set = Self { servers, dir };
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(
            set.servers
                .iter()
                .map(|s| format!("127.0.0.1:{}", s.port())),
        );
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        let out = std::process::Command::new("redis-cli")
            .args(&args)
            .output()
            .context("cannot run redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        set.wait_ok(Duration::from_secs(30))?;
        Ok(set)
    }

    /// Waits until every live server says `cluster_state:ok` and every replica is in
    /// sync with its master (a replica that never synced refuses to take over).
    pub fn wait_ok(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.servers.iter().filter(|s| s.pid().is_some()).all(|s| {
                let cluster = redis_cli(s.port(), &[], &["CLUSTER", "INFO"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"));
                let synced = redis_cli(s.port(), &[], &["INFO", "replication"]).is_ok_and(|info| {
                    info.contains("role:master") || info.contains("master_link_status:up")
                });
                cluster && synced
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the Redis Cluster was not ok within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Seed URLs (`redis://127.0.0.1:<port>`) of every server.
    pub fn seeds(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port()))
            .collect()
    }

    /// The port of the master that owns `key`'s slot now.
    pub fn master_of(&self, key: &str) -> anyhow::Result<u16> {
        let live = self
            .servers
            .iter()
            .find(|s| s.pid().is_some())
            .context("no live server")?;
        let slot: u16 = redis_cli(live.port(), &[], &["CLUSTER", "KEYSLOT", key])?
            .trim()
            .parse()?;
        let nodes = redis_cli(live.port(), &[], &["CLUSTER", "NODES"])?;
        if let Some(addr) = master_owning(&nodes, slot) {
            let port = addr
                .rsplit(':')
                .next()
                .context("no port in CLUSTER NODES")?;
            return Ok(port.parse()?);
        }
        bail!("no master owns slot {slot}")
    }

    /// Process ids of the servers still running.
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().filter_map(RedisServer::pid).collect()
    }

    /// Kills the server on `port` (a crash).
    pub fn kill(&mut self, port: u16) {
        if let Some(s) = self.servers.iter_mut().find(|s| s.port() == port) {
            s.stop();
        }
    }

    /// `redis-cli -p <port of a live server> <args>`.
    pub fn cli(&self, port: u16, args: &[&str]) -> anyhow::Result<String> {
        redis_cli(port, &[], args)
    }
}

impl Drop for RedisClusterSet {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `ip:port` of the live master that owns `slot`, from `CLUSTER NODES` output.
pub fn master_owning(cluster_nodes: &str, slot: u16) -> Option<String> {
    cluster_nodes.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
            return None;
        }
        let owns = f[8..].iter().any(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
        });
        owns.then(|| f[1].split('@').next().unwrap_or(f[1]).to_owned())
    })
}
