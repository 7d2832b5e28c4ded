//! `cargo xtask bench`: Roomcast against Socket.IO's Node server with
//! `@socket.io/redis-adapter` and socketioxide with `socketioxide-redis`, measured by one
//! load generator in one run on this machine.
//!
//! Every stack serves the same contract (namespace `/`; join the room in `auth.room`; on
//! `publish {room, data}` emit `msg` with `data` to the room, cluster-wide), 3 nodes and
//! one Redis each, started here. The generator speaks raw Engine.IO/Socket.IO frames over
//! WebSocket and reports its own CPU use.
//!
//! `bench --quick` is a one-minute smoke run (CI); `bench` is the full run that writes
//! `docs/benchmarks.md`.

mod conn;
mod poll;
mod recorder;
mod report;
mod scale;
mod scale_report;
mod scenarios;
mod stacks;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::recorder::Recorder;
use crate::scenarios::{Idle, Point, SdkThroughput, Sender, Storm};
use crate::stacks::{Kind, Stack};

/// How much to measure.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Plan {
    pub(crate) mode: &'static str,
    pub(crate) nodes: usize,
    pub(crate) subscribers: usize,
    pub(crate) fanout_rates: Vec<u64>,
    pub(crate) targeted_users: usize,
    pub(crate) targeted_rates: Vec<u64>,
    pub(crate) point_secs: u64,
    pub(crate) repeats: u32,
    pub(crate) bytes_rate: u64,
    pub(crate) storm: usize,
    pub(crate) idle: Vec<usize>,
    pub(crate) sdk_messages: u64,
}

impl Plan {
    fn quick() -> Self {
        Self {
            mode: "quick",
            nodes: 3,
            subscribers: 300,
            fanout_rates: vec![20, 100],
            targeted_users: 300,
            targeted_rates: vec![100, 400],
            point_secs: 2,
            repeats: 1,
            bytes_rate: 100,
            storm: 300,
            idle: vec![1000],
            sdk_messages: 5000,
        }
    }

    fn full() -> Self {
        Self {
            mode: "full",
            nodes: 3,
            subscribers: 3000,
            fanout_rates: vec![
                5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250, 300, 400,
            ],
            targeted_users: 3000,
            targeted_rates: vec![
                500, 1000, 2500, 5000, 10_000, 15_000, 20_000, 30_000, 40_000,
            ],
            point_secs: 5,
            repeats: 2,
            bytes_rate: 200,
            storm: 3000,
            idle: vec![10_000, 50_000],
            sdk_messages: 200_000,
        }
    }
}

/// Everything measured for one stack.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct StackResults {
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) fanout: Vec<Point>,
    pub(crate) fanout_best: u64,
    /// Roomcast only: the fan-out published through the publisher SDK.
    pub(crate) fanout_sdk: Vec<Point>,
    pub(crate) fanout_sdk_best: u64,
    /// Roomcast only: the fan-out published by clients through the gateway's client
    /// publish path (an envelope, local delivery, the bus).
    pub(crate) fanout_client: Vec<Point>,
    pub(crate) fanout_client_best: u64,
    pub(crate) targeted: Vec<Point>,
    pub(crate) targeted_best: u64,
    /// Redis output bytes per targeted message, with 3 and with 5 nodes.
    pub(crate) redis_bytes_per_msg: Vec<(usize, f64)>,
    pub(crate) storm: Option<Storm>,
    pub(crate) idle: Vec<Idle>,
    /// Why an idle measurement used fewer sockets than planned, if it did.
    pub(crate) idle_capped: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Results {
    pub(crate) plan: Plan,
    pub(crate) machine: String,
    pub(crate) date: String,
    pub(crate) stacks: Vec<StackResults>,
    pub(crate) sdk: Option<SdkThroughput>,
    pub(crate) seconds: f64,
}

/// What every sweep of one stack shares.
struct Bench<'a> {
    stack: &'a Stack,
    redis_pid: Option<u32>,
    recorder: &'a Recorder,
    plan: &'a Plan,
}

impl Bench<'_> {
    async fn sweep(
        &self,
        next_point: &mut u64,
        sender: &Sender,
        rates: &[u64],
        fanout: u64,
        room: &(dyn Fn(u64) -> String + Sync),
    ) -> anyhow::Result<Vec<Point>> {
        scenarios::sweep(
            self.stack,
            self.redis_pid,
            sender,
            self.recorder,
            next_point,
            rates,
            self.plan.repeats,
            self.plan.point_secs,
            fanout,
            room,
        )
        .await
    }
}

async fn measure(kind: Kind, plan: &Plan, next_point: &mut u64) -> anyhow::Result<StackResults> {
    eprintln!("\n== {} ==", kind.name());
    let mut out = StackResults {
        name: kind.name().into(),
        key: kind.key().into(),
        ..Default::default()
    };
    let redis = testkit::RedisServer::start()?;
    let url = redis.url();
    let stack = Stack::start(kind, plan.nodes, &url)?;
    let recorder = Arc::new(Recorder::default());

    out.storm = Some(scenarios::storm(&stack.ports, plan.storm).await?);
    eprintln!(
        "  storm: {} connections in {:.2} s",
        plan.storm,
        out.storm.as_ref().map_or(0.0, |s| s.seconds)
    );

    // Fan-out: every subscriber in one room.
    eprintln!(
        "  fan-out, {} subscribers in one room over {} nodes",
        plan.subscribers, plan.nodes
    );
    let subs = scenarios::fanout_subscribers(
        &stack.ports,
        plan.subscribers,
        &recorder,
        "fan-out subscribers",
    )
    .await?;
    let sockets = scenarios::socket_publishers(&stack.ports).await?;
    let fanout = plan.subscribers as u64;
    let room = |_: u64| "room:bench".to_owned();
    let bench = Bench {
        stack: &stack,
        redis_pid: redis.pid(),
        recorder: &recorder,
        plan,
    };
    out.fanout = bench
        .sweep(next_point, &sockets, &plan.fanout_rates, fanout, &room)
        .await?;
    out.fanout_best = scenarios::best_rate(&out.fanout);
    if kind == Kind::Roomcast {
        eprintln!("  fan-out through the publisher SDK");
        let sdk = Sender::Sdk(
            publisher::Publisher::connect(&url, Duration::from_secs(5))?
                .with_channel_prefix("bench"),
        );
        out.fanout_sdk = bench
            .sweep(next_point, &sdk, &plan.fanout_rates, fanout, &room)
            .await?;
        out.fanout_sdk_best = scenarios::best_rate(&out.fanout_sdk);
        eprintln!("  fan-out through client publishes");
        let clients = scenarios::socket_publishers_of(&stack.ports, "client_publish").await?;
        out.fanout_client = bench
            .sweep(next_point, &clients, &plan.fanout_rates, fanout, &room)
            .await?;
        out.fanout_client_best = scenarios::best_rate(&out.fanout_client);
    }
    for t in subs {
        t.abort();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Targeted: one room per user, each message to one user.
    eprintln!(
        "  targeted, {} users in their own rooms",
        plan.targeted_users
    );
    let user_room = targeted_room(plan.targeted_users);
    let subs = targeted_subscribers(&stack, plan.targeted_users, &recorder, "").await?;
    let bench = Bench {
        stack: &stack,
        redis_pid: redis.pid(),
        recorder: &recorder,
        plan,
    };
    out.targeted = bench
        .sweep(next_point, &sockets, &plan.targeted_rates, 1, &user_room)
        .await?;
    out.targeted_best = scenarios::best_rate(&out.targeted);
    out.redis_bytes_per_msg.push((
        plan.nodes,
        bytes_per_message(
            &stack, &url, &sockets, &recorder, next_point, plan, &user_room,
        )
        .await?,
    ));
    for t in subs {
        t.abort();
    }
    drop(sockets);
    drop(stack);

    // The same targeted load on 5 nodes: does Redis traffic per message grow?
    let five = Stack::start(kind, 5, &url)?;
    let subs = targeted_subscribers(&five, plan.targeted_users, &recorder, ", 5 nodes").await?;
    let sockets = scenarios::socket_publishers(&five.ports).await?;
    out.redis_bytes_per_msg.push((
        5,
        bytes_per_message(
            &five, &url, &sockets, &recorder, next_point, plan, &user_room,
        )
        .await?,
    ));
    for t in subs {
        t.abort();
    }
    drop(sockets);
    drop(five);

    // One process holds one descriptor per socket: the open-files limit caps how many
    // idle sockets one node (and the generator) can hold.
    let limit = open_files_limit();
    let cap = limit.saturating_sub(1000);
    for &wanted in &plan.idle {
        let count = wanted.min(cap);
        if count < wanted {
            eprintln!(
                "  idle: {wanted} sockets asked, {count} possible (open-files limit {limit})"
            );
            out.idle_capped = Some(format!(
                "{wanted} asked; capped at {count} by this machine's open-files hard limit ({limit})"
            ));
        }
        let single = Stack::start(kind, 1, &url)?;
        match scenarios::idle_memory(&single, count).await {
            Ok(idle) => {
                eprintln!(
                    "  idle: {count} sockets, {:.1} KiB each",
                    idle.kib_per_connection
                );
                out.idle.push(idle);
            }
            Err(e) => eprintln!("  idle: {count} sockets failed: {e:#}"),
        }
    }
    Ok(out)
}

async fn bytes_per_message(
    stack: &Stack,
    url: &str,
    sender: &Sender,
    recorder: &Recorder,
    next_point: &mut u64,
    plan: &Plan,
    room: &(dyn Fn(u64) -> String + Sync),
) -> anyhow::Result<f64> {
    let before = scenarios::redis_output_bytes(url).await?;
    *next_point += 1;
    let p = scenarios::point(
        stack,
        None,
        sender,
        recorder,
        *next_point,
        plan.bytes_rate,
        1,
        plan.point_secs,
        1,
        room,
    )
    .await?;
    let after = scenarios::redis_output_bytes(url).await?;
    let per = after.saturating_sub(before) as f64 / p.sent as f64;
    eprintln!(
        "  redis output with {} nodes: {:.0} bytes per message",
        stack.ports.len(),
        per
    );
    Ok(per)
}

/// The soft open-files limit of this process (inherited by the servers it starts).
pub(crate) fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(String::new(), |kb| format!(", {} GiB", kb / 1024 / 1024));
    let docker = if std::path::Path::new("/var/run/docker.pid").exists() {
        " (dockerd running)"
    } else {
        ""
    };
    format!("{cpu}, {cores} cores{mem}{docker}")
}

/// The targeted load's room for message `seq`: one of `users` users, spread evenly.
fn targeted_room(users: usize) -> impl Fn(u64) -> String + Copy {
    let users = users as u64;
    move |seq| format!("user:{}", seq.wrapping_mul(7919) % users)
}

/// `users` sockets on `stack`, each in its own `user:<i>` room.
async fn targeted_subscribers(
    stack: &Stack,
    users: usize,
    recorder: &Arc<Recorder>,
    label: &str,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    scenarios::subscribe_many(
        &stack.ports,
        users,
        |i| format!("user:{i}"),
        recorder,
        &format!("targeted subscribers{label}"),
    )
    .await
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    // `--idle N [gateway]`: N idle sockets on one node of the contract stack, or of the
    // deployed gateway with JWT clients (under `BENCH_NODE_WRAPPER` for a heap profile).
    let mut idle = std::env::args().skip_while(|a| a != "--idle").skip(1);
    if let Some(count) = idle.next() {
        let count: usize = count.parse()?;
        let redis = testkit::RedisServer::start()?;
        let idle = if idle.next().as_deref() == Some("gateway") {
            let stack = Stack::start(Kind::Gateway, 1, &redis.url())?;
            scenarios::idle_memory_with(&stack, count, scale::gateway_token).await?
        } else {
            let stack = Stack::start(Kind::Roomcast, 1, &redis.url())?;
            scenarios::idle_memory(&stack, count).await?
        };
        eprintln!("idle: {idle:?}");
        return Ok(());
    }
    if let Some(kind) = std::env::args().skip_while(|a| a != "--probe").nth(1) {
        return probe(&kind).await;
    }
    if std::env::args().any(|a| a == "--tracing") {
        return tracing_cost().await;
    }
    if std::env::args().any(|a| a == "--recovery") {
        return recovery_cost().await;
    }
    if std::env::args().any(|a| a == "--sharding") {
        return sharding().await;
    }
    if std::env::args().any(|a| a == "--write-path") {
        return write_path().await;
    }
    if std::env::args().any(|a| a == "--polling") {
        return polling().await;
    }
    if std::env::args().any(|a| a == "--compat") {
        return compat_cost().await;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--scale") {
        return scale::run(quick).await;
    }
    let plan = if quick { Plan::quick() } else { Plan::full() };
    let started = std::time::Instant::now();
    stacks::prepare_node_peer()?;
    let mut next_point = 0;
    let mut results = Vec::new();
    for kind in [
        Kind::PeerRaw,
        Kind::Node,
        Kind::Socketioxide,
        Kind::Roomcast,
    ] {
        if kind.available() {
            results.push(measure(kind, &plan, &mut next_point).await?);
        } else {
            eprintln!(
                "\n== {} == not built (no ../shared/peer-raw): left out",
                kind.name()
            );
        }
    }
    let sdk_redis = testkit::RedisServer::start()?;
    let sdk = scenarios::sdk_throughput(&sdk_redis.url(), plan.sdk_messages).await?;
    eprintln!("\npublisher SDK: {:.0} msg/s into Redis", sdk.per_second);
    let results = Results {
        plan,
        machine: machine(),
        date: report::today(),
        stacks: results,
        sdk: Some(sdk),
        seconds: started.elapsed().as_secs_f64(),
    };
    report::write(&results, quick)?;
    Ok(())
}

/// `bench --tracing`: Roomcast's fan-out with traces off, and exported over OTLP at 1 %
/// sampling, alternating, each point twice: node CPU per delivery and latency.
async fn tracing_cost() -> anyhow::Result<()> {
    let sink = testkit::OtlpReceiver::start("127.0.0.1").await?;
    let endpoint = format!("http://127.0.0.1:{}", sink.port);
    let traced: Vec<(&str, String)> = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()),
        ("OTEL_TRACES_SAMPLER_ARG", "0.01".into()),
    ];
    compare(
        "traces off vs exported at 1 %",
        "publish",
        &[("off", Vec::new()), ("on, 1 %", traced)],
    )
    .await?;
    println!(
        "spans exported to the OTLP sink with tracing on: {}",
        sink.count()
    );
    Ok(())
}

/// `bench --write-path`: Roomcast's fan-out on engineioxide's queued WebSocket writer
/// (a channel and a writer task per socket) and on the direct one (frames written by
/// the broadcast loop), alternating, each point twice.
async fn write_path() -> anyhow::Result<()> {
    compare(
        "WebSocket write path queued vs direct (WS_WRITE_PATH)",
        "publish",
        &[
            ("queued", vec![("WS_WRITE_PATH", "queued".to_owned())]),
            ("direct", vec![("WS_WRITE_PATH", "direct".to_owned())]),
        ],
    )
    .await
}

/// `bench --polling`: long-polling subscribers (no WebSocket) in one room on 3 Roomcast
/// nodes, through nginx as shipped — sticky by cookie (`sticky-cookie.conf`) and round
/// robin without affinity (`roomcast.conf`, where a node relays the requests of other
/// nodes' sessions) — alternating, each point twice: delivery latency, node CPU per
/// delivery, nginx's CPU per delivery and the share of requests a node relayed.
async fn polling() -> anyhow::Result<()> {
    const SUBSCRIBERS: usize = 300;
    let rates = [5u64, 10, 20];
    let secs = Plan::full().point_secs;
    let redis = testkit::RedisServer::start()?;
    let stack = Stack::start(Kind::Roomcast, 3, &redis.url())?;
    let gateways: Vec<String> = stack
        .ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let deploy = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx");
    let dir = std::env::temp_dir().join(format!("roomcast-bench-nginx-{}", std::process::id()));
    let nginx = testkit::nginx::start(&deploy, &dir, &gateways, &testkit::TestCa::new()?).await?;
    let nginx_pid = nginx
        .pid()
        .ok_or_else(|| anyhow::anyhow!("nginx has no pid"))?;
    let sockets = scenarios::socket_publishers(&stack.ports).await?;
    let recorder = Arc::new(Recorder::default());
    let mut next_point = 0;
    let mut rows = Vec::new();
    for round in 1..=2 {
        for (label, site) in [
            ("sticky", "sticky-cookie.conf"),
            ("round robin", "roomcast.conf"),
        ] {
            let subs =
                poll::subscribe_many(nginx.site(site)?, SUBSCRIBERS, "room:bench", &recorder)
                    .await?;
            for &rate in &rates {
                next_point += 1;
                let relayed_before = relayed(&stack.ports).await?;
                let requests_before = poll::requests();
                let nginx_before = stacks::cpu_ms(nginx_pid)?;
                let p = scenarios::point(
                    &stack,
                    redis.pid(),
                    &sockets,
                    &recorder,
                    next_point,
                    rate,
                    round,
                    secs,
                    SUBSCRIBERS as u64,
                    &|_| "room:bench".to_owned(),
                )
                .await?;
                let nginx_us = (stacks::cpu_ms(nginx_pid)? - nginx_before) * 1000.0
                    / p.delivered.max(1) as f64;
                let share = (relayed(&stack.ports).await? - relayed_before)
                    / (poll::requests() - requests_before).max(1) as f64;
                eprintln!(
                    "    {label:<11} {rate:>3} msg/s run {round}: p50 {:>6.1} ms  p99 {:>6.1} ms  loss {:>5}  node {:>5.1} µs/delivery  nginx {:>5.1} µs/delivery  relayed {:>3.0} %",
                    p.latency.p50_ms,
                    p.latency.p99_ms,
                    p.loss,
                    p.node_cpu_us_per_delivery,
                    nginx_us,
                    share * 100.0
                );
                rows.push((round, label, p, nginx_us, share));
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            subs.close().await;
        }
    }
    nginx.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "\nRoomcast fan-out to {SUBSCRIBERS} long-polling subscribers in one room over 3 nodes, through nginx: sticky by cookie vs round robin (relayed by the nodes)"
    );
    println!(
        "{:<6} {:<12} {:>6} {:>9} {:>9} {:>6} {:>14} {:>15} {:>8} {:>8}",
        "round",
        "balancer",
        "msg/s",
        "p50 ms",
        "p99 ms",
        "loss",
        "node µs/deliv",
        "nginx µs/deliv",
        "relayed",
        "gen cpu"
    );
    for (round, label, p, nginx_us, share) in &rows {
        println!(
            "{:<6} {:<12} {:>6} {:>9.2} {:>9.2} {:>6} {:>14.2} {:>15.2} {:>7.0}% {:>7.0}%",
            round,
            label,
            p.rate,
            p.latency.p50_ms,
            p.latency.p99_ms,
            p.loss,
            p.node_cpu_us_per_delivery,
            nginx_us,
            share * 100.0,
            p.generator_cpu_pct
        );
    }
    Ok(())
}

/// Engine.IO requests the nodes relayed to the node holding the session, over all nodes.
async fn relayed(ports: &[u16]) -> anyhow::Result<f64> {
    let mut relayed = 0.0;
    for port in ports {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await?
            .text()
            .await?;
        relayed += text
            .lines()
            .filter(|l| l.starts_with("roomcast_forwarded_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(relayed)
}

/// `bench --compat`: the same fan-out (the full plan's subscribers in one room on 3
/// Roomcast nodes reading `COMPAT_SOURCES=python,node`) published natively (the SDK into
/// Redis) and through each compat path by the real packages — python-socketio's current
/// `RedisManager` (JSON), python-socketio 5.13's (pickle), and a Socket.IO 4 Node server's
/// `io.to(room).emit` through `@socket.io/redis-adapter` — alternating, two rounds: node
/// CPU per delivery and latency.
async fn compat_cost() -> anyhow::Result<()> {
    let plan = Plan::full();
    let rates = [10u64, 20];
    let redis = testkit::RedisServer::start()?;
    let url = redis.url();
    let env = [("COMPAT_SOURCES", "python,node".to_owned())];
    let stack = Stack::start_with_env(Kind::Roomcast, plan.nodes, &url, &env)?;
    stacks::prepare_node_peer()?;
    let node_server = Stack::start(Kind::Node, 1, &url)?;
    let recorder = Arc::new(Recorder::default());
    let subs =
        scenarios::fanout_subscribers(&stack.ports, plan.subscribers, &recorder, "subscribers")
            .await?;
    let python = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../interop/python");
    let venvs = stacks::bin_dir().join("bench-venvs");
    let mut children = Vec::new();
    let mut senders = vec![(
        "native (SDK)",
        Sender::Sdk(
            publisher::Publisher::connect(&url, Duration::from_secs(5))?
                .with_channel_prefix("bench"),
        ),
    )];
    for (label, requirements, dir) in [
        ("python-socketio 5.18 (JSON)", "requirements.txt", "current"),
        (
            "python-socketio 5.13 (pickle)",
            "requirements-5.13.txt",
            "5.13",
        ),
    ] {
        let interpreter =
            testkit::python_venv(&python.join(requirements), &venvs.join(dir)).await?;
        let (sender, child) = python_publisher(&interpreter, &url).await?;
        children.push(child);
        senders.push((label, sender));
    }
    senders.push((
        "Node redis-adapter",
        scenarios::socket_publishers(&node_server.ports).await?,
    ));
    let mut next_point = 0;
    let mut rows = Vec::new();
    for round in 1..=2 {
        for (label, sender) in &senders {
            for &rate in &rates {
                next_point += 1;
                let p = scenarios::point(
                    &stack,
                    redis.pid(),
                    sender,
                    &recorder,
                    next_point,
                    rate,
                    round,
                    plan.point_secs,
                    plan.subscribers as u64,
                    &|_| "room:bench".to_owned(),
                )
                .await?;
                eprintln!(
                    "    {label:<30} {rate:>3} msg/s run {round}: p50 {:>6.1} ms  p99 {:>6.1} ms  loss {:>5}  node {:>5.2} µs/delivery",
                    p.latency.p50_ms, p.latency.p99_ms, p.loss, p.node_cpu_us_per_delivery
                );
                rows.push((round, *label, p));
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    for t in subs {
        t.abort();
    }
    println!(
        "\nRoomcast fan-out, {} subscribers in one room over {} nodes: published natively and through each compat path",
        plan.subscribers, plan.nodes
    );
    println!(
        "{:<6} {:<30} {:>6} {:>14} {:>9} {:>9} {:>6}",
        "round", "published by", "msg/s", "node µs/deliv", "p50 ms", "p99 ms", "loss"
    );
    for (round, label, p) in &rows {
        println!(
            "{:<6} {:<30} {:>6} {:>14.2} {:>9.2} {:>9.2} {:>6}",
            round,
            label,
            p.rate,
            p.node_cpu_us_per_delivery,
            p.latency.p50_ms,
            p.latency.p99_ms,
            p.loss
        );
    }
    let mean = |label: &str, rate: u64| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|(_, l, p)| *l == label && p.rate == rate)
            .map(|(_, _, p)| p.node_cpu_us_per_delivery)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    for rate in rates {
        let native = mean(senders[0].0, rate);
        for (label, _) in &senders[1..] {
            let m = mean(label, rate);
            println!(
                "{rate} msg/s: {label}: {m:.2} µs/delivery, native {native:.2} ({:+.1} %)",
                (m / native - 1.0) * 100.0
            );
        }
    }
    drop(children);
    Ok(())
}

/// `bench/peers/python/emit.py` under `interpreter`, ready to publish one message per line.
async fn python_publisher(
    interpreter: &std::path::Path,
    redis_url: &str,
) -> anyhow::Result<(Sender, tokio::process::Child)> {
    use tokio::io::AsyncBufReadExt as _;
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../bench/peers/python/emit.py");
    let mut child = tokio::process::Command::new(interpreter)
        .arg(script)
        .arg(redis_url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    anyhow::ensure!(
        matches!(ready, Ok(Ok(Some(ref l))) if l == "ready"),
        "the python publisher did not start: {ready:?}"
    );
    Ok((Sender::Lines(tokio::sync::Mutex::new(stdin)), child))
}

/// `bench --recovery`: Roomcast's fan-out into one room of a namespace without and with
/// connection state recovery (every message then also appended to the namespace's
/// history stream in Redis), alternating, each point twice: node and Redis CPU per
/// message, Redis output bytes, latency.
async fn recovery_cost() -> anyhow::Result<()> {
    compare(
        "connection state recovery off vs on (RECOVERY_NAMESPACES=/), client publishes",
        "client_publish",
        &[
            ("off", Vec::new()),
            ("on", vec![("RECOVERY_NAMESPACES", "/".to_owned())]),
        ],
    )
    .await
}

/// `bench --sharding`: Roomcast's targeted load (3000 users, each message to one user's
/// room, client publishes over 3 nodes) on one Redis and on a 3-master Redis Cluster with
/// sharded pub/sub, one after the other in one run: the best rate that keeps p99 under
/// 100 ms without loss, and per message the Redis CPU and bytes out (all Redis processes
/// together) and the node CPU per delivery.
async fn sharding() -> anyhow::Result<()> {
    let plan = Plan::full();
    let rates = [5_000u64, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000];
    let recorder = Arc::new(Recorder::default());
    let mut next_point = 0;
    let mut rows = Vec::new();
    for variant in ["one Redis", "3-shard cluster"] {
        let (single, cluster) = if variant == "one Redis" {
            (Some(testkit::RedisServer::start()?), None)
        } else {
            (None, Some(testkit::RedisClusterSet::start()?))
        };
        let (urls, pids, env) = match (&single, &cluster) {
            (Some(r), _) => (vec![r.url()], r.pid().into_iter().collect(), Vec::new()),
            (_, Some(c)) => (
                c.seeds(),
                c.pids(),
                vec![("REDIS_CLUSTER_NODES", c.seeds().join(","))],
            ),
            _ => anyhow::bail!("no Redis"),
        };
        let stack = Stack::start_with_env(Kind::Roomcast, plan.nodes, &urls[0], &env)?;
        let subs = targeted_subscribers(&stack, plan.targeted_users, &recorder, "").await?;
        let sockets = scenarios::socket_publishers_of(&stack.ports, "client_publish").await?;
        let user_room = targeted_room(plan.targeted_users);
        let mut points = Vec::new();
        for &rate in &rates {
            let cpu =
                |pids: &[u32]| -> f64 { pids.iter().filter_map(|p| stacks::cpu_ms(*p).ok()).sum() };
            let mut bytes = 0u64;
            for url in &urls {
                bytes += scenarios::redis_output_bytes(url).await.unwrap_or(0);
            }
            let cpu_before = cpu(&pids);
            let mut p = scenarios::sweep(
                &stack,
                None,
                &sockets,
                &recorder,
                &mut next_point,
                &[rate],
                1,
                plan.point_secs,
                1,
                &user_room,
            )
            .await?;
            let redis_cpu_ms = cpu(&pids) - cpu_before;
            let mut after = 0u64;
            for url in &urls {
                after += scenarios::redis_output_bytes(url).await.unwrap_or(0);
            }
            let Some(p) = p.pop() else { break };
            let sent = p.sent.max(1) as f64;
            let pass = p.pass;
            rows.push((
                variant,
                p.rate,
                p.achieved_rate,
                p.latency.p99_ms,
                p.loss,
                p.node_cpu_us_per_delivery,
                redis_cpu_ms * 1000.0 / sent,
                after.saturating_sub(bytes) as f64 / sent,
                p.generator_cpu_pct,
                pass,
            ));
            points.push(p);
            if !pass {
                break;
            }
        }
        eprintln!("  {variant}: best {} msg/s", scenarios::best_rate(&points));
        for t in subs {
            t.abort();
        }
        drop(sockets);
        drop(stack);
    }
    println!(
        "\nRoomcast targeted load, {} users over {} nodes, client publishes: one Redis vs a 3-master Redis Cluster (sharded pub/sub)",
        plan.targeted_users, plan.nodes
    );
    println!(
        "{:<16} {:>7} {:>9} {:>8} {:>5} {:>13} {:>14} {:>11} {:>8} {:>5}",
        "Redis",
        "msg/s",
        "achieved",
        "p99 ms",
        "loss",
        "node µs/deliv",
        "Redis µs/msg",
        "Redis B/msg",
        "gen cpu",
        "ok"
    );
    for r in &rows {
        println!(
            "{:<16} {:>7} {:>9.0} {:>8.1} {:>5} {:>13.1} {:>14.1} {:>11.0} {:>7.0}% {:>5}",
            r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9
        );
    }
    Ok(())
}

/// Roomcast's fan-out (the full plan's subscribers in one room, sent by sockets emitting
/// `event`) at 10 and 20 msg/s under each `(label, environment)` variant, alternating,
/// two rounds; prints each point and the mean difference of each variant from the first.
async fn compare(
    title: &str,
    event: &'static str,
    variants: &[(&str, Vec<(&str, String)>)],
) -> anyhow::Result<()> {
    let plan = Plan::full();
    let rates = [10u64, 20];
    let recorder = Arc::new(Recorder::default());
    let mut next_point = 0;
    let mut rows = Vec::new();
    for round in 1..=2 {
        for (label, env) in variants {
            let redis = testkit::RedisServer::start()?;
            let stack = Stack::start_with_env(Kind::Roomcast, plan.nodes, &redis.url(), env)?;
            let subs = scenarios::fanout_subscribers(
                &stack.ports,
                plan.subscribers,
                &recorder,
                "subscribers",
            )
            .await?;
            let sockets = scenarios::socket_publishers_of(&stack.ports, event).await?;
            for &rate in &rates {
                let before = scenarios::redis_output_bytes(&redis.url()).await?;
                let stats_before = scenarios::redis_command_stats(&redis.url()).await?;
                let mut points = scenarios::sweep(
                    &stack,
                    redis.pid(),
                    &sockets,
                    &recorder,
                    &mut next_point,
                    &[rate],
                    1,
                    plan.point_secs,
                    plan.subscribers as u64,
                    &|_| "room:bench".to_owned(),
                )
                .await?;
                let bytes = scenarios::redis_output_bytes(&redis.url()).await? - before;
                let stats = scenarios::redis_command_stats(&redis.url()).await?;
                let mut usec = 0;
                let mut by_command = Vec::new();
                for (cmd, (calls, us)) in &stats {
                    let (c0, u0) = stats_before.get(cmd).copied().unwrap_or_default();
                    usec += us - u0;
                    if calls > &c0 {
                        by_command.push((us - u0, cmd.clone(), calls - c0));
                    }
                }
                by_command.sort_unstable_by(|a, b| b.cmp(a));
                let top: Vec<String> = by_command
                    .iter()
                    .take(5)
                    .map(|(us, cmd, calls)| format!("{cmd} {calls}× {us} µs"))
                    .collect();
                eprintln!(
                    "    Redis commands ({label}, {rate} msg/s): {}",
                    top.join(", ")
                );
                if let Some(p) = points.pop() {
                    let sent = p.sent.max(1) as f64;
                    rows.push((round, *label, p, bytes as f64 / sent, usec as f64 / sent));
                }
            }
            for t in subs {
                t.abort();
            }
        }
    }
    println!(
        "\nRoomcast fan-out, {} subscribers in one room over {} nodes: {title}",
        plan.subscribers, plan.nodes
    );
    println!(
        "{:<6} {:<9} {:>6} {:>14} {:>16} {:>12} {:>9} {:>9} {:>6}",
        "round",
        "variant",
        "msg/s",
        "node µs/deliv",
        "Redis cmd µs/msg",
        "Redis B/msg",
        "p50 ms",
        "p99 ms",
        "loss"
    );
    for (round, label, p, bytes, usec) in &rows {
        println!(
            "{:<6} {:<9} {:>6} {:>14.2} {:>16.1} {:>12.0} {:>9.2} {:>9.2} {:>6}",
            round,
            label,
            p.rate,
            p.node_cpu_us_per_delivery,
            usec,
            bytes,
            p.latency.p50_ms,
            p.latency.p99_ms,
            p.loss
        );
    }
    for rate in rates {
        let mean = |label: &str, f: &dyn Fn(&Point, f64, f64) -> f64| {
            let v: Vec<f64> = rows
                .iter()
                .filter(|(_, l, p, _, _)| *l == label && p.rate == rate)
                .map(|(_, _, p, b, u)| f(p, *b, *u))
                .collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        let base = variants[0].0;
        for (label, _) in &variants[1..] {
            let cpu = |p: &Point, _, _| p.node_cpu_us_per_delivery;
            let red = |_: &Point, _, u| u;
            let bytes = |_: &Point, b, _| b;
            let (off, on) = (mean(base, &cpu), mean(label, &cpu));
            println!(
                "{rate} msg/s: node {off:.2} µs/delivery {base}, {on:.2} µs {label} ({:+.1} %); Redis commands {:.1} → {:.1} µs/msg, {:.0} → {:.0} bytes out/msg",
                (on / off - 1.0) * 100.0,
                mean(base, &red),
                mean(label, &red),
                mean(base, &bytes),
                mean(label, &bytes),
            );
        }
    }
    Ok(())
}

/// `bench --probe <node|socketioxide|roomcast>`: 3000 subscribers, 10 msg/s for 60 s,
/// printing deliveries and live connections each second (diagnosis, not a benchmark).
async fn probe(kind: &str) -> anyhow::Result<()> {
    let kind = match kind {
        "node" => Kind::Node,
        "socketioxide" => Kind::Socketioxide,
        _ => Kind::Roomcast,
    };
    let redis = testkit::RedisServer::start()?;
    let stack = Stack::start(kind, 3, &redis.url())?;
    let recorder = Arc::new(Recorder::default());
    let subs = scenarios::fanout_subscribers(&stack.ports, 3000, &recorder, "probe").await?;
    let sender = scenarios::socket_publishers(&stack.ports).await?;
    recorder.start(1);
    let mut seq = 0;
    for second in 0..60 {
        for _ in 0..10 {
            sender.send_probe("room:bench", 1, seq).await?;
            seq += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let alive = subs.iter().filter(|t| !t.is_finished()).count();
        eprintln!(
            "t={second:>2}s sent {seq:>4} delivered {:>7} expected {:>7} generator sockets alive {alive}",
            recorder.count(),
            seq * 3000
        );
    }
    Ok(())
}
