//! `[check]`: the local check service (off unless `listen` is set).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::raw::RawDuration;
use super::{ConfigError, duration};
use crate::check::providers::Provider;
use crate::check::{Bands, ProviderConfig};
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
    pub combine: Option<String>,
    pub providers: Option<BTreeMap<String, RawProvider>>,
}

/// `[check.providers.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub enabled: Option<bool>,
    pub base_url: Option<String>,
    pub key_file: Option<String>,
    pub timeout: Option<RawDuration>,
    pub cache: Option<RawDuration>,
    pub weight: Option<f64>,
}

/// Where each provider's API lives unless `base_url` says otherwise.
pub fn default_base_url(provider: Provider) -> &'static str {
    match provider {
        Provider::Wayscloud => crate::config::FeedConfig::DEFAULT_BASE_URL,
        Provider::Ipgeolocation => "https://api.ipgeolocation.io",
        Provider::Apiarmor => "https://api.apiarmor.com",
        Provider::Ipasis => "https://api.ipasis.com",
    }
}

/// Where the check service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// `[check]`, validated.
#[derive(Debug, Clone, PartialEq)]
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
    /// The default of each provider's `cache` (errors are kept a tenth of it, at most 30 s).
    pub cache: Duration,
    /// The default of each provider's `timeout`.
    pub timeout: Duration,
    /// `true`: the weighted mean of the scores that arrived; `false`: their maximum.
    pub weighted: bool,
    /// The providers asked, in a fixed order. WAYSCloud is on unless disabled (it uses
    /// the feed's key); the others are on when their `[check.providers.NAME]` exists.
    pub providers: Vec<ProviderConfig>,
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
            weighted: false,
            providers: vec![ProviderConfig {
                provider: Provider::Wayscloud,
                base_url: default_base_url(Provider::Wayscloud).into(),
                key_file: None,
                timeout: Duration::from_millis(1500),
                cache: Duration::from_secs(300),
                weight: 1.0,
            }],
        }
    }
}

type Invalid<'a> = &'a dyn Fn(&str, &str, &dyn std::fmt::Display) -> ConfigError;

/// The duration at `key`, or `default` when unset.
fn duration_or(
    key: &str,
    v: Option<RawDuration>,
    default: Duration,
    invalid: Invalid,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) => duration(&v).map_err(|got| invalid(key, "a duration like \"5m\" or \"1500ms\"", &got)),
    }
}

pub(super) fn check_config(
    raw: Option<RawCheck>,
    feed_base: &str,
    invalid: Invalid,
) -> Result<CheckConfig, ConfigError> {
    let mut d = CheckConfig::default();
    d.providers[0].base_url = feed_base.to_string();
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
    let cache = duration_or("check.cache", raw.cache, d.cache, invalid)?;
    let timeout = duration_or("check.timeout", raw.timeout, d.timeout, invalid)?;
    let weighted = match raw.combine.as_deref() {
        None | Some("max") => false,
        Some("weighted") => true,
        Some(o) => return Err(invalid("check.combine", "\"max\" or \"weighted\"", &format!("{o:?}"))),
    };
    let providers = providers(raw.providers.unwrap_or_default(), feed_base, (timeout, cache), invalid)?;
    Ok(CheckConfig {
        listen,
        bands,
        trusted_proxies,
        client_header: raw.client_header.unwrap_or(d.client_header),
        fail_open: mode("fail_mode", raw.fail_mode, d.fail_open)?,
        auth_fail_open: mode("auth_fail_mode", raw.auth_fail_mode, d.auth_fail_open)?,
        cache,
        timeout,
        weighted,
        providers,
    })
}

/// `[check.providers.*]`, validated, in [`Provider::ALL`]'s order.
fn providers(
    mut raw: BTreeMap<String, RawProvider>,
    feed_base: &str,
    (timeout, cache): (Duration, Duration),
    invalid: Invalid,
) -> Result<Vec<ProviderConfig>, ConfigError> {
    if let Some(unknown) = raw.keys().find(|k| Provider::from_name(k).is_none()) {
        let known = Provider::ALL.map(Provider::name).join(", ");
        return Err(invalid(
            &format!("check.providers.{unknown}"),
            &format!("one of {known}"),
            &format!("{unknown:?}"),
        ));
    }
    let mut out = Vec::new();
    for provider in Provider::ALL {
        let name = provider.name();
        let section = raw.remove(name);
        // WAYSCloud is asked unless disabled; the others when configured.
        let wanted = match &section {
            None => provider == Provider::Wayscloud,
            Some(p) => p.enabled.unwrap_or(true),
        };
        if !wanted {
            continue;
        }
        let p = section.unwrap_or_default();
        let key = |k: &str| format!("check.providers.{name}.{k}");
        let base_url = match (provider, p.base_url) {
            (_, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => url,
            (_, Some(url)) => return Err(invalid(&key("base_url"), "an http:// or https:// URL", &format!("{url:?}"))),
            (Provider::Wayscloud, None) => feed_base.to_string(),
            (_, None) => default_base_url(provider).to_string(),
        };
        let key_file = match (provider, p.key_file) {
            (Provider::Wayscloud, Some(_)) => {
                return Err(invalid(&key("key_file"), "no key_file (WAYSCloud uses feed.api_key_file)", &"a key_file"));
            }
            (Provider::Wayscloud, None) => None,
            (_, Some(f)) if f.starts_with('/') => Some(PathBuf::from(f)),
            (_, Some(f)) => return Err(invalid(&key("key_file"), "an absolute path", &format!("{f:?}"))),
            (_, None) => Some(PathBuf::from(format!("/etc/banshare/{name}.key"))),
        };
        let weight = match p.weight {
            None => 1.0,
            Some(w) if w.is_finite() && w >= 0.0 => w,
            Some(w) => return Err(invalid(&key("weight"), "a number of at least 0", &w)),
        };
        out.push(ProviderConfig {
            provider,
            base_url: base_url.trim_end_matches('/').to_string(),
            key_file,
            timeout: duration_or(&key("timeout"), p.timeout, timeout, invalid)?,
            cache: duration_or(&key("cache"), p.cache, cache, invalid)?,
            weight,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::super::tests::err;

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
        let e = err("[check.providers.shodan]\nkey_file = \"/k\"");
        assert!(
            e.contains("key `check.providers.shodan`: expected one of wayscloud, ipgeolocation, apiarmor, ipasis"),
            "{e}"
        );
        let e = err("[check.providers.ipasis]\nkey_file = \"ipasis.key\"");
        assert!(e.contains("key `check.providers.ipasis.key_file`: expected an absolute path"), "{e}");
        let e = err("[check.providers.apiarmor]\nweight = -1");
        assert!(e.contains("key `check.providers.apiarmor.weight`: expected a number of at least 0"), "{e}");
        let e = err("[check]\ncombine = \"mean\"");
        assert!(e.contains("key `check.combine`: expected \"max\" or \"weighted\""), "{e}");
        let e = err("[fail2ban.categories]\n\"sshd\" = \"SSH!\"");
        assert!(e.contains("key `fail2ban.categories.\"sshd\"`: expected a category like \"ssh_bruteforce\""), "{e}");
        let e = err("[fail2ban]\nlog_bantime = \"soon\"");
        assert!(e.contains("key `fail2ban.log_bantime`: expected a duration"), "{e}");
        let ok = Config::from_toml("[check]\nlisten = \"/run/banshare/check.sock\"", Path::new("/x")).unwrap();
        assert_eq!(ok.check.listen, Some(super::Listen::Unix("/run/banshare/check.sock".into())));
    }
}
