//! The envelope and its draft form.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::binary::serde_attachments;

/// The envelope version this build writes, and the highest it reads.
pub const VERSION: u32 = 1;

/// The message that crosses the bus.
///
/// Field names are the wire names; see `docs/protocol.md` for the contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope version; never higher than [`VERSION`] once decoded.
    pub v: u32,
    /// Unique id of this message, used for de-duplication and in logs.
    pub id: String,
    /// Publish time, milliseconds since the Unix epoch.
    pub ts: u64,
    /// The node or service that published it.
    pub origin: String,
    /// Socket.IO namespace, `/` by default.
    #[serde(default = "default_ns")]
    pub ns: String,
    /// The tenant whose rooms `to` and `except` name. Absent: the shared scope (sockets
    /// whose token names no tenant), except that a `tenant:{id}` room always means tenant
    /// `id`. See `docs/security.md`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Event name the clients receive.
    #[serde(default)]
    pub event: String,
    /// A single event argument. Mutually exclusive with `args`. A present `null` is an
    /// argument (`Some(Value::Null)`), an absent field is none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub data: Option<Value>,
    /// Several event arguments. Mutually exclusive with `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<Value>>,
    /// Binary attachments, referenced from the arguments by
    /// `{"_placeholder": true, "num": N}` (Socket.IO's own convention). Base64 strings
    /// in JSON, byte strings in MessagePack.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "serde_attachments"
    )]
    pub attachments: Vec<Bytes>,
    /// Target rooms; empty means the whole namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// Rooms whose members must not receive the message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    /// Delivery flags.
    #[serde(default, skip_serializing_if = "Flags::is_empty")]
    pub flags: Flags,
    /// W3C `traceparent` of the publishing span, when tracing is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// Deliver only to this socket id (Socket.IO `socket.id`), among the members of `to`:
    /// a reply to the one socket that sent an event. Nodes older than this field deliver
    /// to all of `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// The socket this message is about, which does not receive it: the sender of a
    /// client publish that leaves itself out (on namespaces with connection state
    /// recovery, where the sender's node delivers from the bus like every other node),
    /// or the socket a presence join/leave event announces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
}

/// Delivery flags of an [`Envelope`]. Unknown flags are ignored on decode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Flags {
    /// The message may be dropped for a client whose connection is not ready.
    #[serde(default, skip_serializing_if = "is_false")]
    pub volatile: bool,
    /// Deliver only on the node that received the publish; never cross the bus.
    #[serde(default, skip_serializing_if = "is_false")]
    pub local: bool,
}

impl Flags {
    /// True when no flag is set (the flags are then left out of the encoding).
    pub fn is_empty(&self) -> bool {
        !self.volatile && !self.local
    }
}

/// An envelope as a caller submits it: everything the sender must say, with `v`, `id`, `ts`
/// and `origin` optional. [`Draft::finish`] turns it into an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Draft {
    /// Envelope version; defaults to [`VERSION`].
    #[serde(default)]
    pub v: Option<u32>,
    /// Message id; a fresh one is generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Publish time in ms; now when absent.
    #[serde(default)]
    pub ts: Option<u64>,
    /// Publishing service; the receiving node's id when absent.
    #[serde(default)]
    pub origin: Option<String>,
    /// Namespace; `/` when absent.
    #[serde(default)]
    pub ns: Option<String>,
    /// Tenant whose rooms are targeted, see [`Envelope::tenant`].
    #[serde(default)]
    pub tenant: Option<String>,
    /// Event name (required).
    #[serde(default)]
    pub event: String,
    /// Single argument (a present `null` counts).
    #[serde(default, deserialize_with = "present")]
    pub data: Option<Value>,
    /// Several arguments.
    #[serde(default)]
    pub args: Option<Vec<Value>>,
    /// Binary attachments (base64 strings in JSON), see [`Envelope::attachments`].
    #[serde(default, with = "serde_attachments")]
    pub attachments: Vec<Bytes>,
    /// Target rooms.
    #[serde(default)]
    pub to: Vec<String>,
    /// Excluded rooms.
    #[serde(default)]
    pub except: Vec<String>,
    /// Delivery flags.
    #[serde(default)]
    pub flags: Flags,
    /// W3C `traceparent`.
    #[serde(default)]
    pub trace: Option<String>,
    /// Only this socket id among the members of `to`, see [`Envelope::socket`].
    #[serde(default)]
    pub socket: Option<String>,
}

impl Draft {
    /// Fills in the optional fields and returns the complete envelope.
    ///
    /// `origin` is used when the draft names none.
    pub fn finish(self, origin: &str) -> Envelope {
        Envelope {
            v: self.v.unwrap_or(VERSION),
            id: self.id.unwrap_or_else(new_id),
            ts: self.ts.unwrap_or_else(now_ms),
            origin: self.origin.unwrap_or_else(|| origin.to_owned()),
            ns: self.ns.unwrap_or_else(default_ns),
            tenant: self.tenant,
            event: self.event,
            data: self.data,
            args: self.args,
            attachments: self.attachments,
            to: self.to,
            except: self.except,
            flags: self.flags,
            trace: self.trace,
            socket: self.socket,
            sender: None,
        }
    }
}

impl Envelope {
    /// A new envelope for `event` with one argument, to the whole namespace `/`.
    ///
    /// ```
    /// let env = envelope::Envelope::new("billing", "invoice.paid", serde_json::json!({"id": 7}))
    ///     .to_rooms(["user:42"]);
    /// assert_eq!(env.to, vec!["user:42".to_owned()]);
    /// assert_eq!(env.v, envelope::VERSION);
    /// ```
    pub fn new(origin: impl Into<String>, event: impl Into<String>, data: Value) -> Self {
        Self {
            v: VERSION,
            id: new_id(),
            ts: now_ms(),
            origin: origin.into(),
            ns: default_ns(),
            tenant: None,
            event: event.into(),
            data: Some(data),
            args: None,
            attachments: Vec::new(),
            to: Vec::new(),
            except: Vec::new(),
            flags: Flags::default(),
            trace: None,
            socket: None,
            sender: None,
        }
    }

    /// Sets the target rooms.
    pub fn to_rooms<I, S>(mut self, rooms: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.to = rooms.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the namespace.
    pub fn in_ns(mut self, ns: impl Into<String>) -> Self {
        self.ns = ns.into();
        self
    }

    /// Sets the tenant whose rooms `to` and `except` name.
    ///
    /// ```
    /// let env = envelope::Envelope::new("crm", "lead.won", serde_json::json!(1))
    ///     .in_tenant("acme")
    ///     .to_rooms(["user:admin"]);
    /// assert_eq!(env.tenant.as_deref(), Some("acme"));
    /// ```
    pub fn in_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The event arguments in order: `args`, or `data` as the only argument, or none.
    pub fn arguments(&self) -> &[Value] {
        match (&self.args, &self.data) {
            (Some(args), _) => args,
            (None, Some(data)) => std::slice::from_ref(data),
            (None, None) => &[],
        }
    }
}

/// A fresh, time-ordered unique message id (UUID v7).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn default_ns() -> String {
    "/".to_owned()
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Deserializes a present field, even `null`, as `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}
