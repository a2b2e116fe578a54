//! WHIP over real HTTP: every refusal with its status and code, and a live session (created
//! from an offer a real WebRTC stack made, str0m's) ended by DELETE, a kick, or a revoked
//! publish grant. Media through a browser publisher is in tests/browser/whip.test.mjs.

mod common;

use std::time::{Duration, Instant};

use common::http::{json, raw, Response};
use common::{eventually, Relay};
use roomcast::auth::{token::now_secs, Claims, Grant};
use roomcast::config::Config;
use serde_json::json as j;
use str0m::media::{Direction, MediaKind};
use str0m::Rtc;

/// An offer as a WebRTC publisher makes it: sendonly audio and video (VP8, H.264 and Opus
/// among its codecs), or with `vp9_only` nothing this relay bridges.
fn offer(vp9_only: bool) -> String {
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

async fn post_offer(relay: &Relay, room: &str, token: Option<&str>, sdp: &str) -> Response {
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

fn refused(r: &Response, status: u16, code: &str) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (status, code),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

fn location(r: &Response) -> String {
    r.headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_owned())
        })
        .expect("a Location header")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_whip_request_gets_its_status_and_reason() {
    let relay = Relay::start().await;
    let publish = relay.token("r1", "obs", &[Grant::Publish]);
    let good = offer(false);

    refused(
        &post_offer(&relay, "r1", None, &good).await,
        401,
        "missing_token",
    );
    refused(
        &post_offer(&relay, "r1", Some("garbage"), &good).await,
        401,
        "malformed_token",
    );
    let expired = relay.token_for(Claims {
        exp: now_secs() - 3600,
        iat: now_secs() - 7200,
        ..Claims::new(
            "obs",
            "r1",
            [Grant::Publish].into(),
            Duration::from_secs(60),
        )
    });
    refused(
        &post_offer(&relay, "r1", Some(&expired), &good).await,
        401,
        "token_expired",
    );
    let viewer = relay.token("r1", "viewer", &[Grant::Subscribe]);
    refused(
        &post_offer(&relay, "r1", Some(&viewer), &good).await,
        403,
        "missing_grant",
    );
    refused(
        &post_offer(&relay, "r2", Some(&publish), &good).await,
        403,
        "wrong_room",
    );
    relay.server.relay.access().ban("r1", "mallory");
    let banned = relay.token("r1", "mallory", &[Grant::Publish]);
    refused(
        &post_offer(&relay, "r1", Some(&banned), &good).await,
        403,
        "banned",
    );
    let r = raw(
        relay.http(),
        "POST",
        "/whip/r1",
        Some(&publish),
        "application/json",
        good.as_bytes(),
    )
    .await;
    refused(&r, 415, "not_sdp");
    refused(
        &post_offer(&relay, "r1", Some(&publish), "hello, I am not SDP").await,
        400,
        "malformed_sdp",
    );
    // SDP that parses but that no WebRTC peer could use.
    let broken = good.replace("a=fingerprint", "a=fingerprinx");
    let r = post_offer(&relay, "r1", Some(&publish), &broken).await;
    refused(&r, 400, "rejected_offer");
    assert!(String::from_utf8_lossy(&r.body).contains("fingerprint"));
    refused(
        &post_offer(&relay, "r1", Some(&publish), &offer(true)).await,
        406,
        "unsupported_codec",
    );
    let huge = format!("{good}{}", "a=x-padding\r\n".repeat(4000));
    let r = post_offer(&relay, "r1", Some(&publish), &huge).await;
    assert_eq!(r.status, 413, "an offer over the size limit");
    let r = raw(
        relay.http(),
        "DELETE",
        "/whip/r1/0123456789abcdef0123456789abcdef",
        Some(&publish),
        "",
        b"",
    )
    .await;
    refused(&r, 404, "unknown_session");
    let r = raw(
        relay.http(),
        "PATCH",
        "/whip/r1/x",
        Some(&publish),
        "application/trickle-ice-sdpfrag",
        b"a=end-of-candidates\r\n",
    )
    .await;
    refused(&r, 405, "trickle_not_supported");
    let r = raw(relay.http(), "OPTIONS", "/whip/r1", None, "", b"").await;
    assert_eq!(r.status, 204);
    let h = r.headers.to_ascii_lowercase();
    assert!(
        h.contains("access-control-allow-methods: post, delete, options"),
        "{h}"
    );
    assert!(
        h.contains("access-control-allow-headers: authorization, content-type"),
        "{h}"
    );

    // Nothing was published by any of them.
    assert!(relay.server.relay.publishers("r1").is_empty());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_session_ends_with_delete_a_kick_or_a_revoked_grant() {
    let relay = Relay::start_with(Config {
        whip_ice_servers: vec!["stun:stun.example.net:3478".into()],
        ..Default::default()
    })
    .await;
    // Through the API, as an application would: a host, a room, a member who joins.
    let host = relay.user("host").await;
    let id = relay.room(&host, j!({"name": "ingest"})).await;
    let obs = relay.user("obs").await;
    let media = |r: Response| r.json()["token"].as_str().unwrap().to_owned();
    let token = media(relay.join(&obs, &id, j!({})).await);

    // Created: the answer, its resource, an ETag, the ICE servers; the member publishes.
    let r = post_offer(&relay, &id, Some(&token), &offer(false)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let answer = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        answer.contains("a=ice-lite") && answer.contains("VP8/90000"),
        "{answer}"
    );
    assert!(
        answer.contains(&format!(" {} typ host", relay.server.whip_addr.port())),
        "{answer}"
    );
    let h = r.headers.to_ascii_lowercase();
    assert!(h.contains("etag: \""), "{h}");
    assert!(
        h.contains("link: <stun:stun.example.net:3478>; rel=\"ice-server\""),
        "{h}"
    );
    assert!(relay
        .server
        .relay
        .publishers(&id)
        .contains(&"obs".to_owned()));
    let first = location(&r);
    let delete = |path: String, token: String| {
        let http = relay.http();
        async move {
            raw(http, "DELETE", &path, Some(&token), "", b"")
                .await
                .status
        }
    };
    // Someone else's token cannot end it.
    let other = relay.user("other").await;
    let other_token = media(relay.join(&other, &id, j!({})).await);
    assert_eq!(delete(first.clone(), other_token).await, 404);
    assert_eq!(delete(first.clone(), token.clone()).await, 200);
    assert!(
        eventually(Duration::from_secs(2), || relay
            .server
            .relay
            .publishers(&id)
            .is_empty())
        .await
    );

    // A kick ends an open session (and its token).
    let r = post_offer(&relay, &id, Some(&token), &offer(false)).await;
    assert_eq!(r.status, 201);
    let second = location(&r);
    let r = json(
        relay.http(),
        "POST",
        &format!("/api/rooms/{id}/participants/obs/kick"),
        Some(&host),
        j!(null),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        eventually(Duration::from_secs(1), || relay
            .server
            .relay
            .publishers(&id)
            .is_empty())
        .await,
        "kicked: unpublished within a second"
    );
    assert_eq!(
        delete(second, token.clone()).await,
        403,
        "the kicked token is refused"
    );

    // A revoked publish grant ends the next one within a second.
    let token = media(relay.join(&obs, &id, j!({})).await);
    let r = post_offer(&relay, &id, Some(&token), &offer(false)).await;
    assert_eq!(r.status, 201);
    let third = location(&r);
    let r = json(
        relay.http(),
        "POST",
        &format!("/api/rooms/{id}/participants/obs/grants"),
        Some(&host),
        j!({"publish": false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        eventually(Duration::from_secs(1), || relay
            .server
            .relay
            .publishers(&id)
            .is_empty())
        .await,
        "revoked: unpublished within a second"
    );
    assert_eq!(delete(third, token).await, 404, "the session is gone");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_session_that_never_connects_is_ended_after_the_idle_timeout() {
    let relay = Relay::start_with(Config {
        whip_idle_timeout_ms: Some(500),
        max_whip_sessions: Some(1),
        ..Default::default()
    })
    .await;
    let token = relay.token("r1", "obs", &[Grant::Publish]);
    let r = post_offer(&relay, "r1", Some(&token), &offer(false)).await;
    assert_eq!(r.status, 201);
    let first = location(&r);
    // The one place is taken while it waits for ICE.
    let other = relay.token("r1", "cam2", &[Grant::Publish]);
    refused(
        &post_offer(&relay, "r1", Some(&other), &offer(false)).await,
        503,
        "too_many_sessions",
    );
    // No ICE, no media: ended, unpublished, its place free again.
    assert!(
        eventually(Duration::from_secs(3), || relay
            .server
            .relay
            .publishers("r1")
            .is_empty())
        .await,
        "the silent session was not ended"
    );
    let r = raw(relay.http(), "DELETE", &first, Some(&token), "", b"").await;
    refused(&r, 404, "unknown_session");
    assert_eq!(
        post_offer(&relay, "r1", Some(&other), &offer(false))
            .await
            .status,
        201
    );
    relay.stop().await;
}

/// A VP8 frame as an encoder would make it: a keyframe (P bit clear, start code, 320x240) or
/// an interframe; the rest is a marker the subscriber checks.
fn vp8_frame(keyframe: bool, n: u32) -> Vec<u8> {
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
async fn str0m_publisher(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webrtc_publisher_reaches_a_quic_subscriber_as_keyframe_groups_with_rising_timestamps() {
    use common::media::{drain, watch};
    let relay = Relay::start().await;
    // A QUIC subscriber watching the catalog and the video the bridge will publish.
    let token = relay.token("r1", "enc", &[Grant::Publish]);
    let publisher = {
        let relay = &relay;
        let token = token.clone();
        async move { str0m_publisher(relay, "r1", &token, 90, true).await.0 }
    };
    let subscriber = async {
        assert!(
            eventually(Duration::from_secs(10), || relay
                .server
                .relay
                .publishers("r1")
                .contains(&"enc".to_owned()))
            .await
        );
        let viewer = relay.client("r1", "viewer", &[Grant::Subscribe]).await;
        let catalog = watch(&viewer, "r1", "enc", "catalog").await;
        let video = watch(&viewer, "r1", "enc", "video").await;
        (viewer, catalog, video)
    };
    let (status, (_viewer, mut catalog, mut video)) = tokio::join!(publisher, subscriber);
    assert_eq!(status, 201);
    let mut got = drain(&mut video, Duration::from_secs(1)).await;
    assert!(got.len() >= 30, "{} objects", got.len());
    // Group streams may interleave on the wire: look at them in track order.
    got.sort_by_key(|o| (o.group, o.object));
    // Each group starts at a keyframe (object 0), objects in order, frames intact.
    // Each group starts at a keyframe (object 0) and holds only that keyframe's successors,
    // objects in order, frames intact; capture timestamps rise.
    let mut last_ts = 0;
    let mut by_group: std::collections::BTreeMap<u64, Vec<(u64, u32)>> = Default::default();
    for o in &got {
        let n = u32::from_be_bytes(o.payload[o.payload.len() - 604..][..4].try_into().unwrap());
        let key = o.payload[0] & 1 == 0;
        assert_eq!(o.payload.as_ref(), vp8_frame(key, n), "frame {n} intact");
        assert_eq!(
            key,
            o.object == 0,
            "frame {n} (group {} object {}): keyframes open groups",
            o.group,
            o.object
        );
        by_group.entry(o.group).or_default().push((o.object, n));
        let ts = match o.extensions.get(0x06).map(|kv| &kv.value) {
            Some(moq_transport::coding::Value::IntValue(v)) => *v,
            other => panic!("no capture timestamp: {other:?}"),
        };
        assert!(ts > last_ts, "capture timestamps rise");
        last_ts = ts;
    }
    let mut next_frame = 0;
    for (g, objects) in &by_group {
        for (i, (object, n)) in objects.iter().enumerate() {
            assert_eq!(
                (*object, *n),
                (i as u64, next_frame),
                "group {g}: every frame, in order"
            );
            next_frame += 1;
        }
    }
    assert!(next_frame >= 30);
    // The catalog describes what the keyframe says.
    let cat = drain(&mut catalog, Duration::from_millis(200)).await;
    let last: serde_json::Value = serde_json::from_slice(&cat.last().unwrap().payload).unwrap();
    let v = &last["tracks"][0]["selectionParams"];
    assert_eq!(
        (
            v["codec"].as_str(),
            v["width"].as_u64(),
            v["height"].as_u64()
        ),
        (Some("vp8"), Some(320), Some(240))
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_subscriber_gets_a_keyframe_asked_for_it() {
    use common::media::{drain, watch};
    let relay = Relay::start().await;
    let token = relay.token("r1", "enc", &[Grant::Publish]);
    // An encoder that sends a keyframe only at the start and when asked.
    let publisher = str0m_publisher(&relay, "r1", &token, 120, false);
    let subscriber = async {
        assert!(
            eventually(Duration::from_secs(10), || relay
                .server
                .relay
                .publishers("r1")
                .contains(&"enc".to_owned()))
            .await
        );
        // Joins a second and a half in, the first to watch.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let viewer = relay.client("r1", "viewer", &[Grant::Subscribe]).await;
        let video = watch(&viewer, "r1", "enc", "video").await;
        (viewer, video)
    };
    let ((status, asked), (_viewer, mut video)) = tokio::join!(publisher, subscriber);
    assert_eq!(status, 201);
    assert!(
        asked.iter().any(|&n| n >= 40),
        "no keyframe asked for when the subscriber came (asked at frames {asked:?})"
    );
    let got = drain(&mut video, Duration::from_secs(1)).await;
    let groups: std::collections::BTreeSet<u64> = got.iter().map(|o| o.group).collect();
    assert!(
        groups.len() >= 2,
        "a fresh group began at the requested keyframe: {groups:?}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_session_ends_with_its_token_or_a_newer_session_and_offers_stay_simple() {
    let relay = Relay::start().await;
    // A token about to expire: the session ends with it (as a MoQ session does).
    let short = relay.token_for(Claims::new(
        "brief",
        "r1",
        [Grant::Publish].into(),
        Duration::from_secs(2),
    ));
    let r = post_offer(&relay, "r1", Some(&short), &offer(false)).await;
    assert_eq!(r.status, 201);
    assert!(relay
        .server
        .relay
        .publishers("r1")
        .contains(&"brief".to_owned()));
    assert!(
        eventually(Duration::from_secs(5), || !relay
            .server
            .relay
            .publishers("r1")
            .contains(&"brief".to_owned()))
        .await,
        "the session outlived its token"
    );

    // A newer session of the same participant replaces the older, which ends.
    let token = relay.token("r1", "cam", &[Grant::Publish]);
    let first = location(&post_offer(&relay, "r1", Some(&token), &offer(false)).await);
    let second = location(&post_offer(&relay, "r1", Some(&token), &offer(false)).await);
    // Within a housekeeping tick (250 ms) the older one is gone: deleting it finds nothing.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = raw(relay.http(), "DELETE", &first, Some(&token), "", b"").await;
    refused(&r, 404, "unknown_session");
    assert!(
        relay
            .server
            .relay
            .publishers("r1")
            .contains(&"cam".to_owned()),
        "the newer one publishes"
    );
    assert_eq!(
        raw(relay.http(), "DELETE", &second, Some(&token), "", b"")
            .await
            .status,
        200
    );

    // Two video sections (or simulcast) in one offer are refused.
    let mut rtc = Rtc::builder().build(Instant::now());
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (two, _pending) = change.apply().unwrap();
    let r = post_offer(&relay, "r1", Some(&token), &two.to_sdp_string()).await;
    refused(&r, 400, "rejected_offer");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whip_port_tells_a_client_its_address_and_bounds_its_answers() {
    let relay = Relay::start().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = socket.local_addr().unwrap();
    let request = |id: u8| {
        let mut r = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        r.extend_from_slice(&[id; 12]);
        r
    };
    socket
        .send_to(&request(1), relay.server.whip_addr)
        .await
        .unwrap();
    let mut buf = [0u8; 128];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .expect("a Binding response")
        .unwrap();
    let r = &buf[..n];
    assert_eq!(&r[0..2], &[0x01, 0x01], "Binding success");
    assert_eq!(&r[8..20], &[1u8; 12], "our transaction");
    assert_eq!(&r[20..22], &[0x00, 0x20], "XOR-MAPPED-ADDRESS");
    let port = u16::from_be_bytes([r[26], r[27]]) ^ 0x2112;
    let ip: Vec<u8> = r[28..32]
        .iter()
        .zip([0x21, 0x12, 0xa4, 0x42])
        .map(|(b, c)| b ^ c)
        .collect();
    assert_eq!((ip, port), (vec![127, 0, 0, 1], me.port()));

    // A flood (spoofable in the wild) gets a bounded number of answers, not one each.
    for i in 0..400u32 {
        socket
            .send_to(&request((i % 250) as u8), relay.server.whip_addr)
            .await
            .unwrap();
    }
    let mut answers = 0;
    while tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf))
        .await
        .is_ok()
    {
        answers += 1;
    }
    assert!(
        (50..=200).contains(&answers),
        "{answers} answers to 400 requests"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_webrtc_publishers_at_once_each_reach_their_subscriber() {
    use common::media::{drain, watch};
    let relay = Relay::start().await;
    let names = ["cam1", "cam2", "cam3"];
    let tokens: Vec<String> = names
        .iter()
        .map(|n| relay.token("r1", n, &[Grant::Publish]))
        .collect();
    let publishers = futures::future::join_all(
        tokens
            .iter()
            .map(|t| str0m_publisher(&relay, "r1", t, 90, true)),
    );
    let subscriber = async {
        let all_in = || {
            let p = relay.server.relay.publishers("r1");
            names.iter().all(|n| p.contains(&n.to_string()))
        };
        assert!(eventually(Duration::from_secs(10), all_in).await);
        let viewer = relay.client("r1", "viewer", &[Grant::Subscribe]).await;
        let mut tracks = vec![];
        for n in names {
            tracks.push(watch(&viewer, "r1", n, "video").await);
        }
        (viewer, tracks)
    };
    let (results, (_viewer, mut tracks)) = tokio::join!(publishers, subscriber);
    assert!(results.iter().all(|(status, _)| *status == 201));
    for (n, rx) in names.iter().zip(tracks.iter_mut()) {
        let got = drain(rx, Duration::from_millis(500)).await;
        assert!(got.len() >= 30, "{n}: {} objects", got.len());
    }
    relay.stop().await;
}
