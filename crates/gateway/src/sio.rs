//! Socket.IO namespaces: authentication, automatic rooms, and the `join` / `leave` events.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rooms::Room;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;

use crate::adapter::BusAdapter;
use crate::auth::{AuthError, Authenticator, Identity, TokenSources};
use crate::cluster::Cluster;

/// What the namespace handlers share.
#[derive(Debug)]
pub(crate) struct SocketCtx {
    pub(crate) auth: Authenticator,
    pub(crate) cluster: Arc<Cluster>,
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
        async move { authenticate(&ctx, &s, auth.ok()) }
    };
    let on_connect = move |s: SocketRef<BusAdapter>| {
        let ctx = ctx.clone();
        async move { on_connect(ctx, s).await }
    };
    io.ns(ns.to_owned(), on_connect.with(authenticate))
}

fn authenticate(
    ctx: &SocketCtx,
    s: &SocketRef<BusAdapter>,
    auth: Option<Value>,
) -> Result<(), AuthError> {
    let parts = s.req_parts();
    let sources = TokenSources {
        auth: auth.as_ref(),
        authorization: parts
            .headers
            .get(http_header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        query: parts.uri.query(),
    };
    let token = sources.find().ok_or(AuthError::Missing)?;
    let identity = ctx.auth.verify(&token).inspect_err(|e| {
        tracing::debug!(sid = %s.id, ns = %s.ns(), error = %e, "refused a connection");
    })?;
    s.extensions.insert(Arc::new(identity));
    Ok(())
}

mod http_header {
    pub(super) use axum::http::header::AUTHORIZATION;
}

async fn on_connect(ctx: Arc<SocketCtx>, s: SocketRef<BusAdapter>) {
    let Some(identity) = s.extensions.get::<Arc<Identity>>() else {
        // The middleware always inserts the identity before the handler runs.
        s.disconnect().ok();
        return;
    };
    let cluster = ctx.cluster.clone();
    cluster.stats.connections.fetch_add(1, Ordering::Relaxed);
    {
        let cluster = cluster.clone();
        s.on_disconnect(move |s: SocketRef<BusAdapter>| {
            cluster.leave_all(s.ns(), s.id);
            cluster.stats.connections.fetch_sub(1, Ordering::Relaxed);
            async {}
        });
    }
    {
        let (cluster, identity) = (cluster.clone(), identity.clone());
        s.on(
            "join",
            move |s: SocketRef<BusAdapter>,
                  TryData(room): TryData<Value>,
                  ack: AckSender<BusAdapter>| {
                let (cluster, identity) = (cluster.clone(), identity.clone());
                async move {
                    let reply = join(&cluster, &identity, &s, room.ok()).await;
                    ack.send(&reply).ok();
                }
            },
        );
    }
    {
        let cluster = cluster.clone();
        s.on(
            "leave",
            move |s: SocketRef<BusAdapter>,
                  TryData(room): TryData<Value>,
                  ack: AckSender<BusAdapter>| {
                let cluster = cluster.clone();
                async move {
                    let reply = match room_arg(room.ok()) {
                        Ok(room) => {
                            cluster.leave(&s, &room);
                            json!({"ok": true, "room": room.as_str()})
                        }
                        Err(error) => json!({"ok": false, "error": error}),
                    };
                    ack.send(&reply).ok();
                }
            },
        );
    }

    let rooms = match identity.auto_rooms() {
        Ok(rooms) => rooms,
        Err(e) => {
            // Checked when the token was verified; kept as a guard.
            tracing::warn!(error = %e, "cannot derive automatic rooms");
            s.disconnect().ok();
            return;
        }
    };
    for room in &rooms {
        if let Err(w) = cluster.join(&s, room).await {
            tracing::warn!(sid = %s.id, room = %room, "{w}");
        }
    }
    let connected = json!({
        "message": "connected",
        "user_id": identity.user_id,
        "tenant_id": identity.tenant_id,
        "node_id": cluster.node_id(),
        "rooms": rooms.iter().map(Room::as_str).collect::<Vec<_>>(),
    });
    s.emit("connected", &connected).ok();
}

/// The room a `join`/`leave` names: a string, or `{ "room": "..." }`.
fn room_arg(arg: Option<Value>) -> Result<Room, String> {
    let name = match &arg {
        Some(Value::String(name)) => name.as_str(),
        Some(Value::Object(map)) => match map.get("room") {
            Some(Value::String(name)) => name.as_str(),
            _ => return Err("expected a room name string or {\"room\": \"...\"}".into()),
        },
        _ => return Err("expected a room name string or {\"room\": \"...\"}".into()),
    };
    Room::parse(name).map_err(|e| e.to_string())
}

async fn join(
    cluster: &Cluster,
    identity: &Identity,
    s: &SocketRef<BusAdapter>,
    arg: Option<Value>,
) -> Value {
    let room = match room_arg(arg) {
        Ok(room) => room,
        Err(error) => return json!({"ok": false, "error": error}),
    };
    let own = identity.auto_rooms().is_ok_and(|own| own.contains(&room));
    if !own && !identity.policy.allows(&room) {
        return json!({"ok": false, "error": format!("not allowed to join {room}")});
    }
    match cluster.join(s, &room).await {
        Ok(()) => json!({"ok": true, "room": room.as_str()}),
        Err(warning) => json!({"ok": true, "room": room.as_str(), "warning": warning.to_string()}),
    }
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
                .contains("expected a room name")
        );
        assert!(room_arg(None).is_err());
        assert_eq!(
            room_arg(Some(json!("lobby"))).unwrap_err(),
            Room::parse("lobby").unwrap_err().to_string()
        );
    }
}
