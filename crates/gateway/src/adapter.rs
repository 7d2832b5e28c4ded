//! A socketioxide adapter backed by the cluster bus, so that everything gateway code does
//! through socketioxide (`io.to(room).emit`, `broadcast_with_ack`, `fetch_sockets`,
//! remote `join`/`leave`/`disconnect`, `rooms`) works across every node.
//!
//! Two paths:
//! * **Events to rooms** become an [`Envelope`] published once on the target room's
//!   channel; only nodes with members in the room receive it (interest routing).
//! * **Everything else** (acks, fetches, targeting one remote socket, binary payloads,
//!   room names outside the `kind:id` convention) uses socketioxide's remote-adapter
//!   request protocol on the namespace's request channel, with responses on the asking
//!   server's response channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bus::{Bus, SendError};
use bytes::Bytes;
use envelope::{Envelope, Flags, VERSION};
use futures_util::future::Either;
use futures_util::{StreamExt, future};
use rooms::{Audience, Channels, ScopedRoom};
use serde::Serialize;
use serde::de::DeserializeOwned;
use socketioxide::adapter::Emitter;
use socketioxide_core::adapter::errors::{AdapterError, BroadcastError};
use socketioxide_core::adapter::remote_packet::{
    RequestIn, RequestOut, RequestTypeIn, RequestTypeOut, Response, ResponseTypeId,
};
use socketioxide_core::adapter::request::RemoteRequestHandler;
use socketioxide_core::adapter::stream::{
    AckStream, ChanStream, DropStream, ResponseHandlers, insert_response_handler, wait_responses,
};
use socketioxide_core::adapter::{
    BroadcastFlags, BroadcastOptions, CoreAdapter, CoreLocalAdapter, DefinedAdapter,
    RemoteSocketData, RoomParam, SocketEmitter, Spawnable,
};
use socketioxide_core::packet::{Packet, PacketData};
use socketioxide_core::{Sid, Uid, Value as SioValue};
use tokio::sync::mpsc;

use crate::membership::Confirmation;

tokio::task_local! {
    /// Set around a local delivery that wants to know how many sockets its broadcast
    /// addressed ([`count_local_targets`]).
    static LOCAL_TARGETS: Arc<std::sync::atomic::AtomicUsize>;
}

/// Runs `delivery` (a local broadcast through this adapter) and returns its output with
/// the number of local sockets the broadcast addressed. Counted from the room sets' socket
/// ids while the broadcast runs, not by collecting socket handles: a handle per target
/// would touch every socket once more per message (measured as part of the fan-out's
/// growth with room size).
pub(crate) async fn count_local_targets<F: Future>(delivery: F) -> (F::Output, usize) {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let out = LOCAL_TARGETS.scope(count.clone(), delivery).await;
    (out, count.load(std::sync::atomic::Ordering::Relaxed))
}

/// What the adapter needs of the node it runs in ([`Cluster`](crate::Cluster) provides it).
///
/// The adapter knows its node only through this trait, so the dependency runs one way
/// (the cluster knows the adapter, not the reverse) and neither holds a type it cannot
/// name on its own.
pub trait AdapterHost: Send + Sync + std::fmt::Debug + 'static {
    /// This node's id.
    fn node_id(&self) -> &str;
    /// The bus channel names.
    fn channels(&self) -> &Channels;
    /// The bus.
    fn bus(&self) -> &Arc<dyn Bus>;
    /// Records `adapter` as the one of namespace `ns`, so bus requests reach it.
    fn register_adapter(&self, ns: &str, adapter: &Arc<BusAdapter>);
    /// Publishes an envelope whose audience is resolved, counting the outcome.
    fn send_to_bus<'a>(
        &'a self,
        env: &'a Envelope,
        to: &'a Audience,
    ) -> Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>>;
    /// Adds local socket `sid` to `room` on another node's request, through membership;
    /// `local` adds it to socketioxide's room map. `None` when the socket is gone.
    fn join_remote(
        &self,
        ns: &str,
        sid: Sid,
        room: &ScopedRoom,
        local: &mut dyn FnMut(),
    ) -> Option<Confirmation>;
    /// Removes local socket `sid` from `room` on another node's request.
    fn leave_remote(&self, ns: &str, sid: Sid, room: &ScopedRoom, local: &mut dyn FnMut());
}

/// How long a request waits for the other servers' answers (plus the ack timeout for
/// acknowledged broadcasts).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Room in each response channel for acks arriving before they are consumed; more wait
/// for room (see [`BusAdapter::recv_response`]).
const ACK_BUFFER: usize = 255;

/// Why a cluster-wide adapter operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The bus refused the request.
    #[error("cluster bus: {0}")]
    Bus(#[from] bus::PublishError),
    /// A request could not be encoded.
    #[error("cannot encode a cluster request: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

impl From<ClusterError> for AdapterError {
    fn from(e: ClusterError) -> Self {
        AdapterError(Box::new(e))
    }
}

/// The adapter of every namespace: local state in socketioxide's [`CoreLocalAdapter`],
/// cluster-wide operations over the bus.
pub struct BusAdapter {
    local: CoreLocalAdapter<Emitter>,
    cluster: Arc<dyn AdapterHost>,
    uid: Uid,
    ns: String,
    /// Pending requests of this server, by request id.
    responses: Arc<Mutex<ResponseHandlers<Bytes>>>,
}

impl std::fmt::Debug for BusAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusAdapter")
            .field("node_id", &self.cluster.node_id())
            .field("ns", &self.ns)
            .finish_non_exhaustive()
    }
}

/// The future that subscribes a namespace's adapter channels at start-up; the namespace
/// accepts connections once it has resolved. Await it (or let socketioxide spawn it).
#[must_use = "the namespace is not ready until this resolves"]
pub struct InitRes(Pin<Box<dyn Future<Output = ()> + Send>>);

impl Future for InitRes {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl Spawnable for InitRes {
    fn spawn(self) {
        tokio::spawn(self.0);
    }
}

impl std::fmt::Debug for InitRes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InitRes")
    }
}

type RemoteAckStream =
    AckStream<Emitter, DropStream<futures_util::stream::BoxStream<'static, Bytes>, Bytes>, Bytes>;

/// The remote answers to a broadcast with acks, ending as soon as each of `servers`
/// sent its count and every counted ack arrived.
///
/// socketioxide-core's `AckStream` looks for its end only before it polls the remote
/// answers: when the last answer to arrive is a count (another node's `0`, after this
/// node's acks), it waits on for its whole timeout although nothing more will come.
/// Measured: one HTTP publish with acks in ten took the ack timeout + 5 s with three
/// nodes publishing at once. A remote stream that ends lets it finish at once.
fn until_answered(
    answers: ChanStream<Bytes>,
    servers: u16,
) -> futures_util::stream::BoxStream<'static, Bytes> {
    use socketioxide_core::adapter::remote_packet::ResponseType;
    let state = (answers, servers, 0u32);
    futures_util::stream::unfold(state, |(mut answers, mut servers, mut acks)| async move {
        if servers == 0 && acks == 0 {
            return None;
        }
        let item = answers.next().await?;
        match decode_ack(item.clone()) {
            Ok(Response {
                r#type: ResponseType::BroadcastAckCount(count),
                ..
            }) => {
                servers = servers.saturating_sub(1);
                acks = acks.saturating_add(count);
            }
            Ok(Response {
                r#type: ResponseType::BroadcastAck(_),
                ..
            }) => acks = acks.saturating_sub(1),
            _ => {}
        }
        Some((item, (answers, servers, acks)))
    })
    .boxed()
}

impl DefinedAdapter for BusAdapter {}

impl CoreAdapter<Emitter> for BusAdapter {
    type Error = ClusterError;
    type State = Arc<dyn AdapterHost>;
    type AckStream = Either<<Emitter as SocketEmitter>::AckStream, RemoteAckStream>;
    type InitRes = InitRes;

    fn new(state: &Self::State, local: CoreLocalAdapter<Emitter>) -> Self {
        let uid = local.server_id();
        let ns = local.path().to_string();
        Self {
            local,
            cluster: state.clone(),
            uid,
            ns,
            responses: Arc::default(),
        }
    }

    fn init(self: Arc<Self>, on_success: impl FnOnce() + Send + 'static) -> Self::InitRes {
        InitRes(Box::pin(async move {
            self.cluster.register_adapter(&self.ns, &self);
            let channels = self.cluster.channels();
            let uid = self.uid.to_string();
            let wanted = vec![
                channels.requests(&self.ns),
                channels.requests_for(&self.ns, &uid),
                channels.responses_for(&self.ns, &uid),
            ];
            if let Err(e) = self.cluster.bus().subscribe(wanted).await {
                // Remembered by the bus and made when it connects.
                tracing::warn!(ns = %self.ns, error = %e, "adapter channels not subscribed yet");
            }
            on_success();
        }))
    }

    async fn server_count(&self) -> Result<u16, Self::Error> {
        let channel = self.cluster.channels().requests(&self.ns);
        let count = self.cluster.bus().subscriber_count(&channel).await?;
        Ok(u16::try_from(count).unwrap_or(u16::MAX).max(1))
    }

    async fn broadcast(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
    ) -> Result<(), BroadcastError> {
        if !opts.is_local(self.uid) {
            if let Some((env, to)) = to_envelope(&packet, &opts, self.cluster.node_id()) {
                if let Err(e) = self.cluster.send_to_bus(&env, &to).await {
                    tracing::warn!(error = %e, event = %env.event, "cluster broadcast failed; delivered on this node only");
                }
            } else {
                let req = RequestOut::new(self.uid, RequestTypeOut::Broadcast(&packet), &opts);
                self.send_req(req, opts.server_id)
                    .await
                    .map_err(AdapterError::from)?;
            }
        }
        // Only a delivery that asked for the count pays for it.
        let _ = LOCAL_TARGETS.try_with(|count| {
            count.store(
                self.local.sockets(opts.clone()).len(),
                std::sync::atomic::Ordering::Relaxed,
            );
        });
        self.local
            .broadcast(packet, opts)
            .map_err(BroadcastError::from)
    }

    async fn broadcast_with_ack(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
        timeout: Option<Duration>,
    ) -> Result<Self::AckStream, Self::Error> {
        if opts.is_local(self.uid) {
            let (local, _) = self.local.broadcast_with_ack(packet, opts, timeout);
            return Ok(Either::Left(local));
        }
        let req = RequestOut::new(self.uid, RequestTypeOut::BroadcastWithAck(&packet), &opts)
            .with_ack_timeout(timeout);
        let req_id = req.id;
        let remote_servers = self.remote_server_count(&opts).await?;
        let (tx, rx) = mpsc::channel(ACK_BUFFER + usize::from(remote_servers));
        self.lock_responses().insert(req_id, tx);
        // Built before sending, so the handler is removed even if sending fails.
        let remote = DropStream::new(
            until_answered(ChanStream::new(rx), remote_servers),
            self.responses.clone(),
            req_id,
        );
        self.send_req(req, opts.server_id).await?;
        let (local, _) = self.local.broadcast_with_ack(packet, opts, timeout);
        let wait = REQUEST_TIMEOUT.saturating_add(timeout.unwrap_or(self.local.ack_timeout()));
        Ok(Either::Right(AckStream::new(
            local,
            remote,
            decode_ack,
            wait,
            remote_servers,
            req_id,
            self.responses.clone(),
        )))
    }

    async fn add_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> Result<(), Self::Error> {
        let rooms: Vec<socketioxide_core::adapter::Room> = rooms.into_room_iter().collect();
        if !opts.is_local(self.uid) {
            let req = RequestOut::new(self.uid, RequestTypeOut::AddSockets(&rooms), &opts);
            self.send_req(req, opts.server_id).await?;
            self.add_local(opts.clone(), rooms).await;
            // Each node handles requests in order and finishes a join (bus subscription
            // confirmed) before the next request, so once every node has answered this
            // query, every remote join is live: a publish made after `join` returns
            // cannot be missed.
            self.barrier(&opts).await?;
        } else {
            self.add_local(opts, rooms).await;
        }
        Ok(())
    }

    async fn del_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> Result<(), Self::Error> {
        let rooms: Vec<socketioxide_core::adapter::Room> = rooms.into_room_iter().collect();
        if !opts.is_local(self.uid) {
            let req = RequestOut::new(self.uid, RequestTypeOut::DelSockets(&rooms), &opts);
            self.send_req(req, opts.server_id).await?;
        }
        self.del_local(opts, rooms);
        Ok(())
    }

    async fn disconnect_socket(&self, opts: BroadcastOptions) -> Result<(), BroadcastError> {
        if !opts.is_local(self.uid) {
            let req = RequestOut::new(self.uid, RequestTypeOut::DisconnectSockets, &opts);
            self.send_req(req, opts.server_id)
                .await
                .map_err(AdapterError::from)?;
        }
        self.local
            .disconnect_socket(opts)
            .map_err(BroadcastError::Socket)
    }

    async fn rooms(
        &self,
        opts: BroadcastOptions,
    ) -> Result<Vec<socketioxide_core::adapter::Room>, Self::Error> {
        if opts.is_local(self.uid) {
            return Ok(self.local.rooms(opts).into_iter().collect());
        }
        let req = RequestOut::new(self.uid, RequestTypeOut::AllRooms, &opts);
        let remote = self
            .responses_of::<()>(req.id, ResponseTypeId::AllRooms, &opts)
            .await?;
        self.send_req(req, opts.server_id).await?;
        let local = self.local.rooms(opts);
        let all = remote
            .filter_map(|r| future::ready(r.into_rooms()))
            .fold(local, async |mut acc, rooms| {
                acc.extend(rooms);
                acc
            })
            .await;
        Ok(all.into_iter().collect())
    }

    async fn fetch_sockets(
        &self,
        opts: BroadcastOptions,
    ) -> Result<Vec<RemoteSocketData>, Self::Error> {
        if opts.is_local(self.uid) {
            return Ok(self.local.fetch_sockets(opts));
        }
        let req = RequestOut::new(self.uid, RequestTypeOut::FetchSockets, &opts);
        let remote = self
            .responses_of::<RemoteSocketData>(req.id, ResponseTypeId::FetchSockets, &opts)
            .await?;
        self.send_req(req, opts.server_id).await?;
        let local = self.local.fetch_sockets(opts);
        Ok(remote
            .filter_map(|r| future::ready(r.into_fetch_sockets()))
            .fold(local, async |mut acc, sockets| {
                acc.extend(sockets);
                acc
            })
            .await)
    }

    fn get_local(&self) -> &CoreLocalAdapter<Emitter> {
        &self.local
    }
}

impl RemoteRequestHandler<Emitter> for BusAdapter {
    type Error = ClusterError;

    fn local(&self) -> &CoreLocalAdapter<Emitter> {
        &self.local
    }

    fn send_res<D: Serialize + std::fmt::Debug + Send + 'static>(
        &self,
        req_id: Sid,
        req_origin: Uid,
        res: Response<D>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let channel = self
            .cluster
            .channels()
            .responses_for(&self.ns, &req_origin.to_string());
        // The request id travels beside the response so it can be routed before the
        // response itself is decoded.
        let encoded = rmp_serde::to_vec(&(req_id, res));
        let bus = self.cluster.bus().clone();
        async move {
            bus.publish(&channel, Bytes::from(encoded?)).await?;
            Ok(())
        }
    }

    fn recv_del_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: Vec<socketioxide_core::adapter::Room>,
    ) {
        self.del_local(opts, rooms);
    }
}

impl BusAdapter {
    fn lock_responses(&self) -> std::sync::MutexGuard<'_, ResponseHandlers<Bytes>> {
        self.responses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The other servers that will answer a request with `opts`.
    async fn remote_server_count(&self, opts: &BroadcastOptions) -> Result<u16, ClusterError> {
        if opts.server_id.is_some() {
            return Ok(1);
        }
        Ok(self.server_count().await?.saturating_sub(1))
    }

    async fn send_req(&self, req: RequestOut<'_>, target: Option<Uid>) -> Result<(), ClusterError> {
        let channels = self.cluster.channels();
        let channel = match target {
            Some(uid) => channels.requests_for(&self.ns, &uid.to_string()),
            None => channels.requests(&self.ns),
        };
        let encoded = rmp_serde::to_vec(&req)?;
        self.cluster
            .bus()
            .publish(&channel, Bytes::from(encoded))
            .await?;
        Ok(())
    }

    async fn responses_of<D: DeserializeOwned + std::fmt::Debug>(
        &self,
        req_id: Sid,
        kind: ResponseTypeId,
        opts: &BroadcastOptions,
    ) -> Result<impl futures_util::Stream<Item = Response<D>> + use<D>, ClusterError> {
        let servers = usize::from(self.remote_server_count(opts).await?);
        let rx = insert_response_handler(&self.responses, req_id, servers);
        let stream = ChanStream::new(rx).filter_map(|item: Bytes| {
            future::ready(match rmp_serde::from_slice::<(Sid, Response<D>)>(&item) {
                Ok((_, res)) => Some(res),
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable cluster response");
                    None
                }
            })
        });
        Ok(wait_responses(
            stream,
            self.responses.clone(),
            req_id,
            kind,
            servers,
            REQUEST_TIMEOUT,
        ))
    }

    /// Waits until every server that a request with `opts` reaches has handled all the
    /// requests this server sent before (see [`CoreAdapter::add_sockets`]).
    async fn barrier(&self, opts: &BroadcastOptions) -> Result<(), ClusterError> {
        let req = RequestOut::new(self.uid, RequestTypeOut::AllRooms, opts);
        let answers = self
            .responses_of::<()>(req.id, ResponseTypeId::AllRooms, opts)
            .await?;
        self.send_req(req, opts.server_id).await?;
        answers.for_each(|_| future::ready(())).await;
        Ok(())
    }

    /// A request from another server, as published on a request channel. Joins are
    /// finished (subscription confirmed) before the next message is handled.
    pub(crate) async fn recv_request(self: &Arc<Self>, payload: &[u8]) {
        let req = match rmp_serde::from_slice::<RequestIn>(payload) {
            Ok(req) => req,
            Err(e) => {
                tracing::warn!(ns = %self.ns, error = %e, "undecodable cluster request");
                return;
            }
        };
        match (req.r#type, req.opts) {
            (RequestTypeIn::AddSockets(rooms), Some(opts)) if req.node_id != self.uid => {
                self.add_local(opts, rooms).await;
            }
            (r#type, opts) => {
                let req = RequestIn {
                    r#type,
                    opts,
                    ..req
                };
                <Self as RemoteRequestHandler<Emitter>>::recv_req(self, req);
            }
        }
    }

    /// A response to one of this server's requests.
    pub(crate) fn recv_response(&self, payload: Bytes) {
        let Some(req_id) = read_req_id(&payload) else {
            tracing::warn!(ns = %self.ns, "cluster response without a request id");
            return;
        };
        let Some(tx) = self.lock_responses().get(&req_id).cloned() else {
            return;
        };
        // A broadcast with acks may bring far more answers than the channel holds (one
        // per remote socket): wait for room rather than drop one.
        if let Err(mpsc::error::TrySendError::Full(payload)) = tx.try_send(payload) {
            tokio::spawn(async move {
                if tx.send(payload).await.is_err() {
                    tracing::debug!(%req_id, "cluster response arrived after its request ended");
                }
            });
        }
    }

    /// Adds the local sockets matching `opts` to `rooms` (another node's request, or
    /// `io.to(..).join(..)` here), through membership for every room that follows the
    /// naming convention, and waits for the bus to confirm the subscriptions.
    async fn add_local(
        &self,
        opts: BroadcastOptions,
        rooms: Vec<socketioxide_core::adapter::Room>,
    ) {
        let mut confirmations = Vec::new();
        let mut plain = Vec::new();
        for name in rooms {
            match ScopedRoom::parse(&name) {
                Ok(room) => {
                    for sid in self.local.sockets(opts.clone()) {
                        let joined = self.cluster.join_remote(&self.ns, sid, &room, &mut || {
                            self.local.add_all(sid, room.as_str().to_owned());
                        });
                        confirmations.extend(joined);
                    }
                }
                // Rooms outside the convention (e.g. a socket id) never cross the bus.
                Err(_) => plain.push(name),
            }
        }
        if !plain.is_empty() {
            self.local.add_sockets(opts, plain);
        }
        for c in confirmations {
            if let Err(e) = c.await {
                tracing::warn!(error = %e, "join not confirmed by the bus; local delivery only for now");
            }
        }
    }

    fn del_local(&self, opts: BroadcastOptions, rooms: Vec<socketioxide_core::adapter::Room>) {
        let sids = self.local.sockets(opts.clone());
        let mut plain = Vec::new();
        for name in rooms {
            match ScopedRoom::parse(&name) {
                Ok(room) => {
                    for sid in &sids {
                        self.cluster.leave_remote(&self.ns, *sid, &room, &mut || {
                            self.local.del(*sid, room.as_str().to_owned());
                        });
                    }
                }
                Err(_) => plain.push(name),
            }
        }
        if !plain.is_empty() {
            self.local.del_sockets(opts, plain);
        }
    }
}

/// Decodes an ack response (`(request id, response)` in MessagePack).
fn decode_ack(
    item: Bytes,
) -> Result<Response<<Emitter as SocketEmitter>::AckError>, Box<dyn std::error::Error + Send>> {
    rmp_serde::from_slice::<(Sid, Response<_>)>(&item)
        .map(|(_, res)| res)
        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send>)
}

/// The request id at the head of a `(Sid, ...)` MessagePack array.
fn read_req_id(data: &[u8]) -> Option<Sid> {
    #[derive(serde::Deserialize)]
    struct Head(Sid, serde::de::IgnoredAny);
    rmp_serde::from_slice::<Head>(data).ok().map(|h| h.0)
}

/// Converts an event packet into an envelope. `None` for what must take the request path:
/// acks, a single remote socket as target, and room names outside the `kind:id`
/// convention (such as a socket id). Binary attachments travel in the envelope; the
/// packet text already holds Socket.IO's placeholders for them.
/// Rooms of several tenants in one broadcast also take the request path.
/// Returns the envelope and its audience.
fn to_envelope(
    packet: &Packet,
    opts: &BroadcastOptions,
    origin: &str,
) -> Option<(Envelope, Audience)> {
    let single_socket =
        opts.rooms.is_empty() && opts.sid.is_some() && !opts.has_flag(BroadcastFlags::Broadcast);
    if opts.server_id.is_some() || single_socket {
        return None;
    }
    let PacketData::Event(SioValue::Str(text, bins), None) = &packet.inner else {
        return None;
    };
    let mut items: Vec<serde_json::Value> = serde_json::from_str(text.as_str()).ok()?;
    if items.is_empty() {
        return None;
    }
    let event = match items.remove(0) {
        serde_json::Value::String(e) => e,
        _ => return None,
    };
    let parse = |rooms: &[socketioxide_core::adapter::Room]| -> Option<Vec<ScopedRoom>> {
        rooms.iter().map(|r| ScopedRoom::parse(r).ok()).collect()
    };
    let to = parse(&opts.rooms)?;
    let except = parse(&opts.except)?;
    let mut tenants = to.iter().chain(&except).map(ScopedRoom::tenant);
    let tenant = tenants.next().flatten();
    if tenants.any(|t| t != tenant) || (to.is_empty() && tenant.is_some()) {
        return None;
    }
    let names = |rooms: &[ScopedRoom]| rooms.iter().map(|r| r.room().to_owned()).collect();
    let audience = if to.is_empty() {
        Audience::Everyone
    } else {
        Audience::Rooms(to.clone())
    };
    let mut flags = Flags::default();
    flags.volatile = opts.has_flag(BroadcastFlags::Volatile);
    let env = Envelope {
        v: VERSION,
        id: envelope::new_id(),
        ts: envelope::now_ms(),
        origin: origin.to_owned(),
        ns: packet.ns.to_string(),
        tenant,
        event,
        data: None,
        args: Some(items),
        attachments: bins.iter().flatten().cloned().collect(),
        to: names(&to),
        except: names(&except),
        flags,
        trace: None,
        socket: None,
        sender: None,
    };
    Some((env, audience))
}
