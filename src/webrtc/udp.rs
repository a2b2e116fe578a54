//! The WHIP session loop: one task owns the UDP socket and every session's `str0m::Rtc`
//! (ICE-lite), feeds each packet to the session that accepts it, drives timers, and hands
//! media to the [`super::bridge`]. Commands (create, delete, close) arrive on a channel.
//!
//! str0m's rule is followed throughout: after each input, `poll_output` is drained until it
//! returns a timeout.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::bridge::{Bridge, Next, VideoCodec};
use super::offer::offer_shape;
use super::{Command, Created, Whip, WhipError};
use crate::auth::{Action, Claims, Scope};
use crate::core::namespace::participant_namespace;
use crate::relay::access::Closable;
use crate::relay::Relay;

/// How often grants, idle sessions and keyframe requests are looked at.
const TICK: Duration = Duration::from_millis(250);
/// Datagrams read in one go once the socket is readable.
const RECV_BATCH: usize = 64;
/// Video frames str0m holds back waiting for a lost packet's retransmission before it gives
/// up and delivers what follows (its default, 30, stalls video for about a second).
const VIDEO_REORDER_FRAMES: usize = 5;
/// Least time between two keyframe requests of one session.
const PLI_EVERY: Duration = Duration::from_millis(500);

/// Ends a WHIP session from access control (a kick, a ban, a newer session).
///
/// The mark is what counts (looked at every tick, so a close is never lost); the command only
/// wakes the loop sooner, and may be dropped when the channel is full.
struct Closer {
    commands: mpsc::Sender<Command>,
    session: u64,
    closed: Arc<std::sync::Mutex<Option<String>>>,
}

impl Closable for Closer {
    fn close(&self, _code: u32, reason: &str) {
        let mut c = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        c.get_or_insert_with(|| reason.to_owned());
        drop(c);
        let _ = self.commands.try_send(Command::Close {
            session: self.session,
            reason: reason.to_owned(),
        });
    }
}

struct Session {
    /// Resource id (the URL's last segment).
    id: String,
    /// Id under which access control knows it.
    session: u64,
    claims: Claims,
    scope: Scope,
    rtc: Rtc,
    /// Entity tag of the session resource (for PATCH's If-Match).
    etag: String,
    timeout: Instant,
    created: Instant,
    last_media: Option<Instant>,
    mids: HashMap<Mid, MediaKind>,
    bridge: Bridge,
    grants: watch::Receiver<u64>,
    want_key: bool,
    last_pli: Option<Instant>,
    /// Set by access control when it ends the session (see [`Closer`]).
    closed: Arc<std::sync::Mutex<Option<String>>>,
    /// Whether the video had subscribers at the last look: a first one gets a fresh keyframe.
    watched: bool,
    ended: Option<String>,
    /// Whether it ended by an error (counted in `whip_errors`).
    failed: bool,
    metrics: crate::metrics::WhipMetrics,
    /// When the input being handled arrived (a packet's receive time, a timer's deadline).
    input_at: Instant,
    /// Packets, bytes and NACKs per media line as str0m last reported them (cumulative).
    ingress: HashMap<Mid, (u64, u64, u64)>,
}

impl Session {
    /// Feeds `input` to str0m and drains its output. A panic in the WebRTC stack (on
    /// malformed network input, say) ends this session only, never the loop with every other
    /// session in it.
    fn feed(&mut self, input: Input<'_>, socket: &UdpSocket) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let taken = self.rtc.handle_input(input).is_ok();
            // Drained either way, so its next timeout moves on (no spinning on a stale one).
            self.drive(socket);
            taken
        }));
        match outcome {
            Ok(true) => {}
            // A packet str0m could not use (from the network: dropped, as UDP is).
            Ok(false) => tracing::trace!(id = %self.id, "input refused by the webrtc stack"),
            Err(_) => {
                self.failed = true;
                self.end("webrtc stack panicked".into());
            }
        }
    }

    /// Drains str0m's output: packets out, events to the bridge; then asks for a keyframe if
    /// video needs one.
    fn drive(&mut self, socket: &UdpSocket) {
        for _ in 0..2 {
            loop {
                match self.rtc.poll_output() {
                    Ok(Output::Timeout(t)) => {
                        self.timeout = t;
                        break;
                    }
                    Ok(Output::Transmit(t)) => {
                        // Best effort, as UDP is: a full socket buffer drops the packet.
                        let _ = socket.try_send_to(&t.contents, t.destination);
                    }
                    Ok(Output::Event(e)) => self.on_event(e),
                    Err(e) => {
                        self.failed = true;
                        self.end(format!("webrtc error: {e}"));
                        return;
                    }
                }
            }
            if !self.request_keyframe() {
                return;
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::MediaAdded(m) => {
                self.mids.insert(m.mid, m.kind);
            }
            Event::Connected => self.want_key = true,
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.end("ice disconnected".into())
            }
            Event::MediaIngressStats(st) => {
                let (packets, bytes, nacks) = self.ingress.entry(st.mid).or_default();
                let m = &self.metrics;
                m.rtp_packets.inc_by(st.packets.saturating_sub(*packets));
                m.rtp_bytes.inc_by(st.bytes.saturating_sub(*bytes));
                m.nacks.inc_by(st.nacks.saturating_sub(*nacks));
                (*packets, *bytes, *nacks) = (st.packets, st.bytes, st.nacks);
            }
            Event::MediaData(d) => {
                self.metrics.frames.inc();
                // Wall-clock time of the frame's first packet arriving.
                let now_us = crate::client::now_micros()
                    .saturating_sub(d.network_time.elapsed().as_micros() as u64);
                self.last_media = Some(Instant::now());
                let media_us = d.time.as_micros();
                let arrived = d.network_time;
                let keyframe = d.is_keyframe();
                let data = Bytes::from_owner(d.data);
                let video = match d.params.spec().codec {
                    Codec::Vp8 => Some(VideoCodec::Vp8),
                    Codec::H264 => Some(VideoCodec::H264),
                    _ => None,
                };
                match (self.mids.get(&d.mid), video, d.params.spec().codec) {
                    (Some(MediaKind::Video), Some(codec), _) => {
                        let next = self.bridge.video(
                            codec,
                            keyframe,
                            d.contiguous,
                            data,
                            media_us,
                            now_us,
                        );
                        self.want_key = next == Next::NeedKeyframe;
                    }
                    (Some(MediaKind::Audio), _, Codec::Opus) => {
                        self.bridge.audio(data, media_us, now_us)
                    }
                    (_, _, codec) => tracing::trace!(?codec, "media not bridged"),
                }
                let m = &self.metrics;
                m.bridge_latency
                    .observe(self.input_at.elapsed().as_secs_f64());
                m.frame_assembly.observe(arrived.elapsed().as_secs_f64());
            }
            _ => {}
        }
    }

    /// Sends a PLI on the video mid when video waits for a keyframe (at most every
    /// [`PLI_EVERY`]); true if it did (the caller drains again).
    fn request_keyframe(&mut self) -> bool {
        if !self.want_key || self.last_pli.is_some_and(|t| t.elapsed() < PLI_EVERY) {
            return false;
        }
        let Some(mid) = self
            .mids
            .iter()
            .find(|(_, k)| **k == MediaKind::Video)
            .map(|(m, _)| *m)
        else {
            return false;
        };
        let Some(mut writer) = self.rtc.writer(mid) else {
            return false;
        };
        if !writer.is_request_keyframe_possible(KeyframeRequestKind::Pli) {
            return false;
        }
        self.last_pli = Some(Instant::now());
        writer
            .request_keyframe(None, KeyframeRequestKind::Pli)
            .is_ok()
    }

    fn end(&mut self, reason: String) {
        if self.ended.is_none() {
            self.ended = Some(reason);
        }
    }
}

/// The address str0m must be told a packet arrived on: the advertised candidate of the
/// sender's family (str0m drops STUN checks addressed to any other).
fn destination(candidates: &[SocketAddr], source: SocketAddr) -> Option<SocketAddr> {
    candidates
        .iter()
        .find(|c| c.is_ipv4() == source.is_ipv4())
        .copied()
}

/// The host candidates to advertise: the configured public addresses, else the bound one.
pub fn candidate_addresses(public: &[IpAddr], local: SocketAddr) -> Vec<SocketAddr> {
    if public.is_empty() {
        if local.ip().is_unspecified() {
            return vec![];
        }
        return vec![local];
    }
    public
        .iter()
        .map(|ip| SocketAddr::new(*ip, local.port()))
        .collect()
}

/// Runs every WHIP session until `shutdown`.
pub async fn run(
    socket: UdpSocket,
    relay: Relay,
    whip: Whip,
    mut commands: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    let candidates = candidate_addresses(&whip.config.public_addresses, whip.local_addr);
    if candidates.is_empty() {
        tracing::warn!(listen = %whip.local_addr, "WHIP bound to an unspecified address with no public address to advertise: no client can reach it");
    }
    let mut sessions: Vec<Session> = vec![];
    let stun_replies = governor::RateLimiter::direct(governor::Quota::per_second(
        std::num::NonZeroU32::new(super::stun::REPLIES_PER_SECOND)
            .unwrap_or(std::num::NonZeroU32::MIN),
    ));
    let mut buf = vec![0u8; 2048];
    let mut tick = tokio::time::interval(TICK);
    loop {
        let next = sessions
            .iter()
            .map(|s| s.timeout)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            cmd = commands.recv() => match cmd {
                Some(cmd) => command(cmd, &relay, &whip, &candidates, &socket, &mut sessions),
                None => break,
            },
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, source)) => {
                    receive(&buf[..n], source, &candidates, &socket, &mut sessions, &stun_replies);
                    // Whatever else is already queued, before anything else: the kernel's
                    // buffer empties as fast as it fills.
                    for _ in 0..RECV_BATCH {
                        let Ok((n, source)) = socket.try_recv_from(&mut buf) else { break };
                        receive(&buf[..n], source, &candidates, &socket, &mut sessions, &stun_replies);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "whip socket receive failed"),
            },
            _ = tokio::time::sleep_until(next.into()) => {
                let now = Instant::now();
                for s in sessions.iter_mut().filter(|s| s.timeout <= now) {
                    s.input_at = now;
                    s.feed(Input::Timeout(now), &socket);
                }
            }
            _ = tick.tick() => housekeeping(&relay, &whip, &socket, &mut sessions),
        }
        // Ended sessions leave the loop and the room.
        sessions.retain_mut(|s| match s.ended.take() {
            None => true,
            Some(reason) => {
                finish(&relay, s, &reason);
                false
            }
        });
    }
    for s in &mut sessions {
        finish(&relay, s, "relay shutting down");
    }
}

fn finish(relay: &Relay, s: &mut Session, reason: &str) {
    s.metrics.sessions.dec();
    if s.failed {
        s.metrics.errors.inc();
    }
    tracing::info!(id = %s.id, room = %s.claims.room, identity = %s.claims.sub, frames = s.bridge.frames, %reason, "whip session ended");
    s.rtc.disconnect();
    s.bridge.end(relay);
    relay.access().unregister(s.session, &s.claims);
}

fn receive(
    packet: &[u8],
    source: SocketAddr,
    candidates: &[SocketAddr],
    socket: &UdpSocket,
    sessions: &mut [Session],
    stun_replies: &governor::DefaultDirectRateLimiter,
) {
    // A session's packet (its ICE checks carry its credentials), if any session claims it.
    if let Some(destination) = destination(candidates, source) {
        if let Ok(receive) = Receive::new(Protocol::Udp, source, destination, packet) {
            let now = Instant::now();
            let input = Input::Receive(now, receive);
            if let Some(s) = sessions.iter_mut().find(|s| s.rtc.accepts(&input)) {
                s.input_at = now;
                s.feed(input, socket);
                return;
            }
        }
    }
    // Else a plain Binding request: the client asks what its address is. Anything else is
    // dropped.
    if let Some(transaction) = super::stun::binding_request(packet) {
        if stun_replies.check().is_ok() {
            let reply = super::stun::binding_response(transaction, source);
            let _ = socket.try_send_to(&reply, source);
        }
    }
}

fn command(
    cmd: Command,
    relay: &Relay,
    whip: &Whip,
    candidates: &[SocketAddr],
    socket: &UdpSocket,
    sessions: &mut Vec<Session>,
) {
    match cmd {
        Command::Create {
            claims,
            offer,
            reply,
        } => {
            if reply.is_closed() {
                return; // the HTTP request gave up: nothing to create
            }
            let created = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                create(relay, whip, candidates, claims, &offer, sessions.len())
            }))
            .unwrap_or_else(|_| Err(WhipError::Rejected("the WebRTC stack failed".into())));
            match created {
                Ok(mut s) => {
                    s.drive(socket);
                    let answer = Created {
                        id: s.id.clone(),
                        answer: std::mem::take(&mut s.answer_sdp),
                        etag: s.etag.clone(),
                    };
                    let mut session = s.session;
                    // Nobody to hand it to (the request timed out): it ends at once.
                    if reply.send(Ok(answer)).is_err() {
                        session.end("the WHIP request was abandoned".into());
                    }
                    sessions.push(session);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        Command::Delete {
            id,
            room,
            identity,
            reply,
        } => {
            let found = sessions
                .iter_mut()
                .find(|s| s.id == id && s.claims.room == room && s.claims.sub == identity);
            let existed = found.is_some();
            if let Some(s) = found {
                s.end("deleted by the publisher".into());
            }
            let _ = reply.send(existed);
        }
        Command::Close { session, reason } => {
            if let Some(s) = sessions.iter_mut().find(|s| s.session == session) {
                s.end(reason);
            }
        }
    }
}

/// A new session before its first drive, with its answer.
struct New {
    session: Session,
    answer_sdp: String,
}

impl std::ops::Deref for New {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

impl std::ops::DerefMut for New {
    fn deref_mut(&mut self) -> &mut Session {
        &mut self.session
    }
}

fn create(
    relay: &Relay,
    whip: &Whip,
    candidates: &[SocketAddr],
    claims: Claims,
    offer: &str,
    open: usize,
) -> Result<New, WhipError> {
    if open >= whip.config.max_sessions {
        return Err(WhipError::Full);
    }
    let shape = offer_shape(offer)?;
    let sdp =
        SdpOffer::from_sdp_string(offer).map_err(|e| WhipError::MalformedSdp(e.to_string()))?;
    let now = Instant::now();
    let mut rtc = Rtc::builder()
        .set_dtls_cert(whip.dtls_cert.clone())
        .set_ice_lite(true)
        .clear_codecs()
        .enable_vp8(shape.video)
        .enable_h264(shape.h264)
        .enable_opus(shape.audio, false)
        .set_stats_interval(Some(Duration::from_secs(1)))
        .set_reordering_size_video(VIDEO_REORDER_FRAMES)
        .build(now);
    for addr in candidates {
        match Candidate::host(*addr, "udp") {
            Ok(c) => {
                rtc.add_local_candidate(c);
            }
            Err(e) => tracing::warn!(%addr, error = %e, "cannot advertise WHIP candidate"),
        }
    }
    let answer = rtc
        .sdp_api()
        .accept_offer(sdp)
        .map_err(|e| WhipError::Rejected(e.to_string()))?;
    let session = relay.next_session_id();
    let closed = Arc::new(std::sync::Mutex::new(None));
    let closer = Arc::new(Closer {
        commands: whip.commands.clone(),
        session,
        closed: closed.clone(),
    });
    let mut grants = relay
        .access()
        .register(
            session,
            &claims,
            closer,
            relay.limits().max_sessions_per_identity,
        )
        .map_err(|d| WhipError::Rejected(d.reason().to_owned()))?;
    // Grants may have changed since the HTTP handler looked: look again at the first tick.
    grants.mark_changed();
    let bridge = Bridge::new(relay, &claims.room, &claims.sub, shape.audio, shape.stereo);
    let metrics = relay.metrics().whip.clone();
    metrics.sessions.inc();
    Ok(New {
        session: Session {
            id: uuid::Uuid::new_v4().simple().to_string(),
            session,
            scope: Scope::new(claims.clone()),
            claims,
            rtc,
            etag: format!("\"{}\"", uuid::Uuid::new_v4().simple()),
            timeout: now,
            created: now,
            last_media: None,
            mids: HashMap::new(),
            bridge,
            grants,
            want_key: false,
            last_pli: None,
            watched: false,
            closed,
            ended: None,
            failed: false,
            metrics,
            ingress: HashMap::new(),
            input_at: now,
        },
        answer_sdp: answer.to_sdp_string(),
    })
}

/// Grants, idleness and keyframe requests, every [`TICK`].
fn housekeeping(relay: &Relay, whip: &Whip, socket: &UdpSocket, sessions: &mut [Session]) {
    let idle = whip.config.idle_timeout;
    let now_secs = crate::auth::token::now_secs();
    for s in sessions.iter_mut() {
        let closed = s.closed.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(reason) = closed {
            s.end(reason);
            continue;
        }
        if now_secs >= s.claims.exp {
            s.end("token expired".into());
            continue;
        }
        if !s.bridge.current(relay) {
            s.end("replaced by a newer publisher of this participant".into());
            continue;
        }
        if s.grants.has_changed().unwrap_or(true) {
            s.grants.borrow_and_update();
            let ns = participant_namespace(&s.claims.room, &s.claims.sub);
            if let Err(e) = relay.allows(&s.scope, Action::Publish, &ns) {
                s.end(format!("publish not allowed any more: {}", e.code()));
                continue;
            }
        }
        match s.last_media {
            None if s.created.elapsed() > idle => {
                s.end("no media: ICE/DTLS did not complete in time".into())
            }
            Some(t) if t.elapsed() > idle => s.end("publisher went silent".into()),
            _ => {}
        }
        // A first subscriber starts at once at a fresh keyframe instead of catching up the
        // cached part of a long GOP.
        let watched = s.bridge.video_readers() > 0;
        if watched && !s.watched {
            s.want_key = true;
        }
        s.watched = watched;
        if s.want_key {
            let asked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if s.request_keyframe() {
                    s.drive(socket);
                }
            }));
            if asked.is_err() {
                s.failed = true;
                s.end("webrtc stack panicked".into());
            }
        }
    }
}
