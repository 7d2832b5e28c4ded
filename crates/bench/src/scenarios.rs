//! The measured scenarios.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;

use crate::conn::{self, Publisher};
use crate::recorder::{Latency, Recorder, now_us};
use crate::stacks::{Stack, cpu_ms, rss_kib};

/// One rate point.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Point {
    pub(crate) rate: u64,
    pub(crate) run: u32,
    pub(crate) sent: u64,
    pub(crate) achieved_rate: f64,
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) loss: u64,
    pub(crate) latency: Latency,
    /// Server CPU (all nodes) per delivery, microseconds.
    pub(crate) node_cpu_us_per_delivery: f64,
    /// CPU of each node and of Redis over the point, in % of one core.
    pub(crate) node_cpu_pct: Vec<f64>,
    pub(crate) redis_cpu_pct: f64,
    /// The load generator's own CPU, in % of one core: near 100 % × cores means it, not
    /// the servers, was the limit.
    pub(crate) generator_cpu_pct: f64,
    pub(crate) pass: bool,
}

/// Who sends the messages.
pub(crate) enum Sender {
    /// Socket clients emitting `publish` (the contract every stack implements).
    Sockets(Vec<Publisher>),
    /// Roomcast's publisher SDK straight into Redis.
    Sdk(publisher::Publisher),
    /// A process that publishes one message per line `ROOM POINT SEQ` on its stdin (a
    /// real python-socketio publisher, `bench/peers/python/emit.py`).
    Lines(tokio::sync::Mutex<tokio::process::ChildStdin>),
    /// The gateway's `POST /v1/publish` (tenant `bench`), round robin over the nodes.
    Http {
        client: reqwest::Client,
        urls: Vec<String>,
        key: String,
    },
}

impl Sender {
    /// `send` for the diagnostic probe.
    pub(crate) async fn send_probe(&self, room: &str, point: u64, seq: u64) -> anyhow::Result<()> {
        self.send(room, point, seq).await
    }

    async fn send(&self, room: &str, point: u64, seq: u64) -> anyhow::Result<()> {
        match self {
            Self::Sockets(pubs) => {
                pubs[(seq as usize) % pubs.len()]
                    .publish(room, point, seq)
                    .await
            }
            Self::Lines(stdin) => {
                use tokio::io::AsyncWriteExt as _;
                stdin
                    .lock()
                    .await
                    .write_all(format!("{room} {point} {seq}\n").as_bytes())
                    .await
                    .context("writing to the publisher process")
            }
            Self::Http { client, urls, key } => {
                let body = json!({"tenant": "bench", "event": "msg", "to": [room], "data": payload(point, seq)});
                let url = &urls[(seq as usize) % urls.len()];
                let answer = client
                    .post(url)
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .context("HTTP publish")?;
                anyhow::ensure!(
                    answer.status().is_success(),
                    "HTTP publish answered {}",
                    answer.status()
                );
                Ok(())
            }
            Self::Sdk(p) => {
                let data = payload(point, seq);
                p.to_room(room)
                    .emit_value("msg", data)
                    .await
                    .map(|_| ())
                    .context("sdk emit")
            }
        }
    }
}

/// The message every sender sends: its send time, point and sequence, padded to about
/// 100 bytes (the size the targets are stated for).
fn payload(point: u64, seq: u64) -> serde_json::Value {
    json!({"t": now_us(), "p": point, "s": seq, "pad": "roomcast-benchmark-payload-padding-0123456789abcdef"})
}

/// The gateway's HTTP publish endpoints on `ports`, with the bench key.
pub(crate) fn http_publishers(ports: &[u16]) -> Sender {
    Sender::Http {
        client: reqwest::Client::new(),
        urls: ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}/v1/publish"))
            .collect(),
        key: crate::stacks::GATEWAY_SECRET.to_owned(),
    }
}

/// Connects `count` subscribers round robin over `ports`, each joining `room(i)`.
pub(crate) async fn subscribe_many(
    ports: &[u16],
    count: usize,
    room: impl Fn(usize) -> String,
    recorder: &Arc<Recorder>,
    label: &str,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    subscribe_many_with(
        ports,
        count,
        |i| json!({ "room": room(i) }),
        recorder,
        label,
    )
    .await
}

/// Connects `count` subscribers round robin over `ports`, subscriber `i` with `auth(i)`
/// as its handshake's auth payload.
pub(crate) async fn subscribe_many_with(
    ports: &[u16],
    count: usize,
    auth: impl Fn(usize) -> serde_json::Value,
    recorder: &Arc<Recorder>,
    label: &str,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let bar = bar(count as u64, label);
    let mut tasks = Vec::with_capacity(count);
    let mut pending = FuturesUnordered::new();
    for i in 0..count {
        let port = ports[i % ports.len()];
        let auth = auth(i);
        let source = source_ip();
        pending.push(async move { conn::connect_with(port, &auth, Some(source)).await });
        if pending.len() >= 128
            && let Some(c) = pending.next().await
        {
            tasks.push(c?.spawn_subscriber(recorder.clone()));
            bar.inc(1);
        }
    }
    while let Some(c) = pending.next().await {
        tasks.push(c?.spawn_subscriber(recorder.clone()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(tasks)
}

/// `count` subscribers, all in `room:bench` (the fan-out), round robin over `ports`.
pub(crate) async fn fanout_subscribers(
    ports: &[u16],
    count: usize,
    recorder: &Arc<Recorder>,
    label: &str,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    subscribe_many(ports, count, |_| "room:bench".into(), recorder, label).await
}

/// The source address of the next connection: 10 000 connections per address from
/// 127.0.0.2 up, round the 250 addresses, counted over the whole run. Each address has its
/// own ~28 000 ephemeral ports, and the ports of closed connections stay in TIME_WAIT for a
/// minute: a run that opens and closes tens of thousands of connections would run out of
/// ports on one address (`EADDRINUSE`, or connects slowed by the kernel's search for a
/// free port).
fn source_ip() -> Ipv4Addr {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static OPENED: AtomicUsize = AtomicUsize::new(0);
    let n = OPENED.fetch_add(1, Ordering::Relaxed);
    Ipv4Addr::new(127, 0, 0, 2 + ((n / 10_000) % 250) as u8)
}

pub(crate) async fn socket_publishers(ports: &[u16]) -> anyhow::Result<Sender> {
    socket_publishers_of(ports, "publish").await
}

/// Publisher sockets emitting `event` instead of the contract's `publish`.
pub(crate) async fn socket_publishers_of(
    ports: &[u16],
    event: &'static str,
) -> anyhow::Result<Sender> {
    let mut pubs = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        pubs.push(
            conn::connect(*port, &format!("room:publisher-{i}"), None)
                .await?
                .into_publisher_of(event),
        );
    }
    Ok(Sender::Sockets(pubs))
}

fn bar(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("  {msg:44} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(label.to_owned());
    bar
}

/// Measures one point: `rate` msg/s for `secs`, each reaching `fanout` sockets.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site per scenario, all named"
)]
pub(crate) async fn point(
    stack: &Stack,
    redis_pid: Option<u32>,
    sender: &Sender,
    recorder: &Recorder,
    point_id: u64,
    rate: u64,
    run: u32,
    secs: u64,
    fanout: u64,
    room: &(dyn Fn(u64) -> String + Sync),
) -> anyhow::Result<Point> {
    let pace = Pace {
        rate: rate as f64,
        messages: rate * secs,
    };
    paced_point(
        stack, redis_pid, sender, recorder, point_id, pace, run, fanout, room,
    )
    .await
}

/// How many messages a point sends, and how fast (fractional rates for fan-outs to very
/// many sockets).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    pub(crate) rate: f64,
    pub(crate) messages: u64,
}

/// [`point`] with any [`Pace`].
#[allow(
    clippy::too_many_arguments,
    reason = "one call site per scenario, all named"
)]
pub(crate) async fn paced_point(
    stack: &Stack,
    redis_pid: Option<u32>,
    sender: &Sender,
    recorder: &Recorder,
    point_id: u64,
    pace: Pace,
    run: u32,
    fanout: u64,
    room: &(dyn Fn(u64) -> String + Sync),
) -> anyhow::Result<Point> {
    let rate = pace.rate.round() as u64;
    let total = pace.messages;
    let expected = total * fanout;
    recorder.start(point_id);
    let pids = stack.pids();
    let self_pid = std::process::id();
    let cpu = |pid: u32| cpu_ms(pid).unwrap_or(0.0);
    let before: Vec<f64> = pids.iter().map(|p| cpu(*p)).collect();
    let redis_before = redis_pid.map(cpu).unwrap_or(0.0);
    let self_before = cpu(self_pid);
    let started = Instant::now();

    let bar = bar(
        total,
        &format!("{} {:.1} msg/s (run {run})", stack.kind.key(), pace.rate),
    );
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / pace.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for seq in 0..total {
        tick.tick().await;
        sender.send(&room(seq), point_id, seq).await?;
        if seq % 64 == 0 {
            bar.set_position(seq);
        }
    }
    let send_time = started.elapsed();
    bar.finish_and_clear();
    // Stragglers: wait until everything arrived, or for 5 s in which nothing arrived.
    let mut seen = recorder.count();
    let mut quiet_until = Instant::now() + Duration::from_secs(5);
    while seen < expected && Instant::now() < quiet_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = recorder.count();
        if now > seen {
            seen = now;
            quiet_until = Instant::now() + Duration::from_secs(5);
        }
    }
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let latency = recorder.latency();
    let node_cpu: Vec<f64> = pids.iter().zip(&before).map(|(p, b)| cpu(*p) - b).collect();
    let node_total: f64 = node_cpu.iter().sum();
    let delivered = latency.count.min(expected);
    let loss = expected - delivered;
    Ok(Point {
        rate,
        run,
        sent: total,
        achieved_rate: total as f64 / send_time.as_secs_f64(),
        expected,
        delivered,
        loss,
        latency,
        node_cpu_us_per_delivery: if delivered > 0 {
            node_total * 1000.0 / delivered as f64
        } else {
            0.0
        },
        node_cpu_pct: node_cpu.iter().map(|c| c / elapsed_ms * 100.0).collect(),
        redis_cpu_pct: (redis_pid.map(cpu).unwrap_or(0.0) - redis_before) / elapsed_ms * 100.0,
        generator_cpu_pct: (cpu(self_pid) - self_before) / elapsed_ms * 100.0,
        pass: loss == 0 && latency.p99_ms <= 100.0,
    })
}

/// Sweeps `rates` upwards (each point `repeats` times) until a point fails.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site per scenario, all named"
)]
pub(crate) async fn sweep(
    stack: &Stack,
    redis_pid: Option<u32>,
    sender: &Sender,
    recorder: &Recorder,
    next_point: &mut u64,
    rates: &[u64],
    repeats: u32,
    secs: u64,
    fanout: u64,
    room: &(dyn Fn(u64) -> String + Sync),
) -> anyhow::Result<Vec<Point>> {
    let mut points = Vec::new();
    'rates: for &rate in rates {
        for run in 1..=repeats {
            *next_point += 1;
            let p = point(
                stack,
                redis_pid,
                sender,
                recorder,
                *next_point,
                rate,
                run,
                secs,
                fanout,
                room,
            )
            .await?;
            let pass = p.pass;
            eprintln!(
                "    {:>5} msg/s run {run}: p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  loss {:>6}  node cpu {:>5.1} µs/delivery  gen cpu {:>3.0}%  {}",
                rate,
                p.latency.p50_ms,
                p.latency.p99_ms,
                p.latency.max_ms,
                p.loss,
                p.node_cpu_us_per_delivery,
                p.generator_cpu_pct,
                if pass { "ok" } else { "over" }
            );
            points.push(p);
            if !pass {
                break 'rates;
            }
            // Let queues empty between points.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok(points)
}

/// The highest rate whose every run passed.
pub(crate) fn best_rate(points: &[Point]) -> u64 {
    let mut best = 0;
    let mut rates: Vec<u64> = points.iter().map(|p| p.rate).collect();
    rates.dedup();
    for rate in rates {
        if points.iter().filter(|p| p.rate == rate).all(|p| p.pass) {
            best = rate;
        } else {
            break;
        }
    }
    best
}

/// Connection storm: `count` sockets as fast as the server takes them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Storm {
    pub(crate) connections: usize,
    pub(crate) seconds: f64,
    pub(crate) per_second: f64,
}

pub(crate) async fn storm(ports: &[u16], count: usize) -> anyhow::Result<Storm> {
    let recorder = Arc::new(Recorder::default());
    let started = Instant::now();
    let tasks = subscribe_many(
        ports,
        count,
        |i| format!("room:storm-{}", i % 50),
        &recorder,
        "connection storm",
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    Ok(Storm {
        connections: count,
        seconds,
        per_second: count as f64 / seconds,
    })
}

/// Idle memory on one node.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Idle {
    pub(crate) connections: usize,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_after_kib: u64,
    pub(crate) kib_per_connection: f64,
}

pub(crate) async fn idle_memory(stack: &Stack, count: usize) -> anyhow::Result<Idle> {
    idle_memory_with(stack, count, |i| {
        Ok(json!({ "room": format!("room:idle-{}", i % 100) }))
    })
    .await
}

/// [`idle_memory`] with socket `i` connecting with `auth(i)` (a token for the gateway).
pub(crate) async fn idle_memory_with(
    stack: &Stack,
    count: usize,
    auth: impl Fn(usize) -> anyhow::Result<serde_json::Value>,
) -> anyhow::Result<Idle> {
    let auths = (0..=count).map(auth).collect::<anyhow::Result<Vec<_>>>()?;
    let pid = stack.pids()[0];
    let recorder = Arc::new(Recorder::default());
    // Warm up: one connection, so lazily allocated structures exist before the baseline.
    let warm = subscribe_many_with(
        &stack.ports,
        1,
        |_| auths[count].clone(),
        &recorder,
        "warm-up",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let tasks = subscribe_many_with(
        &stack.ports,
        count,
        |i| auths[i].clone(),
        &recorder,
        &format!("{} idle sockets", count),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    for t in tasks.into_iter().chain(warm) {
        t.abort();
    }
    Ok(Idle {
        connections: count,
        rss_before_kib: before,
        rss_after_kib: after,
        kib_per_connection: after.saturating_sub(before) as f64 / count as f64,
    })
}

/// Bytes Redis sent per published message, from `INFO stats`.
pub(crate) async fn redis_output_bytes(redis_url: &str) -> anyhow::Result<u64> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no total_net_output_bytes")
}

/// Calls and microseconds Redis spent on each command so far (`INFO commandstats`): the
/// work its clients asked of it, without its idle housekeeping.
pub(crate) async fn redis_command_stats(
    redis_url: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, (u64, u64)>> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let field = |fields: &str, name: &str| {
        fields
            .split(',')
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(info
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| l.split_once(':'))
        .map(|(cmd, fields)| {
            (
                cmd.to_owned(),
                (field(fields, "calls="), field(fields, "usec=")),
            )
        })
        .collect())
}

/// Publisher SDK throughput into Redis.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SdkThroughput {
    pub(crate) messages: u64,
    pub(crate) seconds: f64,
    pub(crate) per_second: f64,
}

pub(crate) async fn sdk_throughput(
    redis_url: &str,
    messages: u64,
) -> anyhow::Result<SdkThroughput> {
    let sdk =
        publisher::Publisher::connect(redis_url, Duration::from_secs(5))?.with_origin("bench");
    let bar = bar(messages, "publisher SDK → Redis");
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for i in 0..messages {
        let sdk = sdk.clone();
        in_flight.push(async move { sdk.to_room("room:sdk").emit("e", &i).await });
        if in_flight.len() >= 512
            && let Some(r) = in_flight.next().await
        {
            r?;
            bar.inc(1);
        }
    }
    while let Some(r) = in_flight.next().await {
        r?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    Ok(SdkThroughput {
        messages,
        seconds,
        per_second: messages as f64 / seconds,
    })
}
