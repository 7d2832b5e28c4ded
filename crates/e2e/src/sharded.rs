//! The matrix's Redis Cluster variant: six Redis containers (3 masters, 3 replicas)
//! joined into a cluster, three more gateway containers configured with
//! `REDIS_CLUSTER_NODES` and connection state recovery on, rooms over every shard
//! delivered across nodes, then the master of the shard holding the recorded namespace
//! killed (`docker kill`): the time until its rooms are delivered again is measured, and
//! a client that was away across the failover recovers on another node every recorded
//! message.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::json;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use testkit::{SioClient, TEST_KEY, publish, token};

use crate::{Env, LABEL, Outcome, docker, images};

/// `redis-cli -h <ip> <args>` from the host (which reaches the run's network).
fn cli(ip: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", ip, "-p", "6379"])
        .args(args)
        .output()
        .context("cannot run redis-cli")?;
    ensure!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The IP of the master that owns `key`'s slot, asked of `ip`.
fn master_of(ip: &str, key: &str) -> anyhow::Result<String> {
    let slot: u16 = cli(ip, &["CLUSTER", "KEYSLOT", key])?.trim().parse()?;
    if let Some(addr) = testkit::master_owning(&cli(ip, &["CLUSTER", "NODES"])?, slot) {
        return addr
            .split(':')
            .next()
            .map(str::to_owned)
            .context("no address in CLUSTER NODES");
    }
    bail!("no master owns slot {slot}")
}

pub(crate) async fn redis_cluster(env: &mut Env) -> anyhow::Result<Outcome> {
    let subnet = env.nodes[0]
        .ip
        .rsplit_once('.')
        .map(|(s, _)| s.to_owned())
        .context("node address")?;
    let (name, tag) = images::REDIS_IMAGE;
    let mut redis: Vec<(String, ContainerAsync<GenericImage>)> = Vec::new();
    for i in 0..6 {
        let ip = format!("{subnet}.{}", 20 + i);
        let container = GenericImage::new(name, tag)
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
            .with_container_name(format!("roomcast-e2e-{}-shard-{i}", env.run))
            .with_label(LABEL, &env.run)
            .with_cmd([
                "redis-server",
                "--bind",
                "0.0.0.0",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "1000",
                "--cluster-config-file",
                "/tmp/nodes.conf",
            ])
            .start()
            .await
            .context("starting a Redis Cluster container")?;
        docker(&[
            "network",
            "connect",
            "--ip",
            &ip,
            &env.network,
            container.id(),
        ])?;
        redis.push((ip, container));
    }
    let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
    create.extend(redis.iter().map(|(ip, _)| format!("{ip}:6379")));
    create.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
    let out = std::process::Command::new("redis-cli")
        .args(&create)
        .output()
        .context("redis-cli --cluster create")?;
    ensure!(
        out.status.success(),
        "redis-cli --cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !redis.iter().all(|(ip, _)| {
        cli(ip, &["CLUSTER", "INFO"]).is_ok_and(|i| i.contains("cluster_state:ok"))
            && cli(ip, &["INFO", "replication"])
                .is_ok_and(|i| i.contains("role:master") || i.contains("master_link_status:up"))
    }) {
        ensure!(
            Instant::now() < deadline,
            "the Redis Cluster was not ok within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let seeds = redis
        .iter()
        .map(|(ip, _)| format!("{ip}:6379"))
        .collect::<Vec<_>>()
        .join(",");
    let prefix = format!("e2ec{}", env.run);
    let mut gateways = Vec::new();
    for i in 0..3 {
        let id = format!("sharded-{}", i + 1);
        let container = crate::gateway(&env.run, &id)
            .with_env_var("REDIS_CLUSTER_NODES", &seeds)
            .with_env_var("REDIS_CHANNEL_PREFIX", &prefix)
            .with_env_var("NODE_TTL_SECS", "6")
            .with_env_var("NAMESPACES", format!("/,{}", crate::recovery::NAMESPACE))
            .with_env_var("RECOVERY_NAMESPACES", crate::recovery::NAMESPACE)
            .start()
            .await
            .with_context(|| format!("starting gateway {id}"))?;
        docker(&[
            "network",
            "connect",
            "--ip",
            &format!("{subnet}.{}", 30 + i),
            &env.network,
            container.id(),
        ])?;
        let port = container.get_host_port_ipv4(3000.tcp()).await?;
        gateways.push((format!("http://127.0.0.1:{port}"), container));
    }
    // Ready: each node's bus up (it reached the cluster through the private network).
    for (url, _) in &gateways {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let health: serde_json::Value = reqwest::get(format!("{url}/health"))
                .await?
                .json()
                .await
                .unwrap_or_default();
            if health["status"] == "ok" {
                break;
            }
            ensure!(Instant::now() < deadline, "{url} not healthy: {health}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Rooms over every shard: subscribed on node 2, published on node 1.
    let mut rooms: Vec<String> = (0..12).map(|i| format!("doc:Shard:{i}")).collect();
    let channels = rooms::Channels::new(prefix.clone());
    let channel = |room: &str| {
        rooms::Room::parse(room)
            .ok()
            .and_then(|r| rooms::ScopedRoom::new(None, &r).ok())
            .map(|r| channels.room("/", &r))
            .unwrap_or_default()
    };
    let shards: HashSet<String> = rooms
        .iter()
        .map(|r| master_of(&redis[0].0, &channel(r)))
        .collect::<anyhow::Result<_>>()?;
    let auth = json!({"token": token(json!({"sub": "ann", "rooms": ["doc:*"]}))});
    let mut ann = SioClient::connect(&gateways[1].0, "/", Some(auth))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ann.expect("connected").await?;
    for room in &rooms {
        ensure!(ann.join(room).await?["ok"] == true, "join {room}");
    }
    for (i, room) in rooms.iter().enumerate() {
        let body = json!({"event": "e", "to": [room], "data": i});
        let (status, _) = publish(&gateways[0].0, TEST_KEY, &body.to_string()).await?;
        ensure!(status == 202, "publish answered {status}");
    }
    let mut got = Vec::new();
    for _ in &rooms {
        got.push(ann.expect_arg("e").await?.as_u64().unwrap_or(u64::MAX));
    }
    got.sort_unstable();
    ensure!(
        got == (0..rooms.len() as u64).collect::<Vec<_>>(),
        "deliveries across shards: {got:?}"
    );

    // A client of the recorded namespace goes away (its pid and last offset kept) and
    // misses 10 recorded messages.
    let ns = crate::recovery::NAMESPACE;
    let recorded = |seq: u64| {
        json!({"ns": ns, "event": "rec", "to": ["doc:Rec:1"], "data": {"seq": seq}}).to_string()
    };
    let bob = || json!({"sub": "bob", "rooms": ["doc:*"]});
    let mut away = SioClient::connect(&gateways[0].0, ns, Some(json!({"token": token(bob())})))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    away.expect("connected").await?;
    let pid = away.pid.clone().context("no pid: recovery is off")?;
    ensure!(
        away.join("doc:Rec:1").await?["ok"] == true,
        "join doc:Rec:1"
    );
    ensure!(publish(&gateways[1].0, TEST_KEY, &recorded(0)).await?.0 == 202);
    let (e, _) = away.expect("rec").await?;
    let offset = e
        .args
        .last()
        .and_then(serde_json::Value::as_str)
        .context("recorded events carry their offset")?
        .to_owned();
    away.abort();
    for seq in 1..=10 {
        ensure!(
            publish(&gateways[seq as usize % 3].0, TEST_KEY, &recorded(seq))
                .await?
                .0
                == 202
        );
    }

    // The master of the recorded namespace's shard dies (and with it, some rooms').
    let history = rooms::Channels::new(prefix.clone())
        .colocating(&[ns])
        .history(ns);
    let victim = master_of(&redis[0].0, &history)?;
    let on_victim = rooms
        .iter()
        .position(|r| master_of(&redis[0].0, &channel(r)).is_ok_and(|m| m == victim))
        .context("a room on the victim's shard")?;
    rooms.swap(0, on_victim);
    let survivor = redis
        .iter()
        .find(|(ip, _)| *ip != victim)
        .map(|(ip, _)| ip.clone())
        .context("a surviving Redis")?;
    let container = redis
        .iter()
        .find(|(ip, _)| *ip == victim)
        .map(|(_, c)| c.id().to_owned())
        .context("the victim's container")?;
    docker(&["kill", &container])?;
    let killed = Instant::now();
    let mut seq = 1000u64;
    let resumed = loop {
        if killed.elapsed() > Duration::from_secs(60) {
            let health: serde_json::Value = reqwest::get(format!("{}/health", gateways[0].0))
                .await?
                .json()
                .await
                .unwrap_or_default();
            bail!(
                "delivery did not resume within 60 s of the death of master {victim}; nodes:\n{}\nslots: {}\nhealth: {health}\nlast publish: {:?}",
                cli(&survivor, &["CLUSTER", "NODES"]).unwrap_or_default(),
                cli(&survivor, &["CLUSTER", "SLOTS"])
                    .unwrap_or_default()
                    .replace('\n', " "),
                publish(
                    &gateways[0].0,
                    TEST_KEY,
                    &json!({"event": "x", "to": [&rooms[0]]}).to_string()
                )
                .await
                .ok()
            );
        }
        let body = json!({"event": "after", "to": [&rooms[0]], "data": seq});
        seq += 1;
        let accepted = publish(&gateways[0].0, TEST_KEY, &body.to_string())
            .await
            .is_ok_and(|(s, _)| s == 202);
        if accepted
            && let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(200), ann.expect("after")).await
        {
            break killed.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let promoted = master_of(&survivor, &channel(&rooms[0]))?;
    ensure!(promoted != victim, "no replica took over");

    // 10 more recorded messages on the promoted master; the client comes back on the
    // third node and recovers all 20, in order, once.
    for seq in 11..=20 {
        ensure!(
            publish(&gateways[seq as usize % 3].0, TEST_KEY, &recorded(seq))
                .await?
                .0
                == 202
        );
    }
    let auth = json!({"token": token(bob()), "pid": pid, "offset": offset});
    let mut back = SioClient::connect(&gateways[2].0, ns, Some(auth))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let connected = back.expect_arg("connected").await?;
    ensure!(connected["recovered"] == true, "not recovered: {connected}");
    let mut replayed = Vec::new();
    for _ in 1..=20 {
        replayed.push(back.expect_arg("rec").await?["seq"].as_u64().unwrap_or(0));
    }
    ensure!(
        replayed == (1..=20).collect::<Vec<_>>(),
        "recovered across the failover: {replayed:?}"
    );
    Ok(Outcome {
        figures: format!(
            "3 masters + 3 replicas, 3 gateways, recovery on: {} rooms on {} shards delivered across nodes; master {victim} (the recorded namespace's shard) killed, replica {promoted} took over, delivery resumed after {:.1} s; a client away across it recovered 20/20 recorded messages on another node",
            rooms.len(),
            shards.len(),
            resumed.as_secs_f64()
        ),
        details: json!({"rooms": rooms.len(), "shards": shards.len(), "resumed_s": resumed.as_secs_f64(), "recovered": replayed.len()}),
    })
}
