//! What operators and load balancers ask: `/health` (does this node's store answer) and
//! `/ready` (should new clients be sent here).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::ApiState;

/// How long `/health` waits for the store (and Redis) to answer.
const PING_WITHIN: Duration = Duration::from_secs(2);

/// Whether every listener is up (set once the server has started them all), and whether a
/// stop was asked (before the relay drains: `stop_delay_ms`).
#[derive(Clone, Default)]
pub struct Started {
    up: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
}

impl Started {
    pub fn set(&self) {
        self.up.store(true, Ordering::Release);
    }

    /// A stop was asked: `/ready` answers 503 `stopping` from now on.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    fn get(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

/// Whether the store (and in a cluster Redis) answers: `status` `ok`, or `degraded` with the
/// one that does not named. Always 200 while the process serves: media of connected sessions
/// flows without either, so a liveness probe must not restart the node for it (alert on the
/// body, or on `/metrics`).
pub async fn health(State(s): State<ApiState>) -> Response {
    let store = tokio::time::timeout(PING_WITHIN, s.store.ping())
        .await
        .unwrap_or(false);
    let redis = match &s.cluster {
        Some(cluster) => Some(
            tokio::time::timeout(PING_WITHIN, cluster.ping())
                .await
                .unwrap_or(false),
        ),
        None => None,
    };
    let word = |up: bool| if up { "ok" } else { "unreachable" };
    let mut body = json!({
        "status": if store && redis != Some(false) { "ok" } else { "degraded" },
        "store": word(store),
    });
    if let Some(redis) = redis {
        body["redis"] = json!(word(redis));
    }
    (StatusCode::OK, Json(body)).into_response()
}

/// 200 once every listener is up and until a stop is asked; 503 `starting`, `stopping`
/// (asked, sessions still let in: `stop_delay_ms`) or `draining` (sessions told GOAWAY)
/// otherwise.
pub async fn ready(State(s): State<ApiState>) -> Response {
    let reason = if !s.started.get() {
        Some("starting")
    } else if s.relay.is_draining() {
        Some("draining")
    } else if s.started.stopping.load(Ordering::Acquire) {
        Some("stopping")
    } else {
        None
    };
    match reason {
        None => (StatusCode::OK, Json(json!({"ready": true}))).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason})),
        )
            .into_response(),
    }
}
