//! REQUEST_UPDATE on a subscription (draft-18 §9.10), read on the wire by a client over real
//! QUIC: Forward State 0 pauses delivery and 1 resumes it at the newest group's first object;
//! a new filter moves the end group, and the subscription ends there with PUBLISH_DONE 0x3.

mod common;

use std::time::Duration;

use common::media::{alice_video, drain, publish_done, write_group};
use common::{Relay, SUB};
use moq_transport::coding::{KeyValuePairs, Location};
use moq_transport::message::{FilterType, SubscriptionFilter};
use roomcast::client::{self, namespace, Received};

fn locations(got: &[Received]) -> Vec<(u64, u64)> {
    got.iter().map(|r| (r.group, r.object)).collect()
}

fn forward(on: bool) -> KeyValuePairs {
    let mut p = KeyValuePairs::default();
    p.set_forward(on);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_update_pauses_resumes_and_ends_a_subscription() {
    let relay = Relay::start().await;
    let (_alice, mut video, _task) = alice_video(&relay).await;
    let bob = relay.client("r1", "bob", SUB).await;
    let ns = namespace(&["room", "r1", "alice"]).unwrap();
    let (sub, reader) = client::subscribe(&bob, ns, "video").await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(client::read_track(reader, tx));
    let quiet = Duration::from_millis(300);

    write_group(&mut video, 0, 2, 200);
    assert_eq!(locations(&drain(&mut rx, quiet).await), [(0, 0), (0, 1)]);

    // Forward 0: nothing more goes out.
    sub.update(forward(false)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    write_group(&mut video, 1, 2, 200);
    write_group(&mut video, 2, 2, 200);
    assert_eq!(locations(&drain(&mut rx, quiet).await), []);

    // Forward 1: the newest group from its first object, then on as it arrives.
    sub.update(forward(true)).await.unwrap();
    assert_eq!(locations(&drain(&mut rx, quiet).await), [(2, 0), (2, 1)]);
    write_group(&mut video, 3, 2, 200);
    assert_eq!(locations(&drain(&mut rx, quiet).await), [(3, 0), (3, 1)]);

    // A filter that ends at group 5: groups 4 and 5, then PUBLISH_DONE SUBSCRIPTION_ENDED.
    let mut range = KeyValuePairs::default();
    range
        .set_subscription_filter(&SubscriptionFilter {
            filter_type: FilterType::AbsoluteRange,
            start_location: Some(Location::new(4, 0)),
            end_group_id: Some(1),
        })
        .unwrap();
    sub.update(range).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for g in 4..7 {
        write_group(&mut video, g, 2, 200);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(
        locations(&drain(&mut rx, quiet).await),
        [(4, 0), (4, 1), (5, 0), (5, 1)]
    );
    let (status, streams) = publish_done(&sub, Duration::from_secs(3)).await;
    assert_eq!(status, 0x3, "PUBLISH_DONE status");
    // Groups 0, 2, 3, 4 and 5 went out, each on its own stream.
    assert_eq!(streams, 5, "PUBLISH_DONE stream count");
    relay.stop().await;
}

/// A flood of REQUEST_UPDATEs (more than 20 in a second) ends the subscription with
/// PUBLISH_DONE UPDATE_FAILED (0x8); the relay goes on serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_updates_ends_the_subscription() {
    let relay = Relay::start().await;
    let (_alice, mut video, _task) = alice_video(&relay).await;
    let bob = relay.client("r1", "bob", SUB).await;
    let ns = namespace(&["room", "r1", "alice"]).unwrap();
    let (sub, reader) = client::subscribe(&bob, ns.clone(), "video").await.unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(client::read_track(reader, tx));
    // Empty updates (each would be answered REQUEST_OK): past the rate they fail.
    for _ in 0..40 {
        let _ = sub.update(KeyValuePairs::default()).await;
    }
    // The relay answers the update that failed with REQUEST_ERROR, then ends the subscription
    // with PUBLISH_DONE UPDATE_FAILED. The subscription ends either way; the client crate
    // drops the PUBLISH_DONE when the REQUEST_ERROR reached it first, so its code is checked
    // when it arrived.
    tokio::time::timeout(Duration::from_secs(3), sub.closed())
        .await
        .expect("the subscription never ended")
        .ok();
    if let Some(done) = sub.publish_done() {
        assert_eq!(done.status_code, 0x8, "PUBLISH_DONE status");
    }
    let carol = relay.client("r1", "carol", SUB).await;
    let (_other, reader) = client::subscribe(&carol, ns, "video").await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(client::read_track(reader, tx));
    write_group(&mut video, 0, 2, 200);
    assert_eq!(
        locations(&drain(&mut rx, Duration::from_millis(300)).await),
        [(0, 0), (0, 1)]
    );
    relay.stop().await;
}
