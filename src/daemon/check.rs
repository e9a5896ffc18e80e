//! The check service's HTTP side: `GET /v1/check/{ip}` (a graduated verdict as JSON) and
//! `GET /v1/auth` (for nginx `auth_request`: 204, 401 or 403), on loopback or a Unix
//! socket. It answers from the host's own decisions and the WAYSCloud threat lookup,
//! cached in memory; concurrent requests for one address share one upstream lookup, and
//! a failed lookup is "unknown", never clean: the endpoint's fail mode decides.
//!
//! `GET /metrics` serves the Prometheus text ([`crate::check::metrics`]).
//!
//! Not built yet (issue 8 stays open): the other providers' clients (their readers are in
//! [`crate::check::providers`]) and the store as a warm start.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{OnceCell, watch};

use super::engine::Engine;
use crate::check::metrics::{CheckCounters, render};
use crate::check::providers::{Provider, Reputation};
use crate::check::{Verdict, combine, level, verdict};
use crate::config::Listen;
use crate::decision::{is_public, parse_target};
use crate::feed::api::Call;

/// A provider's answer: its reputation, or why there is none.
type Looked = Result<Reputation, String>;

/// Errors are kept this long at most (a tenth of the cache period otherwise).
const ERROR_CACHE_MAX: Duration = Duration::from_secs(30);

pub struct CheckService {
    engine: Arc<Engine>,
    /// Answers by address, with when they go stale.
    cache: Mutex<HashMap<IpAddr, (Looked, Instant)>>,
    /// Lookups in progress: a second request for the address waits on the same cell.
    inflight: Mutex<HashMap<IpAddr, Arc<OnceCell<Looked>>>>,
    /// Requests by verdict, latency, provider errors (for `/metrics`).
    counters: CheckCounters,
}

impl CheckService {
    pub fn new(engine: Arc<Engine>) -> CheckService {
        CheckService {
            engine,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            counters: CheckCounters::default(),
        }
    }

    /// The WAYSCloud answer for `ip` and whether it came from the cache.
    async fn wayscloud(&self, ip: IpAddr) -> (Looked, bool) {
        let now = Instant::now();
        if let Some((looked, until)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&ip)
            && *until > now
        {
            return (looked.clone(), true);
        }
        let cell = Arc::clone(self.inflight.lock().unwrap_or_else(|e| e.into_inner()).entry(ip).or_default());
        let looked = cell
            .get_or_init(|| async {
                let looked = self.fetch(ip).await;
                if looked.is_err() {
                    self.counters.provider_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                looked
            })
            .await
            .clone();
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if inflight.get(&ip).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&ip);
            let cfg = self.engine.config();
            let keep = if looked.is_ok() { cfg.check.cache } else { (cfg.check.cache / 10).min(ERROR_CACHE_MAX) };
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(ip, (looked.clone(), Instant::now() + keep));
        }
        (looked, false)
    }

    async fn fetch(&self, ip: IpAddr) -> Looked {
        let api = self.engine.feed.api()?;
        let timeout = self.engine.config().check.timeout;
        let call = Call::get(format!("/v1/ip/{ip}/threat"), Vec::new());
        let response = tokio::time::timeout(timeout, api.success(&call))
            .await
            .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))??;
        Provider::Wayscloud.read(&response.body).ok_or_else(|| "unreadable answer".into())
    }

    /// The verdict on `ip` with everything behind it. `fail_open`: what an unknown
    /// score becomes.
    pub async fn check(&self, ip: IpAddr, fail_open: bool) -> (Verdict, Value) {
        let engine = Arc::clone(&self.engine);
        let text = ip.to_string();
        let local = tokio::task::spawn_blocking(move || engine.query_data(&text)).await.ok().and_then(Result::ok);
        let blocked = local
            .as_ref()
            .and_then(|q| q.active.first())
            .map(|d| json!({"source": d.source, "until": d.expires, "reason": d.reason}));
        let mut reasons = Vec::new();
        let mut providers = serde_json::Map::new();
        let mut answers = BTreeMap::new();
        if let Some(b) = &blocked {
            reasons.push(format!("blocked on this host by {}", b["source"].as_str().unwrap_or("?")));
        }
        if is_public(&ip.into()) {
            let (looked, cached) = self.wayscloud(ip).await;
            match looked {
                Ok(r) => {
                    providers.insert("wayscloud".into(), json!({"score": r.score, "flags": r.flags, "cached": cached}));
                    answers.insert(Provider::Wayscloud, r);
                }
                Err(e) => {
                    providers
                        .insert("wayscloud".into(), json!({"score": null, "flags": [], "cached": cached, "error": e}));
                }
            }
        } else {
            reasons.push("not a public address: never looked up".into());
            answers.insert(Provider::Wayscloud, Reputation::default());
        }
        let score = combine(&answers, None);
        let bands = self.engine.config().check.bands;
        let v = match verdict(score, blocked.is_some(), &bands) {
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
        if let Some(s) = score.filter(|_| is_public(&ip.into())) {
            reasons.push(format!("score {s} ({})", level(s)));
        }
        let body = json!({
            "ip": ip, "verdict": v, "score": score, "level": score.map(level),
            "reasons": reasons, "blocked": blocked, "providers": providers,
        });
        (v, body)
    }
}

/// Serves the check service on `listen` until shutdown.
pub(super) async fn serve(service: Arc<CheckService>, listen: Listen, mut shutdown: watch::Receiver<bool>) {
    enum Listener {
        Tcp(tokio::net::TcpListener),
        Unix(tokio::net::UnixListener),
    }
    let listener = match &listen {
        Listen::Tcp(addr) => tokio::net::TcpListener::bind(addr).await.map(Listener::Tcp),
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(path);
            tokio::net::UnixListener::bind(path).map(Listener::Unix)
        }
    };
    let listener = match listener {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, ?listen, "the check service cannot listen; it is off");
            return;
        }
    };
    tracing::info!(?listen, "check service listening");
    loop {
        let (io, peer): (Box<dyn IoStream>, Option<IpAddr>) = tokio::select! {
            accepted = async {
                match &listener {
                    Listener::Tcp(l) => l.accept().await.map(|(s, a)| (Box::new(s) as Box<dyn IoStream>, Some(a.ip()))),
                    Listener::Unix(l) => l.accept().await.map(|(s, _)| (Box::new(s) as Box<dyn IoStream>, None)),
                }
            } => match accepted { Ok(a) => a, Err(_) => continue },
            _ = super::stopped(&mut shutdown) => return,
        };
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let service = Arc::clone(&service);
                async move { Ok::<_, Infallible>(route(&service, req, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc).await;
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
    if let Some(ip) = path.strip_prefix("/v1/check/") {
        return match parse_target(ip).ok().filter(|n| n.prefix_len() == n.max_prefix_len()) {
            Some(net) => {
                let fail_open = service.engine.config().check.fail_open;
                let (v, body) = service.check(net.addr(), fail_open).await;
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
        let (v, _) = service.check(ip, cfg.check.auth_fail_open).await;
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
