//! The engine: the daemon's operations on the [`Ledger`] (which owns the store, the
//! guard and the firewall), the config in force, the feed's runtime and the detection
//! loops' counters. Operations are synchronous; the async side calls them on blocking
//! threads. Decisions are made and lifted only through the ledger.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::Notify;

use super::feed::FeedRuntime;
use crate::clock::Timestamp;
use crate::clock::human_duration;
use crate::config::{self, Config};
use crate::control::protocol::SourceStatus;
use crate::decision::{Decision, Guard, NewDecision, Source, ban_target};
use crate::detect::{Ban, FilterSpec};
use crate::enforce::FirewallHandle;
use crate::feed::sanitize::Sanitizer;
use crate::feed::wire::ReportInput;
use crate::hostaddr;
use crate::ledger::{Decided, Ledger, Lifted};
use crate::store::{Store, StoreError};
use crate::tail::Checkpoint;

pub struct Engine {
    pub(super) ledger: Ledger,
    /// The firewall's handle, read for status, health and the in-force index; changes
    /// reach it only through the ledger.
    pub(super) firewall: FirewallHandle,
    pub(super) info: RwLock<Info>,
    pub(super) started: Timestamp,
    pub(super) started_at: Instant,
    /// Woken after each new decision so the expiry loop can recompute its deadline.
    pub(super) expiry_wake: Notify,
    /// The detection loops' counters per source, for `status`.
    pub(super) sources: Mutex<std::collections::BTreeMap<String, SourceStatus>>,
    /// The community feed: API client, reporter and pull state.
    pub(super) feed: FeedRuntime,
    /// Follower threads that died and were started again (see `follow::supervise`).
    pub(super) follower_restarts: std::sync::atomic::AtomicU64,
    /// The last reading of the kernel's set counters, and when (see `kernel_stats`).
    pub(super) kernel_stats: Mutex<Option<(Instant, Option<Vec<crate::enforce::SetStats>>)>>,
    /// How many times the kernel's counters were read (`status` shows it).
    pub(super) kernel_reads: std::sync::atomic::AtomicU64,
    /// fail2ban events heard lately: one ban told by the action and by fail2ban.log is
    /// one decision and one journal line.
    pub(super) fail2ban_echoes: Mutex<crate::fail2ban::Echoes>,
    /// Reloads asking the followers to take up the new config, and their answers.
    pub(super) follow_sync: FollowSync,
}

/// A reload's request that the log followers take up the config in force, and the
/// followers' answer: generations, counted up.
#[derive(Debug, Default)]
pub(super) struct FollowSync {
    /// (requested, answered)
    state: Mutex<(u64, u64)>,
    changed: std::sync::Condvar,
}

impl FollowSync {
    /// Asks for the config in force to be taken up; returns the generation to wait for.
    pub(super) fn request(&self) -> u64 {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 += 1;
        self.changed.notify_all();
        st.0
    }

    /// Waits until generation `gen` is answered; false after `timeout`.
    pub(super) fn wait_answered(&self, generation: u64, timeout: Duration) -> bool {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (st, _) =
            self.changed.wait_timeout_while(st, timeout, |st| st.1 < generation).unwrap_or_else(|e| e.into_inner());
        st.1 >= generation
    }

    /// The followers' side: waits up to `timeout` for a request newer than `seen`.
    pub(super) fn wait_requested(&self, seen: u64, timeout: Duration) -> Option<u64> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (st, _) =
            self.changed.wait_timeout_while(st, timeout, |st| st.0 <= seen).unwrap_or_else(|e| e.into_inner());
        (st.0 > seen).then_some(st.0)
    }

    /// The followers' side: generation `gen` is taken up.
    pub(super) fn answer(&self, generation: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.1 = st.1.max(generation);
        self.changed.notify_all();
    }

    /// Wakes every waiter (at shutdown).
    pub(super) fn wake(&self) {
        let _st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.changed.notify_all();
    }
}

/// The config in force and how it got there.
pub(super) struct Info {
    pub(super) config: Arc<Config>,
    pub(super) loaded: Timestamp,
    pub(super) reload_error: Option<String>,
}

impl Engine {
    pub fn new(config: Config, store: Store, firewall: FirewallHandle, host: Vec<IpAddr>) -> Engine {
        let feed = FeedRuntime::new(&config.feed);
        Engine {
            firewall: firewall.clone(),
            ledger: Ledger::new(store, firewall, config.allowlist.clone(), host),
            info: RwLock::new(Info { config: Arc::new(config), loaded: Timestamp::now(), reload_error: None }),
            started: Timestamp::now(),
            started_at: Instant::now(),
            expiry_wake: Notify::new(),
            sources: Mutex::new(std::collections::BTreeMap::new()),
            feed,
            kernel_stats: Mutex::new(None),
            kernel_reads: Default::default(),
            follower_restarts: Default::default(),
            fail2ban_echoes: Default::default(),
            follow_sync: FollowSync::default(),
        }
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.info.read().unwrap_or_else(|e| e.into_inner()).config)
    }

    /// The ledger: decisions, the store, the firewall.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// At start: lift what expired or is now refused, and rebuild the firewall.
    pub fn startup(&self, now: Timestamp) -> Result<(), StoreError> {
        self.ledger.startup(now)
    }

    /// Decides a batch through the ledger, then wakes the expiry loop (a new deadline)
    /// and the reporter (new reports).
    pub fn decide(&self, proposals: Vec<NewDecision>, now: Timestamp) -> Result<Decided, StoreError> {
        self.decide_as(proposals, now, true)
    }

    /// [`Engine::decide`], with or without the journal's line per decision.
    pub fn decide_as(
        &self,
        proposals: Vec<NewDecision>,
        now: Timestamp,
        announce: bool,
    ) -> Result<Decided, StoreError> {
        let decided = self.ledger.decide_as(proposals, now, announce)?;
        self.expiry_wake.notify_one();
        self.feed.wake.notify_one();
        Ok(decided)
    }

    /// Lifts through the ledger (see [`Ledger::lift`]).
    pub fn lift(
        &self,
        lift: impl FnOnce(&mut Store) -> Result<Vec<Decision>, StoreError>,
    ) -> Result<Lifted, StoreError> {
        self.ledger.lift(lift)
    }

    /// Records the bans local detection decided: the IPv6 target widened, the bantime
    /// escalated by the address's earlier detections in the store (so escalation
    /// survives restarts).
    pub fn detected(&self, bans: Vec<(Ban, FilterSpec)>) -> Result<Decided, StoreError> {
        let config = self.config();
        let proposals = self.ledger.read(|st| {
            let sanitizer = Sanitizer::for_host(st.host);
            let mut out = Vec::with_capacity(bans.len());
            for (ban, spec) in bans {
                let target = detection_target(st.guard, ban.addr, config.decisions.ipv6_prefix);
                if st.store.detected_since(&target, ban.at)? {
                    tracing::debug!(ip = %target, "lines read again after a restart; already banned for them");
                    continue;
                }
                let reason =
                    format!("{}: {} failures within {}", spec.name, ban.failures, human_duration(spec.findtime));
                let report = crate::feed::report_draft(
                    &config.feed,
                    &sanitizer,
                    &ReportInput {
                        ip: ban.addr,
                        category: &spec.category,
                        comment: &reason,
                        seen: ban.at,
                        evidence: &ban.evidence,
                        source: "banshare",
                        jail: Some(&spec.name),
                        failures: Some(ban.failures),
                    },
                );
                out.push(NewDecision {
                    target,
                    source: Source::Detect,
                    reason,
                    category: Some(spec.category.clone()),
                    score: None,
                    // Escalated by the detection stage (from `earlier_detections`).
                    duration: Some(ban.bantime),
                    evidence: ban.evidence,
                    report,
                    enforce: true,
                });
            }
            Ok::<_, StoreError>(out)
        })?;
        self.decide(proposals, Timestamp::now())
    }

    /// How often what a detection ban of `addr` blocks was banned by detection before:
    /// the count a follower's stage escalates a repeat offender's bantime by.
    pub fn earlier_detections(&self, addr: IpAddr) -> Result<u32, StoreError> {
        let prefix = self.config().decisions.ipv6_prefix;
        self.ledger.read(|st| st.store.earlier_detections(&detection_target(st.guard, addr, prefix)))
    }

    /// Where reading of a followed file stopped, from the store.
    pub fn file_checkpoint(&self, path: &str) -> Option<Checkpoint> {
        self.ledger.records(|s| s.file_checkpoint(path)).unwrap_or_else(|error| {
            tracing::warn!(%error, path, "cannot read a checkpoint: {error}; reading the file from its start");
            None
        })
    }

    /// Saves checkpoints of followed files.
    pub fn save_checkpoints(&self, checkpoints: &[(String, Checkpoint)]) {
        if let Err(error) = self.ledger.records(|s| s.save_checkpoints(checkpoints, Timestamp::now())) {
            tracing::warn!(%error, "cannot save checkpoints: {error}");
        }
    }

    pub(super) fn set_source_status(&self, status: &SourceStatus) {
        self.sources.lock().unwrap_or_else(|e| e.into_inner()).insert(status.source.clone(), status.clone());
    }

    /// The saved cursor of a journal source.
    pub fn journal_cursor(&self, key: &str) -> Option<String> {
        self.ledger.records(|s| s.journal_cursor(key)).unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read a journal cursor: {error}");
            None
        })
    }

    pub fn save_journal_cursor(&self, key: &str, cursor: &str) {
        if let Err(error) = self.ledger.records(|s| s.save_journal_cursor(key, cursor, Timestamp::now())) {
            tracing::warn!(%error, "cannot save a journal cursor: {error}");
        }
    }

    /// The live decision covering `ip`, from memory (no store query): the check
    /// service's question on every request.
    pub(super) fn in_force(&self, ip: IpAddr, now: Timestamp) -> Option<crate::enforce::in_force::InForce> {
        self.firewall.in_force(ip, now)
    }

    /// This host's addresses as last read.
    pub(super) fn host_addresses(&self) -> Vec<IpAddr> {
        self.ledger.read(|v| v.host.to_vec())
    }

    /// What stops the firewall from working at all (a dead or stuck worker), if anything.
    pub fn firewall_problem(&self) -> Option<String> {
        worker_problem(&self.firewall)
    }

    /// Lifts every decision whose time has come. Returns the next expiry.
    pub fn expire_due(&self, now: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        let lifted = self.lift(|store| store.lift_expired(now))?;
        for d in &lifted.decisions {
            tracing::info!(ip = %d.target, source = %d.source, "lifted {} ({}: expired)", crate::decision::show_target(&d.target), d.source);
        }
        self.ledger.read(|v| v.store.next_expiry())
    }

    /// Checks that the firewall still holds banshare's table or sets (`nft flush ruleset`
    /// and nftables restarts remove them) and rebuilds it from the store if not. With
    /// `full`, rebuilds regardless: re-asserts kernel timeouts of long bans and removes
    /// anything the kernel holds that the store has lifted.
    pub fn check_firewall(&self, now: Timestamp, full: bool) -> Result<(), StoreError> {
        let rebuild = full
            || match self.firewall.intact() {
                Ok(true) => false,
                Ok(false) => {
                    tracing::warn!(
                        "banshare's firewall rules are gone (nft flush ruleset? firewall restart?); restoring them"
                    );
                    true
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot check the firewall: {error}");
                    false
                }
            };
        if rebuild {
            self.ledger.rebuild_firewall(now)?;
        }
        Ok(())
    }

    /// Moves the WAL into the database file (the daemon's connection does not do it
    /// inside commits, see [`Store::defer_checkpoints`]).
    pub fn checkpoint(&self) {
        if let Err(error) = self.ledger.records(|s| s.checkpoint()) {
            tracing::warn!(%error, "state database checkpoint failed: {error}");
        }
    }

    /// Periodic upkeep: notice changes of the host's own addresses, checkpoint the
    /// store, prune old decisions.
    pub fn maintain(&self, now: Timestamp, prune: bool) -> Result<(), StoreError> {
        let host = match hostaddr::host_addresses() {
            Ok(h) => Some(h),
            Err(error) => {
                tracing::warn!(%error, "cannot read this host's addresses: {error}; keeping the last known ones");
                None
            }
        };
        let retention = self.config().decisions.retention;
        if let Some(host) = host.filter(|h| *h != self.host_addresses()) {
            tracing::info!(
                addresses = host.len(),
                "this host's addresses changed: {} addresses, never blocked",
                host.len()
            );
            self.ledger.protect(self.config().allowlist.clone(), Some(host), now)?;
        }
        if let Err(error) = self.ledger.records(|s| s.checkpoint()) {
            tracing::warn!(%error, "state database checkpoint failed: {error}");
        }
        if prune {
            let before = Timestamp(now.0.saturating_sub(retention.as_millis() as i64));
            let pruned = self.ledger.records(|s| s.prune(before))?;
            if pruned > 0 {
                tracing::info!(count = pruned, "pruned {pruned} old decisions");
            }
        }
        Ok(())
    }

    /// Reloads the config from where it came from. An invalid file is logged and the
    /// old config kept (shown in `status` until a reload succeeds).
    /// Loads the config file again and puts it in force. Returns where it came from and
    /// the keys whose change takes a restart; on a config error, the error (the previous
    /// config stays in force).
    pub fn reload(&self) -> Result<(String, Vec<String>), String> {
        let old = self.config();
        let mut new = match config::load(old.source_path.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config reload failed: {e}; keeping the previous config");
                self.info.write().unwrap_or_else(|e| e.into_inner()).reload_error = Some(e.to_string());
                return Err(e.to_string());
            }
        };
        let mut restart_needed = Vec::new();
        for (what, changed) in [
            ("state_dir", new.state_dir != old.state_dir),
            ("socket", new.socket != old.socket),
            ("firewall.backend", new.firewall != old.firewall),
            ("check.listen", new.check.listen != old.check.listen),
        ] {
            if changed {
                tracing::warn!(key = what, "changing {what} takes a restart; the running daemon keeps the old value");
                restart_needed.push(what.to_string());
            }
        }
        // The check service stays on the socket it bound; `status` must say that one.
        new.check.listen.clone_from(&old.check.listen);
        let now = Timestamp::now();
        if let Err(error) = self.ledger.protect(new.allowlist.clone(), None, now) {
            tracing::error!(%error, "applying the new allowlist failed: {error}");
        }
        self.feed.reconfigure(&new.feed);
        let origin = new.origin().to_string();
        tracing::info!(config = %origin, "config reloaded from {origin}");
        {
            let mut info = self.info.write().unwrap_or_else(|e| e.into_inner());
            *info = Info { config: Arc::new(new), loaded: now, reload_error: None };
        }
        // The log followers take up new sources and filters (and edited fail2ban
        // definitions) before reload answers.
        let generation = self.follow_sync.request();
        if !self.follow_sync.wait_answered(generation, FOLLOWERS_RELOAD_WAIT) {
            tracing::warn!("the log followers did not take up the new config within {FOLLOWERS_RELOAD_WAIT:?}");
            restart_needed.push("source/filter (the log followers did not restart in time)".into());
        }
        Ok((origin, restart_needed))
    }
}

/// The target detection bans for `addr`: IPv6 widened to `prefix`, unless the network
/// would cover an address the guard protects (the host's own /64, an allowlisted
/// neighbour); then the exact address, and the log says so.
fn detection_target(guard: &Guard, addr: IpAddr, prefix: u8) -> IpNet {
    let widened = ban_target(addr, Source::Detect, prefix);
    let exact = ban_target(addr, Source::Manual, prefix);
    if widened == exact {
        return exact;
    }
    match guard.check(&widened) {
        Ok(()) => widened,
        Err(refusal) => {
            if guard.check(&exact).is_ok() {
                tracing::info!(ip = %addr, "banning the address alone, not its network: {refusal}");
            }
            exact
        }
    }
}

/// How long a reload waits for the log followers to take up the new config.
const FOLLOWERS_RELOAD_WAIT: Duration = Duration::from_secs(10);

/// How long one firewall job may run before the worker counts as stuck.
pub(super) const WORKER_STUCK_AFTER: Duration = Duration::from_secs(300);

/// What is wrong with the firewall worker, if anything.
pub(super) fn worker_problem(firewall: &FirewallHandle) -> Option<String> {
    match firewall.health(WORKER_STUCK_AFTER) {
        crate::enforce::WorkerHealth::Ok => None,
        crate::enforce::WorkerHealth::Dead => Some("the firewall worker died; nothing reaches the kernel".into()),
        crate::enforce::WorkerHealth::Stuck(secs) => {
            Some(format!("the firewall worker has been stuck for {secs} s; nothing reaches the kernel"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::parse_target;

    #[test]
    fn ipv6_widening_falls_back_to_the_address_when_the_network_covers_a_protected_one() {
        let host: IpAddr = "2001:db8:aa:1::1".parse().unwrap();
        let guard = Guard::new(vec![parse_target("2001:db8:bb:1::5").unwrap()], vec![host]);
        let target = |ip: &str| detection_target(&guard, ip.parse().unwrap(), 64).to_string();
        // A neighbour inside the host's own /64, and one beside an allowlisted address.
        assert_eq!(target("2001:db8:aa:1::99"), "2001:db8:aa:1::99/128");
        assert_eq!(target("2001:db8:bb:1::6"), "2001:db8:bb:1::6/128");
        // Elsewhere the /64 is banned as before; IPv4 is never widened.
        assert_eq!(target("2001:db8:cc:1::99"), "2001:db8:cc:1::/64");
        assert_eq!(target("203.0.113.7"), "203.0.113.7/32");
        // The host's own address stays refused (by the guard, later), never widened.
        assert_eq!(target("2001:db8:aa:1::1"), "2001:db8:aa:1::1/128");
    }
}
