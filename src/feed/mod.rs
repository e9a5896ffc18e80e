//! The WAYSCloud community feed (contract: `shared/wayscloud-api.md`).
//!
//! - [`api`]: the key, one HTTP call, and what an answer means ([`api::classify`]).
//! - [`wire`]: the report body banshare sends; tolerant readers of the feed and lookups.
//! - [`sanitize`]: what may leave the host (no usernames, host names, own addresses).
//! - [`reporter`]: drains the store's outbox within budgets, with backoff and pauses.
//! - [`pull`]: turns a pulled live feed into `feed` decisions (filter, cap, grace).
//!
//! Reports are queued by the store in the same transaction as their decision
//! ([`crate::decision::ReportDraft`]); the daemon runs the reporter and the puller.

pub mod api;
mod config;
pub mod pull;
pub mod reporter;
pub mod sanitize;
pub mod wire;

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

pub use config::FeedConfig;

/// `d` shortened by a random fraction of at most `spread` (0 to 1): retries and pulls of
/// many hosts spread out instead of arriving together.
pub fn jitter(d: Duration, spread: f64) -> Duration {
    // A fresh RandomState is randomly keyed: hashing anything gives a random number.
    let r = RandomState::new().hash_one(std::time::Instant::now());
    let fraction = (r % 10_000) as f64 / 10_000.0;
    d.mul_f64(1.0 - spread.clamp(0.0, 1.0) * fraction)
}

/// The report a local ban of `input.ip` queues, when the config reports and the address
/// is public. `input.source`: `banshare`, `fail2ban` or `manual`.
pub fn report_draft(
    cfg: &FeedConfig,
    sanitizer: &sanitize::Sanitizer,
    input: &wire::ReportInput<'_>,
) -> Option<crate::decision::ReportDraft> {
    let addr = crate::decision::normalize(input.ip.into()).addr();
    if !cfg.report || !crate::decision::is_public(&addr.into()) {
        return None;
    }
    let body = wire::report_body(&wire::ReportInput { ip: addr, ..input.clone() }, sanitizer);
    Some(crate::decision::ReportDraft {
        ip: addr,
        category: body["category"].as_str().unwrap_or("other").to_string(),
        payload: body.to_string(),
        cooldown: cfg.report_cooldown,
    })
}
