//! What is in force, in memory: every live decision the daemon handed to the firewall
//! (enforced or recorded only, as fail2ban's report mode is), by target and source, so a
//! local question ("is this address blocked here, by whom, until when?") costs a few hash
//! lookups instead of a database query. The check service asks it on every request.
//!
//! It follows the [`super::FirewallHandle`]'s add, remove and reconcile calls, which the
//! daemon makes in commit order under the store's lock, so it never runs ahead of the
//! store; expiry is also checked at lookup time.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::clock::Timestamp;
use crate::decision::{Decision, Source};

/// "No decision of this source" in a slot; `i64::MAX` is a permanent block.
const NONE: i64 = 0;
const PERMANENT: i64 = i64::MAX;

/// The block covering an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InForce {
    pub target: IpNet,
    pub source: Source,
    /// `None`: permanent.
    pub until: Option<Timestamp>,
}

/// Live decisions by target; per target one expiry slot per source.
#[derive(Debug, Default)]
pub struct InForceIndex {
    targets: HashMap<IpNet, [i64; Source::ALL.len()]>,
    /// How many targets have each (IPv6?, prefix length): the lengths a lookup tries.
    prefixes: BTreeMap<(bool, u8), usize>,
}

fn slot(source: Source) -> usize {
    Source::ALL.iter().position(|s| *s == source).unwrap_or(0)
}

fn key(target: &IpNet) -> (bool, u8) {
    (matches!(target, IpNet::V6(_)), target.prefix_len())
}

impl InForceIndex {
    /// Records live decisions (new or extended).
    pub fn add<'a>(&mut self, decisions: impl IntoIterator<Item = &'a Decision>) {
        for d in decisions {
            let until = d.expires.map_or(PERMANENT, |t| t.0.max(NONE + 1));
            let slots = self.targets.entry(d.target).or_insert_with(|| {
                *self.prefixes.entry(key(&d.target)).or_default() += 1;
                [NONE; Source::ALL.len()]
            });
            slots[slot(d.source)] = until;
        }
    }

    /// Forgets lifted decisions.
    pub fn remove(&mut self, decisions: &[Decision]) {
        for d in decisions {
            let Some(slots) = self.targets.get_mut(&d.target) else { continue };
            slots[slot(d.source)] = NONE;
            if slots.iter().all(|u| *u == NONE) {
                self.targets.remove(&d.target);
                let k = key(&d.target);
                if let Some(n) = self.prefixes.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        self.prefixes.remove(&k);
                    }
                }
            }
        }
    }

    /// Starts over from the store's live decisions.
    pub fn replace(&mut self, active: &[Decision]) {
        *self = InForceIndex::default();
        self.add(active);
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The block covering `ip` at `now`: of several, the one that lasts longest (the
    /// narrowest target on a tie).
    pub fn covering(&self, ip: IpAddr, now: Timestamp) -> Option<InForce> {
        let v6 = ip.is_ipv6();
        let mut best: Option<(i64, InForce)> = None;
        for (_, len) in self.prefixes.range((v6, 0)..=(v6, u8::MAX)).map(|(k, _)| *k).rev() {
            let Ok(net) = IpNet::new(ip, len) else { continue };
            let net = net.trunc();
            let Some(slots) = self.targets.get(&net) else { continue };
            for (i, until) in slots.iter().enumerate() {
                if *until == NONE || (*until != PERMANENT && *until <= now.0) {
                    continue;
                }
                if best.as_ref().is_none_or(|(b, _)| until > b) {
                    let until_ts = (*until != PERMANENT).then_some(Timestamp(*until));
                    best = Some((*until, InForce { target: net, source: Source::ALL[i], until: until_ts }));
                }
            }
        }
        best.map(|(_, b)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::parse_target;

    fn decision(target: &str, source: Source, expires: Option<i64>) -> Decision {
        Decision {
            id: 0,
            target: parse_target(target).unwrap(),
            source,
            reason: String::new(),
            category: None,
            score: None,
            created: Timestamp(0),
            expires: expires.map(Timestamp),
            lifted: None,
            evidence: Vec::new(),
            enforced: true,
        }
    }

    #[test]
    fn addresses_networks_sources_and_expiry() {
        let mut index = InForceIndex::default();
        let now = Timestamp(1_000);
        let host = decision("198.51.100.7", Source::Detect, Some(5_000));
        let net = decision("198.51.100.0/24", Source::Feed, Some(9_000));
        let v6 = decision("2001:db8:1::/64", Source::Manual, None);
        index.add(&[host.clone(), net.clone(), v6.clone()]);
        let hit = |index: &InForceIndex, ip: &str, at: Timestamp| {
            index.covering(ip.parse().unwrap(), at).map(|b| (b.source, b.until))
        };
        assert_eq!(hit(&index, "198.51.100.7", now), Some((Source::Feed, Some(Timestamp(9_000)))), "the longest wins");
        assert_eq!(hit(&index, "198.51.100.8", now), Some((Source::Feed, Some(Timestamp(9_000)))));
        assert_eq!(hit(&index, "198.51.101.8", now), None);
        assert_eq!(hit(&index, "2001:db8:1::99", now), Some((Source::Manual, None)));
        assert_eq!(hit(&index, "2001:db8:2::99", now), None);
        assert_eq!(hit(&index, "198.51.100.8", Timestamp(9_000)), None, "expired at lookup time");

        index.remove(&[net]);
        assert_eq!(hit(&index, "198.51.100.7", now), Some((Source::Detect, Some(Timestamp(5_000)))));
        assert_eq!(hit(&index, "198.51.100.8", now), None);
        // A second source on the same target survives the first's removal.
        index.add(&[decision("198.51.100.7", Source::Manual, Some(2_000))]);
        index.remove(&[host]);
        assert_eq!(hit(&index, "198.51.100.7", now), Some((Source::Manual, Some(Timestamp(2_000)))));
        index.replace(&[v6]);
        assert_eq!((index.len(), hit(&index, "198.51.100.7", now)), (1, None));
    }
}
