//! Fan-out over real QUIC on 127.0.0.1: every object reaches every subscriber intact.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::{Relay, PUB, SUB};
use moq_transport::serve::Subgroup;
use roomcast::client::{self, namespace, synthetic_payload, verify_payload, Received};
use tokio::sync::mpsc;

const GROUPS: u64 = 4;
const OBJECTS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_subscribers_receive_every_object_byte_identical_in_order() {
    let relay = Relay::start().await;
    let publisher = relay.client("r1", "alice", PUB).await;
    let ns = namespace(&["room", "r1", "alice"]).unwrap();
    let (mut writers, _announce) = client::publish(&publisher, ns.clone(), &["video"]).unwrap();
    let mut video = writers.remove(0);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut subs = vec![];
    for i in 0..50 {
        let c = relay.client("r1", &format!("viewer{i}"), SUB).await;
        let (handle, reader) = client::subscribe(&c, ns.clone(), "video").await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(client::read_track(reader, tx));
        subs.push((c, handle, rx, task));
    }

    let mut sent: BTreeMap<(u64, u64), Bytes> = BTreeMap::new();
    for g in 0..GROUPS {
        let mut group = video
            .create(Subgroup {
                group_id: g,
                subgroup_id: 0,
                priority: 128,
            })
            .unwrap();
        for o in 0..OBJECTS {
            let p = synthetic_payload(g, o, 1000 + (o as usize) * 37);
            sent.insert((g, o), p.clone());
            group.write(p).unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(group);
    }

    for (i, (_c, _h, rx, _t)) in subs.iter_mut().enumerate() {
        let got = collect(rx, sent.len()).await;
        assert_eq!(
            got.len(),
            sent.len(),
            "subscriber {i} got {} objects",
            got.len()
        );
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for r in &got {
            assert_eq!(
                sent.get(&(r.group, r.object)),
                Some(&r.payload),
                "subscriber {i}"
            );
            assert!(verify_payload(r.group, r.object, &r.payload).is_some());
            if let Some(prev) = last.insert(r.group, r.object) {
                assert!(
                    r.object > prev,
                    "subscriber {i}: group {} out of order",
                    r.group
                );
            }
        }
    }
    assert!(relay.metric("roomcast_objects_out") >= (50 * sent.len()) as f64);
    assert_eq!(relay.metric("roomcast_dropped_groups"), 0.0);
    relay.stop().await;
}

async fn collect(rx: &mut mpsc::UnboundedReceiver<Received>, n: usize) -> Vec<Received> {
    let mut out = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(r)) => out.push(r),
            _ => break,
        }
    }
    out
}
