//! Rooms: create, list, get (with who is live), update, delete, join, invites, lock.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{Body, SessionUser};
use super::rank::Rank;
use super::ApiState;
use crate::auth::token::now_secs;
use crate::auth::Claims;
use crate::store::{Mode, Role, Room, RoomChanges};

/// Lifetime of a media token from joining.
pub const MEDIA_TTL: Duration = Duration::from_secs(3600);
/// Chat messages replayed in a join response.
pub const REPLAY: i64 = 50;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomSpec {
    pub name: Option<String>,
    pub password: Option<String>,
    pub max_participants: Option<i64>,
    pub empty_timeout_secs: Option<i64>,
    pub metadata: Option<Value>,
    pub mode: Option<Mode>,
}

fn check_spec(spec: &RoomSpec) -> ApiResult<()> {
    if let Some(n) = &spec.name {
        let len = n.chars().count();
        if len == 0 || len > 100 {
            return Err(ApiError::invalid(
                "invalid_name",
                "name must be 1-100 characters",
            ));
        }
    }
    if let Some(p) = &spec.password {
        // Guessing is limited per address (see `guard`); a floor on the length keeps a
        // distributed guess from being cheap.
        if !(MIN_ROOM_PASSWORD..=128).contains(&p.chars().count()) {
            return Err(ApiError::invalid(
                "invalid_password",
                format!("room password must be {MIN_ROOM_PASSWORD}-128 characters"),
            ));
        }
    }
    if spec
        .max_participants
        .is_some_and(|m| !(1..=1000).contains(&m))
    {
        return Err(ApiError::invalid(
            "invalid_max_participants",
            "max_participants must be 1-1000",
        ));
    }
    if spec
        .empty_timeout_secs
        .is_some_and(|t| !(0..=86_400).contains(&t))
    {
        return Err(ApiError::invalid(
            "invalid_timeout",
            "empty_timeout_secs must be 0-86400",
        ));
    }
    if let Some(m) = &spec.metadata {
        if !m.is_object() || m.to_string().len() > 4096 {
            return Err(ApiError::invalid(
                "invalid_metadata",
                "metadata must be a JSON object under 4 KiB",
            ));
        }
    }
    Ok(())
}

fn new_room_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..12)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub async fn load(s: &ApiState, id: &str) -> ApiResult<Room> {
    s.store.room(id).await?.ok_or_else(|| unknown_room(id))
}

fn unknown_room(id: &str) -> ApiError {
    ApiError::not_found("unknown_room", format!("no room {id:?}"))
}

/// The caller's role, or `Host` for administrators. Someone banned from the room has none,
/// whatever the store still says (a join racing the ban may have written a membership).
pub async fn role_of(s: &ApiState, room: &str, me: &SessionUser) -> ApiResult<Option<Role>> {
    if me.user.is_admin {
        return Ok(Some(Role::Host));
    }
    if s.store.is_banned(room, &me.user.username).await? {
        return Ok(None);
    }
    Ok(s.store.role(room, me.user.id).await?)
}

/// Loads `room` (404 if unknown) and fails unless the caller is host, moderator or
/// administrator of it (403).
pub async fn require_moderator(s: &ApiState, room: &str, me: &SessionUser) -> ApiResult<Room> {
    Ok(require_moderator_ranked(s, room, me).await?.0)
}

/// [`require_moderator`], also returning the caller's rank (for actions on others).
pub async fn require_moderator_ranked(
    s: &ApiState,
    room: &str,
    me: &SessionUser,
) -> ApiResult<(Room, Rank)> {
    let loaded = load(s, room).await?;
    let rank = super::rank::of_caller(s, &loaded, me).await?;
    if rank >= Rank::Moderator {
        return Ok((loaded, rank));
    }
    Err(ApiError::forbidden(
        "not_moderator",
        "only a host or moderator of this room may do this",
    ))
}

/// Shortest room password accepted.
pub const MIN_ROOM_PASSWORD: usize = 6;

pub async fn create(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    me: SessionUser,
    Body(spec): Body<RoomSpec>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_spec(&spec)?;
    let limit = s.limits.rooms_per_user;
    if !me.user.is_admin && s.store.rooms_owned(me.user.id).await? >= limit {
        return Err(ApiError::conflict(
            "too_many_rooms",
            format!("you own {limit} rooms, the most allowed; delete one first"),
        ));
    }
    let password_hash = match spec.password {
        Some(p) => {
            s.guards.set_room_password(peer.ip())?;
            Some(s.guards.hash(p).await?)
        }
        None => None,
    };
    let room = Room {
        id: new_room_id(),
        name: spec.name.unwrap_or_else(|| "room".into()),
        has_password: password_hash.is_some(),
        password_hash,
        max_participants: spec.max_participants.unwrap_or(50),
        empty_timeout_secs: spec.empty_timeout_secs.unwrap_or(300),
        metadata: spec.metadata.unwrap_or_else(|| json!({})),
        mode: spec.mode.unwrap_or_default(),
        locked: false,
        owner_id: me.user.id,
        created_at: now_secs() as i64,
    };
    s.store.create_room(&room).await?;
    Ok((StatusCode::CREATED, Json(json!({"room": room}))))
}

/// Most rooms per page of the list.
pub const MAX_ROOM_PAGE: i64 = 100;

#[derive(Deserialize)]
pub struct RoomPage {
    /// `next_before` of the previous page.
    pub before: Option<String>,
    pub limit: Option<i64>,
}

impl RoomPage {
    /// This page of rooms, newest first (50 unless `limit` says otherwise, at most
    /// [`MAX_ROOM_PAGE`]), and the `next_before` cursor of the next page if there may be one.
    pub async fn load(
        &self,
        store: &crate::store::Store,
    ) -> ApiResult<(Vec<Room>, Option<String>)> {
        let before = cursor(self.before.as_deref())?;
        let limit = self.limit.unwrap_or(50).clamp(1, MAX_ROOM_PAGE);
        let rooms = store.rooms(before, limit).await?;
        let next = (rooms.len() as i64 == limit)
            .then(|| rooms.last().map(|r| format!("{}.{}", r.created_at, r.id)))
            .flatten();
        Ok((rooms, next))
    }
}

/// A room list's `before` cursor: `created_at.id` of the last room of the previous page.
fn cursor(before: Option<&str>) -> ApiResult<Option<(i64, &str)>> {
    let Some(c) = before else {
        return Ok(None);
    };
    c.split_once('.')
        .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id)))
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "before must be a next_before value")
        })
}

/// Rooms, newest first, a page at a time: pass `next_before` as `before` for the next one.
pub async fn list(
    State(s): State<ApiState>,
    _me: SessionUser,
    Query(p): Query<RoomPage>,
) -> ApiResult<Json<Value>> {
    let (rooms, next) = p.load(&s.store).await?;
    let rooms: Vec<Value> = rooms
        .into_iter()
        .map(|r| {
            // Public metadata only: who is in it, its owner and its metadata are for members.
            let live = s.relay.access().session_count(&r.id);
            json!({"room": {
                "id": r.id, "name": r.name, "mode": r.mode, "has_password": r.has_password,
                "locked": r.locked, "max_participants": r.max_participants,
            }, "live_sessions": live})
        })
        .collect();
    Ok(Json(json!({"rooms": rooms, "next_before": next})))
}

#[derive(Serialize)]
struct Participant {
    identity: String,
    publishing: bool,
    hand_raised: bool,
    /// Tracks a moderator muted.
    muted: Vec<&'static str>,
}

pub async fn get(
    State(s): State<ApiState>,
    me: SessionUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let room = load_for_member(&s, &id, &me).await?;
    let publishers = s.relay.publishers(&id);
    let hands = s.live.hands(&id);
    let participants: Vec<Participant> = s
        .relay
        .access()
        .present(&id)
        .into_iter()
        .map(|identity| Participant {
            publishing: publishers.contains(&identity),
            hand_raised: hands.contains(&identity),
            muted: ["audio", "video", "screen"]
                .into_iter()
                .filter(|t| s.relay.access().is_muted(&id, &identity, t))
                .collect(),
            identity,
        })
        .collect();
    Ok(Json(json!({
        "room": room,
        "open": s.live.is_open(&id),
        "participants": participants,
        "publishers": publishers,
    })))
}

pub async fn update(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    me: SessionUser,
    Path(id): Path<String>,
    Body(spec): Body<RoomSpec>,
) -> ApiResult<Json<Value>> {
    check_spec(&spec)?;
    require_moderator(&s, &id, &me).await?;
    let password_hash = match spec.password {
        Some(p) => {
            s.guards.set_room_password(peer.ip())?;
            Some(s.guards.hash(p).await?)
        }
        None => None,
    };
    let changes = RoomChanges {
        name: spec.name,
        password_hash,
        max_participants: spec.max_participants,
        empty_timeout_secs: spec.empty_timeout_secs,
        metadata: spec.metadata,
        mode: spec.mode,
        locked: None,
    };
    let room = s
        .store
        .update_room(&id, &changes)
        .await?
        .ok_or_else(|| unknown_room(&id))?;
    Ok(Json(json!({"room": room})))
}

/// Loads `room` for a member (or an administrator); to anyone else it does not exist.
async fn load_for_member(s: &ApiState, id: &str, me: &SessionUser) -> ApiResult<Room> {
    let room = load(s, id).await?;
    match role_of(s, id, me).await? {
        Some(_) => Ok(room),
        None => Err(ApiError::not_found(
            "unknown_room",
            format!("no room {id:?}"),
        )),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub password: Option<String>,
    pub invite: Option<String>,
    /// Cluster mode: the region to be placed in (default: the answering node's).
    pub region: Option<String>,
}

/// Claims of an invite link.
#[derive(Debug, Serialize, Deserialize)]
pub struct InviteClaims {
    /// Always `"invite"`.
    pub kind: InviteKind,
    pub room: String,
    pub role: Role,
    pub exp: u64,
    pub nbf: u64,
    pub jti: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InviteKind {
    Invite,
}

pub async fn join(
    State(s): State<ApiState>,
    me: SessionUser,
    Path(id): Path<String>,
    Body(req): Body<JoinRequest>,
) -> ApiResult<Json<Value>> {
    s.guards.join(me.user.id)?;
    let room = load(&s, &id).await?;
    let name = me.user.username.clone();
    if s.store.is_banned(&id, &name).await? {
        return Err(ApiError::forbidden(
            "banned",
            "you are banned from this room",
        ));
    }
    let mut role = role_of(&s, &id, &me).await?;
    if let Some(invite) = &req.invite {
        let claims: InviteClaims = s.issuer.verify_as(invite)?;
        if claims.room != id {
            return Err(ApiError::forbidden(
                "wrong_room",
                "invite is for another room",
            ));
        }
        if !s
            .store
            .redeem_invite(&claims.jti, &id, me.user.id, claims.role)
            .await?
        {
            return Err(ApiError::forbidden(
                "invite_used",
                "invite already used or expired",
            ));
        }
        // The invite's role replaces whatever a moderator had set for this identity.
        super::moderation::grants_everywhere(&s, &id, &name, None);
        role = Some(claims.role);
    }
    let role = match role {
        Some(r) => r,
        None => {
            if room.locked {
                return Err(ApiError::forbidden("room_locked", "the room is locked"));
            }
            if let Some(phc) = room.password_hash.clone() {
                s.guards.room_password(me.user.id, &id)?;
                let given = req.password.clone().unwrap_or_default();
                if !s.guards.verify(given, phc).await? {
                    return Err(ApiError::forbidden("wrong_password", "wrong room password"));
                }
            }
            let r = if room.mode == Mode::Classroom {
                Role::Viewer
            } else {
                Role::Participant
            };
            s.store.set_role(&id, me.user.id, r).await?;
            r
        }
    };
    if room.locked && !role.moderates() && req.invite.is_none() {
        return Err(ApiError::forbidden("room_locked", "the room is locked"));
    }
    let present = super::present_everywhere(&s, &id).await;
    if !present.contains(&name) && present.len() as i64 >= room.max_participants {
        return Err(ApiError::conflict("room_full", "the room is full"));
    }
    // The room's events track exists before the member connects to the relay.
    s.live.ensure_open(&id);
    // Events the member should act on start here; older ones (an earlier kick) are history.
    let events_from = s.live.next_seq(&id);
    let claims = Claims::new(&name, &id, role.grants(), MEDIA_TTL);
    // Recorded before it is handed out, so a kick or ban from now on revokes it too.
    s.store
        .issued(&claims.jti, &id, &name, claims.exp, &me.claims.jti)
        .await?;
    let token = s.issuer.mint(&claims)?;
    let recent = s.store.history(&id, None, REPLAY).await?;
    // Cluster mode: the node to connect to, so clients spread over the nodes by themselves.
    let relay = match &s.cluster {
        Some(cluster) => {
            let region = req.region.as_deref().filter(|r| r.len() <= 64);
            Some(cluster.place(region).await)
        }
        None => None,
    };
    let mut answer = json!({
        "token": token,
        "room": room,
        "role": role,
        "grants": s.relay.access().override_of(&id, &name).unwrap_or_else(|| role.grants()),
        "expires_at": claims.exp,
        "events_from": events_from,
        "recent_chat": recent,
    });
    if let Some(relay) = relay {
        answer["relay"] = json!(relay);
    }
    Ok(Json(answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    pub role: Option<Role>,
    pub ttl_secs: Option<u64>,
}

pub async fn invite(
    State(s): State<ApiState>,
    me: SessionUser,
    Path(id): Path<String>,
    Body(req): Body<InviteRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (_, actor) = require_moderator_ranked(&s, &id, &me).await?;
    let ttl = req.ttl_secs.unwrap_or(86_400);
    if !(1..=30 * 86_400).contains(&ttl) {
        return Err(ApiError::invalid(
            "invalid_ttl",
            "ttl_secs must be 1 s to 30 days",
        ));
    }
    let role = req.role.unwrap_or(Role::Participant);
    if role == Role::Host {
        return Err(ApiError::invalid(
            "invalid_role",
            "invites cannot make hosts",
        ));
    }
    super::rank::require_can_give(actor, role)?;
    let now = now_secs();
    let claims = InviteClaims {
        kind: InviteKind::Invite,
        room: id.clone(),
        role,
        exp: now + ttl,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    s.store
        .create_invite(&claims.jti, &id, role, claims.exp)
        .await?;
    let token = s.issuer.mint_as(&claims)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"invite": token, "role": role, "expires_at": claims.exp})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub locked: bool,
}

pub async fn lock(
    State(s): State<ApiState>,
    me: SessionUser,
    Path(id): Path<String>,
    Body(l): Body<Lock>,
) -> ApiResult<Json<Value>> {
    require_moderator(&s, &id, &me).await?;
    let changes = RoomChanges {
        locked: Some(l.locked),
        ..Default::default()
    };
    let room = s
        .store
        .update_room(&id, &changes)
        .await?
        .ok_or_else(|| unknown_room(&id))?;
    s.live.push(&id, "room_locked", json!({"locked": l.locked}));
    Ok(Json(json!({"room": room})))
}

#[derive(Deserialize)]
pub struct EventsQuery {
    pub from: Option<u64>,
}

pub async fn events(
    State(s): State<ApiState>,
    me: SessionUser,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<Value>> {
    load_for_member(&s, &id, &me).await?;
    Ok(Json(
        json!({"events": s.live.events(&id, q.from.unwrap_or(0))}),
    ))
}
