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

/// XADD + PEXPIRE + PUBLISH (or SPUBLISH, ARGV[5]) of the framed entry, atomically: the
/// stream's order is the channel's order. Returns {id, receivers}.
const RECORDED_PUBLISH: &str = r"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local n = redis.call(ARGV[5], ARGV[3], 'o' .. id .. ' ' .. ARGV[2])
return {id, n}
";

/// The script call of a recorded publish of `payload` on `channel` with `publish`
/// (`PUBLISH`, or `SPUBLISH` on Redis Cluster, where the channel and the stream must share
/// a slot). Answered as [`publish_answer`] reads it.
pub(crate) fn recorded_publish(
    publish: &str,
    channel: &str,
    payload: &[u8],
    history: &crate::History,
) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(RECORDED_PUBLISH)
        .arg(1)
        .arg(&history.stream)
        .arg(history.max_len)
        .arg(payload)
        .arg(channel)
        .arg(millis(history.ttl))
        .arg(publish);
    cmd
}
/// One `XRANGE` entry: its id and its fields.
pub(crate) type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// One pipeline answer: a PUBLISH count, or a recorded publish's {id, count}.
pub(crate) fn publish_answer(value: redis::Value) -> Result<(usize, Option<String>), String> {
    use redis::Value;
    let count = |v: &Value| match v {
        Value::Int(n) => usize::try_from(*n).ok(),
        _ => None,
    };
    match &value {
        Value::Int(_) => Ok((count(&value).unwrap_or(0), None)),
        Value::Array(items) => match items.as_slice() {
            [Value::BulkString(id), n] => Ok((
                count(n).unwrap_or(0),
                Some(String::from_utf8_lossy(id).into_owned()),
            )),
            _ => Err(format!(
                "unexpected answer to a recorded publish: {value:?}"
            )),
        },
        Value::ServerError(e) => Err(format!("publish failed: {e:?}")),
        other => Err(format!("unexpected answer to a publish: {other:?}")),
    }
}

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    #[test]
    fn the_recorded_publish_is_the_one_the_sdks_share() {
        let fx: serde_json::Value =
            serde_json::from_str(include_str!("../../../sdk/fixtures/wire.json")).unwrap();
        let shared = &fx["recorded_publish"];
        assert_eq!(shared["script"].as_str(), Some(super::RECORDED_PUBLISH));
        let frame = shared["example_frame"].as_str().unwrap().as_bytes();
        assert_eq!(
            crate::recorded_frame(frame),
            Some((shared["example_offset"].as_str().unwrap(), &b"{}"[..]))
        );
    }
}
