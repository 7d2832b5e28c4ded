//! Connection state recovery under forced disconnects: 300 clients receive 50 events/s
//! in a recovery namespace while each one's connection is cut every 15 s from the client
//! side, and the nodes are killed (SIGKILL) and started again in turn. Every client
//! reconnects with its session id and last offset to another node, Socket.IO-style, and
//! must end with every event, in order, once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use serde_json::{Value, json};
use testkit::{SioClient, TEST_KEY, publish, token};
use tokio::sync::{Mutex, RwLock};

use crate::{Env, Outcome, docker};

/// The namespace the gateways record.
pub(crate) const NAMESPACE: &str = "/recovery";

const CLIENTS: usize = 300;
const RATE: u64 = 50;
/// Each client cuts its own connection this often (staggered across clients).
const CUT_EVERY: Duration = Duration::from_secs(15);
/// How long the stream runs.
const STREAM_FOR: Duration = Duration::from_secs(45);
const ROOM: &str = "doc:Stream:1";

/// One client's account.
#[derive(Default)]
struct Account {
    /// Every seq received, in arrival order.
    seqs: Vec<u64>,
    /// The offset of each, in the same order.
    offsets: Vec<String>,
    connects: u32,
    recovered: u32,
    /// Reconnects that came back with a new session (a gap the client cannot see).
    fresh: u32,
    cuts: u32,
    /// What happened when, by position in `seqs` (for the report of a failure).
    marks: Vec<(usize, String)>,
}

/// A Socket.IO client with connection state recovery, as the official one does it:
/// keeps the pid of the CONNECT reply and the last offset received, and sends both
/// when it reconnects.
async fn client(
    i: usize,
    urls: Arc<RwLock<Vec<String>>>,
    account: Arc<Mutex<Account>>,
    stop: Arc<AtomicBool>,
    joined: Arc<AtomicU64>,
) {
    let user = format!("rec{i}");
    let mut pid: Option<String> = None;
    let mut offset: Option<String> = None;
    let mut attempt = i;
    // Staggered: clients cut their connections at different moments.
    let mut next_cut = Instant::now() + CUT_EVERY.mul_f64((i % 15) as f64 / 15.0 + 0.2);
    while !stop.load(Ordering::Relaxed) {
        let url = {
            let urls = urls.read().await;
            attempt += 1;
            urls[attempt % urls.len()].clone()
        };
        let mut auth =
            json!({"token": token(json!({"sub": user, "tenant_id": "e2e", "rooms": ["doc:*"]}))});
        if let (Some(p), Some(o)) = (&pid, &offset) {
            auth["pid"] = json!(p);
            auth["offset"] = json!(o);
        }
        let Ok(mut c) = SioClient::connect(&url, NAMESPACE, Some(auth)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok((connected, before)) = c.expect("connected").await else {
            continue;
        };
        let connected = connected.args.into_iter().next().unwrap_or(Value::Null);
        // Nothing may come before `connected`; if something does, it counts.
        for event in before.into_iter().filter(|e| e.name == "tick") {
            record(&account, &event, &mut offset).await;
        }
        let recovered = connected["recovered"] == true;
        {
            let mut a = account.lock().await;
            let at = a.seqs.len();
            a.marks.push((
                at,
                format!(
                    "connected to {url} as {} recovered={recovered} offset={offset:?}",
                    c.sid
                ),
            ));
            a.connects += 1;
            if recovered {
                a.recovered += 1;
            } else if pid.is_some() {
                a.fresh += 1;
            }
        }
        if !recovered {
            if c.join(ROOM).await.map(|a| a["ok"] == true).unwrap_or(false) {
                if pid.is_none() {
                    joined.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                continue;
            }
        }
        pid = c.pid.clone();
        loop {
            if stop.load(Ordering::Relaxed) {
                c.close().await;
                return;
            }
            if Instant::now() >= next_cut {
                next_cut += CUT_EVERY;
                {
                    let mut a = account.lock().await;
                    a.cuts += 1;
                    let at = a.seqs.len();
                    a.marks.push((at, "cut".into()));
                }
                // A lost network, as the client sees it: no goodbye.
                c.abort();
                break;
            }
            match tokio::time::timeout(Duration::from_millis(500), c.expect("tick")).await {
                Err(_) => {}
                Ok(Ok((event, _))) => record(&account, &event, &mut offset).await,
                // The node went away (killed): reconnect elsewhere.
                Ok(Err(e)) => {
                    let mut a = account.lock().await;
                    let at = a.seqs.len();
                    a.marks.push((at, format!("lost: {e:#}")));
                    break;
                }
            }
        }
    }
}

/// Counts a received tick and remembers its offset, as the client library does.
async fn record(account: &Mutex<Account>, event: &testkit::Event, offset: &mut Option<String>) {
    let seq = event.args.first().and_then(|d| d["seq"].as_u64());
    let o = event.args.last().and_then(Value::as_str).map(str::to_owned);
    if let (Some(seq), Some(o)) = (seq, &o) {
        let mut a = account.lock().await;
        a.seqs.push(seq);
        a.offsets.push(o.clone());
    }
    if o.is_some() {
        *offset = o;
    }
}

pub(crate) async fn forced_disconnects(env: &mut Env) -> anyhow::Result<Outcome> {
    let urls = Arc::new(RwLock::new(
        env.nodes.iter().map(|n| n.url.clone()).collect::<Vec<_>>(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let joined = Arc::new(AtomicU64::new(0));
    let accounts: Vec<_> = (0..CLIENTS)
        .map(|_| Arc::new(Mutex::new(Account::default())))
        .collect();
    let tasks: Vec<_> = accounts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            tokio::spawn(client(
                i,
                urls.clone(),
                a.clone(),
                stop.clone(),
                joined.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while joined.load(Ordering::Relaxed) < CLIENTS as u64 {
        ensure!(
            Instant::now() < deadline,
            "only {} of {CLIENTS} clients joined",
            joined.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The stream: each event retried on the next node until one accepts it, so that
    // every seq was published exactly once.
    let published = Arc::new(AtomicU64::new(0));
    let publishing = {
        let (urls, published, stop) = (urls.clone(), published.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
            let started = Instant::now();
            let mut seq = 0u64;
            let mut node = 0usize;
            while started.elapsed() < STREAM_FOR && !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let body = json!({"tenant": "e2e", "ns": NAMESPACE, "event": "tick", "to": [ROOM], "data": {"seq": seq}}).to_string();
                let mut sent = false;
                for _ in 0..30 {
                    let url = {
                        let urls = urls.read().await;
                        urls[node % urls.len()].clone()
                    };
                    if publish(&url, TEST_KEY, &body)
                        .await
                        .is_ok_and(|(s, _)| s == 202)
                    {
                        sent = true;
                        break;
                    }
                    node += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if !sent {
                    return Err(anyhow::anyhow!("seq {seq}: no node accepted it"));
                }
                seq += 1;
                published.store(seq, Ordering::Relaxed);
            }
            Ok(())
        })
    };

    // Kill the nodes in turn while the stream runs.
    let started = Instant::now();
    let mut kills = Vec::new();
    for i in 0..env.nodes.len() {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let id = env.nodes[i].container.id().to_owned();
        docker(&["kill", &id])?;
        let killed = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        crate::deploy::start_again(env, i).await?;
        urls.write().await[i] = env.nodes[i].url.clone();
        kills.push(killed.duration_since(started).as_secs_f64());
    }
    publishing.await??;
    let total = published.load(Ordering::Relaxed);

    // Every client catches up to the last event.
    let settle = Instant::now() + Duration::from_secs(30);
    loop {
        let mut behind = 0;
        let mut example = String::new();
        for (i, a) in accounts.iter().enumerate() {
            let a = a.lock().await;
            if a.seqs.last() != Some(&(total - 1)) {
                behind += 1;
                if example.is_empty() {
                    let marks: Vec<_> = a.marks.iter().rev().take(4).collect();
                    example = format!(
                        "client {i}: {} received, last {:?}; latest: {marks:?}",
                        a.seqs.len(),
                        a.seqs.last()
                    );
                }
            }
        }
        if behind == 0 {
            break;
        }
        if Instant::now() > settle {
            stop.store(true, Ordering::Relaxed);
            bail!(
                "{behind} of {CLIENTS} clients had not received the last event 30 s after it ({example})"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }

    // A gateway duplicate is one offset delivered twice; the stream's order is the
    // offsets' order. The same seq under two offsets is the test's publisher retrying a
    // publish that had in fact landed (reported, not a gateway fault).
    let (mut complete, mut missing, mut duplicates, mut disorder) = (0, 0u64, 0u64, 0u64);
    let mut republished = std::collections::BTreeSet::new();
    let mut first_problem = None;
    let (mut connects, mut recovered, mut fresh, mut cuts) = (0, 0, 0, 0);
    for a in &accounts {
        let a = a.lock().await;
        connects += a.connects;
        recovered += a.recovered;
        fresh += a.fresh;
        cuts += a.cuts;
        let mut by_seq: std::collections::HashMap<u64, std::collections::HashSet<&str>> =
            std::collections::HashMap::new();
        for (seq, offset) in a.seqs.iter().zip(&a.offsets) {
            by_seq.entry(*seq).or_default().insert(offset.as_str());
        }
        let lost = (0..total).filter(|s| !by_seq.contains_key(s)).count() as u64;
        missing += lost;
        republished.extend(by_seq.iter().filter(|(_, o)| o.len() > 1).map(|(s, _)| *s));
        let mut offsets: Vec<&str> = a.offsets.iter().map(String::as_str).collect();
        let bad = offsets
            .windows(2)
            .position(|w| bus::offset_cmp(w[1], w[0]).is_le());
        disorder += offsets
            .windows(2)
            .filter(|w| bus::offset_cmp(w[1], w[0]).is_le())
            .count() as u64;
        offsets.sort_by(|x, y| bus::offset_cmp(x, y));
        let before = offsets.len();
        offsets.dedup();
        duplicates += (before - offsets.len()) as u64;
        if let (Some(at), None) = (bad, &first_problem) {
            let range = at.saturating_sub(3)..(at + 4).min(a.seqs.len());
            let around: Vec<_> = a.seqs[range.clone()]
                .iter()
                .zip(&a.offsets[range])
                .collect();
            let marks: Vec<_> = a
                .marks
                .iter()
                .filter(|(p, _)| p.abs_diff(at) < 20)
                .collect();
            first_problem = Some(format!("at {at}: {around:?}; events near it: {marks:?}"));
        }
        complete += usize::from(lost == 0);
    }
    let expected = total * CLIENTS as u64;
    let delivered = expected - missing;
    let figures = format!(
        "{CLIENTS} clients, {RATE} events/s for {}s ({total} events), {cuts} client-side cuts and 3 node kills (at {}): {recovered} of {} reconnects recovered, {fresh} fresh; {delivered}/{expected} deliveries ({:.3} %), {complete}/{CLIENTS} clients complete, {duplicates} duplicates, {disorder} out of order; publisher retries that landed twice: {}",
        STREAM_FOR.as_secs(),
        kills
            .iter()
            .map(|k| format!("{k:.0}s"))
            .collect::<Vec<_>>()
            .join(", "),
        connects - CLIENTS as u32,
        100.0 * delivered as f64 / expected.max(1) as f64,
        republished.len(),
    );
    ensure!(
        missing == 0 && duplicates == 0 && disorder == 0,
        "not every event once and in order: {figures}; first problem {}",
        first_problem.unwrap_or_default()
    );
    Ok(Outcome {
        figures,
        details: json!({
            "clients": CLIENTS, "rate": RATE, "events": total, "cuts": cuts,
            "reconnects": connects - CLIENTS as u32, "recovered": recovered, "fresh": fresh,
            "delivered": delivered, "expected": expected, "duplicates": duplicates,
            "out_of_order": disorder, "kills_s": kills,
        }),
    })
}
