//! The built-in filters, after fail2ban's `filter.d` definitions, each with its default
//! report category. `<HOST>` is expanded by [`super::filter`]. A line is tested against
//! the whole line, so each pattern starts with the program tag to stay cheap and precise.

use std::time::Duration;

use super::filter::FilterSpec;

/// sshd and its OpenSSH 9.8+ per-session binary, with or without a pid, as syslog writes
/// it and as banshare renders journald entries.
const SSHD: &str = r"(?-u:\b)sshd(?:-session|-auth)?(?:\[(?P<session>\d+)\])?: (?:error: |fatal: )?";

/// Failures every OpenSSH version logs for a bad login.
const SSHD_NORMAL: &[&str] = &[
    r"Failed (?:password|publickey|keyboard-interactive/pam|none|hostbased) for (?:invalid user )?.* from <HOST> port \d+",
    r"Invalid user .* from <HOST>(?: port \d+)?\s*$",
    r"Disconnecting (?:invalid|authenticating) user .* <HOST> port \d+: Too many authentication failures",
    r"maximum authentication attempts exceeded for (?:invalid user )?.* from <HOST> port \d+",
    r"User .+ from <HOST> not allowed because ",
    r"Received disconnect from <HOST> port \d+:\s*3: .*: Auth fail",
];

/// Lines that accompany an attempt already logged by a line above (PAM's view of a
/// failed password, the close of a session that failed): they count only for a session
/// (sshd pid) without another failure, which catches clients that fail publickey
/// silently and close, without counting one password attempt twice.
const SSHD_HELPERS: &[&str] = &[
    r"pam_unix\(sshd:auth\): authentication failure;.* rhost=<HOST>(?:\s|$)",
    r"(?:Connection closed|Disconnected) by (?:invalid|authenticating) user .* <HOST> port \d+ \[preauth\]",
    r"Disconnected from (?:invalid|authenticating) user .* <HOST> port \d+ \[preauth\]",
];

/// Scanners that never try a password: probes, failed key exchanges, bad banners.
const SSHD_AGGRESSIVE: &[&str] = &[
    r"Did not receive identification string from <HOST>",
    r"Unable to negotiate with <HOST> port \d+: no matching",
    r"(?:banner exchange|ssh_dispatch_run_fatal): Connection from <HOST> port \d+: ",
    r"Bad protocol version identification .* from <HOST>",
    r"Connection (?:closed|reset) by <HOST> port \d+ \[preauth\]",
    r"Received disconnect from <HOST> port \d+:\s*11: .*\[preauth\]",
];

/// Names of the built-in filters.
pub const NAMES: &[&str] =
    &["sshd", "nginx-http-auth", "nginx-botsearch", "nginx-limit-req", "apache-auth", "postfix-sasl", "dovecot"];

/// The default window: 5 failures within 10 minutes ban for 1 hour.
pub const MAXRETRY: u32 = 5;
pub const FINDTIME: Duration = Duration::from_secs(600);
pub const BANTIME: Duration = Duration::from_secs(3600);

/// A built-in filter by name; `aggressive` adds sshd's scanner patterns.
pub fn spec(name: &str, aggressive: bool) -> Option<FilterSpec> {
    // One prefix, then the alternatives: the program tag is matched once per line, not
    // once per pattern.
    let prefixed = |prefix: &str, pats: &[&str]| vec![format!("{prefix}(?:{})", pats.join("|"))];
    let mut helpers = Vec::new();
    let (category, failregex, maxretry): (&str, Vec<String>, u32) = match name {
        "sshd" => {
            let all: Vec<&str> = SSHD_NORMAL.iter().chain(if aggressive { SSHD_AGGRESSIVE } else { &[] }).copied().collect();
            let pats = prefixed(SSHD, &all);
            helpers = prefixed(SSHD, SSHD_HELPERS);
            ("ssh_bruteforce", pats, MAXRETRY)
        }
        "nginx-http-auth" => (
            "web_bruteforce",
            vec![r#"\[error\] \d+#\d+: \*\d+ user "[^"]*":? (?:password mismatch|was not found in "[^"]*"), client: <HOST>, server: "#.into()],
            MAXRETRY,
        ),
        "nginx-botsearch" => (
            "web_attack",
            vec![
                r#"^<HOST> - \S+ \[[^\]]+\] "(?:GET|POST|HEAD) /+(?i:wp-login\.php|wp-admin|xmlrpc\.php|\.env|\.git/|phpmyadmin|pma/|myadmin|mysqladmin|cgi-bin/|boaform|vendor/phpunit|hnap1|\.aws/|actuator|admin/config\.php|owa/)[^ "]* HTTP/[0-9.]+" 404 "#
                    .into(),
            ],
            2,
        ),
        "nginx-limit-req" => (
            "bad_bot",
            vec![r#"\[error\] \d+#\d+: \*\d+ limiting requests, excess: [\d.]+ by zone "[^"]*", client: <HOST>, "#.into()],
            MAXRETRY,
        ),
        "apache-auth" => (
            "web_bruteforce",
            vec![
                r#"\[(?:auth_basic|auth_digest):error\] \[pid \d+(?::tid \d+)?\] \[client <HOST>(?::\d+)?\] AH0\d+: (?:user .*?: authentication failure for "[^"]*": Password Mismatch|user .*? not found)"#.into(),
            ],
            MAXRETRY,
        ),
        "postfix-sasl" => (
            "mail_bruteforce",
            vec![
                r"postfix(?:/[\w-]+)*/smtpd\[\d+\]: warning: [-._\w]+\[<HOST>\]: SASL (?:LOGIN|PLAIN|(?:CRAM|DIGEST)-MD5) authentication failed".into(),
            ],
            MAXRETRY,
        ),
        "dovecot" => (
            "mail_bruteforce",
            vec![
                r"dovecot(?:\[\d+\])?: (?:pop3|imap|managesieve|submission)-login: (?:Aborted login|Disconnected|Login aborted)[^(]*\((?:auth failed|no auth attempts|tried to use disabled)[^)]*\):.*\brip=<HOST>".into(),
                r"dovecot(?:\[\d+\])?: auth(?:-worker)?(?:\(\d+\))?: \w+(?:-\w+)?\([^,)]*,<HOST>(?:,[^)]*)?\): (?:unknown user|Password mismatch|pam_authenticate\(\) failed)".into(),
            ],
            MAXRETRY,
        ),
        _ => return None,
    };
    Some(FilterSpec {
        fail2ban: None,
        name: name.into(),
        category: category.into(),
        failregex,
        helperregex: helpers,
        ignoreregex: Vec::new(),
        maxretry,
        findtime: FINDTIME,
        bantime: BANTIME,
    })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::detect::filter::{Filter, FilterSet, Hit};

    /// Runs `tests/fixtures/filters/<name>.log`: `#> ADDR` (or `#> -`) before a line says
    /// what the filter must capture from it; `#! aggressive ADDR` only in aggressive mode.
    fn golden(name: &str) -> usize {
        let path = format!("{}/tests/fixtures/filters/{name}.log", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let normal = FilterSet::new(vec![Filter::compile(spec(name, false).unwrap()).unwrap()]);
        let aggressive = FilterSet::new(vec![Filter::compile(spec(name, true).unwrap()).unwrap()]);
        let mut expect: Option<(Option<IpAddr>, bool)> = None;
        let mut checked = 0;
        for line in text.lines() {
            if let Some(want) = line.strip_prefix("#> ") {
                expect = Some((want.parse().ok(), false));
                continue;
            }
            if let Some(want) = line.strip_prefix("#! aggressive ") {
                expect = Some((want.parse().ok(), true));
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (want, only_aggressive) = expect.take().unwrap_or_else(|| panic!("{path}: no expectation for {line}"));
            let got = |set: &FilterSet| match set.test(line.as_bytes()).first() {
                Some((_, Hit::Failure(f))) => Some(f.addr),
                _ => None,
            };
            assert_eq!(got(&aggressive), want, "{name} (aggressive): {line}");
            if only_aggressive {
                assert_eq!(got(&normal), None, "{name}: only aggressive mode may match: {line}");
            } else {
                assert_eq!(got(&normal), want, "{name}: {line}");
            }
            checked += 1;
        }
        checked
    }

    #[test]
    fn every_built_in_filter_passes_its_golden_fixture() {
        for name in NAMES {
            assert!(golden(name) >= 3, "{name}: fixture too small");
        }
    }

    #[test]
    fn a_capture_that_is_not_an_address_is_reported_not_banned() {
        let set = FilterSet::new(vec![Filter::compile(spec("sshd", false).unwrap()).unwrap()]);
        let hits = set.test(b"Nov 23 10:00:01 h sshd[1]: Failed password for root from 999.1.2.3 port 22 ssh2");
        assert_eq!(hits, vec![(0, Hit::NotAnAddress("999.1.2.3".into()))]);
    }
}
