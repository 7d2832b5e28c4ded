//! The scenario matrix. Each scenario uses real Socket.IO clients spread over the nodes
//! and returns the figures it measured, or why it failed.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, ensure};
use serde_json::{Value, json};
use testkit::{SioClient, TEST_KEY, publish, token};

use crate::{Env, Node, Outcome, docker};

type Scenario = for<'a> fn(
    &'a mut Env,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = anyhow::Result<Outcome>> + 'a>,
>;

/// Runs every scenario in order; a failure does not stop the others.
pub(crate) async fn run_all(env: &mut Env) -> Vec<(&'static str, anyhow::Result<Outcome>)> {
    let matrix: [(&'static str, Scenario); 14] = [
        ("cross-node delivery", |e| Box::pin(cross_node(e))),
        ("one trace, 3 nodes", |e| Box::pin(one_trace(e))),
        ("user targeting", |e| Box::pin(user_targeting(e))),
        ("document subscription", |e| Box::pin(document(e))),
        ("high volume", |e| Box::pin(high_volume(e))),
        ("connection cleanup", |e| Box::pin(cleanup(e))),
        ("image", |e| Box::pin(crate::deploy::image(e))),
        ("redis failover", |e| Box::pin(failover(e))),
        ("partition", |e| Box::pin(partition(e))),
        ("rolling restart", |e| {
            Box::pin(crate::deploy::rolling_restart(e))
        }),
        ("recovery under kills", |e| {
            Box::pin(crate::recovery::forced_disconnects(e))
        }),
        ("node loss", |e| Box::pin(node_loss(e))),
        ("compose up", |e| Box::pin(crate::deploy::compose(e))),
        ("redis cluster", |e| {
            Box::pin(crate::sharded::redis_cluster(e))
        }),
    ];
    // E2E_ONLY=name,name runs a subset (for working on one scenario).
    let only = std::env::var("E2E_ONLY").unwrap_or_default();
    let mut results = Vec::new();
    for (name, scenario) in matrix {
        if !only.is_empty() && !only.split(',').any(|o| name.contains(o.trim())) {
            continue;
        }
        eprintln!("e2e: {name} ...");
        let started = Instant::now();
        let result = match tokio::time::timeout(Duration::from_secs(180), scenario(env)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!("timed out after 180 s")),
        };
        match &result {
            Ok(o) => eprintln!(
                "e2e: {name}: pass in {:.1}s ({})",
                started.elapsed().as_secs_f64(),
                o.figures
            ),
            Err(e) => eprintln!("e2e: {name}: FAIL: {e:#}"),
        }
        results.push((name, result));
    }
    results
}

async fn connect(node: &Node, user: &str) -> anyhow::Result<SioClient> {
    let auth = json!({"token": token(json!({"sub": user, "tenant_id": "e2e", "rooms": ["*"]}))});
    let mut c = SioClient::connect(&node.url, "/", Some(auth))
        .await
        .map_err(|e| anyhow!("connecting to {}: {e}", node.id))?;
    c.expect("connected").await?;
    Ok(c)
}

/// Publishes `body` in the tenant of every e2e user; fails unless it is accepted.
async fn accepted(node: &Node, mut body: Value) -> anyhow::Result<()> {
    body["tenant"] = json!("e2e");
    let (status, res) = publish(&node.url, TEST_KEY, &body.to_string()).await?;
    ensure!(
        status == 202,
        "publish on {} answered {status}: {res}",
        node.id
    );
    Ok(())
}

/// The events a client received before `marker`, by name.
async fn before_marker(c: &mut SioClient, marker: &str) -> anyhow::Result<Vec<String>> {
    let (_, before) = c.expect(marker).await?;
    Ok(before.into_iter().map(|e| e.name).collect())
}

async fn health(node: &Node) -> anyhow::Result<Value> {
    Ok(reqwest::get(format!("{}/health", node.url))
        .await?
        .json()
        .await?)
}

/// Waits until the node's `/health` status is `status`.
pub(crate) async fn wait_health(
    node: &Node,
    status: &str,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if let Ok(h) = health(node).await
            && h["status"] == status
        {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < within,
            "{} did not report {status} within {within:?}",
            node.id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn close_all(clients: Vec<SioClient>) {
    for c in clients {
        c.close().await;
    }
}

async fn cross_node(env: &mut Env) -> anyhow::Result<Outcome> {
    let mut on2 = connect(&env.nodes[1], "x").await?;
    let mut on3 = connect(&env.nodes[2], "x").await?;

    accepted(
        &env.nodes[0],
        json!({"event": "via_http", "to": ["user:x"], "data": "h"}),
    )
    .await?;
    let sdk = publisher::Publisher::connect(&env.redis_url(), Duration::from_secs(3))?
        .with_channel_prefix(&env.prefix)
        .with_origin("e2e-sdk")
        .in_tenant("e2e");
    sdk.to_user("x").emit("via_sdk", &json!("s")).await?;
    let client = redis::Client::open(env.redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let legacy =
        json!({"event": "via_legacy", "message": "l", "user": "x", "site": "e2e"}).to_string();
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("realtime")
        .arg(legacy)
        .query_async(&mut conn)
        .await?;
    ensure!(
        receivers == 3,
        "3 nodes should listen on the legacy channel, {receivers} do"
    );

    for (node, c) in [("node-2", &mut on2), ("node-3", &mut on3)] {
        for event in ["via_http", "via_sdk", "via_legacy"] {
            c.expect(event)
                .await
                .with_context(|| format!("{event} on {node}"))?;
        }
    }
    close_all(vec![on2, on3]).await;
    Ok(Outcome {
        figures: "HTTP on node-1, SDK and legacy via Redis → received on node-2 and node-3".into(),
        details: json!({"paths": ["http", "sdk", "legacy"], "receivers": ["node-2", "node-3"]}),
    })
}

/// A publish on node-1 carrying a caller's `traceparent`: the collector gets one trace
/// with the publish span and a delivery span from each of the three containers.
async fn one_trace(env: &mut Env) -> anyhow::Result<Outcome> {
    let mut clients = Vec::new();
    for node in &env.nodes {
        let mut c = connect(node, "tracer").await?;
        ensure!(c.join("room:traced").await?["ok"] == true, "join refused");
        clients.push(c);
    }
    let trace_id = format!("{:032x}", now_us());
    let caller_span = "00f067aa0ba902b7";
    let res = reqwest::Client::new()
        .post(format!("{}/v1/publish", env.nodes[0].url))
        .bearer_auth(TEST_KEY)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"tenant": "e2e", "event": "traced", "to": ["room:traced"]}))
        .send()
        .await?;
    ensure!(res.status() == 202, "publish answered {}", res.status());
    for c in &mut clients {
        c.expect("traced").await?;
    }
    let started = Instant::now();
    let ids: Vec<&str> = env.nodes.iter().map(|n| n.id.as_str()).collect();
    let summary = loop {
        let spans = env.traces.trace(&trace_id);
        if let Some(summary) = testkit::check_publish_trace(&spans, caller_span, "node-1", &ids)? {
            break summary;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(15),
            "the collector has {} spans of the trace after 15 s: {spans:?}",
            spans.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    close_all(clients).await;
    Ok(Outcome {
        figures: format!(
            "{summary}; exported within {:.1}s",
            started.elapsed().as_secs_f64()
        ),
        details: json!({"trace_id": trace_id}),
    })
}

async fn user_targeting(env: &mut Env) -> anyhow::Result<Outcome> {
    let mut x1 = connect(&env.nodes[0], "target").await?;
    let mut x2 = connect(&env.nodes[1], "target").await?;
    let mut other = connect(&env.nodes[2], "bystander").await?;
    accepted(
        &env.nodes[2],
        json!({"event": "private", "to": ["user:target"], "data": 1}),
    )
    .await?;
    accepted(&env.nodes[2], json!({"event": "marker", "to": ["*"]})).await?;
    for c in [&mut x1, &mut x2] {
        ensure!(
            before_marker(c, "marker").await? == ["private"],
            "a target socket missed its message"
        );
    }
    let leaked = before_marker(&mut other, "marker").await?;
    ensure!(leaked.is_empty(), "the bystander received {leaked:?}");
    close_all(vec![x1, x2, other]).await;
    Ok(Outcome {
        figures: "user:target on node-1 and node-2 received; bystander on node-3 did not".into(),
        details: json!({}),
    })
}

async fn document(env: &mut Env) -> anyhow::Result<Outcome> {
    let mut a = connect(&env.nodes[0], "a").await?;
    let mut b = connect(&env.nodes[1], "b").await?;
    let mut c = connect(&env.nodes[2], "c").await?;
    for s in [&mut a, &mut b] {
        let ack = s.join("doc:Task:T1").await?;
        ensure!(ack["ok"] == true, "join refused: {ack}");
    }
    const N: i64 = 50;
    for i in 0..N {
        accepted(
            &env.nodes[2],
            json!({"event": "doc_update", "to": ["doc:Task:T1"], "data": i}),
        )
        .await?;
    }
    accepted(&env.nodes[2], json!({"event": "marker", "to": ["*"]})).await?;
    for s in [&mut a, &mut b] {
        let (_, before) = s.expect("marker").await?;
        let seq: Vec<i64> = before
            .iter()
            .filter_map(|e| e.args.first()?.as_i64())
            .collect();
        ensure!(seq == (0..N).collect::<Vec<_>>(), "subscriber got {seq:?}");
    }
    let leaked = before_marker(&mut c, "marker").await?;
    ensure!(leaked.is_empty(), "a non-subscriber received {leaked:?}");
    close_all(vec![a, b, c]).await;
    Ok(Outcome {
        figures: format!(
            "{N} updates in order on node-1 and node-2; node-3's non-subscriber got none"
        ),
        details: json!({"messages": N}),
    })
}

async fn high_volume(env: &mut Env) -> anyhow::Result<Outcome> {
    const RATE: u64 = 1000;
    const SECONDS: u64 = 10;
    const TOTAL: u64 = RATE * SECONDS;
    let mut receivers = Vec::new();
    for node in &env.nodes {
        let mut c = connect(node, &format!("load-{}", node.id)).await?;
        ensure!(c.join("room:load").await?["ok"] == true, "join refused");
        receivers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(TOTAL as usize);
            for expected in 0..TOTAL {
                let arg = c
                    .expect_arg("load")
                    .await
                    .with_context(|| format!("message {expected}"))?;
                let seq = arg["seq"].as_u64().unwrap_or(u64::MAX);
                ensure!(seq == expected, "expected message {expected}, got {seq}");
                let sent = arg["ts_us"].as_u64().unwrap_or(0);
                latencies.push(now_us().saturating_sub(sent));
            }
            c.close().await;
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let sdk = publisher::Publisher::connect(&env.redis_url(), Duration::from_secs(3))?
        .with_channel_prefix(&env.prefix)
        .with_origin("e2e-load")
        .in_tenant("e2e");
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    for seq in 0..TOTAL {
        tick.tick().await;
        sdk.to_room("room:load")
            .emit("load", &json!({"seq": seq, "ts_us": now_us()}))
            .await?;
    }
    let sent_in = started.elapsed();
    let mut all = Vec::new();
    for r in receivers {
        all.extend(r.await??);
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    let rate = TOTAL as f64 / sent_in.as_secs_f64();
    Ok(Outcome {
        figures: format!(
            "{TOTAL} msgs at {rate:.0}/s × 3 nodes, all delivered in order; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            pct(0.5),
            pct(0.99),
            pct(1.0)
        ),
        details: json!({
            "messages": TOTAL, "receivers": 3, "rate_per_s": rate,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0),
        }),
    })
}

async fn room_channels(env: &Env) -> anyhow::Result<Vec<String>> {
    let client = redis::Client::open(env.redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{}:room:*", env.prefix);
    Ok(redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg(pattern)
        .query_async(&mut conn)
        .await?)
}

async fn cleanup(env: &mut Env) -> anyhow::Result<Outcome> {
    // Every earlier scenario closed its clients; open and drop some more to be sure.
    let mut clients = Vec::new();
    for (i, node) in env.nodes.iter().enumerate() {
        let mut c = connect(node, &format!("tmp-{i}")).await?;
        c.join("doc:Task:cleanup").await?;
        clients.push(c);
    }
    ensure!(
        !room_channels(env).await?.is_empty(),
        "room channels should exist while clients are connected"
    );
    close_all(clients).await;
    let started = Instant::now();
    loop {
        let mut gauges = Vec::new();
        for node in &env.nodes {
            let h = health(node).await?;
            gauges.push((h["rooms"].as_u64(), h["connections"].as_u64()));
        }
        let channels = room_channels(env).await?;
        if gauges.iter().all(|g| *g == (Some(0), Some(0))) && channels.is_empty() {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "after 10 s: (rooms, connections) per node {gauges:?}, channels left {channels:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Outcome {
        figures: format!(
            "rooms and connections 0 on every node, no room channels in Redis, after {:.0} ms",
            started.elapsed().as_secs_f64() * 1000.0
        ),
        details: json!({"ms": started.elapsed().as_millis()}),
    })
}

async fn failover(env: &mut Env) -> anyhow::Result<Outcome> {
    let mut on2 = connect(&env.nodes[1], "fo").await?;
    env.redis.stop().await.context("stopping Redis")?;
    let stopped = Instant::now();
    let mut detect = Vec::new();
    for node in &env.nodes {
        detect.push(wait_health(node, "degraded", Duration::from_secs(20)).await?);
    }
    let detected = stopped.elapsed();
    env.redis.start().await.context("starting Redis again")?;
    let restarted = Instant::now();
    for node in &env.nodes {
        wait_health(node, "ok", Duration::from_secs(30)).await?;
    }
    let recovered = restarted.elapsed();
    accepted(
        &env.nodes[0],
        json!({"event": "after_failover", "to": ["user:fo"]}),
    )
    .await?;
    on2.expect("after_failover")
        .await
        .context("cross-node delivery after the restart")?;
    on2.close().await;
    Ok(Outcome {
        figures: format!(
            "all 3 nodes degraded {:.0} ms after Redis stopped; healthy {:.2} s after it returned; cross-node delivery resumed",
            detected.as_secs_f64() * 1000.0,
            recovered.as_secs_f64()
        ),
        details: json!({"detect_s": detected.as_secs_f64(), "recover_s": recovered.as_secs_f64()}),
    })
}

async fn partition(env: &mut Env) -> anyhow::Result<Outcome> {
    let mut on1 = connect(&env.nodes[0], "p").await?;
    let mut on2 = connect(&env.nodes[1], "p").await?;
    let isolated = &env.nodes[1];
    docker(&[
        "network",
        "disconnect",
        &env.network,
        isolated.container.id(),
    ])?;
    let cut = Instant::now();
    let detected = wait_health(isolated, "degraded", Duration::from_secs(30)).await?;
    // The rest of the cluster keeps working.
    accepted(&env.nodes[2], json!({"event": "during", "to": ["user:p"]})).await?;
    on1.expect("during")
        .await
        .context("delivery among the connected nodes during the partition")?;
    docker(&[
        "network",
        "connect",
        "--ip",
        &isolated.ip,
        &env.network,
        isolated.container.id(),
    ])?;
    let healed_from = Instant::now();
    let healed = wait_health(isolated, "ok", Duration::from_secs(30)).await?;
    accepted(
        &env.nodes[2],
        json!({"event": "after_partition", "to": ["user:p"]}),
    )
    .await?;
    on2.expect("after_partition")
        .await
        .context("the partitioned node receives again")?;
    let _ = (cut, healed_from);
    close_all(vec![on1, on2]).await;
    Ok(Outcome {
        figures: format!(
            "node-2 degraded {:.1} s after losing the network, healthy {:.2} s after it returned, delivery resumed without restart",
            detected.as_secs_f64(),
            healed.as_secs_f64()
        ),
        details: json!({"detect_s": detected.as_secs_f64(), "heal_s": healed.as_secs_f64()}),
    })
}

async fn registry(env: &Env) -> anyhow::Result<Vec<String>> {
    let view: Value = reqwest::Client::new()
        .get(format!("{}/v1/cluster", env.nodes[0].url))
        .bearer_auth(TEST_KEY)
        .send()
        .await?
        .json()
        .await?;
    let ids = view["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["node_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(ids)
}

async fn wait_registry(env: &Env, expected: &[&str], within: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let ids = registry(env).await?;
        if ids == expected {
            return Ok(());
        }
        ensure!(
            started.elapsed() < within,
            "registry lists {ids:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn node_loss(env: &mut Env) -> anyhow::Result<Outcome> {
    // Redis was restarted earlier (losing the registry); every node re-announces itself.
    wait_registry(
        env,
        &["node-1", "node-2", "node-3"],
        Duration::from_secs(10),
    )
    .await?;
    let mut victim_client = connect(&env.nodes[2], "survivor").await?;
    docker(&["kill", env.nodes[2].container.id()])?;
    let killed = Instant::now();
    victim_client
        .expect_disconnect()
        .await
        .context("the client noticed its node died")?;
    // A Socket.IO client behind a load balancer reconnects to a node that is still up.
    let mut reconnected = connect(&env.nodes[0], "survivor").await?;
    let reconnect = killed.elapsed();
    accepted(
        &env.nodes[1],
        json!({"event": "later", "to": ["user:survivor"]}),
    )
    .await?;
    reconnected.expect("later").await?;
    reconnected.close().await;
    // The registry forgets the dead node when its record expires (NODE_TTL_SECS=6).
    wait_registry(env, &["node-1", "node-2"], Duration::from_secs(20)).await?;
    let forgotten = killed.elapsed();
    Ok(Outcome {
        figures: format!(
            "client back on node-1 after {:.2} s and received later events; registry forgot node-3 {:.1} s after the kill (TTL 6 s)",
            reconnect.as_secs_f64(),
            forgotten.as_secs_f64()
        ),
        details: json!({"reconnect_s": reconnect.as_secs_f64(), "registry_s": forgotten.as_secs_f64()}),
    })
}
