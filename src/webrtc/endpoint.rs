//! The WHIP HTTP resource (RFC 9725): `POST /whip/{room}` with a media token and an SDP offer
//! creates a session (201, the answer, `Location`, `ETag`, ICE servers as `Link` headers);
//! `DELETE` on its `Location` ends it; `PATCH` (trickle ICE, ICE restart) is answered 405 as
//! the RFC asks of a server without them (ICE-lite: the client's checks find the relay's one
//! candidate); `OPTIONS` answers CORS preflight.
//!
//! Every refusal is a JSON error with a code, as elsewhere in the API.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tokio::sync::oneshot;

use super::{Command, Whip, WhipError, MAX_OFFER_BYTES};
use crate::api::error::ApiError;
use crate::auth::{Action, Claims, Scope, TokenIssuer};
use crate::core::namespace::participant_namespace;
use crate::relay::Relay;

/// How long a request waits for the session loop's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

const METHODS: &str = "POST, DELETE, OPTIONS";

/// What the WHIP handlers read.
#[derive(Clone)]
pub struct WhipState {
    pub whip: Whip,
    pub relay: Relay,
    pub issuer: TokenIssuer,
}

/// The WHIP routes, ready to merge into the API router.
pub fn router(state: WhipState) -> Router {
    Router::new()
        .route("/whip/{room}", post(create).options(options))
        .route(
            "/whip/{room}/{id}",
            axum::routing::delete(delete).patch(patch).options(options),
        )
        .layer(DefaultBodyLimit::max(MAX_OFFER_BYTES))
        .with_state(state)
}

/// The bearer token's claims, if it is valid for `room` (the token's checks, then the live
/// ones: revoked, banned, closed room).
fn authorize(s: &WhipState, headers: &HeaderMap, room: &str) -> Result<Claims, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::unauthorized(
                "missing_token",
                "Authorization: Bearer <media token> is required",
            )
        })?;
    let claims = s
        .issuer
        .verify(token.trim())
        .map_err(|e| ApiError::unauthorized(e.code(), e.reason()))?;
    if claims.room != room {
        return Err(ApiError::forbidden(
            "wrong_room",
            "the token is for another room",
        ));
    }
    s.relay
        .access()
        .admit(&claims)
        .map_err(|d| ApiError::forbidden(d.code(), d.reason()))?;
    Ok(claims)
}

fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Link"),
    );
    r
}

/// `Link` headers naming the ICE servers clients should use (RFC 9725 section 4.6).
fn ice_links(whip: &Whip, headers: &mut HeaderMap) {
    for url in &whip.config.ice_servers {
        if let Ok(v) = HeaderValue::from_str(&format!("<{url}>; rel=\"ice-server\"")) {
            headers.append(header::LINK, v);
        }
    }
}

async fn options(State(s): State<WhipState>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static(METHODS));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(METHODS),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    h.insert("accept-post", HeaderValue::from_static("application/sdp"));
    ice_links(&s.whip, h);
    cors(r)
}

async fn create(
    State(s): State<WhipState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match create_inner(&s, &room, &headers, body).await {
        Ok(r) => cors(r),
        Err(e) => cors(e.into_response()),
    }
}

async fn create_inner(
    s: &WhipState,
    room: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let claims = authorize(s, headers, room)?;
    let ns = participant_namespace(room, &claims.sub);
    s.relay
        .allows(&Scope::new(claims.clone()), Action::Publish, &ns)
        .map_err(|e| ApiError::forbidden(e.code(), e.reason()))?;
    let sdp_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/sdp"));
    if !sdp_type {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_sdp",
            "the offer must be sent as Content-Type: application/sdp",
        ));
    }
    let offer = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("malformed_sdp", "the offer is not UTF-8"))?;
    let (tx, rx) = oneshot::channel();
    let sent = s.whip.send(Command::Create {
        claims: claims.clone(),
        offer,
        reply: tx,
    });
    if !sent {
        return Err(ApiError::busy("WebRTC ingress is busy; try again shortly"));
    }
    let created = match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(r)) => r.map_err(refusal)?,
        _ => return Err(ApiError::busy("WebRTC ingress did not answer; try again")),
    };
    let mut r = (StatusCode::CREATED, created.answer).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    let location = format!("/whip/{room}/{}", created.id);
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&created.etag) {
        h.insert(header::ETAG, v);
    }
    ice_links(&s.whip, h);
    tracing::info!(%room, identity = %claims.sub, %location, "whip session created");
    Ok(r)
}

/// The status and code for a refusal by the session loop.
fn refusal(e: WhipError) -> ApiError {
    let message = e.to_string();
    match e {
        WhipError::MalformedSdp(_) => ApiError::bad_request("malformed_sdp", message),
        WhipError::UnsupportedCodec(_) => {
            ApiError::new(StatusCode::NOT_ACCEPTABLE, "unsupported_codec", message)
        }
        WhipError::Rejected(_) => ApiError::bad_request("rejected_offer", message),
        WhipError::Full => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sessions",
            message,
        ),
        WhipError::Unavailable => ApiError::busy(message),
    }
}

async fn delete(
    State(s): State<WhipState>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let claims = authorize(&s, &headers, &room)?;
        let (tx, rx) = oneshot::channel();
        if !s.whip.send(Command::Delete {
            id,
            room: room.clone(),
            identity: claims.sub,
            reply: tx,
        }) {
            return Err(ApiError::busy("WebRTC ingress is busy; try again shortly"));
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(true)) => Ok(StatusCode::OK.into_response()),
            Ok(Ok(false)) => Err(ApiError::not_found(
                "unknown_session",
                "no such WHIP session (ended already?)",
            )),
            _ => Err(ApiError::busy("WebRTC ingress did not answer; try again")),
        }
    }
    .await;
    cors(result.unwrap_or_else(IntoResponse::into_response))
}

async fn patch() -> Response {
    let mut r = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "trickle_not_supported",
        "this WHIP server takes no trickle ICE or ICE restart (it is ICE-lite); send a new offer",
    )
    .into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(METHODS));
    cors(r)
}
