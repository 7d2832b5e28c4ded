//! Redis Cluster (`REDIS_CLUSTER_NODES`) with sharded pub/sub, on real processes: 3
//! masters and 3 replicas. Rooms spread over every shard are delivered across 3 gateway
//! nodes; their channels are shard channels on the shard that owns them (not classic
//! ones, which a cluster copies to every shard); a join acknowledged is never followed by
//! a missed publish; a master killed mid-stream is replaced by its replica and delivery
//! resumes without restarting anything (and every node's other rooms too, once it has
//! moved to the new topology); the legacy channel stays on classic pub/sub.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rooms::{Room, ScopedRoom};
use serde_json::json;
use testkit::{RedisClusterSet, TestNode, spawn_redis_cluster};

async fn nodes(set: &RedisClusterSet) -> Vec<TestNode> {
    let seeds = set.seeds();
    spawn_redis_cluster(3, &seeds[0], |_, c| {
        c.redis_cluster_nodes = seeds.clone();
        c.upstream = gateway::UpstreamConfig {
            routes: gateway::Routes::parse("notification_read=stream").unwrap(),
            stream_max_len: 1000,
            webhook: None,
        };
    })
    .await
    .unwrap()
}

fn channel(node: &TestNode, room: &str) -> String {
    let room = ScopedRoom::new(None, &Room::parse(room).unwrap()).unwrap();
    node.cluster.channels().room("/", &room)
}

#[tokio::test]
async fn rooms_on_every_shard_cross_nodes_and_a_killed_master_is_followed() {
    let mut set = RedisClusterSet::start().unwrap();
    let nodes = nodes(&set).await;
    assert_eq!(nodes[0].cluster.bus().kind(), "redis-cluster");

    // 24 rooms, spread over the 3 shards.
    let rooms: Vec<String> = (0..24).map(|i| format!("doc:Shard:{i}")).collect();
    let owners: HashSet<u16> = rooms
        .iter()
        .map(|r| set.master_of(&channel(&nodes[0], r)).unwrap())
        .collect();
    assert_eq!(owners.len(), 3, "the rooms should span every shard");
    let auth =
        |user: &str| json!({"token": testkit::token(json!({"sub": user, "rooms": ["doc:*"]}))});
    let mut ann = nodes[1].client(auth("ann")).await.unwrap();
    let mut bob = nodes[2].client(auth("bob")).await.unwrap();
    for room in &rooms {
        assert_eq!(ann.join(room).await.unwrap()["ok"], true);
        assert_eq!(bob.join(room).await.unwrap()["ok"], true);
    }
    for (i, room) in rooms.iter().enumerate() {
        nodes[0]
            .publish_accepted(json!({"event": "e", "to": [room], "data": i}))
            .await
            .unwrap();
    }
    // Each room's messages keep their order; rooms on different shards need not.
    for c in [&mut ann, &mut bob] {
        let mut got = Vec::new();
        for _ in 0..rooms.len() {
            got.push(c.expect_arg("e").await.unwrap().as_u64().unwrap());
        }
        got.sort_unstable();
        assert_eq!(got, (0..rooms.len() as u64).collect::<Vec<_>>());
    }
    // The SDK publishes to the room's shard, and asks presence of every node.
    let sdk = publisher::Publisher::connect_cluster(
        bus::RedisClusterConfig::new(set.seeds()).with_publish_retry_budget(Duration::from_secs(2)),
    )
    .unwrap()
    .with_channel_prefix(nodes[0].cluster.channels().prefix());
    sdk.to_room(&rooms[5]).emit("from_sdk", &5).await.unwrap();
    assert_eq!(ann.expect_arg("from_sdk").await.unwrap(), 5);
    let here = sdk.presence(&rooms[5]).await.unwrap();
    assert_eq!(
        (here.sockets, here.nodes_answered, here.nodes_expected),
        (2, 3, 3)
    );

    // Events to services: the stream on its shard, read by the SDK's consumer, which
    // answers the sender's user.
    let prefix = nodes[0].cluster.channels().prefix().to_owned();
    let cluster_config = bus::RedisClusterConfig::new(set.seeds());
    let mut worker =
        publisher::Consumer::connect_cluster(&cluster_config, &prefix, "/", "svc", "w1")
            .await
            .unwrap();
    let ack = ann
        .emit_with_ack("notification_read", &[json!({"id": 7})])
        .await
        .unwrap();
    assert_eq!(ack[0]["ok"], true, "{ack:?}");
    let got = worker.next(Duration::from_secs(5), 10).await.unwrap();
    assert_eq!(got.len(), 1);
    let event = got[0].event.clone().unwrap();
    assert_eq!(
        (event.user.as_str(), event.args[0]["id"].as_u64()),
        ("ann", Some(7))
    );
    sdk.reply_to_user(&event)
        .emit("notification_read_confirmed", &7)
        .await
        .unwrap();
    assert_eq!(
        ann.expect_arg("notification_read_confirmed").await.unwrap(),
        7
    );
    worker.ack(&got[0]).await.unwrap();

    // A room's channel is a shard channel on its owner, not a classic channel anywhere.
    let ch = channel(&nodes[0], &rooms[0]);
    let owner = set.master_of(&ch).unwrap();
    let sharded = set.cli(owner, &["PUBSUB", "SHARDCHANNELS", &ch]).unwrap();
    assert!(sharded.contains(&ch), "{sharded:?}");
    let classic = set.cli(owner, &["PUBSUB", "CHANNELS", &ch]).unwrap();
    assert!(!classic.contains(&ch), "{classic:?}");

    // Join, then publish at once from another node: never missed.
    for i in 0..30 {
        let room = format!("doc:Race:{i}");
        let mut c = nodes[2]
            .member_of(&format!("racer{i}"), &room)
            .await
            .unwrap();
        nodes[0]
            .publish_accepted(json!({"event": "race", "to": [room], "data": i}))
            .await
            .unwrap();
        assert_eq!(c.expect_arg("race").await.unwrap(), i);
    }

    // The legacy channel stays classic: a plain PUBLISH on any node reaches the sockets.
    let legacy = json!({"event": "legacy", "message": {"n": 1}, "room": rooms[1]}).to_string();
    set.cli(owner, &["PUBLISH", "realtime", &legacy]).unwrap();
    assert_eq!(ann.expect_arg("legacy").await.unwrap()["n"], 1);

    // The master of rooms[0] dies mid-stream; its replica takes over.
    set.kill(owner);
    let killed = Instant::now();
    let mut seq = 1000;
    let resumed = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "delivery did not resume within 60 s of the master's death"
        );
        let body = json!({"event": "after", "to": [&rooms[0]], "data": seq});
        seq += 1;
        let accepted = nodes[0].publish_accepted(body).await;
        if accepted.is_ok()
            && let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(200), ann.expect("after")).await
        {
            break killed.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let promoted = set.master_of(&ch).unwrap();
    assert_ne!(promoted, owner);
    eprintln!(
        "master :{owner} killed; replica :{promoted} promoted; delivery to its rooms resumed after {:.1} s",
        resumed.as_secs_f64()
    );
    // Rooms on the other shards: each node moves to the new topology once it sees it (a
    // reconnect, about a second); then they are delivered again, to every node.
    let other = rooms
        .iter()
        .find(|r| set.master_of(&channel(&nodes[0], r)).unwrap() != promoted)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(
            Instant::now() < deadline,
            "the other shards' rooms did not come back"
        );
        let body = json!({"event": "other", "to": [other], "data": 1});
        if nodes[1].publish_accepted(body).await.is_ok()
            && let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(300), bob.expect("other")).await
        {
            break;
        }
    }
}

#[test]
fn cluster_mode_refuses_what_it_cannot_do() {
    let parse = |extra: &[&str]| {
        let mut args = vec![
            "gateway",
            "--jwt-secret",
            testkit::TEST_SECRET,
            "--publish-api-key",
            testkit::TEST_KEY,
            "--redis-cluster-nodes",
            "127.0.0.1:7000,redis://127.0.0.1:7001",
        ];
        args.extend_from_slice(extra);
        gateway::Args::try_parse_hermetic(args)
            .map_err(|e| e.to_string())
            .and_then(|a| gateway::Config::from_args(a).map_err(|e| e.to_string()))
    };
    let config = parse(&[]).unwrap();
    assert_eq!(
        config.redis_cluster_nodes,
        ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
    );
    // Recovery works on a cluster (its namespaces' channels share a hash tag).
    assert_eq!(
        parse(&["--recovery-namespaces", "/"])
            .unwrap()
            .recovery
            .namespaces,
        ["/"]
    );
    assert!(
        parse(&["--redis-sentinels", "s:26379"])
            .unwrap_err()
            .contains("exclude each other")
    );
}
