//! Reading log lines safely, and the offline replay behind `banshare scan`.
//!
//! [`read_line`] is shared with the tailer: a line over [`MAX_LINE`] is skipped (and
//! counted), invalid UTF-8 is decoded lossily (and counted), NUL bytes become spaces (and
//! are counted): never fatal. [`Scanner`] runs lines through a [`FilterSet`] and a
//! [`Detector`] on log time, as the daemon would have, and reports per filter what
//! matched and what would have been banned.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead};
use std::net::IpAddr;

use serde::Serialize;

use super::filter::Hits;
use super::time::TimeParser;
use super::{Detector, Escalation, Failure, FilterSet, Hit};
use crate::clock::Timestamp;
use crate::decision::{Source, ban_target, show_target};

/// Longest line read; longer ones are skipped.
pub const MAX_LINE: usize = 64 * 1024;

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// `buf` holds one line, without its newline.
    Line,
    /// A line longer than [`MAX_LINE`] was consumed and dropped.
    TooLong,
    Eof,
}

/// Reads the next line into `buf`, consuming an over-long one to its end.
pub fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Read> {
    buf.clear();
    read_line_append(r, buf)
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

/// Per-line counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LineCounts {
    pub read: u64,
    pub matched: u64,
    pub ignored: u64,
    pub missed: u64,
    /// Matched lines without a timestamp banshare reads (the previous line's time is used).
    pub no_timestamp: u64,
    /// Matches whose `<HOST>` was not an IP address (a hostname, garbage).
    pub not_an_address: u64,
    /// Lines on which a pattern hit the match limit (skipped for that pattern).
    pub match_limit: u64,
    pub invalid_utf8: u64,
    pub nul_bytes: u64,
    pub too_long: u64,
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
    /// Lines this filter matched (some of them report an attempt already counted).
    pub matched: u64,
    pub ignored: u64,
    /// Failures counted per address.
    pub failures: BTreeMap<IpAddr, u64>,
    pub bans: Vec<ScanBan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    pub lines: LineCounts,
    pub filters: Vec<FilterReport>,
}

/// What became of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Matched,
    Ignored,
    Missed,
}

/// The offline replay engine.
pub struct Scanner {
    set: FilterSet,
    detector: Detector,
    times: TimeParser,
    now: Timestamp,
    last_time: Timestamp,
    ipv6_prefix: u8,
    /// Until when an address would be blocked: its failures meanwhile would not reach
    /// the log on a real host, so they do not feed the window.
    banned_until: HashMap<IpAddr, Timestamp>,
    lines: LineCounts,
    reports: Vec<FilterReport>,
}

impl Scanner {
    pub fn new(set: FilterSet, escalation: Escalation, ipv6_prefix: u8) -> Scanner {
        let reports = set
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
        let now = Timestamp::now();
        Scanner {
            set,
            detector: Detector::new(escalation),
            times: TimeParser::default(),
            now,
            last_time: now,
            ipv6_prefix,
            banned_until: HashMap::new(),
            lines: LineCounts::default(),
            reports,
        }
    }

    /// Counts a line that was too long to read.
    pub fn too_long(&mut self) {
        self.lines.read += 1;
        self.lines.too_long += 1;
    }

    /// Runs one raw line (without its newline) through the filters. Filters work on
    /// bytes; invalid UTF-8 is only counted (and decoded lossily where a line is kept).
    pub fn bytes(&mut self, raw: &mut [u8]) -> Outcome {
        let flags = Scanner::sanitize(raw);
        let hits = self.set.test(raw);
        self.record_raw(raw, hits, flags)
    }

    /// Runs one line through the filters.
    pub fn line(&mut self, line: &[u8]) -> Outcome {
        let hits = self.set.test(line);
        self.record(line, hits)
    }

    /// The filters, for testing lines elsewhere (in parallel) before `Scanner::record`.
    pub fn filters(&self) -> &FilterSet {
        &self.set
    }

    /// Counts a raw line's NUL bytes and invalid UTF-8 (NULs become spaces), as
    /// [`Scanner::bytes`] does, without testing it.
    pub fn sanitize(raw: &mut [u8]) -> (bool, bool) {
        let nul = raw.contains(&0);
        if nul {
            raw.iter_mut().filter(|b| **b == 0).for_each(|b| *b = b' ');
        }
        (nul, !raw.is_ascii() && std::str::from_utf8(raw).is_err())
    }

    /// Records a line whose hits were computed already (in order: windows depend on it).
    pub fn record_raw(&mut self, line: &[u8], hits: Hits, (nul, invalid): (bool, bool)) -> Outcome {
        self.lines.nul_bytes += u64::from(nul);
        self.lines.invalid_utf8 += u64::from(invalid);
        self.record(line, hits)
    }

    fn record(&mut self, line: &[u8], hits: Hits) -> Outcome {
        self.lines.read += 1;
        if hits.is_empty() {
            self.lines.missed += 1;
            return Outcome::Missed;
        }
        let (mut failure, mut ignored) = (false, false);
        for (index, hit) in hits {
            match hit {
                Hit::Ignored => {
                    ignored = true;
                    self.reports[index].ignored += 1;
                }
                Hit::NotAnAddress(_) => self.lines.not_an_address += 1,
                Hit::Limit => self.lines.match_limit += 1,
                // Settled by `FilterSet::settle` before recording.
                Hit::Prepared(_) => {}
                Hit::Failure(f) => {
                    failure = true;
                    self.failure(index, f, line);
                }
            }
        }
        // A line whose only match held no address is counted in `not_an_address` alone.
        if failure {
            self.lines.matched += 1;
            Outcome::Matched
        } else if ignored {
            self.lines.ignored += 1;
            Outcome::Ignored
        } else {
            Outcome::Missed
        }
    }

    fn failure(&mut self, index: usize, failure: Failure, line: &[u8]) {
        let addr = failure.addr;
        let at = match failure.at.or_else(|| self.times.parse(line, self.now)) {
            Some(t) => t,
            None => {
                self.lines.no_timestamp += 1;
                self.last_time
            }
        };
        self.last_time = at;
        let report = &mut self.reports[index];
        report.matched += 1;
        if !self.detector.counts(index, &failure, at) {
            return; // the same attempt as a line already counted
        }
        *report.failures.entry(addr).or_insert(0) += 1;
        if self.banned_until.get(&addr).is_some_and(|until| at < *until) {
            return;
        }
        let spec = &self.set.filters[index].spec;
        // A replay reports no evidence: skip copying the line.
        if let Some(ban) = self.detector.failure(index, spec, addr, at, "") {
            self.banned_until.insert(addr, at.plus(ban.bantime));
            report.bans.push(ScanBan {
                ip: addr,
                target: show_target(&ban_target(addr, Source::Detect, self.ipv6_prefix)),
                at,
                bantime_secs: ban.bantime.as_secs(),
                failures: ban.failures,
            });
        }
        if self.lines.matched.is_multiple_of(10_000) {
            let longest = self.set.filters.iter().map(|f| f.spec.findtime).max().unwrap_or_default();
            self.detector.sweep(at, longest);
        }
    }

    pub fn finish(self) -> ScanReport {
        ScanReport { lines: self.lines, filters: self.reports }
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
            match read_line(&mut r, &mut buf).unwrap() {
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
        for i in 0..12 {
            scanner.line(
                format!("2026-11-23T10:00:{i:02}Z h sshd[{i}]: Failed password for root from 203.0.113.7 port 1 ssh2")
                    .as_bytes(),
            );
            scanner.line(
                format!(
                    "2026-11-23T10:00:{i:02}Z h sshd[1{i}]: Failed password for root from 2001:db8::{i} port 1 ssh2"
                )
                .as_bytes(),
            );
        }
        scanner.line(b"2026-11-23T10:01:00Z h sshd[99]: Accepted password for root from 203.0.113.9 port 1 ssh2");
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
