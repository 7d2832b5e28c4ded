//! The one shape of a socket ack: `{"ok": true, …}` on success, `{"ok": false, "error"}`
//! when the gateway refuses a client's request. [`AckError`] is that refusal, as
//! `ApiError` is for the HTTP API: every handler that answers a client
//! event returns it, and only this module writes the failure shape.

use serde_json::{Value, json};

/// Why a client's request over its socket was refused. The reason is for the client: it
/// names what was wrong with the request, never anything internal or secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct AckError(String);

impl AckError {
    /// A refusal for `reason`.
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }

    /// A refusal whose reason is `e`'s message.
    pub(crate) fn of(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }

    /// The ack: `{"ok": false, "error": reason}`.
    pub(crate) fn to_json(&self) -> Value {
        json!({"ok": false, "error": self.0})
    }

    /// The ack of a request that has an id (a client publish): `{"ok": false, "id",
    /// "error"}`.
    pub(crate) fn with_id(&self, id: &str) -> Value {
        json!({"ok": false, "id": id, "error": self.0})
    }
}

impl From<String> for AckError {
    fn from(reason: String) -> Self {
        Self(reason)
    }
}

impl From<&str> for AckError {
    fn from(reason: &str) -> Self {
        Self(reason.to_owned())
    }
}

/// The ack of `result`: its value when it succeeded, the refusal's shape when not.
pub(crate) fn reply(result: Result<Value, AckError>) -> Value {
    result.unwrap_or_else(|e| e.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shape_for_every_refusal() {
        assert_eq!(
            AckError::new("not in doc:Task:1").to_json(),
            json!({"ok": false, "error": "not in doc:Task:1"})
        );
        assert_eq!(
            AckError::from("slow down").with_id("m1"),
            json!({"ok": false, "id": "m1", "error": "slow down"})
        );
        assert_eq!(reply(Ok(json!({"ok": true}))), json!({"ok": true}));
        assert_eq!(
            reply(Err(AckError::of(std::fmt::Error))),
            json!({"ok": false, "error": std::fmt::Error.to_string()})
        );
    }
}
