//! Tenants never see each other, and membership is exact: real Redis, several nodes,
//! raw frames where ordering matters.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use testkit::{RedisServer, SioClient, TestNode, spawn_redis_cluster, token};
use tokio::time::Instant;

fn auth(user: &str, tenant: Option<&str>) -> Value {
    let mut claims = json!({"sub": user, "rooms": ["doc:*", "room:*", "tenant:*"]});
    if let Some(t) = tenant {
        claims["tenant_id"] = json!(t);
    }
    json!({"token": token(claims)})
}

async fn accepted(node: &TestNode, body: Value) {
    node.publish_accepted(body).await.unwrap();
}

/// The events `c` received before `marker`, by name.
async fn before_marker(c: &mut SioClient) -> Vec<(String, Vec<Value>)> {
    let (_, before) = c.expect("marker").await.unwrap();
    before.into_iter().map(|e| (e.name, e.args)).collect()
}

/// Sends one `marker` to every tenant's sockets and to the shared scope.
async fn markers(node: &TestNode) {
    for tenant in [json!("t1"), json!("t2"), Value::Null] {
        let mut body = json!({"event": "marker", "to": ["user:admin"]});
        if !tenant.is_null() {
            body["tenant"] = tenant;
        }
        accepted(node, body).await;
    }
}

#[tokio::test]
async fn the_same_user_id_in_two_tenants_is_two_users_on_every_path() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(3, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let prefix = nodes[0].cluster.channels().prefix().to_owned();
    let mut a1 = nodes[0].client(auth("admin", Some("t1"))).await.unwrap();
    let mut a2 = nodes[1].client(auth("admin", Some("t2"))).await.unwrap();
    let mut shared = nodes[2].client(auth("admin", None)).await.unwrap();

    // HTTP, on a node where neither tenant's admin is connected.
    accepted(
        &nodes[2],
        json!({"tenant": "t1", "event": "http", "to": ["user:admin"], "data": 1}),
    )
    .await;
    // The SDK, straight onto the bus.
    let sdk = publisher::Publisher::connect(&redis.url(), Duration::from_secs(2))
        .unwrap()
        .with_channel_prefix(&prefix);
    sdk.in_tenant("t2")
        .to_user("admin")
        .emit("sdk", &2)
        .await
        .unwrap();
    // The legacy form, as a Frappe site publishes it.
    redis
        .cli(&[
            "PUBLISH",
            "realtime",
            &json!({"event": "legacy", "message": 3, "user": "admin", "site": "t1"}).to_string(),
        ])
        .unwrap();
    // No tenant: the shared scope only.
    accepted(
        &nodes[0],
        json!({"event": "tenantless", "to": ["user:admin"], "data": 4}),
    )
    .await;
    // A tenant's broadcast stays in the tenant.
    sdk.in_tenant("t2")
        .broadcast()
        .emit("all_t2", &5)
        .await
        .unwrap();
    markers(&nodes[1]).await;

    assert_eq!(
        before_marker(&mut a1).await,
        [
            ("http".into(), vec![json!(1)]),
            ("legacy".into(), vec![json!(3)])
        ]
    );
    assert_eq!(
        before_marker(&mut a2).await,
        [
            ("sdk".into(), vec![json!(2)]),
            ("all_t2".into(), vec![json!(5)])
        ]
    );
    assert_eq!(
        before_marker(&mut shared).await,
        [("tenantless".into(), vec![json!(4)])]
    );
}

#[tokio::test]
async fn same_named_documents_in_two_tenants_are_two_rooms_across_nodes() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(2, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let mut c1 = nodes[0].client(auth("admin", Some("t1"))).await.unwrap();
    let mut c2 = nodes[1].client(auth("admin", Some("t2"))).await.unwrap();
    for c in [&mut c1, &mut c2] {
        assert_eq!(c.join("doc:Task:1").await.unwrap()["ok"], true);
    }
    // Two channels, one per tenant.
    let prefix = nodes[0].cluster.channels().prefix().to_owned();
    let mut channels = redis
        .pubsub_channels(&format!("{prefix}:room:*doc:Task:1"))
        .unwrap();
    channels.sort();
    assert_eq!(
        channels,
        [
            format!("{prefix}:room:/#@t1/doc:Task:1"),
            format!("{prefix}:room:/#@t2/doc:Task:1")
        ]
    );
    accepted(
        &nodes[0],
        json!({"tenant": "t2", "event": "doc_update", "to": ["doc:Task:1"], "data": "t2"}),
    )
    .await;
    redis
        .cli(&[
            "PUBLISH",
            "realtime",
            &json!({"event": "doc_update", "message": "t1", "doctype": "Task", "docname": "1", "tenant": "t1"})
                .to_string(),
        ])
        .unwrap();
    markers(&nodes[0]).await;
    assert_eq!(
        before_marker(&mut c1).await,
        [("doc_update".into(), vec![json!("t1")])]
    );
    assert_eq!(
        before_marker(&mut c2).await,
        [("doc_update".into(), vec![json!("t2")])]
    );
}

#[tokio::test]
async fn a_client_never_joins_another_tenants_rooms() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(1, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let wildcard =
        json!({"token": token(json!({"sub": "mallory", "tenant_id": "t1", "rooms": ["*"]}))});
    let mut m = nodes[0].client(wildcard).await.unwrap();
    let refused = m.join("tenant:t2").await.unwrap();
    assert_eq!(refused["ok"], false);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("belongs to another tenant"),
        "{refused}"
    );
    // Joining a room by its scoped name is not a way in either.
    let forged = m.join("@t2/doc:Task:1").await.unwrap();
    assert_eq!(forged["ok"], false, "{forged}");
    // A tenantless socket cannot join a tenant's room.
    let mut shared = nodes[0]
        .client(json!({"token": token(json!({"sub": "x", "rooms": ["*"]}))}))
        .await
        .unwrap();
    assert_eq!(shared.join("tenant:t1").await.unwrap()["ok"], false);

    // The wildcard's own doc room is its tenant's: t2's publish does not reach it.
    assert_eq!(m.join("doc:Task:1").await.unwrap()["ok"], true);
    accepted(
        &nodes[0],
        json!({"tenant": "t2", "event": "leak", "to": ["doc:Task:1", "tenant:t2"]}),
    )
    .await;
    accepted(
        &nodes[0],
        json!({"tenant": "t1", "event": "marker", "to": ["doc:Task:1"]}),
    )
    .await;
    let (_, before) = m.expect("marker").await.unwrap();
    assert!(before.is_empty(), "{before:?}");
}

#[tokio::test]
async fn join_then_leave_in_one_write_never_leaves_the_socket_in_the_room() {
    let redis = RedisServer::start().unwrap();
    // An ordering test, not a rate-limit test: 2000 events as fast as acks come back.
    let nodes = spawn_redis_cluster(2, &redis.url(), |_, config| {
        config.rate_limits.events_per_sec = 1e6;
        config.rate_limits.joins_per_sec = 1e6;
    })
    .await
    .unwrap();
    let node = &nodes[0];
    let mut c = node.client(auth("ann", Some("t1"))).await.unwrap();
    let automatic = node.cluster.room_count();
    for i in 0..1000 {
        let room = json!(format!("room:r{}", i % 10));
        let ids = c
            .emit_batch(&[("join", vec![room.clone()]), ("leave", vec![room])])
            .await
            .unwrap();
        for id in ids {
            assert_eq!(c.wait_ack(id).await.unwrap()[0]["ok"], true);
        }
        assert_eq!(
            node.cluster.room_count(),
            automatic,
            "iteration {i}: the socket stayed in a room it left"
        );
    }
    // Nothing reaches it through any of those rooms, from any node.
    for i in 0..10 {
        accepted(
            &nodes[1],
            json!({"tenant": "t1", "event": "stale", "to": [format!("room:r{i}")]}),
        )
        .await;
    }
    accepted(
        &nodes[1],
        json!({"tenant": "t1", "event": "marker", "to": ["user:ann"]}),
    )
    .await;
    let (_, before) = c.expect("marker").await.unwrap();
    assert!(before.is_empty(), "{before:?}");
    let prefix = node.cluster.channels().prefix().to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !redis
        .pubsub_channels(&format!("{prefix}:room:*#@t1/room:r*"))
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "left rooms still subscribed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn sockets_that_join_in_bursts_and_vanish_leave_nothing_behind() {
    const SOCKETS: usize = 1000;
    const JOINS: usize = 200;
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(2, &redis.url(), |_, config| {
        config.connection_limits.rooms_per_socket = JOINS + 2;
    })
    .await
    .unwrap();
    let mut peak = 0;
    for batch in (0..SOCKETS).collect::<Vec<_>>().chunks(50) {
        join_all(batch.iter().map(|&i| {
            let node = &nodes[i % nodes.len()];
            async move {
                let tenant = format!("t{}", i % 3);
                let mut c = node
                    .client(auth(&format!("u{i}"), Some(&tenant)))
                    .await
                    .unwrap();
                // Mostly rooms other sockets share, some of its own.
                let joins: Vec<(&str, Vec<Value>)> = (0..JOINS)
                    .map(|j| {
                        let room = if j < JOINS - 20 {
                            format!("room:s{j}")
                        } else {
                            format!("room:u{i}-{j}")
                        };
                        ("join", vec![json!(room)])
                    })
                    .collect();
                c.emit_batch(&joins).await.unwrap();
                // Gone before most joins were handled.
                c.abort();
            }
        }))
        .await;
        peak = peak.max(nodes.iter().map(|n| n.cluster.room_count()).sum::<usize>());
    }
    assert!(
        peak > 0,
        "no join was ever handled: the test proves nothing"
    );
    let prefix = nodes[0].cluster.channels().prefix().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let members: usize = nodes
            .iter()
            .map(|n| n.cluster.membership().socket_count())
            .sum();
        let rooms: usize = nodes.iter().map(|n| n.cluster.room_count()).sum();
        let mut health = 0;
        for node in &nodes {
            health += node.health().await.unwrap()["rooms"].as_u64().unwrap();
        }
        let channels = redis.pubsub_channels(&format!("{prefix}:room:*")).unwrap();
        if members == 0 && rooms == 0 && health == 0 && channels.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {members} members, {rooms} rooms, /health {health}, {} room channels",
            channels.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
