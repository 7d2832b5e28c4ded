//! `cargo xtask abuse`: attacks against Redis + 2 real `gateway` processes (production
//! mode), one report row per attack with the nodes' memory and a victim's latency.
//!
//! A victim socket on node B receives a probe published on node A every 50 ms throughout;
//! its latency while each attack runs is the row's victim figure. The suite fails when a
//! bound breaks — memory, a refusal without a reason, a hostile connection left open, a
//! message lost for a reading client, a caller left without an answer. Latencies are
//! reported, not asserted (timing goals belong in reports).

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use testkit::{RedisServer, SioClient, TEST_KEY, TEST_SECRET, publish, token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// One gateway process.
struct Node {
    id: String,
    port: u16,
    child: Child,
}

impl Node {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the run leaves its logs.
fn out_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned());
    PathBuf::from(target).join("abuse")
}

async fn start_node(i: usize, redis_url: &str, prefix: &str) -> anyhow::Result<Node> {
    let binary = std::env::current_exe()?
        .parent()
        .context("the runner's directory")?
        .join("gateway");
    let port = testkit::free_port()?;
    let id = format!("abuse-{i}");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(out_dir().join(format!("{id}.log")))?;
    let child = Command::new(&binary)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GATEWAY_MODE", "production")
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("GATEWAY_NODE_ID", &id)
        .env("REDIS_URL", redis_url)
        .env("REDIS_CHANNEL_PREFIX", prefix)
        .env("JWT_SECRET", TEST_SECRET)
        .env("PUBLISH_API_KEY", TEST_KEY)
        .env("CONNECT_TIMEOUT_MS", "2000")
        .env("HTTP_HEADER_TIMEOUT_MS", "2000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let node = Node { id, port, child };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("{}/health/ready", node.url()))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        ensure!(Instant::now() < deadline, "{} not ready in 30 s", node.id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(node)
}

/// Latency samples of the victim, in ms.
#[derive(Clone, Default)]
struct Samples(Arc<Mutex<Vec<f64>>>);

impl Samples {
    fn take(&self) -> Vec<f64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn p95(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort_by(f64::total_cmp);
    let p = v[(v.len() * 95 / 100).min(v.len() - 1)];
    format!("p95 {p:.1} ms ({} samples)", v.len())
}

fn auth(user: &str, tenant: &str, rooms: Value) -> Value {
    json!({"token": token(json!({"sub": user, "tenant_id": tenant, "rooms": rooms}))})
}

/// The victim: a socket on node B receiving a probe published on node A every 50 ms.
async fn victim(a: &Node, b: &Node) -> anyhow::Result<(Samples, tokio::task::JoinHandle<()>)> {
    let mut client = SioClient::connect(&b.url(), "/", Some(auth("victim", "acme", json!([]))))
        .await
        .map_err(|e| anyhow::anyhow!("victim: {e}"))?;
    client.expect("connected").await?;
    let samples = Samples::default();
    let url = a.url();
    let recorder = samples.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            let body = json!({"tenant": "acme", "event": "probe", "to": ["user:victim"], "data": now_us()});
            // During the Redis attack the probe may fail: that is the row's subject.
            let _ = publish(&url, TEST_KEY, &body.to_string()).await;
            while let Ok(Ok(v)) =
                tokio::time::timeout(Duration::from_millis(1), client.expect_arg("probe")).await
            {
                if let Some(t) = v.as_u64() {
                    let ms = now_us().saturating_sub(t) as f64 / 1000.0;
                    recorder
                        .0
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(ms);
                }
            }
        }
    });
    Ok((samples, task))
}

struct Row {
    attack: &'static str,
    outcome: String,
    rss: String,
    victim: String,
    ok: bool,
}

async fn wildcard_joins(
    a: &Node,
    redis: &RedisServer,
    prefix: &str,
) -> anyhow::Result<(String, bool)> {
    let mut c = SioClient::connect(&a.url(), "/", Some(auth("mallory", "evil", json!(["*"]))))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    c.expect("connected").await?;
    let (mut ok, mut refused, mut reasons) = (0, 0, std::collections::BTreeSet::new());
    let pattern = format!("{prefix}:room:*@evil/*");
    let mut peak = 0;
    'outer: for chunk in 0..30 {
        let joins: Vec<(&str, Vec<Value>)> = (0..100)
            .map(|i| ("join", vec![json!(format!("room:{}", chunk * 100 + i))]))
            .collect();
        let Ok(ids) = c.emit_batch(&joins).await else {
            break;
        };
        for id in ids {
            match c.wait_ack(id).await {
                Ok(ack) if ack[0]["ok"] == true => ok += 1,
                Ok(ack) => {
                    refused += 1;
                    let reason = ack[0]["error"].as_str().unwrap_or("NO REASON").to_owned();
                    reasons.insert(reason.split(':').next().unwrap_or("").to_owned());
                }
                Err(_) => break 'outer,
            }
        }
        peak = peak.max(redis.pubsub_channels(&pattern)?.len());
    }
    let disconnected = c.expect_arg("disconnect_reason").await.ok();
    let bounded = peak <= 128 && !reasons.contains("NO REASON");
    Ok((
        format!(
            "{ok} joined, {refused} refused ({}); the node subscribed at most {peak} of its channels (cap 128); {}",
            reasons.into_iter().collect::<Vec<_>>().join("; "),
            match disconnected {
                Some(r) => format!("then disconnected ({})", r["reason"].as_str().unwrap_or("")),
                None => "not disconnected".into(),
            }
        ),
        bounded,
    ))
}

async fn flood(b: &Node) -> anyhow::Result<(String, bool)> {
    let mut c = SioClient::connect(&b.url(), "/", Some(auth("flooder", "evil", json!([]))))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    c.expect("connected").await?;
    let started = Instant::now();
    let mut sent = 0u64;
    // Up to 50 000 events per second for at most 5 s, until the node hangs up.
    while started.elapsed() < Duration::from_secs(5) {
        let batch: Vec<(&str, Vec<Value>)> = (0..500).map(|_| ("typing", vec![json!(1)])).collect();
        if c.emit_batch(&batch).await.is_err() {
            break;
        }
        sent += 500;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = sent as f64 / started.elapsed().as_secs_f64();
    // The reason event may not reach a client the node hangs up on while it is still
    // writing (its unread data makes the close a TCP reset); the node's counter says it.
    let reason =
        tokio::time::timeout(Duration::from_secs(5), c.expect_arg("disconnect_reason")).await;
    let told = match reason {
        Ok(Ok(r)) => format!("told {:?}", r["reason"].as_str().unwrap_or("")),
        _ => "reason lost in the reset".to_owned(),
    };
    let counted = counter(b, "roomcast_rate_limit_disconnects_total").await?;
    Ok((
        format!(
            "sent {sent} events ({rate:.0}/s); disconnected for rate_limited ({told}; node counted {counted})"
        ),
        counted >= 1,
    ))
}

/// A counter of `node`'s `/metrics` (0 when absent).
async fn counter(node: &Node, name: &str) -> anyhow::Result<u64> {
    let metrics = reqwest::get(format!("{}/metrics", node.url()))
        .await?
        .text()
        .await?;
    Ok(metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0))
}

/// 8 sockets (4 per node) join a room and stop reading while 100 MiB is published to it;
/// a socket on node B reads it all.
async fn slow_readers(a: &Node, b: &Node) -> anyhow::Result<(String, bool)> {
    const N: u64 = 1600;
    const PAD: usize = 64 * 1024;
    let mut stalled = Vec::new();
    for i in 0..8 {
        let node = if i % 2 == 0 { a } else { b };
        let mut c = SioClient::connect(
            &node.url(),
            "/",
            Some(auth(&format!("stalled{i}"), "acme", json!(["room:*"]))),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        c.expect("connected").await?;
        ensure!(c.join("room:firehose").await?["ok"] == true, "join refused");
        stalled.push(c);
    }
    let mut reader = SioClient::connect(
        &b.url(),
        "/",
        Some(auth("reader", "acme", json!(["room:*"]))),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    reader.expect("connected").await?;
    ensure!(
        reader.join("room:firehose").await?["ok"] == true,
        "join refused"
    );
    let reading = tokio::spawn(async move {
        for seq in 0..N {
            let got = reader.expect_arg("chunk").await?;
            ensure!(
                got["seq"] == seq,
                "the reader got {} where {seq} was due",
                got["seq"]
            );
        }
        anyhow::Ok(())
    });
    let before = counter(a, "roomcast_slow_consumer_disconnects_total").await?
        + counter(b, "roomcast_slow_consumer_disconnects_total").await?;
    let pad = "x".repeat(PAD);
    let started = Instant::now();
    for seq in 0..N {
        let body = json!({"tenant": "acme", "event": "chunk", "to": ["room:firehose"], "data": {"seq": seq, "pad": pad}});
        let (status, answer) = publish(&a.url(), TEST_KEY, &body.to_string()).await?;
        ensure!(status == 202, "publish {seq}: {status} {answer}");
    }
    let sent = started.elapsed();
    let read = tokio::time::timeout(Duration::from_secs(60), reading).await;
    let reader_ok = matches!(read, Ok(Ok(Ok(()))));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut dropped = 0;
    while Instant::now() < deadline {
        dropped = counter(a, "roomcast_slow_consumer_disconnects_total").await?
            + counter(b, "roomcast_slow_consumer_disconnects_total").await?
            - before;
        if dropped >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stalled);
    Ok((
        format!(
            "{} MiB to the room in {:.1}s; {dropped} of 8 stalled sockets disconnected as slow consumers; the reader got {}",
            (N as usize * PAD) >> 20,
            sent.as_secs_f64(),
            match read {
                Ok(Ok(Ok(()))) => format!("all {N} in order"),
                Ok(Ok(Err(e))) => format!("a gap: {e:#}"),
                Ok(Err(e)) => format!("nothing: {e}"),
                Err(_) => "not everything within 60 s".to_owned(),
            }
        ),
        reader_ok && dropped >= 8,
    ))
}

async fn unauthenticated_binary(a: &Node) -> anyhow::Result<(String, bool)> {
    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
        a.port
    );
    let started = Instant::now();
    let closed = join_all((0..200).map(|_| {
        let url = url.clone();
        async move {
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
                return true;
            };
            let _ = ws.next().await;
            // Binary events for a namespace never connected: 10 × 64 KiB each.
            for _ in 0..10 {
                let head =
                    Message::Text("451-[\"upload\",{\"_placeholder\":true,\"num\":0}]".into());
                if ws.send(head).await.is_err()
                    || ws
                        .send(Message::Binary(vec![7u8; 65_536].into()))
                        .await
                        .is_err()
                {
                    break;
                }
            }
            tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await
            .is_ok()
        }
    }))
    .await;
    Ok(closed_by_the_node(
        "200 sessions sent 640 KiB each without authenticating",
        started,
        &closed,
    ))
}

/// The row of an attack whose connections the node must close: how fast, and whether
/// every one was.
fn closed_by_the_node(what: &str, started: Instant, closed: &[bool]) -> (String, bool) {
    let open = closed.iter().filter(|c| !**c).count();
    (
        format!(
            "{what}; closed by the node in {:.1}s, {open} left open",
            started.elapsed().as_secs_f64()
        ),
        open == 0,
    )
}

async fn slowloris(a: &Node) -> anyhow::Result<(String, bool)> {
    let started = Instant::now();
    let closed = join_all((0..2000).map(|_| async move {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", a.port)).await else {
            return true;
        };
        if s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-a: ")
            .await
            .is_err()
        {
            return true;
        }
        let mut buf = [0u8; 512];
        tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }))
    .await;
    Ok(closed_by_the_node(
        "2000 connections that never finish a request head",
        started,
        &closed,
    ))
}

async fn redis_paused(a: &Node, b: &Node, redis: &RedisServer) -> anyhow::Result<(String, bool)> {
    let pid = redis.pid().context("redis pid")?;
    let signal = |sig: &str| Command::new("kill").args([sig, &pid.to_string()]).status();
    signal("-STOP")?;
    let url = a.url();
    let started = Instant::now();
    let mut calls = Vec::new();
    // 500 publishes per second for 30 s.
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    while started.elapsed() < Duration::from_secs(30) {
        tick.tick().await;
        let url = url.clone();
        calls.push(tokio::spawn(async move {
            let sent = Instant::now();
            let body = json!({"tenant": "acme", "event": "paused", "to": ["room:none"]});
            let answer = tokio::time::timeout(
                Duration::from_secs(30),
                publish(&url, TEST_KEY, &body.to_string()),
            )
            .await;
            (
                answer.ok().and_then(Result::ok).map(|(s, _)| s),
                sent.elapsed(),
            )
        }));
    }
    let mut statuses = std::collections::BTreeMap::new();
    let mut unanswered = 0;
    let mut slowest = Duration::ZERO;
    for call in calls {
        let (status, took) = call.await?;
        slowest = slowest.max(took);
        match status {
            Some(s) => *statuses.entry(s).or_insert(0) += 1,
            None => unanswered += 1,
        }
    }
    signal("-CONT")?;
    // Delivery resumes: a publish is accepted again.
    let resumed = Instant::now();
    let deadline = resumed + Duration::from_secs(15);
    loop {
        let body = json!({"tenant": "acme", "event": "after", "to": ["room:none"]});
        if publish(&url, TEST_KEY, &body.to_string())
            .await
            .is_ok_and(|(s, _)| s == 202)
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "publishes never recovered after Redis resumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let published = resumed.elapsed();
    // Cross-node delivery resumes: both nodes' subscriber connections are back (each was
    // somewhere in its reconnect backoff when Redis resumed).
    let subscribed = loop {
        if counter(a, "roomcast_bus_subscriber_up").await? == 1
            && counter(b, "roomcast_bus_subscriber_up").await? == 1
        {
            break Some(resumed.elapsed());
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let only_answers = statuses.keys().all(|s| *s == 202 || *s == 503);
    Ok((
        format!(
            "Redis stopped 30 s under 500 publishes/s: answers {statuses:?}, {unanswered} unanswered, slowest {:.1}s; publishes back {:.1}s after resume, both nodes subscribed again {}",
            slowest.as_secs_f64(),
            published.as_secs_f64(),
            subscribed.map_or("never (15 s)".to_owned(), |t| format!(
                "after {:.1}s",
                t.as_secs_f64()
            )),
        ),
        unanswered == 0 && only_answers && subscribed.is_some(),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir())?;
    let redis = RedisServer::start()?;
    let prefix = format!("abuse{}", std::process::id());
    let a = start_node(0, &redis.url(), &prefix).await?;
    let b = start_node(1, &redis.url(), &prefix).await?;
    let (samples, probe) = victim(&a, &b).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = p95(samples.take());
    let mut rows = vec![Row {
        attack: "(no attack)",
        outcome: "baseline".into(),
        rss: format!("A {} KiB, B {} KiB", a.rss_kib(), b.rss_kib()),
        victim: baseline,
        ok: true,
    }];
    let attacks: [&'static str; 6] = [
        "3000 joins, one wildcard socket",
        "event flood, one socket",
        "200 unauthenticated binary sessions",
        "2000 slowloris connections",
        "Redis paused 30 s",
        "8 sockets stop reading, 100 MiB sent",
    ];
    for (i, attack) in attacks.into_iter().enumerate() {
        eprintln!("abuse: {attack} ...");
        let before = (a.rss_kib(), b.rss_kib());
        samples.take();
        let result = match i {
            0 => wildcard_joins(&a, &redis, &prefix).await,
            1 => flood(&b).await,
            2 => unauthenticated_binary(&a).await,
            3 => slowloris(&a).await,
            4 => redis_paused(&a, &b, &redis).await,
            _ => slow_readers(&a, &b).await,
        };
        let after = (a.rss_kib(), b.rss_kib());
        // Memory stays bounded: far less than the attacks send or hold open.
        let grew = after
            .0
            .saturating_sub(before.0)
            .max(after.1.saturating_sub(before.1));
        let (outcome, ok) = match result {
            // Far less than what the attacks send or hold open: 128 MiB, and for the
            // slow readers a third of the 100 MiB sent to them.
            Ok((outcome, ok)) => {
                let bound = if i == 5 { 32 * 1024 } else { 128 * 1024 };
                (outcome, ok && grew < bound)
            }
            Err(e) => (format!("error: {e:#}"), false),
        };
        rows.push(Row {
            attack,
            outcome,
            rss: format!(
                "A {}→{} KiB, B {}→{} KiB",
                before.0, after.0, before.1, after.1
            ),
            victim: p95(samples.take()),
            ok,
        });
    }
    probe.abort();
    println!(
        "\n{:<38} {:<6} {:<34} {:<26} outcome",
        "attack", "result", "node RSS", "victim latency"
    );
    println!("{}", "-".repeat(140));
    for r in &rows {
        println!(
            "{:<38} {:<6} {:<34} {:<26} {}",
            r.attack,
            if r.ok { "pass" } else { "FAIL" },
            r.rss,
            r.victim,
            r.outcome
        );
    }
    println!("\nnode logs: {}", out_dir().display());
    if rows.iter().any(|r| !r.ok) {
        bail!("a bound broke");
    }
    Ok(())
}
