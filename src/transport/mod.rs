//! QUIC front doors and TLS.
//!
//! Two UDP endpoints hand accepted connections to the relay as [`Incoming`]: WebTransport
//! over HTTP/3 through `wtransport` ([`wt`] adapts it to `web_transport_trait`), and raw
//! QUIC with ALPN `moqt-18` through `quinn` and `web-transport-quinn`'s raw session.

pub mod quic;
pub mod tls;
pub mod webtransport;
pub mod wt;

use std::net::SocketAddr;
use std::time::Duration;

use moq_transport::session::transport::Session as MoqTransport;
use moq_transport::session::Transport;

/// ALPN for raw QUIC MoQ sessions.
pub const MOQT_ALPN: &str = "moqt-18";
/// Idle timeout for QUIC connections.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent unidirectional streams a peer may open (one per group in flight).
pub const MAX_UNI_STREAMS: u32 = 1024;
/// Concurrent bidirectional streams a peer may open (one per MoQ request).
pub const MAX_BIDI_STREAMS: u32 = 256;

/// A connection ready for a MoQ session.
pub struct Incoming {
    pub transport: MoqTransport,
    pub kind: Transport,
    /// Token from the URL query (`?token=`), the only place a browser can put one.
    pub url_token: Option<String>,
    pub remote: SocketAddr,
}

impl Incoming {
    /// Short name of the transport, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self.kind {
            Transport::WebTransport => "webtransport",
            Transport::RawQuic => "quic",
        }
    }
}

/// A quinn transport config with roomcast's stream and idle bounds.
pub fn quic_transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(MAX_UNI_STREAMS.into());
    t.max_concurrent_bidi_streams(MAX_BIDI_STREAMS.into());
    t.max_idle_timeout(IDLE_TIMEOUT.try_into().ok());
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t
}

/// The token in a URL query, if any.
pub fn token_from_url(url: &url::Url) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}
