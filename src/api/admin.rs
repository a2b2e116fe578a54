//! Administration (`/api/admin/…`, administrators only): accounts (list, create, delete,
//! reset a password) and every room with who is in it. What `roomcast admin` calls; closing a
//! room, bans and invites are the rooms' own endpoints, where an administrator outranks
//! everyone.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{Body, SessionUser};
use super::moderation::{grants_everywhere, muted_everywhere};
use super::users::{check_password, check_username, end_tokens};
use super::ApiState;
use crate::store::Deletion;

/// Most accounts per page.
pub const MAX_PAGE: i64 = 100;

/// Fails with 403 unless the caller is an administrator.
fn require_admin(me: &SessionUser) -> ApiResult<()> {
    if me.user.is_admin {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "not_admin",
        "only an administrator may do this",
    ))
}

#[derive(Deserialize)]
pub struct AccountPage {
    /// `next_after` of the previous page.
    pub after: Option<String>,
    pub limit: Option<i64>,
}

/// Accounts in username order, a page at a time: pass `next_after` as `after`.
pub async fn users(
    State(s): State<ApiState>,
    me: SessionUser,
    Query(p): Query<AccountPage>,
) -> ApiResult<Json<Value>> {
    require_admin(&me)?;
    let limit = p.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let after = p.after.unwrap_or_default();
    if after.len() > 64 {
        return Err(ApiError::bad_request(
            "invalid_cursor",
            "after must be a next_after value",
        ));
    }
    let users = s.store.accounts(&after, limit).await?;
    let next = (users.len() as i64 == limit)
        .then(|| users.last().map(|u| u.username.clone()))
        .flatten();
    Ok(Json(json!({"users": users, "next_after": next})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub admin: bool,
}

/// Creates an account (an administrator one with `admin`), whatever registration allows.
pub async fn create_user(
    State(s): State<ApiState>,
    me: SessionUser,
    Body(a): Body<NewAccount>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require_admin(&me)?;
    check_username(&a.username)?;
    check_password(&a.password)?;
    super::users::create_account(&s, &a.username, a.password, a.admin).await
}

/// The account named `name` (404 if none).
async fn account(s: &ApiState, name: &str) -> ApiResult<crate::store::User> {
    let unknown = || ApiError::not_found("unknown_user", format!("no user {name:?}"));
    check_username(name).map_err(|_| unknown())?;
    Ok(s.store.user_by_name(name).await?.ok_or_else(unknown)?.0)
}

#[derive(Deserialize)]
pub struct DeleteOptions {
    /// Also delete (closing them first) the rooms the account owns; without it, an owner of
    /// rooms is refused with 409 `owns_rooms`.
    #[serde(default)]
    pub delete_rooms: bool,
}

/// Deletes an account: its logins end, its media tokens are refused and their sessions close.
/// An administrator cannot delete their own account (someone must be left to administer).
pub async fn delete_user(
    State(s): State<ApiState>,
    me: SessionUser,
    Path(name): Path<String>,
    Query(o): Query<DeleteOptions>,
) -> ApiResult<Json<Value>> {
    require_admin(&me)?;
    let user = account(&s, &name).await?;
    if user.id == me.user.id {
        return Err(ApiError::conflict(
            "cannot_delete_self",
            "an administrator cannot delete their own account",
        ));
    }
    let mut deleted_rooms = Vec::new();
    if o.delete_rooms {
        // Logged out first, so it creates no room while its rooms go.
        s.store.end_logins(user.id).await?;
        for room in s.store.rooms_of(user.id).await? {
            super::closing::delete_room(&s, &room).await?;
            deleted_rooms.push(room);
        }
    }
    let deleted = match s.store.delete_account(user.id, me.user.id).await {
        Ok(Deletion::Deleted(d)) => d,
        Ok(Deletion::OwnsRooms(n)) => {
            return Err(ApiError::conflict(
                "owns_rooms",
                format!(
                    "{} owns {n} rooms: delete them first, or pass delete_rooms=true",
                    user.username
                ),
            ))
        }
        Ok(Deletion::Unknown) => {
            return Err(ApiError::not_found(
                "unknown_user",
                format!("no user {name:?}"),
            ))
        }
        Ok(Deletion::CallerGone) => {
            return Err(ApiError::forbidden(
                "not_admin",
                "you are no longer an administrator",
            ))
        }
        Err(crate::store::StoreError::Conflict) => {
            return Err(ApiError::conflict(
                "concurrent_change",
                "the account changed while it was being deleted; try again",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let who = &user.username;
    end_tokens(&s, deleted.tokens, "token_revoked: account deleted");
    // A new account of the name starts with no moderator's override or mute.
    for room in deleted.overrides {
        grants_everywhere(&s, &room, who, None);
    }
    for (room, track) in deleted.mutes {
        muted_everywhere(&s, &room, who, &track, false);
    }
    Ok(Json(
        json!({"deleted": user.username, "deleted_rooms": deleted_rooms}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    pub password: String,
}

/// Sets an account's password: every login of theirs ends and every media token issued to
/// them is refused, as when they change it themselves.
pub async fn reset_password(
    State(s): State<ApiState>,
    me: SessionUser,
    Path(name): Path<String>,
    Body(p): Body<NewPassword>,
) -> ApiResult<StatusCode> {
    require_admin(&me)?;
    check_password(&p.password)?;
    let user = account(&s, &name).await?;
    let hash = s.guards.hash(p.password).await?;
    let tokens = s.store.set_password(user.id, &hash).await?;
    end_tokens(
        &s,
        tokens,
        "token_revoked: password reset by an administrator",
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Every room, newest first, with its owner and who is in it (on every node), a page at a
/// time: pass `next_before` as `before`.
pub async fn rooms(
    State(s): State<ApiState>,
    me: SessionUser,
    Query(p): Query<super::rooms::RoomPage>,
) -> ApiResult<Json<Value>> {
    require_admin(&me)?;
    let (rooms, next) = p.load(&s.store).await?;
    let mut owners: HashMap<i64, Option<String>> = HashMap::new();
    let mut listed = Vec::with_capacity(rooms.len());
    for room in rooms {
        let owner = match owners.get(&room.owner_id) {
            Some(name) => name.clone(),
            None => {
                let found = s.store.user_by_id(room.owner_id).await?;
                let name = found.map(|(u, _)| u.username);
                owners.insert(room.owner_id, name.clone());
                name
            }
        };
        let participants = super::present_everywhere(&s, &room.id).await;
        listed.push(json!({
            "room": room,
            "owner": owner,
            "open": s.live.is_open(&room.id),
            "participants": participants,
            "publishers": s.relay.publishers(&room.id),
        }));
    }
    Ok(Json(json!({"rooms": listed, "next_before": next})))
}
