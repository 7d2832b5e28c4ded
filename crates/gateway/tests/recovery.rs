//! Connection state recovery across nodes (`RECOVERY_NAMESPACES`), on a real Redis: a
//! client that drops and comes back — to another node — within the window gets every
//! event it missed, in order, once, in the rooms it had; past the window, or with a
//! session that is not its own, it starts afresh (and leaves that session to its owner).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::time::Duration;

use serde_json::{Value, json};
use testkit::{RedisServer, SioClient, TestNode, spawn_redis_cluster, token};

fn claims(user: &str) -> Value {
    json!({"sub": user, "tenant_id": "acme", "rooms": ["doc:*"]})
}

async fn cluster(redis: &RedisServer, window_ms: u64) -> Vec<TestNode> {
    spawn_redis_cluster(2, &redis.url(), |_, c| {
        c.recovery = gateway::RecoveryConfig {
            namespaces: vec!["/".into()],
            window: Duration::from_millis(window_ms),
            max_len: 10_000,
        };
    })
    .await
    .unwrap()
}

/// Connects with `auth`, waits for `connected`; returns the client and that event.
async fn connect(node: &TestNode, auth: Value) -> (SioClient, Value) {
    let mut c = SioClient::connect(&node.url(), "/", Some(auth))
        .await
        .unwrap();
    let connected = c.expect_arg("connected").await.unwrap();
    (c, connected)
}

/// The `seq` and offset of the next `tick`.
async fn tick(c: &mut SioClient) -> (u64, String) {
    let (e, _) = c.expect("tick").await.unwrap();
    let seq = e.args[0]["seq"].as_u64().unwrap();
    let offset = e.args.last().and_then(Value::as_str).unwrap().to_owned();
    (seq, offset)
}

/// Waits until `node` has noticed its clients left (their sessions are then saved).
async fn gone(node: &TestNode) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while node.health().await.unwrap()["connections"] != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node did not notice the drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn publish(node: &TestNode, room: &str, seq: u64) {
    node.publish_accepted(
        json!({"tenant": "acme", "event": "tick", "to": [room], "data": {"seq": seq}}),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_client_back_on_another_node_gets_what_it_missed_in_order_once() {
    let redis = RedisServer::start().unwrap();
    let nodes = cluster(&redis, 60_000).await;
    let (mut c, connected) = connect(&nodes[0], json!({"token": token(claims("ann"))})).await;
    assert_eq!(connected["recovered"], false);
    let pid = c.pid.clone().expect("the CONNECT reply carries a pid");
    assert_eq!(c.join("doc:Task:1").await.unwrap()["ok"], true);
    publish(&nodes[1], "doc:Task:1", 0).await;
    let (seq, offset) = tick(&mut c).await;
    assert_eq!(seq, 0);

    // The connection drops; 100 events to its room, and some it was never to get.
    c.abort();
    for seq in 1..=100 {
        publish(&nodes[seq as usize % 2], "doc:Task:1", seq).await;
    }
    publish(&nodes[1], "doc:Task:2", 999).await;

    // Back on the other node with its pid and last offset.
    let auth = json!({"token": token(claims("ann")), "pid": pid, "offset": offset});
    let (mut back, connected) = connect(&nodes[1], auth).await;
    assert_eq!(back.pid.as_deref(), Some(pid.as_str()), "same session");
    assert_eq!(connected["recovered"], true);
    let mut last = offset;
    for expected in 1..=100 {
        let (seq, offset) = tick(&mut back).await;
        assert_eq!(seq, expected, "in order, none missing");
        assert_eq!(bus::offset_cmp(&offset, &last), std::cmp::Ordering::Greater);
        last = offset;
    }
    // Live again, in its restored room, and nothing twice: the next tick is the new one.
    publish(&nodes[0], "doc:Task:1", 101).await;
    assert_eq!(tick(&mut back).await.0, 101);
}

#[tokio::test]
async fn nothing_is_lost_or_doubled_when_events_keep_coming_during_the_recovery() {
    let redis = RedisServer::start().unwrap();
    let nodes = cluster(&redis, 60_000).await;
    let (mut c, _) = connect(&nodes[0], json!({"token": token(claims("bob"))})).await;
    let pid = c.pid.clone().unwrap();
    assert_eq!(c.join("doc:Live:1").await.unwrap()["ok"], true);
    publish(&nodes[1], "doc:Live:1", 0).await;
    let (_, offset) = tick(&mut c).await;
    c.abort();

    // A steady stream, through the whole reconnect.
    let url = nodes[0].url();
    let stream = tokio::spawn(async move {
        for seq in 1..=300u64 {
            let body = json!({"tenant": "acme", "event": "tick", "to": ["doc:Live:1"], "data": {"seq": seq}});
            let (status, _) = testkit::publish(&url, testkit::TEST_KEY, &body.to_string())
                .await
                .unwrap();
            assert_eq!(status, 202);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let auth = json!({"token": token(claims("bob")), "pid": pid, "offset": offset});
    let (mut back, connected) = connect(&nodes[1], auth).await;
    assert_eq!(connected["recovered"], true);
    for expected in 1..=300 {
        assert_eq!(tick(&mut back).await.0, expected);
    }
    stream.await.unwrap();
}

#[tokio::test]
async fn past_the_window_or_with_someone_elses_session_a_client_starts_afresh() {
    let redis = RedisServer::start().unwrap();
    let nodes = cluster(&redis, 1000).await;

    // Another user presenting ann's pid and offset gets a session of its own.
    let (mut ann, _) = connect(&nodes[0], json!({"token": token(claims("ann"))})).await;
    let pid = ann.pid.clone().unwrap();
    assert_eq!(ann.join("doc:Secret:1").await.unwrap()["ok"], true);
    publish(&nodes[1], "doc:Secret:1", 0).await;
    let (_, offset) = tick(&mut ann).await;
    ann.abort();
    gone(&nodes[0]).await;
    let stolen = json!({"token": token(claims("eve")), "pid": pid, "offset": offset});
    let (eve, connected) = connect(&nodes[1], stolen).await;
    assert_eq!(connected["recovered"], false);
    assert_ne!(eve.pid.as_deref(), Some(pid.as_str()));

    // Eve's attempt left ann's session alone: ann still recovers it.
    let again = json!({"token": token(claims("ann")), "pid": pid, "offset": offset});
    let (_, connected) = connect(&nodes[1], again).await;
    assert_eq!(connected["recovered"], true);

    // Past the window.
    let (mut late, _) = connect(&nodes[0], json!({"token": token(claims("cat"))})).await;
    let pid = late.pid.clone().unwrap();
    assert_eq!(late.join("doc:Slow:1").await.unwrap()["ok"], true);
    publish(&nodes[1], "doc:Slow:1", 0).await;
    let (_, offset) = tick(&mut late).await;
    late.abort();
    gone(&nodes[0]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let auth = json!({"token": token(claims("cat")), "pid": pid, "offset": offset});
    let (fresh, connected) = connect(&nodes[1], auth).await;
    assert_eq!(connected["recovered"], false);
    assert_ne!(fresh.pid.as_deref(), Some(pid.as_str()));
}

#[tokio::test]
async fn what_the_sdk_publishes_while_a_client_is_away_is_recovered_too() {
    let redis = RedisServer::start().unwrap();
    let nodes = cluster(&redis, 60_000).await;
    let prefix = nodes[0].cluster.channels().prefix().to_owned();
    let sdk = publisher::Publisher::connect(&redis.url(), Duration::from_secs(2))
        .unwrap()
        .with_channel_prefix(&prefix)
        .with_recovery(&["/"], Duration::from_secs(60), 10_000)
        .in_tenant("acme");
    let (mut c, _) = connect(&nodes[0], json!({"token": token(claims("dan"))})).await;
    let pid = c.pid.clone().unwrap();
    publish(&nodes[1], "user:dan", 0).await;
    let (_, offset) = tick(&mut c).await;
    c.abort();
    for seq in 1..=3u64 {
        sdk.to_user("dan")
            .emit("tick", &json!({"seq": seq}))
            .await
            .unwrap();
    }
    let auth = json!({"token": token(claims("dan")), "pid": pid, "offset": offset});
    let (mut back, connected) = connect(&nodes[1], auth).await;
    assert_eq!(connected["recovered"], true);
    for expected in 1..=3 {
        assert_eq!(tick(&mut back).await.0, expected);
    }
}

async fn history(node: &TestNode, query: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .get(format!(
            "{}/v1/rooms/doc:Page:1/history?{query}",
            node.url()
        ))
        .bearer_auth(testkit::TEST_KEY)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn the_history_of_a_room_pages_in_order_and_keeps_tenants_apart() {
    let redis = RedisServer::start().unwrap();
    let nodes = cluster(&redis, 60_000).await;
    for seq in 0..25u64 {
        publish(&nodes[seq as usize % 2], "doc:Page:1", seq).await;
        // Other rooms and another tenant's room of the same name are not in it.
        publish(&nodes[0], "doc:Page:2", 1000 + seq).await;
    }
    nodes[1]
        .publish_accepted(
            json!({"tenant": "beta", "event": "tick", "to": ["doc:Page:1"], "data": {"seq": 9999}}),
        )
        .await
        .unwrap();

    // Pages of 10 over HTTP, each starting after the last one's offset.
    let mut seen = Vec::new();
    let mut since = String::new();
    loop {
        let query = if since.is_empty() {
            "tenant=acme&limit=10".to_owned()
        } else {
            format!("tenant=acme&limit=10&since={since}")
        };
        let (status, page) = history(&nodes[1], &query).await;
        assert_eq!(status, 200, "{page}");
        for m in page["messages"].as_array().unwrap() {
            seen.push(m["args"][0]["seq"].as_u64().unwrap());
        }
        match page["next"].as_str() {
            Some(next) => since = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, (0..25).collect::<Vec<_>>());

    // The SDK reads the same history.
    let sdk = publisher::Publisher::connect(&redis.url(), Duration::from_secs(2))
        .unwrap()
        .with_channel_prefix(nodes[0].cluster.channels().prefix())
        .with_recovery(&["/"], Duration::from_secs(60), 10_000)
        .in_tenant("beta");
    let page = sdk.history("doc:Page:1", None, 100).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].1.arguments()[0]["seq"], 9999);

    // Refusals: a bad offset, a namespace without history, no key.
    assert_eq!(
        history(&nodes[0], "tenant=acme&since=yesterday").await.0,
        400
    );
    assert_eq!(history(&nodes[0], "tenant=acme&ns=/other").await.0, 400);
    let anonymous = reqwest::get(format!("{}/v1/rooms/doc:Page:1/history", nodes[0].url()))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}
