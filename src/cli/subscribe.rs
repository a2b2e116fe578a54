//! `roomcast subscribe`: a participant's tracks written out as fragmented MP4 (to stdout or a
//! file) that ffmpeg, ffprobe, ffplay and browsers read, starting at the newest keyframe. The
//! catalog is followed: a new codec or picture size starts a new init segment (on stdout) or a
//! new file (`NAME-1.mp4`, ...). A lost session is reconnected with backoff.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use moq_transport::coding::{TrackNamespacePrefix, Value};
use moq_transport::session::NamespaceEvent;
use tokio::sync::mpsc;

use super::progress::Progress;
use super::record::Recorder;
use super::room_args::{self, sleep_until, RoomArgs};
use crate::client::{self, Client, Received, Target};
use crate::media::catalog::Catalog;
use moq_transport::serve::{TrackReader, TrackReaderMode};

/// Largest object and group taken from the relay.
const MAX_OBJECT_BYTES: usize = 16 << 20;
const MAX_GROUP_BYTES: usize = 64 << 20;
/// Objects queued between the subscriptions and the writer; when the output is slow the
/// subscriptions stop reading and the relay skips groups for this subscriber.
const QUEUE: usize = 1024;
/// A catalog object larger than this is ignored.
const MAX_CATALOG_BYTES: usize = 64 << 10;

#[derive(Args, Debug)]
pub struct SubscribeArgs {
    #[command(flatten)]
    pub relay: RoomArgs,
    /// Participant to record (default: the first one publishing in the room).
    #[arg(long)]
    pub participant: Option<String>,
    /// Output file, or `-` for standard output.
    #[arg(short, long, default_value = "-")]
    pub output: String,
    /// Stop after this long (default: until interrupted).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// No progress line on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

pub async fn run(args: SubscribeArgs) -> anyhow::Result<()> {
    let room = args.relay.room()?;
    let target = args.relay.target();
    let token = args.relay.token.clone();
    let output = (args.output != "-").then(|| PathBuf::from(&args.output));
    let mut recorder = Recorder::new(output);
    // What the session library may buffer of one stream from the relay.
    moq_transport::session::receive_limits::set(MAX_OBJECT_BYTES, MAX_GROUP_BYTES);
    let mut stop = room_args::stop_signal();
    let mut progress = Progress::new("subscribe", args.quiet);
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut client = connect(&target, &token)
        .await
        .with_context(|| format!("cannot subscribe at {}", target.url))?;
    let participant = match &args.participant {
        Some(p) => p.clone(),
        None => tokio::select! {
            p = discover(&client, &room) => p?,
            _ = sleep_until(deadline) => anyhow::bail!("nobody published in room {room} before --duration passed"),
        },
    };
    let ns = client::namespace(&["room", &room, &participant])?;
    let mut backoff = Duration::from_millis(250);
    let how = loop {
        // `follow` watches the deadline and the signals itself, between objects, so a
        // fragment is never cut off in the middle of being written.
        match follow(
            &client,
            &ns,
            &mut recorder,
            &mut progress,
            deadline,
            &mut stop,
        )
        .await
        {
            Ok(Stop::Deadline) => break "stopped after --duration",
            Ok(Stop::Signal) => break "interrupted",
            Err(e) => {
                if recorder.output_closed() {
                    break "output closed";
                }
                tracing::debug!(error = %e, "subscription ended");
            }
        }
        // The publisher left or was replaced, or the session dropped: follow again.
        if let Some(why) = client.close_reason() {
            if let Some(fatal) = room_args::refused(&why) {
                recorder.finish().await;
                progress.finish("failed");
                anyhow::bail!("the relay ended the session: {fatal}");
            }
            eprintln!("\rconnection lost ({why}); reconnecting");
            loop {
                let attempt = async {
                    tokio::time::sleep(backoff).await;
                    connect(&target, &token).await
                };
                tokio::select! {
                    r = attempt => match r {
                        Ok(c) => {
                            client = c;
                            progress.reconnects += 1;
                            backoff = Duration::from_millis(250);
                            break;
                        }
                        // A refusal (an expired token, a ban) does not go away by retrying.
                        Err(e) if room_args::fatal(&e).is_some() => {
                            recorder.finish().await;
                            progress.finish("failed");
                            return Err(e);
                        }
                        Err(_) => backoff = (backoff * 2).min(Duration::from_secs(5)),
                    },
                    _ = sleep_until(deadline) => break,
                    _ = room_args::stopped(&mut stop) => break,
                }
            }
        } else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = sleep_until(deadline) => break "stopped after --duration",
                _ = room_args::stopped(&mut stop) => break "interrupted",
            }
        }
    };
    recorder.finish().await;
    progress.finish(how);
    if let Some(e) = recorder.error() {
        anyhow::bail!("writing the output: {e}");
    }
    Ok(())
}

async fn connect(target: &Target, token: &str) -> anyhow::Result<Client> {
    let c = room_args::connect(target, token).await?;
    // A refused token shows within moments: the relay closes the session.
    tokio::select! {
        e = c.session_closed() => match room_args::refused(&e) {
            Some(why) => Err(anyhow::Error::from(e).context(format!("the relay refused the session: {why}"))),
            None => anyhow::bail!("the relay closed the session: {e}"),
        },
        _ = tokio::time::sleep(Duration::from_millis(300)) => Ok(c),
    }
}

/// The first participant that publishes in `room`.
async fn discover(c: &Client, room: &str) -> anyhow::Result<String> {
    let mut subscriber = c.subscriber.clone();
    let d = subscriber
        .subscribe_namespace(
            TrackNamespacePrefix::from_utf8_path(&format!("room/{room}")),
            Default::default(),
        )
        .await?;
    d.ok().await.context("the relay refused to list the room")?;
    loop {
        match d.next().await? {
            Some(NamespaceEvent::Added(ns)) => {
                let path = ns.to_utf8_path();
                let name = path
                    .trim_start_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or("");
                if !name.is_empty() && name != "_server" {
                    return Ok(name.to_owned());
                }
            }
            Some(_) => {}
            None => anyhow::bail!("the room listing ended"),
        }
    }
}

/// Capture timestamp (µs) of an object, if it has one.
fn capture_us(r: &Received) -> Option<u64> {
    match r.extensions.get(0x06).map(|kv| &kv.value) {
        Some(Value::IntValue(v)) => Some(*v),
        _ => None,
    }
}

/// An object of a track subscription, tagged with the subscription's generation.
type Tagged = (u64, String, Received);

/// Reads every object of `reader` into `out` (bounded: a slow writer stops the reading), each
/// group's objects in order, groups as they arrive.
async fn read_bounded(
    reader: TrackReader,
    generation: u64,
    name: String,
    out: mpsc::Sender<Tagged>,
) {
    let Ok(TrackReaderMode::Subgroups(mut subgroups)) = reader.mode().await else {
        return;
    };
    let mut groups = tokio::task::JoinSet::new();
    loop {
        let next = tokio::select! {
            n = subgroups.next() => n,
            Some(_) = groups.join_next(), if !groups.is_empty() => continue,
        };
        let Ok(Some(mut sg)) = next else { break };
        let (out, name) = (out.clone(), name.clone());
        groups.spawn(async move {
            let (group, subgroup) = (sg.group_id, sg.subgroup_id);
            while let Ok(Some(mut obj)) = sg.next().await {
                let (object, extensions) = (obj.object_id, obj.extension_headers.clone());
                let Ok(payload) = obj.read_all().await else {
                    break;
                };
                let r = Received {
                    group,
                    subgroup,
                    object,
                    extensions,
                    payload,
                };
                if out.send((generation, name.clone(), r)).await.is_err() {
                    break;
                }
            }
        });
    }
    while groups.join_next().await.is_some() {}
}

/// Why [`follow`] stopped, when it was asked to.
enum Stop {
    Deadline,
    Signal,
}

/// Subscribes to the catalog, then to the tracks it lists, and records them until the
/// catalog subscription ends (an error) or `deadline` or a signal says stop.
async fn follow(
    c: &Client,
    ns: &moq_transport::coding::TrackNamespace,
    recorder: &mut Recorder,
    progress: &mut Progress,
    deadline: Option<tokio::time::Instant>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Stop> {
    let (_sub, reader) = client::subscribe(c, ns.clone(), "catalog").await?;
    let (tx, mut catalogs) = mpsc::channel(16);
    let reading = tokio::spawn(read_bounded(reader, 0, "catalog".into(), tx));
    let (otx, mut objects) = mpsc::channel::<Tagged>(QUEUE);
    let mut generation = 0;
    let mut tracks: Vec<(
        moq_transport::session::Subscribe,
        tokio::task::JoinHandle<()>,
    )> = vec![];
    let result = loop {
        tokio::select! {
            _ = sleep_until(deadline) => break Ok(Some(Stop::Deadline)),
            _ = room_args::stopped(stop) => break Ok(Some(Stop::Signal)),
            cat = catalogs.recv() => {
                let Some((_, _, cat)) = cat else { break Ok(None) };
                if cat.payload.len() > MAX_CATALOG_BYTES {
                    eprintln!("\rwarning: a catalog of {} bytes ignored", cat.payload.len());
                    continue;
                }
                let catalog: Catalog = match serde_json::from_slice(&cat.payload) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("\rwarning: unreadable catalog: {e}");
                        continue;
                    }
                };
                match recorder.catalog(&catalog).await {
                    Ok(false) if !tracks.is_empty() => continue, // the same tracks as before
                    Ok(_) => {}
                    Err(e) => break Err(e),
                }
                // Objects still queued from the old subscriptions are dropped by generation.
                generation += 1;
                for (_, t) in tracks.drain(..) {
                    t.abort();
                }
                for t in &catalog.tracks {
                    if !recorder.records(&t.name) {
                        continue;
                    }
                    let (sub, reader) = match client::subscribe(c, ns.clone(), &t.name).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(track = %t.name, error = %e, "subscription refused");
                            continue;
                        }
                    };
                    let task = tokio::spawn(read_bounded(reader, generation, t.name.clone(), otx.clone()));
                    tracks.push((sub, task));
                }
            }
            o = objects.recv() => {
                let Some((g, name, r)) = o else { break Ok(None) };
                if g != generation {
                    continue;
                }
                let at = capture_us(&r);
                let (bytes, group) = (r.payload.len(), r.object == 0);
                match recorder.object(&name, r.group, r.object, at, r.payload).await {
                    Ok(true) => progress.frame(bytes, at, group),
                    Ok(false) => {}
                    Err(e) => break Err(e),
                }
            }
        }
    };
    reading.abort();
    for (_, t) in tracks.drain(..) {
        t.abort();
    }
    if let Some(stop) = result? {
        return Ok(stop);
    }
    recorder.flush().await?;
    anyhow::bail!("the catalog subscription ended")
}
