//! MoQ Transport draft-18 relay behaviour beyond the live default, read on the wire by a
//! client over real QUIC: subscription filters (§5.1.2), Forward State, TRACK_STATUS, PUBLISH
//! and GOAWAY (FETCH: tests/fetch.rs).

mod common;

use std::time::Duration;

use common::media::{alice_video, drain, open_group, publish_done, watch_with, write_group};
use common::{refused_with, Relay, PUB, SUB};
use moq_transport::coding::{KeyValuePairs, Location};
use moq_transport::message::{FilterType, SubscriptionFilter};
use moq_transport::session::Subscribe;
use roomcast::client::{self, namespace, synthetic_payload, verify_payload, Received};

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

/// TRACK_STATUS is answered like a SUBSCRIBE that sends nothing: the largest location for a
/// relayed track, the publisher's (asked through an upstream subscription) for a track nobody
/// watches yet, and REQUEST_ERROR with the SUBSCRIBE refusal's code and reason otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_status_is_answered_from_the_relay_state() {
    let relay = Relay::start().await;
    let (_alice, mut video, _task) = alice_video(&relay).await;
    // Alice's track holds groups 4 and 5 before anyone subscribes: the relay must ask her.
    write_group(&mut video, 4, 3, 100);
    let mut open = open_group(&mut video, 5, 2, 100);
    let bob = relay.client("r1", "bob", SUB).await;
    let mut subscriber = bob.subscriber.clone();
    let status = |who: &'static str, track: &'static str| {
        let mut s = subscriber.clone();
        async move {
            let ns = namespace(&["room", "r1", who]).unwrap();
            s.track_status_request(&ns, track)
                .await
                .unwrap()
                .map(|l| l.map(|l| (l.group_id, l.object_id)))
                .map_err(|e| format!("{:#x}: {}", e.error_code, e.reason.0))
        }
    };
    assert_eq!(status("alice", "video").await, Ok(Some((5, 1))));
    open.write(synthetic_payload(5, 2, 100)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Now relayed (the status kept the upstream subscription warm): from the cache.
    let (_sub, _rx) = watch_with(&bob, KeyValuePairs::default()).await.unwrap();
    assert_eq!(status("alice", "video").await, Ok(Some((5, 2))));
    let nobody = status("nobody", "video").await.unwrap_err();
    assert!(nobody.starts_with("0x10: does_not_exist: "), "{nobody}");
    let ns = namespace(&["room", "r2", "alice"]).unwrap();
    let other = subscriber
        .track_status_request(&ns, "video")
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(other.error_code, 0x1);
    assert!(
        other.reason.0.starts_with("wrong_room: "),
        "{}",
        other.reason.0
    );
    relay.stop().await;
}

/// PUBLISH (publisher-initiated): allowed where PUBLISH_NAMESPACE is, without one; the track
/// reaches a subscriber as a relayed one does; outside the token's namespace it is refused
/// with UNAUTHORIZED and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_relayed_under_the_publish_rules() {
    let relay = Relay::start().await;
    let alice = relay.client("r1", "alice", PUB).await;
    let push = |who: &str| {
        let ns = namespace(&["room", "r1", who]).unwrap();
        let (writer, reader) = moq_transport::serve::Track::new(ns, "video").produce();
        (writer.subgroups().unwrap(), reader)
    };
    let (_foreign_writer, foreign) = push("bob");
    let refused = alice
        .publisher
        .clone()
        .publish(foreign, KeyValuePairs::default())
        .await;
    let err = match refused {
        Ok(mut p) => p
            .ok()
            .await
            .expect_err("PUBLISH outside the scope accepted"),
        Err(e) => moq_transport::serve::ServeError::from(e),
    };
    refused_with(&err, 0x1, "forbidden_namespace");

    let (mut video, reader) = push("alice");
    let mut published = alice
        .publisher
        .clone()
        .publish(reader, KeyValuePairs::default())
        .await
        .unwrap();
    published.ok().await.unwrap();
    tokio::spawn(published.serve());
    common::media::published(&relay, "r1", "alice").await;
    let bob = relay.client("r1", "bob", SUB).await;
    let (_sub, mut rx) = watch_with(&bob, KeyValuePairs::default()).await.unwrap();
    for g in 0..3 {
        write_group(&mut video, g, 2, 100);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = drain(&mut rx, Duration::from_millis(400)).await;
    assert_eq!(
        locations(&got),
        vec![(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    );
    assert!(got
        .iter()
        .all(|r| verify_payload(r.group, r.object, &r.payload).is_some()));

    // A second PUBLISH in the same namespace outlives the first.
    let ns = namespace(&["room", "r1", "alice"]).unwrap();
    let (audio_writer, audio_reader) =
        moq_transport::serve::Track::new(ns.clone(), "audio").produce();
    let mut audio = audio_writer.subgroups().unwrap();
    let mut second = alice
        .publisher
        .clone()
        .publish(audio_reader, KeyValuePairs::default())
        .await
        .unwrap();
    second.ok().await.unwrap();
    tokio::spawn(second.serve());
    video.close(moq_transport::serve::ServeError::Done).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let carol = relay.client("r1", "carol", SUB).await;
    let (_a, reader) = client::subscribe(&carol, ns, "audio").await.unwrap();
    let (tx, mut audio_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(client::read_track(reader, tx));
    write_group(&mut audio, 7, 2, 100);
    assert_eq!(
        locations(&drain(&mut audio_rx, Duration::from_millis(400)).await),
        vec![(7, 0), (7, 1)],
        "the namespace went with the first PUBLISH"
    );
    relay.stop().await;
}

/// A stopping relay sends GOAWAY (reconnect to the same URI within the drain time) to every
/// session, turns newcomers away with a reason, and closes a session still there when the
/// drain time is over with GOAWAY_TIMEOUT (0x10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_relay_sends_goaway_and_closes_late_sessions_with_goaway_timeout() {
    let relay = Relay::start().await;
    let bob = relay.client("r1", "bob", SUB).await;
    assert_eq!(bob.subscriber.goaway(), None);
    let draining = relay.server.relay.clone();
    let drain = tokio::spawn(async move { draining.drain(Duration::from_millis(1500)).await });
    assert!(
        common::eventually(Duration::from_secs(1), || bob.subscriber.goaway().is_some()).await,
        "no GOAWAY"
    );
    assert_eq!(bob.subscriber.goaway(), Some((String::new(), 1500)));
    let token = relay.token("r1", "carol", SUB);
    let turned_away = match client::connect(&relay.quic(), Some(&token)).await {
        Ok(newcomer) => tokio::time::timeout(Duration::from_secs(2), newcomer.closed())
            .await
            .expect("a newcomer during the drain must be turned away")
            .to_string(),
        Err(e) => format!("{e:#}"),
    };
    assert!(turned_away.contains("going_away: "), "{turned_away}");
    drain.await.unwrap();
    relay.server.shutdown_token().cancel();
    let closed = tokio::time::timeout(Duration::from_secs(3), bob.closed())
        .await
        .expect("a session past the drain must be closed")
        .to_string();
    assert!(
        closed.contains("goaway_timeout: ") && closed.contains("16"),
        "{closed}"
    );
}

/// A client without a token is refused at its SETUP: the session is closed with
/// UNAUTHORIZED and the reason, and the relay's control stream never shows up. (The relay now
/// checks the token before it sends its SETUP; a client cannot tell that from the order of
/// events, since a close discards stream data in flight, so this guards the refusal, not the
/// order: breaking the order does not fail it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_token_is_refused_at_its_setup() {
    let relay = Relay::start().await;
    let conn = client::dial(&relay.quic(), None).await.unwrap();
    let mut control = conn.open_uni().await.unwrap();
    let mut setup = bytes::BytesMut::new();
    let no_token = moq_transport::setup::Setup {
        params: KeyValuePairs::default(),
    };
    moq_transport::coding::Encode::encode(&no_token, &mut setup).unwrap();
    control.write_all(&setup).await.unwrap();
    // The relay's control stream never shows up: nothing was written on it.
    let theirs = tokio::time::timeout(Duration::from_secs(3), conn.accept_uni())
        .await
        .expect("the relay neither answered nor closed");
    match theirs {
        Ok(_) => {
            panic!("the relay opened its control stream (its SETUP) to a client with no token")
        }
        Err(e) => assert!(
            e.to_string().contains("missing_token"),
            "closed without the reason: {e}"
        ),
    }
    let closed = conn.close_reason().expect("closed").to_string();
    assert!(
        closed.contains("missing_token") && closed.contains("2"),
        "{closed}"
    );
    for target in [relay.quic(), relay.webtransport()] {
        let good = relay.token("r1", "bob", SUB);
        client::connect(&target, Some(&good)).await.unwrap();
    }
    relay.stop().await;
}
