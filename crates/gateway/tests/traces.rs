//! One trace across three nodes: a publish that continues the caller's trace, and a
//! delivery span on each node as its child — exported over real OTLP/HTTP (protobuf) to
//! a receiver in this test.
//!
//! The tracing subscriber is process-global, so this file holds one test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::time::Duration;

use serde_json::json;
use testkit::{OtlpReceiver, TEST_KEY, check_publish_trace, spawn_memory_cluster, token};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_shows_the_publish_and_a_delivery_on_each_node() {
    let receiver = OtlpReceiver::start("127.0.0.1").await.unwrap();
    let telemetry =
        gateway::Telemetry::to_endpoint(&format!("http://127.0.0.1:{}", receiver.port)).unwrap();
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(telemetry.layer())
        .init();

    let (_hub, nodes) = spawn_memory_cluster(3, |_, _| {}).await.unwrap();
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let auth = json!({"token": token(json!({"sub": format!("u{i}"), "tenant_id": "acme", "rooms": ["room:*"]}))});
        let mut c = node.client(auth).await.unwrap();
        assert_eq!(c.join("room:doc").await.unwrap()["ok"], true);
        clients.push(c);
    }

    // The caller's own trace: its span is the publish span's parent.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let res = reqwest::Client::new()
        .post(format!("{}/v1/publish", nodes[0].url()))
        .bearer_auth(TEST_KEY)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({"tenant": "acme", "event": "traced", "to": ["room:doc"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    for c in &mut clients {
        c.expect("traced").await.unwrap();
    }

    // Spans end when each node's delivery finished; wait for all of them to arrive.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::task::block_in_place(|| telemetry.flush());
        let spans = receiver.trace(caller_trace);
        let verdict = check_publish_trace(
            &spans,
            caller_span,
            "test-node-0",
            &["test-node-0", "test-node-1", "test-node-2"],
        )
        .unwrap();
        if let Some(summary) = verdict {
            println!("{summary}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans received: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
