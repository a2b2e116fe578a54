//! Signed tokens: HS256 JWTs scoping an identity to one room with grants.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::AuthError;
use crate::core::namespace::valid_segment;

/// Only algorithm accepted. Anything else, `none` included, is refused before the signature.
const ALGORITHM: Algorithm = Algorithm::HS256;
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 2;
/// Longest a media token may stay valid: one whose `exp` is further away is refused, so a
/// revocation or a room closure need only be remembered this long.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Longest token accepted; a bound on input parsed before the signature is checked.
pub const MAX_TOKEN_LEN: usize = 4096;

/// A right a token can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    Publish,
    Subscribe,
    Chat,
    Admin,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Grant::Publish => "publish",
            Grant::Subscribe => "subscribe",
            Grant::Chat => "chat",
            Grant::Admin => "admin",
        })
    }
}

impl std::str::FromStr for Grant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "publish" => Ok(Grant::Publish),
            "subscribe" => Ok(Grant::Subscribe),
            "chat" => Ok(Grant::Chat),
            "admin" => Ok(Grant::Admin),
            other => Err(format!(
                "unknown grant {other:?} (publish, subscribe, chat, admin)"
            )),
        }
    }
}

/// The one form of an identity (a username) used in the store, in tokens and at the relay:
/// ASCII lower case, so `Bob` and `bob` are the same person everywhere.
pub fn canonical_identity(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// A set of grants.
pub type Grants = BTreeSet<Grant>;

/// The claims roomcast tokens carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Identity: the participant's namespace segment in the room.
    pub sub: String,
    /// The one room this token is scoped to.
    pub room: String,
    /// Rights inside that room.
    pub grants: Grants,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not valid before, seconds since the epoch.
    pub nbf: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Unique token id, for revocation.
    pub jti: String,
}

impl Claims {
    /// Claims valid from now for `lifetime`, for the canonical form of identity `sub`.
    pub fn new(sub: &str, room: &str, grants: Grants, lifetime: Duration) -> Self {
        let now = now_secs();
        Self {
            sub: canonical_identity(sub),
            room: room.to_owned(),
            grants,
            exp: now + lifetime.as_secs(),
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// Time at which the token stops being valid.
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.exp)
    }

    fn check(&self) -> Result<(), AuthError> {
        if !valid_segment(&self.sub) {
            return Err(AuthError::InvalidClaim("sub".into()));
        }
        if self.exp > now_secs() + MAX_TOKEN_LIFETIME.as_secs() + LEEWAY_SECS {
            return Err(AuthError::InvalidClaim(format!(
                "exp: media tokens live at most {} h",
                MAX_TOKEN_LIFETIME.as_secs() / 3600
            )));
        }
        if !valid_segment(&self.room) {
            return Err(AuthError::InvalidClaim("room".into()));
        }
        if self.jti.is_empty() || self.jti.len() > 128 {
            return Err(AuthError::InvalidClaim("jti".into()));
        }
        Ok(())
    }
}

/// Signs and verifies tokens with the server secret.
#[derive(Clone)]
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenIssuer { secret: <redacted> }")
    }
}

impl TokenIssuer {
    /// An issuer for an HS256 secret.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(ALGORITHM);
        validation.algorithms = vec![ALGORITHM];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Signs media `claims`.
    pub fn mint(&self, claims: &Claims) -> Result<String, AuthError> {
        claims.check()?;
        self.mint_as(claims)
    }

    /// Verifies a media token: signature, algorithm, expiry and claims.
    /// The identity comes out in its canonical form, whoever minted the token.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut claims: Claims = self.verify_as(token)?;
        claims.check()?;
        claims.sub = canonical_identity(&claims.sub);
        Ok(claims)
    }

    /// Signs any claims type (login sessions, invites). Each type's required fields keep one
    /// kind of token from being accepted as another.
    pub fn mint_as<T: Serialize>(&self, claims: &T) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(ALGORITHM), claims, &self.encoding)
            .map_err(|e| AuthError::Malformed(e.to_string()))
    }

    /// Verifies signature, pinned algorithm, `exp` and `nbf`, and decodes `T`.
    pub fn verify_as<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("token too long".into()));
        }
        // Read the header's `alg` ourselves first, so `none` and every other algorithm get
        // their own error before any signature or claim is looked at.
        if header_alg(token)? != "HS256" {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let data = jsonwebtoken::decode::<T>(token, &self.decoding, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
                ErrorKind::MissingRequiredClaim(c) => AuthError::InvalidClaim(c.clone()),
                _ => AuthError::Malformed(e.to_string()),
            },
        )?;
        Ok(data.claims)
    }
}

fn header_alg(token: &str) -> Result<String, AuthError> {
    use base64::Engine;
    let malformed = |why: &str| AuthError::Malformed(why.to_owned());
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three dot-separated parts"));
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("header is not base64url"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&json).map_err(|_| malformed("header is not JSON"))?;
    header
        .get("alg")
        .and_then(|a| a.as_str())
        .map(str::to_owned)
        .ok_or_else(|| malformed("header has no alg"))
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims() -> Claims {
        Claims::new(
            "alice",
            "r1",
            [Grant::Publish, Grant::Subscribe].into(),
            Duration::from_secs(60),
        )
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn round_trip() {
        let issuer = TokenIssuer::new(SECRET);
        let minted = claims();
        let token = issuer.mint(&minted).unwrap();
        assert_eq!(issuer.verify(&token).unwrap(), minted);
    }

    #[test]
    fn bad_signature() {
        let token = TokenIssuer::new(b"another-secret-another-secret-xx")
            .mint(&claims())
            .unwrap();
        assert_eq!(
            TokenIssuer::new(SECRET).verify(&token),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let body = serde_json::to_string(&claims()).unwrap();
        let token = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&body));
        assert_eq!(
            TokenIssuer::new(SECRET).verify(&token),
            Err(AuthError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn other_algorithms_are_refused() {
        let body = serde_json::to_string(&claims()).unwrap();
        for alg in ["HS512", "RS256", "ES256"] {
            let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
            let token = format!("{}.{}.c2ln", b64(&header), b64(&body));
            assert_eq!(
                TokenIssuer::new(SECRET).verify(&token),
                Err(AuthError::AlgorithmNotAllowed),
                "{alg}"
            );
        }
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let issuer = TokenIssuer::new(SECRET);
        let mut c = claims();
        c.exp = now_secs() - 60;
        c.nbf = now_secs() - 120;
        assert_eq!(
            issuer.verify(&issuer.mint(&c).unwrap()),
            Err(AuthError::Expired)
        );
        let mut c = claims();
        c.nbf = now_secs() + 60;
        assert_eq!(
            issuer.verify(&issuer.mint(&c).unwrap()),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn garbage_and_bad_identities() {
        let issuer = TokenIssuer::new(SECRET);
        assert_eq!(issuer.verify(""), Err(AuthError::MissingToken));
        assert!(matches!(
            issuer.verify("a.b.c"),
            Err(AuthError::Malformed(_))
        ));
        // A well-formed, correctly signed token is refused for its length alone: the same
        // claims with a shorter filler verify.
        let padded = |n: usize| {
            let mut v = serde_json::to_value(claims()).unwrap();
            v["pad"] = "x".repeat(n).into();
            jsonwebtoken::encode(&Header::new(ALGORITHM), &v, &issuer.encoding).unwrap()
        };
        let short = padded(100);
        assert!(issuer.verify(&short).is_ok());
        let long = padded(MAX_TOKEN_LEN);
        assert!(long.len() > MAX_TOKEN_LEN && long.matches('.').count() == 2);
        assert_eq!(
            issuer.verify(&long),
            Err(AuthError::Malformed("token too long".into()))
        );
        let mut c = claims();
        c.sub = "a/b".into();
        assert!(matches!(issuer.mint(&c), Err(AuthError::InvalidClaim(_))));
    }
}
