//! What leaves the host: evidence lines with usernames, this host's names and its own
//! addresses removed, and sizes capped (`wayscloud-api.md`: comment at most 1,000
//! characters, evidence at most 4 KB in total). Pure text in, text out.

use std::net::IpAddr;
use std::sync::LazyLock;

use regex::Regex;

/// Longest comment sent.
pub const MAX_COMMENT: usize = 1000;
/// Most evidence bytes sent, all lines together.
pub const MAX_EVIDENCE: usize = 4096;
/// Longest single evidence line (longer ones are cut).
const MAX_LINE: usize = 1024;

/// Replacements, applied in order. Each keeps its first group and replaces the second.
static RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    let rule = |re: &str, with| (Regex::new(re).expect("valid built-in regex"), with);
    vec![
        // The syslog host field: "Jan  2 03:04:05 web1 sshd[1]:" or "2026-01-02T03:04:05+00:00 web1 sshd[1]:".
        rule(
            r"^((?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?) )(\S+)",
            "[host]",
        ),
        // Usernames: "Invalid user bob", "authenticating user root", user=root, ruser=x,
        // dovecot user=<bob>, postfix sasl_username=bob@example.com, nginx user "bob",
        // apache "user bob: authentication failure", logname=bob.
        rule(r#"(?i)(\b(?:(?:r|sasl_)?user(?:name)?|logname)=)(<[^>]*>|"[^"]*"|[^\s,;]*)"#, "[user]"),
        rule(r#"(?i)(\buser ")([^"]*)"#, "[user]"),
        rule(r#"(?i)(\b(?:invalid |illegal |authenticating )?user )([^\s:"\[][^\s:]*)"#, "[user]"),
        // "Failed password for root from", "exceeded for root from".
        rule(r"(\bfor )([^\s\[]\S*)( from )", "[user]"),
        // The remote-user field of an access log: `203.0.113.7 - bob [02/Jan/2026:...`.
        rule(r"^(\S+ \S+ )([^\s\-\[][^\s\[]*)( \[)", "[user]"),
        // This host as nginx names it: `server: example.com`, `host: "example.com"`.
        rule(r#"(\bserver: )([^,\s]+)"#, "[host]"),
        rule(r#"(\b(?:host|referrer): ")([^"]*)"#, "[host]"),
    ]
});

/// Removes what identifies this host and its users from log lines.
#[derive(Debug, Clone, Default)]
pub struct Sanitizer {
    /// This host's names (hostname, short name), lowercase.
    names: Vec<String>,
    /// This host's addresses as text, longest first (so `10.0.0.12` goes before `10.0.0.1`).
    addrs: Vec<String>,
}

impl Sanitizer {
    pub fn new(hostnames: &[String], addrs: &[IpAddr]) -> Sanitizer {
        let mut names: Vec<String> = Vec::new();
        for name in hostnames {
            let name = name.trim().to_ascii_lowercase();
            // "localhost" and one- or two-letter names would eat ordinary words.
            if name.len() >= 3 && name != "localhost" {
                if let Some(short) = name.split('.').next().filter(|s| s.len() >= 3 && *s != name) {
                    names.push(short.to_string());
                }
                names.push(name);
            }
        }
        names.sort_by_key(|n| std::cmp::Reverse(n.len()));
        names.dedup();
        let mut addrs: Vec<String> = addrs.iter().filter(|a| !a.is_loopback()).map(IpAddr::to_string).collect();
        addrs.sort_by_key(|a| std::cmp::Reverse(a.len()));
        Sanitizer { names, addrs }
    }

    /// For this host: its hostname and the given addresses.
    pub fn for_host(addrs: &[IpAddr]) -> Sanitizer {
        let hostname = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
        Sanitizer::new(&[hostname], addrs)
    }

    /// One line, sanitised and cut to a sane length.
    pub fn line(&self, line: &str) -> String {
        let mut out: String = line.chars().filter(|c| !c.is_control() || *c == '\t').collect();
        for (re, with) in RULES.iter() {
            out = re
                .replace_all(&out, |c: &regex::Captures| {
                    format!("{}{}{}", &c[1], with, c.get(3).map_or("", |m| m.as_str()))
                })
                .into_owned();
        }
        for name in &self.names {
            out = replace_word(&out, name, "[host]");
        }
        for addr in &self.addrs {
            out = replace_word(&out, addr, "[self]");
        }
        cut(&out, MAX_LINE)
    }

    /// Evidence lines, sanitised, within [`MAX_EVIDENCE`] bytes in total (the most recent
    /// lines are kept: they show the attack that triggered the ban).
    pub fn evidence(&self, lines: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        let mut total = 0;
        for line in lines.iter().rev() {
            let clean = self.line(line);
            if total + clean.len() > MAX_EVIDENCE {
                break;
            }
            total += clean.len();
            out.push(clean);
        }
        out.reverse();
        out
    }

    /// A free-text comment, sanitised like a log line and cut to [`MAX_COMMENT`] characters.
    pub fn comment(&self, text: &str) -> String {
        let clean = self.line(text);
        clean.chars().take(MAX_COMMENT).collect()
    }
}

/// Replaces `word` (ASCII case-insensitive) where it is not part of a longer name or
/// address (the neighbours are not alphanumerics, dots, colons or dashes).
fn replace_word(text: &str, word: &str, with: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let is_part = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '_'));
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (at, _) in lower.match_indices(word) {
        let end = at + word.len();
        if at < last || is_part(text[..at].chars().next_back()) || is_part(text[end..].chars().next()) {
            continue;
        }
        out.push_str(&text[last..at]);
        out.push_str(with);
        last = end;
    }
    out.push_str(&text[last..]);
    out
}

/// At most `max` bytes, cut at a character boundary.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> Sanitizer {
        Sanitizer::new(&["web1.example.org".into()], &["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()])
    }

    #[test]
    fn usernames_hostnames_and_own_addresses_are_removed() {
        let cases = [
            (
                "Jan  2 03:04:05 web1 sshd[811]: Failed password for root from 45.155.205.7 port 4242 ssh2",
                "Jan  2 03:04:05 [host] sshd[811]: Failed password for [user] from 45.155.205.7 port 4242 ssh2",
            ),
            (
                "2026-01-02T03:04:05.123456+00:00 web1 sshd-session[9]: Failed password for invalid user oracle from 45.155.205.7 port 1 ssh2",
                "2026-01-02T03:04:05.123456+00:00 [host] sshd-session[9]: Failed password for invalid user [user] from 45.155.205.7 port 1 ssh2",
            ),
            (
                "Jan  2 03:04:05 web1 sshd[9]: Invalid user admin from 45.155.205.7 port 22 to 192.0.2.10",
                "Jan  2 03:04:05 [host] sshd[9]: Invalid user [user] from 45.155.205.7 port 22 to [self]",
            ),
            (
                "Jan  2 03:04:05 web1 sshd[9]: Connection closed by authenticating user root 45.155.205.7 port 5 [preauth]",
                "Jan  2 03:04:05 [host] sshd[9]: Connection closed by authenticating user [user] 45.155.205.7 port 5 [preauth]",
            ),
            (
                "Jan  2 03:04:05 web1 sshd[9]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=45.155.205.7  user=root",
                "Jan  2 03:04:05 [host] sshd[9]: pam_unix(sshd:auth): authentication failure; logname=[user] uid=0 euid=0 tty=ssh ruser=[user] rhost=45.155.205.7  user=[user]",
            ),
            (
                "Jan  2 03:04:05 web1 dovecot: imap-login: Disconnected (auth failed, 3 attempts): user=<bob>, method=PLAIN, rip=45.155.205.7, lip=192.0.2.10",
                "Jan  2 03:04:05 [host] dovecot: imap-login: Disconnected (auth failed, 3 attempts): user=[user], method=PLAIN, rip=45.155.205.7, lip=[self]",
            ),
            (
                r#"2026/01/02 03:04:05 [error] 7#7: *1 user "admin" was not found in "/etc/nginx/.htpasswd", client: 45.155.205.7, server: web1.example.org, request: "GET / HTTP/1.1", host: "web1.example.org""#,
                r#"2026/01/02 03:04:05 [error] 7#7: *1 user "[user]" was not found in "/etc/nginx/.htpasswd", client: 45.155.205.7, server: [host], request: "GET / HTTP/1.1", host: "[host]""#,
            ),
            (
                r#"45.155.205.7 - alice [02/Jan/2026:03:04:05 +0000] "GET /wp-login.php HTTP/1.1" 404 153 "-" "curl""#,
                r#"45.155.205.7 - [user] [02/Jan/2026:03:04:05 +0000] "GET /wp-login.php HTTP/1.1" 404 153 "-" "curl""#,
            ),
            (
                "[Tue Jan 02 03:04:05.1 2026] [auth_basic:error] [pid 1] [client 45.155.205.7:5] AH01618: user carol not found: /private on WEB1.example.org",
                "[Tue Jan 02 03:04:05.1 2026] [auth_basic:error] [pid 1] [client 45.155.205.7:5] AH01618: user [user] not found: /private on [host]",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(s().line(input), want, "input: {input}");
        }
    }

    #[test]
    fn an_address_that_merely_starts_like_ours_is_kept() {
        assert_eq!(s().line("from 192.0.2.101 and 192.0.2.10"), "from 192.0.2.101 and [self]");
        assert_eq!(s().line("web10 web1"), "web10 [host]");
    }

    #[test]
    fn sizes_are_capped() {
        let long = "x".repeat(5000);
        assert_eq!(s().comment(&long).chars().count(), MAX_COMMENT);
        let lines: Vec<String> = (0..20).map(|i| format!("{i:02} {}", "y".repeat(600))).collect();
        let ev = s().evidence(&lines);
        assert!(ev.iter().map(String::len).sum::<usize>() <= MAX_EVIDENCE);
        assert_eq!(ev.len(), 6);
        assert!(ev.last().unwrap().starts_with("19 "), "the most recent lines are kept");
        assert_eq!(s().line("a\u{0}b\u{1b}[31mc"), "ab[31mc");
    }
}
