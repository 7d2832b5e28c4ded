//! Lock-free latency recording for many receiving tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// 0.1 ms buckets up to 500 ms, then 10 ms buckets up to 10.5 s (fan-outs to tens of
/// thousands of sockets take longer than 500 ms); later arrivals go to the last bucket
/// (and `max`).
const BUCKET_US: u64 = 100;
const FINE: usize = 5000;
const COARSE_US: u64 = 10_000;
const BUCKETS: usize = FINE + 1000;

/// The bucket of a latency.
fn bucket(latency_us: u64) -> usize {
    let fine = latency_us / BUCKET_US;
    if fine < FINE as u64 {
        return fine as usize;
    }
    let coarse = (latency_us - FINE as u64 * BUCKET_US) / COARSE_US;
    (FINE as u64 + coarse).min(BUCKETS as u64 - 1) as usize
}

/// The upper bound of bucket `i`, in microseconds.
fn bucket_top_us(i: usize) -> u64 {
    if i < FINE {
        (i as u64 + 1) * BUCKET_US
    } else {
        FINE as u64 * BUCKET_US + (i - FINE + 1) as u64 * COARSE_US
    }
}

/// Microseconds since the epoch (the publish time travels in the payload).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Counts deliveries of the current measurement point and their latencies.
pub(crate) struct Recorder {
    point: AtomicU64,
    count: AtomicU64,
    max_us: AtomicU64,
    buckets: Vec<AtomicU64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            point: AtomicU64::new(u64::MAX),
            count: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// Latency figures of one point.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Latency {
    pub(crate) count: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl Recorder {
    /// Starts point `point`: clears the counts; deliveries of other points are ignored.
    pub(crate) fn start(&self, point: u64) {
        self.point.store(point, Ordering::SeqCst);
        self.count.store(0, Ordering::SeqCst);
        self.max_us.store(0, Ordering::SeqCst);
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }

    /// Deliveries of the current point so far.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Records one `msg` frame body: `{"t":<us>,"p":<point>,...}]`.
    pub(crate) fn record_frame(&self, body: &str) {
        let (Some(t), Some(p)) = (field(body, "\"t\":"), field(body, "\"p\":")) else {
            return;
        };
        if p != self.point.load(Ordering::Relaxed) {
            return;
        }
        let latency = now_us().saturating_sub(t);
        self.buckets[bucket(latency)].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(latency, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The figures of the current point.
    pub(crate) fn latency(&self) -> Latency {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let pct = |q: f64| {
            if total == 0 {
                return 0.0;
            }
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return bucket_top_us(i) as f64 / 1000.0;
                }
            }
            bucket_top_us(BUCKETS - 1) as f64 / 1000.0
        };
        Latency {
            count: total,
            p50_ms: pct(0.5),
            p90_ms: pct(0.9),
            p99_ms: pct(0.99),
            p999_ms: pct(0.999),
            max_ms: self.max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
}

/// The unsigned integer after `key` in `s`.
fn field(s: &str, key: &str) -> Option<u64> {
    let start = s.find(key)? + key.len();
    let digits: &str = &s[start..];
    let end = digits.bytes().take_while(u8::is_ascii_digit).count();
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_the_current_point() {
        let r = Recorder::default();
        r.start(7);
        let now = now_us();
        r.record_frame(&format!("{{\"t\":{},\"p\":7,\"s\":1}}]", now - 2_000));
        r.record_frame(&format!("{{\"t\":{},\"p\":6,\"s\":1}}]", now));
        r.record_frame("garbage");
        let l = r.latency();
        assert_eq!(l.count, 1);
        assert!(l.p50_ms >= 2.0 && l.p50_ms < 50.0, "{l:?}");
    }

    #[test]
    fn slow_deliveries_keep_their_order_of_magnitude() {
        assert_eq!(bucket_top_us(bucket(150)), 200);
        assert_eq!(bucket_top_us(bucket(499_950)), 500_000);
        assert_eq!(bucket_top_us(bucket(1_234_000)), 1_240_000);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }
}
