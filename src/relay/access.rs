//! Live access control: bans, revoked tokens, grant overrides, muted tracks, and the sessions
//! each identity holds, so moderation takes effect without reconnecting.
//!
//! Every request a session makes asks [`Access::grants`] for the identity's current grants
//! (the token's, unless a moderator changed them). Changing them bumps a per-session watch the
//! session loop reacts to, e.g. by withdrawing its publications when publish was revoked.

use std::collections::{HashMap, HashSet};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use moq_transport::session::transport::Session as MoqTransport;
use tokio::sync::{broadcast, watch};

use crate::auth::{Claims, Grants};

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
    Published {
        room: String,
        identity: String,
    },
    Unpublished {
        room: String,
        identity: String,
    },
}

struct SessionEntry {
    transport: MoqTransport,
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Inner {
    banned: HashSet<Who>,
    revoked: HashSet<String>,
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

    /// Whether `claims` may hold a session now.
    pub fn admit(&self, claims: &Claims) -> Result<(), Denied> {
        let inner = self.read();
        if inner
            .banned
            .contains(&(claims.room.clone(), claims.sub.clone()))
        {
            return Err(Denied::Banned);
        }
        if inner.revoked.contains(&claims.jti) {
            return Err(Denied::Revoked);
        }
        Ok(())
    }

    /// The identity's grants now: a moderator's override, else the token's.
    pub fn grants(&self, claims: &Claims) -> Grants {
        self.read()
            .overrides
            .get(&(claims.room.clone(), claims.sub.clone()))
            .cloned()
            .unwrap_or_else(|| claims.grants.clone())
    }

    /// Registers a session; returns a watch that changes when its grants change.
    pub(super) fn register(
        &self,
        id: u64,
        claims: &Claims,
        transport: MoqTransport,
    ) -> watch::Receiver<u64> {
        let who = (claims.room.clone(), claims.sub.clone());
        let (tx, rx) = watch::channel(0);
        let mut inner = self.write();
        inner.sessions.entry(who).or_default().insert(
            id,
            SessionEntry {
                transport,
                changed: tx,
            },
        );
        *inner.room_sessions.entry(claims.room.clone()).or_default() += 1;
        drop(inner);
        self.emit(RelayEvent::Joined {
            room: claims.room.clone(),
            identity: claims.sub.clone(),
        });
        rx
    }

    pub(super) fn unregister(&self, id: u64, claims: &Claims) {
        let who = (claims.room.clone(), claims.sub.clone());
        let mut inner = self.write();
        if let Some(s) = inner.sessions.get_mut(&who) {
            s.remove(&id);
            if s.is_empty() {
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
        self.emit(RelayEvent::Left {
            room: claims.room.clone(),
            identity: claims.sub.clone(),
        });
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
            Some(g) => inner.overrides.insert(who.clone(), g),
            None => inner.overrides.remove(&who),
        };
        if let Some(sessions) = inner.sessions.get(&who) {
            for s in sessions.values() {
                s.changed.send_modify(|v| *v += 1);
            }
        }
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

    /// Closes every session of the identity in the room with `reason`. Returns how many.
    pub fn kick(&self, room: &str, identity: &str, reason: &str) -> usize {
        let inner = self.read();
        let Some(sessions) = inner.sessions.get(&(room.to_owned(), identity.to_owned())) else {
            return 0;
        };
        for s in sessions.values() {
            s.transport.close(super::close_code::UNAUTHORIZED, reason);
        }
        sessions.len()
    }

    /// Bans the identity from the room (and closes its sessions).
    pub fn ban(&self, room: &str, identity: &str) {
        self.write()
            .banned
            .insert((room.to_owned(), identity.to_owned()));
        self.kick(room, identity, "banned: banned from the room");
    }

    pub fn unban(&self, room: &str, identity: &str) {
        self.write()
            .banned
            .remove(&(room.to_owned(), identity.to_owned()));
    }

    /// Revokes one token by its `jti`.
    pub fn revoke(&self, jti: &str) {
        self.write().revoked.insert(jti.to_owned());
    }

    /// Closes every session in `room` and forgets its overrides and mutes.
    pub fn close_room(&self, room: &str, reason: &str) {
        tracing::info!(room, reason, "closing every session in room");
        let mut inner = self.write();
        for ((r, _), sessions) in inner.sessions.iter() {
            if r == room {
                for s in sessions.values() {
                    s.transport.close(super::close_code::NO_ERROR, reason);
                }
            }
        }
        inner.overrides.retain(|(r, _), _| r != room);
        inner.muted.retain(|(r, _, _)| r != room);
    }
}
