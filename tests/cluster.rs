//! Cluster mode: three `roomcast serve` processes on loopback with a real `redis-server` and
//! PostgreSQL. Media published on one node reaches subscribers on the others (one upstream
//! subscription per track per node, read from `/metrics`), room state (presence, chat,
//! permissions, bans, hands, closures, discovery) reaches every node, joins are placed on the
//! least loaded node, a node that leaves drops out of placement.

mod common;

use std::time::Duration;

use common::cluster::{client, Services, CLUSTER_SECRET, TOKEN_SECRET};
use common::http::json;
use common::media::{discover, events, next_change, watch, write_group};
use common::process::Child;
use common::{PUB, SUB};
use moq_transport::serve::SubgroupsWriter;
use roomcast::client::{namespace, verify_payload, Client, SessionTask};
use serde_json::json as j;

struct Cluster {
    _services: Services,
    nodes: Vec<Child>,
}

/// Nodes a, b (region eu) and c (region us).
async fn cluster() -> Cluster {
    let services = Services::start();
    let mut nodes = vec![];
    for (id, region) in [("a", "eu"), ("b", "eu"), ("c", "us")] {
        nodes.push(services.node(id, region).await);
    }
    Cluster {
        _services: services,
        nodes,
    }
}

/// Alice publishing `video` in room r1 through `node`, once a member on `seen_on` (another
/// node) discovers her: her client, the track's writer and the publication's task.
async fn alice_video(node: &Child, seen_on: &Child) -> (Client, SubgroupsWriter, SessionTask) {
    let observer = client(seen_on, "r1", "observer", SUB).await;
    let d = discover(&observer, "r1").await;
    let publisher = client(node, "r1", "alice", PUB).await;
    let ns = namespace(&["room", "r1", "alice"]).unwrap();
    let (mut w, task) = roomcast::client::publish(&publisher, ns, &["video"]).unwrap();
    assert_eq!(next_change(&d).await, (true, "room/r1/alice".to_owned()));
    (publisher, w.remove(0), task)
}

/// The sum of the samples of `name` with `label` in the node's `/metrics`, read over HTTP.
async fn metric(relay: &Child, name: &str, label: &str) -> f64 {
    common::http::metric(relay.http(), &format!("{name}{{{label}}}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_published_on_one_node_reaches_the_others() {
    let c = cluster().await;
    let (a, b, cc) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let (_publisher, mut video, _task) = alice_video(a, b).await;

    // Two viewers on b, one on c; tokens minted by any node verify on every node.
    let viewers = [
        client(b, "r1", "bob", SUB).await,
        client(b, "r1", "bea", SUB).await,
        client(cc, "r1", "carol", SUB).await,
    ];
    let mut rxs = vec![];
    for v in &viewers {
        rxs.push(watch(v, "r1", "alice", "video").await);
    }
    // Paced as a live source is (a burst of groups is the congestion rule's to thin out).
    for g in 0..4 {
        write_group(&mut video, g, 5, 1200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, rx) in rxs.iter_mut().enumerate() {
        for g in 0..4 {
            for o in 0..5 {
                let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                    .await
                    .unwrap_or_else(|_| panic!("viewer {i}: object {g}/{o} missing"))
                    .unwrap();
                assert_eq!((got.group, got.object), (g, o), "viewer {i}: order");
                // Byte for byte what was sent (every byte is derived from group and object).
                assert!(
                    got.payload.len() == 1200 && verify_payload(g, o, &got.payload).is_some(),
                    "viewer {i}: object {g}/{o} corrupt"
                );
            }
        }
    }
    // One upstream subscription per track per node, however many viewers it has.
    let node_label = "source=\"node\"";
    let session_label = "source=\"session\"";
    assert_eq!(
        metric(b, "roomcast_upstream_subscriptions", node_label).await,
        1.0
    );
    assert_eq!(
        metric(cc, "roomcast_upstream_subscriptions", node_label).await,
        1.0
    );
    assert_eq!(
        metric(a, "roomcast_upstream_subscriptions", session_label).await,
        1.0,
        "the origin subscribes to its publisher once"
    );
    assert_eq!(
        metric(a, "roomcast_upstream_subscriptions", node_label).await,
        0.0
    );
    for n in c.nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_placed_on_the_least_loaded_node_of_the_region() {
    let mut c = cluster().await;
    let a = &c.nodes[0];
    let alice = a.user("alice").await;
    let room = a.room(&alice, j!({"name": "placement"})).await;
    let placed = |r: common::http::Response| {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let relay = r.json()["relay"].clone();
        assert!(
            relay["quic_url"].as_str().unwrap().starts_with("moqt://"),
            "{relay}"
        );
        assert!(relay["cert_sha256"].as_str().unwrap().len() == 64);
        relay["id"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        placed(a.join(&alice, &room, j!({"region": "us"})).await),
        "c"
    );
    // a carries two sessions: placement in eu moves to b once the load is seen (1 s beats).
    let _busy = [
        client(a, "r9", "x", SUB).await,
        client(a, "r9", "y", SUB).await,
    ];
    let mut node = String::new();
    for _ in 0..40 {
        node = placed(a.join(&alice, &room, j!({})).await);
        if node == "b" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node, "b", "the answering node's region, least loaded");
    // c leaves: a join asking for us goes to the least loaded node anywhere.
    c.nodes.pop().unwrap().stop().await;
    let a = &c.nodes[0];
    let mut node = String::new();
    for _ in 0..50 {
        node = placed(a.join(&alice, &room, j!({"region": "us"})).await);
        if node != "c" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node, "b");
    let r = json(
        a.http(),
        "POST",
        &format!("/api/rooms/{room}/join"),
        Some(&alice),
        j!({"region": "x".repeat(65)}),
    )
    .await;
    assert_eq!(r.status, 200, "an unknown region is only a preference");
    for n in c.nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_credentials_read_only_the_nodes_own_publishers() {
    use roomcast::auth::TokenIssuer;
    use roomcast::relay::remote::PeerClaims;
    let c = cluster().await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let (_publisher, _video, _task) = alice_video(a, b).await;
    // b reads alice from a for its own viewer.
    let viewer = client(b, "r1", "bob", SUB).await;
    let _rx = watch(&viewer, "r1", "alice", "video").await;

    let credential = TokenIssuer::new(CLUSTER_SECRET.as_bytes())
        .mint_as(&PeerClaims::new("z", Duration::from_secs(60)))
        .unwrap();
    let ns = || namespace(&["room", "r1", "alice"]).unwrap();
    // On a, alice's origin, a node reads her track.
    let peer_a = roomcast::client::connect(&a.quic(), Some(&credential))
        .await
        .unwrap();
    let _served = roomcast::client::subscribe(&peer_a, ns(), "video")
        .await
        .expect("the origin serves a node");
    // On b, which reads her from a, a node gets nothing: media never travels on.
    let peer_b = roomcast::client::connect(&b.quic(), Some(&credential))
        .await
        .unwrap();
    let err = roomcast::client::subscribe(&peer_b, ns(), "video")
        .await
        .err()
        .expect("a node read a namespace b reads from another node");
    // DOES_NOT_EXIST (the crate keeps the reason in its log only), where a viewer's
    // subscription just succeeded.
    assert!(err.to_string().contains("not found"), "{err}");

    // A credential signed with anything but the cluster secret is no credential.
    let forged = TokenIssuer::new(TOKEN_SECRET.as_bytes())
        .mint_as(&PeerClaims::new("z", Duration::from_secs(60)))
        .unwrap();
    let reason = match roomcast::client::connect(&a.quic(), Some(&forged)).await {
        Ok(c) => tokio::time::timeout(Duration::from_secs(5), c.closed())
            .await
            .expect("a forged credential was let in")
            .to_string(),
        Err(e) => format!("{e:#}"),
    };
    assert!(reason.contains("closed by peer"), "{reason}");
    for n in c.nodes {
        n.stop().await;
    }
}

/// Registers `who` on `node` and joins `room` there; returns the media token.
async fn member(node: &Child, room: &str, who: &str) -> String {
    let login = node.user(who).await;
    let r = node.join(&login, room, j!({})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["token"].as_str().unwrap().to_owned()
}

/// The next event of `kind` about `identity` (others skipped); panics after 3 s.
async fn event_about(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    kind: &str,
    key: &str,
    value: &str,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) if e["type"] == kind && e["data"][key] == value => return e,
            Ok(Some(_)) => {}
            _ => panic!("no {kind} event with {key} = {value}"),
        }
    }
}

/// The close reason a session with `token` gets from `node`.
async fn refusal(node: &Child, token: &str) -> String {
    common::refusal(&node.quic(), token).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_chat_permissions_and_bans_reach_every_node() {
    let c = cluster().await;
    let (a, b, cc) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let host = a.user("host").await;
    let room = a.room(&host, j!({"name": "spanning"})).await;
    let host_media = a.join(&host, &room, j!({})).await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let carol_token = member(a, &room, "carol").await;
    let bob_token = member(a, &room, "bob").await;
    let dave_token = member(b, &room, "dave").await;

    // carol on c reads the room's events there.
    let carol = roomcast::client::connect(&cc.quic(), Some(&carol_token))
        .await
        .unwrap();
    let mut ev = events(&carol, &room).await;
    // bob connects to a and publishes: c's members hear of it.
    let bob = roomcast::client::connect(&a.quic(), Some(&bob_token))
        .await
        .unwrap();
    event_about(&mut ev, "joined", "identity", "bob").await;
    let (mut writers, _task) = roomcast::client::publish(
        &bob,
        namespace(&["room", &room, "bob"]).unwrap(),
        &["video"],
    )
    .unwrap();
    let mut video = writers.remove(0);
    event_about(&mut ev, "track_published", "identity", "bob").await;

    // Chat sent through a's API reaches carol on c.
    let r = json(
        a.http(),
        "POST",
        &format!("/api/rooms/{room}/chat"),
        Some(&host_media),
        j!({"text": "hello from a 👋"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let chat = loop {
        let e = tokio::time::timeout(Duration::from_secs(3), ev.recv())
            .await
            .expect("no chat event on c")
            .unwrap();
        if e["type"] == "chat" {
            break e;
        }
    };
    assert_eq!(chat["data"]["message"]["text"], "hello from a 👋");
    assert_eq!(chat["data"]["message"]["username"], "host");

    // carol watches bob's video on c (read from a).
    let (sub, reader) =
        roomcast::client::subscribe(&carol, namespace(&["room", &room, "bob"]).unwrap(), "video")
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(roomcast::client::read_track(reader, tx));
    write_group(&mut video, 0, 2, 300);
    for o in 0..2 {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("carol reads bob across nodes")
            .unwrap();
        assert_eq!((got.group, got.object), (0, o));
    }

    // The host takes carol's subscribe grant through a: her subscription on c ends within
    // a second, with PUBLISH_DONE UNAUTHORIZED.
    let r = json(
        a.http(),
        "POST",
        &format!("/api/rooms/{room}/participants/carol/grants"),
        Some(&host),
        j!({"subscribe": false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let took = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(1), sub.closed())
        .await
        .expect("the change made on a did not act on c within a second")
        .ok();
    assert_eq!(sub.publish_done().expect("PUBLISH_DONE").status_code, 0x1);
    assert!(took.elapsed() < Duration::from_secs(1));
    event_about(&mut ev, "permissions_changed", "identity", "carol").await;

    // dave is banned through b: his token is refused on a and on c.
    let r = json(
        b.http(),
        "PUT",
        &format!("/api/rooms/{room}/bans/dave"),
        Some(&host),
        j!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut refused = vec![];
    for node in [a, cc] {
        // The change travels through Redis: allow it a moment.
        let mut reason = String::new();
        for _ in 0..20 {
            reason = refusal(node, &dave_token).await;
            if reason.contains("banned") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        refused.push(reason);
    }
    for reason in &refused {
        assert!(reason.contains("banned"), "{refused:?}");
    }
    for n in c.nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_closed_as_empty_opens_again_on_every_node() {
    let c = cluster().await;
    let (a, cc) = (&c.nodes[0], &c.nodes[2]);
    let host = a.user("host").await;
    let room = a
        .room(&host, j!({"name": "closes", "empty_timeout_secs": 0}))
        .await;
    let carol = a.user("carol").await;
    let token = |r: common::http::Response| r.json()["token"].as_str().unwrap().to_owned();
    // carol comes and goes on a: the room is empty everywhere and closes (on every node).
    let first = token(a.join(&carol, &room, j!({})).await);
    // Closures count in seconds: a token of the closing second is refused by its `jti`
    // (token_revoked); one from an earlier second as the room's (room_closed), checked here.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let session = roomcast::client::connect(&a.quic(), Some(&first))
        .await
        .unwrap();
    drop(session);
    // Probed on c until refused (a probe let in leaves at once, so the room stays empty).
    let mut refused = String::new();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let probe = match roomcast::client::connect(&cc.quic(), Some(&first)).await {
            Ok(probe) => probe,
            Err(e) => {
                refused = format!("{e:#}");
                break;
            }
        };
        if let Ok(reason) = tokio::time::timeout(Duration::from_millis(300), probe.closed()).await {
            refused = reason.to_string();
            break;
        }
    }
    assert!(
        refused.contains("room_closed"),
        "not closed on c: {refused:?}"
    );
    // She joins again: on c, where the room closed too, her session finds the room's events.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = token(a.join(&carol, &room, j!({})).await);
    let on_c = roomcast::client::connect(&cc.quic(), Some(&again))
        .await
        .unwrap();
    let mut ev = events(&on_c, &room).await;
    event_about(&mut ev, "joined", "identity", "carol").await;
    for n in c.nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_what_other_nodes_publish() {
    let c = cluster().await;
    let (a, b, cc) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    // carol on c discovers the room before anyone publishes.
    let carol = client(cc, "r1", "carol", SUB).await;
    let d = discover(&carol, "r1").await;
    let (_publisher, _video, task) = alice_video(a, b).await;
    assert_eq!(next_change(&d).await, (true, "room/r1/alice".to_owned()));
    // dave enters on b once alice publishes: his discovery lists her at once.
    let dave = client(b, "r1", "dave", SUB).await;
    let d2 = discover(&dave, "r1").await;
    assert_eq!(next_change(&d2).await, (true, "room/r1/alice".to_owned()));
    // alice stops: both are told.
    task.abort();
    assert_eq!(next_change(&d).await, (false, "room/r1/alice".to_owned()));
    assert_eq!(next_change(&d2).await, (false, "room/r1/alice".to_owned()));
    for n in c.nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_raised_hand_queue_for_the_room_on_every_node() {
    let c = cluster().await;
    let (a, b, cc) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let host = a.user("host").await;
    let room = a
        .room(&host, j!({"name": "class", "mode": "classroom"}))
        .await;
    let carol = member(b, &room, "carol").await;
    let hands = |node: &Child| {
        let (http, host, room) = (node.http(), host.clone(), room.clone());
        async move {
            let r = json(
                http,
                "GET",
                &format!("/api/rooms/{room}/hands"),
                Some(&host),
                serde_json::Value::Null,
            )
            .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            r.json()["hands"].clone()
        }
    };
    // carol raises her hand through b: a's queue has it.
    let r = json(
        b.http(),
        "POST",
        &format!("/api/rooms/{room}/hand"),
        Some(&carol),
        j!({"raised": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut seen = serde_json::Value::Null;
    for _ in 0..20 {
        seen = hands(a).await;
        if seen == j!(["carol"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, j!(["carol"]), "the queue on a");
    // The host gives her the floor through c: her hand is lowered on every node.
    let r = json(
        cc.http(),
        "POST",
        &format!("/api/rooms/{room}/participants/carol/floor"),
        Some(&host),
        j!({"granted": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for node in [a, b, cc] {
        let mut seen = serde_json::Value::Null;
        for _ in 0..20 {
            seen = hands(node).await;
            if seen == j!([]) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(seen, j!([]), "the queue after the floor");
    }
    for n in c.nodes {
        n.stop().await;
    }
}
