//! The in-process bus.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::{Bus, BusFuture, Health, Inbox, Message, PublishError, SubscribeError};

/// An in-process pub/sub hub with Redis's semantics: a message reaches every connected
/// bus subscribed to its channel, at the moment it is published. Several [`MemoryBus`]es
/// connected to one hub behave like several nodes sharing one Redis, which is how routing
/// logic is unit-tested in-process.
#[derive(Debug, Clone, Default)]
pub struct MemoryHub {
    inner: Arc<Mutex<Vec<Subscriber>>>,
    /// The registry: key → (value, expiry).
    registry: Arc<Mutex<HashMap<String, (Bytes, Instant)>>>,
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    channels: HashSet<String>,
    tx: mpsc::Sender<Message>,
}

/// One node's connection to a [`MemoryHub`].
#[derive(Debug)]
pub struct MemoryBus {
    id: u64,
    hub: MemoryHub,
}

impl MemoryHub {
    /// A new, empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects a new bus; its messages arrive on the returned [`Inbox`].
    ///
    /// ```
    /// # tokio_test_block(async {
    /// use bus::{Bus, MemoryHub};
    /// let hub = MemoryHub::new();
    /// let (a, mut inbox) = hub.connect();
    /// let (b, _) = hub.connect();
    /// a.subscribe(vec!["news".to_owned()]).await.unwrap();
    /// assert_eq!(b.publish("news", "hello".into()).await.unwrap(), 1);
    /// assert_eq!(&inbox.recv().await.unwrap().payload[..], b"hello");
    /// # });
    /// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
    /// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    /// # }
    /// ```
    pub fn connect(&self) -> (MemoryBus, Inbox) {
        let (tx, rx) = mpsc::channel(crate::INBOX_CAPACITY);
        let mut subs = self.lock();
        let id = subs.iter().map(|s| s.id + 1).max().unwrap_or(0);
        subs.push(Subscriber {
            id,
            channels: HashSet::new(),
            tx,
        });
        (
            MemoryBus {
                id,
                hub: self.clone(),
            },
            rx,
        )
    }

    /// Every channel at least one bus is subscribed to, like Redis's `PUBSUB CHANNELS`.
    pub fn channels(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .lock()
            .iter()
            .flat_map(|s| s.channels.iter().cloned())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        all.sort();
        all
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<String, (Bytes, Instant)>> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Subscriber>> {
        // The critical sections cannot panic half-way, so a poisoned lock still holds
        // consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MemoryBus {
    fn update(&self, f: impl FnOnce(&mut HashSet<String>)) -> Result<(), SubscribeError> {
        let mut subs = self.hub.lock();
        let sub = subs
            .iter_mut()
            .find(|s| s.id == self.id)
            .ok_or(SubscribeError::Closed)?;
        f(&mut sub.channels);
        Ok(())
    }
}

impl Drop for MemoryBus {
    fn drop(&mut self) {
        self.hub.lock().retain(|s| s.id != self.id);
    }
}

impl Bus for MemoryBus {
    fn publish(&self, channel: &str, payload: Bytes) -> BusFuture<Result<usize, PublishError>> {
        let channel: Arc<str> = Arc::from(channel);
        let mut delivered = 0;
        for sub in self.hub.lock().iter() {
            if sub.channels.contains(&*channel) {
                let msg = Message {
                    channel: channel.clone(),
                    payload: payload.clone(),
                };
                // A closed inbox is a node that is shutting down, a full one a node that
                // cannot keep up: like Redis, skip it (the count says so).
                if sub.tx.try_send(msg).is_ok() {
                    delivered += 1;
                }
            }
        }
        Box::pin(std::future::ready(Ok(delivered)))
    }

    fn subscribe(&self, channels: Vec<String>) -> BusFuture<Result<(), SubscribeError>> {
        let res = self.update(|set| set.extend(channels));
        Box::pin(std::future::ready(res))
    }

    fn unsubscribe(&self, channels: Vec<String>) -> BusFuture<Result<(), SubscribeError>> {
        let res = self.update(|set| {
            for c in &channels {
                set.remove(c);
            }
        });
        Box::pin(std::future::ready(res))
    }

    fn subscriber_count(&self, channel: &str) -> BusFuture<Result<usize, PublishError>> {
        let count = self
            .hub
            .lock()
            .iter()
            .filter(|s| s.channels.contains(channel))
            .count();
        Box::pin(std::future::ready(Ok(count)))
    }

    fn register(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> BusFuture<Result<(), PublishError>> {
        self.hub
            .registry()
            .insert(key.to_owned(), (value, Instant::now() + ttl));
        Box::pin(std::future::ready(Ok(())))
    }

    fn unregister(&self, key: &str) -> BusFuture<Result<(), PublishError>> {
        self.hub.registry().remove(key);
        Box::pin(std::future::ready(Ok(())))
    }

    fn registered(&self, prefix: &str) -> BusFuture<Result<Vec<Bytes>, PublishError>> {
        let now = Instant::now();
        let mut registry = self.hub.registry();
        registry.retain(|_, (_, expiry)| *expiry > now);
        let mut live: Vec<(&String, &Bytes)> = registry
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, _))| (k, v))
            .collect();
        live.sort_by(|a, b| a.0.cmp(b.0));
        let values = live.into_iter().map(|(_, v)| v.clone()).collect();
        Box::pin(std::future::ready(Ok(values)))
    }

    fn health(&self) -> Health {
        let channels = self
            .hub
            .lock()
            .iter()
            .find(|s| s.id == self.id)
            .map_or(0, |s| s.channels.len());
        Health {
            channels,
            ..Health::UP
        }
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_only_to_subscribers_of_the_channel() {
        let hub = MemoryHub::new();
        let (a, mut a_in) = hub.connect();
        let (b, mut b_in) = hub.connect();
        a.subscribe(vec!["x".into(), "y".into()]).await.unwrap();
        b.subscribe(vec!["y".into()]).await.unwrap();
        assert_eq!(hub.channels(), vec!["x".to_owned(), "y".to_owned()]);

        assert_eq!(b.publish("x", Bytes::from_static(b"1")).await.unwrap(), 1);
        assert_eq!(a.publish("y", Bytes::from_static(b"2")).await.unwrap(), 2);
        assert_eq!(a.publish("z", Bytes::from_static(b"3")).await.unwrap(), 0);

        assert_eq!(&a_in.recv().await.unwrap().payload[..], b"1");
        assert_eq!(&a_in.recv().await.unwrap().payload[..], b"2");
        let m = b_in.recv().await.unwrap();
        assert_eq!((&*m.channel, &m.payload[..]), ("y", &b"2"[..]));
        assert!(a_in.try_recv().is_err() && b_in.try_recv().is_err());

        a.unsubscribe(vec!["x".into(), "y".into()]).await.unwrap();
        assert_eq!(hub.channels(), vec!["y".to_owned()]);
        drop(b);
        assert!(hub.channels().is_empty());
    }
}
