//! The official Socket.IO Admin UI (`@socket.io/admin-ui`) on the whole cluster: the
//! `/admin` namespace speaks the protocol its `instrument()` speaks on a Node server.
//!
//! - Login as the UI does it: `{username, password}` checked against a bcrypt hash, then a
//!   `session` id the UI reuses on reconnect; the id is signed with the hash, so it holds
//!   on every node (the UI may reconnect to another one). Wrong credentials are refused
//!   with `invalid credentials`, which the UI shows as such.
//! - On connect: `config` (the features: list, join, leave, disconnect unless read-only)
//!   and `all_sockets`, every node's sockets of every namespace, asked like the server
//!   API asks.
//! - Live: each node broadcasts `server_stats` every 2 s and `socket_connected`,
//!   `socket_disconnected`, `room_joined`, `room_left` as its sockets come and go, to
//!   the `/admin` namespace — cluster-wide through the bus, so a UI connected to any node
//!   sees them all.
//! - Actions (`_disconnect`, `join`, `leave`, each for one socket, one room or the whole
//!   namespace) go through the same membership owner as everything else
//!   ([`Cluster::act_on_sockets`]).
//!
//! Who sees what: the admin login is the cluster operator's. It sees every tenant's
//! sockets, with their rooms under their tenant scope (`@acme/doc:Task:1`); an action on
//! a room acts in that room's tenant only, and rooms joined by a socket are scoped to the
//! socket's own tenant.

use std::sync::Arc;
use std::time::Instant;

use hmac::{Hmac, Mac};
use rooms::{Room, ScopedRoom};
use serde_json::{Value, json};
use sha2::Sha256;
use socketioxide::SocketIo;
use socketioxide::extract::{Data, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;

use crate::adapter::{BusAdapter, InitRes};
use crate::cluster::Cluster;
use envelope::{SocketAction, SocketInfo, SocketTarget};

/// The Admin UI's namespace.
pub const NAMESPACE: &str = "/admin";

/// How long a login's session id holds (the UI reconnects with it).
const SESSION_SECS: u64 = 12 * 3600;

/// How often each node sends its `server_stats`.
const STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// `ADMIN_UI_*`: who may log in to the Admin UI, and what it may do.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminUiConfig {
    /// The login.
    pub username: String,
    /// bcrypt hash of the password.
    pub password_hash: String,
    /// Show only: no disconnect, join or leave.
    pub readonly: bool,
    /// The UI's static build, served at `/admin/ui/` when set.
    pub static_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for AdminUiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminUiConfig")
            .field("username", &self.username)
            .field("readonly", &self.readonly)
            .field("static_dir", &self.static_dir)
            .finish_non_exhaustive()
    }
}

/// Whether `hash` is a bcrypt hash this node can check passwords against.
pub(crate) fn is_bcrypt_hash(hash: &str) -> bool {
    hash.parse::<bcrypt::HashParts>().is_ok()
}

/// A session id for `username`, valid until `until` (unix seconds): `<until>.<hex HMAC>`
/// keyed with the password hash, which every node has.
fn session_id(config: &AdminUiConfig, until: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(config.password_hash.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(format!("{}:{until}", config.username).as_bytes());
    format!("{until}.{}", hex::encode(mac.finalize().into_bytes()))
}

fn session_valid(config: &AdminUiConfig, id: &str) -> bool {
    let Some((until, _)) = id.split_once('.') else {
        return false;
    };
    let Ok(until) = until.parse::<u64>() else {
        return false;
    };
    until > crate::auth::unix_now() && hmac_eq(session_id(config, until).as_bytes(), id.as_bytes())
}

fn hmac_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Marks an admin socket (set by the login middleware).
#[derive(Debug)]
struct AdminLogin {
    /// A fresh session id to hand the UI, after a password login.
    new_session: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid credentials")]
struct InvalidCredentials;

/// Registers the `/admin` namespace and starts this node's `server_stats`.
pub(crate) fn register(
    io: &SocketIo<BusAdapter>,
    cluster: Arc<Cluster>,
    config: AdminUiConfig,
) -> InitRes {
    let config = Arc::new(config);
    let login_config = config.clone();
    let login = move |s: SocketRef<BusAdapter>, TryData(auth): TryData<Value>| {
        let config = login_config.clone();
        async move {
            let auth = auth.unwrap_or(Value::Null);
            if let Some(id) = auth["sessionId"].as_str()
                && session_valid(&config, id)
            {
                s.extensions
                    .insert(Arc::new(AdminLogin { new_session: None }));
                return Ok(());
            }
            let (Some(user), Some(password)) =
                (auth["username"].as_str(), auth["password"].as_str())
            else {
                return Err(InvalidCredentials);
            };
            let (hash, password) = (config.password_hash.clone(), password.to_owned());
            // bcrypt is slow on purpose: off the runtime's threads.
            let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false);
            if !matches || !hmac_eq(user.as_bytes(), config.username.as_bytes()) {
                tracing::warn!(ns = NAMESPACE, "Admin UI login refused");
                return Err(InvalidCredentials);
            }
            let id = session_id(&config, crate::auth::unix_now() + SESSION_SECS);
            s.extensions.insert(Arc::new(AdminLogin {
                new_session: Some(id),
            }));
            Ok(())
        }
    };
    let connect_cluster = cluster.clone();
    let on_connect = move |s: SocketRef<BusAdapter>| {
        let cluster = connect_cluster.clone();
        let config = config.clone();
        async move { on_connect(cluster, config, s).await }
    };
    tokio::spawn(send_stats(cluster));
    io.ns(NAMESPACE, on_connect.with(login))
}

/// The features the UI shows: listing always, acting unless read-only.
fn features(readonly: bool) -> Vec<&'static str> {
    let mut features = vec!["AGGREGATED_EVENTS", "ALL_EVENTS"];
    if !readonly {
        features.extend([
            "JOIN",
            "LEAVE",
            "DISCONNECT",
            "MJOIN",
            "MLEAVE",
            "MDISCONNECT",
        ]);
    }
    features
}

async fn on_connect(cluster: Arc<Cluster>, config: Arc<AdminUiConfig>, s: SocketRef<BusAdapter>) {
    if let Some(login) = s.extensions.get::<Arc<AdminLogin>>()
        && let Some(id) = &login.new_session
    {
        s.emit("session", id).ok();
    }
    s.emit(
        "config",
        &json!({"supportedFeatures": features(config.readonly)}),
    )
    .ok();
    if !config.readonly {
        for (event, act) in [
            ("_disconnect", Act::Disconnect),
            ("join", Act::Join),
            ("leave", Act::Leave),
        ] {
            let cluster = cluster.clone();
            // Three arguments, the last null when the UI names no filter (JavaScript's
            // `undefined` in an argument list).
            s.on(
                event,
                move |Data((a, b, c)): Data<(Value, Value, Value)>| {
                    let cluster = cluster.clone();
                    async move { act_from_ui(&cluster, act, &[a, b, c]).await }
                },
            );
        }
    }
    let mut sockets = Vec::new();
    for ns in cluster.namespaces() {
        if let Ok(answer) = cluster
            .act_on_sockets_any_tenant(&ns, SocketTarget::All, SocketAction::List)
            .await
        {
            sockets.extend(answer.sockets.iter().map(serialize));
        }
    }
    s.emit("all_sockets", &sockets).ok();
}

#[derive(Debug, Clone, Copy)]
enum Act {
    Disconnect,
    Join,
    Leave,
}

/// `_disconnect(nsp, close, filter?)`, `join(nsp, room, filter?)`, `leave(nsp, room,
/// filter?)`: the filter is a room (in its tenant's scope), a socket id, or nothing (the
/// whole namespace).
async fn act_from_ui(cluster: &Cluster, act: Act, args: &[Value]) {
    let Some(ns) = args.first().and_then(Value::as_str) else {
        return;
    };
    let filter = args.get(2).and_then(Value::as_str);
    let (tenant, target) = match filter {
        None => (None, SocketTarget::All),
        Some(f) => match ScopedRoom::parse(f) {
            Ok(room) => (room.tenant(), SocketTarget::Room(room.room().to_owned())),
            Err(_) => (None, SocketTarget::Socket(f.to_owned())),
        },
    };
    let room = || {
        args.get(1).and_then(Value::as_str).and_then(|r| {
            ScopedRoom::parse(r)
                .ok()
                .map(|s| s.room().to_owned())
                .or_else(|| Room::parse(r).ok().map(|r| r.to_string()))
        })
    };
    let action = match act {
        Act::Disconnect => SocketAction::Disconnect {
            reason: "disconnected from the Admin UI".into(),
        },
        Act::Join => match room() {
            Some(r) => SocketAction::Join { rooms: vec![r] },
            None => return,
        },
        Act::Leave => match room() {
            Some(r) => SocketAction::Leave { rooms: vec![r] },
            None => return,
        },
    };
    let result = match tenant {
        Some(t) => cluster.act_on_sockets(ns, Some(&t), target, action).await,
        None => cluster.act_on_sockets_any_tenant(ns, target, action).await,
    };
    match result {
        Ok(answer) => {
            tracing::info!(ns, action = ?act, sockets = answer.sockets.len(), "Admin UI action")
        }
        Err(e) => tracing::info!(ns, action = ?act, error = %e, "Admin UI action refused"),
    }
}

/// A socket as the UI reads it (`SerializedSocket`): its rooms under their tenant scope,
/// its user, tenant and node as its data.
fn serialize(socket: &SocketInfo) -> Value {
    let tenant = socket
        .tenant
        .as_deref()
        .and_then(|t| rooms::TenantId::parse(t).ok());
    let rooms: Vec<String> = socket
        .rooms
        .iter()
        .filter_map(|r| Room::parse(r).ok())
        .filter_map(|r| ScopedRoom::new(tenant.as_ref(), &r).ok())
        .map(ScopedRoom::into_string)
        .collect();
    json!({
        "id": socket.sid,
        "clientId": socket.sid,
        "transport": socket.transport,
        "nsp": socket.ns,
        "data": {"user": socket.user, "tenant": socket.tenant, "node": socket.node},
        "handshake": {"address": "", "headers": {}, "query": {}, "issued": 0, "secure": false, "time": "", "url": "", "xdomain": false},
        "rooms": rooms,
    })
}

/// A JavaScript `Date` as JSON carries it.
fn now_iso() -> String {
    let ms = envelope::now_ms();
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days.cast_signed() + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// This node's `server_stats`, every [`STATS_EVERY`], to every admin socket of the cluster.
async fn send_stats(cluster: Arc<Cluster>) {
    let started = Instant::now();
    let hostname = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| cluster.node_id().to_owned());
    let mut tick = tokio::time::interval(STATS_EVERY);
    loop {
        tick.tick().await;
        let Some(io) = cluster.socket_io() else {
            continue;
        };
        let Some(admin) = io.of(NAMESPACE) else {
            continue;
        };
        let namespaces: Vec<Value> = cluster
            .namespaces()
            .into_iter()
            .map(|ns| {
                let count = io.of(&*ns).map_or(0, |op| op.local().sockets().len());
                json!({"name": ns, "socketsCount": count})
            })
            .collect();
        let stats = json!({
            "serverId": cluster.node_id(),
            "hostname": hostname,
            "pid": std::process::id(),
            "uptime": started.elapsed().as_secs_f64(),
            "clientsCount": cluster.stats.connections.load(std::sync::atomic::Ordering::Relaxed),
            "pollingClientsCount": 0,
            "aggregatedEvents": [],
            "namespaces": namespaces,
        });
        if let Err(e) = admin.emit("server_stats", &stats).await {
            tracing::debug!(error = %e, "server_stats not sent");
        }
    }
}

impl Cluster {
    /// Tells every admin socket of the cluster (when the Admin UI is on) that `event`
    /// happened; `args` is a tuple, one element per argument (the time last).
    fn to_admin<T: serde::Serialize + Send + Sync + 'static>(&self, event: &'static str, args: T) {
        let Some(admin) = self.socket_io().and_then(|io| io.of(NAMESPACE)) else {
            return;
        };
        tokio::spawn(async move {
            if let Err(e) = admin.emit(event, &args).await {
                tracing::debug!(event, error = %e, "Admin UI event not sent");
            }
        });
    }

    /// A socket connected (not the admin's own).
    pub(crate) fn admin_connected(&self, socket: &SocketRef<BusAdapter>) {
        if socket.ns() != NAMESPACE {
            let info = self.describe(socket);
            self.to_admin("socket_connected", (serialize(&info), now_iso()));
        }
    }

    /// A socket disconnected.
    pub(crate) fn admin_disconnected(&self, socket: &SocketRef<BusAdapter>, reason: &str) {
        if socket.ns() != NAMESPACE {
            let args = (
                socket.ns().to_owned(),
                socket.id.to_string(),
                reason.to_owned(),
                now_iso(),
            );
            self.to_admin("socket_disconnected", args);
        }
    }

    /// A socket joined (`room_joined`) or left (`room_left`) `room`.
    pub(crate) fn admin_room(
        &self,
        socket: &SocketRef<BusAdapter>,
        room: &ScopedRoom,
        event: &'static str,
    ) {
        let args = (
            socket.ns().to_owned(),
            room.as_str().to_owned(),
            socket.id.to_string(),
            now_iso(),
        );
        self.to_admin(event, args);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AdminUiConfig {
        AdminUiConfig {
            username: "admin".into(),
            password_hash: bcrypt::hash("s3cret", 4).unwrap_or_default(),
            readonly: false,
            static_dir: None,
        }
    }

    #[test]
    fn sessions_hold_until_they_expire_and_only_with_their_hash() {
        let c = config();
        let id = session_id(&c, crate::auth::unix_now() + 60);
        assert!(session_valid(&c, &id));
        assert!(!session_valid(
            &c,
            &session_id(&c, crate::auth::unix_now() - 1)
        ));
        let other = AdminUiConfig {
            password_hash: bcrypt::hash("other", 4).unwrap_or_default(),
            ..c.clone()
        };
        assert!(!session_valid(&other, &id));
        assert!(!session_valid(&c, "garbage"));
        assert!(is_bcrypt_hash(&c.password_hash));
        assert!(!is_bcrypt_hash("plain"));
    }

    #[test]
    fn the_admin_ui_is_off_unless_both_login_settings_are_given() {
        let parse = |extra: &[&str]| {
            let mut args = vec![
                "gateway",
                "--jwt-secret",
                "0123456789abcdef0123456789abcdef",
                "--publish-api-key",
                "0123456789abcdef",
            ];
            args.extend_from_slice(extra);
            crate::Args::try_parse_hermetic(args)
                .map_err(|e| e.to_string())
                .and_then(|a| crate::Config::from_args(a).map_err(|e| e.to_string()))
        };
        assert_eq!(parse(&[]).map(|c| c.admin_ui), Ok(None));
        let hash = bcrypt::hash("pw", 4).unwrap_or_default();
        let on = parse(&[
            "--admin-ui-username",
            "ops",
            "--admin-ui-password-hash",
            &hash,
        ]);
        assert_eq!(
            on.map(|c| c.admin_ui.map(|a| (a.username, a.readonly))),
            Ok(Some(("ops".into(), false)))
        );
        let half = parse(&["--admin-ui-username", "ops"]).unwrap_err();
        assert!(half.contains("set both"), "{half}");
        let plain = parse(&[
            "--admin-ui-username",
            "ops",
            "--admin-ui-password-hash",
            "pw",
        ])
        .unwrap_err();
        assert!(plain.contains("bcrypt"), "{plain}");
    }

    #[test]
    fn dates_read_as_javascript_writes_them() {
        let iso = now_iso();
        assert_eq!(iso.len(), 24, "{iso}");
        assert!(iso.starts_with("20") && iso.ends_with('Z'), "{iso}");
    }
}
