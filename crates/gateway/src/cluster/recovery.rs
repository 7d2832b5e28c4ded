//! Connection state recovery across nodes, in Socket.IO v4's own protocol.
//!
//! In a namespace with recovery (`RECOVERY_NAMESPACES`) every message is a recorded
//! publish: appended to the namespace's history stream in Redis and published with its
//! offset in one atomic step ([`bus::Bus::publish_recorded`]), so the stream's order is
//! the order every node delivers in. Each delivered event carries its offset as its last
//! argument; the CONNECT reply carries a private session id (`pid`). A client that comes
//! back within the window sends `{pid, offset}` in its auth payload, to any node; that
//! node takes the session record (`GETDEL`, so it is restored once), checks it belongs to
//! the same user and tenant, rejoins its rooms (still allowed by the new token), replays
//! what the history holds after `offset` for those rooms in order, and answers with the
//! same `pid` (the client then reports `socket.recovered === true`).
//!
//! The hand-over from replay to live delivery is exact: the recovering socket joins its
//! rooms first but is held (excluded from live recorded deliveries); the replay reads
//! the history while the dispatcher is paused between two messages; afterwards live
//! messages up to the last replayed offset still skip the socket (they may arrive after
//! the replay, published just before it), and later ones reach it.
//!
//! Session records (`{prefix}:session:{pid}`) are written when a socket connects,
//! joins or leaves, refreshed every third of the window while it is connected, on
//! shutdown and on disconnect, and removed when the client leaves on purpose; each
//! expires one window after its last write, so a crashed node's sessions stay
//! recoverable for the window after its last refresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use socketioxide::socket::Sid;

/// Which namespaces recover, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// Namespaces with connection state recovery (none: off).
    pub namespaces: Vec<String>,
    /// How long after a disconnect a client can come back and recover (Socket.IO's
    /// `maxDisconnectionDuration`).
    pub window: Duration,
    /// Messages kept per namespace history (about; Redis trims with `MAXLEN ~`).
    pub max_len: usize,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            window: Duration::from_secs(120),
            max_len: 10_000,
        }
    }
}

/// Entries read from the history per request while replaying.
const PAGE: usize = 500;

/// A recoverable session as stored in Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    /// Namespace.
    pub(crate) ns: String,
    /// User id and tenant the session belongs to.
    pub(crate) user: String,
    pub(crate) tenant: Option<String>,
    /// The socket id it had (replies addressed to it are replayed too).
    pub(crate) sid: String,
    /// Its rooms, unscoped (`doc:Task:1`), automatic rooms included.
    pub(crate) rooms: Vec<String>,
}

/// What a reconnecting socket restores, decided in the connect middleware.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The last offset the client received.
    pub(crate) offset: String,
    /// The session it had.
    pub(crate) record: SessionRecord,
}

/// Where a recovering socket stands with live recorded deliveries.
#[derive(Debug, Clone)]
enum Marker {
    /// Replay not done yet: no live recorded message.
    Hold,
    /// Replayed up to this offset: live messages up to it are skipped.
    Upto(String),
}

/// The node's recovery state.
#[derive(Debug)]
pub(crate) struct Recovery {
    config: RecoveryConfig,
    /// Live local sockets with a session: their pid and record.
    sessions: Mutex<HashMap<Sid, (String, SessionRecord)>>,
    /// Recovering sockets and how far their replay went.
    markers: Mutex<HashMap<Sid, Marker>>,
    /// `markers.len()`, readable without the lock on the delivery path.
    recovering: AtomicUsize,
    /// Held by the dispatcher while it delivers one message, and by a replay while it
    /// reads the history: the hand-over point between the two.
    pub(crate) dispatch: tokio::sync::Mutex<()>,
    /// Session record writes, applied in order by one task (a socket's later write
    /// must never be overtaken by an earlier one).
    writes: tokio::sync::mpsc::Sender<SessionWrite>,
    pending: Mutex<Option<tokio::sync::mpsc::Receiver<SessionWrite>>>,
}

/// One write of a session record.
#[derive(Debug)]
pub(crate) struct SessionWrite {
    pub(crate) pid: String,
    /// `None`: remove it.
    pub(crate) record: Option<Bytes>,
    /// Only over this socket's own record.
    pub(crate) owner: Option<Sid>,
}

/// Session writes waiting at most; past it they are dropped (Redis is not keeping up;
/// the periodic refresh rewrites live sessions).
const PENDING_WRITES: usize = 10_000;

/// The private room a recovering socket is in while it is held, so that deliveries can
/// exclude it. `~` is not allowed in room kinds: no client can name it.
pub(crate) fn hold_room(sid: Sid) -> String {
    format!("~recovering:{sid}")
}

/// The marker of a record written by socket `sid` (see [`bus::Bus::register_owned`]):
/// its `sid` field as serialized.
pub(crate) fn owner(sid: Sid) -> String {
    format!("\"sid\":\"{sid}\"")
}

/// A fresh private session id (what Socket.IO calls `pid`).
pub(crate) fn new_pid() -> String {
    use rand::Rng as _;
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

impl Recovery {
    pub(crate) fn new(config: RecoveryConfig) -> Self {
        let (writes, pending) = tokio::sync::mpsc::channel(PENDING_WRITES);
        Self {
            config,
            sessions: Mutex::default(),
            markers: Mutex::default(),
            recovering: AtomicUsize::new(0),
            dispatch: tokio::sync::Mutex::new(()),
            writes,
            pending: Mutex::new(Some(pending)),
        }
    }

    /// Queues a session write; false when the queue is full.
    pub(crate) fn queue(&self, write: SessionWrite) -> bool {
        self.writes.try_send(write).is_ok()
    }

    /// The queue's receiving end, for the one task that applies the writes.
    pub(crate) fn take_queue(&self) -> Option<tokio::sync::mpsc::Receiver<SessionWrite>> {
        lock(&self.pending).take()
    }

    /// Whether `ns` recovers.
    pub(crate) fn enabled(&self, ns: &str) -> bool {
        self.config.namespaces.iter().any(|n| n == ns)
    }

    /// The recovery window.
    pub(crate) fn window(&self) -> Duration {
        self.config.window
    }

    /// Remembers the session of a live local socket; returns the record's bytes.
    pub(crate) fn track(&self, sid: Sid, pid: &str, record: SessionRecord) -> Option<Bytes> {
        let bytes = serde_json::to_vec(&record).ok().map(Bytes::from);
        lock(&self.sessions).insert(sid, (pid.to_owned(), record));
        bytes
    }

    /// The pid and record of a live local socket, with its rooms replaced by `rooms`.
    pub(crate) fn update_rooms(&self, sid: Sid, rooms: Vec<String>) -> Option<(String, Bytes)> {
        let mut sessions = lock(&self.sessions);
        let (pid, record) = sessions.get_mut(&sid)?;
        record.rooms = rooms;
        let bytes = serde_json::to_vec(record).ok()?;
        Some((pid.clone(), Bytes::from(bytes)))
    }

    /// Forgets a socket that disconnected; returns its pid and record.
    pub(crate) fn untrack(&self, sid: Sid) -> Option<(String, Bytes)> {
        self.unhold(sid);
        let (pid, record) = lock(&self.sessions).remove(&sid)?;
        let bytes = serde_json::to_vec(&record).ok()?;
        Some((pid, Bytes::from(bytes)))
    }

    /// Every live session (socket, pid, record bytes), to refresh their expiry.
    pub(crate) fn all(&self) -> Vec<(Sid, String, Bytes)> {
        lock(&self.sessions)
            .iter()
            .filter_map(|(sid, (pid, record))| {
                Some((
                    *sid,
                    pid.clone(),
                    Bytes::from(serde_json::to_vec(record).ok()?),
                ))
            })
            .collect()
    }

    /// Holds `sid`: no live recorded message reaches it until [`Recovery::replayed`].
    pub(crate) fn hold(&self, sid: Sid) {
        let mut markers = lock(&self.markers);
        markers.insert(sid, Marker::Hold);
        self.recovering.store(markers.len(), Ordering::Relaxed);
    }

    /// The replay of `sid` reached `offset`.
    pub(crate) fn replayed(&self, sid: Sid, offset: String) {
        if let Some(marker) = lock(&self.markers).get_mut(&sid) {
            *marker = Marker::Upto(offset);
        }
    }

    fn unhold(&self, sid: Sid) {
        let mut markers = lock(&self.markers);
        markers.remove(&sid);
        self.recovering.store(markers.len(), Ordering::Relaxed);
    }

    /// For a live recorded message at `offset`: the hold rooms of the sockets it must
    /// skip. Sockets whose replay ended before `offset` are released (returned in the
    /// second list: they leave their hold room).
    pub(crate) fn skip(&self, offset: &str) -> (Vec<String>, Vec<Sid>) {
        if self.recovering.load(Ordering::Relaxed) == 0 {
            return (Vec::new(), Vec::new());
        }
        let mut markers = lock(&self.markers);
        let mut skip = Vec::new();
        let mut released = Vec::new();
        for (sid, marker) in markers.iter() {
            match marker {
                Marker::Hold => skip.push(hold_room(*sid)),
                Marker::Upto(upto) if bus::offset_cmp(offset, upto).is_le() => {
                    skip.push(hold_room(*sid));
                }
                Marker::Upto(_) => released.push(*sid),
            }
        }
        for sid in &released {
            markers.remove(sid);
        }
        self.recovering.store(markers.len(), Ordering::Relaxed);
        (skip, released)
    }

    /// Entries per history page.
    pub(crate) fn page(&self) -> usize {
        PAGE
    }

    /// How many history entries one replay may read at most.
    pub(crate) fn max_replay(&self) -> usize {
        self.config.max_len
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `pid` and `offset` a reconnecting client sends in its auth payload (the official
/// client merges them into `auth`); `None` unless both are well-formed.
pub(crate) fn requested(auth: Option<&serde_json::Value>) -> Option<(String, String)> {
    let auth = auth?;
    let pid = auth.get("pid")?.as_str()?;
    let offset = auth.get("offset")?.as_str()?;
    let pid_ok = !pid.is_empty() && pid.len() <= 64 && pid.bytes().all(|b| b.is_ascii_hexdigit());
    (pid_ok && bus::is_offset(offset)).then(|| (pid.to_owned(), offset.to_owned()))
}

// What the cluster does with sessions: take, replay, adopt, save (the state above is
// all this module's; `Cluster` holds it in its `recovery` field).
#[allow(
    clippy::wildcard_imports,
    reason = "the cluster's own imports, for its methods"
)]
mod behaviour {
    use super::super::*;
    use super::ReplayError;

    impl Cluster {
        /// Takes the recoverable session `pid` of a client of `user`/`tenant` reconnecting to
        /// `ns` after `offset`: the record, if it exists, belongs to them, and the history
        /// still holds `offset` (nothing was trimmed away since). Someone else's session is
        /// left to its owner. The caller hands the session to its new socket
        /// ([`Cluster::adopt_session`]) before answering.
        pub(crate) async fn take_session(
            &self,
            ns: &str,
            pid: &str,
            offset: &str,
            user: &str,
            tenant: Option<&str>,
        ) -> Option<recovery::SessionRecord> {
            let key = self.channels().session(pid);
            let bytes = match self.bus().take(&key, self.recovery.window()).await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a recovery session; starting a new one");
                    return None;
                }
            };
            let record: recovery::SessionRecord = serde_json::from_slice(&bytes).ok()?;
            if record.ns != ns || record.user != user || record.tenant.as_deref() != tenant {
                tracing::info!(%ns, %user, "a recovery session of another user or namespace was presented; starting a new one");
                // Not theirs: it stays its owner's.
                if let Err(e) = self
                    .bus()
                    .register(&key, bytes, self.recovery.window())
                    .await
                {
                    tracing::debug!(error = %e, "could not put a recovery session back");
                }
                return None;
            }
            let history = self.channels().history(ns);
            match self.bus().history(&history, offset, 1).await {
                Ok(page) if page.first().is_some_and(|(id, _)| id == offset) => Some(record),
                Ok(_) => {
                    tracing::info!(%ns, %offset, "the offset is no longer in the history; starting a new session");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the history; starting a new session");
                    None
                }
            }
        }

        /// Replays to `socket` what its namespace's history holds after `offset` for the
        /// scoped `rooms` it is in (and the replies addressed to its previous id), in order,
        /// each with its offset; then releases it to live delivery from where the replay
        /// ended. Runs at the dispatcher's hand-over point. Returns how many events it sent.
        pub(crate) async fn replay(
            &self,
            socket: &SocketRef<BusAdapter>,
            offset: &str,
            old_sid: &str,
            rooms: &std::collections::HashSet<String>,
        ) -> Result<usize, ReplayError> {
            let stream = self.channels().history(socket.ns());
            let page_size = self.recovery.page();
            let _turn = self.recovery.dispatch.lock().await;
            let mut from = offset.to_owned();
            let (mut sent, mut read) = (0, 0);
            loop {
                let page = self
                    .bus()
                    .history(&stream, &from, page_size + 1)
                    .await
                    .map_err(|e| ReplayError::Failed(e.to_string()))?;
                let full = page.len() > page_size;
                for (id, bytes) in page {
                    // The range starts at `from` itself, already handled.
                    if bus::offset_cmp(&id, &from).is_le() {
                        continue;
                    }
                    read += 1;
                    if let Ok(env) = Envelope::decode(&bytes, self.limits)
                        && reaches(&env, rooms, old_sid)
                    {
                        let args = Args {
                            args: env.arguments(),
                            attachments: &env.attachments,
                            offset: Some(&id),
                        };
                        socket
                            .emit(&*env.event, &args)
                            .map_err(|_| ReplayError::Gone)?;
                        sent += 1;
                    }
                    from = id;
                }
                if !full {
                    break;
                }
                if read > self.recovery.max_replay() {
                    return Err(ReplayError::Failed(format!(
                        "more than {read} messages to replay"
                    )));
                }
            }
            tracing::debug!(sid = %socket.id, %offset, upto = %from, sent, "replayed");
            self.recovery.replayed(socket.id, from);
            self.metrics.delivered_replay(sent as u64);
            Ok(sent)
        }

        /// Makes the socket that recovers `record` its owner at once (same pid, its own id),
        /// before the client hears back: if this node dies during the replay, the client
        /// recovers again elsewhere, and writes from the session's previous socket no longer
        /// land.
        pub(crate) async fn adopt_session(
            &self,
            pid: &str,
            record: &recovery::SessionRecord,
            sid: socketioxide::socket::Sid,
        ) {
            let adopted = recovery::SessionRecord {
                sid: sid.to_string(),
                ..record.clone()
            };
            let Ok(bytes) = serde_json::to_vec(&adopted) else {
                return;
            };
            let key = self.channels().session(pid);
            if let Err(e) = self
                .bus()
                .register(&key, Bytes::from(bytes), self.recovery.window())
                .await
            {
                tracing::warn!(error = %e, "could not keep a recovered session");
            }
        }

        /// Keeps the session of `socket` (a recovery namespace) as it is now: its rooms.
        pub(crate) fn session_changed(&self, socket: &SocketRef<BusAdapter>) {
            if !self.recovery.enabled(socket.ns()) {
                return;
            }
            let rooms = socket
                .rooms()
                .into_iter()
                .filter(|r| !r.starts_with('~'))
                .filter_map(|r| {
                    rooms::ScopedRoom::parse(&r)
                        .ok()
                        .map(|s| s.room().to_owned())
                })
                .collect();
            if let Some((pid, bytes)) = self.recovery.update_rooms(socket.id, rooms) {
                self.save_session(pid, Some(bytes), Some(socket.id));
            }
        }

        /// Writes (for one window) or removes a session record, in the background, after
        /// every write queued before. With `owner`, only over that socket's own record (never
        /// over a tombstone left by a recovery elsewhere, or over the record of the socket
        /// that recovered it).
        pub(crate) fn save_session(
            &self,
            pid: String,
            record: Option<Bytes>,
            owner: Option<socketioxide::socket::Sid>,
        ) {
            let queued = self
                .recovery
                .queue(recovery::SessionWrite { pid, record, owner });
            if !queued {
                tracing::debug!("recovery session writes are backing up; one dropped");
            }
        }

        pub(in crate::cluster) async fn write_session(&self, write: recovery::SessionWrite) {
            let key = self.channels().session(&write.pid);
            let window = self.recovery.window();
            let bus = self.bus();
            let result = match (write.record, write.owner) {
                (Some(bytes), None) => bus.register(&key, bytes, window).await,
                (Some(bytes), Some(sid)) => bus
                    .register_owned(&key, bytes, window, &recovery::owner(sid))
                    .await
                    .map(drop),
                (None, _) => bus.unregister(&key).await,
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "could not store a recovery session");
            }
        }

        /// Applies session writes in order, and refreshes every live session's record each
        /// third of the window, so that the sessions of a node that dies stay recoverable
        /// for a window.
        pub(crate) async fn sessions(self: Arc<Self>) {
            let Some(mut writes) = self.recovery.take_queue() else {
                return;
            };
            let period = (self.recovery.window() / 3).max(Duration::from_secs(1));
            let mut refresh =
                tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tokio::select! {
                    write = writes.recv() => match write {
                        Some(write) => self.write_session(write).await,
                        None => return,
                    },
                    _ = refresh.tick() => {
                        for (sid, pid, record) in self.recovery.all() {
                            let write = recovery::SessionWrite {
                                pid,
                                record: Some(record),
                                owner: Some(sid),
                            };
                            self.write_session(write).await;
                        }
                    }
                }
            }
        }

        /// Holds a recovering socket: live recorded messages skip it until its replay is
        /// done (it is in its node-local hold room, which deliveries exclude).
        pub(crate) fn hold(&self, socket: &SocketRef<BusAdapter>) {
            self.recovery.hold(socket.id);
            #[allow(
                clippy::disallowed_methods,
                reason = "the hold room is node-local: no membership, no bus channel"
            )]
            socket.join(recovery::hold_room(socket.id));
        }
    }
}

/// Why a replay stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplayError {
    /// The client's connection closed meanwhile: it will come back and try again.
    Gone,
    /// The history could not be read, or holds more than one replay may send.
    Failed(String),
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gone => f.write_str("the connection closed during the replay"),
            Self::Failed(e) => f.write_str(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_well_formed_pids_and_offsets_are_requests() {
        let ok = json!({"token": "t", "pid": "ab12", "offset": "1700000000000-0"});
        assert_eq!(
            requested(Some(&ok)),
            Some(("ab12".into(), "1700000000000-0".into()))
        );
        for bad in [
            json!({"pid": "ab12"}),
            json!({"pid": "ab12", "offset": "yesterday"}),
            json!({"pid": "../etc", "offset": "1-0"}),
            json!({"pid": "", "offset": "1-0"}),
            json!({"pid": 7, "offset": "1-0"}),
        ] {
            assert_eq!(requested(Some(&bad)), None, "{bad}");
        }
    }

    #[test]
    fn held_sockets_skip_everything_then_only_what_was_replayed() {
        let recovery = Recovery::new(RecoveryConfig::default());
        let sid = Sid::new();
        let room = hold_room(sid);
        assert_eq!(recovery.skip("5-0"), (vec![], vec![]));
        recovery.hold(sid);
        assert_eq!(recovery.skip("5-0").0, vec![room.clone()]);
        recovery.replayed(sid, "7-0".into());
        assert_eq!(recovery.skip("6-3").0, vec![room.clone()]);
        assert_eq!(recovery.skip("7-0").0, vec![room]);
        assert_eq!(recovery.skip("7-1"), (vec![], vec![sid]));
        assert_eq!(recovery.skip("8-0"), (vec![], vec![]));
    }
}
