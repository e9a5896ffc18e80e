//! The ledger: the one owner of decide, commit and enforce.
//!
//! Every change to what is blocked goes through [`Ledger::decide`] (bans from detection,
//! the socket, the fail2ban hook, the feed) or [`Ledger::lift`] (unbans, expiry, fail2ban
//! unbans, the allowlist), in that order: the guard, the commit to the [`Store`] (the truth),
//! then the kernel through the [`FirewallHandle`] (the enforcement). One mutex covers the
//! store and the guard, and the kernel change is queued while it is held, so the kernel
//! sees changes in commit order; the caller then waits, outside the lock, until its batch
//! is in the kernel (concurrent callers share one transaction) and learns whether it is.
//! A decision is acknowledged only after its commit, so a crash never loses an
//! acknowledged ban, and the kernel is rebuilt from the store at every start.
//!
//! Neighbours: the daemon wires it and answers the socket with it; the store keeps the
//! records; `enforce` applies the changes. Other tables of the store (checkpoints, the
//! report outbox, caches) are reached through [`Ledger::records`]; decisions never are.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use ipnet::IpNet;

use crate::clock::Timestamp;
use crate::decision::{Decision, Guard, NewDecision, Refusal, Source};
use crate::enforce::{EnforceError, FirewallHandle, Ticket};
use crate::store::{LiftReason, Store, StoreError, Upsert};

/// Above this many decisions in one batch, the log gets one summary line instead of a
/// line per address (an import of 100,000 would otherwise spend seconds logging).
const BULK_LOG: usize = 100;

/// The outcome of one proposed decision.
pub type Outcome = Result<(Decision, Upsert), Refusal>;

/// What a batch of proposals came to.
#[derive(Debug)]
pub struct Decided {
    /// One per proposal, in order.
    pub outcomes: Vec<Outcome>,
    /// Whether every enforced decision of the batch is in the kernel.
    pub kernel: Result<(), EnforceError>,
}

/// What lifting came to: the decisions lifted, and whether the kernel let them go.
#[derive(Debug)]
pub struct Lifted {
    pub decisions: Vec<Decision>,
    pub kernel: Result<(), EnforceError>,
}

/// What the ledger's lock guards.
struct State {
    store: Store,
    guard: Guard,
    host: Vec<IpAddr>,
}

/// A read-only look at the records and the safety rules, under the ledger's lock.
pub struct View<'a> {
    pub store: &'a Store,
    pub guard: &'a Guard,
    /// This host's addresses as last read.
    pub host: &'a [IpAddr],
}

pub struct Ledger {
    state: Mutex<State>,
    /// `None` for the offline ledger of the fail2ban hook while the daemon is down: its
    /// decisions reach the kernel when the daemon starts and rebuilds it from the store.
    firewall: Option<FirewallHandle>,
}

impl Ledger {
    /// The ledger over `store`, enforcing through `firewall`, never blocking the
    /// `allowlist` or the `host`'s addresses.
    pub fn new(store: Store, firewall: FirewallHandle, allowlist: Vec<IpNet>, host: Vec<IpAddr>) -> Ledger {
        let guard = Guard::new(allowlist, host.clone());
        firewall.set_guard(guard.clone());
        Ledger { state: Mutex::new(State { store, guard, host }), firewall: Some(firewall) }
    }

    /// A ledger without a firewall, for a process that records while the daemon is down
    /// (the fail2ban hook's fallback): the same guard and commits; every kernel outcome
    /// is [`EnforceError::Deferred`].
    pub fn offline(store: Store, allowlist: Vec<IpNet>, host: Vec<IpAddr>) -> Ledger {
        let guard = Guard::new(allowlist, host.clone());
        Ledger { state: Mutex::new(State { store, guard, host }), firewall: None }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the store consistent (SQLite rolls back
        // the open transaction), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The firewall's handle, for its status and the in-memory index of what is in force
    /// (`None` offline).
    pub fn firewall(&self) -> Option<&FirewallHandle> {
        self.firewall.as_ref()
    }

    /// Queues `changes` to the firewall; offline, nothing can wait for the kernel.
    fn queue(&self, changes: impl FnOnce(&FirewallHandle) -> Ticket) -> Option<Ticket> {
        self.firewall.as_ref().map(changes)
    }

    /// Reads the records and the safety rules.
    pub fn read<T>(&self, f: impl FnOnce(&View<'_>) -> T) -> T {
        let st = self.state();
        f(&View { store: &st.store, guard: &st.guard, host: &st.host })
    }

    /// Lends the store for what is not a decision: checkpoints, the report outbox, the
    /// lookup and reputation caches, maintenance. Decisions change only through
    /// [`Ledger::decide`] and [`Ledger::lift`].
    pub fn records<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        f(&mut self.state().store)
    }

    /// At start: lift what expired while the daemon was down and what the guard now
    /// refuses, then rebuild the firewall from the store in one transaction.
    pub fn startup(&self, now: Timestamp) -> Result<(), StoreError> {
        let mut st = self.state();
        let expired = st.store.lift_expired(now)?;
        if !expired.is_empty() {
            tracing::info!(
                count = expired.len(),
                "lifted {} decisions that expired while the daemon was stopped",
                expired.len()
            );
        }
        lift_guarded(&mut st, self.firewall.as_ref(), now)?;
        let active = st.store.active(None, now)?;
        let count = active.len();
        let Some(firewall) = &self.firewall else { return Ok(()) };
        let done = firewall.reconcile(active);
        drop(st);
        match done.recv() {
            Ok(Ok(refused)) if refused.is_empty() => {}
            Ok(Ok(refused)) => {
                tracing::error!(
                    count = refused.len(),
                    "the kernel refused {} elements; they are not in force",
                    refused.len()
                )
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "initial firewall load failed: {error}; retrying every few seconds")
            }
            Err(_) => tracing::error!("the firewall worker stopped during the initial load"),
        }
        tracing::info!(
            active = count,
            backend = firewall.backend_name(),
            "firewall reconciled with the store: {count} active decisions ({})",
            firewall.backend_name()
        );
        Ok(())
    }

    /// Guards, commits and enforces a batch of proposed decisions, each change logged.
    /// Returns one outcome per proposal, in order.
    pub fn decide(&self, proposals: Vec<NewDecision>, now: Timestamp) -> Result<Decided, StoreError> {
        self.decide_as(proposals, now, true)
    }

    /// [`Ledger::decide`]; `announce` false logs no line per decision (what the journal
    /// already said: a fail2ban ban heard twice).
    pub fn decide_as(
        &self,
        proposals: Vec<NewDecision>,
        now: Timestamp,
        announce: bool,
    ) -> Result<Decided, StoreError> {
        let started = Instant::now();
        let mut st = self.state();
        // Accepted proposals move to the store; the refusals keep their place in line.
        let mut accepted = Vec::with_capacity(proposals.len());
        let refusals: Vec<Option<Refusal>> = proposals
            .into_iter()
            .map(|p| match st.guard.check(&p.target) {
                Ok(()) => {
                    accepted.push(p);
                    None
                }
                Err(refusal) => Some(refusal),
            })
            .collect();
        // Unchanged decisions need no kernel work, unless the kernel refused them lately.
        let refused: HashSet<(Source, IpNet)> =
            self.firewall.iter().flat_map(FirewallHandle::refused).map(|r| (r.source, r.target)).collect();
        // Per accepted proposal: whether the kernel must hear of it.
        let mut changes_kernel: Vec<bool> = Vec::new();
        let mut ticket = None;
        // The kernel's work starts as soon as the answers are known and runs beside the
        // store's writes; the lock is held until both are queued, so the kernel's order
        // stays the commit order. Should the commit fail, the kernel is rebuilt from the
        // store, which then holds what it held before.
        let written = st.store.upsert_decisions_then(&accepted, now, |answers| {
            changes_kernel = answers
                .iter()
                .map(|(d, u)| *u != Upsert::Unchanged || refused.contains(&(d.source, d.target)))
                .collect();
            let changed = answers.iter().zip(&changes_kernel).filter(|(_, c)| **c).map(|((d, _), _)| d);
            ticket = self.queue(|f| f.add(changed));
        });
        let mut committed = match written {
            Ok(answers) => answers.into_iter(),
            Err(error) => {
                if ticket.is_some() {
                    drop(st);
                    tracing::error!(%error, "the store refused a batch: {error}; rebuilding the firewall from the store");
                    self.rebuild_firewall(now)?;
                }
                return Err(error);
            }
        };
        let outcomes: Vec<Outcome> = refusals
            .into_iter()
            .map(|r| match r {
                None => Ok(committed.next().expect("one commit per accepted proposal")),
                Some(refusal) => Err(refusal),
            })
            .collect();
        let changed: Vec<&Decision> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .zip(&changes_kernel)
            .filter(|(_, c)| **c)
            .map(|((d, _), _)| d)
            .collect();
        let committed_at = started.elapsed();
        let bulk = changed.len() > BULK_LOG;
        let refusals: Vec<&Refusal> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
        if refusals.len() > BULK_LOG {
            tracing::warn!(count = refusals.len(), "{} not blocked: the safety rules refuse them", refusals.len());
        } else {
            for refusal in refusals {
                tracing::warn!("not blocked: {refusal}");
            }
        }
        drop(st);
        let kernel = kernel_outcome(ticket, changed.iter().copied(), "decisions recorded but not all in the kernel");
        // "blocked" only once the kernel took them.
        let per_address = announce && (!bulk || tracing::enabled!(tracing::Level::DEBUG));
        for d in changed.iter().filter(|_| per_address) {
            // A decision banshare does not enforce (fail2ban's report mode) is recorded.
            let what = if kernel.is_ok() && d.enforced { "blocked" } else { "recorded" };
            // The message reads on its own in `journalctl` (which prints no fields); the
            // fields stay for `journalctl -o json` and filters.
            let until = d.expires.map_or("permanently".to_string(), |t| format!("until {t}"));
            let shown = crate::decision::show_target(&d.target);
            if bulk {
                tracing::debug!(ip = %d.target, source = %d.source, %until, reason = %d.reason, "{what} {shown} ({}: {}) {until}", d.source, d.reason);
            } else {
                tracing::info!(ip = %d.target, source = %d.source, %until, reason = %d.reason, "{what} {shown} ({}: {}) {until}", d.source, d.reason);
            }
        }
        if bulk {
            tracing::info!(
                count = changed.len(),
                store_ms = committed_at.as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "blocked a batch (one line per address at debug level)"
            );
        }
        Ok(Decided { outcomes, kernel })
    }

    /// Lifts what `lift` takes out of the store and queues its removal from the kernel
    /// under the same lock, so the kernel sees lifts and bans in commit order; then
    /// waits for the kernel.
    pub fn lift(
        &self,
        lift: impl FnOnce(&mut Store) -> Result<Vec<Decision>, StoreError>,
    ) -> Result<Lifted, StoreError> {
        let mut st = self.state();
        let decisions = lift(&mut st.store)?;
        let ticket = self.queue(|f| f.remove(&decisions));
        drop(st);
        let kernel = kernel_outcome(ticket, &decisions, "decisions lifted but the kernel may still hold them");
        Ok(Lifted { decisions, kernel })
    }

    /// Rebuilds the kernel from the store's active decisions, in one transaction.
    pub fn rebuild_firewall(&self, now: Timestamp) -> Result<(), StoreError> {
        let Some(firewall) = &self.firewall else { return Ok(()) };
        let st = self.state();
        let done = firewall.reconcile(st.store.active(None, now)?);
        drop(st);
        let _ = done.recv();
        Ok(())
    }

    /// New safety rules (a reload's allowlist, or the host's addresses changed: `None`
    /// keeps the ones known); lifts the live decisions they refuse.
    pub fn protect(&self, allowlist: Vec<IpNet>, host: Option<Vec<IpAddr>>, now: Timestamp) -> Result<(), StoreError> {
        let mut st = self.state();
        if let Some(host) = host {
            st.host = host;
        }
        let guard = Guard::new(allowlist, st.host.clone());
        if let Some(firewall) = &self.firewall {
            firewall.set_guard(guard.clone());
        }
        st.guard = guard;
        lift_guarded(&mut st, self.firewall.as_ref(), now)
    }
}

/// Waits for `ticket` (offline: `Deferred` when any of `decisions` is enforced) and logs a
/// kernel failure with `what`.
fn kernel_outcome<'a>(
    ticket: Option<Ticket>,
    decisions: impl IntoIterator<Item = &'a Decision>,
    what: &str,
) -> Result<(), EnforceError> {
    let kernel = match ticket {
        Some(ticket) => ticket.wait(),
        None if decisions.into_iter().any(|d| d.enforced) => Err(EnforceError::Deferred),
        None => Ok(()),
    };
    if let Some(error) = kernel.as_ref().err().filter(|e| **e != EnforceError::Deferred) {
        tracing::error!(%error, "{what}: {error}");
    }
    kernel
}

/// Lifts live decisions that the guard refuses (an allowlist entry added, a new host
/// address): the operator's latest word on what must never be blocked wins.
fn lift_guarded(st: &mut State, firewall: Option<&FirewallHandle>, now: Timestamp) -> Result<(), StoreError> {
    let refused: Vec<Decision> = st
        .store
        .active(None, now)?
        .into_iter()
        .filter(|d| match st.guard.check(&d.target) {
            Ok(()) => false,
            Err(refusal) => {
                tracing::warn!(ip = %d.target, source = %d.source, "lifting a block the safety rules now refuse: {refusal}");
                true
            }
        })
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    let lifted = st.store.lift(refused, LiftReason::Allowlisted, now)?;
    // Not waited for: queued in order, applied before anything committed later.
    if let Some(firewall) = firewall {
        let _ = firewall.remove(&lifted);
    }
    Ok(())
}
