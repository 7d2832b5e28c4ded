//! Which rooms a client may join.

use crate::Room;

/// One allowed-room pattern from a token: an exact room name, or a prefix ending in `*`
/// (`doc:Task:*`); a lone `*` allows every valid room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Exactly this room.
    Exact(String),
    /// Any room starting with this prefix (the `*` removed).
    Prefix(String),
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// Empty pattern.
    #[error("empty room pattern")]
    Empty,
    /// `*` somewhere other than at the end.
    #[error("room pattern {0:?} may only have '*' at the end")]
    InnerWildcard(String),
}

impl Pattern {
    /// Parses `doc:Task:*`, `user:42` or `*`.
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        match s.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') => Ok(Self::Prefix(prefix.to_owned())),
            None if !s.contains('*') => Ok(Self::Exact(s.to_owned())),
            _ => Err(PatternError::InnerWildcard(s.to_owned())),
        }
    }

    /// True if `room` matches.
    pub fn matches(&self, room: &Room) -> bool {
        match self {
            Self::Exact(name) => room.as_str() == name,
            Self::Prefix(prefix) => room.as_str().starts_with(prefix.as_str()),
        }
    }
}

/// The rooms one client may join on request: its own `user:` and `tenant:` rooms (joined
/// automatically) plus whatever its token's patterns allow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinPolicy {
    patterns: Vec<Pattern>,
}

impl JoinPolicy {
    /// A policy from parsed patterns.
    pub fn new(patterns: Vec<Pattern>) -> Self {
        Self { patterns }
    }

    /// Parses every pattern; fails on the first invalid one.
    ///
    /// ```
    /// let policy = rooms::JoinPolicy::parse(["doc:Task:*", "room:lobby"])?;
    /// assert!(policy.allows(&rooms::Room::doc("Task", "T-1").unwrap()));
    /// assert!(!policy.allows(&rooms::Room::doc("Note", "N-1").unwrap()));
    /// # Ok::<(), rooms::PatternError>(())
    /// ```
    pub fn parse<I, S>(patterns: I) -> Result<Self, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        patterns
            .into_iter()
            .map(|p| Pattern::parse(p.as_ref()))
            .collect::<Result<_, _>>()
            .map(Self::new)
    }

    /// True if some pattern matches `room`.
    pub fn allows(&self, room: &Room) -> bool {
        self.patterns.iter().any(|p| p.matches(room))
    }

    /// The patterns.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(patterns: &[&str], room: &str, allowed: bool) {
        let policy = JoinPolicy::parse(patterns).unwrap();
        let room = Room::parse(room).unwrap();
        assert_eq!(policy.allows(&room), allowed, "{patterns:?} vs {room}");
    }

    #[test]
    fn matching() {
        check(&["*"], "doc:Task:1", true);
        check(&["doc:Task:*"], "doc:Task:1", true);
        check(&["doc:Task:*"], "doc:Taskforce:1", false);
        check(&["doc:Task:*"], "doc:Note:1", false);
        check(&["room:lobby"], "room:lobby", true);
        check(&["room:lobby"], "room:lobby2", false);
        check(&[], "room:lobby", false);
        check(&["org:A", "room:*"], "room:x", true);
    }

    #[test]
    fn invalid_patterns() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(
            Pattern::parse("doc:*:x"),
            Err(PatternError::InnerWildcard("doc:*:x".into()))
        );
        assert_eq!(
            Pattern::parse("**"),
            Err(PatternError::InnerWildcard("**".into()))
        );
    }
}
