//! The `roomcast` command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Mint a signed token for a user, room and grants; prints only the token.
    Token(token::TokenArgs),
}

/// Runs the command and maps errors to an exit code.
pub fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Some(Command::Token(args)) => token::run(args),
        None => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
