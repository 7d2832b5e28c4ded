//! Publishes on Redis Cluster: one queue per master, so a master that stops answering
//! holds back only the channels whose slots it owns. Each queue is sent in call order —
//! a batch is submitted in order (the connection keeps per-node order), then awaited
//! together — and retried within the configured budget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout};

use super::slots::{Master, SlotMap};
use super::{Connector, RedisClusterConfig, set_health};
use crate::commands::{publish_answer, recorded_publish};
use crate::{Health, LinkState, PublishError};

/// Publishes sent in one go.
const MAX_BATCH: usize = 512;

/// The answer to a publish: receivers, and the entry id of a recorded one.
type Answer = Result<(usize, Option<String>), PublishError>;

pub(super) struct Publish {
    pub(super) channel: String,
    pub(super) payload: Bytes,
    /// Set for a recorded publish.
    pub(super) history: Option<crate::History>,
    pub(super) reply: oneshot::Sender<Answer>,
    pub(super) deadline: Instant,
}

impl crate::commands::Expiring for Publish {
    fn deadline(&self) -> Instant {
        self.deadline
    }

    fn expire(&mut self, why: &str) {
        let reply = std::mem::replace(&mut self.reply, oneshot::channel().0);
        let _ = reply.send(Err(PublishError::Unavailable(why.to_owned())));
    }
}

impl Publish {
    /// The command: `SPUBLISH`, or the recorded-publish script on the history's key.
    fn command(&self) -> (redis::Cmd, RoutingInfo) {
        let (cmd, key) = match &self.history {
            None => {
                let mut cmd = redis::cmd("SPUBLISH");
                cmd.arg(&self.channel).arg(&self.payload[..]);
                (cmd, self.channel.as_str())
            }
            Some(h) => (
                recorded_publish("SPUBLISH", &self.channel, &self.payload, h),
                h.stream.as_str(),
            ),
        };
        // Straight to the master of the slot.
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
            key,
            SlotAddr::Master,
        )));
        (cmd, route)
    }
}

/// Hands each publish to the queue of the master that owns its channel (a queue of its
/// own while the slots are not known yet).
pub(super) async fn run(
    conn: Arc<Connector>,
    config: RedisClusterConfig,
    mut rx: mpsc::Receiver<Publish>,
    mut maps: watch::Receiver<Arc<SlotMap>>,
    health: Arc<Mutex<Health>>,
) {
    let mut queues: HashMap<Option<Master>, mpsc::UnboundedSender<Publish>> = HashMap::new();
    while let Some(p) = rx.recv().await {
        if maps.has_changed().unwrap_or(false) {
            let map = maps.borrow_and_update().clone();
            // Queues of masters that own nothing now finish what they hold and end.
            queues.retain(|m, _| m.as_ref().is_none_or(|m| map.masters().any(|x| x == m)));
        }
        let owner = maps.borrow().owner_of(&p.channel).cloned();
        let queue = queues.entry(owner).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(send_queue(conn.clone(), config.clone(), rx, health.clone()));
            tx
        });
        if let Err(mpsc::error::SendError(p)) = queue.send(p) {
            let _ = p.reply.send(Err(PublishError::Closed));
        }
    }
}

/// Sends one master's publishes in call order.
async fn send_queue(
    conn: Arc<Connector>,
    config: RedisClusterConfig,
    mut rx: mpsc::UnboundedReceiver<Publish>,
    health: Arc<Mutex<Health>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let retry_until = Instant::now() + config.publish_retry_budget;
        loop {
            crate::commands::drop_expired(&mut batch, "Redis Cluster did not answer in time");
            if batch.is_empty() {
                break;
            }
            let c = match conn.get(config.command_timeout).await {
                Ok(c) => c,
                Err(e) if Instant::now() < retry_until => {
                    set_health(&health, |h| h.publisher = LinkState::Down { error: e });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => {
                    set_health(&health, |h| {
                        h.publisher = LinkState::Down { error: e.clone() }
                    });
                    for p in batch.drain(..) {
                        let _ = p.reply.send(Err(PublishError::Unavailable(e.clone())));
                    }
                    break;
                }
            };
            let sends = batch.iter().map(|p| {
                let mut c = c.clone();
                let (cmd, route) = p.command();
                async move {
                    let value = c.route_command(cmd, route).await?;
                    publish_answer(value)
                        .map_err(|e| redis::RedisError::from((redis::ErrorKind::Io, "", e)))
                }
            });
            let results = timeout(
                config.command_timeout,
                futures_util::future::join_all(sends),
            )
            .await
            .unwrap_or_else(|_| {
                batch
                    .iter()
                    .map(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))))
                    .collect()
            });
            let failed = results
                .iter()
                .find_map(|r| r.as_ref().err())
                .map(ToString::to_string);
            match failed {
                Some(e) if Instant::now() < retry_until => {
                    // Retry what failed, in order, keeping what succeeded answered.
                    let mut keep = Vec::new();
                    for (p, r) in batch.drain(..).zip(results) {
                        match r {
                            Ok(answer) => {
                                let _ = p.reply.send(Ok(answer));
                            }
                            Err(_) => keep.push(p),
                        }
                    }
                    batch = keep;
                    tracing::debug!(error = %e, "Redis Cluster publish failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => {
                    if failed.is_none() {
                        set_health(&health, |h| h.publisher = LinkState::Up);
                    }
                    for (p, r) in batch.drain(..).zip(results) {
                        let _ =
                            p.reply.send(r.map_err(|e| {
                                PublishError::Unavailable(format!("Redis Cluster: {e}"))
                            }));
                    }
                    break;
                }
            }
        }
    }
}
