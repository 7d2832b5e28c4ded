//! `/metrics` moves exactly with what clients and callers do, on two nodes, and the
//! exposition passes `promtool check metrics` (but for the names dashboards already use).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use testkit::{SioClient, TEST_KEY, TestNode, publish, spawn_memory_cluster, token};

/// The series of a scrape, keyed `name{label="value",…}` without `server_id` (which
/// every series must carry, equal to the node's id).
async fn scrape(node: &TestNode) -> (String, BTreeMap<String, f64>) {
    let text = node.metrics().await.unwrap();
    let id = format!("server_id=\"{}\"", node.cluster.node_id());
    let mut series = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, value) = line.rsplit_once(' ').unwrap();
        assert!(key.contains(&id), "series without {id}: {line}");
        let key = key
            .replace(&format!("{id},"), "")
            .replace(&format!(",{id}"), "")
            .replace(&format!("{{{id}}}"), "");
        series.insert(key, value.parse::<f64>().unwrap());
    }
    (text, series)
}

fn get(series: &BTreeMap<String, f64>, key: &str) -> f64 {
    *series
        .get(key)
        .unwrap_or_else(|| panic!("no series {key} in {series:#?}"))
}

fn auth(user: &str) -> Value {
    json!({"token": token(json!({"sub": user, "tenant_id": "acme", "rooms": ["room:doc"]}))})
}

async fn client(node: &TestNode, user: &str) -> SioClient {
    let mut c = node.client(auth(user)).await.unwrap();
    assert_eq!(c.join("room:doc").await.unwrap()["ok"], true);
    c
}

#[tokio::test]
async fn metrics_move_exactly_with_connections_deliveries_and_refusals() {
    let (_hub, nodes) = spawn_memory_cluster(2, |_, c| c.max_event_types = 2)
        .await
        .unwrap();
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut a1 = client(a, "ann").await;
    let mut a2 = client(a, "bob").await;
    let mut b1 = client(b, "cid").await;

    let (_, s) = scrape(a).await;
    assert_eq!(get(&s, "socketio_connections_total"), 2.0);
    // user:ann, user:bob, tenant:acme, room:doc
    assert_eq!(get(&s, "socketio_rooms_total"), 4.0);
    let (_, s) = scrape(b).await;
    assert_eq!(get(&s, "socketio_connections_total"), 1.0);
    assert_eq!(get(&s, "socketio_rooms_total"), 3.0);

    // Three events published on A to the room: two names fit the cap, the third is `other`.
    for event in ["note", "edit", "cursor"] {
        a.publish_accepted(json!({"tenant": "acme", "event": event, "to": ["room:doc"]}))
            .await
            .unwrap();
        for c in [&mut a1, &mut a2, &mut b1] {
            c.expect(event).await.unwrap();
        }
    }
    let (_, s) = scrape(a).await;
    for (label, n) in [("note", 1.0), ("edit", 1.0), ("other", 1.0)] {
        let key = format!("socketio_messages_published{{event_type=\"{label}\"}}");
        assert_eq!(get(&s, &key), n, "{key}");
        // Once per socket: A has two in the room.
        let key = format!("socketio_messages_delivered{{event_type=\"{label}\"}}");
        assert_eq!(get(&s, &key), 2.0, "{key}");
    }
    assert!(!s.contains_key("socketio_messages_published{event_type=\"cursor\"}"));
    let (_, s) = scrape(b).await;
    for label in ["note", "edit", "other"] {
        let key = format!("socketio_messages_delivered{{event_type=\"{label}\"}}");
        assert_eq!(get(&s, &key), 1.0, "{key}");
    }
    // B received the three from the bus: each timed publish → receipt.
    assert_eq!(get(&s, "socketio_redis_latency_ms_count"), 3.0);
    assert_eq!(
        get(&s, "socketio_redis_latency_ms_bucket{le=\"+Inf\"}"),
        3.0
    );
    assert_eq!(get(&s, "roomcast_bus_messages_total"), 3.0);

    // Refusals, each under its reason.
    let bad = SioClient::connect(&a.url(), "/", Some(json!({"token": "not.a.jwt"}))).await;
    assert!(bad.is_err());
    assert_eq!(a1.join("secret:x").await.unwrap()["ok"], false);
    let ack = a1
        .emit_with_ack("no_such_event", &[json!(1)])
        .await
        .unwrap();
    assert_eq!(ack[0]["ok"], false);
    let (status, _) = publish(&a.url(), TEST_KEY, "{not json").await.unwrap();
    assert_eq!(status, 400);
    let (_, s) = scrape(a).await;
    for (reason, n) in [
        ("auth", 1.0),
        ("join_denied", 1.0),
        ("unknown_event", 1.0),
        ("bad_input", 1.0),
        ("rate_limit", 0.0),
        ("room_limit", 0.0),
        ("connection_limit", 0.0),
    ] {
        let key = format!("roomcast_refusals_total{{reason=\"{reason}\"}}");
        assert_eq!(get(&s, &key), n, "{key}");
    }
    assert_eq!(
        get(
            &s,
            "roomcast_http_requests_total{route=\"/v1/publish\",status=\"400\"}"
        ),
        1.0
    );
    assert_eq!(
        get(
            &s,
            "roomcast_http_requests_total{route=\"/v1/publish\",status=\"202\"}"
        ),
        3.0
    );
    assert!(get(&s, "process_resident_memory_bytes") > 1e6);
    assert!(get(&s, "process_open_fds") > 0.0);

    // Leaving and disconnecting.
    assert_eq!(a2.leave("room:doc").await.unwrap()["ok"], true);
    a1.close().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, s) = scrape(a).await;
        if get(&s, "socketio_connections_total") == 1.0 {
            // user:bob and tenant:acme are left.
            assert_eq!(get(&s, "socketio_rooms_total"), 2.0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Every series the dashboard queries is in a live exposition.
    let (text, _) = scrape(a).await;
    let missing: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|m| !text.contains(&format!("\n{m}{{")))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, absent from:\n{text}"
    );

    // The whole exposition passes promtool's lint, but for the five names dashboards use.
    let problems = promtool_check(&text);
    let kept = [
        "socketio_connections_total",
        "socketio_rooms_total",
        "socketio_messages_published",
        "socketio_messages_delivered",
        "socketio_redis_latency_ms",
    ];
    let unexpected: Vec<&String> = problems
        .iter()
        .filter(|p| !kept.iter().any(|k| p.starts_with(&format!("{k} "))))
        .collect();
    assert!(unexpected.is_empty(), "promtool: {unexpected:#?}");
    // It did lint: the gauges named `_total` for the dashboards' sake are reported.
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("socketio_connections_total ")),
        "{problems:#?}"
    );
}

/// The metric names `deploy/grafana/roomcast.json` queries.
fn dashboard_metrics() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/roomcast.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if ["socketio_", "roomcast_", "process_"]
                    .iter()
                    .any(|p| word.starts_with(p))
                {
                    names.insert(word.to_owned());
                }
            }
        }
    }
    assert!(names.len() >= 15, "{names:?}");
    names.into_iter().collect()
}

#[test]
fn every_alert_fires_on_its_synthetic_series_and_not_on_healthy_ones() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("promtool is needed (Debian: apt-get install prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `promtool check metrics` on `text`: its lint findings, one per line (`name problem`).
fn promtool_check(text: &str) -> Vec<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "promtool is needed (Debian: apt-get install prometheus; `cargo xtask doctor` lists what is missing)",
        );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // A parse error is a failure whatever the names.
    assert!(
        !report.contains("error while linting") && !report.contains("parse"),
        "{report}"
    );
    report
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}
