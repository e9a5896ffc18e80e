//! `[check]`: the local check service (off unless `listen` is set).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::raw::RawDuration;
use super::{ConfigError, duration};
use crate::check::Bands;
use crate::decision::parse_target;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub listen: Option<String>,
    pub log: Option<i64>,
    pub challenge: Option<i64>,
    pub block: Option<i64>,
    pub trusted_proxies: Option<Vec<String>>,
    pub client_header: Option<String>,
    pub fail_mode: Option<String>,
    pub auth_fail_mode: Option<String>,
    pub cache: Option<RawDuration>,
    pub timeout: Option<RawDuration>,
}

/// Where the check service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// `[check]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    /// `None`: the service is off (the default).
    pub listen: Option<Listen>,
    pub bands: Bands,
    /// Peers whose `client_header` is believed; anyone else is judged by its own address.
    pub trusted_proxies: Vec<IpNet>,
    pub client_header: String,
    /// When no provider answers: `true` allows (fail open), `false` blocks.
    pub fail_open: bool,
    pub auth_fail_open: bool,
    /// How long a provider's answer is reused (errors: a tenth of it, at most 30 s).
    pub cache: Duration,
    /// Per provider request.
    pub timeout: Duration,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            listen: None,
            bands: Bands::default(),
            trusted_proxies: Vec::new(),
            client_header: "X-Real-IP".into(),
            fail_open: true,
            auth_fail_open: true,
            cache: Duration::from_secs(300),
            timeout: Duration::from_millis(1500),
        }
    }
}

pub(super) fn check_config(
    raw: Option<RawCheck>,
    invalid: &dyn Fn(&str, &str, &dyn std::fmt::Display) -> ConfigError,
) -> Result<CheckConfig, ConfigError> {
    let d = CheckConfig::default();
    let Some(raw) = raw else { return Ok(d) };
    let listen = match raw.listen {
        None => None,
        Some(l) if l.starts_with('/') => Some(Listen::Unix(PathBuf::from(l))),
        Some(l) => Some(Listen::Tcp(l.parse().map_err(|_| {
            invalid("check.listen", "an address and port like \"127.0.0.1:8098\" or a socket path", &format!("{l:?}"))
        })?)),
    };
    let band = |key: &str, v: Option<i64>, default: u8| match v {
        None => Ok(default),
        Some(n) if (0..=100).contains(&n) => Ok(n as u8),
        Some(n) => Err(invalid(&format!("check.{key}"), "a score from 0 to 100", &n)),
    };
    let bands = Bands {
        log: band("log", raw.log, d.bands.log)?,
        challenge: band("challenge", raw.challenge, d.bands.challenge)?,
        block: band("block", raw.block, d.bands.block)?,
    };
    if !(bands.log <= bands.challenge && bands.challenge <= bands.block) {
        let got = format!("log {}, challenge {}, block {}", bands.log, bands.challenge, bands.block);
        return Err(invalid("check.block", "log <= challenge <= block", &got));
    }
    let mut trusted_proxies = Vec::new();
    for (i, p) in raw.trusted_proxies.unwrap_or_default().iter().enumerate() {
        trusted_proxies.push(parse_target(p).map_err(|_| {
            invalid(&format!("check.trusted_proxies[{i}]"), "an IP address or CIDR", &format!("{p:?}"))
        })?);
    }
    let mode = |key: &str, v: Option<String>, default: bool| match v.as_deref() {
        None => Ok(default),
        Some("open") => Ok(true),
        Some("closed") => Ok(false),
        Some(o) => Err(invalid(&format!("check.{key}"), "\"open\" or \"closed\"", &format!("{o:?}"))),
    };
    let dur = |key: &str, v: Option<RawDuration>, default: Duration| match v {
        None => Ok(default),
        Some(v) => {
            duration(&v).map_err(|got| invalid(&format!("check.{key}"), "a duration like \"5m\" or \"1500ms\"", &got))
        }
    };
    Ok(CheckConfig {
        listen,
        bands,
        trusted_proxies,
        client_header: raw.client_header.unwrap_or(d.client_header),
        fail_open: mode("fail_mode", raw.fail_mode, d.fail_open)?,
        auth_fail_open: mode("auth_fail_mode", raw.auth_fail_mode, d.auth_fail_open)?,
        cache: dur("cache", raw.cache, d.cache)?,
        timeout: dur("timeout", raw.timeout, d.timeout)?,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;

    fn err(text: &str) -> String {
        Config::from_toml(text, Path::new("/etc/banshare/banshare.toml")).unwrap_err().to_string()
    }

    #[test]
    fn bad_check_and_fail2ban_values_name_the_key() {
        let e = err("[check]\nlisten = \"nowhere\"");
        assert!(e.contains("key `check.listen`: expected an address and port like \"127.0.0.1:8098\""), "{e}");
        let e = err("[check]\nlog = 70\nchallenge = 60");
        assert!(e.contains("expected log <= challenge <= block, got log 70, challenge 60, block 85"), "{e}");
        let e = err("[check]\ntrusted_proxies = [\"10.0.0.1\", \"proxy\"]");
        assert!(e.contains("key `check.trusted_proxies[1]`: expected an IP address or CIDR"), "{e}");
        let e = err("[check]\nfail_mode = \"maybe\"");
        assert!(e.contains("key `check.fail_mode`: expected \"open\" or \"closed\""), "{e}");
        let e = err("[fail2ban.categories]\n\"sshd\" = \"SSH!\"");
        assert!(e.contains("key `fail2ban.categories.\"sshd\"`: expected a category like \"ssh_bruteforce\""), "{e}");
        let e = err("[fail2ban]\nlog_bantime = \"soon\"");
        assert!(e.contains("key `fail2ban.log_bantime`: expected a duration"), "{e}");
        let ok = Config::from_toml("[check]\nlisten = \"/run/banshare/check.sock\"", Path::new("/x")).unwrap();
        assert_eq!(ok.check.listen, Some(super::Listen::Unix("/run/banshare/check.sock".into())));
    }
}
