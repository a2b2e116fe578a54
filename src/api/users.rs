//! Accounts: register, log in, log out, change password.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{Body, SessionClaims, SessionKind, SessionUser};
use super::ApiState;
use crate::auth::password;
use crate::auth::token::{canonical_identity, now_secs};
use crate::core::namespace::valid_segment;

/// Lifetime of a login session token.
pub const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Usernames are room identities: 3-32 of `[A-Za-z0-9_.-]`.
pub fn check_username(u: &str) -> ApiResult<()> {
    if u.len() < 3 || u.len() > 32 || !valid_segment(u) {
        return Err(ApiError::invalid(
            "invalid_username",
            "username must be 3-32 characters of letters, digits, '_', '.', '-'",
        ));
    }
    Ok(())
}

/// Checks a participant identity from a request path and returns its canonical form. Any
/// identity a media token may carry (1-64 of `[A-Za-z0-9_.-]`, as minted by `roomcast token`
/// or an application) can be moderated, not only account usernames.
pub fn identity(u: &str) -> ApiResult<String> {
    if !valid_segment(u) {
        return Err(ApiError::invalid(
            "invalid_identity",
            "identity must be 1-64 characters of letters, digits, '_', '.', '-'",
        ));
    }
    Ok(crate::auth::token::canonical_identity(u))
}

pub fn check_password(p: &str) -> ApiResult<()> {
    let n = p.chars().count();
    if !(8..=128).contains(&n) {
        return Err(ApiError::invalid(
            "invalid_password",
            "password must be 8-128 characters",
        ));
    }
    Ok(())
}

pub async fn register(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Body(c): Body<Credentials>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_username(&c.username)?;
    check_password(&c.password)?;
    s.guards.register(peer.ip())?;
    create_account(&s, &c.username, c.password, false).await
}

/// Stores a new account (a checked name and password): 201 with it, 409 `username_taken`.
pub async fn create_account(
    s: &ApiState,
    username: &str,
    password: String,
    is_admin: bool,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let hash = s.guards.hash(password).await?;
    let user = s
        .store
        .create_user(username, &hash, is_admin)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict => {
                ApiError::conflict("username_taken", "username already registered")
            }
            e => e.into(),
        })?;
    Ok((StatusCode::CREATED, Json(json!({"user": user}))))
}

/// Refuses `tokens` here and on the other nodes, and closes the sessions holding one with
/// `reason`.
pub fn end_tokens(s: &ApiState, tokens: Vec<(String, u64)>, reason: &str) {
    s.relay.access().end_tokens(&tokens, reason);
    s.live.tell(crate::cluster::bus::Change::TokensEnded {
        tokens,
        reason: reason.into(),
    });
}

pub async fn login(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Body(c): Body<Credentials>,
) -> ApiResult<Json<Value>> {
    // A name no account can have is refused without a hash or a rate-limit key.
    if check_username(&c.username).is_err() {
        return Err(ApiError::unauthorized(
            "wrong_credentials",
            "wrong username or password",
        ));
    }
    s.guards
        .login(peer.ip(), &canonical_identity(&c.username))?;
    let found = s.store.user_by_name(&c.username).await?;
    let phc = found
        .as_ref()
        .map_or_else(|| password::dummy_hash().to_owned(), |(_, h)| h.clone());
    let ok = s.guards.verify(c.password, phc).await?;
    let Some((user, _)) = found.filter(|_| ok) else {
        return Err(ApiError::unauthorized(
            "wrong_credentials",
            "wrong username or password",
        ));
    };
    let now = now_secs();
    let claims = SessionClaims {
        kind: SessionKind::Session,
        uid: user.id,
        username: user.username.clone(),
        exp: now + SESSION_TTL.as_secs(),
        nbf: now,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    s.store.add_login(&claims.jti, user.id, claims.exp).await?;
    let token = s.issuer.mint_as(&claims)?;
    Ok(Json(
        json!({"token": token, "user": user, "expires_at": claims.exp}),
    ))
}

/// Ends this login session and the media sessions of every token its joins issued.
pub async fn logout(State(s): State<ApiState>, me: SessionUser) -> ApiResult<StatusCode> {
    let tokens = s.store.logout(&me.claims.jti).await?;
    end_tokens(&s, tokens, "token_revoked: logged out");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn me(me: SessionUser) -> Json<Value> {
    Json(json!({"user": me.user}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub old_password: String,
    pub new_password: String,
}

pub async fn change_password(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    me: SessionUser,
    Body(p): Body<PasswordChange>,
) -> ApiResult<StatusCode> {
    check_password(&p.new_password)?;
    // A wrong old password costs a hash like a failed login, and is limited like one.
    s.guards.login(peer.ip(), &me.user.username)?;
    let (_, phc) = s
        .store
        .user_by_id(me.user.id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown_user", "user no longer exists"))?;
    if !s.guards.verify(p.old_password, phc).await? {
        return Err(ApiError::forbidden(
            "wrong_password",
            "old password does not match",
        ));
    }
    let hash = s.guards.hash(p.new_password).await?;
    // Every login session and media token of the user ends: whoever learnt the old
    // password is out everywhere.
    let tokens = s.store.set_password(me.user.id, &hash).await?;
    end_tokens(&s, tokens, "token_revoked: password changed");
    Ok(StatusCode::NO_CONTENT)
}
