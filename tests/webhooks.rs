//! Webhooks to a real HTTP receiver in the test: signatures verify (Standard Webhooks:
//! HMAC-SHA256 over `id.timestamp.body`), a room's events arrive in order, a receiver that
//! was down gets them once it is up (within the retry window), and a receiver that answers
//! slowly never delays media.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use common::http::metric;
use common::media::{watch, write_group};
use common::{Relay, PUB, SUB};
use roomcast::client::{self, namespace};
use roomcast::config::Config;
use serde_json::json;
use tokio::sync::mpsc;

const SECRET: &str = "webhook-test-secret-0123456789abcdef";

/// One request the receiver got.
#[derive(Debug)]
struct Hook {
    headers: HeaderMap,
    body: Vec<u8>,
    json: serde_json::Value,
}

/// An HTTP receiver on `addr` (port 0: any) that answers 204 after `delay`; what it gets
/// arrives on the receiver.
async fn receiver(
    addr: SocketAddr,
    delay: Duration,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Hook>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tx = Arc::new(tx);
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                tokio::time::sleep(delay).await;
                let json = serde_json::from_slice(&body).unwrap_or_default();
                let _ = tx.send(Hook {
                    headers,
                    body: body.to_vec(),
                    json,
                });
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, rx, task)
}

async fn relay_to(url: &str) -> Relay {
    Relay::start_with(Config {
        webhook_urls: vec![url.to_owned()],
        webhook_secret: Some(SECRET.into()),
        ..Default::default()
    })
    .await
}

/// Checks the hook's signature as a receiver would (its own HMAC, the spec's input).
fn verify(hook: &Hook) {
    use base64::Engine;
    let header = |k: &str| hook.headers.get(k).unwrap().to_str().unwrap().to_owned();
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    assert_eq!(hook.json["id"], id.as_str());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sent: u64 = timestamp.parse().unwrap();
    assert!(
        now.abs_diff(sent) < 300,
        "timestamp {sent} against now {now}"
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(&hook.body);
    let expected = base64::engine::general_purpose::STANDARD
        .encode(aws_lc_rs::hmac::sign(&key, &signed).as_ref());
    let signatures = header("webhook-signature");
    assert!(
        signatures
            .split(' ')
            .any(|s| s.strip_prefix("v1,") == Some(expected.as_str())),
        "signature {signatures} does not verify"
    );
    assert_eq!(header("content-type"), "application/json");
}

/// The next `n` hooks (each within `within`).
async fn next(rx: &mut mpsc::UnboundedReceiver<Hook>, n: usize, within: Duration) -> Vec<Hook> {
    let mut got = vec![];
    for _ in 0..n {
        match tokio::time::timeout(within, rx.recv()).await {
            Ok(Some(h)) => got.push(h),
            _ => panic!(
                "{} of {n} hooks arrived: {:?}",
                got.len(),
                got.iter()
                    .map(|h| h.json["type"].clone())
                    .collect::<Vec<_>>()
            ),
        }
    }
    got
}

/// A room closing when empty; bob joins it through the API, connects, publishes and
/// leaves. Returns the room id.
async fn bob_comes_and_goes(relay: &Relay) -> String {
    let host = relay.user("host").await;
    let room = relay
        .room(&host, json!({"name": "hooked", "empty_timeout_secs": 0}))
        .await;
    let bob = relay.user("bob").await;
    let token = relay.join(&bob, &room, json!({})).await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = client::connect(&relay.quic(), Some(&token)).await.unwrap();
    let (_writers, task) = client::publish(
        &session,
        namespace(&["room", &room, "bob"]).unwrap(),
        &["video"],
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    task.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(session);
    room
}

const EXPECTED: [&str; 6] = [
    "room_started",
    "participant_joined",
    "track_published",
    "track_unpublished",
    "participant_left",
    "room_finished",
];

fn kinds(hooks: &[Hook]) -> Vec<String> {
    hooks
        .iter()
        .map(|h| h.json["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_signed_and_in_order() {
    let (addr, mut rx, _server) = receiver("127.0.0.1:0".parse().unwrap(), Duration::ZERO).await;
    let relay = relay_to(&format!("http://{addr}/hooks")).await;
    let room = bob_comes_and_goes(&relay).await;
    let hooks = next(&mut rx, EXPECTED.len(), Duration::from_secs(10)).await;
    assert_eq!(kinds(&hooks), EXPECTED);
    for h in &hooks {
        verify(h);
        assert_eq!(h.json["room"], room.as_str());
    }
    assert_eq!(hooks[1].json["data"]["identity"], "bob");
    // Counted once each answer is read (the receiver hands a hook over before answering).
    let mut delivered = 0.0;
    for _ in 0..50 {
        delivered = metric(relay.http(), "roomcast_webhooks_delivered_total").await;
        if delivered == 6.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered, 6.0);
    // A tampered body no longer verifies: the check above can fail.
    let forged = Hook {
        headers: hooks[0].headers.clone(),
        body: [hooks[0].body.as_slice(), b" "].concat(),
        json: hooks[0].json.clone(),
    };
    assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| verify(&forged))).is_err());
    relay.stop().await;
}

/// A node that stops tells the webhooks that the rooms open on it finished (`node_stopped`),
/// and nothing after: the sessions it closes reopen no room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_finishes_the_rooms_open_here() {
    let (addr, mut rx, _server) = receiver("127.0.0.1:0".parse().unwrap(), Duration::ZERO).await;
    let relay = relay_to(&format!("http://{addr}/hooks")).await;
    let host = relay.user("host").await;
    let room = relay.room(&host, json!({"name": "open at stop"})).await;
    let bob = relay.user("bob").await;
    let token = relay.join(&bob, &room, json!({})).await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let _session = client::connect(&relay.quic(), Some(&token)).await.unwrap();
    let hooks = next(&mut rx, 2, Duration::from_secs(10)).await;
    assert_eq!(kinds(&hooks), ["room_started", "participant_joined"]);
    relay.stop().await;
    let finished = next(&mut rx, 1, Duration::from_secs(5)).await;
    assert_eq!(kinds(&finished), ["room_finished"]);
    verify(&finished[0]);
    assert_eq!(finished[0].json["room"], room.as_str());
    assert_eq!(finished[0].json["data"]["reason"], "node_stopped");
    assert!(
        next_or_none(&mut rx).await.is_none(),
        "a hook after room_finished"
    );
}

/// A further hook within 2 s (longer than the first retry's backoff), if any.
async fn next_or_none(rx: &mut mpsc::UnboundedReceiver<Hook>) -> Option<Hook> {
    tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_was_down_gets_the_events_when_it_is_back() {
    // The endpoint's port, with nothing listening yet.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let relay = relay_to(&format!("http://127.0.0.1:{port}/hooks")).await;
    bob_comes_and_goes(&relay).await;
    // Attempts fail meanwhile (connection refused), and are retried with backoff.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failures = metric(relay.http(), "roomcast_webhook_failures_total").await;
    assert!(failures >= 2.0, "{failures} failed attempts");
    let (_, mut rx, _server) =
        receiver(format!("127.0.0.1:{port}").parse().unwrap(), Duration::ZERO).await;
    let hooks = next(&mut rx, EXPECTED.len(), Duration::from_secs(20)).await;
    assert_eq!(kinds(&hooks), EXPECTED, "all of them, in order, once");
    hooks.iter().for_each(verify);
    assert!(next_or_none(&mut rx).await.is_none(), "an event came twice");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_never_delays_media() {
    // Every answer takes 3 s: events pile up in the endpoint's queue.
    let (addr, _rx, _server) =
        receiver("127.0.0.1:0".parse().unwrap(), Duration::from_secs(3)).await;
    let relay = relay_to(&format!("http://{addr}/hooks")).await;
    let publisher = relay.client("r1", "alice", PUB).await;
    let (mut w, _task) = client::publish(
        &publisher,
        namespace(&["room", "r1", "alice"]).unwrap(),
        &["video"],
    )
    .unwrap();
    common::media::published(&relay, "r1", "alice").await;
    // Viewers come and go (each a joined and a left for the receiver) while media flows.
    let viewer = relay.client("r1", "bob", SUB).await;
    let mut rx = watch(&viewer, "r1", "alice", "video").await;
    let mut worst = Duration::ZERO;
    for g in 0..10 {
        let _passer_by = relay.client("r1", &format!("p{g}"), SUB).await;
        let sent = Instant::now();
        write_group(&mut w[0], g, 2, 1000);
        for o in 0..2 {
            let got = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .expect("media stalled behind the slow receiver")
                .unwrap();
            assert_eq!((got.group, got.object), (g, o));
        }
        worst = worst.max(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("worst object delay with a receiver answering in 3 s: {worst:?}");
    assert!(worst < Duration::from_millis(500), "{worst:?}");
    let queued = metric(relay.http(), "roomcast_webhook_queue").await;
    assert!(
        queued >= 5.0,
        "events should be waiting for the slow receiver: {queued}"
    );
    relay.stop().await;
}
