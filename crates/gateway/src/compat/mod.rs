//! Speaking the Redis formats of the Socket.IO servers teams run today, so that their
//! publishers keep working unchanged while clients move to Roomcast:
//!
//! * **python-socketio** (`RedisManager`, `AsyncRedisManager`, Flask-SocketIO's
//!   `message_queue`): every node subscribes to its channel and delivers each `emit` to
//!   its own sockets ([`python`]).
//! * **Node** (`@socket.io/redis-adapter`, `@socket.io/redis-emitter`): every node
//!   subscribes to `{key}#{nsp}#` and, for each room with local members, to
//!   `{key}#{nsp}#{room}#`, and delivers each broadcast to its own sockets ([`node`]).
//!   Optionally every Roomcast publish is also written in that format, so that clients
//!   still on the Node servers receive it (the mixed cluster).
//!
//! Foreign messages carry no tenant: they are delivered in one configured tenant, or the
//! shared scope. Room names that are not `kind:id` are mapped to `{room_kind}:{name}`,
//! or refused when no kind is configured. Each message is delivered whole or not at all,
//! and counted in `roomcast_compat_messages_total{source,result}`; the first of each kind
//! of refusal is logged with its reason (later ones at debug level).

mod node;
mod python;

use std::collections::HashSet;
use std::sync::Mutex;

use bytes::Bytes;
use envelope::Envelope;
use rooms::{Room, ScopedRoom, TenantId};
use serde_json::Value;

/// The message sources that can be enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// python-socketio / Flask-SocketIO message queues.
    Python,
    /// Node's Redis adapter and emitter.
    Node,
}

impl Source {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::Node => "node",
        }
    }
}

/// What is enabled, and how foreign messages are mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatConfig {
    /// The python-socketio channels to read (empty: off).
    pub python_channels: Vec<String>,
    /// The Node adapter's key to read (`None`: off).
    pub node_key: Option<String>,
    /// Also publish every Roomcast delivery in the Node adapter's format (needs
    /// `node_key`).
    pub node_outbound: bool,
    /// The tenant foreign messages are delivered in; `None`: the shared scope.
    pub tenant: Option<TenantId>,
    /// The kind given to room names that are not `kind:id`; `None`: such names are
    /// refused.
    pub room_kind: Option<String>,
}

impl CompatConfig {
    /// Whether any source is enabled.
    pub fn enabled(&self) -> bool {
        !self.python_channels.is_empty() || self.node_key.is_some()
    }
}

/// A foreign message in the terms Roomcast delivers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Foreign {
    pub(crate) ns: String,
    pub(crate) event: String,
    /// Arguments, with Socket.IO placeholders for `attachments`.
    pub(crate) args: Vec<Value>,
    pub(crate) attachments: Vec<Bytes>,
    /// Target rooms; `None`: the whole namespace.
    pub(crate) rooms: Option<Vec<String>>,
    pub(crate) except: Vec<String>,
    pub(crate) volatile: bool,
}

/// What a decoder made of a message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decoded {
    /// An event to deliver.
    Emit(Foreign),
    /// A message with no meaning here (the label says which).
    Ignored(&'static str),
    /// Roomcast's own outbound copy.
    Own,
}

/// Why a message was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CompatError {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("refused: {0}")]
    Unsafe(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("larger than MAX_PAYLOAD_BYTES ({0} bytes)")]
    TooLarge(usize),
    #[error("room {name:?} maps to no Roomcast room: {reason}")]
    Room { name: String, reason: String },
}

impl CompatError {
    fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Unsafe(_) => "unsafe",
            Self::Unsupported(_) => "unsupported",
            Self::TooLarge(_) => "too_large",
            Self::Room { .. } => "refused_room",
        }
    }
}

/// A decoded value that may hold bytes, before it becomes JSON with placeholders.
#[derive(Debug)]
pub(crate) enum Tree {
    Null,
    Json(Value),
    Bytes(Bytes),
    List(Vec<Tree>),
    /// A Python tuple: several arguments at the top level, a list elsewhere.
    Tuple(Vec<Tree>),
    Map(Vec<(String, Tree)>),
}

impl Tree {
    /// JSON, each byte string replaced by a Socket.IO placeholder for its attachment.
    pub(crate) fn into_json(self, attachments: &mut Vec<Bytes>) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::Json(v) => v,
            Self::Bytes(b) => {
                attachments.push(b);
                envelope::placeholder(attachments.len() - 1)
            }
            Self::List(items) | Self::Tuple(items) => Value::Array(
                items
                    .into_iter()
                    .map(|i| i.into_json(attachments))
                    .collect(),
            ),
            Self::Map(entries) => Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, v.into_json(attachments)))
                    .collect(),
            ),
        }
    }
}

/// How deep a foreign message's values may nest (deeper ones are malformed).
pub(crate) const MAX_DEPTH: usize = 64;

/// The uid prefix of what Roomcast publishes in the Node adapter's format.
const OWN_UID_PREFIX: &str = "roomcast:";

/// The enabled sources of one node.
#[derive(Debug)]
pub struct Compat {
    config: CompatConfig,
    /// The uid of this node's outbound broadcasts.
    uid: String,
    /// Kinds of refusal already logged at warning level.
    logged: Mutex<HashSet<(Source, &'static str)>>,
}

impl Compat {
    /// The sources `config` enables, for node `node_id`.
    pub fn new(config: CompatConfig, node_id: &str) -> Self {
        Self {
            config,
            uid: format!("{OWN_UID_PREFIX}{node_id}"),
            logged: Mutex::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CompatConfig {
        &self.config
    }

    /// The channels every node subscribes to from the start, for the namespaces `nss`.
    pub fn base_channels(&self, nss: &[String]) -> Vec<String> {
        let mut all = self.config.python_channels.clone();
        if let Some(key) = &self.config.node_key {
            all.extend(nss.iter().map(|ns| format!("{key}#{ns}#")));
        }
        all
    }

    /// Which source `channel` belongs to, if any.
    pub fn source_of(&self, channel: &str) -> Option<Source> {
        if self.config.python_channels.iter().any(|c| c == channel) {
            return Some(Source::Python);
        }
        let key = self.config.node_key.as_deref()?;
        channel
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with("#/") && rest.ends_with('#'))
            .then_some(Source::Node)
    }

    /// The Node channels of a scoped room with local members in namespace `ns`: none
    /// outside the compat tenant.
    pub fn room_channels(&self, ns: &str, room: &ScopedRoom) -> Vec<String> {
        let Some(key) = &self.config.node_key else {
            return Vec::new();
        };
        if room.tenant().as_deref() != self.config.tenant.as_ref().map(TenantId::as_str) {
            return Vec::new();
        }
        self.foreign_names(room.room())
            .into_iter()
            .map(|name| format!("{key}#{ns}#{name}#"))
            .collect()
    }

    /// The names a Roomcast room has for the other servers: its own, and the name it was
    /// mapped from (`room:lobby` ← `lobby`).
    fn foreign_names(&self, room: &str) -> Vec<String> {
        let mut names = vec![room.to_owned()];
        if let Some(kind) = &self.config.room_kind
            && let Some(bare) = room
                .strip_prefix(kind.as_str())
                .and_then(|r| r.strip_prefix(':'))
            && Room::parse(bare).is_err()
        {
            names.push(bare.to_owned());
        }
        names
    }

    /// A foreign room name as a Roomcast room name.
    fn map_room(&self, name: &str) -> Result<String, CompatError> {
        if Room::parse(name).is_ok() {
            return Ok(name.to_owned());
        }
        let refused = |reason: String| CompatError::Room {
            name: name.to_owned(),
            reason,
        };
        let Some(kind) = &self.config.room_kind else {
            return Err(refused("not kind:id, and COMPAT_ROOM_KIND is empty".into()));
        };
        Room::new(kind, name)
            .map(Room::into_string)
            .map_err(|e| refused(e.to_string()))
    }

    /// Decodes a message of `source` (at most `max_size` bytes) into the envelope to
    /// deliver on this node, or why not (`Ok(None)`: nothing to deliver, counted under
    /// the label returned).
    pub(crate) fn decode(
        &self,
        source: Source,
        payload: &[u8],
        max_size: usize,
    ) -> Result<Result<Envelope, &'static str>, CompatError> {
        if payload.len() > max_size {
            return Err(CompatError::TooLarge(max_size));
        }
        let decoded = match source {
            Source::Python => python::decode(payload)?,
            Source::Node => node::decode(payload, OWN_UID_PREFIX)?,
        };
        let foreign = match decoded {
            Decoded::Emit(f) => f,
            Decoded::Ignored(label) => return Ok(Err(label)),
            Decoded::Own => return Ok(Err("own")),
        };
        let to = match &foreign.rooms {
            None => Vec::new(),
            // Python's `to=[]`: no room, nobody.
            Some(rooms) if rooms.is_empty() => return Ok(Err("ignored")),
            Some(rooms) => rooms
                .iter()
                .map(|r| self.map_room(r))
                .collect::<Result<_, _>>()?,
        };
        let except = foreign
            .except
            .iter()
            .map(|r| self.map_room(r))
            .collect::<Result<_, _>>()?;
        let mut env = Envelope::new(source.label(), foreign.event, Value::Null).in_ns(foreign.ns);
        env.data = None;
        env.args = Some(foreign.args);
        env.attachments = foreign.attachments;
        env.to = to;
        env.except = except;
        env.flags.volatile = foreign.volatile;
        env.tenant = self.config.tenant.as_ref().map(|t| t.as_str().to_owned());
        // The same checks a publish gets: valid names, `tenant:` rooms of this tenant.
        bus::targets(&env).map_err(|e| CompatError::Room {
            name: env.to.join(","),
            reason: e.to_string(),
        })?;
        Ok(Ok(env))
    }

    /// Logs a refused message: the first of each kind per source at warning level.
    pub(crate) fn log_refusal(&self, source: Source, channel: &str, error: &CompatError) {
        let first = self
            .logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((source, error.label()));
        if first {
            tracing::warn!(source = source.label(), %channel, %error, "dropped a message of another Socket.IO server (further ones of this kind are logged at debug level)");
        } else {
            tracing::debug!(source = source.label(), %channel, %error, "dropped a message of another Socket.IO server");
        }
    }

    /// The label a refusal is counted under.
    pub(crate) fn label(error: &CompatError) -> &'static str {
        error.label()
    }

    /// `env` in the Node adapter's format (channel, payload), when outbound is on and
    /// `env` is in the compat tenant.
    pub(crate) fn outbound(
        &self,
        env: &Envelope,
    ) -> Option<Result<(String, Vec<u8>), CompatError>> {
        let key = self
            .config
            .node_key
            .as_deref()
            .filter(|_| self.config.node_outbound)?;
        if env.flags.local
            || env.socket.is_some()
            || env.tenant.as_deref() != self.config.tenant.as_ref().map(TenantId::as_str)
        {
            return None;
        }
        let names = |rooms: &[String]| -> Vec<String> {
            rooms
                .iter()
                .filter(|r| r.as_str() != rooms::BROADCAST)
                .flat_map(|r| self.foreign_names(r))
                .collect()
        };
        let foreign = Foreign {
            ns: env.ns.clone(),
            event: env.event.clone(),
            args: env.arguments().to_vec(),
            attachments: env.attachments.clone(),
            rooms: Some(names(&env.to)),
            except: names(&env.except),
            volatile: env.flags.volatile,
        };
        Some(node::encode(key, &self.uid, &foreign))
    }
}

#[cfg(test)]
mod tests;
