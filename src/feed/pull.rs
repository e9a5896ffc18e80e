//! The live-feed pull: fetch `GET /v1/ip/threats/live` page by page, then plan which
//! entries become `feed` decisions. Fetching is the only I/O; [`plan`] is a pure function
//! of the items, the config and the addresses the operator unbanned lately.

use std::collections::HashMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::FeedConfig;
use super::api::{Api, Call};
use super::wire::{FeedItem, parse_live};
use crate::clock::Timestamp;
use crate::decision::{NewDecision, Source, is_public};

pub const LIVE_PATH: &str = "/v1/ip/threats/live";

/// Entries of a pull that were not applied, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// No readable address or score.
    pub invalid: usize,
    /// Below `min_score`.
    pub low_score: usize,
    /// Private, reserved, documentation or otherwise not public.
    pub not_public: usize,
    /// Networks wider than `widest_ipv4` / `widest_ipv6`.
    pub over_wide: usize,
    /// Unbanned by the operator within `unban_grace`.
    pub unbanned: usize,
    /// Listed twice (the higher score kept).
    pub duplicate: usize,
    /// Beyond `max_entries` (the highest scores are kept).
    pub over_cap: usize,
    /// Refused by the guard: allowlisted, this host's, loopback and the like.
    pub protected: usize,
}

impl Skipped {
    pub fn total(&self) -> usize {
        self.invalid
            + self.low_score
            + self.not_public
            + self.over_wide
            + self.unbanned
            + self.duplicate
            + self.over_cap
            + self.protected
    }
}

/// What one pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullReport {
    pub at: Timestamp,
    pub pages: u32,
    /// Entries received, good or bad.
    pub received: usize,
    /// New `feed` decisions.
    pub added: usize,
    /// Entries already blocked whose TTL was renewed.
    pub refreshed: usize,
    pub skipped: Skipped,
    /// Feed decisions not in this pull: they expire at their TTL.
    pub left: usize,
    /// How long fetching and applying took.
    pub millis: u64,
}

/// What was fetched.
#[derive(Debug, Default)]
pub struct Fetched {
    pub items: Vec<FeedItem>,
    pub invalid: usize,
    pub received: usize,
    pub pages: u32,
}

/// The request for the page at `offset`.
pub fn page_call(cfg: &FeedConfig, offset: usize) -> Call {
    let mut query = vec![
        ("limit", cfg.page_size.to_string()),
        ("min_score", cfg.min_score.to_string()),
        ("time_range", cfg.time_range.clone()),
    ];
    if offset > 0 {
        query.push(("offset", offset.to_string()));
    }
    Call::get(LIVE_PATH, query)
}

/// Fetches pages until one comes back short, the feed's `total` is reached, or enough
/// entries for `max_entries` are in hand. Any failed page fails the pull (nothing is
/// applied from a partial pull, so a flaky feed never shrinks what is enforced).
pub async fn fetch(api: &Api, cfg: &FeedConfig) -> Result<Fetched, String> {
    let max_pages = cfg.max_entries.div_ceil(cfg.page_size as usize) as u32 + 1;
    let mut out = Fetched::default();
    loop {
        let call = page_call(cfg, out.received);
        let response = api.success(&call).await?;
        let page = parse_live(&response.body)?;
        out.pages += 1;
        out.received += page.received;
        out.invalid += page.invalid;
        out.items.extend(page.items);
        let done = page.received < cfg.page_size as usize
            || page.total.is_some_and(|t| out.received as u64 >= t)
            || out.items.len() >= cfg.max_entries
            || out.pages >= max_pages;
        if done {
            return Ok(out);
        }
    }
}

/// Chooses the decisions a pull makes: drops what is invalid, below `min_score`, not
/// public, too wide or unbanned by the operator lately; keeps the highest score of a
/// target listed twice; keeps the `max_entries` highest scores. Each becomes a `feed`
/// decision lasting `ttl` (renewed by every pull that lists it).
pub fn plan(fetched: Fetched, cfg: &FeedConfig, unbanned: &[IpNet]) -> (Vec<NewDecision>, Skipped) {
    let mut skipped = Skipped { invalid: fetched.invalid, ..Skipped::default() };
    let (unbanned_hosts, unbanned_nets): (Vec<IpNet>, Vec<IpNet>) =
        unbanned.iter().partition(|n| n.prefix_len() == n.max_prefix_len());
    let unbanned_hosts: std::collections::HashSet<IpNet> = unbanned_hosts.into_iter().collect();
    let mut best: HashMap<IpNet, FeedItem> = HashMap::with_capacity(fetched.items.len());
    for item in fetched.items {
        let t = item.target;
        let widest = match t {
            IpNet::V4(_) => cfg.widest_ipv4,
            IpNet::V6(_) => cfg.widest_ipv6,
        };
        if item.score < cfg.min_score {
            skipped.low_score += 1;
        } else if !is_public(&t) {
            skipped.not_public += 1;
        } else if t.prefix_len() < widest {
            skipped.over_wide += 1;
        } else if unbanned_hosts.contains(&t)
            || (t.prefix_len() != t.max_prefix_len() && unbanned_hosts.iter().any(|h| t.contains(h)))
            || unbanned_nets.iter().any(|n| n.contains(&t) || t.contains(n))
        {
            skipped.unbanned += 1;
        } else {
            match best.get_mut(&t) {
                Some(kept) => {
                    skipped.duplicate += 1;
                    if item.score > kept.score {
                        *kept = item;
                    }
                }
                None => {
                    best.insert(t, item);
                }
            }
        }
    }
    let mut items: Vec<FeedItem> = best.into_values().collect();
    items.sort_by(|a, b| b.score.cmp(&a.score).then(a.target.cmp(&b.target)));
    if items.len() > cfg.max_entries {
        skipped.over_cap = items.len() - cfg.max_entries;
        items.truncate(cfg.max_entries);
    }
    let decisions = items
        .into_iter()
        .map(|i| NewDecision {
            reason: if i.categories.is_empty() {
                format!("community feed: score {}", i.score)
            } else {
                format!("community feed: score {}, {}", i.score, i.categories.join(", "))
            },
            target: i.target,
            source: Source::Feed,
            category: i.categories.into_iter().next(),
            score: Some(i.score),
            duration: Some(cfg.ttl),
            evidence: Vec::new(),
            report: None,
            enforce: true,
        })
        .collect();
    (decisions, skipped)
}

/// A one-line summary for logs and `banshare sync`.
pub fn summary(r: &PullReport) -> String {
    format!(
        "received {}, added {}, refreshed {}, skipped {}, no longer listed {} (they expire at their TTL)",
        r.received,
        r.added,
        r.refreshed,
        r.skipped.total(),
        r.left
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(t: &str, score: u8) -> FeedItem {
        FeedItem { target: crate::decision::parse_target(t).unwrap(), score, categories: vec!["ssh_bruteforce".into()] }
    }

    #[test]
    fn the_plan_filters_dedupes_and_caps_by_score() {
        let cfg = FeedConfig { max_entries: 3, ..FeedConfig::default() };
        let fetched = Fetched {
            items: vec![
                item("45.155.205.1", 90),
                item("45.155.205.2", 99),
                item("45.155.205.2", 95),
                item("45.155.205.3", 86),
                item("45.155.205.4", 87),
                item("45.155.205.5", 84),
                item("10.0.0.1", 99),
                item("0.0.0.0/0", 99),
                item("45.0.0.0/8", 99),
                item("45.155.205.6", 100),
                item("185.220.101.0/24", 92),
            ],
            invalid: 2,
            received: 13,
            pages: 1,
        };
        let unbanned = vec![crate::decision::parse_target("45.155.205.6").unwrap()];
        let (decisions, skipped) = plan(fetched, &cfg, &unbanned);
        let got: Vec<String> = decisions.iter().map(|d| format!("{} {}", d.target, d.score.unwrap())).collect();
        assert_eq!(got, ["45.155.205.2/32 99", "185.220.101.0/24 92", "45.155.205.1/32 90"]);
        assert_eq!(
            skipped,
            Skipped {
                invalid: 2,
                low_score: 1,
                not_public: 2,
                over_wide: 1,
                unbanned: 1,
                duplicate: 1,
                over_cap: 2,
                protected: 0
            }
        );
        assert!(
            decisions.iter().all(|d| d.source == Source::Feed && d.duration == Some(cfg.ttl) && d.report.is_none())
        );
    }

    #[test]
    fn pages_ask_for_what_the_config_says() {
        let call = page_call(&FeedConfig::default(), 1000);
        assert_eq!(call.path, "/v1/ip/threats/live");
        let q: Vec<String> = call.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(q, ["limit=1000", "min_score=85", "time_range=24h", "offset=1000"]);
    }
}
