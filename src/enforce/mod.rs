//! Enforcement: turning decisions into blocks in the kernel.
//!
//! Each backend implements the small [`Firewall`] trait; [`select`] is the one place that
//! picks it from the config. The daemon never talks to a backend directly: it goes through
//! the [`Enforcer`], which applies the [`Guard`] again at this boundary, so whatever a
//! caller asks, loopback, link-local, the host's own addresses and the allowlist never
//! reach the kernel.
//!
//! Neighbours: [`crate::daemon`] calls the enforcer after committing to the
//! [`crate::store`], which stays the truth; the kernel is only the enforcement, rebuilt
//! from the store by [`Enforcer::reconcile`].

mod dryrun;

use std::path::Path;

use ipnet::IpNet;
use serde::Serialize;

use crate::clock::Timestamp;
use crate::config::{Backend, Config};
use crate::decision::{Decision, Guard, Source};

pub use dryrun::DryRun;

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
        Element {
            source: d.source,
            target: d.target,
            expires: d.expires,
        }
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

/// A firewall backend. Methods take whole batches: a backend must never run one process
/// per address.
pub trait Firewall: Send {
    /// The backend's name for status and logs (`nftables`, `ipset`, `dry-run`).
    fn name(&self) -> &'static str;

    /// Makes the kernel hold exactly `elements`, in one transaction (no moment with
    /// nothing blocked).
    fn reconcile(&mut self, elements: &[Element], now: Timestamp) -> Result<(), FirewallError>;

    /// Applies a batch of additions and removals.
    fn apply(&mut self, changes: &[Change], now: Timestamp) -> Result<(), FirewallError>;

    /// Number of elements the backend holds, per source.
    fn element_count(&mut self) -> Result<usize, FirewallError>;
}

/// Picks the backend the config asks for.
pub fn select(config: &Config) -> Result<Box<dyn Firewall>, FirewallError> {
    let dry_run = || -> Result<Box<dyn Firewall>, FirewallError> {
        Ok(Box::new(DryRun::open(&dry_run_log(&config.state_dir))?))
    };
    match config.firewall.backend {
        Backend::DryRun => dry_run(),
        Backend::Auto => {
            tracing::warn!(
                "no kernel firewall backend is built into this banshare yet; \
                 firewall.backend = \"auto\" runs the dry-run backend (nothing is blocked)"
            );
            dry_run()
        }
        Backend::Nftables | Backend::Ipset => Err(FirewallError::Unavailable(
            "the nftables and ipset backends are not built into this banshare yet; \
             set firewall.backend = \"dry-run\" or \"auto\""
                .into(),
        )),
    }
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
    pub fn reconcile(&mut self, active: &[Decision], now: Timestamp) -> Result<(), FirewallError> {
        let elements: Vec<Element> = active
            .iter()
            .filter(|d| self.allowed(d))
            .map(Element::from)
            .collect();
        self.backend.reconcile(&elements, now)
    }

    /// Blocks `decisions` (those the guard allows).
    pub fn add(&mut self, decisions: &[Decision], now: Timestamp) -> Result<(), FirewallError> {
        let changes: Vec<Change> = decisions
            .iter()
            .filter(|d| self.allowed(d))
            .map(|d| Change::Add(d.into()))
            .collect();
        self.apply(&changes, now)
    }

    /// Lifts `decisions` in the kernel.
    pub fn remove(&mut self, decisions: &[Decision], now: Timestamp) -> Result<(), FirewallError> {
        let changes: Vec<Change> = decisions.iter().map(|d| Change::Remove(d.into())).collect();
        self.apply(&changes, now)
    }

    pub fn element_count(&mut self) -> Result<usize, FirewallError> {
        self.backend.element_count()
    }

    fn apply(&mut self, changes: &[Change], now: Timestamp) -> Result<(), FirewallError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.backend.apply(changes, now)
    }

    fn allowed(&self, d: &Decision) -> bool {
        match self.guard.check(&d.target) {
            Ok(()) => true,
            Err(refusal) => {
                tracing::error!(ip = %d.target, source = %d.source, "not blocked at the firewall boundary: {refusal}");
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
        }
    }

    #[test]
    fn the_guard_is_enforced_again_at_the_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let backend = DryRun::open(&dir.path().join("log")).unwrap();
        let guard = Guard::new(vec![parse_target("192.0.2.0/24").unwrap()], vec![]);
        let mut enforcer = Enforcer::new(Box::new(backend), guard);
        let batch = [
            decision("127.0.0.1"),
            decision("192.0.2.9"),
            decision("203.0.113.7"),
            decision("::/0"),
        ];
        enforcer.add(&batch, Timestamp(0)).unwrap();
        assert_eq!(enforcer.element_count().unwrap(), 1);
        enforcer.reconcile(&batch, Timestamp(0)).unwrap();
        assert_eq!(enforcer.element_count().unwrap(), 1);
    }
}
