//! The check service's decision rules: provider answers ([`providers`]) combined into
//! one score, and the score (with the host's own blocks) into a graduated verdict.
//! Pure functions; [`client`] asks the providers, `crate::daemon::check` serves the
//! verdicts over HTTP.

pub mod client;
pub mod metrics;
pub mod providers;

pub use client::ProviderConfig;

/// Connections the check service serves at once; more are closed on arrival. With the
/// control socket's 256 and the unit's `LimitNOFILE=16384`, the firewall tools always
/// find descriptors.
pub const MAX_CONNECTIONS: usize = 4096;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use providers::{Provider, Reputation};

/// What an application should do with a request from the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Log,
    Challenge,
    Block,
}

/// The lowest score of each verdict above `allow` (defaults: 0-29 allow, 30-59 log,
/// 60-84 challenge, 85-100 block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bands {
    pub log: u8,
    pub challenge: u8,
    pub block: u8,
}

impl Default for Bands {
    fn default() -> Self {
        Bands { log: 30, challenge: 60, block: 85 }
    }
}

/// The verdict for a combined score. A local block is always `block`; an unknown score
/// (every provider failed) is `None`: the endpoint's fail mode decides, never "allow".
pub fn verdict(score: Option<u8>, blocked_here: bool, bands: &Bands) -> Option<Verdict> {
    if blocked_here {
        return Some(Verdict::Block);
    }
    let s = score?;
    Some(if s >= bands.block {
        Verdict::Block
    } else if s >= bands.challenge {
        Verdict::Challenge
    } else if s >= bands.log {
        Verdict::Log
    } else {
        Verdict::Allow
    })
}

/// One score from the providers that answered: the maximum by default; with weights,
/// the weighted mean of those that answered (a provider without a weight counts 1).
pub fn combine(answers: &BTreeMap<Provider, Reputation>, weights: Option<&BTreeMap<Provider, f64>>) -> Option<u8> {
    if answers.is_empty() {
        return None;
    }
    match weights {
        None => answers.values().map(|r| r.score).max(),
        Some(w) => {
            let (sum, total) = answers.iter().fold((0.0, 0.0), |(sum, total), (p, r)| {
                let weight = w.get(p).copied().unwrap_or(1.0).max(0.0);
                (sum + weight * f64::from(r.score), total + weight)
            });
            (total > 0.0).then(|| (sum / total).round().clamp(0.0, 100.0) as u8)
        }
    }
}

/// WAYSCloud's score bands, used for the `level` field.
pub fn level(score: u8) -> &'static str {
    match score {
        0..=19 => "clean",
        20..=39 => "low",
        40..=59 => "medium",
        60..=79 => "high",
        _ => "critical",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_band_and_the_local_block() {
        let b = Bands::default();
        for (score, want) in [
            (0, Verdict::Allow),
            (29, Verdict::Allow),
            (30, Verdict::Log),
            (59, Verdict::Log),
            (60, Verdict::Challenge),
            (84, Verdict::Challenge),
            (85, Verdict::Block),
            (100, Verdict::Block),
        ] {
            assert_eq!(verdict(Some(score), false, &b), Some(want), "score {score}");
        }
        assert_eq!(verdict(Some(0), true, &b), Some(Verdict::Block), "blocked here: block, whatever the score");
        assert_eq!(verdict(None, false, &b), None, "unknown is not allow");
        let strict = Bands { log: 10, challenge: 20, block: 50 };
        assert_eq!(verdict(Some(50), false, &strict), Some(Verdict::Block));
    }

    #[test]
    fn scores_combine_by_maximum_or_weights() {
        let mut answers = BTreeMap::new();
        assert_eq!(combine(&answers, None), None);
        answers.insert(Provider::Wayscloud, Reputation::new(90, vec![]));
        answers.insert(Provider::Ipasis, Reputation::new(30, vec![]));
        assert_eq!(combine(&answers, None), Some(90));
        let weights = BTreeMap::from([(Provider::Wayscloud, 1.0), (Provider::Ipasis, 3.0)]);
        assert_eq!(combine(&answers, Some(&weights)), Some(45));
        assert_eq!(level(45), "medium");
    }
}
