use clap::Parser;

fn main() -> std::process::ExitCode {
    roomcast::cli::main(roomcast::cli::Cli::parse())
}
