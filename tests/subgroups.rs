//! Several subgroups per group (draft-18 §2.3), read on the wire by a client over real QUIC:
//! each subgroup is relayed on its own stream with its id and object ids kept, a late joiner
//! gets every subgroup of the newest group, a subgroup that starts after the others ended
//! still reaches live subscribers, and PUBLISH_DONE counts one stream per subgroup.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::media::{alice_video, drain, publish_done, subscription};
use common::{Relay, SUB};
use moq_transport::serve::{Subgroup, SubgroupWriter, SubgroupsWriter};
use roomcast::client::{synthetic_payload, verify_payload, Received};

fn subgroup(w: &mut SubgroupsWriter, group: u64, subgroup: u64) -> SubgroupWriter {
    w.create(Subgroup {
        group_id: group,
        subgroup_id: subgroup,
        priority: 128,
    })
    .unwrap()
}

/// Writes object `id` of `group` (synthetic, verifiable) into `sg`.
fn put(sg: &mut SubgroupWriter, group: u64, id: u64) {
    sg.create_with_id(id, 300, None)
        .unwrap()
        .write(synthetic_payload(group, id, 300))
        .unwrap();
}

/// Writes `group` as two interleaved subgroups, layer 0 with the even objects and layer 1
/// with the odd ones (0..6), both streams open at once.
fn layered_group(w: &mut SubgroupsWriter, group: u64) {
    let (mut base, mut layer) = (subgroup(w, group, 0), subgroup(w, group, 1));
    for id in 0..6 {
        put(if id % 2 == 0 { &mut base } else { &mut layer }, group, id);
    }
}

/// (group, subgroup) -> object ids in the order they arrived; every payload verified.
fn by_subgroup(got: &[Received]) -> BTreeMap<(u64, u64), Vec<u64>> {
    let mut m: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for r in got {
        assert!(verify_payload(r.group, r.object, &r.payload).is_some());
        m.entry((r.group, r.subgroup)).or_default().push(r.object);
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subgroups_are_relayed_as_they_arrived() {
    let relay = Relay::start().await;
    let (_alice, mut video, task) = alice_video(&relay).await;
    let bob = relay.client("r1", "bob", SUB).await;
    let (sub, mut rx) = subscription(&bob, "r1", "alice", "video").await;
    let quiet = Duration::from_millis(400);

    layered_group(&mut video, 0);
    let want = BTreeMap::from([((0, 0), vec![0, 2, 4]), ((0, 1), vec![1, 3, 5])]);
    assert_eq!(by_subgroup(&drain(&mut rx, quiet).await), want);

    // A late joiner starts at the newest group: both of its subgroups, from their start.
    let mut base = subgroup(&mut video, 1, 0);
    let mut layer = subgroup(&mut video, 1, 1);
    put(&mut base, 1, 0);
    put(&mut layer, 1, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let carol = relay.client("r1", "carol", SUB).await;
    let (_late, mut late_rx) = subscription(&carol, "r1", "alice", "video").await;
    put(&mut base, 1, 2);
    put(&mut layer, 1, 3);
    drop((base, layer));
    let want = BTreeMap::from([((1, 0), vec![0, 2]), ((1, 1), vec![1, 3])]);
    assert_eq!(by_subgroup(&drain(&mut late_rx, quiet).await), want);
    assert_eq!(by_subgroup(&drain(&mut rx, quiet).await), want);

    // A subgroup that starts after the group's other subgroups ended still goes out.
    let mut first = subgroup(&mut video, 2, 0);
    put(&mut first, 2, 0);
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut second = subgroup(&mut video, 2, 7);
    put(&mut second, 2, 1);
    drop(second);
    let want = BTreeMap::from([((2, 0), vec![0]), ((2, 7), vec![1])]);
    assert_eq!(by_subgroup(&drain(&mut rx, quiet).await), want);

    // The track ends: PUBLISH_DONE counts a stream per subgroup (2 + 2 + 2).
    drop(video);
    drop(task);
    let (status, streams) = publish_done(&sub, Duration::from_secs(5)).await;
    assert_eq!((status, streams), (0x2, 6));
    relay.stop().await;
}
