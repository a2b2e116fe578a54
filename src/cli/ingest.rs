//! `roomcast publish` of fragmented MP4: an encoder's output (a pipe) or a file, published as
//! the participant's `catalog`, `video` and `audio` tracks (docs/protocol.md): one group per
//! keyframe interval, audio in groups of about a second, capture timestamps from the media
//! timeline. Frames go out at the pace of their timestamps (a file in real time, a live pipe
//! smoothed over the bursts its fragments arrive in). A dropped session is reconnected with
//! backoff and the stream resumes at the next keyframe; a refused token ends the command.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use moq_transport::data::ExtensionHeaders;
use moq_transport::serve::{Subgroup, SubgroupWriter, SubgroupsWriter};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use super::progress::Progress;
use super::room_args::{self, refused, sleep_until};
use crate::client::{self, Client, Target};
use crate::media::catalog::{Catalog, Track};
use crate::media::codec::Kind;
use crate::media::demux::{Reader, Sample};

/// Capture timestamp extension type (docs/protocol.md).
const CAPTURE_TIMESTAMP: u64 = 0x06;
/// Largest fragment (`mdat`) read from the input.
const MAX_FRAGMENT: u64 = 64 << 20;
/// Audio packets are grouped by about this much media time.
const AUDIO_GROUP_US: i64 = 1_000_000;
/// How far ahead of the pacing clock a frame may be before the clock jumps to it.
const MAX_AHEAD_US: i64 = 5_000_000;
/// How late a live frame may be before the pacing clock moves back to it.
const LATE_US: i64 = 20_000;

pub enum Input {
    Stdin,
    File(PathBuf),
}

pub struct Options {
    pub target: Target,
    pub token: String,
    pub room: String,
    pub name: String,
    pub input: Input,
    pub looping: bool,
    pub duration: Option<Duration>,
    pub quiet: bool,
}

/// A frame of the input with its times in µs on the input's media timeline.
struct Frame {
    kind: Kind,
    dts_us: i64,
    pts_us: i64,
    keyframe: bool,
    data: Bytes,
}

async fn open(input: &Input) -> anyhow::Result<Reader<Box<dyn AsyncRead + Unpin + Send>>> {
    let (r, what): (Box<dyn AsyncRead + Unpin + Send>, String) = match input {
        Input::Stdin => (Box::new(tokio::io::stdin()), "standard input".into()),
        Input::File(p) => (
            Box::new(
                tokio::fs::File::open(p)
                    .await
                    .with_context(|| format!("cannot open {}", p.display()))?,
            ),
            p.display().to_string(),
        ),
    };
    Reader::open(r, MAX_FRAGMENT)
        .await
        .with_context(|| format!("cannot publish {what}"))
}

/// The catalog for the first video and the first audio track of `reader`.
fn catalog_of<R>(reader: &Reader<R>) -> Catalog {
    let mut tracks = vec![];
    for (kind, name) in [(Kind::Video, "video"), (Kind::Audio, "audio")] {
        if let Some(t) = reader.tracks.iter().find(|t| t.format.kind == kind) {
            tracks.push(Track::new(
                name,
                t.format.params.clone(),
                t.format.init.as_deref(),
            ));
        }
    }
    Catalog::new(tracks)
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    // The input is checked whole (init segment, codecs) before anything is published.
    let reader = open(&o.input).await?;
    for (track, why) in &reader.skipped {
        eprintln!("warning: track {track} left out: {why}");
    }
    let catalog = catalog_of(&reader);
    let has_video = catalog.track("video").is_some();
    // So is its first fragment: a stream cut short or malformed there publishes nothing.
    let mut reader = reader;
    let first = reader
        .next()
        .await
        .context("reading the input")?
        .context("the input has no media fragment after its init segment")?;
    let mut progress = Progress::new("publish", o.quiet);
    let mut session = match Session::open(&o, &catalog).await {
        Ok(s) => Some(s),
        Err(Open::Refused(e) | Open::Retry(e)) => {
            return Err(e.context(format!("cannot publish to {}", o.target.url)))
        }
    };

    let (tx, mut frames) = mpsc::channel::<anyhow::Result<Frame>>(256);
    let looping = o.looping && matches!(o.input, Input::File(_));
    let input = match &o.input {
        Input::Stdin => Input::Stdin,
        Input::File(p) => Input::File(p.clone()),
    };
    let live = matches!(o.input, Input::Stdin);
    let mut reading = tokio::spawn(read_frames(reader, Some(first), input, looping, tx));

    let mut stop = room_args::stop_signal();
    let started = tokio::time::Instant::now();
    let deadline = o.duration.map(|d| started + d);
    let mut clock: Option<(i64, i64)> = None; // (media origin µs, wall anchor µs)
    let mut groups = Groups::default();
    let mut need_key = false;
    let mut backoff = Duration::from_millis(250);
    let mut retry_at = tokio::time::Instant::now();
    let result: anyhow::Result<&str> = loop {
        let frame = tokio::select! {
            f = frames.recv() => f,
            _ = sleep_until(deadline) => break Ok("stopped after --duration"),
            _ = room_args::stopped(&mut stop) => break Ok("interrupted"),
        };
        let frame = match frame {
            None if reading.is_finished() => match (&mut reading).await {
                Err(e) if e.is_panic() => break Err(anyhow::anyhow!("reading the input failed")),
                _ => break Ok("input ended"),
            },
            None => break Ok("input ended"),
            Some(Err(e)) => break Err(e),
            Some(Ok(f)) => f,
        };
        // Pace: the frame is due at its media time on the wall clock.
        let (origin, anchor) = *clock.get_or_insert((frame.dts_us, client::now_micros() as i64));
        let mut due = anchor.saturating_add(frame.dts_us.saturating_sub(origin));
        let now = client::now_micros() as i64;
        if due - now > MAX_AHEAD_US {
            // A jump forward in the input's timeline: go on from here instead of waiting.
            tracing::warn!(
                jump_ms = (due - now) / 1000,
                "input timestamps jumped ahead"
            );
            clock = Some((origin, anchor - (due - now)));
            due = now;
        }
        if due > now {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_micros((due - now) as u64)) => {}
                _ = sleep_until(deadline) => break Ok("stopped after --duration"),
                _ = room_args::stopped(&mut stop) => break Ok("interrupted"),
            }
        } else if live && now - due > LATE_US {
            clock = Some((origin, anchor + (now - due)));
        }
        let (origin, anchor) = clock.expect("set above");
        let capture_us = anchor
            .saturating_add(frame.pts_us.saturating_sub(origin))
            .max(0) as u64;

        // A lost session is opened again; the stream resumes at the next keyframe. Frames
        // that come while the relay is away are dropped.
        if session
            .as_ref()
            .is_some_and(|s| s.client.close_reason().is_some())
        {
            let s = session.take().expect("checked");
            let why = s.client.close_reason();
            if let Some(fatal) = why.as_ref().and_then(refused) {
                break Err(anyhow::anyhow!("the relay ended the session: {fatal}"));
            }
            eprintln!(
                "\rconnection lost ({}); reconnecting",
                why.map_or("unknown".into(), |w| w.to_string())
            );
            groups.close_all();
        }
        if session.is_none() {
            if tokio::time::Instant::now() < retry_at {
                continue;
            }
            match Session::open(&o, &catalog).await {
                Ok(s) => {
                    session = Some(s);
                    progress.reconnects += 1;
                    backoff = Duration::from_millis(250);
                    need_key = has_video;
                }
                Err(Open::Refused(e)) => break Err(e),
                Err(Open::Retry(e)) => {
                    tracing::debug!(error = %e, "reconnect failed");
                    retry_at = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        if need_key {
            if frame.kind != Kind::Video || !frame.keyframe {
                continue;
            }
            need_key = false;
        }
        let s = session.as_mut().expect("connected above");
        let size = frame.data.len();
        match groups.write(s, frame, capture_us) {
            Ok(new_group) => progress.frame(size, Some(capture_us), new_group),
            Err(e) => {
                tracing::debug!(error = %e, "write failed; the session is checked next frame");
            }
        }
    };
    reading.abort();
    groups.close_all();
    if let Some(s) = session.take() {
        // Let the last group's streams drain before the connection closes.
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.client.close();
    }
    match result {
        Ok(how) => {
            progress.finish(how);
            Ok(())
        }
        Err(e) => {
            progress.finish("failed");
            Err(e)
        }
    }
}

/// Reads fragments into frames (in decode-time order across tracks), `first` the one already
/// read, looping a file if asked.
async fn read_frames(
    mut reader: Reader<Box<dyn AsyncRead + Unpin + Send>>,
    mut first: Option<Vec<Sample>>,
    input: Input,
    looping: bool,
    tx: mpsc::Sender<anyhow::Result<Frame>>,
) {
    let mut offset_us = 0i64;
    loop {
        let kinds: HashMap<u32, (Kind, u32)> = [Kind::Video, Kind::Audio]
            .into_iter()
            .filter_map(|k| reader.track(k).map(|t| (t.id, (k, t.timescale))))
            .collect();
        let mut end_us = offset_us;
        loop {
            let next = match first.take() {
                Some(f) => Ok(Some(f)),
                None => reader.next().await,
            };
            let samples = match next {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(e) => {
                    let _ = tx
                        .send(Err(anyhow::Error::new(e).context("reading the input")))
                        .await;
                    return;
                }
            };
            let mut batch: Vec<Frame> = samples
                .into_iter()
                .filter_map(|s| {
                    let (kind, scale) = *kinds.get(&s.track)?;
                    let us = |t: i64| {
                        let v = i128::from(t) * 1_000_000 / i128::from(scale.max(1));
                        offset_us.saturating_add(v.clamp(i64::MIN.into(), i64::MAX.into()) as i64)
                    };
                    let dts = i64::try_from(s.dts).unwrap_or(i64::MAX);
                    end_us = end_us.max(us(dts.saturating_add(s.duration.into())));
                    Some(Frame {
                        kind,
                        dts_us: us(dts),
                        pts_us: us(s.pts),
                        keyframe: s.keyframe,
                        data: s.data,
                    })
                })
                .collect();
            batch.sort_by_key(|f| f.dts_us);
            for f in batch {
                if tx.send(Ok(f)).await.is_err() {
                    return;
                }
            }
        }
        if !looping {
            return;
        }
        offset_us = end_us;
        reader = match open(&input).await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
    }
}

/// A connected session with the participant's tracks.
struct Session {
    client: Client,
    writers: HashMap<Kind, SubgroupsWriter>,
    /// Keeps the catalog track open.
    _catalog: SubgroupsWriter,
    _announce: client::SessionTask,
}

impl Session {
    /// Connects and publishes the catalog.
    async fn open(o: &Options, catalog: &Catalog) -> Result<Session, Open> {
        let client = room_args::connect(&o.target, &o.token).await.map_err(|e| {
            match room_args::fatal(&e) {
                Some(why) => Open::Refused(anyhow::anyhow!("the relay refused the session: {why}")),
                None => Open::Retry(e),
            }
        })?;
        Self::start(client, o, catalog).await.map_err(Open::Retry)?
    }

    async fn start(
        client: Client,
        o: &Options,
        catalog: &Catalog,
    ) -> anyhow::Result<Result<Session, Open>> {
        let ns = client::namespace(&["room", &o.room, &o.name])?;
        let names: Vec<&str> = std::iter::once("catalog")
            .chain(catalog.tracks.iter().map(|t| t.name.as_str()))
            .collect();
        let (mut writers, announce) = client::publish(&client, ns, &names)?;
        let mut cat = writers.remove(0);
        let group = client::now_micros(); // a new, larger catalog group each session
        let mut g = cat.create(Subgroup {
            group_id: group,
            subgroup_id: 0,
            priority: 0,
        })?;
        write_object(
            &mut g,
            Bytes::from(serde_json::to_vec(catalog)?),
            client::now_micros(),
        )?;
        drop(g);
        // A refused token or namespace shows within moments: the relay closes the session.
        tokio::select! {
            e = client.session_closed() => {
                return Ok(Err(match refused(&e) {
                    Some(why) => Open::Refused(anyhow::anyhow!("the relay refused the session: {why}")),
                    None => Open::Retry(anyhow::anyhow!("the relay closed the session: {e}")),
                }));
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if announce.is_finished() {
            let r = announce.await;
            let why = match r {
                Ok(Err(e)) => e.to_string(),
                other => format!("{other:?}"),
            };
            return Ok(Err(Open::Refused(anyhow::anyhow!(
                "the relay refused to publish room/{}/{} ({why}): the token needs the publish grant for that room, and the name must be the token's identity",
                o.room,
                o.name
            ))));
        }
        let kinds = catalog.tracks.iter().map(|t| {
            if t.name == "video" {
                Kind::Video
            } else {
                Kind::Audio
            }
        });
        Ok(Ok(Session {
            client,
            writers: kinds.zip(writers).collect(),
            _catalog: cat,
            _announce: announce,
        }))
    }
}

/// Why a session could not be opened.
enum Open {
    /// Retrying cannot help (a refused token, a ban).
    Refused(anyhow::Error),
    /// The relay is away or closed the session: try again later.
    Retry(anyhow::Error),
}

fn write_object(g: &mut SubgroupWriter, payload: Bytes, capture_us: u64) -> anyhow::Result<()> {
    let mut ext = ExtensionHeaders::new();
    ext.set_intvalue(CAPTURE_TIMESTAMP, capture_us);
    g.create(payload.len(), Some(ext))?.write(payload)?;
    Ok(())
}

/// The open group of each track; group ids go on across sessions.
#[derive(Default)]
struct Groups {
    open: HashMap<Kind, (SubgroupWriter, i64)>,
    next: HashMap<Kind, u64>,
}

impl Groups {
    /// Writes `frame` as the next object, starting a group at a video keyframe or after a
    /// second of audio. Returns whether a group started.
    fn write(&mut self, s: &mut Session, frame: Frame, capture_us: u64) -> anyhow::Result<bool> {
        let kind = frame.kind;
        let start = match (kind, self.open.get(&kind)) {
            // A video group starts at a keyframe only: its object 0 is one.
            (Kind::Video, None) if !frame.keyframe => return Ok(false),
            (_, None) => true,
            (Kind::Video, Some(_)) => frame.keyframe,
            (Kind::Audio, Some((_, since))) => {
                frame.dts_us.saturating_sub(*since) >= AUDIO_GROUP_US
            }
        };
        if start {
            self.open.remove(&kind);
            let writer = s.writers.get_mut(&kind).context("track not published")?;
            // Group ids start at the wall clock (ms), so a publisher that starts again is ahead
            // of what a relay may still hold of its previous run.
            let id = self
                .next
                .entry(kind)
                .or_insert_with(|| client::now_micros() / 1000);
            let g = writer.create(Subgroup {
                group_id: *id,
                subgroup_id: 0,
                priority: if kind == Kind::Audio { 1 } else { 2 },
            })?;
            *id += 1;
            self.open.insert(kind, (g, frame.dts_us));
        }
        let (g, _) = self.open.get_mut(&kind).expect("opened above");
        write_object(g, frame.data, capture_us)?;
        Ok(start)
    }

    fn close_all(&mut self) {
        self.open.clear();
    }
}
