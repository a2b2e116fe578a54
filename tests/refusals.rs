//! Every refusal over real QUIC: bad tokens close the session with a reason; requests outside
//! the token's scope get REQUEST_ERROR UNAUTHORIZED (0x1); malformed wire data closes the
//! session; nothing panics and the relay keeps serving others.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{eventually, Relay, PUB, SUB};
use roomcast::auth::{token::now_secs, Claims, Grant, TokenIssuer};
use roomcast::client::{self, namespace, Target};

/// Connects with `token`, waits for the relay to close the session, and checks it was refused
/// with `code`: named in the close reason the client reads (raw QUIC: CONNECTION_CLOSE 0x2;
/// WebTransport: CLOSE_WEBTRANSPORT_SESSION 0x2, or `403` to a CONNECT whose URL token does
/// not verify), and counted under that code in `roomcast_auth_failures_total`.
async fn refused(relay: &Relay, target: &Target, token: Option<&str>, code: &str) {
    let metric = format!("roomcast_auth_failures_total{{code=\"{code}\"}}");
    let before = relay.metric(&metric);
    let reason = match client::connect(target, token).await {
        Ok(c) => tokio::time::timeout(Duration::from_secs(5), c.session_closed())
            .await
            .expect("session was not closed")
            .to_string(),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        eventually(Duration::from_secs(2), || relay.metric(&metric)
            == before + 1.0)
        .await,
        "not refused as {code}: {reason}"
    );
    let wire = if target.url.scheme() != "https" {
        reason.contains("closed by peer") && reason.contains(code)
    } else if token.is_some() {
        reason.contains("403")
    } else {
        reason.contains("code=2 ") && reason.contains(code)
    };
    assert!(wire, "reason {reason:?} is not the relay's {code}");
}

fn claims(room: &str) -> Claims {
    Claims::new(
        "alice",
        room,
        [Grant::Subscribe].into(),
        Duration::from_secs(60),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_close_the_session_with_a_reason() {
    let relay = Relay::start().await;
    let t = relay.quic();
    refused(&relay, &t, None, "missing_token").await;

    let forged = TokenIssuer::new(b"not-the-server-secret-not-the-server")
        .mint(&claims("r1"))
        .unwrap();
    refused(&relay, &t, Some(&forged), "bad_signature").await;

    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("r1")).unwrap());
    let none = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
    refused(&relay, &t, Some(&none), "algorithm_not_allowed").await;

    let mut expired = claims("r1");
    expired.exp = now_secs() - 30;
    expired.nbf = now_secs() - 60;
    refused(&relay, &t, Some(&relay.token_for(expired)), "token_expired").await;

    let mut early = claims("r1");
    early.nbf = now_secs() + 60;
    refused(
        &relay,
        &t,
        Some(&relay.token_for(early)),
        "token_not_yet_valid",
    )
    .await;

    refused(&relay, &t, Some("garbage"), "malformed_token").await;
    refused(&relay, &t, Some(&"a".repeat(5000)), "malformed_token").await;

    // Over WebTransport the token comes in the URL and is checked on the CONNECT: 403.
    let wt = relay.webtransport();
    refused(&relay, &wt, Some(&forged), "bad_signature").await;
    refused(&relay, &wt, Some("garbage"), "malformed_token").await;
    // With no token in the URL the session is answered, then closed before SETUP with the
    // code and reason in CLOSE_WEBTRANSPORT_SESSION.
    refused(&relay, &wt, None, "missing_token").await;

    // The relay still serves a good session afterwards.
    let ok = relay.client("r1", "bob", SUB).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), ok.closed())
            .await
            .is_err()
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_the_token_scope_are_refused() {
    let relay = Relay::start().await;
    let alice = relay.client("a", "alice", PUB).await;
    let (_w, _t) = client::publish(
        &alice,
        namespace(&["room", "a", "alice"]).unwrap(),
        &["video"],
    )
    .unwrap();
    let other = relay.client("a2", "mallory", PUB).await;
    let (_w2, _t2) = client::publish(
        &other,
        namespace(&["room", "a2", "mallory"]).unwrap(),
        &["video"],
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Token for room a2 (a prefix trick on "a"): cannot read room a.
    let err = client::subscribe(&other, namespace(&["room", "a", "alice"]).unwrap(), "video")
        .await
        .err()
        .expect("wrong room must be refused");
    common::refused_with(&err, 0x1, "wrong_room");
    // Token for room a cannot read room a2 either.
    let err = client::subscribe(
        &alice,
        namespace(&["room", "a2", "mallory"]).unwrap(),
        "video",
    )
    .await
    .err()
    .expect("prefix trick must be refused");
    common::refused_with(&err, 0x1, "wrong_room");

    // Publishing under another participant's namespace.
    let mut publisher = alice.publisher.clone();
    let bob_ns = namespace(&["room", "a", "bob"]).unwrap();
    let announce = publisher.publish_namespace_start(bob_ns).await.unwrap();
    let err = announce
        .ok()
        .await
        .expect_err("foreign namespace must be refused");
    common::refused_with(&err, 0x1, "forbidden_namespace");

    // Subscribing without the subscribe grant.
    let chat_only = relay.client("a", "carol", &[Grant::Chat]).await;
    let err = client::subscribe(
        &chat_only,
        namespace(&["room", "a", "alice"]).unwrap(),
        "video",
    )
    .await
    .err()
    .expect("missing grant must be refused");
    common::refused_with(&err, 0x1, "missing_grant");

    // Publishing without the publish grant.
    let viewer = relay.client("a", "dave", SUB).await;
    let mut p = viewer.publisher.clone();
    let own = p
        .publish_namespace_start(namespace(&["room", "a", "dave"]).unwrap())
        .await
        .unwrap();
    assert!(
        own.ok().await.is_err(),
        "publish without grant must be refused"
    );

    // Unknown track: DOES_NOT_EXIST with a reason.
    let err = client::subscribe(
        &alice,
        namespace(&["room", "a", "nobody"]).unwrap(),
        "video",
    )
    .await
    .err()
    .expect("unknown publisher");
    assert!(err.to_string().contains("not found"), "{err}");

    assert!(relay.metric("roomcast_requests_refused") >= 5.0);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_control_data_closes_only_that_session() {
    let relay = Relay::start().await;
    let good = relay.client("r1", "alice", SUB).await;

    // A raw QUIC peer that sends garbage where SETUP belongs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let bad = client::connect(&relay.quic(), Some(&relay.token("r1", "x", SUB)))
        .await
        .unwrap();
    let mut stream = bad.transport.open_uni().await.unwrap();
    // An unknown control message type with a length that runs past the data.
    stream.write(&[0x3f, 0xff, 0xff, 0x01, 0x02]).await.unwrap();
    let _ = stream.finish();
    let reason = tokio::time::timeout(Duration::from_secs(5), bad.closed())
        .await
        .expect("bad session not closed")
        .to_string();
    assert!(!reason.is_empty());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), good.closed())
            .await
            .is_err()
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_object_drops_its_group_and_the_track_goes_on() {
    let relay = Relay::start_with(roomcast::config::Config {
        max_object_bytes: Some(10_000),
        max_group_bytes: Some(100_000),
        ..Default::default()
    })
    .await;
    let alice = relay.client("r1", "alice", PUB).await;
    let (mut w, _t) = client::publish(
        &alice,
        namespace(&["room", "r1", "alice"]).unwrap(),
        &["video"],
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let viewer = relay.client("r1", "bob", SUB).await;
    let (_sub, reader) = client::subscribe(
        &viewer,
        namespace(&["room", "r1", "alice"]).unwrap(),
        "video",
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(client::read_track(reader, tx));
    let mut g = w[0]
        .create(moq_transport::serve::Subgroup {
            group_id: 0,
            subgroup_id: 0,
            priority: 1,
        })
        .unwrap();
    g.write(client::synthetic_payload(0, 0, 1000)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    g.write(client::synthetic_payload(0, 1, 20_000)).unwrap();
    g.write(client::synthetic_payload(0, 2, 1000)).unwrap();
    let mut got = vec![];
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        got.push((r.group, r.object));
    }
    assert_eq!(
        got,
        vec![(0, 0)],
        "only the object before the oversized one is forwarded"
    );
    // The group is dropped, not the track: the next group arrives whole.
    drop(g);
    let mut g1 = w[0]
        .create(moq_transport::serve::Subgroup {
            group_id: 1,
            subgroup_id: 0,
            priority: 1,
        })
        .unwrap();
    for o in 0..2 {
        g1.write(client::synthetic_payload(1, o, 1000)).unwrap();
    }
    let mut got = vec![];
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        got.push((r.group, r.object));
    }
    assert_eq!(got, vec![(1, 0), (1, 1)]);
    relay.stop().await;
}
