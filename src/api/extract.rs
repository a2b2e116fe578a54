//! Request extractors: JSON bodies with JSON errors, and the two kinds of bearer token.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::ApiState;
use crate::auth::Claims;
use crate::store::User;

/// A JSON body whose rejections are [`ApiError`]s.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ApiState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, ApiError> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Body(v))
    }
}

/// Claims of a login session token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionClaims {
    /// Always `"session"`.
    pub kind: SessionKind,
    pub uid: i64,
    pub username: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    Session,
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthorized("missing_token", "Authorization: Bearer <token> required")
        })
}

/// A logged-in user (login session token, still active in the store).
pub struct SessionUser {
    pub user: User,
    pub claims: SessionClaims,
}

impl FromRequestParts<ApiState> for SessionUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        let claims: SessionClaims = state
            .issuer
            .verify_as(token)
            .map_err(|e| ApiError::unauthorized(e.code(), e.to_string()))?;
        if !state.store.login_active(&claims.jti).await? {
            return Err(ApiError::unauthorized(
                "session_ended",
                "logged out or password changed",
            ));
        }
        let (user, _) = state
            .store
            .user_by_id(claims.uid)
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown_user", "user no longer exists"))?;
        Ok(SessionUser { user, claims })
    }
}

/// A room member holding a media token (from joining), not banned or revoked, for a room
/// that was not closed or deleted since.
pub struct MediaUser {
    pub claims: Claims,
}

impl FromRequestParts<ApiState> for MediaUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let claims = state.issuer.verify(bearer(parts)?)?;
        state
            .relay
            .access()
            .admit(&claims)
            .map_err(|d| ApiError::forbidden(d.code(), d.reason()))?;
        Ok(MediaUser { claims })
    }
}
