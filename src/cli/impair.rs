//! `roomcast impair`: run the seeded UDP impairment proxy in front of a relay (or anything UDP).

use std::net::SocketAddr;

use clap::Args;

use crate::impair::{Config, Impairment, Proxy};

#[derive(Args, Debug)]
pub struct ImpairArgs {
    /// Address clients send to.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Where packets go (the relay's UDP port).
    #[arg(long)]
    pub upstream: SocketAddr,
    /// Seed for every random decision; the same seed replays the same fates.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Client-to-upstream impairments, e.g. `delay=20ms,jitter=5ms,loss=5%`.
    #[arg(long, default_value = "none")]
    pub up: Impairment,
    /// Upstream-to-client impairments (same syntax; keys: delay, jitter, loss, burst, dup,
    /// rate, queue).
    #[arg(long, default_value = "none")]
    pub down: Impairment,
}

pub async fn run(args: ImpairArgs) -> anyhow::Result<()> {
    let proxy = Proxy::start(
        args.listen,
        args.upstream,
        Config {
            seed: args.seed,
            up: args.up.clone(),
            down: args.down.clone(),
        },
    )
    .await?;
    println!(
        "impair ready listen={} upstream={} seed={} up={} down={}",
        proxy.addr, args.upstream, args.seed, args.up, args.down
    );
    tokio::signal::ctrl_c().await?;
    eprint!("{}", proxy.stop().await);
    Ok(())
}
