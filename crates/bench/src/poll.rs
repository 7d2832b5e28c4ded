//! Long-polling subscribers: Engine.IO v4 over HTTP, one request in flight per client, as
//! the official clients poll before (or instead of) upgrading — here through a balancer.
//!
//! A client keeps the balancer's affinity cookie when it is given one (the sticky site),
//! so that the sticky and the round-robin sites are measured with the same clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use reqwest::header::{COOKIE, SET_COOKIE};

use crate::recorder::Recorder;

/// Engine.IO's packet separator in a polling payload.
const SEPARATOR: char = '\u{1e}';

/// Requests made by every polling client so far.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Requests made by every polling client so far (handshakes, polls, posts).
pub(crate) fn requests() -> u64 {
    REQUESTS.load(Ordering::Relaxed)
}

/// One polling session.
#[derive(Clone)]
struct Session {
    http: reqwest::Client,
    url: String,
    cookie: Option<String>,
}

impl Session {
    async fn request(&self, body: Option<&'static str>) -> anyhow::Result<String> {
        self.request_owned(body.map(str::to_owned)).await
    }

    async fn request_owned(&self, body: Option<String>) -> anyhow::Result<String> {
        let mut req = match body {
            Some(b) => self.http.post(&self.url).body(b),
            None => self.http.get(&self.url),
        };
        if let Some(c) = &self.cookie {
            req = req.header(COOKIE, c);
        }
        REQUESTS.fetch_add(1, Ordering::Relaxed);
        let res = req.send().await?;
        let status = res.status();
        let text = res.text().await?;
        if !status.is_success() {
            bail!("{status}: {text}");
        }
        Ok(text)
    }
}

/// Subscribers that can be closed: their tasks and sessions.
pub(crate) struct Subscribers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    sessions: Vec<Session>,
}

impl Subscribers {
    /// Stops polling and closes every session (an Engine.IO close packet), so that the
    /// server does not keep buffering for clients that are gone.
    pub(crate) async fn close(self) {
        for t in self.tasks {
            t.abort();
        }
        let mut closing: FuturesUnordered<_> =
            self.sessions.iter().map(|s| s.request(Some("1"))).collect();
        while closing.next().await.is_some() {}
    }
}

/// Connects `count` polling clients to `base` (a balancer's URL), each joining `room`,
/// and records every `msg` they receive.
pub(crate) async fn subscribe_many(
    base: &str,
    count: usize,
    room: &str,
    recorder: &Arc<Recorder>,
) -> anyhow::Result<Subscribers> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()?;
    let mut out = Subscribers {
        tasks: Vec::with_capacity(count),
        sessions: Vec::with_capacity(count),
    };
    let mut pending = FuturesUnordered::new();
    for _ in 0..count {
        pending.push(connect(http.clone(), base, room));
        if pending.len() >= 64
            && let Some(s) = pending.next().await
        {
            out.start(s?, recorder);
        }
    }
    while let Some(s) = pending.next().await {
        out.start(s?, recorder);
    }
    Ok(out)
}

impl Subscribers {
    fn start(&mut self, session: Session, recorder: &Arc<Recorder>) {
        self.tasks
            .push(tokio::spawn(poll(session.clone(), recorder.clone())));
        self.sessions.push(session);
    }
}

/// The handshake, the namespace connection with `{"room": room}`, and its answer.
async fn connect(http: reqwest::Client, base: &str, room: &str) -> anyhow::Result<Session> {
    let res = http
        .get(format!("{base}/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .context("polling handshake")?;
    let cookie = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
        .next();
    let open = res.text().await?;
    let sid = open
        .strip_prefix('0')
        .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .and_then(|v| v["sid"].as_str().map(str::to_owned))
        .ok_or_else(|| anyhow!("expected an Engine.IO open packet, got {open:?}"))?;
    let session = Session {
        http,
        url: format!("{base}/socket.io/?EIO=4&transport=polling&sid={sid}"),
        cookie,
    };
    let auth = serde_json::json!({ "room": room });
    session.request_owned(Some(format!("40{auth}"))).await?;
    loop {
        let payload = session.request(None).await?;
        for packet in payload.split(SEPARATOR) {
            if packet.starts_with("40") {
                return Ok(session);
            }
            if packet.starts_with("44") {
                bail!("connect refused: {packet}");
            }
            if packet == "2" {
                session.request(Some("3")).await?;
            }
        }
    }
}

/// Polls until the session ends: records `msg` events, answers pings.
async fn poll(session: Session, recorder: Arc<Recorder>) {
    while let Ok(payload) = session.request(None).await {
        for packet in payload.split(SEPARATOR) {
            if let Some(body) = packet.strip_prefix("42[\"msg\",") {
                recorder.record_frame(body);
            } else if packet == "2" {
                if session.request(Some("3")).await.is_err() {
                    return;
                }
            } else if packet == "1" || packet.starts_with("41") {
                return;
            }
        }
    }
}
