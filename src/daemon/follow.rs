//! The detection loop: follows the configured log sources and turns what their filters
//! find into `detect` decisions.
//!
//! One thread. Each round polls every file source ([`crate::tail::Tailer::poll`] is the
//! source of truth), runs each complete line through the source's filters and sliding
//! windows, hands the bans to the engine, and saves the files' checkpoints. Between
//! rounds it sleeps on inotify (the directories of the followed files) for at most
//! [`RESCAN`], so a line appended to a log is seen within milliseconds and a rotation
//! inotify missed within a second.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde::{Deserialize, Serialize};

use super::Engine;
use crate::clock::Timestamp;
use crate::config::{Config, SourceKind, default_sources};
use crate::detect::time::TimeParser;
use crate::detect::{Ban, Detector, Filter, FilterSet, FilterSpec, Hit};
use crate::tail::{Checkpoint, Tailer};

/// The longest the loop sleeps without polling the files again.
const RESCAN: Duration = Duration::from_millis(500);
/// A source that reads at least [`DRIFT_LINES`] lines over this long without any filter
/// matching one is reported: the log format may have drifted away from the filters.
const DRIFT_AFTER: Duration = Duration::from_secs(3600);
const DRIFT_LINES: u64 = 1000;

/// Per-source counters, shown by `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceStatus {
    pub source: String,
    pub filters: Vec<String>,
    pub lines: u64,
    pub failures: u64,
    pub bans: u64,
    pub not_an_address: u64,
    pub too_long: u64,
    pub rotations: u64,
    /// Lines read since a filter last matched one.
    pub lines_since_match: u64,
    /// Set while the source reads lines that no filter matches for a long time.
    pub warning: Option<String>,
}

struct Source {
    tailer: Tailer,
    filters: FilterSet,
    detector: Detector,
    status: SourceStatus,
    /// When a filter last matched a line (or when following began), and when the drift
    /// warning was last logged.
    last_match: Instant,
    warned: Option<Instant>,
}

/// Builds the file sources of `config` (the built-in defaults when it names none).
fn sources(config: &Config) -> Vec<Source> {
    let configured = if config.sources.is_empty() { default_sources() } else { config.sources.clone() };
    let mut out = Vec::new();
    for src in configured {
        let pattern = match &src.kind {
            SourceKind::File(p) => p.clone(),
            SourceKind::Journal(m) => {
                tracing::warn!(journal = %m, "journald sources are not supported yet; this source is not followed");
                continue;
            }
        };
        let filters: Vec<Filter> = src
            .filters
            .iter()
            .filter_map(|name| config.filters.get(name))
            .filter_map(|spec| Filter::compile(spec.clone()).ok())
            .collect();
        out.push(Source {
            tailer: Tailer::new(&pattern),
            filters: FilterSet::new(filters),
            detector: Detector::new(config.escalation),
            status: SourceStatus { source: pattern, filters: src.filters.clone(), ..SourceStatus::default() },
            last_match: Instant::now(),
            warned: None,
        });
    }
    out
}

/// Starts the detection thread; it stops when `stop` is set.
pub fn spawn(engine: Arc<Engine>, config: &Config, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let sources = sources(config);
    std::thread::Builder::new()
        .name("banshare-tail".into())
        .spawn(move || run(engine, sources, stop))
        .expect("spawn the detection thread")
}

fn run(engine: Arc<Engine>, mut sources: Vec<Source>, stop: Arc<AtomicBool>) {
    for s in &sources {
        tracing::info!(source = %s.status.source, filters = ?s.status.filters, "following");
    }
    let inotify = watch(&sources);
    let mut times = TimeParser::default();
    while !stop.load(Ordering::SeqCst) {
        let mut bans: Vec<(Ban, FilterSpec)> = Vec::new();
        let mut moved: Vec<(String, Checkpoint)> = Vec::new();
        let now = Timestamp::now();
        for src in &mut sources {
            let saved = |p: &Path| engine.file_checkpoint(&p.to_string_lossy());
            let Source { tailer, filters, detector, status, last_match, warned } = src;
            let mut sink = |_: &Path, line: &mut Vec<u8>| {
                status.lines += 1;
                let hits = filters.test(line);
                if hits.is_empty() {
                    status.lines_since_match += 1;
                } else {
                    status.lines_since_match = 0;
                    *last_match = Instant::now();
                }
                for (index, hit) in hits {
                    let failure = match hit {
                        Hit::Failure(f) => f,
                        Hit::NotAnAddress(_) => {
                            status.not_an_address += 1;
                            continue;
                        }
                        Hit::Ignored => continue,
                    };
                    let spec = &filters.filters[index].spec;
                    let at = times.parse(line, now).unwrap_or(now).min(now);
                    // Replayed lines older than the window can no longer count.
                    if at.0 < now.0 - spec.findtime.as_millis() as i64 || !detector.counts(index, &failure, at) {
                        continue;
                    }
                    status.failures += 1;
                    if let Some(ban) = detector.failure(index, spec, failure.addr, at, &String::from_utf8_lossy(line)) {
                        status.bans += 1;
                        bans.push((ban, spec.clone()));
                    }
                }
            };
            for (path, cp) in tailer.poll(&saved, &mut sink) {
                moved.push((path.to_string_lossy().into_owned(), cp));
            }
            status.too_long = tailer.counters.too_long;
            status.rotations = tailer.counters.rotations;
            let longest = filters.filters.iter().map(|f| f.spec.findtime).max().unwrap_or_default();
            detector.sweep(now, longest);
            status.warning = drift(status, *last_match, warned);
        }
        if !bans.is_empty()
            && let Err(error) = engine.detected(bans)
        {
            tracing::error!(%error, "recording detected bans failed");
        }
        if !moved.is_empty() {
            engine.save_checkpoints(&moved);
        }
        engine.set_source_status(sources.iter().map(|s| s.status.clone()).collect());
        wait(inotify.as_ref());
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
fn watch(sources: &[Source]) -> Option<Inotify> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
    let mut dirs: Vec<&Path> = sources.iter().filter_map(|s| Path::new(s.tailer.pattern()).parent()).collect();
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
