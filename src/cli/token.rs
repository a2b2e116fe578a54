//! `roomcast token`: mint a token with the server's secret.

use std::time::Duration;

use clap::Args;

use crate::auth::{secret, Claims, Grant, TokenIssuer};
use crate::config::Config;

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Room the token is scoped to.
    #[arg(long)]
    pub room: String,
    /// Identity (participant name) of the holder.
    #[arg(long)]
    pub identity: String,
    /// Grants, comma separated: publish, subscribe, chat, admin.
    #[arg(long, value_delimiter = ',', default_value = "publish,subscribe")]
    pub grants: Vec<Grant>,
    /// Lifetime, e.g. `90s`, `1h`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Not valid before now + this delay (for testing).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub not_before: Duration,
    #[command(flatten)]
    pub config: Config,
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let (secret, data_dir) = args.config.load()?.token_signing()?;
    let secret = secret::load_or_create(secret.as_deref(), &data_dir)?;
    let mut claims = Claims::new(
        &args.identity,
        &args.room,
        args.grants.into_iter().collect(),
        args.ttl + args.not_before,
    );
    claims.nbf += args.not_before.as_secs();
    println!("{}", TokenIssuer::new(&secret).mint(&claims)?);
    Ok(())
}
