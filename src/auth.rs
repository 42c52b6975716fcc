//! Who a client is and what it may do: JSON Web Tokens (RFC 7519) verified with the
//! `jsonwebtoken` crate, and the per-room permissions they grant.
//!
//! The [`Authenticator`] is built once from the config ([`Authenticator::from_config`]): with no
//! `--jwt-secret-file` or `--jwt-public-key-file` the server is in *open mode* and every request
//! gets [`Identity::open`] (no user, every permission: the server behaves exactly as it did before
//! tokens existed). With a key, every WebSocket and HTTP API request needs a token, which
//! [`Authenticator::verify`] checks: signature (HS256 with the secret; RS*, ES256/384 or EdDSA
//! with the public key, its type detected from the PEM), `exp` (required), `nbf` (when present),
//! `iss`/`aud` (when configured), each with `--jwt-leeway` of clock skew; `sub` is required
//! (1..=128 bytes) and becomes the connection's user.
//!
//! Permissions: the `rooms` claim maps a room name, or a prefix ending in `*`, to a list of
//! `"read"`, `"write"`, `"admin"` (ordered: write implies read, admin implies write). A room's
//! permission is the *union* (the highest) of every entry that matches it, so the order of
//! entries never matters and adding an entry can only widen access. An unknown permission string
//! makes the whole token malformed. No `rooms` claim grants nothing.
//!
//! Invariants: key files are read once, at start; a token, or a query string that may hold one,
//! is never logged and never put in an error message.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::Config;
use crate::ids::RoomId;

/// The longest `sub` accepted (bytes).
pub const MAX_USER_BYTES: usize = 128;

/// The shortest HS256 secret accepted (bytes; RFC 7518 §3.2: a key of the hash's size).
pub const MIN_SECRET_BYTES: usize = 32;

/// What a token allows in one room. Ordered: each level implies the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Receive the room's state, changes, presence and broadcasts; set one's own presence.
    Read,
    /// Also commit changes and send broadcasts.
    Write,
    /// Also the room's admin operations.
    Admin,
}

impl Permission {
    fn parse(s: &str) -> Option<Permission> {
        match s {
            "read" => Some(Permission::Read),
            "write" => Some(Permission::Write),
            "admin" => Some(Permission::Admin),
            _ => None,
        }
    }
}

/// One entry of the `rooms` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// The room with exactly this name.
    Exact(String),
    /// Every room whose name starts with this (the entry ended in `*`; `"*"` is every room).
    Prefix(String),
}

impl Pattern {
    fn parse(s: &str) -> Pattern {
        match s.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_owned()),
            None => Pattern::Exact(s.to_owned()),
        }
    }

    fn matches(&self, room: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == room,
            Pattern::Prefix(prefix) => room.starts_with(prefix.as_str()),
        }
    }
}

/// What an identity may do, room by room.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Grants {
    /// Open mode: everything everywhere.
    All,
    /// The highest permission of each entry of the `rooms` claim.
    Rooms(Vec<(Pattern, Permission)>),
}

/// Who made a request, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`; `None` in open mode.
    pub user: Option<String>,
    /// The token's `exp` (seconds since the Unix epoch); `None` in open mode.
    pub exp: Option<u64>,
    grants: Grants,
}

impl Identity {
    /// The identity of every request in open mode: no user, every permission, no expiry.
    pub fn open() -> Identity {
        Identity { user: None, exp: None, grants: Grants::All }
    }

    /// The highest permission this identity has in `room` (`None`: none at all).
    pub fn permission(&self, room: &RoomId) -> Option<Permission> {
        match &self.grants {
            Grants::All => Some(Permission::Admin),
            Grants::Rooms(entries) => {
                entries.iter().filter(|(p, _)| p.matches(room.as_str())).map(|(_, perm)| *perm).max()
            }
        }
    }

    /// Whether this identity has at least `needed` in `room`.
    pub fn allows(&self, room: &RoomId, needed: Permission) -> bool {
        self.permission(room).is_some_and(|p| p >= needed)
    }
}

/// Why a request's credentials were refused. The texts are safe to send to the client: they
/// never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required: send it as `Authorization: Bearer <token>` (or ?token= on a WebSocket)")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's signature does not verify with the server's key")]
    BadSignature,
    #[error("the token's issuer (iss) is not the one this server accepts")]
    WrongIssuer,
    #[error("the token's audience (aud) is not the one this server accepts")]
    WrongAudience,
    #[error("malformed token: {0}")]
    Malformed(String),
}

/// The claims ringsync reads (the library checks `exp`, `nbf`, `iss` and `aud` itself).
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<f64>,
    #[serde(default)]
    rooms: Option<BTreeMap<String, Vec<String>>>,
}

/// A key and the algorithms it verifies.
struct Key {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

/// Verifies tokens, or lets everything through in open mode.
#[derive(Debug)]
pub struct Authenticator {
    /// The HS256 secret (`--jwt-secret-file`).
    secret: Option<Key>,
    /// The public key (`--jwt-public-key-file`).
    public: Option<Key>,
    /// `--jwt-leeway`.
    leeway: Duration,
}

impl Authenticator {
    /// Open mode: no token needed, every permission.
    pub fn open() -> Authenticator {
        Authenticator { secret: None, public: None, leeway: Duration::ZERO }
    }

    /// Reads the key files named in `config` (once; open mode when there are none).
    ///
    /// # Errors
    /// A message naming the flag whose file cannot be read or holds no usable key.
    pub fn from_config(config: &Config) -> Result<Authenticator, String> {
        let base = |algorithms: Vec<Algorithm>| {
            let mut v = Validation::new(algorithms[0]);
            v.algorithms = algorithms;
            v.leeway = config.jwt_leeway;
            v.validate_nbf = true;
            v.set_required_spec_claims(&["exp", "sub"]);
            match &config.jwt_issuer {
                Some(iss) => {
                    v.set_issuer(&[iss]);
                    v.required_spec_claims.insert("iss".into());
                }
                None => v.iss = None,
            }
            match &config.jwt_audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    v.required_spec_claims.insert("aud".into());
                }
                // Not configured: an `aud` in the token is not checked.
                None => v.validate_aud = false,
            }
            v
        };
        let secret = match &config.jwt_secret_file {
            Some(path) => {
                let key =
                    read_secret(path).map_err(|e| format!("--jwt-secret-file {}: {e}", path.display()))?;
                Some(Key { key, validation: base(vec![Algorithm::HS256]) })
            }
            None => None,
        };
        let public = match &config.jwt_public_key_file {
            Some(path) => {
                let (key, algorithms) = read_public_key(path)
                    .map_err(|e| format!("--jwt-public-key-file {}: {e}", path.display()))?;
                Some(Key { key, validation: base(algorithms) })
            }
            None => None,
        };
        Ok(Authenticator { secret, public, leeway: Duration::from_secs(config.jwt_leeway) })
    }

    /// Whether requests need a token (a key is configured).
    pub fn tokens_required(&self) -> bool {
        self.secret.is_some() || self.public.is_some()
    }

    /// `--jwt-leeway`: how long past `exp` a connection may stay without a refresh.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// Checks a token and returns who it names and what it grants.
    ///
    /// # Errors
    /// [`AuthError`] when the token is malformed, badly signed, expired, not yet valid, for
    /// another issuer or audience, without a usable `sub`, or grants an unknown permission.
    /// In open mode every token is refused as there is no key (callers use
    /// [`Authenticator::from_request`], which does not call this in open mode).
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Malformed("not a JSON Web Token (header.payload.signature)".into()))?;
        let key = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.secret.as_ref(),
            _ => self.public.as_ref(),
        };
        let Some(Key { key, validation }) = key else {
            return Err(AuthError::Malformed(format!("this server does not accept {:?} tokens", header.alg)));
        };
        if !validation.algorithms.contains(&header.alg) {
            return Err(AuthError::Malformed(format!(
                "this server accepts {:?} tokens, not {:?}",
                validation.algorithms, header.alg
            )));
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.into_kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::MissingRequiredClaim(c) => AuthError::Malformed(format!("missing claim {c:?}")),
                ErrorKind::InvalidClaimFormat(c) => {
                    AuthError::Malformed(format!("claim {c:?} has the wrong type"))
                }
                ErrorKind::Json(e) => AuthError::Malformed(format!("claims: {e}")),
                other => AuthError::Malformed(format!("{other:?}")),
            })?;
        identity_of(data.claims)
    }

    /// The identity behind a request: in open mode [`Identity::open`]; else the token from
    /// `Authorization: Bearer`, or failing that `query_token` (the WebSocket's `?token=`).
    ///
    /// # Errors
    /// [`AuthError::Missing`] without a token, or why [`Authenticator::verify`] refused it.
    pub fn from_request(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Identity, AuthError> {
        if !self.tokens_required() {
            return Ok(Identity::open());
        }
        let token = match headers.get(AUTHORIZATION) {
            Some(value) => bearer(value.as_bytes())
                .ok_or_else(|| AuthError::Malformed("Authorization must be `Bearer <token>`".into()))?,
            None => query_token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?,
        };
        self.verify(token)
    }
}

/// The token in an `Authorization: Bearer <token>` value (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Checks the claims ringsync itself reads and builds the identity.
fn identity_of(claims: Claims) -> Result<Identity, AuthError> {
    let user = claims.sub.ok_or_else(|| AuthError::Malformed("missing claim \"sub\"".into()))?;
    if user.is_empty() || user.len() > MAX_USER_BYTES {
        return Err(AuthError::Malformed(format!("\"sub\" must be 1 to {MAX_USER_BYTES} bytes")));
    }
    let exp = claims.exp.filter(|e| e.is_finite() && *e >= 0.0).map(|e| e as u64);
    let exp = exp.ok_or_else(|| AuthError::Malformed("\"exp\" must be a number of seconds".into()))?;
    let mut entries = Vec::new();
    for (pattern, perms) in claims.rooms.unwrap_or_default() {
        let mut highest = None;
        for p in &perms {
            let perm = Permission::parse(p).ok_or_else(|| {
                AuthError::Malformed(format!(
                    "unknown permission {p:?} (use \"read\", \"write\" or \"admin\")"
                ))
            })?;
            highest = highest.max(Some(perm));
        }
        if let Some(perm) = highest {
            entries.push((Pattern::parse(&pattern), perm));
        }
    }
    Ok(Identity { user: Some(user), exp: Some(exp), grants: Grants::Rooms(entries) })
}

fn read_secret(path: &Path) -> Result<DecodingKey, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let secret = bytes.trim_ascii_end();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "the secret must be at least {MIN_SECRET_BYTES} bytes (it has {})",
            secret.len()
        ));
    }
    Ok(DecodingKey::from_secret(secret))
}

/// A PEM public key and the algorithms it verifies, by the key's type.
fn read_public_key(path: &Path) -> Result<(DecodingKey, Vec<Algorithm>), String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok((key, vec![Algorithm::EdDSA]));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((key, vec![Algorithm::ES256, Algorithm::ES384]));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((key, vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512]));
    }
    Err("not a PEM public key of a supported type (RSA, EC P-256/P-384, Ed25519)".into())
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(rooms: &[(&str, Permission)]) -> Identity {
        let entries = rooms.iter().map(|(p, perm)| (Pattern::parse(p), *perm)).collect();
        Identity { user: Some("u".into()), exp: Some(0), grants: Grants::Rooms(entries) }
    }

    fn room(name: &str) -> RoomId {
        RoomId::parse(name).unwrap()
    }

    #[test]
    fn permissions_are_the_union_of_matching_entries() {
        let id = identity(&[
            ("chess:*", Permission::Write),
            ("lobby", Permission::Read),
            ("chess:1", Permission::Read),
        ]);
        assert_eq!(id.permission(&room("chess:1")), Some(Permission::Write));
        assert_eq!(id.permission(&room("chess:")), Some(Permission::Write));
        assert_eq!(id.permission(&room("lobby")), Some(Permission::Read));
        assert_eq!(id.permission(&room("lobby2")), None);
        assert_eq!(id.permission(&room("chess")), None);
        assert!(id.allows(&room("chess:9"), Permission::Read));
        assert!(!id.allows(&room("chess:9"), Permission::Admin));
        assert_eq!(identity(&[("*", Permission::Admin)]).permission(&room("x")), Some(Permission::Admin));
        assert_eq!(Identity::open().permission(&room("x")), Some(Permission::Admin));
        assert!(Permission::Read < Permission::Write && Permission::Write < Permission::Admin);
    }

    #[test]
    fn claims_are_checked() {
        let claims = |v: serde_json::Value| identity_of(serde_json::from_value(v).unwrap());
        let id = claims(serde_json::json!({"sub":"alice","exp":1893456000,"rooms":{"chess:*":["write"],"lobby":["read"]}}))
            .unwrap();
        assert_eq!(id.user.as_deref(), Some("alice"));
        assert_eq!(id.permission(&room("chess:a")), Some(Permission::Write));
        assert!(matches!(
            claims(serde_json::json!({"sub":"a","exp":1,"rooms":{"x":["own"]}})),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(claims(serde_json::json!({"sub":"","exp":1})), Err(AuthError::Malformed(_))));
        assert!(matches!(
            claims(serde_json::json!({"sub":"a".repeat(129),"exp":1})),
            Err(AuthError::Malformed(_))
        ));
        assert_eq!(claims(serde_json::json!({"sub":"a","exp":1})).unwrap().permission(&room("x")), None);
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
    }
}
