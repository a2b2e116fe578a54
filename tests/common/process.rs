//! The relay binary as a child process on port 0: for RSS figures and for crash tests.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use roomcast::client::Target;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A running `roomcast serve` child, killed when dropped.
pub struct Child {
    pub process: tokio::process::Child,
    pub http: SocketAddr,
    pub quic: Target,
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.process.id().expect("running")
    }
}

/// Starts `roomcast serve` with its state in `dir`, every listener on 127.0.0.1 port 0, and
/// `extra` flags; returns once it printed its ready line.
pub async fn serve(dir: &Path, extra: &[&str]) -> Child {
    let mut process = tokio::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["serve", "--http-listen", "127.0.0.1:0"])
        .args(["--webtransport-listen", "127.0.0.1:0"])
        .args(["--quic-listen", "127.0.0.1:0"])
        .args(["--whip-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--cert-dir")
        .arg(dir.join("certs"))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the relay binary starts");
    let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("relay ready within 20 s")
        .unwrap()
        .expect("ready line");
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
            .to_owned()
    };
    Child {
        http: field("http")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap(),
        quic: Target {
            url: field("quic").parse().unwrap(),
            cert_sha256: field("cert_sha256"),
        },
        process,
    }
}

/// Resident memory of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    roomcast::cli::rss_kib(pid).expect("the relay's /proc status") as f64 / 1024.0
}

impl Child {
    pub fn http(&self) -> SocketAddr {
        self.http
    }

    pub fn quic(&self) -> Target {
        self.quic.clone()
    }

    /// Registers and logs in `username`; returns the login session token.
    pub async fn user(&self, username: &str) -> String {
        super::http::register(self.http, username).await
    }

    /// Creates a room as `host` (a login token) with `spec`; returns its id.
    pub async fn room(&self, host: &str, spec: serde_json::Value) -> String {
        super::http::create_room(self.http, host, spec).await
    }

    /// Joins `room` as the user of `login`; the answer holds the media token.
    pub async fn join(
        &self,
        login: &str,
        room: &str,
        body: serde_json::Value,
    ) -> super::http::Response {
        super::http::join(self.http, login, room, body).await
    }

    /// Stops the relay as an operator does (SIGTERM) and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(10), self.process.wait())
            .await
            .is_err()
        {
            let _ = self.process.start_kill();
        }
    }
}
