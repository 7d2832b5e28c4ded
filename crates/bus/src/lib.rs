//! Moving envelopes between Roomcast nodes and publishers.
//!
//! The [`Bus`] trait is the transport: publish bytes on a named channel, subscribe and
//! unsubscribe channels (a subscribe returns only once the transport confirmed it), and
//! report [`Health`]. Messages for subscribed channels arrive on the [`Inbox`] handed out
//! when the bus is created. [`MemoryHub`] is the in-process implementation for a single
//! node and for tests; the Redis implementation shares the trait so the rest of the system
//! cannot tell them apart. [`Outbox`] turns an [`envelope::Envelope`] into one publish on
//! the right channel.
//!
//! The bus knows nothing about Socket.IO or HTTP.
//!
//! # How it works
//!
//! Channel names come from [`rooms::Channels`]; payloads on room and namespace channels
//! are MessagePack envelopes written by [`Outbox`] (JSON envelopes are accepted too, so
//! any language can publish). Delivery is at most once: pub/sub keeps nothing for a
//! subscriber that is not connected.

mod cluster;
mod commands;
mod endpoint;
mod health;
mod memory;
mod outbox;
mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

pub use cluster::{RedisClusterBus, RedisClusterConfig};
pub use endpoint::{
    RedisConfig, RedisSetupError, RedisTls, SentinelConfig, mask_url, redis_client, resolve_client,
};
pub use health::{Health, LinkState};
pub use memory::{MemoryBus, MemoryHub};
pub use outbox::{HistoryError, HistoryPage, Outbox, Recording, SendError, targets};
pub use redis::RedisBus;

/// A message received on a subscribed channel.
#[derive(Debug, Clone)]
pub struct Message {
    /// The channel it was published on.
    pub channel: Arc<str>,
    /// The raw payload.
    pub payload: Bytes,
}

/// Where a bus delivers the messages of the channels it is subscribed to. Bounded
/// ([`INBOX_CAPACITY`]): a node that cannot keep up makes its Redis subscriber stop
/// reading (Redis then buffers, up to its `client-output-buffer-limit pubsub`, and drops
/// the connection past it — which is logged and healed by the reconnect) instead of
/// growing without bound. `len()` is the backlog.
pub type Inbox = mpsc::Receiver<Message>;

/// Messages an [`Inbox`] holds before its bus waits (Redis) or drops (in-memory).
pub const INBOX_CAPACITY: usize = 65_536;

/// Why a publish failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The transport is unreachable (after the configured retries).
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The bus was shut down.
    #[error("bus closed")]
    Closed,
    /// This bus cannot do what was asked.
    #[error("not supported by this bus: {0}")]
    Unsupported(&'static str),
}

/// Why a subscribe or unsubscribe failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The transport is unreachable; the subscription is remembered and applied when it
    /// returns.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The transport did not confirm in time; the subscription is remembered.
    #[error("bus did not confirm the subscription in time")]
    Timeout,
    /// The bus was shut down.
    #[error("bus closed")]
    Closed,
}

/// The future a bus operation returns. It owns everything it needs, so it can be awaited
/// after the lock that ordered the operation has been released.
pub type BusFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A pub/sub transport between nodes.
///
/// Where a recorded publish keeps its history (see [`Bus::publish_recorded`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The stream's key.
    pub stream: String,
    /// About this many entries are kept.
    pub max_len: usize,
    /// The stream expires this long after its last entry.
    pub ttl: Duration,
}

/// The first byte of a recorded message on a channel: `o<offset> <payload>`. Never the
/// first byte of an envelope (JSON starts with `{`, MessagePack maps with `0x80`-`0x8f`
/// or `0xde`/`0xdf`).
pub const RECORDED_MARK: u8 = b'o';

/// Splits a recorded message into its offset and payload; `None` for anything else.
///
/// ```
/// assert_eq!(bus::recorded_frame(b"o1700000000000-3 {}"), Some(("1700000000000-3", &b"{}"[..])));
/// assert_eq!(bus::recorded_frame(b"{}"), None);
/// ```
pub fn recorded_frame(message: &[u8]) -> Option<(&str, &[u8])> {
    let rest = message.strip_prefix(&[RECORDED_MARK])?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let offset = std::str::from_utf8(&rest[..space]).ok()?;
    is_offset(offset).then_some((offset, &rest[space + 1..]))
}

/// Whether `s` has the form of a stream offset (`<ms>-<seq>`, digits).
pub fn is_offset(s: &str) -> bool {
    s.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.len() <= 20
            && seq.len() <= 20
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Orders two stream offsets (`<ms>-<seq>`); offsets that do not parse compare as zero.
pub fn offset_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> (u64, u64) {
        s.split_once('-')
            .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)))
            .unwrap_or((0, 0))
    }
    parts(a).cmp(&parts(b))
}

/// Every operation is *ordered when it is called*, not when its future is first polled:
/// two calls made one after the other reach the transport in that order even if their
/// futures are awaited in another order (or not at all). Callers rely on this to compute
/// subscribe/unsubscribe deltas under a lock and await the confirmation outside it.
pub trait Bus: Send + Sync + fmt::Debug + 'static {
    /// Publishes `payload` on `channel`; resolves to how many subscribers received it,
    /// when the transport knows. Publishes from one bus keep their order.
    fn publish(&self, channel: &str, payload: Bytes) -> BusFuture<Result<usize, PublishError>>;

    /// Subscribes to `channels`; resolves once the transport has confirmed, so a message
    /// published after that is delivered.
    fn subscribe(&self, channels: Vec<String>) -> BusFuture<Result<(), SubscribeError>>;

    /// Unsubscribes from `channels`.
    fn unsubscribe(&self, channels: Vec<String>) -> BusFuture<Result<(), SubscribeError>>;

    /// How many subscribers `channel` has right now (Redis `PUBSUB NUMSUB`). Used to
    /// know how many nodes will answer a cluster-wide request.
    fn subscriber_count(&self, channel: &str) -> BusFuture<Result<usize, PublishError>>;

    /// Stores `value` under `key` for `ttl` (the node registry's heartbeat).
    fn register(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> BusFuture<Result<(), PublishError>>;

    /// Removes `key` (a node leaving the registry on shutdown).
    fn unregister(&self, key: &str) -> BusFuture<Result<(), PublishError>>;

    /// Every live value whose key starts with `prefix`.
    fn registered(&self, prefix: &str) -> BusFuture<Result<Vec<Bytes>, PublishError>>;

    /// Appends one entry (`field` = `value`) to the stream `key`, trimmed to about
    /// `max_len` entries (Redis `XADD key MAXLEN ~ max_len * field value`); resolves to the
    /// entry id once Redis has it. Buses without streams refuse with
    /// [`PublishError::Unsupported`].
    fn append(
        &self,
        key: &str,
        max_len: usize,
        field: &str,
        value: Bytes,
    ) -> BusFuture<Result<String, PublishError>> {
        let _ = (key, max_len, field, value);
        Box::pin(std::future::ready(Err(PublishError::Unsupported(
            "streams need Redis (set REDIS_URL)",
        ))))
    }

    /// A recorded publish (connection state recovery): appends `payload` to the history
    /// stream `history.stream` (trimmed to about `history.max_len` entries, expiring
    /// `history.ttl` after the last append) and publishes it on `channel` framed with the
    /// entry id (see [`recorded_frame`]), both in one atomic step, so the stream's order is
    /// the order every subscriber receives. Resolves to the entry id (the offset). Buses
    /// without streams refuse with [`PublishError::Unsupported`].
    fn publish_recorded(
        &self,
        channel: &str,
        payload: Bytes,
        history: &History,
    ) -> BusFuture<Result<String, PublishError>> {
        let _ = (channel, payload, history);
        Box::pin(std::future::ready(Err(PublishError::Unsupported(
            "connection state recovery needs Redis (set REDIS_URL)",
        ))))
    }

    /// Up to `count` entries of the history stream `stream` from the offset `from`
    /// (inclusive, so a caller sees whether it is still there), oldest first, as
    /// (offset, payload).
    fn history(
        &self,
        stream: &str,
        from: &str,
        count: usize,
    ) -> BusFuture<Result<Vec<(String, Bytes)>, PublishError>> {
        let _ = (stream, from, count);
        Box::pin(std::future::ready(Err(PublishError::Unsupported(
            "history needs Redis (set REDIS_URL)",
        ))))
    }

    /// Reads the value stored under `key` and leaves a tombstone for `ttl` in its place
    /// (atomically): a recovery session is restored once, and
    /// [`Bus::register_owned`] does not bring it back.
    fn take(&self, key: &str, ttl: Duration) -> BusFuture<Result<Option<Bytes>, PublishError>> {
        let _ = (key, ttl);
        Box::pin(std::future::ready(Err(PublishError::Unsupported(
            "sessions need Redis (set REDIS_URL)",
        ))))
    }

    /// Stores `value` under `key` for `ttl` unless another owner's value or a
    /// tombstone ([`Bus::take`]) is there: the current value must be absent or contain
    /// `owner` (a marker unique to the writer). Resolves to whether it was written.
    fn register_owned(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        owner: &str,
    ) -> BusFuture<Result<bool, PublishError>> {
        let _ = (key, value, ttl, owner);
        Box::pin(std::future::ready(Err(PublishError::Unsupported(
            "sessions need Redis (set REDIS_URL)",
        ))))
    }

    /// The key prefix under which keys that are read together (the node registry,
    /// listed with [`Bus::registered`]) must be written: on Redis Cluster a hash tag, so
    /// one shard holds them all; elsewhere `prefix` itself.
    fn colocated(&self, prefix: &str) -> String {
        prefix.to_owned()
    }

    /// Whether keys and channels are spread over shards by hash slot (Redis Cluster):
    /// then what one script touches must share a hash tag (see
    /// [`rooms::Channels::colocating`], which [`Outbox::with_recording`] applies).
    fn is_sharded(&self) -> bool {
        false
    }

    /// Current health of the publishing and subscribing links.
    fn health(&self) -> Health;

    /// A short name for logs and `/health` (`memory`, `redis`).
    fn kind(&self) -> &'static str;
}
