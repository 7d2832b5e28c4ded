//! `bench --scale`: how each stack's cost grows with the connections one node holds.
//!
//! For every size (1 000 connections up to 100 000, as far as the open-files limit lets
//! the generator and a node go) each stack gets a fresh Redis and a fresh node, then:
//!
//! 1. a connection storm of `size` sockets in one room (the rate it took them), and the
//!    node's resident memory per connection (after one warm-up socket);
//! 2. the node's idle CPU with all of them connected (heartbeats) over a quiet window;
//! 3. fan-out points: messages to that room, paced so every size sees about the same
//!    deliveries per second; node CPU per delivery, p50/p99, loss;
//! 4. a second storm into one room per socket (`user:<i>`) and targeted points, each
//!    message to one socket;
//! 5. SIGTERM: how long the node takes to exit, and until every client saw its
//!    connection end.
//!
//! Every point runs twice. A stack that fails a size (it refuses connections, loses
//! messages, or stops answering) is reported as stopping there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::recorder::Recorder;
use crate::scenarios::{self, Pace, Sender};
use crate::stacks::{self, Kind, Stack};

/// What the scale run measures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ScalePlan {
    pub(crate) mode: &'static str,
    /// Connection counts asked for.
    pub(crate) sizes: Vec<usize>,
    /// Connection counts this machine allows (the open-files limit).
    pub(crate) reachable: Vec<usize>,
    /// Why sizes were left out, if any were.
    pub(crate) capped: Option<String>,
    /// Deliveries per second every fan-out point aims at, whatever the size.
    pub(crate) fanout_deliveries_per_sec: f64,
    pub(crate) targeted_rate: u64,
    pub(crate) point_secs: f64,
    pub(crate) repeats: u32,
}

impl ScalePlan {
    fn new(quick: bool) -> Self {
        let sizes: Vec<usize> = if quick {
            vec![200, 1000]
        } else {
            vec![1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000]
        };
        // One descriptor per socket in the generator and in the node; keep room for the
        // publishers, Redis connections and the runtime's own.
        let limit = crate::open_files_limit();
        let cap = limit.saturating_sub(1000);
        let mut reachable: Vec<usize> = sizes.iter().copied().filter(|&s| s <= cap).collect();
        let capped = (sizes.iter().any(|&s| s > cap)).then(|| {
            if reachable.last().is_none_or(|&l| l < cap) && cap >= 1000 {
                reachable.push(cap);
            }
            format!(
                "{} asked; this machine stops at {cap}: one process may hold {limit} open files (the hard limit, which only a process with CAP_SYS_RESOURCE can raise), and the generator and the node each hold one per connection",
                sizes
                    .iter()
                    .filter(|&&s| s > cap)
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        Self {
            mode: if quick { "quick" } else { "full" },
            sizes,
            reachable,
            capped,
            fanout_deliveries_per_sec: if quick { 5000.0 } else { 20_000.0 },
            targeted_rate: if quick { 200 } else { 1000 },
            point_secs: if quick { 2.0 } else { 5.0 },
            repeats: if quick { 1 } else { 2 },
        }
    }
}

/// One measured point of the scale run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ScalePoint {
    pub(crate) run: u32,
    pub(crate) rate: f64,
    pub(crate) messages: u64,
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) loss: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Node CPU over the point divided by deliveries.
    pub(crate) node_cpu_us_per_delivery: f64,
    /// The same with the node's idle CPU (heartbeats) over the point's duration taken
    /// out: what the deliveries themselves cost.
    pub(crate) net_cpu_us_per_delivery: f64,
    pub(crate) generator_cpu_pct: f64,
}

/// SIGTERM with every connection open.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Drain {
    /// Until the node's process exited (`None`: still running after 30 s).
    pub(crate) exit_ms: Option<f64>,
    /// Until every client saw its connection end (`None`: some had not after 30 s).
    pub(crate) clients_closed_ms: Option<f64>,
}

/// Everything measured at one size.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SizeResult {
    pub(crate) connections: usize,
    /// Connections per second of each storm (into one room, then into one room each).
    pub(crate) storm_per_sec: Vec<f64>,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_after_kib: u64,
    pub(crate) kib_per_connection: f64,
    /// The node's CPU with every connection open and no message, % of one core.
    pub(crate) idle_cpu_pct: f64,
    pub(crate) fanout: Vec<ScalePoint>,
    pub(crate) targeted: Vec<ScalePoint>,
    pub(crate) drain: Option<Drain>,
}

/// One stack over all sizes.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StackScale {
    pub(crate) key: String,
    pub(crate) name: String,
    pub(crate) sizes: Vec<SizeResult>,
    /// Where and why the stack stopped, if it did before the last size.
    pub(crate) stopped: Option<String>,
}

/// The whole scale run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ScaleResults {
    pub(crate) plan: ScalePlan,
    pub(crate) machine: String,
    pub(crate) date: String,
    pub(crate) stacks: Vec<StackScale>,
    pub(crate) seconds: f64,
}

/// How a stack's clients authenticate and which rooms they are in.
struct Contract {
    kind: Kind,
}

impl Contract {
    /// The handshake auth of socket `i` in the fan-out phase.
    fn fanout_auth(&self, i: usize) -> anyhow::Result<Value> {
        match self.kind {
            Kind::Gateway => gateway_token(i),
            _ => Ok(json!({ "room": "room:bench" })),
        }
    }

    /// The handshake auth of socket `i` in the targeted phase: alone in `user:<i>`.
    fn targeted_auth(&self, i: usize) -> anyhow::Result<Value> {
        match self.kind {
            Kind::Gateway => gateway_token(i),
            _ => Ok(json!({ "room": format!("user:{i}") })),
        }
    }

    /// The room every socket of the fan-out phase is in.
    fn fanout_room(&self) -> &'static str {
        match self.kind {
            Kind::Gateway => "tenant:bench",
            _ => "room:bench",
        }
    }

    async fn sender(&self, stack: &Stack) -> anyhow::Result<Sender> {
        match self.kind {
            Kind::Gateway => Ok(scenarios::http_publishers(&stack.ports)),
            _ => scenarios::socket_publishers(&stack.ports).await,
        }
    }
}

/// A token for user `i` of tenant `bench`, valid for a day.
pub(crate) fn gateway_token(i: usize) -> anyhow::Result<Value> {
    let claims =
        json!({"sub": i.to_string(), "tenant_id": "bench", "exp": gateway::unix_now() + 86_400});
    let token = gateway::sign_hs256(stacks::GATEWAY_SECRET, &claims).context("signing a token")?;
    Ok(json!({ "token": token }))
}

/// Handshake auth for every socket of a phase, built before the storm so that signing
/// tokens is not counted in the storm's time.
fn auths(
    count: usize,
    auth: impl Fn(usize) -> anyhow::Result<Value>,
) -> anyhow::Result<Vec<Value>> {
    (0..count).map(auth).collect()
}

/// Resident memory of all of a stack's processes, KiB.
fn rss(stack: &Stack) -> anyhow::Result<u64> {
    stack.pids().into_iter().map(stacks::rss_kib).sum()
}

/// CPU time of all of a stack's processes, ms.
fn cpu(stack: &Stack) -> f64 {
    stack
        .pids()
        .into_iter()
        .filter_map(|p| stacks::cpu_ms(p).ok())
        .sum()
}

/// Connects `auths.len()` sockets as fast as the node takes them; the tasks and the rate.
async fn storm(
    stack: &Stack,
    auths: Vec<Value>,
    recorder: &Arc<Recorder>,
    label: &str,
) -> anyhow::Result<(Vec<tokio::task::JoinHandle<()>>, f64)> {
    let count = auths.len();
    let started = Instant::now();
    let tasks =
        scenarios::subscribe_many_with(&stack.ports, count, |i| auths[i].clone(), recorder, label)
            .await?;
    Ok((tasks, count as f64 / started.elapsed().as_secs_f64()))
}

/// Measures one stack at one size; `Err` is where the stack stops.
async fn measure_size(
    kind: Kind,
    size: usize,
    plan: &ScalePlan,
    recorder: &Arc<Recorder>,
    next_point: &mut u64,
) -> anyhow::Result<SizeResult> {
    let contract = Contract { kind };
    let redis = testkit::RedisServer::start()?;
    let mut stack = Stack::start(kind, 1, &redis.url())?;

    // Memory: after one warm-up socket, so lazily built structures exist already.
    let warm_auth = contract.fanout_auth(size)?;
    let warm =
        scenarios::subscribe_many_with(&stack.ports, 1, |_| warm_auth.clone(), recorder, "warm-up")
            .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = rss(&stack)?;
    let fanout_auths = auths(size, |i| contract.fanout_auth(i))?;
    let (subs, fanout_storm) = storm(
        &stack,
        fanout_auths,
        recorder,
        &format!("{} sockets in one room", size),
    )
    .await
    .with_context(|| format!("connecting {size} sockets"))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_kib = rss(&stack)?;

    // Idle: heartbeats and timers with every socket open.
    let quiet = Duration::from_secs_f64(plan.point_secs);
    let idle_before = cpu(&stack);
    tokio::time::sleep(quiet).await;
    let idle_ms_per_sec = (cpu(&stack) - idle_before) / quiet.as_secs_f64();

    let sender = contract.sender(&stack).await?;
    let rate = (plan.fanout_deliveries_per_sec / size as f64).min(200.0);
    let pace = Pace {
        rate,
        messages: ((rate * plan.point_secs).round() as u64).max(3),
    };
    let room = contract.fanout_room();
    let measure = Measure {
        stack: &stack,
        sender: &sender,
        recorder,
        repeats: plan.repeats,
        idle_ms_per_sec,
    };
    let fanout = measure
        .runs(next_point, pace, size as u64, &|_| room.to_owned())
        .await?;
    for t in subs.into_iter().chain(warm) {
        t.abort();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Targeted: one room per socket, each message to one of them.
    let targeted_auths = auths(size, |i| contract.targeted_auth(i))?;
    let (subs, targeted_storm) = storm(
        &stack,
        targeted_auths,
        recorder,
        &format!("{} sockets, one room each", size),
    )
    .await
    .with_context(|| format!("connecting {size} sockets in their own rooms"))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let users = size as u64;
    let pace = Pace {
        rate: plan.targeted_rate as f64,
        messages: (plan.targeted_rate as f64 * plan.point_secs) as u64,
    };
    let targeted = measure
        .runs(next_point, pace, 1, &move |seq| {
            format!("user:{}", seq.wrapping_mul(7919) % users)
        })
        .await?;

    // SIGTERM with every socket open.
    let started = Instant::now();
    let exit = stack.terminate(Duration::from_secs(30));
    let mut clients_closed = None;
    while started.elapsed() < Duration::from_secs(30) {
        if subs.iter().all(tokio::task::JoinHandle::is_finished) {
            clients_closed = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in subs {
        t.abort();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(SizeResult {
        connections: size,
        storm_per_sec: vec![fanout_storm, targeted_storm],
        rss_before_kib,
        rss_after_kib,
        kib_per_connection: rss_after_kib.saturating_sub(rss_before_kib) as f64 / size as f64,
        idle_cpu_pct: idle_ms_per_sec / 10.0,
        fanout,
        targeted,
        drain: Some(Drain {
            exit_ms: exit.map(ms),
            clients_closed_ms: clients_closed.map(ms),
        }),
    })
}

/// What every point of one size shares.
struct Measure<'a> {
    stack: &'a Stack,
    sender: &'a Sender,
    recorder: &'a Recorder,
    repeats: u32,
    /// The node's CPU with every socket open and nothing sent, ms per second.
    idle_ms_per_sec: f64,
}

impl Measure<'_> {
    /// `repeats` points at `pace`, each message reaching `fanout` sockets of `room(seq)`.
    async fn runs(
        &self,
        next_point: &mut u64,
        pace: Pace,
        fanout: u64,
        room: &(dyn Fn(u64) -> String + Sync),
    ) -> anyhow::Result<Vec<ScalePoint>> {
        let mut points = Vec::new();
        for run in 1..=self.repeats {
            points.push(self.point(next_point, pace, run, fanout, room).await?);
        }
        Ok(points)
    }

    /// One point, printed as it is measured.
    async fn point(
        &self,
        next_point: &mut u64,
        pace: Pace,
        run: u32,
        fanout: u64,
        room: &(dyn Fn(u64) -> String + Sync),
    ) -> anyhow::Result<ScalePoint> {
        *next_point += 1;
        let started = Instant::now();
        let p = scenarios::paced_point(
            self.stack,
            None,
            self.sender,
            self.recorder,
            *next_point,
            pace,
            run,
            fanout,
            room,
        )
        .await?;
        let secs = started.elapsed().as_secs_f64();
        let delivered = p.delivered.max(1) as f64;
        let node_ms = p.node_cpu_us_per_delivery * delivered / 1000.0;
        let net_ms = (node_ms - self.idle_ms_per_sec * secs).max(0.0);
        let point = ScalePoint {
            run,
            rate: pace.rate,
            messages: pace.messages,
            expected: p.expected,
            delivered: p.delivered,
            loss: p.loss,
            p50_ms: p.latency.p50_ms,
            p99_ms: p.latency.p99_ms,
            node_cpu_us_per_delivery: p.node_cpu_us_per_delivery,
            net_cpu_us_per_delivery: net_ms * 1000.0 / delivered,
            generator_cpu_pct: p.generator_cpu_pct,
        };
        eprintln!(
            "    {:>3} × {fanout:>6} at {:>7.2} msg/s run {run}: p50 {:>7.1} ms  p99 {:>7.1} ms  loss {:>6}  node {:>5.2} µs/delivery ({:>5.2} without idle)  gen cpu {:>3.0}%",
            pace.messages,
            pace.rate,
            point.p50_ms,
            point.p99_ms,
            point.loss,
            point.node_cpu_us_per_delivery,
            point.net_cpu_us_per_delivery,
            point.generator_cpu_pct
        );
        Ok(point)
    }
}

/// `bench --scale [--quick]`: every stack at every reachable size; writes the report.
pub(crate) async fn run(quick: bool) -> anyhow::Result<()> {
    let plan = ScalePlan::new(quick);
    if let Some(note) = &plan.capped {
        eprintln!("scale: {note}");
    }
    let started = Instant::now();
    stacks::prepare_node_peer()?;
    let recorder = Arc::new(Recorder::default());
    let mut next_point = 0;
    let mut results = Vec::new();
    let kinds = [
        Kind::PeerRaw,
        Kind::Gateway,
        Kind::Roomcast,
        Kind::Socketioxide,
        Kind::Node,
    ];
    for kind in kinds {
        if !kind.available() {
            eprintln!(
                "\n== {} == not built (no ../shared/peer-raw): left out",
                kind.name()
            );
            continue;
        }
        eprintln!("\n== {} ==", kind.name());
        let mut out = StackScale {
            key: kind.key().into(),
            name: kind.name().into(),
            sizes: Vec::new(),
            stopped: None,
        };
        for &size in &plan.reachable {
            eprintln!("  {size} connections");
            match measure_size(kind, size, &plan, &recorder, &mut next_point).await {
                Ok(r) => {
                    eprintln!(
                        "    storm {:.0}/{:.0} conn/s, {:.2} KiB/conn, idle {:.1} % cpu, drain {:?}",
                        r.storm_per_sec[0],
                        r.storm_per_sec[1],
                        r.kib_per_connection,
                        r.idle_cpu_pct,
                        r.drain
                    );
                    let lossy = r.fanout.iter().chain(&r.targeted).any(|p| p.loss > 0);
                    out.sizes.push(r);
                    if lossy {
                        out.stopped = Some(format!("lost messages at {size} connections"));
                        break;
                    }
                }
                Err(e) => {
                    eprintln!("    stopped: {e:#}");
                    out.stopped = Some(format!("at {size} connections: {e:#}"));
                    break;
                }
            }
        }
        results.push(out);
    }
    let results = ScaleResults {
        plan,
        machine: crate::machine(),
        date: crate::report::today(),
        stacks: results,
        seconds: started.elapsed().as_secs_f64(),
    };
    crate::scale_report::write(&results, quick)
}
