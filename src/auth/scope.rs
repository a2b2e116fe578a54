//! What a verified identity may do, checked on every request.

use super::{AuthError, Claims, Grant, Grants};
use crate::core::namespace::{
    has_prefix, participant_namespace, path_of, room_namespace, room_of, SERVER_PARTICIPANT,
};

/// A request a session makes of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// PUBLISH_NAMESPACE / PUBLISH: offer tracks under a namespace.
    Publish,
    /// SUBSCRIBE / FETCH to a track in a namespace.
    Subscribe,
    /// SUBSCRIBE_NAMESPACE on a prefix.
    Discover,
}

/// The rights of one session, derived from its token.
#[derive(Debug, Clone)]
pub struct Scope {
    pub claims: Claims,
}

impl Scope {
    pub fn new(claims: Claims) -> Self {
        Self { claims }
    }

    /// The participant's own namespace, `("room", room, sub)`.
    pub fn own_namespace(&self) -> Vec<String> {
        participant_namespace(&self.claims.room, &self.claims.sub)
    }

    /// Checks `action` on `namespace` with the identity's current `grants` (the token's
    /// unless a moderator changed them), returning the reason for a refusal.
    pub fn check<S: AsRef<str>>(
        &self,
        grants: &Grants,
        action: Action,
        namespace: &[S],
    ) -> Result<(), AuthError> {
        let room = &self.claims.room;
        let forbidden = |reason: &str| AuthError::ForbiddenNamespace {
            namespace: path_of(namespace),
            reason: reason.to_owned(),
        };
        match room_of(namespace) {
            None => return Err(forbidden("not a room namespace (room/<id>/...)")),
            Some(r) if r != room => {
                return Err(AuthError::WrongRoom {
                    token_room: room.clone(),
                    requested: r.to_owned(),
                })
            }
            Some(_) => {}
        }
        let need = |g: Grant| {
            if grants.contains(&g) {
                Ok(())
            } else {
                Err(AuthError::MissingGrant(g))
            }
        };
        match action {
            Action::Publish => {
                need(Grant::Publish)?;
                if !has_prefix(namespace, &self.own_namespace()) {
                    return Err(forbidden(
                        "may publish only under room/<room>/<own identity>",
                    ));
                }
            }
            // The room's own tracks (events, with chat) are how moderation reaches a
            // participant: every admitted member reads them, whatever its grants.
            Action::Subscribe
                if namespace.get(2).map(AsRef::as_ref) == Some(SERVER_PARTICIPANT) => {}
            Action::Subscribe | Action::Discover => {
                need(Grant::Subscribe)?;
                debug_assert!(has_prefix(namespace, &room_namespace(room)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn scope(grants: &[Grant]) -> Scope {
        Scope::new(Claims::new(
            "alice",
            "a",
            grants.iter().copied().collect(),
            Duration::from_secs(60),
        ))
    }

    #[test]
    fn publish_only_own_namespace() {
        let s = scope(&[Grant::Publish]);
        assert!(s
            .check(&s.claims.grants, Action::Publish, &["room", "a", "alice"])
            .is_ok());
        assert!(matches!(
            s.check(&s.claims.grants, Action::Publish, &["room", "a", "bob"]),
            Err(AuthError::ForbiddenNamespace { .. })
        ));
        assert!(matches!(
            s.check(&s.claims.grants, Action::Publish, &["room", "a"]),
            Err(AuthError::ForbiddenNamespace { .. })
        ));
        assert!(matches!(
            s.check(&s.claims.grants, Action::Publish, &["room", "a", "alice2"]),
            Err(AuthError::ForbiddenNamespace { .. })
        ));
    }

    #[test]
    fn rooms_match_whole_elements() {
        let s = scope(&[Grant::Subscribe, Grant::Publish]);
        assert!(s
            .check(&s.claims.grants, Action::Discover, &["room", "a"])
            .is_ok());
        assert!(matches!(
            s.check(&s.claims.grants, Action::Discover, &["room", "a2"]),
            Err(AuthError::WrongRoom { .. })
        ));
        assert!(matches!(
            s.check(&s.claims.grants, Action::Subscribe, &["room"]),
            Err(AuthError::ForbiddenNamespace { .. })
        ));
        assert!(matches!(
            s.check(&s.claims.grants, Action::Subscribe, &["other", "a"]),
            Err(AuthError::ForbiddenNamespace { .. })
        ));
    }

    #[test]
    fn grants_are_required() {
        let s = scope(&[Grant::Chat]);
        assert_eq!(
            s.check(&s.claims.grants, Action::Subscribe, &["room", "a", "bob"]),
            Err(AuthError::MissingGrant(Grant::Subscribe))
        );
        assert_eq!(
            s.check(&s.claims.grants, Action::Publish, &["room", "a", "alice"]),
            Err(AuthError::MissingGrant(Grant::Publish))
        );
    }

    #[test]
    fn room_events_need_no_grant_but_only_in_the_own_room() {
        let s = scope(&[]);
        assert!(s
            .check(
                &s.claims.grants,
                Action::Subscribe,
                &["room", "a", "_server"]
            )
            .is_ok());
        assert!(matches!(
            s.check(
                &s.claims.grants,
                Action::Subscribe,
                &["room", "b", "_server"]
            ),
            Err(AuthError::WrongRoom { .. })
        ));
        assert_eq!(
            s.check(
                &s.claims.grants,
                Action::Discover,
                &["room", "a", "_server"]
            ),
            Err(AuthError::MissingGrant(Grant::Subscribe))
        );
    }
}
