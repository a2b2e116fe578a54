//! Webhooks: an application backend is told what happens in its rooms. Each configured
//! endpoint receives JSON events signed as Standard Webhooks specifies (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `"{id}.{timestamp}.{body}"` with the configured secret), in order, retried with backoff.
//!
//! Sending never waits: events go into a bounded queue per endpoint (full: the event is
//! dropped and counted); one task per endpoint delivers them one at a time, so a slow or dead
//! receiver holds back only its own later events, never the relay.

mod deliver;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// Events waiting per endpoint; more are dropped (`roomcast_webhooks_dropped_total`).
pub const MAX_QUEUE: usize = 10_000;
/// One delivery attempt's limit.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where events go and how they are signed.
#[derive(Clone)]
pub struct WebhookSettings {
    pub urls: Vec<url::Url>,
    /// HMAC-SHA256 key: a `whsec_<base64>` secret decoded (Standard Webhooks' form), any
    /// other secret's bytes as given.
    pub secret: Vec<u8>,
    /// How long an event is retried before it is given up (dropped and counted).
    pub retry_for: Duration,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("urls", &self.urls.iter().map(origin).collect::<Vec<_>>())
            .field("secret", &"<redacted>")
            .field("retry_for", &self.retry_for)
            .finish()
    }
}

/// The key a configured secret stands for: `whsec_<base64>` decoded, else its bytes.
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD.decode(b64).ok(),
        None => Some(secret.as_bytes().to_vec()),
    }
}

/// What logs call an endpoint: its origin only.
fn origin(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

/// The event types sent.
pub mod kind {
    pub const ROOM_STARTED: &str = "room_started";
    pub const ROOM_FINISHED: &str = "room_finished";
    pub const PARTICIPANT_JOINED: &str = "participant_joined";
    pub const PARTICIPANT_LEFT: &str = "participant_left";
    pub const TRACK_PUBLISHED: &str = "track_published";
    pub const TRACK_UNPUBLISHED: &str = "track_unpublished";
}

/// What an endpoint receives as the request body.
#[derive(Serialize)]
struct Payload<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    /// Milliseconds since the Unix epoch.
    timestamp: u64,
    room: &'a str,
    /// The node that saw it (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    data: &'a serde_json::Value,
}

/// One event, ready to send: its id, when it happened and its body.
#[derive(Debug, Clone)]
struct Outgoing {
    id: String,
    body: Arc<[u8]>,
}

/// Sends events to every endpoint. Cheap to clone; a default one sends nothing.
#[derive(Clone, Default)]
pub struct Webhooks {
    endpoints: Arc<[mpsc::Sender<Outgoing>]>,
    node: Option<Arc<str>>,
    metrics: Option<Metrics>,
}

impl Webhooks {
    /// Starts one delivery task per endpoint, until `shutdown` (then what is queued is
    /// still sent for `flush_for`).
    pub fn start(
        settings: &WebhookSettings,
        node: Option<String>,
        metrics: Metrics,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
        flush_for: Duration,
    ) -> anyhow::Result<Webhooks> {
        let client = deliver::client()?;
        let endpoints = settings
            .urls
            .iter()
            .map(|url| {
                let (tx, rx) = mpsc::channel(MAX_QUEUE);
                tasks.spawn(deliver::run(
                    deliver::Endpoint {
                        url: url.clone(),
                        name: origin(url),
                        secret: settings.secret.clone(),
                        retry_for: settings.retry_for,
                        flush_for,
                        client: client.clone(),
                        metrics: metrics.clone(),
                    },
                    rx,
                    shutdown.clone(),
                ));
                tx
            })
            .collect();
        Ok(Webhooks {
            endpoints,
            node: node.map(Arc::from),
            metrics: Some(metrics),
        })
    }

    /// Queues event `kind` about `room` for every endpoint; never waits.
    pub fn send(&self, kind: &str, room: &str, data: &serde_json::Value) {
        if self.endpoints.is_empty() {
            return;
        }
        let id = format!("evt_{}", uuid::Uuid::new_v4().simple());
        let payload = Payload {
            id: &id,
            kind,
            timestamp: now_ms(),
            room,
            node: self.node.as_deref(),
            data,
        };
        let Ok(body) = serde_json::to_vec(&payload) else {
            return;
        };
        let out = Outgoing {
            id,
            body: Arc::from(body),
        };
        for endpoint in self.endpoints.iter() {
            // Counted before it is queued, so the delivery task never takes it below zero.
            if let Some(m) = &self.metrics {
                m.webhook_queue.inc();
            }
            let Err(e) = endpoint.try_send(out.clone()) else {
                continue;
            };
            if let Some(m) = &self.metrics {
                m.webhook_queue.dec();
            }
            match e {
                mpsc::error::TrySendError::Full(_) => {
                    if let Some(m) = &self.metrics {
                        m.webhooks_dropped.inc();
                    }
                    tracing::warn!(kind, room, "webhook queue full: event dropped");
                }
                // The relay is stopping.
                mpsc::error::TrySendError::Closed(_) => {}
            }
        }
    }
}

/// The `webhook-signature` value for a body: `v1,` and the base64 HMAC-SHA256 of
/// `"{id}.{timestamp}.{body}"` under `secret`.
pub fn signature(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    use base64::Engine;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification (its secret is the base64 after
        // `whsec_`; roomcast takes the configured secret's bytes as they are).
        use base64::Engine;
        let secret = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
