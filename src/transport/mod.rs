//! QUIC front doors and TLS.
//!
//! Two UDP endpoints hand accepted connections to the relay as [`Incoming`]: WebTransport
//! over HTTP/3 and raw QUIC with ALPN `moqt-18`, both `quinn` endpoints with
//! `web-transport-quinn` sessions (its HTTP/3 server for WebTransport, its raw session for
//! QUIC) behind one wrapper, [`quic::RawSession`].

pub mod certs;
pub mod handshakes;
pub mod quic;
pub mod slots;
pub mod tls;
pub mod webtransport;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use moq_transport::session::transport::Session as MoqTransport;
use moq_transport::session::Transport;

/// ALPN for raw QUIC MoQ sessions.
pub const MOQT_ALPN: &str = "moqt-18";
/// Idle timeout for QUIC connections.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a QUIC (and, for WebTransport, HTTP/3 CONNECT) handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once on one endpoint; more are refused until some finish.
pub const MAX_HANDSHAKES: usize = 256;
/// Past this many handshakes in progress, raw QUIC clients must first prove their address
/// (a Retry round trip), so spoofed floods cannot fill the handshake slots.
pub const RETRY_ABOVE: usize = 32;

/// Bytes a peer may have in flight toward the relay on one connection, over all its streams.
pub const RECEIVE_WINDOW: u32 = 32 * 1024 * 1024;

/// Concurrent unidirectional streams a peer may open (one per group in flight from a
/// publisher; each may hold an object of up to `max_object_bytes` while it arrives).
pub const MAX_UNI_STREAMS: u32 = 32;
/// Request streams a session needs beside its subscriptions (SETUP's control stream,
/// PUBLISH_NAMESPACE, SUBSCRIBE_NAMESPACE, TRACK_STATUS, refused requests still closing).
pub const REQUEST_STREAM_HEADROOM: u32 = 64;

/// What a QUIC connection of the relay is set up with.
#[derive(Debug, Clone, Copy)]
pub struct QuicTuning {
    pub congestion: Congestion,
    /// Bytes written and not yet acknowledged, per connection: bounds what a stalled peer
    /// makes the relay hold in QUIC's send buffers.
    pub send_window: u64,
    /// Concurrent bidirectional streams a peer may open: one per MoQ request, so sized from
    /// `max_subscriptions` (a SUBSCRIBE past that limit is refused, not left hanging).
    pub bidi_streams: u32,
}

impl Default for QuicTuning {
    fn default() -> Self {
        Self::new(Congestion::default(), &crate::config::Limits::default())
    }
}

impl QuicTuning {
    /// The tuning for a relay with `limits`.
    pub fn new(congestion: Congestion, limits: &crate::config::Limits) -> Self {
        let subscriptions = u32::try_from(limits.max_subscriptions).unwrap_or(u32::MAX);
        Self {
            congestion,
            send_window: limits.send_window_bytes as u64,
            bidi_streams: subscriptions.saturating_add(REQUEST_STREAM_HEADROOM),
        }
    }
}

/// A connection ready for a MoQ session.
pub struct Incoming {
    pub transport: MoqTransport,
    pub kind: Transport,
    /// Token from the URL query (`?token=`), the only place a browser can put one.
    pub url_token: Option<String>,
    pub remote: SocketAddr,
    /// When its QUIC connection was established (`roomcast_join_seconds` starts here).
    pub arrived: std::time::Instant,
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

/// quinn priority of a data stream with MoQ send order `order` (higher first).
///
/// Request (control) streams keep quinn's default priority 0; data streams map below it, so
/// SUBSCRIBE_OK and friends never wait behind media however narrow the path.
pub fn data_priority(order: u8) -> i32 {
    i32::from(order) - 256
}

/// The congestion controller of every QUIC connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// CUBIC (RFC 9438), quinn's default: backs off on every loss.
    Cubic,
    /// NewReno (RFC 9002): halves on every loss.
    Newreno,
    /// BBR: paces at the measured bottleneck rate; random loss does not shrink it.
    #[default]
    Bbr,
}

/// Packets a later one must overtake before an earlier one counts as lost (RFC 9002 says 3).
/// Paths with jitter reorder a few packets routinely; declaring them lost would shrink the
/// congestion window for nothing and resend data already on its way.
pub const PACKET_REORDER_THRESHOLD: u32 = 8;
/// How late, in RTTs, a packet may be before it counts as lost (RFC 9002 says 9/8).
pub const TIME_REORDER_THRESHOLD: f32 = 1.25;

/// A quinn transport config with roomcast's stream, window and idle bounds and loss
/// detection.
pub fn quic_transport_config(tuning: &QuicTuning) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    match tuning.congestion {
        Congestion::Cubic => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
        }
        Congestion::Newreno => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default()))
        }
        Congestion::Bbr => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
    };
    t.packet_threshold(PACKET_REORDER_THRESHOLD);
    t.time_threshold(TIME_REORDER_THRESHOLD);
    t.max_concurrent_uni_streams(MAX_UNI_STREAMS.into());
    t.max_concurrent_bidi_streams(tuning.bidi_streams.into());
    t.send_window(tuning.send_window);
    // What a peer may have in flight toward the relay, in all its streams (quinn's default is
    // unbounded; each stream has its own ~1.25 MB window besides).
    t.receive_window(quinn::VarInt::from_u32(RECEIVE_WINDOW));
    t.max_idle_timeout(IDLE_TIMEOUT.try_into().ok());
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t
}

/// The token in a URL query, if one was presented. An empty or repeated `token` is presented
/// but empty (it never verifies), not absent: it must not pass for no token at all.
pub fn token_from_url(url: &url::Url) -> Option<String> {
    let mut tokens = url.query_pairs().filter(|(k, _)| k == "token");
    let first = tokens.next()?.1.into_owned();
    Some(if tokens.next().is_some() {
        String::new()
    } else {
        first
    })
}

/// The key a client address is limited under: an IPv4 address (IPv4-mapped IPv6 included) as
/// is, an IPv6 address by its /64, the block one host or household usually gets.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::{client_key, token_from_url};
    use std::net::IpAddr;

    #[test]
    fn an_empty_or_repeated_url_token_is_presented_not_absent() {
        let token = |q: &str| token_from_url(&url::Url::parse(&format!("https://h/{q}")).unwrap());
        assert_eq!(token(""), None);
        assert_eq!(token("?x=1"), None);
        assert_eq!(token("?token=abc").as_deref(), Some("abc"));
        assert_eq!(token("?token=").as_deref(), Some(""));
        assert_eq!(token("?token=&token=abc").as_deref(), Some(""));
        assert_eq!(token("?token=abc&token=abc").as_deref(), Some(""));
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1")),
            client_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }
}
