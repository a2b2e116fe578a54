//! The certificate is live: a generated one is renewed while the relay runs and configured
//! files are reloaded when replaced, new handshakes on every listener (WebTransport, raw
//! QUIC, HTTPS) use the new one, open sessions go on. HTTPS and plain HTTP share the HTTP
//! port; off loopback (or with `http_plain = false`) plain HTTP is redirected to HTTPS.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::http::{https_get, raw};
use common::media::{drain, published, watch, write_group};
use common::{Relay, PUB, SUB};
use roomcast::client::{self, namespace, Target};
use roomcast::config::Config;
use roomcast::transport::tls::{write_dev_cert, Identity};

const DAY: Duration = Duration::from_secs(24 * 3600);

async fn cert_hash(relay: &Relay) -> String {
    let r = raw(relay.http(), "GET", "/cert-hash", None, "", b"").await;
    String::from_utf8(r.body).unwrap()
}

/// `target` pinned to `sha256` instead.
fn pinned(target: Target, sha256: &str) -> Target {
    Target {
        cert_sha256: sha256.to_owned(),
        ..target
    }
}

/// Copies the certificate and key `write_dev_cert` made in `from` to `cert` and `key`.
fn install(from: &Path, cert: &Path, key: &Path) {
    std::fs::copy(from.join("dev-key.pem"), key).unwrap();
    std::fs::copy(from.join("dev-cert.pem"), cert).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_certificate_is_renewed_while_running_and_open_sessions_go_on() {
    let relay = Relay::start_with(Config {
        cert_check_interval_ms: Some(200),
        ..Default::default()
    })
    .await;
    let old = relay.server.cert_sha256.clone();
    // A publisher and a subscriber that stay connected through the renewal.
    let alice = relay.client("r1", "alice", PUB).await;
    let (mut writers, _t) = client::publish(
        &alice,
        namespace(&["room", "r1", "alice"]).unwrap(),
        &["video"],
    )
    .unwrap();
    let mut w = writers.remove(0);
    published(&relay, "r1", "alice").await;
    let bob = relay.client("r1", "bob", SUB).await;
    let mut rx = watch(&bob, "r1", "alice", "video").await;
    write_group(&mut w, 0, 3, 100);
    assert_eq!(drain(&mut rx, Duration::from_secs(1)).await.len(), 3);

    // Eleven days on, the certificate on disk has two left (here: one made that way).
    let dir = relay.dir.join("certs");
    write_dev_cert(&dir, 2 * DAY).unwrap();
    let mut new = old.clone();
    for _ in 0..100 {
        new = cert_hash(&relay).await;
        if new != old {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(new, old, "the certificate was not renewed");
    let on_disk = Identity::load(&dir.join("dev-cert.pem"), &dir.join("dev-key.pem")).unwrap();
    assert_eq!(
        on_disk.sha256_hex(),
        new,
        "the relay serves the renewed file"
    );
    let left = on_disk
        .not_after
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left > 12 * DAY,
        "renewed for the full lifetime, not the planted one: {left:?}"
    );

    // Every listener's new handshakes present it; the old one is gone.
    let token = relay.token("r1", "carol", SUB);
    for target in [relay.quic(), relay.webtransport()] {
        let url = target.url.clone();
        client::connect(&pinned(target.clone(), &new), Some(&token))
            .await
            .unwrap_or_else(|e| panic!("{url} with the new certificate: {e:#}"));
        assert!(
            client::connect(&pinned(target, &old), Some(&token))
                .await
                .is_err(),
            "{url} still presents the old certificate"
        );
    }
    let info = https_get(relay.http(), &new, "/api/info")
        .await
        .unwrap()
        .json();
    assert_eq!(info["cert_sha256"], new.as_str());
    assert_eq!(
        (info["cert_generated"].as_bool(), info["cert_pin"].as_bool()),
        (Some(true), Some(true))
    );
    assert!(https_get(relay.http(), &old, "/health").await.is_err());

    // The sessions opened before go on.
    write_group(&mut w, 1, 3, 100);
    let got = drain(&mut rx, Duration::from_secs(1)).await;
    assert_eq!(got.iter().filter(|o| o.group == 1).count(), 3, "{got:?}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_certificate_files_are_reloaded_when_replaced_and_kept_when_broken() {
    let dir = std::env::temp_dir().join(format!("roomcast-certs-{}", uuid::Uuid::new_v4()));
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    // Long-lived certificates, as a CA issues (browsers may not pin those by hash).
    write_dev_cert(&dir.join("first"), 90 * DAY).unwrap();
    install(&dir.join("first"), &cert, &key);
    let relay = Relay::start_with(Config {
        tls_cert: Some(cert.clone()),
        tls_key: Some(key.clone()),
        cert_check_interval_ms: Some(200),
        ..Default::default()
    })
    .await;
    let first = relay.server.cert_sha256.clone();
    let info = https_get(relay.http(), &first, "/api/info")
        .await
        .unwrap()
        .json();
    assert_eq!(
        (info["cert_generated"].as_bool(), info["cert_pin"].as_bool()),
        (Some(false), Some(false)),
        "{info}"
    );

    // A half-written or broken file is not taken: the relay keeps serving the one it has.
    std::fs::write(&cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(cert_hash(&relay).await, first);
    let token = relay.token("r1", "bob", SUB);
    client::connect(&relay.quic(), Some(&token)).await.unwrap();

    // The renewed certificate is picked up without a restart.
    write_dev_cert(&dir.join("second"), 90 * DAY).unwrap();
    install(&dir.join("second"), &cert, &key);
    let second = Identity::load(&cert, &key).unwrap().sha256_hex();
    let mut seen = String::new();
    for _ in 0..100 {
        seen = cert_hash(&relay).await;
        if seen == second {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, second, "the replaced files were not reloaded");
    client::connect(&pinned(relay.quic(), &second), Some(&token))
        .await
        .unwrap();
    relay.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_plain_http_share_the_port_and_plain_is_redirected_where_not_allowed() {
    // On loopback both are served, with the same headers.
    let relay = Relay::start().await;
    let hash = relay.server.cert_sha256.clone();
    let plain = raw(relay.http(), "GET", "/api/info", None, "", b"").await;
    let tls = https_get(relay.http(), &hash, "/api/info").await.unwrap();
    assert_eq!((plain.status, tls.status), (200, 200));
    assert_eq!(plain.json(), tls.json());
    assert!(
        tls.headers
            .to_ascii_lowercase()
            .contains("x-frame-options: deny"),
        "{}",
        tls.headers
    );
    relay.stop().await;

    // Where plain HTTP is not allowed (the default off loopback), it is redirected and
    // answers nothing else: a password posted in the clear is never processed.
    let relay = Relay::start_with(Config {
        http_plain: Some(false),
        ..Default::default()
    })
    .await;
    let addr = relay.http();
    let r = raw(addr, "GET", "/api/info?x=1", None, "", b"").await;
    assert_eq!(r.status, 308, "{}", r.headers);
    assert!(
        r.headers.contains(&format!("https://{addr}/api/info?x=1")),
        "{}",
        r.headers
    );
    let creds = br#"{"username":"mallory","password":"password123"}"#;
    let r = raw(addr, "POST", "/api/users", None, "application/json", creds).await;
    assert_eq!(r.status, 308);
    let tls = https_get(addr, &relay.server.cert_sha256, "/health")
        .await
        .unwrap();
    assert_eq!(tls.status, 200);
    relay.stop().await;
}
