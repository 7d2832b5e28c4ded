//! The room naming convention.

use std::fmt;

/// Longest room name accepted, in bytes. Long enough for `doc:{doctype}:{name}` with
/// generous names, short enough to keep Redis channel names and logs readable.
pub const MAX_ROOM_LEN: usize = 200;
/// Longest `kind` prefix accepted.
pub const MAX_KIND_LEN: usize = 32;

/// A validated room name, `kind:id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Room(String);

/// The well-known kinds of room; anything else is [`Kind::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// `user:{id}`, every socket of one user.
    User,
    /// `tenant:{id}`, every socket of one tenant (site).
    Tenant,
    /// `doc:{doctype}:{name}`, subscribers of one document.
    Doc,
    /// `org:{name}`, one organisation.
    Org,
    /// `sync:{doctype}:{org}`, a sync channel.
    Sync,
    /// `room:{name}`, a custom room.
    Room,
    /// Any other `kind:id`.
    Other,
}

/// Why a room name was refused. Messages are shown to clients as-is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// The name is empty.
    #[error("room name is empty")]
    Empty,
    /// The name is longer than [`MAX_ROOM_LEN`].
    #[error("room name is {len} bytes; the limit is {max}")]
    TooLong {
        /// Actual length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name contains a control character.
    #[error("room name contains a control character")]
    ControlCharacter,
    /// The name has no `kind:` prefix.
    #[error("room name {0:?} must have the form kind:id (e.g. room:{0})")]
    MissingKind(String),
    /// The kind has characters outside `a-z0-9_-` or is too long.
    #[error("room kind {0:?} must be 1-32 characters of a-z, 0-9, '_' or '-'")]
    InvalidKind(String),
    /// Nothing after `kind:`.
    #[error("room name {0:?} has an empty id")]
    EmptyId(String),
}

impl Room {
    /// Parses and validates a room name.
    ///
    /// ```
    /// use rooms::{Room, RoomError, Kind};
    /// let room = Room::parse("doc:Sales Invoice:SINV-0001")?;
    /// assert_eq!(room.kind(), Kind::Doc);
    /// assert_eq!(room.id(), "Sales Invoice:SINV-0001");
    /// assert_eq!(Room::parse("lobby"), Err(RoomError::MissingKind("lobby".into())));
    /// # Ok::<(), RoomError>(())
    /// ```
    pub fn parse(name: &str) -> Result<Self, RoomError> {
        if name.is_empty() {
            return Err(RoomError::Empty);
        }
        if name.len() > MAX_ROOM_LEN {
            return Err(RoomError::TooLong {
                len: name.len(),
                max: MAX_ROOM_LEN,
            });
        }
        if name.chars().any(char::is_control) {
            return Err(RoomError::ControlCharacter);
        }
        let Some((kind, id)) = name.split_once(':') else {
            return Err(RoomError::MissingKind(name.to_owned()));
        };
        let kind_ok = !kind.is_empty()
            && kind.len() <= MAX_KIND_LEN
            && kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !kind_ok {
            return Err(RoomError::InvalidKind(kind.to_owned()));
        }
        if id.is_empty() {
            return Err(RoomError::EmptyId(name.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    /// Builds `kind:id` from parts and validates it.
    pub fn new(kind: &str, id: &str) -> Result<Self, RoomError> {
        Self::parse(&format!("{kind}:{id}"))
    }

    /// `user:{id}`.
    pub fn user(id: &str) -> Result<Self, RoomError> {
        Self::new("user", id)
    }

    /// `tenant:{id}`.
    pub fn tenant(id: &str) -> Result<Self, RoomError> {
        Self::new("tenant", id)
    }

    /// `doc:{doctype}:{name}`.
    pub fn doc(doctype: &str, name: &str) -> Result<Self, RoomError> {
        Self::parse(&format!("doc:{doctype}:{name}"))
    }

    /// `org:{name}`.
    pub fn org(name: &str) -> Result<Self, RoomError> {
        Self::new("org", name)
    }

    /// `sync:{doctype}:{org}`.
    pub fn sync(doctype: &str, org: &str) -> Result<Self, RoomError> {
        Self::parse(&format!("sync:{doctype}:{org}"))
    }

    /// `room:{name}`, a custom room.
    pub fn custom(name: &str) -> Result<Self, RoomError> {
        Self::new("room", name)
    }

    /// The full name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `:`.
    pub fn kind_str(&self) -> &str {
        self.0.split_once(':').map_or("", |(k, _)| k)
    }

    /// The part after the first `:`.
    pub fn id(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, id)| id)
    }

    /// The well-known kind.
    pub fn kind(&self) -> Kind {
        match self.kind_str() {
            "user" => Kind::User,
            "tenant" => Kind::Tenant,
            "doc" => Kind::Doc,
            "org" => Kind::Org,
            "sync" => Kind::Sync,
            "room" => Kind::Room,
            _ => Kind::Other,
        }
    }

    /// The owned name.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Room {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Room {
    type Err = RoomError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every socket in the namespace.
    Broadcast,
    /// The members of these rooms.
    Rooms(Vec<Room>),
}

/// The legacy routing rule: `room` → that room; else `user` → `user:{user}`; else
/// `doctype` + `docname` → `doc:{doctype}:{docname}`; else the whole namespace.
///
/// ```
/// use rooms::{legacy_target, Room, Target};
/// assert_eq!(legacy_target(None, Some("ann"), Some("Task"), Some("T-1"))?,
///            Target::Rooms(vec![Room::user("ann")?]));
/// assert_eq!(legacy_target(None, None, None, None)?, Target::Broadcast);
/// # Ok::<(), rooms::RoomError>(())
/// ```
pub fn legacy_target(
    room: Option<&str>,
    user: Option<&str>,
    doctype: Option<&str>,
    docname: Option<&str>,
) -> Result<Target, RoomError> {
    let room = match (room, user, doctype, docname) {
        (Some(room), ..) => Room::parse(room)?,
        (None, Some(user), ..) => Room::user(user)?,
        (None, None, Some(doctype), Some(docname)) => Room::doc(doctype, docname)?,
        _ => return Ok(Target::Broadcast),
    };
    Ok(Target::Rooms(vec![room]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(input: &str, expected: Result<(&str, Kind), RoomError>) {
        let got = Room::parse(input);
        match expected {
            Ok((id, kind)) => {
                let room = got.unwrap_or_else(|e| panic!("{input:?}: {e}"));
                assert_eq!(room.id(), id, "{input:?}");
                assert_eq!(room.kind(), kind, "{input:?}");
                assert_eq!(room.as_str(), input);
            }
            Err(e) => assert_eq!(got, Err(e), "{input:?}"),
        }
    }

    #[test]
    fn parse_cases() {
        check(
            "user:john@example.com",
            Ok(("john@example.com", Kind::User)),
        );
        check("tenant:acme", Ok(("acme", Kind::Tenant)));
        check("doc:Task:TASK-00001", Ok(("Task:TASK-00001", Kind::Doc)));
        check("org:ORG-2025-00001", Ok(("ORG-2025-00001", Kind::Org)));
        check(
            "sync:Task:ORG-2025-00001",
            Ok(("Task:ORG-2025-00001", Kind::Sync)),
        );
        check(
            "room:dashboard_updates",
            Ok(("dashboard_updates", Kind::Room)),
        );
        check("company:42", Ok(("42", Kind::Other)));
        check(
            "doc:Sales Invoice:S 1",
            Ok(("Sales Invoice:S 1", Kind::Doc)),
        );
        check("user:名前", Ok(("名前", Kind::User)));
        check("", Err(RoomError::Empty));
        check("lobby", Err(RoomError::MissingKind("lobby".into())));
        check(":x", Err(RoomError::InvalidKind(String::new())));
        check("User:x", Err(RoomError::InvalidKind("User".into())));
        check("us er:x", Err(RoomError::InvalidKind("us er".into())));
        check("user:", Err(RoomError::EmptyId("user:".into())));
        check("user:a\nb", Err(RoomError::ControlCharacter));
        check("user:a\u{7f}", Err(RoomError::ControlCharacter));
        check(
            &format!("room:{}", "x".repeat(MAX_ROOM_LEN)),
            Err(RoomError::TooLong {
                len: MAX_ROOM_LEN + 5,
                max: MAX_ROOM_LEN,
            }),
        );
        check(
            &format!("{}:x", "k".repeat(MAX_KIND_LEN + 1)),
            Err(RoomError::InvalidKind("k".repeat(MAX_KIND_LEN + 1))),
        );
    }

    #[test]
    fn typed_constructors() {
        assert_eq!(Room::user("7").unwrap().as_str(), "user:7");
        assert_eq!(Room::tenant("t").unwrap().as_str(), "tenant:t");
        assert_eq!(Room::doc("Task", "T-1").unwrap().as_str(), "doc:Task:T-1");
        assert_eq!(Room::org("O").unwrap().as_str(), "org:O");
        assert_eq!(Room::sync("Task", "O").unwrap().as_str(), "sync:Task:O");
        assert_eq!(Room::custom("d").unwrap().as_str(), "room:d");
        assert_eq!(Room::user(""), Err(RoomError::EmptyId("user:".into())));
    }

    #[test]
    fn legacy_routing_rule() {
        let r = |s: &str| Room::parse(s).unwrap();
        let cases: &[(_, _, _, _, Target)] = &[
            (
                Some("room:x"),
                Some("u"),
                Some("T"),
                Some("n"),
                Target::Rooms(vec![r("room:x")]),
            ),
            (
                None,
                Some("u"),
                Some("T"),
                Some("n"),
                Target::Rooms(vec![r("user:u")]),
            ),
            (
                None,
                None,
                Some("T"),
                Some("n"),
                Target::Rooms(vec![r("doc:T:n")]),
            ),
            (None, None, Some("T"), None, Target::Broadcast),
            (None, None, None, Some("n"), Target::Broadcast),
            (None, None, None, None, Target::Broadcast),
        ];
        for (room, user, doctype, docname, expected) in cases {
            assert_eq!(
                legacy_target(*room, *user, *doctype, *docname).as_ref(),
                Ok(expected)
            );
        }
        assert_eq!(
            legacy_target(Some("bad"), None, None, None),
            Err(RoomError::MissingKind("bad".into()))
        );
    }

    proptest! {
        #[test]
        fn fuzz_parse_never_panics_and_round_trips(s in ".{0,300}") {
            if let Ok(room) = Room::parse(&s) {
                prop_assert_eq!(room.as_str(), s.as_str());
                let shown = format!("{room}");
                prop_assert_eq!(Room::parse(&shown), Ok(room.clone()));
                prop_assert!(room.as_str().len() <= MAX_ROOM_LEN);
            }
        }

        #[test]
        fn valid_names_parse(kind in "[a-z0-9_-]{1,32}", id in "[^\\p{Cc}]{1,100}") {
            let name = format!("{kind}:{id}");
            prop_assume!(name.len() <= MAX_ROOM_LEN);
            let room = Room::parse(&name).unwrap();
            prop_assert_eq!(room.kind_str(), kind.as_str());
            prop_assert_eq!(room.id(), id.as_str());
        }
    }
}
