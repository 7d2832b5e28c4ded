//! How a delivery's arguments are written for socketioxide: as a tuple of arguments, with
//! binary attachments put back in place of their placeholders.

use bytes::Bytes;
use serde::ser::{Serialize, SerializeTuple, Serializer};
use serde_json::Value;

/// Event arguments serialized as a tuple, which Socket.IO's parser expands into
/// separate arguments (`["event", a, b]` rather than `["event", [a, b]]`). Placeholders
/// naming one of `attachments` are written as bytes, which the parser sends as binary.
pub(crate) struct Args<'a> {
    pub(crate) args: &'a [Value],
    pub(crate) attachments: &'a [Bytes],
    /// The message's offset in its namespace history (connection state recovery): sent
    /// as the last argument, where Socket.IO clients look for it.
    pub(crate) offset: Option<&'a str>,
}

impl Serialize for Args<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = self.args.len() + usize::from(self.offset.is_some());
        let mut tuple = serializer.serialize_tuple(len)?;
        for arg in self.args {
            if self.attachments.is_empty() {
                tuple.serialize_element(arg)?;
            } else {
                tuple.serialize_element(&WithBinary(arg, self.attachments))?;
            }
        }
        if let Some(offset) = self.offset {
            tuple.serialize_element(offset)?;
        }
        tuple.end()
    }
}

/// A JSON value whose placeholders are replaced by the attachments they name.
struct WithBinary<'a>(&'a Value, &'a [Bytes]);

impl Serialize for WithBinary<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        let Self(value, attachments) = *self;
        if let Some(bytes) = envelope::placeholder_index(value).and_then(|n| attachments.get(n)) {
            return serializer.serialize_bytes(bytes);
        }
        match value {
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&WithBinary(item, attachments))?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut out = serializer.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    out.serialize_entry(k, &WithBinary(v, attachments))?;
                }
                out.end()
            }
            scalar => scalar.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_become_bytes_and_everything_else_stays() {
        let attachments = [Bytes::from_static(&[1, 2]), Bytes::from_static(&[3])];
        let args = [
            json!({"a": envelope::placeholder(1), "b": [envelope::placeholder(0), "x"]}),
            json!({"_placeholder": true, "num": 7}),
            json!(5),
        ];
        let args = Args {
            args: &args,
            attachments: &attachments,
            offset: None,
        };
        // serde_json writes bytes as an array of numbers, which makes the swap visible.
        assert_eq!(
            serde_json::to_value(&args).unwrap(),
            json!([{"a": [3], "b": [[1, 2], "x"]}, {"_placeholder": true, "num": 7}, 5])
        );
    }
}
