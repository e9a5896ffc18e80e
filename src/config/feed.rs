//! `[feed]`: how banshare talks to the WAYSCloud community feed (see
//! `shared/wayscloud-api.md`): where, with which key, how much it may send, and what it
//! takes from the live feed. Validated here once; [`crate::feed`] only reads it.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::RawFeed;
use super::{ConfigError, duration};

pub use crate::feed::FeedConfig;

const TIME_RANGES: [&str; 5] = ["1h", "6h", "24h", "7d", "30d"];

/// Builds [`FeedConfig`] from `[feed]`. `invalid(key, expected, got)` makes the error.
pub(super) fn feed_config(
    raw: Option<RawFeed>,
    invalid: &dyn Fn(&str, &str, &dyn std::fmt::Display) -> ConfigError,
) -> Result<FeedConfig, ConfigError> {
    let d = FeedConfig::default();
    let Some(raw) = raw else { return Ok(d) };
    let dur = |key: &str, value: Option<super::raw::RawDuration>, default: Duration, example: &str| match value {
        None => Ok(default),
        Some(v) => match duration(&v) {
            Ok(x) if !x.is_zero() => Ok(x),
            Ok(_) => Err(invalid(&format!("feed.{key}"), &format!("a duration like \"{example}\""), &"0")),
            Err(got) => Err(invalid(&format!("feed.{key}"), &format!("a duration like \"{example}\""), &got)),
        },
    };
    let int = |key: &str, value: Option<i64>, default: i64, min: i64, max: i64| match value {
        None => Ok(default),
        Some(v) if (min..=max).contains(&v) => Ok(v),
        Some(v) => Err(invalid(&format!("feed.{key}"), &format!("a number from {min} to {max}"), &v)),
    };

    let base_url = match raw.base_url {
        None => d.base_url,
        Some(u) if (u.starts_with("https://") || u.starts_with("http://")) && u.len() > "https://".len() => {
            u.trim_end_matches('/').to_string()
        }
        Some(u) => {
            return Err(invalid("feed.base_url", "an http:// or https:// URL", &format!("{u:?}")));
        }
    };
    let api_key_file = match raw.api_key_file {
        None => d.api_key_file,
        Some(p) if p.starts_with('/') => PathBuf::from(p),
        Some(p) => return Err(invalid("feed.api_key_file", "an absolute path", &format!("{p:?}"))),
    };
    let time_range = match raw.time_range {
        None => d.time_range,
        Some(t) if TIME_RANGES.contains(&t.as_str()) => t,
        Some(t) => {
            let expected = format!("one of {}", TIME_RANGES.map(|r| format!("\"{r}\"")).join(", "));
            return Err(invalid("feed.time_range", &expected, &format!("{t:?}")));
        }
    };
    Ok(FeedConfig {
        base_url,
        api_key_file,
        timeout: dur("timeout", raw.timeout, d.timeout, "10s")?,
        report: raw.report.unwrap_or(d.report),
        report_cooldown: dur("report_cooldown", raw.report_cooldown, d.report_cooldown, "15m")?,
        reports_per_minute: int("reports_per_minute", raw.reports_per_minute, d.reports_per_minute.into(), 1, 100_000)?
            as u32,
        reports_per_day: int("reports_per_day", raw.reports_per_day, d.reports_per_day.into(), 1, 10_000_000)? as u32,
        outbox_max_age: dur("outbox_max_age", raw.outbox_max_age, d.outbox_max_age, "24h")?,
        pull: raw.pull.unwrap_or(d.pull),
        pull_interval: dur("pull_interval", raw.pull_interval, d.pull_interval, "5m")?,
        min_score: int("min_score", raw.min_score, d.min_score.into(), 0, 100)? as u8,
        time_range,
        page_size: int("page_size", raw.page_size, d.page_size.into(), 1, 1_000_000)? as u32,
        max_entries: int("max_entries", raw.max_entries, d.max_entries as i64, 1, 10_000_000)? as usize,
        ttl: dur("ttl", raw.ttl, d.ttl, "24h")?,
        lift_after_pulls: int("lift_after_pulls", raw.lift_after_pulls, d.lift_after_pulls.into(), 1, 10_000)? as u32,
        unban_grace: dur("unban_grace", raw.unban_grace, d.unban_grace, "7d")?,
        widest_ipv4: int("widest_ipv4", raw.widest_ipv4, d.widest_ipv4.into(), 0, 32)? as u8,
        widest_ipv6: int("widest_ipv6", raw.widest_ipv6, d.widest_ipv6.into(), 0, 128)? as u8,
        lookup_cache: dur("lookup_cache", raw.lookup_cache, d.lookup_cache, "1h")?,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::super::tests::err;

    #[test]
    fn bad_feed_values_name_the_key_and_the_expectation() {
        assert_eq!(
            err("[feed]\nmin_score = 150"),
            "/etc/banshare/banshare.toml: key `feed.min_score`: expected a number from 0 to 100, got 150"
        );
        assert_eq!(
            err("[feed]\nbase_url = \"api.wayscloud.services\""),
            "/etc/banshare/banshare.toml: key `feed.base_url`: expected an http:// or https:// URL, got \"api.wayscloud.services\""
        );
        assert!(err("[feed]\ntime_range = \"2d\"").contains("key `feed.time_range`: expected one of \"1h\", \"6h\""));
        assert!(err("[feed]\nreport_cooldown = \"soon\"").contains("key `feed.report_cooldown`: expected a duration"));
        assert!(err("[feed]\npull_interval = 0").contains("key `feed.pull_interval`"));
        assert!(err("[feed]\napi_key = \"x\"").contains("unknown field `api_key`"), "the key never goes in the config");
        let ok = Config::from_toml("[feed]\nbase_url = \"http://127.0.0.1:8099/\"\nmin_score = 90", Path::new("/x"))
            .unwrap();
        assert_eq!((ok.feed.base_url.as_str(), ok.feed.min_score), ("http://127.0.0.1:8099", 90));
    }
}
