//! Roomcast patch: the direct WebSocket transport.
//!
//! Upstream's WebSocket transport reaches each socket's writer through a channel: every
//! packet sent to a socket is pushed into its queue, wakes its writer task, which takes a
//! lock, frames the packet and writes it. A broadcast to N sockets therefore costs N
//! channel pushes, N task wake-ups and N framings on top of the N `send()` calls, and
//! each idle socket keeps three tasks (reader, writer, heartbeat) and two channels.
//!
//! Here, for a WebSocket served straight over a [`TcpStream`] (no TLS in the process),
//! the sender writes the frame itself, with a non-blocking `try_write`, from whatever
//! thread sends (for a broadcast: the broadcast loop). Only when the kernel's send
//! buffer is full does the rest wait in the socket's [`WsWriter`] outbox — bounded in
//! bytes by the socket's [`OutboundBudget`] — for the socket's one task to write it when
//! the stream is writable again. That task also reads the client's frames and runs the
//! heartbeat; there is one task and one queue per socket.
//!
//! A text message's frame is the same bytes for every socket, so it is built once per
//! broadcast: [`text_frame`] remembers the last message it framed on each thread (the
//! broadcast loop sends the same shared [`Str`] to every socket of the room).
//!
//! Frames read from the client follow RFC 6455 for a server without extensions: masked,
//! no reserved bits, control frames short and unfragmented, text valid UTF-8, frames and
//! messages within `ws_max_frame_size` / `ws_max_message_size`.

use std::{
    cell::RefCell,
    collections::VecDeque,
    io,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use engineioxide_core::{Packet, PacketBuf, ProtocolVersion, Str, TransportType};
use tokio::{net::TcpStream, sync::Notify, time::Instant};
use tokio_util::future::FutureExt as _;

use crate::{
    DisconnectReason, Socket, budget::OutboundBudget, engine::EngineIo, errors::Error,
    handler::EngineIoHandler,
};

/// Why a frame could not be handed to a [`WsWriter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The outbox is over the socket's budget: the socket is a slow consumer.
    Full,
    /// The connection is closed.
    Closed,
}

/// The sending side of one direct WebSocket connection (see the module docs).
#[derive(Debug)]
pub(crate) struct WsWriter {
    outbox: Mutex<Outbox>,
    budget: Arc<OutboundBudget>,
    /// At most this many frames wait in the outbox (`EngineIoConfig::max_buffer_size`).
    max_frames: usize,
    /// Wakes the connection's task when frames start waiting.
    wake: Notify,
    /// Set once the connection is closed or a write failed (as `Outbox::stream` is
    /// `None` or `Outbox::failed`), for [`Self::admit`] to read without the lock.
    closed: AtomicBool,
}

#[derive(Debug)]
struct Outbox {
    /// `None` once the connection is closed.
    stream: Option<Arc<TcpStream>>,
    /// Frames the kernel did not take yet, in order.
    frames: VecDeque<Bytes>,
    /// How much of `frames[0]` is already written.
    head: usize,
    /// While set, frames only queue: the session's first frames (the open packet, or
    /// what a polling transport still held before an upgrade) are not written yet.
    held: bool,
    /// A write failed: the peer is gone; the connection's task closes the session.
    failed: bool,
}

/// Writes as much of `buf` as the kernel takes now; the number of bytes written.
fn write_some(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match stream.try_write(&buf[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl WsWriter {
    /// A writer for `stream`, holding its frames until [`Self::release`].
    pub(crate) fn new(
        stream: Arc<TcpStream>,
        budget: Arc<OutboundBudget>,
        max_frames: usize,
    ) -> Self {
        Self {
            outbox: Mutex::new(Outbox {
                stream: Some(stream),
                frames: VecDeque::new(),
                head: 0,
                held: true,
                failed: false,
            }),
            budget,
            max_frames: max_frames.max(1),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Outbox> {
        // A panic while holding the lock leaves a consistent outbox (every step is one
        // push or pop), so a poisoned lock is taken as is.
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a frame of this socket may be accepted now (the budget is not exceeded
    /// and the connection is open); refusing for the budget marks a slow consumer.
    ///
    /// Lock-free: it runs for every socket of every broadcast, right before
    /// [`Self::send`], which checks the outbox's frame count under its lock.
    pub(crate) fn admit(&self) -> Result<(), Refused> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Refused::Closed);
        }
        if !self.budget.admit() {
            return Err(Refused::Full);
        }
        Ok(())
    }

    /// Writes `frames` in order, after anything already waiting; what the kernel does
    /// not take now waits in the outbox.
    pub(crate) fn send(&self, frames: impl IntoIterator<Item = Bytes>) -> Result<(), Refused> {
        let mut guard = self.lock();
        // Field by field: the stream is borrowed (not cloned: this runs per socket per
        // broadcast) while the queue changes.
        let Outbox {
            stream,
            frames: queue,
            head,
            held,
            failed,
        } = &mut *guard;
        let Some(stream) = stream.as_deref() else {
            return Err(Refused::Closed);
        };
        if *failed {
            return Err(Refused::Closed);
        }
        if !queue.is_empty() && (!self.budget.admit() || queue.len() >= self.max_frames) {
            self.budget.overflow();
            return Err(Refused::Full);
        }
        let was_idle = queue.is_empty();
        for frame in frames {
            if queue.is_empty() && !*held {
                match write_some(stream, &frame) {
                    Ok(n) if n == frame.len() => continue,
                    Ok(n) => {
                        *head = n;
                        self.budget.add_len(frame.len() - n);
                        queue.push_back(frame);
                    }
                    Err(_) => {
                        *failed = true;
                        self.closed.store(true, Ordering::Relaxed);
                        self.wake.notify_one();
                        return Err(Refused::Closed);
                    }
                }
            } else {
                self.budget.add_len(frame.len());
                queue.push_back(frame);
            }
        }
        if was_idle && !queue.is_empty() && !*held {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Writes `frames` only if nothing is waiting (a volatile message is dropped rather
    /// than queued); whether it was written.
    pub(crate) fn send_volatile(&self, frames: impl IntoIterator<Item = Bytes>) -> bool {
        {
            let out = self.lock();
            if out.held || !out.frames.is_empty() {
                return false;
            }
        }
        self.send(frames).is_ok()
    }

    /// Puts `first` before everything queued so far and starts writing.
    pub(crate) fn release(&self, first: Vec<Bytes>) {
        let mut out = self.lock();
        for frame in first.into_iter().rev() {
            self.budget.add_len(frame.len());
            out.frames.push_front(frame);
        }
        out.held = false;
        drop(out);
        self.wake.notify_one();
    }

    /// Whether frames wait for the stream to be writable.
    fn pending(&self) -> bool {
        let out = self.lock();
        !out.held && !out.frames.is_empty()
    }

    /// Writes what waits, as far as the kernel takes it.
    fn flush(&self) -> Result<(), Error> {
        let mut guard = self.lock();
        let Outbox {
            stream,
            frames: queue,
            head,
            held,
            failed,
        } = &mut *guard;
        if *failed {
            return Err(Error::Io(io::ErrorKind::BrokenPipe.into()));
        }
        let (Some(stream), false) = (stream.as_deref(), *held) else {
            return Ok(());
        };
        while let Some(front) = queue.front() {
            let rest = &front[*head..];
            let n = write_some(stream, rest).inspect_err(|_| {
                *failed = true;
                self.closed.store(true, Ordering::Relaxed);
            })?;
            self.budget.sub_len(n);
            if n < rest.len() {
                *head += n;
                return Ok(());
            }
            queue.pop_front();
            *head = 0;
        }
        // Give a burst's memory back: an idle socket keeps no outbox.
        if queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
        Ok(())
    }

    /// Closes the writer: later sends are refused, and the stream is let go.
    fn close(&self) {
        let mut out = self.lock();
        out.stream = None;
        self.closed.store(true, Ordering::Relaxed);
        let queued: usize = out.frames.iter().map(Bytes::len).sum::<usize>() - out.head;
        self.budget.sub_len(queued);
        out.frames = VecDeque::new();
    }
}

// ---------------------------------------------------------------------------------------
// Framing (server to client: unmasked)

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A whole (FIN) frame of `opcode` holding `prefix` then `payload`.
fn frame(opcode: u8, prefix: &[u8], payload: &[u8]) -> Bytes {
    let len = prefix.len() + payload.len();
    let mut buf = BytesMut::with_capacity(len + 10);
    buf.put_u8(0x80 | opcode);
    if len < 126 {
        buf.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        buf.put_u8(126);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
    buf.put_slice(prefix);
    buf.put_slice(payload);
    buf.freeze()
}

thread_local! {
    /// The last message framed on this thread and its frame (see the module docs).
    static LAST_TEXT: RefCell<Option<(Str, Bytes)>> = const { RefCell::new(None) };
}

/// The text frame of Engine.IO message `msg` (`"4" + msg`), built once for the same
/// shared message sent to many sockets in a row.
///
/// The cache keeps the message it was built from alive, so a message at the same
/// address and of the same length is that message: `Str` is immutable.
pub(crate) fn text_frame(msg: &Str) -> Bytes {
    LAST_TEXT.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((m, f)) = last.as_ref()
            && m.as_bytes().as_ptr() == msg.as_bytes().as_ptr()
            && m.len() == msg.len()
        {
            return f.clone();
        }
        let f = frame(OP_TEXT, b"4", msg.as_bytes());
        *last = Some((msg.clone(), f.clone()));
        f
    })
}

/// The frames of `packets` for a socket speaking `protocol`.
pub(crate) fn frames(protocol: ProtocolVersion, packets: &PacketBuf) -> SmallFrames {
    // The broadcast case: one message.
    if let [Packet::Message(msg)] = packets.as_slice() {
        return smallvec::smallvec![text_frame(msg)];
    }
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Message(msg) => Some(text_frame(msg)),
            Packet::Binary(bin) | Packet::BinaryV3(bin) => {
                Some(if protocol == ProtocolVersion::V3 {
                    frame(OP_BINARY, &[0x04], bin)
                } else {
                    frame(OP_BINARY, &[], bin)
                })
            }
            // A Noop only ends a pending polling request; there is none on a WebSocket.
            Packet::Noop => None,
            p => Some(frame(OP_TEXT, String::from(p.clone()).as_bytes(), &[])),
        })
        .collect()
}

/// The frames of one send: usually one.
pub(crate) type SmallFrames = smallvec::SmallVec<[Bytes; 2]>;

// ---------------------------------------------------------------------------------------
// Reading (client to server: masked)

/// A frame or message from the client broke RFC 6455 or a size limit.
fn protocol_error(what: &'static str) -> Error {
    Error::WsProtocol(what)
}

/// What the reader made of the bytes received so far.
#[derive(Debug, Default)]
struct Reader {
    buf: BytesMut,
    /// A fragmented message being put together: its opcode and data so far.
    partial: Option<(u8, BytesMut)>,
}

/// One whole message or control frame from the client.
#[derive(Debug, PartialEq)]
enum Incoming {
    Text(Str),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    Close(Bytes),
}

impl Reader {
    /// Takes the next whole message or control frame out of the buffer, if there is one.
    fn next(&mut self, max_frame: usize, max_message: usize) -> Result<Option<Incoming>, Error> {
        loop {
            let b = &self.buf[..];
            if b.len() < 2 {
                return Ok(None);
            }
            let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0F);
            let (masked, len7) = (b[1] & 0x80 != 0, (b[1] & 0x7F) as usize);
            if rsv != 0 {
                return Err(protocol_error("reserved bits set"));
            }
            if !masked {
                return Err(protocol_error("unmasked client frame"));
            }
            let (len, at) = match len7 {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
                127 if b.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(n), 10)
                }
                126 | 127 => return Ok(None),
                n => (n as u64, 2),
            };
            let is_control = opcode & 0x8 != 0;
            if is_control && (!fin || len > 125) {
                return Err(protocol_error("fragmented or long control frame"));
            }
            if len > max_frame as u64 {
                return Err(protocol_error("frame over the size limit"));
            }
            let len = len as usize;
            if b.len() < at + 4 + len {
                // Room for more of this frame, so it arrives in few reads; at most 64 KiB
                // ahead of what arrived, so a declared length alone reserves little.
                self.buf
                    .reserve((at + 4 + len - self.buf.len()).min(64 * 1024));
                return Ok(None);
            }
            let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            let _ = self.buf.split_to(at + 4);
            let mut payload = self.buf.split_to(len);
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i & 3];
            }

            let message = match opcode {
                OP_PING => return Ok(Some(Incoming::Ping(payload.freeze()))),
                OP_PONG => return Ok(Some(Incoming::Pong)),
                OP_CLOSE => return Ok(Some(Incoming::Close(payload.freeze()))),
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(protocol_error("new message inside a fragmented one"));
                    }
                    if len > max_message {
                        return Err(protocol_error("message over the size limit"));
                    }
                    if !fin {
                        self.partial = Some((opcode, payload));
                        continue;
                    }
                    (opcode, payload)
                }
                OP_CONT => {
                    let Some((op, mut data)) = self.partial.take() else {
                        return Err(protocol_error("continuation without a message"));
                    };
                    if data.len() + len > max_message {
                        return Err(protocol_error("message over the size limit"));
                    }
                    data.extend_from_slice(&payload);
                    if !fin {
                        self.partial = Some((op, data));
                        continue;
                    }
                    (op, data)
                }
                _ => return Err(protocol_error("unknown opcode")),
            };
            return Ok(Some(match message {
                (OP_TEXT, data) => {
                    let text = String::from_utf8(data.to_vec())
                        .map_err(|_| protocol_error("text message not UTF-8"))?;
                    Incoming::Text(Str::from(text))
                }
                (_, data) => Incoming::Binary(data.freeze()),
            }));
        }
    }

    /// Reads what the kernel has; `Ok(false)` at the end of the stream.
    fn fill(&mut self, stream: &TcpStream) -> Result<bool, Error> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        match stream.try_read_buf(&mut self.buf) {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(Error::Io(e)),
        }
    }

    /// Lets an empty buffer's memory go: an idle socket keeps no read buffer.
    fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The connection's task

/// How long a closing connection may take to write what was queued before its close.
const CLOSING_FLUSH: Duration = Duration::from_secs(1);

/// The heartbeat of one connection, run by its task instead of a task of its own.
#[derive(Debug)]
struct Heartbeat {
    protocol: ProtocolVersion,
    interval: Duration,
    timeout: Duration,
    /// v4: when the next ping is due. v3: unused.
    next_ping: Instant,
    /// v4: the pong is awaited until then. v3: the client's ping is awaited until then.
    deadline: Option<Instant>,
}

impl Heartbeat {
    fn new(protocol: ProtocolVersion, interval: Duration, timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            protocol,
            interval,
            timeout,
            next_ping: now + interval,
            deadline: (protocol == ProtocolVersion::V3).then(|| now + interval + timeout),
        }
    }

    /// When the task should next look at the heartbeat.
    fn wake_at(&self) -> Instant {
        self.deadline.unwrap_or(self.next_ping)
    }

    /// The client showed it is alive (a pong in v4, a ping in v3).
    fn alive(&mut self) {
        self.deadline = match self.protocol {
            ProtocolVersion::V3 => Some(Instant::now() + self.interval + self.timeout),
            _ => None,
        };
    }

    /// At [`Self::wake_at`]: the packet to send, or the timeout.
    fn tick(&mut self) -> Result<Option<Packet>, Error> {
        let now = Instant::now();
        match self.deadline {
            Some(d) if now >= d => Err(Error::HeartbeatTimeout),
            Some(_) => Ok(None),
            None if now >= self.next_ping => {
                self.next_ping += self.interval;
                if self.next_ping <= now {
                    self.next_ping = now + self.interval;
                }
                self.deadline = Some(now + self.timeout);
                Ok(Some(Packet::Ping))
            }
            None => Ok(None),
        }
    }
}

/// Opens a session on a new WebSocket connection over `stream` and serves it until it
/// closes. `read_buf` holds bytes the HTTP server already read from the stream.
pub(crate) async fn accept<H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    stream: TcpStream,
    read_buf: Bytes,
    protocol: ProtocolVersion,
    req: http::request::Parts,
) {
    let stream = Arc::new(stream);
    let socket = engine.create_session_with(
        protocol,
        TransportType::Websocket,
        req,
        false,
        Some(stream.clone()),
    );
    let Some(writer) = socket.direct.get().cloned() else {
        return;
    };
    #[cfg(feature = "tracing")]
    tracing::debug!(sid = %socket.id, "new websocket connection (direct transport)");
    let open = Packet::Open(super::make_open_packet(
        TransportType::Websocket,
        socket.id,
        &engine.config,
    ));
    writer.release(vec![frame(OP_TEXT, String::from(open).as_bytes(), &[])]);
    let heartbeat = Heartbeat::new(
        protocol,
        engine.config.ping_interval,
        engine.config.ping_timeout,
    );
    let reader = Reader {
        buf: BytesMut::from(read_buf),
        partial: None,
    };
    serve(engine, socket, stream, writer, reader, Some(heartbeat)).await
}

/// Upgrades polling session `sid` to a WebSocket connection over `stream` (the
/// `2probe` / `3probe` / `5` handshake), moves what its polling queue still holds to the
/// connection, and serves it until it closes. The session's heartbeat task keeps running.
pub(crate) async fn upgrade<H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    stream: TcpStream,
    read_buf: Bytes,
    sid: engineioxide_core::Sid,
) {
    let Some(socket) = engine.get_socket(sid) else {
        return;
    };
    if socket.is_ws() || socket.direct.get().is_some() {
        return; // a second WebSocket for the session
    }
    let stream = Arc::new(stream);
    let config = &engine.config;
    let mut reader = Reader {
        buf: BytesMut::from(read_buf),
        partial: None,
    };
    let handshake = async {
        // Pending polling requests end with a Noop; wait for the one in progress.
        socket.start_upgrade();
        socket
            .internal_tx
            .force_send(smallvec::smallvec![Packet::Noop])
            .map_err(|_| Error::Upgrade)?;
        let rx = socket.internal_rx.lock().await;
        let mut expect = async |want: Packet| -> Result<(), Error> {
            loop {
                match next_incoming(&stream, &mut reader, config).await? {
                    Incoming::Text(t) if Packet::parse(socket.protocol, t.clone())? == want => {
                        return Ok(());
                    }
                    Incoming::Ping(_) | Incoming::Pong => continue,
                    _ => return Err(Error::Upgrade),
                }
            }
        };
        expect(Packet::PingUpgrade).await?;
        let pong = frame(OP_TEXT, String::from(Packet::PongUpgrade).as_bytes(), &[]);
        if write_some(&stream, &pong)? < pong.len() {
            return Err(Error::Upgrade);
        }
        expect(Packet::Upgrade).await?;
        Ok(rx)
    };
    let rx = match tokio::time::timeout(config.upgrade_timeout, handshake)
        .with_cancellation_token(&socket.cancellation_token)
        .await
    {
        Some(Ok(Ok(rx))) => rx,
        Some(_) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(%sid, "ws upgrade failed, closing session");
            engine.close_session(sid, DisconnectReason::TransportError);
            return;
        }
        None => return,
    };
    // The session is a WebSocket one from the moment the client's `5` is read, as in
    // the queued transport: a polling request arriving now is refused (400), not
    // answered. A send racing this still lands in the polling queue (not redirected
    // yet), which is drained into the writer below.
    socket.upgrade_to_websocket();

    // From here every send goes to the writer (held); what the polling queue took
    // before goes out first.
    let writer = Arc::new(WsWriter::new(
        stream.clone(),
        socket.budget.clone(),
        config.max_buffer_size,
    ));
    if socket.direct.set(writer.clone()).is_err() {
        return;
    }
    socket.internal_tx.redirect();
    let mut first = Vec::new();
    {
        let mut rx = rx;
        let crate::socket::InternalRx {
            buffered_rx,
            peeked_packet,
            ..
        } = &mut *rx;
        if let Some(packets) = peeked_packet.take() {
            first.extend(frames(socket.protocol, &packets));
        }
        while let Ok(packets) = buffered_rx.try_recv() {
            first.extend(frames(socket.protocol, &packets));
        }
    }
    writer.release(first);
    #[cfg(feature = "tracing")]
    tracing::debug!(%sid, "ws upgraded (direct transport)");
    serve(engine, socket, stream, writer, reader, None).await
}

/// The next message or control frame from the client.
async fn next_incoming(
    stream: &TcpStream,
    reader: &mut Reader,
    config: &crate::config::EngineIoConfig,
) -> Result<Incoming, Error> {
    loop {
        if let Some(incoming) = reader.next(config.ws_max_frame_size, config.ws_max_message_size)? {
            return Ok(incoming);
        }
        stream.readable().await?;
        if !reader.fill(stream)? {
            return Err(Error::Upgrade);
        }
    }
}

/// Serves one direct WebSocket connection until it closes: reads and handles the
/// client's frames, writes what waits in the outbox, runs the heartbeat, and closes a
/// slow consumer. Without `heartbeat`, the session's own heartbeat task runs it and
/// hears of the client's pongs.
async fn serve<H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    socket: Arc<Socket<H::Data>>,
    stream: Arc<TcpStream>,
    writer: Arc<WsWriter>,
    reader: Reader,
    heartbeat: Option<Heartbeat>,
) {
    let cancel = socket.cancellation_token.clone();
    let result = cancel
        .run_until_cancelled(run(&engine, &socket, &stream, &writer, reader, heartbeat))
        .await;
    match result {
        Some(Err(e)) => {
            let reason =
                Option::<DisconnectReason>::from(&e).unwrap_or(DisconnectReason::TransportError);
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "ws direct transport error: {e}");
            engine.close_session(socket.id, reason);
        }
        Some(Ok(reason)) => engine.close_session(socket.id, reason),
        None => {}
    }
    // What was queued before the close (a disconnect packet) still goes out, within a
    // bounded time: a slow consumer's peer may never read it.
    let _ = tokio::time::timeout(CLOSING_FLUSH, async {
        while writer.pending() {
            if stream.writable().await.is_err() || writer.flush().is_err() {
                break;
            }
        }
        writer
            .send([frame(OP_CLOSE, &1000u16.to_be_bytes(), &[])])
            .ok();
    })
    .await;
    writer.close();
}

async fn run<H: EngineIoHandler>(
    engine: &Arc<EngineIo<H>>,
    socket: &Arc<Socket<H::Data>>,
    stream: &TcpStream,
    writer: &WsWriter,
    mut reader: Reader,
    mut heartbeat: Option<Heartbeat>,
) -> Result<DisconnectReason, Error> {
    let config = &engine.config;
    let (max_frame, max_message) = (config.ws_max_frame_size, config.ws_max_message_size);
    let far = || Instant::now() + Duration::from_secs(86_400);
    let wake_at = |h: &Option<Heartbeat>| h.as_ref().map_or_else(far, Heartbeat::wake_at);
    let sleep = tokio::time::sleep_until(wake_at(&heartbeat));
    tokio::pin!(sleep);

    loop {
        // Handle every whole frame received so far.
        while let Some(incoming) = reader.next(max_frame, max_message)? {
            match incoming {
                Incoming::Text(text) => match Packet::parse(socket.protocol, text)? {
                    Packet::Close => return Ok(DisconnectReason::TransportClose),
                    Packet::Pong | Packet::Ping => match &mut heartbeat {
                        Some(h) => {
                            h.alive();
                            if socket.protocol == ProtocolVersion::V3 {
                                send_packet(socket, writer, Packet::Pong)?;
                            }
                        }
                        None => socket.heartbeat_received(),
                    },
                    Packet::Message(msg) => engine.handler.on_message(msg, socket.clone()),
                    p => return Err(Error::BadPacket(p)),
                },
                Incoming::Binary(mut data) => {
                    if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                        // The first byte is the message type, which we don't need.
                        data = data.split_off(1);
                    }
                    engine.handler.on_binary(data, socket.clone());
                }
                Incoming::Ping(data) => {
                    writer.send([frame(OP_PONG, &[], &data)]).ok();
                }
                Incoming::Pong => {}
                Incoming::Close(data) => {
                    let code = data.get(..2).unwrap_or(&[0x03, 0xE8]);
                    writer.send([frame(OP_CLOSE, code, &[])]).ok();
                    return Ok(DisconnectReason::TransportClose);
                }
            }
        }
        reader.shrink();
        if let Some(h) = &heartbeat {
            sleep.as_mut().reset(h.wake_at());
        }

        let pending = writer.pending();
        tokio::select! {
            biased;
            _ = socket.budget().overflowed() => {
                socket.close(DisconnectReason::TransportError);
                return Ok(DisconnectReason::TransportError);
            }
            ready = stream.readable() => {
                ready.map_err(Error::Io)?;
                if !reader.fill(stream)? {
                    return Ok(DisconnectReason::TransportClose);
                }
            }
            ready = stream.writable(), if pending => {
                ready.map_err(Error::Io)?;
                writer.flush()?;
            }
            _ = writer.wake.notified(), if !pending => writer.flush()?,
            _ = &mut sleep, if heartbeat.is_some() => {
                if let Some(packet) = heartbeat.as_mut().map(Heartbeat::tick).transpose()?.flatten() {
                    send_packet(socket, writer, packet)?;
                }
            }
        }
    }
}

/// Sends a control packet of the session (ping, pong); a socket too far behind to take
/// one is a slow consumer, which the next turn of the loop closes.
fn send_packet<D: Default + Send + Sync + 'static>(
    socket: &Socket<D>,
    writer: &WsWriter,
    packet: Packet,
) -> Result<(), Error> {
    match writer.send(frames(socket.protocol, &smallvec::smallvec![packet])) {
        Ok(()) | Err(Refused::Full) => Ok(()),
        Err(Refused::Closed) => Err(Error::Io(io::ErrorKind::BrokenPipe.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with a fixed key.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [1u8, 2, 3, 4];
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
        f
    }

    fn reader(bytes: &[u8]) -> Reader {
        Reader {
            buf: BytesMut::from(bytes),
            partial: None,
        }
    }

    #[test]
    fn reads_text_binary_and_control_frames() {
        let mut bytes = client_frame(0x81, b"4hello");
        bytes.extend(client_frame(0x82, &[0, 1, 2]));
        bytes.extend(client_frame(0x89, b"p"));
        bytes.extend(client_frame(0x88, &[0x03, 0xE8]));
        let mut r = reader(&bytes);
        assert_eq!(
            r.next(1024, 1024).unwrap(),
            Some(Incoming::Text(Str::from("4hello")))
        );
        assert_eq!(
            r.next(1024, 1024).unwrap(),
            Some(Incoming::Binary(Bytes::from_static(&[0, 1, 2])))
        );
        assert_eq!(
            r.next(1024, 1024).unwrap(),
            Some(Incoming::Ping(Bytes::from_static(b"p")))
        );
        assert!(matches!(
            r.next(1024, 1024).unwrap(),
            Some(Incoming::Close(_))
        ));
        assert_eq!(r.next(1024, 1024).unwrap(), None);
    }

    #[test]
    fn waits_for_the_rest_of_a_frame_byte_by_byte() {
        let long = vec![b'x'; 300];
        let bytes = client_frame(0x81, &long);
        let mut r = reader(&[]);
        for b in &bytes[..bytes.len() - 1] {
            r.buf.put_u8(*b);
            assert_eq!(r.next(1024, 1024).unwrap(), None);
        }
        r.buf.put_u8(bytes[bytes.len() - 1]);
        let Some(Incoming::Text(t)) = r.next(1024, 1024).unwrap() else {
            panic!("a text message")
        };
        assert_eq!(t.len(), 300);
    }

    #[test]
    fn joins_fragments_with_control_frames_between() {
        let mut bytes = client_frame(0x01, b"4he");
        bytes.extend(client_frame(0x89, b""));
        bytes.extend(client_frame(0x80, b"llo"));
        let mut r = reader(&bytes);
        assert_eq!(
            r.next(1024, 1024).unwrap(),
            Some(Incoming::Ping(Bytes::new()))
        );
        assert_eq!(
            r.next(1024, 1024).unwrap(),
            Some(Incoming::Text(Str::from("4hello")))
        );
    }

    #[test]
    fn refuses_what_breaks_the_protocol_or_the_limits() {
        let unmasked = [0x81u8, 0x01, b'4'];
        let cases: Vec<(&str, Vec<u8>, usize, usize)> = vec![
            ("unmasked", unmasked.to_vec(), 1024, 1024),
            ("reserved bits", client_frame(0xC1, b"4"), 1024, 1024),
            ("unknown opcode", client_frame(0x83, b"4"), 1024, 1024),
            ("long ping", client_frame(0x89, &[0; 126]), 1024, 1024),
            ("fragmented ping", client_frame(0x09, b""), 1024, 1024),
            ("frame too big", client_frame(0x81, &[b'a'; 200]), 100, 1024),
            ("continuation alone", client_frame(0x80, b"a"), 1024, 1024),
            ("bad utf-8", client_frame(0x81, &[0xFF, 0xFE]), 1024, 1024),
            (
                "message too big",
                [
                    client_frame(0x01, &[b'a'; 80]),
                    client_frame(0x80, &[b'a'; 80]),
                ]
                .concat(),
                1024,
                100,
            ),
            (
                "message inside a message",
                [client_frame(0x01, b"a"), client_frame(0x81, b"b")].concat(),
                1024,
                1024,
            ),
        ];
        for (name, bytes, frame, message) in cases {
            let mut r = reader(&bytes);
            assert!(
                matches!(r.next(frame, message), Err(Error::WsProtocol(_))),
                "{name} should be refused"
            );
        }
    }

    #[test]
    fn a_declared_length_alone_reserves_little() {
        let mut bytes = vec![0x82u8, 0x80 | 127];
        bytes.extend_from_slice(&(1u64 << 20).to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        let mut r = reader(&bytes);
        assert_eq!(r.next(1 << 20, 1 << 20).unwrap(), None);
        assert!(r.buf.capacity() <= 128 * 1024, "{}", r.buf.capacity());
    }

    #[test]
    fn a_huge_declared_length_is_refused_before_it_is_buffered() {
        let mut bytes = vec![0x82u8, 0x80 | 127];
        bytes.extend_from_slice(&(u64::MAX / 2).to_be_bytes());
        let mut r = reader(&bytes);
        assert!(matches!(
            r.next(1 << 20, 1 << 20),
            Err(Error::WsProtocol(_))
        ));
    }

    #[test]
    fn server_frames_use_the_shortest_length_encoding() {
        assert_eq!(
            &frame(OP_TEXT, b"4", b"hi")[..],
            &[0x81, 3, b'4', b'h', b'i']
        );
        let f = frame(OP_BINARY, &[], &[7; 300]);
        assert_eq!(&f[..4], &[0x82, 126, 0x01, 0x2C]);
        let f = frame(OP_BINARY, &[], &vec![7; 70_000]);
        assert_eq!(&f[..2], &[0x82, 127]);
        assert_eq!(f.len(), 70_000 + 10);
    }

    #[test]
    fn a_shared_message_is_framed_once() {
        let msg = Str::from(String::from("2[\"event\",1]"));
        let a = text_frame(&msg);
        let b = text_frame(&msg.clone());
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same frame bytes");
        // Another message with the same text is framed on its own, with the same bytes.
        let other = Str::from(String::from("2[\"event\",1]"));
        let c = text_frame(&other);
        assert_ne!(a.as_ptr(), c.as_ptr());
        assert_eq!(a, c);
        assert_eq!(&a[..2], &[0x81, 13]);
    }

    #[test]
    fn v4_heartbeat_pings_then_times_out_without_a_pong() {
        let hour = Duration::from_secs(3600);
        let mut h = Heartbeat::new(ProtocolVersion::V4, hour, hour);
        assert_eq!(h.tick().unwrap(), None, "nothing is due yet");

        let hb = Duration::from_millis(10);
        let mut h = Heartbeat::new(ProtocolVersion::V4, hb, hb);
        std::thread::sleep(hb);
        assert_eq!(h.tick().unwrap(), Some(Packet::Ping));
        h.alive();
        assert!(h.deadline.is_none(), "a pong ends the wait");
        std::thread::sleep(hb);
        assert_eq!(h.tick().unwrap(), Some(Packet::Ping));
        std::thread::sleep(hb);
        assert!(matches!(h.tick(), Err(Error::HeartbeatTimeout)));
    }

    /// A connected pair whose server side has a small send buffer and whose client side
    /// has a small receive buffer, so the kernel soon stops taking frames.
    async fn tight_pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpSocket::new_v4().unwrap();
        listener.set_send_buffer_size(4096).unwrap();
        listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listener.listen(1).unwrap();
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        let client = client
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Arc::new(server), client)
    }

    /// Reads server frames (unmasked, unfragmented) until `n` payloads arrived.
    async fn read_payloads(client: &mut TcpStream, n: usize) -> Vec<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while out.len() < n {
            let read = client.read(&mut chunk).await.unwrap();
            assert!(read > 0, "the server closed after {} frames", out.len());
            buf.extend_from_slice(&chunk[..read]);
            loop {
                if buf.len() < 2 {
                    break;
                }
                let (len, at) = match buf[1] {
                    126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                    126 => break,
                    n => (n as usize, 2),
                };
                if buf.len() < at + len {
                    break;
                }
                out.push(buf[at..at + len].to_vec());
                buf.drain(..at + len);
            }
        }
        out
    }

    #[tokio::test]
    async fn what_the_kernel_does_not_take_waits_and_arrives_in_order() {
        let (stream, mut client) = tight_pair().await;
        let budget = Arc::new(OutboundBudget::new(None));
        let writer = Arc::new(WsWriter::new(stream.clone(), budget.clone(), 100_000));
        writer.release(vec![]);
        const N: usize = 3000;
        for i in 0..N {
            writer
                .send([frame(OP_TEXT, b"", format!("{i:06}").repeat(20).as_bytes())])
                .unwrap();
        }
        assert!(
            writer.pending(),
            "360 KB cannot all fit in the kernel's buffers"
        );
        assert!(budget.queued() > 0, "what waits is on the socket's account");

        // The connection's task writes the rest as the peer reads.
        let drain = {
            let (stream, writer) = (stream.clone(), writer.clone());
            tokio::spawn(async move {
                while writer.pending() {
                    stream.writable().await.unwrap();
                    writer.flush().unwrap();
                }
            })
        };
        let payloads = read_payloads(&mut client, N).await;
        for (i, p) in payloads.iter().enumerate() {
            assert_eq!(p, format!("{i:06}").repeat(20).as_bytes(), "frame {i}");
        }
        drain.await.unwrap();
        assert_eq!(budget.queued(), 0, "the account is back to zero");
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_is_refused_past_its_budget() {
        let (stream, _client) = tight_pair().await;
        let budget = Arc::new(OutboundBudget::new(Some(64 * 1024)));
        let writer = WsWriter::new(stream, budget.clone(), 100_000);
        writer.release(vec![]);
        let payload = vec![b'x'; 1024];
        let refused = (0..10_000).find_map(|i| {
            writer
                .send([frame(OP_BINARY, &[], &payload)])
                .err()
                .map(|e| (i, e))
        });
        let Some((_, Refused::Full)) = refused else {
            panic!("a socket that never reads is refused, got {refused:?}")
        };
        assert!(budget.queued() <= 64 * 1024 + 1034, "bounded by the budget");
        assert_eq!(writer.admit(), Err(Refused::Full), "and stays refused");

        writer.close();
        assert_eq!(
            writer.send([frame(OP_TEXT, b"4", b"late")]),
            Err(Refused::Closed)
        );
        assert_eq!(budget.queued(), 0, "closing lets what waited go");
    }

    #[tokio::test]
    async fn held_frames_go_out_after_the_released_ones() {
        let (stream, mut client) = tight_pair().await;
        let writer = WsWriter::new(stream, Arc::new(OutboundBudget::new(None)), 100);
        writer.send([frame(OP_TEXT, b"", b"second")]).unwrap();
        writer.release(vec![frame(OP_TEXT, b"", b"first")]);
        writer.flush().unwrap();
        let got = read_payloads(&mut client, 2).await;
        assert_eq!(got, vec![b"first".to_vec(), b"second".to_vec()]);
    }
}
