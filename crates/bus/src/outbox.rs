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
#[derive(Debug, Clone)]
pub struct Outbox {
    bus: Arc<dyn Bus>,
    channels: Channels,
}

impl Outbox {
    /// An outbox over `bus` with `channels` naming.
    pub fn new(bus: Arc<dyn Bus>, channels: Channels) -> Self {
        Self { bus, channels }
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
        Ok(self.bus.publish(&channel, payload).await?)
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
