//! An OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf), to check what a gateway
//! exports without a collector.

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;

/// One received span, ids in lowercase hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// Span name.
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// The parent's span id, empty for a root.
    pub parent: String,
    /// The `server_id` attribute, empty when absent.
    pub server_id: String,
}

/// A running receiver; it stops with the runtime.
#[derive(Debug, Clone)]
pub struct OtlpReceiver {
    /// The port it listens on.
    pub port: u16,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl OtlpReceiver {
    /// Listens on `host` (`127.0.0.1`, or `0.0.0.0` for containers) on a free port.
    pub async fn start(host: &str) -> anyhow::Result<Self> {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let store = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let store = store.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(req) => {
                            store
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .extend(spans_of(req));
                            // An empty ExportTraceServiceResponse.
                            (
                                axum::http::StatusCode::OK,
                                [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                                Vec::<u8>::new(),
                            )
                        }
                        Err(_) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            [(axum::http::header::CONTENT_TYPE, "text/plain")],
                            b"not an ExportTraceServiceRequest".to_vec(),
                        ),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind((host, 0)).await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { port, spans })
    }

    /// How many spans arrived so far.
    pub fn count(&self) -> usize {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Every span of trace `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

fn spans_of(req: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
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
                out.push(ReceivedSpan {
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    server_id,
                });
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the shape of one publish's trace: the caller's span → `publish` on `publisher`
/// → one `deliver` on each of `nodes`. `Ok(None)` while spans are still missing.
pub fn check_publish_trace(
    spans: &[ReceivedSpan],
    caller_span: &str,
    publisher: &str,
    nodes: &[&str],
) -> anyhow::Result<Option<String>> {
    let Some(publish) = spans.iter().find(|s| s.name == "publish") else {
        return Ok(None);
    };
    let deliveries: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == "deliver").collect();
    if deliveries.len() < nodes.len() {
        return Ok(None);
    }
    anyhow::ensure!(
        publish.parent == caller_span,
        "the publish span's parent is {:?}, not the caller's {caller_span}",
        publish.parent
    );
    anyhow::ensure!(
        publish.server_id == publisher,
        "publish span on {:?}",
        publish.server_id
    );
    anyhow::ensure!(
        deliveries.iter().all(|d| d.parent == publish.span_id),
        "a delivery span is not a child of the publish span: {deliveries:#?}"
    );
    let mut seen: Vec<&str> = deliveries.iter().map(|d| d.server_id.as_str()).collect();
    seen.sort_unstable();
    let mut want = nodes.to_vec();
    want.sort_unstable();
    anyhow::ensure!(seen == want, "deliveries on {seen:?}, expected {want:?}");
    Ok(Some(format!(
        "publish on {publisher} → {} deliveries ({})",
        deliveries.len(),
        seen.join(", ")
    )))
}
