//! What `roomcast subscribe` writes: the objects of a participant's `video` and `audio` tracks
//! turned into fragmented MP4 (see [`crate::media::mux`]), one fragment per group per track,
//! written when the next group starts (or at the end), so each fragment's frames and durations
//! are known. Init segments follow the catalog.

use std::path::PathBuf;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::media::catalog::{Catalog, Track};
use crate::media::codec::{self, Kind};
use crate::media::{h264, mux};

/// A group held in memory at most this large; a larger one is dropped.
const MAX_PENDING_BYTES: usize = 64 << 20;
/// Groups of a ready track held while another track waits for its first keyframe.
const MAX_WAITING_GROUPS: usize = 8;

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
    group: Option<u64>,
    pending: Vec<Frame>,
    pending_bytes: usize,
    /// Whole groups waiting for the init segment.
    ready: Vec<Vec<Frame>>,
    /// End of the last written fragment, in the timescale.
    end: Option<i64>,
    /// Duration of a frame when nothing better is known.
    step: i64,
}

pub struct Recorder {
    path: Option<PathBuf>,
    out: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    /// Files written so far (a new one per catalog change).
    part: u32,
    catalog: Option<Catalog>,
    tracks: Vec<TrackOut>,
    initialized: bool,
    sequence: u32,
    /// Capture time (µs) that becomes time 0 of the output (the earliest frame held when the
    /// init segment is written).
    origin: i64,
    error: Option<std::io::Error>,
}

impl Recorder {
    pub async fn new(path: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut r = Recorder {
            path,
            out: None,
            part: 0,
            catalog: None,
            tracks: vec![],
            initialized: false,
            sequence: 1,
            origin: 0,
            error: None,
        };
        r.out = Some(r.open_output().await?);
        Ok(r)
    }

    async fn open_output(&self) -> anyhow::Result<Box<dyn AsyncWrite + Unpin + Send>> {
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
                Box::new(
                    tokio::fs::File::create(&p)
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?,
                )
            }
        })
    }

    /// Whether writing failed because the reader went away (a closed pipe).
    pub fn output_closed(&self) -> bool {
        self.error.is_some()
    }

    pub fn error(&self) -> Option<&std::io::Error> {
        self.error.as_ref()
    }

    /// Whether track `name` is recorded.
    pub fn records(&self, name: &str) -> bool {
        self.tracks.iter().any(|t| t.name == name)
    }

    /// Takes a catalog. Returns whether the tracks changed (the caller subscribes again).
    pub async fn catalog(&mut self, catalog: &Catalog) -> anyhow::Result<bool> {
        let mut wanted: Vec<Track> = vec![];
        for name in ["video", "audio"] {
            if let Some(t) = catalog.track(name) {
                wanted.push(t.clone());
            }
        }
        if self.tracks.iter().map(|t| &t.spec).eq(wanted.iter()) {
            return Ok(false);
        }
        let mut tracks = vec![];
        for (i, spec) in wanted.into_iter().enumerate() {
            let kind = if spec.name == "video" {
                Kind::Video
            } else {
                Kind::Audio
            };
            let annexb = spec.selection_params.codec.starts_with("avc") && spec.init_data.is_none();
            let entry = if annexb {
                None
            } else {
                match codec::to_sample_entry(&spec, None) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        eprintln!("\rwarning: track {} not recorded: {e}", spec.name);
                        continue;
                    }
                }
            };
            let timescale = match kind {
                Kind::Video => 90_000,
                Kind::Audio => spec.selection_params.samplerate.unwrap_or(48_000).max(1),
            };
            let step = match kind {
                Kind::Video => {
                    90_000
                        / spec
                            .selection_params
                            .framerate
                            .map_or(30, |f| f.round().max(1.0) as i64)
                }
                Kind::Audio => i64::from(timescale) / 50,
            };
            tracks.push(TrackOut {
                name: spec.name.clone(),
                id: i as u32 + 1,
                kind,
                timescale,
                spec,
                entry,
                annexb,
                group: None,
                pending: vec![],
                pending_bytes: 0,
                ready: vec![],
                end: None,
                step,
            });
        }
        // What was recorded under the old catalog is written out first.
        self.flush().await?;
        if self.initialized {
            self.initialized = false;
            if self.path.is_some() {
                self.part += 1;
                let out = self.open_output().await?;
                if let Some(mut old) = self.out.replace(out) {
                    let _ = old.shutdown().await;
                }
            }
        }
        self.tracks = tracks;
        self.catalog = Some(catalog.clone());
        Ok(true)
    }

    /// Takes an object of track `name`. Returns whether it will be written.
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
        let Some(us) = capture_us else {
            return Ok(false);
        };
        let data = if t.annexb {
            let (sample, sets) = h264::to_length_prefixed(&payload);
            if let (None, Some((sps, pps))) = (&t.entry, sets) {
                let avcc = mp4_atom::Avcc::new(&sps, &pps)?;
                let mut init = Vec::new();
                mp4_atom::Encode::encode(&avcc, &mut init)?;
                t.entry = Some(codec::to_sample_entry(&t.spec, Some(init.split_off(8)))?);
            }
            if t.entry.is_none() {
                return Ok(false); // no parameter sets yet
            }
            sample
        } else {
            payload
        };
        t.pending_bytes += data.len();
        if t.pending_bytes > MAX_PENDING_BYTES {
            tracing::warn!(
                track = name,
                "group larger than {MAX_PENDING_BYTES} bytes dropped"
            );
            t.pending.clear();
            t.pending_bytes = 0;
            t.group = None;
            return Ok(false);
        }
        t.pending.push(Frame {
            us: us as i64,
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
                .map(|t| mux::Track {
                    id: t.id,
                    kind: t.kind,
                    timescale: t.timescale,
                    entry: t.entry.clone().expect("checked above"),
                })
                .collect();
            self.origin = self
                .tracks
                .iter()
                .flat_map(|t| t.ready.iter().flatten().chain(&t.pending))
                .map(|f| f.us)
                .min()
                .unwrap_or(0);
            let init = mux::init_segment(&tracks)?;
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
                let bytes = self.fragment(i, g, next)?;
                self.write(&bytes).await?;
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
        let at = |us: i64| (i128::from(us - origin) * scale / 1_000_000) as i64;
        let next = next.map(at);
        let pts: Vec<i64> = frames.iter().map(|f| at(f.us)).collect();
        let dts = mux::decode_times(&pts, Some(t.end.unwrap_or(0)));
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
        self.sequence += 1;
        Ok(bytes)
    }

    async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        if self.error.is_some() {
            anyhow::bail!("output closed");
        }
        let out = self.out.as_mut().expect("open while recording");
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
