//! The HTTP listener: hyper with every wait bounded, and a cap on connections.
//!
//! `axum::serve` gives hyper no timer, so a client could hold a connection by sending half a
//! header forever. Here each connection gets a header-read timeout (which is also the idle
//! time between keep-alive requests), its request body a read timeout, and the listener caps
//! connections in total and per client address (an IPv6 client by its /64). Past a cap the
//! connection is answered `503` and closed.
//!
//! HTTPS and HTTP share the port: a connection whose first byte starts a TLS handshake gets
//! TLS with the relay's certificate (the same one as the QUIC listeners, renewed with them);
//! any other is plain HTTP where that is allowed (loopback, or `http_plain`), else answered
//! with a redirect to HTTPS, so passwords and tokens never cross the network in the clear.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Bounds on HTTP connections.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time to receive a request's headers, and the most a keep-alive connection idles.
    pub header_timeout: Duration,
    /// Time to receive a request's body without any of it arriving.
    pub body_timeout: Duration,
    /// Time a whole request may take, its body included (a body trickled one byte at a time
    /// stays within `body_timeout` but not within this).
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_address: 64,
        }
    }
}

/// TLS on the HTTP port.
#[derive(Clone)]
pub struct Tls {
    /// The server configuration (certificate resolver, ALPN `http/1.1`).
    pub config: Arc<rustls::ServerConfig>,
    /// Whether plain HTTP is served too; if not, it gets a redirect to HTTPS.
    pub plain: bool,
}

/// First byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// Answers every plain-HTTP request with a permanent redirect to the same URL over HTTPS.
fn redirect_to_https() -> Router {
    Router::new().fallback(|req: axum::extract::Request| async move {
        use axum::http::{header, StatusCode};
        use axum::response::IntoResponse;
        let Some(host) = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|_| super::request_host(req.headers()).is_some())
        else {
            return (StatusCode::BAD_REQUEST, "https only: no usable Host header").into_response();
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        (
            StatusCode::PERMANENT_REDIRECT,
            [
                (header::LOCATION, format!("https://{host}{path}")),
                (header::CACHE_CONTROL, "no-store".to_owned()),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            ],
            "https only",
        )
            .into_response()
    })
}

/// The answer past a connection cap, in the API's error format.
fn busy_response() -> Vec<u8> {
    let body = r#"{"error":{"code":"too_many_connections","message":"too many HTTP connections; retry later"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n\
         retry-after: 5\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Tls,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let deadline = limits.request_timeout;
    let router = router
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            limits.body_timeout,
        ))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| async move {
                use axum::response::IntoResponse;
                match tokio::time::timeout(deadline, next.run(req)).await {
                    Ok(response) => response,
                    Err(_) => super::error::ApiError::new(
                        axum::http::StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        "the request took too long",
                    )
                    .into_response(),
                }
            },
        ));
    let plain_router = if tls.plain {
        router.clone()
    } else {
        redirect_to_https()
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let slots = crate::transport::slots::AddressSlots::new(
        limits.max_connections,
        limits.max_connections_per_address,
    );
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Some(slot) = slots.take(remote.ip()) else {
            tracing::debug!(%remote, "http connection refused: too many");
            // One non-blocking write, then closed: a flood of refusals holds no sockets.
            let _ = stream.try_write(&busy_response());
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, plain_router) = (router.clone(), plain_router.clone());
        let (acceptor, watcher) = (acceptor.clone(), graceful.watcher());
        tokio::spawn(async move {
            // The first byte says TLS or not; waiting for it (and for the TLS handshake) is
            // bounded together like waiting for a header.
            let deadline = tokio::time::Instant::now() + limits.header_timeout;
            let mut first = [0u8; 1];
            let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await;
            if !matches!(peeked, Ok(Ok(1))) {
                return drop(slot);
            }
            let result = if first[0] == TLS_HANDSHAKE {
                match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => serve_connection(tls, router, remote, &limits, watcher).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "tls handshake failed");
                        Ok(())
                    }
                    Err(_) => Ok(()),
                }
            } else {
                serve_connection(stream, plain_router, remote, &limits, watcher).await
            };
            if let Err(e) = result {
                tracing::trace!(%remote, error = %e, "http connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    // Requests in progress get a moment; idle keep-alive connections close at once.
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

/// Serves HTTP/1.1 requests on one connection (plain or TLS) until it ends.
async fn serve_connection<I>(
    io: I,
    router: Router,
    remote: SocketAddr,
    limits: &HttpLimits,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = router.map_request(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        // Handlers see the client address (rate limits per address).
        req.extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(remote));
        req
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    watcher.watch(conn).await
}
