//! One track's fan-out buffer: the relay's cache of the current group and its readers.
//!
//! A [`TrackProducer`] appends objects as they arrive from the publisher. Every subscriber
//! holds a [`TrackCursor`] and pulls with [`TrackCursor::step`]; payloads are `Bytes`, so each
//! object is stored once and shared by every subscriber. The track keeps only its newest
//! [`RETAINED_GROUPS`] groups. A cursor that finishes a group moves to the newest one, so a
//! subscriber that fell behind skips whole groups (counted in [`Next::Object::skipped`]) and
//! never receives part of a group out of order. A late subscriber starts at the first object
//! of the newest group. Memory per subscriber is one `Arc` to a group, bounded by
//! `max_group_bytes`. No sockets, no clock: unit-testable as is.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::watch;

/// Groups kept for late appends and readers; older ones are closed and forgotten.
pub const RETAINED_GROUPS: usize = 2;

/// One object as received: its id within the group and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub id: u64,
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
    /// Object ids must increase within a group.
    #[error("object {object} in group {group} does not follow object {last}")]
    OutOfOrder { group: u64, object: u64, last: u64 },
    /// The group was already finished.
    #[error("group {group} already finished")]
    GroupFinished { group: u64 },
    /// The track was closed.
    #[error("track closed")]
    Closed,
}

#[derive(Debug, Default)]
struct GroupInner {
    objects: Vec<Object>,
    bytes: usize,
    done: bool,
}

/// A group shared between the track and the cursors reading it.
#[derive(Debug)]
struct Group {
    /// Group id from the publisher.
    id: u64,
    /// Arrival order at the relay, used to count skipped groups.
    ordinal: u64,
    inner: Mutex<GroupInner>,
}

impl Group {
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
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<TrackInner>,
    /// Bumped on every change so readers can wait.
    version: watch::Sender<u64>,
    max_object_bytes: usize,
    max_group_bytes: usize,
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

/// Creates a track with the given size limits.
pub fn track(max_object_bytes: usize, max_group_bytes: usize) -> (TrackProducer, TrackHandle) {
    let shared = Arc::new(Shared {
        inner: Mutex::default(),
        version: watch::channel(0).0,
        max_object_bytes,
        max_group_bytes,
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
        let s = &self.shared;
        if object.payload.len() > s.max_object_bytes {
            return Err(AppendError::ObjectTooLarge {
                size: object.payload.len(),
                limit: s.max_object_bytes,
            });
        }
        let g = {
            let mut t = s.lock();
            if t.closed {
                return Err(AppendError::Closed);
            }
            match t.groups.iter().find(|g| g.id == group) {
                Some(g) => g.clone(),
                None => {
                    if t.groups.back().is_some_and(|newest| newest.id > group) {
                        return Ok(false);
                    }
                    Self::open(&mut t, group)
                }
            }
        };
        {
            let mut gi = g.lock();
            if gi.done {
                return Err(AppendError::GroupFinished { group });
            }
            if let Some(last) = gi.objects.last() {
                if object.id <= last.id {
                    return Err(AppendError::OutOfOrder {
                        group,
                        object: object.id,
                        last: last.id,
                    });
                }
            }
            let bytes = gi.bytes + object.payload.len() + object.extensions.len();
            if bytes > s.max_group_bytes {
                return Err(AppendError::GroupTooLarge {
                    group,
                    limit: s.max_group_bytes,
                });
            }
            gi.bytes = bytes;
            gi.objects.push(object);
        }
        s.bump();
        Ok(true)
    }

    fn open(t: &mut TrackInner, id: u64) -> Arc<Group> {
        let g = Arc::new(Group {
            id,
            ordinal: t.next_ordinal,
            inner: Mutex::default(),
        });
        t.next_ordinal += 1;
        t.groups.push_back(g.clone());
        while t.groups.len() > RETAINED_GROUPS {
            if let Some(old) = t.groups.pop_front() {
                old.lock().done = true;
            }
        }
        g
    }

    /// Marks group `group` complete (its stream ended). Unknown groups are ignored.
    pub fn finish_group(&self, group: u64) {
        let g = self
            .shared
            .lock()
            .groups
            .iter()
            .find(|g| g.id == group)
            .cloned();
        if let Some(g) = g {
            g.lock().done = true;
            self.shared.bump();
        }
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
            g.lock().done = true;
        }
        drop(t);
        self.shared.bump();
    }
}

impl TrackHandle {
    /// A cursor positioned before the newest group.
    pub fn cursor(&self) -> TrackCursor {
        let start = {
            let t = self.shared.lock();
            t.groups.back().map_or(t.next_ordinal, |g| g.ordinal)
        };
        TrackCursor {
            shared: self.shared.clone(),
            changes: self.shared.version.subscribe(),
            group: None,
            index: 0,
            floor: start,
            started: false,
            skipped: 0,
        }
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
}

/// What a cursor yields next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The next object. `skipped` counts whole groups skipped since the previous object.
    Object {
        group: u64,
        object: Object,
        skipped: u64,
    },
    /// Every object of `group` has been yielded and the group is complete.
    GroupDone { group: u64 },
    /// Nothing new yet: await [`TrackCursor::changed`].
    Pending,
    /// The track is closed and everything readable was read.
    Closed,
}

/// One subscriber's position in a track.
#[derive(Debug)]
pub struct TrackCursor {
    shared: Arc<Shared>,
    changes: watch::Receiver<u64>,
    group: Option<Arc<Group>>,
    index: usize,
    /// Arrival ordinal of the first group this cursor may still read.
    floor: u64,
    /// Whether a group was picked yet.
    started: bool,
    skipped: u64,
}

impl TrackCursor {
    /// Total groups this cursor skipped.
    pub fn skipped_total(&self) -> u64 {
        self.skipped
    }

    /// Waits until the track changes. Returns at once if it changed since the last `step`.
    pub async fn changed(&mut self) {
        // An error means the sender is gone, which cannot happen while we hold `shared`.
        let _ = self.changes.changed().await;
    }

    /// The next step, without waiting.
    pub fn step(&mut self) -> Next {
        self.changes.mark_unchanged();
        if let Some(g) = self.group.clone() {
            let gi = g.lock();
            if let Some(object) = gi.objects.get(self.index) {
                self.index += 1;
                let skipped = if self.index == 1 {
                    self.take_skipped(&g)
                } else {
                    0
                };
                return Next::Object {
                    group: g.id,
                    object: object.clone(),
                    skipped,
                };
            }
            if !gi.done {
                return Next::Pending;
            }
            drop(gi);
            self.floor = g.ordinal + 1;
            self.group = None;
            self.index = 0;
            return Next::GroupDone { group: g.id };
        }
        let t = self.shared.lock();
        let eligible = |g: &&Arc<Group>| g.ordinal >= self.floor;
        // A fresh cursor reads every group from its start; one that has read a group jumps to
        // the newest, skipping whatever it was too slow for.
        let pick = if self.started {
            t.groups.iter().rev().find(eligible)
        } else {
            t.groups.iter().find(eligible)
        }
        .cloned();
        let closed = t.closed;
        drop(t);
        match pick {
            Some(g) => {
                self.group = Some(g);
                self.index = 0;
                self.started = true;
                self.step()
            }
            None if closed => Next::Closed,
            None => Next::Pending,
        }
    }

    fn take_skipped(&mut self, g: &Group) -> u64 {
        let skipped = g.ordinal.saturating_sub(self.floor);
        self.skipped += skipped;
        skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(id: u64, payload: &'static str) -> Object {
        Object {
            id,
            extensions: Bytes::new(),
            payload: Bytes::from_static(payload.as_bytes()),
        }
    }

    fn objects(c: &mut TrackCursor) -> Vec<(u64, u64, u64)> {
        let mut out = vec![];
        loop {
            match c.step() {
                Next::Object {
                    group,
                    object,
                    skipped,
                } => out.push((group, object.id, skipped)),
                Next::GroupDone { .. } => {}
                Next::Pending | Next::Closed => return out,
            }
        }
    }

    #[test]
    fn every_reader_gets_every_object_in_order_without_copies() {
        let (p, h) = track(1024, 4096);
        let mut a = h.cursor();
        let mut b = h.cursor();
        p.append(0, obj(0, "k")).unwrap();
        p.append(0, obj(1, "d")).unwrap();
        p.finish_group(0);
        p.append(1, obj(0, "k2")).unwrap();
        assert_eq!(objects(&mut a), vec![(0, 0, 0), (0, 1, 0), (1, 0, 0)]);
        assert_eq!(objects(&mut b), vec![(0, 0, 0), (0, 1, 0), (1, 0, 0)]);
    }

    #[test]
    fn payload_is_shared_not_copied() {
        let (p, h) = track(1024, 4096);
        let payload = Bytes::from(vec![7u8; 100]);
        let mut cursors: Vec<_> = (0..3).map(|_| h.cursor()).collect();
        p.append(
            0,
            Object {
                id: 0,
                extensions: Bytes::new(),
                payload: payload.clone(),
            },
        )
        .unwrap();
        for c in &mut cursors {
            let Next::Object { object, .. } = c.step() else {
                panic!("expected an object")
            };
            assert_eq!(object.payload.as_ptr(), payload.as_ptr());
        }
    }

    #[test]
    fn late_reader_starts_at_first_object_of_newest_group() {
        let (p, h) = track(1024, 4096);
        for g in 0..3 {
            for o in 0..4 {
                p.append(g, obj(o, "x")).unwrap();
            }
        }
        let mut late = h.cursor();
        assert_eq!(
            objects(&mut late),
            vec![(2, 0, 0), (2, 1, 0), (2, 2, 0), (2, 3, 0)]
        );
    }

    #[test]
    fn slow_reader_finishes_its_group_then_skips_whole_groups() {
        let (p, h) = track(1024, 1 << 20);
        let mut slow = h.cursor();
        p.append(0, obj(0, "k")).unwrap();
        assert!(matches!(slow.step(), Next::Object { group: 0, .. }));
        p.append(0, obj(1, "d")).unwrap();
        p.finish_group(0);
        for g in 1..5 {
            p.append(g, obj(0, "k")).unwrap();
            p.append(g, obj(1, "d")).unwrap();
            p.finish_group(g);
        }
        // The slow reader still holds group 0 and gets its tail, then jumps to group 4.
        assert_eq!(objects(&mut slow), vec![(0, 1, 0), (4, 0, 3), (4, 1, 0)]);
        assert_eq!(slow.skipped_total(), 3);
    }

    #[test]
    fn reader_waits_for_an_open_group_and_sees_close() {
        let (p, h) = track(1024, 4096);
        let mut c = h.cursor();
        assert_eq!(c.step(), Next::Pending);
        p.append(5, obj(0, "a")).unwrap();
        assert!(matches!(c.step(), Next::Object { group: 5, .. }));
        assert_eq!(c.step(), Next::Pending);
        drop(p);
        assert_eq!(c.step(), Next::GroupDone { group: 5 });
        assert_eq!(c.step(), Next::Closed);
    }

    #[test]
    fn bad_appends_are_refused_and_change_nothing() {
        let (p, h) = track(4, 6);
        p.append(1, obj(3, "abc")).unwrap();
        assert!(matches!(
            p.append(1, obj(2, "a")),
            Err(AppendError::OutOfOrder { .. })
        ));
        assert!(matches!(
            p.append(1, obj(4, "abcde")),
            Err(AppendError::ObjectTooLarge { .. })
        ));
        assert!(matches!(
            p.append(1, obj(5, "abcd")),
            Err(AppendError::GroupTooLarge { .. })
        ));
        assert_eq!(p.append(0, obj(0, "old")), Ok(false));
        p.finish_group(1);
        assert!(matches!(
            p.append(1, obj(9, "a")),
            Err(AppendError::GroupFinished { .. })
        ));
        assert_eq!(objects(&mut h.cursor()), vec![(1, 3, 0)]);
    }

    #[test]
    fn only_the_newest_groups_are_retained() {
        let (p, h) = track(1024, 4096);
        let mut c = h.cursor();
        p.append(0, obj(0, "a")).unwrap();
        p.append(1, obj(0, "b")).unwrap();
        p.append(2, obj(0, "c")).unwrap();
        // Group 0 fell out of the window: it is complete and a late append to it is stale.
        assert_eq!(p.append(0, obj(1, "late")), Ok(false));
        assert_eq!(p.shared.lock().groups.len(), RETAINED_GROUPS);
        // The reader never picked group 0 before it was evicted: it starts at group 1, one
        // whole group skipped, and waits there since group 1 is still open.
        assert_eq!(objects(&mut c), vec![(1, 0, 1)]);
    }

    #[tokio::test]
    async fn changed_wakes_a_waiting_reader() {
        let (p, h) = track(1024, 4096);
        let mut c = h.cursor();
        assert_eq!(c.step(), Next::Pending);
        let waiter = tokio::spawn(async move {
            c.changed().await;
            c.step()
        });
        tokio::task::yield_now().await;
        p.append(0, obj(0, "x")).unwrap();
        assert!(matches!(
            waiter.await.unwrap(),
            Next::Object { group: 0, .. }
        ));
    }
}
