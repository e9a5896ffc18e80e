//! The ipset backend, for hosts on iptables: sets `banshare-v4` and `banshare-v6`
//! (`hash:net` with timeouts, so addresses and networks share one set and may overlap)
//! and one iptables/ip6tables rule per set on INPUT, FORWARD (configurable) and
//! DOCKER-USER when that chain exists, checked and inserted idempotently.
//!
//! Two sources may block the same target; the kernel holds it once, with the longest of
//! their expiries, until the last of them lifts it ([`Mirror`]).
//!
//! Incremental batches go through one `ipset -exist restore` ([`apply_script`]). A full
//! reload ([`Reload`]) fills fresh sets over netlink (`ipset restore` spends most of a
//! large load parsing its input) and `swap`s them in atomically, which is also how
//! `maxelem` grows: a set cannot be resized in place.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use ipnet::IpNet;

use super::command::run;
use super::netlink::{Batch, IpsetEntry};
use super::timeout::{IPSET_MAX, KernelTimeout};
use super::{
    Change, Element, Firewall, FirewallError, FirewallOptions, Refused, RuleAction, SetStats, find_refused, without,
};
use crate::clock::Timestamp;
use crate::decision::Source;

pub const SET_V4: &str = "banshare-v4";
pub const SET_V6: &str = "banshare-v6";
/// The smallest `maxelem` banshare creates; it grows to twice what is needed.
const MIN_MAXELEM: usize = 65_536;
/// Chains the rules go into (FORWARD only when `forward` is on; DOCKER-USER when it exists).
const CHAINS: [&str; 3] = ["INPUT", "FORWARD", "DOCKER-USER"];

fn set_of(t: &IpNet) -> &'static str {
    match t {
        IpNet::V4(_) => SET_V4,
        IpNet::V6(_) => SET_V6,
    }
}

/// What banshare wants in the two sets: per target, the sources holding it.
#[derive(Debug, Clone, Default)]
pub struct Mirror {
    desired: BTreeMap<IpNet, BTreeMap<Source, Option<Timestamp>>>,
}

/// Targets to (re)add with their effective timeout, and targets to delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub add: BTreeSet<IpNet>,
    pub delete: BTreeSet<IpNet>,
}

impl Mirror {
    pub fn from_elements(elements: &[Element]) -> Mirror {
        let mut m = Mirror::default();
        for e in elements {
            m.desired.entry(e.target).or_default().insert(e.source, e.expires);
        }
        m
    }

    /// Every (source, target) banshare wants.
    pub fn elements(&self) -> Vec<Element> {
        self.desired
            .iter()
            .flat_map(|(t, holders)| holders.iter().map(|(s, e)| Element { source: *s, target: *t, expires: *e }))
            .collect()
    }

    /// Targets held (each once, whatever the number of sources).
    pub fn targets(&self) -> usize {
        self.desired.len()
    }

    fn count(&self, v6: bool) -> usize {
        self.desired.keys().filter(|t| matches!(t, IpNet::V6(_)) == v6).count()
    }

    /// The expiry the kernel element gets: the latest among the sources, permanent wins.
    fn effective(&self, t: &IpNet) -> Option<Option<Timestamp>> {
        let holders = self.desired.get(t)?;
        Some(holders.values().try_fold(Timestamp(i64::MIN), |acc, e| e.map(|e| acc.max(e))))
    }

    pub fn plan(&mut self, changes: &[Change]) -> Plan {
        let mut plan = Plan::default();
        for change in changes {
            match change {
                Change::Add(e) => {
                    self.desired.entry(e.target).or_default().insert(e.source, e.expires);
                    plan.delete.remove(&e.target);
                    plan.add.insert(e.target);
                }
                Change::Remove(e) => {
                    let Some(holders) = self.desired.get_mut(&e.target) else { continue };
                    holders.remove(&e.source);
                    if holders.is_empty() {
                        self.desired.remove(&e.target);
                        plan.add.remove(&e.target);
                        plan.delete.insert(e.target);
                    } else {
                        plan.add.insert(e.target); // the timeout may have changed
                    }
                }
            }
        }
        plan
    }
}

/// `timeout N` in whole seconds (rounded up, capped); `timeout 0` is permanent in ipset.
/// `None` when already expired.
fn timeout(expires: Option<Timestamp>, now: Timestamp) -> Option<String> {
    KernelTimeout::of(expires, now, IPSET_MAX).ipset()
}

fn add_lines<'a>(
    out: &mut String,
    set: impl Fn(&IpNet) -> &'a str,
    targets: impl Iterator<Item = IpNet>,
    mirror: &Mirror,
    now: Timestamp,
) {
    for t in targets {
        if let Some(to) = mirror.effective(&t).and_then(|e| timeout(e, now)) {
            let _ = writeln!(out, "add {} {} {to}", set(&t), t);
        }
    }
}

/// The `ipset restore` input for an incremental batch (run with `-exist`: adding an
/// existing element updates its timeout, deleting a missing one is not an error).
pub fn apply_script(plan: &Plan, mirror: &Mirror, now: Timestamp) -> String {
    let mut s = String::new();
    for t in &plan.delete {
        let _ = writeln!(s, "del {} {t}", set_of(t));
    }
    add_lines(&mut s, set_of, plan.add.iter().copied(), mirror, now);
    s
}

/// `maxelem` for `n` elements: twice what is needed, at least `MIN_MAXELEM`.
pub fn maxelem(n: usize) -> usize {
    (n * 2).next_power_of_two().max(MIN_MAXELEM)
}

fn create_line(name: &str, v6: bool, maxelem: usize) -> String {
    let family = if v6 { "inet6" } else { "inet" };
    format!("create {name} hash:net family {family} timeout 0 maxelem {maxelem}\n")
}

/// A full reload: fresh `<set>-new` sets created (emptied if a crash left them), filled
/// over netlink ([`super::netlink::Batch::ipset`]) and swapped in, one atomic swap per
/// family. The live sets must exist (see `Ipset::ensure_sets`).
#[derive(Debug)]
pub struct Reload {
    /// `ipset restore` input that creates and empties the fresh sets.
    pub prepare: String,
    /// The fresh sets' entries.
    pub fill: Batch,
    /// `ipset restore` input that swaps them in and destroys the old ones.
    pub swap: String,
}

impl Reload {
    pub fn of(mirror: &Mirror, now: Timestamp) -> Reload {
        let (mut prepare, mut swap, mut fill) = (String::new(), String::new(), Batch::ipset());
        for (live, v6) in [(SET_V4, false), (SET_V6, true)] {
            let tmp = format!("{live}-new");
            prepare.push_str(&create_line(&tmp, v6, maxelem(mirror.count(v6))));
            let _ = writeln!(prepare, "flush {tmp}");
            let entries: Vec<IpsetEntry> = mirror
                .desired
                .keys()
                .filter(|t| matches!(t, IpNet::V6(_)) == v6)
                .filter_map(|t| {
                    let secs = KernelTimeout::of(mirror.effective(t)?, now, IPSET_MAX).ipset_secs()?;
                    Some(IpsetEntry { addr: t.network(), prefix: t.prefix_len(), timeout_secs: secs })
                })
                .collect();
            fill.ipset_add(&tmp, v6, &entries);
            let _ = writeln!(swap, "swap {tmp} {live}");
            let _ = writeln!(swap, "destroy {tmp}");
        }
        Reload { prepare, fill, swap }
    }
}

/// The iptables arguments of banshare's rule for `set` (after `-C`/`-I`/`-D CHAIN`).
pub fn rule_args(set: &str, action: RuleAction) -> Vec<&'static str> {
    let set: &'static str = if set == SET_V4 { SET_V4 } else { SET_V6 };
    let target = match action {
        RuleAction::Drop => "DROP",
        RuleAction::Reject => "REJECT",
    };
    vec!["-m", "set", "--match-set", set, "src", "-j", target]
}

fn tool(v6: bool) -> &'static str {
    if v6 { "ip6tables" } else { "iptables" }
}

fn chain_exists(v6: bool, chain: &str) -> bool {
    run(tool(v6), &["-w", "-n", "-L", chain], None).is_ok()
}

fn rule_present(v6: bool, chain: &str, rule: &[&str]) -> bool {
    let mut args = vec!["-w", "-C", chain];
    args.extend_from_slice(rule);
    run(tool(v6), &args, None).is_ok()
}

/// The ipset backend.
pub struct Ipset {
    opts: FirewallOptions,
    mirror: Mirror,
    /// `maxelem` of the live sets (v4, v6) as banshare last created them.
    capacity: [usize; 2],
}

impl Ipset {
    /// Checks that ipset and iptables run with the needed privileges.
    pub fn probe(opts: FirewallOptions) -> Result<Ipset, FirewallError> {
        run("ipset", &["list", "-n"], None)?;
        run("iptables", &["-w", "-n", "-L", "INPUT"], None)?;
        run("ip6tables", &["-w", "-n", "-L", "INPUT"], None)?;
        Ok(Ipset { opts, mirror: Mirror::default(), capacity: [MIN_MAXELEM; 2] })
    }

    /// Creates the live sets if missing and removes a temporary set left by a crash.
    fn ensure_sets(&self) -> Result<(), FirewallError> {
        let names = run("ipset", &["list", "-n"], None)?;
        let have = |n: &str| names.lines().any(|l| l.trim() == n);
        for (live, v6) in [(SET_V4, false), (SET_V6, true)] {
            if !have(live) {
                run("ipset", &["-exist", "restore"], Some(create_line(live, v6, MIN_MAXELEM).as_bytes()))?;
            }
            for leftover in [format!("{live}-new"), format!("{live}-check")] {
                if have(&leftover) {
                    run("ipset", &["destroy", &leftover], None)?;
                }
            }
        }
        Ok(())
    }

    /// Inserts banshare's rules where missing, first in each chain.
    fn ensure_rules(&self) -> Result<(), FirewallError> {
        for (set, v6) in [(SET_V4, false), (SET_V6, true)] {
            let rule = rule_args(set, self.opts.action);
            for chain in self.chains(v6) {
                if !rule_present(v6, chain, &rule) {
                    let mut args = vec!["-w", "-I", chain, "1"];
                    args.extend_from_slice(&rule);
                    run(tool(v6), &args, None)?;
                }
            }
        }
        Ok(())
    }

    fn chains(&self, v6: bool) -> Vec<&'static str> {
        CHAINS
            .into_iter()
            .filter(|c| match *c {
                "INPUT" => true,
                "FORWARD" => self.opts.forward,
                _ => chain_exists(v6, c),
            })
            .collect()
    }

    fn restore(script: &str) -> Result<(), FirewallError> {
        if script.is_empty() {
            return Ok(());
        }
        run("ipset", &["-exist", "restore"], Some(script.as_bytes())).map(|_| ())
    }

    /// Fills fresh sets from `mirror` and swaps them in (one atomic swap per family).
    fn reload(&mut self, mirror: Mirror, now: Timestamp) -> Result<(), FirewallError> {
        let reload = Reload::of(&mirror, now);
        let done = Self::restore(&reload.prepare)
            .and_then(|()| super::netlink::commit(&reload.fill))
            .and_then(|()| Self::restore(&reload.swap));
        if let Err(error) = done {
            // A refused line leaves the half-filled `-new` sets behind, never in force.
            let _ = self.ensure_sets();
            return Err(error);
        }
        self.capacity = [maxelem(mirror.count(false)), maxelem(mirror.count(true))];
        self.mirror = mirror;
        Ok(())
    }

    /// Loads exactly `elements` by swapping in fresh sets; when ipset refuses them, finds
    /// the elements it refuses on their own by filling scratch sets (never in force) and
    /// swaps in the rest.
    fn load(&mut self, elements: &[Element], now: Timestamp) -> Result<Vec<Refused>, FirewallError> {
        let error = match self.reload(Mirror::from_elements(elements), now) {
            Ok(()) => return Ok(Vec::new()),
            Err(e @ (FirewallError::Unavailable(_) | FirewallError::Io { .. })) => return Err(e),
            Err(error) => error,
        };
        tracing::error!(%error, elements = elements.len(), "ipset refused the load: {error}; looking for the elements it refuses");
        let refused = find_refused(elements, &mut |part| {
            let result = Self::restore(&check_script(&Mirror::from_elements(part), now));
            for scratch in [CHECK_V4, CHECK_V6] {
                let _ = run("ipset", &["-exist", "destroy", scratch], None);
            }
            result
        })?;
        self.reload(Mirror::from_elements(&without(elements, &refused)), now)?;
        Ok(refused)
    }
}

/// Scratch sets for finding refused elements; never referenced by a rule.
const CHECK_V4: &str = "banshare-v4-check";
const CHECK_V6: &str = "banshare-v6-check";

/// Fills the scratch sets with `mirror`'s elements, as `full_script` fills `-new`.
fn check_script(mirror: &Mirror, now: Timestamp) -> String {
    let mut s = String::new();
    for (name, v6) in [(CHECK_V4, false), (CHECK_V6, true)] {
        s.push_str(&create_line(name, v6, maxelem(mirror.count(v6))));
        let targets = mirror.desired.keys().filter(|t| matches!(t, IpNet::V6(_)) == v6).copied();
        add_lines(&mut s, |_| name, targets, mirror, now);
    }
    s
}

impl Firewall for Ipset {
    fn name(&self) -> &'static str {
        "ipset"
    }

    fn reconcile(&mut self, elements: &[Element], now: Timestamp) -> Result<Vec<Refused>, FirewallError> {
        self.ensure_sets()?;
        let refused = self.load(elements, now)?;
        self.ensure_rules()?;
        Ok(refused)
    }

    /// One `ipset restore` (idempotent with `-exist`). A set cannot grow in place: a
    /// batch that would overflow a set's `maxelem` reloads everything into bigger sets.
    /// When ipset refuses the batch, both sets are filled again from the mirror and
    /// swapped in, so the failure never takes out what is in force.
    fn apply(&mut self, changes: &[Change], now: Timestamp) -> Result<Vec<Refused>, FirewallError> {
        let plan = self.mirror.plan(changes);
        let overflow = [false, true].iter().any(|v6| self.mirror.count(*v6) > self.capacity[*v6 as usize]);
        if !overflow {
            match Self::restore(&apply_script(&plan, &self.mirror, now)) {
                Ok(()) => return Ok(Vec::new()),
                Err(e @ FirewallError::Unavailable(_)) => return Err(e),
                Err(error) => tracing::warn!(%error, "ipset refused a batch: {error}; loading both sets again"),
            }
        }
        self.ensure_sets()?;
        // The mirror already holds the batch: fill fresh sets from it as it is.
        match self.reload(self.mirror.clone(), now) {
            Ok(()) => Ok(Vec::new()),
            Err(e @ (FirewallError::Unavailable(_) | FirewallError::Io { .. })) => Err(e),
            Err(_) => {
                let wanted = self.mirror.elements();
                self.load(&wanted, now)
            }
        }
    }

    fn element_count(&mut self) -> Result<usize, FirewallError> {
        Ok(self.mirror.targets())
    }

    fn intact(&mut self) -> Result<bool, FirewallError> {
        let names = run("ipset", &["list", "-n"], None)?;
        if ![SET_V4, SET_V6].iter().all(|s| names.lines().any(|l| l.trim() == *s)) {
            return Ok(false);
        }
        Ok([(SET_V4, false), (SET_V6, true)]
            .iter()
            .all(|(set, v6)| rule_present(*v6, "INPUT", &rule_args(set, self.opts.action))))
    }
}

/// Removes banshare's rules (either action) from every chain, then its sets. Returns
/// whether anything existed.
pub fn teardown() -> Result<bool, FirewallError> {
    let mut found = false;
    for (set, v6) in [(SET_V4, false), (SET_V6, true)] {
        for chain in CHAINS {
            for action in [RuleAction::Drop, RuleAction::Reject] {
                let rule = rule_args(set, action);
                while rule_present(v6, chain, &rule) {
                    let mut args = vec!["-w", "-D", chain];
                    args.extend_from_slice(&rule);
                    run(tool(v6), &args, None)?;
                    found = true;
                }
            }
        }
    }
    let names = run("ipset", &["list", "-n"], None)?;
    for name in [SET_V4, SET_V6, "banshare-v4-new", "banshare-v6-new", CHECK_V4, CHECK_V6] {
        if names.lines().any(|l| l.trim() == name) {
            run("ipset", &["destroy", name], None)?;
            found = true;
        }
    }
    Ok(found)
}

/// Per set: elements (from `ipset list -terse`) and the packets and bytes dropped by
/// banshare's rules (summed over chains). `None` when the sets do not exist.
pub fn stats() -> Result<Option<Vec<SetStats>>, FirewallError> {
    let names = run("ipset", &["list", "-n"], None)?;
    let mut out = Vec::new();
    for (set, v6) in [(SET_V4, false), (SET_V6, true)] {
        if !names.lines().any(|l| l.trim() == set) {
            continue;
        }
        let terse = run("ipset", &["list", set, "-terse"], None)?;
        let elements = terse
            .lines()
            .find_map(|l| l.strip_prefix("Number of entries:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        let (mut packets, mut bytes) = (0, 0);
        for chain in CHAINS {
            if let Ok(listing) = run(tool(v6), &["-w", "-n", "-v", "-x", "-L", chain], None) {
                let (p, b) = rule_counters(&listing, set);
                packets += p;
                bytes += b;
            }
        }
        out.push(SetStats { name: set.into(), source: None, elements, packets, bytes });
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Packets and bytes of the rules matching `set` in an `iptables -nvxL CHAIN` listing.
pub fn rule_counters(listing: &str, set: &str) -> (u64, u64) {
    let needle = format!("match-set {set} src");
    listing
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            Some((cols.next()?.parse::<u64>().ok()?, cols.next()?.parse::<u64>().ok()?))
        })
        .fold((0, 0), |(p, b), (p2, b2)| (p + p2, b + b2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::parse_target;

    fn el(source: Source, t: &str, secs: Option<i64>) -> Element {
        Element { source, target: parse_target(t).unwrap(), expires: secs.map(|s| Timestamp(s * 1000)) }
    }

    #[test]
    fn a_target_held_by_two_sources_stays_until_both_lift_it() {
        let mut m = Mirror::default();
        let plan = m.plan(&[
            Change::Add(el(Source::Detect, "203.0.113.7", Some(100))),
            Change::Add(el(Source::Feed, "203.0.113.7", Some(50))),
            Change::Add(el(Source::Manual, "2001:db8::/48", None)),
        ]);
        assert_eq!(
            apply_script(&plan, &m, Timestamp(0)),
            "add banshare-v4 203.0.113.7/32 timeout 100\nadd banshare-v6 2001:db8::/48 timeout 0\n"
        );
        let plan = m.plan(&[Change::Remove(el(Source::Detect, "203.0.113.7", Some(100)))]);
        assert_eq!(apply_script(&plan, &m, Timestamp(0)), "add banshare-v4 203.0.113.7/32 timeout 50\n");
        let plan = m.plan(&[Change::Remove(el(Source::Feed, "203.0.113.7", Some(50)))]);
        assert_eq!(apply_script(&plan, &m, Timestamp(0)), "del banshare-v4 203.0.113.7/32\n");
    }

    #[test]
    fn full_reload_swaps_a_fresh_set_sized_for_what_is_needed() {
        let m = Mirror::from_elements(&[
            el(Source::Manual, "203.0.113.7", Some(10)),
            el(Source::Feed, "198.51.100.0/24", Some(1)),
        ]);
        let r = Reload::of(&m, Timestamp(1500));
        assert_eq!(
            r.prepare,
            "create banshare-v4-new hash:net family inet timeout 0 maxelem 65536\n\
             flush banshare-v4-new\n\
             create banshare-v6-new hash:net family inet6 timeout 0 maxelem 65536\n\
             flush banshare-v6-new\n"
        );
        assert_eq!(
            r.swap,
            "swap banshare-v4-new banshare-v4\ndestroy banshare-v4-new\n\
             swap banshare-v6-new banshare-v6\ndestroy banshare-v6-new\n"
        );
        // One message: the /32 with 9 s left (the /24 has expired).
        assert_eq!(r.fill.descriptions(), ["add 1 entries to set banshare-v4-new"]);
        assert_eq!(maxelem(100_000), 262_144);
    }

    #[test]
    fn timeouts_are_rounded_up_and_capped() {
        assert_eq!(timeout(Some(Timestamp(1001)), Timestamp(0)).unwrap(), "timeout 2");
        assert_eq!(timeout(Some(Timestamp(i64::MAX)), Timestamp(0)).unwrap(), "timeout 2147483");
        assert_eq!(timeout(Some(Timestamp(0)), Timestamp(0)), None);
    }

    #[test]
    fn counters_are_read_from_iptables_listings() {
        let listing = "Chain INPUT (policy ACCEPT 0 packets, 0 bytes)\n    pkts      bytes target     prot opt in     out     source               destination\n       3      180 DROP       0    --  *      *       0.0.0.0/0            0.0.0.0/0            match-set banshare-v4 src\n";
        assert_eq!(rule_counters(listing, SET_V4), (3, 180));
        assert_eq!(rule_counters(listing, SET_V6), (0, 0));
    }
}
