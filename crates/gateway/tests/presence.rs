//! Presence across nodes on a real Redis: who is in a room, from any node, through
//! joins, leaves, disconnects and a node that dies; and the client `presence` request,
//! for rooms the client is in.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use serde_json::{Value, json};
use testkit::{RedisServer, SioClient, TEST_KEY, TestNode, spawn_redis_cluster, token};

async fn client(node: &TestNode, user: &str, tenant: &str) -> SioClient {
    let auth =
        json!({"token": token(json!({"sub": user, "tenant_id": tenant, "rooms": ["doc:*"]}))});
    let mut c = SioClient::connect(&node.url(), "/", Some(auth))
        .await
        .unwrap();
    c.expect("connected").await.unwrap();
    c
}

/// `GET /v1/rooms/{room}/presence` on `node`: the users (sorted) and the answer.
async fn presence(node: &TestNode, room: &str, tenant: &str) -> (Vec<String>, Value) {
    let res: Value = reqwest::Client::new()
        .get(format!(
            "{}/v1/rooms/{room}/presence?tenant={tenant}",
            node.url()
        ))
        .bearer_auth(TEST_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let users = res["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| format!("{}x{}", u["user"].as_str().unwrap(), u["sockets"]))
        .collect();
    (users, res)
}

#[tokio::test]
async fn presence_is_the_same_from_every_node_through_joins_leaves_and_a_dead_node() {
    let redis = RedisServer::start().unwrap();
    let mut nodes = spawn_redis_cluster(3, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let mut ann = client(&nodes[0], "ann", "acme").await;
    let mut ann2 = client(&nodes[1], "ann", "acme").await;
    let mut bob = client(&nodes[2], "bob", "acme").await;
    // Same room name, another tenant: never in acme's answer.
    let mut eve = client(&nodes[1], "eve", "beta").await;
    for c in [&mut ann, &mut ann2, &mut bob, &mut eve] {
        assert_eq!(c.join("doc:Task:1").await.unwrap()["ok"], true);
    }
    for node in &nodes {
        let (users, answer) = presence(node, "doc:Task:1", "acme").await;
        assert_eq!(users, ["annx2", "bobx1"], "{answer}");
        assert_eq!(answer["count"], 2);
        assert_eq!(answer["sockets"], 3);
        assert_eq!(answer["nodes_answered"], 3);
    }
    assert_eq!(presence(&nodes[0], "doc:Task:1", "beta").await.0, ["evex1"]);
    // The same from a service, through the SDK.
    let sdk = publisher::Publisher::connect(&redis.url(), std::time::Duration::from_secs(2))
        .unwrap()
        .with_channel_prefix(nodes[0].cluster.channels().prefix());
    let here = sdk.in_tenant("acme").presence("doc:Task:1").await.unwrap();
    assert_eq!(
        here.users
            .iter()
            .map(|(u, n)| (u.as_str(), *n))
            .collect::<Vec<_>>(),
        [("ann", 2), ("bob", 1)]
    );
    assert_eq!(
        (here.sockets, here.nodes_answered, here.nodes_expected),
        (3, 3, 3)
    );
    assert!(
        sdk.in_tenant("beta")
            .presence("doc:Task:2")
            .await
            .unwrap()
            .users
            .is_empty()
    );
    assert!(matches!(
        sdk.presence("not a room").await,
        Err(publisher::PresenceError::InvalidRoom(_))
    ));

    // A leave and a disconnect.
    assert_eq!(ann2.leave("doc:Task:1").await.unwrap()["ok"], true);
    bob.close().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (users, _) = presence(&nodes[1], "doc:Task:1", "acme").await;
        if users == ["annx1"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {users:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The client asks about a room it is in, and is refused for one it is not in.
    let reply = ann
        .emit_with_ack("presence", &[json!("doc:Task:1")])
        .await
        .unwrap();
    assert_eq!(reply[0]["ok"], true, "{reply:?}");
    assert_eq!(reply[0]["count"], 1);
    let reply = ann2
        .emit_with_ack("presence", &[json!("doc:Task:1")])
        .await
        .unwrap();
    assert_eq!(reply[0]["ok"], false, "{reply:?}");

    // A node dies: its sockets are gone from the answer at once (it cannot answer).
    let mut carl = client(&nodes[2], "carl", "acme").await;
    assert_eq!(carl.join("doc:Task:1").await.unwrap()["ok"], true);
    assert_eq!(
        presence(&nodes[0], "doc:Task:1", "acme").await.0,
        ["annx1", "carlx1"]
    );
    nodes[2].crash();
    let started = tokio::time::Instant::now();
    let (users, answer) = presence(&nodes[0], "doc:Task:1", "acme").await;
    assert_eq!(users, ["annx1"], "{answer}");
    assert!(
        started.elapsed() < gateway::ANSWER_WITHIN * 3,
        "bounded wait"
    );
    drop(carl);
}

#[tokio::test]
async fn server_side_events_reach_the_other_nodes_handlers_and_their_answers_come_back() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(3, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    for (i, node) in nodes.iter().enumerate() {
        let seen_tx = seen_tx.clone();
        node.cluster.on_server_event(move |e| {
            seen_tx
                .send((i, e.event.clone(), e.args.clone(), e.from.clone()))
                .ok();
            Some(json!({"node": i, "got": e.args[0]}))
        });
    }

    nodes[1]
        .cluster
        .server_side_emit("/", "cache.flush", vec![json!("prices")])
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let (i, event, args, from) =
            tokio::time::timeout(std::time::Duration::from_secs(5), seen.recv())
                .await
                .unwrap()
                .unwrap();
        assert_eq!(
            (event.as_str(), args, from.as_str()),
            ("cache.flush", vec![json!("prices")], "redis-node-1")
        );
        got.push(i);
    }
    got.sort_unstable();
    assert_eq!(got, [0, 2], "the other nodes, not the sender");

    let mut answers = nodes[0]
        .cluster
        .server_side_emit_with_ack("/", "count", vec![json!(7)])
        .await;
    answers.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        answers,
        [
            ("redis-node-1".to_owned(), json!({"node": 1, "got": 7})),
            ("redis-node-2".to_owned(), json!({"node": 2, "got": 7})),
        ]
    );
}

/// The next presence event of `name` on `c`, as (user, reason), after checking that no
/// other presence event came first.
async fn next_presence(c: &mut SioClient, name: &str) -> (String, String, String) {
    let (event, before) = c.expect(name).await.unwrap();
    let earlier: Vec<_> = before
        .iter()
        .filter(|e| e.name.starts_with("presence_"))
        .map(|e| (&e.name, &e.args))
        .collect();
    assert!(earlier.is_empty(), "unexpected before {name}: {earlier:?}");
    let data = &event.args[0];
    assert_eq!(data["room"], "doc:Task:1", "{data}");
    (
        data["user"].as_str().unwrap().to_owned(),
        data["reason"].as_str().unwrap().to_owned(),
        data["sid"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn members_are_told_of_joins_and_leaves_across_nodes_within_their_tenant() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(3, &redis.url(), |_, c| {
        c.presence_events = vec![rooms::Pattern::parse("doc:*").unwrap()];
    })
    .await
    .unwrap();
    let mut ann = client(&nodes[0], "ann", "acme").await;
    let mut bob = client(&nodes[1], "bob", "acme").await;
    let mut eve = client(&nodes[2], "eve", "beta").await;
    let mut dave = client(&nodes[2], "dave", "acme").await;
    assert_eq!(ann.join("doc:Task:1").await.unwrap()["ok"], true);
    assert_eq!(bob.join("doc:Task:1").await.unwrap()["ok"], true);
    let bob_sid = bob.sid.clone();
    assert_eq!(
        next_presence(&mut ann, "presence_join").await,
        ("bob".into(), "joined".into(), bob_sid.clone())
    );
    // Another tenant's same-named room, then dave, from one node (so in this order):
    // acme's members hear of dave only.
    assert_eq!(eve.join("doc:Task:1").await.unwrap()["ok"], true);
    assert_eq!(dave.join("doc:Task:1").await.unwrap()["ok"], true);
    let dave_sid = dave.sid.clone();
    for c in [&mut ann, &mut bob] {
        assert_eq!(
            next_presence(c, "presence_join").await,
            ("dave".into(), "joined".into(), dave_sid.clone())
        );
    }
    // A leave, then a disconnect.
    assert_eq!(bob.leave("doc:Task:1").await.unwrap()["ok"], true);
    for c in [&mut ann, &mut dave] {
        assert_eq!(
            next_presence(c, "presence_leave").await,
            ("bob".into(), "left".into(), bob_sid.clone())
        );
    }
    dave.close().await;
    assert_eq!(
        next_presence(&mut ann, "presence_leave").await,
        ("dave".into(), "disconnected".into(), dave_sid)
    );
    // Eve, in beta's room of the same name, heard of nobody in acme.
    let body = json!({"tenant": "beta", "event": "marker", "to": ["doc:Task:1"], "data": 1});
    nodes[1].publish_accepted(body).await.unwrap();
    let (_, before) = eve.expect("marker").await.unwrap();
    assert!(
        before.iter().all(|e| !e.name.starts_with("presence_")),
        "{before:?}"
    );
}
