//! A socket that stops reading is disconnected as a slow consumer while a reader in the
//! same room gets every message. In its own test binary: it moves 25 MiB over loopback,
//! which would starve the timing bounds of the other abuse tests running beside it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use serde_json::{Value, json};
use testkit::{TestNode, spawn_memory_cluster, token};

fn auth(user: &str) -> Value {
    json!({"token": token(json!({"sub": user, "tenant_id": "acme", "rooms": ["room:*"]}))})
}

async fn node_with(configure: impl Fn(&mut gateway::Config)) -> TestNode {
    let (_hub, mut nodes) = spawn_memory_cluster(1, |_, c| configure(c)).await.unwrap();
    nodes.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_stops_reading_is_disconnected_while_a_reader_gets_every_message() {
    let node = node_with(|c| c.socket_buffer_bytes = 256 * 1024).await;
    let mut stalled = node.client(auth("stalled")).await.unwrap();
    assert_eq!(stalled.join("room:feed").await.unwrap()["ok"], true);
    let mut reader = node.client(auth("reader")).await.unwrap();
    assert_eq!(reader.join("room:feed").await.unwrap()["ok"], true);

    // 400 × 64 KiB = 25 MiB to the room: far more than the stalled socket's kernel
    // buffers and its 256 KiB budget hold.
    const N: u64 = 400;
    let reading = tokio::spawn(async move {
        for seq in 0..N {
            let tick = reader.expect_arg("tick").await?;
            anyhow::ensure!(
                tick["seq"] == seq,
                "got {} where {seq} was due",
                tick["seq"]
            );
        }
        anyhow::Ok(())
    });
    let pad = "x".repeat(64 * 1024);
    for seq in 0..N {
        node.publish_accepted(json!({
            "tenant": "acme", "event": "tick", "to": ["room:feed"],
            "data": {"seq": seq, "pad": pad},
        }))
        .await
        .unwrap();
    }
    reading
        .await
        .unwrap()
        .expect("the reading socket gets every message, in order");

    // The stalled socket was disconnected as a slow consumer, and counted.
    stalled.expect_disconnect().await.unwrap();
    assert_eq!(
        node.cluster
            .stats
            .slow_consumers
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let metrics = node.metrics().await.unwrap();
    assert!(
        metrics.contains("roomcast_slow_consumer_disconnects_total{"),
        "{metrics}"
    );
}
