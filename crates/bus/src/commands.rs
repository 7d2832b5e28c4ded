//! What both Redis transports (one server, Redis Cluster) share: the Lua scripts they
//! run, how they express times and patterns to Redis, and how a queue of requests sheds
//! those whose callers stopped waiting.

use std::time::Duration;

use tokio::time::Instant;

/// A queued request whose caller waits only until its deadline.
pub(crate) trait Expiring {
    /// When the caller stops waiting.
    fn deadline(&self) -> Instant;
    /// Answers the caller with `why`.
    fn expire(&mut self, why: &str);
}

/// Answers and removes the requests of `batch` whose callers have given up, instead of
/// sending them: a queue that built up behind a blackholed Redis drains at once when it
/// answers again.
pub(crate) fn drop_expired<T: Expiring>(batch: &mut Vec<T>, why: &str) {
    let now = Instant::now();
    batch.retain_mut(|req| {
        if req.deadline() > now {
            return true;
        }
        req.expire(why);
        false
    });
}

/// What [`Bus::take`] leaves in place of a value.
pub(crate) const TOMBSTONE: &str = "taken";

/// GET, then a tombstone for ARGV[1] ms.
pub(crate) const TAKE: &str = r"
local v = redis.call('GET', KEYS[1])
if v then redis.call('SET', KEYS[1], 'taken', 'PX', ARGV[1]) end
return v
";

/// SET unless the current value is a tombstone or lacks the owner marker ARGV[3].
pub(crate) const REGISTER_OWNED: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and not string.find(cur, ARGV[3], 1, true) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// `d` in whole milliseconds, at least 1 (Redis refuses a zero expiry).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// XADD + PEXPIRE + PUBLISH of the framed entry, atomically: the stream's order is the
/// channel's order. Returns {id, receivers}.
pub(crate) const RECORDED_PUBLISH: &str = r"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local n = redis.call('PUBLISH', ARGV[3], 'o' .. id .. ' ' .. ARGV[2])
return {id, n}
";

/// Escapes Redis glob characters so a prefix matches literally.
pub(crate) fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
