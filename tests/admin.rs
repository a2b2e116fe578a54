//! `roomcast admin` against a running server: the binary is run as an operator runs it, and
//! every assertion is on what it printed and its exit status, or on what the server's API and
//! a media client observe afterwards.

mod common;

use std::time::Duration;

use common::http::json;
use common::Relay;
use roomcast::client;
use roomcast::config::Config;
use serde_json::{json as j, Value};

const ADMIN_PASSWORD: &str = "admin-password";

async fn relay() -> Relay {
    Relay::start_with(Config {
        admin_password: Some(ADMIN_PASSWORD.into()),
        ..Default::default()
    })
    .await
}

/// What one run of the command printed, and how it ended.
struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} / {:?}", self.stdout, self.stderr))
    }

    /// Asserts success and returns stdout.
    fn out(&self) -> &str {
        assert!(self.ok, "failed ({:?}): {}", self.code, self.stderr);
        &self.stdout
    }

    /// Asserts a failure with an exit code of 1, nothing on stdout, and one line on stderr;
    /// returns that line.
    fn refused(&self) -> &str {
        assert_eq!(
            self.code,
            Some(1),
            "stdout {:?} stderr {:?}",
            self.stdout,
            self.stderr
        );
        assert_eq!(self.stdout, "", "a failure printed on stdout");
        assert_eq!(self.stderr.lines().count(), 1, "{:?}", self.stderr);
        self.stderr.trim_end()
    }
}

/// Runs `roomcast admin <args>` against `url` with `env` (nothing inherited that could log it
/// in: no ROOMCAST_* variable but those given).
async fn admin_at(url: &str, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_roomcast"));
    cmd.arg("admin").args(args).env("ROOMCAST_URL", url);
    for (k, _) in std::env::vars() {
        if k.starts_with("ROOMCAST_") && k != "ROOMCAST_URL" {
            cmd.env_remove(k);
        }
    }
    // Its stderr is its one-line error, whatever the test run's logging.
    cmd.env_remove("RUST_LOG");
    cmd.envs(env.iter().copied());
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("roomcast admin finished within 30 s")
        .expect("roomcast admin runs");
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `roomcast admin <args>` against `relay` as the administrator, with a session token
/// (one login for the whole test: logins are rate limited).
async fn admin(relay: &Relay, token: &str, args: &[&str]) -> Run {
    let url = format!("http://{}", relay.http());
    admin_at(&url, &[("ROOMCAST_ADMIN_TOKEN", token)], args).await
}

/// `roomcast admin login` with the password in the environment; returns the token printed.
async fn login(relay: &Relay) -> String {
    let url = format!("http://{}", relay.http());
    let run = admin_at(
        &url,
        &[("ROOMCAST_ADMIN_PASSWORD", ADMIN_PASSWORD)],
        &["login"],
    )
    .await;
    run.out().trim().to_owned()
}

/// Logs `username` in through the API; returns the status and the token if any.
async fn api_login(relay: &Relay, username: &str, password: &str) -> (u16, Option<String>) {
    let creds = j!({"username": username, "password": password});
    let r = json(relay.http(), "POST", "/api/login", None, creds).await;
    let token = r.json()["token"].as_str().map(str::to_owned);
    (r.status, token)
}

/// The value of the `password: …` line the command printed.
fn printed_password(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap_or_else(|| panic!("no password in {stdout:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_created_listed_reset_and_deleted() {
    let relay = relay().await;
    let admin_token = login(&relay).await;
    let dir = relay.dir.join("admin-cli");
    std::fs::create_dir_all(&dir).unwrap();

    // A password from a file, and one generated and printed.
    let file = dir.join("alice-password");
    std::fs::write(&file, "alice-secret-1\n").unwrap();
    let file = file.display().to_string();
    let run = admin(
        &relay,
        &admin_token,
        &["users", "create", "alice", "--password-file", &file],
    )
    .await;
    assert_eq!(run.out(), "created user alice\n");
    let (status, alice) = api_login(&relay, "alice", "alice-secret-1").await;
    assert_eq!(status, 200, "alice logs in with the password from the file");
    let alice = alice.unwrap();
    let run = admin(&relay, &admin_token, &["users", "create", "bob", "--admin"]).await;
    assert!(
        run.out().starts_with("created administrator bob\n"),
        "{}",
        run.stdout
    );
    let bob_password = printed_password(&run.stdout);
    assert_eq!(api_login(&relay, "bob", &bob_password).await.0, 200);
    let run = admin(&relay, &admin_token, &["users", "create", "alice"]).await;
    assert!(run.refused().contains("username_taken"), "{}", run.stderr);

    // The table and the JSON list the same accounts.
    let run = admin(&relay, &admin_token, &["users", "list"]).await;
    let rows: Vec<Vec<&str>> = run
        .out()
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["USERNAME", "ADMIN", "ROOMS", "CREATED"]);
    let names: Vec<(&str, &str)> = rows[1..].iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(names, [("admin", "yes"), ("alice", "no"), ("bob", "yes")]);
    let listed = admin(&relay, &admin_token, &["users", "list", "--json"])
        .await
        .json();
    let users: Vec<(String, bool)> = listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["username"].as_str().unwrap().into(),
                u["is_admin"].as_bool().unwrap(),
            )
        })
        .collect();
    let expected = [("admin", true), ("alice", false), ("bob", true)];
    assert_eq!(users, expected.map(|(n, a)| (n.to_owned(), a)));

    // A reset ends alice's login; the old password is refused, the printed one works.
    let run = admin(
        &relay,
        &admin_token,
        &["users", "reset-password", "alice", "--json"],
    )
    .await;
    let new_password = run.json()["password"].as_str().unwrap().to_owned();
    let me = json(relay.http(), "GET", "/api/me", Some(&alice), j!(null)).await;
    assert_eq!((me.status, me.code()), (401, "session_ended".to_owned()));
    assert_eq!(api_login(&relay, "alice", "alice-secret-1").await.0, 401);
    let (status, alice) = api_login(&relay, "alice", &new_password).await;
    assert_eq!(status, 200);

    // An owner of rooms is deleted only with them. Elsewhere her media session ends, and what
    // names her goes: the invite she redeemed, a moderator's change of her grants.
    let alice = alice.unwrap();
    let room = relay.room(&alice, j!({"name": "alice's"})).await;
    let other = relay.room(&admin_token, j!({"name": "other"})).await;
    let path = format!("/api/rooms/{other}/invites");
    let invite = json(relay.http(), "POST", &path, Some(&admin_token), j!({})).await;
    let invite = invite.json()["invite"].as_str().unwrap().to_owned();
    let joined = relay.join(&alice, &other, j!({"invite": invite})).await;
    assert_eq!(joined.status, 200);
    let path = format!("/api/rooms/{other}/participants/alice/grants");
    let changed = json(
        relay.http(),
        "POST",
        &path,
        Some(&admin_token),
        j!({"publish": false}),
    )
    .await;
    assert_eq!(
        changed.status,
        200,
        "{}",
        String::from_utf8_lossy(&changed.body)
    );
    let media_token = joined.json()["token"].as_str().unwrap().to_owned();
    let media = client::connect(&relay.quic(), Some(&media_token))
        .await
        .unwrap();
    let run = admin(&relay, &admin_token, &["users", "delete", "alice"]).await;
    assert!(run.refused().contains("owns_rooms"), "{}", run.stderr);
    let run = admin(
        &relay,
        &admin_token,
        &["users", "delete", "alice", "--delete-rooms"],
    )
    .await;
    assert_eq!(
        run.out(),
        format!("deleted user alice\ndeleted rooms: {room}\n")
    );
    assert_eq!(api_login(&relay, "alice", &new_password).await.0, 401);
    let closed = tokio::time::timeout(Duration::from_secs(3), media.closed())
        .await
        .expect("alice's media session closed within 3 s");
    assert_eq!(
        common::close_reason(&closed),
        "token_revoked: account deleted"
    );
    let refused = common::refusal(&relay.quic(), &media_token).await;
    assert!(refused.contains("token_revoked"), "{refused}");
    // Someone registering the name later starts afresh in that room, after a restart too.
    let newcomer = relay.user("alice").await;
    let grants = |r: common::http::Response| {
        assert_eq!(r.status, 200);
        let mut g: Vec<String> = serde_json::from_value(r.json()["grants"].clone()).unwrap();
        g.sort();
        g
    };
    let fresh = ["chat", "publish", "subscribe"];
    assert_eq!(grants(relay.join(&newcomer, &other, j!({})).await), fresh);
    let relay = relay.restart().await;
    assert_eq!(grants(relay.join(&newcomer, &other, j!({})).await), fresh);
    let gone = json(
        relay.http(),
        "GET",
        &format!("/api/rooms/{room}"),
        Some(&admin_token),
        j!(null),
    )
    .await;
    assert_eq!(gone.status, 404);

    // Nobody deletes their own account, or an unknown one.
    let run = admin(&relay, &admin_token, &["users", "delete", "admin"]).await;
    assert!(
        run.refused().contains("cannot_delete_self"),
        "{}",
        run.stderr
    );
    let run = admin(&relay, &admin_token, &["users", "delete", "nobody"]).await;
    assert!(run.refused().contains("unknown_user"), "{}", run.stderr);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_listed_with_participants_closed_and_moderated() {
    let relay = relay().await;
    let admin_token = login(&relay).await;
    let host = relay.user("host").await;
    let bob = relay.user("bob").await;
    let room = relay.room(&host, j!({"name": "standup"})).await;
    let join = relay.join(&bob, &room, j!({})).await;
    let bob_token = join.json()["token"].as_str().unwrap().to_owned();
    let bob_media = client::connect(&relay.quic(), Some(&bob_token))
        .await
        .unwrap();

    // bob is in the room: the table and the JSON say so.
    let run = admin(&relay, &admin_token, &["rooms", "list"]).await;
    let line = run
        .out()
        .lines()
        .find(|l| l.starts_with(&room))
        .unwrap_or_else(|| panic!("{room} not listed: {}", run.stdout));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells,
        [room.as_str(), "standup", "meeting", "host", "yes", "bob"]
    );
    let listed = admin(&relay, &admin_token, &["rooms", "list", "--json"])
        .await
        .json();
    let entry = &listed["rooms"][0];
    assert_eq!(entry["room"]["id"], j!(room));
    assert_eq!(entry["participants"], j!(["bob"]));
    assert_eq!(entry["owner"], j!("host"));

    // Closing it ends bob's session with the relay's reason; his token is refused, and a new
    // join gets him back in (the room still exists). The closure comes a second after his
    // token, so the refusal names it (one in the same second is refused as revoked, see
    // relay::access's tests).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let run = admin(&relay, &admin_token, &["rooms", "close", &room]).await;
    assert_eq!(run.out(), format!("closed room {room}\n"));
    let closed = tokio::time::timeout(Duration::from_secs(3), bob_media.closed())
        .await
        .expect("bob's session closed within 3 s");
    let reason = common::close_reason(&closed);
    assert!(reason.starts_with("room_closed"), "{reason}");
    let refused = common::refusal(&relay.quic(), &bob_token).await;
    assert!(refused.contains("room_closed"), "{refused}");
    let rejoin = relay.join(&bob, &room, j!({})).await;
    assert_eq!(rejoin.status, 200);
    let token = rejoin.json()["token"].as_str().unwrap().to_owned();
    client::connect(&relay.quic(), Some(&token))
        .await
        .expect("a new join connects");

    // A ban holds until the unban.
    let run = admin(
        &relay,
        &admin_token,
        &["ban", &room, "bob", "--reason", "spam"],
    )
    .await;
    assert_eq!(run.out(), format!("banned bob from room {room}\n"));
    let r = relay.join(&bob, &room, j!({})).await;
    assert_eq!((r.status, r.code()), (403, "banned".to_owned()));
    let run = admin(&relay, &admin_token, &["unban", &room, "bob", "--json"]).await;
    assert_eq!(run.json()["banned"], j!(false));
    assert_eq!(relay.join(&bob, &room, j!({})).await.status, 200);

    // An invite link: the room and a one-use invite for the role asked.
    let run = admin(
        &relay,
        &admin_token,
        &["invite", &room, "--role", "viewer", "--ttl", "2h"],
    )
    .await;
    let link = run.out().lines().next().unwrap().to_owned();
    let prefix = format!("http://{}/#room={room}&invite=", relay.http());
    let invite = link
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{link}"));
    assert!(
        run.stdout.contains("role viewer, valid until "),
        "{}",
        run.stdout
    );
    let carol = relay.user("carol").await;
    let r = relay.join(&carol, &room, j!({"invite": invite})).await;
    assert_eq!((r.status, r.json()["role"].clone()), (200, j!("viewer")));
    let r = relay
        .join(&relay.user("dave").await, &room, j!({"invite": invite}))
        .await;
    assert_eq!((r.status, r.code()), (403, "invite_used".to_owned()));

    let run = admin(&relay, &admin_token, &["rooms", "close", "no-such-room"]).await;
    assert!(run.refused().contains("unknown_room"), "{}", run.stderr);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_a_non_admin_and_a_server_down_are_clear_failures() {
    let relay = relay().await;
    let url = format!("http://{}", relay.http());
    let run = admin_at(
        &url,
        &[("ROOMCAST_ADMIN_PASSWORD", "not-the-password")],
        &["users", "list"],
    )
    .await;
    assert_eq!(
        run.refused(),
        "error: login as admin refused: wrong username or password (wrong_credentials, HTTP 401)"
    );
    // The password from a file, as for `roomcast serve`.
    let file = relay.dir.join("admin-password-file");
    std::fs::write(&file, format!("{ADMIN_PASSWORD}\n")).unwrap();
    let file = file.display().to_string();
    let run = admin_at(
        &url,
        &[],
        &["users", "list", "--admin-password-file", &file],
    )
    .await;
    assert!(run.out().contains("admin"), "{}", run.stdout);
    // No password at all, and no terminal to ask on.
    let run = admin_at(&url, &[], &["users", "list"]).await;
    assert!(
        run.refused().starts_with("error: no password for admin"),
        "{}",
        run.stderr
    );
    // A session token that is not one.
    let run = admin_at(
        &url,
        &[("ROOMCAST_ADMIN_TOKEN", "junk")],
        &["users", "list"],
    )
    .await;
    assert!(
        run.refused().contains("(malformed_token, HTTP 401)"),
        "{}",
        run.stderr
    );
    // A user who is not an administrator: refused before anything is done.
    relay.user("mallory").await;
    let env = [
        ("ROOMCAST_ADMIN_USER", "mallory"),
        ("ROOMCAST_ADMIN_PASSWORD", "password123"),
    ];
    let run = admin_at(&url, &env, &["users", "delete", "admin"]).await;
    assert_eq!(run.refused(), "error: mallory is not an administrator");
    // Their own session, used directly, is refused by the server.
    let (_, mallory) = api_login(&relay, "mallory", "password123").await;
    let run = admin_at(
        &url,
        &[("ROOMCAST_ADMIN_TOKEN", &mallory.unwrap())],
        &["users", "list"],
    )
    .await;
    assert!(
        run.refused().contains("(not_admin, HTTP 403)"),
        "{}",
        run.stderr
    );

    // Over HTTPS, the development certificate is trusted by its hash, and only by it.
    let https = format!("https://{}", relay.http());
    let token = login(&relay).await;
    let env = [("ROOMCAST_ADMIN_TOKEN", token.as_str())];
    let hash = relay.server.cert_sha256.clone();
    let run = admin_at(&https, &env, &["users", "list", "--cert-sha256", &hash]).await;
    assert!(run.out().contains("mallory"), "{}", run.stdout);
    let wrong = "00".repeat(32);
    let untrusted = format!("error: the certificate of {https}/ is not trusted (");
    let run = admin_at(&https, &env, &["users", "list", "--cert-sha256", &wrong]).await;
    assert!(run.refused().starts_with(&untrusted), "{}", run.stderr);
    let run = admin_at(&https, &env, &["users", "list"]).await;
    assert!(run.refused().starts_with(&untrusted), "{}", run.stderr);
    // Credentials never go unencrypted to another host, nor in the URL.
    let run = admin_at("http://192.0.2.1:8080", &env, &["users", "list"]).await;
    assert!(run.refused().contains("unencrypted"), "{}", run.stderr);
    let run = admin_at(
        &format!("http://u:p@{}", relay.http()),
        &env,
        &["users", "list"],
    )
    .await;
    assert!(
        run.refused().contains("must not hold credentials"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("u:p"), "{}", run.stderr);

    // The server stops: the same command fails at once with a sentence naming the address.
    relay.stop().await;
    let started = std::time::Instant::now();
    let run = admin_at(&url, &env, &["users", "list"]).await;
    let line = run.refused();
    assert!(
        line.starts_with(&format!("error: cannot reach the server at {url}/: ")),
        "{line}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_administrators_reach_administration_and_only_owners_close() {
    let relay = relay().await;
    let host = relay.user("host").await;
    let moderator = relay.user("mod").await;
    let room = relay.room(&host, j!({"name": "class"})).await;
    let path = format!("/api/rooms/{room}/invites");
    let invite = json(
        relay.http(),
        "POST",
        &path,
        Some(&host),
        j!({"role": "moderator"}),
    )
    .await;
    let invite = invite.json()["invite"].as_str().unwrap().to_owned();
    assert_eq!(
        relay
            .join(&moderator, &room, j!({"invite": invite}))
            .await
            .status,
        200
    );
    // The room's owner is no administrator: every administration route refuses them, and
    // nothing changed (the admin account still logs in with its password).
    let calls = [
        ("GET", "/api/admin/users".to_owned(), j!(null)),
        (
            "POST",
            "/api/admin/users".to_owned(),
            j!({"username": "evil", "password": "password123", "admin": true}),
        ),
        ("DELETE", "/api/admin/users/admin".to_owned(), j!(null)),
        (
            "PUT",
            "/api/admin/users/admin/password".to_owned(),
            j!({"password": "taken-over-1"}),
        ),
        ("GET", "/api/admin/rooms".to_owned(), j!(null)),
    ];
    for (method, path, body) in calls {
        let r = json(relay.http(), method, &path, Some(&host), body).await;
        assert_eq!(
            (r.status, r.code()),
            (403, "not_admin".to_owned()),
            "{method} {path}"
        );
    }
    assert_eq!(api_login(&relay, "admin", ADMIN_PASSWORD).await.0, 200);
    assert_eq!(api_login(&relay, "evil", "password123").await.0, 401);
    // A moderator of the room does not close it; its owner does.
    let close = format!("/api/rooms/{room}/close");
    let r = json(relay.http(), "POST", &close, Some(&moderator), j!(null)).await;
    assert_eq!((r.status, r.code()), (403, "not_owner".to_owned()));
    let r = json(relay.http(), "POST", &close, Some(&host), j!(null)).await;
    assert_eq!(r.status, 204);
    relay.stop().await;
}
