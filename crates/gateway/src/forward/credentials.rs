//! Node credentials: what a node adds to a request it hands to another node, and how
//! the receiving node checks it.
//!
//! The header `x-roomcast-forwarded: {ms}.{tag}.{mac}` carries the time it was made
//! (ms since the epoch), the sending node's [`SidTag`] and, in hex, the HMAC-SHA256,
//! under the cluster's secret, of `{ms}\n{tag}\n{METHOD}\n{path?query}`. A receiver
//! accepts it within [`MAX_SKEW`] of its own clock.

use std::time::Duration;

use axum::http::{HeaderValue, Method};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::SidTag;

/// The header carrying node credentials.
pub const HEADER: &str = "x-roomcast-forwarded";
/// How far a credential's time may be from the receiver's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

/// The label that turns a publish key into a cluster secret (see [`NodeKey::derived`]).
const DERIVATION_LABEL: &[u8] = b"roomcast node forwarding v1";

/// The cluster's shared secret for node credentials.
#[derive(Clone)]
pub struct NodeKey(Vec<u8>);

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(***)")
    }
}

/// Why a request's node credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The header is not `{ms}.{tag}.{hex mac}`.
    #[error("malformed node credentials")]
    Malformed,
    /// The time in it is too far from this node's clock (a replay, or clocks apart).
    #[error("node credentials out of date (more than {} s from this node's clock)", MAX_SKEW.as_secs())]
    Stale,
    /// The MAC does not match: not made with this cluster's secret, or for another request.
    #[error("node credentials do not match this cluster's secret")]
    BadSignature,
    /// This node forwards nothing (no cluster secret configured).
    #[error("this node accepts no forwarded requests (no CLUSTER_SECRET)")]
    NoKey,
}

impl NodeKey {
    /// The key from `CLUSTER_SECRET`.
    pub fn new(secret: &[u8]) -> Self {
        Self(secret.to_vec())
    }

    /// The key nodes sharing a publish key derive from it when no `CLUSTER_SECRET` is
    /// set: an HMAC of a fixed label, so the publish key itself never travels.
    pub fn derived(publish_key: &str) -> Self {
        let mut mac = Self::new(publish_key.as_bytes()).mac();
        mac.update(DERIVATION_LABEL);
        Self(mac.finalize().into_bytes().to_vec())
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        Hmac::<Sha256>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"))
    }

    fn signed(&self, ms: u64, tag: &str, method: &Method, path_and_query: &str) -> Hmac<Sha256> {
        let mut mac = self.mac();
        mac.update(format!("{ms}\n{tag}\n{method}\n{path_and_query}").as_bytes());
        mac
    }

    /// The credentials of node `from` for a request, made at `ms`.
    pub fn sign(
        &self,
        from: SidTag,
        ms: u64,
        method: &Method,
        path_and_query: &str,
    ) -> HeaderValue {
        let mac = self.signed(ms, from.as_str(), method, path_and_query);
        let value = format!("{ms}.{from}.{}", hex::encode(mac.finalize().into_bytes()));
        // Digits, alphabet characters, dots and hex: always a valid header value.
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Checks `header` for a request at `now_ms`; the sending node's tag if it holds.
    pub fn verify(
        &self,
        header: &HeaderValue,
        now_ms: u64,
        method: &Method,
        path_and_query: &str,
    ) -> Result<SidTag, CredentialError> {
        let text = header.to_str().map_err(|_| CredentialError::Malformed)?;
        let mut parts = text.splitn(3, '.');
        let (Some(ms), Some(tag), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CredentialError::Malformed);
        };
        let ms: u64 = ms.parse().map_err(|_| CredentialError::Malformed)?;
        let from = SidTag::parse(tag).ok_or(CredentialError::Malformed)?;
        let mac = hex::decode(mac).map_err(|_| CredentialError::Malformed)?;
        if now_ms.abs_diff(ms) > MAX_SKEW.as_millis() as u64 {
            return Err(CredentialError::Stale);
        }
        self.signed(ms, tag, method, path_and_query)
            .verify_slice(&mac)
            .map_err(|_| CredentialError::BadSignature)?;
        Ok(from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const PATH: &str = "/socket.io/?EIO=4&transport=polling&sid=abcdAAAAAAAAAAAA";

    #[test]
    fn credentials_made_with_the_cluster_secret_hold_for_that_request_only() {
        let key = NodeKey::new(b"a-cluster-secret-of-32-bytes-or-more");
        let tag = SidTag::random();
        let header = key.sign(tag, NOW, &Method::GET, PATH);
        assert_eq!(key.verify(&header, NOW + 1000, &Method::GET, PATH), Ok(tag));
        assert_eq!(
            key.verify(&header, NOW, &Method::POST, PATH),
            Err(CredentialError::BadSignature),
            "another method"
        );
        assert_eq!(
            key.verify(
                &header,
                NOW,
                &Method::GET,
                "/socket.io/?EIO=4&transport=polling&sid=efghAAAAAAAAAAAA"
            ),
            Err(CredentialError::BadSignature),
            "another session"
        );
        let other = NodeKey::new(b"another-cluster-secret-of-32-bytes!!");
        assert_eq!(
            other.verify(&header, NOW, &Method::GET, PATH),
            Err(CredentialError::BadSignature)
        );
    }

    #[test]
    fn old_or_malformed_credentials_are_refused() {
        let key = NodeKey::derived("a-publish-key-of-at-least-32-bytes!");
        let tag = SidTag::random();
        let header = key.sign(tag, NOW, &Method::GET, PATH);
        let late = NOW + MAX_SKEW.as_millis() as u64 + 1;
        assert_eq!(
            key.verify(&header, late, &Method::GET, PATH),
            Err(CredentialError::Stale)
        );
        for bad in ["", "1.2", "x.abcd.00", "1.ab.00", "1.abcd.zz"] {
            let value = HeaderValue::from_str(bad).unwrap();
            assert_eq!(
                key.verify(&value, NOW, &Method::GET, PATH),
                Err(CredentialError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_derived_key_depends_on_the_publish_key() {
        let tag = SidTag::random();
        let a = NodeKey::derived("publish-key-one-of-at-least-32-bytes");
        let b = NodeKey::derived("publish-key-two-of-at-least-32-bytes");
        let header = a.sign(tag, NOW, &Method::GET, PATH);
        assert!(b.verify(&header, NOW, &Method::GET, PATH).is_err());
        assert!(
            NodeKey::derived("publish-key-one-of-at-least-32-bytes")
                .verify(&header, NOW, &Method::GET, PATH)
                .is_ok()
        );
    }
}
