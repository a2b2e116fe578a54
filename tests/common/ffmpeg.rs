//! Debian's real ffmpeg and ffprobe around `roomcast publish` and `roomcast subscribe`: test
//! sources encoded to fragmented MP4, decoded-frame checksums, stream facts as ffprobe reads
//! them, and the two commands as child processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::Relay;
use roomcast::auth::Grant;

pub const BIN: &str = env!("CARGO_BIN_EXE_roomcast");
/// What `roomcast publish` documents for ffmpeg.
pub const CMAF: &str = "cmaf+frag_keyframe+empty_moov+default_base_moof";

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("roomcast-ffmpeg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// ffmpeg arguments for `secs` of `testsrc2` (320x240, 30 fps, a keyframe every `gop` frames)
/// and a `sine`, encoded with `video`/`audio` (ffmpeg encoder names) as CMAF to `out`.
pub fn source_args(secs: u32, gop: u32, video: &str, audio: &str, out: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        &secs.to_string(),
        "-c:v",
        video,
        "-g",
        &gop.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if video == "libvpx-vp9" {
        a.extend(["-deadline", "realtime", "-cpu-used", "8"].map(String::from));
    }
    if video == "libx264" {
        a.extend(["-preset", "veryfast"].map(String::from));
    }
    if video == "libx265" {
        a.extend(
            [
                "-preset",
                "ultrafast",
                "-x265-params",
                "log-level=error",
                "-tag:v",
                "hvc1",
            ]
            .map(String::from),
        );
    }
    if video == "libsvtav1" {
        // libaom-av1 and librav1e leave av1C empty with empty_moov; SVT-AV1 fills it.
        a.extend(["-preset", "12"].map(String::from));
    }
    a.extend(["-c:a", audio, "-f", "mp4", "-movflags", CMAF, out].map(String::from));
    a
}

/// Encodes a test source to the file `out` (see [`source_args`]).
pub fn encode(secs: u32, gop: u32, video: &str, audio: &str, out: &Path) {
    let s = Command::new("ffmpeg")
        .args(source_args(secs, gop, video, audio, out.to_str().unwrap()))
        .status()
        .expect("ffmpeg runs");
    assert!(s.success(), "ffmpeg failed to encode {video}/{audio}");
}

/// `secs` seconds of a small `testsrc2`, video only, encoded with `args` to `out`.
pub fn video_only(secs: u32, out: &Path, args: &[&str]) {
    let s = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=30",
        ])
        .args(["-t", &secs.to_string()])
        .args(args)
        .arg(out)
        .status()
        .unwrap();
    assert!(s.success(), "ffmpeg failed: {args:?}");
}

/// The MD5 of every decoded video frame of `file`, in presentation order.
pub fn framemd5(file: &Path) -> Vec<String> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-map", "0:v", "-f", "framemd5", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg cannot decode {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit(',').next().map(|m| m.trim().to_owned()))
        .collect()
}

/// ffprobe's CSV lines for `entries` (e.g. `frame=pts_time`) of the video stream of `file`.
fn video_entries(file: &Path, entries: &str) -> Vec<String> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            entries,
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_end_matches(',').to_owned())
        .collect()
}

/// Presentation times (s) of the decoded video frames of `file`, in the order the decoder
/// gives them out.
pub fn frame_times(file: &Path) -> Vec<f64> {
    video_entries(file, "frame=pts_time")
        .iter()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// (decode, presentation) time of every video packet of `file`, in stored order.
pub fn packet_times(file: &Path) -> Vec<(i64, i64)> {
    video_entries(file, "packet=pts,dts")
        .iter()
        .filter_map(|l| {
            let mut f = l.split(',').map(|x| x.trim().parse::<i64>());
            let (pts, dts) = (f.next()?.ok()?, f.next()?.ok()?);
            Some((dts, pts))
        })
        .collect()
}

/// One stream as ffprobe reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    pub codec: String,
    pub width: Option<u64>,
    pub height: Option<u64>,
    pub frames: u64,
}

/// The streams of `file`, frames counted by decoding.
pub fn probe(file: &Path) -> Vec<Stream> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-of",
            "json",
            "-show_streams",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe cannot read {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Stream {
            codec: s["codec_name"].as_str().unwrap_or("").to_owned(),
            width: s["width"].as_u64(),
            height: s["height"].as_u64(),
            frames: s["nb_read_frames"]
                .as_str()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        })
        .collect()
}

/// Errors ffmpeg reports while decoding all of `file` (empty when it decodes cleanly).
pub fn decode_errors(file: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Arguments naming the relay (raw QUIC) and a token for `who` in `room` with `grants`.
pub fn relay_args(relay: &Relay, room: &str, who: &str, grants: &[Grant]) -> Vec<String> {
    vec![
        "--url".into(),
        format!("moqt://{}/", relay.server.quic_addr),
        "--cert-sha256".into(),
        relay.server.cert_sha256.clone(),
        "--token".into(),
        relay.token(room, who, grants),
    ]
}

/// A child process, killed if the test ends before it does.
pub struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `roomcast <args>` with stdin from `input`, stdout and stderr captured.
pub fn roomcast(args: &[String], input: Stdio) -> Proc {
    Proc(Some(
        Command::new(BIN)
            .args(args)
            .stdin(input)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("roomcast runs"),
    ))
}

impl Proc {
    pub fn stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.0.as_mut()?.stdin.take()
    }

    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.0.as_mut()?.stdout.take()
    }

    /// Asks the process to stop as Ctrl-C would (SIGINT).
    pub fn interrupt(&self) {
        if let Some(c) = &self.0 {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
        }
    }

    /// Waits (off the runtime's threads) for the process to exit, reading its output; kills it
    /// after `limit`.
    pub async fn finish(mut self, limit: Duration) -> Output {
        let child = self.0.take().expect("not finished yet");
        let id = child.id();
        let killer = tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            let _ = Command::new("kill").arg(id.to_string()).status();
        });
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        killer.abort();
        out
    }
}

/// Every frame of `out` is one of `source`'s, in the same order (frames may be missing: a
/// relay under load drops whole groups, never reorders or alters them).
pub fn in_order_subset(source: &[String], out: &[String]) -> bool {
    let mut rest = source.iter();
    !out.is_empty() && out.iter().all(|m| rest.any(|s| s == m))
}

/// Serializes the tests that encode and decode video, so a handful of ffmpeg processes do not
/// starve the relay on a two-core machine.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
