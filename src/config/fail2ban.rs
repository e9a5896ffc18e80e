//! `[fail2ban]`: how fail2ban's events become banshare decisions and reports.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::raw::RawDuration;
use super::{ConfigError, duration};
pub use crate::fail2ban::Fail2banConfig;
use crate::feed::wire::valid_category;

/// `[fail2ban]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFail2ban {
    pub categories: Option<BTreeMap<String, String>>,
    pub log_bantime: Option<RawDuration>,
    pub dir: Option<String>,
}

pub(super) fn fail2ban_config(
    raw: Option<RawFail2ban>,
    invalid: &dyn Fn(&str, &str, &dyn std::fmt::Display) -> ConfigError,
) -> Result<Fail2banConfig, ConfigError> {
    let d = Fail2banConfig::default();
    let Some(raw) = raw else { return Ok(d) };
    let mut categories = Vec::new();
    for (pattern, category) in raw.categories.unwrap_or_default() {
        let key = format!("fail2ban.categories.\"{pattern}\"");
        if glob::Pattern::new(&pattern).is_err() {
            return Err(invalid(&key, "a jail name or pattern with * wildcards", &format!("{pattern:?}")));
        }
        if !valid_category(&category) {
            return Err(invalid(&key, "a category like \"ssh_bruteforce\" (a-z, 0-9, _)", &format!("{category:?}")));
        }
        categories.push((pattern, category));
    }
    let log_bantime = match raw.log_bantime {
        None => d.log_bantime,
        Some(v) => duration(&v).map_err(|got| invalid("fail2ban.log_bantime", "a duration like \"10m\"", &got))?,
    };
    let dir = match raw.dir {
        None => d.dir,
        Some(dir) if std::path::Path::new(&dir).is_absolute() => dir.into(),
        Some(dir) => {
            return Err(invalid(
                "fail2ban.dir",
                "an absolute path (fail2ban's configuration directory)",
                &format!("{dir:?}"),
            ));
        }
    };
    Ok(Fail2banConfig { categories, log_bantime, dir })
}
