//! Reading log lines safely, and the offline replay behind `banshare scan`.
//!
//! [`read_line_append`] reads a log line: one over [`MAX_LINE`] (the tailer's limit too)
//! is skipped and counted, never fatal. [`Scanner`] runs lines through the detection
//! [`Stage`] on log time ([`Timing::Replay`]), as the daemon would have (invalid UTF-8 and
//! NUL bytes counted there), and reports per filter what matched and what would have been
//! banned.

use std::collections::BTreeMap;
use std::io::{self, BufRead};
use std::net::IpAddr;

use serde::Serialize;

use super::filter::{FilterSet, Hits, Matcher};
use super::stage::{Escalation, Stage, Step, Timing};
pub use super::stage::{LineCounts, Outcome};
use crate::clock::Timestamp;
use crate::decision::{Source, ban_target, show_target};

/// Longest line read; longer ones are skipped.
pub const MAX_LINE: usize = 64 * 1024;

/// What [`read_line_append`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// One line, without its newline, was appended to `buf`.
    Line,
    /// A line longer than [`MAX_LINE`] was consumed and dropped.
    TooLong,
    Eof,
}

/// Reads the next line onto the end of `buf` (an over-long one is consumed to its end
/// and leaves `buf` as it was).
pub fn read_line_append(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Read> {
    let start = buf.len();
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(match (too_long, buf.len() == start) {
                (true, _) => Read::TooLong,
                (false, true) => Read::Eof,
                (false, false) => Read::Line,
            });
        }
        let (take, done) = crate::lines::take_from(chunk, buf, start, MAX_LINE, &mut too_long);
        r.consume(take);
        if done {
            return Ok(if too_long { Read::TooLong } else { Read::Line });
        }
    }
}

/// One would-be ban.
#[derive(Debug, Clone, Serialize)]
pub struct ScanBan {
    pub ip: IpAddr,
    /// What would be blocked (IPv6 widened to the configured prefix).
    pub target: String,
    pub at: Timestamp,
    pub bantime_secs: u64,
    pub failures: u32,
}

/// What one filter saw.
#[derive(Debug, Clone, Serialize)]
pub struct FilterReport {
    pub name: String,
    pub category: String,
    /// Lines this filter found a failure in.
    pub matched: u64,
    pub ignored: u64,
    /// Failures per address.
    pub failures: BTreeMap<IpAddr, u64>,
    pub bans: Vec<ScanBan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    pub lines: LineCounts,
    pub filters: Vec<FilterReport>,
}

/// The offline replay: the detection [`Stage`] on log time ([`Timing::Replay`]), and
/// what it found per filter and address.
pub struct Scanner {
    stage: Stage,
    ipv6_prefix: u8,
    reports: Vec<FilterReport>,
    /// Failures per address and filter, sorted into the reports at the end.
    failures: Vec<std::collections::HashMap<IpAddr, u64, foldhash::fast::RandomState>>,
}

impl Scanner {
    pub fn new(set: FilterSet, escalation: Escalation, ipv6_prefix: u8) -> Scanner {
        let reports: Vec<FilterReport> = set
            .filters
            .iter()
            .map(|f| FilterReport {
                name: f.spec.name.clone(),
                category: f.spec.category.clone(),
                matched: 0,
                ignored: 0,
                failures: BTreeMap::new(),
                bans: Vec::new(),
            })
            .collect();
        let failures = vec![Default::default(); reports.len()];
        Scanner { stage: Stage::new(set, Timing::Replay { ipv6_prefix }, escalation), ipv6_prefix, reports, failures }
    }

    /// Counts a line that was too long to read.
    pub fn too_long(&mut self) {
        self.stage.too_long();
    }

    /// Runs one raw line (without its newline) through the stage.
    pub fn bytes(&mut self, raw: &mut [u8]) -> Outcome {
        let step = self.stage.line(raw, Timestamp::now());
        self.report(step)
    }

    /// The filters' stateless half, for testing lines in parallel before
    /// [`Scanner::record`].
    pub fn matcher(&self) -> Matcher {
        self.stage.matcher()
    }

    /// Records a line a [`Matcher`] tested, in line order (windows and sessions depend
    /// on it), with the flags [`sanitize`](super::stage::sanitize) gave it.
    pub fn record(&mut self, line: &[u8], hits: Hits, flags: (bool, bool), now: Timestamp) -> Outcome {
        let step = self.stage.record(line, hits, flags, now);
        self.report(step)
    }

    fn report(&mut self, step: Step) -> Outcome {
        for (index, addr) in step.failures {
            *self.failures[index].entry(addr).or_insert(0) += 1;
        }
        for ban in step.bans {
            self.reports[ban.filter].bans.push(ScanBan {
                ip: ban.addr,
                target: show_target(&ban_target(ban.addr, Source::Detect, self.ipv6_prefix)),
                at: ban.at,
                bantime_secs: ban.bantime.as_secs(),
                failures: ban.failures,
            });
        }
        step.outcome
    }

    pub fn finish(mut self) -> ScanReport {
        for ((report, counts), failures) in self.reports.iter_mut().zip(&self.stage.per_filter).zip(self.failures) {
            (report.matched, report.ignored) = (counts.matched, counts.ignored);
            report.failures = failures.into_iter().collect();
        }
        ScanReport { lines: self.stage.lines, filters: self.reports }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Filter, builtin};

    #[test]
    fn long_lines_invalid_utf8_and_nul_bytes_are_counted_not_fatal() {
        let mut input = Vec::new();
        input.extend_from_slice(b"first\n");
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        input.extend_from_slice(b"\nbad \xff\xfe utf8\nnul\0byte\nlast without newline");
        let mut r = io::BufReader::with_capacity(1024, &input[..]);
        let mut buf = Vec::new();
        let mut scanner = Scanner::new(
            FilterSet::new(vec![Filter::compile(builtin::spec("sshd").unwrap()).unwrap()]),
            Escalation::default(),
            64,
        );
        let mut seen = Vec::new();
        loop {
            buf.clear();
            match read_line_append(&mut r, &mut buf).unwrap() {
                Read::Eof => break,
                Read::TooLong => scanner.too_long(),
                Read::Line => {
                    seen.push(String::from_utf8_lossy(&buf).into_owned());
                    scanner.bytes(&mut buf);
                }
            }
        }
        assert_eq!(seen, ["first", "bad \u{fffd}\u{fffd} utf8", "nul\0byte", "last without newline"]);
        let report = scanner.finish();
        assert_eq!((report.lines.read, report.lines.too_long), (5, 1));
        assert_eq!((report.lines.invalid_utf8, report.lines.nul_bytes, report.lines.missed), (1, 1, 4));
    }

    #[test]
    fn a_replay_bans_like_the_daemon_would() {
        let mut scanner = Scanner::new(
            FilterSet::new(vec![Filter::compile(builtin::spec("sshd").unwrap()).unwrap()]),
            Escalation::default(),
            64,
        );
        let mut line = |text: String| scanner.bytes(&mut text.into_bytes());
        for i in 0..12 {
            line(format!(
                "2026-11-23T10:00:{i:02}Z h sshd[{i}]: Failed password for root from 203.0.113.7 port 1 ssh2"
            ));
            line(format!(
                "2026-11-23T10:00:{i:02}Z h sshd[1{i}]: Failed password for root from 2001:db8::{i} port 1 ssh2"
            ));
        }
        line("2026-11-23T10:01:00Z h sshd[99]: Accepted password for root from 203.0.113.9 port 1 ssh2".into());
        let report = scanner.finish();
        let sshd = &report.filters[0];
        assert_eq!(sshd.matched, 24);
        assert_eq!(sshd.failures[&"203.0.113.7".parse::<IpAddr>().unwrap()], 12);
        // One ban of the IPv4 address: its later failures fall inside the ban. Each IPv6
        // address failed once: windows count per address, only the target is widened.
        assert_eq!(sshd.bans.len(), 1);
        assert_eq!(sshd.bans[0].target, "203.0.113.7");
        assert_eq!(report.lines.missed, 1);
    }
}
