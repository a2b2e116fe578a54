//! Who may act on whom in a room: administrator > owner > host > moderator > participant >
//! viewer.
//!
//! A moderation action on someone (grants, role, mute, kick, ban, unban, floor) needs a rank
//! above theirs; a role (given directly or through an invite) must rank below the giver's, so
//! only the owner makes hosts and only hosts make moderators; only the owner (or an
//! administrator) deletes the room. An identity with no account (a token an application
//! minted) ranks as a participant.

use super::error::{ApiError, ApiResult};
use super::extract::SessionUser;
use super::ApiState;
use crate::store::{Role, Room};

/// A place in a room's hierarchy; higher outranks lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    /// Not a member (or banned).
    Outsider,
    Viewer,
    Participant,
    Moderator,
    Host,
    Owner,
    Admin,
}

impl From<Role> for Rank {
    fn from(r: Role) -> Self {
        match r {
            Role::Viewer => Rank::Viewer,
            Role::Participant => Rank::Participant,
            Role::Moderator => Rank::Moderator,
            Role::Host => Rank::Host,
        }
    }
}

/// The caller's rank in `room` (a banned caller is an outsider whatever the store says).
pub async fn of_caller(s: &ApiState, room: &Room, me: &SessionUser) -> ApiResult<Rank> {
    if me.user.is_admin {
        return Ok(Rank::Admin);
    }
    if s.store.is_banned(&room.id, &me.user.username).await? {
        return Ok(Rank::Outsider);
    }
    if room.owner_id == me.user.id {
        return Ok(Rank::Owner);
    }
    Ok(s.store
        .role(&room.id, me.user.id)
        .await?
        .map_or(Rank::Outsider, Rank::from))
}

/// The rank of identity `who` in `room`, as a target (a ban is ignored, so an unban needs the
/// same rank as the ban did).
pub async fn of_identity(s: &ApiState, room: &Room, who: &str) -> ApiResult<Rank> {
    let Some((user, _)) = s.store.user_by_name(who).await? else {
        return Ok(Rank::Participant);
    };
    if user.is_admin {
        return Ok(Rank::Admin);
    }
    if room.owner_id == user.id {
        return Ok(Rank::Owner);
    }
    Ok(s.store
        .role(&room.id, user.id)
        .await?
        .map_or(Rank::Participant, Rank::from))
}

/// Fails with 403 `outranked` unless `actor` ranks above `who` in `room`.
pub async fn require_above(s: &ApiState, room: &Room, actor: Rank, who: &str) -> ApiResult<()> {
    let target = of_identity(s, room, who).await?;
    if actor > target {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "outranked",
        format!("{who} ranks as {target:?}, not below your {actor:?}"),
    ))
}

/// Fails with 403 `role_too_high` unless `actor` may give `role` (it must rank below).
pub fn require_can_give(actor: Rank, role: Role) -> ApiResult<()> {
    if Rank::from(role) < actor {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "role_too_high",
        format!("a {actor:?} cannot give the role {role:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_rank_below_what_may_give_them() {
        assert!(require_can_give(Rank::Owner, Role::Host).is_ok());
        assert!(require_can_give(Rank::Host, Role::Host).is_err());
        assert!(require_can_give(Rank::Host, Role::Moderator).is_ok());
        assert!(require_can_give(Rank::Moderator, Role::Moderator).is_err());
        assert!(require_can_give(Rank::Moderator, Role::Participant).is_ok());
        assert!(Rank::Admin > Rank::Owner && Rank::Owner > Rank::Host);
    }
}
