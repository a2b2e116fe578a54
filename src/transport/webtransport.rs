//! The WebTransport (HTTP/3) endpoint, for browsers: `web-transport-quinn`'s server side on
//! a quinn endpoint with ALPN `h3`.
//!
//! The CONNECT request's token is checked before the session is answered: a client whose
//! token does not verify gets `403` and learns nothing more about the relay (one with no token
//! in its URL is answered, and refused on SETUP unless it brings one there). An accepted
//! session is a [`RawSession`] like a raw QUIC one, so closing it writes
//! CLOSE_WEBTRANSPORT_SESSION with the relay's code and reason, which browsers read from
//! `WebTransport.closed`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use moq_transport::session::transport::Session as MoqTransport;
use moq_transport::session::Transport;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use web_transport_quinn::http::StatusCode;
use web_transport_quinn::proto::ConnectResponse;

use super::certs::Certificates;
use super::quic::RawSession;
use super::tls::{server_config, TlsError};
use super::{quic_transport_config, token_from_url, Incoming, QuicTuning, MOQT_ALPN};

/// Decides whether a CONNECT whose URL carries this token is answered `200` (`true`; the
/// relay checks the token again on SETUP, with the room's state) or `403`. A CONNECT without a
/// token is always answered: its token may come in SETUP, where the relay refuses it with a
/// reason if it does not.
pub type ConnectCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// HTTP/3 H3_NO_ERROR.
const H3_NO_ERROR: u32 = 0x100;

/// How long a refused client gets to read its `403` before the connection is closed.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// Binds the WebTransport endpoint.
pub fn bind(
    addr: SocketAddr,
    certs: &Certificates,
    tuning: &QuicTuning,
) -> Result<quinn::Endpoint, TlsError> {
    let tls = server_config(certs, &[b"h3"])?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(quic_transport_config(tuning)));
    quinn::Endpoint::server(server, addr).map_err(|source| TlsError::Io {
        path: addr.to_string().into(),
        source,
    })
}

/// Accepts sessions until `shutdown`, sending each answered one to `out`.
pub async fn accept(
    endpoint: quinn::Endpoint,
    out: mpsc::Sender<Incoming>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    check: ConnectCheck,
) {
    super::quic::serve(endpoint, out, tasks, shutdown, H3_NO_ERROR, move |conn| {
        handshake(conn, check.clone())
    })
    .await
}

async fn handshake(
    conn: quinn::Connection,
    check: ConnectCheck,
) -> anyhow::Result<Option<Incoming>> {
    let arrived = std::time::Instant::now();
    let remote = conn.remote_address();
    let request = web_transport_quinn::Request::accept(conn.clone()).await?;
    let url_token = token_from_url(&request.url);
    if url_token.as_deref().is_some_and(|t| !check(t)) {
        request.reject(StatusCode::FORBIDDEN).await?;
        // The answer is on its way; the client closes on reading it, or is closed shortly.
        let _ = tokio::time::timeout(REFUSAL_LINGER, conn.closed()).await;
        conn.close(H3_NO_ERROR.into(), b"");
        return Ok(None);
    }
    let mut url = request.url.clone();
    url.set_query(None);
    let response = if request.protocols.iter().any(|p| p == MOQT_ALPN) {
        ConnectResponse::OK.with_protocol(MOQT_ALPN)
    } else {
        ConnectResponse::OK
    };
    let session = request.respond(response).await?;
    Ok(Some(Incoming {
        transport: MoqTransport::new(RawSession(session), url.clone()),
        kind: Transport::WebTransport,
        url_token,
        remote,
        arrived,
    }))
}
