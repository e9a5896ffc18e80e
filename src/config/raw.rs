//! The serde mirror of the TOML file: every key optional, unknown keys rejected.
//! Values stay as the file wrote them; [`super::Config::from_raw`] validates them.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Visitor};

use super::Location;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub state_dir: Option<String>,
    pub socket: Option<String>,
    pub socket_group: Option<String>,
    pub allowlist: Option<Vec<String>>,
    pub firewall: Option<RawFirewall>,
    pub decisions: Option<RawDecisions>,
    pub detect: Option<RawDetect>,
    pub filter: Option<BTreeMap<String, RawFilter>>,
    pub source: Option<Vec<RawSource>>,
    pub feed: Option<RawFeed>,
    pub fail2ban: Option<super::fail2ban::RawFail2ban>,
    pub check: Option<super::check::RawCheck>,
}

/// `[[source]]`: a log to follow and the filters that read it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub path: Option<String>,
    pub journal: Option<String>,
    pub journal_file: Option<String>,
    pub filters: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDetect {
    pub bantime_factor: Option<f64>,
    pub bantime_max: Option<RawDuration>,
}

/// `[filter.NAME]`: overrides of a built-in filter, or a new filter.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    pub maxretry: Option<i64>,
    pub findtime: Option<RawDuration>,
    pub bantime: Option<RawDuration>,
    pub category: Option<String>,
    pub mode: Option<String>,
    pub failregex: Option<Vec<String>>,
    pub ignoreregex: Option<Vec<String>>,
    pub fail2ban: Option<String>,
}

/// `[feed]`: the WAYSCloud community feed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeed {
    pub base_url: Option<String>,
    pub api_key_file: Option<String>,
    pub timeout: Option<RawDuration>,
    pub report: Option<bool>,
    pub report_cooldown: Option<RawDuration>,
    pub reports_per_minute: Option<i64>,
    pub reports_per_day: Option<i64>,
    pub outbox_max_age: Option<RawDuration>,
    pub pull: Option<bool>,
    pub pull_interval: Option<RawDuration>,
    pub min_score: Option<i64>,
    pub time_range: Option<String>,
    pub page_size: Option<i64>,
    pub max_entries: Option<i64>,
    pub ttl: Option<RawDuration>,
    pub unban_grace: Option<RawDuration>,
    pub lift_after_pulls: Option<i64>,
    pub widest_ipv4: Option<i64>,
    pub widest_ipv6: Option<i64>,
    pub lookup_cache: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFirewall {
    pub backend: Option<String>,
    pub forward: Option<bool>,
    pub action: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDecisions {
    pub manual_bantime: Option<RawDuration>,
    pub ipv6_prefix: Option<i64>,
    pub retention: Option<RawDuration>,
}

/// A duration as written: `"10m"` or a number of seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawDuration {
    Seconds(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration like \"10m\" or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
                Ok(RawDuration::Seconds(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
                u64::try_from(v)
                    .map(RawDuration::Seconds)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses the file, reporting the line, column and key path of the first error.
pub fn parse(text: &str) -> Result<RawConfig, (Location, String)> {
    let de = toml::Deserializer::parse(text).map_err(|e| (location(text, &e, None), e.message().to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let key = (path != ".").then_some(path);
        let inner = e.into_inner();
        (location(text, &inner, key), inner.message().to_string())
    })
}

fn location(text: &str, e: &toml::de::Error, key: Option<String>) -> Location {
    let line_col = e.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, col)
    });
    Location { line_col, key }
}
