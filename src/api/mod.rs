//! HTTP on TCP beside the QUIC ports: health, certificate hash, metrics, the web client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;

/// Largest request body accepted by any route.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub info: Arc<Info>,
    pub registry: Arc<Registry>,
}

/// Public facts about this relay, for clients and scripts.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// Hex SHA-256 of the TLS certificate, for `serverCertificateHashes`.
    pub cert_sha256: String,
    /// Whether the certificate is a generated development one.
    pub cert_generated: bool,
    /// Port of the WebTransport (HTTP/3) endpoint.
    pub webtransport_port: u16,
    /// Port of the raw QUIC (`moqt-18`) endpoint.
    pub quic_port: u16,
    /// MoQ Transport version spoken.
    pub moqt_version: &'static str,
}

/// The router: JSON endpoints, metrics and the static web client.
pub fn router(state: ApiState, web_dir: PathBuf) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/api/info", get(info))
        .route("/cert-hash", get(cert_hash))
        .route("/metrics", get(metrics))
        .fallback_service(ServeDir::new(web_dir))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .with_state(state)
}

async fn info(State(s): State<ApiState>) -> Json<Info> {
    Json(Info::clone(&s.info))
}

async fn cert_hash(State(s): State<ApiState>) -> String {
    s.info.cert_sha256.clone()
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::encode(&s.registry),
    )
        .into_response()
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds the HTTP listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
