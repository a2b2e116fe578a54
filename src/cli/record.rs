//! What `roomcast subscribe` writes: the objects of a participant's `video` and `audio` tracks
//! turned into fragmented MP4 (see [`crate::media::mux`]), one fragment per group per track,
//! written when the next group starts (or at the end), so each fragment's frames and durations
//! are known. Init segments follow the catalog. Input from the relay is not trusted: a frame
//! that cannot be written is dropped, never the recording.

use std::path::PathBuf;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::media::catalog::{Catalog, Track};
use crate::media::codec::{self, Kind};
use crate::media::{h264, mux};

/// A group held in memory at most this large; a larger one is dropped.
const MAX_PENDING_BYTES: usize = 64 << 20;
/// Frames in one group, at most.
const MAX_PENDING_FRAMES: usize = 20_000;
/// Groups of a ready track held while another track waits for its first keyframe.
const MAX_WAITING_GROUPS: usize = 8;
/// A frame whose capture time is this far from its track's previous one is dropped (a
/// publisher's clock jump or a hostile timestamp would otherwise stretch the file).
const MAX_JUMP_US: i64 = 60_000_000;
/// Output files at most (a new one per catalog change).
const MAX_PARTS: u32 = 100;

struct Frame {
    /// Capture time, µs since the epoch.
    us: i64,
    keyframe: bool,
    data: Bytes,
}

struct TrackOut {
    name: String,
    id: u32,
    kind: Kind,
    timescale: u32,
    spec: Track,
    /// The sample entry, once known (H.264 in Annex B form needs its first keyframe).
    entry: Option<mp4_atom::Codec>,
    annexb: bool,
    /// The group being collected.
    group: Option<u64>,
    /// The last object taken, kept across subscriptions (a resubscription repeats the
    /// current group from its start).
    last: Option<(u64, u64)>,
    /// Capture time of the last frame taken.
    last_us: Option<i64>,
    pending: Vec<Frame>,
    pending_bytes: usize,
    /// Whole groups waiting for the init segment.
    ready: Vec<Vec<Frame>>,
    /// End of the last written fragment, in the timescale.
    end: Option<i64>,
    /// Reorder delay (decode before presentation), in the timescale.
    delay: i64,
    /// Duration of a frame when nothing better is known.
    step: i64,
}

pub struct Recorder {
    path: Option<PathBuf>,
    /// Opened at the first write, so a failed start leaves an existing file alone.
    out: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    /// Files written so far (a new one per catalog change).
    part: u32,
    /// The catalog's tracks this recorder was set up for (recorded or not).
    wanted: Vec<Track>,
    tracks: Vec<TrackOut>,
    initialized: bool,
    sequence: u32,
    /// Capture time (µs) that becomes time 0 of the output (the earliest frame held when the
    /// init segment is written).
    origin: i64,
    error: Option<std::io::Error>,
}

impl Recorder {
    pub fn new(path: Option<PathBuf>) -> Self {
        Recorder {
            path,
            out: None,
            part: 0,
            wanted: vec![],
            tracks: vec![],
            initialized: false,
            sequence: 1,
            origin: 0,
            error: None,
        }
    }

    async fn open_output(&self) -> std::io::Result<Box<dyn AsyncWrite + Unpin + Send>> {
        Ok(match &self.path {
            None => Box::new(tokio::io::stdout()),
            Some(p) => {
                let p = match self.part {
                    0 => p.clone(),
                    n => {
                        let stem = p.file_stem().unwrap_or_default().to_string_lossy();
                        let ext = p
                            .extension()
                            .map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
                        p.with_file_name(format!("{stem}-{n}{ext}"))
                    }
                };
                let f = tokio::fs::File::create(&p).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot write {}: {e}", p.display()))
                })?;
                Box::new(f)
            }
        })
    }

    /// Whether the output cannot be written any more (a closed pipe, a full disk).
    pub fn output_closed(&self) -> bool {
        self.error.is_some()
    }

    /// Why writing failed, unless the reader of stdout just went away (ffplay closed).
    pub fn error(&self) -> Option<&std::io::Error> {
        self.error
            .as_ref()
            .filter(|e| !(self.path.is_none() && e.kind() == std::io::ErrorKind::BrokenPipe))
    }

    /// Whether track `name` is recorded.
    pub fn records(&self, name: &str) -> bool {
        self.tracks.iter().any(|t| t.name == name)
    }

    /// Takes a catalog. Returns whether the tracks changed (the caller subscribes again).
    pub async fn catalog(&mut self, catalog: &Catalog) -> anyhow::Result<bool> {
        let wanted: Vec<Track> = ["video", "audio"]
            .iter()
            .filter_map(|n| catalog.track(n).cloned())
            .collect();
        if wanted == self.wanted {
            return Ok(false);
        }
        let mut tracks = vec![];
        for spec in &wanted {
            let kind = if spec.name == "video" {
                Kind::Video
            } else {
                Kind::Audio
            };
            let annexb = spec.selection_params.codec.starts_with("avc") && spec.init_data.is_none();
            let entry = if annexb {
                None
            } else {
                match codec::to_sample_entry(spec, None) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        eprintln!("\rwarning: track {} not recorded: {e}", spec.name);
                        continue;
                    }
                }
            };
            let timescale = match kind {
                Kind::Video => 90_000,
                Kind::Audio => spec
                    .selection_params
                    .samplerate
                    .unwrap_or(48_000)
                    .clamp(8_000, 384_000),
            };
            let fps = spec
                .selection_params
                .framerate
                .unwrap_or(30.0)
                .clamp(1.0, 240.0);
            let step = match kind {
                Kind::Video => (90_000.0 / fps) as i64,
                Kind::Audio => i64::from(timescale) / 50,
            };
            tracks.push(TrackOut {
                name: spec.name.clone(),
                // Fixed ids: a track that goes away never hands its id to the other kind.
                id: if kind == Kind::Video { 1 } else { 2 },
                kind,
                timescale,
                spec: spec.clone(),
                entry,
                annexb,
                group: None,
                last: None,
                last_us: None,
                pending: vec![],
                pending_bytes: 0,
                ready: vec![],
                end: None,
                delay: 0,
                step,
            });
        }
        // What was recorded under the old catalog is written out first.
        self.flush().await?;
        if self.initialized {
            self.initialized = false;
            if self.path.is_some() {
                if self.part + 1 >= MAX_PARTS {
                    // The end of the recording, not a reason to subscribe again.
                    let why = format!("the catalog changed {MAX_PARTS} times: stopping");
                    self.error = Some(std::io::Error::other(why.clone()));
                    anyhow::bail!(why);
                }
                self.part += 1;
                if let Some(mut old) = self.out.take() {
                    let _ = old.shutdown().await;
                }
            }
        }
        self.tracks = tracks;
        self.wanted = wanted;
        Ok(true)
    }

    /// Takes an object of track `name`. Returns whether it will be written. Errors only when
    /// the output cannot be written; a frame that cannot be used is dropped.
    pub async fn object(
        &mut self,
        name: &str,
        group: u64,
        object: u64,
        capture_us: Option<u64>,
        payload: Bytes,
    ) -> anyhow::Result<bool> {
        let Some(i) = self.tracks.iter().position(|t| t.name == name) else {
            return Ok(false);
        };
        let t = &mut self.tracks[i];
        // Seen already (a resubscription starts the group again), or older than what is.
        if t.last.is_some_and(|(g, o)| group == g && object <= o) {
            return Ok(false);
        }
        match t.group {
            Some(g) if group < g => return Ok(false), // an older group's tail: late
            Some(g) if group == g => {}
            _ => {
                // A new group: video only from its keyframe (object 0).
                if t.kind == Kind::Video && object != 0 {
                    return Ok(false);
                }
                let done = std::mem::take(&mut t.pending);
                t.pending_bytes = 0;
                t.group = Some(group);
                if !done.is_empty() {
                    t.ready.push(done);
                }
            }
        }
        t.last = Some((group, object));
        let Some(us) = capture_us.and_then(|u| i64::try_from(u).ok()) else {
            return Ok(false);
        };
        if t.last_us.is_some_and(|l| (us - l).abs() > MAX_JUMP_US) {
            tracing::warn!(
                track = name,
                "frame {} s away from the previous one dropped",
                (us - t.last_us.unwrap_or(us)) / 1_000_000
            );
            return Ok(false);
        }
        t.last_us = Some(us);
        let data = if t.annexb {
            let (sample, sets) = h264::to_length_prefixed(&payload);
            if let (None, Some((sps, pps))) = (&t.entry, sets) {
                match avc_entry(&t.spec, &sps, &pps) {
                    Ok(e) => t.entry = Some(e),
                    Err(e) => tracing::warn!(track = name, error = %e, "unusable parameter sets"),
                }
            }
            if t.entry.is_none() {
                return Ok(false); // no parameter sets yet
            }
            sample
        } else {
            payload
        };
        t.pending_bytes += data.len();
        if t.pending_bytes > MAX_PENDING_BYTES || t.pending.len() >= MAX_PENDING_FRAMES {
            tracing::warn!(
                track = name,
                "a group over {MAX_PENDING_BYTES} bytes or {MAX_PENDING_FRAMES} frames dropped"
            );
            t.pending.clear();
            t.pending_bytes = 0;
            t.group = None;
            return Ok(false);
        }
        t.pending.push(Frame {
            us,
            keyframe: t.kind == Kind::Audio || object == 0,
            data,
        });
        self.write_ready().await?;
        Ok(true)
    }

    /// Writes the init segment once every track knows its sample entry, then whole groups.
    async fn write_ready(&mut self) -> anyhow::Result<()> {
        if !self.initialized {
            if self.tracks.is_empty() || self.tracks.iter().any(|t| t.entry.is_none()) {
                for t in &mut self.tracks {
                    let excess = t.ready.len().saturating_sub(MAX_WAITING_GROUPS);
                    t.ready.drain(..excess);
                }
                return Ok(());
            }
            let tracks: Vec<mux::Track> = self
                .tracks
                .iter()
                .filter_map(|t| {
                    Some(mux::Track {
                        id: t.id,
                        kind: t.kind,
                        timescale: t.timescale,
                        entry: t.entry.clone()?,
                    })
                })
                .collect();
            self.origin = self
                .tracks
                .iter()
                .flat_map(|t| t.ready.iter().flatten().chain(&t.pending))
                .map(|f| f.us)
                .min()
                .unwrap_or(0);
            let init = match mux::init_segment(&tracks) {
                Ok(i) => i,
                Err(e) => {
                    // A catalog whose configuration cannot be written: nothing of it is.
                    tracing::warn!(error = %e, "cannot write an init segment for this catalog");
                    self.tracks.clear();
                    return Ok(());
                }
            };
            self.write(&init).await?;
            self.initialized = true;
        }
        for i in 0..self.tracks.len() {
            let groups = std::mem::take(&mut self.tracks[i].ready);
            let count = groups.len();
            for (n, g) in groups.into_iter().enumerate() {
                // The next group's first frame bounds this one's last duration.
                let next = if n + 1 < count {
                    None
                } else {
                    self.tracks[i].pending.first().map(|f| f.us)
                };
                match self.fragment(i, g, next) {
                    Ok(bytes) => self.write(&bytes).await?,
                    Err(e) => tracing::warn!(error = %e, "a group could not be written"),
                }
            }
        }
        Ok(())
    }

    /// One fragment of track `i` from `frames`; `next` is the following frame's capture time.
    fn fragment(
        &mut self,
        i: usize,
        frames: Vec<Frame>,
        next: Option<i64>,
    ) -> anyhow::Result<Vec<u8>> {
        let origin = self.origin;
        let t = &mut self.tracks[i];
        let scale = i128::from(t.timescale);
        let at = |us: i64| {
            let v = i128::from(us.saturating_sub(origin)) * scale / 1_000_000;
            v.clamp(0, i128::from(i64::MAX / 4)) as i64
        };
        let pts: Vec<i64> = frames.iter().map(|f| at(f.us)).collect();
        let dts = mux::decode_times(&pts, &mut t.delay, Some(t.end.unwrap_or(0)));
        // The next group's first frame is decoded at its presentation less the delay.
        let next = next.map(|n| at(n) - t.delay);
        let mut samples = Vec::with_capacity(frames.len());
        for (k, f) in frames.into_iter().enumerate() {
            let duration = match dts.get(k + 1) {
                Some(d) => d - dts[k],
                None => next
                    .map_or(t.step, |n| n - dts[k])
                    .clamp(1, 10 * t.step.max(1)),
            };
            samples.push(mux::Sample {
                dts: dts[k].max(0) as u64,
                duration: duration.clamp(1, u32::MAX.into()) as u32,
                cts: (pts[k] - dts[k]).clamp(i32::MIN.into(), i32::MAX.into()) as i32,
                keyframe: f.keyframe,
                data: f.data,
            });
        }
        if let Some(last) = samples.last() {
            t.end = Some(last.dts as i64 + i64::from(last.duration));
        }
        let id = t.id;
        let bytes = mux::fragment(self.sequence, id, &samples)?;
        self.sequence = self.sequence.wrapping_add(1);
        Ok(bytes)
    }

    async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        if self.error.is_some() {
            anyhow::bail!("output closed");
        }
        if self.out.is_none() {
            match self.open_output().await {
                Ok(o) => self.out = Some(o),
                Err(e) => {
                    self.error = Some(e);
                    anyhow::bail!("output closed");
                }
            }
        }
        let out = self.out.as_mut().expect("opened above");
        if let Err(e) = out.write_all(bytes).await.and(out.flush().await) {
            self.error = Some(e);
            anyhow::bail!("output closed");
        }
        Ok(())
    }

    /// Writes every group held, the open ones too.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        for t in &mut self.tracks {
            let done = std::mem::take(&mut t.pending);
            t.pending_bytes = 0;
            t.group = None;
            if !done.is_empty() {
                t.ready.push(done);
            }
        }
        self.write_ready().await
    }

    /// Writes what is held and closes the output.
    pub async fn finish(&mut self) {
        let _ = self.flush().await;
        if let Some(mut out) = self.out.take() {
            let _ = out.shutdown().await;
        }
    }
}

/// The sample entry of an H.264 track from its SPS and PPS.
fn avc_entry(spec: &Track, sps: &[u8], pps: &[u8]) -> anyhow::Result<mp4_atom::Codec> {
    let avcc = mp4_atom::Avcc::new(sps, pps)?;
    let mut init = Vec::new();
    mp4_atom::Encode::encode(&avcc, &mut init)?;
    Ok(codec::to_sample_entry(spec, Some(init.split_off(8)))?)
}
