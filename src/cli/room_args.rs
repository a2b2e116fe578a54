//! What `publish` and `subscribe` share: where the relay is, the token, the room, and their
//! waiting helpers.

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::client::{self, Client, Target};
use web_transport_quinn::{SessionError, WebTransportError};

/// The relay and the room a client command works in.
#[derive(Args, Debug)]
pub struct RoomArgs {
    /// Relay URL: `moqt://host:port/` (raw QUIC) or `https://host:port/` (WebTransport).
    #[arg(long)]
    pub url: url::Url,
    /// Hex SHA-256 of the relay certificate (`GET /cert-hash`).
    #[arg(long, env = "ROOMCAST_CERT_SHA256")]
    pub cert_sha256: String,
    /// Token (from `POST /api/rooms/{id}/join` or `roomcast token`): `publish` needs the
    /// publish grant, `subscribe` the subscribe grant.
    #[arg(long, env = "ROOMCAST_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Room (default: the token's room).
    #[arg(long)]
    pub room: Option<String>,
}

impl RoomArgs {
    pub fn target(&self) -> Target {
        Target {
            url: self.url.clone(),
            cert_sha256: self.cert_sha256.clone(),
        }
    }

    /// The room: `--room`, else the token's.
    pub fn room(&self) -> anyhow::Result<String> {
        self.room
            .clone()
            .or(token_scope(&self.token).map(|s| s.0))
            .context("no --room, and the token names none")
    }

    /// The token's identity.
    pub fn identity(&self) -> Option<String> {
        token_scope(&self.token).map(|s| s.1)
    }
}

/// The room and identity a token names (read, not verified: the relay verifies it).
fn token_scope(token: &str) -> Option<(String, String)> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    Some((
        claims.get("room")?.as_str()?.to_owned(),
        claims.get("sub")?.as_str()?.to_owned(),
    ))
}

/// Waits until `deadline`, forever if there is none.
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Ctrl-C (SIGINT) or SIGTERM, as a flag that any number of waits can look at: listening
/// starts now and lasts for the whole run, so a signal is seen whatever the command awaits.
pub fn stop_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
        let _ = tx.send(true);
    });
    rx
}

/// Waits until [`stop_signal`]'s flag is up.
pub async fn stopped(flag: &mut tokio::sync::watch::Receiver<bool>) {
    if flag.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The close reason when it says retrying cannot help (a refused token, a kick or ban, a
/// newer session of the same participant).
pub fn refused(e: &SessionError) -> Option<String> {
    let (code, reason) = match e {
        SessionError::ConnectionError(quinn::ConnectionError::ApplicationClosed(c)) => (
            c.error_code.into_inner(),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        // WebTransport: the relay's CLOSE_WEBTRANSPORT_SESSION.
        SessionError::WebTransportError(WebTransportError::Closed(code, reason)) => {
            (u64::from(*code), reason.clone())
        }
        _ => return None,
    };
    (code == 0x2 || reason.starts_with("replaced")).then(|| format!("{reason} (code {code:#x})"))
}

/// Why a failed connection attempt is final (a refusal, see [`refused`], or a WebTransport
/// CONNECT answered with an error status), if it is.
pub fn fatal(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|c| {
        if let Some(r) = c.downcast_ref::<client::ConnectRefused>() {
            return Some(r.to_string());
        }
        c.downcast_ref::<SessionError>().and_then(refused)
    })
}

/// Connects within 5 s, sending the token.
pub async fn connect(target: &Target, token: &str) -> anyhow::Result<Client> {
    tokio::time::timeout(Duration::from_secs(5), client::connect(target, Some(token)))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from the relay within 5 s"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_access_refusals_end_the_command() {
        let closed = |code: u32, reason: &str| {
            SessionError::ConnectionError(quinn::ConnectionError::ApplicationClosed(
                quinn::ApplicationClose {
                    error_code: quinn::VarInt::from_u32(code),
                    reason: reason.as_bytes().to_vec().into(),
                },
            ))
        };
        let capsule = |code: u32, reason: &str| {
            SessionError::WebTransportError(WebTransportError::Closed(code, reason.into()))
        };
        for closed in [closed, capsule] {
            assert!(refused(&closed(2, "token_expired: token expired")).is_some());
            assert!(refused(&closed(7, "replaced: a newer session")).is_some());
            assert!(refused(&closed(0, "relay shutdown")).is_none());
        }
        assert!(refused(&quinn::ConnectionError::TimedOut.into()).is_none());
    }
}
