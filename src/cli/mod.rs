//! The `roomcast` command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod admin;
mod bench;
mod impair;
mod ingest;
mod progress;
mod publish;
mod record;
mod room_args;
mod serve;
mod subscribe;
pub mod synthetic;

pub use bench::rss_kib;
mod token;

/// roomcast: a Media-over-QUIC relay with rooms.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the relay (the default when no command is given).
    Serve(serve::ServeArgs),
    /// Load-test a draft-18 relay with synthetic publishers and subscribers.
    Bench(bench::BenchArgs),
    /// Run the seeded UDP impairment proxy (loss, delay, jitter, duplication, rate limit).
    Impair(impair::ImpairArgs),
    /// Publish fragmented MP4 (ffmpeg's output, a file) or a synthetic stream into a room.
    Publish(publish::PublishArgs),
    /// Write a participant's tracks as fragmented MP4 to stdout or a file.
    Subscribe(subscribe::SubscribeArgs),
    /// Mint a signed token for a user, room and grants; prints only the token.
    Token(token::TokenArgs),
    /// Administer a running server: accounts, rooms, bans, invites (as an administrator).
    Admin(admin::AdminArgs),
}

fn runtime<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    runtime_logging(crate::config::LogFormat::Text, f)
}

fn runtime_logging<F: std::future::Future<Output = anyhow::Result<()>>>(
    format: crate::config::LogFormat,
    f: F,
) -> anyhow::Result<()> {
    init_logging(format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(f);
    // A blocking read of stdin (publish with nothing coming in) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Structured logs to stderr; `RUST_LOG` filters (default `info`). web-transport-quinn logs
/// each CONNECT request, token included, at debug level: its events above info are dropped
/// whatever `RUST_LOG` says, so no token reaches the logs.
fn init_logging(format: crate::config::LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,moq_transport=warn"));
    let no_secrets = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.target().starts_with("web_transport_quinn") && *meta.level() > tracing::Level::INFO)
    });
    let json = format == crate::config::LogFormat::Json;
    let text = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let json = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(false)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(no_secrets)
        .with(text)
        .with(json)
        .try_init();
}

/// Client commands log only their own warnings (the session library reports every torn-down
/// stream, the MP4 library every box it skips), unless `RUST_LOG` says otherwise.
fn quiet_libraries() {
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn,moq_transport=off,mp4_atom=off");
    }
}

/// `roomcast serve`: the configuration is read first, as it says how to log.
fn serve(args: serve::ServeArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    runtime_logging(config.log_format.unwrap_or_default(), serve::run(config))
}

/// Runs the command and maps errors to an exit code.
pub fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Some(Command::Token(args)) => token::run(args),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Publish(args)) => {
            quiet_libraries();
            runtime(publish::run(args))
        }
        Some(Command::Subscribe(args)) => {
            quiet_libraries();
            runtime(subscribe::run(args))
        }
        Some(Command::Impair(args)) => runtime(impair::run(args)),
        // Its one line on failure is the message; libraries log only if RUST_LOG asks.
        Some(Command::Admin(args)) => match std::env::var_os("RUST_LOG") {
            Some(_) => runtime(admin::run(args)),
            None => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(admin::run(args))),
        },
        Some(Command::Bench(args)) => {
            // The load generator's own client sessions log every torn-down stream; quiet them.
            quiet_libraries();
            runtime(bench::run(args))
        }
        None => serve(serve::ServeArgs::default()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
