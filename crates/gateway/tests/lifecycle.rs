//! Readiness that fits a load balancer: ready unless shutting down, at the connection
//! cap or never connected to its bus — a Redis outage does not pull a serving node out;
//! on shutdown the node turns not-ready first and keeps serving while the balancer
//! notices.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::time::Duration;

use serde_json::{Value, json};
use testkit::{RedisServer, TestNode, spawn_memory_cluster, spawn_redis_cluster, token};

fn auth(user: &str) -> Value {
    json!({"token": token(json!({"sub": user, "tenant_id": "acme"}))})
}

async fn ready(node: &TestNode) -> (u16, String) {
    let res = reqwest::get(format!("{}/health/ready", node.url()))
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test]
async fn shutdown_turns_the_node_unready_while_it_still_serves() {
    let (_hub, mut nodes) = spawn_memory_cluster(1, |_, c| {
        c.shutdown_drain = Duration::from_secs(2);
    })
    .await
    .unwrap();
    let node = &mut nodes[0];
    let mut before = node.client(auth("ann")).await.unwrap();
    assert_eq!(ready(node).await.0, 200);

    node.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let (status, why) = ready(node).await;
        if status == 503 {
            assert_eq!(why, "shutting down");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Within the drain window the node still serves: a client connects, an event arrives.
    let mut late = node.client(auth("bob")).await.unwrap();
    node.publish_accepted(json!({"tenant": "acme", "event": "still", "to": ["user:bob"]}))
        .await
        .unwrap();
    late.expect("still").await.unwrap();
    // Then it closes its sockets.
    before.expect_disconnect().await.unwrap();
}

#[tokio::test]
async fn a_node_at_its_connection_cap_is_not_ready() {
    let (_hub, nodes) = spawn_memory_cluster(1, |_, c| c.connection_limits.per_node = 1)
        .await
        .unwrap();
    assert_eq!(ready(&nodes[0]).await.0, 200);
    let _only = nodes[0].client(auth("ann")).await.unwrap();
    assert_eq!(
        ready(&nodes[0]).await,
        (503, "at its connection cap".to_owned())
    );
}

#[tokio::test]
async fn a_redis_outage_does_not_make_a_serving_node_unready() {
    let mut redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(1, &redis.url(), |_, _| {})
        .await
        .unwrap();
    assert_eq!(ready(&nodes[0]).await.0, 200);
    redis.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while nodes[0].health().await.unwrap()["status"] != "degraded" {
        assert!(tokio::time::Instant::now() < deadline, "never degraded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // /health says degraded; readiness stays: the node still serves its own clients.
    assert_eq!(ready(&nodes[0]).await.0, 200);
}

#[tokio::test]
async fn the_binarys_healthcheck_answers_for_the_image() {
    let (_hub, nodes) = spawn_memory_cluster(1, |_, _| {}).await.unwrap();
    let check = |port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("healthcheck")
            .env("PORT", port.to_string())
            .output()
            .unwrap()
    };
    let port = nodes[0].addr.port();
    let healthy = tokio::task::spawn_blocking(move || check(port))
        .await
        .unwrap();
    assert!(healthy.status.success(), "{healthy:?}");
    let closed = testkit::free_port().unwrap();
    let down = tokio::task::spawn_blocking(move || check(closed))
        .await
        .unwrap();
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("unhealthy"));
}
