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
    pub user: Option<Text>,
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
    /// The bytes a match can start with, when the pattern is anchored at the start and
    /// its prefixes are known (see [`first_bytes`]): a text starting otherwise is
    /// refused without a search.
    first: Option<Box<[bool; 256]>>,
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
        let expanded = expand(&p.text);
        let re = Re::new(&expanded, multi_line)
            .map_err(|e| DefinitionError::at(&p.file, p.line, format!("`{}`: {e}", p.text)))?;
        let first = if multi_line { None } else { first_bytes(&expanded) };
        Ok(Rx { re, pattern: p.clone(), first })
    }

    /// Whether a match in `text` is possible by its first byte.
    fn may_match(&self, text: &str) -> bool {
        match (&self.first, text.as_bytes().first()) {
            (Some(first), Some(b)) => first[usize::from(*b)],
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    fn has_host(&self) -> bool {
        ["ip4", "ip6", "dns", "fid"].iter().any(|g| self.re.group(g).is_some())
    }
}

/// The bytes a match of `pattern` (PCRE2 syntax) can start with, when every match is
/// anchored at the text's start and the pattern's prefixes are a finite set of literals,
/// as the `regex` crate's parser reads it. `None` (try the pattern on every text) when
/// that parser refuses the pattern (look-around, back-references: PCRE2 only) or the
/// prefixes are open.
fn first_bytes(pattern: &str) -> Option<Box<[bool; 256]>> {
    use regex_syntax::hir::Look;
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let translated = super::regex::translate(pattern).ok()?;
    let hir = regex_syntax::ParserBuilder::new().build().parse(&widened(&translated)?).ok()?;
    if !hir.properties().look_set_prefix().contains(Look::Start) {
        return None;
    }
    let seq = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    let mut first = Box::new([false; 256]);
    for lit in seq.literals()? {
        first[usize::from(*lit.as_bytes().first()?)] = true;
    }
    Some(first)
}

/// `pattern` with what the `regex` crate's parser lacks widened away: look-around
/// assertions dropped, back-references `(?P=name)` made `(?s:.*)`. The result matches
/// at least what `pattern` matches (so its first bytes are a superset). `None` for
/// another construct the parser would refuse anyway (conditionals).
fn widened(pattern: &str) -> Option<String> {
    let b = pattern.as_bytes();
    let mut out = String::with_capacity(pattern.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &pattern[i..];
        if ["(?=", "(?!", "(?<=", "(?<!"].iter().any(|p| rest.starts_with(p)) {
            i = group_end(b, i)?;
        } else if rest.starts_with("(?P=") {
            i = group_end(b, i)?;
            out.push_str("(?s:.*)");
        } else if rest.starts_with("(?(") {
            return None;
        } else {
            let len = if b[i] == b'\\' {
                1 + rest[1..].chars().next().map_or(0, char::len_utf8)
            } else {
                rest.chars().next().map_or(1, char::len_utf8)
            };
            out.push_str(&rest[..len.min(rest.len())]);
            i += len.max(1);
        }
    }
    Some(out)
}

/// The index after the group that opens at `start` (escapes and classes skipped).
fn group_end(b: &[u8], start: usize) -> Option<usize> {
    let (mut depth, mut i, mut class) = (0usize, start, false);
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' if !class => class = true,
            b']' if class => class = false,
            b'(' if !class => depth += 1,
            b')' if !class => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// A definition ready to run.
#[derive(Debug)]
pub struct Compiled {
    pub definition: Definition,
    /// The `needs` words (single-line definitions only).
    needs: Vec<memchr::memmem::Finder<'static>>,
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
        let needs = if multi {
            Vec::new()
        } else {
            definition.needs.iter().map(|w| memchr::memmem::Finder::new(w.as_bytes()).into_owned()).collect()
        };
        Ok(Compiled { definition, needs, pref, fail, ignore, dates })
    }

    /// A new stream's state.
    pub fn state(&self) -> State {
        State { buffer: VecDeque::new(), sessions: HashMap::default(), last_time: None, scratch: Scratch::default() }
    }

    /// Scratch space for [`Compiled::prepare`] (one per thread).
    pub fn scratch(&self) -> Scratch {
        Scratch::default()
    }

    /// Whether a single-line definition reads `line`: it holds one of the `needs` words
    /// (or the definition names none).
    fn wanted(&self, line: &str) -> bool {
        self.needs.is_empty() || self.needs.iter().any(|w| w.find(line.as_bytes()).is_some())
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
            if !self.wanted(line) {
                return Outcome { time: st.last_time, ..Outcome::default() };
            }
            let prepared = self.prepare(&mut st.scratch, line, now);
            return self.finish(st, prepared, now);
        }
        let time = st.scratch.undate(&self.dates, line, now);
        let text = std::mem::take(&mut st.scratch.text);
        self.multi_line(st, text, Outcome { time, ..Outcome::default() }, now)
    }

    /// Runs one line whose time is known (a journal entry's): no date is searched.
    pub fn line_dated(&self, st: &mut State, line: &str, at: Timestamp) -> Outcome {
        if self.single_line() {
            if !self.wanted(line) {
                return Outcome { time: Some(at), ..Outcome::default() };
            }
            let text = format!("{line}\n");
            let prepared =
                self.matching(st.scratch.locations(self), &text, Prepared { time: Some(at), ..Prepared::default() });
            return self.finish(st, prepared, at);
        }
        self.multi_line(st, line.to_string(), Outcome { time: Some(at), ..Outcome::default() }, at)
    }

    /// The per-line stage of a single-line definition: the date, the prefregex, the
    /// first failregex that matches and no ignoreregex vetoes. No session state: lines
    /// may be prepared in any thread and order, then finished in order.
    pub fn prepare(&self, sc: &mut Scratch, line: &str, now: Timestamp) -> Prepared {
        if !self.wanted(line) {
            return Prepared::default();
        }
        let time = sc.undate(&self.dates, line, now);
        sc.text.push('\n');
        let (locs, text) = sc.parts(self);
        self.matching(locs, text, Prepared { time, ..Prepared::default() })
    }

    fn matching(&self, locs: &mut Locations, buf: &str, mut out: Prepared) -> Prepared {
        let content = match self.prefilter(locs, buf) {
            Pref::Match { content } => content,
            Pref::Miss => return out,
            Pref::Limit => {
                out.limit = true;
                return out;
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
            None => buf,
        };
        let mut flags = Outcome::default();
        let matched = self.failregex_match(locs, content_buf, buf, None, &mut flags);
        out.ignored = flags.ignored;
        out.limit |= flags.limit;
        out.matched = matched;
        out
    }

    /// The ordered stage: the session merge and the failure's host.
    pub fn finish(&self, st: &mut State, prepared: Prepared, now: Timestamp) -> Outcome {
        let Prepared { time, ignored, limit, matched } = prepared;
        let mut out = Outcome { failure: None, time, ignored, limit };
        if out.time.is_some() {
            st.last_time = out.time;
        } else {
            out.time = st.last_time;
        }
        match matched {
            Some((index, fail)) => {
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
        // The failregexes in order, each with PCRE2's JIT. (A `regex::RegexSet` pass to
        // pick the candidates first cost 7% more on sshd lines: the patterns are anchored
        // at the content's start, where PCRE2 refuses a non-match in a few steps.)
        for (index, rx) in self.fail.iter().enumerate() {
            if !rx.may_match(buf) {
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
            }
            fail.set_groups(&rx.re, buf, &locs.fail[index]);
            fail.apply_alternatives();
            return Some((index, fail));
        }
        None
    }

    /// Settles a match: its session's verdict, then its host.
    fn conclude(&self, st: &mut State, index: usize, mut fail: Fail, at: Timestamp, mut out: Outcome) -> Outcome {
        let mlfid = fail.values.remove("mlfid");
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
            if let Some(s) = mlfid.as_ref().and_then(|id| st.sessions.get_mut(id.as_str())) {
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

/// A line after the per-line stage: its time, what it showed and the match to settle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    time: Option<Timestamp>,
    ignored: bool,
    limit: bool,
    matched: Option<(usize, Fail)>,
}

/// Per-thread scratch: the date template that found the last date, the clock, capture
/// slots.
#[derive(Debug)]
pub struct Scratch {
    last_template: Option<(usize, usize)>,
    clock: Clock,
    locs: Option<Locations>,
    /// The line without its date, reused from line to line.
    text: String,
}

impl Scratch {
    /// The capture slots, made at the first line.
    fn locations(&mut self, c: &Compiled) -> &mut Locations {
        self.locs.get_or_insert_with(|| Locations::new(c))
    }

    /// Writes `line` without its date to the text buffer; the date's time.
    fn undate(&mut self, dates: &DateDetector, line: &str, now: Timestamp) -> Option<Timestamp> {
        self.clock.now = now;
        let found = dates.find(line, &mut self.last_template, &mut self.clock);
        self.text.clear();
        match found {
            Some(f) => {
                self.text.push_str(&line[..f.start]);
                self.text.push_str(&line[f.end..]);
                f.time
            }
            None => {
                self.text.push_str(line);
                None
            }
        }
    }

    /// The capture slots and the text buffer together.
    fn parts(&mut self, c: &Compiled) -> (&mut Locations, &mut String) {
        (self.locs.get_or_insert_with(|| Locations::new(c)), &mut self.text)
    }
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch { last_template: None, clock: Clock::new(Timestamp(0)), locs: None, text: String::new() }
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

/// A captured value: most (an address, a user, a pid, a session's prefix) are short
/// enough to be kept inline, without an allocation.
pub type Text = compact_str::CompactString;

/// Captured values by group name: a handful, looked up in order (no hashing, and the
/// names are the patterns' own, shared).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Values(Vec<(Arc<str>, Text)>);

impl Values {
    fn get(&self, key: &str) -> Option<&Text> {
        self.0.iter().find(|(k, _)| &**k == key).map(|(_, v)| v)
    }

    fn insert(&mut self, key: Arc<str>, value: Text) {
        if self.0.capacity() == 0 {
            self.0.reserve(8);
        }
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key, value)),
        }
    }

    fn remove(&mut self, key: &str) -> Option<Text> {
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
    users: BTreeSet<Text>,
}

impl Fail {
    /// Sets the groups of `re` that took part; those that did not are cleared (as a
    /// failregex's unmatched group overrides the prefregex's value).
    fn set_groups(&mut self, re: &Re, buf: &str, locs: &CaptureLocations) {
        for (name, span) in re.spans(locs) {
            if &**name == "content" {
                continue;
            }
            match span {
                Some((s, e)) => {
                    self.values.insert(name.clone(), Text::from(&buf[s..e]));
                }
                None => {
                    self.values.remove(name);
                }
            }
        }
    }

    /// `<F-ALT_USER>` and the like fill `user` when it is empty.
    fn apply_alternatives(&mut self) {
        if !self.values.0.iter().any(|(k, _)| k.starts_with("alt_")) {
            return;
        }
        let alts: Vec<(String, Text)> = self
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
                None => Host::Name(ip.to_string()),
            });
        }
        let text = self.values.get("dns").or_else(|| self.values.get("fid"))?;
        Some(match crate::detect::filter::parse_host(text) {
            Some(a) => Host::Addr(a, None),
            None => Host::Name(text.to_string()),
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
    user: Option<Text>,
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

/// The groups that carry a failure's host.
const HOST_KEYS: [&str; 5] = ["ip4", "ip6", "dns", "fid", "cidr"];

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
    /// Keyed by text from the log (foldhash's seeded quality hasher: fast, and not
    /// predictable from outside).
    sessions: HashMap<String, Session, foldhash::quality::RandomState>,
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
            // A line that names its own address speaks for it: the session's earlier
            // address (a reused pid whose close was not logged) does not stay beside it.
            if HOST_KEYS.iter().any(|k| fail.values.get(k).is_some()) {
                for k in HOST_KEYS {
                    cached.values.remove(k);
                }
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

#[cfg(test)]
mod first_byte_tests {
    use super::first_bytes;

    fn starts(pattern: &str) -> Option<String> {
        first_bytes(pattern).map(|f| f.iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| i as u8 as char).collect())
    }

    #[test]
    fn anchored_patterns_are_tried_only_on_texts_starting_right() {
        assert_eq!(starts(r"^[aA]uth(?!x) for (?P<user>.*) from (?<![\w])\d+(?P=user)").as_deref(), Some("Aa"));
        assert_eq!(starts(r"^(?:Connection (?:closed|reset)|Disconnected) by").as_deref(), Some("CD"));
        assert_eq!(starts(r"^(?i:x)y").as_deref(), Some("Xx"));
        // Not anchored, an open start, an alternative without the anchor, a conditional:
        // tried on every text.
        for open in [r"Failed from", r"^\S+ from", r"^a|b", r"^(?(x)a|b)", r"^(?:a|)b*"] {
            assert_eq!(starts(open), None, "{open}");
        }
    }
}
