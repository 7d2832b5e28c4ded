//! Publishes on Redis Cluster: one queue per master, each with its own connection to
//! that master, so a master that stops answering — or the shared cluster connection
//! while it re-learns the slots — holds back only the channels whose slots it owns. Each
//! queue is sent in call order (a batch pipelined in order, then awaited together) and
//! retried within the configured budget; a batch its master refuses (a slot that moved)
//! is retried through the cluster connection, which follows `MOVED`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout};

use super::slots::{Master, SlotMap};
use super::subscriber::LinkFactory;
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
    factory: Arc<LinkFactory>,
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
        let queue = queues.entry(owner.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let direct = owner.map(|m| (m, factory.clone()));
            tokio::spawn(send_queue(
                conn.clone(),
                direct,
                config.clone(),
                rx,
                health.clone(),
            ));
            tx
        });
        if let Err(mpsc::error::SendError(p)) = queue.send(p) {
            let _ = p.reply.send(Err(PublishError::Closed));
        }
    }
}

/// Sends `batch` on the queue's own connection to its master, in order; `None` when
/// there is no such connection or the master refused one (the caller then uses the
/// cluster connection).
async fn send_direct(
    link: &mut Option<redis::aio::MultiplexedConnection>,
    master: Option<&(Master, Arc<LinkFactory>)>,
    batch: &[Publish],
    limit: Duration,
) -> Option<Vec<Result<(usize, Option<String>), String>>> {
    let (master, factory) = master?;
    if link.is_none() {
        *link = factory.command_link(master).await.ok();
    }
    let mut pipe = redis::pipe();
    for p in batch {
        pipe.add_command(p.command().0);
    }
    let c = link.as_mut()?;
    match timeout(limit, pipe.query_async::<Vec<redis::Value>>(c)).await {
        Ok(Ok(values)) if values.len() == batch.len() => {
            let answers: Vec<_> = values.into_iter().map(publish_answer).collect();
            // A slot that moved away: the cluster connection finds its new owner.
            answers.iter().all(Result::is_ok).then_some(answers)
        }
        _ => {
            *link = None;
            None
        }
    }
}

/// Sends one master's publishes in call order.
async fn send_queue(
    conn: Arc<Connector>,
    master: Option<(Master, Arc<LinkFactory>)>,
    config: RedisClusterConfig,
    mut rx: mpsc::UnboundedReceiver<Publish>,
    health: Arc<Mutex<Health>>,
) {
    let mut link = None;
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
        if let Some(answers) =
            send_direct(&mut link, master.as_ref(), &batch, config.command_timeout).await
        {
            for (p, answer) in batch.drain(..).zip(answers) {
                let _ = p.reply.send(answer.map_err(PublishError::Unavailable));
            }
            continue;
        }
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
