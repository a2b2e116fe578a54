//! Unit tests of the track buffer.

use super::*;

fn obj(id: u64, payload: &'static str) -> Object {
    Object {
        subgroup: 0,
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
            GroupNext::Aborted => panic!("group aborted"),
        }
    }
}

fn limits(retained_groups: usize) -> TrackLimits {
    TrackLimits {
        max_object_bytes: 1024,
        max_group_bytes: 4096,
        retained_groups,
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
            subgroup: 0,
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

#[test]
fn cached_bytes_are_charged_and_given_back_when_the_group_is_gone() {
    let budget = Budget::root("session", 10);
    let (p, h) = track_in(limits(2), Some(budget.clone()));
    let mut c = h.cursor();
    p.append(0, obj(0, "abcd")).unwrap();
    p.append(0, obj(1, "efgh")).unwrap();
    assert_eq!(budget.used(), 8);
    // Over budget: refused, nothing taken, the group is still readable.
    assert!(matches!(
        p.append(0, obj(2, "ijk")),
        Err(AppendError::OverBudget { group: 0, .. })
    ));
    assert_eq!(budget.used(), 8);
    let (mut g0, _) = group(&mut c);
    assert_eq!(read(&mut g0), (vec![0, 1], false));
    // Two newer groups push group 0 out of the track, but a reader still holds it.
    p.append(1, obj(0, "a")).unwrap();
    p.append(2, obj(0, "b")).unwrap();
    assert_eq!(budget.used(), 10);
    drop(g0);
    assert_eq!(budget.used(), 2);
    drop(p);
    drop(h);
    drop(c);
    assert_eq!(budget.used(), 0);
}

#[test]
fn an_aborted_group_stops_its_readers_frees_its_bytes_and_the_track_goes_on() {
    let budget = Budget::root("session", 100);
    let (p, h) = track_in(limits(2), Some(budget.clone()));
    let mut c = h.cursor();
    p.append(0, obj(0, "abc")).unwrap();
    let (mut g0, _) = group(&mut c);
    assert_eq!(g0.step(), GroupNext::Object(obj(0, "abc")));
    p.append(0, obj(1, "def")).unwrap();
    p.abort_group(0);
    assert_eq!(budget.used(), 0);
    assert_eq!(g0.step(), GroupNext::Aborted);
    assert!(matches!(
        p.append(0, obj(2, "x")),
        Err(AppendError::GroupFinished { group: 0 })
    ));
    p.append(1, obj(0, "k")).unwrap();
    let (mut g1, skipped) = group(&mut c);
    assert_eq!((g1.id(), skipped), (1, 0));
    assert_eq!(read(&mut g1), (vec![0], false));
}

#[test]
fn begin_opens_new_groups_keeps_retained_ones_and_refuses_stale_ones() {
    let (p, h) = track(1024, 4096);
    assert!(p.begin(1));
    p.append(2, obj(0, "b")).unwrap();
    // Group 1 is still retained (a second stream for it is not stale) ...
    assert!(p.begin(1));
    // ... group 0 was never seen and is older than every retained group.
    assert!(!p.begin(0));
    let (g, _) = group(&mut h.cursor());
    assert_eq!(g.id(), 2);
}

/// Groups 0..n with objects 0..3 each, the last one still open.
fn filled(n: u64) -> (TrackProducer, TrackHandle) {
    let (p, h) = track(1024, 4096);
    for g in 0..n {
        for o in 0..3 {
            p.append(g, obj(o, "x")).unwrap();
        }
        if g + 1 < n {
            p.finish_group(g);
        }
    }
    (p, h)
}

#[test]
fn a_window_from_mid_group_skips_the_objects_before_its_start() {
    let (p, h) = filled(2);
    // Largest Object: {1, 2} held, start at {1, 3}.
    let mut c = h.cursor_in(Window {
        start: Some((1, 3)),
        end_group: None,
    });
    let (mut g, _) = group(&mut c);
    assert_eq!((g.id(), read(&mut g)), (1, (vec![], false)));
    p.append(1, obj(3, "x")).unwrap();
    assert_eq!(read(&mut g), (vec![3], false));
    p.append(2, obj(0, "k")).unwrap();
    let (mut g2, skipped) = group(&mut c);
    assert_eq!((g2.id(), skipped, read(&mut g2)), (2, 0, (vec![0], false)));
}

#[test]
fn a_window_from_the_next_group_waits_for_it() {
    let (p, h) = filled(2);
    let mut c = h.cursor_in(Window {
        start: Some((2, 0)),
        end_group: None,
    });
    assert!(matches!(c.next_group(), NextGroup::Pending));
    p.append(1, obj(3, "late")).unwrap();
    assert!(matches!(c.next_group(), NextGroup::Pending));
    p.append(2, obj(0, "k")).unwrap();
    let (g, skipped) = group(&mut c);
    assert_eq!((g.id(), skipped), (2, 0));
}

#[test]
fn an_absolute_start_in_the_past_gets_the_retained_groups_oldest_first() {
    let (p, h) = filled(4);
    // Groups 2 and 3 are retained; 0 and 1 are gone.
    let mut c = h.cursor_in(Window {
        start: Some((0, 0)),
        end_group: None,
    });
    let (mut a, _) = group(&mut c);
    let (mut b, _) = group(&mut c);
    assert_eq!((a.id(), read(&mut a)), (2, (vec![0, 1, 2], true)));
    assert_eq!((b.id(), read(&mut b)), (3, (vec![0, 1, 2], false)));
    assert!(matches!(c.next_group(), NextGroup::Pending));
    // Then newest first again: a cursor that fell behind skips whole groups.
    p.append(4, obj(0, "k")).unwrap();
    p.append(5, obj(0, "k")).unwrap();
    let (g, skipped) = group(&mut c);
    assert_eq!((g.id(), skipped), (5, 1));
}

#[test]
fn a_range_ends_after_its_end_group_even_if_that_group_never_came() {
    let (p, h) = filled(2);
    let mut c = h.cursor_in(Window {
        start: Some((1, 0)),
        end_group: Some(2),
    });
    let (g, _) = group(&mut c);
    assert_eq!(g.id(), 1);
    assert!(matches!(c.next_group(), NextGroup::Pending));
    p.append(2, obj(0, "k")).unwrap();
    let (g, _) = group(&mut c);
    assert_eq!(g.id(), 2);
    assert!(matches!(c.next_group(), NextGroup::Ended));

    let mut gap = h.cursor_in(Window {
        start: Some((3, 0)),
        end_group: Some(3),
    });
    assert!(matches!(gap.next_group(), NextGroup::Pending));
    p.append(4, obj(0, "k")).unwrap();
    assert!(matches!(gap.next_group(), NextGroup::Ended));
}

#[test]
fn a_full_budget_lets_the_oldest_retained_groups_go_before_refusing_a_new_one() {
    let budget = Budget::root("track", 12);
    let (p, h) = track_in(limits(10), Some(budget.clone()));
    for g in 0..3 {
        p.append(g, obj(0, "abcd")).unwrap();
        p.finish_group(g);
    }
    assert_eq!(budget.used(), 12);
    // Group 3 needs room: group 0 goes (nobody reads it), the rest stays.
    p.append(3, obj(0, "efgh")).unwrap();
    assert_eq!(budget.used(), 12);
    let held = h.held((0, 0), (9, 0));
    let ids: Vec<u64> = held.groups.iter().map(|(g, _)| *g).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    assert!(!held.complete, "group 0 is gone");
    // A group alone over the budget is still refused.
    assert!(matches!(
        p.append(3, obj(1, "0123456789abc")),
        Err(AppendError::OverBudget { group: 3, .. })
    ));
}

#[test]
fn held_says_whether_the_cache_covers_a_range() {
    let (p, h) = track_in(limits(5), None);
    // The relay joined group 4 at object 2; groups 5 and 7 came whole, 6 never came.
    for o in 2..4 {
        p.append(4, obj(o, "x")).unwrap();
    }
    for g in [5, 7] {
        for o in 0..3 {
            p.append(g, obj(o, "x")).unwrap();
        }
    }
    let r = h.held((5, 1), (7, 0));
    assert!(r.complete);
    let got: Vec<(u64, Vec<u64>)> = r
        .groups
        .iter()
        .map(|(g, os)| (*g, os.iter().map(|o| o.id).collect()))
        .collect();
    assert_eq!(got, vec![(5, vec![1, 2]), (7, vec![0])]);
    assert!(
        h.held((4, 2), (4, 9)).complete,
        "from where the relay joined"
    );
    assert!(
        !h.held((4, 0), (4, 9)).complete,
        "objects 0 and 1 never came"
    );
    assert!(
        !h.held((3, 0), (5, 0)).complete,
        "before the oldest group held"
    );
    p.abort_group(5);
    assert!(
        !h.held((5, 0), (7, 0)).complete,
        "a broken group is not held"
    );
}

#[test]
fn a_range_yields_its_end_group_even_when_a_newer_one_came_first() {
    let (p, h) = filled(1);
    let mut c = h.cursor_in(Window {
        start: Some((0, 0)),
        end_group: Some(1),
    });
    let (g, _) = group(&mut c);
    assert_eq!(g.id(), 0);
    // Groups 1 and 2 both arrive before the cursor looks again.
    p.append(1, obj(0, "k")).unwrap();
    p.append(2, obj(0, "k")).unwrap();
    let (g, _) = group(&mut c);
    assert_eq!(g.id(), 1, "the end group is not skipped");
    assert!(matches!(c.next_group(), NextGroup::Ended));
}

#[test]
fn a_group_shed_while_still_arriving_is_aborted_not_finished() {
    let budget = Budget::root("track", 8);
    let (p, h) = track_in(limits(10), Some(budget.clone()));
    let mut c = h.cursor();
    p.append(0, obj(0, "abcd")).unwrap();
    let (mut g0, _) = group(&mut c);
    assert_eq!(read(&mut g0), (vec![0], false));
    // Group 1 needs room while group 0 is still open: group 0 goes, broken, not whole.
    p.append(1, obj(0, "efgh")).unwrap();
    p.append(1, obj(1, "ijkl")).unwrap();
    assert_eq!(g0.step(), GroupNext::Aborted);
}

#[test]
fn a_group_of_endless_empty_objects_is_bounded() {
    let (p, _h) = track(1024, 4096);
    for o in 0..MAX_OBJECTS_PER_GROUP as u64 {
        p.append(0, obj(o, "")).unwrap();
    }
    assert!(matches!(
        p.append(0, obj(MAX_OBJECTS_PER_GROUP as u64, "")),
        Err(AppendError::GroupTooLarge { group: 0, .. })
    ));
}

#[test]
fn a_resumed_cursor_starts_at_the_newest_group_it_has_not_sent() {
    let (p, h) = track(1024, 4096);
    p.append(0, obj(0, "x")).unwrap();
    let mut c = h.cursor();
    assert_eq!(group(&mut c).0.id(), 0);
    // Paused right after sending group 0, which is still the newest: not sent again.
    let mark = c.pause_mark();
    c.resume(mark);
    assert!(matches!(c.next_group(), NextGroup::Pending));
    // Paused while groups 1 and 2 arrive (read to see the end, not sent): group 2 next.
    let mark = c.pause_mark();
    p.append(1, obj(0, "x")).unwrap();
    p.append(2, obj(0, "x")).unwrap();
    assert_eq!(group(&mut c).0.id(), 2);
    c.resume(mark);
    let (mut g, skipped) = group(&mut c);
    assert_eq!((g.id(), skipped), (2, 0));
    assert_eq!(read(&mut g), (vec![0], false));
}

#[test]
fn a_retargeted_cursor_ends_at_its_new_end_and_never_goes_back() {
    let (p, h) = track(1024, 4096);
    let mut c = h.cursor();
    p.append(0, obj(0, "x")).unwrap();
    assert_eq!(group(&mut c).0.id(), 0);
    // A start in the past is not gone back to; the end group is moved to 2.
    c.retarget(Window {
        start: Some((0, 0)),
        end_group: Some(2),
    });
    for g in 1..4 {
        p.append(g, obj(0, "x")).unwrap();
        if g <= 2 {
            assert_eq!(group(&mut c).0.id(), g);
        }
    }
    assert!(matches!(c.next_group(), NextGroup::Ended));
    // An end moved to before what was already handed out ends a cursor at once.
    let mut d = h.cursor();
    assert_eq!(group(&mut d).0.id(), 3);
    d.retarget(Window {
        start: None,
        end_group: Some(1),
    });
    assert!(matches!(d.next_group(), NextGroup::Ended));
}

fn in_subgroup(subgroup: u64, id: u64) -> Object {
    Object {
        subgroup,
        ..obj(id, "x")
    }
}

#[test]
fn subgroups_keep_their_own_order_and_the_group_ends_with_the_last_of_them() {
    let (p, h) = track(1024, 1 << 20);
    let mut c = h.cursor();
    p.append(0, in_subgroup(0, 0)).unwrap();
    p.append(0, in_subgroup(1, 1)).unwrap();
    p.append(0, in_subgroup(0, 2)).unwrap();
    // Ids increase within a subgroup, not across the group.
    assert!(matches!(
        p.append(0, in_subgroup(1, 1)),
        Err(AppendError::OutOfOrder { .. })
    ));
    let (mut g, _) = group(&mut c);
    let (SubgroupNext::New(mut s0), SubgroupNext::New(mut s1)) =
        (g.next_subgroup(), g.next_subgroup())
    else {
        panic!("two subgroups expected");
    };
    assert_eq!((s0.subgroup(), s1.subgroup()), (0, 1));
    let ids = |s: &mut SubgroupReader| {
        let mut v = vec![];
        while let GroupNext::Object(o) = s.step() {
            v.push(o.id);
        }
        v
    };
    assert_eq!((ids(&mut s0), ids(&mut s1)), (vec![0, 2], vec![1]));
    p.finish_subgroup(0, 0);
    assert_eq!(s0.step(), GroupNext::Done);
    assert!(matches!(g.next_subgroup(), SubgroupNext::Pending));
    p.finish_subgroup(0, 1);
    assert!(matches!(g.next_subgroup(), SubgroupNext::Done));
    assert!(!g.sealed());
    // A finished subgroup takes nothing more; a new one opens the group again.
    assert!(matches!(
        p.append(0, in_subgroup(1, 5)),
        Err(AppendError::GroupFinished { .. })
    ));
    p.append(0, in_subgroup(2, 3)).unwrap();
    assert!(matches!(g.next_subgroup(), SubgroupNext::New(_)));
    // Evicted: sealed, nothing more.
    p.append(1, in_subgroup(0, 0)).unwrap();
    p.append(2, in_subgroup(0, 0)).unwrap();
    assert!(g.sealed());
    assert!(matches!(
        p.append(0, in_subgroup(3, 9)),
        Err(AppendError::GroupFinished { .. }) | Ok(false)
    ));
}

#[test]
fn a_group_holds_a_bounded_number_of_subgroups() {
    let (p, _h) = track(1024, 1 << 20);
    for s in 0..MAX_SUBGROUPS_PER_GROUP as u64 {
        p.append(0, in_subgroup(s, s)).unwrap();
    }
    assert!(matches!(
        p.append(0, in_subgroup(999, 999)),
        Err(AppendError::TooManySubgroups { .. })
    ));
}

#[test]
fn an_object_id_is_unique_across_a_groups_subgroups() {
    let (p, _h) = track(1024, 1 << 20);
    p.append(0, in_subgroup(0, 1)).unwrap();
    p.append(0, in_subgroup(1, 2)).unwrap();
    assert!(matches!(
        p.append(0, in_subgroup(1, 1)),
        Err(AppendError::OutOfOrder { .. })
    ));
    assert!(matches!(
        p.append(0, in_subgroup(2, 1)),
        Err(AppendError::Duplicate { .. })
    ));
    p.append(0, in_subgroup(2, 3)).unwrap();
}

#[test]
fn a_subgroup_cut_short_by_eviction_is_aborted_not_done() {
    let (p, h) = track(1024, 1 << 20);
    let mut c = h.cursor();
    p.append(0, in_subgroup(0, 0)).unwrap();
    let (mut g, _) = group(&mut c);
    let SubgroupNext::New(mut s) = g.next_subgroup() else {
        panic!("a subgroup expected");
    };
    assert!(matches!(s.step(), GroupNext::Object(_)));
    // Two newer groups evict group 0 while its subgroup is still open.
    p.append(1, in_subgroup(0, 0)).unwrap();
    p.append(2, in_subgroup(0, 0)).unwrap();
    assert_eq!(s.step(), GroupNext::Aborted);
}
