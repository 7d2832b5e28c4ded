//! Per-socket rate limits: a token bucket for every client event, another for joins, and
//! a strike count that turns sustained abuse into a disconnect.
//!
//! A client over its rate gets each extra event refused (its ack says why); one that keeps
//! going — more than `max_strikes` refusals within `STRIKE_WINDOW` — is disconnected
//! with the reason `rate_limited`.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The window in which refusals count towards a disconnect.
pub(crate) const STRIKE_WINDOW: Duration = Duration::from_secs(10);

/// Rates one socket may use. Every field states its default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Client events per second, sustained. Default 50.
    pub events_per_sec: f64,
    /// Client events allowed at once after a quiet period; above the join burst, since
    /// every join is also an event. Default 200.
    pub event_burst: f64,
    /// `join` events per second, sustained (also counted as events). Default 20.
    pub joins_per_sec: f64,
    /// Joins allowed at once (a page opening many documents). Default 128.
    pub join_burst: f64,
    /// Refusals within 10 seconds after which the socket is disconnected.
    /// Default 200.
    pub max_strikes: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            events_per_sec: 50.0,
            event_burst: 200.0,
            joins_per_sec: 20.0,
            join_burst: 128.0,
            max_strikes: 200,
        }
    }
}

/// What to do with one client event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Handle it.
    Allow,
    /// Refuse it (the ack says why).
    Refuse,
    /// Refuse it and disconnect the socket: the abuse is sustained.
    Disconnect,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
            rate,
            burst,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct State {
    events: Bucket,
    joins: Bucket,
    strikes: u32,
    window_start: Instant,
    /// The disconnect verdict was given; later events are only refused.
    disconnected: bool,
}

/// One socket's limiter, kept in its extensions.
#[derive(Debug)]
pub(crate) struct SocketLimiter {
    max_strikes: u32,
    state: Mutex<State>,
}

impl SocketLimiter {
    pub(crate) fn new(limits: &RateLimits) -> Self {
        let now = Instant::now();
        Self {
            max_strikes: limits.max_strikes,
            state: Mutex::new(State {
                events: Bucket::new(limits.events_per_sec, limits.event_burst, now),
                joins: Bucket::new(limits.joins_per_sec, limits.join_burst, now),
                strikes: 0,
                window_start: now,
                disconnected: false,
            }),
        }
    }

    /// The verdict on one client event (`join`: also a join) now.
    pub(crate) fn check(&self, join: bool) -> Verdict {
        self.check_at(Instant::now(), join)
    }

    fn check_at(&self, now: Instant, join: bool) -> Verdict {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // A refused join does not spend an event token, nor the other way round.
        let allowed = st.events.take(now) && (!join || st.joins.take(now));
        if allowed {
            return Verdict::Allow;
        }
        if now.saturating_duration_since(st.window_start) > STRIKE_WINDOW {
            st.window_start = now;
            st.strikes = 0;
        }
        st.strikes += 1;
        if st.strikes > self.max_strikes && !st.disconnected {
            st.disconnected = true;
            Verdict::Disconnect
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RateLimits {
        RateLimits {
            events_per_sec: 10.0,
            event_burst: 5.0,
            joins_per_sec: 1.0,
            join_burst: 2.0,
            max_strikes: 3,
        }
    }

    #[test]
    fn a_burst_then_the_rate() {
        let l = SocketLimiter::new(&limits());
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> = (0..6).map(|_| l.check_at(t0, false)).collect();
        assert_eq!(&verdicts[..5], &[Verdict::Allow; 5]);
        assert_eq!(verdicts[5], Verdict::Refuse);
        // 10 per second: one more token every 100 ms.
        assert_eq!(
            l.check_at(t0 + Duration::from_millis(100), false),
            Verdict::Allow
        );
        assert_eq!(
            l.check_at(t0 + Duration::from_millis(110), false),
            Verdict::Refuse
        );
    }

    #[test]
    fn joins_have_their_own_bucket() {
        let l = SocketLimiter::new(&limits());
        let t0 = Instant::now();
        assert_eq!(l.check_at(t0, true), Verdict::Allow);
        assert_eq!(l.check_at(t0, true), Verdict::Allow);
        assert_eq!(l.check_at(t0, true), Verdict::Refuse);
        // Other events still pass.
        assert_eq!(l.check_at(t0, false), Verdict::Allow);
        assert_eq!(
            l.check_at(t0 + Duration::from_secs(1), true),
            Verdict::Allow
        );
    }

    #[test]
    fn sustained_abuse_disconnects_and_strikes_expire() {
        let l = SocketLimiter::new(&limits());
        let t0 = Instant::now();
        for _ in 0..5 {
            l.check_at(t0, false);
        }
        let refusals: Vec<Verdict> = (0..4).map(|_| l.check_at(t0, false)).collect();
        assert_eq!(
            refusals,
            [
                Verdict::Refuse,
                Verdict::Refuse,
                Verdict::Refuse,
                Verdict::Disconnect
            ]
        );
        // Given once: the socket is already on its way out.
        assert_eq!(l.check_at(t0, false), Verdict::Refuse);
        // A refusal long after starts a fresh window.
        let later = t0 + STRIKE_WINDOW + Duration::from_secs(1);
        for _ in 0..5 {
            l.check_at(later, false);
        }
        assert_eq!(l.check_at(later, false), Verdict::Refuse);
    }
}
