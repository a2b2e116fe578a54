//! The WebTransport (HTTP/3) endpoint, for browsers.

use std::net::SocketAddr;
use std::sync::Arc;

use moq_transport::session::transport::Session as MoqTransport;
use moq_transport::session::Transport;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;
use wtransport::endpoint::endpoint_side::Server;
use wtransport::{Endpoint, ServerConfig};

use super::certs::Certificates;
use super::handshakes::Admit;
use super::tls::{server_config, TlsError};
use super::wt::WtSession;
use super::{quic_transport_config, token_from_url, Incoming, QuicTuning, MOQT_ALPN};

/// Binds the WebTransport endpoint.
pub fn bind(
    addr: SocketAddr,
    certs: &Certificates,
    tuning: &QuicTuning,
) -> Result<Endpoint<Server>, TlsError> {
    let tls = server_config(certs, &[b"h3"])?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(quic_transport_config(tuning)));
    let config = ServerConfig::builder()
        .with_bind_address(addr)
        .build_with_quic_config(server);
    Endpoint::server(config).map_err(|source| TlsError::Io {
        path: addr.to_string().into(),
        source,
    })
}

/// Accepts sessions until `shutdown`, sending each ready connection to `out`.
pub async fn accept(
    endpoint: Endpoint<Server>,
    out: mpsc::Sender<Incoming>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let handshakes = super::handshakes::Handshakes::default();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.cancelled() => break,
        };
        // Bounded in all and per address; under load an unvalidated address is asked to Retry
        // first, as on the raw QUIC endpoint.
        let remote = incoming.remote_address();
        let permit = match handshakes.admit(remote.ip(), incoming.remote_address_validated()) {
            Admit::Go(slot) => slot,
            Admit::Retry => {
                incoming.retry();
                continue;
            }
            Admit::Refuse => {
                tracing::debug!(%remote, "too many webtransport handshakes; refused");
                incoming.refuse();
                continue;
            }
        };
        let out = out.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _permit = permit;
            tokio::select! {
                // The whole handshake (QUIC, HTTP/3 SETTINGS, CONNECT and its answer) is timed,
                // so a client that stalls any step gives its slot back.
                r = tokio::time::timeout(super::HANDSHAKE_TIMEOUT, handshake(incoming)) => match r {
                    Ok(Ok(incoming)) => { let _ = out.send(incoming).await; }
                    Ok(Err(e)) => tracing::debug!(error = %e, "webtransport handshake failed"),
                    Err(_) => tracing::debug!("webtransport handshake timed out"),
                },
                _ = shutdown.cancelled() => {}
            }
        });
    }
    endpoint.close(0u32.into(), b"relay shutting down");
}

async fn handshake(incoming: wtransport::endpoint::IncomingSession) -> anyhow::Result<Incoming> {
    let request = tokio::time::timeout(super::HANDSHAKE_TIMEOUT, incoming).await??;
    let remote = request.remote_address();
    let full = Url::parse(&format!(
        "https://{}{}",
        request.authority(),
        request.path()
    ))?;
    let url_token = token_from_url(&full);
    let mut url = full.clone();
    url.set_query(None);
    let offered = request
        .headers()
        .get("wt-available-protocols")
        .is_some_and(|v| v.contains(&format!("\"{MOQT_ALPN}\"")));
    let (connection, protocol) = if offered {
        let header = format!("\"{MOQT_ALPN}\"");
        let c = request
            .accept_with_headers([("wt-protocol", header.as_str())])
            .await?;
        (c, Some(MOQT_ALPN.to_owned()))
    } else {
        (request.accept().await?, None)
    };
    let session = WtSession::new(connection, url.clone(), protocol);
    Ok(Incoming {
        transport: MoqTransport::new(session, url),
        kind: Transport::WebTransport,
        url_token,
        remote,
    })
}
