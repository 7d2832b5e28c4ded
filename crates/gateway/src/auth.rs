//! Client authentication: JWT verification against a set of keys (shared secrets, PEM
//! public keys, a JWKS URL), and the identity a socket carries.
//!
//! The algorithm family is fixed by each key's type — a secret verifies only HS256/384/512,
//! an RSA key only RS*/PS*, an EC key only ES256/384 — so a token cannot choose how it is
//! verified (no algorithm confusion, no `none`). A token's `kid` picks the key when it
//! names one; a `kid` that no cached JWKS key has makes the authenticator fetch the JWKS
//! again (at most once per [`TokenRules::jwks_min_refetch`]), which is how key rotation is followed.

use std::fmt;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use rooms::{JoinPolicy, Room, ScopedRoom, TenantError, TenantId};
use serde_json::{Map, Value};

/// One key client tokens are verified with.
#[derive(Clone)]
pub enum JwtKey {
    /// HS256 shared secret.
    Secret(String),
    /// PEM public key contents (RSA → RS*/PS*, EC → ES*, Ed25519 → EdDSA).
    PublicKeyPem(Vec<u8>),
}

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone)]
pub struct TokenRules {
    /// Accepted `aud` values; empty: `aud` is not checked. Default empty.
    pub audience: Vec<String>,
    /// Accepted `iss` values; empty: `iss` is not checked. Default empty.
    pub issuer: Vec<String>,
    /// A JWKS to fetch verification keys from. Default none.
    pub jwks_url: Option<String>,
    /// How long a fetched JWKS is used before it is fetched again. Default 300 s.
    pub jwks_refresh: Duration,
    /// Refuse tokens that name no tenant. Default false.
    pub require_tenant: bool,
    /// The shortest interval between two JWKS fetches caused by unknown `kid`s, so a
    /// client sending random key ids cannot make the node hammer the identity provider.
    /// Default 10 s.
    pub jwks_min_refetch: Duration,
}

impl Default for TokenRules {
    fn default() -> Self {
        Self {
            audience: Vec::new(),
            issuer: Vec::new(),
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
            require_tenant: false,
            jwks_min_refetch: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret(***)"),
            Self::PublicKeyPem(_) => f.write_str("PublicKeyPem(..)"),
        }
    }
}

/// Names of the claims read from client tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimNames {
    /// User id claim (default `sub`).
    pub user: String,
    /// Tenant id claim (default `tenant_id`).
    pub tenant: String,
    /// Room patterns claim (default `rooms`).
    pub rooms: String,
    /// Publish patterns claim (default `publish`).
    pub publish: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            user: "sub".into(),
            tenant: "tenant_id".into(),
            rooms: "rooms".into(),
            publish: "publish".into(),
        }
    }
}

/// Who a connected socket is, from its token.
#[derive(Debug, Clone)]
pub struct Identity {
    /// User id (the user claim). Unique only inside its tenant.
    pub user_id: String,
    /// Tenant id, when the token has one; every room of the socket lives in its scope.
    pub tenant_id: Option<TenantId>,
    /// Rooms the client may join on request.
    pub policy: JoinPolicy,
    /// Rooms the client may publish to (the `publish` claim); none by default.
    pub publish: JoinPolicy,
    /// The token's `exp`, seconds since the Unix epoch: the socket is disconnected then
    /// unless it sends a fresher token (`refresh`).
    pub expires_at: u64,
}

impl Identity {
    /// The rooms joined automatically on connect: `user:{id}` and `tenant:{id}`.
    pub fn auto_rooms(&self) -> Result<Vec<Room>, AuthError> {
        let invalid = |claim: &str, e: &dyn std::fmt::Display| AuthError::InvalidClaim {
            claim: claim.into(),
            reason: e.to_string(),
        };
        let mut rooms = vec![Room::user(&self.user_id).map_err(|e| invalid("user", &e))?];
        if let Some(tenant) = &self.tenant_id {
            rooms.push(Room::tenant(tenant.as_str()).map_err(|e| invalid("tenant", &e))?);
        }
        Ok(rooms)
    }

    /// `room` in this socket's tenant scope. Fails for another tenant's `tenant:` room.
    pub fn scope(&self, room: &Room) -> Result<ScopedRoom, TenantError> {
        ScopedRoom::new(self.tenant_id.as_ref(), room)
    }

    /// Whether the socket may publish to `room`: allowed by its token's `publish`
    /// patterns, in its tenant's scope.
    pub fn may_publish(&self, room: &Room) -> Result<ScopedRoom, String> {
        let scoped = self.scope(room).map_err(|e| e.to_string())?;
        if self.publish.allows(room) {
            Ok(scoped)
        } else {
            Err(format!("not allowed to publish to {room}"))
        }
    }

    /// Whether the socket may be in `room`: one of its own rooms, or allowed by its
    /// token's patterns, and never another tenant's `tenant:` room.
    pub fn may_join(&self, room: &Room) -> Result<ScopedRoom, String> {
        let scoped = self.scope(room).map_err(|e| e.to_string())?;
        if room.kind() == rooms::Kind::Tenant && self.tenant_id.is_none() {
            return Err(format!(
                "not allowed to join {room}: tenant rooms are for that tenant's sockets"
            ));
        }
        let own = self.auto_rooms().is_ok_and(|own| own.contains(room));
        if own || self.policy.allows(room) {
            Ok(scoped)
        } else {
            Err(format!("not allowed to join {room}"))
        }
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
    /// Signature does not verify with any key for its algorithm.
    #[error("invalid token signature")]
    BadSignature,
    /// `alg` is not one the configured keys verify.
    #[error("token algorithm {found} is not accepted (expected {expected})")]
    AlgorithmNotAllowed {
        /// The token's `alg`.
        found: String,
        /// What the gateway accepts.
        expected: String,
    },
    /// `aud` does not name this gateway's audience (or is missing while one is required).
    #[error("token audience is not accepted")]
    WrongAudience,
    /// `iss` is not the configured issuer (or is missing while one is required).
    #[error("token issuer is not accepted")]
    WrongIssuer,
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
    /// The JWKS could not be fetched and no cached key verifies the token.
    #[error("token keys are unavailable right now; try again")]
    KeysUnavailable,
}

/// The algorithm families; each key verifies exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    EdDsa,
}

impl Family {
    fn of(alg: Algorithm) -> Option<Self> {
        use Algorithm::*;
        match alg {
            HS256 | HS384 | HS512 => Some(Self::Hmac),
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(Self::Rsa),
            ES256 | ES384 => Some(Self::Ec),
            EdDSA => Some(Self::EdDsa),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Hmac => "HS256",
            Self::Rsa => "RS256",
            Self::Ec => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

/// One verification key.
struct Key {
    kid: Option<String>,
    family: Family,
    key: DecodingKey,
}

impl Key {
    fn from_config(key: &JwtKey) -> Result<Self, String> {
        match key {
            JwtKey::Secret(secret) => Ok(Self {
                kid: None,
                family: Family::Hmac,
                key: DecodingKey::from_secret(secret.as_bytes()),
            }),
            JwtKey::PublicKeyPem(pem) => {
                if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                    Ok(Self {
                        kid: None,
                        family: Family::Rsa,
                        key,
                    })
                } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
                    Ok(Self {
                        kid: None,
                        family: Family::Ec,
                        key,
                    })
                } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
                    Ok(Self {
                        kid: None,
                        family: Family::EdDsa,
                        key,
                    })
                } else {
                    Err(
                        "JWT_PUBLIC_KEY_FILE is not an RSA, EC or Ed25519 public key in PEM form"
                            .into(),
                    )
                }
            }
        }
    }

    /// The verification keys of a JWKS document; keys it cannot use are skipped.
    fn from_jwks(set: &JwkSet) -> Vec<Self> {
        set.keys
            .iter()
            .filter_map(|jwk| {
                let family = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Family::Rsa,
                    AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                    AlgorithmParameters::OctetKeyPair(_) => Family::EdDsa,
                    // Shared secrets are never published in a JWKS.
                    _ => return None,
                };
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some(Self {
                    kid: jwk.common.key_id.clone(),
                    family,
                    key,
                })
            })
            .collect()
    }
}

/// A JWKS endpoint and what was last fetched from it.
struct Jwks {
    url: String,
    refresh: Duration,
    min_refetch: Duration,
    client: reqwest::Client,
    cache: RwLock<JwksCache>,
    /// One fetch at a time; concurrent verifications wait for it.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct JwksCache {
    keys: Vec<Key>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

impl Jwks {
    fn is_fresh(&self) -> bool {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.fetched.is_some_and(|t| t.elapsed() < self.refresh)
    }

    /// Fetches the JWKS unless another fetch happened within `min_refetch`;
    /// true when this call fetched (successfully or not).
    async fn refetch(&self) -> bool {
        let _one = self.fetching.lock().await;
        {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            if cache
                .attempted
                .is_some_and(|t| t.elapsed() < self.min_refetch)
            {
                return false;
            }
        }
        let result = async {
            let response = self
                .client
                .get(&self.url)
                .send()
                .await?
                .error_for_status()?;
            response.json::<JwkSet>().await
        }
        .await;
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        cache.attempted = Some(Instant::now());
        match result {
            Ok(set) => {
                cache.keys = Key::from_jwks(&set);
                cache.fetched = Some(Instant::now());
                tracing::info!(keys = cache.keys.len(), "fetched the JWKS");
            }
            Err(e) => {
                // The URL is configuration, not a secret; the error names no token.
                tracing::warn!(url = %self.url, error = %e, "cannot fetch the JWKS; keeping the cached keys");
            }
        }
        true
    }
}

/// Keys of `family`; those whose `kid` matches first when the token names one, and only
/// those when some key has that `kid`.
fn candidates(keys: &[Key], family: Family, kid: Option<&str>) -> Vec<DecodingKey> {
    let of_family = keys.iter().filter(|k| k.family == family);
    let by_kid: Vec<DecodingKey> = of_family
        .clone()
        .filter(|k| kid.is_some() && k.kid.as_deref() == kid)
        .map(|k| k.key.clone())
        .collect();
    if by_kid.is_empty() {
        of_family.map(|k| k.key.clone()).collect()
    } else {
        by_kid
    }
}

/// Verifies client tokens against the configured keys and rules.
pub struct Authenticator {
    keys: Vec<Key>,
    jwks: Option<Jwks>,
    rules: TokenRules,
    claims: ClaimNames,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .field("jwks", &self.jwks.as_ref().map(|j| &j.url))
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for `keys` (and the JWKS in `rules`, when set).
    pub fn new(keys: &[JwtKey], rules: TokenRules, claims: ClaimNames) -> Result<Self, String> {
        let keys = keys
            .iter()
            .map(Key::from_config)
            .collect::<Result<Vec<_>, _>>()?;
        let jwks = match &rules.jwks_url {
            None => None,
            Some(url) => Some(Jwks {
                url: url.clone(),
                refresh: rules.jwks_refresh,
                min_refetch: rules.jwks_min_refetch,
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|e| format!("cannot build the JWKS client: {e}"))?,
                cache: RwLock::default(),
                fetching: tokio::sync::Mutex::new(()),
            }),
        };
        if keys.is_empty() && jwks.is_none() {
            return Err("no JWT verification key configured".into());
        }
        Ok(Self {
            keys,
            jwks,
            rules,
            claims,
        })
    }

    /// An authenticator for one HS256 secret with the default rules (tests, embedding).
    pub fn hs256(secret: &str) -> Result<Self, String> {
        Self::new(
            &[JwtKey::Secret(secret.to_owned())],
            TokenRules::default(),
            ClaimNames::default(),
        )
    }

    fn expected(&self) -> String {
        let mut names: Vec<&str> = self.keys.iter().map(|k| k.family.name()).collect();
        if self.jwks.is_some() {
            names.extend(["RS256", "ES256"]);
        }
        names.sort_unstable();
        names.dedup();
        names.join(", ")
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.validate_nbf = true;
        v.leeway = 30;
        v.required_spec_claims = ["exp".to_owned()].into();
        // Checked when configured, ignored when not (jsonwebtoken would otherwise refuse
        // every token that carries an `aud`).
        v.validate_aud = !self.rules.audience.is_empty();
        if v.validate_aud {
            v.set_audience(&self.rules.audience);
            v.required_spec_claims.insert("aud".to_owned());
        }
        if !self.rules.issuer.is_empty() {
            v.set_issuer(&self.rules.issuer);
            v.required_spec_claims.insert("iss".to_owned());
        }
        v
    }

    /// Verifies `token` and extracts the identity.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            let detail = e.to_string();
            // An algorithm jsonwebtoken does not know (`none`, `HS1`...) is named in its
            // message as "unknown variant `none`".
            match detail
                .split("unknown variant `")
                .nth(1)
                .and_then(|r| r.split('`').next())
            {
                Some(alg) => AuthError::AlgorithmNotAllowed {
                    found: alg.chars().take(16).collect(),
                    expected: self.expected(),
                },
                None => AuthError::Malformed("not a JWT with a readable header".into()),
            }
        })?;
        let family = Family::of(header.alg).ok_or_else(|| AuthError::AlgorithmNotAllowed {
            found: format!("{:?}", header.alg),
            expected: self.expected(),
        })?;
        let kid = header.kid.as_deref();
        if let Some(jwks) = &self.jwks
            && !jwks.is_fresh()
        {
            jwks.refetch().await;
        }
        let first = self.try_keys(token, header.alg, &self.keys_for(family, kid));
        let claims = match (first, &self.jwks) {
            // An unknown `kid` or a rotated key: fetch the JWKS again and retry once.
            (Err(AuthError::BadSignature | AuthError::KeysUnavailable), Some(jwks))
                if jwks.refetch().await =>
            {
                self.try_keys(token, header.alg, &self.keys_for(family, kid))?
            }
            (first, _) => first?,
        };
        self.identity(&claims)
    }

    /// The keys that may verify a token of `family` naming `kid`.
    fn keys_for(&self, family: Family, kid: Option<&str>) -> Vec<DecodingKey> {
        let mut keys = candidates(&self.keys, family, kid);
        if let Some(jwks) = &self.jwks {
            let cache = jwks.cache.read().unwrap_or_else(|e| e.into_inner());
            keys.extend(candidates(&cache.keys, family, kid));
        }
        keys
    }

    fn try_keys(
        &self,
        token: &str,
        alg: Algorithm,
        keys: &[DecodingKey],
    ) -> Result<Map<String, Value>, AuthError> {
        if keys.is_empty() {
            let fetched = self.jwks.as_ref().is_some_and(|j| {
                let cache = j.cache.read().unwrap_or_else(|e| e.into_inner());
                cache.fetched.is_some()
            });
            return Err(if self.jwks.is_some() && !fetched {
                AuthError::KeysUnavailable
            } else {
                AuthError::AlgorithmNotAllowed {
                    found: format!("{alg:?}"),
                    expected: self.expected(),
                }
            });
        }
        let validation = self.validation(alg);
        for key in keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature => continue,
                    ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                    ErrorKind::ImmatureSignature => return Err(AuthError::NotYetValid),
                    ErrorKind::InvalidAudience => return Err(AuthError::WrongAudience),
                    ErrorKind::InvalidIssuer => return Err(AuthError::WrongIssuer),
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        return Err(AuthError::AlgorithmNotAllowed {
                            found: format!("{alg:?}"),
                            expected: self.expected(),
                        });
                    }
                    ErrorKind::MissingRequiredClaim(c) if c == "aud" => {
                        return Err(AuthError::WrongAudience);
                    }
                    ErrorKind::MissingRequiredClaim(c) if c == "iss" => {
                        return Err(AuthError::WrongIssuer);
                    }
                    ErrorKind::MissingRequiredClaim(c) => {
                        return Err(AuthError::MissingClaim(c.clone()));
                    }
                    // A key of another shape (e.g. an RSA key for a PSS token) or an
                    // unparsable signature: try the next key.
                    ErrorKind::InvalidKeyFormat | ErrorKind::InvalidRsaKey(_) => continue,
                    _ => return Err(AuthError::Malformed(e.to_string())),
                },
            }
        }
        Err(AuthError::BadSignature)
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, AuthError> {
        let user_id = string_claim(claims, &self.claims.user)?
            .ok_or_else(|| AuthError::MissingClaim(self.claims.user.clone()))?;
        let tenant_id = string_claim(claims, &self.claims.tenant)?
            .map(|t| {
                TenantId::parse(&t).map_err(|e| AuthError::InvalidClaim {
                    claim: self.claims.tenant.clone(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        if self.rules.require_tenant && tenant_id.is_none() {
            return Err(AuthError::MissingClaim(self.claims.tenant.clone()));
        }
        let policy = patterns_claim(claims, &self.claims.rooms)?;
        let publish = patterns_claim(claims, &self.claims.publish)?;
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
        let identity = Identity {
            user_id,
            tenant_id,
            policy,
            publish,
            expires_at,
        };
        identity.auto_rooms()?;
        Ok(identity)
    }
}

/// A claim holding room patterns (a list of strings); empty when absent or null.
fn patterns_claim(claims: &Map<String, Value>, name: &str) -> Result<JoinPolicy, AuthError> {
    let invalid = |reason: String| AuthError::InvalidClaim {
        claim: name.to_owned(),
        reason,
    };
    match claims.get(name) {
        None | Some(Value::Null) => Ok(JoinPolicy::default()),
        Some(Value::Array(items)) => {
            let patterns: Vec<&str> = items
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| invalid("must be a list of strings".into()))
                })
                .collect::<Result<_, _>>()?;
            JoinPolicy::parse(patterns).map_err(|e| invalid(e.to_string()))
        }
        Some(_) => Err(invalid("must be a list of strings".into())),
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
        form_urlencoded::parse(self.query?.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .filter(|t| !t.is_empty())
    }
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
    use base64::Engine as _;
    use serde_json::json;

    const SECRET: &str = "test-secret-test-secret-test-secret";

    fn auth() -> Authenticator {
        Authenticator::hs256(SECRET).unwrap()
    }

    fn token(claims: Value) -> String {
        sign_hs256(SECRET, &claims).unwrap()
    }

    fn b64(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[tokio::test]
    async fn accepts_a_good_token() {
        let exp = unix_now() + 60;
        let id = auth()
            .verify(&token(
                json!({"sub": "ann", "tenant_id": "acme", "rooms": ["doc:Task:*"], "exp": exp}),
            ))
            .await
            .unwrap();
        assert_eq!(id.user_id, "ann");
        assert_eq!(id.tenant_id.as_ref().map(TenantId::as_str), Some("acme"));
        assert_eq!(id.expires_at, exp);
        let doc = Room::doc("Task", "1").unwrap();
        assert_eq!(id.may_join(&doc).unwrap().as_str(), "@acme/doc:Task:1");
        assert!(id.may_join(&Room::tenant("globex").unwrap()).is_err());
        assert!(id.may_join(&Room::doc("Note", "1").unwrap()).is_err());
        let rooms: Vec<String> = id
            .auto_rooms()
            .unwrap()
            .into_iter()
            .map(Room::into_string)
            .collect();
        assert_eq!(rooms, vec!["user:ann", "tenant:acme"]);
    }

    #[tokio::test]
    async fn refusals_say_why() {
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
            assert_eq!(a.verify(&token).await.unwrap_err(), expected, "{token}");
        }
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&json!({"sub": "a", "exp": exp}))
        );
        assert_eq!(
            a.verify(&none).await.unwrap_err(),
            AuthError::AlgorithmNotAllowed {
                found: "none".into(),
                expected: "HS256".into()
            }
        );
        for bad in ["garbage", "a.b.c"] {
            assert!(
                matches!(a.verify(bad).await, Err(AuthError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn audience_and_issuer_checked_when_set_ignored_when_not() {
        let exp = unix_now() + 60;
        let with = token(json!({"sub": "a", "exp": exp, "aud": "roomcast", "iss": "https://idp"}));
        let without = token(json!({"sub": "a", "exp": exp}));
        let other = token(json!({"sub": "a", "exp": exp, "aud": ["x", "y"], "iss": "https://idp"}));
        // Unset: every token passes, whatever aud/iss it carries.
        for t in [&with, &without, &other] {
            auth().verify(t).await.unwrap();
        }
        let rules = TokenRules {
            audience: vec!["roomcast".into()],
            issuer: vec!["https://idp".into()],
            ..TokenRules::default()
        };
        let strict = Authenticator::new(
            &[JwtKey::Secret(SECRET.into())],
            rules,
            ClaimNames::default(),
        )
        .unwrap();
        strict.verify(&with).await.unwrap();
        let no_aud = token(json!({"sub": "a", "exp": exp, "iss": "https://idp"}));
        assert_eq!(
            strict.verify(&no_aud).await.unwrap_err(),
            AuthError::WrongAudience
        );
        let no_iss = token(json!({"sub": "a", "exp": exp, "aud": "roomcast"}));
        assert_eq!(
            strict.verify(&no_iss).await.unwrap_err(),
            AuthError::WrongIssuer
        );
        assert!(strict.verify(&without).await.is_err());
        assert_eq!(
            strict.verify(&other).await.unwrap_err(),
            AuthError::WrongAudience
        );
        let wrong_iss = token(json!({"sub": "a", "exp": exp, "aud": "roomcast", "iss": "x"}));
        assert_eq!(
            strict.verify(&wrong_iss).await.unwrap_err(),
            AuthError::WrongIssuer
        );
    }

    #[tokio::test]
    async fn several_secrets_for_rotation() {
        let keys = [
            JwtKey::Secret("new-secret-new-secret-new-secret-1".into()),
            JwtKey::Secret(SECRET.into()),
        ];
        let a = Authenticator::new(&keys, TokenRules::default(), ClaimNames::default()).unwrap();
        let exp = unix_now() + 60;
        a.verify(&token(json!({"sub": "old", "exp": exp})))
            .await
            .unwrap();
        let new = sign_hs256(
            "new-secret-new-secret-new-secret-1",
            &json!({"sub": "new", "exp": exp}),
        )
        .unwrap();
        assert_eq!(a.verify(&new).await.unwrap().user_id, "new");
    }

    #[tokio::test]
    async fn tenant_required() {
        let rules = TokenRules {
            require_tenant: true,
            ..TokenRules::default()
        };
        let a = Authenticator::new(
            &[JwtKey::Secret(SECRET.into())],
            rules,
            ClaimNames::default(),
        )
        .unwrap();
        let exp = unix_now() + 60;
        assert_eq!(
            a.verify(&token(json!({"sub": "a", "exp": exp})))
                .await
                .unwrap_err(),
            AuthError::MissingClaim("tenant_id".into())
        );
        a.verify(&token(json!({"sub": "a", "tenant_id": "t", "exp": exp})))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn custom_claim_names() {
        let names = ClaimNames {
            user: "uid".into(),
            tenant: "site".into(),
            rooms: "allow".into(),
            publish: "send".into(),
        };
        let a = Authenticator::new(
            &[JwtKey::Secret(SECRET.into())],
            TokenRules::default(),
            names,
        )
        .unwrap();
        let id = a
            .verify(&token(
                json!({"uid": 7, "site": "s1", "allow": ["*"], "send": ["room:chat-*"], "exp": unix_now() + 60}),
            ))
            .await
            .unwrap();
        assert_eq!(
            (
                id.user_id.as_str(),
                id.tenant_id.as_ref().map(TenantId::as_str)
            ),
            ("7", Some("s1"))
        );
        let chat = Room::parse("room:chat-1").unwrap();
        assert!(id.may_publish(&chat).is_ok());
        assert!(id.may_publish(&Room::parse("room:other").unwrap()).is_err());
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
