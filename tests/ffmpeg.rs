//! Live-streaming ingest and egress with the tools people use: Debian's ffmpeg encodes a test
//! source to CMAF, `roomcast publish` takes it into a room, `roomcast subscribe` writes the
//! participant back out as fragmented MP4, and ffprobe and ffmpeg's `framemd5` judge the file.
//! Then every way the input or the relay can be wrong, and a relay restarted mid-stream.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::ffmpeg::{
    decode_errors, encode, frame_times, framemd5, in_order_subset, packet_times, probe, relay_args,
    roomcast, source_args, video_only, Scratch, CMAF, HEAVY,
};
use common::media::published;
use common::{Relay, PUB, SUB};
use roomcast::auth::token::now_secs;
use roomcast::auth::Claims;

/// ffmpeg's output piped into `roomcast publish`, recorded by `roomcast subscribe`: the same
/// codecs and size, the frames decoded from the recording identical to the source's, all but
/// at most one GOP of them there.
async fn round_trip(video: &str, audio: &str, codecs: (&str, &str)) {
    let _heavy = HEAVY.lock().await;
    let relay = Relay::start().await;
    let dir = Scratch::new();
    let (source, recording) = (dir.path("source.mp4"), dir.path("recording.mp4"));
    let (secs, gop) = (4, 30);
    encode(secs, gop, video, audio, &source);

    let mut sub = vec!["subscribe".to_string()];
    sub.extend(relay_args(&relay, "live", "rec", SUB));
    sub.extend(["--participant", "cam", "-o", recording.to_str().unwrap()].map(String::from));
    let subscriber = roomcast(&sub, Stdio::null());

    // The encoder writes to a pipe; publish reads it from stdin.
    let mut ffmpeg = Command::new("ffmpeg")
        .args(source_args(secs, gop, video, audio, "-"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut publish = vec!["publish".to_string()];
    publish.extend(relay_args(&relay, "live", "cam", PUB));
    publish.push("-".into());
    let publisher = roomcast(&publish, Stdio::from(ffmpeg.stdout.take().unwrap()));
    let out = publisher.finish(Duration::from_secs(30)).await;
    let _ = ffmpeg.wait();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "publish failed: {log}");
    assert!(log.contains("publish input ended:"), "no summary: {log}");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    subscriber.interrupt();
    let out = subscriber.finish(Duration::from_secs(10)).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "subscribe failed: {log}");
    assert!(log.contains("subscribe interrupted:"), "no summary: {log}");

    let (sent, got) = (probe(&source), probe(&recording));
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].codec.as_str(), got[1].codec.as_str()), codecs);
    assert_eq!((got[0].width, got[0].height), (Some(320), Some(240)));
    assert!(
        got[0].frames + u64::from(gop) >= sent[0].frames && got[0].frames <= sent[0].frames,
        "{} of {} video frames",
        got[0].frames,
        sent[0].frames
    );
    assert!(got[1].frames > 0, "no audio frames: {got:?}");
    let (a, b) = (framemd5(&source), framemd5(&recording));
    assert!(
        in_order_subset(&a, &b),
        "recorded frames differ from the source's ({} vs {})",
        b.len(),
        a.len()
    );
    // Every packet is decoded before (or when) it is presented, in stored order.
    let packets = packet_times(&recording);
    assert_eq!(packets.len(), b.len());
    assert!(
        packets.iter().all(|(dts, pts)| dts <= pts),
        "decoded after presented: {packets:?}"
    );
    assert!(
        packets.windows(2).all(|w| w[0].0 < w[1].0),
        "decode times go back: {packets:?}"
    );
    // Frames are presented one 30th of a second apart, in the order they are decoded (with
    // B-frames, that needs the right composition offsets).
    let times = frame_times(&recording);
    assert_eq!(times.len(), b.len());
    // (A group the relay dropped under load leaves one longer step; never a step back.)
    let steps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let regular = steps.iter().filter(|s| (0.025..0.045).contains(*s)).count();
    assert!(
        steps.iter().all(|s| *s > 0.025) && regular + 2 >= steps.len(),
        "frames presented out of step: {steps:?}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_and_aac_from_ffmpeg_come_out_frame_for_frame() {
    round_trip("libx264", "aac", ("h264", "aac")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp9_and_opus_from_ffmpeg_come_out_frame_for_frame() {
    round_trip("libvpx-vp9", "libopus", ("vp9", "opus")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_and_av1_from_ffmpeg_come_out_frame_for_frame() {
    round_trip("libx265", "aac", ("hevc", "aac")).await;
    round_trip("libsvtav1", "libopus", ("av1", "opus")).await;
}

/// `roomcast publish` of `input` (bytes on stdin) with `extra` arguments: its exit status and
/// stderr, and whether anything was published meanwhile.
async fn publish_fails(relay: &Relay, input: Option<Vec<u8>>, args: &[&str]) -> String {
    publish_fails_with(relay, &relay.token("bad", "cam", PUB), input, args).await
}

/// [`publish_fails`] with `token`.
async fn publish_fails_with(
    relay: &Relay,
    token: &str,
    input: Option<Vec<u8>>,
    args: &[&str],
) -> String {
    publish_fails_at(relay, None, token, input, args).await
}

/// [`publish_fails_with`] to `url` (default: the raw QUIC one).
async fn publish_fails_at(
    relay: &Relay,
    url: Option<String>,
    token: &str,
    input: Option<Vec<u8>>,
    args: &[&str],
) -> String {
    let mut a = vec!["publish".to_string()];
    a.extend(relay_args(relay, "bad", "cam", PUB));
    a[6] = token.to_owned();
    if let Some(url) = url {
        a[2] = url;
    }
    a.extend(args.iter().map(|s| s.to_string()));
    let mut child = roomcast(
        &a,
        if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        },
    );
    if let Some(bytes) = input {
        let mut stdin = child.stdin().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&bytes);
        });
    }
    let out = child.finish(Duration::from_secs(20)).await;
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "publish succeeded on bad input: {log}"
    );
    assert!(
        relay.server.relay.publishers("bad").is_empty(),
        "something was published: {log}"
    );
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_what_is_wrong_and_nothing_published() {
    let relay = Relay::start().await;
    let dir = Scratch::new();
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let log = publish_fails(&relay, Some(garbage), &["-"]).await;
    assert!(log.contains("is not an MP4 stream"), "{log}");
    let log = publish_fails(&relay, Some(vec![]), &["-"]).await;
    assert!(log.contains("input is empty"), "{log}");

    // An ordinary (unfragmented) MP4: the error names the flags that fix it.
    let plain = dir.path("plain.mp4");
    video_only(1, &plain, &["-c:v", "libx264"]);
    let log = publish_fails(&relay, None, &[plain.to_str().unwrap()]).await;
    assert!(
        log.contains("not fragmented") && log.contains(CMAF),
        "{log}"
    );

    // A codec roomcast does not relay (MPEG-4 Part 2) is named.
    let mpeg4 = dir.path("mpeg4.mp4");
    video_only(
        1,
        &mpeg4,
        &["-c:v", "mpeg4", "-f", "mp4", "-movflags", CMAF],
    );
    let log = publish_fails(&relay, None, &[mpeg4.to_str().unwrap()]).await;
    assert!(log.contains("unsupported codec mp4v"), "{log}");

    // AV1 whose init segment has no decoder configuration (libaom-av1 with empty_moov).
    let aom = dir.path("aom.mp4");
    video_only(
        1,
        &aom,
        &[
            "-c:v",
            "libaom-av1",
            "-cpu-used",
            "8",
            "-usage",
            "realtime",
            "-f",
            "mp4",
            "-movflags",
            CMAF,
        ],
    );
    let log = publish_fails(&relay, None, &[aom.to_str().unwrap()]).await;
    assert!(log.contains("av1C box is empty"), "{log}");

    // A fragmented stream cut inside its first media data: refused before publishing.
    let source = dir.path("source.mp4");
    encode(1, 30, "libx264", "aac", &source);
    let bytes = std::fs::read(&source).unwrap();
    let log = publish_fails(&relay, Some(bytes[..bytes.len() / 2].to_vec()), &["-"]).await;
    assert!(log.contains("truncated stream"), "{log}");

    // A token without the publish grant, and an expired one.
    let file = source.to_str().unwrap();
    let subscriber = relay.token("bad", "cam", SUB);
    let log = publish_fails_with(&relay, &subscriber, None, &[file]).await;
    assert!(log.contains("refused to publish room/bad/cam"), "{log}");
    let expired = relay.token_for(Claims {
        exp: now_secs() - 3600,
        iat: now_secs() - 7200,
        ..Claims::new(
            "cam",
            "bad",
            PUB.iter().copied().collect(),
            Duration::from_secs(60),
        )
    });
    let log = publish_fails_with(&relay, &expired, None, &[file]).await;
    assert!(log.contains("token_expired"), "{log}");
    // Over WebTransport the CONNECT is refused (403): as final as a close.
    let wt = Some(format!("https://{}/", relay.server.webtransport_addr));
    let log = publish_fails_at(&relay, wt, &expired, None, &[file]).await;
    assert!(log.contains("HTTP 403"), "{log}");
    assert!(relay.server.relay.publishers("bad").is_empty());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_is_down_at_start_is_a_clear_error_for_both_commands() {
    let relay = Relay::start().await;
    let dir = Scratch::new();
    let source = dir.path("source.mp4");
    encode(1, 30, "libx264", "aac", &source);
    let args = relay_args(&relay, "down", "cam", PUB);
    relay.stop().await;
    for cmd in [
        vec!["publish".to_string(), source.to_str().unwrap().into()],
        vec![
            "subscribe".to_string(),
            "--participant".into(),
            "x".into(),
            "-o".into(),
            dir.path("o.mp4").to_str().unwrap().into(),
        ],
    ] {
        let mut a = vec![cmd[0].clone()];
        a.extend(args.clone());
        a.extend(cmd[1..].iter().cloned());
        let started = std::time::Instant::now();
        let out = roomcast(&a, Stdio::null())
            .finish(Duration::from_secs(20))
            .await;
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{log}");
        assert!(log.contains("no answer from the relay"), "{log}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }
}

/// The relay restarts (same address, same data) while a file is published in a loop: the
/// publisher and the subscriber reconnect by themselves, and the recording holds only whole
/// groups of the source: every frame decodes and is one of the source's frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_ride_through_a_relay_restart() {
    let _heavy = HEAVY.lock().await;
    let relay = Relay::start().await;
    let dir = Scratch::new();
    let (source, recording) = (dir.path("source.mp4"), dir.path("recording.mp4"));
    encode(2, 30, "libx264", "aac", &source);

    let mut sub = vec!["subscribe".to_string()];
    sub.extend(relay_args(&relay, "restart", "rec", SUB));
    sub.extend(["--participant", "cam", "-o", recording.to_str().unwrap()].map(String::from));
    let subscriber = roomcast(&sub, Stdio::null());
    let mut publish = vec!["publish".to_string()];
    publish.extend(relay_args(&relay, "restart", "cam", PUB));
    publish.extend(["--loop", "--duration", "9s", source.to_str().unwrap()].map(String::from));
    let publisher = roomcast(&publish, Stdio::null());
    published(&relay, "restart", "cam").await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    let relay = relay.restart_in_place().await;
    let out = publisher.finish(Duration::from_secs(30)).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "publish failed: {log}");
    assert!(
        log.contains("connection lost") && log.contains("1 reconnects"),
        "{log}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    subscriber.interrupt();
    let out = subscriber.finish(Duration::from_secs(10)).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && log.contains("1 reconnects"),
        "subscribe: {log}"
    );

    assert_eq!(decode_errors(&recording), "");
    let (a, b) = (framemd5(&source), framemd5(&recording));
    // Frames from before the restart (3 s) and after it: more than 5 s of them.
    assert!(b.len() >= 150, "only {} frames recorded", b.len());
    assert!(
        b.iter().all(|m| a.contains(m)),
        "a recorded frame is not one of the source's"
    );
    relay.stop().await;
}

/// A player that goes away (ffplay closed: stdout's pipe breaks) ends `subscribe` cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_ends_cleanly_when_its_reader_goes_away() {
    let relay = Relay::start().await;
    let dir = Scratch::new();
    let source = dir.path("source.mp4");
    encode(2, 30, "libx264", "aac", &source);
    let mut publish = vec!["publish".to_string()];
    publish.extend(relay_args(&relay, "pipe", "cam", PUB));
    publish.extend(["--loop", "--duration", "10s", source.to_str().unwrap()].map(String::from));
    let _publisher = roomcast(&publish, Stdio::null());
    published(&relay, "pipe", "cam").await;
    let mut sub = vec!["subscribe".to_string()];
    sub.extend(relay_args(&relay, "pipe", "rec", SUB));
    sub.extend(["--participant", "cam"].map(String::from));
    let mut subscriber = roomcast(&sub, Stdio::null());
    let mut stdout = subscriber.stdout().unwrap();
    // Read the init segment and a little more, then close the pipe as a player would.
    let head = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut buf = vec![0u8; 4096];
        stdout.read_exact(&mut buf).map(|_| buf)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&head[4..8], b"ftyp");
    let out = subscriber.finish(Duration::from_secs(15)).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "subscribe failed: {log}");
    assert!(log.contains("subscribe output closed:"), "{log}");
    relay.stop().await;
}

/// The participant changes codec and size (another encoder takes over the name): the
/// recording goes on in a second file with its own init segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_codec_or_size_starts_a_new_file() {
    let relay = Relay::start().await;
    let dir = Scratch::new();
    let (first, second) = (dir.path("a.mp4"), dir.path("b.mp4"));
    encode(2, 30, "libx264", "aac", &first);
    let vp9 = [
        "-c:v",
        "libvpx-vp9",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-g",
        "30",
    ];
    video_only(
        2,
        &second,
        &[&vp9[..], &["-f", "mp4", "-movflags", CMAF]].concat(),
    );
    let recording = dir.path("rec.mp4");
    let mut sub = vec!["subscribe".to_string()];
    sub.extend(relay_args(&relay, "change", "rec", SUB));
    sub.extend(["--participant", "cam", "-o", recording.to_str().unwrap()].map(String::from));
    let subscriber = roomcast(&sub, Stdio::null());
    for file in [&first, &second] {
        let mut publish = vec!["publish".to_string()];
        publish.extend(relay_args(&relay, "change", "cam", PUB));
        publish.push(file.to_str().unwrap().into());
        let out = roomcast(&publish, Stdio::null())
            .finish(Duration::from_secs(20))
            .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    subscriber.interrupt();
    let out = subscriber.finish(Duration::from_secs(10)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (probe(&recording), probe(&dir.path("rec-1.mp4")));
    assert_eq!(
        (a[0].codec.as_str(), a[0].width),
        ("h264", Some(320)),
        "{a:?}"
    );
    assert_eq!(
        (b[0].codec.as_str(), b[0].width),
        ("vp9", Some(160)),
        "{b:?}"
    );
    assert_eq!(b.len(), 1, "the second encoder sends no audio: {b:?}");
    assert!(a[0].frames >= 30 && b[0].frames >= 30, "{a:?} {b:?}");
    relay.stop().await;
}
