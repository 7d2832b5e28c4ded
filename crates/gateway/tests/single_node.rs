//! One node (and a two-node in-memory cluster), driven by real Socket.IO v5 frames.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use serde_json::{Value, json};
use testkit::{ConnectError, SioClient, TEST_KEY, TestNode, publish, spawn_memory_cluster, token};

async fn one_node() -> TestNode {
    let (_hub, mut nodes) = spawn_memory_cluster(1, |_, _| {}).await.unwrap();
    nodes.remove(0)
}

fn ann() -> Value {
    json!({"token": token(json!({"sub": "ann", "tenant_id": "acme", "rooms": ["doc:Task:*", "room:lobby"]}))})
}

async fn connect(node: &TestNode, auth: Value) -> SioClient {
    node.client(auth).await.unwrap()
}

/// Publishes `body` and asserts it was accepted.
async fn accepted(node: &TestNode, body: Value) {
    node.publish_accepted(body).await.unwrap();
}

#[tokio::test]
async fn connected_event_names_the_user_tenant_and_node() {
    let node = one_node().await;
    let mut c = SioClient::connect(&node.url(), "/", Some(ann()))
        .await
        .unwrap();
    let connected = c.expect_arg("connected").await.unwrap();
    assert_eq!(connected["user_id"], "ann");
    assert_eq!(connected["tenant_id"], "acme");
    assert_eq!(connected["node_id"], "test-node-0");
    assert_eq!(connected["rooms"], json!(["user:ann", "tenant:acme"]));
    assert_eq!(connected["message"], "connected");
}

#[tokio::test]
async fn token_in_the_query_string_is_accepted() {
    let node = one_node().await;
    let query = format!("token={}", token(json!({"sub": "q"})));
    let mut c = SioClient::connect_with(&node.url(), "/socket.io/", &query, "/", None)
        .await
        .unwrap();
    assert_eq!(c.expect_arg("connected").await.unwrap()["user_id"], "q");
}

#[tokio::test]
async fn bad_tokens_are_refused_with_the_reason_and_others_keep_working() {
    let node = one_node().await;
    let mut good = connect(&node, ann()).await;
    let none_token = {
        use base64::Engine as _;
        let b = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b(json!({"alg": "none"})),
            b(json!({"sub": "x", "exp": gateway::unix_now() + 60}))
        )
    };
    let wrong_secret = gateway::sign_hs256(
        "not-the-secret",
        &json!({"sub": "x", "exp": gateway::unix_now() + 60}),
    )
    .unwrap();
    let cases = [
        (None, "authentication required"),
        (Some(json!({"token": "abc"})), "invalid token"),
        (
            Some(json!({"token": wrong_secret})),
            "invalid token signature",
        ),
        (
            Some(json!({"token": token(json!({"sub": "x", "exp": gateway::unix_now() - 3600}))})),
            "token expired",
        ),
        (
            Some(json!({"token": none_token})),
            "token algorithm none is not accepted",
        ),
    ];
    for (auth, expected) in cases {
        match SioClient::connect(&node.url(), "/", auth.clone()).await {
            Err(ConnectError::Refused(message)) => {
                assert!(
                    message.contains(expected),
                    "{auth:?}: {message:?} should contain {expected:?}"
                )
            }
            other => panic!("{auth:?}: expected a refusal, got {other:?}"),
        }
    }
    // The node still serves the client that was already connected.
    accepted(
        &node,
        json!({"tenant": "acme", "event": "still-here", "to": ["user:ann"], "data": 1}),
    )
    .await;
    assert_eq!(good.expect_arg("still-here").await.unwrap(), json!(1));
}

#[tokio::test]
async fn join_is_limited_by_the_token_and_validated() {
    let node = one_node().await;
    let mut c = connect(&node, ann()).await;
    assert_eq!(
        c.join("doc:Task:T-1").await.unwrap(),
        json!({"ok": true, "room": "doc:Task:T-1"})
    );
    assert_eq!(c.join("room:lobby").await.unwrap()["ok"], true);
    let refused = c.join("doc:Invoice:I-1").await.unwrap();
    assert_eq!(
        refused,
        json!({"ok": false, "error": "not allowed to join doc:Invoice:I-1"})
    );
    let invalid = c.join("lobby").await.unwrap();
    assert_eq!(invalid["ok"], false);
    assert!(
        invalid["error"]
            .as_str()
            .unwrap()
            .contains("must have the form kind:id")
    );
    let control = c.join("room:a\u{1}b").await.unwrap();
    assert_eq!(
        control,
        json!({"ok": false, "error": "room name contains a control character"})
    );
    let not_a_string = c.emit_with_ack("join", &[json!(42)]).await.unwrap();
    assert_eq!(not_a_string[0]["ok"], false);
    // Its own user room is always allowed.
    assert_eq!(c.join("user:ann").await.unwrap()["ok"], true);
}

#[tokio::test]
async fn publish_reaches_exactly_the_room_members_once() {
    let node = one_node().await;
    let mut ann = connect(&node, ann()).await;
    let mut bob = connect(
        &node,
        json!({"token": token(json!({"sub": "bob", "tenant_id": "acme", "rooms": ["doc:*"]}))}),
    )
    .await;
    let mut eve = connect(
        &node,
        json!({"token": token(json!({"sub": "eve", "tenant_id": "other"}))}),
    )
    .await;
    assert_eq!(ann.join("doc:Task:T-1").await.unwrap()["ok"], true);
    assert_eq!(bob.join("doc:Task:T-1").await.unwrap()["ok"], true);

    // Document room: ann and bob, not eve.
    accepted(
        &node,
        json!({"tenant": "acme", "event": "doc_update", "to": ["doc:Task:T-1"], "data": {"n": 1}}),
    )
    .await;
    // User room: only bob.
    accepted(
        &node,
        json!({"tenant": "acme", "event": "note", "to": ["user:bob"], "data": "for bob"}),
    )
    .await;
    // Several rooms, ann is in all of them: delivered to her once.
    accepted(&node, json!({"tenant": "acme", "event": "multi", "to": ["user:ann", "tenant:acme", "doc:Task:T-1"], "args": ["a", 2]})).await;
    // Tenant minus bob's user room.
    accepted(&node, json!({"tenant": "acme", "event": "tenant_news", "to": ["tenant:acme"], "except": ["user:bob"], "data": null})).await;
    // The whole tenant: a marker every acme socket receives last; eve's tenant gets its own.
    accepted(
        &node,
        json!({"tenant": "acme", "event": "marker", "to": ["*"]}),
    )
    .await;
    accepted(
        &node,
        json!({"tenant": "other", "event": "marker", "to": ["*"]}),
    )
    .await;

    let (_, before) = ann.expect("marker").await.unwrap();
    let names: Vec<&str> = before.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["doc_update", "multi", "tenant_news"]);
    assert_eq!(before[0].args, vec![json!({"n": 1})]);
    assert_eq!(before[1].args, vec![json!("a"), json!(2)]);
    assert_eq!(before[2].args, vec![Value::Null]);

    let (_, before) = bob.expect("marker").await.unwrap();
    let names: Vec<&str> = before.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["doc_update", "note", "multi"]);

    let (_, before) = eve.expect("marker").await.unwrap();
    assert!(before.is_empty(), "eve received {before:?}");
}

#[tokio::test]
async fn leave_stops_delivery_and_disconnect_releases_every_room() {
    let (hub, nodes) = spawn_memory_cluster(1, |_, _| {}).await.unwrap();
    let node = &nodes[0];
    let base = hub.channels();
    let mut c = connect(node, ann()).await;
    c.join("doc:Task:T-1").await.unwrap();
    assert_eq!(node.cluster.room_count(), 3);
    assert_eq!(hub.channels().len(), base.len() + 3);

    assert_eq!(
        c.leave("doc:Task:T-1").await.unwrap(),
        json!({"ok": true, "room": "doc:Task:T-1"})
    );
    accepted(
        node,
        json!({"tenant": "acme", "event": "after_leave", "to": ["doc:Task:T-1"]}),
    )
    .await;
    accepted(
        node,
        json!({"tenant": "acme", "event": "marker", "to": ["user:ann"]}),
    )
    .await;
    let (_, before) = c.expect("marker").await.unwrap();
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(node.cluster.room_count(), 2);

    c.close().await;
    let deadline = tokio::time::Instant::now() + testkit::DEFAULT_WAIT;
    while node.cluster.room_count() != 0 || hub.channels() != base {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rooms left: {:?}",
            hub.channels()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn publish_errors_are_clear_and_typed() {
    let node = one_node().await;
    let mut c = connect(&node, ann()).await;
    let url = node.url();
    let big = json!({"tenant": "acme", "event": "e", "data": "x".repeat(1024 * 1024)}).to_string();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "wrong-key",
            json!({"tenant": "acme", "event": "e"}).to_string(),
            401,
            "missing or wrong publish key",
        ),
        (TEST_KEY, "{not json".into(), 400, "malformed message"),
        (
            TEST_KEY,
            json!({"v": 2, "event": "e"}).to_string(),
            400,
            "unsupported envelope version 2",
        ),
        (
            TEST_KEY,
            json!({"to": ["user:ann"]}).to_string(),
            400,
            "missing event name",
        ),
        (
            TEST_KEY,
            json!({"tenant": "acme", "event": "e", "to": ["nokind"]}).to_string(),
            400,
            "invalid room \"nokind\"",
        ),
        (
            TEST_KEY,
            json!({"tenant": "acme", "event": "e", "to": ["*"], "except": [""]}).to_string(),
            400,
            "room name is empty",
        ),
        (
            TEST_KEY,
            json!({"event": "e"}).to_string(),
            400,
            "name the target rooms in \"to\"",
        ),
        (
            TEST_KEY,
            json!({"tenant": "acme", "event": "e", "to": ["*", "user:ann"]}).to_string(),
            400,
            "cannot be combined with rooms",
        ),
        (
            TEST_KEY,
            json!({"tenant": "acme", "event": "e", "to": ["tenant:globex"]}).to_string(),
            400,
            "belongs to another tenant",
        ),
        (
            TEST_KEY,
            json!({"tenant": "", "event": "e", "to": ["user:ann"]}).to_string(),
            400,
            "tenant id is empty",
        ),
        (TEST_KEY, big, 400, "exceeds the limit of 1048576 bytes"),
    ];
    for (key, body, status, message) in cases {
        let (got, res) = publish(&url, key, &body).await.unwrap();
        assert_eq!(got, status, "{res}");
        let error = res["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(message),
            "{error:?} should contain {message:?}"
        );
    }
    // Nothing above was delivered, and the node still delivers.
    accepted(
        &node,
        json!({"tenant": "acme", "event": "ok", "to": ["user:ann"]}),
    )
    .await;
    let (_, before) = c.expect("ok").await.unwrap();
    assert!(before.is_empty(), "{before:?}");
}

#[tokio::test]
async fn health_endpoints_describe_the_node() {
    let node = one_node().await;
    let _c = connect(&node, ann()).await;
    let health = node.health().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["node_id"], "test-node-0");
    assert_eq!(health["mode"], "development");
    assert_eq!(health["bus"]["kind"], "memory");
    assert_eq!(health["connections"], 1);
    assert_eq!(health["rooms"], 2);
    assert!(health["timestamp"].as_u64().unwrap() > 0);
    for path in ["/health/live", "/health/ready"] {
        assert_eq!(
            reqwest::get(format!("{}{path}", node.url()))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let metrics = node.metrics().await.unwrap();
    assert!(
        metrics.contains("socketio_connections_total{server_id=\"test-node-0\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("socketio_rooms_total{server_id=\"test-node-0\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn demo_page_only_in_development_and_never_with_a_configured_secret() {
    let (_hub, nodes) = spawn_memory_cluster(2, |i, c| {
        if i == 1 {
            c.mode = gateway::Mode::Production;
        }
    })
    .await
    .unwrap();
    let get = |node: &TestNode, path: &str| reqwest::get(format!("{}{path}", node.url()));
    assert_eq!(get(&nodes[0], "/").await.unwrap().status(), 200);
    // The test secret and key were configured, not generated: nothing is pre-filled.
    let config: Value = get(&nodes[0], "/demo/config.json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["token"], Value::Null);
    assert_eq!(config["publish_key"], Value::Null);
    assert_eq!(config["node_id"], "test-node-0");
    for path in ["/", "/demo/app.js", "/demo/config.json"] {
        assert_eq!(get(&nodes[1], path).await.unwrap().status(), 404, "{path}");
    }
}

#[tokio::test]
async fn two_nodes_on_one_bus_act_as_one() {
    let (_hub, nodes) = spawn_memory_cluster(2, |_, _| {}).await.unwrap();
    let mut on_a = connect(&nodes[0], ann()).await;
    let mut on_b = connect(&nodes[1], ann()).await;
    on_b.join("doc:Task:T-9").await.unwrap();

    // Published on node 0: the socket on node 1 receives it, the one on node 0 is not in the room.
    accepted(
        &nodes[0],
        json!({"tenant": "acme", "event": "doc", "to": ["doc:Task:T-9"], "data": 9}),
    )
    .await;
    assert_eq!(on_b.expect_arg("doc").await.unwrap(), json!(9));
    accepted(
        &nodes[1],
        json!({"tenant": "acme", "event": "both", "to": ["user:ann"]}),
    )
    .await;
    let (_, before) = on_a.expect("both").await.unwrap();
    assert!(before.is_empty(), "{before:?}");
    on_b.expect("both").await.unwrap();
}

#[tokio::test]
async fn additional_namespaces_are_served() {
    let (_hub, nodes) = spawn_memory_cluster(1, |_, c| {
        c.namespaces = vec!["/".into(), "/notifications".into()]
    })
    .await
    .unwrap();
    let mut c = SioClient::connect(&nodes[0].url(), "/notifications", Some(ann()))
        .await
        .unwrap();
    c.expect("connected").await.unwrap();
    accepted(
        &nodes[0],
        json!({"tenant": "acme", "event": "n", "ns": "/notifications", "to": ["user:ann"], "data": "x"}),
    )
    .await;
    assert_eq!(c.expect_arg("n").await.unwrap(), json!("x"));
    match SioClient::connect(&nodes[0].url(), "/nope", Some(ann())).await {
        Err(ConnectError::Refused(_)) => {}
        other => panic!("expected a refusal for an unknown namespace, got {other:?}"),
    }
}

#[tokio::test]
async fn publisher_sdk_reaches_sockets_through_the_bus() {
    let (hub, nodes) = spawn_memory_cluster(2, |_, _| {}).await.unwrap();
    let mut on_b = connect(&nodes[1], ann()).await;
    let (bus, _inbox) = hub.connect();
    let sdk = publisher::Publisher::new(
        std::sync::Arc::new(bus),
        rooms::Channels::default(),
        "billing",
    )
    .in_tenant("acme");
    sdk.to_user("ann")
        .emit("invoice.paid", &json!({"invoice": "INV-1"}))
        .await
        .unwrap();
    assert_eq!(
        on_b.expect_arg("invoice.paid").await.unwrap(),
        json!({"invoice": "INV-1"})
    );
}
