//! The `banshare` binary: parse the command line, set up logging, dispatch, and turn the
//! outcome into an exit code and one line on stderr. See [`banshare::cli`].

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use banshare::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Run { .. }));
    match cli::execute(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("banshare: {}", banshare::cli::terminal_safe(&e.message));
            ExitCode::from(e.code)
        }
    }
}

/// The daemon logs at `info` (to journald when systemd connected its stderr to the
/// journal, to stderr otherwise); client commands only show warnings. `BANSHARE_LOG`
/// takes an `EnvFilter` directive (e.g. `debug`, `banshare=trace`).
fn init_logging(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("BANSHARE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let journald =
        if daemon && std::env::var_os("JOURNAL_STREAM").is_some() { tracing_journald::layer().ok() } else { None };
    match journald {
        Some(layer) => tracing_subscriber::registry().with(filter).with(layer).init(),
        None => tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(false),
            )
            .init(),
    }
}
