//! The wire contract of Roomcast: the versioned [`Envelope`] that crosses the bus between
//! publishers and gateway nodes, its two codecs (JSON for any language, MessagePack for
//! node-to-node traffic), the [`LegacyMessage`] form existing Python backends already
//! publish, and the size limit every decoder enforces.
//!
//! This crate is pure data: it does no I/O and knows nothing about Redis, sockets or
//! Socket.IO. Room names travel as plain strings here; the `rooms` crate validates them.
//!
//! # How it works
//!
//! * [`Envelope::decode`] accepts either codec and tells them apart by the first byte: a
//!   JSON envelope is an object and starts with `{` (after optional white space); a
//!   MessagePack envelope is a map and starts with `0x80..=0x8f`, `0xde` or `0xdf`.
//! * Every decoder checks the size limit *before* parsing, so an oversize payload costs
//!   nothing but a length comparison.
//! * Unknown fields are ignored (forward compatibility). A higher `v` than
//!   [`VERSION`] is refused with [`DecodeError::UnknownVersion`]: a newer publisher may
//!   have changed the meaning of a field, and guessing would deliver the wrong thing.
//! * [`Draft`] is the envelope as an HTTP caller sends it: `v`, `id`, `ts` and `origin`
//!   may be left out and are filled in by [`Draft::finish`].
//! * Binary data travels in `attachments`, referenced from the arguments by Socket.IO's
//!   own placeholders (see [`placeholder`]); clients receive real binary.

mod binary;
mod client_event;
mod codec;
mod control;
mod legacy;
mod model;
mod node;

pub use binary::{placeholder, placeholder_index};
pub use client_event::ClientEvent;
pub use codec::{DEFAULT_MAX_SIZE, DecodeError, EncodeError, Limits};
pub use control::{Control, Presence, SocketAction, SocketInfo, SocketTarget};
pub use legacy::LegacyMessage;
pub use model::{Draft, Envelope, Flags, VERSION, new_id, now_ms};
pub use node::NodeInfo;
