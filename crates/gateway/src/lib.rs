//! The Roomcast gateway: a Socket.IO server (socketioxide on axum) whose nodes act as one.
//!
//! Clients connect with any Socket.IO v5 client and a JWT; they join their `user:` and
//! `tenant:` rooms automatically and may `join`/`leave` further rooms their token allows.
//! Backend services publish over HTTP (`POST /v1/publish`) or onto the bus directly
//! (the `publisher` crate); every node delivers to its own sockets in the target rooms.
//!
//! This crate holds no business logic of any one app; `main.rs` only parses
//! configuration and calls [`run`].
//!
//! # How it works
//!
//! * Every room lives in a tenant's scope (or the shared one): a token's tenant scopes
//!   every room its socket joins, a message's `tenant` every room it targets
//!   (`docs/security.md`).
//! * [`Membership`] is the one owner of which local socket is in which room; it keeps the
//!   bus subscribed to exactly those rooms' channels (plus each namespace's broadcast
//!   channel and the node's own channels). A join completes only after the bus confirmed
//!   the subscription; joins and leaves apply in the order each client sent them.
//! * [`Cluster`] delivers: what this node publishes (locally first, then on the bus) and
//!   what the dispatcher task reads from the bus inbox, skipping this node's own echoes.
//!   [`Registry`] keeps this node's record in the cluster registry.
//! * The socketioxide adapter ([`BusAdapter`]) makes `io.to(room).emit(..)` cluster-wide.
//!
//! # Modules
//!
//! | module | what |
//! |---|---|
//! | `server` | [`Node`]: assembly of the cluster, the Socket.IO layer and the HTTP routes; [`run`] |
//! | `config` | [`Args`] → [`Config`], validated before any port is bound |
//! | `auth` | [`Authenticator`] (keys, JWKS, audience/issuer), [`Identity`] |
//! | `sio` | the namespaces: connect middleware, `join`/`leave`/`refresh`, rate limits |
//! | `membership`, `cluster`, `registry` | who is where; delivery; the node registry |
//! | `adapter` | [`BusAdapter`], socketioxide's adapter over the bus |
//! | `compat` | [`Compat`]: python-socketio's and Node's Redis formats read (and Node's written) |
//! | `forward` | [`Forwarder`]: requests of another node's Engine.IO session handed to it (no sticky sessions) |
//! | `http`, `demo` | the HTTP API; the development demo page |
//! | `limits` | per-socket token buckets ([`RateLimits`]) |
//! | `metrics` | [`Metrics`]: the node's Prometheus series (`/metrics`) |
//! | `telemetry` | [`Telemetry`]: OTLP trace export from `OTEL_*`, W3C trace context |
//! | `upstream` | client events for services: [`Routes`], the stream and webhook transports |

mod ack;
mod adapter;
mod admin;
mod api_doc;
mod auth;
mod client_events;
mod cluster;
mod compat;
mod config;
mod demo;
mod forward;
mod http;
mod limits;
mod membership;
mod metrics;
mod openapi;
mod registry;
mod server;
mod sio;
mod telemetry;
mod tls;
mod upstream;

pub use adapter::{AdapterHost, BusAdapter, ClusterError, InitRes};
pub use admin::{AdminUiConfig, NAMESPACE as ADMIN_NAMESPACE};
pub use auth::{
    AuthError, Authenticator, ClaimNames, Identity, JwtKey, TokenRules, TokenSources, sign_hs256,
    unix_now,
};
pub use client_events::{MAX_EVENT_NAME, MAX_PUBLISH_ROOMS};
pub use cluster::RecoveryConfig;
pub use cluster::{
    ANSWER_WITHIN, JOIN_EVENT, LEAVE_EVENT, Presence, ServerEvent, ServerEventHandler,
};
pub use cluster::{
    AckReply, Cluster, ClusterSettings, DISCONNECT_REASON_EVENT, JoinWarning, SocketsAnswer,
    SocketsError, Stats,
};
pub use compat::{Compat, CompatConfig, Source as CompatSource};
pub use config::{Args, CompatArgs, Config, ConfigError, DevCredentials, MIN_SECRET_BYTES, Mode};
pub use forward::{
    CredentialError, FORWARDED_HEADER, ForwardSettings, Forwarder, MAX_SKEW, NodeKey, SidTag,
};
pub use limits::RateLimits;
pub use membership::{AttachRefused, ConnectionLimits, JoinRefused, Membership, UserKey};
pub use metrics::{Metrics, OTHER_EVENT, Refusal, Snapshot};
pub use registry::{Registry, RegistryError};
pub use server::{Node, StartError, connect_bus, run};
pub use telemetry::{
    TRACEPARENT, Telemetry, TelemetryError, context_from_traceparent, continue_trace,
    traceparent_of,
};
pub use tls::TlsFiles;
pub use upstream::{
    RESERVED_EVENTS, Routes, RoutesError, SIGNATURE_HEADER, Transport, Upstream, UpstreamConfig,
    UpstreamEvent, WebhookConfig, sign,
};
