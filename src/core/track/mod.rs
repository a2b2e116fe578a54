//! One track's fan-out buffer: the relay's cache of the current group and its readers.
//!
//! A [`TrackProducer`] appends objects as they arrive from the publisher. Every subscriber
//! holds a [`TrackCursor`], which hands out each new group once, newest first, as a
//! [`GroupReader`] that yields that group's objects in order (or its subgroups, each read in
//! its own order by a [`SubgroupReader`]); payloads are `Bytes`, so each
//! object is stored once and shared by every subscriber. The track keeps only its newest
//! [`RETAINED_GROUPS`] groups. Groups that arrived while a cursor was not looking are skipped
//! whole (counted), never yielded in part or out of order. A late subscriber starts at the first
//! object of the newest group. Memory per subscriber is one `Arc` per group it is reading,
//! each bounded by `max_group_bytes`. Every cached byte is charged to the track's
//! [`Budget`] (its publisher's share of the relay's), and given back when the last holder of
//! the group lets go; a group that goes over is aborted, the track goes on. A publisher's group
//! that breaks (its stream reset, a bad object) is aborted the same way: readers stop it at
//! once ([`GroupNext::Aborted`]), never delivering it as if whole. No sockets, no clock:
//! unit-testable as is.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::watch;

use super::budget::{Budget, Charge, Exhausted};

mod read;
pub use read::{
    GroupNext, GroupReader, NextGroup, PauseMark, SubgroupNext, SubgroupReader, TrackCursor, Window,
};

/// Groups kept for late appends and readers unless [`TrackLimits`] says otherwise; older ones
/// are closed and forgotten.
pub const RETAINED_GROUPS: usize = 2;

/// Objects one group may hold: an object's cost is counted by its bytes, so this bounds a
/// group of empty objects (the entries themselves cost memory).
pub const MAX_OBJECTS_PER_GROUP: usize = 100_000;

/// What one track may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackLimits {
    pub max_object_bytes: usize,
    pub max_group_bytes: usize,
    /// Newest groups kept (at least 1).
    pub retained_groups: usize,
}

/// Subgroups one group may hold (each is a stream from the publisher and one to every
/// subscriber).
pub const MAX_SUBGROUPS_PER_GROUP: usize = 64;

/// The subgroup a group's object datagrams are kept as; a subgroup stream with this id is
/// refused (the relay's ingest), so none can pass for datagrams.
pub const DATAGRAMS: u64 = u64::MAX;

/// One object as received: its id within the group, the subgroup it came in, and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub id: u64,
    /// The subgroup (publisher stream) it arrived in; ids increase within a subgroup.
    pub subgroup: u64,
    /// Raw extension headers, forwarded unchanged.
    pub extensions: Bytes,
    pub payload: Bytes,
}

/// Why an append was refused. The caller ends the publisher's track with this error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The object payload exceeds the per-object limit.
    #[error("object of {size} bytes exceeds the limit of {limit}")]
    ObjectTooLarge { size: usize, limit: usize },
    /// The group exceeds the per-group limit.
    #[error("group {group} exceeds {limit} bytes")]
    GroupTooLarge { group: u64, limit: usize },
    /// Object ids must increase within a subgroup.
    #[error("object {object} in group {group} does not follow object {last}")]
    OutOfOrder { group: u64, object: u64, last: u64 },
    /// Another subgroup of the group has an object with this id.
    #[error("object {object} in group {group} is already in another subgroup")]
    Duplicate { group: u64, object: u64 },
    /// The group has [`MAX_SUBGROUPS_PER_GROUP`] subgroups already.
    #[error("group {group} has {limit} subgroups already")]
    TooManySubgroups { group: u64, limit: usize },
    /// The group was already finished.
    #[error("group {group} already finished")]
    GroupFinished { group: u64 },
    /// The publisher's media budget (or its address's, or the relay's) is spent.
    #[error("group {group}: {exhausted}")]
    OverBudget { group: u64, exhausted: Exhausted },
    /// The track was closed.
    #[error("track closed")]
    Closed,
}

#[derive(Debug, Default)]
struct GroupInner {
    /// Every object, in arrival order (subgroups interleaved).
    objects: Vec<Object>,
    /// When each of `objects` arrived, if its producer said (the relay's own latency).
    arrived: Vec<Option<std::time::Instant>>,
    /// The subgroups in order of arrival, each with its objects' indices in `objects`.
    subgroups: Vec<SubgroupState>,
    bytes: usize,
    /// The objects' bytes, held against the track's budget until the group is dropped.
    charge: Option<Charge>,
    /// No object is coming now: every subgroup so far ended, or the group is sealed.
    done: bool,
    /// Evicted, aborted or its track closed: nothing more, ever (a group `done` only because
    /// its subgroups ended takes a subgroup that starts later).
    sealed: bool,
    /// Broken or over budget: readers stop it rather than deliver it in part as whole.
    aborted: bool,
}

#[derive(Debug)]
struct SubgroupState {
    id: u64,
    /// Indices of its objects in the group's `objects`.
    objects: Vec<usize>,
    done: bool,
}

impl GroupInner {
    /// Ends the group for good.
    fn seal(&mut self) {
        self.done = true;
        self.sealed = true;
    }
}

/// A group shared between the track and the cursors reading it.
#[derive(Debug)]
struct Group {
    /// Group id from the publisher.
    id: u64,
    /// Arrival order at the relay, used to count skipped groups.
    ordinal: u64,
    inner: Mutex<GroupInner>,
    /// Bumped on every change of this group: its readers wait on it, not on the whole track
    /// (an object appended to one group wakes none of the readers of another).
    changed: watch::Sender<u64>,
}

impl Group {
    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn lock(&self) -> MutexGuard<'_, GroupInner> {
        // A panic while holding this lock cannot leave the data inconsistent (pushes only).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Default)]
struct TrackInner {
    groups: VecDeque<Arc<Group>>,
    next_ordinal: u64,
    closed: bool,
    /// The largest location the publisher announced (in its SUBSCRIBE_OK), if any.
    announced: Option<(u64, u64)>,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<TrackInner>,
    /// Bumped on every change so readers can wait.
    version: watch::Sender<u64>,
    limits: TrackLimits,
    budget: Option<Arc<Budget>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, TrackInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// Writes a track. Dropping it closes the track for every reader.
#[derive(Debug)]
pub struct TrackProducer {
    shared: Arc<Shared>,
}

/// A handle that makes cursors; cheap to clone.
#[derive(Debug, Clone)]
pub struct TrackHandle {
    shared: Arc<Shared>,
}

/// Creates a track with the given size limits, [`RETAINED_GROUPS`] and no budget.
pub fn track(max_object_bytes: usize, max_group_bytes: usize) -> (TrackProducer, TrackHandle) {
    let limits = TrackLimits {
        max_object_bytes,
        max_group_bytes,
        retained_groups: RETAINED_GROUPS,
    };
    track_in(limits, None)
}

/// Creates a track whose cached bytes are charged to `budget`. When the budget is spent, the
/// oldest retained groups are let go before a new group is refused.
pub fn track_in(limits: TrackLimits, budget: Option<Arc<Budget>>) -> (TrackProducer, TrackHandle) {
    let limits = TrackLimits {
        retained_groups: limits.retained_groups.max(1),
        ..limits
    };
    let shared = Arc::new(Shared {
        inner: Mutex::default(),
        version: watch::channel(0).0,
        limits,
        budget,
    });
    (
        TrackProducer {
            shared: shared.clone(),
        },
        TrackHandle { shared },
    )
}

impl TrackProducer {
    /// Appends `object` to group `group`, opening the group if it is new.
    ///
    /// A group older than every retained group is ignored (returns `Ok(false)`): it is stale.
    pub fn append(&self, group: u64, object: Object) -> Result<bool, AppendError> {
        self.append_arrived(group, object, None)
    }

    /// [`TrackProducer::append`], noting when the object arrived (the caller's clock: the
    /// core reads none); readers hand it back with the object ([`SubgroupReader::arrived`]).
    pub fn append_arrived(
        &self,
        group: u64,
        object: Object,
        arrived: Option<std::time::Instant>,
    ) -> Result<bool, AppendError> {
        let s = &self.shared;
        if object.payload.len() > s.limits.max_object_bytes {
            return Err(AppendError::ObjectTooLarge {
                size: object.payload.len(),
                limit: s.limits.max_object_bytes,
            });
        }
        let (g, opened) = {
            let mut t = s.lock();
            if t.closed {
                return Err(AppendError::Closed);
            }
            match t.groups.iter().find(|g| g.id == group) {
                Some(g) => (g.clone(), false),
                None => {
                    if t.groups.back().is_some_and(|newest| newest.id > group) {
                        return Ok(false);
                    }
                    (Self::open(&mut t, group, s.limits.retained_groups), true)
                }
            }
        };
        {
            let mut gi = g.lock();
            if gi.sealed {
                return Err(AppendError::GroupFinished { group });
            }
            if gi.objects.len() >= MAX_OBJECTS_PER_GROUP {
                return Err(AppendError::GroupTooLarge {
                    group,
                    limit: s.limits.max_group_bytes,
                });
            }
            let sub = match gi.subgroups.iter().position(|sg| sg.id == object.subgroup) {
                Some(i) if gi.subgroups[i].done => {
                    return Err(AppendError::GroupFinished { group });
                }
                Some(i) => i,
                None if gi.subgroups.len() >= MAX_SUBGROUPS_PER_GROUP => {
                    return Err(AppendError::TooManySubgroups {
                        group,
                        limit: MAX_SUBGROUPS_PER_GROUP,
                    });
                }
                None => {
                    // A subgroup that starts after the others ended opens the group again.
                    gi.done = false;
                    gi.subgroups.push(SubgroupState {
                        id: object.subgroup,
                        objects: vec![],
                        done: false,
                    });
                    gi.subgroups.len() - 1
                }
            };
            if let Some(&last) = gi.subgroups[sub].objects.last() {
                let last = gi.objects[last].id;
                if object.id <= last {
                    return Err(AppendError::OutOfOrder {
                        group,
                        object: object.id,
                        last,
                    });
                }
            }
            // Ids are unique within a group across its subgroups (each subgroup's are sorted).
            let taken = gi.subgroups.iter().any(|sg| {
                sg.objects
                    .binary_search_by_key(&object.id, |&i| gi.objects[i].id)
                    .is_ok()
            });
            if taken {
                return Err(AppendError::Duplicate {
                    group,
                    object: object.id,
                });
            }
            let size = object.payload.len() + object.extensions.len();
            let bytes = gi.bytes + size;
            if bytes > s.limits.max_group_bytes {
                return Err(AppendError::GroupTooLarge {
                    group,
                    limit: s.limits.max_group_bytes,
                });
            }
            if let Some(budget) = &s.budget {
                // History goes before the live edge: let the oldest groups go (their bytes
                // come back once no reader holds them) and try again. The group's lock is
                // let go meanwhile: the track's lock is always taken first.
                while let Err(exhausted) =
                    gi.charge.get_or_insert_with(|| budget.charge()).add(size)
                {
                    drop(gi);
                    if !self.shed_oldest(&g) {
                        return Err(AppendError::OverBudget { group, exhausted });
                    }
                    gi = g.lock();
                    if gi.sealed {
                        return Err(AppendError::GroupFinished { group });
                    }
                }
            }
            // Another subgroup may have appended while the lock was let go.
            let bytes = gi.bytes + size;
            if bytes > s.limits.max_group_bytes {
                return Err(AppendError::GroupTooLarge {
                    group,
                    limit: s.limits.max_group_bytes,
                });
            }
            gi.bytes = bytes;
            let index = gi.objects.len();
            gi.subgroups[sub].objects.push(index);
            gi.objects.push(object);
            gi.arrived.push(arrived);
        }
        g.bump();
        // Cursors care only for new groups.
        if opened {
            s.bump();
        }
        Ok(true)
    }

    /// Opens group `group` if it is new, evicting groups past the retained ones, so the bytes
    /// of its first object, still arriving, are charged after that eviction (a session whose
    /// retained groups fill its budget still gets its next group). False for a stale group or
    /// a closed track.
    pub fn begin(&self, group: u64) -> bool {
        let mut t = self.shared.lock();
        if t.closed {
            return false;
        }
        if t.groups.iter().any(|g| g.id == group) {
            return true;
        }
        if t.groups.back().is_some_and(|newest| newest.id > group) {
            return false;
        }
        Self::open(&mut t, group, self.shared.limits.retained_groups);
        drop(t);
        self.shared.bump();
        true
    }

    /// Lets the oldest retained group go, unless it is `keep` (the group being written).
    /// False when there is nothing older to let go.
    fn shed_oldest(&self, keep: &Arc<Group>) -> bool {
        let mut t = self.shared.lock();
        if t.groups.front().is_none_or(|g| Arc::ptr_eq(g, keep)) {
            return false;
        }
        if let Some(old) = t.groups.pop_front() {
            let mut gi = old.lock();
            if !gi.done {
                // Still arriving: its readers must not take the part they have as whole.
                gi.aborted = true;
                gi.objects = Vec::new();
                gi.subgroups = Vec::new();
                gi.charge = None;
            }
            gi.seal();
            drop(gi);
            old.bump();
        }
        true
    }

    fn open(t: &mut TrackInner, id: u64, retained: usize) -> Arc<Group> {
        let g = Arc::new(Group {
            id,
            ordinal: t.next_ordinal,
            inner: Mutex::default(),
            changed: watch::channel(0).0,
        });
        t.next_ordinal += 1;
        t.groups.push_back(g.clone());
        while t.groups.len() > retained {
            if let Some(old) = t.groups.pop_front() {
                old.lock().seal();
                old.bump();
            }
        }
        g
    }

    fn find(&self, group: u64) -> Option<Arc<Group>> {
        let t = self.shared.lock();
        t.groups.iter().find(|g| g.id == group).cloned()
    }

    /// Marks group `group` complete, every subgroup of it (a producer that writes one
    /// subgroup per group). Unknown groups are ignored.
    pub fn finish_group(&self, group: u64) {
        if let Some(g) = self.find(group) {
            let mut gi = g.lock();
            for sg in &mut gi.subgroups {
                sg.done = true;
            }
            gi.done = true;
            drop(gi);
            g.bump();
            self.shared.bump();
        }
    }

    /// Marks subgroup `subgroup` of group `group` complete (its stream ended); the group is
    /// complete once every subgroup that started is. Unknown groups are ignored.
    pub fn finish_subgroup(&self, group: u64, subgroup: u64) {
        if let Some(g) = self.find(group) {
            let mut gi = g.lock();
            // A stream that ended before its first object has nothing to wait for.
            if let Some(sg) = gi.subgroups.iter_mut().find(|sg| sg.id == subgroup) {
                sg.done = true;
            }
            gi.done = gi.sealed || gi.subgroups.iter().all(|sg| sg.done);
            drop(gi);
            g.bump();
            self.shared.bump();
        }
    }

    /// Aborts group `group`: its cached objects are freed at once and every reader stops it
    /// (resets its stream) instead of delivering it. Later appends to it are refused.
    pub fn abort_group(&self, group: u64) {
        if let Some(g) = self.find(group) {
            let mut gi = g.lock();
            gi.seal();
            gi.aborted = true;
            gi.objects = Vec::new();
            gi.subgroups = Vec::new();
            gi.bytes = 0;
            gi.charge = None;
            drop(gi);
            g.bump();
            self.shared.bump();
        }
    }

    /// Records the largest location the publisher announced: [`TrackHandle::largest`] says
    /// at least that much, also before its objects arrive.
    pub fn announce_largest(&self, largest: Option<(u64, u64)>) {
        self.shared.lock().announced = largest;
    }

    /// An empty charge against the track's budget, for bytes still arriving (an object not
    /// yet complete); `None` for a track without a budget.
    pub fn charge(&self) -> Option<Charge> {
        self.shared.budget.as_ref().map(|b| b.charge())
    }

    /// Number of cursors alive.
    pub fn reader_count(&self) -> usize {
        self.shared.version.receiver_count()
    }

    /// Resolves when no cursor is alive (at once if none is).
    pub async fn no_readers(&self) {
        self.shared.version.closed().await
    }

    /// A handle for making cursors.
    pub fn handle(&self) -> TrackHandle {
        TrackHandle {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for TrackProducer {
    fn drop(&mut self) {
        let mut t = self.shared.lock();
        t.closed = true;
        for g in &t.groups {
            g.lock().seal();
            g.bump();
        }
        drop(t);
        self.shared.bump();
    }
}

impl TrackHandle {
    /// A cursor positioned before the newest group.
    pub fn cursor(&self) -> TrackCursor {
        self.cursor_in(Window::default())
    }

    /// A cursor that yields only what `window` passes. With an explicit start, the retained
    /// groups it passes come first, oldest first (an absolute start in the past gets what the
    /// relay still holds); then groups as they arrive, newest first as always.
    pub fn cursor_in(&self, window: Window) -> TrackCursor {
        let floor = {
            let t = self.shared.lock();
            match window.start {
                None => t.groups.back().map_or(t.next_ordinal, |g| g.ordinal),
                Some((group, _)) => t
                    .groups
                    .iter()
                    .find(|g| g.id >= group)
                    .map_or(t.next_ordinal, |g| g.ordinal),
            }
        };
        TrackCursor::new(self.shared.clone(), floor, window)
    }

    /// True when both handles read the same track.
    pub fn same(&self, other: &TrackHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// True once the producer is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Id of the newest group, if any.
    pub fn latest_group(&self) -> Option<u64> {
        self.shared.lock().groups.back().map(|g| g.id)
    }

    /// The cached objects from `from` to `to`, both inclusive (group, object).
    pub fn held(&self, from: (u64, u64), to: (u64, u64)) -> Held {
        let t = self.shared.lock();
        let mut complete = t.groups.front().is_some_and(|oldest| {
            oldest.id < from.0
                || (oldest.id == from.0
                    && oldest
                        .lock()
                        .objects
                        .iter()
                        .map(|o| o.id)
                        .min()
                        .is_some_and(|first| first <= from.1))
        });
        let mut groups = vec![];
        for g in t.groups.iter().filter(|g| g.id >= from.0 && g.id <= to.0) {
            let gi = g.lock();
            if gi.aborted {
                complete = false;
                continue;
            }
            let mut objects: Vec<Object> = gi
                .objects
                .iter()
                .filter(|o| (g.id, o.id) >= from && (g.id, o.id) <= to)
                .cloned()
                .collect();
            // Subgroups interleave on arrival; a FETCH answers in object order.
            objects.sort_by_key(|o| o.id);
            if !objects.is_empty() {
                groups.push((g.id, objects));
            }
        }
        Held { complete, groups }
    }

    /// The largest location the cache holds (what the publisher announced not counted).
    pub fn largest_held(&self) -> Option<(u64, u64)> {
        let t = self.shared.lock();
        t.groups.iter().rev().find_map(|g| {
            g.lock()
                .objects
                .iter()
                .map(|o| o.id)
                .max()
                .map(|o| (g.id, o))
        })
    }

    /// The largest location known: the newest group held and its last object (a group opened
    /// whose first object is still arriving counts from its predecessor), or the one the
    /// publisher announced if that is larger.
    pub fn largest(&self) -> Option<(u64, u64)> {
        let announced = self.shared.lock().announced;
        self.largest_held().max(announced)
    }
}

/// What the cache holds of a range of locations ([`TrackHandle::held`]).
#[derive(Debug, Default)]
pub struct Held {
    /// True when the cache holds every object of the range the relay knows of: its retained
    /// groups reach back to the range's start and none of them in the range broke. Groups
    /// missing in between never reached the relay.
    pub complete: bool,
    /// The range's objects, by group, in order.
    pub groups: Vec<(u64, Vec<Object>)>,
}

#[cfg(test)]
mod tests;
