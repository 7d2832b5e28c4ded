//! The HTTP API's contract, OpenAPI 3.1, generated from the code (`utoipa`: the handlers'
//! annotations in `http`, the schemas in `openapi`) and served at `GET
//! /v1/openapi.json`. CI validates the document and sends a request built from each
//! operation's example to a running node.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The whole API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Roomcast gateway HTTP API",
        description = "Publish to Socket.IO clients on any node, read a room's history and presence, and act on connected sockets. Every /v1 operation but this document needs `Authorization: Bearer <PUBLISH_API_KEY>`."
    ),
    paths(
        crate::http::publish,
        crate::openapi::history,
        crate::openapi::presence,
        crate::openapi::room_sockets,
        crate::http::disconnect,
        crate::http::join,
        crate::http::leave,
        crate::http::cluster_view,
        crate::http::health,
    ),
    components(schemas(
        crate::openapi::PublishRequest,
        crate::openapi::Accepted,
        crate::openapi::Acks,
        crate::openapi::Ack,
        crate::openapi::ErrorBody,
        crate::openapi::HistoryPage,
        crate::openapi::HistoryMessage,
        crate::openapi::PresenceAnswer,
        crate::openapi::PresenceUser,
        crate::http::SocketsRequest,
        crate::openapi::SocketsAnswer,
        crate::openapi::Socket,
        crate::openapi::ClusterAnswer,
        crate::openapi::HealthAnswer,
    )),
    modifiers(&PublishKey),
    tags((name = "publish"), (name = "rooms"), (name = "sockets"), (name = "cluster"))
)]
pub(crate) struct ApiDoc;

/// The publish key as a bearer token.
struct PublishKey;

impl Modify for PublishKey {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "publish_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("PUBLISH_API_KEY"))
                    .build(),
            ),
        );
    }
}

/// The document, as served.
pub(crate) fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or(serde_json::Value::Null)
}
