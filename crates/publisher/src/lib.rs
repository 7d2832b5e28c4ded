//! The SDK other services embed to push events to Roomcast clients: pick a target
//! (`to_user`, `to_tenant`, `to_doc`, `to_org`, `to_room`, `broadcast`), optionally a
//! namespace and exclusions, and `emit` any `Serialize` payload. Every gateway node with
//! members in the target rooms delivers it.
//!
//! The publisher works over any [`bus::Bus`]; with the in-memory bus it reaches nodes in
//! the same process (tests, single-binary setups). It does not run a server.
//!
//! ```
//! # async fn demo() -> Result<(), publisher::PublishError> {
//! use std::sync::Arc;
//! let hub = bus::MemoryHub::new();
//! let (bus, _inbox) = hub.connect();
//! let publisher = publisher::Publisher::new(Arc::new(bus), rooms::Channels::default(), "billing");
//! let id = publisher
//!     .to_user("john@example.com")
//!     .emit("invoice.paid", &serde_json::json!({"invoice": "INV-7"}))
//!     .await?;
//! assert!(!id.is_empty());
//! # Ok(()) }
//! ```

mod consumer;
mod presence;
mod webhook;

pub use consumer::{ClientEvent, ConsumeError, Consumer, Delivery};
pub use envelope::Presence;
pub use envelope::{SocketAction, SocketInfo, SocketTarget};
pub use presence::{ANSWER_WITHIN, PresenceError, Sockets};
pub use webhook::{SIGNATURE_HEADER, SignatureError, verify_signature};

use std::sync::Arc;

use bus::{Bus, Outbox, SendError};
use envelope::{Envelope, Flags};
use rooms::{Channels, Room, RoomError};
use serde::Serialize;

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// A target or excluded room is invalid.
    #[error("invalid room: {0}")]
    InvalidRoom(#[from] RoomError),
    /// The payload cannot be represented as JSON.
    #[error("cannot serialize the payload: {0}")]
    Payload(#[from] serde_json::Error),
    /// The namespace does not start with `/`.
    #[error("namespace {0:?} must start with '/'")]
    InvalidNamespace(String),
    /// The bus refused the message (for Redis: unreachable for the whole retry budget).
    #[error(transparent)]
    Send(#[from] SendError),
    /// The Redis URL is unusable.
    #[error("{0}")]
    Connect(String),
    /// The tenant id is invalid, or a `tenant:` target belongs to another tenant.
    #[error("invalid tenant: {0}")]
    InvalidTenant(#[from] rooms::TenantError),
}

/// Publishes events onto the bus as one origin (a service name).
#[derive(Debug, Clone)]
pub struct Publisher {
    outbox: Outbox,
    origin: Arc<str>,
    ns: Arc<str>,
    tenant: Option<Arc<str>>,
    /// Where presence answers arrive; `None` without an inbox.
    replies: Option<Arc<presence::Replies>>,
}

impl Publisher {
    /// A publisher over `bus`, naming channels with `channels` (the same prefix as the
    /// gateways), that signs its messages with `origin`.
    pub fn new(bus: Arc<dyn Bus>, channels: Channels, origin: &str) -> Self {
        Self {
            outbox: Outbox::new(bus, channels),
            origin: Arc::from(origin),
            ns: Arc::from("/"),
            tenant: None,
            replies: None,
        }
    }

    /// The same publisher, receiving on `inbox` (the one its bus was created with) the
    /// answers to [`Publisher::presence`]. [`Publisher::connect`] does this itself.
    ///
    /// ```
    /// # async fn demo() {
    /// let (bus, inbox) = bus::MemoryHub::new().connect();
    /// let p = publisher::Publisher::new(std::sync::Arc::new(bus), rooms::Channels::default(), "crm")
    ///     .with_inbox(inbox);
    /// # }
    /// ```
    pub fn with_inbox(self, inbox: bus::Inbox) -> Self {
        Self {
            replies: Some(Arc::new(presence::Replies::new(inbox))),
            ..self
        }
    }

    /// A publisher over Redis at `redis_url` (`redis://`, `rediss://`), with the default
    /// channel prefix `roomcast` and origin `publisher`. Returns at once; Redis is
    /// contacted on the first emit. Each emit retries for up to `retry_budget` while Redis
    /// is unreachable, then fails with [`PublishError::Send`] — never silently.
    ///
    /// Emits from one publisher reach each room in the order they were made.
    pub fn connect(
        redis_url: &str,
        retry_budget: std::time::Duration,
    ) -> Result<Self, PublishError> {
        Self::connect_with(bus::RedisConfig::new(redis_url).with_publish_retry_budget(retry_budget))
    }

    /// [`Publisher::connect`] with a whole Redis configuration: `rediss://` with a private
    /// CA or a client certificate, reconnect and retry settings.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let tls = bus::RedisTls::from_files(Some(std::path::Path::new("/etc/roomcast/redis-ca.pem")), None)?;
    /// let config = bus::RedisConfig::new("rediss://redis.internal:6380").with_tls(tls);
    /// let publisher = publisher::Publisher::connect_with(config)?;
    /// # Ok(()) }
    /// ```
    pub fn connect_with(config: bus::RedisConfig) -> Result<Self, PublishError> {
        // The inbox receives only presence answers, and only once one was asked.
        let (bus, inbox) =
            bus::RedisBus::connect(config).map_err(|e| PublishError::Connect(e.to_string()))?;
        Ok(Self::new(Arc::new(bus), Channels::default(), "publisher").with_inbox(inbox))
    }

    /// A publisher over Redis Cluster (the gateways' `REDIS_CLUSTER_NODES`): rooms are
    /// published with `SPUBLISH` to the shard that owns each room's channel.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), publisher::PublishError> {
    /// let seeds = vec!["redis://10.0.0.1:6379".to_owned(), "redis://10.0.0.2:6379".to_owned()];
    /// let publisher = publisher::Publisher::connect_cluster(bus::RedisClusterConfig::new(seeds))?;
    /// # Ok(()) }
    /// ```
    pub fn connect_cluster(config: bus::RedisClusterConfig) -> Result<Self, PublishError> {
        let (bus, inbox) = bus::RedisClusterBus::connect(config)
            .map_err(|e| PublishError::Connect(e.to_string()))?;
        Ok(Self::new(Arc::new(bus), Channels::default(), "publisher").with_inbox(inbox))
    }

    /// The same publisher with another origin (the service name in every envelope).
    pub fn with_origin(&self, origin: &str) -> Self {
        Self {
            origin: Arc::from(origin),
            ..self.clone()
        }
    }

    /// The same publisher with another channel prefix (it must match the gateways').
    pub fn with_channel_prefix(&self, prefix: &str) -> Self {
        let mut outbox = Outbox::new(self.outbox.bus().clone(), Channels::new(prefix));
        if let Some(recording) = self.outbox.recording() {
            outbox = outbox.with_recording(recording.clone());
        }
        Self {
            outbox,
            ..self.clone()
        }
    }

    /// The same publisher, recording what it emits into `namespaces` for connection
    /// state recovery, as the gateways do (give it the gateways' `RECOVERY_NAMESPACES`,
    /// `RECOVERY_WINDOW_MS` and `RECOVERY_MAX_MESSAGES`): clients that were away then get
    /// these messages too when they recover.
    ///
    /// ```
    /// # fn demo(p: publisher::Publisher) {
    /// let p = p.with_recovery(&["/"], std::time::Duration::from_secs(120), 10_000);
    /// # }
    /// ```
    pub fn with_recovery(
        &self,
        namespaces: &[&str],
        window: std::time::Duration,
        max_len: usize,
    ) -> Self {
        Self {
            outbox: self.outbox.clone().with_recording(bus::Recording {
                namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
                max_len,
                ttl: window,
            }),
            ..self.clone()
        }
    }

    /// The same publisher, emitting into namespace `ns` (default `/`).
    pub fn in_namespace(&self, ns: &str) -> Self {
        Self {
            ns: Arc::from(ns),
            ..self.clone()
        }
    }

    /// The same publisher, addressing the rooms of tenant `tenant`: `to_user("admin")`
    /// then reaches tenant `tenant`'s `admin` only, and `broadcast()` every socket of the
    /// tenant. Without a tenant, rooms are in the shared scope (sockets whose token names
    /// no tenant).
    ///
    /// ```
    /// # async fn demo(p: publisher::Publisher) -> Result<(), publisher::PublishError> {
    /// p.in_tenant("acme").to_doc("Task", "TASK-1").emit("doc_update", &1).await?;
    /// # Ok(()) }
    /// ```
    pub fn in_tenant(&self, tenant: &str) -> Self {
        Self {
            tenant: Some(Arc::from(tenant)),
            ..self.clone()
        }
    }

    /// One page of the messages addressed to `room` (in this publisher's namespace and
    /// tenant) after the offset `since`, oldest first, from the namespace's recovery
    /// history: for apps that catch up by themselves. Needs [`Publisher::with_recovery`]
    /// naming the namespace.
    ///
    /// ```
    /// # async fn demo(p: publisher::Publisher) -> Result<(), bus::HistoryError> {
    /// let page = p.in_tenant("acme").history("doc:Task:1", None, 100).await?;
    /// for (offset, message) in &page.messages {
    ///     println!("{offset}: {}", message.event);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn history(
        &self,
        room: &str,
        since: Option<&str>,
        limit: usize,
    ) -> Result<bus::HistoryPage, bus::HistoryError> {
        self.outbox
            .room_history(&self.ns, self.tenant.as_deref(), room, since, limit)
            .await
    }

    /// Who is in `room` (in this publisher's namespace and tenant), cluster-wide: every
    /// gateway node answers for its own sockets, within [`ANSWER_WITHIN`]; a node that
    /// does not (crashed, partitioned) is left out and `nodes_answered` is below
    /// `nodes_expected`. Whether a user is online is the presence of `user:{id}`.
    ///
    /// ```
    /// # async fn demo(p: publisher::Publisher) -> Result<(), publisher::PresenceError> {
    /// let here = p.in_tenant("acme").presence("doc:Task:1").await?;
    /// for (user, sockets) in &here.users {
    ///     println!("{user} ({sockets} tabs)");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn presence(&self, room: &str) -> Result<Presence, PresenceError> {
        let replies = self.replies.as_ref().ok_or(PresenceError::NoInbox)?;
        let room = Room::parse(room).map_err(|e| PresenceError::InvalidRoom(e.to_string()))?;
        let tenant = self.tenant_id()?;
        let scoped = rooms::ScopedRoom::new(tenant.as_ref(), &room)
            .map_err(|e| PresenceError::InvalidRoom(e.to_string()))?;
        replies
            .ask(self.outbox.bus(), self.outbox.channels(), &self.ns, &scoped)
            .await
    }

    /// This publisher's tenant, checked.
    fn tenant_id(&self) -> Result<Option<rooms::TenantId>, PresenceError> {
        self.tenant
            .as_deref()
            .map(rooms::TenantId::parse)
            .transpose()
            .map_err(|e| PresenceError::InvalidRoom(e.to_string()))
    }

    /// Acts on connected sockets, cluster-wide (the gateways' server API): the sockets
    /// `target` names in this publisher's namespace and tenant are listed, disconnected
    /// with a reason they receive, or made to join or leave rooms, by every node that
    /// answers within [`ANSWER_WITHIN`].
    ///
    /// ```
    /// # async fn demo(p: publisher::Publisher) -> Result<(), publisher::PresenceError> {
    /// use publisher::{SocketAction, SocketTarget};
    /// let acme = p.in_tenant("acme");
    /// let kicked = acme
    ///     .act_on_sockets(
    ///         SocketTarget::User("ann".into()),
    ///         SocketAction::Disconnect { reason: "account suspended".into() },
    ///     )
    ///     .await?;
    /// println!("{} sockets disconnected", kicked.sockets.len());
    /// acme.act_on_sockets(
    ///     SocketTarget::User("bob".into()),
    ///     SocketAction::Join { rooms: vec!["doc:Task:1".into()] },
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn act_on_sockets(
        &self,
        target: SocketTarget,
        action: SocketAction,
    ) -> Result<Sockets, PresenceError> {
        let replies = self.replies.as_ref().ok_or(PresenceError::NoInbox)?;
        let tenant = self.tenant_id()?;
        let check = |room: &str| {
            Room::parse(room)
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    rooms::ScopedRoom::new(tenant.as_ref(), &r).map_err(|e| e.to_string())
                })
                .map_err(PresenceError::InvalidRoom)
        };
        match &target {
            SocketTarget::User(user) => drop(check(&format!("user:{user}"))?),
            SocketTarget::Room(room) => drop(check(room)?),
            _ => {}
        }
        if let SocketAction::Join { rooms } | SocketAction::Leave { rooms } = &action {
            for room in rooms {
                check(room)?;
            }
        }
        replies
            .sockets(
                self.outbox.bus(),
                self.outbox.channels(),
                &self.ns,
                self.tenant.as_deref().map(str::to_owned),
                target,
                action,
            )
            .await
    }

    /// The user who sent `event` (a [`ClientEvent`] from a [`Consumer`]), in its
    /// namespace and tenant: every socket of that user.
    pub fn reply_to_user(&self, event: &ClientEvent) -> Emit<'_> {
        let mut emit = self.target(Room::user(&event.user));
        emit.ns = Some(event.ns.clone());
        emit.tenant = Some(event.tenant.clone());
        emit
    }

    /// The one socket that sent `event` (on whichever node it is connected to).
    pub fn reply_to_socket(&self, event: &ClientEvent) -> Emit<'_> {
        let mut emit = self.reply_to_user(event);
        emit.socket = Some(event.sid.clone());
        emit
    }

    /// Collects emits to publish together after a database transaction commits: nothing
    /// is sent until [`Batch::commit`]; dropping the batch (a rollback) sends nothing.
    ///
    /// ```
    /// # async fn demo(p: publisher::Publisher) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut batch = p.batch();
    /// p.to_doc("Task", "T-1").stage(&mut batch, "doc_update", &1)?;
    /// p.to_user("ann").stage(&mut batch, "notification", &"T-1 changed")?;
    /// // … the transaction commits:
    /// let ids = batch.commit().await?;
    /// assert_eq!(ids.len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn batch(&self) -> Batch {
        Batch {
            outbox: self.outbox.clone(),
            staged: Vec::new(),
        }
    }

    /// Every socket of user `id` (`user:{id}`).
    pub fn to_user(&self, id: &str) -> Emit<'_> {
        self.target(Room::user(id))
    }

    /// Every socket of tenant `id` (`tenant:{id}`).
    pub fn to_tenant(&self, id: &str) -> Emit<'_> {
        self.target(Room::tenant(id))
    }

    /// Subscribers of a document (`doc:{doctype}:{name}`).
    pub fn to_doc(&self, doctype: &str, name: &str) -> Emit<'_> {
        self.target(Room::doc(doctype, name))
    }

    /// Members of an organisation (`org:{name}`).
    pub fn to_org(&self, name: &str) -> Emit<'_> {
        self.target(Room::org(name))
    }

    /// Any room by its full name (`room:lobby`, `company:42`).
    pub fn to_room(&self, room: &str) -> Emit<'_> {
        self.target(Room::parse(room))
    }

    /// Every socket in the namespace: of the tenant when [`Publisher::in_tenant`] named
    /// one, of every tenant otherwise.
    pub fn broadcast(&self) -> Emit<'_> {
        Emit {
            publisher: self,
            to: Ok(Vec::new()),
            except: Ok(Vec::new()),
            flags: Flags::default(),
            trace: None,
            socket: None,
            ns: None,
            tenant: None,
        }
    }

    fn target(&self, room: Result<Room, RoomError>) -> Emit<'_> {
        Emit {
            publisher: self,
            to: room.map(|r| vec![r]),
            except: Ok(Vec::new()),
            flags: Flags::default(),
            trace: None,
            socket: None,
            ns: None,
            tenant: None,
        }
    }
}

/// One event being addressed; finish it with [`Emit::emit`].
#[derive(Debug)]
#[must_use = "nothing is sent until `emit` is awaited"]
pub struct Emit<'a> {
    publisher: &'a Publisher,
    to: Result<Vec<Room>, RoomError>,
    except: Result<Vec<Room>, RoomError>,
    flags: Flags,
    trace: Option<String>,
    socket: Option<String>,
    /// Overrides the publisher's namespace.
    ns: Option<String>,
    /// Overrides the publisher's tenant (`Some(None)`: the shared scope).
    tenant: Option<Option<String>>,
}

impl Emit<'_> {
    /// Also deliver to `room` (each socket still receives the event once).
    pub fn and_room(mut self, room: &str) -> Self {
        if let Ok(to) = self.to.as_mut() {
            match Room::parse(room) {
                Ok(r) => to.push(r),
                Err(e) => self.to = Err(e),
            }
        }
        self
    }

    /// Skip the members of `room`.
    pub fn except(mut self, room: &str) -> Self {
        if let Ok(except) = self.except.as_mut() {
            match Room::parse(room) {
                Ok(r) => except.push(r),
                Err(e) => self.except = Err(e),
            }
        }
        self
    }

    /// Carries the W3C trace context `traceparent` (`00-<trace id>-<span id>-<flags>`,
    /// e.g. from your OpenTelemetry propagator): each gateway node that delivers the
    /// message records its delivery span in that trace.
    pub fn traceparent(mut self, traceparent: &str) -> Self {
        self.trace = Some(traceparent.to_owned());
        self
    }

    /// Allow the event to be dropped for clients whose connection is not ready.
    pub fn volatile(mut self) -> Self {
        self.flags.volatile = true;
        self
    }

    /// Sends `event` with `data` as its single argument; returns the message id.
    pub async fn emit<T: Serialize + ?Sized>(
        self,
        event: &str,
        data: &T,
    ) -> Result<String, PublishError> {
        let data = serde_json::to_value(data)?;
        self.emit_value(event, data).await
    }

    /// Sends `event` with an already-built JSON argument; returns the message id.
    pub async fn emit_value(
        self,
        event: &str,
        data: serde_json::Value,
    ) -> Result<String, PublishError> {
        let outbox = self.publisher.outbox.clone();
        let env = self.envelope(event, data)?;
        outbox.send(&env).await?;
        Ok(env.id)
    }

    /// Adds this emit to `batch` instead of sending it; returns the message id it will
    /// have.
    pub fn stage<T: Serialize + ?Sized>(
        self,
        batch: &mut Batch,
        event: &str,
        data: &T,
    ) -> Result<String, PublishError> {
        let env = self.envelope(event, serde_json::to_value(data)?)?;
        let id = env.id.clone();
        batch.staged.push(env);
        Ok(id)
    }

    fn envelope(self, event: &str, data: serde_json::Value) -> Result<Envelope, PublishError> {
        let p = self.publisher;
        let ns = self.ns.as_deref().unwrap_or(&p.ns);
        if !ns.starts_with('/') {
            return Err(PublishError::InvalidNamespace(ns.to_string()));
        }
        let mut env = Envelope::new(&*p.origin, event, data).in_ns(ns);
        let tenant = match &self.tenant {
            Some(t) => t.clone(),
            None => p.tenant.as_deref().map(str::to_owned),
        };
        if let Some(tenant) = tenant {
            rooms::TenantId::parse(&tenant)?;
            env.tenant = Some(tenant);
        }
        env.to = self.to?.into_iter().map(Room::into_string).collect();
        if env.to.is_empty() {
            env.to = vec![rooms::BROADCAST.to_owned()];
        }
        env.except = self.except?.into_iter().map(Room::into_string).collect();
        env.flags = self.flags;
        env.trace = self.trace;
        env.socket = self.socket;
        Ok(env)
    }
}

/// Emits collected during a transaction ([`Publisher::batch`]), published in order by
/// [`Batch::commit`] and discarded when dropped.
#[derive(Debug)]
#[must_use = "a batch sends nothing until commit() is awaited"]
pub struct Batch {
    outbox: Outbox,
    staged: Vec<Envelope>,
}

/// Why a batch was not (wholly) published.
#[derive(Debug, thiserror::Error)]
#[error("{published} of {total} staged events were published, then: {error}")]
pub struct BatchError {
    /// How many, from the first, were published before the failure.
    pub published: usize,
    /// How many were staged.
    pub total: usize,
    /// The bus's refusal.
    pub error: PublishError,
}

impl Batch {
    /// How many emits are staged.
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Publishes every staged emit, in the order staged; returns their ids. Stops at the
    /// first refusal (Redis unreachable for the whole retry budget) with one error saying
    /// how many were published before it.
    pub async fn commit(self) -> Result<Vec<String>, BatchError> {
        let total = self.staged.len();
        let mut ids = Vec::with_capacity(total);
        for env in &self.staged {
            if let Err(e) = self.outbox.send(env).await {
                return Err(BatchError {
                    published: ids.len(),
                    total,
                    error: e.into(),
                });
            }
            ids.push(env.id.clone());
        }
        Ok(ids)
    }

    /// Discards every staged emit (what dropping the batch does, said explicitly).
    pub fn rollback(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus::{Bus, MemoryHub};
    use envelope::Limits;

    async fn setup() -> (Publisher, bus::Inbox, Channels, bus::MemoryBus) {
        let hub = MemoryHub::new();
        let channels = Channels::new("t");
        let (node, inbox) = hub.connect();
        let (bus, _) = hub.connect();
        (
            Publisher::new(Arc::new(bus), channels.clone(), "svc"),
            inbox,
            channels,
            node,
        )
    }

    #[tokio::test]
    async fn typed_targets_map_to_room_channels() {
        let (p, mut inbox, channels, node) = setup().await;
        let cases: Vec<(Emit<'_>, &str)> = vec![
            (p.to_user("u1"), "user:u1"),
            (p.to_tenant("acme"), "tenant:acme"),
            (p.to_doc("Task", "T-1"), "doc:Task:T-1"),
            (p.to_org("O-1"), "org:O-1"),
            (p.to_room("company:42"), "company:42"),
        ];
        for (emit, room) in cases {
            let scoped = rooms::ScopedRoom::new(None, &Room::parse(room).unwrap()).unwrap();
            let ch = channels.room("/", &scoped);
            node.subscribe(vec![ch.clone()]).await.unwrap();
            let id = emit
                .emit("ev", &serde_json::json!({"r": room}))
                .await
                .unwrap();
            let msg = inbox.recv().await.unwrap();
            assert_eq!(&*msg.channel, ch);
            let env = Envelope::decode(&msg.payload, Limits::default()).unwrap();
            assert_eq!(
                (env.id.as_str(), env.origin.as_str(), env.to.clone()),
                (id.as_str(), "svc", vec![room.to_owned()])
            );
        }
    }

    #[tokio::test]
    async fn namespace_multi_room_and_broadcast_use_the_namespace_channel() {
        let (p, mut inbox, channels, node) = setup().await;
        node.subscribe(vec![channels.namespace("/billing")])
            .await
            .unwrap();
        let billing = p.in_namespace("/billing");
        billing
            .to_user("a")
            .and_room("user:b")
            .except("user:c")
            .volatile()
            .emit("x", &1)
            .await
            .unwrap();
        billing.broadcast().emit("y", "all").await.unwrap();
        let env =
            Envelope::decode(&inbox.recv().await.unwrap().payload, Limits::default()).unwrap();
        assert_eq!(
            (
                env.ns.as_str(),
                env.to.len(),
                env.except.clone(),
                env.flags.volatile
            ),
            ("/billing", 2, vec!["user:c".to_owned()], true)
        );
        let env =
            Envelope::decode(&inbox.recv().await.unwrap().payload, Limits::default()).unwrap();
        assert_eq!(env.to, vec!["*"]);
        assert_eq!(env.event, "y");
    }

    #[tokio::test]
    async fn a_tenant_scopes_every_target() {
        let (p, mut inbox, channels, node) = setup().await;
        let acme = rooms::TenantId::parse("acme").unwrap();
        let scoped = |room: &str| {
            let room = Room::parse(room).unwrap();
            channels.room("/", &rooms::ScopedRoom::new(Some(&acme), &room).unwrap())
        };
        node.subscribe(vec![scoped("user:admin"), scoped("tenant:acme")])
            .await
            .unwrap();
        let acme_p = p.in_tenant("acme");
        acme_p.to_user("admin").emit("a", &1).await.unwrap();
        acme_p.broadcast().emit("b", &2).await.unwrap();
        for (channel, event) in [(scoped("user:admin"), "a"), (scoped("tenant:acme"), "b")] {
            let msg = inbox.recv().await.unwrap();
            assert_eq!(&*msg.channel, channel);
            let env = Envelope::decode(&msg.payload, Limits::default()).unwrap();
            assert_eq!(
                (env.tenant.as_deref(), env.event.as_str()),
                (Some("acme"), event)
            );
        }
        assert!(matches!(
            acme_p.to_tenant("globex").emit("e", &1).await,
            Err(PublishError::Send(_))
        ));
        assert!(matches!(
            p.in_tenant("").to_user("a").emit("e", &1).await,
            Err(PublishError::InvalidTenant(_))
        ));
    }

    #[tokio::test]
    async fn invalid_input_is_refused_before_sending() {
        let (p, _inbox, _, _node) = setup().await;
        assert!(matches!(
            p.to_user("").emit("e", &1).await,
            Err(PublishError::InvalidRoom(_))
        ));
        assert!(matches!(
            p.to_room("lobby").emit("e", &1).await,
            Err(PublishError::InvalidRoom(_))
        ));
        assert!(matches!(
            p.broadcast().except("bad").emit("e", &1).await,
            Err(PublishError::InvalidRoom(_))
        ));
        assert!(matches!(
            p.in_namespace("x").broadcast().emit("e", &1).await,
            Err(PublishError::InvalidNamespace(_))
        ));
    }
}
