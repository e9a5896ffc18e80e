//! The firewall worker: one thread that owns the [`Enforcer`] and turns whatever is
//! queued into one kernel transaction.
//!
//! The daemon sends jobs in commit order (it sends while holding the store's lock), so
//! the kernel sees changes in the order the store recorded them. When the worker picks
//! up an `Apply`, it also takes every `Apply` already queued and those arriving within
//! [`COALESCE`] (up to [`MAX_BATCH`] changes) and applies them as one batch: a storm of
//! fail2ban bans costs a handful of `nft` runs, never one per address. Each sender may
//! wait until its batch is in the kernel, so `banshare ban` returns with the block in
//! force.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::in_force::{InForce, InForceIndex};
use super::{Change, Enforcer, FirewallError};
use crate::clock::Timestamp;
use crate::decision::{Decision, Guard};

/// How long the worker waits for more changes before applying what it has.
const COALESCE: Duration = Duration::from_millis(2);
/// The largest batch; more waits for the next transaction.
const MAX_BATCH: usize = 50_000;

enum Job {
    Apply { changes: Vec<Change>, done: Option<Sender<()>> },
    Reconcile { active: Vec<Decision>, done: Sender<Result<(), String>> },
    Intact { done: Sender<Result<bool, FirewallError>> },
    SetGuard(Guard),
    Count { done: Sender<Option<usize>> },
}

/// The daemon's side of the worker.
#[derive(Clone)]
pub struct FirewallHandle {
    jobs: Sender<Job>,
    backend: &'static str,
    /// The last failure, cleared by the next success; shown by `status`.
    last_error: Arc<Mutex<Option<String>>>,
    /// Batches applied so far (each one kernel transaction); shown by `status`.
    batches: Arc<AtomicU64>,
    /// Every live decision handed over (enforced or not), for lookups without the store.
    in_force: Arc<RwLock<InForceIndex>>,
}

/// Waits for a batch to reach the kernel.
pub struct Ticket(Option<Receiver<()>>);

impl Ticket {
    /// Blocks until the batch holding this change was applied (or failed: the error is
    /// in `status` and the next reconcile retries).
    pub fn wait(self) {
        if let Some(rx) = self.0 {
            let _ = rx.recv();
        }
    }
}

impl FirewallHandle {
    /// Starts the worker thread; it ends when every handle is dropped.
    pub fn spawn(enforcer: Enforcer) -> FirewallHandle {
        let (jobs, rx) = mpsc::channel();
        let last_error = Arc::new(Mutex::new(None));
        let batches = Arc::new(AtomicU64::new(0));
        let handle = FirewallHandle {
            jobs,
            backend: enforcer.backend_name(),
            last_error: Arc::clone(&last_error),
            batches: Arc::clone(&batches),
            in_force: Arc::default(),
        };
        std::thread::Builder::new()
            .name("banshare-firewall".into())
            .spawn(move || work(enforcer, rx, last_error, batches))
            .expect("spawn the firewall worker");
        handle
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend
    }

    /// Batches applied since the daemon started.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Queues blocks for `decisions`.
    /// (Decisions banshare does not enforce are skipped here, in one place.)
    pub fn add(&self, decisions: &[Decision]) -> Ticket {
        self.index().add(decisions);
        self.apply(decisions.iter().filter(|d| d.enforced).map(|d| Change::Add(d.into())).collect())
    }

    /// Queues the lifting of `decisions`.
    pub fn remove(&self, decisions: &[Decision]) -> Ticket {
        self.index().remove(decisions);
        self.apply(decisions.iter().filter(|d| d.enforced).map(|d| Change::Remove(d.into())).collect())
    }

    fn index(&self) -> std::sync::RwLockWriteGuard<'_, InForceIndex> {
        self.in_force.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The live decision covering `ip`, as handed to the firewall (see [`InForceIndex`]).
    pub fn in_force(&self, ip: std::net::IpAddr, now: Timestamp) -> Option<InForce> {
        self.in_force.read().unwrap_or_else(|e| e.into_inner()).covering(ip, now)
    }

    fn apply(&self, changes: Vec<Change>) -> Ticket {
        if changes.is_empty() {
            return Ticket(None);
        }
        let (tx, rx) = mpsc::channel();
        let _ = self.jobs.send(Job::Apply { changes, done: Some(tx) });
        Ticket(Some(rx))
    }

    /// Queues a rebuild of the kernel from `active` (the store's decisions in force).
    /// Returns a receiver for the outcome.
    pub fn reconcile(&self, active: Vec<Decision>) -> Receiver<Result<(), String>> {
        self.index().replace(&active);
        let (tx, rx) = mpsc::channel();
        let active = active.into_iter().filter(|d| d.enforced).collect();
        let _ = self.jobs.send(Job::Reconcile { active, done: tx });
        rx
    }

    /// Whether banshare's rules are still in the kernel.
    pub fn intact(&self) -> Result<bool, FirewallError> {
        let (tx, rx) = mpsc::channel();
        let _ = self.jobs.send(Job::Intact { done: tx });
        rx.recv().unwrap_or(Ok(true))
    }

    pub fn set_guard(&self, guard: Guard) {
        let _ = self.jobs.send(Job::SetGuard(guard));
    }

    /// Elements the backend holds.
    pub fn element_count(&self) -> Option<usize> {
        let (tx, rx) = mpsc::channel();
        let _ = self.jobs.send(Job::Count { done: tx });
        rx.recv().ok().flatten()
    }
}

fn work(mut enforcer: Enforcer, rx: Receiver<Job>, last_error: Arc<Mutex<Option<String>>>, batches: Arc<AtomicU64>) {
    // Set when a batch or reload failed: the kernel may miss something, so the next
    // health check reports "not intact" and the daemon rebuilds from the store.
    let mut dirty = false;
    let record = |result: Result<(), FirewallError>, dirty: &mut bool, reconciled: bool| {
        let mut slot = last_error.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                *slot = None;
                if reconciled {
                    *dirty = false;
                }
            }
            Err(error) => {
                *dirty = true;
                tracing::error!(%error, "firewall update failed; the store keeps the decisions and the next reconcile retries");
                *slot = Some(error.to_string());
            }
        }
    };
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return, // every handle dropped: the daemon is gone
            },
        };
        match job {
            Job::Apply { mut changes, done } => {
                let mut waiters: Vec<Sender<()>> = done.into_iter().collect();
                while changes.len() < MAX_BATCH {
                    match rx.recv_timeout(COALESCE) {
                        Ok(Job::Apply { changes: more, done }) => {
                            changes.extend(more);
                            waiters.extend(done);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
                record(enforcer.apply(&changes, Timestamp::now()), &mut dirty, false);
                batches.fetch_add(1, Ordering::Relaxed);
                for w in waiters {
                    let _ = w.send(());
                }
            }
            Job::Reconcile { active, done } => {
                let result = enforcer.reconcile(&active, Timestamp::now());
                let _ = done.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                record(result, &mut dirty, true);
            }
            Job::Intact { done } => {
                let _ = done.send(if dirty { Ok(false) } else { enforcer.intact() });
            }
            Job::SetGuard(guard) => enforcer.set_guard(guard),
            Job::Count { done } => {
                let _ = done.send(enforcer.element_count().ok());
            }
        }
    }
}
