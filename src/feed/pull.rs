//! The live-feed pull: fetch `GET /v1/ip/threats/live` page by page, then plan which
//! entries become `feed` decisions. Fetching is the only I/O; [`plan`] is a pure function
//! of the items, the config and the addresses the operator unbanned lately, and
//! [`diff`] and [`missed`] of the plan and the feed decisions in force.
//!
//! A pull is applied as a difference: an entry already blocked is left alone (no store
//! write, no kernel work) until its expiry comes within [`renew_under`]; an entry no
//! longer listed is lifted after `lift_after_pulls` successful pulls in a row without it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

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
    /// Entries already blocked whose expiry was renewed (it came within
    /// [`renew_under`]).
    pub renewed: usize,
    /// Entries already blocked and left as they are.
    pub unchanged: usize,
    pub skipped: Skipped,
    /// Feed decisions not in this pull, kept for now (lifted after `lift_after_pulls`).
    pub missing: usize,
    /// Feed decisions lifted by this pull: not listed for `lift_after_pulls` pulls.
    pub delisted: usize,
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

/// A listed entry already blocked is renewed once its expiry is this close: half the
/// TTL, and at least two pull intervals (so a pull or two failing never lets it lapse).
pub fn renew_under(cfg: &FeedConfig) -> Duration {
    (cfg.ttl / 2).max(cfg.pull_interval * 2)
}

/// What a pull changes, given the plan and the feed decisions in force (their expiry by
/// target).
#[derive(Debug, Default)]
pub struct Diff {
    /// New entries, and entries to renew.
    pub propose: Vec<NewDecision>,
    /// Entries in force and listed, left as they are.
    pub unchanged: usize,
    /// Every target this pull lists (after the plan's filters).
    pub listed: HashSet<IpNet>,
}

/// Keeps of `planned` what is new or due for renewal (see [`renew_under`]).
pub fn diff(
    planned: Vec<NewDecision>,
    current: &HashMap<IpNet, Option<Timestamp>>,
    cfg: &FeedConfig,
    now: Timestamp,
) -> Diff {
    let renew = renew_under(cfg);
    let mut out = Diff { listed: planned.iter().map(|p| p.target).collect(), ..Diff::default() };
    for p in planned {
        match current.get(&p.target) {
            Some(None) => out.unchanged += 1, // permanent: nothing to renew
            Some(Some(expires)) if now.until(*expires) >= renew => out.unchanged += 1,
            _ => out.propose.push(p),
        }
    }
    out
}

/// Counts, for each feed decision in force, the successful pulls in a row that did not
/// list it (`misses`, kept between pulls); returns those that reached `lift_after`, to be
/// lifted. A listed target's count starts again; targets no longer in force are
/// forgotten.
pub fn missed(
    misses: &mut HashMap<IpNet, u32>,
    current: &HashMap<IpNet, Option<Timestamp>>,
    listed: &HashSet<IpNet>,
    lift_after: u32,
) -> Vec<IpNet> {
    misses.retain(|t, _| current.contains_key(t) && !listed.contains(t));
    let mut gone = Vec::new();
    for t in current.keys().filter(|t| !listed.contains(*t)) {
        let n = misses.entry(*t).or_insert(0);
        *n += 1;
        if *n >= lift_after {
            gone.push(*t);
        }
    }
    for t in &gone {
        misses.remove(t);
    }
    gone.sort();
    gone
}

/// A one-line summary for logs and `banshare sync`.
pub fn summary(r: &PullReport) -> String {
    format!(
        "received {}, added {}, renewed {}, unchanged {}, skipped {}, no longer listed {} (kept for now), delisted {}",
        r.received,
        r.added,
        r.renewed,
        r.unchanged,
        r.skipped.total(),
        r.missing,
        r.delisted
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

    fn planned(targets: &[&str]) -> Vec<NewDecision> {
        let fetched = Fetched {
            items: targets.iter().map(|t| item(t, 90)).collect(),
            received: targets.len(),
            ..Fetched::default()
        };
        plan(fetched, &FeedConfig::default(), &[]).0
    }

    #[test]
    fn a_pull_proposes_only_what_is_new_or_due_for_renewal() {
        let cfg = FeedConfig::default(); // ttl 24 h, pulls every 5 min: renew under 12 h
        let now = Timestamp(1_000_000_000);
        let at = |h: u64| Some(now.plus(Duration::from_secs(h * 3600)));
        let current: HashMap<IpNet, Option<Timestamp>> = [
            ("45.155.205.1", at(23)), // renewed an hour ago
            ("45.155.205.2", at(12)), // exactly at the threshold: kept
            ("45.155.205.3", at(11)), // due
            ("45.155.205.4", None),
        ]
        .iter()
        .map(|(t, e)| (crate::decision::parse_target(t).unwrap(), *e))
        .collect();
        let d = diff(
            planned(&["45.155.205.1", "45.155.205.2", "45.155.205.3", "45.155.205.4", "45.155.205.5"]),
            &current,
            &cfg,
            now,
        );
        let proposed: Vec<String> = d.propose.iter().map(|p| p.target.to_string()).collect();
        assert_eq!(proposed, ["45.155.205.3/32", "45.155.205.5/32"]);
        assert_eq!((d.unchanged, d.listed.len()), (3, 5));
        // A short TTL renews every pull: at least two intervals must always be left.
        let short = FeedConfig { ttl: Duration::from_secs(600), ..FeedConfig::default() };
        assert_eq!(renew_under(&short), Duration::from_secs(600));
    }

    #[test]
    fn an_entry_is_lifted_after_the_configured_pulls_without_it() {
        let t = |s: &str| crate::decision::parse_target(s).unwrap();
        let current: HashMap<IpNet, Option<Timestamp>> =
            [(t("45.155.205.1"), None), (t("45.155.205.2"), None)].into_iter().collect();
        let mut misses = HashMap::new();
        let only_1: HashSet<IpNet> = [t("45.155.205.1")].into_iter().collect();
        let only_2: HashSet<IpNet> = [t("45.155.205.2")].into_iter().collect();
        assert!(missed(&mut misses, &current, &only_1, 3).is_empty());
        assert!(missed(&mut misses, &current, &only_1, 3).is_empty());
        // Listed again: its count starts over.
        assert!(missed(&mut misses, &current, &only_2, 3).is_empty());
        assert!(missed(&mut misses, &current, &only_1, 3).is_empty());
        assert!(missed(&mut misses, &current, &only_1, 3).is_empty());
        assert_eq!(missed(&mut misses, &current, &only_1, 3), [t("45.155.205.2")]);
        assert!(misses.is_empty());
        // One pull is enough when configured so.
        assert_eq!(missed(&mut HashMap::new(), &current, &HashSet::new(), 1).len(), 2);
    }

    #[test]
    fn pages_ask_for_what_the_config_says() {
        let call = page_call(&FeedConfig::default(), 1000);
        assert_eq!(call.path, "/v1/ip/threats/live");
        let q: Vec<String> = call.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(q, ["limit=1000", "min_score=85", "time_range=24h", "offset=1000"]);
    }
}
