//! A moderator's live changes, as the participants see them on the wire: a revoked
//! `subscribe` ends open subscriptions and discovery at once, a video mute waits for the next
//! group while an audio mute acts at once, unmute brings media back, and both survive a
//! restart of the relay.

mod common;

use std::time::Duration;

use common::http::json;
use common::media::{
    discover, drain, events, next_change, published, wait_event, watch, write_group,
};
use common::{Relay, PUB, SUB};
use moq_transport::serve::Subgroup;
use roomcast::client::{self, namespace, synthetic_payload, Received};
use serde_json::{json as j, Value};
use tokio::sync::mpsc::UnboundedReceiver;

const SECOND: Duration = Duration::from_secs(1);

async fn moderate(relay: &Relay, host: &str, room: &str, path: &str, body: Value) {
    let r = json(
        relay.http(),
        "POST",
        &format!("/api/rooms/{room}/{path}"),
        Some(host),
        body,
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&r.body)
    );
}

async fn mute(relay: &Relay, host: &str, room: &str, who: &str, track: &str, muted: bool) {
    let path = format!("participants/{who}/mute");
    moderate(
        relay,
        host,
        room,
        &path,
        j!({"track": track, "muted": muted}),
    )
    .await;
}

/// The next `n` objects, or a panic naming what did arrive.
async fn take(rx: &mut UnboundedReceiver<Received>, n: usize) -> Vec<(u64, u64)> {
    let mut got = vec![];
    while got.len() < n {
        match tokio::time::timeout(2 * SECOND, rx.recv()).await {
            Ok(Some(r)) => got.push((r.group, r.object)),
            _ => panic!("expected {n} objects, got {got:?}"),
        }
    }
    got
}

fn ids(objects: &[Received]) -> Vec<(u64, u64)> {
    objects.iter().map(|r| (r.group, r.object)).collect()
}

/// Discovery on the whole room: the participant namespaces it announces and withdraws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_subscribe_ends_open_subscriptions_and_discovery_at_once() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let id = relay.room(&host, j!({"name": "grants"})).await;
    let alice = relay.client(&id, "alice", PUB).await;
    let (mut w, _task) = client::publish(
        &alice,
        namespace(&["room", &id, "alice"]).unwrap(),
        &["video"],
    )
    .unwrap();
    published(&relay, &id, "alice").await;
    let mut video = w.remove(0);
    let bob = relay.client(&id, "bob", SUB).await;
    let mut ev = events(&bob, &id).await;
    let d = discover(&bob, &id).await;
    assert_eq!(next_change(&d).await, (true, format!("room/{id}/alice")));
    let (sub, reader) =
        client::subscribe(&bob, namespace(&["room", &id, "alice"]).unwrap(), "video")
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(client::read_track(reader, tx));
    write_group(&mut video, 0, 3, 200);
    assert_eq!(take(&mut rx, 3).await, [(0, 0), (0, 1), (0, 2)]);

    // Group 1 is open when the grant goes: bob's subscription ends at once, mid-group.
    let mut open = video
        .create(Subgroup {
            group_id: 1,
            subgroup_id: 0,
            priority: 128,
        })
        .unwrap();
    open.write(synthetic_payload(1, 0, 200)).unwrap();
    assert_eq!(take(&mut rx, 1).await, [(1, 0)]);
    moderate(
        &relay,
        &host,
        &id,
        "participants/bob/grants",
        j!({"subscribe": false}),
    )
    .await;
    tokio::time::timeout(SECOND, sub.closed())
        .await
        .expect("the subscription must end within a second")
        .ok();
    let done = sub.publish_done().expect("PUBLISH_DONE");
    assert_eq!(done.status_code, 0x1, "UNAUTHORIZED: {done:?}");
    drop(sub);
    open.write(synthetic_payload(1, 1, 200)).unwrap();
    write_group(&mut video, 2, 2, 200);
    assert_eq!(ids(&drain(&mut rx, Duration::from_millis(400)).await), []);
    // Discovery withdraws alice; a new SUBSCRIBE is refused; the room's events still reach
    // bob (that is how he learns of the change).
    assert_eq!(next_change(&d).await, (false, format!("room/{id}/alice")));
    let err = client::subscribe(&bob, namespace(&["room", &id, "alice"]).unwrap(), "video")
        .await
        .err()
        .expect("subscribe without the grant");
    common::refused_with(&err, 0x1, "missing_grant");
    let e = wait_event(&mut ev, "permissions_changed").await;
    assert_eq!(e["data"]["identity"], "bob");

    // Given back: discovery announces alice again and a new subscription reads her.
    moderate(
        &relay,
        &host,
        &id,
        "participants/bob/grants",
        j!({"subscribe": true}),
    )
    .await;
    assert_eq!(next_change(&d).await, (true, format!("room/{id}/alice")));
    // (The moq-transport client frees the name of an ended subscription asynchronously; it
    // answers "duplicate" locally until then.)
    let mut again = loop {
        match client::subscribe(&bob, namespace(&["room", &id, "alice"]).unwrap(), "video").await {
            Ok((sub, reader)) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(async move {
                    let _keep = sub;
                    client::read_track(reader, tx).await
                });
                break rx;
            }
            Err(e) if e.to_string().contains("duplicate") => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("subscribe with the grant back: {e}"),
        }
    };
    write_group(&mut video, 3, 2, 200);
    // A late joiner starts at the newest group: group 2 whole if the relay still holds the
    // track (it lingers after the last subscriber), then group 3.
    let mut got = ids(&drain(&mut again, Duration::from_millis(600)).await);
    // Newer groups go first on the wire: compare in track order.
    got.sort();
    assert!(
        got == [(3, 0), (3, 1)] || got == [(2, 0), (2, 1), (3, 0), (3, 1)],
        "whole groups from the newest on: {got:?}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_mute_waits_for_the_next_group_and_an_audio_mute_acts_at_once() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let id = relay.room(&host, j!({"name": "mutes"})).await;
    let alice = relay.client(&id, "alice", PUB).await;
    let (mut w, _task) = client::publish(
        &alice,
        namespace(&["room", &id, "alice"]).unwrap(),
        &["video", "audio"],
    )
    .unwrap();
    published(&relay, &id, "alice").await;
    let (mut video, mut audio) = (w.remove(0), w.remove(0));
    let bob = relay.client(&id, "bob", SUB).await;
    let mut ev = events(&bob, &id).await;
    let mut vrx = watch(&bob, &id, "alice", "video").await;
    let mut arx = watch(&bob, &id, "alice", "audio").await;
    let group = |w: &mut moq_transport::serve::SubgroupsWriter, g| {
        w.create(Subgroup {
            group_id: g,
            subgroup_id: 0,
            priority: 128,
        })
        .unwrap()
    };

    // Video: the group under way when the mute lands is relayed whole; the next is not.
    let mut v1 = group(&mut video, 1);
    v1.write(synthetic_payload(1, 0, 300)).unwrap();
    assert_eq!(take(&mut vrx, 1).await, [(1, 0)]);
    // Audio: objects after the mute are held back even inside the same group.
    let mut a1 = group(&mut audio, 1);
    a1.write(synthetic_payload(1, 0, 50)).unwrap();
    assert_eq!(take(&mut arx, 1).await, [(1, 0)]);

    mute(&relay, &host, &id, "alice", "video", true).await;
    mute(&relay, &host, &id, "alice", "audio", true).await;
    assert_eq!(wait_event(&mut ev, "muted").await["data"]["track"], "video");
    for o in 1..4 {
        v1.write(synthetic_payload(1, o, 300)).unwrap();
        a1.write(synthetic_payload(1, o, 50)).unwrap();
    }
    drop(v1);
    write_group(&mut video, 2, 3, 300);
    assert_eq!(
        ids(&drain(&mut vrx, Duration::from_millis(400)).await),
        [(1, 1), (1, 2), (1, 3)],
        "the started GOP ends whole, the next one is held back"
    );
    assert_eq!(ids(&drain(&mut arx, Duration::from_millis(100)).await), []);

    // Unmute: audio comes back with the next object, video with the next group.
    mute(&relay, &host, &id, "alice", "video", false).await;
    mute(&relay, &host, &id, "alice", "audio", false).await;
    assert_eq!(
        wait_event(&mut ev, "unmuted").await["data"]["track"],
        "video"
    );
    a1.write(synthetic_payload(1, 4, 50)).unwrap();
    assert_eq!(take(&mut arx, 1).await, [(1, 4)]);
    write_group(&mut video, 3, 2, 300);
    assert_eq!(take(&mut vrx, 2).await, [(3, 0), (3, 1)]);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_overrides_and_mutes_survive_a_restart_and_end_with_the_room() {
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let id = relay
        .room(&host, j!({"name": "restart", "empty_timeout_secs": 1}))
        .await;
    // Changes are for people who exist: bob and alice have accounts.
    relay.user("bob").await;
    relay.user("alice").await;
    moderate(
        &relay,
        &host,
        &id,
        "participants/bob/grants",
        j!({"subscribe": false}),
    )
    .await;
    mute(&relay, &host, &id, "alice", "audio", true).await;
    let relay = relay.restart().await;
    let host = login(&relay, "host").await;

    let alice = relay.client(&id, "alice", PUB).await;
    let (mut w, _task) = client::publish(
        &alice,
        namespace(&["room", &id, "alice"]).unwrap(),
        &["audio", "video"],
    )
    .unwrap();
    published(&relay, &id, "alice").await;
    let (mut audio, mut video) = (w.remove(0), w.remove(0));
    // Bob's token carries `subscribe`, but the moderator's change still holds.
    let bob = relay.client(&id, "bob", SUB).await;
    let err = client::subscribe(&bob, namespace(&["room", &id, "alice"]).unwrap(), "video")
        .await
        .err()
        .expect("the revoked grant holds across the restart");
    common::refused_with(&err, 0x1, "missing_grant");
    // Alice's audio is still muted for carol; her video is not.
    let carol = relay.client(&id, "carol", SUB).await;
    let mut arx = watch(&carol, &id, "alice", "audio").await;
    let mut vrx = watch(&carol, &id, "alice", "video").await;
    write_group(&mut audio, 0, 3, 50);
    write_group(&mut video, 0, 2, 300);
    assert_eq!(take(&mut vrx, 2).await, [(0, 0), (0, 1)]);
    assert_eq!(ids(&drain(&mut arx, Duration::from_millis(300)).await), []);

    // Once the room has closed (empty past its timeout) both are forgotten, here and in the
    // store: a new join starts clean.
    for c in [alice, bob, carol] {
        c.close();
    }
    let r = json(
        relay.http(),
        "GET",
        &format!("/api/rooms/{id}"),
        Some(&host),
        j!(null),
    )
    .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let relay = relay.restart().await;
    let bob_login = login(&relay, "bob").await;
    let r = relay.join(&bob_login, &id, j!({})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let bob = client::connect(&relay.quic(), Some(&token)).await.unwrap();
    let alice = relay.client(&id, "alice", PUB).await;
    let (mut w, _task) = client::publish(
        &alice,
        namespace(&["room", &id, "alice"]).unwrap(),
        &["audio"],
    )
    .unwrap();
    published(&relay, &id, "alice").await;
    let mut arx = watch(&bob, &id, "alice", "audio").await;
    write_group(&mut w[0], 5, 2, 50);
    assert_eq!(take(&mut arx, 2).await, [(5, 0), (5, 1)]);
    relay.stop().await;
}

async fn login(relay: &Relay, username: &str) -> String {
    let r = json(
        relay.http(),
        "POST",
        "/api/login",
        None,
        j!({"username": username, "password": "password123"}),
    )
    .await;
    assert_eq!(r.status, 200);
    r.json()["token"].as_str().unwrap().to_owned()
}
