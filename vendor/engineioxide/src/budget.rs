//! Roomcast patch: a socket's outbound queue bounded in bytes.
//!
//! Upstream bounds each socket's queue by a number of packets only, and drops what does
//! not fit without a word. Here every packet put in the queue is weighed (its payload
//! length), the weight leaves the account when a transport takes the packet out, and a
//! socket whose queue is over its byte budget — or out of packet slots — is a slow
//! consumer: the send is refused and the socket's heartbeat task closes it with
//! [`DisconnectReason::SlowConsumer`](crate::DisconnectReason::SlowConsumer).
//! Closing is deferred to that task because a send may run under a caller's lock (a
//! broadcast holds its adapter's room map) that the close path takes again.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use engineioxide_core::{Packet, PacketBuf};
use tokio::sync::{Notify, mpsc};

/// The byte account of one socket's outbound queue.
#[derive(Debug)]
pub(crate) struct OutboundBudget {
    queued: AtomicUsize,
    max: usize,
    overflowed: AtomicBool,
    notify: Notify,
}

impl OutboundBudget {
    pub(crate) fn new(max: Option<usize>) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            max: max.unwrap_or(usize::MAX),
            overflowed: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// Whether one more packet may be queued: the queue is within its budget (a packet
    /// larger than the whole budget still goes through an empty queue). Refusing marks
    /// the socket a slow consumer.
    pub(crate) fn admit(&self) -> bool {
        if self.queued.load(Ordering::Relaxed) > self.max {
            self.overflow();
            return false;
        }
        true
    }

    pub(crate) fn add(&self, packets: &PacketBuf) {
        self.queued.fetch_add(weight(packets), Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, packets: &PacketBuf) {
        let w = weight(packets);
        // Never below zero, whatever order concurrent adds and subs land in.
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(w))
            });
    }

    /// Adds `n` bytes waiting in a direct WebSocket outbox.
    pub(crate) fn add_len(&self, n: usize) {
        self.queued.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes `n` bytes written from a direct WebSocket outbox off the account.
    pub(crate) fn sub_len(&self, n: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(n))
            });
    }

    /// Bytes queued now.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Marks the socket a slow consumer; the first call wakes [`Self::overflowed`].
    pub(crate) fn overflow(&self) {
        if !self.overflowed.swap(true, Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }

    /// Resolves once the socket went over its budget.
    pub(crate) async fn overflowed(&self) {
        self.notify.notified().await
    }
}

/// What a queued packet weighs: its payload, or one byte for control packets.
fn weight(packets: &PacketBuf) -> usize {
    packets
        .iter()
        .map(|p| match p {
            Packet::Message(s) => s.len(),
            Packet::Binary(b) | Packet::BinaryV3(b) => b.len(),
            _ => 1,
        })
        .sum()
}

/// The receiving end of a socket's queue, taking each packet's weight off the account.
#[derive(Debug)]
pub(crate) struct BufferedRx {
    rx: mpsc::Receiver<PacketBuf>,
    budget: std::sync::Arc<OutboundBudget>,
}

impl BufferedRx {
    pub(crate) fn new(
        rx: mpsc::Receiver<PacketBuf>,
        budget: std::sync::Arc<OutboundBudget>,
    ) -> Self {
        Self { rx, budget }
    }

    fn taken(&self, p: Option<PacketBuf>) -> Option<PacketBuf> {
        if let Some(p) = &p {
            self.budget.sub(p);
        }
        p
    }

    pub(crate) async fn recv(&mut self) -> Option<PacketBuf> {
        let p = self.rx.recv().await;
        self.taken(p)
    }

    pub(crate) fn try_recv(&mut self) -> Result<PacketBuf, mpsc::error::TryRecvError> {
        let p = self.rx.try_recv()?;
        self.budget.sub(&p);
        Ok(p)
    }

    pub(crate) fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<PacketBuf>> {
        self.rx.poll_recv(cx).map(|p| self.taken(p))
    }

    pub(crate) fn close(&mut self) {
        self.rx.close()
    }
}
