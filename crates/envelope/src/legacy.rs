//! The legacy JSON form published by existing Python backends.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codec::{DecodeError, Limits, decode_json_object};

/// What existing backends publish with `redis.publish(channel, json.dumps(payload))`.
///
/// Routing (applied by the `rooms` crate): `room` → that room; else `user` →
/// `user:{user}`; else `doctype` + `docname` → `doc:{doctype}:{docname}`; else the whole
/// namespace. `message` becomes the single event argument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegacyMessage {
    /// Event name (required, non-empty).
    #[serde(default)]
    pub event: String,
    /// The payload; `null` when absent.
    #[serde(default)]
    pub message: Value,
    /// Explicit room.
    #[serde(default, deserialize_with = "lenient_string")]
    pub room: Option<String>,
    /// User id (routes to `user:{user}`).
    #[serde(default, deserialize_with = "lenient_string")]
    pub user: Option<String>,
    /// Document type (with `docname`, routes to `doc:{doctype}:{docname}`).
    #[serde(default, deserialize_with = "lenient_string")]
    pub doctype: Option<String>,
    /// Document name.
    #[serde(default, deserialize_with = "lenient_string")]
    pub docname: Option<String>,
    /// Namespace; `/` when absent.
    #[serde(default, deserialize_with = "lenient_string")]
    pub namespace: Option<String>,
    /// The tenant (Frappe: the site) whose rooms `room`, `user` and `doctype`/`docname`
    /// name. `site` is accepted as an alias, since that is what Frappe calls it.
    #[serde(default, alias = "site", deserialize_with = "lenient_string")]
    pub tenant: Option<String>,
}

impl LegacyMessage {
    /// Decodes the legacy JSON form.
    ///
    /// Python's `json.dumps` writes `None` as `null` and ids are sometimes numbers, so
    /// routing fields accept strings, numbers or `null` (empty strings count as absent).
    ///
    /// ```
    /// let m = envelope::LegacyMessage::decode(
    ///     br#"{"event":"list_update","message":{"a":1},"user":"john@example.com","room":null}"#,
    ///     envelope::Limits::default(),
    /// )?;
    /// assert_eq!(m.user.as_deref(), Some("john@example.com"));
    /// assert_eq!(m.room, None);
    /// # Ok::<(), envelope::DecodeError>(())
    /// ```
    pub fn decode(bytes: &[u8], limits: Limits) -> Result<Self, DecodeError> {
        let msg: LegacyMessage = decode_json_object(bytes, limits)?;
        if msg.event.is_empty() {
            return Err(DecodeError::MissingEvent);
        }
        if let Some(ns) = msg.namespace.as_ref().filter(|ns| !ns.starts_with('/')) {
            return Err(DecodeError::InvalidNamespace(ns.clone()));
        }
        Ok(msg)
    }
}

fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => None,
        other => {
            return Err(serde::de::Error::custom(format!(
                "expected a string, got {other}"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_python_shapes() {
        let m = LegacyMessage::decode(
            br#"{"event":"doc_update","message":null,"doctype":"Task","docname":"TASK-0001","user":""}"#,
            Limits::default(),
        )
        .unwrap();
        assert_eq!(m.doctype.as_deref(), Some("Task"));
        assert_eq!(m.user, None);
        assert_eq!(m.message, Value::Null);

        let m = LegacyMessage::decode(
            br#"{"event":"e","user":42,"site":"s1.local"}"#,
            Limits::default(),
        )
        .unwrap();
        assert_eq!(m.tenant.as_deref(), Some("s1.local"));
        assert_eq!(m.user.as_deref(), Some("42"));
        assert_eq!(m.message, Value::Null);

        let m = LegacyMessage::decode(br#"{"event":"e","message":[1,{"b":2}]}"#, Limits::default())
            .unwrap();
        assert_eq!(m.message, json!([1, {"b": 2}]));
    }

    #[test]
    fn rejects_bad_input() {
        let l = Limits::default();
        assert_eq!(
            LegacyMessage::decode(br#"{"message":1}"#, l),
            Err(DecodeError::MissingEvent)
        );
        assert!(matches!(
            LegacyMessage::decode(br#"{"event":"e","room":{"x":1}}"#, l),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            LegacyMessage::decode(b"not json", l),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            LegacyMessage::decode(br#"{"event":"e"}"#, l.with_max_size(3)),
            Err(DecodeError::Oversize { .. })
        ));
    }
}
