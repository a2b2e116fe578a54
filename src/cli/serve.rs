//! `roomcast serve`: run the relay until Ctrl-C or SIGTERM.

use clap::Args;

use crate::config::Config;
use crate::server::Server;

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: Config,
}

/// Runs the relay with `config` (flags and environment over its file, already read).
pub async fn run(config: Config) -> anyhow::Result<()> {
    for warning in crate::config::flag_secret_warnings(std::env::args()) {
        tracing::warn!("{warning}");
    }
    let settings = config.resolve()?;
    // The web client's address: plain HTTP where it is served, else HTTPS (same port).
    let scheme = if settings.http_plain { "http" } else { "https" };
    let server = Server::start(settings).await?;
    // Scripts wait for this line; it is the only thing printed to stdout.
    println!(
        "roomcast ready webtransport=https://{wt}/ quic=moqt://{quic}/ http={scheme}://{http}/ whip=udp://{whip} cert_sha256={hash}",
        whip = server.whip_addr,
        wt = server.webtransport_addr,
        quic = server.quic_addr,
        http = server.http_addr,
        hash = server.cert_sha256,
    );
    tracing::info!(webtransport = %server.webtransport_addr, quic = %server.quic_addr, http = %server.http_addr, "listening");
    let stop = server.graceful_stop();
    tokio::spawn(async move {
        wait_for_signal().await;
        // A second signal stops at once.
        stop.run(wait_for_signal()).await;
    });
    server.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
