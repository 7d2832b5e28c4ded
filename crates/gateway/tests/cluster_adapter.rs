//! The socketioxide API used by gateway code works across three nodes on a real Redis:
//! fetch_sockets, rooms, broadcast with acks, remote join/leave, remote disconnect and
//! emitting to one remote socket.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use testkit::{RedisServer, SioClient, TEST_KEY, TestNode, publish, spawn_redis_cluster, token};

/// The Socket.IO room that `room` of tenant `acme` is on every node: gateway code
/// addressing sockets directly uses scoped names.
fn acme(room: &str) -> String {
    let tenant = rooms::TenantId::parse("acme").unwrap();
    rooms::ScopedRoom::new(Some(&tenant), &rooms::Room::parse(room).unwrap())
        .unwrap()
        .into_string()
}

async fn connect(node: &TestNode, user: &str) -> SioClient {
    let auth = json!({"token": token(json!({"sub": user, "tenant_id": "acme", "rooms": ["*"]}))});
    let mut c = SioClient::connect(&node.url(), "/", Some(auth))
        .await
        .unwrap();
    c.expect("connected").await.unwrap();
    c
}

async fn three_nodes(redis: &RedisServer) -> (Vec<TestNode>, Vec<SioClient>) {
    let nodes = spawn_redis_cluster(3, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        clients.push(connect(node, &format!("u{i}")).await);
    }
    (nodes, clients)
}

#[tokio::test]
async fn fetch_sockets_and_rooms_see_every_node() {
    let redis = RedisServer::start().unwrap();
    let (nodes, mut clients) = three_nodes(&redis).await;
    clients[2].join("doc:Task:T-7").await.unwrap();

    let all = nodes[0].io.fetch_sockets().await.unwrap();
    let ids: BTreeSet<String> = all.iter().map(|s| s.data().id.to_string()).collect();
    let expected: BTreeSet<String> = clients.iter().map(|c| c.sid.clone()).collect();
    assert_eq!(ids, expected);

    let in_doc = nodes[1]
        .io
        .within(acme("doc:Task:T-7"))
        .fetch_sockets()
        .await
        .unwrap();
    assert_eq!(in_doc.len(), 1);
    assert_eq!(in_doc[0].data().id.to_string(), clients[2].sid);

    let rooms: BTreeSet<String> = nodes[0]
        .io
        .rooms()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.to_string())
        .collect();
    for room in [
        "user:u0",
        "user:u1",
        "user:u2",
        "tenant:acme",
        "doc:Task:T-7",
    ] {
        assert!(rooms.contains(&acme(room)), "{room} missing from {rooms:?}");
    }
}

#[tokio::test]
async fn broadcast_with_ack_collects_answers_from_all_nodes() {
    let redis = RedisServer::start().unwrap();
    let (nodes, clients) = three_nodes(&redis).await;
    // Each client answers the server's question with its own user id.
    let answering: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                let (event, _) = c.expect("question").await.unwrap();
                c.ack(
                    event.ack.expect("the server asked for an ack"),
                    &[json!(format!("u{i}"))],
                )
                .await
                .unwrap();
                c
            })
        })
        .collect();
    let stream = nodes[1]
        .io
        .timeout(Duration::from_secs(5))
        .emit_with_ack::<_, Value>("question", &json!("who are you?"))
        .await
        .unwrap();
    let answers: BTreeSet<String> = stream
        .filter_map(|(_, r)| async move { r.ok().and_then(|v| v.as_str().map(str::to_owned)) })
        .collect()
        .await;
    assert_eq!(
        answers,
        BTreeSet::from(["u0".into(), "u1".into(), "u2".into()])
    );
    for a in answering {
        a.await.unwrap();
    }
}

#[tokio::test]
async fn remote_join_subscribes_the_remote_node_and_remote_leave_releases_it() {
    let redis = RedisServer::start().unwrap();
    let (nodes, mut clients) = three_nodes(&redis).await;
    // Gateway code on node 0 adds u1 (on node 1) to a room; a publish on node 2 reaches it.
    nodes[0]
        .io
        .to(acme("user:u1"))
        .join(acme("room:extra"))
        .await
        .unwrap();
    let (status, _) = publish(
        &nodes[2].url(),
        TEST_KEY,
        &json!({"tenant": "acme", "event": "extra", "to": ["room:extra"], "data": 1}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 202);
    assert_eq!(clients[1].expect_arg("extra").await.unwrap(), json!(1));

    nodes[0]
        .io
        .to(acme("user:u1"))
        .leave(acme("room:extra"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let channel = nodes[1]
        .cluster
        .channels()
        .room("/", &rooms::ScopedRoom::parse(&acme("room:extra")).unwrap());
    while redis.pubsub_channels(&channel).unwrap().contains(&channel) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "room:extra still subscribed after the remote leave"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn emit_to_one_remote_socket_and_disconnect_it() {
    let redis = RedisServer::start().unwrap();
    let (nodes, mut clients) = three_nodes(&redis).await;
    let target = nodes[0]
        .io
        .fetch_sockets()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.data().id.to_string() == clients[2].sid)
        .expect("client 2 is visible from node 0");
    target.emit("direct", &json!("just you")).await.unwrap();
    assert_eq!(
        clients[2].expect_arg("direct").await.unwrap(),
        json!("just you")
    );

    nodes[0].io.to(acme("user:u2")).disconnect().await.unwrap();
    clients[2].expect_disconnect().await.unwrap();
    // The others are untouched.
    let (status, _) = publish(
        &nodes[0].url(),
        TEST_KEY,
        &json!({"tenant": "acme", "event": "still", "to": ["tenant:acme"]}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 202);
    clients[0].expect("still").await.unwrap();
    clients[1].expect("still").await.unwrap();
}

#[tokio::test]
async fn gateway_code_broadcasts_reach_other_nodes_except_excluded_rooms() {
    let redis = RedisServer::start().unwrap();
    let (nodes, mut clients) = three_nodes(&redis).await;
    nodes[0]
        .io
        .to(acme("tenant:acme"))
        .except(acme("user:u1"))
        .emit("from_code", &json!({"k": 1}))
        .await
        .unwrap();
    nodes[0].io.emit("marker", &()).await.unwrap();
    let (_, before) = clients[1].expect("marker").await.unwrap();
    assert!(before.is_empty(), "{before:?}");
    for i in [0, 2] {
        let (_, before) = clients[i].expect("marker").await.unwrap();
        assert_eq!(
            before.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["from_code"]
        );
    }
}
