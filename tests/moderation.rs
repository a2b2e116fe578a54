//! Moderation that holds: a kick or ban reaches the participant, revokes its tokens and stays
//! in force across reconnects and restarts; identities are one case; deleted rooms refuse
//! their tokens; one empty-room timer per room; room details and events are for members.
//! Every assertion is on what a client reads: events decoded, close codes and reasons, HTTP
//! statuses and error codes.

mod common;

use std::time::Duration;

use common::http::json;
use common::media::{events, wait_event};
use common::Relay;
use roomcast::auth::{Claims, Grant};
use roomcast::client::{self, Client};
use serde_json::{json as j, Value};

fn token_of(r: &common::http::Response) -> String {
    assert_eq!(r.status, 200, "join: {}", String::from_utf8_lossy(&r.body));
    r.json()["token"].as_str().unwrap().to_owned()
}

async fn media(relay: &Relay, token: &str) -> Client {
    client::connect(&relay.quic(), Some(token)).await.unwrap()
}

/// What the relay says when `token` tries to hold a session: the connect error, or the close
/// code and reason of the session it closes right after SETUP, as the client reads them.
async fn refusal(relay: &Relay, token: &str) -> String {
    match client::connect(&relay.quic(), Some(token)).await {
        Err(e) => format!("{e:#}"),
        Ok(c) => match tokio::time::timeout(Duration::from_secs(3), c.closed()).await {
            Ok(e) => e.to_string(),
            Err(_) => "session stayed open".into(),
        },
    }
}

/// Asserts that the relay closed the session with code 0x2 and `reason`.
fn closed_with(closed: &quinn::ConnectionError, reason: &str) {
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, 0x2u32.into(), "{closed}");
            assert_eq!(String::from_utf8_lossy(&c.reason), reason);
        }
        other => panic!("expected the relay's close {reason:?}, got {other}"),
    }
}

/// Sends a chat message with a media token.
async fn chat(relay: &Relay, room: &str, token: &str) -> common::http::Response {
    post(
        relay,
        &format!("/api/rooms/{room}/chat"),
        token,
        j!({"text": "hello"}),
    )
    .await
}

async fn post(relay: &Relay, path: &str, token: &str, body: Value) -> common::http::Response {
    json(relay.http(), "POST", path, Some(token), body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_reaches_the_participant_and_holds_across_reconnects_and_restarts() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let bob = relay.user("bob").await;
    let id = relay.room(&host, j!({"name": "kick"})).await;
    let bt = token_of(&relay.join(&bob, &id, j!({})).await);
    let bm = media(&relay, &bt).await;
    let mut ev = events(&bm, &id).await;

    let r = post(
        &relay,
        &format!("/api/rooms/{id}/participants/bob/kick"),
        &host,
        j!(null),
    )
    .await;
    assert_eq!(r.json()["sessions_closed"], 1);
    // Bob's own session carries the news before it closes...
    let kicked = wait_event(&mut ev, "kicked").await;
    assert_eq!(kicked["data"]["identity"], "bob");
    // ...then closes, with the kick's code and reason.
    let closed = tokio::time::timeout(Duration::from_secs(3), bm.closed())
        .await
        .expect("kicked session still open");
    closed_with(&closed, "kicked: removed by a moderator");

    // The same token is dead: for a new session and for the API.
    let why = refusal(&relay, &bt).await;
    assert!(
        why.contains("token_revoked: token was revoked") && why.contains("(code 2)"),
        "{why}"
    );
    let r = chat(&relay, &id, &bt).await;
    assert_eq!((r.status, r.code()), (403, "token_revoked".into()));

    // And stays dead after a restart.
    let relay = relay.restart().await;
    assert!(refusal(&relay, &bt).await.contains("token_revoked"));
    let r = chat(&relay, &id, &bt).await;
    assert_eq!(r.status, 403);

    // Coming back takes a new join, which a kick (unlike a ban) allows.
    let bob = login(&relay, "bob").await;
    let bt2 = token_of(&relay.join(&bob, &id, j!({})).await);
    let bm2 = media(&relay, &bt2).await;
    let mut ev2 = events(&bm2, &id).await;
    wait_event(&mut ev2, "joined").await;
    relay.stop().await;
}

async fn login(relay: &Relay, username: &str) -> String {
    let creds = j!({"username": username, "password": "password123"});
    let r = json(relay.http(), "POST", "/api/login", None, creds).await;
    assert_eq!(r.status, 200, "login {username}");
    r.json()["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_holds_whatever_the_letter_case() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let bob = relay.user("Bob").await;
    let id = relay.room(&host, j!({"name": "ban"})).await;
    let join = relay.join(&bob, &id, j!({})).await;
    let bt = token_of(&join);
    let bm = media(&relay, &bt).await;

    // The moderator types the name in yet another case.
    let r = json(
        relay.http(),
        "PUT",
        &format!("/api/rooms/{id}/bans/BOB"),
        Some(&host),
        j!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["identity"], "bob");
    let closed = tokio::time::timeout(Duration::from_secs(3), bm.closed())
        .await
        .expect("banned session still open");
    closed_with(&closed, "banned: banned from the room");

    // Joining again is refused, and so is every spelling of the name at the relay and in chat.
    let r = relay.join(&bob, &id, j!({})).await;
    assert_eq!((r.status, r.code()), (403, "banned".into()));
    for spelling in ["Bob", "bOB", "bob"] {
        let mut c = Claims::new(
            "x",
            &id,
            [Grant::Subscribe, Grant::Chat].into_iter().collect(),
            Duration::from_secs(60),
        );
        c.sub = spelling.into(); // as an application backend might mint it
        let t = relay.token_for(c);
        assert!(
            refusal(&relay, &t).await.contains("banned"),
            "{spelling} admitted"
        );
        let r = chat(&relay, &id, &t).await;
        assert_eq!((r.status, r.code()), (403, "banned".into()), "{spelling}");
    }
    // One account, whatever the case: "BOB" cannot register beside "Bob".
    let creds = j!({"username": "BOB", "password": "password123"});
    let r = json(relay.http(), "POST", "/api/users", None, creds).await;
    assert_eq!(r.status, 409);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_room_refuses_its_tokens_and_does_not_come_back() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let bob = relay.user("bob").await;
    let id = relay.room(&host, j!({"name": "gone"})).await;
    let bt = token_of(&relay.join(&bob, &id, j!({})).await);
    let bm = media(&relay, &bt).await;
    let r = json(
        relay.http(),
        "DELETE",
        &format!("/api/rooms/{id}"),
        Some(&host),
        j!(null),
    )
    .await;
    assert_eq!(r.status, 204);
    tokio::time::timeout(Duration::from_secs(3), bm.closed())
        .await
        .expect("session in a deleted room still open");

    let refused = |r: common::http::Response| (r.status, r.code());
    let why = refusal(&relay, &bt).await;
    assert!(why.contains("room_closed"), "{why}");
    let said = chat(&relay, &id, &bt).await;
    assert_eq!(refused(said), (403, "room_closed".into()));
    let hand = post(
        &relay,
        &format!("/api/rooms/{id}/hand"),
        &bt,
        j!({"raised": true}),
    )
    .await;
    assert_eq!(refused(hand), (403, "room_closed".into()));
    assert_eq!(relay.join(&bob, &id, j!({})).await.status, 404);
    let ev = json(
        relay.http(),
        "GET",
        &format!("/api/rooms/{id}/events"),
        Some(&host),
        j!(null),
    )
    .await;
    assert_eq!(ev.status, 404);

    let relay = relay.restart().await;
    let why = refusal(&relay, &bt).await;
    assert!(why.contains("room_closed"), "{why}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_room_has_one_timer_and_a_join_resets_it() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let id = relay
        .room(&host, j!({"name": "timer", "empty_timeout_secs": 3}))
        .await;
    let is_open = || async {
        let r = json(
            relay.http(),
            "GET",
            &format!("/api/rooms/{id}"),
            Some(&host),
            j!(null),
        )
        .await;
        r.json()["open"].as_bool().unwrap()
    };
    let t0 = tokio::time::Instant::now();
    let first = media(&relay, &token_of(&relay.join(&host, &id, j!({})).await)).await;
    first.close();
    // Back 1.5 s later, and gone again: the room's timeout counts from this second leave.
    tokio::time::sleep_until(t0 + Duration::from_millis(1500)).await;
    let second = media(&relay, &token_of(&relay.join(&host, &id, j!({})).await)).await;
    second.close();
    // The first leave's timer would have fired at 3 s.
    tokio::time::sleep_until(t0 + Duration::from_millis(3800)).await;
    assert!(is_open().await, "closed by the first leave's timer");
    // The second one fires at about 4.5 s.
    tokio::time::sleep_until(t0 + Duration::from_millis(6500)).await;
    assert!(
        !is_open().await,
        "still open past the timeout after the last leave"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_details_and_events_are_for_members_only() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let carol = relay.user("carol").await;
    let id = relay
        .room(
            &host,
            j!({"name": "private", "metadata": {"agenda": "secret"}}),
        )
        .await;
    let ht = token_of(&relay.join(&host, &id, j!({})).await);
    let r = chat(&relay, &id, &ht).await;
    assert_eq!(r.status, 201);
    let http = relay.http();
    let get = |path: String, token: String| async move {
        json(http, "GET", &path, Some(&token), j!(null)).await
    };
    // A member reads both; a logged-in stranger is told the room does not exist.
    for path in [
        format!("/api/rooms/{id}"),
        format!("/api/rooms/{id}/events"),
    ] {
        assert_eq!(get(path.clone(), host.clone()).await.status, 200, "{path}");
        let r = get(path.clone(), carol.clone()).await;
        assert_eq!((r.status, r.code()), (404, "unknown_room".into()), "{path}");
        assert!(!String::from_utf8_lossy(&r.body).contains("hello"));
    }
    // The list shows public metadata only.
    let list = get("/api/rooms".into(), carol.clone()).await;
    let room = &list.json()["rooms"][0]["room"];
    assert_eq!(room["name"], "private");
    assert!(
        room.get("metadata").is_none() && room.get("owner_id").is_none(),
        "{room}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_revokes_every_token_the_member_holds_used_or_not() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let bob = relay.user("bob").await;
    let id = relay.room(&host, j!({"name": "stockpile"})).await;
    // Bob keeps a second token in reserve, then the host locks the room and kicks him.
    let used = token_of(&relay.join(&bob, &id, j!({})).await);
    let spare = token_of(&relay.join(&bob, &id, j!({})).await);
    let _bm = media(&relay, &used).await;
    let r = post(
        &relay,
        &format!("/api/rooms/{id}/lock"),
        &host,
        j!({"locked": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = post(
        &relay,
        &format!("/api/rooms/{id}/participants/bob/kick"),
        &host,
        j!(null),
    )
    .await;
    assert_eq!(r.status, 200);
    // The unused token does not get him back past the lock, now or after a restart.
    let why = refusal(&relay, &spare).await;
    assert!(why.contains("token_revoked"), "{why}");
    let r = chat(&relay, &id, &spare).await;
    assert_eq!((r.status, r.code()), (403, "token_revoked".into()));
    let relay = relay.restart().await;
    let why = refusal(&relay, &spare).await;
    assert!(why.contains("token_revoked"), "{why}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_takes_away_membership_and_moderation() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let bob = relay.user("bob").await;
    let id = relay.room(&host, j!({"name": "mods"})).await;
    token_of(&relay.join(&bob, &id, j!({})).await);
    let r = post(
        &relay,
        &format!("/api/rooms/{id}/participants/bob/role"),
        &host,
        j!({"role": "moderator"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = json(
        relay.http(),
        "PUT",
        &format!("/api/rooms/{id}/bans/bob"),
        Some(&host),
        j!({}),
    )
    .await;
    assert_eq!(r.status, 200);
    // Bob no longer reads the room (its chat is in the events) ...
    for path in [
        format!("/api/rooms/{id}"),
        format!("/api/rooms/{id}/events"),
    ] {
        let r = json(relay.http(), "GET", &path, Some(&bob), j!(null)).await;
        assert_eq!((r.status, r.code()), (404, "unknown_room".into()), "{path}");
    }
    // ... nor moderates it: no kicking the host, no lifting his own ban.
    let r = post(
        &relay,
        &format!("/api/rooms/{id}/participants/host/kick"),
        &bob,
        j!(null),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "not_moderator".into()));
    let r = json(
        relay.http(),
        "DELETE",
        &format!("/api/rooms/{id}/bans/bob"),
        Some(&bob),
        j!(null),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "not_moderator".into()));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_only_tokens_know_are_not_closed_when_empty() {
    // Room "r1" exists only in tokens (`roomcast token`, an application): its publisher's
    // reconnect with the same token must not find it closed.
    let relay = Relay::start().await;
    let token = relay.token("r1", "alice", common::PUB);
    // A closure refuses tokens issued in an earlier second than itself: let one pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    media(&relay, &token).await.close();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = media(&relay, &token).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(800), again.closed())
            .await
            .is_err(),
        "reconnect refused: {}",
        refusal(&relay, &token).await
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_into_an_empty_room_restarts_its_timer() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let carol = relay.user("carol").await;
    let id = relay
        .room(&host, j!({"name": "late", "empty_timeout_secs": 3}))
        .await;
    let t0 = tokio::time::Instant::now();
    media(&relay, &token_of(&relay.join(&host, &id, j!({})).await))
        .await
        .close();
    // Carol joins 1 s into the 3 s timeout and connects after it would have fired (her
    // token would then be from two seconds before the closure, and refused).
    tokio::time::sleep_until(t0 + Duration::from_millis(1000)).await;
    let ct = token_of(&relay.join(&carol, &id, j!({})).await);
    tokio::time::sleep_until(t0 + Duration::from_millis(4300)).await;
    let cm = media(&relay, &ct).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(800), cm.closed())
            .await
            .is_err(),
        "the room closed under a member on her way in"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_tokens_allow_can_be_moderated() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let id = relay.room(&host, j!({"name": "short"})).await;
    // "al" is too short for an account but a valid token identity.
    let al = relay.client(&id, "al", common::SUB).await;
    let r = post(
        &relay,
        &format!("/api/rooms/{id}/participants/al/kick"),
        &host,
        j!(null),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["sessions_closed"], 1);
    let closed = tokio::time::timeout(Duration::from_secs(3), al.closed())
        .await
        .expect("kicked session still open");
    closed_with(&closed, "kicked: removed by a moderator");
    relay.stop().await;
}

/// A closure counts in seconds, so a token issued in its own second cannot be refused by its
/// issue time: it is refused by its `jti`, used or not, and stays refused after a restart;
/// the room can be joined again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_closures_own_second_is_refused_and_stays_refused() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let bob = relay.user("bob").await;
    let carol = relay.user("carol").await;
    let secs = || roomcast::auth::token::now_secs();
    let mut tries = 0;
    let (room, used, unused, session) = loop {
        tries += 1;
        assert!(
            tries <= 10,
            "two joins and a closure never fit in one second"
        );
        // At the start of a second, two joins and the closure: all in that second.
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        tokio::time::sleep(Duration::from_millis(u64::from(1000 - millis))).await;
        let started = secs();
        let room = relay.room(&host, j!({"name": "same second"})).await;
        let used = token_of(&relay.join(&bob, &room, j!({})).await);
        let session = media(&relay, &used).await;
        let unused = token_of(&relay.join(&carol, &room, j!({})).await);
        let r = post(&relay, &format!("/api/rooms/{room}/close"), &host, j!(null)).await;
        assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
        if secs() == started {
            break (room, used, unused, session);
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(3), session.closed())
        .await
        .expect("the session was closed");
    let reason = common::close_reason(&closed);
    assert!(reason.starts_with("room_closed"), "{reason}");
    for token in [&used, &unused] {
        let why = refusal(&relay, token).await;
        assert!(why.contains("token_revoked"), "{why}");
    }
    let relay = relay.restart().await;
    for token in [&used, &unused] {
        let why = refusal(&relay, token).await;
        assert!(why.contains("token_revoked"), "after a restart: {why}");
    }
    let again = token_of(&relay.join(&bob, &room, j!({})).await);
    let session = media(&relay, &again).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), session.closed())
            .await
            .is_err(),
        "a new join's session was closed"
    );
    relay.stop().await;
}
