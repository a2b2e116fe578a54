//! Interoperability with an independent MoQ Transport draft-18 implementation: aiomoqt (Python,
//! from PyPI, pinned by `scripts/interop-setup.sh`, which `scripts/test.sh` runs). Its client
//! publishes to and subscribes from roomcast over raw QUIC and over WebTransport, against
//! roomcast's own client on the other side, and its refusals are read from its own errors.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::prelude::{Engine, BASE64_STANDARD};
use common::media::{published, watch, write_group};
use common::{Relay, PUB, SUB};
use roomcast::client::{self, namespace, verify_payload};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The Python with aiomoqt: `ROOMCAST_INTEROP_PYTHON`, or the venv the setup script makes.
fn python() -> PathBuf {
    let path = std::env::var_os("ROOMCAST_INTEROP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/interop/venv/bin/python")
        });
    assert!(
        path.exists(),
        "{} is missing: run scripts/interop-setup.sh (scripts/test.sh does) to install aiomoqt",
        path.display()
    );
    path
}

/// One aiomoqt peer process, killed when dropped.
struct Peer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    fn spawn(args: &[String]) -> Peer {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/aiomoqt_peer.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the aiomoqt peer");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Peer { child, lines }
    }

    /// The next line the peer printed, within `secs`.
    async fn line(&mut self, secs: u64) -> String {
        tokio::time::timeout(Duration::from_secs(secs), self.lines.next_line())
            .await
            .expect("the aiomoqt peer said nothing in time")
            .unwrap()
            .expect("the aiomoqt peer exited")
    }

    async fn ready(&mut self) {
        let line = self.line(20).await;
        assert_eq!(line, "ready", "aiomoqt peer: {line}");
    }

    /// Ends a publisher (it serves until stdin closes).
    async fn stop(mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.shutdown().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// Both front doors of `relay` as aiomoqt URLs.
fn urls(relay: &Relay) -> [(&'static str, String); 2] {
    [
        ("raw QUIC", format!("moqt://{}", relay.server.quic_addr)),
        (
            "WebTransport",
            format!("https://{}", relay.server.webtransport_addr),
        ),
    ]
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// aiomoqt publishes (PUBLISH_NAMESPACE, then serves roomcast's SUBSCRIBE): roomcast's client
/// receives every object of every group, in order, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiomoqt_publishes_through_roomcast() {
    let relay = Relay::start().await;
    for (label, url) in urls(&relay) {
        let token = relay.token("r1", "py", PUB);
        let mut publisher = Peer::spawn(&args(&[
            "publish",
            &url,
            &token,
            "room/r1/py",
            "video",
            "40",
            "3",
            "300",
        ]));
        publisher.ready().await;
        published(&relay, "r1", "py").await;
        let viewer = relay.client("r1", "viewer", SUB).await;
        let mut rx = watch(&viewer, "r1", "py", "video").await;
        let mut got = vec![];
        while got.len() < 15 {
            let r = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("{label}: objects stopped after {got:?}"))
                .unwrap();
            assert!(
                verify_payload(r.group, r.object, &r.payload).is_some(),
                "{label}: object {}/{} altered",
                r.group,
                r.object
            );
            got.push((r.group, r.object));
        }
        // Whole groups from the first one delivered, each in order.
        let first = got[0].0;
        assert_eq!(got[0].1, 0, "{label}: starts at a group's first object");
        let expect: Vec<_> = (first..first + 5)
            .flat_map(|g| (0..3).map(move |o| (g, o)))
            .collect();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, expect, "{label}");
        publisher.stop().await;
    }
    relay.stop().await;
}

/// aiomoqt subscribes (Next Group Start) to a track roomcast's client publishes: every
/// object arrives intact; and a subscription outside its token's room is refused with the
/// code and reason aiomoqt reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiomoqt_subscribes_through_roomcast() {
    let relay = Relay::start().await;
    let alice = relay.client("r1", "alice", PUB).await;
    let ns = namespace(&["room", "r1", "alice"]).unwrap();
    let (mut w, _task) = client::publish(&alice, ns, &["video"]).unwrap();
    let mut video = w.remove(0);
    published(&relay, "r1", "alice").await;
    let mut next_group = 0;
    for (label, url) in urls(&relay) {
        let token = relay.token("r1", "py", SUB);
        let mut subscriber = Peer::spawn(&args(&[
            "subscribe",
            &url,
            &token,
            "room/r1/alice",
            "video",
            "12",
        ]));
        subscriber.ready().await;
        let start = next_group;
        for _ in 0..4 {
            write_group(&mut video, next_group, 3, 500);
            next_group += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut got = vec![];
        for _ in 0..12 {
            let line: Value = serde_json::from_str(&subscriber.line(10).await).unwrap();
            let (g, o) = (
                line["group"].as_u64().unwrap(),
                line["object"].as_u64().unwrap(),
            );
            let payload = BASE64_STANDARD
                .decode(line["payload"].as_str().unwrap())
                .unwrap();
            assert!(
                verify_payload(g, o, &payload).is_some(),
                "{label}: object {g}/{o} altered"
            );
            got.push((g, o));
        }
        got.sort();
        let expect: Vec<_> = (start..start + 4)
            .flat_map(|g| (0..3).map(move |o| (g, o)))
            .collect();
        assert_eq!(got, expect, "{label}");

        let mut outsider = Peer::spawn(&args(&[
            "subscribe",
            &url,
            &relay.token("r2", "py", SUB),
            "room/r1/alice",
            "video",
            "1",
        ]));
        let refusal: Value = serde_json::from_str(&outsider.line(20).await).unwrap();
        assert_eq!(refusal["error"], 0x1, "{label}: {refusal}");
        let reason = refusal["reason"].as_str().unwrap();
        assert!(reason.starts_with("wrong_room: "), "{label}: {reason}");
    }
    relay.stop().await;
}

/// Two aiomoqt peers without tokens meet in an open namespace (`public_prefixes`), as in the
/// MoQ interop runs: one publishes, the other subscribes, on each transport; every object
/// arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiomoqt_peers_without_tokens_meet_in_an_open_namespace() {
    let relay = Relay::start_with(roomcast::config::Config {
        public_prefixes: vec!["moq-test".into()],
        ..Default::default()
    })
    .await;
    for ((label, url), ns) in urls(&relay)
        .into_iter()
        .zip(["moq-test/quic", "moq-test/wt"])
    {
        let mut publisher = Peer::spawn(&args(&[
            "publish", &url, "-", ns, "video", "40", "3", "300",
        ]));
        publisher.ready().await;
        let mut subscriber = Peer::spawn(&args(&["subscribe", &url, "-", ns, "video", "9"]));
        // Objects may come before its "ready" (the publisher is already sending).
        let mut got = vec![];
        while got.len() < 9 {
            let line = subscriber.line(10).await;
            if line == "ready" {
                continue;
            }
            let line: Value = serde_json::from_str(&line).unwrap();
            assert!(line.get("error").is_none(), "{label}: refused: {line}");
            let (g, o) = (
                line["group"].as_u64().unwrap(),
                line["object"].as_u64().unwrap(),
            );
            let payload = BASE64_STANDARD
                .decode(line["payload"].as_str().unwrap())
                .unwrap();
            assert!(
                verify_payload(g, o, &payload).is_some(),
                "{label}: object {g}/{o} altered"
            );
            got.push((g, o));
        }
        // Whole groups, each from its first object.
        got.sort();
        let first = got[0].0;
        let expect: Vec<_> = (first..first + 3)
            .flat_map(|g| (0..3).map(move |o| (g, o)))
            .collect();
        assert_eq!(got, expect, "{label}");
        publisher.stop().await;
    }
    relay.stop().await;
}
