//! `roomcast publish`: publish a synthetic video/audio stream into a room, for scripts and tests.

use std::time::Duration;

use clap::Args;

use super::synthetic::{self, Profile};
use crate::client::{self, Target};

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Relay URL: `moqt://host:port/` (raw QUIC) or `https://host:port/` (WebTransport).
    #[arg(long)]
    pub url: url::Url,
    /// Hex SHA-256 of the relay certificate (`GET /cert-hash`).
    #[arg(long)]
    pub cert_sha256: String,
    /// Token (from `roomcast token`).
    #[arg(long, env = "ROOMCAST_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Room to publish in.
    #[arg(long)]
    pub room: String,
    /// Participant namespace to publish under (must match the token identity).
    #[arg(long)]
    pub identity: String,
    /// Stop after this long (default: until interrupted).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub profile: Profile,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let target = Target {
        url: args.url,
        cert_sha256: args.cert_sha256,
    };
    let c = client::connect(&target, Some(&args.token)).await?;
    let ns = client::namespace(&["room", &args.room, &args.identity])?;
    let (writers, announce) = client::publish(&c, ns, &args.profile.tracks())?;
    eprintln!(
        "publishing room/{}/{} {:?}",
        args.room,
        args.identity,
        args.profile.tracks()
    );
    tokio::select! {
        r = synthetic::run(&args.profile, writers, args.duration) => { r?; }
        r = announce => anyhow::bail!("announcement ended: {r:?}"),
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
