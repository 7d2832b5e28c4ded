//! Envelope → channel → bus.

use std::sync::Arc;

use bytes::Bytes;
use envelope::{EncodeError, Envelope};
use rooms::{Channels, Room, RoomError};

use crate::{Bus, PublishError};

/// Why an envelope could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// A target or excluded room name is invalid.
    #[error("invalid room {name:?}: {source}")]
    InvalidRoom {
        /// The offending name.
        name: String,
        /// Why it is invalid.
        source: RoomError,
    },
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

    /// Validates the rooms of `env` and publishes it once. Returns the number of
    /// subscribers that received it, when the transport knows.
    pub async fn send(&self, env: &Envelope) -> Result<usize, SendError> {
        let to = parse_rooms(&env.to)?;
        parse_rooms(&env.except)?;
        self.send_to(env, &to).await
    }

    /// Publishes `env` whose rooms the caller already validated; `to` are its target
    /// rooms, parsed. Saves re-parsing every room name on a path that validated them.
    pub async fn send_to(&self, env: &Envelope, to: &[Room]) -> Result<usize, SendError> {
        let channel = self.channels.for_target(&env.ns, to);
        let payload = Bytes::from(env.to_msgpack()?);
        Ok(self.bus.publish(&channel, payload).await?)
    }
}

/// Parses room names, reporting the first invalid one.
pub fn parse_rooms(names: &[String]) -> Result<Vec<Room>, SendError> {
    names
        .iter()
        .map(|name| {
            Room::parse(name).map_err(|source| SendError::InvalidRoom {
                name: name.clone(),
                source,
            })
        })
        .collect()
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
        node.subscribe(vec![channels.room("/", &Room::user("1").unwrap())])
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

        let bad = Envelope::new("svc", "x", serde_json::Value::Null).to_rooms(["nokind"]);
        assert!(matches!(
            outbox.send(&bad).await,
            Err(SendError::InvalidRoom { .. })
        ));
    }
}
