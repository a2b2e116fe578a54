//! The room hierarchy holds: owner > host > moderator > participant. A moderator cannot make
//! anyone host, act on a host or the owner, mint a moderator invite or delete the room; a host
//! cannot act on the owner or make hosts; each still moderates those below. Moderation is
//! rate-limited per moderator, and a room's moderation state and a user's rooms are bounded.

mod common;

use common::http::{json, Response};
use common::Relay;
use roomcast::config::Config;
use serde_json::{json as j, Value};

async fn call(relay: &Relay, method: &str, path: &str, who: &str, body: Value) -> Response {
    json(relay.http(), method, path, Some(who), body).await
}

fn refused(r: &Response, code: &str) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, code),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

fn ok(r: &Response) {
    assert!(
        (200..300).contains(&r.status),
        "{} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rank_moderates_only_those_below_it() {
    let relay = Relay::start().await;
    let owner = relay.user("owner").await;
    let id = relay.room(&owner, j!({"name": "ranks"})).await;
    let hank = relay.user("hank").await;
    let mona = relay.user("mona").await;
    let pat = relay.user("pat").await;
    let quinn = relay.user("quinn").await;
    let mut media = vec![];
    for login in [&hank, &mona, &pat, &quinn] {
        let r = relay.join(login, &id, j!({})).await;
        assert_eq!(r.status, 200);
        media.push(r.json()["token"].as_str().unwrap().to_owned());
    }
    // Hank and Pat are in the room (for the mute-all below).
    let _in_room = [
        roomcast::client::connect(&relay.quic(), Some(&media[0]))
            .await
            .unwrap(),
        roomcast::client::connect(&relay.quic(), Some(&media[2]))
            .await
            .unwrap(),
    ];
    let role = |who: &str| format!("/api/rooms/{id}/participants/{who}/role");
    ok(&call(&relay, "POST", &role("hank"), &owner, j!({"role": "host"})).await);
    ok(&call(
        &relay,
        "POST",
        &role("mona"),
        &owner,
        j!({"role": "moderator"}),
    )
    .await);

    // The moderator: not above hosts, the owner or other moderators; cannot give its own
    // rank or more; cannot delete the room or mint moderator invites.
    refused(
        &call(&relay, "POST", &role("pat"), &mona, j!({"role": "host"})).await,
        "role_too_high",
    );
    refused(
        &call(
            &relay,
            "POST",
            &role("pat"),
            &mona,
            j!({"role": "moderator"}),
        )
        .await,
        "role_too_high",
    );
    refused(
        &call(&relay, "POST", &role("hank"), &mona, j!({"role": "viewer"})).await,
        "outranked",
    );
    refused(
        &call(
            &relay,
            "PUT",
            &format!("/api/rooms/{id}/bans/owner"),
            &mona,
            j!({}),
        )
        .await,
        "outranked",
    );
    refused(
        &call(
            &relay,
            "POST",
            &format!("/api/rooms/{id}/participants/hank/kick"),
            &mona,
            j!({}),
        )
        .await,
        "outranked",
    );
    refused(
        &call(
            &relay,
            "POST",
            &format!("/api/rooms/{id}/participants/owner/mute"),
            &mona,
            j!({"muted": true}),
        )
        .await,
        "outranked",
    );
    refused(
        &call(
            &relay,
            "POST",
            &format!("/api/rooms/{id}/invites"),
            &mona,
            j!({"role": "moderator"}),
        )
        .await,
        "role_too_high",
    );
    refused(
        &call(
            &relay,
            "DELETE",
            &format!("/api/rooms/{id}"),
            &mona,
            j!(null),
        )
        .await,
        "not_owner",
    );
    // ... and still moderates those below it.
    ok(&call(&relay, "POST", &role("pat"), &mona, j!({"role": "viewer"})).await);
    ok(&call(
        &relay,
        "POST",
        &format!("/api/rooms/{id}/participants/pat/mute"),
        &mona,
        j!({"muted": true}),
    )
    .await);
    ok(&call(
        &relay,
        "POST",
        &format!("/api/rooms/{id}/invites"),
        &mona,
        j!({"role": "participant"}),
    )
    .await);

    // The host: not above the owner or another host; makes moderators, not hosts.
    refused(
        &call(
            &relay,
            "PUT",
            &format!("/api/rooms/{id}/bans/owner"),
            &hank,
            j!({}),
        )
        .await,
        "outranked",
    );
    refused(
        &call(&relay, "POST", &role("quinn"), &hank, j!({"role": "host"})).await,
        "role_too_high",
    );
    refused(
        &call(
            &relay,
            "DELETE",
            &format!("/api/rooms/{id}"),
            &hank,
            j!(null),
        )
        .await,
        "not_owner",
    );
    ok(&call(
        &relay,
        "POST",
        &role("quinn"),
        &hank,
        j!({"role": "moderator"}),
    )
    .await);
    ok(&call(
        &relay,
        "PUT",
        &format!("/api/rooms/{id}/bans/mona"),
        &hank,
        j!({}),
    )
    .await);

    // A mute-all by a moderator leaves those it does not outrank alone.
    let r = call(
        &relay,
        "POST",
        &format!("/api/rooms/{id}/mute-all"),
        &quinn,
        j!({"muted": true}),
    )
    .await;
    ok(&r);
    assert_eq!(r.json()["identities"], j!(["pat"]), "the host is not muted");

    // The owner deletes the room.
    ok(&call(
        &relay,
        "DELETE",
        &format!("/api/rooms/{id}"),
        &owner,
        j!(null),
    )
    .await);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderation_is_rate_limited_per_moderator() {
    let relay = Relay::start().await;
    let flooder = relay.user("flooder").await;
    let calm = relay.user("calm").await;
    let busy = relay.room(&flooder, j!({"name": "busy"})).await;
    let quiet = relay.room(&calm, j!({"name": "quiet"})).await;
    let kick = |room: &str, who: &str| format!("/api/rooms/{room}/participants/{who}/kick");
    let mut statuses = vec![];
    for i in 0..40 {
        statuses.push(
            call(
                &relay,
                "POST",
                &kick(&busy, &format!("ghost{i}")),
                &flooder,
                j!(null),
            )
            .await
            .status,
        );
    }
    let first_refused = statuses.iter().position(|s| *s == 429);
    assert!(
        matches!(first_refused, Some(30..=34)),
        "a burst of 30 (plus what refilled meanwhile), then 429: {statuses:?}"
    );
    // Another moderator is not held back by the flood.
    ok(&call(&relay, "POST", &kick(&quiet, "someone"), &calm, j!(null)).await);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_moderation_state_and_a_users_rooms_are_bounded() {
    let relay = Relay::start_with(Config {
        max_moderation_entries_per_room: Some(3),
        max_rooms_per_user: Some(2),
        ..Default::default()
    })
    .await;
    let owner = relay.user("owner").await;
    let id = relay.room(&owner, j!({"name": "one"})).await;
    let ban = |room: &str, who: &str| format!("/api/rooms/{room}/bans/{who}");
    for who in ["a", "b", "c"] {
        ok(&call(&relay, "PUT", &ban(&id, who), &owner, j!({})).await);
    }
    let r = call(&relay, "PUT", &ban(&id, "d"), &owner, j!({})).await;
    assert_eq!((r.status, r.code().as_str()), (409, "moderation_full"));
    // An identity already held may change; lifting one makes room for another.
    ok(&call(
        &relay,
        "PUT",
        &ban(&id, "c"),
        &owner,
        j!({"reason": "again"}),
    )
    .await);
    ok(&call(&relay, "DELETE", &ban(&id, "a"), &owner, j!(null)).await);
    ok(&call(&relay, "PUT", &ban(&id, "d"), &owner, j!({})).await);

    // Rooms per owner: a second room (with its own moderation state), not a third.
    let two = relay.room(&owner, j!({"name": "two"})).await;
    ok(&call(&relay, "PUT", &ban(&two, "a"), &owner, j!({})).await);
    let r = call(&relay, "POST", "/api/rooms", &owner, j!({"name": "three"})).await;
    assert_eq!((r.status, r.code().as_str()), (409, "too_many_rooms"));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_list_pages_through_every_room() {
    let relay = Relay::start().await;
    let owner = relay.user("owner").await;
    let mut made = vec![];
    for i in 0..5 {
        made.push(relay.room(&owner, j!({"name": format!("r{i}")})).await);
    }
    let (mut seen, mut cursor, mut pages) = (vec![], None::<String>, 0);
    loop {
        let path = match &cursor {
            None => "/api/rooms?limit=2".to_owned(),
            Some(c) => format!("/api/rooms?limit=2&before={c}"),
        };
        let r = call(&relay, "GET", &path, &owner, j!(null)).await;
        ok(&r);
        let page = r.json();
        let rooms = page["rooms"].as_array().unwrap();
        assert!(rooms.len() <= 2, "{page}");
        seen.extend(
            rooms
                .iter()
                .map(|r| r["room"]["id"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        match page["next_before"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 10, "the list does not end");
    }
    let (mut sorted, mut expected) = (seen.clone(), made.clone());
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "every room exactly once: {seen:?}");
    let r = call(
        &relay,
        "GET",
        "/api/rooms?before=nonsense",
        &owner,
        j!(null),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_cursor"));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_change_and_a_lock_at_once_both_hold() {
    let relay = Relay::start().await;
    let owner = relay.user("owner").await;
    let id = relay.room(&owner, j!({"name": "before"})).await;
    let outsider = relay.user("outsider").await;
    // The PATCH spends its time hashing the new password; the lock lands meanwhile. The
    // PATCH used to write back the whole room it had read, unlocking it again.
    let path = format!("/api/rooms/{id}");
    let patch = call(
        &relay,
        "PATCH",
        &path,
        &owner,
        j!({"name": "after", "password": "sesame-42"}),
    );
    let lock = async {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        call(
            &relay,
            "POST",
            &format!("{path}/lock"),
            &owner,
            j!({"locked": true}),
        )
        .await
    };
    let (p, l) = tokio::join!(patch, lock);
    ok(&p);
    ok(&l);
    let room = call(&relay, "GET", &path, &owner, Value::Null).await.json()["room"].clone();
    assert_eq!(room["name"], "after", "{room}");
    assert_eq!(room["has_password"], true, "{room}");
    assert_eq!(room["locked"], true, "the lock was overwritten: {room}");
    // And the lock holds for someone trying to come in.
    let r = relay
        .join(&outsider, &id, j!({"password": "sesame-42"}))
        .await;
    assert_eq!((r.status, r.code().as_str()), (403, "room_locked"));
    relay.stop().await;
}
