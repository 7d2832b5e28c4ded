//! Envelope → channel → bus.

use std::sync::Arc;

use bytes::Bytes;
use envelope::{EncodeError, Envelope};
use rooms::{Audience, Channels, ScopedRoom, TargetError};

use crate::{Bus, PublishError};

/// Why an envelope could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// A target or excluded room name, or the tenant, is invalid.
    #[error(transparent)]
    InvalidTarget(#[from] TargetError),
    /// The envelope could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The bus refused the publish.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Publishes envelopes on the channel their target maps to (see
/// [`Channels::for_target`]), encoded as MessagePack.
///
/// In namespaces with connection state recovery ([`Outbox::with_recording`]) every
/// envelope is a recorded publish ([`Bus::publish_recorded`]): kept in the namespace's
/// history stream and delivered with its offset.
#[derive(Debug, Clone)]
pub struct Outbox {
    bus: Arc<dyn Bus>,
    channels: Channels,
    recording: Option<Arc<Recording>>,
}

/// Which namespaces keep a history, and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// Namespaces whose messages are recorded.
    pub namespaces: Vec<String>,
    /// About this many messages are kept per namespace.
    pub max_len: usize,
    /// How long a history outlives its last message (the recovery window).
    pub ttl: std::time::Duration,
}

impl Outbox {
    /// An outbox over `bus` with `channels` naming.
    pub fn new(bus: Arc<dyn Bus>, channels: Channels) -> Self {
        Self {
            bus,
            channels,
            recording: None,
        }
    }

    /// Records the messages of `recording.namespaces` (none when empty). On a sharded bus
    /// (Redis Cluster) their channels and history share a hash tag
    /// ([`Channels::colocating`]): a recorded publish appends and publishes on one shard in
    /// one step, so the history's order is the order of delivery.
    pub fn with_recording(mut self, recording: Recording) -> Self {
        if self.bus.is_sharded() {
            self.channels = self.channels.clone().colocating(&recording.namespaces);
        }
        self.recording = (!recording.namespaces.is_empty()).then(|| Arc::new(recording));
        self
    }

    /// What is recorded, if anything.
    pub fn recording(&self) -> Option<&Recording> {
        self.recording.as_deref()
    }

    /// Where messages of `ns` are recorded, if they are.
    pub fn history(&self, ns: &str) -> Option<crate::History> {
        let recording = self.recording.as_ref()?;
        recording
            .namespaces
            .iter()
            .any(|n| n == ns)
            .then(|| crate::History {
                stream: self.channels.history(ns),
                max_len: recording.max_len,
                ttl: recording.ttl,
            })
    }

    /// The bus underneath.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// The channel naming in use.
    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    /// Validates the tenant and rooms of `env` and publishes it once. Returns the number
    /// of subscribers that received it, when the transport knows.
    pub async fn send(&self, env: &Envelope) -> Result<usize, SendError> {
        let (to, _) = targets(env)?;
        self.send_to(env, &to).await
    }

    /// Publishes `env` whose targets the caller already resolved (see [`targets`]).
    /// Saves re-parsing every room name on a path that validated them.
    pub async fn send_to(&self, env: &Envelope, to: &Audience) -> Result<usize, SendError> {
        let channel = self.channels.for_target(&env.ns, to);
        let payload = Bytes::from(env.to_msgpack()?);
        if let Some(history) = self.history(&env.ns) {
            self.bus
                .publish_recorded(&channel, payload, &history)
                .await?;
            // Recorded publishes do not count their receivers.
            return Ok(0);
        }
        Ok(self.bus.publish(&channel, payload).await?)
    }

    /// Whether `env` is recorded (its namespace keeps a history): then every node, the
    /// publishing one included, delivers it from the bus, in the history's order.
    pub fn records(&self, ns: &str) -> bool {
        self.recording
            .as_ref()
            .is_some_and(|r| r.namespaces.iter().any(|n| n == ns))
    }
}

/// One page of a room's history ([`Outbox::room_history`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// The messages addressed to the room, oldest first, with their offsets.
    pub messages: Vec<(String, Envelope)>,
    /// Where the next page starts (pass it as `since`); `None` when the history was read
    /// to its end.
    pub next: Option<String>,
}

/// Why a history could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The namespace keeps no history (not a recovery namespace).
    #[error("namespace {0:?} keeps no history (it is not one of RECOVERY_NAMESPACES)")]
    NotRecorded(String),
    /// The tenant or room is invalid.
    #[error(transparent)]
    InvalidTarget(#[from] TargetError),
    /// The bus could not read it.
    #[error(transparent)]
    Bus(#[from] PublishError),
}

impl Outbox {
    /// Up to `limit` messages addressed to `room` (of `tenant`, in namespace `ns`) after
    /// the offset `since` (exclusive; `None`: from the oldest kept), oldest first. Reads
    /// at most ten times `limit` entries of the namespace history per call; `next` then
    /// says where to go on.
    pub async fn room_history(
        &self,
        ns: &str,
        tenant: Option<&str>,
        room: &str,
        since: Option<&str>,
        limit: usize,
    ) -> Result<HistoryPage, HistoryError> {
        let history = self
            .history(ns)
            .ok_or_else(|| HistoryError::NotRecorded(ns.to_owned()))?;
        let (target, _) = rooms::resolve_targets(tenant, &[room.to_owned()], &[])?;
        let Audience::Rooms(target) = target else {
            return Err(HistoryError::NotRecorded(ns.to_owned()));
        };
        let limit = limit.clamp(1, 1000);
        let budget = limit.saturating_mul(10);
        let mut from = since.unwrap_or("-").to_owned();
        let mut messages = Vec::new();
        let mut read = 0;
        loop {
            let page = self.bus.history(&history.stream, &from, limit + 1).await?;
            let full = page.len() > limit;
            for (id, bytes) in page {
                if from != "-" && crate::offset_cmp(&id, &from).is_le() {
                    continue;
                }
                read += 1;
                from = id.clone();
                let Ok(env) = Envelope::decode(&bytes, envelope::Limits::default()) else {
                    continue;
                };
                let addressed = env.socket.is_none()
                    && targets(&env).is_ok_and(|(to, _)| match to {
                        Audience::Rooms(rooms) => rooms.iter().any(|r| target.contains(r)),
                        Audience::Everyone => false,
                    });
                if addressed {
                    messages.push((id, env));
                    if messages.len() == limit {
                        return Ok(HistoryPage {
                            messages,
                            next: Some(from),
                        });
                    }
                }
            }
            if !full {
                return Ok(HistoryPage {
                    messages,
                    next: None,
                });
            }
            if read >= budget {
                return Ok(HistoryPage {
                    messages,
                    next: Some(from),
                });
            }
        }
    }
}

/// Resolves the audience and the excluded rooms of `env` from its tenant, `to` and
/// `except` (see [`rooms::resolve_targets`]), reporting the first invalid one.
pub fn targets(env: &Envelope) -> Result<(Audience, Vec<ScopedRoom>), SendError> {
    Ok(rooms::resolve_targets(
        env.tenant.as_deref(),
        &env.to,
        &env.except,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryHub;
    use envelope::Limits;

    #[tokio::test]
    async fn sends_on_the_target_channel() {
        let hub = MemoryHub::new();
        let (node, mut inbox) = hub.connect();
        let (publisher, _) = hub.connect();
        let channels = Channels::new("t");
        let acme = rooms::TenantId::parse("acme").unwrap();
        let user = rooms::Room::user("1").unwrap();
        node.subscribe(vec![
            channels.room("/", &ScopedRoom::new(None, &user).unwrap()),
            channels.room("/", &ScopedRoom::new(Some(&acme), &user).unwrap()),
        ])
        .await
        .unwrap();
        let outbox = Outbox::new(Arc::new(publisher), channels);

        let env = Envelope::new("svc", "hello", serde_json::json!({"n": 1})).to_rooms(["user:1"]);
        assert_eq!(outbox.send(&env).await.unwrap(), 1);
        let msg = inbox.recv().await.unwrap();
        assert_eq!(&*msg.channel, "t:room:/#user:1");
        assert_eq!(
            Envelope::decode(&msg.payload, Limits::default()).unwrap(),
            env
        );

        // The same room name in a tenant is another channel.
        let env = env.in_tenant("acme");
        assert_eq!(outbox.send(&env).await.unwrap(), 1);
        assert_eq!(
            &*inbox.recv().await.unwrap().channel,
            "t:room:/#@acme/user:1"
        );

        let bad = Envelope::new("svc", "x", serde_json::Value::Null).to_rooms(["nokind"]);
        assert!(matches!(
            outbox.send(&bad).await,
            Err(SendError::InvalidTarget(_))
        ));
    }
}
