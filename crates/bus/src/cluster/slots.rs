//! Which master owns which key: Redis Cluster's hash slots (CRC16 of the key, or of its
//! `{hash tag}`, modulo 16384) and the slot map read with `CLUSTER SLOTS`.

use std::collections::BTreeMap;

/// Slots in a Redis Cluster.
pub(crate) const SLOTS: u16 = 16_384;

/// CRC16/XMODEM (polynomial 0x1021, initial 0), the checksum Redis Cluster hashes keys
/// with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of `key`: only the part between the first `{` and the next `}` counts
/// when that part is not empty.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// A master's address as `CLUSTER SLOTS` names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Master {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl std::fmt::Display for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Who owns which slots (masters only), as of one `CLUSTER SLOTS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SlotMap {
    /// First slot of each range → (last slot, owner).
    ranges: BTreeMap<u16, (u16, Master)>,
}

impl SlotMap {
    /// Parses a `CLUSTER SLOTS` answer; a master announced without a host (`""`) is on
    /// `default_host` (the seed it was asked through).
    pub(crate) fn parse(value: &redis::Value, default_host: &str) -> Self {
        let mut ranges = BTreeMap::new();
        let redis::Value::Array(entries) = value else {
            return Self::default();
        };
        for entry in entries {
            let redis::Value::Array(fields) = entry else {
                continue;
            };
            let [
                redis::Value::Int(from),
                redis::Value::Int(to),
                redis::Value::Array(master),
                ..,
            ] = fields.as_slice()
            else {
                continue;
            };
            let host = match master.first() {
                Some(redis::Value::BulkString(b)) if !b.is_empty() => {
                    String::from_utf8_lossy(b).into_owned()
                }
                Some(redis::Value::SimpleString(s)) if !s.is_empty() => s.clone(),
                _ => default_host.to_owned(),
            };
            let port = match master.get(1) {
                Some(redis::Value::Int(p)) => u16::try_from(*p).ok(),
                _ => None,
            };
            if let (Ok(from), Ok(to), Some(port)) = (u16::try_from(*from), u16::try_from(*to), port)
            {
                ranges.insert(from, (to, Master { host, port }));
            }
        }
        Self { ranges }
    }

    /// The master owning `slot`, if the map covers it.
    pub(crate) fn owner(&self, slot: u16) -> Option<&Master> {
        let (_, (to, master)) = self.ranges.range(..=slot).next_back()?;
        (slot <= *to).then_some(master)
    }

    /// The master owning `key`.
    pub(crate) fn owner_of(&self, key: &str) -> Option<&Master> {
        self.owner(slot(key.as_bytes()))
    }

    /// Whether no slot is known.
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Every master that owns slots.
    pub(crate) fn masters(&self) -> impl Iterator<Item = &Master> {
        let mut seen: Vec<&Master> = self.ranges.values().map(|(_, m)| m).collect();
        seen.sort();
        seen.dedup();
        seen.into_iter()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on a real server.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn owners_by_range() {
        let node = |port: i64| {
            redis::Value::Array(vec![
                redis::Value::BulkString(b"10.0.0.1".to_vec()),
                redis::Value::Int(port),
            ])
        };
        let range = |from: i64, to: i64, port: i64| {
            redis::Value::Array(vec![
                redis::Value::Int(from),
                redis::Value::Int(to),
                node(port),
            ])
        };
        let map = SlotMap::parse(
            &redis::Value::Array(vec![range(0, 5460, 7000), range(5461, 16383, 7001)]),
            "seed",
        );
        assert_eq!(map.owner(0).unwrap().port, 7000);
        assert_eq!(map.owner(5460).unwrap().port, 7000);
        assert_eq!(map.owner(5461).unwrap().port, 7001);
        assert_eq!(map.owner(16383).unwrap().to_string(), "10.0.0.1:7001");
        assert_eq!(map.masters().count(), 2);
        let partial = SlotMap::parse(&redis::Value::Array(vec![range(0, 10, 7000)]), "seed");
        assert!(partial.owner(11).is_none());
    }
}
