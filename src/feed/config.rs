//! The feed's settings, as `[feed]` in the config gives them (validated by
//! `crate::config`, which builds this; the feed only reads it).

use std::path::PathBuf;
use std::time::Duration;

/// `[feed]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedConfig {
    /// The API's base URL, without a trailing slash.
    pub base_url: String,
    /// A 0600 file holding the API key (`BANSHARE_API_KEY` takes precedence).
    pub api_key_file: PathBuf,
    /// Per HTTP request.
    pub timeout: Duration,
    /// Report local bans (detection, fail2ban) as a contributor.
    pub report: bool,
    /// One report per (address, category) within this window.
    pub report_cooldown: Duration,
    /// Budgets for reports; the API's own limits (429, `X-RateLimit-*`) apply on top.
    pub reports_per_minute: u32,
    pub reports_per_day: u32,
    /// Reports still unsent after this long are dropped (and counted).
    pub outbox_max_age: Duration,
    /// Pull the live threat feed and block its entries.
    pub pull: bool,
    pub pull_interval: Duration,
    /// Entries below this score are ignored (85-100: block, per the feed's guidance).
    pub min_score: u8,
    /// The feed's `time_range` parameter (`1h`, `6h`, `24h`, `7d`, `30d`).
    pub time_range: String,
    /// Entries asked for per request (`limit`).
    pub page_size: u32,
    /// At most this many feed entries are blocked; the highest scores win.
    pub max_entries: usize,
    /// How long a feed entry stays blocked after the pull that last renewed it: the
    /// safety net when pulls fail (a listed entry is renewed once less than half of it,
    /// or less than two pull intervals, is left).
    pub ttl: Duration,
    /// An entry the feed no longer lists is lifted after this many successful pulls in a
    /// row without it.
    pub lift_after_pulls: u32,
    /// An address the operator unbanned is not re-added by the feed for this long.
    pub unban_grace: Duration,
    /// Feed networks wider than these prefixes are skipped.
    pub widest_ipv4: u8,
    pub widest_ipv6: u8,
    /// How long `banshare check` reuses a lookup.
    pub lookup_cache: Duration,
}

impl FeedConfig {
    pub const DEFAULT_BASE_URL: &str = "https://api.wayscloud.services";
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            base_url: Self::DEFAULT_BASE_URL.into(),
            api_key_file: PathBuf::from("/etc/banshare/api-key"),
            timeout: Duration::from_secs(10),
            report: true,
            report_cooldown: Duration::from_secs(15 * 60),
            // The free tier allows 20 requests a minute and 1,000 a day for everything;
            // pulls every 5 minutes take 288 of those.
            reports_per_minute: 10,
            reports_per_day: 500,
            outbox_max_age: Duration::from_secs(24 * 3600),
            pull: true,
            pull_interval: Duration::from_secs(5 * 60),
            min_score: 85,
            time_range: "24h".into(),
            page_size: 1000,
            max_entries: 50_000,
            ttl: Duration::from_secs(24 * 3600),
            lift_after_pulls: 3,
            unban_grace: Duration::from_secs(7 * 24 * 3600),
            widest_ipv4: 16,
            widest_ipv6: 32,
            lookup_cache: Duration::from_secs(3600),
        }
    }
}
