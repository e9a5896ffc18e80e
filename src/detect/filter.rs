//! Filters: fail2ban-style `failregex` / `ignoreregex` with a `<HOST>` placeholder,
//! compiled once, and a [`FilterSet`] that tests a line against every filter of a source
//! in one pass (a `RegexSet`), running capture regexes only on the rare line that hits.

use std::net::IpAddr;
use std::time::Duration;

use regex::{Regex, RegexSet};

/// What `<HOST>` becomes: an IPv4 address or something with a colon (IPv6, possibly
/// IPv4-mapped). Only what `std::net` then parses counts; hostnames never match.
pub const HOST: &str = r"(?P<host>(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]*[0-9A-Fa-f])";

/// A filter as written (built in or from the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterSpec {
    pub name: String,
    /// Report category (`ssh_bruteforce`, ...).
    pub category: String,
    pub failregex: Vec<String>,
    /// Like `failregex`, but a match counts only when its session (the `session`
    /// capture, e.g. sshd's pid) has no other failure: lines that accompany an attempt
    /// another line already reports.
    pub helperregex: Vec<String>,
    pub ignoreregex: Vec<String>,
    pub maxretry: u32,
    pub findtime: Duration,
    pub bantime: Duration,
}

/// A compiled filter.
#[derive(Debug, Clone)]
pub struct Filter {
    pub spec: FilterSpec,
    /// `failregex` then `helperregex`; patterns from `helpers_from` on are helpers.
    fail: Vec<Regex>,
    helpers_from: usize,
    ignore: Option<RegexSet>,
}

/// A failregex or ignoreregex that does not compile, or lacks `<HOST>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter `{filter}`: {key}[{index}]: {message}")]
pub struct FilterError {
    pub filter: String,
    pub key: &'static str,
    pub index: usize,
    pub message: String,
}

/// Expands `<HOST>` (and `<ADDR>`, its fail2ban synonym).
fn expand(pattern: &str) -> String {
    pattern.replace("<HOST>", HOST).replace("<ADDR>", HOST)
}

impl Filter {
    pub fn compile(spec: FilterSpec) -> Result<Filter, FilterError> {
        let err = |key, index, message: String| FilterError { filter: spec.name.clone(), key, index, message };
        let mut fail = Vec::new();
        for (i, p) in spec.failregex.iter().enumerate() {
            if !p.contains("<HOST>") && !p.contains("<ADDR>") {
                return Err(err("failregex", i, "has no <HOST> (the address to ban)".into()));
            }
            fail.push(Regex::new(&expand(p)).map_err(|e| err("failregex", i, e.to_string()))?);
        }
        if fail.is_empty() {
            return Err(err("failregex", 0, "a filter needs at least one failregex".into()));
        }
        let helpers_from = fail.len();
        for (i, p) in spec.helperregex.iter().enumerate() {
            fail.push(Regex::new(&expand(p)).map_err(|e| err("helperregex", i, e.to_string()))?);
        }
        let ignore = if spec.ignoreregex.is_empty() {
            None
        } else {
            for (i, p) in spec.ignoreregex.iter().enumerate() {
                Regex::new(&expand(p)).map_err(|e| err("ignoreregex", i, e.to_string()))?;
            }
            Some(RegexSet::new(spec.ignoreregex.iter().map(|p| expand(p))).expect("each pattern compiled"))
        };
        Ok(Filter { spec, fail, helpers_from, ignore })
    }
}

/// A failure found in a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub addr: IpAddr,
    /// The session the line belongs to (the `session` capture), when the filter has one.
    pub session: Option<u64>,
    /// Matched by a `helperregex`.
    pub helper: bool,
}

/// What a filter made of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hit {
    /// A failure of this address.
    Failure(Failure),
    /// A failregex matched but an ignoreregex too.
    Ignored,
    /// A failregex matched but `<HOST>` held no address (a hostname, garbage).
    NotAnAddress(String),
}

/// The filters of one source, tested together.
#[derive(Debug, Clone)]
pub struct FilterSet {
    pub filters: Vec<Filter>,
    /// Every failregex of every filter; `owner[i]` is the filter of pattern `i`.
    set: RegexSet,
    owner: Vec<(usize, usize)>,
}

impl FilterSet {
    pub fn new(filters: Vec<Filter>) -> FilterSet {
        let mut patterns = Vec::new();
        let mut owner = Vec::new();
        for (f, filter) in filters.iter().enumerate() {
            for (r, re) in filter.fail.iter().enumerate() {
                patterns.push(re.as_str().to_string());
                owner.push((f, r));
            }
        }
        let set = RegexSet::new(&patterns).expect("each pattern compiled alone");
        FilterSet { filters, set, owner }
    }

    /// Tests `line` against every filter; at most one hit per filter.
    pub fn test(&self, line: &str) -> Vec<(usize, Hit)> {
        let matches = self.set.matches(line);
        if !matches.matched_any() {
            return Vec::new();
        }
        let mut out: Vec<(usize, Hit)> = Vec::new();
        for i in matches.iter() {
            let (f, r) = self.owner[i];
            if out.iter().any(|(seen, _)| *seen == f) {
                continue;
            }
            let filter = &self.filters[f];
            let Some(caps) = filter.fail[r].captures(line) else { continue };
            let host = caps.name("host").map_or("", |m| m.as_str());
            let hit = if filter.ignore.as_ref().is_some_and(|ig| ig.is_match(line)) {
                Hit::Ignored
            } else {
                match parse_host(host) {
                    Some(addr) => Hit::Failure(Failure {
                        addr,
                        session: caps.name("session").and_then(|m| m.as_str().parse().ok()),
                        helper: r >= filter.helpers_from,
                    }),
                    None => Hit::NotAnAddress(host.to_string()),
                }
            };
            out.push((f, hit));
        }
        out
    }
}

/// Parses a captured host with `std::net`; `::ffff:1.2.3.4` becomes 1.2.3.4.
pub fn parse_host(text: &str) -> Option<IpAddr> {
    let addr: IpAddr = text.trim_matches(|c| c == '[' || c == ']').parse().ok()?;
    Some(match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    })
}
