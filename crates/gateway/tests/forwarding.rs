//! No sticky sessions: any node serves any Engine.IO session's requests, by handing them
//! to the node that holds the session. Three nodes on a real Redis, driven with raw
//! Engine.IO requests as a round-robin balancer would send them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use testkit::{RedisServer, TestNode, spawn_redis_cluster, token};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

fn polling_url(node: &TestNode, sid: Option<&str>) -> String {
    match sid {
        Some(sid) => format!(
            "{}/socket.io/?EIO=4&transport=polling&sid={sid}",
            node.url()
        ),
        None => format!("{}/socket.io/?EIO=4&transport=polling", node.url()),
    }
}

/// A polling handshake on `node`: the session id.
async fn handshake(node: &TestNode) -> String {
    let body = reqwest::get(polling_url(node, None))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open: Value =
        serde_json::from_str(body.strip_prefix('0').expect("an open packet")).unwrap();
    open["sid"].as_str().unwrap().to_owned()
}

async fn post(node: &TestNode, sid: &str, packet: &str) -> (u16, String) {
    let res = reqwest::Client::new()
        .post(polling_url(node, Some(sid)))
        .body(packet.to_owned())
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// Long-polls `node` for `sid` until a packet starting with `prefix` arrives; answers
/// Engine.IO pings on the way. Every packet received before it is returned too.
async fn poll_until(node: &TestNode, sid: &str, prefix: &str) -> Vec<String> {
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let res = reqwest::get(polling_url(node, Some(sid))).await.unwrap();
            assert_eq!(res.status(), 200, "poll on {}", node.url());
            let body = res.text().await.unwrap();
            for packet in body.split('\u{1e}') {
                seen.push(packet.to_owned());
                if packet == "2" {
                    post(node, sid, "3").await;
                }
                if packet.starts_with(prefix) {
                    return;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no packet {prefix:?} within {WAIT:?}; saw {seen:?}"));
    seen
}

fn auth(user: &str) -> String {
    json!({"token": token(json!({"sub": user, "rooms": ["room:*"]}))}).to_string()
}

#[tokio::test]
async fn a_polling_session_is_served_whichever_node_each_request_reaches() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(3, &redis.url(), |_, _| {})
        .await
        .unwrap();

    // Handshake on node 0; every later request on another node, round robin.
    let sid = handshake(&nodes[0]).await;
    assert_eq!(
        post(&nodes[1], &sid, &format!("40{}", auth("ann"))).await,
        (200, "ok".into())
    );
    let seen = poll_until(&nodes[2], &sid, "42[\"connected\"").await;
    assert!(
        seen.iter().any(|p| p.starts_with("40{")),
        "namespace connect: {seen:?}"
    );

    // A client emit with an ack, through node 1; its ack read through node 2.
    assert_eq!(
        post(&nodes[1], &sid, r#"421["join","room:lobby"]"#).await.0,
        200
    );
    let seen = poll_until(&nodes[2], &sid, "431").await;
    assert!(seen.last().unwrap().contains(r#""ok":true"#), "{seen:?}");

    // A publish from node 2 reaches the session (held by node 0), read through node 1.
    nodes[2]
        .publish_accepted(json!({"event": "news", "to": ["room:lobby"], "data": {"n": 1}}))
        .await
        .unwrap();
    let seen = poll_until(&nodes[1], &sid, "42[\"news\"").await;
    assert!(seen.last().unwrap().contains(r#"{"n":1}"#), "{seen:?}");

    // The owner counted the handed-on requests as accepted, the others as handed on.
    let owner = nodes[0].metrics().await.unwrap();
    assert!(
        testkit::metric_sum(
            &owner,
            "roomcast_forwarded_received_total",
            &["result=\"accepted\""]
        ) >= 4.0,
        "{owner}"
    );
    for node in &nodes[1..] {
        let m = node.metrics().await.unwrap();
        assert!(
            testkit::metric_sum(
                &m,
                "roomcast_forwarded_requests_total",
                &["kind=\"polling\"", "result=\"ok\""]
            ) >= 2.0,
            "{m}"
        );
        assert!(
            m.contains("roomcast_forward_duration_seconds_bucket"),
            "{m}"
        );
    }
}

#[tokio::test]
async fn a_websocket_upgrade_on_another_node_joins_the_polling_session() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(2, &redis.url(), |_, _| {})
        .await
        .unwrap();

    let sid = handshake(&nodes[0]).await;
    assert_eq!(
        post(&nodes[0], &sid, &format!("40{}", auth("bob"))).await.0,
        200
    );
    poll_until(&nodes[0], &sid, "42[\"connected\"").await;
    assert_eq!(
        post(&nodes[0], &sid, r#"421["join","room:up"]"#).await.0,
        200
    );
    poll_until(&nodes[0], &sid, "431").await;

    // The client's long-poll is pending (through the other node) when it upgrades.
    let pending = tokio::spawn({
        let url = polling_url(&nodes[1], Some(&sid));
        async move {
            let t = std::time::Instant::now();
            let body = reqwest::get(url).await.unwrap().text().await.unwrap();
            (body, t.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The upgrade, as the official client makes it, through the other node.
    let url = format!(
        "{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
        nodes[1].url().replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    ws.send(Message::text("2probe")).await.unwrap();
    let probe = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(probe.to_text().unwrap(), "3probe");
    // Engine.IO ends the pending long-poll with a noop once the upgrade begins.
    let (body, took) = pending.await.unwrap();
    assert_eq!(body, "6", "pending poll answered after {took:?}");
    ws.send(Message::text("5")).await.unwrap();

    // Events now arrive over the tunnelled WebSocket, and acks work both ways.
    nodes[1]
        .publish_accepted(json!({"event": "after-upgrade", "to": ["room:up"], "data": 7}))
        .await
        .unwrap();
    ws.send(Message::text(r#"422["join","room:up2"]"#))
        .await
        .unwrap();
    let mut got_event = false;
    let mut got_ack = false;
    tokio::time::timeout(WAIT, async {
        while !(got_event && got_ack) {
            let msg = ws.next().await.unwrap().unwrap();
            let text = msg.to_text().unwrap_or_default();
            got_event |= text.starts_with(r#"42["after-upgrade",7]"#);
            got_ack |= text.starts_with("432") && text.contains(r#""ok":true"#);
        }
    })
    .await
    .expect("event and ack over the tunnel");
    let m = nodes[1].metrics().await.unwrap();
    assert_eq!(
        testkit::metric_sum(
            &m,
            "roomcast_forwarded_requests_total",
            &["kind=\"websocket\"", "result=\"ok\""]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn forged_sessions_and_credentials_are_refused_and_a_gone_owner_means_reconnect() {
    let redis = RedisServer::start().unwrap();
    let mut nodes = spawn_redis_cluster(2, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let sid = handshake(&nodes[0]).await;

    // A session id shaped right, with a tag no node holds: unknown, like any bad id.
    let other = if sid.starts_with("zzzz") {
        "yyyy"
    } else {
        "zzzz"
    };
    let forged = format!("{other}{}", &sid[4..]);
    for node in &nodes {
        let res = reqwest::get(polling_url(node, Some(&forged)))
            .await
            .unwrap();
        assert_eq!(res.status(), 400);
        assert!(res.text().await.unwrap().contains("Session ID unknown"));
    }

    // Node credentials that are not the cluster's, on a real session: refused.
    let client = reqwest::Client::new();
    let tag = gateway::SidTag::of_sid(&sid).unwrap();
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let wrong_key = gateway::NodeKey::new(b"not-this-cluster-secret-but-32-bytes!");
    let wrong = wrong_key.sign(tag, envelope::now_ms(), &reqwest::Method::GET, &path);
    for header in [wrong.to_str().unwrap().to_owned(), "1.abcd.00".to_owned()] {
        let res = client
            .get(polling_url(&nodes[0], Some(&sid)))
            .header(gateway::FORWARDED_HEADER, header)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403);
    }
    // The right key, but made long ago (a replay): refused too.
    let key = gateway::NodeKey::derived(testkit::TEST_KEY);
    let old = envelope::now_ms() - 2 * gateway::MAX_SKEW.as_millis() as u64;
    let res = client
        .get(polling_url(&nodes[0], Some(&sid)))
        .header(
            gateway::FORWARDED_HEADER,
            key.sign(tag, old, &reqwest::Method::GET, &path),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let m = nodes[0].metrics().await.unwrap();
    assert_eq!(
        testkit::metric_sum(
            &m,
            "roomcast_forwarded_received_total",
            &["result=\"refused\""]
        ),
        3.0,
        "{m}"
    );

    // The owner crashes (its registry record outlives it): the session is unknown on
    // the other node, so the client starts a new one at once.
    let gone = |m: &str| {
        testkit::metric_sum(
            m,
            "roomcast_forwarded_requests_total",
            &["kind=\"polling\"", "result=\"owner_gone\""],
        )
    };
    let before = gone(&nodes[1].metrics().await.unwrap());
    nodes[0].crash();
    let res = reqwest::get(polling_url(&nodes[1], Some(&sid)))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("Session ID unknown"));
    let m = nodes[1].metrics().await.unwrap();
    assert_eq!(gone(&m), before + 1.0, "{m}");
    let fresh = handshake(&nodes[1]).await;
    assert_eq!(
        post(&nodes[1], &fresh, &format!("40{}", auth("cat")))
            .await
            .0,
        200
    );
    poll_until(&nodes[1], &fresh, "42[\"connected\"").await;
}
