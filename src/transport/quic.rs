//! The raw QUIC endpoint (ALPN `moqt-18`), for native clients.

use std::net::SocketAddr;
use std::sync::Arc;

use moq_transport::session::transport::Session as MoqTransport;
use moq_transport::session::Transport;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use super::tls::{server_config, Identity, TlsError};
use super::{quic_transport_config, Incoming, MOQT_ALPN};

/// Binds the raw QUIC endpoint.
pub fn bind(addr: SocketAddr, identity: &Identity) -> Result<quinn::Endpoint, TlsError> {
    let tls = server_config(identity, &[MOQT_ALPN.as_bytes()])?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(quic_transport_config()));
    quinn::Endpoint::server(server, addr).map_err(|source| TlsError::Io {
        path: addr.to_string().into(),
        source,
    })
}

/// Accepts connections until `shutdown`, sending each to `out`.
pub async fn accept(
    endpoint: quinn::Endpoint,
    out: mpsc::Sender<Incoming>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let out = out.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let remote = incoming.remote_address();
            let connecting = tokio::select! {
                c = tokio::time::timeout(super::IDLE_TIMEOUT, incoming) => c,
                _ = shutdown.cancelled() => return,
            };
            match connecting {
                Ok(Ok(conn)) => {
                    // The path comes from the client's SETUP PATH, so the URL has none.
                    let url = Url::parse("moqt://relay/").expect("static url");
                    let response = web_transport_quinn::proto::ConnectResponse::default()
                        .with_protocol(MOQT_ALPN);
                    let session = web_transport_quinn::Session::raw(conn, url, response);
                    let _ = out
                        .send(Incoming {
                            transport: MoqTransport::from(session),
                            kind: Transport::RawQuic,
                            url_token: None,
                            remote,
                        })
                        .await;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "quic handshake failed"),
                Err(_) => tracing::debug!("quic handshake timed out"),
            }
        });
    }
    endpoint.close(0u32.into(), b"relay shutting down");
}
