//! Live access control: bans, revoked tokens, grant overrides, muted tracks, and the sessions
//! each identity holds, so moderation takes effect without reconnecting.
//!
//! Every request a session makes asks [`Access::grants`] for the identity's current grants
//! (the token's, unless a moderator changed them). Changing them bumps a per-session watch the
//! session loop reacts to, e.g. by withdrawing its publications when publish was revoked.

use std::collections::{HashMap, HashSet};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use std::sync::Arc;

use moq_transport::session::transport::Session as MoqTransport;
use tokio::sync::{broadcast, watch};

use crate::auth::token::{now_secs, LEEWAY_SECS, MAX_TOKEN_LIFETIME};
use crate::auth::{Claims, Grants};

/// How long a removed participant's sessions stay open after the room (and they) were told,
/// so the `kicked`/`banned` event reaches them first. Their tokens are revoked at once.
pub const REMOVAL_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// (room, identity).
pub type Who = (String, String);

/// What happened in a room, as seen by the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    Joined {
        room: String,
        identity: String,
    },
    Left {
        room: String,
        identity: String,
    },
    /// The last session of the room ended.
    Empty {
        room: String,
    },
    /// Someone joined (through the API) a room with no session: they are on their way.
    AwaitingJoiner {
        room: String,
    },
    Published {
        room: String,
        identity: String,
    },
    Unpublished {
        room: String,
        identity: String,
    },
}

/// A session the relay can end with a code and a reason: a MoQ session (closed on the wire),
/// or a bridged one such as a WHIP publisher (ended by its own loop).
pub trait Closable: Send + Sync {
    fn close(&self, code: u32, reason: &str);
}

impl Closable for MoqTransport {
    fn close(&self, code: u32, reason: &str) {
        MoqTransport::close(self, code, reason);
    }
}

struct SessionEntry {
    transport: Arc<dyn Closable>,
    changed: watch::Sender<u64>,
    /// The token the session was admitted with, for revocation.
    jti: String,
    /// Issued at (a closure in the same second must revoke the token by its `jti`).
    iat: u64,
    exp: u64,
    grants: Grants,
}

/// A room that closed (emptied past its timeout) or was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closure {
    /// When it closed, seconds since the epoch: tokens issued before are refused.
    pub at: u64,
    /// Deleted rooms refuse every token.
    pub deleted: bool,
}

impl Closure {
    /// Until when the closure must be remembered: no token that predates it outlives this.
    pub fn until(&self) -> u64 {
        self.at + MAX_TOKEN_LIFETIME.as_secs() + LEEWAY_SECS
    }
}

#[derive(Default)]
struct Inner {
    banned: HashSet<Who>,
    /// Revoked token ids and their tokens' expiry (forgotten once expired).
    revoked: HashMap<String, u64>,
    closed: HashMap<String, Closure>,
    overrides: HashMap<Who, Grants>,
    muted: HashSet<(String, String, String)>,
    sessions: HashMap<Who, HashMap<u64, SessionEntry>>,
    room_sessions: HashMap<String, usize>,
}

/// Shared live access state.
pub struct Access {
    inner: RwLock<Inner>,
    events: broadcast::Sender<RelayEvent>,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            inner: RwLock::default(),
            events: broadcast::channel(1024).0,
        }
    }
}

/// Why an identity may not hold a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Banned,
    Revoked,
    RoomClosed,
}

impl Denied {
    /// Machine-readable code, for errors and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Denied::Banned => "banned",
            Denied::Revoked => "token_revoked",
            Denied::RoomClosed => "room_closed",
        }
    }

    /// Session close reason: the code, then words for people.
    pub fn reason(self) -> &'static str {
        match self {
            Denied::Banned => "banned: banned from this room",
            Denied::Revoked => "token_revoked: token was revoked; join the room again",
            Denied::RoomClosed => "room_closed: the room was closed or deleted",
        }
    }
}

impl Access {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Feed of relay events (joins, leaves, publications).
    pub fn events(&self) -> broadcast::Receiver<RelayEvent> {
        self.events.subscribe()
    }

    /// Publishes an event on the feed.
    pub fn emit(&self, e: RelayEvent) {
        let _ = self.events.send(e);
    }

    /// Whether `claims` may hold a session (or use the API with its token) now.
    pub fn admit(&self, claims: &Claims) -> Result<(), Denied> {
        Self::admits(&self.read(), claims)
    }

    fn admits(inner: &Inner, claims: &Claims) -> Result<(), Denied> {
        if inner
            .banned
            .contains(&(claims.room.clone(), claims.sub.clone()))
        {
            return Err(Denied::Banned);
        }
        if inner.revoked.contains_key(&claims.jti) {
            return Err(Denied::Revoked);
        }
        match inner.closed.get(&claims.room) {
            Some(c) if c.deleted || claims.iat < c.at => Err(Denied::RoomClosed),
            _ => Ok(()),
        }
    }

    /// The identity's grants now: none if its token no longer admits it, else a moderator's
    /// override, else the token's.
    pub fn grants(&self, claims: &Claims) -> Grants {
        let inner = self.read();
        if Self::admits(&inner, claims).is_err() {
            return Grants::new();
        }
        inner
            .overrides
            .get(&(claims.room.clone(), claims.sub.clone()))
            .cloned()
            .unwrap_or_else(|| claims.grants.clone())
    }

    /// Admits and registers a session (in one step, so a kick or ban that lands meanwhile
    /// cannot be missed); returns a watch that changes when its grants change. An identity
    /// holds at most `max_per_identity` sessions in a room: a newer one closes the oldest
    /// (a reconnect from a new network, a second tab), so one token cannot hold any number.
    pub fn register(
        &self,
        id: u64,
        claims: &Claims,
        transport: Arc<dyn Closable>,
        max_per_identity: usize,
    ) -> Result<watch::Receiver<u64>, Denied> {
        let who = (claims.room.clone(), claims.sub.clone());
        let (tx, rx) = watch::channel(0);
        let mut inner = self.write();
        Self::admits(&inner, claims)?;
        let held = inner.sessions.entry(who).or_default();
        while held.len() >= max_per_identity.max(1) {
            let Some(oldest) = held.keys().min().copied() else {
                break;
            };
            if let Some(old) = held.remove(&oldest) {
                old.transport.close(
                    super::close_code::TOO_MANY,
                    "replaced: a newer session of this identity took its place",
                );
            }
        }
        held.insert(
            id,
            SessionEntry {
                transport,
                changed: tx,
                jti: claims.jti.clone(),
                iat: claims.iat,
                exp: claims.exp,
                grants: claims.grants.clone(),
            },
        );
        *inner.room_sessions.entry(claims.room.clone()).or_default() += 1;
        drop(inner);
        self.emit(RelayEvent::Joined {
            room: claims.room.clone(),
            identity: claims.sub.clone(),
        });
        Ok(rx)
    }

    pub fn unregister(&self, id: u64, claims: &Claims) {
        let who = (claims.room.clone(), claims.sub.clone());
        let mut inner = self.write();
        // `left` only once the identity's last session is gone (a replaced one is not).
        let mut gone = true;
        if let Some(s) = inner.sessions.get_mut(&who) {
            s.remove(&id);
            gone = s.is_empty();
            if gone {
                inner.sessions.remove(&who);
            }
        }
        let empty = match inner.room_sessions.get_mut(&claims.room) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if empty {
            inner.room_sessions.remove(&claims.room);
        }
        drop(inner);
        if gone {
            self.emit(RelayEvent::Left {
                room: claims.room.clone(),
                identity: claims.sub.clone(),
            });
        }
        if empty {
            self.emit(RelayEvent::Empty {
                room: claims.room.clone(),
            });
        }
    }

    /// Sessions open in `room`.
    pub fn session_count(&self, room: &str) -> usize {
        self.read().room_sessions.get(room).copied().unwrap_or(0)
    }

    /// Every room with sessions, with the identities present (sorted).
    pub fn presence(&self) -> HashMap<String, Vec<String>> {
        let mut rooms: HashMap<String, Vec<String>> = HashMap::new();
        for (room, who) in self.read().sessions.keys() {
            rooms.entry(room.clone()).or_default().push(who.clone());
        }
        for v in rooms.values_mut() {
            v.sort();
        }
        rooms
    }

    /// Identities with a session in `room`.
    pub fn present(&self, room: &str) -> Vec<String> {
        let mut v: Vec<_> = self
            .read()
            .sessions
            .keys()
            .filter(|(r, _)| r == room)
            .map(|(_, who)| who.clone())
            .collect();
        v.sort();
        v
    }

    /// Replaces the identity's grants (`None` returns to the token's) and tells its sessions.
    pub fn set_grants(&self, room: &str, identity: &str, grants: Option<Grants>) {
        let who = (room.to_owned(), identity.to_owned());
        let mut inner = self.write();
        match grants {
            Some(g) => inner.overrides.insert(who, g),
            None => inner.overrides.remove(&who),
        };
        Self::notify(&inner, room, identity);
    }

    /// What the tokens of the identity's open sessions grant (their union), if it has any.
    pub fn token_grants(&self, room: &str, identity: &str) -> Option<Grants> {
        let inner = self.read();
        let sessions = inner
            .sessions
            .get(&(room.to_owned(), identity.to_owned()))?;
        Some(
            sessions
                .values()
                .flat_map(|e| e.grants.iter().copied())
                .collect(),
        )
    }

    pub fn override_of(&self, room: &str, identity: &str) -> Option<Grants> {
        self.read()
            .overrides
            .get(&(room.to_owned(), identity.to_owned()))
            .cloned()
    }

    pub fn set_muted(&self, room: &str, identity: &str, track: &str, muted: bool) {
        let key = (room.to_owned(), identity.to_owned(), track.to_owned());
        let mut inner = self.write();
        if muted {
            inner.muted.insert(key);
        } else {
            inner.muted.remove(&key);
        }
    }

    pub fn is_muted(&self, room: &str, identity: &str, track: &str) -> bool {
        let inner = self.read();
        !inner.muted.is_empty()
            && inner
                .muted
                .contains(&(room.to_owned(), identity.to_owned(), track.to_owned()))
    }

    /// The (jti, expiry) of the tokens the identity's open sessions in the room hold.
    pub fn session_tokens(&self, room: &str, identity: &str) -> Vec<(String, u64)> {
        self.read()
            .sessions
            .get(&(room.to_owned(), identity.to_owned()))
            .map(|s| s.values().map(|e| (e.jti.clone(), e.exp)).collect())
            .unwrap_or_default()
    }

    /// Forgets a moderator's overrides and mutes of the identity (it was banned).
    pub fn forget(&self, room: &str, identity: &str) {
        let mut inner = self.write();
        inner
            .overrides
            .remove(&(room.to_owned(), identity.to_owned()));
        inner
            .muted
            .retain(|(r, who, _)| !(r == room && who == identity));
    }

    /// Revokes the tokens of every session the identity holds in the room: they lose their
    /// grants at once (publications are withdrawn) and cannot be used again. Returns the
    /// (jti, expiry) pairs, for the store.
    pub fn revoke_sessions(&self, room: &str, identity: &str) -> Vec<(String, u64)> {
        let mut inner = self.write();
        let revoked: Vec<(String, u64)> = inner
            .sessions
            .get(&(room.to_owned(), identity.to_owned()))
            .map(|s| s.values().map(|e| (e.jti.clone(), e.exp)).collect())
            .unwrap_or_default();
        for (jti, exp) in &revoked {
            inner.revoked.insert(jti.clone(), *exp);
        }
        Self::prune(&mut inner);
        Self::notify(&inner, room, identity);
        revoked
    }

    /// Closes every session of the identity in the room with `reason`. Returns how many.
    pub fn close_sessions(&self, room: &str, identity: &str, reason: &str) -> usize {
        let inner = self.read();
        let Some(sessions) = inner.sessions.get(&(room.to_owned(), identity.to_owned())) else {
            return 0;
        };
        for s in sessions.values() {
            s.transport.close(super::close_code::UNAUTHORIZED, reason);
        }
        sessions.len()
    }

    /// Bans the identity from the room: its sessions lose their grants at once.
    pub fn ban(&self, room: &str, identity: &str) {
        let mut inner = self.write();
        inner.banned.insert((room.to_owned(), identity.to_owned()));
        Self::notify(&inner, room, identity);
    }

    pub fn unban(&self, room: &str, identity: &str) {
        self.write()
            .banned
            .remove(&(room.to_owned(), identity.to_owned()));
    }

    /// Revokes tokens by their `jti` (each until its `exp`) and closes the sessions admitted
    /// with them, with `reason` (a logout, a password change). Returns how many it closed.
    pub fn end_tokens(&self, tokens: &[(String, u64)], reason: &str) -> usize {
        if tokens.is_empty() {
            return 0;
        }
        let mut inner = self.write();
        inner.revoked.extend(tokens.iter().cloned());
        Self::prune(&mut inner);
        let ended: HashSet<&str> = tokens.iter().map(|(jti, _)| jti.as_str()).collect();
        let mut closed = 0;
        for entry in inner.sessions.values().flat_map(HashMap::values) {
            if ended.contains(entry.jti.as_str()) {
                entry.changed.send_modify(|v| *v += 1);
                entry
                    .transport
                    .close(super::close_code::UNAUTHORIZED, reason);
                closed += 1;
            }
        }
        closed
    }

    /// Revokes tokens by their `jti`, each until its `exp`.
    pub fn revoke(&self, tokens: impl IntoIterator<Item = (String, u64)>) {
        let mut inner = self.write();
        inner.revoked.extend(tokens);
        Self::prune(&mut inner);
    }

    /// Remembers that `room` closed (or was deleted) at `closure.at`.
    pub fn set_closed(&self, room: &str, closure: Closure) {
        let mut inner = self.write();
        let entry = inner.closed.entry(room.to_owned()).or_insert(closure);
        entry.at = entry.at.max(closure.at);
        entry.deleted |= closure.deleted;
        Self::prune(&mut inner);
    }

    /// Whether the room was closed or deleted (and tokens from before are still refused).
    pub fn has_closure(&self, room: &str) -> bool {
        self.read().closed.contains_key(room)
    }

    /// Forgets revocations and closures no token can outlive any more.
    fn prune(inner: &mut Inner) {
        let now = now_secs();
        inner.revoked.retain(|_, exp| *exp + LEEWAY_SECS >= now);
        inner.closed.retain(|_, c| c.until() >= now);
    }

    /// Tells the identity's sessions that their grants may have changed.
    fn notify(inner: &Inner, room: &str, identity: &str) {
        if let Some(sessions) = inner.sessions.get(&(room.to_owned(), identity.to_owned())) {
            for s in sessions.values() {
                s.changed.send_modify(|v| *v += 1);
            }
        }
    }

    /// The tokens of `room`'s sessions issued at or after `at` (seconds), as (jti, expiry):
    /// those a closure at `at` does not refuse by their issue time.
    pub fn tokens_from(&self, room: &str, at: u64) -> Vec<(String, u64)> {
        Self::issued_from(&self.read(), room, at)
    }

    /// The sessions in `room`.
    fn sessions_in<'a>(inner: &'a Inner, room: &'a str) -> impl Iterator<Item = &'a SessionEntry> {
        inner
            .sessions
            .iter()
            .filter(move |((r, _), _)| r == room)
            .flat_map(|(_, s)| s.values())
    }

    /// [`Access::tokens_from`], under a lock already held.
    fn issued_from(inner: &Inner, room: &str, at: u64) -> Vec<(String, u64)> {
        Self::sessions_in(inner, room)
            .filter(|s| s.iat >= at)
            .map(|s| (s.jti.clone(), s.exp))
            .collect()
    }

    /// Closes every session in `room`, refuses the tokens issued before the closure, those in
    /// `revoked` and those of the sessions it closes issued in the closure's own second (the
    /// issue time cannot tell them from a later join's), and forgets the room's overrides and
    /// mutes. The revocations come first, under one lock: no token of them is admitted after.
    /// Returns the same-second tokens of sessions not in `revoked` (one that came in since
    /// `revoked` was read), for the store and the other nodes.
    pub fn close_room(
        &self,
        room: &str,
        reason: &str,
        closure: Closure,
        revoked: &[(String, u64)],
    ) -> Vec<(String, u64)> {
        tracing::info!(room, reason, "closing every session in room");
        self.set_closed(room, closure);
        let mut inner = self.write();
        inner.revoked.extend(revoked.iter().cloned());
        let mut same_second = match closure.deleted {
            true => Vec::new(),
            false => Self::issued_from(&inner, room, closure.at),
        };
        for s in Self::sessions_in(&inner, room) {
            s.transport.close(super::close_code::NO_ERROR, reason);
        }
        same_second.retain(|t| !revoked.contains(t));
        inner.revoked.extend(same_second.iter().cloned());
        Self::prune(&mut inner);
        inner.overrides.retain(|(r, _), _| r != room);
        inner.muted.retain(|(r, _, _)| r != room);
        same_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[derive(Default)]
    struct Transport(AtomicBool);

    impl Closable for Transport {
        fn close(&self, _code: u32, _reason: &str) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_closure_refuses_a_token_issued_in_its_own_second() {
        let access = Access::default();
        let claims = Claims::new("bob", "r", Grants::new(), Duration::from_secs(60));
        let transport = Arc::new(Transport::default());
        access.register(1, &claims, transport.clone(), 4).unwrap();
        // Closed in the second the token was issued: `iat < at` does not hold.
        let closure = Closure {
            at: claims.iat,
            deleted: false,
        };
        let late = access.close_room("r", "room_closed: test", closure, &[]);
        assert_eq!(late, [(claims.jti.clone(), claims.exp)]);
        assert!(
            transport.0.load(Ordering::SeqCst),
            "the session was not closed"
        );
        assert_eq!(access.admit(&claims), Err(Denied::Revoked));
        // A token issued after it is admitted (the room can be joined again).
        let mut later = Claims::new("bob", "r", Grants::new(), Duration::from_secs(60));
        later.iat = claims.iat;
        assert_eq!(access.admit(&later), Ok(()));
    }
}
