//! The engine: the daemon's state (store, guard, config, firewall handle) and every
//! operation on it. Operations are synchronous; the async side calls them on blocking
//! threads. One mutex covers the store, which makes the daemon the single writer and
//! fixes the order of effects: guard, commit, then enforce. Firewall jobs are queued to
//! the [`FirewallHandle`] while that mutex is held, so the kernel sees changes in commit
//! order, and awaited after it is released, so concurrent requests share one kernel
//! transaction. A decision is acknowledged only after its commit (and its batch reached
//! the kernel), so a crash never loses an acknowledged ban; the firewall is rebuilt from
//! the store at every start.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde_json::Value;
use tokio::sync::Notify;

use super::feed::FeedRuntime;
use crate::clock::Timestamp;
use crate::clock::human_duration;
use crate::config::FeedConfig;
use crate::config::{self, Config};
use crate::control::protocol::{
    BanData, ErrorBody, ErrorCode, FirewallStatus, ImportData, ListData, QueryData, Request, SourceStatus, StatusData,
    UnbanData,
};
use crate::control::server::Handler;
use crate::decision::{Decision, Guard, NewDecision, Refusal, Source, ban_target, parse_target, show_target};
use crate::detect::{Ban, FilterSpec};
use crate::enforce::{EnforceError, FirewallHandle};
use crate::feed::sanitize::Sanitizer;
use crate::feed::wire::ReportInput;
use crate::hostaddr;
use crate::store::{LiftReason, Store, StoreError, Upsert};
use crate::tail::Checkpoint;

/// How many past decisions `query` shows.
const QUERY_HISTORY: usize = 5;
/// Above this many decisions in one batch, the log gets one summary line instead of a
/// line per address (an import of 100,000 would otherwise spend seconds logging).
const BULK_LOG: usize = 100;

pub struct Engine {
    state: Mutex<State>,
    firewall: FirewallHandle,
    info: RwLock<Info>,
    started: Timestamp,
    started_at: Instant,
    /// Woken after each new decision so the expiry loop can recompute its deadline.
    pub(super) expiry_wake: Notify,
    /// The detection loops' counters per source, for `status`.
    sources: Mutex<std::collections::BTreeMap<String, SourceStatus>>,
    /// The community feed: API client, reporter and pull state.
    pub(super) feed: FeedRuntime,
}

/// Guarded by the engine's one mutex.
pub(super) struct State {
    pub(super) store: Store,
    guard: Guard,
    host: Vec<IpAddr>,
}

/// The config in force and how it got there.
struct Info {
    config: Arc<Config>,
    loaded: Timestamp,
    reload_error: Option<String>,
}

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

impl Engine {
    pub fn new(config: Config, store: Store, firewall: FirewallHandle, host: Vec<IpAddr>) -> Engine {
        let guard = Guard::new(config.allowlist.clone(), host.clone());
        firewall.set_guard(guard.clone());
        let feed = FeedRuntime::new(&config.feed);
        Engine {
            state: Mutex::new(State { store, guard, host }),
            firewall,
            info: RwLock::new(Info { config: Arc::new(config), loaded: Timestamp::now(), reload_error: None }),
            started: Timestamp::now(),
            started_at: Instant::now(),
            expiry_wake: Notify::new(),
            sources: Mutex::new(std::collections::BTreeMap::new()),
            feed,
        }
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.info.read().unwrap_or_else(|e| e.into_inner()).config)
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the store consistent (SQLite rolls back
        // the open transaction), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// At start: lift what expired while the daemon was down and what the guard now
    /// refuses, then rebuild the firewall from the store in one transaction.
    pub fn startup(&self, now: Timestamp) -> Result<(), StoreError> {
        let mut st = self.state();
        let expired = st.store.lift_expired(now)?;
        if !expired.is_empty() {
            tracing::info!(count = expired.len(), "lifted decisions that expired while the daemon was stopped");
        }
        lift_guarded(&mut st, &self.firewall, now)?;
        let active = st.store.active(None, now)?;
        let count = active.len();
        let done = self.firewall.reconcile(active);
        drop(st);
        match done.recv() {
            Ok(Ok(refused)) if refused.is_empty() => {}
            Ok(Ok(refused)) => {
                tracing::error!(count = refused.len(), "the kernel refused some elements; they are not in force")
            }
            Ok(Err(error)) => tracing::error!(%error, "initial firewall load failed; retrying every few seconds"),
            Err(_) => tracing::error!("the firewall worker stopped during the initial load"),
        }
        tracing::info!(active = count, backend = self.firewall.backend_name(), "firewall reconciled with the store");
        Ok(())
    }

    /// Guards, commits and enforces a batch of proposed decisions. Returns one outcome
    /// per proposal, in order.
    pub fn decide(&self, proposals: Vec<NewDecision>, now: Timestamp) -> Result<Decided, StoreError> {
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
        let mut committed = st.store.upsert_decisions(&accepted, now)?.into_iter();

        let outcomes: Vec<Outcome> = refusals
            .into_iter()
            .map(|r| match r {
                None => Ok(committed.next().expect("one commit per accepted proposal")),
                Some(refusal) => Err(refusal),
            })
            .collect();
        // Unchanged decisions need no kernel work, unless the kernel refused them lately.
        let refused: std::collections::HashSet<(Source, IpNet)> =
            self.firewall.refused().into_iter().map(|r| (r.source, r.target)).collect();
        let changed: Vec<Decision> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .filter(|(d, u)| *u != Upsert::Unchanged || refused.contains(&(d.source, d.target)))
            .map(|(d, _)| d.clone())
            .collect();
        let committed_at = started.elapsed();
        let bulk = changed.len() > BULK_LOG;
        let refusals: Vec<&Refusal> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
        if refusals.len() > BULK_LOG {
            tracing::warn!(count = refusals.len(), "not blocked: the safety rules refuse them");
        } else {
            for refusal in refusals {
                tracing::warn!("not blocked: {refusal}");
            }
        }
        for d in &changed {
            let until = d.expires.map_or("never".to_string(), |t| t.to_string());
            if bulk {
                tracing::debug!(ip = %d.target, source = %d.source, %until, reason = %d.reason, "blocked");
            } else {
                tracing::info!(ip = %d.target, source = %d.source, %until, reason = %d.reason, "blocked");
            }
        }
        let ticket = self.firewall.add(&changed);
        drop(st);
        self.expiry_wake.notify_one();
        self.feed.wake.notify_one();
        let kernel = ticket.wait();
        if let Err(error) = &kernel {
            tracing::error!(%error, "decisions recorded but not all in the kernel");
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
        let ticket = self.firewall.remove(&decisions);
        drop(st);
        let kernel = ticket.wait();
        if let Err(error) = &kernel {
            tracing::error!(%error, "decisions lifted but the kernel may still hold them");
        }
        Ok(Lifted { decisions, kernel })
    }

    /// Records the bans local detection decided: the IPv6 target widened, the bantime
    /// escalated by the address's earlier detections in the store (so escalation
    /// survives restarts).
    pub fn detected(&self, bans: Vec<(Ban, FilterSpec)>) -> Result<Decided, StoreError> {
        let config = self.config();
        let proposals = {
            let st = self.state();
            let sanitizer = Sanitizer::for_host(&st.host);
            let mut out = Vec::with_capacity(bans.len());
            for (ban, spec) in bans {
                let target = detection_target(&st.guard, ban.addr, config.decisions.ipv6_prefix);
                let earlier = st.store.earlier_detections(&target)?;
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
                    duration: Some(config.escalation.bantime(spec.bantime, earlier)),
                    evidence: ban.evidence,
                    report,
                    enforce: true,
                });
            }
            out
        };
        self.decide(proposals, Timestamp::now())
    }

    /// Where reading of a followed file stopped, from the store.
    pub fn file_checkpoint(&self, path: &str) -> Option<Checkpoint> {
        self.state().store.file_checkpoint(path).unwrap_or_else(|error| {
            tracing::warn!(%error, path, "cannot read a checkpoint; reading the file from its start");
            None
        })
    }

    /// Saves checkpoints of followed files.
    pub fn save_checkpoints(&self, checkpoints: &[(String, Checkpoint)]) {
        if let Err(error) = self.state().store.save_checkpoints(checkpoints, Timestamp::now()) {
            tracing::warn!(%error, "cannot save checkpoints");
        }
    }

    pub(super) fn set_source_status(&self, status: &SourceStatus) {
        self.sources.lock().unwrap_or_else(|e| e.into_inner()).insert(status.source.clone(), status.clone());
    }

    /// The saved cursor of a journal source.
    pub fn journal_cursor(&self, key: &str) -> Option<String> {
        self.state().store.journal_cursor(key).unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read a journal cursor");
            None
        })
    }

    pub fn save_journal_cursor(&self, key: &str, cursor: &str) {
        if let Err(error) = self.state().store.save_journal_cursor(key, cursor, Timestamp::now()) {
            tracing::warn!(%error, "cannot save a journal cursor");
        }
    }

    /// The live decision covering `ip`, from memory (no store query): the check
    /// service's question on every request.
    pub(super) fn in_force(&self, ip: IpAddr, now: Timestamp) -> Option<crate::enforce::in_force::InForce> {
        self.firewall.in_force(ip, now)
    }

    /// This host's addresses as last read.
    pub(super) fn host_addresses(&self) -> Vec<IpAddr> {
        self.state().host.clone()
    }

    /// What stops the firewall from working at all (a dead or stuck worker), if anything.
    pub fn firewall_problem(&self) -> Option<String> {
        worker_problem(&self.firewall)
    }

    /// Lifts every decision whose time has come. Returns the next expiry.
    pub fn expire_due(&self, now: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        let lifted = self.lift(|store| store.lift_expired(now))?;
        for d in &lifted.decisions {
            tracing::info!(ip = %d.target, source = %d.source, "ban expired");
        }
        self.state().store.next_expiry()
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
                    tracing::warn!(%error, "cannot check the firewall");
                    false
                }
            };
        if rebuild {
            let st = self.state();
            let done = self.firewall.reconcile(st.store.active(None, now)?);
            drop(st);
            let _ = done.recv();
        }
        Ok(())
    }

    /// Moves the WAL into the database file (the daemon's connection does not do it
    /// inside commits, see [`Store::defer_checkpoints`]).
    pub fn checkpoint(&self) {
        if let Err(error) = self.state().store.checkpoint() {
            tracing::warn!(%error, "state database checkpoint failed");
        }
    }

    /// Periodic upkeep: notice changes of the host's own addresses, checkpoint the
    /// store, prune old decisions.
    pub fn maintain(&self, now: Timestamp, prune: bool) -> Result<(), StoreError> {
        let host = match hostaddr::host_addresses() {
            Ok(h) => Some(h),
            Err(error) => {
                tracing::warn!(%error, "cannot read this host's addresses; keeping the last known ones");
                None
            }
        };
        let retention = self.config().decisions.retention;
        let mut st = self.state();
        if let Some(host) = host.filter(|h| *h != st.host) {
            tracing::info!(addresses = host.len(), "this host's addresses changed");
            let guard = Guard::new(self.config().allowlist.clone(), host.clone());
            st.host = host;
            set_guard(&mut st, &self.firewall, guard, now)?;
        }
        if let Err(error) = st.store.checkpoint() {
            tracing::warn!(%error, "state database checkpoint failed");
        }
        if prune {
            let before = Timestamp(now.0.saturating_sub(retention.as_millis() as i64));
            let pruned = st.store.prune(before)?;
            if pruned > 0 {
                tracing::info!(count = pruned, "pruned old decisions");
            }
        }
        Ok(())
    }

    /// Reloads the config from where it came from. An invalid file is logged and the
    /// old config kept (shown in `status` until a reload succeeds).
    pub fn reload(&self) {
        let old = self.config();
        let mut new = match config::load(old.source_path.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; keeping the previous config");
                self.info.write().unwrap_or_else(|e| e.into_inner()).reload_error = Some(e.to_string());
                return;
            }
        };
        for (what, changed) in [
            ("state_dir", new.state_dir != old.state_dir),
            ("socket", new.socket != old.socket),
            ("firewall.backend", new.firewall != old.firewall),
            ("check.listen", new.check.listen != old.check.listen),
        ] {
            if changed {
                tracing::warn!(key = what, "changing this key takes a restart; the running daemon keeps the old value");
            }
        }
        // The check service stays on the socket it bound; `status` must say that one.
        new.check.listen.clone_from(&old.check.listen);
        let now = Timestamp::now();
        let mut st = self.state();
        let guard = Guard::new(new.allowlist.clone(), st.host.clone());
        if let Err(error) = set_guard(&mut st, &self.firewall, guard, now) {
            tracing::error!(%error, "applying the new allowlist failed");
        }
        drop(st);
        self.feed.reconfigure(&new.feed);
        tracing::info!(config = %new.origin(), "config reloaded");
        let mut info = self.info.write().unwrap_or_else(|e| e.into_inner());
        *info = Info { config: Arc::new(new), loaded: now, reload_error: None };
    }

    fn ban(
        &self,
        target: &str,
        length: (Option<u64>, bool),
        reason: Option<String>,
        report: Option<String>,
    ) -> Result<Value, ErrorBody> {
        let target = parse_target(target).map_err(|m| ErrorBody::new(ErrorCode::InvalidTarget, m))?;
        let duration = self.ban_length(length.0, length.1)?;
        let reason = reason.filter(|r| !r.trim().is_empty()).unwrap_or_else(|| "manual ban".into());
        let config = self.config();
        let report = match report {
            Some(category) if target.prefix_len() == target.max_prefix_len() => {
                if !crate::feed::wire::valid_category(&category) {
                    let message = format!(
                        "`{category}` is not a report category (expected e.g. ssh_bruteforce, web_attack, other)"
                    );
                    return Err(ErrorBody::new(ErrorCode::BadRequest, message));
                }
                let sanitizer = Sanitizer::for_host(&self.state().host);
                let input = ReportInput {
                    ip: target.addr(),
                    category: &category,
                    comment: &reason,
                    seen: Timestamp::now(),
                    evidence: &[],
                    source: "manual",
                    jail: None,
                    failures: None,
                };
                let draft =
                    crate::feed::report_draft(&FeedConfig { report: true, ..config.feed.clone() }, &sanitizer, &input);
                if draft.is_none() {
                    return Err(ErrorBody::new(
                        ErrorCode::Refused,
                        format!("{} is not a public address; it is never reported", show_target(&target)),
                    ));
                }
                draft
            }
            Some(_) => {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    "only a single address can be reported, not a network",
                ));
            }
            None => None,
        };
        let proposal = NewDecision {
            target,
            source: Source::Manual,
            reason,
            category: report.as_ref().map(|r| r.category.clone()),
            score: None,
            duration,
            evidence: Vec::new(),
            report,
            enforce: true,
        };
        let decided = self.decide(vec![proposal], Timestamp::now()).map_err(internal)?;
        match decided.outcomes.into_iter().next().expect("one outcome per proposal") {
            Ok((decision, _)) if decided.kernel.is_err() => Err(not_in_kernel(&decision, decided.kernel)),
            Ok((decision, outcome)) => to_value(BanData { decision, outcome }),
            Err(refusal) => {
                Err(ErrorBody::new(ErrorCode::Refused, format!("refused: {refusal}; banshare never blocks it")))
            }
        }
    }

    fn import(
        &self,
        targets: Vec<String>,
        for_secs: Option<u64>,
        permanent: bool,
        reason: Option<String>,
    ) -> Result<Value, ErrorBody> {
        let duration = self.ban_length(for_secs, permanent)?;
        let reason = reason.filter(|r| !r.trim().is_empty()).unwrap_or_else(|| "imported".into());
        let mut data = ImportData::default();
        let mut proposals = Vec::with_capacity(targets.len());
        for text in &targets {
            match parse_target(text) {
                Ok(target) => proposals.push(NewDecision {
                    target,
                    source: Source::Manual,
                    reason: reason.clone(),
                    category: None,
                    score: None,
                    duration,
                    evidence: Vec::new(),
                    report: None,
                    enforce: true,
                }),
                Err(message) => data.invalid.push(message),
            }
        }
        let decided = self.decide(proposals, Timestamp::now()).map_err(internal)?;
        for outcome in decided.outcomes {
            match outcome {
                Ok((_, Upsert::Created)) => data.created += 1,
                Ok((_, Upsert::Extended)) => data.extended += 1,
                Ok((_, Upsert::Unchanged)) => data.unchanged += 1,
                Err(refusal) => data.refused.push(refusal.to_string()),
            }
        }
        tracing::info!(created = data.created, extended = data.extended, refused = data.refused.len(), "import done");
        if let Err(error) = decided.kernel {
            let message = format!(
                "{} recorded ({} new, {} extended), but not all are blocked: {error}",
                data.created + data.extended + data.unchanged,
                data.created,
                data.extended
            );
            return Err(ErrorBody::new(ErrorCode::Firewall, message));
        }
        to_value(data)
    }

    /// The length of a manual ban from the request's fields.
    fn ban_length(&self, for_secs: Option<u64>, permanent: bool) -> Result<Option<Duration>, ErrorBody> {
        match (permanent, for_secs) {
            (true, _) => Ok(None),
            (false, Some(0)) => Err(ErrorBody::new(ErrorCode::BadRequest, "a ban must last at least one second")),
            (false, Some(secs)) => {
                let d = Duration::from_secs(secs);
                crate::decision::check_ban_length(d)
                    .map_err(|why| ErrorBody::new(ErrorCode::BadRequest, format!("a ban of {secs} s is {why}")))?;
                Ok(Some(d))
            }
            (false, None) => Ok(self.config().decisions.manual_bantime),
        }
    }

    fn unban(&self, target: &str) -> Result<Value, ErrorBody> {
        let target = parse_target(target).map_err(|m| ErrorBody::new(ErrorCode::InvalidTarget, m))?;
        let now = Timestamp::now();
        let lifted = self.lift(|store| store.lift_target(&target, LiftReason::Unban, now)).map_err(internal)?;
        if lifted.decisions.is_empty() {
            let covering = covering_nets(&self.state().store, &target, now).map_err(internal)?;
            let message = if covering.is_empty() {
                format!("{} is not blocked", show_target(&target))
            } else {
                format!(
                    "{} is not blocked on its own; it is covered by {}: unban that to lift it",
                    show_target(&target),
                    covering
                        .iter()
                        .map(|d| format!("{} ({})", show_target(&d.target), d.source))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(ErrorBody::new(ErrorCode::NotFound, message));
        }
        for d in &lifted.decisions {
            tracing::info!(ip = %d.target, source = %d.source, "unbanned by the operator");
        }
        if let Err(error) = lifted.kernel {
            let message =
                format!("{} is unbanned in the store, but the kernel may still hold it: {error}", show_target(&target));
            return Err(ErrorBody::new(ErrorCode::Firewall, message));
        }
        to_value(UnbanData { lifted: lifted.decisions })
    }

    fn query(&self, ip: &str) -> Result<Value, ErrorBody> {
        to_value(self.query_data(ip)?)
    }

    pub(super) fn query_data(&self, ip: &str) -> Result<QueryData, ErrorBody> {
        let net = parse_target(ip).map_err(|m| ErrorBody::new(ErrorCode::InvalidTarget, m))?;
        if net.prefix_len() != net.max_prefix_len() {
            return Err(ErrorBody::new(
                ErrorCode::InvalidTarget,
                format!("`{ip}` is a network; query takes one address"),
            ));
        }
        let ip = net.addr();
        let now = Timestamp::now();
        let st = self.state();
        let (active, history) = st.store.covering(ip, now, QUERY_HISTORY).map_err(internal)?;
        let protected = st.guard.check(&net).err().map(|r| r.to_string());
        Ok(QueryData { ip, blocked: !active.is_empty(), active, history, protected })
    }

    fn list(&self, source: Option<Source>) -> Result<Value, ErrorBody> {
        let decisions = self.state().store.active(source, Timestamp::now()).map_err(internal)?;
        to_value(ListData { decisions })
    }

    fn status(&self) -> Result<Value, ErrorBody> {
        to_value(self.status_data()?)
    }

    /// What `status` reports (also the source of the check service's `/metrics`).
    pub(super) fn status_data(&self) -> Result<StatusData, ErrorBody> {
        let now = Timestamp::now();
        let (config, loaded, reload_error) = {
            let info = self.info.read().unwrap_or_else(|e| e.into_inner());
            (Arc::clone(&info.config), info.loaded, info.reload_error.clone())
        };
        let st = self.state();
        let active = st.store.counts(now).map_err(internal)?;
        let schema_version = st.store.schema_version().map_err(internal)?;
        let host_addresses = st.host.len();
        drop(st); // reading kernel counters is slow at scale; bans must not wait for it
        let elements = self.firewall.element_count();
        let backend = self.firewall.backend_name();
        let last_error = self.firewall.last_error();
        let sets = crate::enforce::stats(backend).unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read firewall counters");
            None
        });
        Ok(StatusData {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started: self.started,
            uptime_secs: self.started_at.elapsed().as_secs(),
            config: config.origin(),
            config_loaded: loaded,
            reload_error,
            state_db: config.state_db().display().to_string(),
            schema_version,
            firewall: FirewallStatus {
                backend: backend.into(),
                kernel_elements: sets.as_ref().map(|sets| sets.iter().map(|s| s.elements).sum()),
                elements,
                batches: self.firewall.batches(),
                sets,
                last_error,
                refused: self.firewall.refused(),
                worker_error: worker_problem(&self.firewall),
            },
            active,
            allowlist_entries: config.allowlist.len(),
            host_addresses,
            sources: self.sources.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect(),
            feed: self.feed_status(),
            check: config.check.listen.as_ref().map(|listen| crate::control::protocol::CheckStatus {
                listen: match listen {
                    crate::config::Listen::Tcp(addr) => addr.to_string(),
                    crate::config::Listen::Unix(path) => path.display().to_string(),
                },
                providers: config.check.providers.iter().map(|p| p.provider.name().to_string()).collect(),
            }),
        })
    }
}

impl Handler for Engine {
    fn handle(&self, request: Request) -> Result<Value, ErrorBody> {
        match request {
            Request::Ping => Ok(Value::String("pong".into())),
            Request::Fail2ban { event } => to_value(self.fail2ban(event)?),
            Request::Status => self.status(),
            Request::List { source } => self.list(source),
            Request::Query { ip } => self.query(&ip),
            Request::Ban { target, for_secs, permanent, reason, report, category } => {
                let report = report.then(|| category.unwrap_or_else(|| "other".into()));
                self.ban(&target, (for_secs, permanent), reason, report)
            }
            Request::Unban { target } => self.unban(&target),
            Request::Import { targets, for_secs, permanent, reason } => {
                self.import(targets, for_secs, permanent, reason)
            }
            request @ (Request::Sync
            | Request::Check { .. }
            | Request::Register { .. }
            | Request::Verify { .. }
            | Request::Delist { .. }) => self.feed_request(request),
        }
    }
}

/// Installs a new guard and lifts the live decisions it refuses.
fn set_guard(st: &mut State, firewall: &FirewallHandle, guard: Guard, now: Timestamp) -> Result<(), StoreError> {
    firewall.set_guard(guard.clone());
    st.guard = guard;
    lift_guarded(st, firewall, now)
}

/// Lifts live decisions that the guard refuses (an allowlist entry added, a new host
/// address): the operator's latest word on what must never be blocked wins.
fn lift_guarded(st: &mut State, firewall: &FirewallHandle, now: Timestamp) -> Result<(), StoreError> {
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
    let _ = firewall.remove(&lifted);
    Ok(())
}

/// Live decisions whose (larger) target contains `target`.
fn covering_nets(store: &Store, target: &IpNet, now: Timestamp) -> Result<Vec<Decision>, StoreError> {
    let (active, _) = store.covering(target.network(), now, 0)?;
    Ok(active.into_iter().filter(|d| d.target != *target && d.target.contains(target)).collect())
}

/// The answer for a decision the store holds but the kernel does not.
pub(super) fn not_in_kernel(decision: &Decision, kernel: Result<(), EnforceError>) -> ErrorBody {
    let error = kernel.err().map_or_else(String::new, |e| e.to_string());
    let until = decision.expires.map_or("permanent".to_string(), |t| format!("until {t}"));
    let message = format!(
        "{} is recorded ({until}) but NOT blocked: {error}; banshare retries from the store within seconds",
        show_target(&decision.target)
    );
    ErrorBody::new(ErrorCode::Firewall, message)
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

fn internal(e: StoreError) -> ErrorBody {
    tracing::error!(error = %e, "state database failure");
    ErrorBody::new(ErrorCode::Internal, e.to_string())
}

fn to_value(data: impl serde::Serialize) -> Result<Value, ErrorBody> {
    serde_json::to_value(data).map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
