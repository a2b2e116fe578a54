//! Relay behaviour over real QUIC on 127.0.0.1: late joiners, room isolation, slow
//! subscribers, token expiry, and the WebTransport front door.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::media::{drain, publish_done, published, watch, write_group};
use common::{eventually, Relay, PUB, SUB};
use moq_transport::serve::Subgroup;
use roomcast::auth::{Claims, Grant};
use roomcast::client::{self, namespace, synthetic_payload, verify_payload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_starts_at_first_object_of_latest_group() {
    let relay = Relay::start().await;
    let publisher = relay.client("r1", "alice", PUB).await;
    let ns = namespace(&["room", "r1", "alice"]).unwrap();
    let (mut w, _a) = client::publish(&publisher, ns, &["video"]).unwrap();
    let mut video = w.remove(0);
    // Subscribing before the PUBLISH_NAMESPACE has arrived is refused: wait for it.
    published(&relay, "r1", "alice").await;
    let early = relay.client("r1", "early", SUB).await;
    let mut early_rx = watch(&early, "r1", "alice", "video").await;
    for g in 0..3 {
        write_group(&mut video, g, 5, 500);
        // Groups are spaced in time as a GOP is.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // Group 3 is open: its first objects are out, the rest are still to come.
    let mut open = video
        .create(Subgroup {
            group_id: 3,
            subgroup_id: 0,
            priority: 128,
        })
        .unwrap();
    for o in 0..3 {
        open.write(synthetic_payload(3, o, 500)).unwrap();
    }
    assert_eq!(
        drain(&mut early_rx, Duration::from_millis(500)).await.len(),
        18
    );

    let late = relay.client("r1", "late", SUB).await;
    let mut late_rx = watch(&late, "r1", "alice", "video").await;
    let first = tokio::time::timeout(Duration::from_secs(2), late_rx.recv())
        .await
        .expect("late joiner received nothing")
        .unwrap();
    assert_eq!(
        (first.group, first.object),
        (3, 0),
        "late joiner starts at the keyframe"
    );
    for o in 3..5 {
        open.write(synthetic_payload(3, o, 500)).unwrap();
    }
    let rest = drain(&mut late_rx, Duration::from_millis(500)).await;
    let ids: Vec<_> = rest.iter().map(|r| (r.group, r.object)).collect();
    assert_eq!(ids, vec![(3, 1), (3, 2), (3, 3), (3, 4)]);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_of_an_unwatched_track_also_starts_at_the_latest_group() {
    let relay = Relay::start().await;
    let publisher = relay.client("r1", "alice", PUB).await;
    let ns = namespace(&["room", "r1", "alice"]).unwrap();
    let (mut w, _a) = client::publish(&publisher, ns, &["video"]).unwrap();
    let mut video = w.remove(0);
    for g in 0..3 {
        write_group(&mut video, g, 4, 300);
    }
    // Nobody watched yet: the relay subscribes upstream now, and must skip the history.
    let viewer = relay.client("r1", "bob", SUB).await;
    let mut rx = watch(&viewer, "r1", "alice", "video").await;
    let got = drain(&mut rx, Duration::from_millis(700)).await;
    assert!(!got.is_empty(), "nothing received");
    assert_eq!((got[0].group, got[0].object), (2, 0));
    assert!(got.iter().all(|r| r.group == 2));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rooms_are_isolated() {
    let relay = Relay::start().await;
    let a = relay.client("a", "alice", PUB).await;
    let b = relay.client("b", "alice", PUB).await;
    let (mut wa, _x) =
        client::publish(&a, namespace(&["room", "a", "alice"]).unwrap(), &["video"]).unwrap();
    let (mut wb, _y) =
        client::publish(&b, namespace(&["room", "b", "alice"]).unwrap(), &["video"]).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let viewer_a = relay.client("a", "va", SUB).await;
    let viewer_b = relay.client("b", "vb", SUB).await;
    let mut rx_a = watch(&viewer_a, "a", "alice", "video").await;
    let mut rx_b = watch(&viewer_b, "b", "alice", "video").await;
    write_group(&mut wa[0], 10, 3, 200);
    write_group(&mut wb[0], 20, 3, 200);
    let got_a = drain(&mut rx_a, Duration::from_millis(500)).await;
    let got_b = drain(&mut rx_b, Duration::from_millis(500)).await;
    assert_eq!(
        got_a.iter().map(|r| r.group).collect::<BTreeSet<_>>(),
        BTreeSet::from([10])
    );
    assert_eq!(
        got_b.iter().map(|r| r.group).collect::<BTreeSet<_>>(),
        BTreeSet::from([20])
    );
    // A viewer of room a cannot reach room b's publisher at all.
    let err = client::subscribe(
        &viewer_a,
        namespace(&["room", "b", "alice"]).unwrap(),
        "video",
    )
    .await
    .err()
    .expect("cross-room subscribe must fail");
    common::refused_with(&err, 0x1, "wrong_room");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_loses_only_whole_groups_and_nobody_else_suffers() {
    const GROUPS: u64 = 30;
    const OBJECTS: u64 = 10;
    const SIZE: usize = 40_000;
    let relay = Relay::start().await;
    let publisher = relay.client("r1", "alice", PUB).await;
    let (mut w, _a) = client::publish(
        &publisher,
        namespace(&["room", "r1", "alice"]).unwrap(),
        &["video"],
    )
    .unwrap();
    let mut video = w.remove(0);
    let fast = relay.client("r1", "fast", SUB).await;
    let slow = relay.client("r1", "slow", SUB).await;
    let mut fast_rx = watch(&fast, "r1", "alice", "video").await;
    let mut slow_rx = watch(&slow, "r1", "alice", "video").await;
    write_group(&mut video, 0, OBJECTS, SIZE);
    assert!(
        eventually(Duration::from_secs(3), || relay
            .metric("roomcast_objects_out")
            >= 20.0)
        .await
    );

    slow.set_reading(false);
    let mut fast_got = vec![];
    for g in 1..GROUPS {
        write_group(&mut video, g, OBJECTS, SIZE);
        // The fast viewer keeps up while the slow one is stalled.
        fast_got.extend(drain(&mut fast_rx, Duration::from_millis(100)).await);
    }
    fast_got.extend(drain(&mut fast_rx, Duration::from_millis(300)).await);
    slow.set_reading(true);
    let slow_got = drain(&mut slow_rx, Duration::from_millis(1500)).await;

    let mut fast_ids: Vec<_> = fast_got.iter().map(|r| (r.group, r.object)).collect();
    fast_ids.sort();
    fast_ids.dedup();
    assert_eq!(fast_ids.len(), fast_got.len(), "fast viewer got duplicates");
    assert_eq!(
        fast_got.len(),
        (GROUPS * OBJECTS) as usize,
        "fast viewer lost objects"
    );
    let mut groups: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for r in &slow_got {
        assert!(
            verify_payload(r.group, r.object, &r.payload).is_some(),
            "corrupt object"
        );
        groups.entry(r.group).or_default().push(r.object);
    }
    for (g, objects) in &groups {
        assert_eq!(
            objects,
            &(0..OBJECTS).collect::<Vec<_>>(),
            "group {g} incomplete or reordered"
        );
    }
    assert!(
        groups.contains_key(&(GROUPS - 1)),
        "slow viewer did not catch up to the newest group"
    );
    assert!(
        groups.len() < GROUPS as usize - 1,
        "slow viewer skipped nothing: {groups:?}"
    );
    // Lost groups are counted: skipped before they started, or reset once superseded.
    assert!(relay.metric("roomcast_dropped_groups") + relay.metric("roomcast_groups_reset") >= 1.0);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_closed_when_its_token_expires() {
    let relay = Relay::start().await;
    // exp is whole seconds: the token is valid for more than 1 s and at most 2 s from here.
    let started = std::time::Instant::now();
    let claims = Claims::new(
        "alice",
        "r1",
        [Grant::Subscribe].into(),
        Duration::from_secs(2),
    );
    let client = client::connect(&relay.quic(), Some(&relay.token_for(claims)))
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(6), client.closed())
        .await
        .expect("session still open after its token expired");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed before expiry"
    );
    match &err {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, 0x2u32.into());
            assert!(
                String::from_utf8_lossy(&c.reason).starts_with("token_expired:"),
                "{err}"
            );
        }
        other => panic!("expected the relay's token_expired close, got {other}"),
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_sessions_publish_and_subscribe() {
    let relay = Relay::start().await;
    let token = relay.token("r1", "alice", PUB);
    let publisher = client::connect(&relay.webtransport(), Some(&token))
        .await
        .unwrap();
    let (mut w, _a) = client::publish(
        &publisher,
        namespace(&["room", "r1", "alice"]).unwrap(),
        &["audio"],
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let viewer = client::connect(&relay.webtransport(), Some(&relay.token("r1", "bob", SUB)))
        .await
        .unwrap();
    let mut rx = watch(&viewer, "r1", "alice", "audio").await;
    write_group(&mut w[0], 0, 20, 160);
    let got = drain(&mut rx, Duration::from_millis(500)).await;
    assert_eq!(got.len(), 20);
    assert!(got
        .iter()
        .all(|r| verify_payload(r.group, r.object, &r.payload).is_some()));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_extensions_pass_through_unchanged() {
    use moq_transport::data::ExtensionHeaders;
    let relay = Relay::start().await;
    let publisher = relay.client("r1", "alice", PUB).await;
    let ns = namespace(&["room", "r1", "alice"]).unwrap();
    let (mut w, _a) = client::publish(&publisher, ns, &["video"]).unwrap();
    let mut video = w.remove(0);
    published(&relay, "r1", "alice").await;
    let viewer = relay.client("r1", "bob", SUB).await;
    let mut rx = watch(&viewer, "r1", "alice", "video").await;
    // The capture timestamp in microseconds since the epoch (an 8-byte varint today), a
    // bytes-valued property and a large even one, as a publisher sends them.
    let capture_us = client::now_micros();
    let mut ext = ExtensionHeaders::new();
    ext.set_intvalue(0x06, capture_us);
    ext.set_bytesvalue(0x0b, b"roomcast \xf0\x9f\x8e\xa5".to_vec());
    ext.set_intvalue(0x3c, u64::MAX >> 2);
    let mut group = video
        .create(Subgroup {
            group_id: 0,
            subgroup_id: 0,
            priority: 128,
        })
        .unwrap();
    let payload = synthetic_payload(0, 0, 300);
    let mut object = group.create(payload.len(), Some(ext.clone())).unwrap();
    object.write(payload.clone()).unwrap();
    drop(object);
    group.write(synthetic_payload(0, 1, 300)).unwrap();
    let got = drain(&mut rx, Duration::from_millis(500)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].extensions, ext, "properties changed in the relay");
    assert_eq!(got[0].payload, payload);
    assert!(got[1].extensions.is_empty(), "{:?}", got[1].extensions);
    // And in the bytes a subscriber decodes: same encoding, same order.
    let encode = |e: &ExtensionHeaders| {
        let mut b = bytes::BytesMut::new();
        moq_transport::coding::Encode::encode(e, &mut b).unwrap();
        b
    };
    assert_eq!(encode(&got[0].extensions), encode(&ext));
    relay.stop().await;
}

/// A track that ends gets PUBLISH_DONE with the number of group streams the relay opened for
/// that subscriber (the relay writes them itself, not through moq-transport's forwarder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_done_counts_the_streams_the_relay_opened() {
    let relay = Relay::start().await;
    let publisher = relay.client("r1", "alice", PUB).await;
    let ns = namespace(&["room", "r1", "alice"]).unwrap();
    let (mut w, _a) = client::publish(&publisher, ns.clone(), &["video"]).unwrap();
    let mut video = w.remove(0);
    published(&relay, "r1", "alice").await;
    let viewer = relay.client("r1", "bob", SUB).await;
    let (sub, reader) = client::subscribe(&viewer, ns, "video").await.unwrap();
    let (tx, _objects) = tokio::sync::mpsc::unbounded_channel();
    let (etx, mut ends) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(client::read_track_groups(reader, tx, etx));
    for g in 0..3 {
        write_group(&mut video, g, 3, 200);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    for _ in 0..3 {
        let end = tokio::time::timeout(Duration::from_secs(2), ends.recv())
            .await
            .expect("a group stream never ended")
            .unwrap();
        assert!(end.clean && end.objects == 3, "{end:?}");
    }
    video.close(moq_transport::serve::ServeError::Done).unwrap();
    assert_eq!(
        publish_done(&sub, Duration::from_secs(3)).await,
        (0x2, 3),
        "TRACK_ENDED"
    );
    relay.stop().await;
}

/// SUBSCRIBE_OK says where the track is: the newest group and its last object held by the
/// relay (none for a track with nothing yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_ok_carries_the_largest_location() {
    let relay = Relay::start().await;
    let publisher = relay.client("r1", "alice", PUB).await;
    let ns = namespace(&["room", "r1", "alice"]).unwrap();
    let (mut w, _a) = client::publish(&publisher, ns.clone(), &["video", "audio"]).unwrap();
    let (mut video, _audio) = (w.remove(0), w.remove(0));
    published(&relay, "r1", "alice").await;
    let viewer = relay.client("r1", "bob", SUB).await;
    let largest = |sub: &moq_transport::session::Subscribe| {
        sub.subscribe_ok()
            .expect("SUBSCRIBE_OK")
            .params
            .largest_object()
            .unwrap()
            .map(|l| (l.group_id, l.object_id))
    };
    let (quiet, _r) = client::subscribe(&viewer, ns.clone(), "audio")
        .await
        .unwrap();
    assert_eq!(largest(&quiet), None, "nothing published yet");
    let (first, _r) = client::subscribe(&viewer, ns.clone(), "video")
        .await
        .unwrap();
    write_group(&mut video, 0, 3, 100);
    write_group(&mut video, 1, 3, 100);
    let mut open = video
        .create(Subgroup {
            group_id: 2,
            subgroup_id: 0,
            priority: 128,
        })
        .unwrap();
    open.write(synthetic_payload(2, 0, 100)).unwrap();
    open.write(synthetic_payload(2, 1, 100)).unwrap();
    assert!(eventually(Duration::from_secs(2), || first.subscribe_ok().is_some()).await);
    // The first subscriber made the relay subscribe upstream; the objects reach its cache.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = relay.client("r1", "carol", SUB).await;
    let (sub, _r) = client::subscribe(&later, ns, "video").await.unwrap();
    assert_eq!(largest(&sub), Some((2, 1)));
    relay.stop().await;
}
