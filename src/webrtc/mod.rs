//! WebRTC ingress: WHIP publishers (RFC 9725) bridged into rooms.
//!
//! An encoder or a browser POSTs an SDP offer to `/whip/{room}` with a media token; the relay
//! answers as an ICE-lite WebRTC peer through `str0m` (sans-IO), every WHIP session on one UDP
//! port, which also answers plain STUN Binding requests. What arrives is depacketized by str0m
//! and published as the participant's `catalog`, `video` and `audio` tracks in the project's
//! object format (docs/protocol.md): the same late-join and congestion rules as any
//! publisher, no transcoding.
//!
//! - [`endpoint`]: the HTTP resource (POST, DELETE, PATCH, OPTIONS) and its checks.
//! - [`udp`]: the one task that owns the socket and every session's `Rtc`.
//! - [`bridge`]: frames to MoQ objects, groups and the catalog.
//! - [`stun`]: plain STUN Binding answers, so clients can learn their public address here.
//!
//! The module depends on the core and the relay (tracks, access control), never the reverse.

pub mod bridge;
pub mod endpoint;

pub mod offer;
pub mod stun;
pub mod udp;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::auth::Claims;

/// How WHIP is set up.
#[derive(Debug, Clone)]
pub struct WhipConfig {
    /// UDP address every WHIP session's media uses.
    pub listen: SocketAddr,
    /// Addresses to advertise as ICE candidates (a public address behind NAT); the bound
    /// address when empty.
    pub public_addresses: Vec<IpAddr>,
    /// STUN/TURN URLs handed to clients in `Link: <...>; rel="ice-server"` headers.
    pub ice_servers: Vec<String>,
    /// WHIP sessions at once.
    pub max_sessions: usize,
    /// A session whose ICE and DTLS did not complete, or whose media stopped, for this long
    /// is ended.
    pub idle_timeout: Duration,
}

impl Default for WhipConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:4445".parse().expect("valid"),
            public_addresses: vec![],
            ice_servers: vec![],
            max_sessions: 64,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Largest SDP offer accepted.
pub const MAX_OFFER_BYTES: usize = 32 * 1024;

/// Why a WHIP request was refused.
#[derive(Debug, thiserror::Error)]
pub enum WhipError {
    /// The offer is not SDP str0m can read.
    #[error("malformed_sdp: {0}")]
    MalformedSdp(String),
    /// The offer has no audio or video this relay can take.
    #[error("unsupported_codec: {0}")]
    UnsupportedCodec(String),
    /// Too many WHIP sessions.
    #[error("too_many_sessions: the relay holds the most WHIP sessions it may")]
    Full,
    /// The session loop is gone (shutdown).
    #[error("unavailable: WebRTC ingress is shutting down")]
    Unavailable,
    /// The WebRTC stack refused the offer.
    #[error("rejected_offer: {0}")]
    Rejected(String),
}

/// An accepted offer.
#[derive(Debug)]
pub struct Created {
    /// The session's resource id (unguessable), the last segment of its URL.
    pub id: String,
    pub answer: String,
    pub etag: String,
}

/// Requests to the session loop.
#[derive(Debug)]
pub enum Command {
    Create {
        claims: Claims,
        offer: String,
        reply: oneshot::Sender<Result<Created, WhipError>>,
    },
    /// Ends session `id` if it belongs to `room` and `identity`; replies whether it existed.
    Delete {
        id: String,
        room: String,
        identity: String,
        reply: oneshot::Sender<bool>,
    },
    /// Ends the session registered in access control as `session` (a kick, a ban, a
    /// replacement), with a reason for the log.
    Close { session: u64, reason: String },
}

/// A handle on the running WHIP ingress. Cheap to clone.
#[derive(Clone)]
pub struct Whip {
    commands: mpsc::Sender<Command>,
    /// The UDP address media goes to.
    pub local_addr: SocketAddr,
    /// The DTLS certificate every session presents (made once: no key generation per offer).
    dtls_cert: str0m::config::DtlsCert,
    pub config: std::sync::Arc<WhipConfig>,
}

impl std::fmt::Debug for Whip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whip")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl Whip {
    /// Sends `command` to the loop; false if the loop is gone or too busy.
    pub fn send(&self, command: Command) -> bool {
        self.commands.try_send(command).is_ok()
    }
}

/// Receive buffer asked of the kernel: a keyframe burst from several publishers must not
/// overflow it while the loop is busy (the kernel caps it at `net.core.rmem_max`).
const RECV_BUFFER: usize = 4 * 1024 * 1024;

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if let Err(e) = socket.set_recv_buffer_size(RECV_BUFFER) {
        tracing::debug!(error = %e, "whip socket keeps the default receive buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// Binds the UDP socket and starts the session loop (tracked in `tasks`, ended by `shutdown`).
pub async fn start(
    relay: crate::relay::Relay,
    config: WhipConfig,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<Whip> {
    let socket = bind(config.listen)?;
    let local_addr = socket.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    let config = std::sync::Arc::new(config);
    let dtls_cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .ok_or_else(|| std::io::Error::other("cannot generate a DTLS certificate for WHIP"))?;
    let whip = Whip {
        commands: tx,
        local_addr,
        dtls_cert,
        config: config.clone(),
    };
    tasks.spawn(udp::run(socket, relay, whip.clone(), rx, shutdown));
    Ok(whip)
}
