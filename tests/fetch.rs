//! FETCH (draft-18 §10.12) through the relay, read on the wire by a client over real QUIC:
//! standalone, relative and absolute joining FETCH answered from the retained groups, a range
//! the relay does not hold forwarded to the publisher, and every refusal's code and reason.

mod common;

use std::time::Duration;

use common::media::{alice_video, drain, open_group, watch_with, write_group};
use common::{Relay, SUB};
use moq_transport::coding::{KeyValuePairs, Location};
use moq_transport::data::{FetchRecord, FetchRecordObject};
use moq_transport::message::{FetchType, GroupOrder, RequestErrorCode, StandaloneFetch};
use moq_transport::session::FetchOkInfo;
use roomcast::client::{namespace, synthetic_payload, verify_payload};
use roomcast::config::Config;

/// A FETCH response as the client read it: FETCH_OK's end location and end-of-track flag,
/// then every object (group, object, payload).
#[derive(Debug)]
struct Fetched {
    end: (u64, u64),
    end_of_track: bool,
    objects: Vec<(u64, u64, bytes::Bytes)>,
}

/// Reads a whole FETCH response, or the refusal read on the wire.
async fn read_fetch(mut fetch: moq_transport::session::Fetch) -> Result<Fetched, String> {
    let ok = match fetch.ok().await {
        Ok(ok) => ok,
        Err(e) => {
            return Err(match fetch.rejection() {
                Some(r) => format!("{:#x}: {}", r.error_code, r.reason.0),
                None => format!("no answer: {e}"),
            })
        }
    };
    let mut objects = vec![];
    while let Some(record) = fetch.next().await.map_err(|e| e.to_string())? {
        let FetchRecord::Object(o) = record else {
            continue;
        };
        let mut payload = bytes::BytesMut::new();
        while let Some(chunk) = fetch.read_payload_chunk(64 * 1024).await.unwrap() {
            payload.extend_from_slice(&chunk);
        }
        objects.push((o.group_id, o.object_id, payload.freeze()));
    }
    Ok(Fetched {
        end: (ok.end_location.group_id, ok.end_location.object_id),
        end_of_track: ok.end_of_track,
        objects,
    })
}

fn standalone(who: &str, from: (u64, u64), end: (u64, u64)) -> StandaloneFetch {
    StandaloneFetch {
        track_namespace: namespace(&["room", "r1", who]).unwrap(),
        track_name: "video".into(),
        start_location: Location::new(from.0, from.1),
        end_location: Location::new(end.0, end.1),
    }
}

fn ids(f: &Fetched) -> Vec<(u64, u64)> {
    f.objects.iter().map(|(g, o, _)| (*g, *o)).collect()
}

/// Standalone and joining FETCH answered from the groups the relay retains (`retained_groups`
/// = 4): whole groups ({group, 0} as the end), a range that ends mid-group, descending
/// order, a range past the largest object cut at it (FETCH_OK says where), and relative and
/// absolute joining FETCHes that end at the subscription's joining location. The publisher here
/// answers no FETCH at all (NOT_SUPPORTED), so each answer came from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_is_answered_from_the_retained_groups() {
    let relay = Relay::start_with(Config {
        retained_groups: Some(4),
        ..Default::default()
    })
    .await;
    let (_alice, mut video, _task) = alice_video(&relay).await;
    let bob = relay.client("r1", "bob", SUB).await;
    let (_live, mut live_rx) = watch_with(&bob, KeyValuePairs::default()).await.unwrap();
    for g in 0..5 {
        write_group(&mut video, g, 3, 200);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut open = open_group(&mut video, 5, 2, 200);
    assert_eq!(
        drain(&mut live_rx, Duration::from_millis(300)).await.len(),
        17
    );
    // Groups 2..=5 are retained.
    let fetcher = bob.subscriber.clone();
    let fetch = |from, end, order: Option<GroupOrder>| {
        let mut f = fetcher.clone();
        async move {
            let mut params = KeyValuePairs::default();
            if let Some(order) = order {
                params.set_group_order(order);
            }
            read_fetch(
                f.fetch(standalone("alice", from, end), params)
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let whole = fetch((2, 1), (4, 0), None).await.unwrap();
    let expect: Vec<_> = [(2, 1), (2, 2)]
        .into_iter()
        .chain((3..5).flat_map(|g| (0..3).map(move |o| (g, o))))
        .collect();
    assert_eq!(ids(&whole), expect);
    for (g, o, payload) in &whole.objects {
        assert!(verify_payload(*g, *o, payload).is_some(), "{g}/{o} altered");
    }
    assert_eq!((whole.end, whole.end_of_track), ((4, 0), false));
    let part = fetch((3, 0), (3, 2), None).await.unwrap();
    assert_eq!(ids(&part), vec![(3, 0), (3, 1)]);
    let down = fetch((3, 0), (4, 0), Some(GroupOrder::Descending))
        .await
        .unwrap();
    assert_eq!(
        ids(&down),
        vec![(4, 0), (4, 1), (4, 2), (3, 0), (3, 1), (3, 2)]
    );
    let past_largest = fetch((4, 2), (9, 0), None).await.unwrap();
    assert_eq!(ids(&past_largest), vec![(4, 2), (5, 0), (5, 1)]);
    assert_eq!(
        past_largest.end,
        (5, 2),
        "FETCH_OK ends after the largest object"
    );

    // A relative joining FETCH: two groups before the joining location, up to it.
    let carol = relay.client("r1", "carol", SUB).await;
    let (sub, _rx) = watch_with(&carol, KeyValuePairs::default()).await.unwrap();
    let joining = carol
        .subscriber
        .clone()
        .joining_fetch(
            FetchType::RelativeJoining,
            sub.info.id,
            2,
            KeyValuePairs::default(),
        )
        .await
        .unwrap();
    let joined = read_fetch(joining).await.unwrap();
    let expect: Vec<_> = (3..5)
        .flat_map(|g| (0..3).map(move |o| (g, o)))
        .chain([(5, 0), (5, 1)])
        .collect();
    assert_eq!(ids(&joined), expect);
    // An absolute joining FETCH: from group 4, up to the same joining location.
    let absolute = carol
        .subscriber
        .clone()
        .joining_fetch(
            FetchType::AbsoluteJoining,
            sub.info.id,
            4,
            KeyValuePairs::default(),
        )
        .await
        .unwrap();
    let joined = read_fetch(absolute).await.unwrap();
    assert_eq!(ids(&joined), [(4, 0), (4, 1), (4, 2), (5, 0), (5, 1)]);
    open.write(synthetic_payload(5, 2, 200)).unwrap();
    drop(fetcher);
    relay.stop().await;
}

/// A FETCH the cache cannot answer goes to the publisher, whose answer (objects or
/// REQUEST_ERROR) reaches the client; and the relay's own refusals carry their codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_beyond_the_cache_is_forwarded_and_refusals_carry_codes() {
    let relay = Relay::start().await;
    let (alice, mut video, _task) = alice_video(&relay).await;
    let bob = relay.client("r1", "bob", SUB).await;
    let (_live, mut live_rx) = watch_with(&bob, KeyValuePairs::default()).await.unwrap();
    for g in 10..14 {
        write_group(&mut video, g, 2, 100);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(
        drain(&mut live_rx, Duration::from_millis(300)).await.len(),
        8
    );
    // Alice answers FETCH herself: group 1 from her archive, and refuses anything else.
    let mut answering = alice.publisher.clone();
    answering.accept_fetch();
    tokio::spawn(async move {
        while let Some(req) = answering.fetch_requested().await {
            let range = req.resolve().await.unwrap().unwrap();
            if range.start_location.group_id != 1 {
                let _ = req.reject(RequestErrorCode::DoesNotExist, "archive: not kept");
                continue;
            }
            let mut w = req
                .respond(FetchOkInfo {
                    end_of_track: false,
                    end_location: Location::new(1, 0),
                    params: KeyValuePairs::default(),
                    track_extensions: Default::default(),
                })
                .await
                .unwrap();
            for o in 0..2 {
                let payload = synthetic_payload(1, o, 100);
                let record = FetchRecord::Object(FetchRecordObject {
                    group_id: 1,
                    subgroup_id: Some(0),
                    object_id: o,
                    publisher_priority: 128,
                    extension_headers: Default::default(),
                    payload_length: payload.len() as u64,
                });
                w.write_record(&record).await.unwrap();
                w.write_payload(&payload).await.unwrap();
            }
            w.finish().await.unwrap();
        }
    });
    let f = bob.subscriber.clone();
    let ask = |who: &'static str, from, end| {
        let mut f = f.clone();
        async move {
            let fetch = f.fetch(standalone(who, from, end), KeyValuePairs::default());
            read_fetch(fetch.await.unwrap()).await
        }
    };
    let archived = ask("alice", (1, 0), (1, 0)).await.unwrap();
    assert_eq!(ids(&archived), vec![(1, 0), (1, 1)]);
    assert!(archived
        .objects
        .iter()
        .all(|(g, o, p)| verify_payload(*g, *o, p).is_some()));
    let refused = ask("alice", (5, 0), (6, 0)).await.unwrap_err();
    assert_eq!(
        refused, "0x10: archive: not kept",
        "the publisher's own refusal"
    );
    let nobody = ask("nobody", (0, 0), (1, 0)).await.unwrap_err();
    assert!(nobody.starts_with("0x10: does_not_exist: "), "{nobody}");
    // Past the largest object the relay has seen: nothing to fetch, the relay knows.
    let future = ask("alice", (20, 0), (21, 0)).await.unwrap_err();
    assert!(future.starts_with("0x11: invalid_range: "), "{future}");
    // Another room's track: refused before anything is looked up.
    let mut other = StandaloneFetch {
        track_namespace: namespace(&["room", "r2", "alice"]).unwrap(),
        ..standalone("alice", (10, 0), (11, 0))
    };
    other.track_name = "video".into();
    let wrong_room = read_fetch(
        f.clone()
            .fetch(other, KeyValuePairs::default())
            .await
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(wrong_room.starts_with("0x1: wrong_room: "), "{wrong_room}");
    relay.stop().await;
}
