//! Session slots cannot be hoarded: a connection that never completes SETUP is closed after
//! the (short) pre-auth window, one client address holds a bounded number of sessions while
//! another address still gets in, and one identity's newest session replaces its oldest.
//! Logging out ends the media sessions that login's joins started; a password change ends
//! every one of the user's.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::http::json;
use common::{Relay, SUB};
use roomcast::client;
use roomcast::config::Config;
use serde_json::json as j;

fn from(last: u8) -> Option<SocketAddr> {
    Some(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
        0,
    ))
}

fn closed_with(e: &quinn::ConnectionError, code: u32, reason: &str) {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, code.into(), "{e}");
            assert!(
                String::from_utf8_lossy(&c.reason).starts_with(reason),
                "{e}"
            );
        }
        other => panic!("expected the relay's {reason:?}, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_setup_is_closed_after_the_preauth_window() {
    let relay = Relay::start_with(Config {
        setup_timeout_ms: Some(400),
        ..Default::default()
    })
    .await;
    // A QUIC connection that says nothing: the slot it takes is given back soon.
    let idle = client::dial(&relay.quic(), None).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(3), idle.closed())
        .await
        .expect("still open long after the SETUP window");
    closed_with(&closed, 0x2, "setup_timeout");
    // A client that does speak gets its session.
    let ok = relay.client("r1", "bob", SUB).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(800), ok.closed())
            .await
            .is_err()
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_a_bounded_number_of_sessions() {
    let relay = Relay::start_with(Config {
        max_sessions_per_address: Some(2),
        ..Default::default()
    })
    .await;
    let t = relay.quic();
    let mut held = vec![];
    for i in 0..2 {
        let token = relay.token("r1", &format!("bot{i}"), SUB);
        held.push(
            client::connect_from(&t, Some(&token), from(66))
                .await
                .unwrap(),
        );
    }
    // The third from that address is refused, with the reason on the wire...
    let token = relay.token("r1", "bot2", SUB);
    let refused = match client::connect_from(&t, Some(&token), from(66)).await {
        Err(e) => format!("{e:#}"),
        Ok(c) => tokio::time::timeout(Duration::from_secs(3), c.closed())
            .await
            .expect("third session from one address accepted")
            .to_string(),
    };
    assert!(
        refused.contains("too_many_sessions") && refused.contains("(code 7)"),
        "{refused}"
    );
    // ... while a neighbour on another address connects and stays.
    let token = relay.token("r1", "neighbour", SUB);
    let neighbour = client::connect_from(&t, Some(&token), from(1))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(800), neighbour.closed())
            .await
            .is_err()
    );
    // A slot freed is a slot again.
    held.remove(0).close();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let token = relay.token("r1", "bot3", SUB);
    let again = client::connect_from(&t, Some(&token), from(66))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(800), again.closed())
            .await
            .is_err()
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identitys_newest_session_replaces_its_oldest() {
    let relay = Relay::start_with(Config {
        max_sessions_per_identity: Some(2),
        ..Default::default()
    })
    .await;
    let token = relay.token("r1", "alice", SUB);
    let first = client::connect(&relay.quic(), Some(&token)).await.unwrap();
    let second = client::connect(&relay.quic(), Some(&token)).await.unwrap();
    let third = client::connect(&relay.quic(), Some(&token)).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(3), first.closed())
        .await
        .expect("the oldest session was kept");
    closed_with(&closed, 0x7, "replaced:");
    for c in [&second, &third] {
        assert!(tokio::time::timeout(Duration::from_millis(500), c.closed())
            .await
            .is_err());
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_its_media_sessions_and_a_password_change_ends_all() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let room = relay.room(&host, j!({"name": "class"})).await;
    let laptop = relay.user("alice").await;
    let creds = j!({"username": "alice", "password": "password123"});
    let phone = json(relay.http(), "POST", "/api/login", None, creds).await;
    let phone = phone.json()["token"].as_str().unwrap().to_owned();
    let media = |login: String| {
        let relay = &relay;
        let room = room.clone();
        async move {
            let r = relay.join(&login, &room, j!({})).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            r.json()["token"].as_str().unwrap().to_owned()
        }
    };
    let (on_laptop, on_phone) = (media(laptop.clone()).await, media(phone.clone()).await);
    let a = client::connect(&relay.quic(), Some(&on_laptop))
        .await
        .unwrap();
    let b = client::connect(&relay.quic(), Some(&on_phone))
        .await
        .unwrap();
    let chat = format!("/api/rooms/{room}/chat");
    let say = |token: String| {
        let (http, chat) = (relay.http(), chat.clone());
        async move {
            let r = json(http, "POST", &chat, Some(&token), j!({"text": "hi"})).await;
            (r.status, r.code())
        }
    };

    let r = json(relay.http(), "POST", "/api/logout", Some(&laptop), j!(null)).await;
    assert_eq!(r.status, 204);
    let closed = tokio::time::timeout(Duration::from_secs(3), a.closed())
        .await
        .expect("the laptop's media session outlived its logout");
    closed_with(&closed, 0x2, "token_revoked: logged out");
    assert_eq!(say(on_laptop.clone()).await, (403, "token_revoked".into()));
    // The phone's login, and its media session, go on.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), b.closed())
            .await
            .is_err(),
        "another login's media session was closed"
    );
    assert_eq!(say(on_phone.clone()).await.0, 201);

    let change = j!({"old_password": "password123", "new_password": "another-pass-456"});
    let r = json(
        relay.http(),
        "PUT",
        "/api/me/password",
        Some(&phone),
        change,
    )
    .await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let closed = tokio::time::timeout(Duration::from_secs(3), b.closed())
        .await
        .expect("a media session outlived a password change");
    closed_with(&closed, 0x2, "token_revoked: password changed");
    assert_eq!(say(on_phone).await, (403, "token_revoked".into()));
    relay.stop().await;
}
