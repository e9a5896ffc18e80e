//! fail2ban filter definitions, read and run unchanged.
//!
//! A definition such as `sshd[mode=aggressive]` is read from `filter.d/sshd.conf` under
//! fail2ban's directory the way fail2ban's own reader reads it ([`conf`]: includes,
//! `.local` overrides, `%(name)s`; [`ini`]: the file syntax), its options are resolved
//! with the jail's (bracketed) options and `[Init]`, and its `<tag>`s are substituted
//! ([`Definition::load`]). [`regex`] turns the resulting Python patterns (with `<HOST>`,
//! `<F-USER>`, ...) into PCRE2 patterns with a match limit; [`date`] finds and strips the
//! timestamp as fail2ban's date detector does; [`engine`] runs lines through it all with
//! fail2ban's multi-line semantics (`<F-MLFID>` sessions, `<F-NOFAIL>`,
//! `<F-MLFFORGET>`, `<F-MLFGAINED>`, `maxlines`).
//!
//! What banshare cannot run exactly is an error naming the file, the line and the
//! construct, never a silently weaker filter.

pub mod conf;
pub mod date;
pub mod engine;
pub mod ini;
pub mod regex;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use conf::Conf;
pub use conf::Files;

/// A definition that cannot be read or run, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl DefinitionError {
    pub fn new(file: &Path, message: String) -> DefinitionError {
        DefinitionError { file: file.to_path_buf(), line: None, message }
    }

    pub fn at(file: &Path, line: usize, message: String) -> DefinitionError {
        DefinitionError { file: file.to_path_buf(), line: Some(line), message }
    }
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// A filter as a jail names it: `sshd[mode=aggressive, publickey="invalid"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterRef {
    pub name: String,
    pub options: Vec<(String, String)>,
}

impl fmt::Display for FilterRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.options.is_empty() {
            let value = |v: &str| {
                if v.contains([',', ']', '"']) || v.trim() != v { format!("'{v}'") } else { v.to_string() }
            };
            let opts: Vec<String> = self.options.iter().map(|(k, v)| format!("{k}={}", value(v))).collect();
            write!(f, "[{}]", opts.join(", "))?;
        }
        Ok(())
    }
}

impl std::str::FromStr for FilterRef {
    type Err = String;

    /// Parses fail2ban's `name[key=value, key="value, with comma", key='x']`.
    fn from_str(s: &str) -> Result<FilterRef, String> {
        let s = s.trim();
        let (name, rest) = match s.find('[') {
            Some(i) => {
                let inner =
                    s[i + 1..].strip_suffix(']').ok_or_else(|| format!("`{s}`: the options need a closing `]`"))?;
                (s[..i].trim(), Some(inner))
            }
            None => (s, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || "-_.".contains(c)) {
            return Err(format!("`{s}`: expected a filter name (letters, digits, `-`, `_`, `.`) before the options"));
        }
        let mut options = Vec::new();
        let mut rest = rest.unwrap_or("").trim_start();
        while !rest.is_empty() {
            let eq = rest.find('=').ok_or_else(|| format!("`{s}`: expected `key=value` at `{rest}`"))?;
            let key = rest[..eq].trim();
            if key.is_empty() || !key.chars().all(|c| c.is_alphanumeric() || "-_.".contains(c)) {
                return Err(format!("`{s}`: `{key}` is not an option name"));
            }
            let after = &rest[eq + 1..];
            let (value, tail) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let end =
                        after[1..].find(q).ok_or_else(|| format!("`{s}`: the value of {key} has no closing {q}"))?;
                    (after[1..1 + end].to_string(), &after[end + 2..])
                }
                _ => {
                    let end = after.find(',').unwrap_or(after.len());
                    (after[..end].trim().to_string(), &after[end..])
                }
            };
            let tail = tail.trim_start();
            rest = match tail.strip_prefix(',') {
                Some(t) => t.trim_start(),
                None if tail.is_empty() => tail,
                None => return Err(format!("`{s}`: expected `,` after the value of {key}, found `{tail}`")),
            };
            options.push((key.to_string(), value));
        }
        Ok(FilterRef { name: name.to_string(), options })
    }
}

/// A definition's settings after interpolation and tag substitution: Python patterns
/// with fail2ban's `<HOST>`/`<F-...>` tags still in them (see [`regex`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub filter: FilterRef,
    /// The `.conf` file, and every file read for it in merge order.
    pub file: PathBuf,
    pub files: Vec<PathBuf>,
    pub prefregex: Option<String>,
    pub failregex: Vec<Pattern>,
    pub ignoreregex: Vec<Pattern>,
    pub maxlines: usize,
    pub datepattern: Option<String>,
    pub journalmatch: Vec<String>,
    /// banshare's `needs` key (fail2ban has none; its reader ignores it): words of which a
    /// line must hold one to be the filter's. A single-line definition skips other lines
    /// before reading their date. banshare's built-ins set it to their program names.
    pub needs: Vec<String>,
}

/// One pattern and the line of the file that set its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub text: String,
    pub file: PathBuf,
    pub line: usize,
}

/// The `[Definition]` keys a filter uses.
const KEYS: &[&str] = &["prefregex", "failregex", "ignoreregex", "maxlines", "datepattern", "journalmatch", "needs"];

/// Most times one tag may be replaced in one value (fail2ban's limit is 50).
const MAX_TAG_REPLACE: usize = 50;

/// The longest a value may grow by substitution and interpolation: tags that repeat
/// one another double a value at each step.
pub const MAX_VALUE: usize = 1 << 20;

impl Definition {
    /// Reads `filter.d/NAME.conf` under `dir` with the reference's options.
    pub fn load(dir: &Path, filter: &FilterRef) -> Result<Definition, DefinitionError> {
        Definition::load_from(Files::Disk, dir, filter)
    }

    /// Like [`Definition::load`], from `files`.
    pub fn load_from(files: Files, dir: &Path, filter: &FilterRef) -> Result<Definition, DefinitionError> {
        let file = dir.join("filter.d").join(format!("{}.conf", filter.name));
        let conf = Conf::read_from(files, &file)?;
        if !conf.has_section("Definition") {
            return Err(DefinitionError::new(&file, "has no [Definition] section".into()));
        }
        let vars: HashMap<String, String> = filter.options.iter().map(|(k, v)| (k.to_lowercase(), v.clone())).collect();
        // The jail's options, then [Init]'s (each also as `known/key`), then the keys.
        let mut tags: BTreeMap<String, String> = filter.options.iter().cloned().collect();
        for key in conf.keys("Init") {
            let value = conf.get("Init", &key, &HashMap::new())?.unwrap_or_default();
            if !key.starts_with("known/") {
                tags.insert(format!("known/{key}"), value.clone());
            }
            tags.entry(key).or_insert(value);
        }
        for key in KEYS {
            if !tags.contains_key(*key)
                && let Some(v) = conf.get("Definition", key, &vars)?
            {
                tags.insert(key.to_string(), v);
            }
        }
        let lookup = |name: &str| conf.get_ex("Definition", name, &vars);
        let at = |key: &str| {
            conf.raw("Definition", key).map(|v| (v.file.clone(), v.line)).unwrap_or_else(|| (file.clone(), 0))
        };
        let mut resolved = HashMap::new();
        for key in KEYS {
            if let Some(v) = tags.get(*key) {
                let (f, line) = at(key);
                let value = substitute(key, v, &tags, &lookup).map_err(|m| DefinitionError::at(&f, line, m))?;
                resolved.insert(*key, value);
            }
        }
        let patterns = |key: &str| -> Vec<Pattern> {
            let (f, line) = at(key);
            resolved
                .get(key)
                .map(|v| {
                    v.lines()
                        .filter(|l| !l.is_empty())
                        .map(|l| Pattern { text: l.to_string(), file: f.clone(), line })
                        .collect()
                })
                .unwrap_or_default()
        };
        let failregex = patterns("failregex");
        if failregex.is_empty() {
            return Err(DefinitionError::new(&file, "has no failregex".into()));
        }
        let maxlines = match resolved.get("maxlines").map(|s| s.trim()) {
            None | Some("") => 1,
            Some(n) => {
                let (f, line) = at("maxlines");
                n.parse::<usize>().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| {
                    DefinitionError::at(&f, line, format!("maxlines: expected a number from 1 to 1000, not `{n}`"))
                })?
            }
        };
        let ignoreregex = patterns("ignoreregex");
        let journalmatch = patterns("journalmatch").into_iter().map(|p| p.text).collect();
        let needs =
            patterns("needs").into_iter().map(|p| p.text.trim().to_string()).filter(|w| !w.is_empty()).collect();
        Ok(Definition {
            filter: filter.clone(),
            file,
            files: conf.files.clone(),
            prefregex: resolved.get("prefregex").filter(|p| !p.trim().is_empty()).cloned(),
            failregex,
            ignoreregex,
            maxlines,
            datepattern: resolved.get("datepattern").map(|d| d.trim().to_string()).filter(|d| !d.is_empty()),
            journalmatch,
            needs,
        })
    }
}

/// Replaces `<tag>`s in `value` from `tags`, then from `lookup` (any key of the
/// definition, `section/key` too), innermost first (`<mdre-<mode>>`). Tags that name
/// nothing stay (`<HOST>`, `<F-USER>`): they are the pattern's.
fn substitute(
    key: &str,
    value: &str,
    tags: &BTreeMap<String, String>,
    lookup: &dyn Fn(&str) -> Result<Option<String>, DefinitionError>,
) -> Result<String, String> {
    let mut value = value.to_string();
    let mut counts: HashMap<String, usize> = HashMap::new();
    // Passes until one replaces nothing: an inner tag's replacement can complete an
    // outer one left of it (`<mdre-<mode>>`).
    loop {
        let mut replaced = false;
        let mut from = 0;
        while let Some((start, end)) = next_tag(&value, from) {
            let tag = value[start + 1..end - 1].to_string();
            let replacement = match tags.get(&tag) {
                Some(v) => Some(v.clone()),
                None => lookup(&tag).map_err(|e| e.to_string())?,
            };
            let Some(r) = replacement else {
                from = end;
                continue;
            };
            if tag == key || counts.get(&tag).is_some_and(|n| *n >= MAX_TAG_REPLACE) {
                return Err(format!("{key}: <{tag}> refers to itself and cannot be resolved"));
            }
            let occurrences = value.matches(&format!("<{tag}>")).count();
            if value.len() + occurrences * r.len() > MAX_VALUE {
                return Err(format!(
                    "{key}: expands beyond {} KiB at <{tag}> (tags that repeat one another?)",
                    MAX_VALUE >> 10
                ));
            }
            value = value.replace(&format!("<{tag}>"), &r);
            *counts.entry(tag).or_default() += 1;
            replaced = true;
            from = start;
        }
        if !replaced {
            return Ok(value);
        }
    }
}

/// The next `<tag>` at or after `from`: `<` then characters other than space, `<`, `>`.
fn next_tag(s: &str, from: usize) -> Option<(usize, usize)> {
    let bytes = s.as_bytes();
    let mut i = from;
    while i < bytes.len() {
        if bytes[i] == b'<' {
            let mut j = i + 1;
            while j < bytes.len() && !matches!(bytes[j], b' ' | b'<' | b'>') {
                j += 1;
            }
            if j < bytes.len() && bytes[j] == b'>' && j > i + 1 {
                return Some((i, j + 1));
            }
            i = j;
        } else {
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filter_references_as_jails_write_them() {
        let r: FilterRef = "sshd[mode=aggressive, publickey=\"invalid, x\", a='b']".parse().unwrap();
        assert_eq!(r.name, "sshd");
        assert_eq!(
            r.options,
            vec![
                ("mode".into(), "aggressive".into()),
                ("publickey".into(), "invalid, x".into()),
                ("a".into(), "b".into())
            ]
        );
        assert_eq!("dovecot".parse::<FilterRef>().unwrap().options, vec![]);
        for (bad, says) in [
            ("sshd[mode=x", "closing `]`"),
            ("[mode=x]", "expected a filter name"),
            ("sshd[mode]", "expected `key=value`"),
            ("sshd[mode=\"x]", "no closing \""),
            ("../etc[mode=x]", "expected a filter name"),
        ] {
            let e = bad.parse::<FilterRef>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn substitutes_nested_tags_and_refuses_loops() {
        let tags = BTreeMap::from([("mode".to_string(), "ddos".to_string()), ("a".into(), "<b>".into())]);
        let lookup = |name: &str| -> Result<Option<String>, DefinitionError> {
            Ok(match name {
                "mdre-ddos" => Some("^ddos <HOST>".into()),
                "b" => Some("<a>".into()),
                _ => None,
            })
        };
        assert_eq!(substitute("failregex", "<mdre-<mode>> <F-USER>", &tags, &lookup).unwrap(), "^ddos <HOST> <F-USER>");
        let e = substitute("failregex", "<a>", &tags, &lookup).unwrap_err();
        assert!(e.contains("refers to itself"), "{e}");
        // Tags that double one another: 2^40 copies, refused at the size limit (a
        // fuzzer's definition took the test process to 24 GB before the limit).
        let doubling: BTreeMap<String, String> =
            (0..40).map(|i| (format!("t{i}"), format!("<t{}><t{}>", i + 1, i + 1))).collect();
        let none = |_: &str| -> Result<Option<String>, DefinitionError> { Ok(None) };
        let e = substitute("failregex", "<t0>", &doubling, &none).unwrap_err();
        assert!(e.contains("expands beyond 1024 KiB"), "{e}");
    }
}
