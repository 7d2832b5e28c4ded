//! Binary attachments: raw bytes that travel beside the JSON arguments.
//!
//! Socket.IO sends binary data as attachments referenced from the JSON arguments by
//! placeholders `{"_placeholder": true, "num": N}`. The envelope uses the same
//! convention, so a publisher that knows Socket.IO needs nothing new: put the bytes in
//! `attachments` (base64 strings in JSON, native `bin` values in MessagePack) and a
//! placeholder where each one belongs. Clients receive real binary (`ArrayBuffer` /
//! `Buffer` / `bytes`), not base64.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserializer, Serializer};
use serde_json::{Value, json};

/// The placeholder that stands for attachment `num` inside the arguments.
///
/// ```
/// let p = envelope::placeholder(0);
/// assert_eq!(p, serde_json::json!({"_placeholder": true, "num": 0}));
/// assert_eq!(envelope::placeholder_index(&p), Some(0));
/// ```
pub fn placeholder(num: usize) -> Value {
    json!({"_placeholder": true, "num": num})
}

/// The attachment index when `value` is a placeholder object, else `None`.
pub fn placeholder_index(value: &Value) -> Option<usize> {
    let map = value.as_object()?;
    if map.len() != 2 || map.get("_placeholder") != Some(&Value::Bool(true)) {
        return None;
    }
    map.get("num")?
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
}

/// The first placeholder in `args` that names no attachment, as `(num, count)`.
pub(crate) fn dangling_placeholder(args: &[Value], count: usize) -> Option<usize> {
    fn walk(v: &Value, count: usize) -> Option<usize> {
        if let Some(num) = placeholder_index(v) {
            return (num >= count).then_some(num);
        }
        match v {
            Value::Array(items) => items.iter().find_map(|i| walk(i, count)),
            Value::Object(map) => map.values().find_map(|i| walk(i, count)),
            _ => None,
        }
    }
    args.iter().find_map(|a| walk(a, count))
}

/// Serde for `Vec<Bytes>`: base64 strings in human-readable formats (JSON), native
/// byte strings otherwise (MessagePack).
pub(crate) mod serde_attachments {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(items: &[Bytes], s: S) -> Result<S::Ok, S::Error> {
        let text = s.is_human_readable();
        let mut seq = s.serialize_seq(Some(items.len()))?;
        for item in items {
            if text {
                seq.serialize_element(&STANDARD.encode(item))?;
            } else {
                seq.serialize_element(&Raw(item))?;
            }
        }
        seq.end()
    }

    struct Raw<'a>(&'a [u8]);

    impl serde::Serialize for Raw<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Bytes>, D::Error> {
        d.deserialize_seq(ListVisitor)
    }

    struct ListVisitor;

    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<Bytes>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of attachments (base64 strings or byte strings)")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
            while let Some(item) = seq.next_element::<Item>()? {
                out.push(item.0);
            }
            Ok(out)
        }
    }

    struct Item(Bytes);

    impl<'de> serde::Deserialize<'de> for Item {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(ItemVisitor)
        }
    }

    struct ItemVisitor;

    impl<'de> Visitor<'de> for ItemVisitor {
        type Value = Item;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an attachment: a base64 string or a byte string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Item, E> {
            STANDARD
                .decode(v)
                .map(|b| Item(Bytes::from(b)))
                .map_err(|e| E::custom(format!("attachment is not valid base64: {e}")))
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Item, E> {
            Ok(Item(Bytes::copy_from_slice(v)))
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Item, E> {
            Ok(Item(Bytes::from(v)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_recognised_exactly() {
        assert_eq!(placeholder_index(&placeholder(3)), Some(3));
        assert_eq!(placeholder_index(&json!({"_placeholder": true})), None);
        assert_eq!(
            placeholder_index(&json!({"_placeholder": false, "num": 0})),
            None
        );
        assert_eq!(
            placeholder_index(&json!({"_placeholder": true, "num": 0, "x": 1})),
            None
        );
        assert_eq!(
            placeholder_index(&json!({"_placeholder": true, "num": -1})),
            None
        );
    }

    #[test]
    fn dangling_placeholders_are_found_at_any_depth() {
        let args = [json!({"a": [1, placeholder(0)]}), placeholder(1)];
        assert_eq!(dangling_placeholder(&args, 2), None);
        assert_eq!(dangling_placeholder(&args, 1), Some(1));
        assert_eq!(
            dangling_placeholder(&[json!({"deep": [[placeholder(5)]]})], 5),
            Some(5)
        );
    }
}
