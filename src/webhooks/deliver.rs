//! One endpoint's delivery: its events in order, each retried with backoff until it is
//! answered 2xx or its retry window passes.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{signature, Outgoing, ATTEMPT_TIMEOUT};
use crate::metrics::Metrics;

/// First wait after a failed attempt; doubled each time, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(super) struct Endpoint {
    pub url: url::Url,
    /// What logs name it by: its origin (a path, query or user info may hold a credential).
    pub name: String,
    pub secret: Vec<u8>,
    pub retry_for: Duration,
    /// How long queued events are still sent once the relay stops.
    pub flush_for: Duration,
    pub client: reqwest::Client,
    pub metrics: Metrics,
}

/// The HTTP client every endpoint shares: no redirects followed (a receiver answers where
/// it was configured), TLS verified against the system's roots.
pub(super) fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("roomcast/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Delivers `events` in order until `shutdown`; then what is queued is still sent for
/// `flush_for` (what is left is counted as dropped).
pub(super) async fn run(
    endpoint: Endpoint,
    mut events: mpsc::Receiver<Outgoing>,
    shutdown: CancellationToken,
) {
    let mut stop_by: Option<Instant> = None;
    loop {
        let event = match stop_by {
            None => tokio::select! {
                e = events.recv() => e,
                _ = shutdown.cancelled() => {
                    stop_by = Some(Instant::now() + endpoint.flush_for);
                    continue;
                }
            },
            // Stopping: only what is already queued.
            Some(_) => events.try_recv().ok(),
        };
        let Some(event) = event else { break };
        endpoint.metrics.webhook_queue.dec();
        let deadline = Instant::now() + endpoint.retry_for;
        let mut backoff = FIRST_BACKOFF;
        loop {
            // One attempt, cut short by the retry window or, once stopping, the flush time
            // (a stop asked meanwhile shortens it; the attempt itself goes on).
            let sending = attempt(&endpoint, &event);
            tokio::pin!(sending);
            let result = loop {
                let until = stop_by.map_or(deadline, |s| s.min(deadline));
                tokio::select! {
                    r = &mut sending => break r,
                    _ = tokio::time::sleep_until(until.into()) => break Err("out of time".to_owned()),
                    _ = shutdown.cancelled(), if stop_by.is_none() => {
                        stop_by = Some(Instant::now() + endpoint.flush_for);
                    }
                }
            };
            match result {
                Ok(()) => {
                    endpoint.metrics.webhooks_delivered.inc();
                    break;
                }
                Err(why) => {
                    endpoint.metrics.webhook_failures.inc();
                    let until = stop_by.map_or(deadline, |s| s.min(deadline));
                    if Instant::now() + backoff > until {
                        endpoint.metrics.webhooks_dropped.inc();
                        tracing::warn!(endpoint = %endpoint.name, id = %event.id, why, "webhook given up");
                        break;
                    }
                    tracing::debug!(endpoint = %endpoint.name, id = %event.id, why, retry_in = ?backoff, "webhook not delivered");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        // Stopping: one more try within the flush time.
                        _ = shutdown.cancelled(), if stop_by.is_none() => {
                            stop_by = Some(Instant::now() + endpoint.flush_for);
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
    // Left unsent when the relay stopped.
    while events.try_recv().is_ok() {
        endpoint.metrics.webhook_queue.dec();
        endpoint.metrics.webhooks_dropped.inc();
    }
}

/// One POST of `event`, signed with the time of this attempt.
async fn attempt(endpoint: &Endpoint, event: &Outgoing) -> Result<(), String> {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signed = signature(&endpoint.secret, &event.id, timestamp, &event.body);
    let response = endpoint
        .client
        .post(endpoint.url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", &event.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signed)
        .body(event.body.to_vec())
        .send()
        .await
        // Without the URL: it may hold a credential.
        .map_err(|e| e.without_url().to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}
