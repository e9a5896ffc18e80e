//! fail2ban's patterns as PCRE2 patterns.
//!
//! fail2ban's patterns are Python `re` syntax with fail2ban's tags: `<HOST>` (an IPv4 or
//! IPv6 address, maybe bracketed, or a hostname), `<ADDR>` (an address only), `<IP4>`,
//! `<IP6>`, `<DNS>`, `<CIDR>`, `<SUBNET>`, `<F-ID/>`, `<F-PORT/>`, `<SKIPLINES>`, and
//! `<F-NAME>...</F-NAME>` capturing as `name` (`F-ID` as `fid`, `F-PORT` as `fport`).
//! [`expand`] writes those tags out and [`translate`] rewrites the few Python spellings
//! PCRE2 reads otherwise (`{,n}`, `\Z`, the `u` flag). PCRE2 runs the rest as Python does:
//! look-around, `(?P<name>...)`, `(?P=name)`, conditionals `(?(name)yes|no)`.
//!
//! Every pattern runs under a match limit: a pattern and a line that would backtrack
//! without end stop with [`Search::Limit`], which the caller counts and skips.

use std::sync::Arc;

use pcre2::bytes::{CaptureLocations, Regex, RegexBuilder};

/// The most backtracking steps one search may take.
pub const MATCH_LIMIT: u32 = 1_000_000;

const IP4: &str = r"(?:\d{1,3}\.){3}\d{1,3}";
const IP6: &str = r"(?:[0-9a-fA-F]{1,4}::?|::){1,7}(?:[0-9a-fA-F]{1,4}|(?<=:):)";

fn ip4() -> String {
    format!(r"(?:::f{{4,6}}:)?(?P<ip4>{IP4})")
}

fn ip6() -> String {
    format!(r"(?P<ip6>{IP6})")
}

const DNS: &str = r"(?P<dns>[\w\-.^_]*\w)";
const CIDR: &str = r"(?P<cidr>\d+)";

fn addr() -> String {
    format!(r"\[?(?:{}|{})\]?", ip4(), ip6())
}

/// The replacement of a fixed tag (`HOST`, `F-ID/`, ...), if `name` is one.
fn fixed(name: &str) -> Option<String> {
    Some(match name.strip_prefix("F-").and_then(|n| n.strip_suffix('/')).unwrap_or(name) {
        "HOST" if name == "HOST" => format!("(?:{}|{DNS})", addr()),
        "ADDR" => addr(),
        "IP4" => ip4(),
        "IP6" => ip6(),
        "DNS" => DNS.to_string(),
        "CIDR" => CIDR.to_string(),
        "SUBNET" => format!(r"\[?(?:{}|{})(?:/{CIDR})?\]?", ip4(), ip6()),
        "ID" if name == "F-ID/" => r"(?P<fid>\S+)".to_string(),
        "PORT" if name == "F-PORT/" => r"(?P<fport>\w+)".to_string(),
        _ => return None,
    })
}

/// The group name of a custom tag `F-NAME`.
fn group_name(tag: &str) -> String {
    match tag {
        "ID" => "fid".to_string(),
        "PORT" => "fport".to_string(),
        t => t.to_lowercase().replace('-', "_"),
    }
}

/// Writes out fail2ban's tags; other `<...>` text stays as it is.
pub fn expand(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut open: Vec<String> = Vec::new();
    let mut skiplines = 0;
    let mut rest = pattern;
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        rest = &rest[lt..];
        let end = rest[1..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '/'))
            .map(|i| i + 1)
            .filter(|&i| rest[i..].starts_with('>') && i > 1);
        let Some(end) = end else {
            out.push('<');
            rest = &rest[1..];
            continue;
        };
        let tag = &rest[1..end];
        let whole = &rest[..=end];
        rest = &rest[end + 1..];
        if tag == "SKIPLINES" {
            out.push_str(&format!(r"\n(?P<skiplines{skiplines}>(?:(?:.*\n)*?))"));
            skiplines += 1;
        } else if let Some(r) = fixed(tag) {
            out.push_str(&r);
        } else if let Some(name) = tag.strip_prefix("/F-").filter(|n| is_custom(n)) {
            if open.iter().any(|o| o == name) {
                out.push(')');
            } else {
                out.push_str(whole);
            }
        } else if let Some(name) = tag.strip_prefix("F-").filter(|n| is_custom(n)) {
            open.push(name.to_string());
            out.push_str(&format!("(?P<{}>", group_name(name)));
        } else {
            out.push_str(whole);
        }
    }
    out.push_str(rest);
    out
}

/// `NAME` of `<F-NAME>`: upper-case letters, digits, `_`, `-`.
fn is_custom(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Rewrites Python spellings PCRE2 reads otherwise; `Err` names a construct PCRE2 cannot
/// run as Python would.
pub fn translate(pattern: &str) -> Result<String, String> {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.char_indices().peekable();
    let mut in_class = false;
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                let Some((_, next)) = chars.next() else {
                    return Err("the pattern ends with a lone `\\`".into());
                };
                match next {
                    'Z' if !in_class => out.push_str(r"\z"),
                    n => {
                        out.push('\\');
                        out.push(n);
                    }
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                // `[]...]` and `[^]...]`: a leading `]` is a literal.
                if let Some((_, '^')) = chars.peek() {
                    out.push('^');
                    chars.next();
                }
                if let Some((_, ']')) = chars.peek() {
                    out.push_str(r"\]");
                    chars.next();
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '{' if !in_class && pattern[i + 1..].starts_with(',') => {
                let close = pattern[i + 1..].find('}').map(|j| i + 1 + j);
                match close.filter(|&j| pattern[i + 2..j].chars().all(|d| d.is_ascii_digit()) && j > i + 2) {
                    Some(_) => out.push_str("{0"),
                    None => out.push_str(r"\{"),
                }
            }
            '(' if !in_class && pattern[i + 1..].starts_with('?') => {
                let flags: String = pattern[i + 2..].chars().take_while(|c| c.is_ascii_alphabetic()).collect();
                let after = pattern[i + 2 + flags.len()..].chars().next();
                if !flags.is_empty() && matches!(after, Some(')' | ':' | '-')) && !flags.starts_with('P') {
                    if flags.contains(['a', 'L']) {
                        return Err(format!(
                            "the flag group `(?{flags}` (ASCII or locale matching) has no PCRE2 equivalent"
                        ));
                    }
                    out.push_str("(?");
                    out.push_str(&flags.replace('u', ""));
                    for _ in 0..1 + flags.len() {
                        chars.next();
                    }
                    if flags.chars().all(|f| f == 'u') && after == Some(')') {
                        // `(?u)` alone: Unicode is PCRE2's mode here already.
                        out.truncate(out.len() - 2);
                        chars.next();
                    }
                } else {
                    out.push('(');
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A compiled pattern and its named groups.
#[derive(Debug)]
pub struct Re {
    re: Regex,
    /// Group index of each name.
    names: Vec<(Arc<str>, usize)>,
}

/// What one search found.
#[derive(Debug, PartialEq, Eq)]
pub enum Search {
    NoMatch,
    /// The match's span; the groups are in the locations searched with ([`Re::spans`]).
    Match {
        span: (usize, usize),
    },
    /// The match limit or the JIT stack ran out: neither a match nor a miss.
    Limit,
}

impl Re {
    /// Compiles a Python pattern (tags already expanded); `multi_line` for buffers of
    /// several lines (`^` and `$` at each line).
    pub fn new(pattern: &str, multi_line: bool) -> Result<Re, String> {
        let translated = translate(pattern)?;
        let re = RegexBuilder::new()
            .utf(true)
            .ucp(true)
            .multi_line(multi_line)
            .jit_if_available(true)
            .max_jit_stack_size(Some(1 << 20))
            .build(&format!("(*LIMIT_MATCH={MATCH_LIMIT}){translated}"))
            .map_err(|e| e.to_string())?;
        let names = re
            .capture_names()
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_deref().map(|n| (Arc::from(n), i)))
            .collect();
        Ok(Re { re, names })
    }

    /// The index of group `name`.
    pub fn group(&self, name: &str) -> Option<usize> {
        self.names.iter().find(|(n, _)| &**n == name).map(|(_, i)| *i)
    }

    pub fn names(&self) -> impl Iterator<Item = (&str, usize)> {
        self.names.iter().map(|(n, i)| (&**n, *i))
    }

    /// Each named group and its span in the last match `locs` holds (`None`: it took no
    /// part).
    pub fn spans<'l>(
        &'l self,
        locs: &'l CaptureLocations,
    ) -> impl Iterator<Item = (&'l Arc<str>, Option<(usize, usize)>)> {
        self.names.iter().map(move |(n, i)| (n, locs.get(*i)))
    }

    pub fn locations(&self) -> CaptureLocations {
        self.re.capture_locations()
    }

    /// Searches `subject`, with `locs` from [`Re::locations`] of this pattern.
    pub fn search(&self, locs: &mut CaptureLocations, subject: &str) -> Search {
        match self.re.captures_read(locs, subject.as_bytes()) {
            Ok(None) => Search::NoMatch,
            Ok(Some(m)) => Search::Match { span: (m.start(), m.end()) },
            Err(_) => Search::Limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(re: &Re, s: &str) -> Option<Vec<(String, String)>> {
        let mut locs = re.locations();
        match re.search(&mut locs, s) {
            Search::Match { .. } => Some(
                re.spans(&locs)
                    .filter_map(|(n, span)| span.map(|(a, b)| (n.to_string(), s[a..b].to_string())))
                    .collect(),
            ),
            _ => None,
        }
    }

    #[test]
    fn expands_tags_as_fail2ban_does() {
        let re = Re::new(&expand(r"^<F-USER>\S+</F-USER> from <HOST>(?: port <F-PORT/>)?$"), false).unwrap();
        let g = groups(&re, "root from 2001:db8::1 port 22").unwrap();
        assert!(
            g.contains(&("user".into(), "root".into())) && g.contains(&("ip6".into(), "2001:db8::1".into())),
            "{g:?}"
        );
        assert!(g.contains(&("fport".into(), "22".into())));
        let g = groups(&re, "root from [::ffff:192.0.2.1]").unwrap();
        assert!(g.contains(&("ip4".into(), "192.0.2.1".into())), "{g:?}");
        let g = groups(&re, "root from mail.example.org").unwrap();
        assert!(g.contains(&("dns".into(), "mail.example.org".into())), "{g:?}");
        let addr = Re::new(&expand(r"from <ADDR>$"), false).unwrap();
        assert!(groups(&addr, "from mail.example.org").is_none(), "<ADDR> takes no hostname");
        assert_eq!(expand("a</F-X>b<F-ID/>"), r"a</F-X>b(?P<fid>\S+)", "a closing tag never opened stays");
        assert_eq!(expand("<unknown> <F-ALT_USER1>x</F-ALT_USER1>"), "<unknown> (?P<alt_user1>x)");
    }

    #[test]
    fn translates_python_spellings() {
        assert_eq!(translate(r"\d{,3} a{2,} [{,]").unwrap(), r"\d{0,3} a{2,} [{,]");
        assert_eq!(translate(r"end\Z [\Z]").unwrap(), r"end\z [\Z]");
        assert_eq!(translate(r"(?iu)x(?i:y)(?P<n>z)(?:w)(?u)").unwrap(), r"(?i)x(?i:y)(?P<n>z)(?:w)");
        assert!(translate(r"(?a)x").unwrap_err().contains("no PCRE2 equivalent"));
        let re = Re::new(r"^(?P<c>a)?(?(c)b|c)$", false).unwrap();
        let mut locs = re.locations();
        let mut matches = |s| matches!(re.search(&mut locs, s), Search::Match { .. });
        assert_eq!((matches("ab"), matches("c"), matches("ac")), (true, true, false));
    }

    #[test]
    fn a_runaway_search_stops_at_the_limit() {
        let re = Re::new(r"^(a+)+$", false).unwrap();
        let line = format!("{}b", "a".repeat(64));
        let mut locs = re.locations();
        assert_eq!(re.search(&mut locs, &line), Search::Limit);
        assert!(matches!(re.search(&mut locs, "aaaa"), Search::Match { .. }));
    }
}
