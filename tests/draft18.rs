//! MoQ Transport draft-18 relay behaviour beyond the live default, read on the wire by a
//! client over real QUIC: subscription filters (§5.1.2) and Forward State.

mod common;

use std::time::Duration;

use common::media::{alice_video, drain, open_group, publish_done, write_group};
use common::{refused_with, Relay, SUB};
use moq_transport::coding::{KeyValuePairs, Location};
use moq_transport::message::{FilterType, SubscriptionFilter};
use moq_transport::session::Subscribe;
use roomcast::client::{self, namespace, synthetic_payload, Client, Received};
use tokio::sync::mpsc::UnboundedReceiver;

/// SUBSCRIBE parameters carrying `filter` (and Forward State 0 when `forward` is false).
fn filter(kind: FilterType, start: Option<(u64, u64)>, end_delta: Option<u64>) -> KeyValuePairs {
    let mut params = KeyValuePairs::default();
    params
        .set_subscription_filter(&SubscriptionFilter {
            filter_type: kind,
            start_location: start.map(|(g, o)| Location::new(g, o)),
            end_group_id: end_delta,
        })
        .unwrap();
    params
}

/// Subscribes to alice's video in r1 with `params`; objects arrive on the receiver.
async fn watch_with(
    c: &Client,
    params: KeyValuePairs,
) -> anyhow::Result<(Subscribe, UnboundedReceiver<Received>)> {
    let ns = namespace(&["room", "r1", "alice"]).unwrap();
    let (sub, reader) = client::subscribe_with(c, ns, "video", params).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (etx, mut erx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(client::read_track_groups(reader, tx, etx));
    tokio::spawn(async move {
        while let Some(e) = erx.recv().await {
            eprintln!("DBG end {e:?}");
        }
    });
    Ok((sub, rx))
}

fn locations(got: &[Received]) -> Vec<(u64, u64)> {
    got.iter().map(|r| (r.group, r.object)).collect()
}

fn largest(sub: &Subscribe) -> Option<(u64, u64)> {
    sub.subscribe_ok()
        .expect("SUBSCRIBE_OK")
        .params
        .largest_object()
        .unwrap()
        .map(|l| (l.group_id, l.object_id))
}

/// Each filter starts (and ends) where the draft says, against a track whose groups 1 and 2
/// the relay holds (2 still open, at object 1): no filter at the newest group's first object,
/// Largest Object after {2, 1}, Next Group Start at {3, 0}, an Absolute Start in the past from
/// what the relay still holds, an Absolute Range up to its end group and then PUBLISH_DONE
/// SUBSCRIPTION_ENDED with the number of streams, and a range that already ended refused with
/// INVALID_RANGE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_filters_start_and_end_where_the_draft_says() {
    let relay = Relay::start().await;
    let (_alice, mut video, _task) = alice_video(&relay).await;
    // A first subscriber makes the relay subscribe upstream and cache the track.
    let first = relay.client("r1", "first", SUB).await;
    let (_first, mut first_rx) = watch_with(&first, KeyValuePairs::default()).await.unwrap();
    for g in 0..2 {
        write_group(&mut video, g, 3, 100);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut open = open_group(&mut video, 2, 2, 100);
    assert_eq!(
        drain(&mut first_rx, Duration::from_millis(300)).await.len(),
        8
    );

    // One session each (a session may subscribe to a track once); kept open to the end.
    let mut clients = vec![];
    for name in ["live", "lo", "ng", "abs", "range", "past"] {
        clients.push(relay.client("r1", name, SUB).await);
    }
    let (live, mut live_rx) = watch_with(&clients[0], KeyValuePairs::default())
        .await
        .unwrap();
    let (lo, mut lo_rx) = watch_with(&clients[1], filter(FilterType::LargestObject, None, None))
        .await
        .unwrap();
    let (_ng, mut ng_rx) = watch_with(&clients[2], filter(FilterType::NextGroupStart, None, None))
        .await
        .unwrap();
    let (_abs, mut abs_rx) = watch_with(
        &clients[3],
        filter(FilterType::AbsoluteStart, Some((1, 1)), None),
    )
    .await
    .unwrap();
    let (range, mut range_rx) = watch_with(
        &clients[4],
        filter(FilterType::AbsoluteRange, Some((2, 1)), Some(1)),
    )
    .await
    .unwrap();
    let Err(past) = watch_with(
        &clients[5],
        filter(FilterType::AbsoluteRange, Some((0, 0)), Some(0)),
    )
    .await
    else {
        panic!("a range that ended before the request must be refused");
    };
    refused_with(&past, 0x11, "invalid_range");
    assert_eq!(largest(&live), Some((2, 1)));
    assert_eq!(largest(&lo), Some((2, 1)));

    open.write(synthetic_payload(2, 2, 100)).unwrap();
    drop(open);
    for g in 3..5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        write_group(&mut video, g, 3, 100);
    }
    let quiet = Duration::from_millis(400);
    let later = |g: u64| (g..5).flat_map(|g| (0..3).map(move |o| (g, o)));
    let expect_live: Vec<_> = [(2, 0), (2, 1), (2, 2)]
        .into_iter()
        .chain(later(3))
        .collect();
    assert_eq!(locations(&drain(&mut live_rx, quiet).await), expect_live);
    let expect_lo: Vec<_> = [(2, 2)].into_iter().chain(later(3)).collect();
    assert_eq!(locations(&drain(&mut lo_rx, quiet).await), expect_lo);
    assert_eq!(
        locations(&drain(&mut ng_rx, quiet).await),
        later(3).collect::<Vec<_>>()
    );
    let expect_abs: Vec<_> = [(1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
        .into_iter()
        .chain(later(3))
        .collect();
    let mut got_abs = locations(&drain(&mut abs_rx, quiet).await);
    // Groups travel on their own streams: order holds within a group, not across them.
    got_abs.sort();
    assert_eq!(got_abs, expect_abs);
    let mut got_range = locations(&drain(&mut range_rx, quiet).await);
    got_range.sort();
    assert_eq!(got_range, vec![(2, 1), (2, 2), (3, 0), (3, 1), (3, 2)]);
    assert_eq!(
        publish_done(&range, Duration::from_secs(3)).await,
        (0x3, 2),
        "SUBSCRIPTION_ENDED after groups 2 and 3"
    );
    relay.stop().await;
}

/// Forward State 0: the subscription is accepted and delivers nothing; PUBLISH_DONE still
/// comes when the track ends, with no stream opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_zero_delivers_nothing_but_the_end() {
    let relay = Relay::start().await;
    let (_alice, mut video, _task) = alice_video(&relay).await;
    let mut params = KeyValuePairs::default();
    params.set_forward(false);
    let (q, on) = (
        relay.client("r1", "q", SUB).await,
        relay.client("r1", "on", SUB).await,
    );
    let (quiet, mut quiet_rx) = watch_with(&q, params).await.unwrap();
    let (_on, mut on_rx) = watch_with(&on, KeyValuePairs::default()).await.unwrap();
    for g in 0..3 {
        write_group(&mut video, g, 2, 100);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(drain(&mut on_rx, Duration::from_millis(300)).await.len(), 6);
    assert!(drain(&mut quiet_rx, Duration::from_millis(100))
        .await
        .is_empty());
    video.close(moq_transport::serve::ServeError::Done).unwrap();
    assert_eq!(publish_done(&quiet, Duration::from_secs(3)).await, (0x2, 0));
    relay.stop().await;
}
