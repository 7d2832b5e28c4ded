//! What arrives from the bus: the dispatcher task reads the inbox and hands each message
//! to its kind's handler (room and namespace envelopes, recorded deliveries, adapter
//! requests and responses, control messages, the legacy JSON form). It owns no state.

#[allow(
    clippy::wildcard_imports,
    reason = "the cluster's own imports, for its methods"
)]
use super::*;

impl Cluster {
    /// Handles one message from the bus.
    pub async fn on_message(&self, msg: Message) {
        if self.legacy_channel.as_deref() == Some(&*msg.channel) {
            return self.on_legacy(&msg).await;
        }
        if let Some(compat) = &self.compat
            && let Some(source) = compat.source_of(&msg.channel)
        {
            return self.on_compat(compat, source, &msg).await;
        }
        match self.channels().classify(&msg.channel) {
            ChannelKind::Request(ns) => {
                if let Some(adapter) = self.adapter(ns) {
                    adapter.recv_request(&msg.payload).await;
                }
                return;
            }
            ChannelKind::Response(ns) => {
                if let Some(adapter) = self.adapter(ns) {
                    adapter.recv_response(msg.payload);
                }
                return;
            }
            ChannelKind::Control(ns) => return self.on_control(ns, &msg.payload).await,
            ChannelKind::Event | ChannelKind::Other => {}
        }
        if let Some((offset, payload)) = bus::recorded_frame(&msg.payload) {
            return self.on_recorded(&msg.channel, offset, payload).await;
        }
        let env = match Envelope::decode(&msg.payload, self.limits) {
            Ok(env) => env,
            Err(e) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(channel = %msg.channel, error = %e, "dropped an undecodable message");
                return;
            }
        };
        // This node delivered its own messages locally before publishing them.
        if env.origin == self.node_id {
            return;
        }
        // Clocks of different machines: a message "from the future" counts as 0 ms.
        self.metrics
            .bus_latency(envelope::now_ms().saturating_sub(env.ts) as f64);
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        self.deliver_local(&env).await;
    }

    /// A recorded message: delivered by every node, its publisher's included, with its
    /// offset, at the hand-over point with replays.
    pub(in crate::cluster) async fn on_recorded(
        &self,
        channel: &str,
        offset: &str,
        payload: &[u8],
    ) {
        let env = match Envelope::decode(payload, self.limits) {
            Ok(env) => env,
            Err(e) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%channel, error = %e, "dropped an undecodable recorded message");
                return;
            }
        };
        if env.origin != self.node_id {
            self.metrics
                .bus_latency(envelope::now_ms().saturating_sub(env.ts) as f64);
        }
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        let _turn = self.recovery.dispatch.lock().await;
        self.deliver_at(&env, Some(offset)).await;
    }

    /// The legacy JSON form: every node receives it and delivers to its own sockets.
    pub(in crate::cluster) async fn on_legacy(&self, msg: &Message) {
        let legacy = match LegacyMessage::decode(&msg.payload, self.limits) {
            Ok(m) => m,
            Err(e) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(channel = %msg.channel, error = %e, "dropped an undecodable legacy message");
                return;
            }
        };
        let target = legacy_target(
            legacy.room.as_deref(),
            legacy.user.as_deref(),
            legacy.doctype.as_deref(),
            legacy.docname.as_deref(),
        );
        let to = match target {
            Ok(Target::Broadcast) => Vec::new(),
            Ok(Target::Rooms(rooms)) => rooms.into_iter().map(Room::into_string).collect(),
            Err(e) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(channel = %msg.channel, error = %e, "dropped a legacy message with an invalid room");
                return;
            }
        };
        let mut env = Envelope::new("legacy", legacy.event, legacy.message).to_rooms(to);
        if let Some(ns) = legacy.namespace {
            env.ns = ns;
        }
        env.tenant = legacy.tenant;
        if self.require_tenant && env.tenant.is_none() {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(channel = %msg.channel, "dropped a legacy message that names no tenant (REQUIRE_TENANT)");
            return;
        }
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        self.deliver_local(&env).await;
    }

    /// Runs the dispatcher until the bus closes its inbox.
    pub async fn dispatch(self: Arc<Self>, mut inbox: Inbox) {
        while let Some(msg) = inbox.recv().await {
            self.stats
                .inbox_depth
                .store(inbox.len() as u64, Ordering::Relaxed);
            self.on_message(msg).await;
        }
        tracing::debug!("bus inbox closed; dispatcher stopped");
    }
}
