//! Filters: fail2ban-style `failregex` / `ignoreregex` with a `<HOST>` placeholder,
//! compiled once into one alternation per filter, so a line costs one regex search per
//! filter; a [`FilterSet`] holds the filters of one source.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use super::f2b::engine::{Compiled, Host, Outcome, Prepared, Scratch, State};
use super::f2b::{Definition, Files, FilterRef};
use crate::clock::Timestamp;

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
    /// Run fail2ban's definition instead of the patterns above.
    pub fail2ban: Option<Fail2banDefinition>,
}

impl FilterSpec {
    /// A filter of the config's own (no patterns yet) with the default window.
    pub fn new(name: &str, category: &str) -> FilterSpec {
        FilterSpec {
            name: name.to_string(),
            category: category.to_string(),
            failregex: Vec::new(),
            helperregex: Vec::new(),
            ignoreregex: Vec::new(),
            maxretry: super::builtin::MAXRETRY,
            findtime: super::builtin::FINDTIME,
            bantime: super::builtin::BANTIME,
            fail2ban: None,
        }
    }
}

/// A definition to run: `filter.d/NAME.conf` under `dir`, read from `files` (fail2ban's
/// on the disk, or banshare's built-in ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail2banDefinition {
    pub files: Files,
    pub dir: PathBuf,
    pub filter: FilterRef,
}

impl Fail2banDefinition {
    /// fail2ban's definition `filter` under `dir` on the disk.
    pub fn on_disk(dir: &std::path::Path, filter: FilterRef) -> Fail2banDefinition {
        Fail2banDefinition { files: Files::Disk, dir: dir.to_path_buf(), filter }
    }

    pub fn load(&self) -> Result<Definition, super::f2b::DefinitionError> {
        Definition::load_from(self.files, &self.dir, &self.filter)
    }
}

/// A compiled filter: banshare's patterns, or a fail2ban definition.
#[derive(Debug, Clone)]
pub struct Filter {
    pub spec: FilterSpec,
    engine: Engine,
}

#[derive(Debug, Clone)]
enum Engine {
    Patterns(Box<Patterns>),
    Fail2ban(Fail2banRun),
}

/// A fail2ban definition and the state of the one stream it reads (its sessions and
/// line buffer span lines, so lines must reach it in order).
#[derive(Debug, Clone)]
struct Fail2banRun {
    compiled: Arc<Compiled>,
    state: Arc<Mutex<State>>,
}

/// banshare's own patterns, compiled.
#[derive(Debug, Clone)]
struct Patterns {
    /// `failregex` then `helperregex`; patterns from `helpers_from` on are helpers.
    fail: Vec<Regex>,
    helpers_from: usize,
    /// Every pattern in one alternation, pattern `i` with its own groups `h{i}_{k}`
    /// (hosts) and `s{i}` (session): one search per line instead of a set search plus a
    /// capture search. `None` when the patterns' own group names collide.
    combined: Option<Regex>,
    /// Group indices in `combined` of each pattern's hosts and session.
    groups: Vec<(Vec<usize>, Option<usize>)>,
    /// `<HOST>` occurrences per pattern (groups `host0..` in the pattern's own regex).
    hosts: Vec<usize>,
    ignore: Option<RegexSet>,
    /// When every pattern starts with the same word (sshd's do: `\bsshd...`), the
    /// combined patterns anchored at that word: a line is searched for the word
    /// (memchr), and the regex runs from there, forward only (no reverse scan for the
    /// match start, a shorter span for the capture engine).
    anchored: Option<Anchored>,
}

/// See [`Filter::anchored`].
#[derive(Debug, Clone)]
struct Anchored {
    word: memchr::memmem::Finder<'static>,
    /// `\A(?:...)`, the combined patterns without their leading `\b`.
    re: Regex,
    groups: Vec<(Vec<usize>, Option<usize>)>,
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

/// Expands `<HOST>` (and `<ADDR>`, its fail2ban synonym); the k-th occurrence captures
/// as `{name}{k}`, so a pattern may offer the address in several places (alternatives).
fn expand(pattern: &str, name: &str) -> (String, usize) {
    let mut out = String::with_capacity(pattern.len() + 64);
    let mut rest = pattern;
    let mut k = 0;
    loop {
        let next = ["<HOST>", "<ADDR>"].iter().filter_map(|tag| rest.find(tag)).min();
        let Some(at) = next else { break };
        out.push_str(&rest[..at]);
        out.push_str(&HOST.replace("(?P<host>", &format!("(?P<{name}{k}>")));
        rest = &rest[at + 6..];
        k += 1;
    }
    out.push_str(rest);
    (out, k)
}

/// Patterns run on raw line bytes with ASCII classes: `\d`, `\w`, `.` as in every log
/// format here, NFAs a fraction of the Unicode ones, and no UTF-8 validation per line.
fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).unicode(false).build()
}

impl Filter {
    pub fn compile(spec: FilterSpec) -> Result<Filter, FilterError> {
        let engine = match &spec.fail2ban {
            Some(def) => {
                let err = |e: super::f2b::DefinitionError| FilterError {
                    filter: spec.name.clone(),
                    key: "fail2ban",
                    index: 0,
                    message: e.to_string(),
                };
                let compiled = Compiled::new(def.load().map_err(err)?).map_err(err)?;
                let state = Arc::new(Mutex::new(compiled.state()));
                Engine::Fail2ban(Fail2banRun { compiled: Arc::new(compiled), state })
            }
            None => Engine::Patterns(Box::new(Patterns::compile(&spec)?)),
        };
        Ok(Filter { spec, engine })
    }

    /// Whether lines must reach this filter in order (a fail2ban definition: its
    /// sessions span lines); banshare's patterns judge each line alone.
    pub fn ordered(&self) -> bool {
        matches!(self.engine, Engine::Fail2ban(_))
    }

    /// This filter's verdict on `line`, if any of its patterns matches.
    pub fn test(&self, line: &[u8]) -> Option<Hit> {
        match &self.engine {
            Engine::Patterns(p) => p.test(line),
            Engine::Fail2ban(run) => run.test(line),
        }
    }
}

impl Fail2banRun {
    fn test(&self, line: &[u8]) -> Option<Hit> {
        let text = text_of(line);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Fail2banRun::hit(self.compiled.line(&mut state, &text, Timestamp::now()))
    }

    fn hit(out: Outcome) -> Option<Hit> {
        if let Some(f) = out.failure {
            return Some(match f.host {
                Host::Addr(addr, _) => Hit::Failure(Failure { addr, session: None, helper: false, at: out.time }),
                Host::Name(name) => Hit::NotAnAddress(name),
            });
        }
        if out.ignored {
            Some(Hit::Ignored)
        } else if out.limit {
            Some(Hit::Limit)
        } else {
            None
        }
    }
}

impl Patterns {
    fn compile(spec: &FilterSpec) -> Result<Patterns, FilterError> {
        let err = |key, index, message: String| FilterError { filter: spec.name.clone(), key, index, message };
        let mut fail = Vec::new();
        for (i, p) in spec.failregex.iter().enumerate() {
            if !p.contains("<HOST>") && !p.contains("<ADDR>") {
                return Err(err("failregex", i, "has no <HOST> (the address to ban)".into()));
            }
            fail.push(compile(&expand(p, "host").0).map_err(|e| err("failregex", i, e.to_string()))?);
        }
        if fail.is_empty() {
            return Err(err("failregex", 0, "a filter needs at least one failregex".into()));
        }
        let helpers_from = fail.len();
        for (i, p) in spec.helperregex.iter().enumerate() {
            fail.push(compile(&expand(p, "host").0).map_err(|e| err("helperregex", i, e.to_string()))?);
        }
        let ignore = if spec.ignoreregex.is_empty() {
            None
        } else {
            for (i, p) in spec.ignoreregex.iter().enumerate() {
                compile(&expand(p, "host").0).map_err(|e| err("ignoreregex", i, e.to_string()))?;
            }
            let set = RegexSetBuilder::new(spec.ignoreregex.iter().map(|p| expand(p, "host").0)).unicode(false).build();
            Some(set.expect("each pattern compiled"))
        };
        let combined = compile(
            &spec
                .failregex
                .iter()
                .chain(&spec.helperregex)
                .enumerate()
                .map(|(i, p)| {
                    format!("(?:{})", expand(p, &format!("h{i}_")).0.replace("(?P<session>", &format!("(?P<s{i}>")))
                })
                .collect::<Vec<_>>()
                .join("|"),
        )
        .ok();
        let hosts: Vec<usize> = spec.failregex.iter().chain(&spec.helperregex).map(|p| expand(p, "host").1).collect();
        let groups = combined
            .as_ref()
            .map(|re| {
                let index = |name: String| re.capture_names().position(|n| n == Some(name.as_str()));
                hosts
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        ((0..*n).filter_map(|k| index(format!("h{i}_{k}"))).collect(), index(format!("s{i}")))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let anchored = anchor(spec, &hosts);
        Ok(Patterns { fail, helpers_from, combined, groups, hosts, ignore, anchored })
    }

    fn test(&self, line: &[u8]) -> Option<Hit> {
        let caps;
        let (host, session, helper) = match (&self.anchored, &self.combined) {
            (Some(a), _) => {
                // At most MAX_ANCHOR_TRIES occurrences of the word are tried: each try can
                // run to the end of the line, so a line repeating the word thousands of
                // times would otherwise cost quadratic time. Real lines name the daemon
                // once or twice, near the start.
                caps = a.word.find_iter(line).take(MAX_ANCHOR_TRIES).find_map(|at| {
                    let boundary = at == 0 || !is_word(line[at - 1]);
                    if boundary { a.re.captures(&line[at..]) } else { None }
                })?;
                let (i, host) = a
                    .groups
                    .iter()
                    .enumerate()
                    .find_map(|(i, (hs, _))| hs.iter().find_map(|h| caps.get(*h)).map(|m| (i, m)))?;
                let session = a.groups[i].1.and_then(|s| caps.get(s)).and_then(|m| number(m.as_bytes()));
                (host.as_bytes(), session, i >= self.helpers_from)
            }
            (None, Some(re)) => {
                caps = re.captures(line)?;
                let (i, host) = self
                    .groups
                    .iter()
                    .enumerate()
                    .find_map(|(i, (hs, _))| hs.iter().find_map(|h| caps.get(*h)).map(|m| (i, m)))?;
                let session = self.groups[i].1.and_then(|s| caps.get(s)).and_then(|m| number(m.as_bytes()));
                (host.as_bytes(), session, i >= self.helpers_from)
            }
            (None, None) => {
                let (i, c) = self.fail.iter().enumerate().find_map(|(i, re)| re.captures(line).map(|c| (i, c)))?;
                caps = c;
                let session = caps.name("session").and_then(|m| number(m.as_bytes()));
                let host = (0..self.hosts[i]).find_map(|k| caps.name(&format!("host{k}")))?;
                (host.as_bytes(), session, i >= self.helpers_from)
            }
        };
        if self.ignore.as_ref().is_some_and(|ig| ig.is_match(line)) {
            return Some(Hit::Ignored);
        }
        let parsed = std::str::from_utf8(host).ok().and_then(parse_host);
        Some(match parsed {
            Some(addr) => Hit::Failure(Failure { addr, session, helper, at: None }),
            None => Hit::NotAnAddress(String::from_utf8_lossy(host).into_owned()),
        })
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
    /// The line's time, when the filter read it (fail2ban definitions do).
    pub at: Option<Timestamp>,
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
    /// A pattern hit the match limit on this line: skipped.
    Limit,
    /// A fail2ban definition's per-line result, for [`FilterSet::settle`] to finish in
    /// line order (its sessions span lines).
    Prepared(Prepared),
}

/// The filters' hits on one line (most lines have one or none: kept inline).
pub type Hits = smallvec::SmallVec<[(usize, Hit); 2]>;

/// The filters of one source, tested together.
#[derive(Debug, Clone)]
pub struct FilterSet {
    pub filters: Vec<Filter>,
}

impl FilterSet {
    pub fn new(filters: Vec<Filter>) -> FilterSet {
        FilterSet { filters }
    }

    /// Tests `line` against every filter; at most one hit per filter. Lines must come
    /// in order (see [`Filter::ordered`]).
    pub fn test(&self, line: &[u8]) -> Hits {
        self.filters.iter().enumerate().filter_map(|(i, f)| f.test(line).map(|hit| (i, hit))).collect()
    }

    /// Scratch space for one thread's [`FilterSet::test_unordered`].
    pub fn scratch(&self) -> Vec<Option<Scratch>> {
        self.filters
            .iter()
            .map(|f| match &f.engine {
                Engine::Fail2ban(run) => Some(run.compiled.scratch()),
                Engine::Patterns(_) => None,
            })
            .collect()
    }

    /// The per-line stage, callable from any thread in any order: banshare's patterns
    /// give their verdicts, fail2ban's single-line definitions a [`Hit::Prepared`];
    /// [`FilterSet::settle`] then finishes the line, in line order.
    pub fn test_unordered(&self, line: &[u8], scratch: &mut [Option<Scratch>], now: Timestamp) -> Hits {
        let mut hits = Hits::new();
        for (i, f) in self.filters.iter().enumerate() {
            match &f.engine {
                Engine::Patterns(p) => hits.extend(p.test(line).map(|h| (i, h))),
                Engine::Fail2ban(run) if run.compiled.single_line() => {
                    let sc = scratch[i].as_mut().expect("FilterSet::scratch gives each definition its scratch");
                    let prepared = run.compiled.prepare(sc, &text_of(line), now);
                    hits.push((i, Hit::Prepared(prepared)));
                }
                // A multi-line definition runs whole in `settle`.
                Engine::Fail2ban(_) => {}
            }
        }
        hits
    }

    /// The ordered stage of a line [`FilterSet::test_unordered`] tested: prepared
    /// results finished, multi-line definitions run.
    pub fn settle(&self, line: &[u8], hits: Hits, now: Timestamp) -> Hits {
        let mut done: Hits = hits
            .into_iter()
            .filter_map(|(i, hit)| match (hit, &self.filters[i].engine) {
                (Hit::Prepared(p), Engine::Fail2ban(run)) => {
                    let mut state = run.state.lock().unwrap_or_else(|e| e.into_inner());
                    Fail2banRun::hit(run.compiled.finish(&mut state, p, now)).map(|h| (i, h))
                }
                (hit, _) => Some((i, hit)),
            })
            .collect();
        // The multi-line definitions, which `test_unordered` left alone.
        let mut added = false;
        for (i, f) in self.filters.iter().enumerate() {
            if let Engine::Fail2ban(run) = &f.engine
                && !run.compiled.single_line()
            {
                done.extend(f.test(line).map(|h| (i, h)));
                added = true;
            }
        }
        if added {
            done.sort_by_key(|(i, _)| *i);
        }
        done
    }
}

/// A line as text: itself when it is UTF-8 (checked fast), else decoded lossily.
fn text_of(line: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(line) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(line),
    }
}

/// How many occurrences of an anchored filter's leading word one line may cost.
const MAX_ANCHOR_TRIES: usize = 16;

/// An ASCII word character, as `(?-u:\b)` sees it.
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The anchored fast path, when every pattern starts with `\b` and the same word.
fn anchor(spec: &FilterSpec, hosts: &[usize]) -> Option<Anchored> {
    const BOUNDARY: &str = r"(?-u:\b)";
    let patterns: Vec<&String> = spec.failregex.iter().chain(&spec.helperregex).collect();
    let rests: Vec<&str> = patterns.iter().map(|p| p.strip_prefix(BOUNDARY)).collect::<Option<_>>()?;
    // The leading word: letters and digits up to the first other character; a quantifier
    // right after it would apply to its last letter, so that letter is left out.
    let word_of = |p: &str| {
        let end = p.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(p.len());
        let quantified = p[end..].starts_with(['?', '*', '+', '{']);
        p[..if quantified { end.saturating_sub(1) } else { end }].to_string()
    };
    let word = word_of(rests[0]);
    if word.is_empty() || rests.iter().any(|r| word_of(r) != word) {
        return None;
    }
    let re = compile(&format!(
        r"\A(?:{})",
        rests
            .iter()
            .enumerate()
            .map(|(i, p)| format!(
                "(?:{})",
                expand(p, &format!("h{i}_")).0.replace("(?P<session>", &format!("(?P<s{i}>"))
            ))
            .collect::<Vec<_>>()
            .join("|")
    ))
    .ok()?;
    let index = |name: String| re.capture_names().position(|n| n == Some(name.as_str()));
    let groups = hosts
        .iter()
        .enumerate()
        .map(|(i, n)| ((0..*n).filter_map(|k| index(format!("h{i}_{k}"))).collect(), index(format!("s{i}"))))
        .collect();
    Some(Anchored { word: memchr::memmem::Finder::new(word.as_bytes()).into_owned(), re, groups })
}

fn number(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Parses a captured host with `std::net`; `::ffff:1.2.3.4` becomes 1.2.3.4.
pub fn parse_host(text: &str) -> Option<IpAddr> {
    let addr: IpAddr = text.trim_matches(|c| c == '[' || c == ']').parse().ok()?;
    Some(match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config's own sshd patterns (as a user writes them, with a session capture).
    fn sshd() -> Filter {
        let prefix = r"(?-u:\b)sshd(?:-session)?(?:\[(?P<session>\d+)\])?: ";
        let spec = FilterSpec {
            failregex: vec![
                format!(r"{prefix}Failed \S+ for (?:invalid user )?.* from <HOST> port \d+"),
                format!(r"{prefix}Invalid user .* from <HOST>"),
            ],
            helperregex: vec![format!(
                r"{prefix}Connection closed by (?:invalid|authenticating) user .* <HOST> port \d+ \[preauth\]"
            )],
            ..FilterSpec::new("sshd", "ssh_bruteforce")
        };
        Filter::compile(spec).unwrap()
    }

    #[test]
    fn sshd_takes_the_anchored_path_and_agrees_with_the_plain_search() {
        let Engine::Patterns(f) = sshd().engine else { panic!("patterns") };
        assert!(f.anchored.is_some(), "every sshd pattern starts with \\bsshd");
        let plain = Patterns { anchored: None, ..(*f).clone() };
        for line in [
            "Jan  2 03:04:05 web1 sshd[11]: Failed password for root from 45.155.205.7 port 22 ssh2",
            // A host named like the program: the first "sshd" is not the program tag.
            "Jan  2 03:04:05 sshd-box sshd[11]: Failed password for root from 45.155.205.8 port 22 ssh2",
            // Not at a word boundary: no match, as with \b.
            "Jan  2 03:04:05 web1 xsshd[11]: Failed password for root from 45.155.205.9 port 22 ssh2",
            // The username tries to inject another address: the last one is taken.
            "Jan  2 03:04:05 web1 sshd[11]: Failed password for invalid user a from 1.2.3.4 port 1 from 45.155.205.10 port 22 ssh2",
            "Jan  2 03:04:05 web1 sshd-session[12]: Connection closed by authenticating user root 45.155.205.11 port 5 [preauth]",
            "Jan  2 03:04:05 web1 sshd[11]: Invalid user x from 45.155.205.12",
        ] {
            assert_eq!(f.test(line.as_bytes()), plain.test(line.as_bytes()), "{line}");
        }
        let hit = f.test(b"Jan  2 03:04:05 sshd-box sshd[11]: Failed password for root from 45.155.205.8 port 22 ssh2");
        assert_eq!(
            hit,
            Some(Hit::Failure(Failure {
                addr: "45.155.205.8".parse().unwrap(),
                session: Some(11),
                helper: false,
                at: None
            }))
        );
        let injected = f.test(
            b"Jan  2 03:04:05 web1 sshd[11]: Failed password for invalid user a from 1.2.3.4 port 1 from 45.155.205.10 port 22 ssh2",
        );
        assert!(matches!(injected, Some(Hit::Failure(Failure { addr, .. })) if addr.to_string() == "45.155.205.10"));
        assert_eq!(
            f.test(b"Jan  2 03:04:05 web1 xsshd[11]: Failed password for root from 45.155.205.9 port 22 ssh2"),
            None
        );
    }

    #[test]
    fn filters_without_a_common_leading_word_search_plainly() {
        let spec = FilterSpec {
            failregex: vec![r"login failed from <HOST>".into(), r"(?-u:\b)bad from <HOST>".into()],
            ..FilterSpec::new("custom", "other")
        };
        let f = Filter::compile(FilterSpec { helperregex: Vec::new(), ..spec }).unwrap();
        assert!(matches!(&f.engine, Engine::Patterns(p) if p.anchored.is_none()));
        assert!(matches!(f.test(b"x login failed from 45.155.205.7"), Some(Hit::Failure(_))));
    }
}
