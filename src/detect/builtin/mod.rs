//! The built-in filters: banshare's own definitions (`filter.d/*.conf` beside this file,
//! compiled into the binary), written in fail2ban's definition format and run by the same
//! engine as fail2ban's files ([`super::f2b`]). A built-in is named like fail2ban's filter
//! it stands in for, takes the same `mode` values, and has a default report category.
//!
//! The definitions are written here, from the log lines the daemons write; fail2ban's files
//! are not copied (their licence is not ours). Their accuracy is measured against
//! fail2ban's own annotated samples (`tests/integration/fail2ban_corpus.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use super::f2b::{Files, FilterRef};
use super::filter::{Fail2banDefinition, Filter, FilterSpec};

/// The default window: 5 failures within 10 minutes ban for 1 hour.
pub const MAXRETRY: u32 = 5;
pub const FINDTIME: Duration = Duration::from_secs(600);
pub const BANTIME: Duration = Duration::from_secs(3600);

/// One built-in filter.
#[derive(Debug, Clone, Copy)]
pub struct BuiltIn {
    pub name: &'static str,
    /// The definition it runs (`filter.d/NAME.conf`) and the options it always passes.
    definition: &'static str,
    fixed: &'static [(&'static str, &'static str)],
    pub category: &'static str,
    pub maxretry: u32,
    /// The `mode` values it takes; the first is the default. Empty: no modes.
    pub modes: &'static [&'static str],
}

const fn built_in(name: &'static str, category: &'static str, modes: &'static [&'static str]) -> BuiltIn {
    BuiltIn { name, definition: name, fixed: &[], category, maxretry: MAXRETRY, modes }
}

/// Every built-in filter.
pub const BUILT_INS: &[BuiltIn] = &[
    built_in("sshd", "ssh_bruteforce", &["normal", "ddos", "extra", "aggressive"]),
    built_in("nginx-http-auth", "web_bruteforce", &["normal", "auth", "fallback", "aggressive"]),
    BuiltIn { maxretry: 2, ..built_in("nginx-botsearch", "web_attack", &[]) },
    built_in("nginx-limit-req", "bad_bot", &[]),
    built_in("nginx-bad-request", "web_attack", &[]),
    built_in("apache-auth", "web_bruteforce", &["normal", "aggressive"]),
    built_in("apache-badbots", "bad_bot", &[]),
    built_in("apache-noscript", "web_attack", &[]),
    built_in("postfix", "mail_bruteforce", &["normal", "more", "rbl", "auth", "errors", "ddos", "extra", "aggressive"]),
    // banshare's name for postfix's SASL failures (before the postfix filter had modes).
    BuiltIn { definition: "postfix", fixed: &[("mode", "auth")], ..built_in("postfix-sasl", "mail_bruteforce", &[]) },
    built_in("dovecot", "mail_bruteforce", &["normal", "aggressive"]),
    built_in("courier-auth", "mail_bruteforce", &[]),
    built_in("exim", "mail_bruteforce", &["normal", "aggressive"]),
    built_in("roundcube-auth", "web_bruteforce", &[]),
    built_in("vsftpd", "ftp_bruteforce", &[]),
    built_in("proftpd", "ftp_bruteforce", &[]),
    built_in("pure-ftpd", "ftp_bruteforce", &[]),
];

/// The built-in named `name`.
pub fn get(name: &str) -> Option<&'static BuiltIn> {
    BUILT_INS.iter().find(|b| b.name == name)
}

/// Every built-in with its defaults, each compiled once per process when first run (the
/// default config and each config that leaves a built-in's patterns alone share them).
pub fn compiled() -> &'static BTreeMap<String, Filter> {
    static COMPILED: OnceLock<BTreeMap<String, Filter>> = OnceLock::new();
    COMPILED.get_or_init(|| BUILT_INS.iter().map(|b| (b.name.to_string(), Filter::deferred(b.spec(&[])))).collect())
}

macro_rules! embedded {
    ($($name:literal),* $(,)?) => {
        &[$((concat!("(built-in)/filter.d/", $name, ".conf"), include_str!(concat!("filter.d/", $name, ".conf")))),*]
    };
}

/// The definition files, as [`Files::Embedded`] reads them.
pub const FILES: &[(&str, &str)] = embedded![
    "common",
    "sshd",
    "nginx-http-auth",
    "nginx-botsearch",
    "nginx-limit-req",
    "nginx-bad-request",
    "apache-auth",
    "apache-badbots",
    "apache-noscript",
    "postfix",
    "dovecot",
    "courier-auth",
    "exim",
    "roundcube-auth",
    "vsftpd",
    "proftpd",
    "pure-ftpd",
];

impl BuiltIn {
    /// The filter with its default window, running the definition with `options`
    /// (`mode`, `logtype`, ...; the built-in's fixed options win).
    pub fn spec(&self, options: &[(String, String)]) -> FilterSpec {
        let mut options: Vec<(String, String)> =
            options.iter().filter(|(k, _)| !self.fixed.iter().any(|(f, _)| f == k)).cloned().collect();
        options.extend(self.fixed.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let filter = FilterRef { name: self.definition.to_string(), options };
        FilterSpec {
            maxretry: self.maxretry,
            fail2ban: Some(Fail2banDefinition {
                files: Files::Embedded(FILES),
                dir: PathBuf::from(Files::BUILT_IN_ROOT),
                filter,
            }),
            ..FilterSpec::new(self.name, self.category)
        }
    }

    /// The spec with `mode` (checked against the built-in's modes).
    pub fn with_mode(&self, mode: Option<&str>) -> Result<FilterSpec, String> {
        match mode {
            None => Ok(self.spec(&[])),
            Some(m) if self.modes.first() == Some(&m) => Ok(self.spec(&[])),
            Some(m) if self.modes.contains(&m) => Ok(self.spec(&[("mode".into(), m.into())])),
            Some(_) if self.modes.is_empty() => Err(format!("no mode (the built-in {} has none)", self.name)),
            Some(_) => {
                let modes: Vec<String> = self.modes.iter().map(|m| format!("{m:?}")).collect();
                Err(format!("one of {}", modes.join(", ")))
            }
        }
    }
}

/// A built-in filter by name with its default mode.
pub fn spec(name: &str) -> Option<FilterSpec> {
    get(name).map(|b| b.spec(&[]))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::detect::filter::{Filter, FilterSet, Hit};

    /// Runs `tests/fixtures/filters/<name>.log`: `#> ADDR` (or `#> -`) before a line says
    /// what the filter must capture from it; `#! aggressive ADDR` only in aggressive mode.
    /// Each line is judged alone (a fresh filter: no session before it).
    fn golden(name: &str) -> usize {
        let path = format!("{}/tests/fixtures/filters/{name}.log", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let b = get(name).unwrap();
        let aggressive_mode = b.modes.contains(&"aggressive").then_some("aggressive");
        let mut expect: Option<(Option<IpAddr>, bool)> = None;
        let mut checked = 0;
        let mut wrong = Vec::new();
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
            let got = |mode: Option<&str>| {
                let mut set = FilterSet::new(vec![Filter::compile(b.with_mode(mode).unwrap()).unwrap()]);
                match set.test(line.as_bytes(), crate::clock::Timestamp::now()).first() {
                    Some((_, Hit::Failure(f))) => Some(f.addr),
                    _ => None,
                }
            };
            let normal_want = if only_aggressive { None } else { want };
            let (in_aggressive, in_normal) = (got(aggressive_mode), got(None));
            if in_aggressive != want || in_normal != normal_want {
                wrong.push(format!(
                    "{line}: want {want:?} (normal mode {normal_want:?}), got {in_aggressive:?} ({in_normal:?})"
                ));
            }
            checked += 1;
        }
        assert!(wrong.is_empty(), "{name}: {} lines wrong:\n{}", wrong.len(), wrong.join("\n"));
        checked
    }

    #[test]
    fn every_built_in_filter_passes_its_golden_fixture() {
        for b in BUILT_INS {
            let path = format!("{}/tests/fixtures/filters/{}.log", env!("CARGO_MANIFEST_DIR"), b.name);
            if std::path::Path::new(&path).exists() {
                assert!(golden(b.name) >= 3, "{}: fixture too small", b.name);
            }
        }
    }

    #[test]
    fn every_built_in_compiles_in_every_mode() {
        for b in BUILT_INS {
            for mode in b.modes.iter().copied().map(Some).chain([None]) {
                let spec = b.with_mode(mode).unwrap();
                Filter::compile(spec).unwrap_or_else(|e| panic!("{} {mode:?}: {e}", b.name));
            }
        }
    }

    #[test]
    fn a_capture_that_is_not_an_address_is_reported_not_banned() {
        let mut set = FilterSet::new(vec![compiled()["sshd"].clone()]);
        let hits = set.test(
            b"Nov 23 10:00:01 h sshd[1]: Failed password for root from 999.1.2.3 port 22 ssh2",
            crate::clock::Timestamp::now(),
        );
        assert_eq!(hits.as_slice(), &[(0, Hit::NotAnAddress("999.1.2.3".into()))]);
    }
}
