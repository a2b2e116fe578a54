//! Object datagrams (draft-18 §10.3) through the relay, read on the wire by a client over real
//! QUIC and WebTransport: a publisher's datagram track reaches subscribers as datagrams with
//! group and object ids and payloads intact, a late joiner gets the newest group's datagrams
//! from its first, and no stream is opened for them (PUBLISH_DONE counts none).

mod common;

use std::time::Duration;

use common::media::{drain, publish_done, subscription};
use common::{Relay, PUB, SUB};
use moq_transport::data::{ExtensionHeaders, ObjectStatus};
use moq_transport::serve::{self, Datagram, DatagramsWriter};
use roomcast::client::{self, namespace, synthetic_payload, verify_payload, Client, Received};
use roomcast::core::track::DATAGRAMS;

/// Publishes alice's `audio` as a datagram track; its writer and the publication's task.
fn publish_datagrams(c: &Client) -> (DatagramsWriter, client::SessionTask) {
    let ns = namespace(&["room", "r1", "alice"]).unwrap();
    let (mut writer, request, reader) = serve::Tracks::new(ns).produce();
    drop(request);
    let track = writer.create("audio").unwrap();
    let datagrams = track.datagrams().unwrap();
    let mut publisher = c.publisher.clone();
    let task = tokio::spawn(async move {
        let _writer = writer;
        publisher.publish_namespace(reader).await
    });
    (datagrams, task)
}

fn send(w: &mut DatagramsWriter, group: u64, object: u64) {
    w.write(Datagram {
        group_id: group,
        object_id: object,
        priority: 128,
        status: ObjectStatus::NormalObject,
        end_of_group: false,
        payload: synthetic_payload(group, object, 200),
        extension_headers: ExtensionHeaders::default(),
    })
    .unwrap();
}

/// (group, object) of each datagram, checked byte for byte and as datagrams.
fn locations(got: &[Received]) -> Vec<(u64, u64)> {
    got.iter()
        .map(|r| {
            assert_eq!(r.subgroup, DATAGRAMS, "came on a stream");
            assert!(verify_payload(r.group, r.object, &r.payload).is_some());
            (r.group, r.object)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_are_relayed_as_datagrams() {
    let relay = Relay::start().await;
    let alice = relay.client("r1", "alice", PUB).await;
    let (mut audio, task) = publish_datagrams(&alice);
    common::media::published(&relay, "r1", "alice").await;
    let bob = relay.client("r1", "bob", SUB).await;
    let (sub, mut rx) = subscription(&bob, "r1", "alice", "audio").await;
    // And one over WebTransport (HTTP/3 datagrams).
    let dave = client::connect(&relay.webtransport(), Some(&relay.token("r1", "dave", SUB)))
        .await
        .unwrap();
    let (_wt, mut wt_rx) = subscription(&dave, "r1", "alice", "audio").await;
    let quiet = Duration::from_millis(400);

    // A burst: every datagram of a group written at once (a reader that kept only the
    // latest would lose all but one).
    for g in 0..2 {
        for o in 0..5 {
            send(&mut audio, g, o);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let want: Vec<_> = (0..2).flat_map(|g| (0..5).map(move |o| (g, o))).collect();
    assert_eq!(locations(&drain(&mut rx, quiet).await), want);
    assert_eq!(locations(&drain(&mut wt_rx, quiet).await), want);

    // A late joiner: the newest group's datagrams from its first, then the live ones.
    send(&mut audio, 2, 0);
    send(&mut audio, 2, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let carol = relay.client("r1", "carol", SUB).await;
    let (_late, mut late_rx) = subscription(&carol, "r1", "alice", "audio").await;
    send(&mut audio, 2, 2);
    // Datagrams promise no order (the relay sends them in order, but the joiner's client may
    // hold one that overtook the SUBSCRIBE_OK): every one, once.
    let mut late = locations(&drain(&mut late_rx, quiet).await);
    late.sort();
    assert_eq!(late, [(2, 0), (2, 1), (2, 2)]);
    let mut live = locations(&drain(&mut rx, quiet).await);
    live.sort();
    assert_eq!(live, [(2, 0), (2, 1), (2, 2)]);

    // The track ends: no stream was ever opened for it.
    drop(audio);
    drop(task);
    let (status, streams) = publish_done(&sub, Duration::from_secs(5)).await;
    assert_eq!((status, streams), (0x2, 0));
    relay.stop().await;
}
