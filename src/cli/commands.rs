//! The commands: each builds a request, sends it, and renders the reply.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::{Cli, Command, ConfigCommand, exit, output};
use crate::clock::{Timestamp, parse_duration};
use crate::config::{self, Config};
use crate::control::client::{Client, ClientError};
use crate::control::protocol::{
    BanData, ErrorCode, ListData, QueryData, Request, StatusData, UnbanData,
};
use crate::decision::{parse_target, show_target};
use crate::store::Upsert;

/// How long the CLI waits for the daemon before giving up.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed command: the exit code and the one line to print.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    fn new(code: u8, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::NotRunning { .. } => exit::NOT_RUNNING,
            ClientError::Daemon(body) => match body.code {
                ErrorCode::BadRequest | ErrorCode::InvalidTarget | ErrorCode::TooLarge => {
                    exit::BAD_INPUT
                }
                ErrorCode::Refused => exit::REFUSED,
                ErrorCode::NotFound => exit::NO,
                ErrorCode::UnsupportedVersion | ErrorCode::Internal => exit::FAILURE,
            },
            _ => exit::FAILURE,
        };
        let mut message = e.to_string();
        if code == exit::NOT_RUNNING {
            message.push_str("; start it with `systemctl start banshare` or `banshare run`");
        }
        CliError::new(code, message)
    }
}

/// Runs one command. `Ok` carries the exit code (0, or 1 for a negative answer).
pub fn execute(cli: Cli) -> Result<u8, CliError> {
    match cli.command {
        Command::Run => run(cli.config.as_deref()),
        Command::Config {
            action: ConfigCommand::Check,
        } => config_check(cli.config.as_deref()),
        Command::Status { json } => {
            let s: StatusData = connect(&cli.config, &cli.socket)?.call_as(&Request::Status)?;
            print(json, &s, || output::status(&s));
            Ok(exit::OK)
        }
        Command::List { source, json } => {
            let l: ListData =
                connect(&cli.config, &cli.socket)?.call_as(&Request::List { source })?;
            print(json, &l, || {
                output::decision_table(&l.decisions, Timestamp::now())
            });
            Ok(exit::OK)
        }
        Command::Query { ip, json } => {
            parse_target(&ip).map_err(|m| CliError::new(exit::BAD_INPUT, m))?;
            let q: QueryData =
                connect(&cli.config, &cli.socket)?.call_as(&Request::Query { ip })?;
            print(json, &q, || output::query(&q, Timestamp::now()));
            Ok(if q.blocked { exit::OK } else { exit::NO })
        }
        Command::Ban {
            target,
            length,
            reason,
            json,
        } => {
            let request = ban_request(target, length, reason)?;
            let b: BanData = connect(&cli.config, &cli.socket)?.call_as(&request)?;
            print(json, &b, || {
                let d = &b.decision;
                let what = match b.outcome {
                    Upsert::Created => "banned",
                    Upsert::Extended => "extended the ban of",
                    Upsert::Unchanged => "already banned:",
                };
                format!(
                    "{what} {} ({}) {}\n",
                    show_target(&d.target),
                    d.source,
                    output::until(d.expires, Timestamp::now())
                )
            });
            Ok(exit::OK)
        }
        Command::Unban { target, json } => {
            let target = parse_target(&target)
                .map_err(|m| CliError::new(exit::BAD_INPUT, m))?
                .to_string();
            let u: UnbanData =
                connect(&cli.config, &cli.socket)?.call_as(&Request::Unban { target })?;
            print(json, &u, || {
                u.lifted
                    .iter()
                    .map(|d| format!("unbanned {} ({})\n", show_target(&d.target), d.source))
                    .collect()
            });
            Ok(exit::OK)
        }
    }
}

/// Validates `ban`'s arguments into a request, before any connection.
fn ban_request(
    target: String,
    length: Option<String>,
    reason: Option<String>,
) -> Result<Request, CliError> {
    let target = parse_target(&target)
        .map_err(|m| CliError::new(exit::BAD_INPUT, m))?
        .to_string();
    let (for_secs, permanent) = match length.as_deref() {
        None => (None, false),
        Some("permanent" | "forever") => (None, true),
        Some(text) => match parse_duration(text) {
            Ok(d) if d.as_secs() > 0 => (Some(d.as_secs()), false),
            _ => {
                return Err(CliError::new(
                    exit::BAD_INPUT,
                    format!(
                        "--for {text:?}: expected a duration of at least 1s like 90s, 10m, 1h, 7d, or \"permanent\""
                    ),
                ));
            }
        },
    };
    Ok(Request::Ban {
        target,
        for_secs,
        permanent,
        reason,
    })
}

fn run(config_path: Option<&Path>) -> Result<u8, CliError> {
    let config = load_config(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("banshare")
        .build()
        .map_err(|e| CliError::new(exit::FAILURE, format!("cannot start the runtime: {e}")))?;
    runtime
        .block_on(crate::daemon::run(config))
        .map_err(|e| CliError::new(exit::FAILURE, e.to_string()))?;
    Ok(exit::OK)
}

fn config_check(config_path: Option<&Path>) -> Result<u8, CliError> {
    let config = load_config(config_path)?;
    println!("{}: OK", config.origin());
    Ok(exit::OK)
}

fn load_config(path: Option<&Path>) -> Result<Config, CliError> {
    config::load(path).map_err(|e| CliError::new(exit::BAD_INPUT, e.to_string()))
}

/// Connects to the daemon at `--socket`, or at the config's `socket`.
fn connect(config_path: &Option<PathBuf>, socket: &Option<PathBuf>) -> Result<Client, CliError> {
    let socket = match socket {
        Some(s) => s.clone(),
        None => load_config(config_path.as_deref())?.socket,
    };
    Ok(Client::connect(&socket, CLIENT_TIMEOUT)?)
}

/// Prints `data` as JSON or as the text `human` renders.
fn print<T: Serialize>(json: bool, data: &T, human: impl FnOnce() -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(data).unwrap_or_default());
    } else {
        print!("{}", human());
    }
}
