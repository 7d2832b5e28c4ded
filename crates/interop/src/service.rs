//! A backend service for the suites' "events to services" case: a Redis Stream consumer
//! (built with the SDK) that confirms `notification_read` to the sending socket, and a
//! webhook that checks the gateway's signature and echoes `rpc.*` events as the ack.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::json;

/// The routes the cluster is started with.
pub(crate) const ROUTES: &str = "notification_read=stream,rpc.*=webhook";

/// Calls the webhook kept for `GET /calls` (the newest last): what the Python SDK's
/// suite verifies signatures against.
const KEPT_CALLS: usize = 50;

/// Starts the webhook; returns its URL (`…/hook`) and the URL listing the calls it
/// received with their signature header and body (`…/calls`).
pub(crate) async fn webhook(secret: String) -> anyhow::Result<(String, String)> {
    let calls: Arc<Mutex<VecDeque<serde_json::Value>>> = Arc::default();
    let kept = calls.clone();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let secret = secret.clone();
                let kept = kept.clone();
                async move {
                    let sig = headers
                        .get(publisher::SIGNATURE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    {
                        let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
                        kept.push_back(
                            json!({"header": sig, "body": String::from_utf8_lossy(&body)}),
                        );
                        while kept.len() > KEPT_CALLS {
                            kept.pop_front();
                        }
                    }
                    let now = gateway::unix_now();
                    if publisher::verify_signature(secret.as_bytes(), sig, &body, now, 300).is_err()
                    {
                        return (StatusCode::UNAUTHORIZED, String::new());
                    }
                    let Ok(ev) = serde_json::from_slice::<serde_json::Value>(&body) else {
                        return (StatusCode::BAD_REQUEST, String::new());
                    };
                    let answer = json!({"ok": true, "echo": ev["args"], "user": ev["user"]});
                    (StatusCode::OK, answer.to_string())
                }
            }),
        )
        .route(
            "/calls",
            axum::routing::get(move || {
                let calls = calls.clone();
                async move {
                    let calls = calls.lock().unwrap_or_else(PoisonError::into_inner);
                    axum::Json(serde_json::Value::Array(calls.iter().cloned().collect()))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("{base}/hook"), format!("{base}/calls")))
}

/// Consumes `/`'s stream on `redis_url` until the process ends.
pub(crate) async fn consumer(redis_url: String) -> anyhow::Result<()> {
    let mut consumer =
        publisher::Consumer::connect(&redis_url, "roomcast", "/", "interop", "service-1")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let publisher = publisher::Publisher::connect(&redis_url, Duration::from_secs(5))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_origin("interop-service");
    tokio::spawn(async move {
        loop {
            // Entries left unacked for 2 s (a read that failed half-way), then new ones.
            let batch = match consumer.reclaim(Duration::from_secs(2), 100).await {
                Ok(mut b) => match consumer.next(Duration::from_secs(1), 100).await {
                    Ok(fresh) => {
                        b.extend(fresh);
                        b
                    }
                    Err(e) => {
                        eprintln!("interop service: {e}");
                        b
                    }
                },
                Err(e) => {
                    eprintln!("interop service: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            for d in batch {
                if let Ok(ev) = &d.event
                    && ev.event == "notification_read"
                {
                    let arg = ev.args.first().cloned().unwrap_or_default();
                    if let Err(e) = publisher
                        .reply_to_socket(ev)
                        .emit("notification_read_confirmed", &arg)
                        .await
                    {
                        eprintln!("interop service: reply failed: {e}");
                    }
                }
                let _ = consumer.ack(&d).await;
            }
        }
    });
    Ok(())
}
