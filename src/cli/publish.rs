//! `roomcast publish`: publish fragmented MP4 (an encoder's output on stdin, or a file) into a
//! room, or with `--synthetic`, a self-verifying test stream for scripts and benchmarks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::ingest::{self, Input};
use super::room_args::RoomArgs;
use super::synthetic::{self, Profile};
use crate::client;

#[derive(Args, Debug)]
pub struct PublishArgs {
    #[command(flatten)]
    pub relay: RoomArgs,
    /// Participant name to publish as (default: the token's identity, which it must match).
    #[arg(long, alias = "identity")]
    pub name: Option<String>,
    /// Fragmented MP4 to publish: a file, or `-` for standard input.
    #[arg(default_value = "-")]
    pub input: String,
    /// Start a file over when it ends.
    #[arg(long = "loop")]
    pub looping: bool,
    /// Stop after this long (default: until the input ends or interrupted).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// No progress line on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Publish a synthetic, self-verifying stream instead of an input.
    #[arg(long)]
    pub synthetic: bool,
    #[command(flatten)]
    pub profile: Profile,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let room = args.relay.room()?;
    let name = args
        .name
        .clone()
        .or(args.relay.identity())
        .context("no --name, and the token names no identity")?;
    let target = args.relay.target();
    let token = args.relay.token.clone();
    if !args.synthetic {
        return ingest::run(ingest::Options {
            target,
            token,
            room,
            name,
            input: match args.input.as_str() {
                "-" => Input::Stdin,
                p => Input::File(PathBuf::from(p)),
            },
            looping: args.looping,
            duration: args.duration,
            quiet: args.quiet,
        })
        .await;
    }
    let c = client::connect(&target, Some(&token)).await?;
    let ns = client::namespace(&["room", &room, &name])?;
    let (writers, announce) = client::publish(&c, ns, &args.profile.tracks())?;
    eprintln!("publishing room/{room}/{name} {:?}", args.profile.tracks());
    tokio::select! {
        r = synthetic::run(&args.profile, writers, args.duration) => { r?; }
        r = announce => anyhow::bail!("announcement ended: {r:?}"),
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
