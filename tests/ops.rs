//! What operators see: the web client served from the binary itself (content types, ETags,
//! revalidation), `/health` and `/ready`, JSON logs, the latency histograms in `/metrics`,
//! and the Grafana dashboard in `docs/` naming only metrics the relay exports.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::http::{raw, register, samples, with_headers};
use common::media::{alice_video, watch, write_group};
use common::{Relay, SUB};
use tokio::io::{AsyncBufReadExt, BufReader};

/// `roomcast serve` on 127.0.0.1 port 0 with `extra` flags: state under `dir` unless it runs
/// in `cwd` (then its defaults, relative to it), the ready line on stdout, `stderr` as asked.
fn spawn(
    dir: &std::path::Path,
    extra: &[&str],
    cwd: Option<&std::path::Path>,
    stderr: std::process::Stdio,
) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_roomcast"));
    command
        .args(["serve", "--http-listen", "127.0.0.1:0"])
        .args(["--webtransport-listen", "127.0.0.1:0"])
        .args([
            "--quic-listen",
            "127.0.0.1:0",
            "--whip-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("ROOMCAST_WEB_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true);
    match cwd {
        Some(cwd) => command.current_dir(cwd),
        None => command
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--cert-dir")
            .arg(dir.join("certs")),
    };
    command.spawn().unwrap()
}

#[tokio::test]
async fn the_web_client_is_served_from_the_binary() {
    // The relay binary, started from a directory without `web/` and without --web-dir.
    let dir = std::env::temp_dir().join(format!("roomcast-ops-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut process = spawn(&dir, &[], Some(&dir), std::process::Stdio::null());
    let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let http: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http=http://"))
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    assert!(!dir.join("web").exists());

    let page = with_headers(http, "GET", "/", "").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    assert!(String::from_utf8_lossy(&page.body).contains("<script type=\"module\" src=\"app.js\""));
    let etag = page.header("etag").expect("an ETag").to_owned();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    // Revalidation: the same ETag is answered 304 without a body.
    let again = with_headers(http, "GET", "/", &format!("If-None-Match: {etag}\r\n")).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    let other = with_headers(http, "GET", "/", "If-None-Match: \"something-else\"\r\n").await;
    assert_eq!(other.status, 200);

    let script = with_headers(http, "GET", "/app.js", "").await;
    assert_eq!(script.status, 200);
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        script.body,
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/web/app.js")).unwrap()
    );
    let style = with_headers(http, "HEAD", "/style.css", "").await;
    assert_eq!(style.status, 200);
    assert_eq!(
        style.header("content-type"),
        Some("text/css; charset=utf-8")
    );
    assert!(style.body.is_empty());
    for missing in ["/nope.js", "/../Cargo.toml", "/%2e%2e/Cargo.toml"] {
        assert_eq!(
            with_headers(http, "GET", missing, "").await.status,
            404,
            "{missing}"
        );
    }
    let posted = with_headers(http, "POST", "/index.html", "").await;
    assert_eq!(posted.status, 405);
    let unknown = with_headers(http, "POST", "/api/nothing-here", "").await;
    assert_eq!(unknown.status, 404);
    // The page's security headers apply to embedded files too.
    assert!(page
        .header("content-security-policy")
        .is_some_and(|c| c.contains("script-src 'self'")));
    let _ = process.start_kill();
    let _ = process.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_web_dir_serves_its_files_and_nothing_above() {
    // The harness serves web/ of the checkout through `web_dir`.
    let relay = Relay::start().await;
    let page = with_headers(relay.http(), "GET", "/", "").await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("app.js"));
    for above in ["/../Cargo.toml", "/%2e%2e/Cargo.toml", "/..%2fCargo.toml"] {
        let r = with_headers(relay.http(), "GET", above, "").await;
        assert_ne!(r.status, 200, "{above}");
        assert!(
            !String::from_utf8_lossy(&r.body).contains("[package]"),
            "{above}"
        );
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_until_draining_and_healthy_while_the_store_answers() {
    let relay = Relay::start().await;
    let health = raw(relay.http(), "GET", "/health", None, "", b"").await;
    assert_eq!(health.status, 200);
    assert_eq!(
        (
            health.json()["status"].clone(),
            health.json()["store"].clone()
        ),
        ("ok".into(), "ok".into())
    );
    let ready = raw(relay.http(), "GET", "/ready", None, "", b"").await;
    assert_eq!(
        (ready.status, ready.json()["ready"].clone()),
        (200, true.into())
    );
    // A session that stays through the drain keeps the relay draining for its 2 s.
    let _stays = relay.client("r1", "viewer", SUB).await;
    let draining = relay.server.relay.clone();
    tokio::spawn(async move { draining.drain(Duration::from_secs(2)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ready = raw(relay.http(), "GET", "/ready", None, "", b"").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["reason"], "draining");
    // Still healthy: it serves who is connected, it only wants no one new.
    let health = raw(relay.http(), "GET", "/health", None, "", b"").await;
    assert_eq!(health.status, 200);
    relay.stop().await;
}

/// With `stop_delay_ms`, a stop first only makes `/ready` say `stopping` while sessions still
/// come in (a load balancer probing it takes the node out first); then the drain: GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_delay_lets_sessions_in_while_ready_says_stopping() {
    let relay = Relay::start_with(roomcast::config::Config {
        stop_delay_ms: Some(3000),
        drain_ms: Some(1000),
        ..Default::default()
    })
    .await;
    let bob = relay.client("r1", "bob", SUB).await;
    let stopping = tokio::spawn(relay.server.graceful_stop().run(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = raw(relay.http(), "GET", "/ready", None, "", b"").await;
    assert_eq!(
        (ready.status, ready.json()["reason"].clone()),
        (503, "stopping".into())
    );
    assert_eq!(
        bob.subscriber.goaway(),
        None,
        "GOAWAY before the stop delay was over"
    );
    let carol = relay.client("r1", "carol", SUB).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), carol.closed())
            .await
            .is_err(),
        "a newcomer was turned away during the stop delay"
    );
    assert!(
        common::eventually(Duration::from_secs(4), || bob.subscriber.goaway().is_some()).await,
        "no GOAWAY after the stop delay"
    );
    let ready = raw(relay.http(), "GET", "/ready", None, "", b"").await;
    assert_eq!(
        (ready.status, ready.json()["reason"].clone()),
        (503, "draining".into())
    );
    tokio::time::timeout(Duration::from_secs(8), stopping)
        .await
        .expect("stopped within the delay and the drain")
        .unwrap();
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let dir = std::env::temp_dir().join(format!("roomcast-ops-{}", uuid::Uuid::new_v4()));
    let mut process = spawn(
        &dir,
        &["--log-format", "json"],
        None,
        std::process::Stdio::piped(),
    );
    let mut lines = BufReader::new(process.stderr.take().unwrap()).lines();
    let mut seen = vec![];
    let listening = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
            seen.push(line);
            if v["fields"]["message"] == "listening" {
                return v;
            }
        }
        panic!("no `listening` line: {seen:?}");
    })
    .await
    .expect("the relay logs `listening` within 20 s");
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["target"], "roomcast::cli::serve");
    assert!(listening["timestamp"]
        .as_str()
        .is_some_and(|t| t.contains('T')));
    assert!(listening["fields"]["http"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    // The generated admin password went to a file (owner only), not into the log.
    let file = dir.join("data").join("admin-password");
    let password = std::fs::read_to_string(&file).expect("the admin password file");
    assert_eq!(password.trim().len(), 32);
    assert!(
        seen.iter().all(|l| !l.contains(password.trim())),
        "the password was logged"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
    let _ = process.start_kill();
    let _ = process.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The metric families `/metrics` declares, with their types.
fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_owned(), kind.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_histograms_and_the_dashboard_metrics_exist() {
    let relay = Relay::start().await;
    // A join, a session and objects through the relay, so the histograms have samples.
    let login = register(relay.http(), "alice").await;
    let (_publisher, mut video, _task) = alice_video(&relay).await;
    let viewer = relay.client("r1", "bob", SUB).await;
    let mut rx = watch(&viewer, "r1", "alice", "video").await;
    write_group(&mut video, 0, 3, 500);
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    let _ = raw(relay.http(), "GET", "/api/me", Some(&login), "", b"").await;
    // A refused token and a refused request, so those families have samples too.
    if let Ok(refused) = roomcast::client::connect(&relay.quic(), Some("not-a-token")).await {
        let _ = tokio::time::timeout(Duration::from_secs(5), refused.closed()).await;
    }
    let other_room = roomcast::client::namespace(&["room", "r2", "alice"]).unwrap();
    assert!(roomcast::client::subscribe(&viewer, other_room, "video")
        .await
        .is_err());
    let text = String::from_utf8(
        raw(relay.http(), "GET", "/metrics", None, "", b"")
            .await
            .body,
    )
    .unwrap();
    let count = |prefix: &str| samples(&text, prefix);
    assert!(
        count("roomcast_join_seconds_count{transport=\"quic\"}") >= 2.0,
        "{text}"
    );
    // Sampled: a group's first object (and every 16th).
    assert!(count("roomcast_object_relay_seconds_count") >= 1.0);
    assert!(
        count(
            "roomcast_http_request_seconds_count{method=\"GET\",route=\"/api/me\",status=\"2xx\"}"
        ) >= 1.0,
        "{text}"
    );

    // Every metric the dashboard asks for is one the relay exports.
    let families = families(&text);
    let exported = |name: &str| -> bool {
        families.iter().any(|(f, kind)| {
            name == f
                || (kind == "counter" && name == format!("{f}_total"))
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name == format!("{f}{s}")))
        })
    };
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("roomcast_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                used.insert(name);
            }
        }
    }
    assert!(used.len() >= 15, "{used:?}");
    let unknown: Vec<_> = used.iter().filter(|m| !exported(m)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard uses metrics the relay does not export: {unknown:?}"
    );
    relay.stop().await;
}
