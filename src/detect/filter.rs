//! Filters: fail2ban-style `failregex` / `ignoreregex` with a `<HOST>` placeholder,
//! compiled once into one alternation per filter, so a line costs one regex search per
//! filter; a [`FilterSet`] holds the filters of one source.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
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

/// A compiled filter: banshare's patterns, or a fail2ban definition. Immutable and
/// cheap to clone (the compiled engine is shared): the config compiles each filter once
/// and every stream that runs it keeps its own [`FilterSet`] state. A built-in left as
/// it is compiles when first run ([`Filter::deferred`]): a command that runs no filter
/// does not pay for seventeen.
#[derive(Debug, Clone)]
pub struct Filter {
    pub spec: FilterSpec,
    engine: Arc<OnceLock<Engine>>,
}

/// Two filters are the same when written the same and, for a fail2ban definition, read
/// from the same files (an edited definition file is another filter).
impl PartialEq for Filter {
    fn eq(&self, other: &Filter) -> bool {
        self.spec == other.spec && self.definition() == other.definition()
    }
}

#[derive(Debug)]
enum Engine {
    Patterns(Patterns),
    Fail2ban(Compiled),
}

/// banshare's own patterns, compiled.
#[derive(Debug, Clone)]
struct Patterns {
    fail: Vec<Regex>,
    /// Every pattern in one alternation, pattern `i` with its own host groups `h{i}_{k}`:
    /// one search per line instead of a set search plus a capture search. `None` when
    /// the patterns' own group names collide.
    combined: Option<Regex>,
    /// Group indices in `combined` of each pattern's hosts.
    groups: Vec<Vec<usize>>,
    /// `<HOST>` occurrences per pattern (groups `host0..` in the pattern's own regex).
    hosts: Vec<usize>,
    ignore: Option<RegexSet>,
    /// When every pattern starts with the same word (as `\bsshd...`), the combined
    /// patterns anchored at that word: a line is searched for the word (memchr), and
    /// the regex runs from there, forward only (no reverse scan for the match start, a
    /// shorter span for the capture engine).
    anchored: Option<Anchored>,
}

/// See [`Patterns::anchored`].
#[derive(Debug, Clone)]
struct Anchored {
    word: memchr::memmem::Finder<'static>,
    /// `\A(?:...)`, the combined patterns without their leading `\b`.
    re: Regex,
    groups: Vec<Vec<usize>>,
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
        let engine = Engine::build(&spec)?;
        Ok(Filter { spec, engine: Arc::new(OnceLock::from(engine)) })
    }

    /// A filter known to compile (a built-in, each compiled in every mode by the unit
    /// tests), compiled when first run.
    pub fn deferred(spec: FilterSpec) -> Filter {
        Filter { spec, engine: Arc::new(OnceLock::new()) }
    }

    fn engine(&self) -> &Engine {
        self.engine.get_or_init(|| {
            Engine::build(&self.spec).unwrap_or_else(|e| panic!("a built-in filter that does not compile: {e}"))
        })
    }
}

impl Engine {
    fn build(spec: &FilterSpec) -> Result<Engine, FilterError> {
        Ok(match &spec.fail2ban {
            Some(def) => {
                let err = |e: super::f2b::DefinitionError| FilterError {
                    filter: spec.name.clone(),
                    key: "fail2ban",
                    index: 0,
                    message: e.to_string(),
                };
                Engine::Fail2ban(Compiled::new(def.load().map_err(err)?).map_err(err)?)
            }
            None => Engine::Patterns(Patterns::compile(spec)?),
        })
    }
}

impl Filter {
    /// The same patterns or definition (compiled once, shared) with another category
    /// and window.
    pub fn with_window(&self, category: &str, maxretry: u32, findtime: Duration, bantime: Duration) -> Filter {
        let spec = FilterSpec { category: category.to_string(), maxretry, findtime, bantime, ..self.spec.clone() };
        Filter { spec, engine: Arc::clone(&self.engine) }
    }

    /// The fail2ban definition this filter runs, as read when it was compiled.
    pub fn definition(&self) -> Option<&Definition> {
        match self.engine() {
            Engine::Fail2ban(c) => Some(&c.definition),
            Engine::Patterns(_) => None,
        }
    }

    /// A new stream's state for this filter: a fail2ban definition's sessions and line
    /// buffer span lines; banshare's patterns judge each line alone and keep none.
    fn state(&self) -> Option<State> {
        match self.engine() {
            Engine::Fail2ban(c) => Some(c.state()),
            Engine::Patterns(_) => None,
        }
    }

    /// This filter's verdict on `line` (read at `now`), in the stream whose state is
    /// `state`.
    fn test(&self, state: Option<&mut State>, line: &[u8], now: Timestamp) -> Option<Hit> {
        match (self.engine(), state) {
            (Engine::Patterns(p), _) => p.test(line),
            (Engine::Fail2ban(c), Some(st)) => hit(c.line(st, &text_of(line), now)),
            (Engine::Fail2ban(_), None) => unreachable!("FilterSet::new gives each definition its state"),
        }
    }
}

/// A fail2ban definition's outcome as a [`Hit`].
fn hit(out: Outcome) -> Option<Hit> {
    if let Some(f) = out.failure {
        return Some(match f.host {
            Host::Addr(addr, _) => Hit::Failure(Failure { addr, at: out.time }),
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
        let ignore = if spec.ignoreregex.is_empty() {
            None
        } else {
            for (i, p) in spec.ignoreregex.iter().enumerate() {
                compile(&expand(p, "host").0).map_err(|e| err("ignoreregex", i, e.to_string()))?;
            }
            let set = RegexSetBuilder::new(spec.ignoreregex.iter().map(|p| expand(p, "host").0)).unicode(false).build();
            Some(set.expect("each pattern compiled"))
        };
        let hosts: Vec<usize> = spec.failregex.iter().map(|p| expand(p, "host").1).collect();
        let combined = compile(&alternation(spec.failregex.iter().map(String::as_str))).ok();
        let groups = combined.as_ref().map(|re| host_groups(re, &hosts)).unwrap_or_default();
        let anchored = anchor(spec, &hosts);
        Ok(Patterns { fail, combined, groups, hosts, ignore, anchored })
    }

    fn test(&self, line: &[u8]) -> Option<Hit> {
        let caps;
        let host = match (&self.anchored, &self.combined) {
            (Some(a), _) => {
                // At most MAX_ANCHOR_TRIES occurrences of the word are tried: each try can
                // run to the end of the line, so a line repeating the word thousands of
                // times would otherwise cost quadratic time. Real lines name the daemon
                // once or twice, near the start.
                caps = a.word.find_iter(line).take(MAX_ANCHOR_TRIES).find_map(|at| {
                    let boundary = at == 0 || !is_word(line[at - 1]);
                    if boundary { a.re.captures(&line[at..]) } else { None }
                })?;
                a.groups.iter().find_map(|hs| hs.iter().find_map(|h| caps.get(*h)))?
            }
            (None, Some(re)) => {
                caps = re.captures(line)?;
                self.groups.iter().find_map(|hs| hs.iter().find_map(|h| caps.get(*h)))?
            }
            (None, None) => {
                let (i, c) = self.fail.iter().enumerate().find_map(|(i, re)| re.captures(line).map(|c| (i, c)))?;
                caps = c;
                (0..self.hosts[i]).find_map(|k| caps.name(&format!("host{k}")))?
            }
        };
        if self.ignore.as_ref().is_some_and(|ig| ig.is_match(line)) {
            return Some(Hit::Ignored);
        }
        let host = host.as_bytes();
        let parsed = std::str::from_utf8(host).ok().and_then(parse_host);
        Some(match parsed {
            Some(addr) => Hit::Failure(Failure { addr, at: None }),
            None => Hit::NotAnAddress(String::from_utf8_lossy(host).into_owned()),
        })
    }
}

/// The patterns in one alternation, pattern `i`'s hosts captured as `h{i}_{k}`.
fn alternation<'a>(patterns: impl Iterator<Item = &'a str>) -> String {
    patterns.enumerate().map(|(i, p)| format!("(?:{})", expand(p, &format!("h{i}_")).0)).collect::<Vec<_>>().join("|")
}

/// The group indices in `re` (an [`alternation`]) of each pattern's hosts.
fn host_groups(re: &Regex, hosts: &[usize]) -> Vec<Vec<usize>> {
    let index = |name: String| re.capture_names().position(|n| n == Some(name.as_str()));
    hosts.iter().enumerate().map(|(i, n)| (0..*n).filter_map(|k| index(format!("h{i}_{k}"))).collect()).collect()
}

/// A failure found in a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub addr: IpAddr,
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

/// The filters of one stream (a followed source, a replayed file), tested together,
/// with the state each fail2ban definition keeps over the stream (its sessions and line
/// buffer span lines, so the stream's lines must reach it in order).
#[derive(Debug)]
pub struct FilterSet {
    pub filters: Vec<Filter>,
    states: Vec<Option<State>>,
}

impl FilterSet {
    pub fn new(filters: Vec<Filter>) -> FilterSet {
        let states = filters.iter().map(Filter::state).collect();
        FilterSet { filters, states }
    }

    /// Tests the stream's next line (read at `now`) against every filter; at most one
    /// hit per filter.
    pub fn test(&mut self, line: &[u8], now: Timestamp) -> Hits {
        let mut hits = Hits::new();
        for (i, (f, st)) in self.filters.iter().zip(&mut self.states).enumerate() {
            hits.extend(f.test(st.as_mut(), line, now).map(|h| (i, h)));
        }
        hits
    }

    /// The half of the set that needs no state, for matching threads.
    pub fn matcher(&self) -> Matcher {
        Matcher { filters: self.filters.clone() }
    }

    /// The ordered stage of a line [`Matcher::test_unordered`] tested: prepared results
    /// finished, multi-line definitions run.
    pub fn settle(&mut self, line: &[u8], hits: Hits, now: Timestamp) -> Hits {
        let mut done = Hits::new();
        for (i, h) in hits {
            match (h, self.filters[i].engine(), self.states[i].as_mut()) {
                (Hit::Prepared(p), Engine::Fail2ban(c), Some(st)) => {
                    done.extend(hit(c.finish(st, p, now)).map(|h| (i, h)))
                }
                (h, _, _) => done.push((i, h)),
            }
        }
        // The multi-line definitions, which `test_unordered` left alone.
        let mut added = false;
        for (i, (f, st)) in self.filters.iter().zip(&mut self.states).enumerate() {
            if let Engine::Fail2ban(c) = f.engine()
                && !c.single_line()
            {
                done.extend(f.test(st.as_mut(), line, now).map(|h| (i, h)));
                added = true;
            }
        }
        if added {
            done.sort_by_key(|(i, _)| *i);
        }
        done
    }
}

/// The filters of a [`FilterSet`] without its state: the per-line work any thread can
/// do, in any order, before [`FilterSet::settle`] finishes each line in order.
#[derive(Debug, Clone)]
pub struct Matcher {
    filters: Vec<Filter>,
}

impl Matcher {
    /// Scratch space for one thread's [`Matcher::test_unordered`].
    pub fn scratch(&self) -> Vec<Option<Scratch>> {
        self.filters
            .iter()
            .map(|f| match f.engine() {
                Engine::Fail2ban(c) => Some(c.scratch()),
                Engine::Patterns(_) => None,
            })
            .collect()
    }

    /// banshare's patterns give their verdicts, fail2ban's single-line definitions a
    /// [`Hit::Prepared`]; multi-line definitions are left to [`FilterSet::settle`].
    pub fn test_unordered(&self, line: &[u8], scratch: &mut [Option<Scratch>], now: Timestamp) -> Hits {
        let mut hits = Hits::new();
        for (i, f) in self.filters.iter().enumerate() {
            match f.engine() {
                Engine::Patterns(p) => hits.extend(p.test(line).map(|h| (i, h))),
                Engine::Fail2ban(c) if c.single_line() => {
                    let sc = scratch[i].as_mut().expect("Matcher::scratch gives each definition its scratch");
                    hits.push((i, Hit::Prepared(c.prepare(sc, &text_of(line), now))));
                }
                Engine::Fail2ban(_) => {}
            }
        }
        hits
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
    let rests: Vec<&str> = spec.failregex.iter().map(|p| p.strip_prefix(BOUNDARY)).collect::<Option<_>>()?;
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
    let re = compile(&format!(r"\A(?:{})", alternation(rests.into_iter()))).ok()?;
    let groups = host_groups(&re, hosts);
    Some(Anchored { word: memchr::memmem::Finder::new(word.as_bytes()).into_owned(), re, groups })
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

    /// A config's own sshd patterns, as a user writes them.
    fn sshd() -> Filter {
        let prefix = r"(?-u:\b)sshd(?:-session)?(?:\[\d+\])?: ";
        let spec = FilterSpec {
            failregex: vec![
                format!(r"{prefix}Failed \S+ for (?:invalid user )?.* from <HOST> port \d+"),
                format!(r"{prefix}Invalid user .* from <HOST>"),
                format!(r"{prefix}Connection closed by (?:invalid|authenticating) user .* <HOST> port \d+ \[preauth\]"),
            ],
            ..FilterSpec::new("sshd", "ssh_bruteforce")
        };
        Filter::compile(spec).unwrap()
    }

    fn patterns(f: &Filter) -> &Patterns {
        match f.engine() {
            Engine::Patterns(p) => p,
            Engine::Fail2ban(_) => panic!("patterns"),
        }
    }

    #[test]
    fn sshd_takes_the_anchored_path_and_agrees_with_the_plain_search() {
        let filter = sshd();
        let f = patterns(&filter);
        assert!(f.anchored.is_some(), "every sshd pattern starts with \\bsshd");
        let plain = Patterns { anchored: None, ..f.clone() };
        let slow = Patterns { anchored: None, combined: None, ..f.clone() };
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
            assert_eq!(f.test(line.as_bytes()), slow.test(line.as_bytes()), "{line}");
        }
        let hit = f.test(b"Jan  2 03:04:05 sshd-box sshd[11]: Failed password for root from 45.155.205.8 port 22 ssh2");
        assert_eq!(hit, Some(Hit::Failure(Failure { addr: "45.155.205.8".parse().unwrap(), at: None })));
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
        let f = Filter::compile(spec).unwrap();
        assert!(patterns(&f).anchored.is_none());
        assert!(matches!(patterns(&f).test(b"x login failed from 45.155.205.7"), Some(Hit::Failure(_))));
    }

    #[test]
    fn each_stream_keeps_its_own_sessions_of_one_compiled_definition() {
        // One compiled sshd, two streams that both see pid 81: the session's address in
        // stream a is the one stream a logged.
        let filter = Filter::compile(super::super::builtin::spec("sshd").unwrap()).unwrap();
        let (mut a, mut b) = (FilterSet::new(vec![filter.clone()]), FilterSet::new(vec![filter]));
        let now = Timestamp(1_795_000_000_000);
        let key = |ip: &str| {
            format!("Nov 23 10:00:01 h sshd[81]: Failed publickey for root from {ip} port 5000 ssh2: RSA SHA256:a")
        };
        let too_many =
            b"Nov 23 10:00:02 h sshd[81]: Disconnecting: Too many authentication failures for root [preauth]";
        assert!(a.test(key("203.0.113.10").as_bytes(), now).is_empty(), "a refused key alone is no failure");
        assert!(b.test(key("198.51.100.1").as_bytes(), now).is_empty());
        let addr: IpAddr = "203.0.113.10".parse().unwrap();
        let hits = a.test(too_many, now);
        assert!(matches!(hits.as_slice(), [(0, Hit::Failure(f))] if f.addr == addr), "{hits:?}");
    }
}
