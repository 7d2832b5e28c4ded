//! Client authentication: JWT verification and the identity a socket carries.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use rooms::{JoinPolicy, Room};
use serde_json::{Map, Value};

use crate::config::{ClaimNames, JwtKey};

/// Who a connected socket is, from its token.
#[derive(Debug, Clone)]
pub struct Identity {
    /// User id (the user claim).
    pub user_id: String,
    /// Tenant id, when the token has one.
    pub tenant_id: Option<String>,
    /// Rooms the client may join on request.
    pub policy: JoinPolicy,
}

impl Identity {
    /// The rooms joined automatically on connect: `user:{id}` and `tenant:{id}`.
    pub fn auto_rooms(&self) -> Result<Vec<Room>, AuthError> {
        let mut rooms = vec![
            Room::user(&self.user_id).map_err(|e| AuthError::InvalidClaim {
                claim: "user".into(),
                reason: e.to_string(),
            })?,
        ];
        if let Some(tenant) = &self.tenant_id {
            rooms.push(Room::tenant(tenant).map_err(|e| AuthError::InvalidClaim {
                claim: "tenant".into(),
                reason: e.to_string(),
            })?);
        }
        Ok(rooms)
    }
}

/// Why a client was refused. The message is sent to the client as the Socket.IO connect
/// error, so it names the problem without echoing the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token anywhere.
    #[error(
        "authentication required: send a JWT in auth.token, an Authorization: Bearer header or a token query parameter"
    )]
    Missing,
    /// Not a JWT.
    #[error("invalid token: {0}")]
    Malformed(String),
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// Signature does not verify.
    #[error("invalid token signature")]
    BadSignature,
    /// `alg` is `none` or not the algorithm the gateway is configured for.
    #[error("token algorithm {found} is not accepted (expected {expected})")]
    AlgorithmNotAllowed {
        /// The token's `alg`.
        found: String,
        /// What the gateway accepts.
        expected: String,
    },
    /// A required claim is absent.
    #[error("token has no {0:?} claim")]
    MissingClaim(String),
    /// A claim has an unusable value.
    #[error("token claim {claim:?} is invalid: {reason}")]
    InvalidClaim {
        /// The claim.
        claim: String,
        /// Why.
        reason: String,
    },
}

/// Verifies client tokens against one key and algorithm family.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    expected: &'static str,
    claims: ClaimNames,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("expected", &self.expected)
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for `key`. The algorithm family is fixed by the key type — a secret
    /// accepts only HS256/384/512, an RSA key only RS*/PS*, an EC key only ES256/384 — so a
    /// token cannot choose how it is verified (no algorithm confusion, no `none`).
    pub fn new(key: &JwtKey, claims: ClaimNames) -> Result<Self, String> {
        let (key, algorithms, expected): (_, &[Algorithm], _) = match key {
            JwtKey::Secret(secret) => (
                DecodingKey::from_secret(secret.as_bytes()),
                &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
                "HS256",
            ),
            JwtKey::PublicKeyPem(pem) => {
                if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                    (
                        key,
                        &[
                            Algorithm::RS256,
                            Algorithm::RS384,
                            Algorithm::RS512,
                            Algorithm::PS256,
                            Algorithm::PS384,
                            Algorithm::PS512,
                        ],
                        "RS256",
                    )
                } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
                    (key, &[Algorithm::ES256, Algorithm::ES384], "ES256")
                } else {
                    return Err(
                        "JWT_PUBLIC_KEY_FILE is neither an RSA nor an EC public key in PEM form"
                            .into(),
                    );
                }
            }
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.to_vec();
        validation.validate_nbf = true;
        validation.leeway = 30;
        validation.required_spec_claims = ["exp".to_owned()].into();
        Ok(Self {
            key,
            validation,
            expected,
            claims,
        })
    }

    /// Verifies `token` and extracts the identity.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let alg = header_alg(token)?;
        if !self
            .validation
            .algorithms
            .iter()
            .any(|a| format!("{a:?}") == alg)
        {
            return Err(AuthError::AlgorithmNotAllowed {
                found: alg,
                expected: self.expected.to_owned(),
            });
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                AuthError::AlgorithmNotAllowed {
                    found: alg.clone(),
                    expected: self.expected.to_owned(),
                }
            }
            ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
            _ => AuthError::Malformed(e.to_string()),
        })?;
        self.identity(&data.claims)
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, AuthError> {
        let user_id = string_claim(claims, &self.claims.user)?
            .ok_or_else(|| AuthError::MissingClaim(self.claims.user.clone()))?;
        let tenant_id = string_claim(claims, &self.claims.tenant)?;
        let policy = match claims.get(&self.claims.rooms) {
            None | Some(Value::Null) => JoinPolicy::default(),
            Some(Value::Array(items)) => {
                let patterns: Vec<&str> = items
                    .iter()
                    .map(|v| {
                        v.as_str().ok_or_else(|| AuthError::InvalidClaim {
                            claim: self.claims.rooms.clone(),
                            reason: "must be a list of strings".into(),
                        })
                    })
                    .collect::<Result<_, _>>()?;
                JoinPolicy::parse(patterns).map_err(|e| AuthError::InvalidClaim {
                    claim: self.claims.rooms.clone(),
                    reason: e.to_string(),
                })?
            }
            Some(_) => {
                return Err(AuthError::InvalidClaim {
                    claim: self.claims.rooms.clone(),
                    reason: "must be a list of strings".into(),
                });
            }
        };
        let identity = Identity {
            user_id,
            tenant_id,
            policy,
        };
        identity.auto_rooms()?;
        Ok(identity)
    }
}

/// A string (or number) claim; `None` when absent, null or empty.
fn string_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(AuthError::InvalidClaim {
            claim: name.to_owned(),
            reason: "must be a string".into(),
        }),
    }
}

/// Reads `alg` from the token header without trusting anything else in it.
fn header_alg(token: &str) -> Result<String, AuthError> {
    let header = token
        .split('.')
        .next()
        .filter(|h| !h.is_empty() && token.split('.').count() == 3)
        .ok_or_else(|| {
            AuthError::Malformed("not a JWT (expected three dot-separated parts)".into())
        })?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed("header is not base64url".into()))?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed("header is not a JSON object".into()))?;
    match header.get("alg") {
        Some(Value::String(alg)) => Ok(alg.clone()),
        _ => Err(AuthError::Malformed("header has no alg".into())),
    }
}

/// Where a handshake may carry its token, in order of preference.
#[derive(Debug, Clone, Copy)]
pub struct TokenSources<'a> {
    /// The Socket.IO handshake `auth` payload.
    pub auth: Option<&'a Value>,
    /// The `Authorization` header value.
    pub authorization: Option<&'a str>,
    /// The request query string.
    pub query: Option<&'a str>,
}

impl TokenSources<'_> {
    /// The first token found: `auth.token`, then `Authorization: Bearer`, then `?token=`.
    pub fn find(&self) -> Option<String> {
        if let Some(token) = self
            .auth
            .and_then(|a| a.get("token"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            return Some(token.to_owned());
        }
        if let Some(token) = self
            .authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            return Some(token.to_owned());
        }
        self.query?
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| percent_decode(v))
            .filter(|t| !t.is_empty())
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = s
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Signs an HS256 token with `claims` (used for the development token and by tests).
pub fn sign_hs256(secret: &str, claims: &Value) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "test-secret";

    fn auth() -> Authenticator {
        Authenticator::new(&JwtKey::Secret(SECRET.into()), ClaimNames::default()).unwrap()
    }

    fn token(claims: Value) -> String {
        sign_hs256(SECRET, &claims).unwrap()
    }

    fn b64(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn accepts_a_good_token() {
        let exp = unix_now() + 60;
        let id = auth()
            .verify(&token(
                json!({"sub": "ann", "tenant_id": "acme", "rooms": ["doc:Task:*"], "exp": exp}),
            ))
            .unwrap();
        assert_eq!(id.user_id, "ann");
        assert_eq!(id.tenant_id.as_deref(), Some("acme"));
        assert!(id.policy.allows(&Room::doc("Task", "1").unwrap()));
        let rooms: Vec<String> = id
            .auto_rooms()
            .unwrap()
            .into_iter()
            .map(Room::into_string)
            .collect();
        assert_eq!(rooms, vec!["user:ann", "tenant:acme"]);
    }

    #[test]
    fn refusals_say_why() {
        let exp = unix_now() + 60;
        let a = auth();
        let cases: Vec<(String, AuthError)> = vec![
            (
                token(json!({"sub": "a", "exp": unix_now() - 3600})),
                AuthError::Expired,
            ),
            (
                token(json!({"sub": "a"})),
                AuthError::MissingClaim("exp".into()),
            ),
            (
                token(json!({"exp": exp})),
                AuthError::MissingClaim("sub".into()),
            ),
            (
                token(json!({"sub": "a", "exp": exp, "nbf": unix_now() + 3600})),
                AuthError::NotYetValid,
            ),
            (
                sign_hs256("other", &json!({"sub": "a", "exp": exp})).unwrap(),
                AuthError::BadSignature,
            ),
            (
                format!(
                    "{}.{}.",
                    b64(&json!({"alg": "none", "typ": "JWT"})),
                    b64(&json!({"sub": "a", "exp": exp}))
                ),
                AuthError::AlgorithmNotAllowed {
                    found: "none".into(),
                    expected: "HS256".into(),
                },
            ),
            (
                format!(
                    "{}.{}.c2ln",
                    b64(&json!({"alg": "RS256"})),
                    b64(&json!({"sub": "a", "exp": exp}))
                ),
                AuthError::AlgorithmNotAllowed {
                    found: "RS256".into(),
                    expected: "HS256".into(),
                },
            ),
            (
                "garbage".into(),
                AuthError::Malformed("not a JWT (expected three dot-separated parts)".into()),
            ),
            (
                token(json!({"sub": "a", "exp": exp, "rooms": "doc:*"})),
                AuthError::InvalidClaim {
                    claim: "rooms".into(),
                    reason: "must be a list of strings".into(),
                },
            ),
            (
                token(json!({"sub": "a", "tenant_id": {"x": 1}, "exp": exp})),
                AuthError::InvalidClaim {
                    claim: "tenant_id".into(),
                    reason: "must be a string".into(),
                },
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(a.verify(&token).unwrap_err(), expected, "{token}");
        }
    }

    #[test]
    fn custom_claim_names() {
        let names = ClaimNames {
            user: "uid".into(),
            tenant: "site".into(),
            rooms: "allow".into(),
        };
        let a = Authenticator::new(&JwtKey::Secret(SECRET.into()), names).unwrap();
        let id = a
            .verify(&token(
                json!({"uid": 7, "site": "s1", "allow": ["*"], "exp": unix_now() + 60}),
            ))
            .unwrap();
        assert_eq!(
            (id.user_id.as_str(), id.tenant_id.as_deref()),
            ("7", Some("s1"))
        );
    }

    #[test]
    fn token_sources_in_order() {
        let auth = json!({"token": "from-auth"});
        let s = TokenSources {
            auth: Some(&auth),
            authorization: Some("Bearer from-header"),
            query: Some("token=from-query"),
        };
        assert_eq!(s.find().as_deref(), Some("from-auth"));
        let s = TokenSources {
            auth: None,
            authorization: Some("Bearer from-header"),
            query: Some("token=q"),
        };
        assert_eq!(s.find().as_deref(), Some("from-header"));
        let s = TokenSources {
            auth: Some(&json!({})),
            authorization: None,
            query: Some("EIO=4&token=a%2Eb&x=1"),
        };
        assert_eq!(s.find().as_deref(), Some("a.b"));
        let s = TokenSources {
            auth: None,
            authorization: Some("Basic x"),
            query: Some("EIO=4"),
        };
        assert_eq!(s.find(), None);
    }
}
