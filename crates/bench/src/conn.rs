//! The load generator's connections: raw Engine.IO v4 / Socket.IO v5 frames over a
//! WebSocket, one small task per socket, so the generator stays cheap per connection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::recorder::Recorder;

type Ws = WebSocketStream<TcpStream>;

/// An open, namespace-connected socket.
pub(crate) struct Conn {
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
}

/// Connects to `port` on 127.0.0.1 from `source` (to go past one address's ports) and
/// joins the namespace with `{"room": room}` as the auth payload.
pub(crate) async fn connect(
    port: u16,
    room: &str,
    source: Option<Ipv4Addr>,
) -> anyhow::Result<Conn> {
    connect_with(port, &serde_json::json!({ "room": room }), source).await
}

/// Connects to `port` on 127.0.0.1 from `source` and joins the namespace with `auth` as
/// the handshake's auth payload (a room for the contract, a token for the gateway).
pub(crate) async fn connect_with(
    port: u16,
    auth: &serde_json::Value,
    source: Option<Ipv4Addr>,
) -> anyhow::Result<Conn> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    }
    let tcp = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(url, tcp),
    )
    .await
    .map_err(|_| anyhow!("websocket handshake timed out"))??;
    let (mut sink, mut stream) = ws.split();
    let open = next_text(&mut stream).await?;
    if !open.starts_with('0') {
        bail!("expected an Engine.IO open packet, got {open:?}");
    }
    sink.send(Message::Text(format!("40{auth}").into())).await?;
    loop {
        let text = next_text(&mut stream).await?;
        // Upstream engineioxide pings right after the open packet, before the namespace
        // answers: an unanswered ping closes the connection after the ping timeout.
        if text == "2" {
            sink.send(Message::Text("3".into())).await?;
            continue;
        }
        if text.starts_with("40") {
            return Ok(Conn { sink, stream });
        }
        if text.starts_with("44") {
            bail!("connect refused: {text}");
        }
    }
}

async fn next_text(stream: &mut SplitStream<Ws>) -> anyhow::Result<String> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .map_err(|_| anyhow!("timed out waiting for the server"))?
            .ok_or_else(|| anyhow!("connection closed"))??;
        if let Message::Text(t) = msg {
            return Ok(t.to_string());
        }
    }
}

impl Conn {
    /// Reads until the connection ends, answering pings and recording every `msg` event.
    pub(crate) fn spawn_subscriber(self, recorder: Arc<Recorder>) -> tokio::task::JoinHandle<()> {
        let Conn {
            mut sink,
            mut stream,
        } = self;
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let text = text.as_str();
                if text == "2" {
                    if sink.send(Message::Text("3".into())).await.is_err() {
                        break;
                    }
                } else if let Some(body) = text.strip_prefix("42[\"msg\",") {
                    recorder.record_frame(body);
                } else if text.starts_with("41") {
                    break;
                }
            }
        })
    }

    /// Splits into a sender of `event` (the contract's `publish`, or another) and a task
    /// that answers pings.
    pub(crate) fn into_publisher_of(self, event: &'static str) -> Publisher {
        let Conn { sink, mut stream } = self;
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let pong = sink.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(t) = msg
                    && t.as_str() == "2"
                {
                    let _ = pong.lock().await.send(Message::Text("3".into())).await;
                }
            }
        });
        Publisher { sink, event }
    }
}

/// A socket that emits `publish {room, data}`.
#[derive(Clone)]
pub(crate) struct Publisher {
    sink: Arc<tokio::sync::Mutex<SplitSink<Ws, Message>>>,
    event: &'static str,
}

impl Publisher {
    /// Emits `publish` for `room` with a 100-byte payload carrying the send time.
    pub(crate) async fn publish(&self, room: &str, point: u64, seq: u64) -> anyhow::Result<()> {
        let frame = format!(
            "42[\"{}\",{{\"room\":\"{room}\",\"data\":{{\"t\":{},\"p\":{point},\"s\":{seq},\"pad\":\"{PAD}\"}}}}]",
            self.event,
            crate::recorder::now_us()
        );
        self.sink
            .lock()
            .await
            .send(Message::Text(frame.into()))
            .await
            .context("publish")
    }
}

/// Pads the payload to about 100 bytes, the size the targets are stated for.
const PAD: &str = "roomcast-benchmark-payload-padding-0123456789abcdef";
