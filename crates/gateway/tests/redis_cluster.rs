//! Three gateway nodes sharing a real `redis-server` (started by the test on a free port),
//! driven by real Socket.IO clients.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::time::Duration;

use serde_json::{Value, json};
use testkit::{RedisServer, SioClient, TEST_KEY, TestNode, publish, spawn_redis_cluster, token};
use tokio::time::Instant;

fn auth(user: &str, tenant: &str) -> Value {
    json!({"token": token(json!({"sub": user, "tenant_id": tenant, "rooms": ["doc:*", "room:*"]}))})
}

async fn connect(node: &TestNode, user: &str) -> SioClient {
    node.client(auth(user, "acme")).await.unwrap()
}

async fn accepted(node: &TestNode, body: Value) {
    node.publish_accepted(body).await.unwrap();
}

/// Waits (up to 10 s) until `check` holds.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn health(node: &TestNode) -> Value {
    node.health().await.unwrap()
}

#[tokio::test]
async fn cross_node_delivery_targeting_multi_room_and_except() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(3, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let mut ann0 = connect(&nodes[0], "ann").await;
    let mut bob1 = connect(&nodes[1], "bob").await;
    let mut ann2 = connect(&nodes[2], "ann").await;
    for c in [&mut ann0, &mut bob1, &mut ann2] {
        assert_eq!(c.join("doc:Task:T-1").await.unwrap()["ok"], true);
    }

    // Published on node 0, received on nodes 1 and 2.
    accepted(
        &nodes[0],
        json!({"tenant": "acme", "event": "doc", "to": ["doc:Task:T-1"], "data": 1}),
    )
    .await;
    // Only ann's two sockets (nodes 0 and 2).
    accepted(
        &nodes[1],
        json!({"tenant": "acme", "event": "for_ann", "to": ["user:ann"], "data": 2}),
    )
    .await;
    // Three rooms ann is in on node 2: once per socket.
    accepted(
        &nodes[1],
        json!({"tenant": "acme", "event": "multi", "to": ["user:ann", "tenant:acme", "doc:Task:T-1"]}),
    )
    .await;
    // The tenant minus ann.
    accepted(
        &nodes[2],
        json!({"tenant": "acme", "event": "not_ann", "to": ["tenant:acme"], "except": ["user:ann"]}),
    )
    .await;
    // Marker to everyone, last.
    accepted(
        &nodes[0],
        json!({"tenant": "acme", "event": "marker", "to": ["*"]}),
    )
    .await;

    for (client, expected) in [
        (&mut ann0, vec!["doc", "for_ann", "multi"]),
        (&mut bob1, vec!["doc", "multi", "not_ann"]),
        (&mut ann2, vec!["doc", "for_ann", "multi"]),
    ] {
        let (_, before) = client.expect("marker").await.unwrap();
        let names: Vec<&str> = before.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, expected);
    }
}

#[tokio::test]
async fn http_publish_with_ack_collects_answers_from_every_node() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(3, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let mut ann0 = connect(&nodes[0], "ann").await;
    let mut ann1 = connect(&nodes[1], "ann").await;
    let mut silent = connect(&nodes[1], "ann").await;
    let mut bob = connect(&nodes[0], "bob").await;
    let url = nodes[2].url();
    let request = tokio::spawn(async move {
        let body = json!({"tenant": "acme", "event": "confirm", "to": ["user:ann"], "data": {"q": 1}, "ack_timeout_ms": 1500});
        publish(&url, TEST_KEY, &body.to_string()).await.unwrap()
    });
    for (client, answer) in [(&mut ann0, "zero"), (&mut ann1, "one")] {
        let (event, _) = client.expect("confirm").await.unwrap();
        assert_eq!(event.args, vec![json!({"q": 1})]);
        client
            .ack(event.ack.expect("an ack id"), &[json!(answer)])
            .await
            .unwrap();
    }
    // The third socket receives the question and does not answer.
    assert!(silent.expect("confirm").await.unwrap().0.ack.is_some());
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let acks = body["acks"].as_array().unwrap();
    let mut answered: Vec<String> = acks
        .iter()
        .filter_map(|a| a["data"].as_str().map(str::to_owned))
        .collect();
    answered.sort();
    assert_eq!(answered, ["one", "zero"], "{body}");
    let failed: Vec<&Value> = acks.iter().filter(|a| a["error"].is_string()).collect();
    assert_eq!(failed.len(), 1, "the silent socket times out: {body}");
    assert_eq!(failed[0]["sid"], silent.sid.as_str());
    // Only the target user's sockets were asked.
    accepted(
        &nodes[2],
        json!({"tenant": "acme", "event": "marker", "to": ["user:bob"]}),
    )
    .await;
    let (_, before) = bob.expect("marker").await.unwrap();
    assert!(before.iter().all(|e| e.name != "confirm"), "{before:?}");

    // A bad timeout is refused before anything is sent.
    let body =
        json!({"tenant": "acme", "event": "confirm", "to": ["user:ann"], "ack_timeout_ms": 0});
    let (status, res) = publish(&nodes[0].url(), TEST_KEY, &body.to_string())
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(res["error"].as_str().unwrap().contains("ack_timeout_ms"));
}

#[tokio::test]
async fn a_join_ack_is_never_followed_by_a_missed_publish() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(2, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let mut client = connect(&nodes[0], "ann").await;
    for i in 0..100 {
        let room = format!("room:race-{i}");
        assert_eq!(client.join(&room).await.unwrap()["ok"], true);
        // Immediately after the ack, publish on the *other* node.
        accepted(
            &nodes[1],
            json!({"tenant": "acme", "event": "race", "to": [room], "data": i}),
        )
        .await;
        let got = client.expect_arg("race").await;
        assert_eq!(
            got.as_ref().ok(),
            Some(&json!(i)),
            "iteration {i}: {got:?} channels {:?}",
            redis.pubsub_channels("*")
        );
        assert_eq!(client.leave(&room).await.unwrap()["ok"], true);
    }
}

#[tokio::test]
async fn legacy_json_published_with_redis_cli_is_delivered() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(2, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let mut ann = connect(&nodes[0], "ann@example.com").await;
    let mut bob = connect(&nodes[1], "bob").await;
    bob.join("doc:Task:TASK-1").await.unwrap();

    let legacy = [
        json!({"site": "acme", "event": "notification", "message": {"n": 1}, "user": "ann@example.com", "room": null}),
        json!({"site": "acme", "event": "doc_update", "message": "changed", "doctype": "Task", "docname": "TASK-1"}),
        json!({"site": "acme", "event": "everyone", "message": null}),
    ];
    for payload in &legacy {
        let receivers = redis
            .cli(&["PUBLISH", "realtime", &payload.to_string()])
            .unwrap();
        assert_eq!(
            receivers.trim(),
            "2",
            "both nodes listen on the legacy channel"
        );
    }
    assert_eq!(
        ann.expect_arg("notification").await.unwrap(),
        json!({"n": 1})
    );
    let (_, before) = ann.expect("everyone").await.unwrap();
    assert!(before.is_empty(), "{before:?}");
    let (e, before) = bob.expect("everyone").await.unwrap();
    assert_eq!(
        before.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["doc_update"]
    );
    assert_eq!(before[0].args, vec![json!("changed")]);
    assert_eq!(e.args, vec![Value::Null]);
}

#[tokio::test]
async fn publisher_sdk_delivers_across_nodes_in_order() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(2, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let prefix = nodes[0].cluster.channels().prefix().to_owned();
    let mut on0 = connect(&nodes[0], "u42").await;
    let mut on1 = connect(&nodes[1], "u42").await;

    let sdk = publisher::Publisher::connect(&redis.url(), Duration::from_secs(2))
        .unwrap()
        .with_channel_prefix(&prefix)
        .with_origin("billing")
        .in_tenant("acme");
    for i in 0..20 {
        sdk.to_user("u42").emit("seq", &i).await.unwrap();
    }
    for client in [&mut on0, &mut on1] {
        for i in 0..20 {
            assert_eq!(
                client.expect_arg("seq").await.unwrap(),
                json!(i),
                "in order"
            );
        }
    }
}

#[tokio::test]
async fn redis_restart_degrades_then_heals_without_restarting_nodes() {
    let mut redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(2, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let mut on0 = connect(&nodes[0], "ann").await;
    let mut on1 = connect(&nodes[1], "ann").await;
    assert_eq!(health(&nodes[0]).await["status"], "ok");

    redis.stop();
    eventually("node 0 reports degraded", async || {
        health(&nodes[0]).await["status"] == "degraded"
    })
    .await;
    // Still ready: the node serves its own clients (tests/lifecycle.rs).
    let ready = reqwest::get(format!("{}/health/ready", nodes[0].url()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // Local delivery keeps working; the caller is told other nodes were not reached.
    let (status, res) = publish(
        &nodes[0].url(),
        TEST_KEY,
        &json!({"tenant": "acme", "event": "local", "to": ["user:ann"]}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 503, "{res}");
    assert_eq!(res["delivered_locally"], true);
    on0.expect("local").await.unwrap();

    let down_at = Instant::now();
    redis.restart().unwrap();
    eventually("both nodes healthy again", async || {
        health(&nodes[0]).await["status"] == "ok" && health(&nodes[1]).await["status"] == "ok"
    })
    .await;
    let healed = down_at.elapsed();
    assert!(healed < Duration::from_secs(5), "took {healed:?} to heal");

    accepted(
        &nodes[0],
        json!({"tenant": "acme", "event": "after", "to": ["user:ann"], "data": "back"}),
    )
    .await;
    let (e, before) = on1.expect("after").await.unwrap();
    assert!(
        before.is_empty(),
        "node 1 never received the local-only message: {before:?}"
    );
    assert_eq!(e.args, vec![json!("back")]);
}

#[tokio::test]
async fn no_orphan_subscriptions_once_every_client_left() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(3, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let prefix = nodes[0].cluster.channels().prefix().to_owned();
    let room_pattern = format!("{prefix}:room:*");
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for u in 0..3 {
            let mut c = connect(node, &format!("user-{i}-{u}")).await;
            c.join("doc:Task:shared").await.unwrap();
            c.join(&format!("room:only-{i}-{u}")).await.unwrap();
            clients.push(c);
        }
    }
    assert!(!redis.pubsub_channels(&room_pattern).unwrap().is_empty());
    // Some leave explicitly, the rest just disconnect.
    for (i, mut c) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            c.leave("doc:Task:shared").await.unwrap();
        }
        c.close().await;
    }
    eventually("every node's rooms released", async || {
        nodes.iter().all(|n| n.cluster.room_count() == 0)
    })
    .await;
    eventually("no room channels left in Redis", async || {
        redis.pubsub_channels(&room_pattern).unwrap().is_empty()
    })
    .await;
    for node in &nodes {
        assert_eq!(health(node).await["rooms"], 0);
        assert_eq!(health(node).await["connections"], 0);
    }
}

async fn cluster_view(node: &TestNode, key: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .get(format!("{}/v1/cluster", node.url()))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

async fn node_ids(node: &TestNode) -> Vec<String> {
    let (status, view) = cluster_view(node, TEST_KEY).await;
    assert_eq!(status, 200, "{view}");
    view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn registry_lists_live_nodes_and_forgets_stopped_and_crashed_ones() {
    let redis = RedisServer::start().unwrap();
    let mut nodes =
        spawn_redis_cluster(3, &redis.url(), |_, c| c.node_ttl = Duration::from_secs(3))
            .await
            .unwrap();
    let _client = connect(&nodes[0], "ann").await;
    eventually("all three nodes registered", async || {
        node_ids(&nodes[0]).await.len() == 3
    })
    .await;
    assert_eq!(
        node_ids(&nodes[0]).await,
        ["redis-node-0", "redis-node-1", "redis-node-2"]
    );
    let (_, view) = cluster_view(&nodes[1], TEST_KEY).await;
    let me = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == "redis-node-0")
        .unwrap()
        .clone();
    assert_eq!(me["address"], nodes[0].url());
    assert_eq!(cluster_view(&nodes[0], "wrong").await.0, 401);

    // A node that stops cleanly leaves at once.
    nodes[2].stop();
    eventually("the stopped node left", async || {
        node_ids(&nodes[0]).await.len() == 2
    })
    .await;
    // A node that crashes disappears when its record expires.
    let crashed_at = Instant::now();
    nodes[1].crash();
    eventually("the crashed node expired", async || {
        node_ids(&nodes[0]).await == ["redis-node-0"]
    })
    .await;
    assert!(
        crashed_at.elapsed() <= Duration::from_secs(4),
        "expired after {:?}",
        crashed_at.elapsed()
    );
}

/// Publishes with acks made at the same time on several nodes each end when their
/// sockets answered, not at the ack timeout.
#[tokio::test]
async fn concurrent_publishes_with_ack_end_when_the_sockets_answer() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(3, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let mut answering = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut client = connect(node, &format!("u{i}")).await;
        answering.push(tokio::spawn(async move {
            loop {
                if let Ok((event, _)) = client.expect("confirm").await
                    && let Some(id) = event.ack
                {
                    client.ack(id, &[json!("yes")]).await.unwrap();
                }
            }
        }));
    }
    let urls: Vec<String> = nodes.iter().map(TestNode::url).collect();
    let loops = (0..3).map(|i| {
        let url = urls[(i + 1) % 3].clone();
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for n in 0..15 {
                let body = json!({"tenant": "acme", "event": "confirm", "to": [format!("user:u{i}")], "data": n, "ack_timeout_ms": 5000});
                let started = std::time::Instant::now();
                let (status, res) = publish(&url, TEST_KEY, &body.to_string()).await.unwrap();
                assert_eq!(status, 200, "{res}");
                assert_eq!(res["acks"][0]["data"], "yes", "{res}");
                slowest = slowest.max(started.elapsed());
            }
            slowest
        })
    });
    for slowest in futures_util::future::join_all(loops).await {
        let slowest = slowest.unwrap();
        assert!(
            slowest < Duration::from_secs(3),
            "a publish with acks waited {slowest:?} although its socket answered at once"
        );
    }
    answering.iter().for_each(tokio::task::JoinHandle::abort);
}

/// Waits (up to 10 s) until a publish from `from` reaches `client` in `room`.
async fn delivered_again(from: &TestNode, client: &mut SioClient, room: &str) -> Duration {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "delivery did not come back"
        );
        let body = json!({"tenant": "acme", "event": "again", "to": [room], "data": 1});
        if from.publish_accepted(body).await.is_ok()
            && let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(300), client.expect("again")).await
        {
            return start.elapsed();
        }
    }
}

#[tokio::test]
async fn subscriptions_lost_behind_the_nodes_back_are_made_again_and_counted() {
    let mut redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(2, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let mut ann = connect(&nodes[1], "ann").await;
    assert_eq!(ann.join("doc:Task:1").await.unwrap()["ok"], true);
    let repaired = async |node: &TestNode| {
        node.metric("roomcast_bus_subscriptions_repaired_total", &[])
            .await
            .unwrap()
    };
    let start = repaired(&nodes[1]).await;

    // Its subscriber connection killed: every subscription is made again.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).unwrap();
    let took = delivered_again(&nodes[0], &mut ann, "doc:Task:1").await;
    let after_kill = repaired(&nodes[1]).await;
    assert!(after_kill > start, "counted: {start} → {after_kill}");
    eprintln!(
        "subscriber connection killed: delivery back after {:.2} s",
        took.as_secs_f64()
    );

    // Redis restarted (nothing of the old subscriptions survives): the same.
    redis.restart().unwrap();
    let took = delivered_again(&nodes[0], &mut ann, "doc:Task:1").await;
    let after_restart = repaired(&nodes[1]).await;
    assert!(
        after_restart > after_kill,
        "counted: {after_kill} → {after_restart}"
    );
    eprintln!(
        "Redis restarted: delivery back after {:.2} s",
        took.as_secs_f64()
    );
}
