//! The PostgreSQL store with a real server: two relays share one database, and a database
//! that stops answering gives the API a clear 503 while media keeps flowing.
//! (scripts/test.sh also runs the API suites against PostgreSQL: `ROOMCAST_TEST_POSTGRES_URL`.)

mod common;

use std::time::Duration;

use common::http::json;
use common::media::{alice_video, watch, write_group};
use common::services::Postgres;
use common::{Relay, SUB};
use roomcast::config::Config;
use serde_json::json as j;

async fn relay_on(pg: &Postgres, db: &str) -> Relay {
    Relay::start_with(Config {
        database_url: Some(pg.url(db)),
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_share_users_rooms_bans_and_chat() {
    let pg = Postgres::start();
    pg.create_db("shared");
    let a = relay_on(&pg, "shared").await;
    let b = relay_on(&pg, "shared").await;

    // Registered on A, logs in on B; a room made on A is joined through B.
    let alice = a.user("alice").await;
    let creds = j!({"username": "bob", "password": "password123"});
    assert_eq!(
        json(a.http(), "POST", "/api/users", None, creds.clone())
            .await
            .status,
        201
    );
    let bob = json(b.http(), "POST", "/api/login", None, creds).await;
    assert_eq!(bob.status, 200, "{}", String::from_utf8_lossy(&bob.body));
    let bob = bob.json()["token"].as_str().unwrap().to_owned();
    let room = a.room(&alice, j!({"name": "Shared"})).await;
    let joined = b.join(&bob, &room, j!({})).await;
    assert_eq!(
        joined.status,
        200,
        "{}",
        String::from_utf8_lossy(&joined.body)
    );
    let bob_media = joined.json()["token"].as_str().unwrap().to_owned();
    let alice_media = a.join(&alice, &room, j!({})).await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Chat written through A is read through B, in order, with ids from one sequence.
    for text in ["one", "two"] {
        let r = json(
            a.http(),
            "POST",
            &format!("/api/rooms/{room}/chat"),
            Some(&alice_media),
            j!({ "text": text }),
        )
        .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    let history = json(
        b.http(),
        "GET",
        &format!("/api/rooms/{room}/chat"),
        Some(&bob_media),
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(history.status, 200);
    let texts: Vec<String> = history.json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["two", "one"], "chat read through B, newest first");

    // A ban issued on A refuses a join on B.
    let r = json(
        a.http(),
        "PUT",
        &format!("/api/rooms/{room}/bans/bob"),
        Some(&alice),
        j!({}),
    )
    .await;
    assert!(r.status < 300, "ban: {}", String::from_utf8_lossy(&r.body));
    let refused = b.join(&bob, &room, j!({})).await;
    assert_eq!(
        refused.status,
        403,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(refused.code(), "banned");

    // A username taken on B is taken on A too (one unique index).
    let dup = json(
        b.http(),
        "POST",
        "/api/users",
        None,
        j!({"username": "ALICE", "password": "password123"}),
    )
    .await;
    assert_eq!(dup.status, 409);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_gives_503_and_media_keeps_flowing() {
    let mut pg = Postgres::start();
    pg.create_db("down");
    let relay = relay_on(&pg, "down").await;
    let alice = relay.user("alice").await;

    let (_publisher, mut video, _task) = alice_video(&relay).await;
    let viewer = relay.client("r1", "bob", SUB).await;
    let mut rx = watch(&viewer, "r1", "alice", "video").await;
    write_group(&mut video, 0, 3, 100);
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("object before the database stops")
            .unwrap();
    }

    pg.kill();
    let started = std::time::Instant::now();
    let r = json(
        relay.http(),
        "POST",
        "/api/rooms",
        Some(&alice),
        j!({"name": "while down"}),
    )
    .await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), "store_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the refusal took {:?}",
        started.elapsed()
    );

    // /health says so, still 200 (the node serves its sessions).
    let health = json(relay.http(), "GET", "/health", None, j!(null)).await;
    assert_eq!(health.status, 200);
    assert_eq!(
        (
            health.json()["status"].clone(),
            health.json()["store"].clone()
        ),
        (j!("degraded"), j!("unreachable"))
    );

    // Media of the sessions already joined goes on.
    write_group(&mut video, 1, 3, 100);
    for o in 0..3 {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("media stopped with the database")
            .unwrap();
        assert_eq!((got.group, got.object), (1, o));
    }

    // Back: the pool reconnects by itself.
    pg.resume();
    let mut ok = false;
    for _ in 0..50 {
        let r = json(
            relay.http(),
            "POST",
            "/api/rooms",
            Some(&alice),
            j!({"name": "after"}),
        )
        .await;
        if r.status == 201 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "the API did not recover with the database");
    let health = json(relay.http(), "GET", "/health", None, j!(null)).await;
    assert_eq!(health.json()["status"], "ok");
    relay.stop().await;
}
