//! Media resources one client cannot exhaust, each written as the attack: subscribers that
//! acknowledge packets but never open flow control, a publisher that fills the relay's cache,
//! a publisher whose group streams break, and a subscriber that asks for more subscriptions
//! than there is stream credit for. In each, a neighbour keeps getting every object.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::media::{drain, open_group, published, watch, write_group};
use common::process::{rss_mib, serve};
use common::{Relay, PUB, SUB};
use moq_transport::serve::{ServeError, Subgroup};
use roomcast::auth::{Claims, Grant, TokenIssuer};
use roomcast::client::{self, namespace, synthetic_payload, Client};
use roomcast::config::Config;

fn from(last: u8) -> Option<SocketAddr> {
    Some(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
        0,
    ))
}

/// A peer that acknowledges every packet but grants the relay two streams of 4 KiB and
/// never reads them, so it never grants more.
fn stingy() -> client::Options {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(2u32.into());
    t.stream_receive_window(4096u32.into());
    t.receive_window(65536u32.into());
    client::Options {
        transport: Some(Arc::new(t)),
        ..Default::default()
    }
}

/// The relay's RSS may grow by at most this much while 100 stalled subscribers sit on a
/// 10 MiB/s track (1 MiB groups) and another publisher streams 5 MiB/s into one group stream
/// that never ends, on subgroup 1 (which the relay does not relay). Before the bounds, each
/// stalled subscriber pinned every group from its third on (120 MiB in this run), and
/// moq-transport buffered the unread stream whole (60 MiB).
const STALLED_RSS_GROWTH_MIB: f64 = 48.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscribers_cost_bounded_memory_and_a_neighbour_gets_every_object() {
    let secret = "bounds-test-secret-0123456789abcdef";
    let dir = std::env::temp_dir().join(format!("roomcast-bounds-{}", uuid::Uuid::new_v4()));
    let relay = serve(
        &dir,
        &[
            "--token-secret",
            secret,
            "--max-sessions-per-address",
            "1000",
            "--max-group-bytes",
            "4194304",
        ],
    )
    .await;
    let (pid, target) = (relay.pid(), relay.quic.clone());
    let issuer = TokenIssuer::new(secret.as_bytes());
    let token = |who: &str, grants: &[Grant]| {
        issuer
            .mint(&Claims::new(
                who,
                "r1",
                grants.iter().copied().collect(),
                Duration::from_secs(300),
            ))
            .unwrap()
    };
    let publisher = client::connect(&target, Some(&token("alice", PUB)))
        .await
        .unwrap();
    let (mut w, _a) = client::publish(
        &publisher,
        namespace(&["room", "r1", "alice"]).unwrap(),
        &["video"],
    )
    .unwrap();
    let mut video = w.remove(0);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut stalled: Vec<(Client, moq_transport::session::Subscribe)> = vec![];
    for batch in 0..10 {
        let mut joins = tokio::task::JoinSet::new();
        for i in 0..10 {
            let (target, t) = (target.clone(), token(&format!("s{batch}x{i}"), SUB));
            joins.spawn(async move {
                let c = client::connect_with(&target, Some(&t), &stingy())
                    .await
                    .unwrap();
                let (sub, _reader) =
                    client::subscribe(&c, namespace(&["room", "r1", "alice"]).unwrap(), "video")
                        .await
                        .unwrap();
                c.set_reading(false);
                (c, sub)
            });
        }
        while let Some(r) = joins.join_next().await {
            stalled.push(r.unwrap());
        }
    }
    let viewer = client::connect(&target, Some(&token("bob", SUB)))
        .await
        .unwrap();
    let mut rx = watch(&viewer, "r1", "alice", "video").await;
    // Mallory's one stream never ends; the viewer's subscription makes the relay read it.
    let mallory = client::connect(&target, Some(&token("mallory", PUB)))
        .await
        .unwrap();
    let (mut mw, _m) = client::publish(
        &mallory,
        namespace(&["room", "r1", "mallory"]).unwrap(),
        &["video"],
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _mallory_rx = watch(&viewer, "r1", "mallory", "video").await;
    let mut endless = mw[0]
        .create(Subgroup {
            group_id: 0,
            subgroup_id: 1,
            priority: 128,
        })
        .unwrap();
    let base = rss_mib(pid);

    // 12 s of 1 MiB groups (16 objects of 64 KiB), ten a second.
    const GROUPS: u64 = 120;
    const OBJECTS: u64 = 16;
    let mut peak = base;
    for g in 0..GROUPS {
        write_group(&mut video, g, OBJECTS, 64 * 1024);
        for _ in 0..8 {
            // Once the relay stops the stream, writes may fail: that is the point.
            let _ = endless.write(synthetic_payload(0, 0, 64 * 1024));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_mib(pid));
    }
    let got = drain(&mut rx, Duration::from_secs(2)).await;
    peak = peak.max(rss_mib(pid));
    eprintln!("relay RSS: {base:.1} MiB with 100 stalled subscribers, peak {peak:.1} MiB");

    let per_group = common::media::intact_by_group(&got);
    let first = *per_group
        .keys()
        .next()
        .expect("the neighbour received nothing");
    assert!(first <= 1, "the neighbour started late, at group {first}");
    for g in first..GROUPS {
        assert_eq!(
            per_group.get(&g).map(Vec::len),
            Some(OBJECTS as usize),
            "the neighbour lost objects of group {g}"
        );
    }
    assert!(
        peak - base < STALLED_RSS_GROWTH_MIB,
        "relay RSS grew from {base:.1} MiB to {peak:.1} MiB"
    );

    // The stalled subscribers, once they read again, learn why their subscription ended.
    // PUBLISH_DONE counts every group stream the relay opened, also those it reset before
    // their headers got through; the subscriber waits for them up to its drain timeout
    // (moq-transport's 5 s, draft-18 section 10.11) before the subscription closes.
    for (c, sub) in stalled.iter().take(3) {
        c.set_reading(true);
        tokio::time::timeout(Duration::from_secs(12), sub.closed())
            .await
            .expect("a stalled subscription must have ended")
            .ok();
        let done = sub.publish_done().expect("PUBLISH_DONE");
        assert_eq!(done.status_code, 0x5, "TOO_FAR_BEHIND: {done:?}");
    }
    drop(stalled);
    drop(relay);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_over_its_media_budget_loses_its_own_groups_not_its_neighbours() {
    let relay = Relay::start_with(Config {
        session_cache_bytes: Some(2 << 20),
        address_cache_bytes: Some(3 << 20),
        cache_bytes: Some(16 << 20),
        max_group_bytes: Some(2 << 20),
        max_object_bytes: Some(256 << 10),
        ..Default::default()
    })
    .await;
    // The attacker, from 127.0.0.2, keeps groups open on eight tracks and watches them
    // itself, so the relay caches every byte.
    let tracks: Vec<String> = (0..8).map(|t| format!("t{t}")).collect();
    let names: Vec<&str> = tracks.iter().map(String::as_str).collect();
    let attacker = client::connect_from(
        &relay.quic(),
        Some(&relay.token("r1", "mallory", PUB)),
        from(2),
    )
    .await
    .unwrap();
    let (mut aw, _a) = client::publish(
        &attacker,
        namespace(&["room", "r1", "mallory"]).unwrap(),
        &names,
    )
    .unwrap();
    published(&relay, "r1", "mallory").await;
    let mut own = vec![];
    for t in &names {
        own.push(watch(&attacker, "r1", "mallory", t).await);
    }
    // A second session from the same address: together they may hold 3 MiB.
    let accomplice = client::connect_from(
        &relay.quic(),
        Some(&relay.token("r1", "trudy", PUB)),
        from(2),
    )
    .await
    .unwrap();
    let (mut tw, _t) = client::publish(
        &accomplice,
        namespace(&["room", "r1", "trudy"]).unwrap(),
        &["video"],
    )
    .unwrap();
    published(&relay, "r1", "trudy").await;
    let mut trudy_rx = watch(&accomplice, "r1", "trudy", "video").await;

    let alice = relay.client("r1", "alice", PUB).await;
    let (mut w, _b) = client::publish(
        &alice,
        namespace(&["room", "r1", "alice"]).unwrap(),
        &["video"],
    )
    .unwrap();
    published(&relay, "r1", "alice").await;
    let bob = relay.client("r1", "bob", SUB).await;
    let mut rx = watch(&bob, "r1", "alice", "video").await;
    let mut video = w.remove(0);

    // 8 tracks x 512 KiB of open groups: 4 MiB against a session budget of 2 MiB.
    let mut held = vec![];
    for (i, writer) in aw.iter_mut().enumerate() {
        held.push(open_group(writer, 0, 4, 128 << 10));
        if i == 3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The accomplice's 1.5 MiB would fit its own session's budget, not the address's.
    let trudy_open = open_group(&mut tw[0], 0, 12, 128 << 10);
    // The neighbour's own groups (256 KiB) fit its session's budget three times over.
    for g in 0..5 {
        write_group(&mut video, g, 8, 32 << 10);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = drain(&mut rx, Duration::from_millis(800)).await;
    let mut per_group: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for r in &got {
        per_group.entry(r.group).or_default().push(r.object);
    }
    let want: BTreeMap<u64, Vec<u64>> = (0..5).map(|g| (g, (0..8).collect())).collect();
    assert_eq!(
        per_group, want,
        "the neighbour must get every object, in order"
    );

    // What the attacker gets back is what fit its session's 2 MiB: 16 of its 32 objects.
    let mut returned = 0;
    for rx in &mut own {
        returned += drain(rx, Duration::from_millis(100)).await.len();
    }
    assert!(
        (1..=16).contains(&returned),
        "the attacker's groups past its budget must be dropped; {returned} of 32 objects came back"
    );
    let trudy_got = drain(&mut trudy_rx, Duration::from_millis(300)).await;
    assert!(
        trudy_got.len() < 12,
        "the address budget must stop the accomplice's group; it got {} objects",
        trudy_got.len()
    );
    drop((held, trudy_open));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_group_or_another_subgroup_costs_that_group_only() {
    let relay = Relay::start().await;
    let alice = relay.client("r1", "alice", PUB).await;
    let (mut w, _a) = client::publish(
        &alice,
        namespace(&["room", "r1", "alice"]).unwrap(),
        &["video"],
    )
    .unwrap();
    published(&relay, "r1", "alice").await;
    let mut video = w.remove(0);
    let bob = relay.client("r1", "bob", SUB).await;
    let (sub, reader) =
        client::subscribe(&bob, namespace(&["room", "r1", "alice"]).unwrap(), "video")
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (etx, mut erx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(client::read_track_groups(reader, tx, etx));

    write_group(&mut video, 0, 3, 500);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Group 1: two objects, then the publisher resets the stream (it dropped a late group).
    let broken = open_group(&mut video, 1, 2, 500);
    tokio::time::sleep(Duration::from_millis(200)).await;
    broken.close(ServeError::Cancel).unwrap();
    // Group 2 arrives on subgroup 1 only: relayed as it is.
    let mut other = video
        .create(Subgroup {
            group_id: 2,
            subgroup_id: 1,
            priority: 128,
        })
        .unwrap();
    other.write(synthetic_payload(2, 0, 500)).unwrap();
    drop(other);
    tokio::time::sleep(Duration::from_millis(200)).await;
    write_group(&mut video, 3, 3, 500);

    let got: Vec<_> = drain(&mut rx, Duration::from_millis(800))
        .await
        .iter()
        .map(|r| (r.group, r.object))
        .collect();
    assert_eq!(
        got,
        [
            (0, 0),
            (0, 1),
            (0, 2),
            (1, 0),
            (1, 1),
            (2, 0),
            (3, 0),
            (3, 1),
            (3, 2)
        ],
        "the track goes on after the broken group"
    );
    let mut ended = BTreeMap::new();
    while let Ok(seen) = erx.try_recv() {
        ended.insert(seen.group, seen.clean);
    }
    assert_eq!(
        ended,
        BTreeMap::from([(0, true), (1, false), (2, true), (3, true)]),
        "the broken group is reset for the subscriber, not finished as if whole"
    );
    assert!(sub.publish_done().is_none(), "the subscription must go on");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_past_the_stream_credit_are_answered_and_past_the_limit_refused() {
    // More subscriptions than the 256 request streams the relay used to allow.
    let relay = Relay::start_with(Config {
        max_subscriptions: Some(300),
        ..Default::default()
    })
    .await;
    let tracks: Vec<String> = (0..310).map(|t| format!("t{t}")).collect();
    let names: Vec<&str> = tracks.iter().map(String::as_str).collect();
    let alice = relay.client("r1", "alice", PUB).await;
    let (_w, _a) =
        client::publish(&alice, namespace(&["room", "r1", "alice"]).unwrap(), &names).unwrap();
    published(&relay, "r1", "alice").await;
    let bob = relay.client("r1", "bob", SUB).await;
    let mut ok = vec![];
    let mut refused = vec![];
    for t in &names {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            client::subscribe(&bob, namespace(&["room", "r1", "alice"]).unwrap(), t),
        )
        .await
        .unwrap_or_else(|_| panic!("SUBSCRIBE {t} (after {} accepted) hung", ok.len()));
        match r {
            Ok(pair) => ok.push(pair),
            Err(e) => refused.push(e.to_string()),
        }
    }
    assert_eq!(ok.len(), 300);
    assert_eq!(refused.len(), 10);
    for e in &refused {
        common::refused_with(e, 0x9, "too_many_subscriptions");
    }
    relay.stop().await;
}
