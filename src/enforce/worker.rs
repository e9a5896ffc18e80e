//! The firewall worker: one thread that owns the [`Enforcer`] and turns whatever is
//! queued into one kernel transaction.
//!
//! The daemon sends jobs in commit order (it sends while holding the store's lock), so
//! the kernel sees changes in the order the store recorded them. When the worker picks
//! up an `Apply`, it also takes every `Apply` already queued and, during a storm (a batch
//! applied within [`STORM`]), those arriving within [`COALESCE`] (up to [`MAX_BATCH`]
//! changes), and applies them as one batch: a storm of fail2ban bans costs a handful of
//! kernel transactions, never one per address, while a ban on its own goes to the kernel
//! at once. Each sender may
//! wait until its batch is in the kernel, so `banshare ban` returns with the block in
//! force, and learns when it is not: the kernel's refusal of its own elements, or the
//! batch's failure, or a worker that died or stopped answering ([`WorkerHealth`]).

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ipnet::IpNet;

use super::in_force::{InForce, InForceIndex};
use super::{Change, Enforcer, FirewallError, Refused};
use crate::clock::Timestamp;
use crate::decision::{Decision, Guard, Source};

/// How long the worker waits for more changes before applying what it has, in a storm.
const COALESCE: Duration = Duration::from_millis(2);
/// A batch within this long of the previous one means a storm.
const STORM: Duration = Duration::from_millis(10);
/// The largest batch; more waits for the next transaction.
const MAX_BATCH: usize = 50_000;
/// How long a caller waits for its batch before it says the worker is stuck. A full load
/// of 100,000 elements takes about a second; finding refused elements, a few more.
const WAIT_LIMIT: Duration = Duration::from_secs(120);
/// Refused elements kept for `status`, most recent last.
const REFUSED_KEPT: usize = 20;

/// Why a change is not in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnforceError {
    /// The kernel refused these elements; the rest of the batch is in force.
    #[error("the kernel refused {}", list(.0))]
    Refused(Vec<Refused>),
    /// The batch failed as a whole (the firewall is rebuilt from the store within seconds).
    #[error("the firewall update failed: {0}")]
    Failed(String),
    /// The worker is gone or stuck: nothing reaches the kernel until the daemon restarts.
    #[error("the firewall worker {0}")]
    Worker(String),
    /// Recorded by a process without the firewall (the daemon is down): the daemon
    /// enforces it when it starts and rebuilds the kernel from the store.
    #[error("the daemon is not running; it blocks this when it starts")]
    Deferred,
}

fn list(refused: &[Refused]) -> String {
    refused.iter().map(Refused::to_string).collect::<Vec<_>>().join("; ")
}

/// Whether the worker lives and answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerHealth {
    Ok,
    /// The thread ended (a panic): no change reaches the kernel any more.
    Dead,
    /// One job has run this long (seconds) without finishing.
    Stuck(u64),
}

/// The outcome a waiter gets.
type Done = Sender<Result<(), EnforceError>>;

enum Job {
    Apply { changes: Vec<Change>, done: Option<Done> },
    Reconcile { active: Vec<Decision>, done: Sender<Result<Vec<Refused>, String>> },
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
    /// The elements the kernel refused lately (cleared by a load that refuses none).
    refused: Arc<Mutex<Vec<Refused>>>,
    /// Cleared when the worker thread ends, however it ends.
    alive: Arc<AtomicBool>,
    /// When the job in progress started (unix ms), 0 when idle.
    busy_since: Arc<AtomicI64>,
}

/// Waits for a batch to reach the kernel.
#[must_use = "a ticket says whether the change reached the kernel"]
pub struct Ticket(Option<Receiver<Result<(), EnforceError>>>);

impl Ticket {
    /// Blocks until the batch holding this change was applied. `Ok` means every element
    /// of it is in the kernel (or nothing needed the kernel).
    pub fn wait(self) -> Result<(), EnforceError> {
        let Some(rx) = self.0 else { return Ok(()) };
        match rx.recv_timeout(WAIT_LIMIT) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                Err(EnforceError::Worker(format!("has not answered in {} s", WAIT_LIMIT.as_secs())))
            }
            Err(RecvTimeoutError::Disconnected) => Err(EnforceError::Worker("has stopped".into())),
        }
    }
}

/// Marks the worker dead when its thread ends, by return or by panic.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
        if std::thread::panicking() {
            tracing::error!("the firewall worker panicked; nothing reaches the kernel until banshare restarts");
        }
    }
}

impl FirewallHandle {
    /// Starts the worker thread; it ends when every handle is dropped.
    pub fn spawn(enforcer: Enforcer) -> FirewallHandle {
        let (jobs, rx) = mpsc::channel();
        let handle = FirewallHandle {
            jobs,
            backend: enforcer.backend_name(),
            last_error: Arc::default(),
            batches: Arc::default(),
            in_force: Arc::default(),
            refused: Arc::default(),
            alive: Arc::new(AtomicBool::new(true)),
            busy_since: Arc::default(),
        };
        let shared = Shared {
            last_error: Arc::clone(&handle.last_error),
            batches: Arc::clone(&handle.batches),
            refused: Arc::clone(&handle.refused),
            busy_since: Arc::clone(&handle.busy_since),
        };
        let alive = AliveGuard(Arc::clone(&handle.alive));
        std::thread::Builder::new()
            .name("banshare-firewall".into())
            .spawn(move || {
                let _alive = alive;
                work(enforcer, rx, shared)
            })
            .expect("spawn the firewall worker");
        handle
    }

    /// Whether the worker lives and answers (a job running longer than `stuck_after`
    /// counts as stuck).
    pub fn health(&self, stuck_after: Duration) -> WorkerHealth {
        if !self.alive.load(Ordering::SeqCst) {
            return WorkerHealth::Dead;
        }
        match self.busy_since.load(Ordering::SeqCst) {
            0 => WorkerHealth::Ok,
            since => {
                let busy = Timestamp(since).until(Timestamp::now());
                if busy > stuck_after { WorkerHealth::Stuck(busy.as_secs()) } else { WorkerHealth::Ok }
            }
        }
    }

    /// The elements the kernel refused lately, most recent last.
    pub fn refused(&self) -> Vec<Refused> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
    pub fn add<'a, I>(&self, decisions: I) -> Ticket
    where
        I: IntoIterator<Item = &'a Decision>,
        I::IntoIter: Clone,
    {
        let decisions = decisions.into_iter();
        self.index().add(decisions.clone());
        self.apply(decisions.filter(|d| d.enforced).map(|d| Change::Add(d.into())).collect())
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
    /// Returns a receiver for the outcome: the elements the kernel refused, or why the
    /// load failed.
    pub fn reconcile(&self, active: Vec<Decision>) -> Receiver<Result<Vec<Refused>, String>> {
        self.index().replace(&active);
        let (tx, rx) = mpsc::channel();
        let active = active.into_iter().filter(|d| d.enforced).collect();
        let _ = self.jobs.send(Job::Reconcile { active, done: tx });
        rx
    }

    /// Whether banshare's rules are still in the kernel (`Err` too when the worker does
    /// not answer).
    pub fn intact(&self) -> Result<bool, FirewallError> {
        let (tx, rx) = mpsc::channel();
        let _ = self.jobs.send(Job::Intact { done: tx });
        rx.recv_timeout(WAIT_LIMIT)
            .unwrap_or_else(|_| Err(FirewallError::Unavailable("the firewall worker does not answer".into())))
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

/// The worker's side of what the handles show.
struct Shared {
    last_error: Arc<Mutex<Option<String>>>,
    batches: Arc<AtomicU64>,
    refused: Arc<Mutex<Vec<Refused>>>,
    busy_since: Arc<AtomicI64>,
}

impl Shared {
    /// Records an outcome for `status`: of a batch of `changes`, or of a full load
    /// (`None`). An element added since it was refused is no longer listed as refused.
    /// Returns whether the kernel is now suspect (a failed batch or load: the next health
    /// check rebuilds it from the store).
    fn record(&self, result: &Result<Vec<Refused>, FirewallError>, changes: Option<&[Change]>) -> bool {
        let mut slot = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(refused) => {
                *slot = None;
                let mut kept = self.refused.lock().unwrap_or_else(|e| e.into_inner());
                match changes {
                    None => kept.clear(),
                    Some(changes) => kept.retain(|r| !changes.iter().any(|c| adds(c, r.source, r.target))),
                }
                kept.extend(refused.iter().cloned());
                let excess = kept.len().saturating_sub(REFUSED_KEPT);
                kept.drain(..excess);
                false
            }
            Err(error) => {
                tracing::error!(%error, "firewall update failed: {error}; the store keeps the decisions and the next reconcile retries");
                *slot = Some(error.to_string());
                true
            }
        }
    }
}

/// What one waiter of a batch learns from its own `changes`: the elements of them the
/// kernel refused, or the batch's failure.
fn outcome_for(changes: &[Change], result: &Result<Vec<Refused>, FirewallError>) -> Result<(), EnforceError> {
    match result {
        Ok(refused) => {
            let mine: Vec<Refused> =
                refused.iter().filter(|r| changes.iter().any(|c| adds(c, r.source, r.target))).cloned().collect();
            if mine.is_empty() { Ok(()) } else { Err(EnforceError::Refused(mine)) }
        }
        Err(error) => Err(EnforceError::Failed(error.to_string())),
    }
}

/// Whether `change` adds exactly (`source`, `target`).
fn adds(change: &Change, source: Source, target: IpNet) -> bool {
    matches!(change, Change::Add(e) if e.source == source && e.target == target)
}

fn work(mut enforcer: Enforcer, rx: Receiver<Job>, shared: Shared) {
    // Set when a batch or load failed: the kernel may miss something, so the next
    // health check reports "not intact" and the daemon rebuilds from the store.
    let mut dirty = false;
    let mut next: Option<Job> = None;
    let mut last_batch = std::time::Instant::now() - STORM;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return, // every handle dropped: the daemon is gone
            },
        };
        shared.busy_since.store(Timestamp::now().as_millis().max(1), Ordering::SeqCst);
        match job {
            Job::Apply { mut changes, done } => {
                // Each waiter's own changes are a range of the merged batch.
                let mut waiters: Vec<(Done, Range<usize>)> = done.into_iter().map(|d| (d, 0..changes.len())).collect();
                let wait = if last_batch.elapsed() < STORM { COALESCE } else { Duration::ZERO };
                while changes.len() < MAX_BATCH {
                    match rx.recv_timeout(wait) {
                        Ok(Job::Apply { changes: more, done }) => {
                            let mine = changes.len()..changes.len() + more.len();
                            waiters.extend(done.map(|d| (d, mine)));
                            changes.extend(more);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
                let result = enforcer.apply(&changes, Timestamp::now());
                // Idle again before the waiters hear: one that asks for health right
                // after its answer must not see this job as still running.
                shared.busy_since.store(0, Ordering::SeqCst);
                last_batch = std::time::Instant::now();
                dirty |= shared.record(&result, Some(&changes));
                shared.batches.fetch_add(1, Ordering::Relaxed);
                for (w, mine) in waiters {
                    let _ = w.send(outcome_for(&changes[mine], &result));
                }
            }
            Job::Reconcile { active, done } => {
                let result = enforcer.reconcile(&active, Timestamp::now());
                shared.busy_since.store(0, Ordering::SeqCst);
                let _ = done.send(result.as_ref().map(Vec::clone).map_err(|e| e.to_string()));
                dirty = shared.record(&result, None);
            }
            Job::Intact { done } => {
                let _ = done.send(if dirty { Ok(false) } else { enforcer.intact() });
            }
            Job::SetGuard(guard) => enforcer.set_guard(guard),
            Job::Count { done } => {
                let _ = done.send(enforcer.element_count().ok());
            }
        }
        shared.busy_since.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Decision, parse_target};
    use crate::enforce::{Element, Firewall};

    /// A backend that refuses one target, panics on another, and hangs on a third: the
    /// failures a worker must report rather than hide.
    struct Picky {
        held: std::collections::BTreeSet<IpNet>,
    }

    fn target(s: &str) -> IpNet {
        parse_target(s).unwrap()
    }

    impl Firewall for Picky {
        fn name(&self) -> &'static str {
            "picky"
        }
        fn reconcile(&mut self, elements: &[Element], _now: Timestamp) -> Result<Vec<Refused>, FirewallError> {
            self.held = elements.iter().map(|e| e.target).collect();
            Ok(Vec::new())
        }
        fn apply(&mut self, changes: &[Change], _now: Timestamp) -> Result<Vec<Refused>, FirewallError> {
            let mut refused = Vec::new();
            for c in changes {
                match c {
                    Change::Add(e) if e.target == target("203.0.113.66") => {
                        refused.push(Refused { source: e.source, target: e.target, message: "value too large".into() })
                    }
                    Change::Add(e) if e.target == target("203.0.113.99") => panic!("backend bug"),
                    Change::Add(e) if e.target == target("203.0.113.77") => std::thread::sleep(Duration::from_secs(3)),
                    Change::Add(e) => {
                        self.held.insert(e.target);
                    }
                    Change::Remove(e) => {
                        self.held.remove(&e.target);
                    }
                }
            }
            Ok(refused)
        }
        fn element_count(&mut self) -> Result<usize, FirewallError> {
            Ok(self.held.len())
        }
        fn intact(&mut self) -> Result<bool, FirewallError> {
            Ok(true)
        }
    }

    fn decision(t: &str) -> Decision {
        Decision {
            id: 1,
            target: target(t),
            source: Source::Manual,
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

    fn handle() -> FirewallHandle {
        FirewallHandle::spawn(Enforcer::new(Box::new(Picky { held: Default::default() }), Guard::default()))
    }

    #[test]
    fn each_waiter_learns_whether_its_own_elements_reached_the_kernel() {
        let fw = handle();
        let good = fw.add(&[decision("203.0.113.1")]);
        let bad = fw.add(&[decision("203.0.113.66"), decision("203.0.113.2")]);
        assert_eq!(good.wait(), Ok(()));
        let err = bad.wait().unwrap_err();
        assert_eq!(err.to_string(), "the kernel refused 203.0.113.66 (manual): value too large");
        assert_eq!(fw.refused().len(), 1, "status names the refused element");
        assert_eq!(fw.element_count(), Some(2));
        assert_eq!(fw.health(Duration::from_secs(60)), WorkerHealth::Ok);
    }

    #[test]
    fn a_dead_worker_is_noticed_and_every_later_change_fails() {
        let fw = handle();
        let err = fw.add(&[decision("203.0.113.99")]).wait().unwrap_err();
        assert!(matches!(err, EnforceError::Worker(_)), "{err}");
        wait_dead(&fw);
        let later = fw.add(&[decision("203.0.113.3")]).wait().unwrap_err();
        assert_eq!(later.to_string(), "the firewall worker has stopped");
        assert!(fw.intact().is_err());
    }

    fn wait_dead(fw: &FirewallHandle) {
        for _ in 0..100 {
            if fw.health(Duration::from_secs(60)) == WorkerHealth::Dead {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the worker's death went unnoticed");
    }

    #[test]
    fn a_stuck_worker_is_noticed() {
        let fw = handle();
        let ticket = fw.add(&[decision("203.0.113.77")]);
        std::thread::sleep(Duration::from_millis(1500));
        assert!(matches!(fw.health(Duration::from_secs(1)), WorkerHealth::Stuck(_)));
        assert_eq!(ticket.wait(), Ok(()));
        assert_eq!(fw.health(Duration::from_secs(1)), WorkerHealth::Ok);
    }
}
