//! The token-minting examples of README's "Application backends" guide
//! (`docs/examples/mint-token.mjs` with Node's crypto, `docs/examples/mint_token.py` with
//! PyJWT) run as an application backend would run them, and the relay accepts their tokens:
//! alice publishes with a token from the Node example, bob reads her with one from the
//! Python example. A token the example signs with another secret is refused.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::media::{watch, write_group};
use common::Relay;
use roomcast::client::{self, namespace};
use roomcast::config::Config;

const SECRET: &str = "an-application-backend-shares-this-0123456789";

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("docs/examples")
        .join(name)
}

/// The venv scripts/interop-setup.sh fills (PyJWT), or `ROOMCAST_INTEROP_PYTHON`.
fn python() -> PathBuf {
    std::env::var_os("ROOMCAST_INTEROP_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/interop/venv/bin/python"),
        PathBuf::from,
    )
}

/// Runs `program args` with the secret in the environment; its stdout, trimmed.
fn mint(program: impl AsRef<std::ffi::OsStr>, args: &[&str], secret: &str) -> String {
    let out = Command::new(program)
        .args(args)
        .env("ROOMCAST_TOKEN_SECRET", secret)
        .output()
        .expect("the example runs (node and the interop venv's python)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn node_token(room: &str, who: &str, grants: &str, secret: &str) -> String {
    let script = example("mint-token.mjs");
    mint(
        "node",
        &[script.to_str().unwrap(), room, who, grants, "600"],
        secret,
    )
}

fn python_token(room: &str, who: &str, grants: &str) -> String {
    let script = example("mint_token.py");
    mint(
        python(),
        &[script.to_str().unwrap(), room, who, grants, "600"],
        SECRET,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_minted_by_the_examples_are_accepted() {
    let relay = Relay::start_with(Config {
        token_secret: Some(SECRET.into()),
        ..Default::default()
    })
    .await;
    let alice = client::connect(
        &relay.quic(),
        Some(&node_token("r1", "Alice", "publish", SECRET)),
    )
    .await
    .expect("the Node example's token");
    let (mut writers, _task) = client::publish(
        &alice,
        namespace(&["room", "r1", "alice"]).unwrap(),
        &["video"],
    )
    .unwrap();
    common::media::published(&relay, "r1", "alice").await;
    let bob = client::connect(
        &relay.quic(),
        Some(&python_token("r1", "bob", "subscribe,chat")),
    )
    .await
    .expect("the Python example's token");
    let mut rx = watch(&bob, "r1", "alice", "video").await;
    write_group(&mut writers[0], 0, 3, 100);
    for o in 0..3 {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("bob reads alice")
            .unwrap();
        assert_eq!((got.group, got.object), (0, o));
    }

    // Signed with another secret: refused, with the reason on the wire.
    let forged = node_token(
        "r1",
        "eve",
        "subscribe",
        "not-the-relay-secret-0123456789abcdef",
    );
    let reason = common::refusal(&relay.quic(), &forged).await;
    assert!(reason.contains("signature"), "{reason}");
    relay.stop().await;
}

/// `roomcast token` reads only what signing needs: a cluster's environment (a Redis URL
/// without a node id, which `serve` refuses) does not stop it, its token verifies under the
/// secret, and a secret too short is refused as `serve` refuses it.
#[test]
fn roomcast_token_ignores_the_rest_of_a_cluster_configuration() {
    let dir = std::env::temp_dir().join(format!("roomcast-token-{}", uuid::Uuid::new_v4()));
    let run = |secret: &str| {
        Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(["token", "--room", "r1", "--identity", "alice"])
            .arg("--data-dir")
            .arg(&dir)
            .env("ROOMCAST_TOKEN_SECRET", secret)
            .env("ROOMCAST_REDIS_URL", "redis://127.0.0.1:1/")
            .env_remove("ROOMCAST_NODE_ID")
            .output()
            .expect("roomcast token runs")
    };
    let out = run(SECRET);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = roomcast::auth::TokenIssuer::new(SECRET.as_bytes())
        .verify(token.trim())
        .expect("the token verifies under the secret");
    assert_eq!((claims.sub.as_str(), claims.room.as_str()), ("alice", "r1"));
    let out = run("too short");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at least 32 bytes"), "{stderr}");
}
