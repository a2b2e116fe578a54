//! The raw QUIC endpoint (ALPN `moqt-18`), for native clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use moq_transport::session::transport::Session as MoqTransport;
use moq_transport::session::Transport;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use super::certs::Certificates;
use super::handshakes::Admit;
use super::tls::{server_config, TlsError};
use super::{quic_transport_config, Incoming, QuicTuning, MOQT_ALPN};

/// Binds the raw QUIC endpoint.
pub fn bind(
    addr: SocketAddr,
    certs: &Certificates,
    tuning: &QuicTuning,
) -> Result<quinn::Endpoint, TlsError> {
    let tls = server_config(certs, &[MOQT_ALPN.as_bytes()])?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(quic_transport_config(tuning)));
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
    serve(endpoint, out, tasks, shutdown, 0, |conn| async move {
        let arrived = std::time::Instant::now();
        let remote = conn.remote_address();
        // The path comes from the client's SETUP PATH, so the URL has none.
        let url = Url::parse("moqt://relay/").expect("static url");
        let response =
            web_transport_quinn::proto::ConnectResponse::default().with_protocol(MOQT_ALPN);
        let session = web_transport_quinn::Session::raw(conn, url.clone(), response);
        Ok(Some(Incoming {
            transport: MoqTransport::new(RawSession(session), url),
            kind: Transport::RawQuic,
            url_token: None,
            remote,
            arrived,
        }))
    })
    .await
}

/// Accepts connections on `endpoint` until `shutdown`. Handshakes are bounded, in all and
/// per address (under load, unvalidated addresses get a Retry first); each one, the QUIC
/// handshake and then `open` (WebTransport: HTTP/3 SETTINGS, the CONNECT and its answer),
/// must finish within [`super::HANDSHAKE_TIMEOUT`], so a client that stalls any step gives
/// its slot back. `open` yields the session for the relay, or `None` when it refused it.
pub(super) async fn serve<F, Fut>(
    endpoint: quinn::Endpoint,
    out: mpsc::Sender<Incoming>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    close_code: u32,
    open: F,
) where
    F: Fn(quinn::Connection) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Option<Incoming>>> + Send,
{
    let handshakes = super::handshakes::Handshakes::default();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let remote = incoming.remote_address();
        let permit = match handshakes.admit(remote.ip(), incoming.remote_address_validated()) {
            Admit::Go(slot) => slot,
            Admit::Retry => {
                let _ = incoming.retry();
                continue;
            }
            Admit::Refuse => {
                tracing::debug!(%remote, "too many handshakes; refused");
                incoming.refuse();
                continue;
            }
        };
        let (out, shutdown, open) = (out.clone(), shutdown.clone(), open.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let handshake = async move {
                let conn = incoming.await?;
                open(conn).await
            };
            tokio::select! {
                r = tokio::time::timeout(super::HANDSHAKE_TIMEOUT, handshake) => match r {
                    Ok(Ok(Some(incoming))) => { let _ = out.send(incoming).await; }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "handshake failed"),
                    Err(_) => tracing::debug!(%remote, "handshake timed out"),
                },
                _ = shutdown.cancelled() => {}
            }
        });
    }
    // Sessions are closing with their own code and reason (a WebTransport one with a capsule
    // that takes a round trip): give them a moment before the endpoint cuts what is left.
    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
    endpoint.close(close_code.into(), b"relay shutting down");
}

/// How long a stopping endpoint waits for its sessions' own closes.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// A raw QUIC session whose data streams rank below its control streams.
///
/// `web_transport_quinn` maps a stream's MoQ priority (0-255) straight onto quinn's, where
/// the request streams keep the default 0, so every data stream would be sent before
/// SUBSCRIBE_OK. This wrapper maps data priorities through [`super::data_priority`] instead.
///
/// It also keeps the peer's close: `moq-transport` closes a session whose run failed, and a
/// run fails *because* the peer closed it; quinn then replaces the peer's code and reason with
/// `LocallyClosed`. A session already closed is therefore not closed again. The client uses
/// the same wrapper, raw QUIC or WebTransport, so it reads the relay's close code and reason.
#[derive(Clone)]
pub struct RawSession(pub web_transport_quinn::Session);

/// A send stream of a [`RawSession`].
pub struct RawSend(web_transport_quinn::SendStream);

impl web_transport_trait::Session for RawSession {
    type SendStream = RawSend;
    type RecvStream = web_transport_quinn::RecvStream;
    type Error = web_transport_quinn::SessionError;

    async fn accept_uni(&self) -> Result<Self::RecvStream, Self::Error> {
        self.0.accept_uni().await
    }
    async fn accept_bi(&self) -> Result<(RawSend, Self::RecvStream), Self::Error> {
        let (send, recv) = self.0.accept_bi().await?;
        Ok((RawSend(send), recv))
    }
    async fn open_bi(&self) -> Result<(RawSend, Self::RecvStream), Self::Error> {
        let (send, recv) = self.0.open_bi().await?;
        Ok((RawSend(send), recv))
    }
    async fn open_uni(&self) -> Result<RawSend, Self::Error> {
        self.0.open_uni().await.map(RawSend)
    }
    fn send_datagram(&self, payload: bytes::Bytes) -> Result<(), Self::Error> {
        self.0.send_datagram(payload)
    }
    async fn recv_datagram(&self) -> Result<bytes::Bytes, Self::Error> {
        self.0.read_datagram().await
    }
    fn max_datagram_size(&self) -> usize {
        self.0.max_datagram_size()
    }
    fn protocol(&self) -> Option<&str> {
        web_transport_trait::Session::protocol(&self.0)
    }
    fn close(&self, code: u32, reason: &str) {
        // A stream or session error seen by the caller implies the connection's error is
        // already recorded, so this check cannot miss a close that caused the failure.
        if self.0.close_reason().is_some() {
            return;
        }
        self.0.close(code, reason.as_bytes());
        // Over WebTransport the close is a capsule on the CONNECT stream, written by a task;
        // the session (with its HTTP/3 control streams, whose end the peer would take as a
        // connection error) must outlive it. That task ends the connection within a few RTTs.
        let session = self.0.clone();
        tokio::spawn(async move { session.closed().await });
    }
    async fn closed(&self) -> Self::Error {
        self.0.closed().await
    }
}

impl web_transport_trait::SendStream for RawSend {
    type Error = web_transport_quinn::WriteError;

    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        web_transport_trait::SendStream::write(&mut self.0, buf).await
    }
    fn set_priority(&mut self, order: u8) {
        let _ = self.0.set_priority(super::data_priority(order));
    }
    fn finish(&mut self) -> Result<(), Self::Error> {
        web_transport_trait::SendStream::finish(&mut self.0)
    }
    fn reset(&mut self, code: u32) {
        web_transport_trait::SendStream::reset(&mut self.0, code);
    }
    async fn closed(&mut self) -> Result<(), Self::Error> {
        web_transport_trait::SendStream::closed(&mut self.0).await
    }
}
