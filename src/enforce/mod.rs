//! Enforcement: turning decisions into blocks in the kernel.
//!
//! Each backend implements the small [`Firewall`] trait; [`select`] is the one place that
//! picks it from the config. The daemon never talks to a backend directly: it goes through
//! the [`Enforcer`], which applies the [`Guard`] again at this boundary, so whatever a
//! caller asks, loopback, link-local, the host's own addresses and the allowlist never
//! reach the kernel.
//!
//! Neighbours: the [`crate::ledger`] queues changes to the worker after committing to
//! the [`crate::store`], which stays the truth; the kernel is only the enforcement,
//! rebuilt from the store by [`Enforcer::reconcile`].

mod command;
mod dryrun;
pub mod in_force;
pub mod ipset;
pub mod netlink;
pub mod nftables;
pub mod timeout;
mod worker;

use std::path::Path;

use ipnet::IpNet;
use serde::Serialize;

use crate::clock::Timestamp;
use crate::decision::{Decision, Guard, Source, show_target};

pub use dryrun::DryRun;
pub use worker::{EnforceError, FirewallHandle, Ticket, WorkerHealth};

/// Which firewall backend enforces decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// nftables if `nft` works, else ipset, else a clear error.
    Auto,
    Nftables,
    Ipset,
    /// Logs and records what it would do; touches nothing.
    DryRun,
}

impl Backend {
    /// The backend a config value names (`auto`, `nftables`, `ipset`, `dry-run`).
    pub fn parse(text: &str) -> Option<Backend> {
        match text {
            "auto" => Some(Backend::Auto),
            "nftables" => Some(Backend::Nftables),
            "ipset" => Some(Backend::Ipset),
            "dry-run" => Some(Backend::DryRun),
            _ => None,
        }
    }
}

/// What the rules do to a blocked source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    Drop,
    Reject,
}

/// Backend settings from `[firewall]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirewallOptions {
    /// Also block forwarded traffic (containers, Docker-published ports).
    pub forward: bool,
    pub action: RuleAction,
}

/// One kernel set as `status` and `firewall show` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SetStats {
    pub name: String,
    /// The source the set belongs to (`None` for ipset's shared sets).
    pub source: Option<Source>,
    pub elements: usize,
    /// Packets and bytes dropped by the set's rules since they were created.
    pub packets: u64,
    pub bytes: u64,
}

/// One entry in a firewall set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Element {
    pub source: Source,
    pub target: IpNet,
    /// `None`: no kernel timeout.
    pub expires: Option<Timestamp>,
}

impl From<&Decision> for Element {
    fn from(d: &Decision) -> Self {
        Element { source: d.source, target: d.target, expires: d.expires }
    }
}

/// A change to the kernel's sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Add(Element),
    Remove(Element),
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The backend cannot run here: a missing tool or privilege, with how to fix it.
    #[error("{0}")]
    Unavailable(String),
    /// A command was refused; keeps its stderr.
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// An element the kernel refused on its own, with the backend's message. Everything else
/// of its batch is in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Refused {
    pub source: Source,
    pub target: IpNet,
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", show_target(&self.target), self.source, self.message)
    }
}

/// A firewall backend. Methods take whole batches: a backend must never run one process
/// per address.
///
/// `Ok(refused)` promises that the kernel holds what was asked except the `refused`
/// elements; `Err` means the backend could not apply anything it can vouch for (a missing
/// tool, lost privileges, a kernel refusing every transaction).
pub trait Firewall: Send {
    /// The backend's name for status and logs (`nftables`, `ipset`, `dry-run`).
    fn name(&self) -> &'static str;

    /// Makes the kernel hold exactly `elements`, in one transaction (no moment with
    /// nothing blocked). Elements the kernel refuses on their own are left out.
    fn reconcile(&mut self, elements: &[Element], now: Timestamp) -> Result<Vec<Refused>, FirewallError>;

    /// Applies a batch of additions and removals. When the kernel refuses the batch, the
    /// backend rebuilds its sets from what it wants, in one transaction, leaving out only
    /// what the kernel refuses on its own: a bad element never opens a gap for the others.
    fn apply(&mut self, changes: &[Change], now: Timestamp) -> Result<Vec<Refused>, FirewallError>;

    /// Number of elements the backend holds, as it last wrote them.
    fn element_count(&mut self) -> Result<usize, FirewallError>;

    /// Whether banshare's table or sets and rules are still in the kernel (an
    /// `nft flush ruleset` or an nftables restart removes them). Cheap: run every few
    /// seconds.
    fn intact(&mut self) -> Result<bool, FirewallError>;
}

/// How many checks one search for refused elements may cost. Beyond that the refusal is
/// systemic (a full set, lost privileges), not a few elements.
const SEARCH_BUDGET: usize = 64;

/// Finds the elements of `elements` the kernel refuses on their own, with `check` (a
/// dry run that changes nothing in force: `nft -c`, or a scratch ipset set), by halving
/// the refused part. Returns them with the backend's message; the caller then loads the
/// rest in one transaction.
pub(crate) fn find_refused(
    elements: &[Element],
    check: &mut dyn FnMut(&[Element]) -> Result<(), FirewallError>,
) -> Result<Vec<Refused>, FirewallError> {
    let mut budget = SEARCH_BUDGET;
    let mut refused = Vec::new();
    search(elements, check, &mut budget, &mut refused)?;
    for r in &refused {
        tracing::error!(ip = %r.target, source = %r.source, error = %r.message, "the kernel refused an element");
    }
    Ok(refused)
}

fn search(
    elements: &[Element],
    check: &mut dyn FnMut(&[Element]) -> Result<(), FirewallError>,
    budget: &mut usize,
    refused: &mut Vec<Refused>,
) -> Result<(), FirewallError> {
    if elements.is_empty() {
        return Ok(());
    }
    if *budget == 0 {
        return Err(FirewallError::Command {
            command: "firewall load".into(),
            stderr: format!("the kernel keeps refusing ({} elements still unchecked)", elements.len()),
        });
    }
    *budget -= 1;
    match check(elements) {
        Ok(()) => Ok(()),
        Err(e @ (FirewallError::Unavailable(_) | FirewallError::Io { .. })) => Err(e),
        Err(e) if elements.len() == 1 => {
            let message = match e {
                FirewallError::Command { stderr, .. } => stderr,
                other => other.to_string(),
            };
            refused.push(Refused { source: elements[0].source, target: elements[0].target, message });
            Ok(())
        }
        Err(_) => {
            let (a, b) = elements.split_at(elements.len() / 2);
            search(a, check, budget, refused)?;
            search(b, check, budget, refused)
        }
    }
}

/// `elements` without the refused ones.
pub(crate) fn without(elements: &[Element], refused: &[Refused]) -> Vec<Element> {
    let bad: std::collections::HashSet<(Source, IpNet)> = refused.iter().map(|r| (r.source, r.target)).collect();
    elements.iter().filter(|e| !bad.contains(&(e.source, e.target))).copied().collect()
}

/// Picks the backend the config asks for: the one place that decides. The dry-run
/// backend logs to `state_dir`.
pub fn select(backend: Backend, opts: FirewallOptions, state_dir: &Path) -> Result<Box<dyn Firewall>, FirewallError> {
    match backend {
        Backend::DryRun => Ok(Box::new(DryRun::open(&dry_run_log(state_dir))?)),
        Backend::Nftables => Ok(Box::new(nftables::Nftables::probe(opts)?)),
        Backend::Ipset => Ok(Box::new(ipset::Ipset::probe(opts)?)),
        Backend::Auto => match nftables::Nftables::probe(opts) {
            Ok(nft) => Ok(Box::new(nft)),
            Err(nft_error) => match ipset::Ipset::probe(opts) {
                Ok(ipset) => {
                    tracing::info!(reason = %nft_error, "nftables unavailable ({nft_error}); using ipset and iptables");
                    Ok(Box::new(ipset))
                }
                Err(ipset_error) => Err(FirewallError::Unavailable(format!(
                    "no firewall backend works here. nftables: {nft_error}. ipset: {ipset_error}. \
                     Install one (apt install nftables, or apt install ipset iptables) and run as root, \
                     or set firewall.backend = \"dry-run\" to try banshare without blocking"
                ))),
            },
        },
    }
}

/// Per-set statistics of whatever banshare has in the kernel under `backend`'s name.
/// Runs without the daemon's lock (reading counters costs about 0.6 s at 100,000
/// elements). `None` when banshare has nothing in the kernel.
pub fn stats(backend: &str) -> Result<Option<Vec<SetStats>>, FirewallError> {
    match backend {
        "nftables" => nftables::stats(),
        "ipset" => ipset::stats(),
        _ => Ok(None),
    }
}

/// Removes everything banshare put in the kernel, with either backend (package removal).
/// Returns what was removed, by backend. A backend whose tools are missing has nothing.
pub fn teardown() -> Result<Vec<&'static str>, FirewallError> {
    let mut removed = Vec::new();
    for (name, result) in [("nftables", nftables::teardown()), ("ipset", ipset::teardown())] {
        match result {
            Ok(true) => removed.push(name),
            Ok(false) | Err(FirewallError::Unavailable(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Where the dry-run backend records what it would do.
pub fn dry_run_log(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("dry-run.log")
}

/// The daemon's handle on the firewall: a backend behind the guard.
pub struct Enforcer {
    backend: Box<dyn Firewall>,
    guard: Guard,
}

impl Enforcer {
    pub fn new(backend: Box<dyn Firewall>, guard: Guard) -> Self {
        Enforcer { backend, guard }
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Replaces the guard (after a reload or a change of the host's addresses).
    pub fn set_guard(&mut self, guard: Guard) {
        self.guard = guard;
    }

    /// Rebuilds the kernel state from the store's active decisions.
    pub fn reconcile(&mut self, active: &[Decision], now: Timestamp) -> Result<Vec<Refused>, FirewallError> {
        let elements: Vec<Element> = active.iter().map(Element::from).filter(|e| self.allowed(e)).collect();
        self.backend.reconcile(&elements, now)
    }

    /// Applies a batch; additions the guard refuses are dropped here.
    pub fn apply(&mut self, changes: &[Change], now: Timestamp) -> Result<Vec<Refused>, FirewallError> {
        let mut changes: Vec<Change> = changes
            .iter()
            .filter(|c| match c {
                Change::Add(e) => self.allowed(e),
                Change::Remove(_) => true,
            })
            .copied()
            .collect();
        // In address order (stable: each target's changes keep their order, and changes
        // of different targets commute), so the backends' maps are filled in key order:
        // measured on 100,000 additions to the ipset mirror, 99 ms in arrival order.
        changes.sort_by_key(|c| match c {
            Change::Add(e) | Change::Remove(e) => e.target,
        });
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        self.backend.apply(&changes, now)
    }

    pub fn element_count(&mut self) -> Result<usize, FirewallError> {
        self.backend.element_count()
    }

    pub fn intact(&mut self) -> Result<bool, FirewallError> {
        self.backend.intact()
    }

    fn allowed(&self, e: &Element) -> bool {
        match self.guard.check(&e.target) {
            Ok(()) => true,
            Err(refusal) => {
                tracing::error!(ip = %e.target, source = %e.source, "not blocked at the firewall boundary: {refusal}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::parse_target;

    fn decision(target: &str) -> Decision {
        Decision {
            id: 1,
            target: parse_target(target).unwrap(),
            source: Source::Feed,
            reason: String::new(),
            category: None,
            score: None,
            created: Timestamp(0),
            expires: None,
            lifted: None,
            evidence: Vec::new(),
            enforced: true,
        }
    }

    #[test]
    fn the_guard_is_enforced_again_at_the_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let backend = DryRun::open(&dir.path().join("log")).unwrap();
        let guard = Guard::new(vec![parse_target("192.0.2.0/24").unwrap()], vec![]);
        let mut enforcer = Enforcer::new(Box::new(backend), guard);
        let batch = [decision("127.0.0.1"), decision("192.0.2.9"), decision("203.0.113.7"), decision("::/0")];
        let adds: Vec<Change> = batch.iter().map(|d| Change::Add(d.into())).collect();
        enforcer.apply(&adds, Timestamp(0)).unwrap();
        assert_eq!(enforcer.element_count().unwrap(), 1);
        enforcer.reconcile(&batch, Timestamp(0)).unwrap();
        assert_eq!(enforcer.element_count().unwrap(), 1);
    }
}

#[cfg(test)]
mod search_tests {
    use super::*;
    use crate::decision::parse_target;

    fn el(t: &str) -> Element {
        Element { source: Source::Detect, target: parse_target(t).unwrap(), expires: None }
    }

    #[test]
    fn refused_elements_are_found_by_halving_and_the_rest_kept() {
        let elements: Vec<Element> = (0..1000).map(|i| el(&format!("198.18.{}.{}", i / 250, i % 250 + 1))).collect();
        let bad = [elements[3].target, elements[777].target];
        let mut checks = 0;
        let refused = find_refused(&elements, &mut |part| {
            checks += 1;
            match part.iter().find(|e| bad.contains(&e.target)) {
                Some(e) => Err(FirewallError::Command { command: "nft -c".into(), stderr: format!("no {}", e.target) }),
                None => Ok(()),
            }
        })
        .unwrap();
        assert_eq!(refused.iter().map(|r| r.target).collect::<Vec<_>>(), bad);
        assert_eq!(refused[0].message, "no 198.18.0.4/32");
        assert!(checks <= 45, "{checks} checks");
        assert_eq!(without(&elements, &refused).len(), 998);
        // A refusal of everything is systemic: an error, not 1000 refused elements.
        let all = find_refused(&elements, &mut |_| {
            Err(FirewallError::Command { command: "nft -c".into(), stderr: "no".into() })
        });
        assert!(all.is_err());
        let gone = find_refused(&elements, &mut |_| Err(FirewallError::Unavailable("no nft".into())));
        assert!(matches!(gone, Err(FirewallError::Unavailable(_))));
    }
}
