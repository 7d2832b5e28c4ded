//! One trace across three nodes: a publish that continues the caller's trace, and a
//! delivery span on each node as its child — exported over real OTLP/HTTP (protobuf) to
//! a receiver in this test.
//!
//! The tracing subscriber is process-global, so this file holds one test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::json;
use testkit::{TEST_KEY, spawn_memory_cluster, token};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    server_id: String,
}

/// An OTLP/HTTP trace receiver: `POST /v1/traces` with a protobuf body.
async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let store = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let store = store.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).unwrap();
                let mut out = store.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            let server_id = s
                                .attributes
                                .iter()
                                .find(|kv| kv.key == "server_id")
                                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                                .map(|v| match v {
                                    AnyValue::StringValue(s) => s.clone(),
                                    other => format!("{other:?}"),
                                })
                                .unwrap_or_default();
                            out.push(Span {
                                name: s.name,
                                trace_id: hex::encode(s.trace_id),
                                span_id: hex::encode(s.span_id),
                                parent: hex::encode(s.parent_span_id),
                                server_id,
                            });
                        }
                    }
                }
                // An empty ExportTraceServiceResponse.
                (
                    [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_shows_the_publish_and_a_delivery_on_each_node() {
    let (url, spans) = receiver().await;
    let telemetry = gateway::Telemetry::to_endpoint(&url).unwrap();
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(telemetry.layer())
        .init();

    let (_hub, nodes) = spawn_memory_cluster(3, |_, _| {}).await.unwrap();
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let auth = json!({"token": token(json!({"sub": format!("u{i}"), "tenant_id": "acme", "rooms": ["room:*"]}))});
        let mut c = node.client(auth).await.unwrap();
        assert_eq!(c.join("room:doc").await.unwrap()["ok"], true);
        clients.push(c);
    }

    // The caller's own trace: its span is the publish span's parent.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let res = reqwest::Client::new()
        .post(format!("{}/v1/publish", nodes[0].url()))
        .bearer_auth(TEST_KEY)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({"tenant": "acme", "event": "traced", "to": ["room:doc"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    for c in &mut clients {
        c.expect("traced").await.unwrap();
    }

    // Spans end when each node's delivery finished; wait for all of them to arrive.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (publish, deliveries) = loop {
        let flush = {
            let telemetry = &telemetry;
            move || telemetry.flush()
        };
        tokio::task::block_in_place(flush);
        let all: Vec<Span> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == caller_trace)
            .cloned()
            .collect();
        let publish = all.iter().find(|s| s.name == "publish").cloned();
        let deliveries: Vec<Span> = all.into_iter().filter(|s| s.name == "deliver").collect();
        if let Some(publish) = publish
            && deliveries.len() >= 3
        {
            break (publish, deliveries);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans received: {:#?}",
            spans.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(publish.parent, caller_span, "{publish:?}");
    assert_eq!(publish.server_id, "test-node-0");
    assert_eq!(deliveries.len(), 3, "{deliveries:#?}");
    assert!(
        deliveries.iter().all(|d| d.parent == publish.span_id),
        "every delivery is a child of the publish span: {publish:?} {deliveries:#?}"
    );
    let nodes_seen: BTreeSet<&str> = deliveries.iter().map(|d| d.server_id.as_str()).collect();
    assert_eq!(
        nodes_seen,
        BTreeSet::from(["test-node-0", "test-node-1", "test-node-2"])
    );
}
