//! What a verified identity may do, checked on every request.

use std::sync::Arc;

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
    /// First namespace elements open to every session, with a token or without
    /// (`public_prefixes`; none by default).
    pub public: Arc<[String]>,
    /// The session presented no token: it may use only the `public` namespaces, and it is in
    /// no room (`claims` name it `anonymous-<session>` with an empty room and no grants).
    pub anonymous: bool,
    /// Another node of the cluster (a node credential): it reads this node's own publishers'
    /// tracks and does nothing else; it is in no room (`claims` name it `node:<id>`).
    pub peer: bool,
}

impl Scope {
    /// A token holder's scope, with no open namespaces.
    pub fn new(claims: Claims) -> Self {
        Self::with_public(claims, Arc::from([]))
    }

    /// A token holder's scope; `public` namespaces are open to it as well.
    pub fn with_public(claims: Claims, public: Arc<[String]>) -> Self {
        Self {
            claims,
            public,
            anonymous: false,
            peer: false,
        }
    }

    /// The scope of session `session`, which presented no token, on a relay with `public`
    /// namespaces open.
    pub fn anonymous(session: u64, public: Arc<[String]>) -> Self {
        let now = super::token::now_secs();
        let claims = Claims {
            sub: format!("anonymous-{session}"),
            room: String::new(),
            grants: Grants::new(),
            exp: now,
            nbf: now,
            iat: now,
            jti: format!("anonymous-{session}"),
        };
        Self {
            claims,
            public,
            anonymous: true,
            peer: false,
        }
    }

    /// The scope of a session another node opened with its credential.
    pub fn peer(node: &str) -> Self {
        let now = super::token::now_secs();
        let name = format!("node:{node}");
        let claims = Claims {
            sub: name.clone(),
            room: String::new(),
            grants: Grants::new(),
            exp: now,
            nbf: now,
            iat: now,
            jti: name,
        };
        Self {
            claims,
            public: Arc::from([]),
            anonymous: false,
            peer: true,
        }
    }

    /// Whether `namespace` lies under an open (public) prefix.
    pub fn is_public<S: AsRef<str>>(&self, namespace: &[S]) -> bool {
        namespace
            .first()
            .is_some_and(|first| self.public.iter().any(|p| p == first.as_ref()))
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
        // Open namespaces: anyone publishes, subscribes and discovers there (a newer session
        // does not replace a publisher there; the registry refuses it).
        if self.peer {
            // Which namespaces are this node's own is the relay's to check (it serves a node
            // nothing it reads from another).
            return match action {
                Action::Subscribe => Ok(()),
                _ => Err(AuthError::ForbiddenNamespace {
                    namespace: path_of(namespace),
                    reason: "a node session only reads tracks".into(),
                }),
            };
        }
        if self.is_public(namespace) {
            return Ok(());
        }
        if self.anonymous {
            return Err(AuthError::Anonymous {
                namespace: path_of(namespace),
                open: self.public.join(", "),
            });
        }
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
    fn open_namespaces_are_open_to_all_and_the_only_ones_open_without_a_token() {
        let public: Arc<[String]> = Arc::from(vec!["moq-test".to_owned()]);
        let anon = Scope::anonymous(7, public.clone());
        let none = Grants::new();
        for action in [Action::Publish, Action::Subscribe, Action::Discover] {
            assert!(anon.check(&none, action, &["moq-test", "x"]).is_ok());
            assert!(anon.check(&none, action, &["moq-test"]).is_ok());
            assert!(matches!(
                anon.check(&none, action, &["room", "a", "alice"]),
                Err(AuthError::Anonymous { .. })
            ));
            // Whole elements: `moq-test2` is not open.
            assert!(matches!(
                anon.check(&none, action, &["moq-test2", "x"]),
                Err(AuthError::Anonymous { .. })
            ));
            assert!(matches!(
                anon.check(&none, action, &[] as &[&str]),
                Err(AuthError::Anonymous { .. })
            ));
        }
        // A token holder keeps its room and may use the open namespaces too.
        let s = Scope::with_public(scope(&[Grant::Subscribe]).claims, public);
        assert!(s.check(&none, Action::Publish, &["moq-test", "x"]).is_ok());
        assert!(matches!(
            s.check(&s.claims.grants, Action::Subscribe, &["room", "b", "x"]),
            Err(AuthError::WrongRoom { .. })
        ));
        // Nothing is open by default.
        let closed = scope(&[Grant::Publish]);
        assert!(matches!(
            closed.check(&closed.claims.grants, Action::Publish, &["moq-test", "x"]),
            Err(AuthError::ForbiddenNamespace { .. })
        ));
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
