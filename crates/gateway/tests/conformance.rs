//! Protocol conformance, from the Engine.IO v4 and Socket.IO v5 protocol documents
//! (github.com/socketio/engine.io-protocol, github.com/socketio/socket.io-protocol),
//! speaking raw frames: the handshake, heartbeats, the upgrade, every packet type, and
//! malformed input — which harms only the connection that sent it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use testkit::{SioClient, TestNode, spawn_memory_cluster, token};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Generous upper bound for anything the server should do "now".
const WAIT: Duration = Duration::from_secs(5);

/// Heartbeat settings of the node under test: short, so timing cases run quickly.
const PING_INTERVAL: Duration = Duration::from_millis(300);
const PING_TIMEOUT: Duration = Duration::from_millis(200);
const MAX_PAYLOAD: usize = 16 * 1024;

/// A node with the default heartbeat: the test clients answer pings only while they
/// read, so an idle bystander would miss a 300 ms one.
async fn node() -> TestNode {
    node_with(|_| {}).await
}

/// A node with a short heartbeat, for the cases about the heartbeat itself.
async fn fast_ping_node() -> TestNode {
    node_with(|c| {
        c.ping_interval = PING_INTERVAL;
        c.ping_timeout = PING_TIMEOUT;
    })
    .await
}

async fn node_with(configure: impl Fn(&mut gateway::Config)) -> TestNode {
    let (_hub, mut nodes) = spawn_memory_cluster(1, |_, c| {
        configure(c);
        c.max_payload = MAX_PAYLOAD;
        c.namespaces = vec!["/".into(), "/billing".into()];
    })
    .await
    .unwrap();
    nodes.remove(0)
}

fn ann_token() -> String {
    token(json!({"sub": "ann", "tenant_id": "acme", "rooms": ["room:*"]}))
}

/// A raw Engine.IO WebSocket connection.
struct Raw {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Answer the server's pings automatically.
    pong: bool,
}

enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Closed,
}

impl Raw {
    async fn open(node: &TestNode, query: &str) -> Self {
        let url = format!(
            "ws://{}/socket.io/?EIO=4&transport=websocket{query}",
            node.addr
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Self { ws, pong: true }
    }

    /// Opens a connection and reads the Engine.IO open packet.
    async fn handshake(node: &TestNode) -> (Self, Value) {
        let mut raw = Self::open(node, "").await;
        let open = raw.text().await;
        let body = open.strip_prefix('0').expect("an open packet");
        (raw, serde_json::from_str(body).unwrap())
    }

    /// Handshake plus a Socket.IO connect to `/` with a valid token.
    async fn connected(node: &TestNode) -> Self {
        let (mut raw, _) = Self::handshake(node).await;
        raw.send(&format!(r#"40{{"token":"{}"}}"#, ann_token()))
            .await;
        assert!(raw.text().await.starts_with("40{\"sid\":"));
        assert!(raw.text().await.starts_with("42[\"connected\""));
        raw
    }

    async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    async fn frame(&mut self) -> Frame {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = timeout(left, self.ws.next())
                .await
                .expect("the server answers within 5 s");
            match next {
                Some(Ok(Message::Text(t))) if self.pong && t.as_str() == "2" => {
                    self.send("3").await;
                }
                Some(Ok(Message::Text(t))) => return Frame::Text(t.as_str().to_owned()),
                Some(Ok(Message::Binary(b))) => return Frame::Binary(b.to_vec()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Frame::Closed,
                Some(Ok(_)) => {}
            }
        }
    }

    async fn text(&mut self) -> String {
        match self.frame().await {
            Frame::Text(t) => t,
            Frame::Binary(b) => panic!("expected text, got {} binary bytes", b.len()),
            Frame::Closed => panic!("expected text, the connection closed"),
        }
    }

    /// True when the server closes the connection (skipping other frames) within 5 s.
    async fn closes(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.ws.next()).await {
                Err(_) => return false,
                Ok(Some(Ok(Message::Close(_))) | None | Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// A well-behaved client that must keep working whatever its neighbours send.
async fn bystander(node: &TestNode) -> SioClient {
    node.client(json!({"token": token(json!({"sub": "bob", "tenant_id": "acme"}))}))
        .await
        .unwrap()
}

async fn still_served(node: &TestNode, bystander: &mut SioClient, n: u64) {
    node.publish_accepted(
        json!({"tenant": "acme", "event": "still-here", "to": ["user:bob"], "data": n}),
    )
    .await
    .unwrap();
    assert_eq!(bystander.expect_arg("still-here").await.unwrap(), n);
}

#[tokio::test]
async fn open_packet_carries_the_handshake_fields() {
    let node = fast_ping_node().await;
    let (_ws, open) = Raw::handshake(&node).await;
    assert!(open["sid"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(
        open["upgrades"],
        json!([]),
        "nothing to upgrade to from websocket"
    );
    assert_eq!(open["pingInterval"], PING_INTERVAL.as_millis() as u64);
    assert_eq!(open["pingTimeout"], PING_TIMEOUT.as_millis() as u64);
    assert_eq!(open["maxPayload"], MAX_PAYLOAD as u64);

    let polling = format!("{}/socket.io/?EIO=4&transport=polling", node.url());
    let body = reqwest::get(&polling).await.unwrap().text().await.unwrap();
    let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(open["upgrades"], json!(["websocket"]));
    assert_eq!(open["maxPayload"], MAX_PAYLOAD as u64);
}

#[tokio::test]
async fn bad_handshakes_get_http_400() {
    let node = node().await;
    for query in [
        "EIO=3&transport=polling&sid=",
        "EIO=4&transport=carrier-pigeon",
        "EIO=4&transport=polling&sid=no-such-session",
    ] {
        let res = reqwest::get(format!("{}/socket.io/?{query}", node.url()))
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{query}");
    }
}

#[tokio::test]
async fn heartbeat_pings_and_a_silent_client_is_closed() {
    let node = fast_ping_node().await;
    let (mut ws, _) = Raw::handshake(&node).await;
    ws.pong = false;
    // The server pings every pingInterval (engineioxide's queued transport also pings
    // once right after the open packet).
    assert_eq!(ws.text().await, "2");
    ws.send("3").await;
    let started = Instant::now();
    assert_eq!(ws.text().await, "2");
    assert!(
        started.elapsed() < PING_INTERVAL * 3,
        "next ping on schedule"
    );
    // No pong this time: closed after pingInterval + pingTimeout.
    let started = Instant::now();
    assert!(ws.closes().await, "a client that stops answering is closed");
    assert!(started.elapsed() < (PING_INTERVAL + PING_TIMEOUT) * 3);
}

#[tokio::test]
async fn polling_session_upgrades_to_websocket() {
    let node = node().await;
    let base = format!("{}/socket.io/?EIO=4&transport=polling", node.url());
    let http = reqwest::Client::new();
    let body = http.get(&base).send().await.unwrap().text().await.unwrap();
    let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
    let sid = open["sid"].as_str().unwrap().to_owned();
    let session = format!("{base}&sid={sid}");
    let auth = format!(r#"40{{"token":"{}"}}"#, ann_token());
    assert_eq!(
        http.post(&session)
            .body(auth)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    let polled = http
        .get(&session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(polled.contains("40{\"sid\":"), "{polled}");

    let mut ws = Raw::open(&node, &format!("&sid={sid}")).await;
    ws.send("2probe").await;
    assert_eq!(ws.text().await, "3probe");
    ws.send("5").await;
    // After the upgrade, traffic flows on the WebSocket.
    ws.send(r#"421["join","room:upgraded"]"#).await;
    loop {
        let t = ws.text().await;
        if t.starts_with("431") {
            assert_eq!(t, r#"431[{"ok":true,"room":"room:upgraded"}]"#);
            break;
        }
    }
}

#[tokio::test]
async fn every_socket_io_packet_type() {
    let node = node().await;
    let (mut ws, _) = Raw::handshake(&node).await;
    // CONNECT with a bad token: CONNECT_ERROR with a message.
    ws.send(r#"40{"token":"not-a-jwt"}"#).await;
    let refused = ws.text().await;
    assert!(refused.starts_with("44{\"message\":"), "{refused}");
    // CONNECT to a namespace the server does not have: CONNECT_ERROR for it.
    ws.send(&format!(r#"40/nope,{{"token":"{}"}}"#, ann_token()))
        .await;
    assert_eq!(
        ws.text().await,
        r#"44/nope,{"message":"Invalid namespace"}"#
    );
    // CONNECT to `/` and to `/billing` on the same Engine.IO connection.
    ws.send(&format!(r#"40{{"token":"{}"}}"#, ann_token()))
        .await;
    assert!(ws.text().await.starts_with("40{\"sid\":"));
    assert!(ws.text().await.starts_with("42[\"connected\""));
    ws.send(&format!(r#"40/billing,{{"token":"{}"}}"#, ann_token()))
        .await;
    assert!(ws.text().await.starts_with("40/billing,{\"sid\":"));
    assert!(ws.text().await.starts_with("42/billing,[\"connected\""));
    // EVENT with an ack id: ACK with the same id.
    ws.send(r#"427["join","room:a"]"#).await;
    assert_eq!(ws.text().await, r#"437[{"ok":true,"room":"room:a"}]"#);
    ws.send(r#"42/billing,8["join","room:b"]"#).await;
    assert_eq!(
        ws.text().await,
        r#"43/billing,8[{"ok":true,"room":"room:b"}]"#
    );
    // BINARY_EVENT (one attachment) with an ack id: answered, as a join of a non-string.
    ws.send(r#"451-9["join",{"_placeholder":true,"num":0}]"#)
        .await;
    ws.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let answer = ws.text().await;
    assert!(answer.starts_with(r#"439[{"error":"#), "{answer}");
    assert!(answer.contains(r#""ok":false"#), "{answer}");
    // Server EVENT to a joined room, and the server's binary EVENT: text then binary.
    node.publish_accepted(json!({
        "tenant": "acme",
        "event": "blob", "to": ["room:a"],
        "data": {"bytes": {"_placeholder": true, "num": 0}}, "attachments": ["AAEC"],
    }))
    .await
    .unwrap();
    assert_eq!(
        ws.text().await,
        r#"451-["blob",{"bytes":{"_placeholder":true,"num":0}}]"#
    );
    assert!(matches!(ws.frame().await, Frame::Binary(b) if b == [0, 1, 2]));
    // DISCONNECT from `/billing` only: `/` keeps working on the same connection.
    ws.send("41/billing,").await;
    ws.send(r#"421["leave","room:a"]"#).await;
    assert_eq!(ws.text().await, r#"431[{"ok":true,"room":"room:a"}]"#);
    // Engine.IO CLOSE from the client ends the connection.
    ws.send("1").await;
    assert!(ws.closes().await);
}

#[tokio::test]
async fn malformed_packets_close_only_their_own_connection() {
    let node = node().await;
    let mut bob = bystander(&node).await;
    let cases: [(&str, String); 5] = [
        ("unknown Engine.IO packet type", "9".into()),
        ("unknown Socket.IO packet type", "49".into()),
        ("truncated JSON", r#"42["join""#.into()),
        (
            "event arguments that are not an array",
            r#"42{"join":1}"#.into(),
        ),
        (
            "oversize message",
            format!(r#"42["join","{}"]"#, "x".repeat(MAX_PAYLOAD + 1)),
        ),
    ];
    for (n, (what, packet)) in cases.into_iter().enumerate() {
        let mut bad = Raw::connected(&node).await;
        bad.send(&packet).await;
        assert!(bad.closes().await, "{what}: the sender is disconnected");
        still_served(&node, &mut bob, n as u64).await;
    }
}

/// As the reference server does (socket.io's `Client`: "invalid state", then close).
#[tokio::test]
async fn a_packet_for_a_namespace_not_connected_closes_that_connection() {
    let node = node().await;
    let mut bob = bystander(&node).await;
    let mut ws = Raw::connected(&node).await;
    ws.send(r#"42/billing,5["join","room:x"]"#).await;
    assert!(ws.closes().await);
    still_served(&node, &mut bob, 1).await;
}
