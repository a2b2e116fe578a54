//! Requests the relay bounds or answers that used to pile up: namespaces per session and per
//! room (REQUEST_ERROR 0x9), a publisher that never answers the relay's SUBSCRIBE (0x2 TIMEOUT
//! after `upstream_timeout_ms`, and its replacement serves at once), SUBSCRIBE_TRACKS (0x3).

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::media::{drain, published, watch, write_group};
use common::{Relay, PUB, SUB};
use moq_transport::coding::{Encode, KeyValuePairs, TrackNamespacePrefix};
use moq_transport::message::{Message, SubscribeTracks};
use moq_transport::serve::{self, SubgroupsWriter};
use moq_transport::session::{PublishNamespace, Publisher};
use roomcast::client::{self, namespace, Client};
use roomcast::config::Config;

/// Sends PUBLISH_NAMESPACE for `parts` and waits for the relay's answer.
async fn announce(c: &Client, parts: &[&str]) -> Result<PublishNamespace, String> {
    let ns = namespace(parts).unwrap();
    let pns = c
        .publisher
        .clone()
        .publish_namespace_start(ns)
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), pns.ok()).await {
        Ok(Ok(())) => Ok(pns),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => panic!("PUBLISH_NAMESPACE {parts:?} was never answered"),
    }
}

/// Publishes `track` under `parts` once the relay accepted the namespace, serving every
/// SUBSCRIBE for it.
async fn publish_accepted(
    c: &Client,
    parts: &[&str],
    track: &str,
) -> (SubgroupsWriter, tokio::task::JoinHandle<()>) {
    let (mut writer, _requests, reader) = serve::Tracks::new(namespace(parts).unwrap()).produce();
    let subgroups = writer.create(track).unwrap().subgroups().unwrap();
    let pns = announce(c, parts).await.expect("accepted");
    let task = tokio::spawn(async move {
        let _writer = writer;
        while let Ok(Some(s)) = pns.subscribed().await {
            tokio::spawn(Publisher::serve_subscribe(s, reader.clone()));
        }
    });
    (subgroups, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_bounded_per_session_and_per_room() {
    let relay = Relay::start_with(Config {
        max_namespaces_per_session: Some(3),
        max_namespaces_per_room: Some(4),
        ..Default::default()
    })
    .await;
    // One session announcing namespace after namespace under its own.
    let alice = relay.client("r1", "alice", PUB).await;
    let mut held = vec![];
    for i in 0..3 {
        let n = i.to_string();
        held.push(
            announce(&alice, &["room", "r1", "alice", &n])
                .await
                .unwrap(),
        );
    }
    let err = announce(&alice, &["room", "r1", "alice", "3"])
        .await
        .err()
        .unwrap();
    common::refused_with(&err, 0x9, "too_many_namespaces");
    // Ending one frees its place.
    drop(held.pop());
    let mut retried = None;
    for _ in 0..50 {
        match announce(&alice, &["room", "r1", "alice", "3"]).await {
            Ok(p) => {
                retried = Some(p);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    held.push(retried.expect("a namespace ended frees the session's place"));
    // The room has 3 of its 4; bob takes the last, carol is refused, and another room is not
    // affected.
    let bob = relay.client("r1", "bob", PUB).await;
    let _b = announce(&bob, &["room", "r1", "bob"]).await.unwrap();
    let carol = relay.client("r1", "carol", PUB).await;
    let err = announce(&carol, &["room", "r1", "carol"])
        .await
        .err()
        .unwrap();
    common::refused_with(&err, 0x9, "too_many_namespaces");
    let dave = relay.client("r2", "dave", PUB).await;
    let (mut w, _t) = publish_accepted(&dave, &["room", "r2", "dave"], "video").await;
    let eve = relay.client("r2", "eve", SUB).await;
    let mut rx = watch(&eve, "r2", "dave", "video").await;
    write_group(&mut w, 0, 3, 100);
    assert_eq!(drain(&mut rx, Duration::from_secs(1)).await.len(), 3);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_never_answers_costs_a_timeout_and_its_replacement_serves_at_once() {
    let relay = Relay::start_with(Config {
        upstream_timeout_ms: Some(3000),
        ..Default::default()
    })
    .await;
    // Alice's first session announces and then never answers a SUBSCRIBE.
    let silent = relay.client("r1", "alice", PUB).await;
    let _silent_ns = announce(&silent, &["room", "r1", "alice"]).await.unwrap();
    let bob = relay.client("r1", "bob", SUB).await;
    let ns = || namespace(&["room", "r1", "alice"]).unwrap();
    let hung = {
        let bob_ns = ns();
        let subscriber = bob.subscriber.clone();
        tokio::spawn(async move {
            let (writer, _reader) = serve::Track::new(bob_ns, "video").produce();
            let mut subscriber = subscriber;
            tokio::time::timeout(Duration::from_secs(10), subscriber.subscribe_open(writer))
                .await
                .map(|r| r.map(|_| ()))
        })
    };
    // While bob's subscription waits on the silent session, alice reconnects and publishes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let alice = relay.client("r1", "alice", PUB).await;
    let (mut w, _t) = publish_accepted(&alice, &["room", "r1", "alice"], "video").await;
    published(&relay, "r1", "alice").await;
    let carol = relay.client("r1", "carol", SUB).await;
    let (sub, reader) = tokio::time::timeout(
        Duration::from_secs(2),
        client::subscribe(&carol, ns(), "video"),
    )
    .await
    .expect("a subscriber to the new session waited on the old one's pending SUBSCRIBE")
    .expect("subscribed to the new session");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _keep = sub;
        let _ = client::read_track(reader, tx).await;
    });
    write_group(&mut w, 0, 5, 100);
    assert_eq!(drain(&mut rx, Duration::from_secs(1)).await.len(), 5);
    // Bob's subscription to the silent session is answered TIMEOUT, not left hanging.
    let answer = hung.await.unwrap().expect("bob's SUBSCRIBE hung");
    let err = answer.expect_err("the silent publisher cannot have served it");
    // The client maps REQUEST_ERROR 0x2 (and only it) to `Timeout`.
    assert!(
        matches!(err, serve::ServeError::Timeout),
        "answered TIMEOUT: {err:?}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_tracks_is_answered_not_supported() {
    let relay = Relay::start().await;
    let bob = relay.client("r1", "bob", SUB).await;
    // moq-transport has no client call for SUBSCRIBE_TRACKS: write it on a request stream.
    let (mut send, mut recv) = bob.connection().open_bi().await.unwrap();
    let msg = Message::SubscribeTracks(SubscribeTracks {
        id: 0,
        track_namespace_prefix: TrackNamespacePrefix::from_utf8_path("room/r1"),
        params: KeyValuePairs::default(),
    });
    let mut buf = BytesMut::new();
    msg.encode(&mut buf).unwrap();
    send.write_all(&buf).await.unwrap();
    // The answer on that stream (draft-18 §9: a request stream's REQUEST_ERROR carries no
    // request id): type 0x05, a 16-bit length, error code, retry interval, reason.
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 512];
        while let Ok(Some(n)) = recv.read(&mut chunk).await {
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("SUBSCRIBE_TRACKS was never answered");
    assert!(got.len() > 5, "no answer: {got:?}");
    let len = u16::from_be_bytes([got[1], got[2]]) as usize;
    assert_eq!(
        (got[0], got[3], len, got.len()),
        (0x05, 0x03, got.len() - 3, got.len()),
        "REQUEST_ERROR NOT_SUPPORTED: {got:?}"
    );
    let reason = String::from_utf8_lossy(&got[6..]);
    assert!(reason.contains("SUBSCRIBE_TRACKS"), "{reason}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_comes_back_at_once_is_served() {
    // The last subscriber leaves and returns within the upstream's linger time (a page
    // reload): the relay's upstream SUBSCRIBE is still open, so it must be reused, not sent
    // again (the publisher's stack refuses a second SUBSCRIBE to the same track).
    let relay = Relay::start().await;
    let alice = relay.client("r1", "alice", PUB).await;
    let (mut w, _t) = publish_accepted(&alice, &["room", "r1", "alice"], "video").await;
    let bob = relay.client("r1", "bob", SUB).await;
    let mut rx = watch(&bob, "r1", "alice", "video").await;
    write_group(&mut w, 0, 2, 100);
    assert_eq!(drain(&mut rx, Duration::from_millis(500)).await.len(), 2);
    bob.close();
    drop(bob);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let carol = relay.client("r1", "carol", SUB).await;
    let ns = namespace(&["room", "r1", "alice"]).unwrap();
    let (sub, reader) = client::subscribe(&carol, ns, "video")
        .await
        .expect("subscribing again within the linger time");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _keep = sub;
        let _ = client::read_track(reader, tx).await;
    });
    write_group(&mut w, 1, 3, 100);
    let got = drain(&mut rx, Duration::from_secs(1)).await;
    assert_eq!(got.iter().filter(|o| o.group == 1).count(), 3, "{got:?}");
    relay.stop().await;
}
