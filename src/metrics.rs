//! Prometheus metrics, served at `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label for failures, by stable error code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

/// Label for sessions, by transport.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

/// Label for upstream subscriptions, by where the track comes from: `session` (a publisher
/// connected here) or `node` (another node of the cluster, through a peer session).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

/// WHIP (WebRTC) ingress counters.
#[derive(Clone, Debug)]
pub struct WhipMetrics {
    pub sessions: Gauge,
    pub rtp_packets: Counter,
    pub rtp_bytes: Counter,
    /// Seconds from the RTP packet that completed a frame arriving to its object in the
    /// track: what the relay adds.
    pub bridge_latency: Histogram,
    /// Seconds from a frame's first RTP packet arriving to its object in the track: includes
    /// the sender's pacing of a large frame and waiting for retransmissions.
    pub frame_assembly: Histogram,
    pub frames: Counter,
    pub plis: Counter,
    pub nacks: Counter,
    pub errors: Counter,
}

impl Default for WhipMetrics {
    fn default() -> Self {
        Self {
            sessions: Gauge::default(),
            rtp_packets: Counter::default(),
            rtp_bytes: Counter::default(),
            bridge_latency: latency_histogram(),
            frame_assembly: latency_histogram(),
            frames: Counter::default(),
            plis: Counter::default(),
            nacks: Counter::default(),
            errors: Counter::default(),
        }
    }
}

/// Every metric the relay exports. Cheap to clone (each metric is an `Arc`).
#[derive(Clone)]
pub struct Metrics {
    pub sessions: Family<TransportLabel, Gauge>,
    pub rooms: Gauge,
    pub rooms_open: Gauge,
    pub tracks: Gauge,
    /// Subscriptions this relay holds upstream (one per relayed track).
    pub upstream_subscriptions: Family<SourceLabel, Gauge>,
    pub subscribers: Gauge,
    pub objects_in: Counter,
    pub objects_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub dropped_groups: Counter,
    pub groups_aborted: Counter,
    pub cache_bytes: Gauge,
    pub groups_reset: Counter,
    pub groups_refused: Counter,
    pub auth_failures: Family<CodeLabel, Counter>,
    pub requests_refused: Family<CodeLabel, Counter>,
    /// Seconds from a connection's arrival to its session admitted (SETUP and token done).
    pub join_seconds: Family<TransportLabel, Histogram>,
    /// Seconds from an object's arrival at the relay to its last byte handed to a
    /// subscriber's stream (sampled per group stream: its first object and every 16th).
    pub object_latency: Histogram,
    /// Seconds an HTTP request took, by method, route template and status class.
    pub http_request_seconds: Family<HttpLabel, Histogram>,
    /// Webhook events delivered (answered 2xx).
    pub webhooks_delivered: Counter,
    /// Webhook delivery attempts that failed (each retry counts).
    pub webhook_failures: Counter,
    /// Webhook events given up: queue full, or not delivered within the retry window.
    pub webhooks_dropped: Counter,
    /// Webhook events waiting, over every endpoint.
    pub webhook_queue: Gauge,
    /// WHIP (WebRTC) ingress.
    pub whip: WhipMetrics,
}

/// Label for HTTP requests: bounded (route templates, not paths).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabel {
    pub method: String,
    /// The matched route template (`/api/rooms/{id}/join`); the web client's files and WHIP
    /// are not timed.
    pub route: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub status: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 0.8 s.
    Histogram::new(exponential_buckets(0.00005, 1.5, 25))
}

fn seconds_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            sessions: Family::default(),
            rooms: Gauge::default(),
            rooms_open: Gauge::default(),
            tracks: Gauge::default(),
            upstream_subscriptions: Family::default(),
            subscribers: Gauge::default(),
            objects_in: Counter::default(),
            objects_out: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            dropped_groups: Counter::default(),
            groups_aborted: Counter::default(),
            cache_bytes: Gauge::default(),
            groups_reset: Counter::default(),
            groups_refused: Counter::default(),
            auth_failures: Family::default(),
            requests_refused: Family::default(),
            join_seconds: Family::new_with_constructor(seconds_histogram),
            object_latency: latency_histogram(),
            http_request_seconds: Family::new_with_constructor(seconds_histogram),
            webhooks_delivered: Counter::default(),
            webhook_failures: Counter::default(),
            webhooks_dropped: Counter::default(),
            webhook_queue: Gauge::default(),
            whip: WhipMetrics::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn registry(&self) -> Arc<Registry> {
        let mut r = Registry::with_prefix("roomcast");
        r.register("sessions", "Open MoQ sessions", self.sessions.clone());
        r.register("rooms", "Rooms with at least one track", self.rooms.clone());
        r.register(
            "rooms_open",
            "Rooms with live state (members present or within their empty timeout)",
            self.rooms_open.clone(),
        );
        r.register("tracks", "Tracks being relayed", self.tracks.clone());
        r.register(
            "upstream_subscriptions",
            "Subscriptions held upstream, by source (session: a publisher here; node: another node)",
            self.upstream_subscriptions.clone(),
        );
        r.register(
            "subscribers",
            "Active track subscriptions",
            self.subscribers.clone(),
        );
        r.register(
            "objects_in",
            "Objects received from publishers",
            self.objects_in.clone(),
        );
        r.register(
            "objects_out",
            "Objects sent to subscribers",
            self.objects_out.clone(),
        );
        r.register("bytes_in", "Payload bytes received", self.bytes_in.clone());
        r.register("bytes_out", "Payload bytes sent", self.bytes_out.clone());
        r.register(
            "dropped_groups",
            "Groups skipped for slow subscribers",
            self.dropped_groups.clone(),
        );
        r.register(
            "groups_aborted",
            "Publishers' groups dropped whole: stream reset upstream, malformed, or over a media budget",
            self.groups_aborted.clone(),
        );
        r.register(
            "cache_bytes",
            "Media bytes cached for relayed tracks",
            self.cache_bytes.clone(),
        );
        r.register(
            "groups_reset",
            "Group streams reset because a newer group started and this one was still unsent past its deadline",
            self.groups_reset.clone(),
        );
        r.register(
            "groups_refused",
            "Group streams a subscriber stopped (STOP_SENDING); the subscription goes on",
            self.groups_refused.clone(),
        );
        r.register(
            "auth_failures",
            "Refused tokens by reason",
            self.auth_failures.clone(),
        );
        r.register(
            "requests_refused",
            "Refused MoQ requests by reason",
            self.requests_refused.clone(),
        );
        r.register(
            "join_seconds",
            "Time from a connection's arrival to its MoQ session admitted (SETUP and token checked)",
            self.join_seconds.clone(),
        );
        r.register(
            "object_relay_seconds",
            "Time from an object's arrival at the relay to its last byte handed to a subscriber's stream (sampled: a group's first object and every 16th)",
            self.object_latency.clone(),
        );
        r.register(
            "http_request_seconds",
            "Time an HTTP request took, by method, route and status class",
            self.http_request_seconds.clone(),
        );
        r.register(
            "webhooks_delivered",
            "Webhook events delivered (answered 2xx)",
            self.webhooks_delivered.clone(),
        );
        r.register(
            "webhook_failures",
            "Webhook delivery attempts that failed (each retry counts)",
            self.webhook_failures.clone(),
        );
        r.register(
            "webhooks_dropped",
            "Webhook events given up: queue full or retry window passed",
            self.webhooks_dropped.clone(),
        );
        r.register(
            "webhook_queue",
            "Webhook events waiting to be delivered",
            self.webhook_queue.clone(),
        );
        let w = &self.whip;
        r.register("whip_sessions", "Open WHIP sessions", w.sessions.clone());
        r.register(
            "whip_rtp_packets",
            "RTP packets received from WHIP publishers",
            w.rtp_packets.clone(),
        );
        r.register(
            "whip_rtp_bytes",
            "RTP bytes received from WHIP publishers",
            w.rtp_bytes.clone(),
        );
        r.register(
            "whip_bridge_latency_seconds",
            "Time from the RTP packet that completed a frame to its object in the track",
            w.bridge_latency.clone(),
        );
        r.register(
            "whip_frame_assembly_seconds",
            "Time from a frame's first RTP packet to its object in the track",
            w.frame_assembly.clone(),
        );
        r.register(
            "whip_frames",
            "Frames bridged from WHIP publishers into tracks",
            w.frames.clone(),
        );
        r.register(
            "whip_plis",
            "Keyframe requests (PLI) sent to WHIP publishers",
            w.plis.clone(),
        );
        r.register(
            "whip_nacks",
            "Retransmission requests (NACK) sent to WHIP publishers",
            w.nacks.clone(),
        );
        r.register(
            "whip_errors",
            "WHIP sessions ended by a WebRTC or bridge error",
            w.errors.clone(),
        );
        Arc::new(r)
    }

    pub fn auth_failure(&self, code: &str) {
        self.auth_failures
            .get_or_create(&CodeLabel { code: code.into() })
            .inc();
    }

    pub fn refused(&self, code: &str) {
        self.requests_refused
            .get_or_create(&CodeLabel { code: code.into() })
            .inc();
    }
}

/// Text exposition of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
