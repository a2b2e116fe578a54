//! One track's fan-out buffer: the relay's cache of the current group and its readers.
//!
//! A [`TrackProducer`] appends objects as they arrive from the publisher. Every subscriber
//! holds a [`TrackCursor`], which hands out each new group once, newest first, as a
//! [`GroupReader`] that yields that group's objects in order; payloads are `Bytes`, so each
//! object is stored once and shared by every subscriber. The track keeps only its newest
//! [`RETAINED_GROUPS`] groups. Groups that arrived while a cursor was not looking are skipped
//! whole (counted), never yielded in part or out of order. A late subscriber starts at the first
//! object of the newest group. Memory per subscriber is one `Arc` per group it is reading,
//! each bounded by `max_group_bytes`. No sockets, no clock: unit-testable as is.

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
            floor: start,
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

/// What [`TrackCursor::next_group`] yields.
#[derive(Debug)]
pub enum NextGroup {
    /// A group newer than every group yielded before. `skipped` counts whole groups that
    /// arrived in between and will never be yielded (zero for a cursor that keeps up).
    Group { reader: GroupReader, skipped: u64 },
    /// No newer group yet: await [`TrackCursor::changed`].
    Pending,
    /// The track is closed and no newer group will come.
    Closed,
}

/// One subscriber's position in a track: which groups it was given.
///
/// Groups are handed out newest first and each one only once; the caller reads each group
/// through its own [`GroupReader`], so an old group still being sent never holds up a new one.
#[derive(Debug)]
pub struct TrackCursor {
    shared: Arc<Shared>,
    changes: watch::Receiver<u64>,
    /// Arrival ordinal of the first group this cursor may still yield.
    floor: u64,
    skipped: u64,
}

impl TrackCursor {
    /// Total groups this cursor skipped.
    pub fn skipped_total(&self) -> u64 {
        self.skipped
    }

    /// Waits until the track changes. Returns at once if it changed since the last call to
    /// [`TrackCursor::next_group`].
    pub async fn changed(&mut self) {
        // An error means the sender is gone, which cannot happen while we hold `shared`.
        let _ = self.changes.changed().await;
    }

    /// The newest group not yielded yet, without waiting. A fresh cursor yields the group that
    /// was newest when it was made (a late joiner starts at that group's first object, its
    /// keyframe), or the first group to arrive after.
    pub fn next_group(&mut self) -> NextGroup {
        self.changes.mark_unchanged();
        let t = self.shared.lock();
        let pick = t.groups.back().filter(|g| g.ordinal >= self.floor).cloned();
        let closed = t.closed;
        drop(t);
        match pick {
            Some(group) => {
                let skipped = group.ordinal - self.floor;
                self.skipped += skipped;
                self.floor = group.ordinal + 1;
                NextGroup::Group {
                    reader: GroupReader {
                        group,
                        index: 0,
                        changes: self.shared.version.subscribe(),
                    },
                    skipped,
                }
            }
            None if closed => NextGroup::Closed,
            None => NextGroup::Pending,
        }
    }
}

/// What [`GroupReader::step`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupNext {
    /// The next object of the group, in order.
    Object(Object),
    /// Nothing new yet: await [`GroupReader::changed`].
    Pending,
    /// Every object was yielded and the group is complete.
    Done,
}

/// Reads one group from its first object. Holds the group alive (bounded by
/// `max_group_bytes`) until dropped.
#[derive(Debug)]
pub struct GroupReader {
    group: Arc<Group>,
    index: usize,
    changes: watch::Receiver<u64>,
}

impl GroupReader {
    /// The publisher's group id.
    pub fn id(&self) -> u64 {
        self.group.id
    }

    /// The next object, without waiting.
    pub fn step(&mut self) -> GroupNext {
        self.changes.mark_unchanged();
        let gi = self.group.lock();
        if let Some(object) = gi.objects.get(self.index) {
            self.index += 1;
            return GroupNext::Object(object.clone());
        }
        if gi.done {
            GroupNext::Done
        } else {
            GroupNext::Pending
        }
    }

    /// Waits until the track changes (cancel safe).
    pub async fn changed(&mut self) {
        let _ = self.changes.changed().await;
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

    /// Everything readable now from `r`: object ids, and whether the group is complete.
    fn read(r: &mut GroupReader) -> (Vec<u64>, bool) {
        let mut ids = vec![];
        loop {
            match r.step() {
                GroupNext::Object(o) => ids.push(o.id),
                GroupNext::Pending => return (ids, false),
                GroupNext::Done => return (ids, true),
            }
        }
    }

    fn group(c: &mut TrackCursor) -> (GroupReader, u64) {
        match c.next_group() {
            NextGroup::Group { reader, skipped } => (reader, skipped),
            other => panic!("expected a group, got {other:?}"),
        }
    }

    #[test]
    fn every_reader_gets_every_group_once_in_order_without_copies() {
        let (p, h) = track(1024, 4096);
        let mut a = h.cursor();
        let mut b = h.cursor();
        p.append(0, obj(0, "k")).unwrap();
        let (mut a0, _) = group(&mut a);
        let (mut b0, _) = group(&mut b);
        p.append(0, obj(1, "d")).unwrap();
        p.finish_group(0);
        p.append(1, obj(0, "k2")).unwrap();
        for c in [&mut a, &mut b] {
            let (mut g1, skipped) = group(c);
            assert_eq!((g1.id(), skipped), (1, 0));
            assert_eq!(read(&mut g1), (vec![0], false));
            assert!(matches!(c.next_group(), NextGroup::Pending));
        }
        assert_eq!(read(&mut a0), (vec![0, 1], true));
        assert_eq!(read(&mut b0), (vec![0, 1], true));
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
            let (mut g, _) = group(c);
            let GroupNext::Object(object) = g.step() else {
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
        let (mut g, skipped) = group(&mut late);
        assert_eq!((g.id(), skipped), (2, 0));
        assert_eq!(read(&mut g), (vec![0, 1, 2, 3], false));
    }

    #[test]
    fn a_new_group_is_yielded_while_the_old_one_is_still_open() {
        let (p, h) = track(1024, 1 << 20);
        let mut c = h.cursor();
        p.append(0, obj(0, "k")).unwrap();
        let (mut old, _) = group(&mut c);
        p.append(1, obj(0, "k")).unwrap();
        // Group 0 was never finished, yet group 1 is handed out at once, newest first.
        let (mut new, skipped) = group(&mut c);
        assert_eq!((new.id(), skipped), (1, 0));
        assert_eq!(read(&mut new), (vec![0], false));
        assert_eq!(read(&mut old), (vec![0], false));
    }

    #[test]
    fn a_cursor_that_looks_late_skips_whole_groups_and_counts_them() {
        let (p, h) = track(1024, 1 << 20);
        let mut c = h.cursor();
        p.append(0, obj(0, "k")).unwrap();
        let (_g0, _) = group(&mut c);
        for g in 1..5 {
            p.append(g, obj(0, "k")).unwrap();
            p.append(g, obj(1, "d")).unwrap();
            p.finish_group(g);
        }
        // Groups 1..3 arrived unseen: the cursor jumps to 4 and never yields them.
        let (mut g4, skipped) = group(&mut c);
        assert_eq!((g4.id(), skipped), (4, 3));
        assert_eq!(read(&mut g4), (vec![0, 1], true));
        assert!(matches!(c.next_group(), NextGroup::Pending));
        assert_eq!(c.skipped_total(), 3);
    }

    #[test]
    fn reader_waits_for_an_open_group_and_sees_close() {
        let (p, h) = track(1024, 4096);
        let mut c = h.cursor();
        assert!(matches!(c.next_group(), NextGroup::Pending));
        p.append(5, obj(0, "a")).unwrap();
        let (mut g, _) = group(&mut c);
        assert_eq!(read(&mut g), (vec![0], false));
        drop(p);
        assert_eq!(g.step(), GroupNext::Done);
        assert!(matches!(c.next_group(), NextGroup::Closed));
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
        let (mut g, _) = group(&mut h.cursor());
        assert_eq!(read(&mut g), (vec![3], true));
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
        let (g, skipped) = group(&mut c);
        assert_eq!((g.id(), skipped), (2, 2));
    }

    #[tokio::test]
    async fn changed_wakes_a_waiting_reader() {
        let (p, h) = track(1024, 4096);
        let mut c = h.cursor();
        assert!(matches!(c.next_group(), NextGroup::Pending));
        let waiter = tokio::spawn(async move {
            c.changed().await;
            let (mut g, _) = group(&mut c);
            let first = g.step();
            let waiting = g.step();
            (first, waiting, g)
        });
        tokio::task::yield_now().await;
        p.append(0, obj(0, "x")).unwrap();
        let (first, waiting, mut g) = waiter.await.unwrap();
        assert_eq!(first, GroupNext::Object(obj(0, "x")));
        assert_eq!(waiting, GroupNext::Pending);
        let wake = tokio::spawn(async move {
            g.changed().await;
            g.step()
        });
        tokio::task::yield_now().await;
        p.append(0, obj(1, "y")).unwrap();
        assert_eq!(wake.await.unwrap(), GroupNext::Object(obj(1, "y")));
    }
}
