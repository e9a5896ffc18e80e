//! `banshare report`: the fail2ban action's hook. It must never make fail2ban wait: the
//! event goes to the daemon over the socket (milliseconds); if the daemon is down or
//! does not answer, straight into the state database; and a watchdog ends the process
//! after [`DEADLINE`] whatever happens (fail2ban's own action timeout is 60 s).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::commands::{CliError, emit_line, load_config};
use super::output::terminal_safe;
use super::{ReportArgs, exit};
use crate::clock::Timestamp;
use crate::config::Config;
use crate::control::client::{Client, ClientError};
use crate::control::protocol::{Fail2banData, Request};
use crate::decision::{Source, ban_target, parse_target, show_target};
use crate::fail2ban::{Event, Kind, plan_ban};
use crate::feed::report_draft;
use crate::feed::sanitize::Sanitizer;
use crate::ledger::Ledger;
use crate::store::{LiftReason, Store};

/// The hook never runs longer than this.
const DEADLINE: Duration = Duration::from_secs(20);
/// How long to wait for the daemon before writing to the store instead.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(5);
/// How often, and how far apart, a `busy` daemon is asked again (5 s in all).
const BUSY_RETRIES: usize = 25;
const BUSY_PAUSE: Duration = Duration::from_millis(200);

/// The event the arguments describe; a bad address is exit 2 with one line.
fn event_from(args: ReportArgs) -> Result<Event, CliError> {
    let target = parse_target(&args.ip).map_err(|m| CliError::new(exit::BAD_INPUT, format!("--ip: {m}")))?;
    if target.prefix_len() != target.max_prefix_len() {
        return Err(CliError::new(exit::BAD_INPUT, format!("--ip {}: one address, not a network", args.ip)));
    }
    if args.jail.trim().is_empty() || args.jail.len() > 128 || args.jail.chars().any(char::is_control) {
        return Err(CliError::new(exit::BAD_INPUT, "--jail: expected the jail's name"));
    }
    let matches =
        args.matches.as_deref().unwrap_or("").lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    Ok(Event {
        kind: args.event,
        mode: args.mode,
        ip: target.addr(),
        jail: args.jail,
        category: args.category.filter(|c| !c.trim().is_empty()),
        failures: args.failures,
        time: args.time.filter(|t| t.is_finite() && *t > 0.0).map(|t| Timestamp((t * 1000.0) as i64)),
        bantime: args.bantime,
        restored: args.restored == 1,
        matches,
        via: crate::fail2ban::Via::Action,
    })
}

/// `banshare report ...` (not `--dry-run`).
pub fn report(config_path: &Option<PathBuf>, socket: &Option<PathBuf>, args: ReportArgs) -> Result<u8, CliError> {
    std::thread::spawn(|| {
        std::thread::sleep(DEADLINE);
        eprintln!("banshare: report gave up after {} s", DEADLINE.as_secs());
        std::process::exit(exit::FAILURE.into());
    });
    let event = event_from(args)?;
    // A broken config (an edit in progress) must not lose fail2ban's bans: record with
    // what can be salvaged, and say so.
    let config = load_config(config_path.as_deref()).unwrap_or_else(|error| {
        eprintln!(
            "banshare: the config does not load ({}); recording this event with its state_dir and socket, or the defaults",
            terminal_safe(&error.message)
        );
        crate::config::salvage(config_path.as_deref())
    });
    let socket = socket.clone().unwrap_or_else(|| config.socket.clone());
    let send = || {
        Client::connect(&socket, DAEMON_TIMEOUT)
            .and_then(|mut c| c.call_as::<Fail2banData>(&Request::Fail2ban { event: event.clone() }))
    };
    // A daemon at its connection cap says `busy`: try again for a while (well within the
    // deadline) rather than lose the ban; then the store takes it like a stopped daemon.
    let mut sent = send();
    for _ in 0..BUSY_RETRIES {
        if !matches!(&sent, Err(ClientError::Daemon(e)) if e.code == crate::control::protocol::ErrorCode::Busy) {
            break;
        }
        std::thread::sleep(BUSY_PAUSE);
        sent = send();
    }
    match sent {
        Ok(data) => {
            emit_line(&terminal_safe(&describe(&event, &data)));
            Ok(exit::OK)
        }
        Err(ClientError::Daemon(e)) if e.code != crate::control::protocol::ErrorCode::Busy => {
            Err(ClientError::Daemon(e).into())
        }
        Err(e) => {
            // Not running, or not answering: the store takes it; the daemon applies it
            // (and sends the report) when it starts.
            let line = record_offline(&config, &event)?;
            emit_line(&terminal_safe(&format!("{line} (daemon not reachable: {e}; saved for its next start)")));
            Ok(exit::OK)
        }
    }
}

fn describe(event: &Event, data: &Fail2banData) -> String {
    let ip = event.ip;
    match event.kind {
        Kind::Unban => format!("{ip}: fail2ban unban recorded ({} lifted)", data.lifted),
        Kind::Ban => {
            let what = match (event.restored, data.report_due) {
                (true, _) => "restored ban recorded, not reported again",
                (false, true) => "recorded and reported",
                (false, false) => "recorded (not reported: feed.report is off or the address is not public)",
            };
            format!("{ip}: {what}")
        }
    }
}

/// The daemon is down: the event's decision and report go straight into the store (WAL
/// and a busy timeout make this safe beside a starting daemon). The guard applies here
/// as everywhere.
fn record_offline(config: &Config, event: &Event) -> Result<String, CliError> {
    let fail = |e: String| CliError::new(exit::FAILURE, e);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    crate::store::secure_state_dir(&config.state_dir).map_err(|e| fail(e.to_string()))?;
    let store =
        Store::open_checked(&config.state_db(), crate::store::Empty::Refuse).map_err(|e| fail(e.to_string()))?;
    let host = crate::hostaddr::host_addresses().unwrap_or_default();
    let ledger = Ledger::offline(store, config.allowlist.clone(), host.clone());
    let now = Timestamp::now();
    let target = ban_target(event.ip, Source::Fail2ban, 128);
    if event.kind == Kind::Unban {
        let lifted = ledger
            .lift(|s| s.lift_source(&target, Source::Fail2ban, LiftReason::Fail2ban, now))
            .map_err(|e| fail(e.to_string()))?;
        return Ok(format!("{}: fail2ban unban recorded ({} lifted)", show_target(&target), lifted.decisions.len()));
    }
    let earlier = ledger.read(|v| v.store.last_category(&target)).map_err(|e| fail(e.to_string()))?;
    let sanitizer = Sanitizer::for_host(&host);
    let proposal = plan_ban(event, &config.fail2ban, earlier, |input| report_draft(&config.feed, &sanitizer, input));
    let due = proposal.report.is_some();
    let decided = ledger.decide(vec![proposal], now).map_err(|e| fail(e.to_string()))?;
    if let Some(Err(refusal)) = decided.outcomes.first() {
        return Err(CliError::new(exit::REFUSED, format!("refused: {refusal}; banshare never blocks it")));
    }
    let data = Fail2banData { decision: None, outcome: None, report_due: due, lifted: 0 };
    Ok(describe(event, &data))
}

/// `report --dry-run`: the exact request this event would queue, sanitised.
pub fn report_dry_run(config_path: Option<&Path>, args: ReportArgs) -> Result<u8, CliError> {
    let config = load_config(config_path)?;
    let event = event_from(args)?;
    if event.kind == Kind::Unban {
        emit_line("an unban sends nothing");
        return Ok(exit::OK);
    }
    let host = crate::hostaddr::host_addresses().unwrap_or_default();
    let sanitizer = Sanitizer::for_host(&host);
    // What would be sent if reporting were on (the dry run shows it either way).
    let reporting = crate::config::FeedConfig { report: true, ..config.feed.clone() };
    let proposal = plan_ban(&event, &config.fail2ban, None, |input| report_draft(&reporting, &sanitizer, input));
    let Some(report) = proposal.report else {
        let why = if event.restored { "a restored ban is never reported again" } else { "not a public address" };
        return Err(CliError::new(exit::REFUSED, format!("{}: nothing would be sent: {why}", event.ip)));
    };
    let body: serde_json::Value = serde_json::from_str(&report.payload).unwrap_or_default();
    emit_line(&format!("POST {}{}", config.feed.base_url, crate::feed::reporter::REPORT_PATH));
    emit_line(&serde_json::to_string_pretty(&body).unwrap_or_default());
    Ok(exit::OK)
}
