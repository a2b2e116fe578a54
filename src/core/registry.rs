//! Who publishes which namespace, and which tracks are being relayed.
//!
//! Generic over the publisher handle `S` (in the relay, the publishing session's MoQ
//! subscriber handle), so it is tested without sessions. Callers hold it behind a mutex and
//! never across an await.

use std::collections::{BTreeSet, HashMap};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::namespace::{has_prefix, participant_namespace, room_of, SERVER_PARTICIPANT};
use super::track::TrackHandle;

/// Changes pushed to SUBSCRIBE_NAMESPACE subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceChange {
    Added(Vec<String>),
    Removed(Vec<String>),
}

/// Bound on queued namespace changes per listener; a lagging listener resynchronises.
pub const CHANGE_QUEUE: usize = 1024;

/// A (namespace, track name) pair.
pub type FullName = (Vec<String>, String);

#[derive(Debug)]
struct Publication<S> {
    source: S,
    /// Distinguishes successive publishers of the same namespace.
    generation: u64,
    /// Cancelled when the publication ends; every track relayed from it stops.
    ended: CancellationToken,
}

#[derive(Debug)]
struct Relayed {
    handle: TrackHandle,
    /// Generation of the publication the track comes from.
    generation: u64,
    subscribers: usize,
    /// Produced locally (by the server): kept while its publication lasts.
    pinned: bool,
}

/// The relay's routing table.
#[derive(Debug)]
pub struct Registry<S> {
    namespaces: HashMap<Vec<String>, Publication<S>>,
    /// The published namespaces of each room, kept as they change: discovery and the room
    /// gauges read one room's entries instead of scanning (and sorting) every namespace.
    by_room: HashMap<String, BTreeSet<Vec<String>>>,
    /// Namespaces published outside rooms (the open prefixes), by first element.
    open: HashMap<String, BTreeSet<Vec<String>>>,
    tracks: HashMap<FullName, Relayed>,
    /// Tracks whose upstream subscription is being set up, by the generation of the
    /// publication asked; others wait (on the receiver, woken when the entry goes) rather than
    /// subscribe upstream a second time (the publisher would refuse a duplicate). An entry for
    /// a replaced publication does not hold anyone back.
    pending: HashMap<FullName, (u64, watch::Sender<()>)>,
    changes: broadcast::Sender<NamespaceChange>,
    next_generation: u64,
}

impl<S: Clone> Default for Registry<S> {
    fn default() -> Self {
        Self {
            namespaces: HashMap::new(),
            by_room: HashMap::new(),
            open: HashMap::new(),
            tracks: HashMap::new(),
            pending: HashMap::new(),
            changes: broadcast::channel(CHANGE_QUEUE).0,
            next_generation: 1,
        }
    }
}

/// Result of [`Registry::acquire_track`].
#[derive(Debug)]
pub enum Acquire<S> {
    /// The track is already relayed: read from this handle.
    Existing(TrackHandle),
    /// Not relayed yet: subscribe upstream through `source`, then call
    /// [`Registry::insert_track`] with `generation`.
    Subscribe {
        source: S,
        generation: u64,
        ended: CancellationToken,
    },
    /// No one publishes this namespace.
    NoPublisher,
    /// Another subscriber is setting the track up: try again once this receiver's sender is
    /// gone (`changed()` returns an error).
    Pending(watch::Receiver<()>),
}

/// Result of [`Registry::forget_unused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    /// It had no subscribers and is forgotten: end its upstream.
    Forgotten,
    /// Subscribers came back: keep it.
    InUse,
    /// The registry does not hold this track (replaced, or never cached): its own readers
    /// decide.
    NotCached,
}

/// Refusal of [`Registry::try_publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The room (or open prefix) holds `max_per_room` namespaces already, or the participant
    /// `max_per_identity`.
    Full,
    /// Another publication holds this namespace outside the rooms: nobody owns an open
    /// namespace, so a newer session may not take it over.
    Taken,
}

impl<S: Clone> Registry<S> {
    /// [`Registry::publish`], unless it would be a new namespace in a room (or under an open
    /// prefix) that already has `max_per_room`, or under a participant
    /// (`room/<room>/<identity>/...`) that already has `max_per_identity`, so a few
    /// participants cannot take a room's every place. Replacing a publisher of the same room
    /// namespace is allowed (it is the same identity, reconnecting); replacing one of an open
    /// namespace is not.
    pub fn try_publish(
        &mut self,
        namespace: Vec<String>,
        source: S,
        max_per_room: usize,
        max_per_identity: usize,
    ) -> Result<(u64, Option<S>), Refusal> {
        let exists = self.namespaces.contains_key(&namespace);
        if exists && room_of(&namespace).is_none() {
            return Err(Refusal::Taken);
        }
        if !exists
            && (self
                .namespaces_in(&namespace)
                .is_some_and(|n| n >= max_per_room)
                || self.namespaces_of_participant(&namespace) >= max_per_identity)
        {
            return Err(Refusal::Full);
        }
        Ok(self.publish(namespace, source))
    }

    /// Namespaces published under the participant `namespace` belongs to (its first three
    /// elements): one ordered range of the room's set.
    fn namespaces_of_participant(&self, namespace: &[String]) -> usize {
        let (Some(room), Some(owner)) = (room_of(namespace), namespace.get(..3)) else {
            return 0;
        };
        self.by_room.get(room).map_or(0, |set| {
            set.range(owner.to_vec()..)
                .take_while(|ns| has_prefix(ns, owner))
                .count()
        })
    }

    /// Namespaces participants publish in the room of `namespace` (the relay's own
    /// `_server` is not counted), or under its first element outside the rooms.
    fn namespaces_in(&self, namespace: &[String]) -> Option<usize> {
        let Some(room) = room_of(namespace) else {
            return Some(self.open.get(namespace.first()?).map_or(0, BTreeSet::len));
        };
        let set = self.by_room.get(room)?;
        let own = set.contains(&participant_namespace(room, SERVER_PARTICIPANT));
        Some(set.len() - usize::from(own))
    }

    /// Registers `source` as the publisher of `namespace`, replacing any previous one (a
    /// reconnecting participant wins over its stale session). Returns the new generation and
    /// the replaced source.
    pub fn publish(&mut self, namespace: Vec<String>, source: S) -> (u64, Option<S>) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let old = self.namespaces.insert(
            namespace.clone(),
            Publication {
                source,
                generation,
                ended: CancellationToken::new(),
            },
        );
        if let Some(old) = &old {
            old.ended.cancel();
            self.drop_tracks_of(&namespace);
        } else {
            if let Some(room) = room_of(&namespace) {
                self.by_room
                    .entry(room.to_owned())
                    .or_default()
                    .insert(namespace.clone());
            } else if let Some(first) = namespace.first() {
                self.open
                    .entry(first.clone())
                    .or_default()
                    .insert(namespace.clone());
            }
            let _ = self.changes.send(NamespaceChange::Added(namespace));
        }
        (generation, old.map(|p| p.source))
    }

    /// Removes `namespace` if it is still held by `generation`. Its relayed tracks are
    /// forgotten (their upstream ends with the publisher).
    pub fn unpublish(&mut self, namespace: &[String], generation: u64) -> bool {
        match self.namespaces.get(namespace) {
            Some(p) if p.generation == generation => {
                p.ended.cancel();
                self.namespaces.remove(namespace);
                if let Some(room) = room_of(namespace) {
                    if let Some(set) = self.by_room.get_mut(room) {
                        set.remove(namespace);
                        if set.is_empty() {
                            self.by_room.remove(room);
                        }
                    }
                } else if let Some(first) = namespace.first() {
                    if let Some(set) = self.open.get_mut(first) {
                        set.remove(namespace);
                        if set.is_empty() {
                            self.open.remove(first);
                        }
                    }
                }
                self.drop_tracks_of(namespace);
                let _ = self
                    .changes
                    .send(NamespaceChange::Removed(namespace.to_vec()));
                true
            }
            _ => false,
        }
    }

    fn drop_tracks_of(&mut self, namespace: &[String]) {
        self.tracks.retain(|(ns, _), _| ns.as_slice() != namespace);
    }

    /// Tracks relayed (or pending) from `namespace`.
    pub fn tracks_in(&self, namespace: &[String]) -> usize {
        self.tracks
            .keys()
            .filter(|(ns, _)| ns.as_slice() == namespace)
            .count()
    }

    /// Published namespaces whose source `keep` accepts, with their generations.
    pub fn publications_where(&self, keep: impl Fn(&S) -> bool) -> Vec<(Vec<String>, u64)> {
        self.namespaces
            .iter()
            .filter(|(_, p)| keep(&p.source))
            .map(|(ns, p)| (ns.clone(), p.generation))
            .collect()
    }

    /// The generation of `namespace`'s current publication.
    pub fn generation_of(&self, namespace: &[String]) -> Option<u64> {
        self.namespaces.get(namespace).map(|p| p.generation)
    }

    /// Published namespaces under `prefix`, sorted. A prefix within one room reads only that
    /// room's namespaces.
    pub fn matching(&self, prefix: &[String]) -> Vec<Vec<String>> {
        if let Some(room) = room_of(prefix) {
            return self.by_room.get(room).map_or_else(Vec::new, |set| {
                set.iter()
                    .filter(|ns| has_prefix(ns, prefix))
                    .cloned()
                    .collect()
            });
        }
        // Outside the rooms namespaces exist only under open prefixes, indexed by their
        // first element (a prefix that names none matches nothing).
        let Some(set) = prefix.first().and_then(|first| self.open.get(first)) else {
            return Vec::new();
        };
        set.iter()
            .filter(|ns| has_prefix(ns, prefix))
            .cloned()
            .collect()
    }

    /// A feed of namespace changes.
    pub fn changes(&self) -> broadcast::Receiver<NamespaceChange> {
        self.changes.subscribe()
    }

    /// Takes a subscriber reference on a track, or says how to start relaying it.
    pub fn acquire_track(&mut self, name: &FullName) -> Acquire<S> {
        let Some(publication) = self.namespaces.get(&name.0) else {
            return Acquire::NoPublisher;
        };
        match self.tracks.get_mut(name) {
            Some(t) if t.generation == publication.generation && !t.handle.is_closed() => {
                t.subscribers += 1;
                Acquire::Existing(t.handle.clone())
            }
            _ => match self.pending.get(name) {
                Some((generation, tx)) if *generation == publication.generation => {
                    Acquire::Pending(tx.subscribe())
                }
                _ => {
                    self.pending
                        .insert(name.clone(), (publication.generation, watch::channel(()).0));
                    Acquire::Subscribe {
                        source: publication.source.clone(),
                        generation: publication.generation,
                        ended: publication.ended.clone(),
                    }
                }
            },
        }
    }

    /// Who publishes `name`'s namespace, and the track's cache if the relay holds one from
    /// that publication, without taking a reference (a FETCH reads it once). `None`: nobody
    /// publishes the namespace.
    pub fn find_track(&self, name: &FullName) -> Option<(Option<TrackHandle>, S)> {
        let publication = self.namespaces.get(&name.0)?;
        let cached = self
            .tracks
            .get(name)
            .filter(|t| t.generation == publication.generation)
            .map(|t| t.handle.clone());
        Some((cached, publication.source.clone()))
    }

    /// The generation and source of `namespace`'s publication, if published.
    pub fn publication(&self, namespace: &[String]) -> Option<(u64, S)> {
        self.namespaces
            .get(namespace)
            .map(|p| (p.generation, p.source.clone()))
    }

    /// Caches a track its publisher pushes (PUBLISH) under publication `generation`:
    /// subscribers get `handle` directly, as for the relay's own tracks. False if that
    /// publication is gone (replaced or ended).
    pub fn pin_track(&mut self, name: FullName, generation: u64, handle: TrackHandle) -> bool {
        if self.namespaces.get(&name.0).map(|p| p.generation) != Some(generation) {
            return false;
        }
        self.tracks.insert(
            name,
            Relayed {
                handle,
                generation,
                subscribers: 0,
                pinned: true,
            },
        );
        true
    }

    /// Forgets a track cached by [`Registry::pin_track`], if `handle` is still the one cached.
    pub fn unpin_track(&mut self, name: &FullName, handle: &TrackHandle) {
        if self.tracks.get(name).is_some_and(|t| t.handle.same(handle)) {
            self.tracks.remove(name);
        }
    }

    /// Records a newly relayed track with one subscriber. If another subscriber raced and
    /// inserted it first, that one is returned and `handle` should be dropped.
    pub fn insert_track(
        &mut self,
        name: FullName,
        generation: u64,
        handle: TrackHandle,
    ) -> Result<TrackHandle, TrackHandle> {
        self.abort_pending(&name, generation);
        if self.namespaces.get(&name.0).map(|p| p.generation) != Some(generation) {
            // The publisher left while we subscribed: serve what we got, do not cache.
            return Ok(handle);
        }
        match self.tracks.get_mut(&name) {
            Some(t) if t.generation == generation && !t.handle.is_closed() => {
                t.subscribers += 1;
                Err(t.handle.clone())
            }
            _ => {
                self.tracks.insert(
                    name,
                    Relayed {
                        handle: handle.clone(),
                        generation,
                        subscribers: 1,
                        pinned: false,
                    },
                );
                Ok(handle)
            }
        }
    }

    /// Publishes a track the server itself produces under `namespace`: subscribers get
    /// `handle` directly. Returns the publication's generation for [`Registry::unpublish`].
    pub fn publish_local(
        &mut self,
        namespace: Vec<String>,
        track: &str,
        source: S,
        handle: TrackHandle,
    ) -> u64 {
        self.publish_local_tracks(namespace, vec![(track.to_owned(), handle)], source)
    }

    /// Publishes tracks the relay itself produces (the room's events, a WHIP publisher's
    /// bridged tracks) under `namespace`, all under one generation; subscribers get the
    /// handles directly.
    pub fn publish_local_tracks(
        &mut self,
        namespace: Vec<String>,
        tracks: Vec<(String, TrackHandle)>,
        source: S,
    ) -> u64 {
        let (generation, _) = self.publish(namespace.clone(), source);
        for (name, handle) in tracks {
            self.pin_track((namespace.clone(), name), generation, handle);
        }
        generation
    }

    /// Clears the pending mark `generation` set (after a failed or abandoned upstream
    /// subscription), waking those waiting on it; a newer publication's mark stays.
    pub fn abort_pending(&mut self, name: &FullName, generation: u64) {
        if self
            .pending
            .get(name)
            .is_some_and(|(g, _)| *g == generation)
        {
            self.pending.remove(name);
        }
    }

    /// Drops a subscriber reference. The track stays cached with no subscribers while its
    /// upstream subscription lingers, so a subscriber that comes back at once reuses it (the
    /// publisher would refuse a second SUBSCRIBE to the same track); [`Registry::forget_unused`]
    /// ends that.
    pub fn release_track(&mut self, name: &FullName, handle: &TrackHandle) {
        if let Some(t) = self.tracks.get_mut(name) {
            if t.handle.same(handle) {
                t.subscribers = t.subscribers.saturating_sub(1);
            }
        }
    }

    /// Forgets a relayed track whose upstream is about to end, unless someone subscribed to it
    /// meanwhile. Decided under the registry's lock, so nobody can acquire a track that is
    /// being dropped.
    pub fn forget_unused(&mut self, name: &FullName, handle: &TrackHandle) -> Cached {
        match self.tracks.get(name) {
            Some(t) if t.handle.same(handle) && (t.subscribers > 0 || t.pinned) => Cached::InUse,
            Some(t) if t.handle.same(handle) => {
                self.tracks.remove(name);
                Cached::Forgotten
            }
            _ => Cached::NotCached,
        }
    }

    /// Number of relayed tracks.
    pub fn track_count(&self) -> usize {
        self.tracks.len()
    }

    /// Number of rooms with at least one published namespace.
    pub fn room_count(&self) -> usize {
        self.by_room.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::namespace::{participant_namespace, room_namespace};
    use crate::core::track::track;

    fn name(p: &str, t: &str) -> FullName {
        (participant_namespace("r", p), t.to_owned())
    }

    #[test]
    fn publish_lookup_and_unpublish() {
        let mut reg = Registry::<&str>::default();
        let mut changes = reg.changes();
        let (g1, old) = reg.publish(participant_namespace("r", "alice"), "s1");
        assert!(old.is_none());
        reg.publish(participant_namespace("r2", "bob"), "s2");
        assert_eq!(
            reg.matching(&room_namespace("r")),
            vec![participant_namespace("r", "alice")]
        );
        assert_eq!(reg.room_count(), 2);
        assert!(matches!(
            reg.acquire_track(&name("alice", "video")),
            Acquire::Subscribe { source: "s1", .. }
        ));
        assert!(matches!(
            reg.acquire_track(&name("carol", "video")),
            Acquire::NoPublisher
        ));
        assert!(!reg.unpublish(&participant_namespace("r", "alice"), g1 + 100));
        assert!(reg.unpublish(&participant_namespace("r", "alice"), g1));
        assert_eq!(
            changes.try_recv().unwrap(),
            NamespaceChange::Added(participant_namespace("r", "alice"))
        );
        changes.try_recv().unwrap();
        assert_eq!(
            changes.try_recv().unwrap(),
            NamespaceChange::Removed(participant_namespace("r", "alice"))
        );
    }

    #[test]
    fn a_room_holds_a_bounded_number_of_namespaces() {
        let mut reg = Registry::<&str>::default();
        let ns = |p: &str| participant_namespace("r", p);
        reg.try_publish(ns("a"), "s", 2, 9).unwrap();
        let (gb, _) = reg.try_publish(ns("b"), "s", 2, 9).unwrap();
        assert_eq!(reg.try_publish(ns("c"), "s", 2, 9), Err(Refusal::Full));
        // Another room, and a newer publisher of a namespace already there, still get in.
        reg.try_publish(participant_namespace("r2", "c"), "s", 2, 9)
            .unwrap();
        reg.try_publish(ns("a"), "s2", 2, 9).unwrap();
        assert_eq!(reg.room_count(), 2);
        assert!(reg.unpublish(&ns("b"), gb));
        reg.try_publish(ns("c"), "s", 2, 9).unwrap();
        assert_eq!(reg.matching(&room_namespace("r")), vec![ns("a"), ns("c")]);
        // One participant's sub-namespaces count against its own allowance; "a2" is another.
        let sub = |p: &str, s: &str| vec!["room".into(), "r3".into(), p.to_owned(), s.to_owned()];
        reg.try_publish(sub("a", "x"), "s", 9, 2).unwrap();
        reg.try_publish(sub("a", "y"), "s", 9, 2).unwrap();
        assert_eq!(
            reg.try_publish(sub("a", "z"), "s", 9, 2),
            Err(Refusal::Full)
        );
        reg.try_publish(sub("a2", "x"), "s", 9, 2).unwrap();
    }

    #[test]
    fn open_namespaces_are_capped_per_prefix_and_never_taken_over() {
        let mut reg = Registry::<&str>::default();
        let ns = |a: &str, b: &str| vec![a.to_owned(), b.to_owned()];
        let (g, _) = reg.try_publish(ns("moq-test", "a"), "s1", 2, 9).unwrap();
        assert_eq!(
            reg.try_publish(ns("moq-test", "a"), "s2", 2, 9),
            Err(Refusal::Taken)
        );
        reg.try_publish(ns("moq-test", "b"), "s2", 2, 9).unwrap();
        assert_eq!(
            reg.try_publish(ns("moq-test", "c"), "s3", 2, 9),
            Err(Refusal::Full)
        );
        // Another prefix has its own places; open namespaces are not rooms.
        reg.try_publish(ns("demo", "c"), "s3", 2, 9).unwrap();
        assert_eq!(reg.room_count(), 0);
        assert!(reg.unpublish(&ns("moq-test", "a"), g));
        reg.try_publish(ns("moq-test", "c"), "s3", 2, 9).unwrap();
        assert_eq!(
            reg.matching(&["moq-test".to_owned()]),
            vec![ns("moq-test", "b"), ns("moq-test", "c")]
        );
    }

    #[test]
    fn tracks_are_shared_and_released_with_the_last_subscriber() {
        let mut reg = Registry::<&str>::default();
        let (generation, _) = reg.publish(participant_namespace("r", "alice"), "s1");
        let n = name("alice", "video");
        let (producer, handle) = track(16, 64);
        assert!(reg
            .insert_track(n.clone(), generation, handle.clone())
            .is_ok());
        let Acquire::Existing(second) = reg.acquire_track(&n) else {
            panic!("expected the cached track");
        };
        assert!(second.same(&handle));
        reg.release_track(&n, &handle);
        assert_eq!(reg.forget_unused(&n, &handle), Cached::InUse);
        reg.release_track(&n, &handle);
        // Lingering: a subscriber coming back now shares it.
        let Acquire::Existing(again) = reg.acquire_track(&n) else {
            panic!("a lingering track is reused");
        };
        reg.release_track(&n, &again);
        assert_eq!(reg.forget_unused(&n, &handle), Cached::Forgotten);
        assert_eq!(reg.track_count(), 0);
        assert_eq!(reg.forget_unused(&n, &handle), Cached::NotCached);
        drop(producer);
    }

    #[test]
    fn only_one_subscriber_sets_a_track_up() {
        let mut reg = Registry::<&str>::default();
        let (generation, _) = reg.publish(participant_namespace("r", "alice"), "s1");
        let n = name("alice", "video");
        assert!(matches!(reg.acquire_track(&n), Acquire::Subscribe { .. }));
        let Acquire::Pending(waiting) = reg.acquire_track(&n) else {
            panic!("expected to wait");
        };
        reg.abort_pending(&n, generation + 1);
        assert!(matches!(reg.acquire_track(&n), Acquire::Pending(_)));
        reg.abort_pending(&n, generation);
        assert!(waiting.has_changed().is_err(), "the waiter is woken");
        assert!(matches!(reg.acquire_track(&n), Acquire::Subscribe { .. }));
        let (_p, h) = track(16, 64);
        reg.insert_track(n.clone(), generation, h).unwrap();
        assert!(matches!(reg.acquire_track(&n), Acquire::Existing(_)));
    }

    #[test]
    fn a_pending_subscription_to_a_replaced_publisher_holds_nobody_back() {
        let mut reg = Registry::<&str>::default();
        reg.publish(participant_namespace("r", "alice"), "old");
        let n = name("alice", "video");
        assert!(matches!(
            reg.acquire_track(&n),
            Acquire::Subscribe { source: "old", .. }
        ));
        let (g2, _) = reg.publish(participant_namespace("r", "alice"), "new");
        assert!(matches!(
            reg.acquire_track(&n),
            Acquire::Subscribe { source: "new", generation, .. } if generation == g2
        ));
    }

    #[test]
    fn a_new_publisher_replaces_the_old_and_its_tracks() {
        let mut reg = Registry::<&str>::default();
        let (g1, _) = reg.publish(participant_namespace("r", "alice"), "old");
        let (_p, h) = track(16, 64);
        reg.insert_track(name("alice", "video"), g1, h).unwrap();
        let (g2, old) = reg.publish(participant_namespace("r", "alice"), "new");
        assert_eq!(old, Some("old"));
        assert_eq!(reg.track_count(), 0);
        assert!(!reg.unpublish(&participant_namespace("r", "alice"), g1));
        assert!(matches!(
            reg.acquire_track(&name("alice", "video")),
            Acquire::Subscribe { source: "new", generation, .. } if generation == g2
        ));
    }
}
