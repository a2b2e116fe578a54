//! The management plane end to end: HTTP API on a real socket, sessions on the real relay.

mod common;

use std::time::Duration;

use common::http::{json, raw};
use common::{eventually, Relay};
use moq_transport::serve::Subgroup;
use roomcast::client::{self, namespace, synthetic_payload};
use serde_json::json as j;

async fn media(relay: &Relay, token: &str) -> client::Client {
    client::connect(&relay.quic(), Some(token)).await.unwrap()
}

fn token_of(r: &common::http::Response) -> String {
    assert_eq!(
        r.status,
        200,
        "join failed: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_lifecycle_passwords_invites_and_bans() {
    let relay = Relay::start().await;
    let alice = relay.user("alice").await;
    let bob = relay.user("bob").await;
    let carol = relay.user("carol").await;
    let dave = relay.user("dave").await;
    let id = relay
        .room(
            &alice,
            j!({"name": "Maths 101", "password": "s3cret", "max_participants": 10}),
        )
        .await;

    let list = json(relay.http(), "GET", "/api/rooms", Some(&bob), j!(null)).await;
    assert_eq!(list.json()["rooms"][0]["room"]["id"], id.as_str());
    assert_eq!(list.json()["rooms"][0]["room"]["has_password"], true);
    assert!(list.json()["rooms"][0]["room"]
        .get("password_hash")
        .is_none());

    // Wrong and missing passwords are refused; the right one admits bob as a participant.
    assert_eq!(
        relay.join(&bob, &id, j!({"password": "nope"})).await.code(),
        "wrong_password"
    );
    assert_eq!(relay.join(&bob, &id, j!({})).await.code(), "wrong_password");
    let joined = relay.join(&bob, &id, j!({"password": "s3cret"})).await;
    assert_eq!(joined.json()["role"], "participant");
    let bob_media = media(&relay, &token_of(&joined)).await;
    let host_media = media(&relay, &token_of(&relay.join(&alice, &id, j!({})).await)).await;
    assert!(
        eventually(Duration::from_secs(2), || relay
            .server
            .relay
            .access()
            .present(&id)
            .len()
            == 2)
        .await
    );
    let room = json(
        relay.http(),
        "GET",
        &format!("/api/rooms/{id}"),
        Some(&alice),
        j!(null),
    )
    .await;
    assert_eq!(room.json()["participants"].as_array().unwrap().len(), 2);

    // Only moderators update; the host can.
    let r = json(
        relay.http(),
        "PATCH",
        &format!("/api/rooms/{id}"),
        Some(&bob),
        j!({"name": "x"}),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "not_moderator"));
    let r = json(
        relay.http(),
        "PATCH",
        &format!("/api/rooms/{id}"),
        Some(&alice),
        j!({"name": "Maths 102"}),
    )
    .await;
    assert_eq!(r.json()["room"]["name"], "Maths 102");

    // An invite works once, without the password, with its role.
    let inv = json(
        relay.http(),
        "POST",
        &format!("/api/rooms/{id}/invites"),
        Some(&alice),
        j!({"role": "viewer"}),
    )
    .await;
    assert_eq!(inv.status, 201);
    let invite = inv.json()["invite"].as_str().unwrap().to_owned();
    let r = relay.join(&carol, &id, j!({"invite": invite})).await;
    assert_eq!(r.json()["role"], "viewer");
    assert_eq!(
        relay.join(&dave, &id, j!({"invite": invite})).await.code(),
        "invite_used"
    );
    // An expired invite never works.
    let inv = json(
        relay.http(),
        "POST",
        &format!("/api/rooms/{id}/invites"),
        Some(&alice),
        j!({"ttl_secs": 1}),
    )
    .await;
    let expired = inv.json()["invite"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Refused by the token check (past exp + 2 s leeway) or by the store's expiry check.
    let r = relay.join(&dave, &id, j!({"invite": expired})).await;
    assert!(
        matches!(
            (r.status, r.code().as_str()),
            (401, "token_expired") | (403, "invite_used")
        ),
        "expired invite accepted: {} {}",
        r.status,
        r.code()
    );

    // A ban closes bob's session, refuses his rejoin and his old token at the relay.
    let r = json(
        relay.http(),
        "PUT",
        &format!("/api/rooms/{id}/bans/bob"),
        Some(&alice),
        j!({"reason": "spam"}),
    )
    .await;
    assert_eq!(r.status, 200);
    // (The client may observe its own close before the relay's reason arrives, so the
    // relay's side is checked: bob is gone, and his old token is refused as banned.)
    tokio::time::timeout(Duration::from_secs(2), bob_media.closed())
        .await
        .expect("banned session stays open");
    assert!(
        eventually(Duration::from_secs(2), || !relay
            .server
            .relay
            .access()
            .present(&id)
            .contains(&"bob".to_owned()))
        .await
    );
    assert_eq!(
        relay
            .join(&bob, &id, j!({"password": "s3cret"}))
            .await
            .code(),
        "banned"
    );
    let banned = r#"roomcast_auth_failures_total{code="banned"}"#;
    let before = relay.metric(banned);
    if let Ok(c) = client::connect(&relay.quic(), Some(&token_of(&joined))).await {
        tokio::time::timeout(Duration::from_secs(2), c.closed())
            .await
            .expect("banned token admitted");
    }
    assert_eq!(relay.metric(banned), before + 1.0);

    // Deleting the room closes every session in it.
    let r = json(
        relay.http(),
        "DELETE",
        &format!("/api/rooms/{id}"),
        Some(&alice),
        j!(null),
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), host_media.closed())
            .await
            .is_ok()
    );
    let r = json(
        relay.http(),
        "GET",
        &format!("/api/rooms/{id}"),
        Some(&alice),
        j!(null),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (404, "unknown_room"));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classroom_grant_and_revoke_publish_live_and_kick() {
    let relay = Relay::start().await;
    let teacher = relay.user("teacher").await;
    let student = relay.user("student").await;
    let watcher = relay.user("watcher").await;
    let id = relay
        .room(&teacher, j!({"name": "class", "mode": "classroom"}))
        .await;
    let s_join = relay.join(&student, &id, j!({})).await;
    assert_eq!(s_join.json()["role"], "viewer");
    let s_token = token_of(&s_join);
    let w_token = token_of(&relay.join(&watcher, &id, j!({})).await);
    let s_media = media(&relay, &s_token).await;
    let w_media = media(&relay, &w_token).await;
    let ns = namespace(&["room", &id, "student"]).unwrap();

    // A viewer's publish is refused by the relay.
    let mut p = s_media.publisher.clone();
    let first = p.publish_namespace_start(ns.clone()).await.unwrap();
    assert!(first.ok().await.is_err(), "viewer must not publish");
    drop(first);

    // Raise hand -> the teacher sees the queue -> grants the floor, no reconnect.
    let r = json(
        relay.http(),
        "POST",
        &format!("/api/rooms/{id}/hand"),
        Some(&s_token),
        j!({"raised": true}),
    )
    .await;
    assert_eq!(r.json()["hands"], j!(["student"]));
    let r = json(
        relay.http(),
        "GET",
        &format!("/api/rooms/{id}/hands"),
        Some(&teacher),
        j!(null),
    )
    .await;
    assert_eq!(r.json()["hands"], j!(["student"]));
    let r = json(
        relay.http(),
        "POST",
        &format!("/api/rooms/{id}/participants/student/floor"),
        Some(&teacher),
        j!({"granted": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (mut w, _announce) = client::publish(&s_media, ns.clone(), &["video"]).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_sub, reader) = client::subscribe(&w_media, ns.clone(), "video")
        .await
        .expect("student now publishes");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(client::read_track(reader, tx));
    let mut g = w[0]
        .create(Subgroup {
            group_id: 0,
            subgroup_id: 0,
            priority: 1,
        })
        .unwrap();
    g.write(synthetic_payload(0, 0, 500)).unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .unwrap()
        .is_some());

    // Revoke: forwarding stops within a second.
    let r = json(
        relay.http(),
        "POST",
        &format!("/api/rooms/{id}/participants/student/floor"),
        Some(&teacher),
        j!({"granted": false}),
    )
    .await;
    assert_eq!(r.status, 200);
    let revoked_at = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    while rx.try_recv().is_ok() {}
    for o in 1..20 {
        g.write(synthetic_payload(0, o, 500)).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let late = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(
        !matches!(late, Ok(Some(_))),
        "objects still forwarded {:?} after revoke",
        revoked_at.elapsed()
    );

    // Events tell the story.
    let ev = json(
        relay.http(),
        "GET",
        &format!("/api/rooms/{id}/events"),
        Some(&teacher),
        j!(null),
    )
    .await;
    let kinds: Vec<String> = ev.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    for k in [
        "joined",
        "hand_raised",
        "floor_granted",
        "track_published",
        "floor_revoked",
        "track_unpublished",
    ] {
        assert!(kinds.iter().any(|x| x == k), "missing event {k}: {kinds:?}");
    }

    // Kick closes the session.
    let r = json(
        relay.http(),
        "POST",
        &format!("/api/rooms/{id}/participants/watcher/kick"),
        Some(&teacher),
        j!(null),
    )
    .await;
    assert_eq!(r.json()["sessions_closed"], 1);
    tokio::time::timeout(Duration::from_secs(2), w_media.closed())
        .await
        .expect("kicked session open");
    assert!(
        eventually(Duration::from_secs(2), || !relay
            .server
            .relay
            .access()
            .present(&id)
            .contains(&"watcher".to_owned()))
        .await
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_room_closes_after_its_timeout() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let id = relay
        .room(&host, j!({"name": "brief", "empty_timeout_secs": 1}))
        .await;
    let m = media(&relay, &token_of(&relay.join(&host, &id, j!({})).await)).await;
    assert!(
        eventually(Duration::from_secs(2), || relay
            .metric("roomcast_rooms_open")
            == 1.0)
        .await
    );
    drop(m);
    let get = |relay: &Relay| {
        let (addr, id, host) = (relay.http(), id.clone(), host.clone());
        async move {
            json(
                addr,
                "GET",
                &format!("/api/rooms/{id}"),
                Some(&host),
                j!(null),
            )
            .await
            .json()
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&relay).await["open"], true, "closed before its timeout");
    assert!(
        eventually(Duration::from_secs(5), || relay
            .metric("roomcast_rooms_open")
            == 0.0)
        .await
    );
    assert_eq!(get(&relay).await["open"], false);
    assert_eq!(relay.metric("roomcast_sessions"), 0.0);
    relay.stop().await;
}

const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0xF8, 0xCF, 0xC0, 0xF0,
    0x1F, 0x00, 0x05, 0x00, 0x01, 0xFF, 0x89, 0x99, 0x3D, 0x1D, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_with_emoji_images_history_and_limits() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let id = relay.room(&host, j!({"name": "chat"})).await;
    let t = token_of(&relay.join(&host, &id, j!({})).await);
    let chat = format!("/api/rooms/{id}/chat");

    let r = json(
        relay.http(),
        "POST",
        &chat,
        Some(&t),
        j!({"text": "hello 👋🏽 wörld"}),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["message"]["text"], "hello 👋🏽 wörld");

    // An image round-trips byte-exact; a non-image is refused; so is an oversized one.
    let up = raw(
        relay.http(),
        "POST",
        &format!("/api/rooms/{id}/attachments"),
        Some(&t),
        "application/octet-stream",
        PNG,
    )
    .await;
    assert_eq!(up.status, 201, "{}", String::from_utf8_lossy(&up.body));
    assert_eq!(up.json()["mime"], "image/png");
    let att = up.json()["id"].as_str().unwrap().to_owned();
    let r = json(
        relay.http(),
        "POST",
        &chat,
        Some(&t),
        j!({"attachment": att}),
    )
    .await;
    assert_eq!(r.status, 201);
    let back = raw(
        relay.http(),
        "GET",
        &format!("/api/attachments/{att}"),
        Some(&t),
        "",
        b"",
    )
    .await;
    assert_eq!(back.body, PNG);
    assert!(back
        .headers
        .to_ascii_lowercase()
        .contains("content-type: image/png"));
    let txt = raw(
        relay.http(),
        "POST",
        &format!("/api/rooms/{id}/attachments"),
        Some(&t),
        "image/png",
        b"just text, not a picture",
    )
    .await;
    assert_eq!((txt.status, txt.code().as_str()), (415, "not_an_image"));
    let mut big = PNG.to_vec();
    big.resize(3 * 1024 * 1024, 0);
    let r = raw(
        relay.http(),
        "POST",
        &format!("/api/rooms/{id}/attachments"),
        Some(&t),
        "image/png",
        &big,
    )
    .await;
    assert_eq!(r.status, 413);

    // Too long, empty, and unknown-attachment messages are refused.
    let r = json(
        relay.http(),
        "POST",
        &chat,
        Some(&t),
        j!({"text": "x".repeat(2001)}),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (422, "text_too_long"));
    let r = json(relay.http(), "POST", &chat, Some(&t), j!({"text": "  "})).await;
    assert_eq!(r.code(), "empty_message");

    // History pages newest first with a `before` cursor, no gaps or repeats.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = json(
            relay.http(),
            "POST",
            &chat,
            Some(&t),
            j!({"text": format!("m{i}")}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    let mut seen = vec![];
    let mut before: Option<i64> = None;
    loop {
        let q = match before {
            Some(b) => format!("{chat}?limit=3&before={b}"),
            None => format!("{chat}?limit=3"),
        };
        let page = json(relay.http(), "GET", &q, Some(&t), j!(null))
            .await
            .json();
        let ids: Vec<i64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_i64().unwrap())
            .collect();
        seen.extend(ids);
        match page["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");

    // Joining replays the recent part.
    let r = relay.join(&host, &id, j!({})).await;
    assert_eq!(r.json()["recent_chat"].as_array().unwrap().len(), 7);

    // A viewer stripped of chat cannot send; bursts are rate limited.
    let guest = relay.user("guest").await;
    let gt = token_of(&relay.join(&guest, &id, j!({})).await);
    let r = json(
        relay.http(),
        "POST",
        &format!("/api/rooms/{id}/participants/guest/grants"),
        Some(&host),
        j!({"chat": false}),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = json(relay.http(), "POST", &chat, Some(&gt), j!({"text": "hi"})).await;
    assert_eq!((r.status, r.code().as_str()), (403, "missing_grant"));
    let mut limited = false;
    for i in 0..30 {
        let r = json(
            relay.http(),
            "POST",
            &chat,
            Some(&t),
            j!({"text": format!("flood {i}")}),
        )
        .await;
        if r.status == 429 {
            assert_eq!(r.code(), "rate_limited");
            limited = true;
            break;
        }
    }
    assert!(limited, "no rate limit");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_writes_nothing() {
    let relay = Relay::start().await;
    let a = relay.http();
    let malformed = raw(
        a,
        "POST",
        "/api/users",
        None,
        "application/json",
        b"{\"username\": \"x\",",
    )
    .await;
    assert_eq!(
        (malformed.status, malformed.code().as_str()),
        (400, "malformed_json")
    );
    let r = json(
        a,
        "POST",
        "/api/users",
        None,
        j!({"username": "zed", "password": "password123", "admin": true}),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (422, "invalid_body"));
    let r = json(
        a,
        "POST",
        "/api/users",
        None,
        j!({"username": "z".repeat(40), "password": "password123"}),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (422, "invalid_username"));
    let r = json(
        a,
        "POST",
        "/api/users",
        None,
        j!({"username": "zed", "password": "short"}),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (422, "invalid_password"));
    let huge = format!(
        "{{\"username\": \"{}\", \"password\": \"password123\"}}",
        "a".repeat(100_000)
    );
    let r = raw(
        a,
        "POST",
        "/api/users",
        None,
        "application/json",
        huge.as_bytes(),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (413, "body_too_large"));
    // None of those created an account.
    let r = json(
        a,
        "POST",
        "/api/login",
        None,
        j!({"username": "zed", "password": "password123"}),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (401, "wrong_credentials"));

    let t = relay.user("zed").await;
    let r = json(
        a,
        "POST",
        "/api/users",
        None,
        j!({"username": "ZED", "password": "password123"}),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (409, "username_taken"));
    let r = json(
        a,
        "POST",
        "/api/rooms",
        Some(&t),
        j!({"name": "n".repeat(101)}),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (422, "invalid_name"));
    let r = json(a, "GET", "/api/rooms/nosuchroom", Some(&t), j!(null)).await;
    assert_eq!((r.status, r.code().as_str()), (404, "unknown_room"));
    let r = json(a, "GET", "/api/rooms", None, j!(null)).await;
    assert_eq!((r.status, r.code().as_str()), (401, "missing_token"));
    let r = json(a, "GET", "/api/rooms", Some("garbage"), j!(null)).await;
    assert_eq!(r.status, 401);
    let list = json(a, "GET", "/api/rooms", Some(&t), j!(null)).await;
    assert_eq!(list.json()["rooms"], j!([]), "a refused room was written");

    // Wrong passwords: rate limited per username.
    let mut codes = vec![];
    for _ in 0..12 {
        codes.push(
            json(
                a,
                "POST",
                "/api/login",
                None,
                j!({"username": "zed", "password": "wrong-password"}),
            )
            .await
            .status,
        );
    }
    assert_eq!(codes[0], 401);
    assert!(codes.contains(&429), "{codes:?}");

    // Logout ends the session token; a changed password ends the others.
    let t2 = {
        let r = json(
            a,
            "POST",
            "/api/login",
            None,
            j!({"username": "zed", "password": "password123"}),
        )
        .await;
        r.json()["token"].as_str().map(str::to_owned)
    };
    assert!(t2.is_none(), "login allowed while rate limited");
    let r = json(a, "POST", "/api/logout", Some(&t), j!(null)).await;
    assert_eq!(r.status, 204);
    let r = json(a, "GET", "/api/me", Some(&t), j!(null)).await;
    assert_eq!((r.status, r.code().as_str()), (401, "session_ended"));

    // The OpenAPI document lists every API route.
    let doc = json(a, "GET", "/api/openapi.json", None, j!(null))
        .await
        .json();
    for path in [
        "/api/users",
        "/api/login",
        "/api/rooms",
        "/api/rooms/{id}/join",
        "/api/rooms/{id}/chat",
        "/api/rooms/{id}/bans/{who}",
        "/api/rooms/{id}/close",
        "/api/admin/users",
        "/api/admin/users/{name}",
        "/api/admin/users/{name}/password",
        "/api/admin/rooms",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    relay.stop().await;
}

/// Users, rooms, bans and chat survive a `kill -9` of the real server process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_kill_minus_nine() {
    let dir = std::env::temp_dir().join(format!("roomcast-kill-{}", uuid::Uuid::new_v4()));
    let start = || async {
        let c = common::process::serve(&dir, &["--admin-password", "admin-password"]).await;
        (c.process, c.http, c.quic)
    };
    let creds = j!({"username": "keeper", "password": "password123"});
    let (mut child, a, _) = start().await;
    assert_eq!(
        json(a, "POST", "/api/users", None, creds.clone())
            .await
            .status,
        201
    );
    let t = json(a, "POST", "/api/login", None, creds.clone())
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = json(a, "POST", "/api/rooms", Some(&t), j!({"name": "durable"})).await;
    let id = r.json()["room"]["id"].as_str().unwrap().to_owned();
    let mt = json(
        a,
        "POST",
        &format!("/api/rooms/{id}/join"),
        Some(&t),
        j!({}),
    )
    .await
    .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..3 {
        let r = json(
            a,
            "POST",
            &format!("/api/rooms/{id}/chat"),
            Some(&mt),
            j!({"text": format!("before crash {i} 🚀")}),
        )
        .await;
        assert_eq!(r.status, 201);
    }
    let r = json(
        a,
        "PUT",
        &format!("/api/rooms/{id}/bans/troll"),
        Some(&t),
        j!({}),
    )
    .await;
    assert_eq!(r.status, 200);
    child.kill().await.unwrap(); // SIGKILL: no shutdown path runs.

    let (_child, a, quic) = start().await;
    let r = json(a, "POST", "/api/login", None, creds).await;
    assert_eq!(r.status, 200, "user lost");
    let t = r.json()["token"].as_str().unwrap().to_owned();
    let r = json(a, "GET", &format!("/api/rooms/{id}"), Some(&t), j!(null)).await;
    assert_eq!(r.json()["room"]["name"], "durable");
    let mt = json(
        a,
        "POST",
        &format!("/api/rooms/{id}/join"),
        Some(&t),
        j!({}),
    )
    .await
    .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let h = json(
        a,
        "GET",
        &format!("/api/rooms/{id}/chat"),
        Some(&mt),
        j!(null),
    )
    .await
    .json();
    let texts: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        vec![
            "before crash 2 🚀",
            "before crash 1 🚀",
            "before crash 0 🚀"
        ]
    );
    // The ban survived too, in the store and at the relay.
    let admin = json(
        a,
        "POST",
        "/api/login",
        None,
        j!({"username": "admin", "password": "admin-password"}),
    )
    .await;
    assert_eq!(admin.status, 200);
    let secret = roomcast::auth::secret::load_or_create(None, &dir.join("data")).unwrap();
    let claims = roomcast::auth::Claims::new(
        "troll",
        &id,
        [roomcast::auth::Grant::Subscribe].into(),
        Duration::from_secs(60),
    );
    let token = roomcast::auth::TokenIssuer::new(&secret)
        .mint(&claims)
        .unwrap();
    let refused = match client::connect(&quic, Some(&token)).await {
        Ok(c) => tokio::time::timeout(Duration::from_secs(3), c.closed())
            .await
            .unwrap()
            .to_string(),
        Err(e) => format!("{e:#}"),
    };
    assert!(refused.contains("banned"), "{refused}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_receive_room_events_over_the_relay() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let bob = relay.user("bob").await;
    let id = relay.room(&host, j!({"name": "events"})).await;
    let ht = token_of(&relay.join(&host, &id, j!({})).await);
    let hm = media(&relay, &ht).await;
    assert!(
        eventually(Duration::from_secs(2), || relay
            .server
            .relay
            .access()
            .present(&id)
            .len()
            == 1)
        .await
    );
    let ns = namespace(&["room", &id, "_server"]).unwrap();
    let (_sub, reader) = client::subscribe(&hm, ns, "events")
        .await
        .expect("events track");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(client::read_track(reader, tx));

    let bt = token_of(&relay.join(&bob, &id, j!({})).await);
    let _bm = media(&relay, &bt).await;
    let r = json(
        relay.http(),
        "POST",
        &format!("/api/rooms/{id}/chat"),
        Some(&bt),
        j!({"text": "hi all 🙂"}),
    )
    .await;
    assert_eq!(r.status, 201);
    let mut seen = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !(seen
        .iter()
        .any(|e: &serde_json::Value| e["type"] == "joined" && e["data"]["identity"] == "bob")
        && seen.iter().any(|e| e["type"] == "chat"))
    {
        let Ok(Some(obj)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            panic!("events missing over the relay: {seen:?}");
        };
        seen.push(serde_json::from_slice(&obj.payload).expect("event is JSON"));
    }
    let chat = seen.iter().find(|e| e["type"] == "chat").unwrap();
    assert_eq!(chat["data"]["message"]["text"], "hi all 🙂");
    // Nobody but the server can publish the server namespace.
    let mut p = hm.publisher.clone();
    let fake = p
        .publish_namespace_start(namespace(&["room", &id, "_server"]).unwrap())
        .await
        .unwrap();
    assert!(fake.ok().await.is_err());
    relay.stop().await;
}
