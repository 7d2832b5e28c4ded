//! The node's mark in the Engine.IO session ids it hands out.

use socketioxide::socket::Sid;

/// The URL-safe base64 alphabet Engine.IO session ids are written in.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/// Characters of a session id.
const SID_LEN: usize = 16;
/// Characters of the tag at the start of it; the other 12 are random (72 bits).
const TAG_LEN: usize = 4;

/// The first four characters of every session id a node hands out, chosen at random
/// when the node starts and announced in the cluster registry: any node reading a
/// request's `sid` knows which node holds the session without asking anyone.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SidTag([u8; TAG_LEN]);

impl SidTag {
    /// A random tag.
    pub fn random() -> Self {
        let mut tag = [0u8; TAG_LEN];
        fill_random(&mut tag);
        Self(tag)
    }

    /// The tag of `sid`, if it is shaped like an Engine.IO session id (16 URL-safe
    /// base64 characters).
    pub fn of_sid(sid: &str) -> Option<Self> {
        let bytes = sid.as_bytes();
        if bytes.len() != SID_LEN || !bytes.iter().all(|b| ALPHABET.contains(b)) {
            return None;
        }
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&bytes[..TAG_LEN]);
        Some(Self(tag))
    }

    /// Reads a tag as announced in the registry.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != TAG_LEN || !bytes.iter().all(|b| ALPHABET.contains(b)) {
            return None;
        }
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(bytes);
        Some(Self(tag))
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        // Only alphabet characters (ASCII) are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("????")
    }

    /// A new session id: this tag and 72 random bits.
    pub fn new_sid(&self) -> Sid {
        let mut id = [0u8; SID_LEN];
        id[..TAG_LEN].copy_from_slice(&self.0);
        fill_random(&mut id[TAG_LEN..]);
        // Alphabet characters, 16 of them: always a valid sid.
        std::str::from_utf8(&id)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for SidTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SidTag({})", self.as_str())
    }
}

impl std::fmt::Display for SidTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Fills `out` with random alphabet characters.
fn fill_random(out: &mut [u8]) {
    use rand::Rng as _;
    let mut rng = rand::rng();
    for byte in out {
        *byte = ALPHABET[rng.random_range(0..ALPHABET.len())];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_sids_carry_the_tag_and_differ() {
        let tag = SidTag::random();
        let a = tag.new_sid();
        let b = tag.new_sid();
        assert_ne!(a, b);
        assert_eq!(SidTag::of_sid(a.as_str()), Some(tag));
        assert_eq!(SidTag::of_sid(b.as_str()), Some(tag));
        assert_eq!(SidTag::parse(tag.as_str()), Some(tag));
    }

    #[test]
    fn ids_that_are_not_engine_io_session_ids_have_no_tag() {
        for sid in [
            "",
            "short",
            "AAAAAAAAAAAAAAA!",
            "AAAAAAAAAAAAAAAAA",
            "ééééééééAAAAAAAA",
        ] {
            assert_eq!(SidTag::of_sid(sid), None, "{sid:?}");
        }
        assert_eq!(SidTag::parse("abc"), None);
        assert_eq!(SidTag::parse("ab/c"), None);
    }
}
