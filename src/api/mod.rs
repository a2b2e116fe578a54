//! HTTP on TCP beside the QUIC ports: the JSON API (accounts, rooms, moderation, chat),
//! health, certificate hash, metrics, the OpenAPI document and the web client.

pub mod admin;
pub mod chat;
pub mod closing;
pub mod error;
pub mod extract;
pub mod guard;
pub mod http;
pub mod live;
pub mod moderation;
pub mod ops;
pub mod rank;
pub mod rooms;
pub mod users;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tower_http::set_header::SetResponseHeaderLayer;

/// Largest request body accepted by any route but attachment upload.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Per-key rate limiter (login by username, chat by room and identity).
pub type Limiter<K> = Arc<governor::DefaultKeyedRateLimiter<K>>;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub info: Arc<Info>,
    /// The certificate in use (it changes when renewed or replaced).
    pub certs: crate::transport::certs::Certificates,
    pub registry: Arc<Registry>,
    pub store: crate::store::Store,
    pub issuer: crate::auth::TokenIssuer,
    pub relay: crate::relay::Relay,
    pub live: live::Live,
    /// Cluster mode: placement of joins.
    pub cluster: Option<crate::cluster::Cluster>,
    pub guards: guard::Guards,
    pub chat_limiter: Limiter<(String, String)>,
    pub limits: ApiLimits,
    /// Set once every listener is up (`/ready`).
    pub started: ops::Started,
}

/// Bounds on what users can make the API store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    pub chat: chat::ChatLimits,
    /// Bans, grant overrides and mutes one room holds.
    pub moderation_entries_per_room: u64,
    /// Rooms one user (not an admin) may own.
    pub rooms_per_user: u64,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            chat: chat::ChatLimits::default(),
            moderation_entries_per_room: 10_000,
            rooms_per_user: 100,
        }
    }
}

/// Chat messages per room and identity: 5 per second, burst 10.
pub fn chat_limiter() -> Limiter<(String, String)> {
    use governor::Quota;
    use std::num::NonZeroU32;
    let n = |v| NonZeroU32::new(v).expect("non-zero");
    Arc::new(governor::RateLimiter::keyed(
        Quota::per_second(n(5)).allow_burst(n(10)),
    ))
}

/// Public facts about this relay that do not change while it runs.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// Port of the WebTransport (HTTP/3) endpoint.
    pub webtransport_port: u16,
    /// Port of the raw QUIC (`moqt-18`) endpoint.
    pub quic_port: u16,
    /// MoQ Transport version spoken.
    pub moqt_version: &'static str,
}

/// The Content-Security-Policy of every response: the web client's own scripts, styles and
/// worklets only (no inline code), images from the API or `blob:`, connections to this origin
/// and to the WebTransport port of the host the page came from (`host`, the request's
/// validated Host; none if it had none) and, in a cluster, of the live nodes (`nodes`:
/// ` https://host:port` each, where a join may place the page), no plugins, no framing, no
/// `<base>` tricks.
pub fn content_security_policy(host: Option<&str>, webtransport_port: u16, nodes: &str) -> String {
    let webtransport = host.map_or(String::new(), |h| {
        format!(" https://{h}:{webtransport_port}")
    });
    let webtransport = format!("{webtransport}{nodes}");
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
         media-src 'self' blob:; connect-src 'self'{webtransport}; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// The host name of a request's Host header, if it is a plain `host[:port]` authority (no
/// user info, nothing a policy or a redirect could be steered with).
pub fn request_host(headers: &header::HeaderMap) -> Option<String> {
    let value = headers.get(header::HOST)?.to_str().ok()?;
    let authority: axum::http::uri::Authority = value.parse().ok()?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    Some(authority.host().to_owned())
}

/// The router: JSON endpoints, metrics and the static web client.
/// `extra` holds routes other parts add (WHIP); they get the same response headers.
pub fn router(state: ApiState, web_dir: Option<PathBuf>, extra: Router) -> Router {
    let webtransport_port = state.info.webtransport_port;
    let cluster = state.cluster.clone();
    let timings = state.relay.metrics().clone();
    let uploads = Router::new()
        .route("/api/rooms/{id}/attachments", post(chat::upload))
        .layer(DefaultBodyLimit::max(chat::MAX_IMAGE_BYTES + 1));
    Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/api/info", get(info))
        .route("/api/openapi.json", get(openapi))
        .route("/cert-hash", get(cert_hash))
        .route("/metrics", get(metrics))
        .route("/api/users", post(users::register))
        .route("/api/login", post(users::login))
        .route("/api/logout", post(users::logout))
        .route("/api/me", get(users::me))
        .route("/api/me/password", put(users::change_password))
        .route("/api/rooms", post(rooms::create).get(rooms::list))
        .route(
            "/api/rooms/{id}",
            get(rooms::get).patch(rooms::update).delete(closing::delete),
        )
        .route(
            "/api/admin/users",
            get(admin::users).post(admin::create_user),
        )
        .route("/api/admin/users/{name}", delete(admin::delete_user))
        .route(
            "/api/admin/users/{name}/password",
            put(admin::reset_password),
        )
        .route("/api/admin/rooms", get(admin::rooms))
        .route("/api/rooms/{id}/close", post(closing::close))
        .route("/api/rooms/{id}/join", post(rooms::join))
        .route("/api/rooms/{id}/invites", post(rooms::invite))
        .route("/api/rooms/{id}/lock", post(rooms::lock))
        .route("/api/rooms/{id}/events", get(rooms::events))
        .route("/api/rooms/{id}/hand", post(moderation::hand))
        .route("/api/rooms/{id}/hands", get(moderation::hands))
        .route("/api/rooms/{id}/mute-all", post(moderation::mute_all))
        .route(
            "/api/rooms/{id}/participants/{who}/grants",
            post(moderation::grants),
        )
        .route(
            "/api/rooms/{id}/participants/{who}/role",
            post(moderation::role),
        )
        .route(
            "/api/rooms/{id}/participants/{who}/mute",
            post(moderation::mute),
        )
        .route(
            "/api/rooms/{id}/participants/{who}/kick",
            post(moderation::kick),
        )
        .route(
            "/api/rooms/{id}/participants/{who}/floor",
            post(moderation::floor),
        )
        .route(
            "/api/rooms/{id}/bans/{who}",
            put(moderation::ban).delete(moderation::unban),
        )
        .route("/api/rooms/{id}/chat", post(chat::send).get(chat::history))
        .route("/api/attachments/{id}", get(chat::attachment))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .merge(uploads)
        // Every API route's time, by route template (bounded labels); MatchedPath is set
        // for matched routes only, hence a route layer.
        .route_layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let metrics = timings.clone();
                async move {
                    let started = std::time::Instant::now();
                    // Known methods only: any token is a valid method, labels stay bounded.
                    let method = match req.method().as_str() {
                        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => {
                            m.to_owned()
                        }
                        _ => "other".to_owned(),
                    };
                    let route = req
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map_or("other", |p| p.as_str())
                        .to_owned();
                    let response = next.run(req).await;
                    let status = match response.status().as_u16() {
                        100..=299 => "2xx",
                        300..=399 => "3xx",
                        400..=499 => "4xx",
                        _ => "5xx",
                    };
                    metrics
                        .http_request_seconds
                        .get_or_create(&crate::metrics::HttpLabel {
                            method,
                            route,
                            status,
                        })
                        .observe(started.elapsed().as_secs_f64());
                    response
                }
            },
        ))
        .with_state(state)
        .merge(extra)
        .merge(web::service(web_dir))
        // On every response: no content-type sniffing (attachments are served as the image
        // type their bytes were checked to be), no framing by other sites, no referrer, and
        // the content security policy.
        .layer(set_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(set_header(header::X_FRAME_OPTIONS, "DENY"))
        .layer(set_header(header::REFERRER_POLICY, "no-referrer"))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let cluster = cluster.clone();
                async move {
                    let host = request_host(req.headers());
                    let mut response = next.run(req).await;
                    let nodes = cluster
                        .as_ref()
                        .map(|c| c.web_origins())
                        .unwrap_or_default();
                    let csp = content_security_policy(host.as_deref(), webtransport_port, &nodes);
                    if let Ok(v) = header::HeaderValue::from_str(&csp) {
                        response
                            .headers_mut()
                            .entry(header::CONTENT_SECURITY_POLICY)
                            .or_insert(v);
                    }
                    response
                }
            },
        ))
}

fn set_header(
    name: header::HeaderName,
    value: &'static str,
) -> SetResponseHeaderLayer<header::HeaderValue> {
    SetResponseHeaderLayer::if_not_present(name, header::HeaderValue::from_static(value))
}

/// What `/api/info` answers: [`Info`] and the certificate in use now.
#[derive(Serialize)]
struct InfoNow<'a> {
    /// Hex SHA-256 of the TLS certificate.
    cert_sha256: String,
    /// Whether the certificate is a generated development one.
    cert_generated: bool,
    /// Whether a browser should pin it with `serverCertificateHashes` (self-signed, valid
    /// for at most 14 days); a CA-issued certificate is verified the ordinary way.
    cert_pin: bool,
    #[serde(flatten)]
    info: &'a Info,
}

async fn info(State(s): State<ApiState>) -> Response {
    let cert = s.certs.facts();
    Json(InfoNow {
        cert_sha256: cert.sha256,
        cert_generated: cert.generated,
        cert_pin: cert.pin,
        info: &s.info,
    })
    .into_response()
}

/// The OpenAPI 3.1 description of this API.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn cert_hash(State(s): State<ApiState>) -> String {
    s.certs.facts().sha256
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

/// Binds the HTTP listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Identities with a session in `room`: on this relay, and in cluster mode on every node (as
/// the other nodes last wrote it; this node's alone when Redis does not answer).
pub async fn present_everywhere(s: &ApiState, room: &str) -> Vec<String> {
    let mut present = s.relay.access().present(room);
    if let Some(cluster) = &s.cluster {
        present.extend(cluster.present_elsewhere(room).await.unwrap_or_default());
        present.sort();
        present.dedup();
    }
    present
}
