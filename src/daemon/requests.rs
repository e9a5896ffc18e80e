//! The control socket's requests, answered by the engine: each command parsed into its
//! arguments, done through the ledger, and answered with a typed [`Response`] (the server
//! writes it as the reply's `data`). The feed's commands are in `daemon::feed`.

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::engine::{Engine, worker_problem};
use crate::clock::Timestamp;
use crate::config::FeedConfig;
use crate::control::protocol::{
    BanData, ErrorBody, ErrorCode, FirewallStatus, ImportData, ListData, MAX_REASON, QueryData, ReloadData, Request,
    Response, StatusData, UnbanData,
};
use crate::control::server::Handler;
use crate::decision::{Decision, NewDecision, Source, parse_target, show_target};
use crate::enforce::EnforceError;
use crate::feed::sanitize::Sanitizer;
use crate::feed::wire::ReportInput;
use crate::store::{LiftReason, Store, StoreError, Upsert};

/// How long a reading of the kernel's counters is reused.
const STATS_FRESH: Duration = Duration::from_secs(1);

/// How many past decisions `query` shows.
const QUERY_HISTORY: usize = 5;

impl Engine {
    /// What the kernel holds per set, read at most once per [`STATS_FRESH`]: one read in
    /// flight, the callers meanwhile wait for it and share it (a `/metrics` flood runs
    /// one `nft` at a time, not one per request).
    fn kernel_stats(&self, backend: &str) -> Option<Vec<crate::enforce::SetStats>> {
        let mut slot = self.kernel_stats.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, stats)) = &*slot
            && at.elapsed() < STATS_FRESH
        {
            return stats.clone();
        }
        let stats = crate::enforce::stats(backend).unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read firewall counters: {error}");
            None
        });
        self.kernel_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *slot = Some((std::time::Instant::now(), stats.clone()));
        stats
    }

    fn ban(
        &self,
        target: &str,
        length: (Option<u64>, bool),
        reason: Option<String>,
        report: Option<String>,
    ) -> Result<Response, ErrorBody> {
        let target = parse_target(target).map_err(|m| ErrorBody::new(ErrorCode::InvalidTarget, m))?;
        let duration = self.ban_length(length.0, length.1)?;
        let reason = checked_reason(reason)?.unwrap_or_else(|| "manual ban".into());
        let config = self.config();
        let report = match report {
            Some(category) if target.prefix_len() == target.max_prefix_len() => {
                if !crate::feed::wire::valid_category(&category) {
                    let message = format!(
                        "`{category}` is not a report category (expected e.g. ssh_bruteforce, web_attack, other)"
                    );
                    return Err(ErrorBody::new(ErrorCode::BadRequest, message));
                }
                let sanitizer = Sanitizer::for_host(&self.host_addresses());
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
            Ok((decision, outcome)) => Ok(Response::Ban(Box::new(BanData { decision, outcome }))),
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
    ) -> Result<Response, ErrorBody> {
        let duration = self.ban_length(for_secs, permanent)?;
        let reason = checked_reason(reason)?.unwrap_or_else(|| "imported".into());
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
        tracing::info!(
            created = data.created,
            extended = data.extended,
            refused = data.refused.len(),
            "import done: {} new, {} extended, {} refused",
            data.created,
            data.extended,
            data.refused.len()
        );
        if let Err(error) = decided.kernel {
            let message = format!(
                "{} recorded ({} new, {} extended), but not all are blocked: {error}",
                data.created + data.extended + data.unchanged,
                data.created,
                data.extended
            );
            return Err(ErrorBody::new(ErrorCode::Firewall, message));
        }
        Ok(Response::Import(data))
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

    fn unban(&self, target: &str) -> Result<Response, ErrorBody> {
        let target = parse_target(target).map_err(|m| ErrorBody::new(ErrorCode::InvalidTarget, m))?;
        let now = Timestamp::now();
        let lifted = self.lift(|store| store.lift_target(&target, LiftReason::Unban, now)).map_err(internal)?;
        if lifted.decisions.is_empty() {
            let covering = self.ledger.read(|v| covering_nets(v.store, &target, now)).map_err(internal)?;
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
            tracing::info!(ip = %d.target, source = %d.source, "lifted {} ({}: unbanned by the operator)", crate::decision::show_target(&d.target), d.source);
        }
        if let Err(error) = lifted.kernel {
            let message =
                format!("{} is unbanned in the store, but the kernel may still hold it: {error}", show_target(&target));
            return Err(ErrorBody::new(ErrorCode::Firewall, message));
        }
        Ok(Response::Unban(UnbanData { lifted: lifted.decisions }))
    }

    fn query(&self, ip: &str) -> Result<Response, ErrorBody> {
        Ok(Response::Query(Box::new(self.query_data(ip)?)))
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
        let (found, protected) = self
            .ledger
            .read(|v| (v.store.covering(ip, now, QUERY_HISTORY), v.guard.check(&net).err().map(|r| r.to_string())));
        let (active, history) = found.map_err(internal)?;
        Ok(QueryData { ip, blocked: !active.is_empty(), active, history, protected })
    }

    fn list(&self, source: Option<Source>) -> Result<Response, ErrorBody> {
        let decisions = self.ledger.read(|v| v.store.active(source, Timestamp::now())).map_err(internal)?;
        Ok(Response::List(ListData { decisions }))
    }

    fn status(&self) -> Result<Response, ErrorBody> {
        Ok(Response::Status(Box::new(self.status_data()?)))
    }

    /// What `status` reports (also the source of the check service's `/metrics`).
    pub(super) fn status_data(&self) -> Result<StatusData, ErrorBody> {
        let now = Timestamp::now();
        let (config, loaded, reload_error) = {
            let info = self.info.read().unwrap_or_else(|e| e.into_inner());
            (Arc::clone(&info.config), info.loaded, info.reload_error.clone())
        };
        let (active, schema_version, host_addresses) =
            self.ledger.read(|v| (v.store.counts(now), v.store.schema_version(), v.host.len()));
        let (active, schema_version) = (active.map_err(internal)?, schema_version.map_err(internal)?);
        // Read outside the ledger's lock: kernel counters are slow at scale, and bans must
        // not wait for them.
        let firewall = &self.firewall;
        let elements = firewall.element_count();
        let backend = firewall.backend_name();
        let last_error = firewall.last_error();
        let sets = self.kernel_stats(backend);
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
                batches: firewall.batches(),
                kernel_reads: self.kernel_reads.load(std::sync::atomic::Ordering::Relaxed),
                sets,
                last_error,
                refused: firewall.refused(),
                worker_error: worker_problem(firewall),
            },
            active,
            allowlist_entries: config.allowlist.len(),
            host_addresses,
            sources: self.sources.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect(),
            follower_restarts: self.follower_restarts.load(std::sync::atomic::Ordering::Relaxed),
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
    fn handle(&self, request: Request) -> Result<Response, ErrorBody> {
        match request {
            Request::Ping => Ok(Response::Pong("pong")),
            Request::Reload => {
                super::notify("RELOADING=1");
                let result = self.reload();
                super::notify("READY=1");
                match result {
                    Ok((config, restart_needed)) => Ok(Response::Reload(ReloadData { config, restart_needed })),
                    Err(message) => Err(ErrorBody::new(
                        ErrorCode::Config,
                        format!("the config does not load; the previous one stays in force: {message}"),
                    )),
                }
            }
            Request::Fail2ban { event } => Ok(Response::Fail2ban(Box::new(self.fail2ban(event)?))),
            Request::Status => self.status(),
            Request::List { source } => self.list(source),
            Request::Query { ip } => self.query(&ip),
            Request::Ban { target, for_secs, permanent, reason, report, category } => {
                let report = report.then(|| category.unwrap_or_else(|| "other".into()));
                self.ban(&target, (for_secs, permanent), reason, report)
            }
            Request::Unban { target } => self.unban(&target),
            Request::Import { targets, for_secs, permanent, reason, .. } => {
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

/// A ban's reason: blank is none; longer than [`MAX_REASON`] characters is refused.
fn checked_reason(reason: Option<String>) -> Result<Option<String>, ErrorBody> {
    match reason {
        Some(r) if r.chars().count() > MAX_REASON => Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("a reason is at most {MAX_REASON} characters (this one has {})", r.chars().count()),
        )),
        Some(r) if r.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
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

pub(super) fn internal(e: StoreError) -> ErrorBody {
    tracing::error!(error = %e, "state database failure: {e}");
    ErrorBody::new(ErrorCode::Internal, e.to_string())
}
