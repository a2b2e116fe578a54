//! Token authentication and per-request authorization.
//!
//! [`token`] signs and verifies JWTs (HS256 pinned); [`scope`] decides, for every MoQ request,
//! whether a verified identity may make it. Errors carry a stable code for close frames,
//! REQUEST_ERROR reasons and HTTP bodies.

pub mod password;
pub mod scope;
pub mod secret;
pub mod token;

pub use scope::{Action, Scope};
pub use token::{Claims, Grant, Grants, TokenIssuer};

/// Why a request was refused. `code()` is stable and appears on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("no token presented")]
    MissingToken,
    /// The token is not a well-formed JWT.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not verify with the server secret.
    #[error("token signature does not verify")]
    BadSignature,
    /// The header names an algorithm other than the pinned one (including `none`).
    #[error("token algorithm not allowed (only HS256)")]
    AlgorithmNotAllowed,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// A required claim is missing or invalid.
    #[error("invalid claim: {0}")]
    InvalidClaim(String),
    /// The request targets a room the token is not scoped to.
    #[error("token is for room {token_room:?}, not {requested:?}")]
    WrongRoom {
        token_room: String,
        requested: String,
    },
    /// The namespace is outside what this identity may use for the action.
    #[error("namespace {namespace} not allowed: {reason}")]
    ForbiddenNamespace { namespace: String, reason: String },
    /// The token lacks the grant the action needs.
    #[error("missing grant {0}")]
    MissingGrant(Grant),
    /// A session without a token asked for a namespace outside the open (public) prefixes.
    #[error("namespace {namespace} needs a token; without one only {open} are open")]
    Anonymous { namespace: String, open: String },
}

impl AuthError {
    /// Stable machine-readable code, e.g. `token_expired`.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Anonymous { .. } => "anonymous",
            AuthError::Malformed(_) => "malformed_token",
            AuthError::BadSignature => "bad_signature",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::InvalidClaim(_) => "invalid_claim",
            AuthError::WrongRoom { .. } => "wrong_room",
            AuthError::ForbiddenNamespace { .. } => "forbidden_namespace",
            AuthError::MissingGrant(_) => "missing_grant",
        }
    }

    /// `code: message`, the form used in close reasons and request errors.
    pub fn reason(&self) -> String {
        format!("{}: {}", self.code(), self)
    }
}
