//! Checking that a webhook call comes from a gateway (`UPSTREAM_ROUTES=…=webhook`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "x-roomcast-signature";

/// Why a webhook call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The header is not `t=…,v1=…`.
    #[error("malformed signature header")]
    Malformed,
    /// Signed too long ago (or in the future): a replay, or a skewed clock.
    #[error("signature timestamp outside the tolerance")]
    Stale,
    /// The body or the secret does not match.
    #[error("signature mismatch")]
    Mismatch,
}

/// Checks the `x-roomcast-signature` header `header` of a call with body `body`, signed
/// with `secret` (the gateways' `UPSTREAM_WEBHOOK_SECRET`), at most `tolerance_secs` from
/// `now` (unix seconds). Compares in constant time.
///
/// ```
/// let body = br#"{"event":"ping"}"#;
/// let header = "t=1700000000,v1=".to_owned()
///     + "a3bb3f6c0b6f9ef0e0d7c43d2d17d9aa42d7a1ed0b5b32ea9fc1c3e63b6af1a4";
/// // Any change to the body, the secret or the time is refused:
/// assert!(publisher::verify_signature(b"secret", &header, b"{}", 1_700_000_000, 300).is_err());
/// ```
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err(SignatureError::Malformed);
    };
    if now.abs_diff(t) > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&v1).map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_its_own_signature_and_refuses_changes() {
        // Made with: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key
        let header =
            "t=1700000000,v1=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03";
        let body = br#"{"a":1}"#;
        assert_eq!(
            verify_signature(b"key", header, body, 1_700_000_100, 300),
            Ok(())
        );
        assert_eq!(
            verify_signature(b"key", header, br#"{"a":2}"#, 1_700_000_100, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"other", header, body, 1_700_000_100, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"key", header, body, 1_700_001_000, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature(b"key", "v1=00", body, 1_700_000_000, 300),
            Err(SignatureError::Malformed)
        );
    }
}
