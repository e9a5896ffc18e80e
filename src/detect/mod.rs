//! Detection: log lines → failures → bans, as fail2ban does it.
//!
//! [`filter`] compiles `failregex`/`ignoreregex` with `<HOST>`; [`builtin`] holds the
//! built-in filters; [`time`] reads the timestamps of matched lines. The [`Detector`]
//! keeps a sliding window per (filter, address): `maxretry` failures within `findtime`
//! give a ban of `bantime`, multiplied by `factor` for each earlier ban of the address
//! (capped at `max`). It is pure (no I/O): the offline `banshare scan` and the daemon's
//! tailer feed it the same way.

pub mod builtin;
pub mod f2b;
pub mod filter;
pub mod scan;
pub mod time;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use crate::clock::Timestamp;
pub use filter::{Failure, Filter, FilterError, FilterSet, FilterSpec, Hit};

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

/// A ban the window decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Ban {
    pub addr: IpAddr,
    /// Index of the filter in its [`FilterSet`].
    pub filter: usize,
    pub at: Timestamp,
    pub bantime: Duration,
    /// Failures in the window when it triggered.
    pub failures: u32,
    pub evidence: Vec<String>,
}

#[derive(Debug, Default)]
struct Window {
    times: VecDeque<Timestamp>,
    evidence: VecDeque<String>,
}

/// What a session (an sshd pid) has counted so far.
#[derive(Debug, Clone, Copy)]
struct Session {
    at: Timestamp,
    /// The last failure counted for the session came from a helper line: a primary line
    /// right after it reports the same attempt.
    helper_pending: bool,
}

/// Sliding windows and offence counts.
#[derive(Debug, Default)]
pub struct Detector {
    windows: HashMap<(usize, IpAddr), Window>,
    /// Sessions with a counted failure, per filter (pruned by [`Detector::sweep`]).
    sessions: HashMap<(usize, u64), Session>,
    /// Bans so far per address, for offline replay (the daemon escalates from the store).
    offences: HashMap<IpAddr, u32>,
    pub escalation: Escalation,
}

impl Detector {
    pub fn new(escalation: Escalation) -> Detector {
        Detector { escalation, ..Detector::default() }
    }

    /// Decides whether a failure counts, for filters with sessions: a helper line counts
    /// only as the first failure of its session; a primary line right after a counted
    /// helper reports the same attempt. Without a session every failure counts.
    pub fn counts(&mut self, index: usize, failure: &Failure, at: Timestamp) -> bool {
        let Some(session) = failure.session else { return true };
        match (self.sessions.get_mut(&(index, session)), failure.helper) {
            (None, helper) => {
                self.sessions.insert((index, session), Session { at, helper_pending: helper });
                true
            }
            (Some(_), true) => false,
            (Some(s), false) => {
                let counted = !s.helper_pending;
                *s = Session { at, helper_pending: false };
                counted
            }
        }
    }

    /// Records a failure of `addr` seen by filter `index` at `at`; returns the ban when
    /// this failure fills the window.
    pub fn failure(&mut self, index: usize, spec: &FilterSpec, addr: IpAddr, at: Timestamp, line: &str) -> Option<Ban> {
        let window = self.windows.entry((index, addr)).or_default();
        let oldest = Timestamp(at.0 - spec.findtime.as_millis() as i64);
        while window.times.front().is_some_and(|t| *t <= oldest) {
            window.times.pop_front();
        }
        window.times.push_back(at);
        if window.evidence.len() == EVIDENCE_LINES {
            window.evidence.pop_front();
        }
        window.evidence.push_back(line.to_string());
        if (window.times.len() as u32) < spec.maxretry {
            return None;
        }
        let window = self.windows.remove(&(index, addr)).unwrap_or_default();
        let earlier = self.offences.entry(addr).or_insert(0);
        let bantime = self.escalation.bantime(spec.bantime, *earlier);
        *earlier += 1;
        Some(Ban {
            addr,
            filter: index,
            at,
            bantime,
            failures: window.times.len() as u32,
            evidence: window.evidence.into(),
        })
    }

    /// Drops windows whose newest failure is older than `findtime` before `now`, so memory
    /// follows the active attackers, not every address ever seen.
    pub fn sweep(&mut self, now: Timestamp, findtime: Duration) {
        let oldest = Timestamp(now.0 - findtime.as_millis() as i64);
        self.windows.retain(|_, w| w.times.back().is_some_and(|t| *t > oldest));
        self.sessions.retain(|_, s| s.at > oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FilterSpec {
        builtin::spec("sshd").unwrap()
    }

    #[test]
    fn maxretry_within_findtime_bans_and_escalates() {
        let mut d = Detector::default();
        let s = spec();
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let at = |secs: i64| Timestamp(secs * 1000);
        // Four failures, then a gap longer than findtime: the window restarts.
        for i in 0..4 {
            assert!(d.failure(0, &s, a, at(i), "x").is_none());
        }
        for i in 0..4 {
            assert!(d.failure(0, &s, a, at(1000 + i), "x").is_none(), "old failures left the window");
        }
        let ban = d.failure(0, &s, a, at(1004), "fifth").expect("five within ten minutes");
        assert_eq!((ban.failures, ban.bantime), (5, Duration::from_secs(3600)));
        assert_eq!(ban.evidence.last().unwrap(), "fifth");
        for i in 0..5 {
            let second = d.failure(0, &s, a, at(2000 + i), "x");
            if i == 4 {
                assert_eq!(second.unwrap().bantime, Duration::from_secs(7200), "a repeat offender's ban doubles");
            }
        }
        let e = Escalation::default();
        assert_eq!(e.bantime(Duration::from_secs(3600), 20), Duration::from_secs(7 * 24 * 3600), "capped");
    }

    #[test]
    fn evidence_keeps_the_last_ten_lines() {
        let mut d = Detector::default();
        let mut s = spec();
        s.maxretry = 12;
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let mut ban = None;
        for i in 0..12 {
            ban = d.failure(0, &s, a, Timestamp(i), &format!("line {i}"));
        }
        let ban = ban.unwrap();
        assert_eq!(ban.evidence.len(), EVIDENCE_LINES);
        assert_eq!(ban.evidence[0], "line 2");
    }
}

#[cfg(test)]
mod session_tests {
    use super::*;

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
        let set = FilterSet::new(vec![Filter::compile(spec).unwrap()]);
        let mut d = Detector::default();
        let mut counted: HashMap<IpAddr, u32> = HashMap::new();
        for (i, line) in lines.iter().enumerate() {
            for (index, hit) in set.test(line.as_bytes()) {
                if let Hit::Failure(f) = hit
                    && d.counts(index, &f, Timestamp(i as i64))
                {
                    *counted.entry(f.addr).or_default() += 1;
                }
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
