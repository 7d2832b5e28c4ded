//! What a client sends besides `join`/`leave`/`refresh`: the `publish` event (a client
//! publishing to rooms its token allows) and events routed to services (`upstream`).
//!
//! Both run through one queue per socket, so a client's publishes and forwarded events
//! are handled in the order it sent them, each answered through its ack.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use envelope::Envelope;
use rooms::Room;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef};
use tokio::sync::mpsc;

use crate::ack::AckError;
use crate::adapter::BusAdapter;
use crate::auth::Identity;
use crate::cluster::Cluster;
use crate::metrics::Refusal;
use crate::upstream::{RESERVED_EVENTS, Transport, Upstream, UpstreamEvent};

/// Rooms one client publish may name.
pub const MAX_PUBLISH_ROOMS: usize = 16;
/// Longest event name a client may publish or forward.
pub const MAX_EVENT_NAME: usize = 100;
/// Jobs one socket may have waiting; past it the client is told to slow down.
const QUEUE: usize = 64;

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A socket's queue of publishes and forwarded events, run one at a time in order.
#[derive(Clone)]
pub(crate) struct Queue(mpsc::Sender<Job>);

impl Queue {
    /// The socket's queue, created (with its worker task) on first use.
    fn of(s: &SocketRef<BusAdapter>) -> Queue {
        if let Some(q) = s.extensions.get::<Queue>() {
            return q;
        }
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        // Ends when the socket (and with it this sender, in its extensions) is gone.
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                job.await;
            }
        });
        let q = Queue(tx);
        s.extensions.insert(q.clone());
        q
    }

    /// Queues the job `make` builds around `ack`, or answers `ack` at once that too
    /// many are waiting.
    fn push(
        s: &SocketRef<BusAdapter>,
        ack: AckSender<BusAdapter>,
        make: impl FnOnce(AckSender<BusAdapter>) -> Job,
    ) {
        match Queue::of(s).0.try_reserve() {
            Ok(permit) => permit.send(make(ack)),
            Err(_) => {
                ack.send(&AckError::new("too many events in flight; slow down").to_json())
                    .ok();
            }
        }
    }
}

/// A client's `publish {to, event, data | args, volatile?, self?}`: checked now (in packet
/// order), delivered through the socket's queue, answered `{ok: true, id}` or
/// `{ok: false, error}`.
pub(crate) fn publish(
    cluster: &Arc<Cluster>,
    s: &SocketRef<BusAdapter>,
    identity: &Identity,
    arg: Option<Value>,
    ack: AckSender<BusAdapter>,
) {
    let env = match client_envelope(cluster, s, identity, arg) {
        Ok(env) => env,
        Err((reason, error)) => {
            cluster.metrics().refused(reason);
            ack.send(&error.to_json()).ok();
            return;
        }
    };
    let (mut env, include_self) = env;
    // A trace starts here, like an HTTP publish's; its context travels in the envelope.
    let span = tracing::info_span!(
        "publish",
        server_id = %cluster.node_id(),
        id = %env.id,
        event = %env.event,
        sid = %s.id,
        client = true
    );
    env.trace = crate::telemetry::traceparent_of(&span);
    let cluster = cluster.clone();
    let sender = s.clone();
    Queue::push(s, ack, move |ack| {
        Box::pin(tracing::Instrument::instrument(
            async move {
                let excluded = (!include_self).then_some(&sender);
                let reply = match cluster.publish_from(&env, excluded).await {
                    Ok(()) => json!({"ok": true, "id": env.id}),
                    // Local sockets got it; other nodes did not.
                    Err(e) => AckError::of(e).with_id(&env.id),
                };
                ack.send(&reply).ok();
            },
            span,
        ))
    });
}

/// The envelope of a client publish, and whether the sender receives it too.
fn client_envelope(
    cluster: &Cluster,
    s: &SocketRef<BusAdapter>,
    identity: &Identity,
    arg: Option<Value>,
) -> Result<(Envelope, bool), (Refusal, AckError)> {
    let bad = |e: &str| (Refusal::BadInput, AckError::new(e));
    let Some(Value::Object(mut p)) = arg else {
        return Err(bad(
            "expected {to, event, data}: the rooms, the event name and its data",
        ));
    };
    let event = match p.remove("event") {
        Some(Value::String(e)) => e,
        _ => return Err(bad("\"event\" must be the event name, a string")),
    };
    check_event_name(&event).map_err(|e| (Refusal::BadInput, e))?;
    let to: Vec<String> = match p.remove("to") {
        Some(Value::String(room)) => vec![room],
        Some(Value::Array(rooms)) => rooms
            .into_iter()
            .map(|r| match r {
                Value::String(r) => Ok(r),
                _ => Err(bad("\"to\" must be a room name or a list of them")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad("\"to\" must be a room name or a list of them")),
    };
    if to.is_empty() || to.len() > MAX_PUBLISH_ROOMS {
        return Err(bad(&format!(
            "\"to\" must name between 1 and {MAX_PUBLISH_ROOMS} rooms"
        )));
    }
    for name in &to {
        let room = Room::parse(name).map_err(|e| (Refusal::BadInput, AckError::of(e)))?;
        identity
            .may_publish(&room)
            .map_err(|e| (Refusal::PublishDenied, AckError::from(e)))?;
    }
    let flag = |p: &serde_json::Map<String, Value>, k: &str| p.get(k) == Some(&Value::Bool(true));
    let volatile = flag(&p, "volatile");
    let include_self = flag(&p, "self");
    let mut env = Envelope::new(cluster.node_id(), event, Value::Null).in_ns(s.ns());
    match (p.remove("data"), p.remove("args")) {
        (Some(_), Some(_)) => return Err(bad("give \"data\" or \"args\", not both")),
        (_, Some(Value::Array(args))) => {
            env.data = None;
            env.args = Some(args);
        }
        (_, Some(_)) => return Err(bad("\"args\" must be a list")),
        (data, None) => env.data = Some(data.unwrap_or(Value::Null)),
    }
    env.to = to;
    env.tenant = identity.tenant_id.as_ref().map(|t| t.as_str().to_owned());
    env.flags.volatile = volatile;
    Ok((env, include_self))
}

/// Event names a client may publish or forward: not empty, not too long, not reserved.
fn check_event_name(event: &str) -> Result<(), AckError> {
    if event.is_empty() || event.len() > MAX_EVENT_NAME {
        return Err(AckError::new(format!(
            "the event name must be 1 to {MAX_EVENT_NAME} bytes"
        )));
    }
    if RESERVED_EVENTS.contains(&event) {
        return Err(AckError::new(format!("{event:?} is a reserved event name")));
    }
    Ok(())
}

/// A client event with a route to services.
pub(crate) struct Forward {
    /// Where it goes.
    pub(crate) transport: Transport,
    /// Its name.
    pub(crate) event: String,
    /// Its arguments.
    pub(crate) args: Vec<Value>,
}

/// Forwards `ev` through the socket's queue; the ack is the transport's answer.
pub(crate) fn forward(
    cluster: &Arc<Cluster>,
    upstream: &Arc<Upstream>,
    s: &SocketRef<BusAdapter>,
    identity: &Identity,
    ev: Forward,
    ack: AckSender<BusAdapter>,
) {
    if let Err(e) = check_event_name(&ev.event) {
        cluster.metrics().refused(Refusal::BadInput);
        ack.send(&e.to_json()).ok();
        return;
    }
    let transport = ev.transport;
    // The service continues this trace from the event's `trace`.
    let span = tracing::info_span!(
        "forward",
        server_id = %cluster.node_id(),
        event = %ev.event,
        sid = %s.id,
        transport = ?transport
    );
    let ev = UpstreamEvent {
        v: 1,
        id: envelope::new_id(),
        ts: envelope::now_ms(),
        node: cluster.node_id().to_owned(),
        ns: s.ns().to_owned(),
        sid: s.id.to_string(),
        user: identity.user_id.clone(),
        tenant: identity.tenant_id.as_ref().map(|t| t.as_str().to_owned()),
        event: ev.event,
        args: ev.args,
        trace: crate::telemetry::traceparent_of(&span),
    };
    let cluster = cluster.clone();
    let upstream = upstream.clone();
    Queue::push(s, ack, move |ack| {
        Box::pin(tracing::Instrument::instrument(
            async move {
                let reply = match transport {
                    Transport::Stream => {
                        let stream = cluster.channels().upstream(&ev.ns);
                        upstream
                            .to_stream(cluster.bus().as_ref(), &stream, &ev)
                            .await
                    }
                    Transport::Webhook => upstream.to_webhook(&ev).await,
                };
                if reply.get("ok") == Some(&Value::Bool(false)) {
                    tracing::info!(event = %ev.event, sid = %ev.sid, error = %reply["error"], "a client event did not reach its service");
                }
                ack.send(&reply).ok();
            },
            span,
        ))
    });
}

/// Every argument of an event, whatever their number (`Data<AllArgs>`): asks the parser
/// for a tuple, which it reads as the whole argument list.
#[derive(Debug, Default)]
pub(crate) struct AllArgs(pub(crate) Vec<Value>);

impl<'de> serde::Deserialize<'de> for AllArgs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Args;
        impl<'de> serde::de::Visitor<'de> for Args {
            type Value = AllArgs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("the event's arguments")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AllArgs, A::Error> {
                let mut all = Vec::new();
                while let Some(v) = seq.next_element()? {
                    all.push(v);
                }
                Ok(AllArgs(all))
            }
        }
        d.deserialize_tuple(usize::MAX, Args)
    }
}
