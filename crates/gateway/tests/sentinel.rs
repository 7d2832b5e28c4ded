//! Redis Sentinel (`REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`): real processes — a
//! master, a replica and three Sentinels. Nodes find the master through the Sentinels;
//! when it is killed mid-stream and the replica promoted, cross-node delivery resumes on
//! the new master without restarting anything, and the SDK publishes there too.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::time::{Duration, Instant};

use bus::{RedisConfig, SentinelConfig};
use serde_json::json;
use testkit::{SENTINEL_MASTER, SentinelSet, spawn_redis_cluster};

fn sentinel(set: &SentinelSet) -> SentinelConfig {
    SentinelConfig {
        sentinels: set.addrs(),
        master: SENTINEL_MASTER.to_owned(),
    }
}

#[tokio::test]
async fn a_master_failover_is_followed_and_delivery_resumes_on_the_new_master() {
    let mut set = SentinelSet::start().unwrap();
    let first = set.master_addr().unwrap();
    assert_eq!(first, format!("127.0.0.1:{}", set.master.port()));
    // The URL carries no host: the Sentinels name it.
    let nodes = spawn_redis_cluster(2, "redis://sentinel-master", |_, c| {
        c.redis_sentinel = Some(sentinel(&set));
    })
    .await
    .unwrap();
    let mut ann = nodes[1].member_of("ann", "doc:Task:1").await.unwrap();
    nodes[0]
        .publish_accepted(json!({"event": "tick", "to": ["doc:Task:1"], "data": 0}))
        .await
        .unwrap();
    assert_eq!(ann.expect_arg("tick").await.unwrap(), 0);

    // The master dies mid-stream: publishes every 100 ms until one reaches ann through
    // the promoted replica.
    set.master.stop();
    let killed = Instant::now();
    let mut seq = 1;
    let resumed = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "delivery did not resume within 60 s of the master's death"
        );
        let body = json!({"event": "tick", "to": ["doc:Task:1"], "data": seq});
        let accepted = nodes[0].publish_accepted(body).await.is_ok();
        seq += 1;
        if accepted
            && let Ok(Ok((event, _))) =
                tokio::time::timeout(Duration::from_millis(100), ann.expect("tick")).await
        {
            assert!(event.args[0].as_u64().unwrap() >= 1);
            break killed.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let promoted = set.master_addr().unwrap();
    assert_eq!(promoted, format!("127.0.0.1:{}", set.replica.port()));
    eprintln!(
        "master {first} killed; Sentinel promoted {promoted}; cross-node delivery resumed after {:.1} s",
        resumed.as_secs_f64()
    );
    // Both links of both nodes on the new master (the idle publisher link is probed).
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !node.cluster.bus().health().is_up() {
            let health = node.cluster.bus().health();
            assert!(Instant::now() < deadline, "{health:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Every subscription moved with the master, and the move is counted.
    let room_channel = nodes[1].cluster.channels().room(
        "/",
        &rooms::ScopedRoom::new(None, &rooms::Room::parse("doc:Task:1").unwrap()).unwrap(),
    );
    let numsub = set
        .replica
        .cli(&["PUBSUB", "NUMSUB", &room_channel])
        .unwrap();
    assert!(numsub.lines().nth(1) == Some("1"), "{numsub:?}");
    for node in &nodes {
        let repaired = node
            .metric("roomcast_bus_subscriptions_repaired_total", &[])
            .await
            .unwrap();
        assert!(repaired > 0.0, "the move is counted");
    }

    // The SDK finds the new master the same way.
    let sdk = publisher::Publisher::connect_with(
        RedisConfig::new("redis://sentinel-master")
            .with_sentinel(sentinel(&set))
            .with_publish_retry_budget(Duration::from_secs(5)),
    )
    .unwrap()
    .with_channel_prefix(nodes[0].cluster.channels().prefix());
    sdk.to_room("doc:Task:1")
        .emit("from_sdk", &1)
        .await
        .unwrap();
    assert_eq!(ann.expect_arg("from_sdk").await.unwrap(), 1);
}

#[test]
fn sentinels_must_be_host_and_port() {
    let parse = |sentinels: &str| {
        gateway::Args::try_parse_hermetic([
            "gateway",
            "--jwt-secret",
            testkit::TEST_SECRET,
            "--publish-api-key",
            testkit::TEST_KEY,
            "--redis-sentinels",
            sentinels,
        ])
        .map_err(|e| e.to_string())
        .and_then(|a| gateway::Config::from_args(a).map_err(|e| e.to_string()))
    };
    assert!(parse("sentinel-1").unwrap_err().contains("host:port"));
    let config = parse("s1:26379, s2:26379").unwrap();
    assert_eq!(
        config.redis_sentinel.unwrap().sentinels,
        ["s1:26379", "s2:26379"]
    );
    assert!(config.redis_url.is_some());
}
