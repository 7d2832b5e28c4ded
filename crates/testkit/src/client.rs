//! A raw Engine.IO v4 / Socket.IO v5 client over WebSocket.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// An event received by the client: name and arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event name.
    pub name: String,
    /// Arguments.
    pub args: Vec<Value>,
    /// The ack id, when the server asked for an acknowledgement.
    pub ack: Option<u64>,
}

/// Why a connection was not established.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the namespace connect with a `CONNECT_ERROR`; the message.
    Refused(String),
    /// Anything else.
    Other(anyhow::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(m) => write!(f, "connect refused: {m}"),
            Self::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// One Socket.IO connection to one namespace.
#[derive(Debug)]
pub struct SioClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    ns: String,
    /// The Socket.IO session id.
    pub sid: String,
    /// The private session id of connection state recovery, when the server sent one.
    pub pid: Option<String>,
    events: VecDeque<Event>,
    acks: VecDeque<(u64, Vec<Value>)>,
    next_ack: u64,
}

/// How long any single expectation waits before failing.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

enum Frame {
    Event(Event),
    Ack(u64, Vec<Value>),
    Disconnect,
    Other,
}

impl SioClient {
    /// Connects to `base` (`http://host:port`) on the default path, namespace `ns`, with
    /// the handshake `auth` payload.
    pub async fn connect(base: &str, ns: &str, auth: Option<Value>) -> Result<Self, ConnectError> {
        Self::connect_with(base, "/socket.io/", "", ns, auth).await
    }

    /// Connects with a custom path and extra query string (e.g. `token=...`).
    pub async fn connect_with(
        base: &str,
        path: &str,
        query: &str,
        ns: &str,
        auth: Option<Value>,
    ) -> Result<Self, ConnectError> {
        let ws_base = base.replacen("http", "ws", 1);
        let sep = if query.is_empty() { "" } else { "&" };
        let url = format!("{ws_base}{path}?EIO=4&transport=websocket{sep}{query}");
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| ConnectError::Other(anyhow!(e).context(format!("websocket to {url}"))))?;
        let mut client = Self {
            ws,
            ns: ns.to_owned(),
            sid: String::new(),
            pid: None,
            events: VecDeque::new(),
            acks: VecDeque::new(),
            next_ack: 1,
        };
        let deadline = Instant::now() + DEFAULT_WAIT;
        let open = client
            .read_text(deadline)
            .await
            .map_err(ConnectError::Other)?;
        if !open.starts_with('0') {
            return Err(ConnectError::Other(anyhow!(
                "expected an Engine.IO open packet, got {open:?}"
            )));
        }
        let payload = auth.map(|a| a.to_string()).unwrap_or_default();
        client
            .send_text(format!("40{}{payload}", client.ns_prefix()))
            .await
            .map_err(ConnectError::Other)?;
        loop {
            let text = client
                .read_text(deadline)
                .await
                .map_err(ConnectError::Other)?;
            match client.split_packet(&text) {
                Some((b'0', body)) => {
                    let v: Value =
                        serde_json::from_str(body).map_err(|e| ConnectError::Other(e.into()))?;
                    client.sid = v["sid"].as_str().unwrap_or_default().to_owned();
                    client.pid = v["pid"].as_str().map(str::to_owned);
                    return Ok(client);
                }
                Some((b'4', body)) => {
                    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                    let msg = v["message"]
                        .as_str()
                        .map_or_else(|| body.to_owned(), str::to_owned);
                    return Err(ConnectError::Refused(msg));
                }
                _ => continue,
            }
        }
    }

    fn ns_prefix(&self) -> String {
        if self.ns == "/" {
            String::new()
        } else {
            format!("{},", self.ns)
        }
    }

    /// Splits a Socket.IO frame into its packet type and the body after the namespace.
    fn split_packet<'a>(&self, text: &'a str) -> Option<(u8, &'a str)> {
        let rest = text.strip_prefix('4')?;
        let ty = *rest.as_bytes().first()?;
        let body = rest.get(1..)?;
        let body = if self.ns == "/" {
            body
        } else {
            body.strip_prefix(self.ns.as_str())
                .and_then(|b| b.strip_prefix(','))
                .unwrap_or(body)
        };
        Some((ty, body))
    }

    async fn send_text(&mut self, text: String) -> anyhow::Result<()> {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .context("websocket send")
    }

    async fn read_text(&mut self, deadline: Instant) -> anyhow::Result<String> {
        loop {
            let msg = timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("timed out waiting for the server"))?
                .ok_or_else(|| anyhow!("connection closed"))??;
            match msg {
                Message::Text(t) => {
                    let t = t.to_string();
                    if t == "2" {
                        self.send_text("3".into()).await?;
                        continue;
                    }
                    return Ok(t);
                }
                Message::Close(_) => bail!("connection closed"),
                _ => continue,
            }
        }
    }

    fn parse(&self, text: &str) -> Frame {
        let Some((ty, body)) = self.split_packet(text) else {
            return Frame::Other;
        };
        let digits = body.bytes().take_while(u8::is_ascii_digit).count();
        let (id, json) = body.split_at(digits);
        let values: Vec<Value> = serde_json::from_str(json).unwrap_or_default();
        match ty {
            b'2' => {
                let mut values = values.into_iter();
                let name = values
                    .next()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                Frame::Event(Event {
                    name,
                    args: values.collect(),
                    ack: id.parse().ok(),
                })
            }
            b'3' => Frame::Ack(id.parse().unwrap_or(0), values),
            b'1' => Frame::Disconnect,
            _ => Frame::Other,
        }
    }

    async fn pump(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let text = self.read_text(deadline).await?;
        match self.parse(&text) {
            Frame::Event(e) => self.events.push_back(e),
            Frame::Ack(id, v) => self.acks.push_back((id, v)),
            Frame::Disconnect => bail!("disconnected by the server"),
            Frame::Other => {}
        }
        Ok(())
    }

    fn frame(&self, ack: Option<u64>, event: &str, args: &[Value]) -> String {
        let mut items = vec![Value::String(event.to_owned())];
        items.extend_from_slice(args);
        let id = ack.map(|i| i.to_string()).unwrap_or_default();
        format!("42{}{id}{}", self.ns_prefix(), Value::Array(items))
    }

    /// Emits `event` with `args`.
    pub async fn emit(&mut self, event: &str, args: &[Value]) -> anyhow::Result<()> {
        let frame = self.frame(None, event, args);
        self.send_text(frame).await
    }

    /// Emits `event` and waits for its acknowledgement.
    pub async fn emit_with_ack(
        &mut self,
        event: &str,
        args: &[Value],
    ) -> anyhow::Result<Vec<Value>> {
        let id = self.next_ack;
        self.next_ack += 1;
        let frame = self.frame(Some(id), event, args);
        self.send_text(frame).await?;
        self.wait_ack(id)
            .await
            .with_context(|| format!("waiting for the ack of {event}"))
    }

    /// Sends every `(event, args)` in one write (the frames reach the server back to
    /// back, as a fast client's would), each asking for an ack; returns the ack ids.
    pub async fn emit_batch(&mut self, events: &[(&str, Vec<Value>)]) -> anyhow::Result<Vec<u64>> {
        let mut ids = Vec::with_capacity(events.len());
        for (event, args) in events {
            let id = self.next_ack;
            self.next_ack += 1;
            ids.push(id);
            let frame = self.frame(Some(id), event, args);
            self.ws
                .feed(Message::Text(frame.into()))
                .await
                .context("websocket send")?;
        }
        self.ws.flush().await.context("websocket flush")?;
        Ok(ids)
    }

    /// Waits for the acknowledgement `id` of an earlier emit.
    pub async fn wait_ack(&mut self, id: u64) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + DEFAULT_WAIT;
        loop {
            if let Some(pos) = self.acks.iter().position(|(i, _)| *i == id) {
                return Ok(self.acks.remove(pos).map(|(_, v)| v).unwrap_or_default());
            }
            self.pump(deadline).await?;
        }
    }

    /// Drops the connection without a goodbye, as a crashed client or a lost network
    /// would.
    pub fn abort(self) {
        drop(self);
    }

    /// Answers the server's acknowledgement request `id` with `args`.
    pub async fn ack(&mut self, id: u64, args: &[Value]) -> anyhow::Result<()> {
        let frame = format!("43{}{id}{}", self.ns_prefix(), Value::Array(args.to_vec()));
        self.send_text(frame).await
    }

    /// Waits for the server to close this socket (a Socket.IO disconnect packet or the
    /// connection closing).
    pub async fn expect_disconnect(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + DEFAULT_WAIT;
        loop {
            match self.read_text(deadline).await {
                Ok(text) => {
                    if let Frame::Disconnect = self.parse(&text) {
                        return Ok(());
                    }
                }
                // Anything but our own deadline means the connection is gone: a close
                // frame, a reset (the node was killed) or end of stream.
                Err(e) if !e.to_string().contains("timed out") => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// `join` with an ack; returns the ack object.
    pub async fn join(&mut self, room: &str) -> anyhow::Result<Value> {
        let mut ack = self
            .emit_with_ack("join", &[Value::String(room.to_owned())])
            .await?;
        Ok(if ack.is_empty() {
            Value::Null
        } else {
            ack.remove(0)
        })
    }

    /// `leave` with an ack; returns the ack object.
    pub async fn leave(&mut self, room: &str) -> anyhow::Result<Value> {
        let mut ack = self
            .emit_with_ack("leave", &[Value::String(room.to_owned())])
            .await?;
        Ok(if ack.is_empty() {
            Value::Null
        } else {
            ack.remove(0)
        })
    }

    /// Waits up to [`DEFAULT_WAIT`] for the next event named `name`, returning it and
    /// every other event received before it (in order).
    pub async fn expect(&mut self, name: &str) -> anyhow::Result<(Event, Vec<Event>)> {
        let deadline = Instant::now() + DEFAULT_WAIT;
        loop {
            if let Some(pos) = self.events.iter().position(|e| e.name == name) {
                let before: Vec<Event> = self.events.drain(..pos).collect();
                let found = self
                    .events
                    .pop_front()
                    .ok_or_else(|| anyhow!("event vanished"))?;
                return Ok((found, before));
            }
            self.pump(deadline)
                .await
                .with_context(|| format!("waiting for event {name:?}"))?;
        }
    }

    /// Waits for `name` and returns its first argument.
    pub async fn expect_arg(&mut self, name: &str) -> anyhow::Result<Value> {
        let (e, _) = self.expect(name).await?;
        Ok(e.args.into_iter().next().unwrap_or(Value::Null))
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
