//! Reading a track: a subscriber's [`TrackCursor`] hands out groups, a [`GroupReader`] reads
//! one group (in arrival order, or subgroup by subgroup through [`SubgroupReader`]s).

use std::sync::Arc;

use tokio::sync::watch;

use super::{Group, Object, Shared};

/// Which locations a subscription passes: a draft-18 subscription filter, resolved against
/// the track. The default is the relay's live start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// First (group, object) passed. `None`: the newest group from its first object (its
    /// keyframe), or the first group to arrive after.
    pub start: Option<(u64, u64)>,
    /// Last group passed, inclusive; after it the subscription is over ([`NextGroup::Ended`]).
    pub end_group: Option<u64>,
}

impl Window {
    fn passes_group(&self, id: u64) -> bool {
        self.start.is_none_or(|(g, _)| id >= g) && self.end_group.is_none_or(|e| id <= e)
    }

    /// The first object id passed in group `id`.
    fn first_object(&self, id: u64) -> u64 {
        match self.start {
            Some((g, o)) if g == id => o,
            _ => 0,
        }
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
    /// The window's end group was yielded (or passed by): nothing more is for this cursor.
    Ended,
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
    window: Window,
    /// Retained groups from an explicit start are still to be yielded, oldest first.
    backlog: bool,
    ended: bool,
    /// Id of the last group yielded.
    last_group: Option<u64>,
}

impl TrackCursor {
    /// A cursor over `shared` from arrival ordinal `floor`, passing what `window` passes.
    pub(super) fn new(shared: Arc<Shared>, floor: u64, window: Window) -> Self {
        Self {
            changes: shared.version.subscribe(),
            shared,
            floor,
            skipped: 0,
            backlog: window.start.is_some(),
            window,
            ended: false,
            last_group: None,
        }
    }

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

    /// Moves the window's ends `to` a subscriber's update: a later start skips what lies
    /// before it (an earlier one is not gone back to: FETCH is for the past), and the end
    /// group replaces the end (`None`: open-ended). A cursor that reached its end stays ended.
    pub fn retarget(&mut self, to: Window) {
        if let Some(s) = to.start {
            if self.window.start.is_none_or(|old| s > old) {
                self.window.start = Some(s);
            }
        }
        self.window.end_group = to.end_group;
        // An end at or before a group already handed out: nothing more comes.
        if let (Some(end), Some(last)) = (to.end_group, self.last_group) {
            if last >= end {
                self.ended = true;
            }
        }
    }

    /// Where a paused subscription stopped yielding groups, for [`TrackCursor::resume`].
    pub fn pause_mark(&self) -> PauseMark {
        PauseMark(self.floor)
    }

    /// Resumes a subscription paused at `mark` (groups were read past it but not sent): the
    /// next group yielded is the newest one from its first object, as for a late joiner,
    /// unless it was sent before the pause.
    pub fn resume(&mut self, mark: PauseMark) {
        let newest = {
            let t = self.shared.lock();
            t.groups.back().map_or(t.next_ordinal, |g| g.ordinal)
        };
        self.floor = mark.0.max(newest);
        self.backlog = false;
    }

    /// The newest group not yielded yet, without waiting. A fresh cursor yields the group that
    /// was newest when it was made (a late joiner starts at that group's first object, its
    /// keyframe), or the first group to arrive after.
    pub fn next_group(&mut self) -> NextGroup {
        self.changes.mark_unchanged();
        if self.ended {
            return NextGroup::Ended;
        }
        let t = self.shared.lock();
        let window = self.window;
        let newest = t.groups.back().filter(|g| g.ordinal >= self.floor).cloned();
        let pick = if self.backlog {
            t.groups
                .iter()
                .find(|g| g.ordinal >= self.floor && window.passes_group(g.id))
                .cloned()
        } else {
            newest.clone()
        };
        let closed = t.closed;
        drop(t);
        // Past the window's end: groups up to the end not yielded yet come first (the end
        // group and a newer one may arrive between two looks), then it is over.
        let mut pick = pick;
        if let (Some(end), Some(g)) = (window.end_group, &newest) {
            if g.id > end && pick.as_ref().is_none_or(|p| p.id > end) {
                let t = self.shared.lock();
                pick = t
                    .groups
                    .iter()
                    .find(|g| g.ordinal >= self.floor && window.passes_group(g.id))
                    .cloned();
                drop(t);
                if pick.is_none() {
                    self.ended = true;
                    return NextGroup::Ended;
                }
                self.backlog = true;
            }
        }
        match pick {
            Some(group) if !window.passes_group(group.id) => {
                // Before the window's start (an out-of-order straggler): never for us.
                self.floor = group.ordinal + 1;
                NextGroup::Pending
            }
            Some(group) => {
                let skipped = if self.backlog {
                    0
                } else {
                    group.ordinal - self.floor
                };
                self.backlog = self.backlog && newest.is_some_and(|n| !Arc::ptr_eq(&n, &group));
                self.skipped += skipped;
                self.floor = group.ordinal + 1;
                self.ended = window.end_group == Some(group.id);
                self.last_group = Some(group.id);
                NextGroup::Group {
                    reader: GroupReader {
                        from_object: window.first_object(group.id),
                        changes: group.changed.subscribe(),
                        group,
                        index: 0,
                        subgroups_seen: 0,
                    },
                    skipped,
                }
            }
            None if closed => NextGroup::Closed,
            None => {
                self.backlog = false;
                NextGroup::Pending
            }
        }
    }
}

/// Where a cursor stood when its subscription paused (Forward State 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseMark(u64);

/// What [`GroupReader::step`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupNext {
    /// The next object of the group, in order.
    Object(Object),
    /// Nothing new yet: await [`GroupReader::changed`].
    Pending,
    /// Every object was yielded and the group is complete.
    Done,
    /// The group broke upstream or went over budget: stop it, do not deliver it as whole.
    Aborted,
}

/// Reads one group from its first object. Holds the group alive (bounded by
/// `max_group_bytes`) until dropped.
#[derive(Debug)]
pub struct GroupReader {
    group: Arc<Group>,
    index: usize,
    /// Subgroups handed out by [`GroupReader::next_subgroup`].
    subgroups_seen: usize,
    /// Objects below this id are not for this reader (a filter that starts mid-group).
    from_object: u64,
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
        if gi.aborted {
            return GroupNext::Aborted;
        }
        while let Some(object) = gi.objects.get(self.index) {
            self.index += 1;
            if object.id >= self.from_object {
                return GroupNext::Object(object.clone());
            }
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

    /// The next subgroup of the group not handed out yet, in order of arrival, to be read
    /// on its own ([`SubgroupReader`]); [`SubgroupNext::Done`] once every subgroup that
    /// started has ended (a later one may still start unless [`GroupReader::sealed`]).
    pub fn next_subgroup(&mut self) -> SubgroupNext {
        self.changes.mark_unchanged();
        let gi = self.group.lock();
        if gi.aborted {
            return SubgroupNext::Aborted;
        }
        if let Some(sg) = gi.subgroups.get(self.subgroups_seen) {
            let reader = SubgroupReader {
                group: self.group.clone(),
                position: self.subgroups_seen,
                subgroup: sg.id,
                index: 0,
                from_object: self.from_object,
                changes: self.changes.clone(),
                arrived: None,
            };
            self.subgroups_seen += 1;
            return SubgroupNext::New(reader);
        }
        if gi.done {
            SubgroupNext::Done
        } else {
            SubgroupNext::Pending
        }
    }

    /// True once nothing more can come to the group (evicted, aborted, its track closed).
    pub fn sealed(&self) -> bool {
        self.group.lock().sealed
    }
}

/// What [`GroupReader::next_subgroup`] yields.
#[derive(Debug)]
pub enum SubgroupNext {
    /// A subgroup that started.
    New(SubgroupReader),
    /// None new yet: await [`GroupReader::changed`].
    Pending,
    /// Every subgroup that started has ended.
    Done,
    /// The group broke upstream or went over budget.
    Aborted,
}

/// Reads one subgroup of a group, its objects in order (see [`GroupReader::next_subgroup`]).
#[derive(Debug)]
pub struct SubgroupReader {
    group: Arc<Group>,
    /// Its place in the group's subgroups.
    position: usize,
    subgroup: u64,
    index: usize,
    from_object: u64,
    changes: watch::Receiver<u64>,
    /// When the object last yielded arrived at the relay.
    arrived: Option<std::time::Instant>,
}

impl SubgroupReader {
    /// When the object [`SubgroupReader::step`] last yielded arrived at the relay.
    pub fn arrived(&self) -> Option<std::time::Instant> {
        self.arrived
    }

    /// The publisher's group id.
    pub fn id(&self) -> u64 {
        self.group.id
    }

    /// The subgroup id.
    pub fn subgroup(&self) -> u64 {
        self.subgroup
    }

    /// The next object of the subgroup, without waiting.
    pub fn step(&mut self) -> GroupNext {
        self.changes.mark_unchanged();
        let gi = self.group.lock();
        if gi.aborted {
            return GroupNext::Aborted;
        }
        let Some(sg) = gi.subgroups.get(self.position) else {
            return GroupNext::Aborted;
        };
        while let Some(&i) = sg.objects.get(self.index) {
            self.index += 1;
            let object = &gi.objects[i];
            if object.id >= self.from_object {
                self.arrived = gi.arrived.get(i).copied().flatten();
                return GroupNext::Object(object.clone());
            }
        }
        if sg.done {
            GroupNext::Done
        } else if gi.sealed {
            // Cut short (evicted, or its track ended): never delivered as if whole.
            GroupNext::Aborted
        } else {
            GroupNext::Pending
        }
    }

    /// Waits until the track changes (cancel safe).
    pub async fn changed(&mut self) {
        let _ = self.changes.changed().await;
    }
}
