//! Socket.IO namespaces: authentication, automatic rooms, and the `join` / `leave` /
//! `refresh` events.
//!
//! Membership changes happen in the synchronous part of each handler — Socket.IO calls a
//! socket's handlers in the order its packets arrive — so a socket's joins and leaves
//! take effect in the order it sent them; only the bus confirmation and the ack are
//! awaited afterwards.

use std::sync::Arc;

use futures_util::future::join_all;
use rooms::Room;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;

use crate::ack::{self, AckError};
use crate::adapter::BusAdapter;
use crate::auth::{AuthError, Authenticator, Identity, TokenSources};
use crate::client_events;
use crate::cluster::Cluster;
use crate::cluster::recovery;
use crate::limits::{RateLimits, SocketLimiter, Verdict};
use crate::membership::{AttachRefused, JoinRefused};
use crate::metrics::Refusal;

/// What the namespace handlers share.
#[derive(Debug)]
pub(crate) struct SocketCtx {
    pub(crate) auth: Authenticator,
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) rate_limits: RateLimits,
    pub(crate) upstream: Arc<crate::upstream::Upstream>,
}

/// Why a connection was refused; the message is the client's connect error.
#[derive(Debug, thiserror::Error)]
enum ConnectRefused {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Limit(#[from] AttachRefused),
}

/// Registers the handlers of namespace `ns`; the returned future resolves when the
/// namespace is ready to accept sockets.
pub(crate) fn register(
    io: &SocketIo<BusAdapter>,
    ns: &str,
    ctx: Arc<SocketCtx>,
) -> crate::adapter::InitRes {
    let auth_ctx = ctx.clone();
    let authenticate = move |s: SocketRef<BusAdapter>, TryData(auth): TryData<Value>| {
        let ctx = auth_ctx.clone();
        async move { authenticate(&ctx, &s, auth.ok()).await }
    };
    let on_connect = move |s: SocketRef<BusAdapter>| {
        let ctx = ctx.clone();
        async move { on_connect(ctx, s).await }
    };
    io.ns(ns.to_owned(), on_connect.with(authenticate))
}

async fn authenticate(
    ctx: &SocketCtx,
    s: &SocketRef<BusAdapter>,
    auth: Option<Value>,
) -> Result<(), ConnectRefused> {
    let refused = |e: ConnectRefused| {
        ctx.cluster
            .stats
            .connections_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ctx.cluster.metrics().refused(match e {
            ConnectRefused::Auth(_) => Refusal::Auth,
            ConnectRefused::Limit(_) => Refusal::ConnectionLimit,
        });
        tracing::info!(sid = %s.id, ns = %s.ns(), error = %e, "refused a connection");
        e
    };
    let recovering = ctx
        .cluster
        .recovery()
        .enabled(s.ns())
        .then(|| recovery::requested(auth.as_ref()));
    let identity = verify(ctx, s, auth).await.map_err(|e| refused(e.into()))?;
    // The caps' early answer, as the client's connect error; `attach` in the connect
    // handler decides (two handshakes racing for the last place: one is disconnected
    // with the reason instead).
    ctx.cluster
        .check_capacity(Some(&user_key(&identity)))
        .map_err(|e| refused(e.into()))?;
    // Connection state recovery: the session the client asks for, if it is still there
    // and its own; else a new one. The CONNECT reply carries the pid either way.
    if let Some(requested) = recovering {
        let mut pid = None;
        if let Some((asked, offset)) = requested {
            let record = ctx
                .cluster
                .take_session(
                    s.ns(),
                    &asked,
                    &offset,
                    &identity.user_id,
                    identity.tenant_id.as_ref().map(rooms::TenantId::as_str),
                )
                .await;
            ctx.cluster.metrics().recovery(record.is_some());
            if let Some(record) = record {
                ctx.cluster.adopt_session(&asked, &record, s.id).await;
                s.extensions
                    .insert(Arc::new(recovery::Plan { offset, record }));
                pid = Some(asked);
            }
        }
        s.set_recovery_pid(pid.unwrap_or_else(recovery::new_pid));
    }
    s.extensions.insert(Arc::new(identity));
    s.extensions
        .insert(Arc::new(SocketLimiter::new(&ctx.rate_limits)));
    Ok(())
}

async fn verify(
    ctx: &SocketCtx,
    s: &SocketRef<BusAdapter>,
    auth: Option<Value>,
) -> Result<Identity, AuthError> {
    let token = {
        let parts = s.req_parts();
        TokenSources {
            auth: auth.as_ref(),
            authorization: parts
                .headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            query: parts.uri.query(),
        }
        .find()
        .ok_or(AuthError::Missing)?
    };
    ctx.auth.verify(&token).await
}

/// Who a socket counts as for the per-user connection cap.
fn user_key(identity: &Identity) -> crate::membership::UserKey {
    (
        identity.tenant_id.as_ref().map(|t| Arc::from(t.as_str())),
        Arc::from(identity.user_id.as_str()),
    )
}

/// The socket's current identity (replaced by `refresh`).
fn identity(s: &SocketRef<BusAdapter>) -> Option<Arc<Identity>> {
    s.extensions.get::<Arc<Identity>>()
}

async fn on_connect(ctx: Arc<SocketCtx>, s: SocketRef<BusAdapter>) {
    let Some(identity) = identity(&s) else {
        // The middleware always inserts the identity before the handler runs.
        s.disconnect().ok();
        return;
    };
    let cluster = ctx.cluster.clone();
    match cluster.attach(&s, identity.expires_at, Some(user_key(&identity))) {
        Ok(()) => tracing::info!(
            sid = %s.id,
            ns = s.ns(),
            user = %identity.user_id,
            tenant = identity.tenant_id.as_ref().map_or("", |t| t.as_str()),
            "client connected"
        ),
        Err(AttachRefused::Gone) => return,
        Err(e) => {
            cluster
                .stats
                .connections_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            cluster.metrics().refused(Refusal::ConnectionLimit);
            Cluster::disconnect_with_reason(&s, "connection_limit", &e.to_string());
            return;
        }
    }
    register_events(&ctx, &s);

    let mut rooms = match identity.auto_rooms() {
        Ok(rooms) => rooms,
        Err(e) => {
            // Checked when the token was verified; kept as a guard.
            tracing::warn!(error = %e, "cannot derive automatic rooms");
            s.disconnect().ok();
            return;
        }
    };
    let auto = rooms.len();
    // A recovered session: held from live recorded deliveries until its replay is done,
    // and back in the rooms it had that the (new) token still allows.
    let plan = s.extensions.get::<Arc<recovery::Plan>>();
    // Held and joined at one point of the dispatcher's sequence: a live message is
    // delivered either before (the socket not in its rooms yet) or after (held).
    let turn = match &plan {
        Some(_) => Some(cluster.recovery().dispatch.lock().await),
        None => None,
    };
    if let Some(plan) = &plan {
        cluster.hold(&s);
        for name in &plan.record.rooms {
            if let Ok(room) = Room::parse(name)
                && !rooms.contains(&room)
                && identity.may_join(&room).is_ok()
            {
                rooms.push(room);
            }
        }
    }
    let mut confirmations = Vec::with_capacity(rooms.len());
    let mut scoped_names = std::collections::HashSet::with_capacity(rooms.len());
    for (i, room) in rooms.iter().enumerate() {
        let joined = identity
            .scope(room)
            .map_err(|e| e.to_string())
            .and_then(|scoped| {
                scoped_names.insert(scoped.as_str().to_owned());
                cluster.join(&s, &scoped).map_err(|e| e.to_string())
            });
        match joined {
            Ok(confirmation) => confirmations.push(confirmation),
            Err(e) if i < auto => {
                tracing::debug!(sid = %s.id, room = %room, error = %e, "automatic room not joined");
                return;
            }
            Err(e) => {
                tracing::debug!(sid = %s.id, room = %room, error = %e, "room of a recovered session not joined");
            }
        }
    }
    drop(turn);
    for result in join_all(confirmations).await {
        if let Err(w) = result {
            tracing::warn!(sid = %s.id, "{w}");
        }
    }
    // Tracked before the client hears `connected`: it may answer with a `join` at once,
    // handled on another thread, whose record update needs the session tracked (a race
    // the e2e recovery rows found once the direct write path made that answer fast).
    if let Some(pid) = s.recovery_pid() {
        let record = recovery::SessionRecord {
            ns: s.ns().to_owned(),
            user: identity.user_id.clone(),
            tenant: identity.tenant_id.as_ref().map(|t| t.as_str().to_owned()),
            sid: s.id.to_string(),
            rooms: rooms.iter().map(|r| r.as_str().to_owned()).collect(),
        };
        if let Some(bytes) = cluster.recovery().track(s.id, pid, record) {
            cluster.save_session(pid.to_owned(), Some(bytes), None);
        }
        // A `join` the client sent right after its CONNECT ack may have been handled
        // before the session was tracked: record the rooms the socket is in now.
        cluster.session_changed(&s);
    }
    let connected = json!({
        "message": "connected",
        "user_id": identity.user_id,
        "tenant_id": identity.tenant_id.as_ref().map(rooms::TenantId::as_str),
        "node_id": cluster.node_id(),
        "rooms": rooms.iter().map(Room::as_str).collect::<Vec<_>>(),
        "expires_at": identity.expires_at,
        "recovered": plan.is_some(),
    });
    if s.emit("connected", &connected).is_err() {
        // The connection is gone although the socket was connected: socketioxide admits
        // a CONNECT whose Engine.IO session closed while it was being processed, and such
        // a socket is never closed by it. Close it, which runs the disconnect hook.
        tracing::debug!(sid = %s.id, "connection gone during the handshake; closing the socket");
        // Not a session to keep or to drop: what Redis holds for it stays as it is.
        drop(cluster.recovery().untrack(s.id));
        s.disconnect().ok();
        return;
    }
    if let Some(plan) = &plan {
        match cluster
            .replay(&s, &plan.offset, &plan.record.sid, &scoped_names)
            .await
        {
            Ok(sent) => {
                tracing::info!(sid = %s.id, previous = %plan.record.sid, replayed = sent, "session recovered")
            }
            Err(recovery::ReplayError::Gone) => {
                // The client left mid-replay: the record its recovery re-made stays in
                // Redis (the disconnect must not drop it), and its next try recovers
                // from the offset it has.
                tracing::info!(sid = %s.id, "connection closed during the replay");
                drop(cluster.recovery().untrack(s.id));
                s.disconnect().ok();
            }
            Err(e) => {
                // Better a fresh session (the client reconnects) than a silent gap: the
                // disconnect drops the record, so the next try starts afresh.
                tracing::warn!(sid = %s.id, error = %e, "replay failed; disconnecting");
                s.disconnect().ok();
            }
        }
    }
}

/// The client events of a connected socket, each a named handler below, reached through
/// one handler that dispatches on the event's name: socketioxide keeps a map and a boxed
/// closure per registered event *per socket*, ~0.5 KiB of every connection for five
/// names (`bench --idle N gateway` under massif). Membership changes happen in each
/// handler's synchronous part (see the module's opening); the dispatch keeps that, since
/// socketioxide calls this handler synchronously in packet order too.
fn register_events(ctx: &Arc<SocketCtx>, s: &SocketRef<BusAdapter>) {
    type Reply = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
    let ctx = ctx.clone();
    s.on_fallback(
        move |s: SocketRef<BusAdapter>,
              Event(event): Event,
              TryData(args): TryData<client_events::AllArgs>,
              ack: AckSender<BusAdapter>|
              -> Reply {
            let cluster = &ctx.cluster;
            // What a handler of one argument receives: the first, if the arguments
            // could be read (socketioxide's `TryData<Value>`).
            let first = |args: Result<client_events::AllArgs, _>| {
                args.ok().and_then(|a| a.0.into_iter().next())
            };
            match &*event {
                "join" => Box::pin(on_join(cluster, &s, first(args), ack)),
                "leave" => Box::pin(on_leave(cluster, &s, first(args), ack)),
                "refresh" => Box::pin(on_refresh(ctx.clone(), s, first(args), ack)),
                "presence" => Box::pin(on_presence(cluster.clone(), s, first(args), ack)),
                "publish" => {
                    on_publish(cluster, &s, first(args), ack);
                    Box::pin(async {})
                }
                // Other events: forwarded to services when a route names them;
                // otherwise refused with a reason when the client asked for an ack —
                // never silently dropped. Both count against the rate.
                _ => on_other_event(cluster, &ctx.upstream, &s, &event, args.ok(), ack),
            }
        },
    );
}

/// `join`: checked and applied now (packet order); the ack waits for the bus to confirm
/// the room's subscription.
fn on_join(
    cluster: &Arc<Cluster>,
    s: &SocketRef<BusAdapter>,
    room: Option<Value>,
    ack: AckSender<BusAdapter>,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let pending = limit(cluster, s, true).and_then(|()| join(cluster, s, room));
    if pending.is_ok() {
        cluster.session_changed(s);
    }
    async move {
        let reply = match pending {
            Ok((room, confirmation)) => match confirmation.await {
                Ok(()) => json!({"ok": true, "room": room}),
                Err(w) => json!({"ok": true, "room": room, "warning": w.to_string()}),
            },
            Err(error) => error.to_json(),
        };
        ack.send(&reply).ok();
    }
}

/// `leave`: applied now; answered at once.
fn on_leave(
    cluster: &Arc<Cluster>,
    s: &SocketRef<BusAdapter>,
    room: Option<Value>,
    ack: AckSender<BusAdapter>,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let reply = limit(cluster, s, false)
        .and_then(|()| leave(cluster, s, room))
        .map(|room| {
            cluster.session_changed(s);
            json!({"ok": true, "room": room})
        });
    async move {
        ack.send(&ack::reply(reply)).ok();
    }
}

/// `refresh`: a fresh token moves the socket's expiry.
async fn on_refresh(
    ctx: Arc<SocketCtx>,
    s: SocketRef<BusAdapter>,
    arg: Option<Value>,
    ack: AckSender<BusAdapter>,
) {
    let allowed = limit(&ctx.cluster, &s, false);
    let reply = match allowed {
        Ok(()) => refresh(&ctx, &s, arg).await,
        Err(e) => Err(e),
    };
    ack.send(&ack::reply(reply)).ok();
}

/// `presence`: who is in a room this socket is in, cluster-wide.
async fn on_presence(
    cluster: Arc<Cluster>,
    s: SocketRef<BusAdapter>,
    arg: Option<Value>,
    ack: AckSender<BusAdapter>,
) {
    let allowed = limit(&cluster, &s, false);
    let reply = match allowed.and_then(|()| presence_room(&s, arg)) {
        Ok((room, scoped)) => {
            let p = cluster.presence(s.ns(), &scoped).await;
            Ok(json!({
                "ok": true,
                "room": room,
                "users": p.users_json(),
                "count": p.users.len(),
                "sockets": p.sockets,
            }))
        }
        Err(e) => Err(e),
    };
    ack.send(&ack::reply(reply)).ok();
}

/// `publish`: checked and queued now, so a client's publishes keep their order.
fn on_publish(
    cluster: &Arc<Cluster>,
    s: &SocketRef<BusAdapter>,
    arg: Option<Value>,
    ack: AckSender<BusAdapter>,
) {
    let refused = match (limit(cluster, s, false), self::identity(s)) {
        (Ok(()), Some(identity)) => {
            client_events::publish(cluster, s, &identity, arg, ack);
            return;
        }
        (Err(error), _) => error,
        (Ok(()), None) => AckError::new("not authenticated"),
    };
    ack.send(&refused.to_json()).ok();
}

/// Any other event: forwarded to a service when a route names it, refused otherwise.
fn on_other_event(
    cluster: &Arc<Cluster>,
    upstream: &Arc<crate::upstream::Upstream>,
    s: &SocketRef<BusAdapter>,
    event: &str,
    args: Option<client_events::AllArgs>,
    ack: AckSender<BusAdapter>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let route = upstream.routes().route(s.ns(), event);
    let error = match (limit(cluster, s, false), route, self::identity(s)) {
        (Err(e), _, _) => e,
        (Ok(()), Some(_), _) if args.is_none() => {
            cluster.metrics().refused(Refusal::BadInput);
            AckError::new("the event's arguments could not be read")
        }
        (Ok(()), Some(transport), Some(identity)) => {
            let ev = client_events::Forward {
                transport,
                event: event.to_owned(),
                args: args.map(|a| a.0).unwrap_or_default(),
            };
            client_events::forward(cluster, upstream, s, &identity, ev, ack);
            return Box::pin(async {});
        }
        (Ok(()), _, _) => {
            cluster.metrics().refused(Refusal::UnknownEvent);
            AckError::new(format!("no handler for event {event:?} on this gateway"))
        }
    };
    Box::pin(async move {
        ack.send(&error.to_json()).ok();
    })
}

/// Applies the socket's rate limits to one client event (`join`: a join). Refusals are
/// counted; sustained abuse disconnects the socket with the reason `rate_limited`.
fn limit(cluster: &Cluster, s: &SocketRef<BusAdapter>, join: bool) -> Result<(), AckError> {
    let Some(limiter) = s.extensions.get::<Arc<SocketLimiter>>() else {
        return Ok(());
    };
    let verdict = limiter.check(join);
    if verdict == Verdict::Allow {
        return Ok(());
    }
    let stats = &cluster.stats;
    stats
        .rate_limited
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    cluster.metrics().refused(Refusal::RateLimit);
    let what = if join { "joins" } else { "events" };
    let message = format!("rate limited: too many {what} per second; slow down");
    if verdict == Verdict::Disconnect {
        stats
            .rate_disconnects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(sid = %s.id, "disconnected a socket that kept exceeding its rate limit");
        Cluster::disconnect_with_reason(
            s,
            "rate_limited",
            "too many events for too long: disconnected",
        );
    }
    Err(AckError::new(message))
}

/// The room a `join`/`leave` names: a string, or `{ "room": "..." }`.
fn room_arg(arg: Option<Value>) -> Result<Room, AckError> {
    let name = match &arg {
        Some(Value::String(name)) => name.as_str(),
        Some(Value::Object(map)) => match map.get("room") {
            Some(Value::String(name)) => name.as_str(),
            _ => return Err("expected a room name string or {\"room\": \"...\"}".into()),
        },
        _ => return Err("expected a room name string or {\"room\": \"...\"}".into()),
    };
    Room::parse(name).map_err(AckError::of)
}

type JoinConfirmation = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), crate::cluster::JoinWarning>> + Send>,
>;

/// Validates and applies a join now; returns the room and its bus confirmation, or the
/// error for the ack.
fn join(
    cluster: &Cluster,
    s: &SocketRef<BusAdapter>,
    arg: Option<Value>,
) -> Result<(String, JoinConfirmation), AckError> {
    let refused_as = |reason: Refusal| {
        move |e: AckError| {
            cluster
                .stats
                .joins_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            cluster.metrics().refused(reason);
            e
        }
    };
    let refused = refused_as(Refusal::JoinDenied);
    let room = room_arg(arg).map_err(refused)?;
    let identity = identity(s).ok_or_else(|| refused("not authenticated".into()))?;
    let scoped = identity
        .may_join(&room)
        .map_err(|e| refused(AckError::from(e)))?;
    match cluster.join(s, &scoped) {
        Ok(confirmation) => Ok((room.into_string(), Box::pin(confirmation))),
        Err(e @ JoinRefused::TooManyRooms { .. }) => {
            Err(refused_as(Refusal::RoomLimit)(AckError::of(e)))
        }
        Err(e) => Err(AckError::of(e)),
    }
}

/// The room a `presence` request names, which the socket must be in.
fn presence_room(
    s: &SocketRef<BusAdapter>,
    arg: Option<Value>,
) -> Result<(String, rooms::ScopedRoom), AckError> {
    let room = room_arg(arg)?;
    let identity = identity(s).ok_or("not authenticated")?;
    let scoped = identity.scope(&room).map_err(AckError::of)?;
    if !s.rooms().iter().any(|r| r.as_ref() == scoped.as_str()) {
        return Err(AckError::new(format!(
            "not in {room}: presence is for rooms this socket is in"
        )));
    }
    Ok((room.into_string(), scoped))
}

/// Validates and applies a leave now.
fn leave(
    cluster: &Cluster,
    s: &SocketRef<BusAdapter>,
    arg: Option<Value>,
) -> Result<String, AckError> {
    let room = room_arg(arg)?;
    let identity = identity(s).ok_or("not authenticated")?;
    let scoped = identity.scope(&room).map_err(AckError::of)?;
    cluster.leave(s, &scoped);
    Ok(room.into_string())
}

/// `refresh`: a fresh token (a string or `{token}`) for the same user and tenant moves
/// the socket's expiry; rooms the new token no longer allows are left.
async fn refresh(
    ctx: &SocketCtx,
    s: &SocketRef<BusAdapter>,
    arg: Option<Value>,
) -> Result<Value, AckError> {
    let token = match &arg {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Object(map)) => map.get("token").and_then(Value::as_str).unwrap_or(""),
        _ => "",
    };
    if token.is_empty() {
        return Err("expected a token string or {\"token\": \"...\"}".into());
    }
    let fresh = ctx.auth.verify(token).await.map_err(AckError::of)?;
    let current = identity(s).ok_or("not authenticated")?;
    if fresh.user_id != current.user_id || fresh.tenant_id != current.tenant_id {
        return Err("the new token is for another user or tenant".into());
    }
    let key = (Arc::<str>::from(s.ns()), s.id);
    let cluster = &ctx.cluster;
    if !cluster.membership().set_expiry(&key, fresh.expires_at) {
        return Err("the socket is disconnected".into());
    }
    let fresh = Arc::new(fresh);
    s.extensions.insert(fresh.clone());
    let mut left = Vec::new();
    for scoped in cluster.membership().rooms_of(&key) {
        let allowed = Room::parse(scoped.room()).is_ok_and(|room| fresh.may_join(&room).is_ok());
        if !allowed {
            cluster.leave(s, &scoped);
            left.push(scoped.room().to_owned());
        }
    }
    left.sort();
    Ok(json!({"ok": true, "expires_at": fresh.expires_at, "left": left}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_argument_forms() {
        assert_eq!(
            room_arg(Some(json!("doc:Task:1"))).unwrap().as_str(),
            "doc:Task:1"
        );
        assert_eq!(
            room_arg(Some(json!({"room": "org:O"}))).unwrap().as_str(),
            "org:O"
        );
        assert!(
            room_arg(Some(json!(5)))
                .unwrap_err()
                .to_string()
                .contains("expected a room name")
        );
        assert!(room_arg(None).is_err());
        assert_eq!(
            room_arg(Some(json!("lobby"))).unwrap_err().to_string(),
            Room::parse("lobby").unwrap_err().to_string()
        );
    }
}
