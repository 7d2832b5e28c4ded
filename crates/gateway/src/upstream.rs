//! Client events for services: which events go where ([`Routes`]), and the two transports
//! that take them there — a Redis Stream per namespace (at-least-once; the client's ack
//! fires once the entry is appended) and an HTTP webhook (HMAC-signed; the service's JSON
//! answer is the client's ack, an RPC).
//!
//! Each forwarded event carries who sent it ([`UpstreamEvent`]): user, tenant, socket id,
//! node, namespace, event, arguments, time and trace context. Events of one socket are
//! forwarded in the order the client sent them (see `sio`'s per-socket queue).

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// Where a client event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Appended to the namespace's Redis Stream.
    Stream,
    /// `POST`ed to the webhook.
    Webhook,
}

/// One routing rule: `[/ns:]event=stream|webhook`, where `event` is a name, a prefix
/// ending in `*`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    ns: Option<String>,
    event: String,
    prefix: bool,
    transport: Transport,
}

/// Which client events are forwarded, and how: the first matching rule wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    rules: Vec<Rule>,
}

/// Events a route may not claim: Socket.IO's reserved names and the gateway's own.
pub const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
    "join",
    "leave",
    "refresh",
    "publish",
    "connected",
    "disconnect_reason",
];

/// Why `UPSTREAM_ROUTES` could not be read: the offending item and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid UPSTREAM_ROUTES: {0}")]
pub struct RoutesError(pub String);

impl Routes {
    /// Parses `UPSTREAM_ROUTES`: comma-separated `[/ns:]event=stream|webhook`, e.g.
    /// `notification_read=stream,/chat:rpc.*=webhook`.
    pub fn parse(spec: &str) -> Result<Self, RoutesError> {
        let invalid = RoutesError;
        let mut rules = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (target, transport) = item
                .rsplit_once('=')
                .ok_or_else(|| invalid(format!("{item:?}: expected event=stream|webhook")))?;
            let transport = match transport.trim() {
                "stream" => Transport::Stream,
                "webhook" => Transport::Webhook,
                other => return Err(invalid(format!("{item:?}: unknown transport {other:?}"))),
            };
            let (ns, event) = match target.trim().strip_prefix('/') {
                Some(rest) => match rest.split_once(':') {
                    Some((ns, event)) => (Some(format!("/{ns}")), event),
                    None => return Err(invalid(format!("{item:?}: expected /ns:event"))),
                },
                None => (None, target.trim()),
            };
            let (event, prefix) = match event.strip_suffix('*') {
                Some(p) => (p, true),
                None => (event, false),
            };
            if event.contains('*') || (event.is_empty() && !prefix) {
                return Err(invalid(format!("{item:?}: bad event pattern")));
            }
            if !prefix && RESERVED_EVENTS.contains(&event) {
                return Err(invalid(format!("{item:?}: {event:?} is reserved")));
            }
            rules.push(Rule {
                ns,
                event: event.to_owned(),
                prefix,
                transport,
            });
        }
        Ok(Self { rules })
    }

    /// The transport for `event` on namespace `ns`, if a rule matches. Reserved names
    /// never match.
    pub fn route(&self, ns: &str, event: &str) -> Option<Transport> {
        if RESERVED_EVENTS.contains(&event) {
            return None;
        }
        self.rules
            .iter()
            .find(|r| {
                r.ns.as_deref().is_none_or(|n| n == ns)
                    && if r.prefix {
                        event.starts_with(&r.event)
                    } else {
                        event == r.event
                    }
            })
            .map(|r| r.transport)
    }

    /// Whether any rule uses `transport`.
    pub fn uses(&self, transport: Transport) -> bool {
        self.rules.iter().any(|r| r.transport == transport)
    }
}

/// The webhook a node calls.
#[derive(Clone)]
pub struct WebhookConfig {
    /// `http(s)://…` endpoint.
    pub url: String,
    /// HMAC-SHA256 key of the signature header.
    pub secret: String,
    /// One attempt's limit.
    pub timeout: Duration,
    /// Further attempts after a failure to connect, a timeout or a 5xx.
    pub retries: u32,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"***")
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish()
    }
}

/// How client events reach services.
#[derive(Debug, Clone, Default)]
pub struct UpstreamConfig {
    /// Which events go where.
    pub routes: Routes,
    /// Entries kept per namespace stream (`XADD MAXLEN ~`).
    pub stream_max_len: usize,
    /// The webhook, when routes use it.
    pub webhook: Option<WebhookConfig>,
}

/// What a service receives for one client event: [`envelope::ClientEvent`].
pub type UpstreamEvent = envelope::ClientEvent;

/// The header carrying the webhook signature: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
/// "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "x-roomcast-signature";

/// The signature header value for `body` at `unix_secs` with `secret`.
pub fn sign(secret: &[u8], unix_secs: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length; were it ever refused, the call goes unsigned and
    // the service refuses it — no panic.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix_secs},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Forwards client events to services.
#[derive(Debug)]
pub struct Upstream {
    config: UpstreamConfig,
    http: reqwest::Client,
}

impl Upstream {
    /// The forwarder for `config`.
    pub fn new(config: UpstreamConfig) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self { config, http }
    }

    /// Which events go where.
    pub fn routes(&self) -> &Routes {
        &self.config.routes
    }

    /// Appends `ev` to `stream` on `bus`; the client's ack: `{ok: true, id: <entry id>}`
    /// once Redis has it, or `{ok: false, error}`.
    pub async fn to_stream(&self, bus: &dyn bus::Bus, stream: &str, ev: &UpstreamEvent) -> Value {
        let body = match serde_json::to_vec(ev) {
            Ok(b) => Bytes::from(b),
            Err(e) => return failure(format!("cannot encode the event: {e}")),
        };
        match bus
            .append(stream, self.config.stream_max_len, "event", body)
            .await
        {
            Ok(id) => json!({"ok": true, "id": id}),
            Err(e) => failure(format!("the event could not be queued for services: {e}")),
        }
    }

    /// `POST`s `ev` to the webhook; the client's ack is the service's JSON answer, or
    /// `{ok: false, error}` when there is none (timeout, error status, not JSON).
    pub async fn to_webhook(&self, ev: &UpstreamEvent) -> Value {
        let Some(hook) = &self.config.webhook else {
            return failure("no webhook is configured".into());
        };
        let body = match serde_json::to_vec(ev) {
            Ok(b) => b,
            Err(e) => return failure(format!("cannot encode the event: {e}")),
        };
        let mut last = String::new();
        for attempt in 0..=hook.retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
            }
            let now = crate::auth::unix_now();
            let mut req = self
                .http
                .post(&hook.url)
                .timeout(hook.timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, sign(hook.secret.as_bytes(), now, &body));
            // The service continues the client event's trace.
            if let Some(tp) = &ev.trace {
                req = req.header(crate::telemetry::TRACEPARENT, tp);
            }
            let sent = req.body(body.clone()).send().await;
            let res = match sent {
                Ok(res) => res,
                Err(e) if e.is_timeout() => {
                    last = format!("the service did not answer within {:?}", hook.timeout);
                    continue;
                }
                Err(e) => {
                    last = format!("the service is unreachable: {}", without_url(&e));
                    continue;
                }
            };
            let status = res.status();
            if status.is_server_error() {
                last = format!("the service failed ({status})");
                continue;
            }
            if !status.is_success() {
                // A 4xx is the service's considered answer: no retry.
                return failure(format!("the service refused the event ({status})"));
            }
            return match res.bytes().await {
                Ok(b) if b.is_empty() => json!({"ok": true}),
                Ok(b) => serde_json::from_slice(&b)
                    .unwrap_or_else(|_| failure("the service's answer is not JSON".into())),
                Err(e) => failure(format!("reading the service's answer: {}", without_url(&e))),
            };
        }
        failure(last)
    }
}

fn failure(error: String) -> Value {
    crate::ack::AckError::new(error).to_json()
}

/// A reqwest error without the URL (which may hold credentials).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<webhook>");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_namespace_exact_and_prefix() {
        let r = Routes::parse("notification_read=stream, /chat:rpc.*=webhook ,*=stream").unwrap();
        assert_eq!(r.route("/", "notification_read"), Some(Transport::Stream));
        assert_eq!(r.route("/chat", "rpc.get"), Some(Transport::Webhook));
        assert_eq!(r.route("/", "rpc.get"), Some(Transport::Stream));
        // Reserved names never go upstream, even under `*`.
        assert_eq!(r.route("/", "join"), None);
        assert_eq!(r.route("/", "publish"), None);
        assert!(Routes::parse("").unwrap().route("/", "x").is_none());
    }

    #[test]
    fn bad_routes_are_refused_with_the_item() {
        for bad in [
            "x",
            "x=ftp",
            "/chat=stream",
            "a*b=stream",
            "join=stream",
            "=stream",
        ] {
            let e = Routes::parse(bad).unwrap_err().to_string();
            assert!(e.contains("UPSTREAM_ROUTES"), "{bad}: {e}");
        }
    }

    #[test]
    fn signature_is_hmac_sha256_of_time_dot_body() {
        // Reference value: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key
        assert_eq!(
            sign(b"key", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
        );
    }
}
