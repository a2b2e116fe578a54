//! One client cannot exhaust what the API's password checks need: logins and registrations
//! are limited per client address (another 127.0.0.x here), room-password joins per account,
//! a victim cannot be locked out by someone else's failures, and password hashing runs in a
//! bounded pool that answers 503 `busy` instead of queueing without end. In each test a neighbour on
//! another address keeps working while the attacker is refused.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::http::{json, json_from};
use common::Relay;
use roomcast::config::Config;
use serde_json::json as j;

const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 66));
const NEIGHBOUR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));

async fn login(
    from: IpAddr,
    http: std::net::SocketAddr,
    creds: serde_json::Value,
) -> common::http::Response {
    json_from(from, http, "POST", "/api/login", None, creds).await
}

fn creds(user: &str, password: &str) -> serde_json::Value {
    j!({"username": user, "password": password})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_from_elsewhere_do_not_lock_the_victim_out() {
    let relay = Relay::start().await;
    relay.user("alice").await;
    let mut codes = vec![];
    for _ in 0..12 {
        let r = login(ATTACKER, relay.http(), creds("alice", "guess-guess")).await;
        codes.push(r.status);
    }
    assert_eq!(codes[..10], [401; 10], "{codes:?}");
    assert_eq!(codes[10..], [429, 429], "{codes:?}");
    // Alice, from her own address, logs in at once.
    let r = login(NEIGHBOUR, relay.http(), creds("alice", "password123")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_usernames_from_one_address_are_refused() {
    let relay = Relay::start().await;
    relay.user("alice").await;
    let mut statuses = vec![];
    for i in 0..34 {
        let r = login(
            ATTACKER,
            relay.http(),
            creds(&format!("nobody{i}"), "guess-guess"),
        )
        .await;
        if r.status == 429 {
            assert_eq!(r.code(), "rate_limited");
            assert!(
                r.headers.to_ascii_lowercase().contains("retry-after: 60"),
                "{}",
                r.headers
            );
        }
        statuses.push(r.status);
    }
    // 30 a minute per address (one more every 2 s): the burst is spent, then 429.
    assert_eq!(statuses[..30], [401; 30], "{statuses:?}");
    assert!(statuses[30..].contains(&429), "{statuses:?}");
    let r = login(NEIGHBOUR, relay.http(), creds("alice", "password123")).await;
    assert_eq!(r.status, 200);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_per_address_and_room_password_guesses_per_account_are_limited() {
    let relay = Relay::start().await;
    let mut statuses = vec![];
    for i in 0..11 {
        let r = json_from(
            ATTACKER,
            relay.http(),
            "POST",
            "/api/users",
            None,
            creds(&format!("bot{i}"), "password123"),
        )
        .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses[..10], [201; 10], "{statuses:?}");
    assert_eq!(statuses[10], 429, "{statuses:?}");
    // The attacker's last account tries a room's password; the host's guest does not notice.
    let host = relay.user("host").await;
    let id = relay
        .room(&host, j!({"name": "vault", "password": "open-sesame"}))
        .await;
    let login = login(ATTACKER, relay.http(), creds("bot0", "password123")).await;
    let bot = login.json()["token"].as_str().unwrap().to_owned();
    let path = format!("/api/rooms/{id}/join");
    let mut guesses = vec![];
    for i in 0..11 {
        let r = json_from(
            ATTACKER,
            relay.http(),
            "POST",
            &path,
            Some(&bot),
            j!({"password": format!("guess{i}")}),
        )
        .await;
        guesses.push(r.status);
    }
    assert_eq!(guesses[..10], [403; 10], "{guesses:?}");
    assert_eq!(guesses[10], 429, "{guesses:?}");
    let guest = relay.user("guest").await;
    let r = relay
        .join(&guest, &id, j!({"password": "open-sesame"}))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Short room passwords are refused outright.
    let r = json(
        relay.http(),
        "POST",
        "/api/rooms",
        Some(&host),
        j!({"name": "weak", "password": "123"}),
    )
    .await;
    assert_eq!((r.status, r.code()), (422, "invalid_password".into()));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_hashing_is_a_bounded_pool() {
    // One hash at a time and no waiting: a burst of logins from many addresses is answered
    // 503 busy beyond the pool, never piled up; the pool serves again right after.
    let relay = Relay::start_with(Config {
        password_hash_concurrency: Some(1),
        password_queue_ms: Some(0),
        ..Default::default()
    })
    .await;
    relay.user("alice").await;
    let http = relay.http();
    let burst: Vec<_> = (0..8u8)
        .map(|i| {
            let from = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 1, 10 + i));
            tokio::spawn(async move {
                login(from, http, creds(&format!("guest{i}"), "guess-guess")).await
            })
        })
        .collect();
    let mut busy = 0;
    for t in burst {
        let r = t.await.unwrap();
        match (r.status, r.code().as_str()) {
            (401, _) => {}
            (503, "busy") => {
                assert!(
                    r.headers.to_ascii_lowercase().contains("retry-after: 1"),
                    "{}",
                    r.headers
                );
                busy += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(busy >= 1, "no login was refused by a pool of one");
    let r = login(NEIGHBOUR, http, creds("alice", "password123")).await;
    assert_eq!(r.status, 200);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_forbid_sniffing_framing_and_referrers() {
    let relay = Relay::start().await;
    // An API answer, a static file of the web client, and an error.
    for path in ["/health", "/", "/api/rooms"] {
        let r = json(relay.http(), "GET", path, None, serde_json::Value::Null).await;
        let h = r.headers.to_ascii_lowercase();
        for want in [
            "x-content-type-options: nosniff",
            "x-frame-options: deny",
            "referrer-policy: no-referrer",
            "content-security-policy: default-src 'self'; script-src 'self';",
        ] {
            assert!(h.contains(want), "{path} ({}) lacks {want}:\n{h}", r.status);
        }
        // Connections only to this host's WebTransport port, not to that port on any host.
        let wt = relay.server.webtransport_addr.port();
        let connect = format!("connect-src 'self' https://127.0.0.1:{wt};");
        assert!(h.contains(&connect), "{path}: want {connect}\n{h}");
    }
    relay.stop().await;
}

/// A raw TCP connection to the API from `ip` (another 127.0.0.x is another client).
async fn tcp_from(ip: [u8; 4], addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    common::http::connect_from(Some(ip.into()), addr).await
}

/// Everything the server sends until it closes the connection (or `within` passes: panic).
async fn until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = vec![];
    tokio::time::timeout(within, stream.read_to_end(&mut out))
        .await
        .expect("the server must close the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_slow_bodies_are_cut_off_while_a_neighbour_is_served() {
    use tokio::io::AsyncWriteExt;
    let relay = Relay::start_with(Config {
        http_header_timeout_ms: Some(500),
        http_body_timeout_ms: Some(500),
        ..Default::default()
    })
    .await;
    let addr = relay.http();
    // Half a request line and header, then silence (slowloris).
    let mut slow = tcp_from([127, 0, 0, 2], addr).await;
    slow.write_all(b"GET /api/info HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A body that never arrives in full.
    let mut trickle = tcp_from([127, 0, 0, 3], addr).await;
    trickle
        .write_all(b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let r = json(addr, "GET", "/api/info", None, j!(null)).await;
    assert_eq!(r.status, 200, "the neighbour is served meanwhile");
    let said = until_closed(&mut slow, Duration::from_secs(3)).await;
    // hyper closes a connection whose headers time out without a word.
    assert_eq!(said, "", "half a header: closed");
    let said = until_closed(&mut trickle, Duration::from_secs(3)).await;
    assert!(
        said.starts_with("HTTP/1.1 408") && said.contains("body_timeout"),
        "half a body: 408 and closed, got {said:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_a_byte_at_a_time_is_cut_off_at_the_request_deadline() {
    use tokio::io::AsyncWriteExt;
    let relay = Relay::start_with(Config {
        http_body_timeout_ms: Some(1000),
        http_request_timeout_ms: Some(1500),
        ..Default::default()
    })
    .await;
    let addr = relay.http();
    let mut trickle = tcp_from([127, 0, 0, 3], addr).await;
    trickle
        .write_all(b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    // One byte every 200 ms never trips the idle body timeout; the deadline ends it.
    let (mut rd, mut wr) = trickle.into_split();
    let feeding = tokio::spawn(async move {
        for _ in 0..40 {
            if wr.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let r = json(addr, "GET", "/api/info", None, j!(null)).await;
    assert_eq!(r.status, 200, "the neighbour is served");
    let mut out = vec![];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::AsyncReadExt;
        let _ = rd.read_to_end(&mut out).await;
    })
    .await;
    feeding.abort();
    assert!(read.is_ok(), "the connection was not closed");
    let said = String::from_utf8_lossy(&out);
    assert!(
        said.starts_with("HTTP/1.1 408") && said.contains("request_timeout"),
        "a trickled body: 408 at the deadline, got {said:?}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_a_bounded_number_of_http_connections() {
    let relay = Relay::start_with(Config {
        http_max_connections_per_address: Some(3),
        ..Default::default()
    })
    .await;
    let addr = relay.http();
    let mut idle = vec![];
    for _ in 0..3 {
        idle.push(tcp_from([127, 0, 0, 4], addr).await);
    }
    // Let the server accept them before the fourth comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = tcp_from([127, 0, 0, 4], addr).await;
    let said = until_closed(&mut fourth, Duration::from_secs(2)).await;
    assert!(
        said.starts_with("HTTP/1.1 503") && said.contains("too_many_connections"),
        "{said:?}"
    );
    let r = json(addr, "GET", "/api/info", None, j!(null)).await;
    assert_eq!(r.status, 200, "another address is served");
    // A slot comes back when a connection closes.
    drop(idle.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = common::http::raw_from(
        Some([127, 0, 0, 4].into()),
        addr,
        "GET",
        "/api/info",
        None,
        "",
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    relay.stop().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_on_disk_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let relay = Relay::start().await;
    // Someone wrote a row, so the database has its WAL beside it.
    let _ = relay.user("owner").await;
    let mode = |p: std::path::PathBuf| {
        std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let data = relay.dir.join("data");
    assert_eq!(mode(data.clone()), 0o700, "data directory");
    assert_eq!(
        mode(relay.dir.join("certs")),
        0o700,
        "certificate directory"
    );
    // The PostgreSQL pass keeps no database file.
    let files: &[&str] = match relay.database_url {
        None => &["roomcast.db", "roomcast.db-wal", "token-secret"],
        Some(_) => &["token-secret"],
    };
    for file in files {
        assert_eq!(mode(data.join(file)), 0o600, "{file}");
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_logins_invites_and_revocations_are_purged() {
    let dir = std::env::temp_dir().join(format!("roomcast-purge-{}", uuid::Uuid::new_v4()));
    let store = roomcast::store::Store::open(&dir).await.unwrap();
    let now = roomcast::auth::token::now_secs();
    let (past, future) = (now - 100, now + 3600);
    let user = store.create_user("keeper", "hash", false).await.unwrap().id;
    store.add_login("old", user, past).await.unwrap();
    store.add_login("live", user, future).await.unwrap();
    store.revoke("old-token", past).await.unwrap();
    store.revoke("live-token", future).await.unwrap();
    assert_eq!(store.purge_expired(now).await.unwrap(), 2);
    assert_eq!(
        store.purge_expired(now).await.unwrap(),
        0,
        "nothing left to purge"
    );
    let kept: Vec<String> = store
        .revocations()
        .await
        .unwrap()
        .into_iter()
        .map(|(jti, _)| jti)
        .collect();
    assert_eq!(kept, ["live-token"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_files_never_show_in_the_process_list() {
    let dir = std::env::temp_dir().join(format!("roomcast-secrets-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (secret, password) = ("file-secret-".repeat(4), "file-admin-password");
    std::fs::write(dir.join("secret"), format!("{secret}\n")).unwrap();
    std::fs::write(dir.join("admin"), password).unwrap();
    let secret_file = dir.join("secret").display().to_string();
    let admin_file = dir.join("admin").display().to_string();
    let child = common::process::serve(
        &dir,
        &[
            "--token-secret-file",
            &secret_file,
            "--admin-password-file",
            &admin_file,
        ],
    )
    .await;
    // What any local user sees of the process.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.pid())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        !cmdline.contains(&secret) && !cmdline.contains(password),
        "{cmdline}"
    );
    // The relay uses both: a token signed with the file's secret holds a session, and the
    // admin logs in with the file's password.
    let issuer = roomcast::auth::TokenIssuer::new(secret.as_bytes());
    let claims = roomcast::auth::Claims::new(
        "bob",
        "r1",
        common::SUB.iter().copied().collect(),
        Duration::from_secs(60),
    );
    let token = issuer.mint(&claims).unwrap();
    let session = roomcast::client::connect(&child.quic, Some(&token))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), session.closed())
            .await
            .is_err(),
        "a token signed with the file's secret was refused"
    );
    let r = json(
        child.http,
        "POST",
        "/api/login",
        None,
        creds("admin", password),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    drop(child);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_paced_per_account_and_a_neighbour_still_joins() {
    // Every join mints a media token the store remembers: a loop of joins is cut off.
    let relay = Relay::start().await;
    let host = relay.user("host").await;
    let id = relay.room(&host, j!({"name": "pace"})).await;
    let mallory = relay.user("mallory").await;
    let mut last = None;
    for i in 0..=roomcast::api::guard::JOINS_PER_MINUTE {
        let r = relay.join(&mallory, &id, j!({})).await;
        if r.status != 200 {
            last = Some((i, r.status, r.code()));
            break;
        }
    }
    assert_eq!(
        last,
        Some((
            roomcast::api::guard::JOINS_PER_MINUTE,
            429,
            "rate_limited".to_owned()
        )),
        "the join past the allowance is refused, not before"
    );
    let bob = relay.user("bob").await;
    let r = relay.join(&bob, &id, j!({})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    relay.stop().await;
}
