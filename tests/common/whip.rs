//! WHIP in tests: offers made by a real WebRTC stack (str0m), HTTP helpers, and a str0m
//! publisher that connects to the relay over UDP and sends VP8.

use std::time::{Duration, Instant};

use str0m::media::{Direction, MediaKind};
use str0m::Rtc;

use super::http::{raw, Response};
use super::Relay;

/// An offer as a WebRTC publisher makes it: sendonly audio and video (VP8, H.264 and Opus
/// among its codecs), or with `vp9_only` nothing this relay bridges.
pub fn offer(vp9_only: bool) -> String {
    let mut builder = Rtc::builder();
    if vp9_only {
        builder = builder.clear_codecs().enable_vp9(true);
    }
    let mut rtc = builder.build(Instant::now());
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    if !vp9_only {
        change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    }
    let (offer, _pending) = change.apply().expect("an offer");
    offer.to_sdp_string()
}

pub async fn post_offer(relay: &Relay, room: &str, token: Option<&str>, sdp: &str) -> Response {
    raw(
        relay.http(),
        "POST",
        &format!("/whip/{room}"),
        token,
        "application/sdp",
        sdp.as_bytes(),
    )
    .await
}

pub fn refused(r: &Response, status: u16, code: &str) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (status, code),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

pub fn location(r: &Response) -> String {
    r.headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_owned())
        })
        .expect("a Location header")
}

/// Whether `who` publishes in `room` now.
pub fn publishing(relay: &Relay, room: &str, who: &str) -> bool {
    relay.server.relay.publishers(room).iter().any(|p| p == who)
}

/// Waits up to `within` for `room` to have no publisher left; true if it came to that.
pub async fn nobody_publishes(relay: &Relay, room: &str, within: Duration) -> bool {
    super::eventually(within, || relay.server.relay.publishers(room).is_empty()).await
}

/// A VP8 frame as an encoder would make it: a keyframe (P bit clear, start code, 320x240) or
/// an interframe; the rest is a marker the subscriber checks.
pub fn vp8_frame(keyframe: bool, n: u32) -> Vec<u8> {
    let mut f = if keyframe {
        vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]
    } else {
        vec![0x11, 0x02, 0x00]
    };
    f.extend_from_slice(&n.to_be_bytes());
    f.extend_from_slice(&[0xab; 600]);
    f
}

/// A WebRTC publisher made with str0m (a stack other than the relay's side of it only in
/// role): offers sendonly VP8, connects to the relay over real UDP, then sends `frames` frames
/// at 30 fps: a keyframe every 30 (`periodic`) or only first and when asked (PLI/FIR), as an
/// encoder with a long keyframe interval does. Returns the HTTP status of the offer and the
/// frame numbers at which keyframes were asked for.
pub async fn str0m_publisher(
    relay: &Relay,
    room: &str,
    token: &str,
    frames: u32,
    periodic: bool,
) -> (u16, Vec<u32>) {
    use str0m::change::SdpAnswer;
    use str0m::format::Codec;
    use str0m::media::MediaTime;
    use str0m::net::{Protocol, Receive};
    use str0m::{Candidate, Event, Input, Output};
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_vp8(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    let mut change = rtc.sdp_api();
    let mid = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let r = post_offer(relay, room, Some(token), &offer.to_sdp_string()).await;
    if r.status != 201 {
        return (r.status, vec![]);
    }
    let answer = SdpAnswer::from_sdp_string(&String::from_utf8_lossy(&r.body)).unwrap();
    rtc.sdp_api().accept_answer(pending, answer).unwrap();
    let mut buf = vec![0u8; 2048];
    let (mut connected, mut sent) = (false, 0u32);
    let (mut asked, mut key_next) = (vec![], true);
    let mut next_frame = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent < frames && Instant::now() < deadline {
        let timeout = loop {
            match rtc.poll_output().unwrap() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(Event::Connected) => connected = true,
                Output::Event(Event::KeyframeRequest(_)) => {
                    asked.push(sent);
                    key_next = true;
                }
                Output::Event(_) => {}
            }
        };
        if connected && Instant::now() >= next_frame {
            let writer = rtc.writer(mid).unwrap();
            let pt = writer
                .payload_params()
                .find(|p| p.spec().codec == Codec::Vp8)
                .unwrap()
                .pt();
            let ts = MediaTime::from_90khz(u64::from(sent) * 3000);
            let key = key_next || (periodic && sent % 30 == 0);
            key_next = false;
            writer
                .write(pt, Instant::now(), ts, vp8_frame(key, sent))
                .unwrap();
            sent += 1;
            next_frame += Duration::from_millis(33);
            continue;
        }
        let wake = if connected {
            timeout.min(next_frame)
        } else {
            timeout
        };
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let (n, source) = r.unwrap();
                if let Ok(rx) = Receive::new(Protocol::Udp, source, local, &buf[..n]) {
                    let _ = rtc.handle_input(Input::Receive(Instant::now(), rx));
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let _ = rtc.handle_input(Input::Timeout(Instant::now()));
            }
        }
    }
    assert!(connected, "ICE and DTLS with the relay did not complete");
    assert_eq!(sent, frames, "not every frame was sent in time");
    (201, asked)
}
