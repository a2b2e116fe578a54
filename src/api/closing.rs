//! Ending rooms: close (every session ends, every token issued until now is refused; the room
//! stays and can be joined again) and delete (closed for good, then removed).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::json;

use super::error::{ApiError, ApiResult};
use super::extract::SessionUser;
use super::rank::Rank;
use super::rooms::require_moderator_ranked;
use super::ApiState;
use crate::auth::token::now_secs;

/// Fails unless the caller owns `room` or is an administrator (404 unknown, 403 otherwise).
async fn require_owner(s: &ApiState, room: &str, me: &SessionUser) -> ApiResult<()> {
    let (_, actor) = require_moderator_ranked(s, room, me).await?;
    if actor < Rank::Owner {
        return Err(ApiError::forbidden(
            "not_owner",
            "only the room's owner or an administrator may do this",
        ));
    }
    Ok(())
}

/// Ends the room for everyone: its sessions close, the tokens issued until now are refused,
/// its live state (hands, events) is forgotten. The room, its members, bans and chat stay, and
/// joining again gives a new token.
pub async fn close(
    State(s): State<ApiState>,
    me: SessionUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_owner(&s, &id, &me).await?;
    // Each closure writes to the store and the cluster's bus: paced like moderation.
    s.guards.moderation(me.user.id)?;
    s.live
        .push(&id, "room_closing", json!({"reason": "closed"}));
    close_room(
        &s.relay,
        &s.store,
        &s.live,
        &id,
        "room_closed: closed by its owner or an administrator",
        false,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete(
    State(s): State<ApiState>,
    me: SessionUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_owner(&s, &id, &me).await?;
    delete_room(&s, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes `room`: its members are told, it is closed for good (every token refused), then
/// removed with its members, bans, invites and chat.
pub async fn delete_room(s: &ApiState, id: &str) -> ApiResult<()> {
    s.live
        .push(id, "room_closing", json!({"reason": "deleted"}));
    // The closure is stored before the room is deleted: if the delete then fails the room
    // still refuses every token, and no restart can bring a deleted room's tokens back.
    close_room(
        &s.relay,
        &s.store,
        &s.live,
        id,
        "room_closed: room deleted",
        true,
    )
    .await?;
    s.store.delete_room(id).await?;
    Ok(())
}

/// Closes `room` everywhere: its sessions end, the tokens issued until now are refused (every
/// token, once deleted) and stay refused across a restart, its live state is forgotten.
pub async fn close_room(
    relay: &crate::relay::Relay,
    store: &crate::store::Store,
    live: &super::live::Live,
    room: &str,
    reason: &str,
    deleted: bool,
) -> ApiResult<()> {
    let closure = crate::relay::access::Closure {
        at: now_secs(),
        deleted,
    };
    // A deleted room refuses every token; a closed one those issued before it, and by `jti`
    // those of its own second: a join's (their expiry tells them) and its sessions'.
    let (revoke_from, held) = match deleted {
        true => (None, Vec::new()),
        false => (
            Some(closure.at + super::rooms::MEDIA_TTL.as_secs()),
            relay.access().tokens_from(room, closure.at),
        ),
    };
    // Stored first: a closure that is live must also hold after a restart.
    let mut tokens = store
        .close_room(
            room,
            closure.at,
            deleted,
            closure.until(),
            revoke_from,
            &held,
        )
        .await?;
    // A session that came in since `held` was read: its token is stored too.
    for (jti, exp) in relay.close_room(room, reason, closure, &tokens) {
        store.revoke(&jti, exp).await?;
        tokens.push((jti, exp));
    }
    live.close(room);
    live.tell(crate::cluster::bus::Change::RoomClosed {
        room: room.to_owned(),
        reason: reason.to_owned(),
        at: closure.at,
        deleted,
    });
    // After the closure: the other nodes' sessions close as the room's, not as revoked.
    if !tokens.is_empty() {
        live.tell(crate::cluster::bus::Change::TokensEnded {
            tokens,
            reason: reason.to_owned(),
        });
    }
    Ok(())
}
