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
    let mut recorder = Recorder::new(output).await?;
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
    let mut stop = room_args::stop_signal();
    let how = loop {
        let ended = tokio::select! {
            r = follow(&client, &ns, &mut recorder, &mut progress) => r,
            _ = sleep_until(deadline) => break "stopped after --duration",
            _ = room_args::stopped(&mut stop) => break "interrupted",
        };
        if let Err(e) = ended {
            if recorder.output_closed() {
                break "output closed";
            }
            tracing::debug!(error = %e, "subscription ended");
        }
        // The publisher left or was replaced, or the session dropped: follow again.
        if let Some(why) = client.connection().close_reason() {
            if let Some(fatal) = room_args::refused(&why) {
                recorder.finish().await;
                progress.finish("failed");
                anyhow::bail!("the relay ended the session: {fatal}");
            }
            eprintln!("\rconnection lost ({why}); reconnecting");
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = sleep_until(deadline) => break,
                    _ = room_args::stopped(&mut stop) => break,
                }
                match connect(&target, &token).await {
                    Ok(c) => {
                        client = c;
                        progress.reconnects += 1;
                        backoff = Duration::from_millis(250);
                        break;
                    }
                    Err(_) => backoff = (backoff * 2).min(Duration::from_secs(5)),
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
        e = c.closed() => match room_args::refused(&e) {
            Some(why) => anyhow::bail!("the relay refused the session: {why}"),
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

/// Subscribes to the catalog, then to the tracks it lists, and records them until the
/// catalog subscription ends.
async fn follow(
    c: &Client,
    ns: &moq_transport::coding::TrackNamespace,
    recorder: &mut Recorder,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let (_sub, reader) = client::subscribe(c, ns.clone(), "catalog").await?;
    let (tx, mut catalogs) = mpsc::unbounded_channel();
    let reading = tokio::spawn(client::read_track(reader, tx));
    let (otx, mut objects) = mpsc::unbounded_channel::<(String, Received)>();
    let mut tracks: Vec<(
        moq_transport::session::Subscribe,
        tokio::task::JoinHandle<()>,
    )> = vec![];
    loop {
        tokio::select! {
            cat = catalogs.recv() => {
                let Some(cat) = cat else { break };
                let catalog: Catalog = match serde_json::from_slice(&cat.payload) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("\rwarning: unreadable catalog: {e}");
                        continue;
                    }
                };
                if !recorder.catalog(&catalog).await? && !tracks.is_empty() {
                    continue; // the same tracks as before
                }
                for (_, t) in tracks.drain(..) {
                    t.abort();
                }
                for t in &catalog.tracks {
                    if !recorder.records(&t.name) {
                        continue;
                    }
                    let (sub, reader) = client::subscribe(c, ns.clone(), &t.name).await?;
                    let (tx, mut rx) = mpsc::unbounded_channel();
                    let otx = otx.clone();
                    let name = t.name.clone();
                    let task = tokio::spawn(async move {
                        let forward = async {
                            while let Some(r) = rx.recv().await {
                                if otx.send((name.clone(), r)).is_err() {
                                    break;
                                }
                            }
                        };
                        let _ = tokio::join!(client::read_track(reader, tx), forward);
                    });
                    tracks.push((sub, task));
                }
            }
            o = objects.recv() => {
                let Some((name, r)) = o else { break };
                let at = capture_us(&r);
                let (bytes, group) = (r.payload.len(), r.object == 0);
                if recorder.object(&name, r.group, r.object, at, r.payload).await? {
                    progress.frame(bytes, at, group);
                }
            }
        }
    }
    reading.abort();
    for (_, t) in tracks.drain(..) {
        t.abort();
    }
    recorder.flush().await?;
    anyhow::bail!("the catalog subscription ended")
}
