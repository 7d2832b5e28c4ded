//! The server API (`/v1/sockets/*`, `/v1/rooms/{room}/sockets`) on 3 nodes sharing a real
//! Redis: list, join, leave and disconnect a user's sockets wherever they are connected,
//! inside one tenant only.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::time::Duration;

use serde_json::{Value, json};
use testkit::{RedisServer, SioClient, TEST_KEY, TestNode, spawn_redis_cluster, token};

async fn client(node: &TestNode, user: &str, tenant: &str) -> SioClient {
    node.client(
        json!({"token": token(json!({"sub": user, "tenant_id": tenant, "rooms": ["doc:*"]}))}),
    )
    .await
    .unwrap()
}

async fn call(node: &TestNode, method: &str, path: &str, body: Value, key: &str) -> (u16, Value) {
    let url = format!("{}{path}", node.url());
    let http = testkit::http_client();
    let request = if method == "GET" {
        http.get(url)
    } else {
        http.post(url).json(&body)
    };
    let res = request.bearer_auth(key).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn sids(answer: &Value) -> Vec<String> {
    let mut sids: Vec<String> = answer["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sid"].as_str().unwrap().to_owned())
        .collect();
    sids.sort();
    sids
}

async fn publish(node: &TestNode, tenant: &str, room: &str, event: &str) {
    node.publish_accepted(json!({"tenant": tenant, "event": event, "to": [room], "data": 1}))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_users_sockets_are_listed_joined_left_and_disconnected_on_every_node() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(3, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let mut ann1 = client(&nodes[1], "ann", "acme").await;
    let mut ann2 = client(&nodes[2], "ann", "acme").await;
    let mut bob = client(&nodes[2], "bob", "acme").await;
    let mut other_ann = client(&nodes[0], "ann", "globex").await;
    let mut ann_sids = vec![ann1.sid.clone(), ann2.sid.clone()];
    ann_sids.sort();

    // Listed from a node that holds none of them, in acme only.
    let (status, listed) = call(
        &nodes[0],
        "GET",
        "/v1/rooms/user:ann/sockets?tenant=acme",
        Value::Null,
        TEST_KEY,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(sids(&listed), ann_sids);
    assert_eq!(
        (
            listed["nodes_answered"].as_u64(),
            listed["nodes_expected"].as_u64()
        ),
        (Some(3), Some(3))
    );
    let first = &listed["sockets"][0];
    assert_eq!(
        (first["user"].as_str(), first["tenant"].as_str()),
        (Some("ann"), Some("acme"))
    );
    assert!(
        first["rooms"]
            .as_array()
            .unwrap()
            .contains(&json!("user:ann")),
        "{first}"
    );

    // socketsJoin: the next publish to the room reaches both of ann's sockets only.
    let join = json!({"tenant": "acme", "user": "ann", "rooms": ["doc:Task:9"]});
    let (status, joined) = call(&nodes[0], "POST", "/v1/sockets/join", join, TEST_KEY).await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(sids(&joined), ann_sids);
    publish(&nodes[0], "acme", "doc:Task:9", "in_task").await;
    ann1.expect("in_task").await.unwrap();
    ann2.expect("in_task").await.unwrap();
    publish(&nodes[0], "acme", "user:bob", "marker").await;
    let (_, before) = bob.expect("marker").await.unwrap();
    assert!(
        before.iter().all(|e| e.name != "in_task"),
        "bob was not made to join"
    );

    // socketsLeave: the next publish does not reach them.
    let leave = json!({"tenant": "acme", "user": "ann", "rooms": ["doc:Task:9"]});
    let (status, _) = call(&nodes[1], "POST", "/v1/sockets/leave", leave, TEST_KEY).await;
    assert_eq!(status, 200);
    publish(&nodes[0], "acme", "doc:Task:9", "after_leave").await;
    publish(&nodes[0], "acme", "user:ann", "marker").await;
    for c in [&mut ann1, &mut ann2] {
        let (_, before) = c.expect("marker").await.unwrap();
        assert!(before.iter().all(|e| e.name != "after_leave"), "{before:?}");
    }

    // Across tenants: nothing is done to acme's sockets from globex's scope, and a room
    // of another tenant is refused.
    let foreign = json!({"tenant": "globex", "socket": bob.sid.clone(), "reason": "x"});
    let (status, none) = call(
        &nodes[0],
        "POST",
        "/v1/sockets/disconnect",
        foreign,
        TEST_KEY,
    )
    .await;
    assert_eq!((status, none["count"].as_u64()), (200, Some(0)), "{none}");
    let (status, refused) = call(
        &nodes[0],
        "POST",
        "/v1/sockets/join",
        json!({"tenant": "acme", "user": "ann", "rooms": ["tenant:globex"]}),
        TEST_KEY,
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    let (status, _) = call(
        &nodes[0],
        "POST",
        "/v1/sockets/join",
        json!({"tenant": "acme", "rooms": ["doc:a:1"]}),
        TEST_KEY,
    )
    .await;
    assert_eq!(status, 400, "a target is required");
    let (status, _) = call(
        &nodes[0],
        "POST",
        "/v1/sockets/disconnect",
        json!({"tenant": "acme", "user": "ann"}),
        "wrong-key",
    )
    .await;
    assert_eq!(status, 401);

    // The Rust SDK does the same from a service, straight over Redis.
    let sdk = publisher::Publisher::connect(&redis.url(), Duration::from_secs(2))
        .unwrap()
        .with_channel_prefix(nodes[0].cluster.channels().prefix())
        .in_tenant("acme");
    let listed = sdk
        .act_on_sockets(
            publisher::SocketTarget::User("bob".into()),
            publisher::SocketAction::Join {
                rooms: vec!["doc:Task:10".into()],
            },
        )
        .await
        .unwrap();
    assert_eq!(
        listed
            .sockets
            .iter()
            .map(|s| s.sid.clone())
            .collect::<Vec<_>>(),
        [bob.sid.clone()]
    );
    assert_eq!((listed.nodes_answered, listed.nodes_expected), (3, 3));
    publish(&nodes[1], "acme", "doc:Task:10", "sdk_joined").await;
    bob.expect("sdk_joined").await.unwrap();

    // Disconnect: each of ann's sockets gets the reason, then is disconnected.
    let kick = json!({"tenant": "acme", "user": "ann", "reason": "account suspended"});
    let (status, kicked) = call(&nodes[0], "POST", "/v1/sockets/disconnect", kick, TEST_KEY).await;
    assert_eq!(status, 200, "{kicked}");
    assert_eq!(sids(&kicked), ann_sids);
    for c in [&mut ann1, &mut ann2] {
        let why = c.expect_arg("disconnect_reason").await.unwrap();
        assert_eq!(
            why,
            json!({"reason": "disconnected_by_server", "message": "account suspended"})
        );
        c.expect_disconnect().await.unwrap();
    }
    // globex's ann and acme's bob are still there.
    publish(&nodes[1], "globex", "user:ann", "still_here").await;
    other_ann.expect("still_here").await.unwrap();
    publish(&nodes[1], "acme", "user:bob", "still_here").await;
    bob.expect("still_here").await.unwrap();
    // And the cluster no longer lists ann's sockets (their nodes notice the close).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, listed) = call(
            &nodes[2],
            "GET",
            "/v1/rooms/user:ann/sockets?tenant=acme",
            Value::Null,
            TEST_KEY,
        )
        .await;
        if listed["count"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still listed: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
