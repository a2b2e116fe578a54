//! Publishing and reading tracks in tests: synthetic groups, subscriptions read into
//! channels, and the room's decoded events.

use std::time::Duration;

use moq_transport::serve::{Subgroup, SubgroupWriter, SubgroupsWriter};
use roomcast::client::{self, namespace, synthetic_payload, Client, Received};
use serde_json::Value;
use tokio::sync::mpsc::{self, UnboundedReceiver};

/// Writes group `g` with `objects` synthetic objects of `size` bytes and ends it.
pub fn write_group(w: &mut SubgroupsWriter, g: u64, objects: u64, size: usize) {
    drop(open_group(w, g, objects, size));
}

/// Writes `objects` synthetic objects of `size` bytes into group `g` and leaves it open.
pub fn open_group(w: &mut SubgroupsWriter, g: u64, objects: u64, size: usize) -> SubgroupWriter {
    let mut group = w
        .create(Subgroup {
            group_id: g,
            subgroup_id: 0,
            priority: 128,
        })
        .unwrap();
    for o in 0..objects {
        group.write(synthetic_payload(g, o, size)).unwrap();
    }
    group
}

/// Subscribes to `who`'s `track`; every object read arrives on the returned channel.
pub async fn watch(c: &Client, room: &str, who: &str, track: &str) -> UnboundedReceiver<Received> {
    let ns = namespace(&["room", room, who]).unwrap();
    let (sub, reader) = client::subscribe(c, ns, track).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    // The subscription lasts as long as its track is read.
    tokio::spawn(async move {
        let _keep = sub;
        let _ = client::read_track(reader, tx).await;
    });
    rx
}

/// [`watch`], keeping the subscription (for its PUBLISH_DONE, or to update it).
pub async fn subscription(
    c: &Client,
    room: &str,
    who: &str,
    track: &str,
) -> (
    moq_transport::session::Subscribe,
    UnboundedReceiver<Received>,
) {
    let ns = namespace(&["room", room, who]).unwrap();
    let (sub, reader) = client::subscribe(c, ns, track).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(client::read_track(reader, tx));
    (sub, rx)
}

/// Everything that arrives until nothing has for `quiet`.
pub async fn drain(rx: &mut UnboundedReceiver<Received>, quiet: Duration) -> Vec<Received> {
    let mut out = vec![];
    while let Ok(Some(r)) = tokio::time::timeout(quiet, rx.recv()).await {
        out.push(r);
    }
    out
}

/// Subscribes to the room's events track over `c`; returns a receiver of decoded events.
pub async fn events(c: &Client, room: &str) -> UnboundedReceiver<Value> {
    let mut objects = watch(c, room, "_server", "events").await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(o) = objects.recv().await {
            if tx
                .send(serde_json::from_slice(&o.payload).unwrap())
                .is_err()
            {
                return;
            }
        }
    });
    rx
}

/// The next event of type `kind` (others are skipped); panics after 3 s.
pub async fn wait_event(rx: &mut UnboundedReceiver<Value>, kind: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) if e["type"] == kind => return e,
            Ok(Some(_)) => {}
            _ => panic!("no {kind} event"),
        }
    }
}

/// Waits (up to 3 s) until `who` publishes in `room`, so a subscription does not race the
/// PUBLISH_NAMESPACE. Synchronisation only: tests assert on what subscribers read.
pub async fn published(relay: &super::Relay, room: &str, who: &str) {
    let seen = super::eventually(Duration::from_secs(3), || {
        relay.server.relay.publishers(room).iter().any(|p| p == who)
    })
    .await;
    assert!(seen, "{who} never published in {room}");
}

/// Waits up to `within` for the subscription to end; its PUBLISH_DONE (status, stream count).
pub async fn publish_done(sub: &moq_transport::session::Subscribe, within: Duration) -> (u64, u64) {
    tokio::time::timeout(within, sub.closed())
        .await
        .expect("the subscription never ended")
        .ok();
    let done = sub.publish_done().expect("no PUBLISH_DONE");
    (done.status_code, done.stream_count)
}

/// Alice publishing `video` in room r1 (seen by the relay): her client, the track's writer and
/// the publication's task (dropping it ends the publication).
pub async fn alice_video(relay: &super::Relay) -> (Client, SubgroupsWriter, client::SessionTask) {
    let publisher = relay.client("r1", "alice", super::PUB).await;
    let ns = namespace(&["room", "r1", "alice"]).unwrap();
    let (mut w, task) = client::publish(&publisher, ns, &["video"]).unwrap();
    published(relay, "r1", "alice").await;
    (publisher, w.remove(0), task)
}

/// Subscribes to alice's video in r1 with `params`; objects arrive on the receiver.
pub async fn watch_with(
    c: &Client,
    params: moq_transport::coding::KeyValuePairs,
) -> anyhow::Result<(
    moq_transport::session::Subscribe,
    UnboundedReceiver<Received>,
)> {
    let ns = namespace(&["room", "r1", "alice"]).unwrap();
    let (sub, reader) = client::subscribe_with(c, ns, "video", params).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(client::read_track(reader, tx));
    Ok((sub, rx))
}

/// SUBSCRIBE_NAMESPACE on `room/<room>` over `c`, accepted.
pub async fn discover(c: &Client, room: &str) -> moq_transport::session::SubscribeNamespace {
    let mut subscriber = c.subscriber.clone();
    let d = subscriber
        .subscribe_namespace(
            moq_transport::coding::TrackNamespacePrefix::from_utf8_path(&format!("room/{room}")),
            Default::default(),
        )
        .await
        .unwrap();
    d.ok().await.unwrap();
    d
}

/// The next change of a participant namespace (the relay's own `_server` is skipped), as
/// (added, path).
pub async fn next_change(d: &moq_transport::session::SubscribeNamespace) -> (bool, String) {
    loop {
        let (added, ns) = match tokio::time::timeout(Duration::from_secs(4), d.next()).await {
            Ok(Ok(Some(moq_transport::session::NamespaceEvent::Added(ns)))) => (true, ns),
            Ok(Ok(Some(moq_transport::session::NamespaceEvent::Removed(ns)))) => (false, ns),
            other => panic!("no namespace change: {other:?}"),
        };
        let path = ns.to_utf8_path().trim_start_matches('/').to_owned();
        if !path.ends_with("/_server") {
            return (added, path);
        }
    }
}

/// The object ids of `got` by group, in arrival order; panics on an object whose bytes are
/// not what its publisher wrote (every byte is derived from its group and object).
pub fn intact_by_group(got: &[Received]) -> std::collections::BTreeMap<u64, Vec<u64>> {
    let mut groups = std::collections::BTreeMap::<u64, Vec<u64>>::new();
    for r in got {
        assert!(
            client::verify_payload(r.group, r.object, &r.payload).is_some(),
            "object {}/{} corrupt",
            r.group,
            r.object
        );
        groups.entry(r.group).or_default().push(r.object);
    }
    groups
}
