//! A cluster under faults: three `roomcast serve` processes with a real `redis-server` and
//! PostgreSQL; an edge node and then the origin node killed with SIGKILL, and Redis restarted,
//! while a publisher and a viewer go on. The test's clients act as a real client does: a viewer
//! that gets nothing for a second connects to another node; a publisher whose node is gone
//! connects to another.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Services;
use common::process::Child;
use moq_transport::serve::{Subgroup, SubgroupsWriter};
use roomcast::auth::Grant;
use roomcast::client::{self, namespace, synthetic_payload, verify_payload, Client, Received};
use tokio::sync::mpsc;

/// A group every 200 ms, 4 objects each.
const GROUP_EVERY: Duration = Duration::from_millis(200);
const OBJECTS: u64 = 4;

fn token(who: &str, grants: &[Grant]) -> String {
    common::cluster::token("r1", who, grants)
}

/// Publishes alice's video through `node` until dropped; group ids go on from `first`.
struct Publisher {
    _client: Client,
    _task: client::SessionTask,
    video: SubgroupsWriter,
}

async fn publish(node: &Child) -> Publisher {
    let c = client::connect(&node.quic, Some(&token("alice", &[Grant::Publish])))
        .await
        .unwrap();
    let (mut w, task) =
        client::publish(&c, namespace(&["room", "r1", "alice"]).unwrap(), &["video"]).unwrap();
    Publisher {
        _client: c,
        _task: task,
        video: w.remove(0),
    }
}

/// Writes group `g` (paced within [`GROUP_EVERY`]).
async fn write_group(p: &mut Publisher, g: u64) -> bool {
    let Ok(mut group) = p.video.create(Subgroup {
        group_id: g,
        subgroup_id: 0,
        priority: 128,
    }) else {
        return false;
    };
    for o in 0..OBJECTS {
        if group.write(synthetic_payload(g, o, 800)).is_err() {
            return false;
        }
        tokio::time::sleep(GROUP_EVERY / (OBJECTS as u32 + 1)).await;
    }
    true
}

/// A viewer of alice's video through `node`: objects arrive on the receiver.
async fn view(node: &Child) -> (Client, mpsc::UnboundedReceiver<Received>) {
    let c = client::connect(&node.quic, Some(&token("bob", &[Grant::Subscribe])))
        .await
        .unwrap();
    let rx = subscribe(&c).await;
    (c, rx)
}

async fn subscribe(c: &Client) -> mpsc::UnboundedReceiver<Received> {
    // The namespace may take a moment to be claimed (a publisher that just moved).
    for _ in 0..50 {
        if let Ok((sub, reader)) =
            client::subscribe(c, namespace(&["room", "r1", "alice"]).unwrap(), "video").await
        {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let _keep = sub;
                let _ = client::read_track(reader, tx).await;
            });
            return rx;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("alice never became readable");
}

/// Subscribes again over `c` until an object arrives (a subscription to a publication about to
/// be dropped ends; then the next one finds the new origin), within `within`.
async fn resume(c: &Client, within: Duration) -> (Received, mpsc::UnboundedReceiver<Received>) {
    let deadline = Instant::now() + within;
    loop {
        let mut rx = subscribe(c).await;
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(first)) => return (first, rx),
            Ok(None) => continue,
            Err(_) => panic!("nothing to read within {within:?}"),
        }
    }
}

/// Checks what a viewer got: every object intact, groups in order, and only whole groups
/// missing (a group is seen from its first object to its last, or not at all) — except the
/// groups cut at the moments listed in `cuts` (the group in flight when a node died).
fn check(got: &[Received], cuts: usize) {
    let mut groups: Vec<(u64, Vec<u64>)> = vec![];
    for r in got {
        assert!(
            verify_payload(r.group, r.object, &r.payload).is_some(),
            "object {}/{} corrupt",
            r.group,
            r.object
        );
        match groups.last_mut() {
            Some((g, objects)) if *g == r.group => objects.push(r.object),
            Some((g, _)) => {
                assert!(r.group > *g, "group {} after {}", r.group, g);
                groups.push((r.group, vec![r.object]));
            }
            None => groups.push((r.group, vec![r.object])),
        }
    }
    let partial = groups
        .iter()
        .filter(|(_, o)| *o != (0..OBJECTS).collect::<Vec<_>>())
        .count();
    assert!(
        partial <= cuts + 1,
        "{partial} partial groups (only the groups in flight at a fault, and the last): {groups:?}"
    );
}

/// Reads for `d` (or until nothing came for 2 s); returns what arrived.
async fn read_for(rx: &mut mpsc::UnboundedReceiver<Received>, d: Duration) -> Vec<Received> {
    read_until_stall(rx, Duration::from_secs(2), Instant::now() + d).await
}

/// Reads until nothing came for `stall`, or `until` passes; returns what arrived.
async fn read_until_stall(
    rx: &mut mpsc::UnboundedReceiver<Received>,
    stall: Duration,
    until: Instant,
) -> Vec<Received> {
    let mut got = vec![];
    while Instant::now() < until {
        match tokio::time::timeout(stall, rx.recv()).await {
            Ok(Some(r)) => got.push(r),
            _ => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_nodes_and_a_restarted_redis_cost_only_whole_groups() {
    let mut s = Services::start();
    let a = s.node("a", "eu").await;
    let b = s.node("b", "eu").await;
    let mut c = s.node("c", "eu").await;
    let mut publisher = publish(&a).await;
    // Let a claim the namespace before the viewer looks for it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_viewer, mut rx) = view(&c).await;

    // The publisher writes a group every 200 ms in the background of what follows.
    let (moved_tx, mut moved_rx) = mpsc::unbounded_channel::<Publisher>();
    let writer = tokio::spawn(async move {
        let mut g = 0;
        loop {
            if let Ok(p) = moved_rx.try_recv() {
                // The publisher reconnected elsewhere (its old node died).
                publisher = p;
            }
            if !write_group(&mut publisher, g).await {
                tokio::time::sleep(GROUP_EVERY).await;
            }
            g += 1;
            if g > 200 {
                return;
            }
        }
    });

    // 1. Steady state: the viewer on c reads alice from a.
    let mut got = read_until_stall(
        &mut rx,
        Duration::from_secs(2),
        Instant::now() + Duration::from_secs(1),
    )
    .await;
    assert!(
        got.len() >= 4,
        "the viewer read {} objects before any fault",
        got.len()
    );

    // 2. The edge node c is killed: the viewer notices the stall (1 s without media) and
    // connects to b, and reads again within 3 s of the kill.
    c.process.start_kill().unwrap();
    let killed = Instant::now();
    got.extend(
        read_until_stall(
            &mut rx,
            Duration::from_secs(1),
            killed + Duration::from_secs(5),
        )
        .await,
    );
    let (_viewer, mut rx) = view(&b).await;
    let first = tokio::time::timeout(Duration::from_secs(3), rx.recv())
        .await
        .expect("no media on b")
        .unwrap();
    let resumed = killed.elapsed();
    eprintln!("edge killed: the viewer read again on b {resumed:?} after the kill");
    assert!(
        resumed < Duration::from_secs(3),
        "resumed on b {resumed:?} after the kill"
    );
    assert_eq!(
        first.object, 0,
        "the viewer resumes at a group's first object"
    );
    got.push(first);
    got.extend(read_for(&mut rx, Duration::from_secs(1)).await);

    // 3. Redis restarts (empty): media already flowing keeps flowing, the nodes re-register
    // and reclaim, and a new viewer on b can still find alice.
    s.redis.kill();
    got.extend(read_for(&mut rx, Duration::from_secs(1)).await);
    s.redis.resume();
    tokio::time::sleep(Duration::from_secs(3)).await;
    got.extend(read_for(&mut rx, Duration::from_millis(500)).await);
    let c_again = s.node("c", "eu").await;
    let (_late, mut late_rx) = view(&c_again).await;
    let late = tokio::time::timeout(Duration::from_secs(3), late_rx.recv())
        .await
        .expect("a viewer after the Redis restart reads nothing")
        .unwrap();
    assert_eq!(late.object, 0);

    // 4. The origin a is killed: the publisher connects to b, b becomes the origin, and the
    // viewers resubscribe when their subscription ends.
    let mut a = a;
    a.process.start_kill().unwrap();
    let killed = Instant::now();
    moved_tx.send(publish(&b).await).unwrap();
    got.extend(
        read_until_stall(
            &mut rx,
            Duration::from_secs(1),
            killed + Duration::from_secs(10),
        )
        .await,
    );
    let (again, mut rx) = resume(&_viewer, Duration::from_secs(5)).await;
    eprintln!(
        "origin killed: the viewer on b read again {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(
        again.object, 0,
        "the viewer on b resumes at a group's first object"
    );
    let (late, _late_rx) = resume(&_late, Duration::from_secs(5)).await;
    eprintln!(
        "origin killed: the viewer on c read again {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(
        late.object, 0,
        "the viewer on c resumes at a group's first object"
    );
    got.push(again);
    got.extend(read_for(&mut rx, Duration::from_secs(1)).await);
    writer.abort();
    // Three faults: the groups in flight at each may be cut; everything else whole, in order.
    eprintln!(
        "the viewer read {} objects of groups {}..={}",
        got.len(),
        got.first().map_or(0, |r| r.group),
        got.last().map_or(0, |r| r.group)
    );
    check(&got, 3);
    drop(c_again);
    drop(b);
}

/// The node-to-node hop over an ordinary internet path: node b reaches the origin a through
/// the impairment proxy (20 ms +- 5 ms each way, so packets reorder, and 5 % loss), the
/// publisher and the viewer reach their nodes directly. The viewer on b must get every group
/// up to the live edge, every object intact and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hop_between_nodes_survives_jitter_and_loss() {
    use roomcast::impair::{Config, Impairment, Proxy};
    let s = Services::start();
    // a tells the other nodes to reach it at the proxy's port.
    let port = common::services::free_port();
    let url = format!("moqt://127.0.0.1:{port}/");
    let a = s.node_with("a", "eu", &["--node-quic-url", &url]).await;
    let spec: Impairment = "delay=20ms,jitter=5ms,loss=5%".parse().unwrap();
    let upstream = a.quic.url.socket_addrs(|| None).unwrap()[0];
    let proxy = Proxy::start(
        format!("127.0.0.1:{port}").parse().unwrap(),
        upstream,
        Config {
            seed: 12,
            up: spec.clone(),
            down: spec,
        },
    )
    .await
    .unwrap();
    let b = s.node("b", "eu").await;
    let mut publisher = publish(&a).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_viewer, mut rx) = view(&b).await;
    const GROUPS: u64 = 25;
    for g in 0..GROUPS {
        assert!(
            write_group(&mut publisher, g).await,
            "group {g} not written"
        );
    }
    let got = read_until_stall(
        &mut rx,
        Duration::from_secs(3),
        Instant::now() + Duration::from_secs(10),
    )
    .await;
    let stats = proxy.stop().await;
    eprintln!("through the proxy: {stats:?}");
    assert!(
        stats.up.lost + stats.down.lost > 0 && stats.down.reordered > 0,
        "the path lost or reordered nothing: not impaired"
    );
    // Groups travel on streams of their own, so a retransmitted tail of one group may come
    // after the next group's head; within a group, objects are in order, each once, intact.
    let groups = common::media::intact_by_group(&got);
    eprintln!(
        "the viewer on b read {} objects of {} groups",
        got.len(),
        groups.len()
    );
    for (g, objects) in &groups {
        assert!(
            objects.iter().copied().eq(0..objects.len() as u64),
            "group {g}: objects {objects:?}"
        );
    }
    assert!(
        groups.contains_key(&(GROUPS - 1)),
        "the live edge never arrived: {groups:?}"
    );
    let whole = groups
        .values()
        .filter(|o| o.len() as u64 == OBJECTS)
        .count() as u64;
    assert!(
        whole >= GROUPS - 2,
        "groups missing or cut over a lossy hop: {groups:?}"
    );
}
