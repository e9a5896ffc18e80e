//! The detection loops: follow the configured log sources and turn what their filters
//! find into `detect` decisions.
//!
//! One thread for all file sources: each round polls every file
//! ([`crate::tail::Tailer::poll`] is the source of truth), runs each complete line through
//! the source's filters and sliding windows, hands the bans to the engine, and saves the
//! files' checkpoints; between rounds it sleeps on inotify (the directories of the
//! followed files) for at most [`RESCAN`], so a line appended to a log is seen within
//! milliseconds and a rotation inotify missed within a second. One thread per journal
//! source, reading `journalctl --follow` ([`crate::tail::journal`]) and saving its cursor.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::Engine;
use crate::clock::Timestamp;
use crate::config::{Config, SourceKind, default_sources};
use crate::control::protocol::SourceStatus;
use crate::detect::{Ban, FilterSet, FilterSpec, Offences, Stage, Timing};
use crate::tail::journal::{Journal, JournalSpec};
use crate::tail::{Checkpoint, Tailer};

/// The longest wait before starting again a journalctl that keeps failing at once.
const JOURNAL_RETRY_MAX: Duration = Duration::from_secs(60);
/// The longest the loop sleeps without polling the files again.
const RESCAN: Duration = Duration::from_millis(500);
/// A source that reads at least [`DRIFT_LINES`] lines over this long without any filter
/// matching one is reported: the log format may have drifted away from the filters.
const DRIFT_AFTER: Duration = Duration::from_secs(3600);
const DRIFT_LINES: u64 = 1000;

/// What a round of reading found: detected bans, and fail2ban events (from fail2ban.log).
#[derive(Default)]
struct Found {
    bans: Vec<(Ban, FilterSpec)>,
    events: Vec<crate::fail2ban::Event>,
}

/// A repeat offender's earlier bans, from the store.
struct StoreOffences(Arc<Engine>);

impl Offences for StoreOffences {
    fn earlier(&mut self, addr: std::net::IpAddr) -> u32 {
        self.0.earlier_detections(addr).unwrap_or_else(|error| {
            tracing::warn!(%addr, %error, "cannot count earlier bans of {addr}: {error}; banning it as a first offender");
            0
        })
    }
}

struct Source {
    /// The detection stage of this source's lines.
    stage: Stage,
    /// This source is fail2ban's own log: its `Ban`/`Unban` lines are events, and lines
    /// older than this window (a first read, a replay) are not.
    fail2ban_log: Option<Duration>,
    fail2ban_bans: u64,
    status: SourceStatus,
    /// When a filter last matched a line (or when following began), and when the drift
    /// warning was last logged.
    last_match: Instant,
    warned: Option<Instant>,
}

impl Source {
    fn new(name: String, filter_names: &[String], config: &Config, engine: &Arc<Engine>) -> Source {
        let filters = filter_names.iter().filter_map(|name| config.filters.get(name)).cloned().collect();
        let fail2ban_log =
            filter_names.iter().any(|n| n == crate::fail2ban::LOG_FILTER).then_some(config.fail2ban.log_bantime);
        let timing = Timing::Live(Box::new(StoreOffences(Arc::clone(engine))));
        Source {
            stage: Stage::new(FilterSet::new(filters), timing, config.escalation),
            fail2ban_log,
            fail2ban_bans: 0,
            status: SourceStatus { source: name, filters: filter_names.to_vec(), ..SourceStatus::default() },
            last_match: Instant::now(),
            warned: None,
        }
    }

    /// Reads one line; bans go to `found`. A panic inside (a bug in a filter or the
    /// timestamp reader) is contained here: the line is skipped and counted, and the
    /// source goes on with the next one instead of the follower thread dying on it at
    /// every start.
    fn line(&mut self, line: &mut [u8], now: Timestamp, found: &mut Found) {
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.read_line(line, now, found)));
        if read.is_err() {
            self.status.crashed += 1;
            tracing::error!(
                source = %self.status.source,
                "a line of {} made banshare fail while reading it; skipped (please report it with the line)",
                self.status.source
            );
        }
    }

    fn read_line(&mut self, line: &mut [u8], now: Timestamp, found: &mut Found) {
        self.status.lines += 1;
        if let Some(window) = self.fail2ban_log {
            self.fail2ban_line(line, now, window, found);
            if self.stage.filters().filters.is_empty() {
                return;
            }
        }
        let step = self.stage.line(line, now);
        if step.hit {
            self.status.lines_since_match = 0;
            self.last_match = Instant::now();
        } else {
            self.status.lines_since_match += 1;
        }
        for ban in step.bans {
            let spec = self.stage.filters().filters[ban.filter].spec.clone();
            found.bans.push((ban, spec));
        }
    }

    /// A fail2ban.log line: a recent `Ban`, `Restore Ban` or `Unban` becomes an event.
    fn fail2ban_line(&mut self, line: &[u8], now: Timestamp, window: Duration, found: &mut Found) {
        let Some((event, at)) = crate::fail2ban::parse_log_line(&String::from_utf8_lossy(line)) else {
            self.status.lines_since_match += 1;
            return;
        };
        self.status.lines_since_match = 0;
        self.last_match = Instant::now();
        if at.0 < now.0 - window.as_millis() as i64 {
            return;
        }
        self.fail2ban_bans += u64::from(event.kind == crate::fail2ban::Kind::Ban);
        found.events.push(event);
    }

    /// End of a round: forget stale windows, check for drift, publish the counters.
    fn settle(&mut self, engine: &Engine, now: Timestamp) {
        self.stage.sweep(now);
        self.publish();
        self.status.warning = drift(&self.status, self.last_match, &mut self.warned);
        engine.set_source_status(&self.status);
    }

    /// The stage's counters into the status.
    fn publish(&mut self) {
        let (st, lines) = (&mut self.status, &self.stage.lines);
        (st.no_timestamp, st.not_an_address, st.match_limit) =
            (lines.no_timestamp, lines.not_an_address, lines.match_limit);
        (st.invalid_utf8, st.nul_bytes) = (lines.invalid_utf8, lines.nul_bytes);
        let per_filter = self.stage.filters().filters.iter().zip(&self.stage.per_filter);
        let (mut failures, mut bans) = (BTreeMap::new(), BTreeMap::new());
        for (filter, counts) in per_filter {
            if counts.counted > 0 {
                failures.insert(filter.spec.name.clone(), counts.counted);
            }
            if counts.bans > 0 {
                bans.insert(filter.spec.name.clone(), counts.bans);
            }
        }
        st.failures = failures.values().sum();
        st.bans = bans.values().sum::<u64>() + self.fail2ban_bans;
        (st.per_filter, st.per_filter_bans) = (failures, bans);
    }
}

/// The threads that follow the configured logs.
pub struct Followers {
    stop: Arc<AtomicBool>,
    /// Running journalctl children: killing them unblocks their readers at shutdown.
    journal_pids: Arc<Mutex<Vec<u32>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Followers {
    /// Starts one thread for the file sources and one per journal source.
    pub fn spawn(engine: Arc<Engine>, config: &Config) -> Followers {
        let stop = Arc::new(AtomicBool::new(false));
        let journal_pids = Arc::new(Mutex::new(Vec::new()));
        let configured = if config.sources.is_empty() { default_sources() } else { config.sources.clone() };
        let mut files = Vec::new();
        let mut threads = Vec::new();
        for src in configured {
            match src.kind {
                SourceKind::File(pattern) => files.push((pattern, src.filters.clone())),
                SourceKind::Journal(spec) => {
                    let (e, st, pids, cfg) =
                        (Arc::clone(&engine), Arc::clone(&stop), Arc::clone(&journal_pids), config.clone());
                    let filters = src.filters.clone();
                    threads.push(supervise("banshare-journal", Arc::clone(&engine), Arc::clone(&stop), move || {
                        let source = Source::new(format!("journal {}", spec.matches), &filters, &cfg, &e);
                        follow_journal(Arc::clone(&e), spec.clone(), source, Arc::clone(&st), Arc::clone(&pids))
                    }));
                }
            }
        }
        if !files.is_empty() {
            let (e, st, cfg) = (Arc::clone(&engine), Arc::clone(&stop), config.clone());
            threads.push(supervise("banshare-tail", Arc::clone(&engine), Arc::clone(&stop), move || {
                let sources = files
                    .iter()
                    .map(|(pattern, filters)| (Tailer::new(pattern), Source::new(pattern.clone(), filters, &cfg, &e)))
                    .collect();
                follow_files(Arc::clone(&e), sources, Arc::clone(&st))
            }));
        }
        Followers { stop, journal_pids, threads }
    }

    /// Stops every follower; each saves its checkpoints or cursor on the way out.
    pub fn stop(self) {
        // The flag is set under the pid list's lock: a journal thread registering a new
        // journalctl either sees it (and ends that child itself) or is in the list here.
        {
            let pids = self.journal_pids.lock().unwrap_or_else(|e| e.into_inner());
            self.stop.store(true, Ordering::SeqCst);
            for pid in pids.iter() {
                let pid = nix::unistd::Pid::from_raw(*pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// What the followers run: the sources and the filters they use, with the fail2ban
/// definitions those read when the config was loaded (an edited definition file is a
/// change).
#[derive(Debug, PartialEq)]
struct Plan {
    sources: Vec<crate::config::SourceConfig>,
    filters: Vec<crate::detect::Filter>,
}

impl Plan {
    fn of(config: &Config) -> Plan {
        let sources = if config.sources.is_empty() { default_sources() } else { config.sources.clone() };
        let mut names: Vec<&String> = sources.iter().flat_map(|s| &s.filters).collect();
        names.sort();
        names.dedup();
        let filters = names.into_iter().filter_map(|n| config.filters.get(n)).cloned().collect();
        Plan { sources, filters }
    }
}

/// Keeps the followers in step with the config: at each reload, when the sources, the
/// filters or a fail2ban definition they run changed, stops them (their checkpoints
/// saved) and starts them on the new config, then answers the reload. Failures counted
/// in the windows so far start over then; lines are neither lost nor read twice.
pub struct Supervisor {
    stop: Arc<AtomicBool>,
    engine: Arc<Engine>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervisor {
    pub fn spawn(engine: Arc<Engine>) -> Supervisor {
        let stop = Arc::new(AtomicBool::new(false));
        let (e, st) = (Arc::clone(&engine), Arc::clone(&stop));
        // The first followers start here, as the daemon starts; the thread takes them over.
        let config = engine.config();
        let mut plan = Plan::of(&config);
        let mut followers = Followers::spawn(Arc::clone(&engine), &config);
        let thread = std::thread::Builder::new()
            .name("banshare-follow".into())
            .spawn(move || {
                let mut seen = 0;
                while !st.load(Ordering::SeqCst) {
                    let Some(generation) = e.follow_sync.wait_requested(seen, Duration::from_millis(500)) else {
                        continue;
                    };
                    seen = generation;
                    let config = e.config();
                    let next = Plan::of(&config);
                    if next != plan {
                        followers.stop();
                        e.sources.lock().unwrap_or_else(|e| e.into_inner()).clear();
                        followers = Followers::spawn(Arc::clone(&e), &config);
                        plan = next;
                        tracing::info!("log followers restarted on the new sources and filters");
                    }
                    e.follow_sync.answer(generation);
                }
                followers.stop();
            })
            .expect("spawn the follower supervisor");
        Supervisor { stop, engine, thread: Some(thread) }
    }

    /// Stops the followers (their checkpoints saved) and returns once they have.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.engine.follow_sync.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `follow` on its own thread until it returns (at stop); when it panics (a bug),
/// counts it, logs it and starts it again after a second: the followed logs resume from
/// their checkpoints, the other threads never noticed.
fn supervise(
    name: &str,
    engine: Arc<Engine>,
    stop: Arc<AtomicBool>,
    mut follow: impl FnMut() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let thread_name = name.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            loop {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut follow)).is_ok() {
                    return;
                }
                engine.follower_restarts.fetch_add(1, Ordering::Relaxed);
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                tracing::error!(thread = %thread_name, "the log follower {thread_name} died (a bug, please report it); starting it again in 1 s");
                sleep_unless(&stop, Duration::from_secs(1));
            }
        })
        .expect("spawn a follower thread")
}

fn follow_files(engine: Arc<Engine>, mut sources: Vec<(Tailer, Source)>, stop: Arc<AtomicBool>) {
    for (tailer, s) in &sources {
        tracing::info!(source = %tailer.pattern(), filters = ?s.status.filters, "following {} with {}", tailer.pattern(), s.status.filters.join(", "));
    }
    let inotify = watch(sources.iter().map(|(t, _)| t.pattern()));
    while !stop.load(Ordering::SeqCst) {
        let mut found = Found::default();
        let mut moved: Vec<(String, Checkpoint)> = Vec::new();
        let now = Timestamp::now();
        for (tailer, src) in &mut sources {
            let saved = |p: &Path| engine.file_checkpoint(&p.to_string_lossy());
            let mut sink = |_: &Path, line: &mut Vec<u8>| src.line(line, now, &mut found);
            for (path, cp) in tailer.poll(&saved, &mut sink) {
                moved.push((path.to_string_lossy().into_owned(), cp));
            }
            src.status.too_long = tailer.counters.too_long;
            src.status.rotations = tailer.counters.rotations;
            src.settle(&engine, now);
        }
        record(&engine, found);
        if !moved.is_empty() {
            engine.save_checkpoints(&moved);
        }
        wait(inotify.as_ref());
    }
}

/// Follows one journal source until `stop`, restarting journalctl if it ends.
fn follow_journal(
    engine: Arc<Engine>,
    spec: JournalSpec,
    mut src: Source,
    stop: Arc<AtomicBool>,
    pids: Arc<Mutex<Vec<u32>>>,
) {
    let key = spec.key();
    tracing::info!(source = %src.status.source, filters = ?src.status.filters, "following the journal ({}) with {}", spec.matches, src.status.filters.join(", "));
    let mut retry = Duration::from_secs(1);
    while !stop.load(Ordering::SeqCst) {
        let mut read_any = false;
        let since = Timestamp(Timestamp::now().0 - src.stage.longest_findtime().as_millis() as i64);
        let cursor = engine.journal_cursor(&key);
        let mut journal = match Journal::spawn(&spec, cursor.as_deref(), since) {
            Ok(j) => j,
            Err(error) => {
                tracing::error!(%error, "cannot start journalctl (apt install systemd): {error}; retrying in 5 s");
                sleep_unless(&stop, Duration::from_secs(5));
                continue;
            }
        };
        {
            let mut running = pids.lock().unwrap_or_else(|e| e.into_inner());
            if stop.load(Ordering::SeqCst) {
                break; // stopping already: dropping `journal` ends the child
            }
            running.push(journal.pid());
        }
        let mut unsaved: Option<String> = None;
        let mut saved_at = Instant::now();
        while let Ok(Some(mut entry)) = journal.next_entry() {
            read_any = true;
            let now = Timestamp::now();
            let mut found = Found::default();
            src.line(&mut entry.line, now, &mut found);
            let banned = !found.bans.is_empty();
            record(&engine, found);
            unsaved = Some(entry.cursor);
            if banned || saved_at.elapsed() >= Duration::from_secs(1) {
                if let Some(c) = unsaved.take() {
                    engine.save_journal_cursor(&key, &c);
                }
                saved_at = Instant::now();
                src.settle(&engine, now);
            }
        }
        if let Some(c) = unsaved {
            engine.save_journal_cursor(&key, &c);
        }
        src.settle(&engine, Timestamp::now());
        pids.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| *p != journal.pid());
        if !stop.load(Ordering::SeqCst) {
            // One that fails at once (a journal it may not read) is retried ever more slowly.
            retry = if read_any { Duration::from_secs(1) } else { (retry * 2).min(JOURNAL_RETRY_MAX) };
            let why = journal.why_ended();
            tracing::warn!(source = %src.status.source, "journalctl for {} ended ({why}); restarting it in {} s", spec.matches, retry.as_secs());
            sleep_unless(&stop, retry);
        }
    }
}

fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let until = Instant::now() + total;
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Hands detected bans and fail2ban events to the engine.
fn record(engine: &Engine, found: Found) {
    if !found.bans.is_empty()
        && let Err(error) = engine.detected(found.bans)
    {
        tracing::error!(%error, "recording detected bans failed: {error}");
    }
    for event in found.events {
        let (ip, jail) = (event.ip, event.jail.clone());
        if let Err(error) = engine.fail2ban(event) {
            tracing::warn!(%ip, %jail, %error, "a fail2ban event from its log was not recorded: {error}");
        }
    }
}

/// The drift warning of a source, logged at most hourly: many lines, no match for long.
fn drift(status: &SourceStatus, last_match: Instant, warned: &mut Option<Instant>) -> Option<String> {
    if status.lines_since_match < DRIFT_LINES || last_match.elapsed() < DRIFT_AFTER {
        *warned = None;
        return None;
    }
    let message = format!(
        "{} lines read without a match by {} for {}: has the log format changed?",
        status.lines_since_match,
        status.filters.join(", "),
        crate::clock::human_duration(last_match.elapsed())
    );
    if warned.is_none_or(|w| w.elapsed() >= DRIFT_AFTER) {
        tracing::warn!(source = %status.source, "{message}");
        *warned = Some(Instant::now());
    }
    Some(message)
}

/// Watches the directories of the followed files: any change there wakes the loop.
fn watch<'a>(patterns: impl Iterator<Item = &'a str>) -> Option<Inotify> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
    let mut dirs: Vec<&Path> = patterns.filter_map(|p| Path::new(p).parent()).collect();
    dirs.sort();
    dirs.dedup();
    let flags = AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_CLOSE_WRITE;
    for dir in dirs {
        if let Err(error) = inotify.add_watch(dir, flags) {
            tracing::debug!(dir = %dir.display(), %error, "cannot watch; polling only");
        }
    }
    Some(inotify)
}

/// Sleeps until a file event or [`RESCAN`].
fn wait(inotify: Option<&Inotify>) {
    let Some(inotify) = inotify else {
        std::thread::sleep(RESCAN);
        return;
    };
    let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(RESCAN.as_millis() as i32).unwrap_or(PollTimeout::NONE);
    if poll(&mut fds, timeout).is_ok_and(|n| n > 0) {
        while inotify.read_events().is_ok_and(|events| !events.is_empty()) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_is_reported_after_many_unmatched_lines_for_long() {
        let mut status = SourceStatus {
            source: "/var/log/auth.log".into(),
            filters: vec!["sshd".into()],
            ..SourceStatus::default()
        };
        let mut warned = None;
        let long_ago = Instant::now() - DRIFT_AFTER - Duration::from_secs(1);
        status.lines_since_match = DRIFT_LINES - 1;
        assert_eq!(drift(&status, long_ago, &mut warned), None, "too few lines");
        status.lines_since_match = DRIFT_LINES;
        assert_eq!(drift(&status, Instant::now(), &mut warned), None, "a recent match");
        let message = drift(&status, long_ago, &mut warned).expect("drift");
        assert!(message.starts_with("1000 lines read without a match by sshd for 1h"), "{message}");
        assert!(warned.is_some(), "logged once");
    }
}
