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
use std::sync::Arc;

use pcre2::bytes::CaptureLocations;

use super::date::{Clock, DateDetector};
use super::regex::{Re, Search, expand};
use super::{Definition, DefinitionError, Pattern};
use crate::clock::Timestamp;

/// The longest pattern compiled (fail2ban's longest, sshd's expanded, is under 2 KiB).
pub const MAX_PATTERN: usize = 64 << 10;

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
        if p.text.len() > MAX_PATTERN {
            return Err(DefinitionError::at(
                &p.file,
                p.line,
                format!(
                    "a pattern of {} KiB: longer than the {} KiB banshare compiles",
                    p.text.len() >> 10,
                    MAX_PATTERN >> 10
                ),
            ));
        }
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
    /// The failregexes the `regex` crate also reads, in one set: one pass over a line
    /// tells which of them can match, and PCRE2 runs only those (and the others).
    screen: Option<Screen>,
}

/// See [`Compiled::screen`].
#[derive(Debug)]
struct Screen {
    set: regex::RegexSet,
    /// For each failregex, its pattern in the set (`None`: not screened, always run).
    member: Vec<Option<usize>>,
}

impl Screen {
    /// The set, from the failregexes the `regex` crate compiles. Its patterns run in
    /// multi-line mode, so `^` and `$` match wherever PCRE2's do (and more): the screen
    /// may let a line through that PCRE2 then refuses, never the reverse.
    fn new(fail: &[Rx]) -> Option<Screen> {
        let mut member = Vec::with_capacity(fail.len());
        let mut patterns = Vec::new();
        for rx in fail {
            let p = super::regex::translate(&expand(&rx.pattern.text)).ok();
            let p = p.map(|p| format!("(?m){p}")).filter(|p| regex::Regex::new(p).is_ok());
            member.push(p.as_ref().map(|_| patterns.len()));
            patterns.extend(p);
        }
        if patterns.is_empty() {
            return None;
        }
        let set = regex::RegexSetBuilder::new(&patterns).size_limit(32 << 20).build().ok()?;
        Some(Screen { set, member })
    }
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
        let screen = if definition.maxlines > 1 { None } else { Screen::new(&fail) };
        Ok(Compiled { definition, pref, fail, ignore, dates, screen })
    }

    /// A new stream's state.
    pub fn state(&self) -> State {
        State { buffer: VecDeque::new(), sessions: HashMap::new(), last_time: None, scratch: Scratch::default() }
    }

    /// Scratch space for [`Compiled::prepare`] (one per thread).
    pub fn scratch(&self) -> Scratch {
        Scratch::default()
    }

    /// Whether each line can be matched alone ([`Compiled::prepare`], in any thread and
    /// order) before its session is settled in order ([`Compiled::finish`]): true unless
    /// `maxlines` joins lines.
    pub fn single_line(&self) -> bool {
        self.definition.maxlines <= 1
    }

    /// Runs one line (without its newline) read at `now`.
    pub fn line(&self, st: &mut State, line: &str, now: Timestamp) -> Outcome {
        if self.single_line() {
            let prepared = self.prepare(&mut st.scratch, line, now);
            return self.finish(st, prepared, now);
        }
        let (text, time) = self.undated(&mut st.scratch, line, now);
        self.multi_line(st, text, Outcome { time, ..Outcome::default() }, now)
    }

    /// Runs one line whose time is known (a journal entry's): no date is searched.
    pub fn line_dated(&self, st: &mut State, line: &str, at: Timestamp) -> Outcome {
        let out = Outcome { time: Some(at), ..Outcome::default() };
        if self.single_line() {
            let prepared = self.matching(st.scratch.locations(self), format!("{line}\n"), out);
            return self.finish(st, prepared, at);
        }
        self.multi_line(st, line.to_string(), out, at)
    }

    /// The line without its date, and the date's time.
    fn undated(&self, sc: &mut Scratch, line: &str, now: Timestamp) -> (String, Option<Timestamp>) {
        sc.clock.now = now;
        match self.dates.find(line, &mut sc.last_template, &mut sc.clock) {
            Some(f) => (format!("{}{}", &line[..f.start], &line[f.end..]), f.time),
            None => (line.to_string(), None),
        }
    }

    /// The per-line stage of a single-line definition: the date, the prefregex, the
    /// first failregex that matches and no ignoreregex vetoes. No session state: lines
    /// may be prepared in any thread and order, then finished in order.
    pub fn prepare(&self, sc: &mut Scratch, line: &str, now: Timestamp) -> Prepared {
        let (mut text, time) = self.undated(sc, line, now);
        text.push('\n');
        self.matching(sc.locations(self), text, Outcome { time, ..Outcome::default() })
    }

    fn matching(&self, locs: &mut Locations, buf: String, mut out: Outcome) -> Prepared {
        let content = match self.prefilter(locs, &buf) {
            Pref::Match { content } => content,
            Pref::Miss => return Prepared { out, matched: None },
            Pref::Limit => {
                out.limit = true;
                return Prepared { out, matched: None };
            }
        };
        let owned;
        let content_buf = match content {
            // The content runs to the line's end: the line's own newline ends it.
            Some((s, e)) if &buf[e..] == "\n" => &buf[s..],
            Some((s, e)) => {
                owned = format!("{}\n", &buf[s..e]);
                &owned
            }
            None => &buf,
        };
        let matched = self.failregex_match(locs, content_buf, &buf, None, &mut out);
        Prepared { out, matched: matched.map(Box::new) }
    }

    /// The ordered stage: the session merge and the failure's host.
    pub fn finish(&self, st: &mut State, prepared: Prepared, now: Timestamp) -> Outcome {
        let Prepared { mut out, matched } = prepared;
        if out.time.is_some() {
            st.last_time = out.time;
        } else {
            out.time = st.last_time;
        }
        match matched {
            Some(m) => {
                let (index, fail) = *m;
                let at = out.time.unwrap_or(now);
                self.conclude(st, index, fail, at, out)
            }
            None => out,
        }
    }

    /// A line of a multi-line definition: buffered with the lines before it.
    fn multi_line(&self, st: &mut State, text: String, mut out: Outcome, now: Timestamp) -> Outcome {
        if out.time.is_some() {
            st.last_time = out.time;
        } else {
            out.time = st.last_time;
        }
        let at = out.time.unwrap_or(now);
        st.buffer.push_back(text);
        while st.buffer.len() > self.definition.maxlines {
            st.buffer.pop_front();
        }
        let locs = st.scratch.locations(self);
        let buf = joined(&st.buffer);
        let matched = match self.prefilter(locs, &buf) {
            Pref::Limit => {
                out.limit = true;
                None
            }
            Pref::Miss => None,
            Pref::Match { content } => {
                let content_buf = match content {
                    Some((s, e)) => {
                        st.buffer.clear();
                        st.buffer.push_back(buf[s..e].to_string());
                        joined(&st.buffer)
                    }
                    None => buf.clone(),
                };
                let mut buffer = std::mem::take(&mut st.buffer);
                let m = self.failregex_match(locs, &content_buf, &buf, Some(&mut buffer), &mut out);
                st.buffer = buffer;
                m
            }
        };
        match matched {
            Some((index, fail)) => self.conclude(st, index, fail, at, out),
            None => out,
        }
    }

    /// The prefregex on `buf`: whether the line is the filter's, and its `<F-CONTENT>`
    /// (what the failregexes see). Its groups stay in `locs.pref` for the line's match.
    fn prefilter(&self, locs: &mut Locations, buf: &str) -> Pref {
        let Some(pref) = &self.pref else { return Pref::Match { content: None } };
        let pref_locs = locs.pref.as_mut().expect("slots for the prefregex");
        match pref.re.search(pref_locs, buf) {
            Search::Match { .. } => {
                let content = pref.re.group("content").and_then(|c| pref_locs.get(c)).filter(|(s, e)| e > s);
                Pref::Match { content }
            }
            Search::NoMatch => Pref::Miss,
            Search::Limit => Pref::Limit,
        }
    }

    /// The first failregex that matches `buf` and no ignoreregex vetoes, with its groups
    /// merged over the prefregex's (which matched `pre_buf`). `buffer` (multi-line) keeps
    /// the lines the match did not take.
    fn failregex_match(
        &self,
        locs: &mut Locations,
        buf: &str,
        pre_buf: &str,
        mut buffer: Option<&mut VecDeque<String>>,
        out: &mut Outcome,
    ) -> Option<(usize, Fail)> {
        let screened = self.screen.as_ref().map(|s| (s, s.set.matches(buf)));
        for (index, rx) in self.fail.iter().enumerate() {
            if let Some((screen, hits)) = &screened
                && let Some(k) = screen.member[index]
                && !hits.matched(k)
            {
                continue;
            }
            let span = match rx.re.search(&mut locs.fail[index], buf) {
                Search::Match { span } => span,
                Search::NoMatch => continue,
                Search::Limit => {
                    out.limit = true;
                    continue;
                }
            };
            let mut matched_buf = None;
            if let Some(buffer) = buffer.as_deref_mut() {
                let (matched, unmatched) = split_lines(buffer, buf, span, rx, &locs.fail[index]);
                *buffer = unmatched;
                matched_buf = Some(joined(&matched));
            }
            let ignore_buf = matched_buf.as_deref().unwrap_or(buf);
            for (i, ig) in self.ignore.iter().enumerate() {
                match ig.re.search(&mut locs.ignore[i], ignore_buf) {
                    Search::Match { .. } => {
                        out.ignored = true;
                        return None;
                    }
                    Search::Limit => out.limit = true,
                    Search::NoMatch => {}
                }
            }
            let mut fail = Fail::default();
            if let (Some(pref), Some(pref_locs)) = (&self.pref, &locs.pref) {
                fail.set_groups(&pref.re, pre_buf, pref_locs);
                fail.values.remove("content");
            }
            fail.set_groups(&rx.re, buf, &locs.fail[index]);
            fail.apply_alternatives();
            return Some((index, fail));
        }
        None
    }

    /// Settles a match: its session's verdict, then its host.
    fn conclude(&self, st: &mut State, index: usize, mut fail: Fail, at: Timestamp, mut out: Outcome) -> Outcome {
        let mlfid = fail.values.get("mlfid").cloned();
        let verdict = match &mlfid {
            Some(id) => st.merge(id, fail, at),
            None => Verdict::of(&mut fail),
        };
        // A line that only gathers data for its session is no failure.
        if verdict.nofail {
            return out;
        }
        let Some(host) = verdict.host else {
            // A session line without an address yet: its failure waits for one.
            if let Some(s) = mlfid.as_ref().and_then(|id| st.sessions.get_mut(id)) {
                s.fail.values.insert(Arc::from("mlfpending"), "1".into());
            }
            return out;
        };
        out.failure = Some(Failure { regex: index, host, user: verdict.user });
        out
    }
}

/// The buffer's lines the match spans, and the others (which stay buffered).
fn split_lines(
    buffer: &VecDeque<String>,
    buf: &str,
    (start, end): (usize, usize),
    rx: &Rx,
    locs: &CaptureLocations,
) -> (VecDeque<String>, VecDeque<String>) {
    if buffer.len() <= 1 {
        return (buffer.clone(), VecDeque::new());
    }
    let line_start = buf[..(start + 1).min(buf.len())].rfind('\n').map_or(0, |i| i + 1);
    let from = end.saturating_sub(1).min(buf.len());
    let line_end = buf[from..].find('\n').map_or(buf.len(), |i| from + i + 1);
    let first = buf[..line_start].matches('\n').count();
    let last = buf[..line_end].matches('\n').count();
    let mut matched: VecDeque<String> = buffer.iter().skip(first).take(last.saturating_sub(first)).cloned().collect();
    let mut unmatched: VecDeque<String> = buffer.iter().take(first).cloned().collect();
    // Lines a <SKIPLINES> passed over are not part of the match.
    let skipped: Vec<&str> = rx
        .re
        .names()
        .filter(|(n, _)| n.starts_with("skiplines"))
        .filter_map(|(_, i)| locs.get(i))
        .flat_map(|(s, e)| buf[s..e].lines())
        .collect();
    for s in skipped {
        if let Some(pos) = matched.iter().position(|l| l == s) {
            unmatched.extend(matched.remove(pos));
        }
    }
    unmatched.extend(buffer.iter().skip(last).cloned());
    (matched, unmatched)
}

/// What the prefregex made of a line.
enum Pref {
    /// Not the filter's line.
    Miss,
    Limit,
    /// The filter's line; `content` the span of its `<F-CONTENT>`.
    Match {
        content: Option<(usize, usize)>,
    },
}

/// A line after the per-line stage: what it showed and the match to settle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    out: Outcome,
    matched: Option<Box<(usize, Fail)>>,
}

/// Per-thread scratch: the date template that found the last date, the clock, capture
/// slots.
#[derive(Debug)]
pub struct Scratch {
    last_template: Option<(usize, usize)>,
    clock: Clock,
    locs: Option<Locations>,
}

impl Scratch {
    /// The capture slots, made at the first line.
    fn locations(&mut self, c: &Compiled) -> &mut Locations {
        self.locs.get_or_insert_with(|| Locations::new(c))
    }
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch { last_template: None, clock: Clock::new(Timestamp(0)), locs: None }
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
    pref: Option<CaptureLocations>,
    fail: Vec<CaptureLocations>,
    ignore: Vec<CaptureLocations>,
}

impl Locations {
    fn new(c: &Compiled) -> Locations {
        Locations {
            pref: c.pref.as_ref().map(|p| p.re.locations()),
            fail: c.fail.iter().map(|r| r.re.locations()).collect(),
            ignore: c.ignore.iter().map(|r| r.re.locations()).collect(),
        }
    }
}

/// Captured values by group name: a handful, looked up in order (no hashing, and the
/// names are the patterns' own, shared).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Values(Vec<(Arc<str>, String)>);

impl Values {
    fn get(&self, key: &str) -> Option<&String> {
        self.0.iter().find(|(k, _)| &**k == key).map(|(_, v)| v)
    }

    fn insert(&mut self, key: Arc<str>, value: String) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key, value)),
        }
    }

    fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.0.iter().position(|(k, _)| &**k == key)?;
        Some(self.0.swap_remove(i).1)
    }

    fn extend(&mut self, other: Values) {
        for (k, v) in other.0 {
            self.insert(k, v);
        }
    }
}

/// What a match (and its session) captured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Fail {
    values: Values,
    users: BTreeSet<String>,
}

impl Fail {
    /// Sets the groups of `re` that took part; those that did not are cleared (as a
    /// failregex's unmatched group overrides the prefregex's value).
    fn set_groups(&mut self, re: &Re, buf: &str, locs: &CaptureLocations) {
        for (name, span) in re.spans(locs) {
            match span {
                Some((s, e)) => {
                    self.values.insert(name.clone(), buf[s..e].to_string());
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
            .0
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("alt_")?;
                let name = name.trim_end_matches(|c: char| c.is_ascii_digit()).trim_end_matches('_');
                (!v.is_empty()).then(|| (name.to_string(), v.clone()))
            })
            .collect();
        for (name, v) in alts {
            if !self.truthy(&name) {
                self.values.insert(Arc::from(name.as_str()), v);
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

/// What a line's merged data says: whether it is no failure, its host and user. Taking
/// it consumes the pending mark, and a pending failure or a second user of the session
/// clears `nofail` (several users tried: a login that worked does not excuse them).
#[derive(Debug)]
struct Verdict {
    nofail: bool,
    host: Option<Host>,
    user: Option<String>,
}

impl Verdict {
    fn of(fail: &mut Fail) -> Verdict {
        let pending = fail.values.remove("mlfpending").is_some_and(|v| !v.is_empty());
        if pending || fail.users.len() > 1 {
            fail.values.remove("nofail");
            fail.values.remove("mlfgained");
        }
        Verdict {
            nofail: fail.truthy("nofail"),
            host: fail.host(),
            user: fail.values.get("user").filter(|u| !u.is_empty()).cloned(),
        }
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
    scratch: Scratch,
}

impl State {
    /// Merges a session line's data into its session, as fail2ban does, and tells what
    /// the merged session says of this line.
    fn merge(&mut self, id: &str, mut fail: Fail, at: Timestamp) -> Verdict {
        const NOFAIL: u8 = 1;
        const FORGET: u8 = 2;
        const WAS_NOFAIL: u8 = 4;
        const GAINED: u8 = 8;
        let mut flags = 0;
        if fail.truthy("mlfgained") {
            flags |= GAINED | NOFAIL;
            if !fail.truthy("nofail") {
                let g = fail.values.get("mlfgained").cloned().unwrap_or_default();
                fail.values.insert(Arc::from("nofail"), g);
            }
        } else if fail.truthy("nofail") {
            flags |= NOFAIL;
        }
        if fail.values.remove("mlfforget").is_some_and(|v| !v.is_empty()) {
            flags |= FORGET;
        }
        let user = fail.values.get("user").filter(|u| !u.is_empty()).cloned();
        // The merged data: the session's (updated in place, as Python shares the object),
        // or the line's own when the session is new or ends here.
        let (merged, forget): (&mut Fail, bool) = if self.sessions.contains_key(id) {
            let s = self.sessions.get_mut(id).expect("present");
            s.seen = at;
            let cached = &mut s.fail;
            cached.users.extend(user);
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
            (cached, flags & FORGET != 0)
        } else if flags & FORGET == 0 {
            fail.users.extend(user);
            self.remember(id, fail, at);
            (&mut self.sessions.get_mut(id).expect("just remembered").fail, false)
        } else {
            fail.users.clear();
            let verdict = Verdict::of(&mut fail);
            return verdict;
        };
        let verdict = Verdict::of(merged);
        if forget {
            self.sessions.remove(id);
        }
        verdict
    }

    fn remember(&mut self, id: &str, fail: Fail, at: Timestamp) {
        if self.sessions.len() >= MAX_SESSIONS {
            // Sessions past their time go first; if that is not enough, the older half
            // (amortised: this runs once per MAX_SESSIONS / 2 new sessions at most).
            let oldest = at.0 - SESSION_TTL_MS;
            self.sessions.retain(|_, s| s.seen.0 > oldest);
            if self.sessions.len() >= MAX_SESSIONS {
                let mut seen: Vec<i64> = self.sessions.values().map(|s| s.seen.0).collect();
                let mid = seen.len() / 2;
                let (_, median, _) = seen.select_nth_unstable(mid);
                let median = *median;
                self.sessions.retain(|_, s| s.seen.0 > median);
            }
        }
        self.sessions.insert(id.to_string(), Session { fail, seen: at });
    }
}
