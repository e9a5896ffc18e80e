//! Running a fail2ban definition over lines, with fail2ban's semantics.
//!
//! Per line: the date is found and taken out ([`super::date`]); the line joins the
//! buffer of the last `maxlines` lines; `prefregex` must match the buffer and its
//! `<F-CONTENT>` becomes what the failregexes see; the failregexes are tried in order and
//! the first that matches (and no ignoreregex vetoes) decides. Its groups, merged over the
//! prefregex's, carry the host (`ip4`, `ip6`, `dns` or `fid`) and the session markers:
//!
//! - `mlfid`: lines of one session (an sshd connection) share what they captured, so a
//!   line without an address is charged to the address an earlier line of its session
//!   gave, and a session's markers decide together;
//! - `nofail`: the line only gathers data (the address) for the session;
//! - `mlfforget`: the session ends (its data is dropped after this line);
//! - `mlfgained`: a login succeeded: the session's pending failures are dropped, unless
//!   it tried more than one user.
//!
//! [`Compiled`] is immutable and shared; [`State`] holds one stream's buffer, sessions
//! and date-template cache.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;

use pcre2::bytes::CaptureLocations;

use super::date::{Clock, DateDetector};
use super::regex::{Re, Search, expand};
use super::{Definition, DefinitionError, Pattern};
use crate::clock::Timestamp;

/// Sessions remembered per stream; the oldest is dropped past this.
pub const MAX_SESSIONS: usize = 10_000;
/// A session not heard from for this long (log time) is forgotten.
pub const SESSION_TTL_MS: i64 = 10 * 60 * 1000;

/// What a failure is charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An address, with the prefix a `<CIDR>`/`<SUBNET>` gave.
    Addr(IpAddr, Option<u8>),
    /// A hostname or another identifier: never resolved, never banned.
    Name(String),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Addr(a, None) => write!(f, "{a}"),
            Host::Addr(a, Some(p)) => write!(f, "{a}/{p}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// A failure found by failregex `regex`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub regex: usize,
    pub host: Host,
    pub user: Option<String>,
}

/// What one line gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub failure: Option<Failure>,
    /// The line's time (its own, or the last line's when it has none).
    pub time: Option<Timestamp>,
    /// A failregex matched but an ignoreregex vetoed it.
    pub ignored: bool,
    /// A failregex matched a line that only gathers session data (or waits for an
    /// address), not a failure.
    pub helper: bool,
    /// The line had no date a template found.
    pub no_date: bool,
    /// A search hit the match limit (the pattern is skipped for this line).
    pub limit: bool,
}

/// A compiled pattern and where it was written.
#[derive(Debug)]
struct Rx {
    re: Re,
    pattern: Pattern,
}

impl Rx {
    fn new(p: &Pattern, multi_line: bool) -> Result<Rx, DefinitionError> {
        let re = Re::new(&expand(&p.text), multi_line)
            .map_err(|e| DefinitionError::at(&p.file, p.line, format!("`{}`: {e}", p.text)))?;
        Ok(Rx { re, pattern: p.clone() })
    }

    fn has_host(&self) -> bool {
        ["ip4", "ip6", "dns", "fid"].iter().any(|g| self.re.group(g).is_some())
    }
}

/// A definition ready to run.
#[derive(Debug)]
pub struct Compiled {
    pub definition: Definition,
    pref: Option<Rx>,
    fail: Vec<Rx>,
    ignore: Vec<Rx>,
    dates: DateDetector,
}

impl Compiled {
    pub fn new(definition: Definition) -> Result<Compiled, DefinitionError> {
        let multi = definition.maxlines > 1;
        let pref = match &definition.prefregex {
            Some(p) => {
                let (file, line) = definition
                    .failregex
                    .first()
                    .map(|f| (f.file.clone(), f.line))
                    .unwrap_or((definition.file.clone(), 0));
                Some(Rx::new(&Pattern { text: p.clone(), file, line }, multi)?)
            }
            None => None,
        };
        let fail = definition.failregex.iter().map(|p| Rx::new(p, multi)).collect::<Result<Vec<_>, _>>()?;
        let ignore = definition.ignoreregex.iter().map(|p| Rx::new(p, multi)).collect::<Result<Vec<_>, _>>()?;
        let pref_gives = pref.as_ref().is_some_and(|p| p.re.group("mlfid").is_some() || p.has_host());
        for rx in &fail {
            if !rx.has_host() && !pref_gives && rx.re.group("mlfid").is_none() {
                return Err(DefinitionError::at(
                    &rx.pattern.file,
                    rx.pattern.line,
                    format!(
                        "failregex `{}` has no <HOST> (nor <ADDR>, <IP4>, <IP6>, <DNS>, <F-ID>) and no <F-MLFID> session to take one from",
                        rx.pattern.text
                    ),
                ));
            }
        }
        let dates = DateDetector::new(definition.datepattern.as_deref()).map_err(|e| {
            let f = definition.files.last().unwrap_or(&definition.file);
            DefinitionError::new(f, e)
        })?;
        Ok(Compiled { definition, pref, fail, ignore, dates })
    }

    /// The failregexes as written (expanded `%(..)s` and `<tags>` of the definition).
    pub fn failregex(&self) -> impl Iterator<Item = &str> {
        self.fail.iter().map(|r| r.pattern.text.as_str())
    }

    /// A new stream's state.
    pub fn state(&self) -> State {
        State {
            buffer: VecDeque::new(),
            sessions: HashMap::new(),
            last_time: None,
            last_template: None,
            clock: Clock::new(Timestamp(0)),
            locs: None,
        }
    }

    /// Runs one line (without its newline) read at `now`.
    pub fn line(&self, st: &mut State, line: &str, now: Timestamp) -> Outcome {
        let mut out = Outcome::default();
        st.clock.now = now;
        let found = self.dates.find(line, &mut st.last_template, &mut st.clock);
        let text = match found {
            Some(f) => {
                if f.time.is_some() {
                    st.last_time = f.time;
                }
                format!("{}{}", &line[..f.start], &line[f.end..])
            }
            None => {
                out.no_date = true;
                line.to_string()
            }
        };
        out.time = found.and_then(|f| f.time).or(st.last_time);
        self.with_locations(st, out, text, now)
    }

    /// Runs one line whose time is known (a journal entry's): no date is searched.
    pub fn line_dated(&self, st: &mut State, line: &str, at: Timestamp) -> Outcome {
        st.last_time = Some(at);
        let out = Outcome { time: Some(at), ..Outcome::default() };
        self.with_locations(st, out, line.to_string(), at)
    }

    fn with_locations(&self, st: &mut State, out: Outcome, text: String, now: Timestamp) -> Outcome {
        let mut locs = st.locs.take().unwrap_or_else(|| Locations::new(self));
        let out = self.run(st, &mut locs, out, text, now);
        st.locs = Some(locs);
        out
    }

    fn run(&self, st: &mut State, locs: &mut Locations, mut out: Outcome, text: String, now: Timestamp) -> Outcome {
        let at = out.time.unwrap_or(now);
        st.buffer.push_back(text);
        while st.buffer.len() > self.definition.maxlines {
            st.buffer.pop_front();
        }
        let mut buf = joined(&st.buffer);
        let mut pre = Fail::default();
        if let Some(pref) = &self.pref {
            match pref.re.search(&mut locs.pref, &buf) {
                Search::Match { groups, .. } => {
                    pre.set_groups(&pref.re, &buf, &groups);
                    if let Some(content) = pre.values.remove("content")
                        && !content.is_empty()
                    {
                        st.buffer.clear();
                        st.buffer.push_back(content);
                        buf = joined(&st.buffer);
                    }
                }
                Search::NoMatch => return out,
                Search::Limit => {
                    out.limit = true;
                    return out;
                }
            }
        }
        for (index, rx) in self.fail.iter().enumerate() {
            let (span, groups) = match rx.re.search(&mut locs.fail[index], &buf) {
                Search::Match { span, groups } => (span, groups),
                Search::NoMatch => continue,
                Search::Limit => {
                    out.limit = true;
                    continue;
                }
            };
            let (matched, unmatched) = self.split_lines(st, &buf, span, rx, &groups);
            let ignore_buf = if self.definition.maxlines > 1 { joined(&matched) } else { buf.clone() };
            for (i, ig) in self.ignore.iter().enumerate() {
                match ig.re.search(&mut locs.ignore[i], &ignore_buf) {
                    Search::Match { .. } => {
                        out.ignored = true;
                        if self.definition.maxlines > 1 {
                            st.buffer = unmatched;
                        }
                        return out;
                    }
                    Search::Limit => out.limit = true,
                    Search::NoMatch => {}
                }
            }
            if self.definition.maxlines > 1 {
                st.buffer = unmatched;
            }
            let mut fail = pre.clone();
            fail.set_groups(&rx.re, &buf, &groups);
            fail.apply_alternatives();
            let mlfid = fail.values.get("mlfid").cloned();
            if let Some(id) = &mlfid {
                fail = st.merge(id, fail, at);
                if fail.truthy("nofail") {
                    out.helper = true;
                    return out;
                }
            }
            let Some(host) = fail.host() else {
                // A session line without an address yet: its failure waits for one.
                if let Some(s) = mlfid.as_ref().and_then(|id| st.sessions.get_mut(id)) {
                    s.fail.values.insert("mlfpending".into(), "1".into());
                }
                out.helper = true;
                return out;
            };
            let user = fail.values.get("user").filter(|u| !u.is_empty()).cloned();
            out.failure = Some(Failure { regex: index, host, user });
            return out;
        }
        out
    }

    /// The buffer's lines the match spans, and the others (which stay buffered).
    fn split_lines(
        &self,
        st: &State,
        buf: &str,
        (start, end): (usize, usize),
        rx: &Rx,
        groups: &[(usize, usize, usize)],
    ) -> (VecDeque<String>, VecDeque<String>) {
        if st.buffer.len() <= 1 {
            return (st.buffer.clone(), VecDeque::new());
        }
        let line_start = buf[..(start + 1).min(buf.len())].rfind('\n').map_or(0, |i| i + 1);
        let line_end =
            buf[end.saturating_sub(1).min(buf.len())..].find('\n').map_or(buf.len(), |i| end.saturating_sub(1) + i + 1);
        let first = buf[..line_start].matches('\n').count();
        let last = buf[..line_end].matches('\n').count();
        let mut matched: VecDeque<String> =
            st.buffer.iter().skip(first).take(last.saturating_sub(first)).cloned().collect();
        let mut unmatched: VecDeque<String> = st.buffer.iter().take(first).cloned().collect();
        // Lines a <SKIPLINES> passed over are not part of the match.
        let skipped: Vec<&str> = rx
            .re
            .names()
            .filter(|(n, _)| n.starts_with("skiplines"))
            .filter_map(|(_, i)| groups.iter().find(|g| g.0 == i))
            .flat_map(|(_, s, e)| buf[*s..*e].lines())
            .collect();
        for s in skipped {
            if let Some(pos) = matched.iter().position(|l| l == s) {
                unmatched.extend(matched.remove(pos));
            }
        }
        unmatched.extend(st.buffer.iter().skip(last).cloned());
        (matched, unmatched)
    }
}

fn joined(lines: &VecDeque<String>) -> String {
    let mut s = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(l);
    }
    s.push('\n');
    s
}

/// Reusable capture slots of each pattern.
#[derive(Debug)]
struct Locations {
    pref: CaptureLocations,
    fail: Vec<CaptureLocations>,
    ignore: Vec<CaptureLocations>,
}

impl Locations {
    fn new(c: &Compiled) -> Locations {
        Locations {
            pref: c.pref.as_ref().map_or_else(|| c.fail[0].re.locations(), |p| p.re.locations()),
            fail: c.fail.iter().map(|r| r.re.locations()).collect(),
            ignore: c.ignore.iter().map(|r| r.re.locations()).collect(),
        }
    }
}

/// What a match (and its session) captured.
#[derive(Debug, Clone, Default)]
struct Fail {
    values: HashMap<String, String>,
    users: BTreeSet<String>,
}

impl Fail {
    /// Sets the groups of `re` that took part; those that did not are cleared (as a
    /// failregex's unmatched group overrides the prefregex's value).
    fn set_groups(&mut self, re: &Re, buf: &str, groups: &[(usize, usize, usize)]) {
        for (name, i) in re.names() {
            match groups.iter().find(|g| g.0 == i) {
                Some((_, s, e)) => {
                    self.values.insert(name.to_string(), buf[*s..*e].to_string());
                }
                None => {
                    self.values.remove(name);
                }
            }
        }
    }

    /// `<F-ALT_USER>` and the like fill `user` when it is empty.
    fn apply_alternatives(&mut self) {
        let alts: Vec<(String, String)> = self
            .values
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("alt_")?;
                let name = name.trim_end_matches(|c: char| c.is_ascii_digit()).trim_end_matches('_');
                (!v.is_empty()).then(|| (name.to_string(), v.clone()))
            })
            .collect();
        for (name, v) in alts {
            if !self.truthy(&name) {
                self.values.insert(name, v);
            }
        }
    }

    fn truthy(&self, key: &str) -> bool {
        self.values.get(key).is_some_and(|v| !v.is_empty())
    }

    fn host(&self) -> Option<Host> {
        let cidr = self.values.get("cidr").and_then(|c| c.parse::<u8>().ok());
        if let Some(ip) = self.values.get("ip4").or_else(|| self.values.get("ip6")) {
            return Some(match crate::detect::filter::parse_host(ip) {
                Some(a) => Host::Addr(a, cidr),
                None => Host::Name(ip.clone()),
            });
        }
        let text = self.values.get("dns").or_else(|| self.values.get("fid"))?;
        Some(match crate::detect::filter::parse_host(text) {
            Some(a) => Host::Addr(a, None),
            None => Host::Name(text.clone()),
        })
    }
}

/// One session's merged data.
#[derive(Debug, Clone)]
struct Session {
    fail: Fail,
    seen: Timestamp,
}

/// One stream's running state.
#[derive(Debug)]
pub struct State {
    buffer: VecDeque<String>,
    sessions: HashMap<String, Session>,
    last_time: Option<Timestamp>,
    last_template: Option<(usize, usize)>,
    clock: Clock,
    locs: Option<Locations>,
}

impl State {
    /// Sessions now remembered.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Merges a session line's data into its session, as fail2ban does.
    fn merge(&mut self, id: &str, mut fail: Fail, at: Timestamp) -> Fail {
        const NOFAIL: u8 = 1;
        const FORGET: u8 = 2;
        const WAS_NOFAIL: u8 = 4;
        const GAINED: u8 = 8;
        let mut flags = 0;
        if fail.truthy("mlfgained") {
            flags |= GAINED | NOFAIL;
            if !fail.truthy("nofail") {
                let g = fail.values["mlfgained"].clone();
                fail.values.insert("nofail".into(), g);
            }
        } else if fail.truthy("nofail") {
            flags |= NOFAIL;
        }
        if fail.values.remove("mlfforget").is_some_and(|v| !v.is_empty()) {
            flags |= FORGET;
        }
        let user = fail.values.get("user").filter(|u| !u.is_empty()).cloned();
        let (mut merged, users) = if let Some(s) = self.sessions.get_mut(id) {
            let cached = &mut s.fail;
            cached.users.extend(user);
            let users = cached.users.len();
            if cached.values.remove("nofail").is_some_and(|v| !v.is_empty()) {
                flags |= WAS_NOFAIL;
            }
            if cached.values.remove("mlfgained").is_some_and(|v| !v.is_empty()) {
                flags |= WAS_NOFAIL;
            }
            if flags & GAINED != 0 {
                cached.values.remove("mlfpending");
            }
            cached.values.extend(fail.values);
            s.seen = at;
            let merged = cached.clone();
            if flags & FORGET != 0 {
                self.sessions.remove(id);
            }
            (merged, users)
        } else if flags & FORGET == 0 {
            fail.users.extend(user);
            let users = fail.users.len();
            self.remember(id, fail.clone(), at);
            (fail, users)
        } else {
            (fail, 0)
        };
        let pending = merged.values.remove("mlfpending").is_some_and(|v| !v.is_empty());
        if pending || users > 1 {
            merged.values.remove("nofail");
            merged.values.remove("mlfgained");
        }
        // The session keeps what the merge consumed (Python shares the object).
        if let Some(s) = self.sessions.get_mut(id) {
            s.fail.values.remove("mlfpending");
            if pending || users > 1 {
                s.fail.values.remove("nofail");
                s.fail.values.remove("mlfgained");
            }
        }
        merged
    }

    fn remember(&mut self, id: &str, fail: Fail, at: Timestamp) {
        if self.sessions.len() >= MAX_SESSIONS {
            let oldest = at.0 - SESSION_TTL_MS;
            self.sessions.retain(|_, s| s.seen.0 > oldest);
            if self.sessions.len() >= MAX_SESSIONS
                && let Some(k) = self.sessions.iter().min_by_key(|(_, s)| s.seen.0).map(|(k, _)| k.clone())
            {
                self.sessions.remove(&k);
            }
        }
        self.sessions.insert(id.to_string(), Session { fail, seen: at });
    }
}
