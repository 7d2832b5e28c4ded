//! A shard's failover on Redis Cluster, felt by that shard only, with connection state
//! recovery on: real processes, 3 masters + 3 replicas, 3 gateways.
//!
//! Rooms of a live namespace are spread over every shard and published every 100 ms;
//! the master that holds the recorded namespace (`/`, all under one hash tag) is killed.
//! Rooms on the two other shards receive every message, without a gap; the killed
//! shard's rooms resume (the time is printed); a client that was away during the
//! failover comes back on another node and recovers everything the cluster kept. Before
//! that, subscriber connections killed behind the nodes' backs (`CLIENT KILL`) are
//! repaired and counted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rooms::{Room, ScopedRoom};
use serde_json::{Value, json};
use testkit::{RedisClusterSet, SioClient, TestNode, spawn_redis_cluster, token};

const LIVE: &str = "/live";

/// A live publish: room index, sequence number, when, accepted.
type Sent = (u64, u64, Instant, bool);

async fn nodes(set: &RedisClusterSet) -> Vec<TestNode> {
    // The recorded namespace's master first among the seeds: the one that will die is
    // the one every new connection tries first (the worst case).
    let owner = set.master_of("{/}").unwrap();
    let mut seeds = set.seeds();
    seeds.sort_by_key(|s| !s.ends_with(&format!(":{owner}")));
    spawn_redis_cluster(3, &seeds[0], |_, c| {
        c.redis_cluster_nodes = seeds.clone();
        c.namespaces = vec!["/".into(), LIVE.into()];
        c.recovery = gateway::RecoveryConfig {
            namespaces: vec!["/".into()],
            window: Duration::from_secs(60),
            max_len: 10_000,
        };
    })
    .await
    .unwrap()
}

fn auth(user: &str) -> Value {
    json!({"token": token(json!({"sub": user, "rooms": ["doc:*"]}))})
}

fn channel(node: &TestNode, ns: &str, room: &str) -> String {
    let room = ScopedRoom::new(None, &Room::parse(room).unwrap()).unwrap();
    node.cluster.channels().room(ns, &room)
}

async fn repaired(nodes: &[TestNode]) -> f64 {
    let mut n = 0.0;
    for node in nodes {
        n += node
            .metric("roomcast_bus_subscriptions_repaired_total", &[])
            .await
            .unwrap();
    }
    n
}

/// Reads `tick` events (`{room, seq}`) in the background until told to stop, so the
/// server never has to buffer for a client that is not reading.
fn collect(
    mut c: SioClient,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Vec<(u64, u64)>>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            if stopped.try_recv().is_ok() {
                return got;
            }
            match tokio::time::timeout(Duration::from_millis(200), c.expect("tick")).await {
                Ok(Ok((e, _))) => got.push((
                    e.args[0]["room"].as_u64().unwrap(),
                    e.args[0]["seq"].as_u64().unwrap(),
                )),
                Ok(Err(e)) => panic!("a watcher lost its connection: {e:#}"),
                Err(_) => {}
            }
        }
    });
    (stop, task)
}

// Several threads: the nodes run in this process, and the redis-cli calls below block.
// Not in `cargo test` by default: under CI load a watcher's connection has been seen to
// drop during the failover (1-2 runs in 10), which is being investigated; the e2e
// matrix's `redis cluster` row covers the failover and recovery in CI meanwhile. Run it
// with `cargo test -p gateway --test cluster_failover -- --ignored`.
#[ignore = "flaky under load: a watcher's connection occasionally drops during the failover"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_is_felt_only_by_the_failed_shard_and_recovery_spans_it() {
    let mut set = RedisClusterSet::start().unwrap();
    let nodes = nodes(&set).await;

    // Live rooms on every shard; the recorded namespace on one.
    let rooms: Vec<String> = (0..12).map(|i| format!("doc:Live:{i}")).collect();
    let owner_of: Vec<u16> = rooms
        .iter()
        .map(|r| set.master_of(&channel(&nodes[0], LIVE, r)).unwrap())
        .collect();
    assert_eq!(
        owner_of.iter().collect::<BTreeSet<_>>().len(),
        3,
        "the live rooms should span every shard"
    );
    let history = nodes[0].cluster.channels().history("/");
    let recorded_room = channel(&nodes[0], "/", "doc:Rec:1");
    let victim = set.master_of(&history).unwrap();
    assert_eq!(
        set.master_of(&recorded_room).unwrap(),
        victim,
        "one hash tag, one shard"
    );

    // TEST_LOG=bus=info shows what the nodes' buses do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_default())
        .try_init();
    let mut watchers = Vec::new();
    for node in &nodes[1..] {
        let mut c = SioClient::connect(&node.url(), LIVE, Some(auth("ann")))
            .await
            .unwrap();
        // Ready once its automatic rooms are subscribed: the server says `connected`.
        c.expect("connected").await.unwrap();
        for room in &rooms {
            assert_eq!(c.join(room).await.unwrap()["ok"], true);
        }
        watchers.push(c);
    }
    let mut away = SioClient::connect(&nodes[0].url(), "/", Some(auth("bob")))
        .await
        .unwrap();
    away.expect("connected").await.unwrap();
    let pid = away.pid.clone().expect("recovery gives a pid");
    assert_eq!(away.join("doc:Rec:1").await.unwrap()["ok"], true);

    // Subscriber links killed behind every node's back: repaired, counted, delivered.
    // Nothing is repaired while nothing went wrong (the checks run every 3 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = repaired(&nodes).await;
    assert_eq!(before, 0.0, "repairs counted while nothing went wrong");
    let killed_links = Instant::now();
    let mut killed = 0;
    for port in owner_of.iter().collect::<BTreeSet<_>>() {
        // RESP3 subscribers are not of `TYPE pubsub`: find them by what they hold.
        let list = set.cli(*port, &["CLIENT", "LIST"]).unwrap();
        for line in list.lines() {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            let holds = |name: &str| field(name).is_some_and(|n| n != "0");
            if holds("sub") || holds("ssub") {
                let id = field("id").unwrap();
                set.cli(*port, &["CLIENT", "KILL", "ID", &id]).unwrap();
                killed += 1;
            }
        }
    }
    assert!(
        killed >= 3,
        "every node holds subscriptions ({killed} links killed)"
    );
    let probe = &rooms[0];
    loop {
        assert!(
            killed_links.elapsed() < Duration::from_secs(10),
            "subscriptions were not repaired"
        );
        nodes[0]
            .publish_accepted(json!({"ns": LIVE, "event": "probe", "to": [probe], "data": 1}))
            .await
            .unwrap();
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(300), watchers[0].expect("probe")).await
        {
            break;
        }
    }
    let after = repaired(&nodes).await;
    assert!(after > before, "repairs are counted ({before} → {after})");
    eprintln!(
        "{killed} subscriber links killed on the masters: delivery back after {:.2} s, {} subscriptions repaired",
        killed_links.elapsed().as_secs_f64(),
        after - before
    );
    // Drain the probes that arrived late.
    for w in &mut watchers {
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(300), w.expect("probe")).await
        {}
    }

    // The last offset `away` saw, then it goes.
    nodes[1]
        .publish_accepted(json!({"event": "rec", "to": ["doc:Rec:1"], "data": {"seq": 0}}))
        .await
        .unwrap();
    let (e, _) = away.expect("rec").await.unwrap();
    let offset = e.args.last().and_then(Value::as_str).unwrap().to_owned();
    away.abort();

    let collectors: Vec<_> = watchers.into_iter().map(collect).collect();
    // Publishes: every live room and the recorded room every 100 ms, each on its own task
    // (a publish to the failed shard waits; the others must not wait for it).
    let sent: Arc<std::sync::Mutex<Vec<Sent>>> = Arc::default();
    let recorded: Arc<std::sync::Mutex<Vec<(u64, Instant, bool)>>> = Arc::default();
    let start = Instant::now();
    let mut kill_at = None;
    let mut promoted_at = None;
    let mut tasks = Vec::new();
    for seq in 0..150u64 {
        if seq == 30 {
            tokio::task::block_in_place(|| set.kill(victim));
            kill_at = Some(Instant::now());
        }
        for (i, room) in rooms.iter().enumerate() {
            let url = nodes[(i + seq as usize) % 3].url();
            let body =
                json!({"ns": LIVE, "event": "tick", "to": [room], "data": {"room": i, "seq": seq}});
            let sent = sent.clone();
            let owner_of_room = owner_of[i];
            tasks.push(tokio::spawn(async move {
                let at = Instant::now();
                let answer = testkit::publish(&url, testkit::TEST_KEY, &body.to_string()).await;
                let ok = matches!(answer, Ok((202, _)));
                if !ok && owner_of_room != victim {
                    eprintln!("publish to a healthy shard refused: {answer:?}");
                }
                sent.lock().unwrap().push((i as u64, seq, at, ok));
            }));
        }
        let url = nodes[seq as usize % 3].url();
        let body = json!({"event": "rec", "to": ["doc:Rec:1"], "data": {"seq": seq + 1}});
        let recorded = recorded.clone();
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            let ok = matches!(
                testkit::publish(&url, testkit::TEST_KEY, &body.to_string()).await,
                Ok((202, _))
            );
            recorded.lock().unwrap().push((seq + 1, at, ok));
        }));
        // When Redis has promoted the replica (the cluster's own failover time).
        if let Some(kill) = kill_at
            && promoted_at.is_none()
            && tokio::task::block_in_place(|| set.master_of(&history)).is_ok_and(|m| m != victim)
        {
            promoted_at = Some(kill.elapsed());
        }
        tokio::time::sleep_until((start + Duration::from_millis(100 * (seq + 1))).into()).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kill_at = kill_at.unwrap();
    let promoted = set.master_of(&history).unwrap();
    assert_ne!(promoted, victim);

    // Healthy shards: every accepted message, no gap. The failed shard: from some
    // publish on, every accepted one arrives again — that publish's time is the resume.
    let sent = sent.lock().unwrap().clone();
    let healthy = |room: u64| owner_of[room as usize] != victim;
    let mut slowest = Duration::ZERO;
    for (stop, task) in collectors {
        let _ = stop.send(());
        let got: BTreeSet<(u64, u64)> = task.await.unwrap().into_iter().collect();
        let refused: Vec<_> = sent.iter().filter(|s| healthy(s.0) && !s.3).collect();
        assert!(
            refused.is_empty(),
            "publishes to healthy shards refused: {refused:?}"
        );
        let missing: Vec<_> = sent
            .iter()
            .filter(|s| healthy(s.0) && !got.contains(&(s.0, s.1)))
            .map(|s| (s.0, s.1))
            .collect();
        assert!(missing.is_empty(), "healthy shards had a gap: {missing:?}");
        let resume = (31..150u64)
            .find(|&from| {
                sent.iter()
                    .filter(|s| !healthy(s.0) && s.1 >= from && s.3)
                    .all(|s| got.contains(&(s.0, s.1)))
            })
            .expect("the failed shard's rooms never resumed");
        let at = sent
            .iter()
            .filter(|s| s.1 == resume)
            .map(|s| s.2)
            .min()
            .unwrap();
        slowest = slowest.max(at.saturating_duration_since(kill_at));
    }
    let failover = promoted_at.expect("the replica was promoted while publishing");
    eprintln!(
        "master :{victim} killed, :{promoted} promoted after {:.1} s: the other shards' rooms delivered every message; the failed shard's rooms resumed {:.1} s after the kill",
        failover.as_secs_f64(),
        slowest.as_secs_f64()
    );
    // Within the failover plus a second (the topology is read every second); generous by
    // the publishing and polling steps.
    assert!(
        slowest <= failover + Duration::from_millis(1500),
        "resumed {slowest:?} after the kill, the failover took {failover:?}"
    );

    // The client that was away comes back on another node: everything the cluster kept.
    let auth = json!({"token": token(json!({"sub": "bob", "rooms": ["doc:*"]})), "pid": pid, "offset": offset});
    let mut back = SioClient::connect(&nodes[2].url(), "/", Some(auth))
        .await
        .unwrap();
    let connected = back.expect_arg("connected").await.unwrap();
    assert_eq!(connected["recovered"], true, "{connected}");
    // In the history's order (offsets ascending; publishes that raced during the
    // failover were recorded in the order the new master took them), each once.
    let mut got = Vec::new();
    let mut last = offset.clone();
    while let Ok(Ok((e, _))) =
        tokio::time::timeout(Duration::from_secs(2), back.expect("rec")).await
    {
        let at = e.args.last().and_then(Value::as_str).unwrap().to_owned();
        assert_eq!(
            bus::offset_cmp(&at, &last),
            std::cmp::Ordering::Greater,
            "replayed out of order"
        );
        last = at;
        got.push(e.args[0]["seq"].as_u64().unwrap());
    }
    let n = got.len();
    let got: BTreeSet<u64> = got.into_iter().collect();
    assert_eq!(got.len(), n, "nothing twice");
    let recorded = recorded.lock().unwrap().clone();
    let mut lost_unreplicated = 0;
    for (seq, at, ok) in &recorded {
        if !ok || got.contains(seq) {
            continue;
        }
        // Only what the dead master acknowledged in its last moments (asynchronous
        // replication) may be gone.
        assert!(
            *at < kill_at && kill_at.duration_since(*at) < Duration::from_secs(1),
            "recorded message {seq} (accepted {:?} from the kill) was not recovered",
            at.checked_duration_since(kill_at)
        );
        lost_unreplicated += 1;
    }
    let accepted = recorded.iter().filter(|r| r.2).count();
    eprintln!(
        "recovered across the failover on another node: {} of {accepted} accepted recorded messages ({lost_unreplicated} acknowledged by the dead master and not replicated)",
        got.len()
    );
    // Live again; the SDK publishes into the recorded namespace on the cluster too, and
    // pages through the history.
    nodes[0]
        .publish_accepted(json!({"event": "rec", "to": ["doc:Rec:1"], "data": {"seq": 1000}}))
        .await
        .unwrap();
    assert_eq!(back.expect_arg("rec").await.unwrap()["seq"], 1000);
    let sdk = publisher::Publisher::connect_cluster(
        bus::RedisClusterConfig::new(set.seeds()).with_publish_retry_budget(Duration::from_secs(2)),
    )
    .unwrap()
    .with_channel_prefix(nodes[0].cluster.channels().prefix())
    .with_recovery(&["/"], Duration::from_secs(60), 10_000);
    sdk.to_room("doc:Rec:1")
        .emit("rec", &json!({"seq": 1001}))
        .await
        .unwrap();
    let (e, _) = back.expect("rec").await.unwrap();
    assert_eq!(e.args[0]["seq"], 1001);
    assert!(
        e.args
            .last()
            .and_then(Value::as_str)
            .is_some_and(bus::is_offset),
        "recorded: {e:?}"
    );
    let first = sdk.history("doc:Rec:1", None, 100).await.unwrap();
    assert_eq!(first.messages.len(), 100);
    let rest = sdk
        .history("doc:Rec:1", first.next.as_deref(), 1000)
        .await
        .unwrap();
    let last = &rest.messages.last().unwrap().1;
    let data = last
        .data
        .clone()
        .or_else(|| last.args.as_ref()?.first().cloned())
        .unwrap();
    assert_eq!(data["seq"], 1001, "the history ends with the SDK's message");
    assert_eq!(first.messages.len() + rest.messages.len(), got.len() + 3);
}
