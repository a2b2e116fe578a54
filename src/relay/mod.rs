//! MoQ sessions: authentication, then every request checked and routed through the core.
//!
//! The relay uses `moq-transport` for the control plane (SETUP, SUBSCRIBE, PUBLISH_NAMESPACE,
//! SUBSCRIBE_NAMESPACE and their responses) and for reading publishers' objects. Objects go
//! out through roomcast's own data plane ([`downstream`]): one [`crate::core::track`] cursor
//! per subscriber writing subgroup streams, so a slow subscriber skips whole groups instead
//! of queueing them (the crate's own forwarder has no such policy).

pub mod access;
mod datagrams;
mod discover;
mod downstream;
mod egress;
mod fetch;
mod publish;
pub mod remote;
mod session;
mod upstream;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use moq_transport::session::Subscriber;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenIssuer;
use crate::config::Limits;
use crate::core::budget::Budget;
use crate::core::registry::Registry;
use crate::metrics::Metrics;
use crate::transport::Incoming;

/// Session close codes (MoQT session termination codes, draft-18 §15.10.1).
pub mod close_code {
    /// Normal close, e.g. relay shutdown.
    pub const NO_ERROR: u32 = 0x0;
    /// Internal error.
    pub const INTERNAL: u32 = 0x1;
    /// Authentication failed or the token expired.
    pub const UNAUTHORIZED: u32 = 0x2;
    /// Too many sessions.
    pub const TOO_MANY: u32 = 0x7;
    /// The session outlived the GOAWAY's timeout.
    pub const GOAWAY_TIMEOUT: u32 = 0x10;
}

/// MoQT REQUEST_ERROR codes the relay sends.
pub mod request_code {
    pub const INTERNAL: u64 = 0x0;
    pub const UNAUTHORIZED: u64 = 0x1;
    pub const TIMEOUT: u64 = 0x2;
    pub const NOT_SUPPORTED: u64 = 0x3;
    pub const EXCESSIVE_LOAD: u64 = 0x9;
    pub const DOES_NOT_EXIST: u64 = 0x10;
    pub const INVALID_RANGE: u64 = 0x11;
    pub const MALFORMED: u64 = 0x12;

    /// A refusal (REQUEST_ERROR) or an end (PUBLISH_DONE) with `code` and a reason phrase
    /// that starts with a machine-readable word, e.g. `forbidden_namespace: ...`.
    pub fn refusal(code: u64, reason: impl Into<String>) -> moq_transport::serve::ServeError {
        moq_transport::serve::ServeError::Refused {
            code,
            reason: reason.into(),
        }
    }
}

/// Why a request is refused: its REQUEST_ERROR code and reason phrase, and the label it is
/// counted under in `roomcast_refused_total`.
#[derive(Debug)]
pub struct Refused {
    pub code: u64,
    pub reason: String,
    pub label: &'static str,
}

/// Who publishes a namespace: a client session (through its MoQ subscriber handle), or the
/// relay itself (`None`, tracks made with [`Relay::publish_local`]).
pub type Source = Option<Upstream>;

/// A publishing session: how to subscribe to its tracks, and the budget their cache is
/// charged to.
#[derive(Clone)]
pub struct Upstream {
    pub subscriber: Subscriber,
    pub budget: Arc<Budget>,
    /// Another node of the cluster, the namespace's origin (through a peer session): never
    /// served on to other nodes, never claimed as this node's.
    pub remote: bool,
}

pub use crate::core::namespace::SERVER_PARTICIPANT;

/// Shared relay state. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Mutex<Registry<Source>>,
    access: access::Access,
    issuer: TokenIssuer,
    metrics: Metrics,
    limits: Limits,
    sessions: Arc<Semaphore>,
    /// Sessions (authenticated or still in SETUP) per client address, and the address's
    /// share of the media cache.
    per_address: Arc<Mutex<AddressMap>>,
    /// Every cached media byte, across tracks.
    cache: Arc<Budget>,
    next_session: AtomicU64,
    shutdown: CancellationToken,
    /// Cancelled when the relay starts to stop: sessions get GOAWAY, newcomers are turned away.
    draining: CancellationToken,
    /// How long sessions get after GOAWAY (its Timeout field).
    drain_for: Mutex<Duration>,
    /// Namespaces published by PUBLISH (no PUBLISH_NAMESPACE): their generation and how many
    /// PUBLISHes hold them; the last one to end unpublishes.
    publish_refs: Mutex<HashMap<Vec<String>, (u64, usize)>>,
    /// Namespace first elements open without a token (`public_prefixes`).
    public: Arc<[String]>,
    /// Sessions without a token: a quarter of `max_sessions` at most, and
    /// [`MAX_ANONYMOUS_PER_ADDRESS`] per client address, so anonymous clients can neither
    /// lock token holders out nor one host fill an open prefix.
    anonymous: crate::transport::slots::AddressSlots,
    tasks: TaskTracker,
    /// Where namespaces published on other nodes come from (cluster mode).
    remote: std::sync::OnceLock<Arc<dyn remote::RemoteOrigins>>,
    /// Verifies other nodes' credentials (cluster mode).
    peer_issuer: std::sync::OnceLock<TokenIssuer>,
    /// Told when a session enters a room.
    on_enter: std::sync::OnceLock<remote::OnEnter>,
}

/// Sessions without a token one client address may hold (each publishes at most
/// `max_namespaces_per_session` open namespaces).
pub const MAX_ANONYMOUS_PER_ADDRESS: usize = 4;

impl Relay {
    pub fn new(
        issuer: TokenIssuer,
        metrics: Metrics,
        limits: Limits,
        public: Vec<String>,
        shutdown: CancellationToken,
    ) -> Self {
        // What moq-transport itself may buffer of one publisher's stream (vendored patch).
        moq_transport::session::receive_limits::set(
            limits.max_object_bytes,
            limits.max_group_bytes,
        );
        Self {
            inner: Arc::new(Inner {
                registry: Mutex::default(),
                access: access::Access::default(),
                issuer,
                metrics,
                sessions: Arc::new(Semaphore::new(limits.max_sessions)),
                per_address: Arc::default(),
                cache: Budget::root("relay", limits.cache_bytes),
                limits,
                next_session: AtomicU64::new(1),
                shutdown,
                draining: CancellationToken::new(),
                drain_for: Mutex::new(Duration::ZERO),
                publish_refs: Mutex::default(),
                public: public.into(),
                anonymous: crate::transport::slots::AddressSlots::new(
                    (limits.max_sessions / 4).max(1),
                    MAX_ANONYMOUS_PER_ADDRESS,
                ),
                tasks: TaskTracker::new(),
                remote: std::sync::OnceLock::new(),
                peer_issuer: std::sync::OnceLock::new(),
                on_enter: std::sync::OnceLock::new(),
            }),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry<Source>> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Namespace first elements open without a token.
    pub fn public_prefixes(&self) -> Arc<[String]> {
        self.inner.public.clone()
    }

    /// A place for a session without a token from `ip`, if one is left.
    pub(crate) fn anonymous_slot(&self, ip: IpAddr) -> Option<crate::transport::slots::Slot> {
        self.inner.anonymous.take(ip)
    }

    /// Live access control (moderation without reconnecting).
    pub fn access(&self) -> &access::Access {
        &self.inner.access
    }

    /// Takes `identity` out of `room` on this relay, its tokens (`revoked`) already revoked in
    /// the store: the tokens are revoked live and its sessions lose their grants at once; they
    /// close with `reason` after [`access::REMOVAL_GRACE`], so the event that told the room (and
    /// them) reaches them first. Returns the tokens of its sessions (some may not be among
    /// `revoked`: a session that registered meanwhile).
    pub fn remove_identity(
        &self,
        room: &str,
        identity: &str,
        revoked: Vec<(String, u64)>,
        reason: &str,
    ) -> Vec<(String, u64)> {
        self.access().revoke(revoked);
        let sessions = self.access().revoke_sessions(room, identity);
        let (relay, room, identity, reason) = (
            self.clone(),
            room.to_owned(),
            identity.to_owned(),
            reason.to_owned(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(access::REMOVAL_GRACE).await;
            relay.access().close_sessions(&room, &identity, &reason);
        });
        sessions
    }

    /// Whether `scope` may do `action` on `namespace` with the grants its identity has now
    /// (checked on every request, and again when a moderator changes them).
    pub fn allows(
        &self,
        scope: &crate::auth::Scope,
        action: crate::auth::Action,
        namespace: &[String],
    ) -> Result<(), crate::auth::AuthError> {
        scope.check(&self.access().grants(&scope.claims), action, namespace)
    }

    /// The (namespace, track) a SUBSCRIBE, FETCH or TRACK_STATUS asks to read, if the names
    /// are UTF-8, the session is still admitted to its room and its grants allow reading the
    /// namespace; else the refusal to answer with.
    pub(crate) fn readable_track(
        &self,
        scope: &crate::auth::Scope,
        namespace: &moq_transport::coding::TrackNamespace,
        track: &moq_transport::coding::TrackName,
    ) -> Result<crate::core::registry::FullName, Refused> {
        let (Some(ns), Ok(track)) = (
            upstream::namespace_strings(namespace),
            String::from_utf8(track.as_bytes().to_vec()),
        ) else {
            return Err(Refused {
                code: request_code::MALFORMED,
                reason: "malformed_name: namespace or track name is not UTF-8".into(),
                label: "malformed_name",
            });
        };
        // A node reads only what this node's own sessions publish: never a namespace it reads
        // from another node (no loops, no chains).
        if scope.peer && self.is_remote(&ns) {
            return Err(Refused {
                code: request_code::DOES_NOT_EXIST,
                reason: format!(
                    "does_not_exist: {} is not published on this node",
                    crate::core::namespace::path_of(&ns)
                ),
                label: "not_origin",
            });
        }
        if scope.peer {
            return Ok((ns, track));
        }
        if let Err(denied) = self.access().admit(&scope.claims) {
            return Err(Refused {
                code: request_code::UNAUTHORIZED,
                reason: denied.reason().into(),
                label: denied.code(),
            });
        }
        if let Err(e) = self.allows(scope, crate::auth::Action::Subscribe, &ns) {
            return Err(Refused {
                code: request_code::UNAUTHORIZED,
                reason: e.reason(),
                label: e.code(),
            });
        }
        Ok((ns, track))
    }

    /// Participants publishing in `room` now.
    pub fn publishers(&self, room: &str) -> Vec<String> {
        self.registry()
            .matching(&crate::core::namespace::room_namespace(room))
            .into_iter()
            .filter_map(|ns| ns.get(2).cloned())
            .filter(|who| who != SERVER_PARTICIPANT)
            .collect()
    }

    /// Publishes a server-produced track `room/<room>/_server/<track>`; returns its producer and
    /// the publication generation (for [`Relay::unpublish_local`]).
    pub fn publish_local(
        &self,
        room: &str,
        track: &str,
    ) -> (crate::core::track::TrackProducer, u64) {
        let limits = self.inner.limits;
        let (producer, handle) =
            crate::core::track::track(limits.max_object_bytes, limits.max_group_bytes);
        let ns = crate::core::namespace::participant_namespace(room, SERVER_PARTICIPANT);
        let generation = self.registry().publish_local(ns, track, None, handle);
        self.refresh_gauges();
        (producer, generation)
    }

    pub fn unpublish_local(&self, room: &str, generation: u64) {
        let ns = crate::core::namespace::participant_namespace(room, SERVER_PARTICIPANT);
        self.registry().unpublish(&ns, generation);
        self.refresh_gauges();
    }

    /// Publishes `tracks` as participant `identity`'s in `room`, produced by the relay itself
    /// (a bridged publisher); a newer publisher of the namespace replaces them, as always.
    /// Returns the producers, in the order of `tracks`, and the generation for
    /// [`Relay::unpublish_participant`].
    pub fn publish_participant(
        &self,
        room: &str,
        identity: &str,
        tracks: &[&str],
    ) -> (Vec<crate::core::track::TrackProducer>, u64) {
        let limits = self.inner.limits;
        // Charged like a publishing session's media: its own share, within the relay's.
        let budget = self
            .inner
            .cache
            .child("session", limits.session_cache_bytes);
        let (producers, handles): (Vec<_>, Vec<_>) = tracks
            .iter()
            .map(|t| {
                let budget = budget.child("track", limits.track_cache_bytes);
                let (p, h) = crate::core::track::track_in(limits.track(), Some(budget));
                (p, ((*t).to_owned(), h))
            })
            .unzip();
        let ns = crate::core::namespace::participant_namespace(room, identity);
        let generation = self.registry().publish_local_tracks(ns, handles, None);
        self.refresh_gauges();
        self.access().emit(access::RelayEvent::Published {
            room: room.to_owned(),
            identity: identity.to_owned(),
        });
        (producers, generation)
    }

    /// Ends a publication made with [`Relay::publish_participant`], if it is still current.
    pub fn unpublish_participant(&self, room: &str, identity: &str, generation: u64) {
        let ns = crate::core::namespace::participant_namespace(room, identity);
        if self.registry().unpublish(&ns, generation) {
            self.access().emit(access::RelayEvent::Unpublished {
                room: room.to_owned(),
                identity: identity.to_owned(),
            });
        }
        self.refresh_gauges();
    }

    /// The generation of whoever publishes participant `identity`'s namespace in `room` now.
    pub fn publication_generation(&self, room: &str, identity: &str) -> Option<u64> {
        let ns = crate::core::namespace::participant_namespace(room, identity);
        self.registry().generation_of(&ns)
    }

    /// A session id no other session (MoQ or bridged) has.
    pub fn next_session_id(&self) -> u64 {
        self.inner.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// The relay's limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Closes every session in `room` and refuses the tokens of `closure` and `revoked` (see
    /// [`access::Access::close_room`]).
    pub fn close_room(
        &self,
        room: &str,
        reason: &str,
        closure: access::Closure,
        revoked: &[(String, u64)],
    ) -> Vec<(String, u64)> {
        self.access().close_room(room, reason, closure, revoked)
    }

    /// The relay's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    fn refresh_gauges(&self) {
        let (rooms, tracks) = {
            let r = self.registry();
            (r.room_count(), r.track_count())
        };
        self.metrics().rooms.set(rooms as i64);
        self.metrics()
            .cache_bytes
            .set(self.inner.cache.used() as i64);
        self.metrics().tracks.set(tracks as i64);
    }

    /// Takes one of the address's session slots, if it has one left; freed on drop.
    fn address_slot(&self, ip: IpAddr) -> Option<AddressSlot> {
        let mut map = self
            .inner
            .per_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (n, budget) = map.entry(ip).or_insert_with(|| {
            (
                0,
                self.inner
                    .cache
                    .child("address", self.inner.limits.address_cache_bytes),
            )
        });
        if *n >= self.inner.limits.max_sessions_per_address {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            map: self.inner.per_address.clone(),
            ip,
            budget: budget.clone(),
        })
    }

    /// Starts a graceful stop: every session gets GOAWAY (reconnect, to the same URI, within
    /// `within`), new sessions are turned away; resolves once no session is left or `within`
    /// passed. The caller then shuts the relay down, which closes what is left with
    /// GOAWAY_TIMEOUT.
    pub async fn drain(&self, within: Duration) {
        *self
            .inner
            .drain_for
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = within;
        self.inner.draining.cancel();
        let deadline = tokio::time::Instant::now() + within;
        while self.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sessions running now.
    pub fn session_count(&self) -> usize {
        self.inner.limits.max_sessions - self.inner.sessions.available_permits()
    }

    /// Whether the relay is draining (told to stop: sessions get GOAWAY).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.is_cancelled()
    }

    fn draining(&self) -> Option<Duration> {
        self.inner.draining.is_cancelled().then(|| {
            *self
                .inner
                .drain_for
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        })
    }

    /// Runs sessions from `incoming` until shutdown, then waits for them to close.
    pub async fn run(self, mut incoming: mpsc::Receiver<Incoming>) {
        loop {
            let next = tokio::select! {
                next = incoming.recv() => next,
                _ = self.inner.shutdown.cancelled() => None,
            };
            let Some(conn) = next else { break };
            if self.inner.draining.is_cancelled() {
                self.metrics().refused("going_away");
                conn.transport.close(
                    close_code::NO_ERROR,
                    "going_away: the relay is stopping; reconnect shortly",
                );
                continue;
            }
            let Some(slot) = self.address_slot(crate::transport::client_key(conn.remote.ip()))
            else {
                tracing::info!(remote = %conn.remote, "session limit per address reached");
                self.metrics().refused("too_many_sessions_from_address");
                conn.transport.close(
                    close_code::TOO_MANY,
                    "too_many_sessions: too many sessions from this address",
                );
                continue;
            };
            match self.inner.sessions.clone().try_acquire_owned() {
                Ok(permit) => {
                    let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
                    let relay = self.clone();
                    self.inner.tasks.spawn(async move {
                        session::run(relay, conn, id, &slot.budget).await;
                        drop((permit, slot));
                    });
                }
                Err(_) => {
                    tracing::warn!(remote = %conn.remote, "session limit reached");
                    self.metrics().refused("too_many_sessions");
                    conn.transport
                        .close(close_code::TOO_MANY, "too_many_sessions: relay is full");
                }
            }
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

/// Per client address: its sessions, and its share of the media cache.
type AddressMap = HashMap<IpAddr, (usize, Arc<Budget>)>;

/// A session's share of its address's allowance.
struct AddressSlot {
    map: Arc<Mutex<AddressMap>>,
    ip: IpAddr,
    budget: Arc<Budget>,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, _)) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}
