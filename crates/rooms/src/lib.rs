//! Room names and routing for Roomcast: the typed [`Room`] naming convention shared by
//! every publisher and client, its validation, the legacy routing rule, the mapping from
//! rooms to bus channels ([`Channels`]), the per-node [`Interest`] tracker that turns
//! joins and leaves into subscribe/unsubscribe deltas, and the [`JoinPolicy`] that decides
//! which rooms a client may join.
//!
//! Pure logic: no sockets, no Redis, no clocks.
//!
//! # How it works
//!
//! A room name is `kind:id`. `kind` is 1 to 32 characters of `a-z`, `0-9`, `_` or `-`;
//! `id` is non-empty, may contain any printable character (including `:` and spaces, so
//! `doc:Sales Invoice:SINV-0001` is valid) but no control characters, and the whole name
//! is at most [`MAX_ROOM_LEN`] bytes. Requiring a kind keeps room names apart from
//! Socket.IO's per-socket rooms (bare socket ids), so no client can join another socket's
//! private room.
//!
//! Tenants: every room lives in a scope, a tenant's or the shared one (see
//! [`ScopedRoom`]); `doc:Task:1` of tenant `acme` is the scoped room `@acme/doc:Task:1`.
//!
//! Channels: a scoped room `r` in namespace `ns` maps to `{prefix}:room:{ns}#{r}`; a namespace
//! broadcast to `{prefix}:ns:{ns}`; socketioxide adapter requests to `{prefix}:req:{ns}`
//! (all nodes) or `{prefix}:req:{ns}#{uid}` (one server), their responses to
//! `{prefix}:res:{ns}#{uid}`.

mod channel;
mod interest;
mod name;
mod policy;
mod tenant;

pub use channel::{ChannelKind, Channels};
pub use interest::{Delta, Interest};
pub use name::{Kind, MAX_KIND_LEN, MAX_ROOM_LEN, Room, RoomError, Target, legacy_target};
pub use policy::{JoinPolicy, Pattern, PatternError};
pub use tenant::{
    Audience, BROADCAST, MAX_TENANT_LEN, ScopedRoom, TargetError, TenantError, TenantId,
    resolve_targets,
};
