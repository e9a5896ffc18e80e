//! The check service's HTTP side: `GET /v1/check/{ip}` (a graduated verdict as JSON) and
//! `GET /v1/auth` (for nginx `auth_request`: 204, 401 or 403), on loopback or a Unix
//! socket, and `GET /metrics` (the Prometheus text, [`crate::check::metrics`]).
//!
//! A verdict comes from the host's own decisions and the configured reputation
//! providers ([`crate::check::client`]), asked in parallel. Answers are cached in memory
//! per provider and address for the provider's `cache` period, written behind to the
//! store and read back at start (a warm start: a restart does not ask again). Concurrent
//! requests for one address share one upstream lookup per provider. A failed lookup is
//! "unknown", never clean: it is cached briefly, counted, and when no provider answered
//! the endpoint's fail mode decides. A 429 pauses that provider for its `Retry-After`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{OnceCell, watch};

use super::engine::Engine;
use crate::check::client::{Failure, ProviderClient};
use crate::check::metrics::{CheckCounters, render};
use crate::check::providers::{self, Provider, Reputation};
use crate::check::{Verdict, combine, level, verdict};
use crate::clock::Timestamp;
use crate::config::{Config, Listen};
use crate::decision::{is_public, parse_target, show_target};
use crate::store::StoredReputation;

/// A provider's answer: its reputation, or why there is none.
type Looked = Result<Reputation, String>;
/// What the cache and the in-flight lookups are keyed by.
type Key = (Provider, IpAddr);

/// Errors are kept this long at most (a tenth of the cache period otherwise).
const ERROR_CACHE_MAX: Duration = Duration::from_secs(30);
/// A 429 without `Retry-After` pauses the provider this long; a longer one is capped.
const PAUSE_DEFAULT: Duration = Duration::from_secs(60);
const PAUSE_MAX: Duration = Duration::from_secs(3600);
/// How often new answers are written to the store (and stale ones dropped from memory).
const PERSIST_EVERY: Duration = Duration::from_secs(2);
/// The most answers kept in memory; past it, new answers are used but not cached until
/// stale ones make room. Bounds memory on a site seeing millions of addresses.
const MAX_CACHED: usize = 250_000;
/// A connection that has not sent its request headers within this is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
use crate::check::MAX_CONNECTIONS;

/// The providers of one config, built when the config changes.
struct Clients {
    config: Arc<Config>,
    list: Arc<Vec<ProviderClient>>,
}

pub struct CheckService {
    engine: Arc<Engine>,
    clients: RwLock<Clients>,
    /// Answers by provider and address, with when they go stale.
    cache: Mutex<HashMap<Key, (Looked, Instant)>>,
    /// Lookups in progress: a second request for the address waits on the same cell.
    inflight: Mutex<HashMap<Key, Arc<OnceCell<Looked>>>>,
    /// Providers that answered 429, and until when they are not asked.
    paused: Mutex<HashMap<Provider, Instant>>,
    /// Answers not yet written to the store.
    unsaved: Mutex<Vec<StoredReputation>>,
    /// Requests by verdict, latency, provider lookups and errors (for `/metrics`).
    counters: CheckCounters,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The clients for `config`'s providers; an unusable key is logged once here.
fn build_clients(config: Arc<Config>) -> Clients {
    let list: Vec<ProviderClient> =
        config.check.providers.iter().map(|p| ProviderClient::new(p, &config.feed.api_key_file)).collect();
    for c in &list {
        if let Some(reason) = c.unusable() {
            tracing::warn!(provider = c.provider().name(), %reason, "check provider cannot be asked; its answers are \"unknown\"");
        }
    }
    Clients { config, list: Arc::new(list) }
}

impl CheckService {
    /// The service, its cache warmed with the store's answers still fresh.
    pub fn new(engine: Arc<Engine>) -> CheckService {
        let config = engine.config();
        let service = CheckService {
            clients: RwLock::new(build_clients(Arc::clone(&config))),
            engine,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            paused: Mutex::new(HashMap::new()),
            unsaved: Mutex::new(Vec::new()),
            counters: CheckCounters::default(),
        };
        service.warm(&config, Timestamp::now());
        service
    }

    /// Loads the answers the store holds that are still within their provider's period.
    fn warm(&self, config: &Config, now: Timestamp) {
        let ttl: HashMap<Provider, Duration> = config.check.providers.iter().map(|p| (p.provider, p.cache)).collect();
        let longest = ttl.values().max().copied().unwrap_or_default();
        let rows = match self.engine.ledger().read(|v| v.store.load_reputations(now.minus(longest))) {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "cannot read stored provider answers: {error}; the check cache starts cold");
                return;
            }
        };
        let mut cache = lock(&self.cache);
        let started = Instant::now();
        for (provider, ip, reputation, fetched) in rows.iter().filter_map(providers::from_stored) {
            let Some(ttl) = ttl.get(&provider) else { continue };
            let left = fetched.0 + ttl.as_millis() as i64 - now.0;
            if left > 0 {
                let until = started + Duration::from_millis(left as u64);
                cache.insert((provider, ip), (Ok(reputation), until));
            }
        }
        tracing::info!(answers = cache.len(), "check cache warmed from the store: {} answers", cache.len());
    }

    /// The providers of `config`, the config in force (rebuilt after a reload).
    fn clients(&self, config: &Arc<Config>) -> Arc<Vec<ProviderClient>> {
        {
            let c = self.clients.read().unwrap_or_else(|e| e.into_inner());
            if Arc::ptr_eq(&c.config, config) {
                return Arc::clone(&c.list);
            }
        }
        let fresh = build_clients(Arc::clone(config));
        let list = Arc::clone(&fresh.list);
        *self.clients.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        list
    }

    /// One provider's answer for `ip` and whether it came from the cache.
    async fn answer(&self, client: &ProviderClient, ip: IpAddr) -> (Looked, bool) {
        let provider = client.provider();
        let now = Instant::now();
        if let Some((looked, until)) = lock(&self.cache).get(&(provider, ip))
            && *until > now
        {
            return (looked.clone(), true);
        }
        if let Some(until) = lock(&self.paused).get(&provider).filter(|u| **u > now) {
            let left = until.duration_since(now).as_secs() + 1;
            return (Err(format!("rate limited: not asked for another {left}s")), false);
        }
        let cell = Arc::clone(lock(&self.inflight).entry((provider, ip)).or_default());
        let looked = cell.get_or_init(|| self.fetch(client, ip)).await.clone();
        let mut inflight = lock(&self.inflight);
        if inflight.get(&(provider, ip)).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&(provider, ip));
            let ttl = client.config.cache;
            let keep = if looked.is_ok() { ttl } else { (ttl / 10).min(ERROR_CACHE_MAX) };
            let mut cache = lock(&self.cache);
            if cache.len() < MAX_CACHED || cache.contains_key(&(provider, ip)) {
                cache.insert((provider, ip), (looked.clone(), Instant::now() + keep));
            }
        }
        (looked, false)
    }

    /// Asks the provider (the first of concurrent requests does); counts, pauses on 429,
    /// queues a success for the store.
    async fn fetch(&self, client: &ProviderClient, ip: IpAddr) -> Looked {
        let provider = client.provider();
        self.counters.lookup(provider);
        match client.lookup(ip).await {
            Ok(reputation) => {
                lock(&self.unsaved).push(providers::to_stored(provider, ip, &reputation, Timestamp::now()));
                Ok(reputation)
            }
            Err(failure) => {
                self.counters.provider_error(provider);
                if let Failure::RateLimited { retry_after } = &failure {
                    let pause = retry_after.unwrap_or(PAUSE_DEFAULT).min(PAUSE_MAX);
                    tracing::warn!(
                        provider = provider.name(),
                        seconds = pause.as_secs(),
                        "check provider {} rate limited; pausing it for {} s",
                        provider.name(),
                        pause.as_secs()
                    );
                    lock(&self.paused).insert(provider, Instant::now() + pause);
                }
                Err(failure.describe())
            }
        }
    }

    /// Drops stale answers from memory; writes the answers received since the last call
    /// to the store, and forgets stored answers older than the longest cache period.
    fn persist(&self) {
        let now = Instant::now();
        lock(&self.cache).retain(|_, (_, until)| *until > now);
        let rows = std::mem::take(&mut *lock(&self.unsaved));
        if rows.is_empty() {
            return;
        }
        let longest = self.engine.config().check.providers.iter().map(|p| p.cache).max().unwrap_or_default();
        let forget_before = Timestamp::now().minus(longest);
        if let Err(error) = self.engine.ledger().records(|s| s.save_reputations(&rows, forget_before)) {
            tracing::warn!(%error, count = rows.len(), "cannot store provider answers (the in-memory cache keeps them): {error}");
        }
    }

    /// The verdict on `ip` with everything behind it. `fail_open`: what an unknown
    /// score becomes.
    pub async fn check(&self, ip: IpAddr, config: &Arc<Config>, fail_open: bool) -> (Verdict, Value) {
        let blocked = self
            .engine
            .in_force(ip, Timestamp::now())
            .map(|b| json!({"source": b.source, "until": b.until, "target": show_target(&b.target)}));
        let mut reasons = Vec::new();
        let mut providers = serde_json::Map::new();
        if let Some(b) = &blocked {
            reasons.push(format!("blocked on this host by {}", b["source"].as_str().unwrap_or("?")));
        }
        let clients = self.clients(config);
        let score = if !is_public(&ip.into()) {
            reasons.push("not a public address: never looked up".into());
            Some(0)
        } else if clients.is_empty() {
            reasons.push("no providers configured: this host's own decisions only".into());
            Some(0)
        } else {
            let looked = futures_util::future::join_all(clients.iter().map(|c| self.answer(c, ip))).await;
            let mut answers = BTreeMap::new();
            for (client, (looked, cached)) in clients.iter().zip(looked) {
                let name = client.provider().name();
                match looked {
                    Ok(r) => {
                        providers.insert(
                            name.into(),
                            json!({"score": r.score, "flags": r.flags, "notes": r.notes, "cached": cached}),
                        );
                        answers.insert(client.provider(), r);
                    }
                    Err(e) => {
                        providers
                            .insert(name.into(), json!({"score": null, "flags": [], "cached": cached, "error": e}));
                    }
                }
            }
            let weights: Option<BTreeMap<Provider, f64>> =
                config.check.weighted.then(|| clients.iter().map(|c| (c.provider(), c.config.weight)).collect());
            let score = combine(&answers, weights.as_ref());
            if let Some(s) = score {
                reasons.push(format!(
                    "score {s} ({}) from {}",
                    level(s),
                    answers.keys().map(|p| p.name()).collect::<Vec<_>>().join(", ")
                ));
            }
            score
        };
        let v = match verdict(score, blocked.is_some(), &config.check.bands) {
            Some(v) => v,
            None if fail_open => {
                reasons.push("no provider answered: failing open".into());
                Verdict::Allow
            }
            None => {
                reasons.push("no provider answered: failing closed".into());
                Verdict::Block
            }
        };
        let body = json!({
            "ip": ip, "verdict": v, "score": score, "level": score.map(level),
            "reasons": reasons, "blocked": blocked, "providers": providers,
        });
        (v, body)
    }
}

/// Writes new provider answers to the store every few seconds, and once more at shutdown.
async fn persist_loop(service: Arc<CheckService>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(PERSIST_EVERY) => false,
            _ = super::stopped(&mut shutdown) => true,
        };
        let s = Arc::clone(&service);
        let _ = tokio::task::spawn_blocking(move || s.persist()).await;
        if stop {
            return;
        }
    }
}

/// A bound listening socket of the check service.
pub(super) enum Bound {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Binds `listen` now, so the service answers as soon as the daemon says it is ready.
/// A Unix socket is made connectable by every local user (mode 0666), as a loopback
/// port is: the reverse proxy's user must reach it.
pub(super) fn bind(listen: &Listen) -> std::io::Result<Bound> {
    match listen {
        Listen::Tcp(addr) => {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(Bound::Tcp(l))
        }
        Listen::Unix(path) => {
            use std::os::unix::fs::{FileTypeExt, PermissionsExt};
            // A socket left by an earlier run is replaced; anything else at the path is kept.
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
                Ok(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        format!("{} exists and is not a socket; refusing to replace it", path.display()),
                    ));
                }
                Err(_) => {}
            }
            let l = std::os::unix::net::UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
            l.set_nonblocking(true)?;
            Ok(Bound::Unix(l))
        }
    }
}

/// Runs the check service on its own thread with a one-thread runtime: answers never
/// wait behind the daemon's other work (a feed pull, a ban storm), and one thread serves
/// tens of thousands of cached checks a second. The thread ends after `shutdown`, once
/// the last provider answers are in the store.
pub(super) fn spawn(
    engine: Arc<Engine>,
    bound: Bound,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("banshare-check".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(error) => {
                tracing::error!(%error, "the check service cannot start its runtime: {error}; it is off");
                return;
            }
        };
        rt.block_on(async move {
            let service = Arc::new(CheckService::new(engine));
            tokio::join!(persist_loop(Arc::clone(&service), shutdown.clone()), serve(service, bound, shutdown));
        });
    })
}

/// Serves the check service until shutdown.
async fn serve(service: Arc<CheckService>, bound: Bound, mut shutdown: watch::Receiver<bool>) {
    enum Listener {
        Tcp(tokio::net::TcpListener),
        Unix(tokio::net::UnixListener),
    }
    let listener = match bound {
        Bound::Tcp(l) => tokio::net::TcpListener::from_std(l).map(Listener::Tcp),
        Bound::Unix(l) => tokio::net::UnixListener::from_std(l).map(Listener::Unix),
    };
    let listener = match listener {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, "the check service cannot listen: {error}; it is off");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (io, peer): (Box<dyn IoStream>, Option<IpAddr>) = tokio::select! {
            accepted = async {
                match &listener {
                    Listener::Tcp(l) => l.accept().await.map(|(s, a)| (Box::new(s) as Box<dyn IoStream>, Some(a.ip()))),
                    Listener::Unix(l) => l.accept().await.map(|(s, _)| (Box::new(s) as Box<dyn IoStream>, None)),
                }
            } => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of descriptors (EMFILE) and the like: wait instead of spinning.
                    tracing::debug!(%error, "check service accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = super::stopped(&mut shutdown) => {
                // Leave no socket file behind (as the control socket does).
                if let Listener::Unix(l) = &listener
                    && let Some(path) = l.local_addr().ok().as_ref().and_then(|a| a.as_pathname())
                {
                    let _ = std::fs::remove_file(path);
                }
                return;
            }
        };
        // Past the cap the connection is closed at once: the service stays up for the
        // others, and the daemon keeps descriptors for the firewall tools.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("check service at its connection cap; a connection was closed");
            drop(io);
            continue;
        };
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let service = Arc::clone(&service);
                async move { Ok::<_, Infallible>(route(&service, req, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(io), svc)
                .await;
        });
    }
}

trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> IoStream for T {}

async fn route(service: &CheckService, req: Request<Incoming>, peer: Option<IpAddr>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let path = req.uri().path().to_string();
    if path == "/metrics" {
        let engine = Arc::clone(&service.engine);
        let status = tokio::task::spawn_blocking(move || engine.status_data()).await.ok().and_then(Result::ok);
        return match status {
            Some(status) => {
                let mut r = Response::new(Full::new(Bytes::from(render(&status, &service.counters))));
                r.headers_mut().insert("content-type", "text/plain; version=0.0.4".parse().expect("valid header"));
                r
            }
            None => reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "status unavailable"})),
        };
    }
    if req.method() != hyper::Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "only GET"}));
    }
    if let Some(raw) = path.strip_prefix("/v1/check/") {
        // Clients percent-encode the colons of IPv6 addresses (`%3a%3a1`).
        let ip = percent_decoded(raw).unwrap_or_else(|| raw.to_string());
        return match parse_target(&ip).ok().filter(|n| n.prefix_len() == n.max_prefix_len()) {
            Some(net) => {
                let config = service.engine.config();
                let (v, body) = service.check(net.addr(), &config, config.check.fail_open).await;
                service.counters.record(v, started.elapsed().as_secs_f64());
                reply(StatusCode::OK, body)
            }
            None => reply(StatusCode::BAD_REQUEST, json!({"error": format!("`{ip}` is not an IP address")})),
        };
    }
    if path == "/v1/auth" {
        let cfg = service.engine.config();
        let client = client_address(req.headers(), peer, &cfg.check.trusted_proxies, &cfg.check.client_header);
        let Some(ip) = client else {
            return reply(StatusCode::FORBIDDEN, json!({"error": "no client address"}));
        };
        let (v, _) = service.check(ip, &cfg, cfg.check.auth_fail_open).await;
        service.counters.record(v, started.elapsed().as_secs_f64());
        let status = match v {
            Verdict::Allow | Verdict::Log => StatusCode::NO_CONTENT,
            Verdict::Challenge => StatusCode::UNAUTHORIZED,
            Verdict::Block => StatusCode::FORBIDDEN,
        };
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = status;
        let name = serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        r.headers_mut().insert("x-banshare-verdict", name.parse().expect("a verdict is a header value"));
        return r;
    }
    reply(StatusCode::NOT_FOUND, json!({"error": "not found"}))
}

/// The address to judge: the configured header's (its first entry) when the peer is a
/// trusted proxy, the peer's own otherwise. A spoofed header from anyone else is ignored.
pub fn client_address(
    headers: &hyper::HeaderMap,
    peer: Option<IpAddr>,
    trusted: &[ipnet::IpNet],
    header: &str,
) -> Option<IpAddr> {
    let trusted_peer = match peer {
        Some(p) => trusted.iter().any(|n| n.contains(&p)),
        None => true, // a Unix socket: only local processes (the proxy) can connect
    };
    if trusted_peer
        && let Some(value) = headers.get(header).and_then(|v| v.to_str().ok())
        && let Some(ip) = value.split(',').next().and_then(|s| parse_target(s.trim()).ok()).map(|n| n.addr())
    {
        return Some(ip);
    }
    peer
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", "application/json".parse().expect("valid header"));
    r
}
/// `text` with `%XX` escapes decoded; `None` when an escape is malformed or the result is
/// not UTF-8 (an address never is).
fn percent_decoded(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
