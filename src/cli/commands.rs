//! The commands: each builds a request, sends it, and renders the reply.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::{Cli, Command, ConfigCommand, FirewallCommand, exit, output};
use crate::clock::{Timestamp, parse_duration};
use crate::config::{self, Backend, Config};
use crate::control::client::{Client, ClientError};
use crate::control::protocol::{BanData, ErrorCode, ImportData, ListData, QueryData, Request, StatusData, UnbanData};
use crate::decision::{parse_target, show_target};
use crate::enforce::FirewallError;
use crate::store::Upsert;

/// How long the CLI waits for the daemon before giving up.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// `import` of a large list commits and loads it all at once; give it time.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(600);

/// Requests that wait on the community feed's API (its timeout is 10 s by default).
const FEED_TIMEOUT: Duration = Duration::from_secs(60);

/// A failed command: the exit code and the one line to print.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub(super) fn new(code: u8, message: impl Into<String>) -> Self {
        CliError { code, message: message.into() }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::NotRunning { .. } => exit::NOT_RUNNING,
            ClientError::Daemon(body) => match body.code {
                ErrorCode::BadRequest | ErrorCode::InvalidTarget | ErrorCode::TooLarge | ErrorCode::Config => {
                    exit::BAD_INPUT
                }
                ErrorCode::Refused => exit::REFUSED,
                ErrorCode::NotFound => exit::NO,
                ErrorCode::UnsupportedVersion
                | ErrorCode::Internal
                | ErrorCode::Upstream
                | ErrorCode::Firewall
                | ErrorCode::Busy => exit::FAILURE,
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
        Command::Run { new_state } => run(cli.config.as_deref(), new_state),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "banshare",
                &mut std::io::stdout(),
            );
            Ok(exit::OK)
        }
        Command::Manpage => {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut std::io::stdout())
                .map_err(|e| CliError::new(exit::FAILURE, format!("cannot write the man page: {e}")))?;
            Ok(exit::OK)
        }
        Command::Config { action: ConfigCommand::Check } => config_check(cli.config.as_deref()),
        Command::Status { json } => {
            let s: StatusData = connect(&cli.config, &cli.socket)?.call_as(&Request::Status)?;
            print(json, &s, || output::status(&s));
            Ok(exit::OK)
        }
        Command::List { source, json } => {
            let l: ListData = connect(&cli.config, &cli.socket)?.call_as(&Request::List { source })?;
            print(json, &l, || output::decision_table(&l.decisions, Timestamp::now()));
            Ok(exit::OK)
        }
        Command::Query { ip, json } => {
            parse_target(&ip).map_err(|m| CliError::new(exit::BAD_INPUT, m))?;
            let q: QueryData = connect(&cli.config, &cli.socket)?.call_as(&Request::Query { ip })?;
            print(json, &q, || output::query(&q, Timestamp::now()));
            Ok(if q.blocked { exit::OK } else { exit::NO })
        }
        Command::Ban { target, ban, report, category, json } => {
            let mut request = ban_request(target, ban.length, ban.reason)?;
            if let Request::Ban { report: r, category: c, .. } = &mut request {
                (*r, *c) = (report, category);
            }
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
        Command::Import { file, ban, json } => import(&cli.config, &cli.socket, &file, ban.length, ban.reason, json),
        Command::Scan { filters, fail2ban_filters, show_matches, show_missed, json, files } => {
            let wanted = (&filters[..], &fail2ban_filters[..]);
            scan(cli.config.as_deref(), wanted, (show_matches, show_missed), json, &files)
        }
        Command::Firewall { action: FirewallCommand::Show { json } } => firewall_show(cli.config.as_deref(), json),
        Command::Firewall { action: FirewallCommand::Teardown } => firewall_teardown(),
        Command::Fail2ban { action: super::Fail2banCommand::Jails { dir } } => fail2ban_jails(&dir),
        Command::Reload { json } => {
            // A broken file is the daemon's to judge and report (it keeps the old config
            // and `status` says why).
            let r: crate::control::protocol::ReloadData =
                connect(&cli.config, &cli.socket)?.call_as(&Request::Reload)?;
            print(json, &r, || {
                let mut out = format!("reloaded: {} in force\n", r.config);
                for key in &r.restart_needed {
                    out.push_str(&format!("note: {key} changed; it takes a restart (the old value stays)\n"));
                }
                out
            });
            Ok(exit::OK)
        }
        Command::Sync { json } => super::feed::sync(connect_with(&cli.config, &cli.socket, IMPORT_TIMEOUT)?, json),
        Command::Check { ip, json } => {
            parse_target(&ip).map_err(|m| CliError::new(exit::BAD_INPUT, m))?;
            super::feed::check(connect_with(&cli.config, &cli.socket, FEED_TIMEOUT)?, ip, json)
        }
        Command::Report { args, dry_run: true } => super::fail2ban::report_dry_run(cli.config.as_deref(), args),
        Command::Report { args, dry_run: false } => super::fail2ban::report(&cli.config, &cli.socket, args),
        Command::Register { name, contact, domain, source_type, json } => {
            let request = Request::Register { name, contact, domain, source_type };
            super::feed::register(connect_with(&cli.config, &cli.socket, FEED_TIMEOUT)?, request, json)
        }
        Command::Verify { domain, json } => {
            super::feed::verify(connect_with(&cli.config, &cli.socket, FEED_TIMEOUT)?, domain, json)
        }
        Command::Delist { ip, reason, hostname, contact, json } => {
            let target = parse_target(&ip).map_err(|m| CliError::new(exit::BAD_INPUT, m))?;
            let request = Request::Delist { ip: show_target(&target), reason, hostname, contact };
            super::feed::delist(connect_with(&cli.config, &cli.socket, FEED_TIMEOUT)?, request, json)
        }
        Command::Unban { target, json } => {
            let target = parse_target(&target).map_err(|m| CliError::new(exit::BAD_INPUT, m))?.to_string();
            let u: UnbanData = connect(&cli.config, &cli.socket)?.call_as(&Request::Unban { target })?;
            print(json, &u, || {
                u.lifted.iter().map(|d| format!("unbanned {} ({})\n", show_target(&d.target), d.source)).collect()
            });
            Ok(exit::OK)
        }
    }
}

/// Validates `ban`'s arguments into a request, before any connection.
fn ban_request(target: String, length: Option<String>, reason: Option<String>) -> Result<Request, CliError> {
    let target = parse_target(&target).map_err(|m| CliError::new(exit::BAD_INPUT, m))?.to_string();
    let (for_secs, permanent) = ban_length(length.as_deref())?;
    Ok(Request::Ban { target, for_secs, permanent, reason, report: false, category: None })
}

/// `--for`: seconds, or permanent.
fn ban_length(length: Option<&str>) -> Result<(Option<u64>, bool), CliError> {
    Ok(match length {
        None => (None, false),
        Some("permanent" | "forever") => (None, true),
        Some(text) => match parse_duration(text) {
            Ok(d) if d > crate::decision::MAX_BAN => {
                return Err(CliError::new(
                    exit::BAD_INPUT,
                    format!("--for {text:?}: {}", crate::decision::check_ban_length(d).unwrap_err()),
                ));
            }
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
    })
}

fn import(
    config: &Option<PathBuf>,
    socket: &Option<PathBuf>,
    file: &Path,
    length: Option<String>,
    reason: Option<String>,
    json: bool,
) -> Result<u8, CliError> {
    let (for_secs, permanent) = ban_length(length.as_deref())?;
    let bytes = if file == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
    } else {
        std::fs::read(file)
    }
    .map_err(|e| CliError::new(exit::BAD_INPUT, format!("{}: cannot read: {e}", file.display())))?;
    let (targets, invalid) = parse_import(&String::from_utf8_lossy(&bytes));
    for line in invalid.iter().take(20) {
        eprintln!("banshare: {}: {}", file.display(), super::output::terminal_safe(line));
    }
    if invalid.len() > 20 {
        eprintln!("banshare: {}: ... and {} more invalid lines", file.display(), invalid.len() - 20);
    }
    let mut client = connect_with(config, socket, IMPORT_TIMEOUT)?;
    let mut data = ImportData::default();
    for chunk in targets.chunks(crate::control::protocol::MAX_IMPORT) {
        let request = Request::Import {
            targets: Vec::new(),
            lines: Some(chunk.len()),
            for_secs,
            permanent,
            reason: reason.clone(),
        };
        let part: ImportData = client.call_as_with_lines(&request, chunk)?;
        data.created += part.created;
        data.extended += part.extended;
        data.unchanged += part.unchanged;
        data.refused.extend(part.refused);
        data.invalid.extend(part.invalid);
    }
    print(json, &data, || output::import(&data, invalid.len()));
    Ok(if invalid.is_empty() { exit::OK } else { exit::BAD_INPUT })
}

/// Reads an import file: the JSON of `banshare list --json` (or an array of targets), or
/// one address or CIDR per line with `#` comments. Returns the valid targets and one
/// message per invalid entry.
pub fn parse_import(text: &str) -> (Vec<String>, Vec<String>) {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return parse_import_json(trimmed);
    }
    let mut targets = Vec::new();
    let mut invalid = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or("");
        let Some(token) = content.split_whitespace().next() else { continue };
        // Sent as written once it parses (the daemon parses it again).
        match parse_target(token) {
            Ok(_) => targets.push(token.to_string()),
            Err(m) => invalid.push(format!("line {}: {m}", i + 1)),
        }
    }
    (targets, invalid)
}

fn parse_import_json(text: &str) -> (Vec<String>, Vec<String>) {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return (Vec::new(), vec![format!("not valid JSON: {e}")]),
    };
    let items = match &value {
        serde_json::Value::Array(a) => a.as_slice(),
        other => match other["decisions"].as_array() {
            Some(a) => a.as_slice(),
            None => {
                let message = "JSON without a `decisions` array (expected the output of `banshare list --json`)";
                return (Vec::new(), vec![message.into()]);
            }
        },
    };
    let mut targets = Vec::new();
    let mut invalid = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.as_str().or_else(|| item["target"].as_str()).map(parse_target) {
            Some(Ok(t)) => targets.push(t.to_string()),
            Some(Err(m)) => invalid.push(format!("item {}: {m}", i + 1)),
            None => invalid.push(format!("item {}: no `target`", i + 1)),
        }
    }
    (targets, invalid)
}

/// `banshare scan`: the config's filters (or those named, and fail2ban definitions) over
/// the files, on log time.
fn scan(
    config_path: Option<&Path>,
    (names, fail2ban): (&[String], &[String]),
    (show_matches, show_missed): (bool, bool),
    json: bool,
    files: &[PathBuf],
) -> Result<u8, CliError> {
    use crate::detect::scan::{Outcome, Scanner};
    use crate::detect::{Filter, FilterSet};

    let config = load_config(config_path)?;
    // The config's filters are compiled already; `--fail2ban-filter` definitions here.
    let wanted: Vec<&String> =
        if names.is_empty() && fail2ban.is_empty() { config.filters.keys().collect() } else { names.iter().collect() };
    let mut filters = Vec::new();
    for name in wanted {
        let filter = config.filters.get(name).ok_or_else(|| {
            let known: Vec<&str> = config.filters.keys().map(String::as_str).collect();
            CliError::new(exit::BAD_INPUT, format!("--filter {name}: no such filter (known: {})", known.join(", ")))
        })?;
        filters.push(filter.clone());
    }
    for text in fail2ban {
        let spec = fail2ban_spec(&config, text)
            .map_err(|m| CliError::new(exit::BAD_INPUT, format!("--fail2ban-filter {text}: {m}")))?;
        let filter = Filter::compile(spec)
            .map_err(|e| CliError::new(exit::BAD_INPUT, format!("--fail2ban-filter {text}: {}", e.message)))?;
        filters.push(filter);
    }
    let mut scanner = Scanner::new(FilterSet::new(filters), config.escalation, config.decisions.ipv6_prefix);
    for file in files {
        let reader: Box<dyn std::io::BufRead + Send> = if file == Path::new("-") {
            Box::new(std::io::BufReader::with_capacity(1 << 16, std::io::stdin()))
        } else {
            let f = std::fs::File::open(file)
                .map_err(|e| CliError::new(exit::BAD_INPUT, format!("{}: cannot read: {e}", file.display())))?;
            Box::new(std::io::BufReader::with_capacity(1 << 16, f))
        };
        scan_parallel(&mut scanner, reader, |line, outcome| {
            if (show_matches && outcome == Outcome::Matched) || (show_missed && outcome == Outcome::Missed) {
                emit_line(&super::output::terminal_safe(&String::from_utf8_lossy(line)));
            }
        })
        .map_err(|e| CliError::new(exit::FAILURE, format!("{}: read error: {e}", file.display())))?;
    }
    let report = scanner.finish();
    print(json, &report, || output::scan(&report));
    Ok(exit::OK)
}

/// `banshare fail2ban jails`: fail2ban's enabled jails as banshare config, on stdout.
fn fail2ban_jails(dir: &Path) -> Result<u8, CliError> {
    let converted = crate::config::jails::convert(dir).map_err(|e| CliError::new(exit::BAD_INPUT, e.to_string()))?;
    emit_line(converted.toml().trim_end());
    if converted.jails.is_empty() {
        eprintln!("banshare: no enabled jail under {}", dir.display());
    }
    Ok(exit::OK)
}

/// A filter running fail2ban's definition `text` (`sshd[mode=aggressive]`), with the
/// default window and the jail's category.
fn fail2ban_spec(config: &crate::config::Config, text: &str) -> Result<crate::detect::FilterSpec, String> {
    use crate::detect::filter::Fail2banDefinition;

    let filter: crate::detect::f2b::FilterRef = text.parse()?;
    let category = crate::fail2ban::jail_category(&filter.name, &config.fail2ban.categories).unwrap_or("other");
    let spec = crate::detect::FilterSpec::new(&filter.to_string(), category);
    Ok(crate::detect::FilterSpec { fail2ban: Some(Fail2banDefinition::on_disk(&config.fail2ban.dir, filter)), ..spec })
}

/// Lines per batch handed to a matching thread.
const SCAN_BATCH: usize = 512;

/// One batch of raw lines: the bytes, where each line ends, and lines skipped as too long.
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    ends: Vec<usize>,
    too_long: usize,
}

impl Batch {
    fn lines(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        self.ends.iter().scan(0, |start, end| {
            let range = *start..*end;
            *start = *end;
            Some(range)
        })
    }
}

/// Replays `reader` through `scanner`: one thread reads batches of lines, the cores test
/// them against the filters, and this thread records the results in order (windows and
/// sessions depend on it). `each` sees every line with its outcome.
fn scan_parallel(
    scanner: &mut crate::detect::scan::Scanner,
    mut reader: Box<dyn std::io::BufRead + Send>,
    mut each: impl FnMut(&[u8], crate::detect::scan::Outcome),
) -> std::io::Result<()> {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex, mpsc};

    use crate::detect::scan::{Read, read_line_append};

    /// Per line of a batch: its hits, and whether it held NUL bytes / invalid UTF-8.
    type LineTests = Vec<(crate::detect::filter::Hits, (bool, bool))>;
    type Tested = (usize, Batch, LineTests);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
    let filters = scanner.matcher();
    let (batch_tx, batch_rx) = mpsc::sync_channel::<(usize, Batch)>(workers);
    let batch_rx = Arc::new(Mutex::new(batch_rx));
    let (done_tx, done_rx) = mpsc::sync_channel::<Tested>(workers);
    std::thread::scope(|scope| -> std::io::Result<()> {
        let reading = scope.spawn(move || -> std::io::Result<()> {
            let mut seq = 0;
            let mut batch = Batch::default();
            loop {
                // Straight into the batch: an empty line adds nothing but its end.
                match read_line_append(&mut reader, &mut batch.data)? {
                    Read::Eof => break,
                    Read::TooLong => batch.too_long += 1,
                    Read::Line => batch.ends.push(batch.data.len()),
                }
                if batch.ends.len() + batch.too_long >= SCAN_BATCH {
                    let _ = batch_tx.send((seq, std::mem::take(&mut batch)));
                    seq += 1;
                }
            }
            let _ = batch_tx.send((seq, batch));
            Ok(())
        });
        for _ in 0..workers {
            let (rx, tx, filters) = (Arc::clone(&batch_rx), done_tx.clone(), &filters);
            scope.spawn(move || {
                let mut scratch = filters.scratch();
                loop {
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((seq, mut batch)) = next else { break };
                    let ranges: Vec<_> = batch.lines().collect();
                    // The replay's clock, read once a batch (a date without a year is
                    // read against it).
                    let now = crate::clock::Timestamp::now();
                    let tested = ranges
                        .into_iter()
                        .map(|r| {
                            let flags = crate::detect::stage::sanitize(&mut batch.data[r.clone()]);
                            (filters.test_unordered(&batch.data[r], &mut scratch, now), flags)
                        })
                        .collect();
                    if tx.send((seq, batch, tested)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        // Record in order: batches may finish out of order.
        let mut pending: BTreeMap<usize, (Batch, LineTests)> = BTreeMap::new();
        let mut next = 0;
        for (seq, batch, tested) in done_rx {
            pending.insert(seq, (batch, tested));
            while let Some((batch, tested)) = pending.remove(&next) {
                let now = crate::clock::Timestamp::now();
                for _ in 0..batch.too_long {
                    scanner.too_long();
                }
                for (range, (hits, flags)) in batch.lines().zip(tested) {
                    let line = &batch.data[range];
                    let outcome = scanner.record(line, hits, flags, now);
                    each(line, outcome);
                }
                next += 1;
            }
        }
        reading.join().unwrap_or(Ok(()))
    })
}

fn firewall_show(config_path: Option<&Path>, json: bool) -> Result<u8, CliError> {
    let config = load_config(config_path)?;
    let backends: &[&str] = match config.firewall.backend {
        Backend::Nftables => &["nftables"],
        Backend::Ipset => &["ipset"],
        Backend::Auto => &["nftables", "ipset"],
        Backend::DryRun => &[],
    };
    let mut found = Vec::new();
    for backend in backends {
        match crate::enforce::stats(backend) {
            Ok(Some(sets)) => found.extend(sets),
            Ok(None) => {}
            // With `auto`, a backend whose tools are missing simply has nothing.
            Err(FirewallError::Unavailable(_)) if backends.len() > 1 => {}
            Err(e) => return Err(CliError::new(exit::FAILURE, e.to_string())),
        }
    }
    print(json, &found, || output::sets(&found, backends.is_empty()));
    Ok(exit::OK)
}

fn firewall_teardown() -> Result<u8, CliError> {
    let removed = crate::enforce::teardown().map_err(|e| CliError::new(exit::FAILURE, e.to_string()))?;
    if removed.is_empty() {
        emit_line("nothing of banshare's was in the kernel");
    }
    for backend in removed {
        emit_line(&format!("removed banshare's {backend} rules and sets"));
    }
    Ok(exit::OK)
}

fn run(config_path: Option<&Path>, new_state: bool) -> Result<u8, CliError> {
    let config = load_config(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("banshare")
        .build()
        .map_err(|e| CliError::new(exit::FAILURE, format!("cannot start the runtime: {e}")))?;
    let empty = if new_state { crate::store::Empty::Accept } else { crate::store::Empty::Refuse };
    let result = runtime.block_on(crate::daemon::run(config, empty));
    // Blocking work still running (a request past the drain timeout) must not hold the
    // process: the store rolls back whatever it had not committed.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result.map_err(|e| CliError::new(exit::FAILURE, e.to_string()))?;
    Ok(exit::OK)
}

fn config_check(config_path: Option<&Path>) -> Result<u8, CliError> {
    let config = load_config(config_path)?;
    // What `run` refuses beyond the file itself: key files others can read or that are
    // empty (a key file that does not exist, or that this user may not read, is for the
    // daemon to find).
    let mut keys: Vec<(&str, &Path, bool)> = Vec::new();
    if config.feed.report || config.feed.pull {
        keys.push(("feed.api_key_file", &config.feed.api_key_file, true)); // BANSHARE_API_KEY may stand in
    }
    for p in &config.check.providers {
        if let Some(path) = &p.key_file {
            keys.push(("check.providers.*.key_file", path, false));
        }
    }
    for (key, path, env) in keys {
        let read = if env { crate::feed::api::load_key(path) } else { crate::feed::api::read_key_file(path) };
        match read {
            Err(e @ (crate::feed::api::KeyError::Exposed { .. } | crate::feed::api::KeyError::Empty { .. })) => {
                return Err(CliError::new(exit::BAD_INPUT, format!("{}: key `{key}`: {e}", config.origin())));
            }
            Ok(_) | Err(crate::feed::api::KeyError::Read { .. }) => {}
        }
    }
    for warning in config.warnings() {
        eprintln!("banshare: warning: {warning}");
    }
    emit_line(&format!("{}: OK", config.origin()));
    Ok(exit::OK)
}

pub(super) fn load_config(path: Option<&Path>) -> Result<Config, CliError> {
    config::load(path).map_err(|e| CliError::new(exit::BAD_INPUT, e.to_string()))
}

/// Connects to the daemon at `--socket`, or at the config's `socket`.
fn connect(config_path: &Option<PathBuf>, socket: &Option<PathBuf>) -> Result<Client, CliError> {
    connect_with(config_path, socket, CLIENT_TIMEOUT)
}

fn connect_with(
    config_path: &Option<PathBuf>,
    socket: &Option<PathBuf>,
    timeout: Duration,
) -> Result<Client, CliError> {
    let socket = match socket {
        Some(s) => s.clone(),
        None => daemon_socket(config_path.as_deref()),
    };
    Ok(Client::connect(&socket, timeout)?)
}

/// The daemon's socket from the config. A config that does not load (an edit in progress)
/// must not cut the operator off from the running daemon, which keeps its own config:
/// the socket is salvaged from the file (or the default), and the breakage said.
fn daemon_socket(config_path: Option<&Path>) -> PathBuf {
    match load_config(config_path) {
        Ok(config) => config.socket,
        Err(error) => {
            eprintln!(
                "banshare: warning: the config does not load ({}); asking the running daemon, which keeps the config it loaded",
                super::output::terminal_safe(&error.message)
            );
            crate::config::salvage(config_path).socket
        }
    }
}

/// Prints `data` as JSON (the exact text, escaped as JSON) or as the text `human`
/// renders, with control characters from outside (log lines, reasons, jail names)
/// escaped so that none reaches the terminal.
pub(super) fn print<T: Serialize>(json: bool, data: &T, human: impl FnOnce() -> String) {
    if json {
        emit(&format!("{}\n", serde_json::to_string_pretty(data).unwrap_or_default()));
    } else {
        emit(&super::output::terminal_safe(&human()));
    }
}

/// Writes `text` to stdout. A closed pipe (`banshare scan ... | head`) ends the command
/// quietly with exit 0: the reader has what it wanted.
pub(super) fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(exit::OK.into());
    }
}

/// [`emit`] with a newline.
pub(super) fn emit_line(text: &str) {
    emit(&format!("{text}\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_reads_lists_with_comments_and_reports_bad_lines() {
        let (targets, invalid) = parse_import(
            "# fail2ban export\n203.0.113.7\n\n198.51.100.0/24   # a range\nnot-an-ip\n  2001:db8::1 trailing words\n",
        );
        // As written: the daemon reads them with the same parser.
        assert_eq!(targets, ["203.0.113.7", "198.51.100.0/24", "2001:db8::1"]);
        assert_eq!(invalid.len(), 1);
        assert!(invalid[0].starts_with("line 5: `not-an-ip` is not an IP address"), "{invalid:?}");
    }

    #[test]
    fn import_reads_the_json_of_list() {
        let json = r#"{"decisions":[{"target":"203.0.113.7/32","source":"manual"},{"target":"bogus"},{"nope":1}]}"#;
        let (targets, invalid) = parse_import(json);
        assert_eq!(targets, ["203.0.113.7/32"]);
        assert_eq!(invalid.len(), 2);
        assert!(invalid[0].starts_with("item 2: `bogus`"), "{invalid:?}");
        assert_eq!(invalid[1], "item 3: no `target`");
        let (targets, _) = parse_import(r#"["203.0.113.9", "198.51.100.0/24"]"#);
        assert_eq!(targets.len(), 2);
        let (_, invalid) = parse_import("{ broken");
        assert!(invalid[0].starts_with("not valid JSON"));
    }
}
