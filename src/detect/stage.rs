//! The one detection stage: a stream's lines → failures → bans, for the daemon's
//! followers and `banshare scan` alike.
//!
//! A [`Stage`] holds one stream's [`FilterSet`] (the config's compiled filters with this
//! stream's fail2ban sessions: `<F-MLFID>` grouping, `<F-NOFAIL>` helpers,
//! `<F-MLFFORGET>`/`<F-MLFGAINED>`, `maxlines`), the sliding window per (filter,
//! address) and the line counters. `maxretry` failures within `findtime` give a ban of
//! `bantime`, grown for repeat offenders by [`Escalation`] from the earlier bans the
//! stage's [`Offences`] know of (the store for the daemon, the replay's own for `scan`).
//! The two callers differ only in their [`Timing`]. The stage is pure apart from
//! [`Offences`]: the caller reads the lines and applies the bans.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use super::filter::{Failure, FilterSet, Hit, Hits, Matcher};
use super::time::TimeParser;
use crate::clock::Timestamp;
use crate::decision::{Source, ban_target};

/// Matched lines kept as evidence per ban.
pub const EVIDENCE_LINES: usize = 10;

/// Repeat offenders: each earlier ban multiplies the next bantime by `factor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Escalation {
    pub factor: f64,
    pub max: Duration,
}

impl Default for Escalation {
    fn default() -> Self {
        Escalation { factor: 2.0, max: Duration::from_secs(7 * 24 * 3600) }
    }
}

impl Escalation {
    /// The bantime of an address banned `earlier` times before.
    pub fn bantime(&self, base: Duration, earlier: u32) -> Duration {
        if earlier == 0 {
            return base;
        }
        let scaled = base.as_secs_f64() * self.factor.powi(earlier.min(64) as i32);
        Duration::from_secs_f64(scaled.min(self.max.as_secs_f64())).max(base)
    }
}

/// How often an address was banned before, for [`Escalation`].
pub trait Offences: Send {
    /// The earlier bans of what banning `addr` blocks (IPv6 widened to the prefix).
    fn earlier(&mut self, addr: IpAddr) -> u32;
}

/// How a stage reads time and what a ban does to the stream.
pub enum Timing {
    /// The daemon, reading lines as they are written: a line's time is capped at the
    /// clock, a line without one is taken as read now, and a failure older than its
    /// filter's `findtime` (a log read again after a restart) no longer counts. Lines
    /// are kept as evidence. A ban is the kernel's business: the stage goes on counting.
    Live(Box<dyn Offences>),
    /// `banshare scan`, replaying a log on its own time: a line without a time takes
    /// the previous line's; a banned target (IPv6 widened to `ipv6_prefix`) is taken as
    /// blocked for its bantime, so its failures meanwhile, which a protected host would
    /// not have logged, feed no window. No evidence is kept.
    Replay { ipv6_prefix: u8 },
}

/// A ban the stage decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Ban {
    pub addr: IpAddr,
    /// Index of the filter in the stage's [`FilterSet`].
    pub filter: usize,
    pub at: Timestamp,
    /// The filter's bantime, escalated for a repeat offender.
    pub bantime: Duration,
    /// Failures in the window when it triggered.
    pub failures: u32,
    pub evidence: Vec<String>,
}

/// Per-line counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LineCounts {
    pub read: u64,
    pub matched: u64,
    pub ignored: u64,
    pub missed: u64,
    /// Matched lines without a timestamp banshare reads (see [`Timing`] for the time used).
    pub no_timestamp: u64,
    /// Matches whose `<HOST>` was not an IP address (a hostname, garbage).
    pub not_an_address: u64,
    /// Lines on which a pattern hit the match limit (skipped for that pattern).
    pub match_limit: u64,
    pub invalid_utf8: u64,
    pub nul_bytes: u64,
    pub too_long: u64,
}

/// Per-filter counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterCounts {
    /// Lines with a failure of this filter.
    pub matched: u64,
    /// Lines a failregex matched but an ignoreregex too.
    pub ignored: u64,
    /// Failures that fed a window (see [`Timing`] for those that do not).
    pub counted: u64,
    pub bans: u64,
}

/// What became of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A filter found a failure.
    Matched,
    /// Only ignoreregexes had the last word.
    Ignored,
    /// No failure (a match without an address included).
    Missed,
}

/// What the stage made of one line.
#[derive(Debug)]
pub struct Step {
    pub outcome: Outcome,
    /// Some filter had something to say (a failure, an ignored match, a host that was no
    /// address): the log's format still meets the filters.
    pub hit: bool,
    /// Every failure of the line: filter index and address.
    pub failures: smallvec::SmallVec<[(usize, IpAddr); 2]>,
    pub bans: Vec<Ban>,
}

#[derive(Debug, Default)]
struct Window {
    times: VecDeque<Timestamp>,
    evidence: VecDeque<String>,
}

/// Windows are swept after this many failures (and by [`Stage::sweep`]).
const SWEEP_EVERY: u64 = 10_000;

/// One stream's detection: filters, windows, counters.
pub struct Stage {
    set: FilterSet,
    timing: Timing,
    escalation: Escalation,
    times: TimeParser,
    windows: HashMap<(usize, IpAddr), Window, foldhash::quality::RandomState>,
    /// The last failure's time (a replayed line without one takes it).
    last_time: Option<Timestamp>,
    /// A replay's bans so far per target, and until when each target is blocked.
    replay_bans: HashMap<ipnet::IpNet, (u32, Timestamp), foldhash::quality::RandomState>,
    since_sweep: u64,
    pub lines: LineCounts,
    /// Per filter of the set, in its order.
    pub per_filter: Vec<FilterCounts>,
}

impl Stage {
    pub fn new(set: FilterSet, timing: Timing, escalation: Escalation) -> Stage {
        let per_filter = vec![FilterCounts::default(); set.filters.len()];
        Stage {
            set,
            timing,
            escalation,
            times: TimeParser::default(),
            windows: HashMap::default(),
            last_time: None,
            replay_bans: HashMap::default(),
            since_sweep: 0,
            lines: LineCounts::default(),
            per_filter,
        }
    }

    pub fn filters(&self) -> &FilterSet {
        &self.set
    }

    /// The stateless half of the filters, for matching threads ([`Stage::record`]).
    pub fn matcher(&self) -> Matcher {
        self.set.matcher()
    }

    /// The longest window of the stream's filters: older lines no longer count.
    pub fn longest_findtime(&self) -> Duration {
        self.set.filters.iter().map(|f| f.spec.findtime).max().unwrap_or_default()
    }

    /// Counts a line that was too long to read.
    pub fn too_long(&mut self) {
        self.lines.read += 1;
        self.lines.too_long += 1;
    }

    /// Runs the stream's next raw line (without its newline), read at `now`.
    pub fn line(&mut self, raw: &mut [u8], now: Timestamp) -> Step {
        let flags = sanitize(raw);
        let hits = self.set.test(raw, now);
        self.decide(raw, hits, flags, now)
    }

    /// Finishes a line a [`Matcher`] tested (lines in stream order), with the flags
    /// [`sanitize`] returned for it.
    pub fn record(&mut self, line: &[u8], hits: Hits, flags: (bool, bool), now: Timestamp) -> Step {
        let hits = self.set.settle(line, hits, now);
        self.decide(line, hits, flags, now)
    }

    fn decide(&mut self, line: &[u8], hits: Hits, (nul, invalid): (bool, bool), now: Timestamp) -> Step {
        self.lines.read += 1;
        self.lines.nul_bytes += u64::from(nul);
        self.lines.invalid_utf8 += u64::from(invalid);
        let mut step =
            Step { outcome: Outcome::Missed, hit: !hits.is_empty(), failures: Default::default(), bans: Vec::new() };
        let mut ignored = false;
        for (index, hit) in hits {
            match hit {
                Hit::Failure(f) => {
                    step.failures.push((index, f.addr));
                    self.per_filter[index].matched += 1;
                    if let Some(ban) = self.failure(index, f, line, now) {
                        step.bans.push(ban);
                    }
                }
                Hit::Ignored => {
                    ignored = true;
                    self.per_filter[index].ignored += 1;
                }
                Hit::NotAnAddress(_) => self.lines.not_an_address += 1,
                Hit::Limit => self.lines.match_limit += 1,
                // `FilterSet::settle` finished these.
                Hit::Prepared(_) => {}
            }
        }
        step.outcome = match (step.failures.is_empty(), ignored) {
            (false, _) => Outcome::Matched,
            (true, true) => Outcome::Ignored,
            (true, false) => Outcome::Missed,
        };
        match step.outcome {
            Outcome::Matched => self.lines.matched += 1,
            Outcome::Ignored => self.lines.ignored += 1,
            Outcome::Missed => self.lines.missed += 1,
        }
        step
    }

    /// The time a failure happened at, by the stage's [`Timing`].
    fn time_of(&mut self, failure: &Failure, line: &[u8], now: Timestamp) -> Timestamp {
        let read = failure.at.or_else(|| self.times.parse(line, now));
        if read.is_none() {
            self.lines.no_timestamp += 1;
        }
        let at = match (&self.timing, read) {
            (Timing::Live(_), Some(t)) => t.min(now),
            (Timing::Live(_), None) => now,
            (Timing::Replay { .. }, t) => t.or(self.last_time).unwrap_or(now),
        };
        self.last_time = Some(at);
        at
    }

    /// Feeds a failure to its window; the ban when the window fills.
    fn failure(&mut self, index: usize, failure: Failure, line: &[u8], now: Timestamp) -> Option<Ban> {
        let at = self.time_of(&failure, line, now);
        let addr = failure.addr;
        let spec = &self.set.filters[index].spec;
        let findtime = spec.findtime.as_millis() as i64;
        let target = match &self.timing {
            // A line read again after a restart, older than the window, no longer counts.
            Timing::Live(_) if at.0 < now.0 - findtime => return None,
            Timing::Live(_) => None,
            Timing::Replay { ipv6_prefix } => {
                let target = ban_target(addr, Source::Detect, *ipv6_prefix);
                if self.replay_bans.get(&target).is_some_and(|(_, until)| at < *until) {
                    return None;
                }
                Some(target)
            }
        };
        self.per_filter[index].counted += 1;
        let window = self.windows.entry((index, addr)).or_default();
        while window.times.front().is_some_and(|t| t.0 <= at.0 - findtime) {
            window.times.pop_front();
        }
        window.times.push_back(at);
        if let Timing::Live(_) = self.timing {
            if window.evidence.len() == EVIDENCE_LINES {
                window.evidence.pop_front();
            }
            window.evidence.push_back(String::from_utf8_lossy(line).into_owned());
        }
        let ban = if (window.times.len() as u32) < spec.maxretry {
            None
        } else {
            let window = self.windows.remove(&(index, addr)).unwrap_or_default();
            let earlier = match &mut self.timing {
                Timing::Live(offences) => offences.earlier(addr),
                Timing::Replay { .. } => target.and_then(|t| self.replay_bans.get(&t)).map_or(0, |(n, _)| *n),
            };
            let bantime = self.escalation.bantime(spec.bantime, earlier);
            if let Some(target) = target {
                self.replay_bans.insert(target, (earlier + 1, at.plus(bantime)));
            }
            self.per_filter[index].bans += 1;
            Some(Ban {
                addr,
                filter: index,
                at,
                bantime,
                failures: window.times.len() as u32,
                evidence: window.evidence.into(),
            })
        };
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.sweep(at);
        }
        ban
    }

    /// Drops windows whose newest failure is older than the longest `findtime` before
    /// `now`, so memory follows the active attackers, not every address ever seen.
    pub fn sweep(&mut self, now: Timestamp) {
        self.since_sweep = 0;
        let oldest = now.0 - self.longest_findtime().as_millis() as i64;
        self.windows.retain(|_, w| w.times.back().is_some_and(|t| t.0 > oldest));
    }
}

/// Counts a raw line's NUL bytes (which become spaces) and invalid UTF-8 (decoded
/// lossily where the line is read as text): never fatal.
pub fn sanitize(raw: &mut [u8]) -> (bool, bool) {
    let nul = raw.contains(&0);
    if nul {
        raw.iter_mut().filter(|b| **b == 0).for_each(|b| *b = b' ');
    }
    (nul, !raw.is_ascii() && std::str::from_utf8(raw).is_err())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Filter, FilterSpec, builtin};

    /// The clock of the tests' streams (2026-11-18).
    pub(super) const NOW: Timestamp = Timestamp(1_795_000_000_000);

    pub(super) fn replay(filters: Vec<Filter>) -> Stage {
        Stage::new(FilterSet::new(filters), Timing::Replay { ipv6_prefix: 64 }, Escalation::default())
    }

    /// A config's own filter (no date of its own: the stage's time reader dates lines).
    fn custom(maxretry: u32) -> Filter {
        let spec = FilterSpec {
            failregex: vec![r"login failed from <HOST>".into()],
            maxretry,
            ..FilterSpec::new("app", "web_bruteforce")
        };
        Filter::compile(spec).unwrap()
    }

    /// Earlier bans as the store would count them: per address, from a fixed table.
    struct Table(HashMap<IpAddr, u32>);

    impl Offences for Table {
        fn earlier(&mut self, addr: IpAddr) -> u32 {
            self.0.get(&addr).copied().unwrap_or(0)
        }
    }

    fn live(filters: Vec<Filter>, earlier: &[(&str, u32)]) -> Stage {
        let table = Table(earlier.iter().map(|(a, n)| (a.parse().unwrap(), *n)).collect());
        Stage::new(FilterSet::new(filters), Timing::Live(Box::new(table)), Escalation::default())
    }

    fn at(secs: i64) -> String {
        Timestamp(NOW.0 - 300_000 + secs * 1000).to_string()
    }

    fn run(stage: &mut Stage, line: &str) -> Step {
        stage.line(&mut line.as_bytes().to_vec(), NOW)
    }

    /// Earlier bans as a store counts them: each ban asked about is one more.
    struct Counting(HashMap<ipnet::IpNet, u32>);

    impl Offences for Counting {
        fn earlier(&mut self, addr: IpAddr) -> u32 {
            let n = self.0.entry(ban_target(addr, Source::Detect, 64)).or_insert(0);
            *n += 1;
            *n - 1
        }
    }

    /// The windows, blocks and escalation against a model written from the rules alone:
    /// random failures of a few addresses (IPv4, and IPv6 sharing /64s) at random gaps,
    /// random thresholds; the bans compared after every line. A replay reads lines on
    /// their own time and blocks a banned target; live, a line is read up to 5 s after it
    /// was written (some much later: read again after a restart), and is counted only
    /// within its window, with no block. Seeded (`BANSHARE_MODEL_SEED`), so a failure
    /// replays.
    fn windows_match_a_model_of_the_rules(live: bool) {
        let first: u64 = std::env::var("BANSHARE_MODEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
        let pool: Vec<IpAddr> =
            ["203.0.113.1", "203.0.113.2", "198.51.100.3", "2001:db8::1", "2001:db8::2", "2001:db8:1::1"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect();
        for seed in first..first + 20 {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let maxretry = 1 + next(6) as u32;
            // Windows and bans from a second to years, at the edges too.
            let findtime = Duration::from_secs(match next(4) {
                0 => 1,
                1 => 2 * 86_400,
                _ => 1 + next(900),
            });
            let bantime = Duration::from_secs(match next(6) {
                0 => 1,
                1 => 2 * 86_400,
                2 => 400 * 86_400,
                3 => 10 * 365 * 86_400,
                _ => 1 + next(3600),
            });
            let spec = FilterSpec {
                failregex: vec![r"login failed from <HOST>".into()],
                maxretry,
                findtime,
                bantime,
                ..FilterSpec::new("app", "other")
            };
            let set = FilterSet::new(vec![Filter::compile(spec).unwrap()]);
            let timing = if live {
                Timing::Live(Box::new(Counting(HashMap::new())))
            } else {
                Timing::Replay { ipv6_prefix: 64 }
            };
            let mut stage = Stage::new(set, timing, Escalation::default());
            let escalation = Escalation::default();
            // The model: failure times per address, and per target its bans and block.
            let mut times: HashMap<IpAddr, Vec<i64>> = HashMap::new();
            let mut bans: HashMap<ipnet::IpNet, (u32, i64)> = HashMap::new();
            let mut t = 1_700_000_000i64;
            for step in 0..2000 {
                t += match next(10) {
                    0 => next(4000) as i64,
                    _ => next(60) as i64,
                };
                // Live, some lines are read late: far past their window, or at its edge.
                let window = findtime.as_secs() as i64;
                let now = match next(20) {
                    0 if live => t + next(3 * window as u64) as i64,
                    1 if live => t + window - 1 + next(3) as i64,
                    _ if live => t + next(6) as i64,
                    _ => t,
                };
                let addr = pool[next(pool.len() as u64) as usize];
                let line = format!("{} login failed from {addr}", Timestamp(t * 1000));
                let got = stage.line(&mut line.into_bytes(), Timestamp(now * 1000)).bans;
                let target = ban_target(addr, Source::Detect, 64);
                let counts =
                    if live { t >= now - window } else { bans.get(&target).is_none_or(|(_, until)| t >= *until) };
                let mut want = None;
                if counts {
                    let kept = times.entry(addr).or_default();
                    kept.retain(|w| *w > t - window);
                    kept.push(t);
                    if kept.len() as u32 >= maxretry {
                        let failures = kept.len() as u32;
                        kept.clear();
                        let (earlier, until) = bans.entry(target).or_insert((0, 0));
                        let length = escalation.bantime(bantime, *earlier);
                        (*earlier, *until) = (*earlier + 1, t + length.as_secs() as i64);
                        want = Some((addr, Timestamp(t * 1000), length, failures));
                    }
                }
                let got: Vec<_> = got.iter().map(|b| (b.addr, b.at, b.bantime, b.failures)).collect();
                assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "live {live}, seed {seed}, line {step}");
            }
        }
    }

    #[test]
    fn replay_windows_match_a_model_of_the_rules() {
        windows_match_a_model_of_the_rules(false);
    }

    #[test]
    fn live_windows_match_a_model_of_the_rules() {
        windows_match_a_model_of_the_rules(true);
    }

    #[test]
    fn maxretry_within_findtime_bans_and_a_replay_escalates_repeat_offenders() {
        let mut s = replay(vec![Filter::compile(builtin::spec("sshd").unwrap()).unwrap()]);
        let line = |t: i64, pid: i64| {
            format!("{} h sshd[{pid}]: Failed password for root from 203.0.113.7 port 1 ssh2", at(t))
        };
        // Four failures, then a gap longer than findtime (10 min): the window restarts.
        for i in 0..4 {
            assert!(run(&mut s, &line(i, i)).bans.is_empty());
        }
        for i in 0..4 {
            assert!(run(&mut s, &line(700 + i, 10 + i)).bans.is_empty(), "old failures left the window");
        }
        let ban = run(&mut s, &line(704, 20)).bans.pop().expect("five within ten minutes");
        assert_eq!((ban.failures, ban.bantime), (5, Duration::from_secs(3600)));
        assert!(ban.evidence.is_empty(), "a replay keeps no evidence");
        // Blocked for an hour: failures meanwhile feed no window.
        for i in 0..10 {
            assert!(run(&mut s, &line(800 + i, 30 + i)).bans.is_empty(), "blocked");
        }
        assert_eq!(s.per_filter[0].counted, 9, "the blocked address's failures are not counted");
        for i in 0..5 {
            let bans = run(&mut s, &line(704 + 3600 + i, 40 + i)).bans;
            assert_eq!(bans.len(), usize::from(i == 4));
            if let Some(b) = bans.first() {
                assert_eq!(b.bantime, Duration::from_secs(7200), "a repeat offender's ban doubles");
            }
        }
        let e = Escalation::default();
        assert_eq!(e.bantime(Duration::from_secs(3600), 20), Duration::from_secs(7 * 24 * 3600), "capped");
    }

    #[test]
    fn live_bans_escalate_from_the_offences_and_keep_the_last_ten_lines_as_evidence() {
        let mut s = live(vec![custom(12)], &[("203.0.113.7", 2)]);
        let mut bans = Vec::new();
        for i in 0..12 {
            bans.extend(run(&mut s, &format!("{} login failed from 203.0.113.7 #{i}", at(i))).bans);
        }
        let [ban] = &bans[..] else { panic!("one ban: {bans:?}") };
        assert_eq!(ban.bantime, Duration::from_secs(4 * 3600), "two earlier bans: 1 h x 2 x 2");
        assert_eq!(ban.evidence.len(), EVIDENCE_LINES);
        assert!(ban.evidence[0].ends_with("#2") && ban.evidence[9].ends_with("#11"), "{:?}", ban.evidence);
        // Live: the stage goes on counting after a ban (blocking is the kernel's).
        for i in 12..24 {
            bans.extend(run(&mut s, &format!("{} login failed from 203.0.113.7", at(i))).bans);
        }
        assert_eq!(bans.len(), 2);
    }

    #[test]
    fn live_time_is_capped_at_the_clock_and_old_lines_no_longer_count() {
        let mut s = live(vec![custom(2)], &[]);
        // Read again after a restart: an hour old, past the 10 min window.
        let old = Timestamp(NOW.0 - 3_600_000);
        for _ in 0..3 {
            assert!(run(&mut s, &format!("{old} login failed from 203.0.113.8")).bans.is_empty());
        }
        assert_eq!((s.per_filter[0].matched, s.per_filter[0].counted), (3, 0));
        // A line dated in the future counts as now; a line without a date too.
        let future = Timestamp(NOW.0 + 86_400_000).to_string();
        assert!(run(&mut s, &format!("{future} login failed from 203.0.113.8")).bans.is_empty());
        let ban = run(&mut s, "login failed from 203.0.113.8").bans.pop().expect("two failures now");
        assert_eq!((ban.at, s.lines.no_timestamp), (NOW, 1));
    }

    #[test]
    fn a_replay_dates_an_undated_line_by_the_previous_one_and_blocks_the_ipv6_prefix() {
        let mut s = replay(vec![custom(2)]);
        run(&mut s, &format!("{} login failed from 2001:db8::1", at(0)));
        let ban = run(&mut s, "login failed from 2001:db8::1").bans.pop().expect("ban");
        assert_eq!(ban.at.0, NOW.0 - 300_000, "the previous line's time");
        // Another address of the same /64 is blocked with it; another /64 is not.
        run(&mut s, &format!("{} login failed from 2001:db8::2", at(1)));
        assert!(run(&mut s, &format!("{} login failed from 2001:db8::2", at(2))).bans.is_empty());
        run(&mut s, &format!("{} login failed from 2001:db8:1::2", at(3)));
        assert_eq!(run(&mut s, &format!("{} login failed from 2001:db8:1::2", at(4))).bans.len(), 1);
        assert_eq!((s.lines.read, s.lines.matched, s.lines.no_timestamp), (6, 6, 1));
    }
}

#[cfg(test)]
mod session_tests {
    use super::tests::{NOW, replay};
    use super::*;
    use crate::detect::{Filter, builtin};

    /// One sshd session as Debian logs three wrong passwords and the close.
    const SESSION: &[&str] = &[
        "Nov 23 10:00:01 h sshd[77]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=203.0.113.7  user=root",
        "Nov 23 10:00:03 h sshd[77]: Failed password for root from 203.0.113.7 port 5000 ssh2",
        "Nov 23 10:00:05 h sshd[77]: Failed password for root from 203.0.113.7 port 5000 ssh2",
        "Nov 23 10:00:07 h sshd[77]: Failed password for root from 203.0.113.7 port 5000 ssh2",
        "Nov 23 10:00:08 h sshd[77]: Connection closed by authenticating user root 203.0.113.7 port 5000 [preauth]",
        // A publickey scanner: nothing but the close of its session.
        "Nov 23 10:00:09 h sshd[78]: Connection closed by authenticating user root 203.0.113.8 port 5001 [preauth]",
    ];

    /// The failures each address is charged with when `lines` run through the built-in
    /// sshd filter in `mode`.
    fn charged(mode: Option<&str>, lines: &[&str]) -> HashMap<IpAddr, u32> {
        let spec = builtin::get("sshd").unwrap().with_mode(mode).unwrap();
        let mut stage = replay(vec![Filter::compile(spec).unwrap()]);
        let mut counted: HashMap<IpAddr, u32> = HashMap::new();
        for line in lines {
            for (_, addr) in stage.line(&mut line.as_bytes().to_vec(), NOW).failures {
                *counted.entry(addr).or_default() += 1;
            }
        }
        counted
    }

    #[test]
    fn a_session_counts_each_attempt_once() {
        let (a, b): (IpAddr, IpAddr) = ("203.0.113.7".parse().unwrap(), "203.0.113.8".parse().unwrap());
        let normal = charged(None, SESSION);
        assert_eq!(normal.get(&a), Some(&3), "three passwords, three failures (PAM's line and the close add none)");
        assert_eq!(normal.get(&b), None, "a close before authentication is no failure in normal mode");
        let aggressive = charged(Some("aggressive"), SESSION);
        assert_eq!(aggressive.get(&a), Some(&4), "aggressive mode counts the close before authentication too");
        assert_eq!(aggressive.get(&b), Some(&1), "a silent scanner counts once in aggressive mode");
    }

    #[test]
    fn a_reused_pid_charges_the_new_connections_address_not_the_old_one() {
        // The first connection's close was not logged (rotated away, rate-limited).
        let lines = [
            "Nov 23 10:00:01 h sshd[90]: Failed password for root from 203.0.113.20 port 5000 ssh2",
            "Nov 23 10:05:01 h sshd[90]: Failed password for root from 2001:db8::20 port 5000 ssh2",
            "Nov 23 10:05:02 h sshd[90]: Disconnecting: Too many authentication failures for root [preauth]",
        ];
        let charged = charged(None, &lines);
        assert_eq!(charged.get(&"203.0.113.20".parse().unwrap()), Some(&1));
        assert_eq!(charged.get(&"2001:db8::20".parse().unwrap()), Some(&2), "{charged:?}");
    }

    #[test]
    fn a_login_after_failed_keys_is_no_failure_but_keys_that_never_log_in_are() {
        let agent = [
            "Nov 23 10:00:01 h sshd[80]: Failed publickey for git from 203.0.113.9 port 5000 ssh2: RSA SHA256:a",
            "Nov 23 10:00:01 h sshd[80]: Failed publickey for git from 203.0.113.9 port 5000 ssh2: ED25519 SHA256:b",
            "Nov 23 10:00:01 h sshd[80]: Accepted publickey for git from 203.0.113.9 port 5000 ssh2: ED25519 SHA256:c",
        ];
        assert!(charged(None, &agent).is_empty(), "an agent offering several keys is no attacker");
        let scanner = [
            "Nov 23 10:00:01 h sshd[81]: Failed publickey for root from 203.0.113.10 port 5000 ssh2: RSA SHA256:a",
            "Nov 23 10:00:02 h sshd[81]: Disconnecting: Too many authentication failures for root [preauth]",
        ];
        assert_eq!(charged(None, &scanner).get(&"203.0.113.10".parse().unwrap()), Some(&1));
    }
}
