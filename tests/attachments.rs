//! Chat storage cannot fill the disk: an upload is refused before its body is read when the
//! caller may not post it, attachments have quotas per uploader, per room and in all, those
//! nobody refers to are collected, a room's go with it, and history is capped per room.

mod common;

use std::time::Duration;

use common::http::{json, raw, Response};
use common::Relay;
use roomcast::auth::Grant;
use roomcast::config::Config;
use serde_json::json as j;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KIB: usize = 1024;

/// A PNG signature padded to `size` bytes: what the relay recognises as an image.
fn image(size: usize) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.resize(size, 0);
    png
}

async fn upload(relay: &Relay, room: &str, token: &str, size: usize) -> Response {
    raw(
        relay.http(),
        "POST",
        &format!("/api/rooms/{room}/attachments"),
        Some(token),
        "image/png",
        &image(size),
    )
    .await
}

/// Sends an upload's headers announcing `length` bytes and only 16 of them; returns the
/// answer if it comes within 3 s (a relay that reads the body first waits for the rest).
async fn announce(relay: &Relay, room: &str, token: &str, length: usize) -> Option<Response> {
    let mut tcp = common::http::connect_from(None, relay.http()).await;
    let head = format!(
        "POST /api/rooms/{room}/attachments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: image/png\r\nContent-Length: {length}\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&image(16)).await.unwrap();
    let mut buf = vec![0; 4096];
    let mut got = 0;
    let read = async {
        while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") || !buf[..got].ends_with(b"}") {
            let n = tcp.read(&mut buf[got..]).await.unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
    };
    tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..got]).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n")?;
    Some(Response {
        status: headers[9..12].parse().ok()?,
        headers: headers.to_owned(),
        body: body.as_bytes().to_vec(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_that_may_not_be_posted_are_refused_before_the_body() {
    let relay = Relay::start_with(Config {
        http_body_timeout_ms: Some(30_000),
        ..Default::default()
    })
    .await;
    let host = relay.user("host").await;
    let room = relay.room(&host, j!({"name": "class"})).await;
    let elsewhere = relay.token("another-room", "mallory", &[Grant::Chat]);
    let mute = relay.token(&room, "quiet", &[Grant::Subscribe]);
    let member = relay.token(&room, "alice", &[Grant::Chat]);
    for (token, length, status, code) in [
        (&elsewhere, 2 * KIB * KIB, 403, "wrong_room"),
        (&mute, 2 * KIB * KIB, 403, "missing_grant"),
        (&member, 2 * KIB * KIB + 1, 413, "body_too_large"),
    ] {
        let r = announce(&relay, &room, token, length)
            .await
            .unwrap_or_else(|| panic!("no answer before the body for {code}"));
        assert_eq!((r.status, r.code().as_str()), (status, code));
    }
    // A member's upload still works.
    let r = upload(&relay, &room, &member, 10 * KIB).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachment_quotas_hold_per_uploader_room_and_relay() {
    let relay = Relay::start_with(Config {
        attachment_quota_user_bytes: Some(1024 * 1024),
        attachment_quota_room_bytes: Some(1536 * 1024),
        attachment_quota_bytes: Some(2048 * 1024),
        ..Default::default()
    })
    .await;
    let host = relay.user("host").await;
    let class = relay.room(&host, j!({"name": "class"})).await;
    let other = relay.room(&host, j!({"name": "other"})).await;
    let alice = relay.token(&class, "alice", &[Grant::Chat]);
    let bob = relay.token(&class, "bob", &[Grant::Chat]);
    let carol = relay.token(&other, "carol", &[Grant::Chat]);
    let size = 300 * KIB;

    let mut statuses = vec![];
    for _ in 0..4 {
        statuses.push(upload(&relay, &class, &alice, size).await.status);
    }
    assert_eq!(
        statuses,
        [201, 201, 201, 507],
        "alice: 3 x 300 KiB fit in 1 MiB"
    );
    let r = upload(&relay, &class, &alice, size).await;
    assert_eq!(r.code(), "quota_exceeded");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("your quota of 1 MiB"));
    // Over quota, she is refused before she sends the body.
    let r = announce(&relay, &class, &alice, size)
        .await
        .expect("answered early");
    assert_eq!((r.status, r.code().as_str()), (507, "quota_exceeded"));

    // Bob, in the same room, has his own quota until the room's (1.5 MiB) is full.
    assert_eq!(upload(&relay, &class, &bob, size).await.status, 201);
    assert_eq!(upload(&relay, &class, &bob, size).await.status, 201);
    let r = upload(&relay, &class, &bob, size).await;
    assert_eq!((r.status, r.code().as_str()), (507, "quota_exceeded"));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("room's attachments"));

    // Carol, in another room, until the relay's 2 MiB are used.
    assert_eq!(upload(&relay, &other, &carol, size).await.status, 201);
    let r = upload(&relay, &other, &carol, size).await;
    assert_eq!((r.status, r.code().as_str()), (507, "quota_exceeded"));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("storage is full"));

    // Deleting the class deletes its attachments: their bytes are free for carol.
    let r = json(
        relay.http(),
        "DELETE",
        &format!("/api/rooms/{class}"),
        Some(&host),
        j!(null),
    )
    .await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(upload(&relay, &other, &carol, size).await.status, 201);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreferenced_attachments_are_collected_and_history_is_capped() {
    let relay = Relay::start_with(Config {
        chat_history_messages: Some(5),
        ..Default::default()
    })
    .await;
    let host = relay.user("host").await;
    let room = relay.room(&host, j!({"name": "class"})).await;
    let alice = relay.token(&room, "alice", &[Grant::Chat]);
    let id_of = |r: Response| r.json()["id"].as_str().unwrap().to_owned();
    let sent = id_of(upload(&relay, &room, &alice, KIB).await);
    let orphan = id_of(upload(&relay, &room, &alice, KIB).await);
    let chat = format!("/api/rooms/{room}/chat");
    let r = json(
        relay.http(),
        "POST",
        &chat,
        Some(&alice),
        j!({"text": "look", "attachment": sent}),
    )
    .await;
    assert_eq!(r.status, 201);

    let get = |id: String| {
        let (http, alice) = (relay.http(), alice.clone());
        async move {
            let path = format!("/api/attachments/{id}");
            raw(http, "GET", &path, Some(&alice), "", b"").await.status
        }
    };
    let store = common::store_of(&relay).await;
    let now = roomcast::auth::token::now_secs();
    store.purge_expired(now).await.unwrap();
    assert_eq!(
        (get(sent.clone()).await, get(orphan.clone()).await),
        (200, 200),
        "within the grace period both stay"
    );
    let later = now + roomcast::store::ATTACHMENT_GRACE_SECS + 1;
    store.purge_expired(later).await.unwrap();
    assert_eq!(
        (get(sent.clone()).await, get(orphan.clone()).await),
        (200, 404),
        "the one no message refers to is collected"
    );

    // Five more messages push "look" out of the capped history; then its image goes too.
    for i in 0..5 {
        let r = json(
            relay.http(),
            "POST",
            &chat,
            Some(&alice),
            j!({"text": format!("m{i}")}),
        )
        .await;
        assert_eq!(r.status, 201);
    }
    let r = json(relay.http(), "GET", &chat, Some(&alice), j!(null)).await;
    let history = r.json();
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m4", "m3", "m2", "m1", "m0"]);
    store.purge_expired(later).await.unwrap();
    assert_eq!(get(sent).await, 404);
    relay.stop().await;
}
