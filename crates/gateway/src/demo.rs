//! The demo page, served at `/` in development mode only: static files embedded in the
//! binary (no build step), using the official Socket.IO client.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

/// What the page is told about the node serving it.
#[derive(Debug)]
pub(crate) struct DemoCtx {
    pub(crate) node_id: String,
    pub(crate) socketio_path: String,
    pub(crate) namespaces: Vec<String>,
    /// Pre-filled only when this run generated the secret (it is printed in the banner
    /// anyway); a configured secret never leaves the process.
    pub(crate) dev_token: Option<String>,
    /// Likewise only a generated publish key.
    pub(crate) publish_key: Option<String>,
}

const INDEX: &str = include_str!("../static/index.html");
const APP: &str = include_str!("../static/app.js");
const STYLE: &str = include_str!("../static/style.css");
const CLIENT: &str = include_str!("../static/vendor/socket.io.min.js");

/// No inline script or style, nothing from other origins.
const CSP: &str =
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

/// The embedded files: path, content type, body.
const FILES: [(&str, &str, &str); 4] = [
    ("/", "text/html; charset=utf-8", INDEX),
    ("/demo/app.js", "text/javascript; charset=utf-8", APP),
    ("/demo/style.css", "text/css; charset=utf-8", STYLE),
    (
        "/demo/socket.io.min.js",
        "text/javascript; charset=utf-8",
        CLIENT,
    ),
];

/// The demo routes.
pub(crate) fn router(ctx: Arc<DemoCtx>) -> Router {
    FILES
        .into_iter()
        .fold(Router::new(), |router, (path, content_type, body)| {
            router.route(path, get(move || async move { page(content_type, body) }))
        })
        .route("/demo/config.json", get(config))
        .with_state(ctx)
}

fn page(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

async fn config(State(ctx): State<Arc<DemoCtx>>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({
            "node_id": ctx.node_id,
            "path": ctx.socketio_path,
            "namespaces": ctx.namespaces,
            "token": ctx.dev_token,
            "publish_key": ctx.publish_key,
        })),
    )
}
