//! The daemon's side of the community feed: the API client (rebuilt on reload), the
//! reporter and pull loops, and the feed requests of the control socket (`sync`,
//! `check`, `register`, `verify`, `delist`). The rules themselves live in
//! [`crate::feed`]; this module wires them to the engine.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use super::engine::Engine;
use crate::clock::Timestamp;
use crate::config::FeedConfig;
use crate::control::protocol::{
    CheckData, DelistData, ErrorBody, ErrorCode, FeedStatus, QueryData, RegisterData, Response, VerifyData,
};
use crate::decision::{Decision, Source, is_public, parse_target};
use crate::feed::api::{Api, Call, KEY_ENV, load_key};
use crate::feed::pull::{self, Fetched, PullReport};
use crate::feed::reporter::{Next, Reporter, ReporterStatus};
use crate::feed::wire;
use crate::store::{LiftReason, Outbox, OutboxAccess};

/// How long an idle reporter sleeps before looking at the outbox anyway.
const IDLE_RECHECK: Duration = Duration::from_secs(60);
const META_REPORTER_ID: &str = "feed.reporter_id";
const META_REPORTER_DOMAIN: &str = "feed.reporter_domain";

/// The feed's runtime state, owned by the engine.
pub struct FeedRuntime {
    /// The client, or why there is none (no key, unreadable key). Rebuilt on reload.
    api: RwLock<Result<Api, String>>,
    /// Where the key came from, for `status`.
    key_origin: RwLock<String>,
    /// The reporter loop publishes its state here after each step.
    reporter: Mutex<ReporterStatus>,
    /// Set by reload: the reporter forgets a 401/403 pause (the key may be fixed).
    resume: std::sync::atomic::AtomicBool,
    pull: Mutex<PullState>,
    /// One pull at a time (the schedule and `banshare sync`).
    pulling: tokio::sync::Mutex<()>,
    /// A report was queued, or the config changed: the reporter looks at once.
    pub(super) wake: Notify,
    /// The config changed: the pull loop re-reads its schedule.
    pub(super) pull_wake: Notify,
}

#[derive(Default)]
struct PullState {
    /// Pulls since start that applied, and that failed.
    pulls: u64,
    failures: u64,
    last: Option<PullReport>,
    last_error: Option<(Timestamp, String)>,
    next: Option<Timestamp>,
    /// Feed decisions in force that the last pulls did not list: how many in a row.
    misses: HashMap<IpNet, u32>,
}

impl FeedRuntime {
    pub fn new(cfg: &FeedConfig) -> FeedRuntime {
        let (api, origin) = build_api(cfg);
        FeedRuntime {
            api: RwLock::new(api),
            key_origin: RwLock::new(origin),
            reporter: Mutex::new(ReporterStatus::default()),
            resume: Default::default(),
            pull: Mutex::new(PullState::default()),
            pulling: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            pull_wake: Notify::new(),
        }
    }

    /// After a reload: a new key, URL or timeout takes effect; a paused reporter retries.
    pub fn reconfigure(&self, cfg: &FeedConfig) {
        let (api, origin) = build_api(cfg);
        *self.api.write().unwrap_or_else(|e| e.into_inner()) = api;
        *self.key_origin.write().unwrap_or_else(|e| e.into_inner()) = origin;
        self.resume.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
        self.pull_wake.notify_one();
    }

    pub fn api(&self) -> Result<Api, String> {
        self.api.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn upstream(&self) -> Result<Api, ErrorBody> {
        self.api().map_err(|m| ErrorBody::new(ErrorCode::Upstream, m))
    }
}

/// The client for `cfg`, and where its key came from (or why there is none).
fn build_api(cfg: &FeedConfig) -> (Result<Api, String>, String) {
    let from_env = std::env::var(KEY_ENV).is_ok_and(|v| !v.trim().is_empty());
    let origin = if from_env { KEY_ENV.to_string() } else { cfg.api_key_file.display().to_string() };
    match load_key(&cfg.api_key_file) {
        Ok(Some(key)) => {
            let api = Api::new(&cfg.base_url, &key, cfg.timeout);
            if let Err(error) = &api {
                tracing::error!(%error, "the community feed is off: {error}");
            }
            (api, origin)
        }
        Ok(None) => {
            let why = format!(
                "no API key ({} does not exist and {KEY_ENV} is not set): reporting waits, pulling is off",
                cfg.api_key_file.display()
            );
            tracing::info!("{why}");
            (Err(why.clone()), why)
        }
        Err(error) => {
            tracing::error!(%error, "the community feed is off: {error}");
            (Err(error.to_string()), error.to_string())
        }
    }
}

impl OutboxAccess for Engine {
    fn with_outbox<T>(&self, f: impl FnOnce(&Outbox<'_>) -> T) -> T {
        self.ledger().records(|s| f(&Outbox(s)))
    }
}

impl Engine {
    /// Records a pull: plans the decisions, applies them in one batch, and remembers the
    /// outcome for `status`. A failed fetch changes nothing that is enforced.
    pub fn apply_pull(&self, fetched: Result<Fetched, String>, started: Instant) -> Result<PullReport, String> {
        let now = Timestamp::now();
        let fetched = match fetched {
            Ok(f) => f,
            Err(message) => {
                tracing::warn!(error = %message, "feed pull failed: {message}; what is enforced stays as it is");
                let mut st = self.feed.pull.lock().unwrap_or_else(|e| e.into_inner());
                st.last_error = Some((now, message.clone()));
                st.failures += 1;
                drop(st);
                return Err(message);
            }
        };
        let cfg = self.config();
        let (received, pages) = (fetched.received, fetched.pages);
        let grace_start = Timestamp(now.0 - cfg.feed.unban_grace.as_millis() as i64);
        let (unbanned, current) = self
            .ledger()
            .records(|s| {
                Ok::<_, crate::store::StoreError>((s.unbanned_since(grace_start)?, s.active(Some(Source::Feed), now)?))
            })
            .map_err(|e| e.to_string())?;
        let expiries: HashMap<IpNet, Option<Timestamp>> = current.iter().map(|d| (d.target, d.expires)).collect();
        let (planned, mut skipped) = pull::plan(fetched, &cfg.feed, &unbanned);
        let diff = pull::diff(planned, &expiries, &cfg.feed, now);
        let decided = self.decide(diff.propose, now).map_err(|e| e.to_string())?;
        let mut report = PullReport { at: now, pages, received, unchanged: diff.unchanged, ..PullReport::default() };
        for outcome in decided.outcomes {
            match outcome {
                Ok((_, crate::store::Upsert::Created)) => report.added += 1,
                Ok(_) => report.renewed += 1,
                Err(_) => skipped.protected += 1,
            }
        }
        report.skipped = skipped;
        let gone = {
            let mut st = self.feed.pull.lock().unwrap_or_else(|e| e.into_inner());
            let gone = pull::missed(&mut st.misses, &expiries, &diff.listed, cfg.feed.lift_after_pulls);
            report.missing = st.misses.len();
            gone
        };
        if !gone.is_empty() {
            let gone: HashSet<IpNet> = gone.into_iter().collect();
            let delisted: Vec<Decision> = current.into_iter().filter(|d| gone.contains(&d.target)).collect();
            let lifted =
                self.lift(|store| store.lift(delisted, LiftReason::Delisted, now)).map_err(|e| e.to_string())?;
            report.delisted = lifted.decisions.len();
        }
        report.millis = started.elapsed().as_millis() as u64;
        tracing::info!(pages, "feed pulled: {}", pull::summary(&report));
        let mut st = self.feed.pull.lock().unwrap_or_else(|e| e.into_inner());
        st.last = Some(report.clone());
        st.pulls += 1;
        st.last_error = None;
        Ok(report)
    }

    /// `banshare sync`: pulls now (waiting for a scheduled pull in progress).
    fn sync(&self) -> Result<Response, ErrorBody> {
        let api = self.feed.upstream()?;
        let cfg = self.config();
        let rt = tokio::runtime::Handle::current();
        let _one = rt.block_on(self.feed.pulling.lock());
        let started = Instant::now();
        let fetched = rt.block_on(pull::fetch(&api, &cfg.feed));
        let report = self.apply_pull(fetched, started).map_err(|m| ErrorBody::new(ErrorCode::Upstream, m))?;
        Ok(Response::Sync(Box::new(report)))
    }

    /// `banshare check IP`: local state, then the feed's lookup (cached `lookup_cache`).
    fn check(&self, ip: &str, local: QueryData) -> Result<Response, ErrorBody> {
        let mut data = CheckData { local, lookup: None, fetched: None, cached: false, lookup_error: None };
        let net = parse_target(ip).map_err(|m| ErrorBody::new(ErrorCode::InvalidTarget, m))?;
        let addr = net.addr().to_string();
        let cfg = self.config();
        let now = Timestamp::now();
        if !is_public(&net) {
            data.lookup_error = Some("not a public address: it is never sent to the feed".into());
            return Ok(Response::Check(Box::new(data)));
        }
        let since = Timestamp(now.0 - cfg.feed.lookup_cache.as_millis() as i64);
        let cached = self.ledger().records(|s| s.lookup_get(&addr, since)).unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the lookup cache: {error}");
            None
        });
        if let Some((body, at)) = cached {
            data.lookup = wire::parse_lookup(body.as_bytes());
            (data.fetched, data.cached) = (Some(at), true);
        } else {
            match self.feed.api() {
                Err(message) => data.lookup_error = Some(format!("unknown: {message}")),
                Ok(api) => {
                    let call = Call::get(format!("/v1/ip/{addr}"), Vec::new());
                    match tokio::runtime::Handle::current().block_on(api.success(&call)) {
                        Ok(r) => match wire::parse_lookup(&r.body) {
                            Some(lookup) => {
                                let body = String::from_utf8_lossy(&r.body).into_owned();
                                if let Err(error) = self.ledger().records(|s| s.lookup_put(&addr, &body, now)) {
                                    tracing::warn!(%error, "cannot cache a lookup: {error}");
                                }
                                data.lookup = Some(lookup);
                                data.fetched = Some(now);
                            }
                            None => data.lookup_error = Some("unknown: the lookup answer is not readable".into()),
                        },
                        Err(message) => data.lookup_error = Some(format!("unknown: {message}")),
                    }
                }
            }
        }
        Ok(Response::Check(Box::new(data)))
    }

    fn register(
        &self,
        name: String,
        contact: String,
        domain: Option<String>,
        source_type: String,
    ) -> Result<Response, ErrorBody> {
        if !["automated", "hybrid", "manual"].contains(&source_type.as_str()) {
            return Err(ErrorBody::new(ErrorCode::BadRequest, "source type must be automated, hybrid or manual"));
        }
        let mut body = json!({
            "name": name,
            "source_type": source_type,
            "contact": contact,
            "intent": "banshare: reports attacks blocked on this host",
        });
        if let Some(d) = &domain {
            body["domain"] = json!(d);
        }
        let answer = self.api_call(Call::post("/v1/ip/reporters/register", body))?;
        let id = answer
            .get("reporter_id")
            .and_then(Value::as_str)
            .ok_or_else(|| ErrorBody::new(ErrorCode::Upstream, "the API's answer has no reporter_id"))?;
        self.ledger()
            .records(|s| {
                s.meta_set(META_REPORTER_ID, id)?;
                if let Some(d) = &domain {
                    s.meta_set(META_REPORTER_DOMAIN, d)?;
                }
                Ok::<_, crate::store::StoreError>(())
            })
            .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
        tracing::info!(reporter_id = id, "registered with the feed as reporter {id}");
        let data = RegisterData {
            reporter_id: id.to_string(),
            status: answer.get("status").and_then(Value::as_str).map(str::to_string),
            trust_score: answer.get("trust_score").and_then(Value::as_f64),
        };
        Ok(Response::Register(data))
    }

    fn verify(&self, domain: Option<String>) -> Result<Response, ErrorBody> {
        let (id, saved) = self
            .ledger()
            .records(|s| {
                Ok::<_, crate::store::StoreError>((s.meta_get(META_REPORTER_ID)?, s.meta_get(META_REPORTER_DOMAIN)?))
            })
            .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
        let id =
            id.ok_or_else(|| ErrorBody::new(ErrorCode::NotFound, "not registered yet: run `banshare register` first"))?;
        let domain = domain
            .or(saved)
            .ok_or_else(|| ErrorBody::new(ErrorCode::BadRequest, "no domain: give --domain (or register with one)"))?;
        let answer =
            self.api_call(Call::post("/v1/ip/reporters/verify", json!({"reporter_id": id, "domain": domain})))?;
        let record = answer.get("txt_record");
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let data = VerifyData {
            domain,
            status: text(answer.get("status")).unwrap_or_else(|| "unknown".into()),
            record_name: text(record.and_then(|r| r.get("name"))),
            record_value: text(record.and_then(|r| r.get("value"))),
            verified_at: text(answer.get("verified_at")),
        };
        Ok(Response::Verify(data))
    }

    fn delist(
        &self,
        ip: String,
        reason: String,
        hostname: String,
        contact: Option<String>,
    ) -> Result<Response, ErrorBody> {
        let net = parse_target(&ip).map_err(|m| ErrorBody::new(ErrorCode::InvalidTarget, m))?;
        let mut body = json!({"ip": crate::decision::show_target(&net), "reason": reason, "hostname": hostname});
        if let Some(c) = contact {
            body["contact"] = json!(c);
        }
        let answer = self.api_call(Call::post("/v1/ip/delist", body))?;
        let text = |k: &str| answer.get(k).and_then(Value::as_str).map(str::to_string);
        let data = DelistData { request_id: text("request_id"), status: text("status") };
        Ok(Response::Delist(data))
    }

    /// One call that must succeed; its JSON answer.
    fn api_call(&self, call: Call) -> Result<Value, ErrorBody> {
        let api = self.feed.upstream()?;
        let r = tokio::runtime::Handle::current()
            .block_on(api.success(&call))
            .map_err(|m| ErrorBody::new(ErrorCode::Upstream, m))?;
        Ok(serde_json::from_slice(&r.body).unwrap_or(Value::Null))
    }

    pub(super) fn feed_request(&self, request: crate::control::protocol::Request) -> Result<Response, ErrorBody> {
        use crate::control::protocol::Request;
        match request {
            Request::Sync => self.sync(),
            Request::Check { ip } => {
                let local = self.query_data(&ip)?;
                self.check(&ip, local)
            }
            Request::Register { name, contact, domain, source_type } => {
                self.register(name, contact, domain, source_type)
            }
            Request::Verify { domain } => self.verify(domain),
            Request::Delist { ip, reason, hostname, contact } => self.delist(ip, reason, hostname, contact),
            _ => Err(ErrorBody::new(ErrorCode::BadRequest, "not a feed request")),
        }
    }

    pub(super) fn feed_status(&self) -> FeedStatus {
        let cfg = self.config();
        let now = Timestamp::now();
        let (outbox, reporter_id) = self
            .ledger()
            .records(|s| Ok::<_, crate::store::StoreError>((s.outbox_stats(now)?, s.meta_get(META_REPORTER_ID)?)))
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot read the outbox: {error}");
                Default::default()
            });
        let pull = self.feed.pull.lock().unwrap_or_else(|e| e.into_inner());
        FeedStatus {
            base_url: cfg.feed.base_url.clone(),
            key: self.feed.key_origin.read().unwrap_or_else(|e| e.into_inner()).clone(),
            ready: self.feed.api().is_ok(),
            reporter_id,
            report: cfg.feed.report,
            outbox,
            reporter: self.feed.reporter.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            pull: cfg.feed.pull,
            last_pull: pull.last.clone(),
            last_pull_error: pull.last_error.as_ref().map(|(_, m)| m.clone()),
            last_pull_error_at: pull.last_error.as_ref().map(|(t, _)| *t),
            next_pull: pull.next,
            pulls: pull.pulls,
            pull_failures: pull.failures,
        }
    }
}

/// Sends the outbox while the daemon runs.
pub(super) async fn report_loop(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    let mut reporter = Reporter::default();
    loop {
        if engine.feed.resume.swap(false, std::sync::atomic::Ordering::SeqCst) {
            reporter.resume();
        }
        let cfg = engine.config();
        let next = match engine.feed.api() {
            Ok(api) if cfg.feed.report => {
                let step = reporter.step(&engine, &api, &cfg.feed, Timestamp::now());
                let next = tokio::select! {
                    n = step => n,
                    _ = super::stopped(&mut shutdown) => return,
                };
                next.unwrap_or_else(|error| {
                    tracing::error!(%error, "reporting failed on the state database: {error}");
                    Next::At(Timestamp::now().plus(Duration::from_secs(30)))
                })
            }
            _ => Next::Idle,
        };
        *engine.feed.reporter.lock().unwrap_or_else(|e| e.into_inner()) = reporter.status();
        let wait = match next {
            Next::Idle => IDLE_RECHECK,
            Next::At(t) => Duration::from_millis(t.0.saturating_sub(Timestamp::now().0).max(0) as u64),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = engine.feed.wake.notified() => {}
            _ = super::stopped(&mut shutdown) => return,
        }
    }
}

/// Pulls the live feed at start and then every `pull_interval` (jittered by up to 10%).
pub(super) async fn pull_loop(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let cfg = engine.config();
        if let (true, Ok(api)) = (cfg.feed.pull, engine.feed.api()) {
            let one = engine.feed.pulling.lock().await;
            let started = Instant::now();
            let fetched = tokio::select! {
                f = pull::fetch(&api, &cfg.feed) => f,
                _ = super::stopped(&mut shutdown) => return,
            };
            let e = Arc::clone(&engine);
            let _ = tokio::task::spawn_blocking(move || e.apply_pull(fetched, started)).await;
            drop(one);
        }
        let wait = crate::feed::jitter(cfg.feed.pull_interval, 0.1);
        engine.feed.pull.lock().unwrap_or_else(|e| e.into_inner()).next =
            (cfg.feed.pull).then(|| Timestamp::now().plus(wait));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = engine.feed.pull_wake.notified() => {}
            _ = super::stopped(&mut shutdown) => return,
        }
    }
}
