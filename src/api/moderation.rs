//! Live moderation: grants, roles, mute, kick, ban, and the classroom floor.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{Body, MediaUser, SessionUser};
use super::rank::{self, Rank};
use super::rooms::{require_moderator, require_moderator_ranked};
use super::users::identity;
use super::ApiState;
use crate::auth::{Grant, Grants};
use crate::store::{Role, Room};

/// The grants `who` has now in `room`: a live override, else their role's, else (for an
/// identity with no role, e.g. holding a token an application minted) its open sessions'.
async fn current(s: &ApiState, room: &str, who: &str) -> ApiResult<Grants> {
    if let Some(g) = s.relay.access().override_of(room, who) {
        return Ok(g);
    }
    let role = match s.store.user_by_name(who).await? {
        Some((u, _)) => s.store.role(room, u.id).await?,
        None => None,
    };
    Ok(match role {
        Some(role) => role.grants(),
        None => s.relay.access().token_grants(room, who).unwrap_or_default(),
    })
}

/// Fails with 404 unless `who` is in the room now or has an account: a change for a name
/// nobody holds would wait for whoever takes it later.
async fn known(s: &ApiState, room: &str, who: &str) -> ApiResult<()> {
    if super::present_everywhere(s, room)
        .await
        .iter()
        .any(|p| p == who)
        || s.store.user_by_name(who).await?.is_some()
    {
        return Ok(());
    }
    Err(ApiError::not_found(
        "unknown_participant",
        format!("{who} is neither in the room nor a user"),
    ))
}

/// The room and the caller's rank if they moderate it, within [`super::guard::MODERATION_PER_SECOND`].
async fn moderator(s: &ApiState, room: &str, me: &SessionUser) -> ApiResult<(Room, Rank)> {
    let ranked = require_moderator_ranked(s, room, me).await?;
    s.guards.moderation(me.user.id)?;
    Ok(ranked)
}

/// Fails with 409 `moderation_full` when the room already holds its limit of bans, grant
/// changes and mutes for others than `who` (whose own entries may always change).
async fn room_for_entry(s: &ApiState, room: &str, who: &str) -> ApiResult<()> {
    let limit = s.limits.moderation_entries_per_room;
    if s.store.moderation_entries(room, who).await? >= limit {
        return Err(ApiError::conflict(
            "moderation_full",
            format!("this room holds {limit} bans, grant changes and mutes; lift some first"),
        ));
    }
    Ok(())
}

/// Sets (`Some`) or lifts (`None`) `who`'s grant override in `room`, here and on the other
/// nodes (the store is the caller's).
pub fn grants_everywhere(s: &ApiState, room: &str, who: &str, grants: Option<Grants>) {
    s.relay.access().set_grants(room, who, grants.clone());
    s.live.tell(crate::cluster::bus::Change::Grants {
        room: room.to_owned(),
        identity: who.to_owned(),
        grants,
    });
}

/// Mutes or unmutes `who`'s `track` in `room`, here and on the other nodes (the store is the
/// caller's).
pub fn muted_everywhere(s: &ApiState, room: &str, who: &str, track: &str, muted: bool) {
    s.relay.access().set_muted(room, who, track, muted);
    s.live.tell(crate::cluster::bus::Change::Muted {
        room: room.to_owned(),
        identity: who.to_owned(),
        track: track.to_owned(),
        muted,
    });
}

/// Gives `who` these grants now (stored first, so they hold across a restart) and tells the room.
async fn set(s: &ApiState, room: &str, who: &str, grants: Grants) -> ApiResult<()> {
    known(s, room, who).await?;
    room_for_entry(s, room, who).await?;
    s.store.set_override(room, who, Some(&grants)).await?;
    grants_everywhere(s, room, who, Some(grants.clone()));
    s.live.push(
        room,
        "permissions_changed",
        json!({"identity": who, "grants": grants}),
    );
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantChange {
    pub publish: Option<bool>,
    pub subscribe: Option<bool>,
    pub chat: Option<bool>,
}

pub async fn grants(
    State(s): State<ApiState>,
    me: SessionUser,
    Path((room, who)): Path<(String, String)>,
    Body(c): Body<GrantChange>,
) -> ApiResult<Json<Value>> {
    let (loaded, actor) = moderator(&s, &room, &me).await?;
    let who = identity(&who)?;
    rank::require_above(&s, &loaded, actor, &who).await?;
    let mut g = current(&s, &room, &who).await?;
    for (grant, on) in [
        (Grant::Publish, c.publish),
        (Grant::Subscribe, c.subscribe),
        (Grant::Chat, c.chat),
    ] {
        match on {
            Some(true) => {
                g.insert(grant);
            }
            Some(false) => {
                g.remove(&grant);
            }
            None => {}
        }
    }
    set(&s, &room, &who, g.clone()).await?;
    Ok(Json(json!({"identity": who, "grants": g})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    pub role: Role,
}

pub async fn role(
    State(s): State<ApiState>,
    me: SessionUser,
    Path((room, who)): Path<(String, String)>,
    Body(c): Body<RoleChange>,
) -> ApiResult<Json<Value>> {
    let (loaded, actor) = moderator(&s, &room, &me).await?;
    let who = identity(&who)?;
    rank::require_above(&s, &loaded, actor, &who).await?;
    rank::require_can_give(actor, c.role)?;
    let (user, _) = s
        .store
        .user_by_name(&who)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_user", format!("no user {who:?}")))?;
    s.store.set_role(&room, user.id, c.role).await?;
    set(&s, &room, &who, c.role.grants()).await?;
    Ok(Json(
        json!({"identity": who, "role": c.role, "grants": c.role.grants()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mute {
    pub track: Option<String>,
    pub muted: bool,
}

/// The track a mute names (audio unless said), if it is one that can be muted.
fn mutable_track(track: Option<String>) -> ApiResult<String> {
    let track = track.unwrap_or_else(|| "audio".into());
    if !matches!(track.as_str(), "audio" | "video" | "screen") {
        return Err(ApiError::invalid(
            "invalid_track",
            "track must be audio, video or screen",
        ));
    }
    Ok(track)
}

pub async fn mute(
    State(s): State<ApiState>,
    me: SessionUser,
    Path((room, who)): Path<(String, String)>,
    Body(m): Body<Mute>,
) -> ApiResult<Json<Value>> {
    let (loaded, actor) = moderator(&s, &room, &me).await?;
    let who = identity(&who)?;
    rank::require_above(&s, &loaded, actor, &who).await?;
    let track = mutable_track(m.track)?;
    known(&s, &room, &who).await?;
    if m.muted {
        room_for_entry(&s, &room, &who).await?;
    }
    s.store.set_muted(&room, &who, &track, m.muted).await?;
    muted_everywhere(&s, &room, &who, &track, m.muted);
    s.live.push(
        &room,
        if m.muted { "muted" } else { "unmuted" },
        json!({"identity": who, "track": track}),
    );
    Ok(Json(
        json!({"identity": who, "track": track, "muted": m.muted}),
    ))
}

pub async fn mute_all(
    State(s): State<ApiState>,
    me: SessionUser,
    Path(room): Path<String>,
    Body(m): Body<Mute>,
) -> ApiResult<Json<Value>> {
    let (loaded, actor) = moderator(&s, &room, &me).await?;
    let track = mutable_track(m.track)?;
    if m.muted {
        // Past the limit by at most the room's participants.
        room_for_entry(&s, &room, "").await?;
    }
    let mut affected = vec![];
    for who in super::present_everywhere(&s, &room).await {
        // Only those the caller outranks (a moderator's mute-all leaves the hosts alone).
        if who == me.user.username || rank::of_identity(&s, &loaded, &who).await? >= actor {
            continue;
        }
        s.store.set_muted(&room, &who, &track, m.muted).await?;
        muted_everywhere(&s, &room, &who, &track, m.muted);
        affected.push(who);
    }
    s.live.push(
        &room,
        if m.muted { "muted" } else { "unmuted" },
        json!({"identities": affected, "track": track}),
    );
    Ok(Json(
        json!({"identities": affected, "track": track, "muted": m.muted}),
    ))
}

pub async fn kick(
    State(s): State<ApiState>,
    me: SessionUser,
    Path((room, who)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (loaded, actor) = moderator(&s, &room, &me).await?;
    let who = identity(&who)?;
    rank::require_above(&s, &loaded, actor, &who).await?;
    let closed = remove(&s, &room, &who, "kicked", "kicked: removed by a moderator").await?;
    Ok(Json(json!({"identity": who, "sessions_closed": closed})))
}

/// Takes `who` out of the room: every token it holds for the room (each one a join issued,
/// used or not, and those of its open sessions) is revoked, in the store first so it stays
/// revoked after a restart, then live: its sessions lose their grants at once. The room is
/// told with a `kind` event and the sessions close with `reason` after
/// [`REMOVAL_GRACE`](crate::relay::access::REMOVAL_GRACE).
/// Coming back takes a new join. Returns how many sessions it had.
async fn remove(
    s: &ApiState,
    room: &str,
    who: &str,
    kind: &'static str,
    reason: &'static str,
) -> ApiResult<usize> {
    let held = s.relay.access().session_tokens(room, who);
    let mut revoked = s.store.revoke_holder(room, who, &held).await?;
    // Also catches a session that registered since `held` was read.
    let sessions = s.relay.remove_identity(room, who, revoked.clone(), reason);
    for (jti, exp) in sessions.iter().filter(|t| !held.contains(t)) {
        s.store.revoke(jti, *exp).await?;
        revoked.push((jti.clone(), *exp));
    }
    // The other nodes: the tokens (every one a join issued is among them) and the sessions.
    s.live.tell(crate::cluster::bus::Change::Removed {
        room: room.to_owned(),
        identity: who.to_owned(),
        tokens: revoked,
        reason: reason.to_owned(),
    });
    s.live.push(room, kind, json!({"identity": who}));
    Ok(sessions.len())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Ban {
    pub reason: Option<String>,
}

pub async fn ban(
    State(s): State<ApiState>,
    me: SessionUser,
    Path((room, who)): Path<(String, String)>,
    Body(body): Body<Ban>,
) -> ApiResult<Json<Value>> {
    let (loaded, actor) = moderator(&s, &room, &me).await?;
    let who = identity(&who)?;
    rank::require_above(&s, &loaded, actor, &who).await?;
    if who.eq_ignore_ascii_case(&me.user.username) {
        return Err(ApiError::invalid(
            "cannot_ban_self",
            "you cannot ban yourself",
        ));
    }
    let reason = body.reason.unwrap_or_default();
    if reason.chars().count() > 500 {
        return Err(ApiError::invalid(
            "invalid_reason",
            "reason must be under 500 characters",
        ));
    }
    room_for_entry(&s, &room, &who).await?;
    s.store.ban(&room, &who, &reason).await?;
    s.relay.access().ban(&room, &who);
    s.relay.access().forget(&room, &who);
    s.live.tell(crate::cluster::bus::Change::Banned {
        room: room.clone(),
        identity: who.clone(),
    });
    remove(&s, &room, &who, "banned", "banned: banned from the room").await?;
    Ok(Json(json!({"identity": who, "banned": true})))
}

pub async fn unban(
    State(s): State<ApiState>,
    me: SessionUser,
    Path((room, who)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (loaded, actor) = moderator(&s, &room, &me).await?;
    let who = identity(&who)?;
    rank::require_above(&s, &loaded, actor, &who).await?;
    if !s.store.unban(&room, &who).await? {
        return Err(ApiError::not_found(
            "not_banned",
            format!("{who} is not banned"),
        ));
    }
    s.relay.access().unban(&room, &who);
    s.live.tell(crate::cluster::bus::Change::Unbanned {
        room: room.clone(),
        identity: who.clone(),
    });
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hand {
    pub raised: bool,
}

/// A member raises or lowers their own hand (with their media token).
pub async fn hand(
    State(s): State<ApiState>,
    me: MediaUser,
    Path(room): Path<String>,
    Body(h): Body<Hand>,
) -> ApiResult<Json<Value>> {
    if me.claims.room != room {
        return Err(ApiError::forbidden(
            "wrong_room",
            "token is for another room",
        ));
    }
    if s.live.set_hand(&room, &me.claims.sub, h.raised) {
        let kind = if h.raised {
            "hand_raised"
        } else {
            "hand_lowered"
        };
        s.live.push(&room, kind, json!({"identity": me.claims.sub}));
    }
    Ok(Json(json!({"hands": s.live.hands(&room)})))
}

pub async fn hands(
    State(s): State<ApiState>,
    me: SessionUser,
    Path(room): Path<String>,
) -> ApiResult<Json<Value>> {
    require_moderator(&s, &room, &me).await?;
    Ok(Json(json!({"hands": s.live.hands(&room)})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Floor {
    pub granted: bool,
}

/// Gives a student the floor (publish) or takes it back; lowers their hand either way.
pub async fn floor(
    State(s): State<ApiState>,
    me: SessionUser,
    Path((room, who)): Path<(String, String)>,
    Body(f): Body<Floor>,
) -> ApiResult<Json<Value>> {
    let (loaded, actor) = moderator(&s, &room, &me).await?;
    let who = identity(&who)?;
    rank::require_above(&s, &loaded, actor, &who).await?;
    let mut g = current(&s, &room, &who).await?;
    if f.granted {
        g.insert(Grant::Publish);
    } else {
        g.remove(&Grant::Publish);
    }
    set(&s, &room, &who, g.clone()).await?;
    if s.live.set_hand(&room, &who, false) {
        s.live.push(&room, "hand_lowered", json!({"identity": who}));
    }
    s.live.push(
        &room,
        if f.granted {
            "floor_granted"
        } else {
            "floor_revoked"
        },
        json!({"identity": who}),
    );
    Ok(Json(json!({"identity": who, "grants": g})))
}
