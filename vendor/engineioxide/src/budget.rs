//! Roomcast patch: a socket's outbound queue bounded in bytes.
//!
//! Upstream bounds each socket's queue by a number of packets only, and drops what does
//! not fit without a word. Here every packet put in the queue is weighed (its payload
//! length), the weight leaves the account when a transport takes the packet out, and a
//! socket whose queue is over its byte budget — or out of packet slots — is a slow
//! consumer: the send is refused and the socket's heartbeat task closes it with
//! [`DisconnectReason::TransportError`](crate::DisconnectReason::TransportError)
//! (`Socket::is_slow_consumer` then answers true).
//! Closing is deferred to that task because a send may run under a caller's lock (a
//! broadcast holds its adapter's room map) that the close path takes again.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use engineioxide_core::{Packet, PacketBuf};
use futures_util::task::AtomicWaker;
use tokio::sync::{
    Notify,
    mpsc::error::{TryRecvError, TrySendError},
};

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

    /// Whether the socket went over its budget.
    pub(crate) fn is_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
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

/// A socket's outbound packet queue (Roomcast patch).
///
/// Upstream uses a tokio `mpsc` channel, which allocates its first block of 32 slots at
/// creation: ~6 KiB of `PacketBuf`s per socket, idle or not. This queue holds nothing
/// until something waits in it, and keeps the channel's contract: bounded in packets, a
/// permit reserves a place, closing refuses new packets while what waits can still be
/// taken.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    capacity: usize,
    rx_waker: AtomicWaker,
    closed: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<PacketBuf>,
    /// Places held by [`QueuePermit`]s not used yet.
    reserved: usize,
    closed: bool,
    /// The session moved to a direct WebSocket writer: sends are refused here (as if
    /// closed) so the sender writes them there instead.
    redirected: bool,
}

impl Queue {
    /// A queue of at most `capacity` packets, and its receiving end.
    pub(crate) fn new(capacity: usize, budget: Arc<OutboundBudget>) -> (Arc<Self>, BufferedRx) {
        let queue = Arc::new(Self {
            state: Mutex::new(QueueState::default()),
            capacity: capacity.max(1),
            rx_waker: AtomicWaker::new(),
            closed: Notify::new(),
        });
        let rx = BufferedRx {
            queue: queue.clone(),
            budget,
        };
        (queue, rx)
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Every step under the lock is one push or pop: a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `packets` if there is a place.
    pub(crate) fn try_send(&self, packets: PacketBuf) -> Result<(), TrySendError<PacketBuf>> {
        let mut state = self.lock();
        if state.closed || state.redirected {
            return Err(TrySendError::Closed(packets));
        }
        if state.items.len() + state.reserved >= self.capacity {
            return Err(TrySendError::Full(packets));
        }
        state.items.push_back(packets);
        drop(state);
        self.rx_waker.wake();
        Ok(())
    }

    /// Queues `packets` even past the capacity (a control packet that must go out, like
    /// the Noop ending a polling request during an upgrade); refused only once closed.
    pub(crate) fn force_send(&self, packets: PacketBuf) -> Result<(), ()> {
        let mut state = self.lock();
        if state.closed {
            return Err(());
        }
        state.items.push_back(packets);
        drop(state);
        self.rx_waker.wake();
        Ok(())
    }

    /// Holds a place for one send.
    pub(crate) fn try_reserve(&self) -> Result<QueuePermit<'_>, TrySendError<()>> {
        let mut state = self.lock();
        if state.closed || state.redirected {
            return Err(TrySendError::Closed(()));
        }
        if state.items.len() + state.reserved >= self.capacity {
            return Err(TrySendError::Full(()));
        }
        state.reserved += 1;
        Ok(QueuePermit { queue: self })
    }

    /// From now on sends are refused, to be written to the session's direct writer;
    /// a permit given before hands its packets back ([`QueuePermit::send`]).
    pub(crate) fn redirect(&self) {
        self.lock().redirected = true;
    }

    /// Whether the queue is closed (the session ended).
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Resolves once the queue is closed.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

/// A place held in a [`Queue`] for one send.
#[derive(Debug)]
pub(crate) struct QueuePermit<'a> {
    queue: &'a Queue,
}

impl QueuePermit<'_> {
    /// Uses the place (dropped if the queue closed meanwhile); the packets come back
    /// if the session moved to a direct writer meanwhile.
    pub(crate) fn send(self, packets: PacketBuf) -> Option<PacketBuf> {
        let queue = self.queue;
        let back = {
            let mut state = queue.lock();
            if state.redirected {
                Some(packets)
            } else {
                if !state.closed {
                    state.items.push_back(packets);
                }
                None
            }
        };
        // `Drop` gives the place back.
        drop(self);
        queue.rx_waker.wake();
        back
    }
}

impl Drop for QueuePermit<'_> {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.reserved = state.reserved.saturating_sub(1);
    }
}

/// The receiving end of a socket's queue, taking each packet's weight off the account.
#[derive(Debug)]
pub(crate) struct BufferedRx {
    queue: Arc<Queue>,
    budget: Arc<OutboundBudget>,
}

impl BufferedRx {
    fn pop(&self) -> Option<Option<PacketBuf>> {
        let mut state = self.queue.lock();
        match state.items.pop_front() {
            Some(p) => {
                if state.items.is_empty() && state.items.capacity() > 4 {
                    // A burst's memory goes back once it is drained.
                    state.items = VecDeque::new();
                }
                drop(state);
                self.budget.sub(&p);
                Some(Some(p))
            }
            None if state.closed => Some(None),
            None => None,
        }
    }

    pub(crate) async fn recv(&mut self) -> Option<PacketBuf> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub(crate) fn try_recv(&mut self) -> Result<PacketBuf, TryRecvError> {
        match self.pop() {
            Some(Some(p)) => Ok(p),
            Some(None) => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    pub(crate) fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<PacketBuf>> {
        if let Some(p) = self.pop() {
            return std::task::Poll::Ready(p);
        }
        self.queue.rx_waker.register(cx.waker());
        match self.pop() {
            Some(p) => std::task::Poll::Ready(p),
            None => std::task::Poll::Pending,
        }
    }

    /// Closes the queue: sends are refused from now on, what waits can still be taken.
    pub(crate) fn close(&mut self) {
        self.queue.lock().closed = true;
        self.queue.closed.notify_waiters();
        self.queue.rx_waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &'static str) -> PacketBuf {
        PacketBuf::from_iter([Packet::Message(s.into())])
    }

    #[test]
    fn packets_are_weighed_in_and_out() {
        let budget = Arc::new(OutboundBudget::new(Some(10)));
        let (queue, mut rx) = Queue::new(8, budget.clone());
        for p in [
            msg("hello"),
            msg("world!"),
            PacketBuf::from_iter([Packet::Ping]),
        ] {
            budget.add(&p);
            queue.try_send(p).unwrap();
        }
        assert_eq!(
            budget.queued(),
            5 + 6 + 1,
            "payload bytes, one for a control packet"
        );
        assert!(!budget.admit(), "over 10 bytes: refused");
        assert!(budget.is_overflowed(), "a refusal marks the slow consumer");
        rx.try_recv().unwrap();
        rx.try_recv().unwrap();
        assert_eq!(budget.queued(), 1);
        rx.try_recv().unwrap();
        assert_eq!(budget.queued(), 0);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    #[test]
    fn within_budget_is_admitted_and_the_account_never_goes_below_zero() {
        let budget = OutboundBudget::new(Some(4));
        assert!(budget.admit(), "an empty queue admits even a large packet");
        budget.add_len(4);
        assert!(budget.admit(), "at the budget, not over it");
        budget.sub_len(10);
        assert_eq!(budget.queued(), 0);
        assert!(!budget.is_overflowed());
        let unbounded = OutboundBudget::new(None);
        unbounded.add_len(1 << 40);
        assert!(unbounded.admit());
    }

    #[test]
    fn the_queue_is_bounded_in_packets_and_permits_hold_places() {
        let budget = Arc::new(OutboundBudget::new(None));
        let (queue, mut rx) = Queue::new(2, budget);
        let permit = queue.try_reserve().unwrap();
        queue.try_send(msg("a")).unwrap();
        assert!(matches!(
            queue.try_send(msg("b")),
            Err(TrySendError::Full(_))
        ));
        assert!(permit.send(msg("c")).is_none());
        assert_eq!(rx.try_recv().unwrap()[0], Packet::Message("a".into()));
        assert_eq!(rx.try_recv().unwrap()[0], Packet::Message("c".into()));
        // Closed: new sends refused, a forced control packet too.
        queue.try_send(msg("d")).unwrap();
        rx.close();
        assert!(matches!(
            queue.try_send(msg("e")),
            Err(TrySendError::Closed(_))
        ));
        assert!(queue.force_send(msg("f")).is_err());
        assert_eq!(
            rx.try_recv().unwrap()[0],
            Packet::Message("d".into()),
            "what waited is still taken"
        );
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
    }

    #[test]
    fn a_redirected_queue_hands_a_permits_packets_back() {
        let budget = Arc::new(OutboundBudget::new(None));
        let (queue, _rx) = Queue::new(4, budget);
        let permit = queue.try_reserve().unwrap();
        queue.redirect();
        assert!(matches!(
            queue.try_send(msg("x")),
            Err(TrySendError::Closed(_))
        ));
        assert_eq!(
            permit.send(msg("y")).map(|p| p[0].clone()),
            Some(Packet::Message("y".into()))
        );
    }

    #[tokio::test]
    async fn overflow_wakes_the_heartbeat_task_once() {
        let budget = Arc::new(OutboundBudget::new(Some(0)));
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.overflowed().await }
        });
        budget.add_len(1);
        assert!(!budget.admit());
        assert!(!budget.admit(), "a second refusal changes nothing");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
