//! Shared harness: a real relay on 127.0.0.1 port 0, tokens, and client helpers.
#![allow(dead_code)]

use std::time::Duration;

use roomcast::auth::{Claims, Grant, Grants};
use roomcast::client::{self, Client, Target};
use roomcast::config::Config;
use roomcast::server::Server;

pub struct Relay {
    pub server: Server,
    pub dir: std::path::PathBuf,
    /// The PostgreSQL store's URL (PostgreSQL pass), kept across restarts.
    pub database_url: Option<String>,
}

impl Relay {
    pub async fn start() -> Relay {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> Relay {
        let dir = std::env::temp_dir().join(format!("roomcast-test-{}", uuid::Uuid::new_v4()));
        Self::start_in(dir, config).await
    }

    /// Stops the server and starts a new one on the same data directory (new ports).
    pub async fn restart(self) -> Relay {
        self.server.stop().await;
        let config = Config {
            database_url: self.database_url,
            ..Default::default()
        };
        Self::start_in(self.dir, config).await
    }

    /// Stops the server and starts a new one on the same data directory and the same raw-QUIC
    /// address, as a restarted relay process would be (the other listeners get new ports).
    pub async fn restart_in_place(self) -> Relay {
        let quic = self.server.quic_addr;
        self.server.stop().await;
        let config = Config {
            quic_listen: Some(quic),
            database_url: self.database_url,
            ..Default::default()
        };
        Self::start_in(self.dir, config).await
    }

    async fn start_in(dir: std::path::PathBuf, config: Config) -> Relay {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let any = Some("127.0.0.1:0".parse().unwrap());
        // Listen addresses from `config` win (a restart in place); the rest is the harness's.
        let listen = Config {
            webtransport_listen: config.webtransport_listen.or(any),
            quic_listen: config.quic_listen.or(any),
            http_listen: config.http_listen.or(any),
            whip_listen: config.whip_listen.or(any),
            ..Default::default()
        };
        let database_url = match config.database_url.clone() {
            Some(url) => Some(url),
            None => test_database().await,
        };
        let config = listen.over(
            Config {
                database_url: database_url.clone(),
                data_dir: Some(dir.join("data")),
                cert_dir: Some(dir.join("certs")),
                web_dir: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/web").into()),
                shutdown_grace_secs: Some(2),
                ..Default::default()
            }
            .over(config),
        );
        // A port given back by a stopped server can stay taken for a moment (its endpoint
        // closes its last connections first).
        let mut tries = 0;
        let server = loop {
            match Server::start(config.clone().resolve().unwrap()).await {
                Ok(s) => break s,
                Err(e) if tries < 50 && format!("{e:#}").contains("in use") => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("relay did not start: {e:#}"),
            }
        };
        Relay {
            server,
            dir,
            database_url,
        }
    }

    pub fn quic(&self) -> Target {
        Target {
            url: format!("moqt://{}/", self.server.quic_addr)
                .parse()
                .unwrap(),
            cert_sha256: self.server.cert_sha256.clone(),
        }
    }

    pub fn webtransport(&self) -> Target {
        Target {
            url: format!("https://{}/", self.server.webtransport_addr)
                .parse()
                .unwrap(),
            cert_sha256: self.server.cert_sha256.clone(),
        }
    }

    pub fn token(&self, room: &str, who: &str, grants: &[Grant]) -> String {
        self.token_for(Claims::new(
            who,
            room,
            grants.iter().copied().collect::<Grants>(),
            Duration::from_secs(300),
        ))
    }

    pub fn token_for(&self, claims: Claims) -> String {
        self.server.issuer.mint(&claims).unwrap()
    }

    pub async fn client(&self, room: &str, who: &str, grants: &[Grant]) -> Client {
        client::connect(&self.quic(), Some(&self.token(room, who, grants)))
            .await
            .unwrap()
    }

    pub fn metric(&self, name: &str) -> f64 {
        let text = roomcast::metrics::encode(&self.server.metrics.registry());
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub async fn stop(self) {
        self.server.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// With `ROOMCAST_TEST_POSTGRES_URL` set (scripts/test.sh's PostgreSQL pass), a new database
/// on that server for each relay the harness starts; without it, the embedded SQLite.
async fn test_database() -> Option<String> {
    use sqlx::Connection;
    let admin = std::env::var("ROOMCAST_TEST_POSTGRES_URL").ok()?;
    sqlx::any::install_default_drivers();
    let name = format!("rc_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::AnyConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    Some(format!("{base}/{name}"))
}

/// The relay's own store (its SQLite file, or its PostgreSQL database), opened beside it.
pub async fn store_of(relay: &Relay) -> roomcast::store::Store {
    match relay.database_url.as_deref() {
        Some(url) => roomcast::store::Store::connect_postgres(url, 2)
            .await
            .unwrap(),
        None => roomcast::store::Store::open(&relay.dir.join("data"))
            .await
            .unwrap(),
    }
}

pub const PUB: &[Grant] = &[Grant::Publish, Grant::Subscribe];
pub const SUB: &[Grant] = &[Grant::Subscribe];

/// `err` is a refusal read on the wire: REQUEST_ERROR `code` with a reason phrase that starts
/// with `word` (e.g. `forbidden_namespace`).
pub fn refused_with(err: &impl std::fmt::Display, code: u64, word: &str) {
    let text = err.to_string();
    assert!(
        text.contains(&format!("refused with code {code:#x}: {word}: ")),
        "expected REQUEST_ERROR {code:#x} `{word}`, got: {text}"
    );
}

/// How the relay at `target` turns away a session with `token`: the close reason read on the
/// wire (or the connection error). Panics if it is let in.
pub async fn refusal(target: &Target, token: &str) -> String {
    match client::connect(target, Some(token)).await {
        Ok(c) => tokio::time::timeout(Duration::from_secs(5), c.closed())
            .await
            .expect("the session was let in")
            .to_string(),
        Err(e) => format!("{e:#}"),
    }
}

/// The reason of the relay's close of a session, as the client read it.
pub fn close_reason(closed: &quinn::ConnectionError) -> String {
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => String::from_utf8_lossy(&c.reason).into(),
        other => panic!("expected the relay's close, got {other}"),
    }
}

/// Polls `f` until it is true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

pub mod cluster;
pub mod ffmpeg;
pub mod http;
pub mod media;
pub mod process;
pub mod services;
pub mod whip;

impl Relay {
    pub fn http(&self) -> std::net::SocketAddr {
        self.server.http_addr
    }

    /// Registers and logs in `username`; returns the login session token.
    pub async fn user(&self, username: &str) -> String {
        http::register(self.http(), username).await
    }

    /// Creates a room as `host` (a login token) with `spec`; returns its id.
    pub async fn room(&self, host: &str, spec: serde_json::Value) -> String {
        http::create_room(self.http(), host, spec).await
    }

    /// Joins `room` as the user of `login`; the answer holds the media token.
    pub async fn join(&self, login: &str, room: &str, body: serde_json::Value) -> http::Response {
        http::join(self.http(), login, room, body).await
    }
}
