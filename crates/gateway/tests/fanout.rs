//! Fan-out through the write path: 1000 broadcasts to one room of 2000 sockets on one
//! node — WebSocket readers, slow WebSocket readers (they stop reading while the
//! broadcasts pour in, then read in small sips) and long-polling readers — and every
//! reading socket gets every message, in order. In its own test binary: it moves two
//! million deliveries, which would starve the timing bounds of the tests beside it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use testkit::{TestNode, spawn_memory_cluster, token};

const ROOM: &str = "room:fanout";
const BROADCASTS: u64 = 1000;
const FAST: usize = 1900;
const SLOW: usize = 50;
const POLLING: usize = 50;
/// Slow readers start reading once this many broadcasts were published.
const SLOW_START: u64 = 300;

fn auth(user: &str) -> Value {
    json!({"token": token(json!({"sub": user, "tenant_id": "acme", "rooms": ["room:*"]}))})
}

/// A long-polling Socket.IO client: joins the room, then polls until it has seen every
/// broadcast, answering pings.
struct Poller {
    http: reqwest::Client,
    session: String,
}

impl Poller {
    async fn join(base: &str, user: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::new();
        let url = format!("{base}/socket.io/?EIO=4&transport=polling");
        let open = http.get(&url).send().await?.text().await?;
        let open: Value = serde_json::from_str(open.strip_prefix('0').context("open packet")?)?;
        let sid = open["sid"].as_str().context("sid")?;
        let poller = Self {
            http,
            session: format!("{url}&sid={sid}"),
        };
        poller.post(format!("40{}", auth(user))).await?;
        // The namespace's connect first (a packet before it closes the session), then
        // the join and its ack.
        loop {
            let packets = poller.poll().await?;
            if let Some(refused) = packets.iter().find(|p| p.starts_with("44")) {
                bail!("connect refused: {refused}");
            }
            if packets.iter().any(|p| p.starts_with("40{")) {
                break;
            }
        }
        poller.post(format!("420[\"join\",\"{ROOM}\"]")).await?;
        loop {
            for packet in poller.poll().await? {
                if let Some(ack) = packet.strip_prefix("430") {
                    ensure!(ack.contains("\"ok\":true"), "join refused: {ack}");
                    return Ok(poller);
                }
            }
        }
    }

    async fn post(&self, body: String) -> anyhow::Result<()> {
        let res = self.http.post(&self.session).body(body).send().await?;
        let status = res.status();
        ensure!(status.is_success(), "POST: {status} {}", res.text().await?);
        Ok(())
    }

    /// One poll's packets; a ping is answered on the way.
    async fn poll(&self) -> anyhow::Result<Vec<String>> {
        let res = self.http.get(&self.session).send().await?;
        let status = res.status();
        let body = res.text().await?;
        ensure!(status.is_success(), "poll: {status} {body}");
        let mut packets = Vec::new();
        for packet in body.split('\u{1e}') {
            match packet {
                "2" => self.post("3".into()).await?,
                "1" => bail!("closed by the server"),
                p => packets.push(p.to_owned()),
            }
        }
        Ok(packets)
    }

    /// Polls until every broadcast arrived; fails on one missing or out of order.
    async fn read_all(self) -> anyhow::Result<()> {
        let mut next = 0;
        while next < BROADCASTS {
            for packet in self.poll().await? {
                let Some(event) = packet.strip_prefix("42") else {
                    continue;
                };
                let event: Value = serde_json::from_str(event)?;
                if event[0] == "tick" {
                    ensure!(
                        event[1]["seq"] == next,
                        "got {} where {next} was due",
                        event[1]
                    );
                    next += 1;
                }
            }
        }
        Ok(())
    }
}

/// The next `tick`, waiting (and answering pings) until `until` for the first one: the
/// broadcasts start only once all 2000 sockets are in, which takes a while on a slow run.
async fn next_tick(
    client: &mut testkit::SioClient,
    until: tokio::time::Instant,
) -> anyhow::Result<Value> {
    loop {
        match client.expect_arg("tick").await {
            Err(e)
                if format!("{e:#}").contains("timed out")
                    && tokio::time::Instant::now() < until => {}
            other => return other,
        }
    }
}

/// Reads every broadcast on a WebSocket client; a slow one first stops reading until
/// `published` reaches [`SLOW_START`] (the broadcasts pile up in its buffers meanwhile),
/// then reads with a pause every 50. The stall is bounded (10 s): a client that does
/// not read for the heartbeat's 45 s is rightly closed as dead.
async fn read_ws(
    mut client: testkit::SioClient,
    mut published: Option<tokio::sync::watch::Receiver<u64>>,
) -> anyhow::Result<()> {
    if let Some(published) = &mut published {
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            published.wait_for(|n| *n >= SLOW_START),
        )
        .await;
    }
    let first_by = tokio::time::Instant::now() + Duration::from_secs(180);
    for seq in 0..BROADCASTS {
        let tick = if seq == 0 {
            next_tick(&mut client, first_by).await?
        } else {
            client.expect_arg("tick").await?
        };
        ensure!(
            tick["seq"] == seq,
            "got {} where {seq} was due",
            tick["seq"]
        );
        if published.is_some() && seq % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_broadcasts_reach_two_thousand_sockets_fast_slow_and_polling_in_order() {
    let (_hub, mut nodes) = spawn_memory_cluster(1, |_, c| {
        // Room for the slow readers' backlog, so they are slow and not disconnected.
        c.socket_buffer_bytes = 4 << 20;
        c.socket_buffer = 4096;
    })
    .await
    .unwrap();
    let node: TestNode = nodes.remove(0);
    let base = node.url();

    let (published_tx, published) = tokio::sync::watch::channel(0u64);
    let mut readers = Vec::new();
    for i in 0..FAST + SLOW {
        let mut client = node.client(auth(&format!("user-{i}"))).await.unwrap();
        assert_eq!(client.join(ROOM).await.unwrap()["ok"], true);
        let slow = (i >= FAST).then(|| published.clone());
        readers.push(("websocket", tokio::spawn(read_ws(client, slow))));
    }
    for i in 0..POLLING {
        let poller = tokio::time::timeout(
            Duration::from_secs(30),
            Poller::join(&base, &format!("poller-{i}")),
        )
        .await
        .expect("a long-polling client joins within 30 s")
        .unwrap();
        readers.push(("polling", tokio::spawn(poller.read_all())));
    }
    let health = node.health().await.unwrap();
    assert_eq!(
        health["connections"],
        (FAST + SLOW + POLLING) as u64,
        "every socket is connected: {health}"
    );

    for seq in 0..BROADCASTS {
        node.publish_accepted(json!({
            "tenant": "acme", "event": "tick", "to": [ROOM], "data": {"seq": seq},
        }))
        .await
        .unwrap();
        published_tx.send_replace(seq + 1);
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let mut failures = Vec::new();
    for (i, (transport, reader)) in readers.into_iter().enumerate() {
        match tokio::time::timeout_at(deadline, reader).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => failures.push(format!("{transport} reader {i}: {e:#}")),
            Ok(Err(e)) => failures.push(format!("{transport} reader {i} panicked: {e}")),
            Err(_) => failures.push(format!("{transport} reader {i}: not done within 240 s")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} readers missed messages: {:?}",
        failures.len(),
        FAST + SLOW + POLLING,
        &failures[..failures.len().min(10)]
    );
}
