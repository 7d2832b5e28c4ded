//! Tenants: the wall between the sites or companies that share one cluster.
//!
//! A user id, a document name or a custom room name is unique only inside its tenant, so
//! every room a tenant's socket joins lives in that tenant's *scope*: `doc:Task:1` of
//! tenant `acme` and `doc:Task:1` of tenant `globex` are two rooms, with two bus channels.
//! Sockets and messages that name no tenant live in the shared scope, which is what a
//! single-tenant deployment uses without noticing.
//!
//! A scoped room has one string form, used both as the Socket.IO room and inside its bus
//! channel name: `@{tenant}/{room}` for a tenant's room (the tenant percent-encoded so
//! that its first `/` ends it), and the plain room name in the shared scope. No client
//! room can start with `@` (a room's kind is `a-z0-9_-`), so the two never collide.
//!
//! `tenant:{id}` rooms always belong to tenant `id`, whatever scope names them: a message
//! to `tenant:acme` reaches acme's sockets, a message that names tenant `globex` cannot
//! target it, and only acme's sockets can join it.

use std::fmt;

use crate::{Kind, Room, RoomError};

/// Longest tenant id accepted, in bytes.
pub const MAX_TENANT_LEN: usize = 100;

/// A validated tenant id: 1 to [`MAX_TENANT_LEN`] bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

/// Why a tenant id, or a room's tenant, was refused. Messages are shown to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TenantError {
    /// The id is empty.
    #[error("tenant id is empty")]
    Empty,
    /// The id is longer than [`MAX_TENANT_LEN`].
    #[error("tenant id is {len} bytes; the limit is {max}")]
    TooLong {
        /// Length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The id contains a control character.
    #[error("tenant id contains a control character")]
    ControlCharacter,
    /// A message for one tenant names another tenant's `tenant:` room.
    #[error("room {room} belongs to another tenant than {tenant:?}")]
    Mismatch {
        /// The `tenant:` room.
        room: String,
        /// The tenant the message or socket is in.
        tenant: String,
    },
}

impl TenantId {
    /// Validates a tenant id.
    ///
    /// ```
    /// let t = rooms::TenantId::parse("site1.example.com")?;
    /// assert_eq!(t.as_str(), "site1.example.com");
    /// assert!(rooms::TenantId::parse("").is_err());
    /// # Ok::<(), rooms::TenantError>(())
    /// ```
    pub fn parse(id: &str) -> Result<Self, TenantError> {
        if id.is_empty() {
            return Err(TenantError::Empty);
        }
        if id.len() > MAX_TENANT_LEN {
            return Err(TenantError::TooLong {
                len: id.len(),
                max: MAX_TENANT_LEN,
            });
        }
        if id.chars().any(char::is_control) {
            return Err(TenantError::ControlCharacter);
        }
        Ok(Self(id.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A room inside a scope: a tenant's, or the shared one. Its string form is the
/// Socket.IO room name and the tail of its bus channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopedRoom {
    name: String,
    /// Byte offset of the plain room name inside `name`.
    room_at: usize,
}

impl ScopedRoom {
    /// `room` in the scope of `tenant` (the shared scope when `None`). A `tenant:{id}`
    /// room is always in tenant `id`'s scope; naming another tenant is an error.
    ///
    /// ```
    /// use rooms::{Room, ScopedRoom, TenantId};
    /// let acme = TenantId::parse("acme")?;
    /// let doc = Room::doc("Task", "1")?;
    /// assert_eq!(ScopedRoom::new(Some(&acme), &doc)?.as_str(), "@acme/doc:Task:1");
    /// assert_eq!(ScopedRoom::new(None, &doc)?.as_str(), "doc:Task:1");
    /// // A tenant room names its own tenant.
    /// assert_eq!(ScopedRoom::new(None, &Room::tenant("acme")?)?.as_str(), "@acme/tenant:acme");
    /// assert!(ScopedRoom::new(Some(&acme), &Room::tenant("globex")?).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(tenant: Option<&TenantId>, room: &Room) -> Result<Self, TenantError> {
        let own;
        let tenant = if room.kind() == Kind::Tenant {
            own = TenantId::parse(room.id())?;
            if let Some(t) = tenant
                && *t != own
            {
                return Err(TenantError::Mismatch {
                    room: room.to_string(),
                    tenant: t.to_string(),
                });
            }
            Some(&own)
        } else {
            tenant
        };
        Ok(match tenant {
            None => Self {
                name: room.as_str().to_owned(),
                room_at: 0,
            },
            Some(t) => {
                let mut name = String::with_capacity(t.0.len() + room.as_str().len() + 2);
                name.push('@');
                encode_into(&mut name, t.as_str());
                name.push('/');
                let room_at = name.len();
                name.push_str(room.as_str());
                Self { name, room_at }
            }
        })
    }

    /// Reads back a scoped room name (as found in a Socket.IO room or a channel).
    ///
    /// ```
    /// let r = rooms::ScopedRoom::parse("@a%2Fb/user:1")?;
    /// assert_eq!(r.tenant().as_deref(), Some("a/b"));
    /// assert_eq!(r.room(), "user:1");
    /// # Ok::<(), rooms::RoomError>(())
    /// ```
    pub fn parse(name: &str) -> Result<Self, RoomError> {
        let Some(rest) = name.strip_prefix('@') else {
            let room = Room::parse(name)?;
            return Self::new(None, &room).map_err(|_| RoomError::InvalidKind(name.to_owned()));
        };
        let Some((encoded, room)) = rest.split_once('/') else {
            return Err(RoomError::MissingKind(name.to_owned()));
        };
        let tenant = decode(encoded)
            .and_then(|t| TenantId::parse(&t).ok())
            .ok_or_else(|| RoomError::InvalidKind(name.to_owned()))?;
        let room = Room::parse(room)?;
        Self::new(Some(&tenant), &room).map_err(|_| RoomError::InvalidKind(name.to_owned()))
    }

    /// The scoped name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The plain room name, as clients and publishers write it.
    pub fn room(&self) -> &str {
        &self.name[self.room_at..]
    }

    /// The tenant whose scope this is; `None` for the shared scope.
    pub fn tenant(&self) -> Option<String> {
        (self.room_at > 0).then(|| {
            // Written by `new` from a valid id, so it decodes.
            decode(&self.name[1..self.room_at - 1]).unwrap_or_default()
        })
    }

    /// The owned scoped name.
    pub fn into_string(self) -> String {
        self.name
    }
}

impl fmt::Display for ScopedRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Who a message reaches, once its tenant and rooms are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Every socket of the namespace, in every tenant (a tenantless broadcast).
    Everyone,
    /// The members of these scoped rooms.
    Rooms(Vec<ScopedRoom>),
}

/// The target that means "the whole namespace" where a publisher must say so explicitly.
pub const BROADCAST: &str = "*";

/// Why a message's targets were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// A room name is invalid.
    #[error("invalid room {name:?}: {source}")]
    Room {
        /// The name.
        name: String,
        /// Why.
        source: RoomError,
    },
    /// The tenant id is invalid, or a `tenant:` room belongs to another tenant.
    #[error(transparent)]
    Tenant(#[from] TenantError),
    /// `*` was mixed with room names.
    #[error("\"*\" (the whole namespace) cannot be combined with rooms")]
    MixedBroadcast,
}

/// Resolves a message's tenant and target rooms. `to` empty or `["*"]` means every
/// socket of the tenant (`tenant:{id}`), or of the namespace when there is no tenant.
///
/// ```
/// use rooms::{Audience, resolve_targets};
/// let (to, except) = resolve_targets(Some("acme"), &["user:ann".into()], &[])?;
/// assert_eq!(to, Audience::Rooms(vec![rooms::ScopedRoom::parse("@acme/user:ann")?]));
/// assert!(except.is_empty());
/// assert_eq!(resolve_targets(None, &["*".into()], &[])?.0, Audience::Everyone);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn resolve_targets(
    tenant: Option<&str>,
    to: &[String],
    except: &[String],
) -> Result<(Audience, Vec<ScopedRoom>), TargetError> {
    let tenant = tenant.map(TenantId::parse).transpose()?;
    let scoped = |names: &[String]| -> Result<Vec<ScopedRoom>, TargetError> {
        names
            .iter()
            .map(|name| {
                let room = Room::parse(name).map_err(|source| TargetError::Room {
                    name: name.clone(),
                    source,
                })?;
                Ok(ScopedRoom::new(tenant.as_ref(), &room)?)
            })
            .collect()
    };
    let broadcast = to.is_empty() || to.iter().all(|t| t == BROADCAST);
    if !broadcast && to.iter().any(|t| t == BROADCAST) {
        return Err(TargetError::MixedBroadcast);
    }
    let audience = match (broadcast, &tenant) {
        (true, None) => Audience::Everyone,
        (true, Some(t)) => Audience::Rooms(vec![ScopedRoom::new(
            Some(t),
            &Room::tenant(t.as_str()).map_err(|source| TargetError::Room {
                name: format!("tenant:{t}"),
                source,
            })?,
        )?]),
        (false, _) => Audience::Rooms(scoped(to)?),
    };
    Ok((audience, scoped(except)?))
}

/// Percent-encodes `%` and `/` (and `@`, for readability) into `out`.
fn encode_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '@' => out.push_str("%40"),
            c => out.push(c),
        }
    }
}

fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    fn r(name: &str) -> Room {
        Room::parse(name).unwrap()
    }

    #[test]
    fn scoped_names() {
        let cases: &[(Option<&str>, &str, &str)] = &[
            (Some("acme"), "user:admin", "@acme/user:admin"),
            (Some("globex"), "user:admin", "@globex/user:admin"),
            (None, "user:admin", "user:admin"),
            (Some("a/b@c%d"), "doc:T:1", "@a%2Fb%40c%25d/doc:T:1"),
            (Some("acme"), "tenant:acme", "@acme/tenant:acme"),
            (None, "tenant:acme", "@acme/tenant:acme"),
            (Some("Société Générale"), "org:x", "@Société Générale/org:x"),
        ];
        for (tenant, room, expected) in cases {
            let tenant = tenant.map(t);
            let s = ScopedRoom::new(tenant.as_ref(), &r(room)).unwrap();
            assert_eq!(s.as_str(), *expected);
            assert_eq!(s.room(), *room);
            let back = ScopedRoom::parse(expected).unwrap();
            assert_eq!(back, s);
            let expected_tenant = tenant
                .map(|t| t.0)
                .or_else(|| room.strip_prefix("tenant:").map(str::to_owned));
            assert_eq!(back.tenant(), expected_tenant);
        }
    }

    #[test]
    fn tenant_rooms_belong_to_their_tenant() {
        assert_eq!(
            ScopedRoom::new(Some(&t("acme")), &r("tenant:globex")),
            Err(TenantError::Mismatch {
                room: "tenant:globex".into(),
                tenant: "acme".into()
            })
        );
        // A forged scoped name cannot put a tenant room in another tenant.
        assert!(ScopedRoom::parse("@acme/tenant:globex").is_err());
    }

    #[test]
    fn invalid_scoped_names() {
        for bad in [
            "@acme",
            "@/user:1",
            "@%zz/user:1",
            "@acme/nokind",
            "lobby",
            "",
        ] {
            assert!(ScopedRoom::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tenant_ids() {
        assert_eq!(TenantId::parse(""), Err(TenantError::Empty));
        assert_eq!(TenantId::parse("a\nb"), Err(TenantError::ControlCharacter));
        assert!(matches!(
            TenantId::parse(&"x".repeat(MAX_TENANT_LEN + 1)),
            Err(TenantError::TooLong { .. })
        ));
    }

    #[test]
    fn targets() {
        let s = |name: &str| ScopedRoom::parse(name).unwrap();
        let v = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            resolve_targets(Some("acme"), &v(&["*"]), &v(&["user:a"])).unwrap(),
            (
                Audience::Rooms(vec![s("@acme/tenant:acme")]),
                vec![s("@acme/user:a")]
            )
        );
        assert_eq!(
            resolve_targets(Some("acme"), &[], &[]).unwrap().0,
            Audience::Rooms(vec![s("@acme/tenant:acme")])
        );
        assert_eq!(
            resolve_targets(None, &[], &[]).unwrap().0,
            Audience::Everyone
        );
        assert_eq!(
            resolve_targets(None, &v(&["user:a", "tenant:t"]), &[])
                .unwrap()
                .0,
            Audience::Rooms(vec![s("user:a"), s("@t/tenant:t")])
        );
        assert_eq!(
            resolve_targets(None, &v(&["*", "user:a"]), &[]),
            Err(TargetError::MixedBroadcast)
        );
        assert!(matches!(
            resolve_targets(None, &v(&["lobby"]), &[]),
            Err(TargetError::Room { .. })
        ));
        assert!(matches!(
            resolve_targets(Some(""), &v(&["user:a"]), &[]),
            Err(TargetError::Tenant(TenantError::Empty))
        ));
        assert!(matches!(
            resolve_targets(Some("a"), &v(&["tenant:b"]), &[]),
            Err(TargetError::Tenant(TenantError::Mismatch { .. }))
        ));
    }

    proptest! {
        #[test]
        fn scoped_round_trip(tenant in "[^\\p{Cc}]{1,40}", id in "[^\\p{Cc}]{1,60}") {
            let tenant = TenantId::parse(&tenant).unwrap();
            let room = Room::new("doc", &id).unwrap();
            let s = ScopedRoom::new(Some(&tenant), &room).unwrap();
            let back = ScopedRoom::parse(s.as_str()).unwrap();
            prop_assert_eq!(back.tenant(), Some(tenant.as_str().to_owned()));
            prop_assert_eq!(back.room(), room.as_str());
        }

        #[test]
        fn fuzz_scoped_parse_never_panics(s in ".{0,120}") {
            let _ = ScopedRoom::parse(&s);
        }
    }
}
