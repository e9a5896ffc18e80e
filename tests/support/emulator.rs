//! The WAYSCloud emulator: the API contract of `shared/wayscloud-api.md` on loopback,
//! for tests and for trying banshare without an account
//! (`cargo run --example wayscloud-emulator -- --port 8099`).
//!
//! It checks keys, stores and counts reports per address, registers and verifies
//! reporters, serves a live feed (set by the test, read from a file, or built from the
//! reports it received), answers lookups, and enforces per-minute and per-day limits
//! with `429`, `Retry-After` and `X-RateLimit-*`. Faults on demand: error statuses,
//! slow answers, dropped connections, malformed JSON. Tests read what it received.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// A fault served instead of (or before) the normal answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// This status with a FastAPI-style body, and `Retry-After` when given.
    Status { code: u16, retry_after: Option<u64> },
    /// Wait this long, then answer normally.
    Slow(Duration),
    /// Close the connection without answering.
    Drop,
    /// `200` with a body that is not JSON.
    Malformed,
}

/// How the live feed is shaped on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"threats": [...], "count", "total", ...}` (the documented one).
    Threats,
    /// `{"data": [...]}`.
    Data,
    /// A bare array.
    Bare,
}

/// Where the live feed comes from.
#[derive(Debug, Clone)]
pub enum FeedSource {
    /// These items, as given (any shape, valid or not).
    Items(Vec<Value>),
    /// Built from the reports received: one item per reported address.
    Reports,
}

/// A report as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Value,
    /// The emulator's clock when it arrived (ms).
    pub at: i64,
}

/// Everything the emulator knows; tests change it and read it through [`Emulator::with`].
#[derive(Debug)]
pub struct State {
    /// Accepted keys; a key in `forbidden` gets 403.
    pub keys: Vec<String>,
    pub forbidden: Vec<String>,
    /// Limits per key (`None`: unlimited).
    pub per_minute: Option<u32>,
    pub per_day: Option<u32>,
    /// Requests counted against the limits: (key, time ms).
    hits: VecDeque<(String, i64)>,
    /// 429s served.
    pub throttled: u64,
    /// Faults for requests whose path starts with the prefix, served in order.
    faults: Vec<(String, VecDeque<Fault>)>,
    /// Accepted reports, in arrival order.
    pub reports: Vec<Received>,
    /// Reports refused with 422.
    pub rejected: u64,
    pub feed: FeedSource,
    pub shape: Shape,
    /// The most items one feed page holds (1000 per the contract).
    pub max_limit: usize,
    /// Answer the whole feed in one page, whatever `limit` says (a misbehaving server).
    pub ignore_limit: bool,
    /// Canned lookup answers by address; others are derived from reports.
    pub lookups: HashMap<String, Value>,
    pub reporters: BTreeMap<String, String>,
    /// Domains whose TXT record "exists".
    pub verified: Vec<String>,
    pub delists: Vec<Value>,
    /// Every request: method, path with query, whether it carried a key.
    pub requests: Vec<(String, String, bool)>,
    /// Every `X-API-Key` value seen (to check banshare sends the right one).
    pub keys_seen: Vec<String>,
}

impl Default for State {
    fn default() -> Self {
        State {
            keys: vec![TEST_KEY.into()],
            forbidden: Vec::new(),
            per_minute: None,
            per_day: None,
            hits: VecDeque::new(),
            throttled: 0,
            faults: Vec::new(),
            reports: Vec::new(),
            rejected: 0,
            feed: FeedSource::Items(Vec::new()),
            shape: Shape::Threats,
            max_limit: 1000,
            ignore_limit: false,
            lookups: HashMap::new(),
            reporters: BTreeMap::new(),
            verified: Vec::new(),
            delists: Vec::new(),
            requests: Vec::new(),
            keys_seen: Vec::new(),
        }
    }
}

/// The key the emulator accepts by default.
pub const TEST_KEY: &str = "wayscloud_ipintel_test_5ecret5ecret";

/// A running emulator.
pub struct Emulator {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// The clock (ms since the epoch); 0 means the real clock.
    clock: Arc<AtomicI64>,
    _server: Server,
}

/// An HTTP/1 server on its own thread and runtime (inside a network namespace when
/// given), answering with `handler`; stopped when dropped. The emulators share it.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Listens on 127.0.0.1:`port` (0: a free port) in `netns` (a `/run/netns/...` path).
    pub fn start<H, F>(port: u16, netns: Option<String>, handler: H) -> Server
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: std::future::Future<Output = Result<Reply, Dropped>> + Send + 'static,
    {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            // The namespace of this thread is where the socket is created.
            if let Some(path) = netns {
                let fd = std::fs::File::open(&path).expect("open the network namespace");
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the network namespace");
            }
            let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the emulator");
            listener.set_nonblocking(true).expect("nonblocking");
            tx.send(listener.local_addr().expect("local addr")).expect("report the address");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    let (stream, _) = tokio::select! {
                        accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                        _ = &mut stopped => return,
                    };
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        let service = service_fn(handler);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        let addr = rx.recv().expect("the server starts");
        Server { addr, stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Emulator {
    /// Starts on a free loopback port.
    pub fn start() -> Emulator {
        Emulator::start_on(0)
    }

    pub fn start_on(port: u16) -> Emulator {
        Emulator::start_with(port, None)
    }

    /// Starts inside a network namespace (`ip netns` name), for a daemon running there.
    pub fn start_in(netns: &str) -> Emulator {
        Emulator::start_with(0, Some(format!("/run/netns/{netns}")))
    }

    fn start_with(port: u16, netns: Option<String>) -> Emulator {
        let state = Arc::new(Mutex::new(State::default()));
        let clock = Arc::new(AtomicI64::new(0));
        let (s, c) = (Arc::clone(&state), Arc::clone(&clock));
        let server = Server::start(port, netns, move |req| handle(req, Arc::clone(&s), Arc::clone(&c)));
        Emulator { addr: server.addr, state, clock, _server: server }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Reads or changes the state.
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Serves `faults` to the next requests whose path starts with `prefix`.
    pub fn fault(&self, prefix: &str, faults: impl IntoIterator<Item = Fault>) {
        self.with(|s| s.faults.push((prefix.to_string(), faults.into_iter().collect())));
    }

    /// Runs the emulator on this clock (ms) instead of the real one.
    pub fn set_clock(&self, ms: i64) {
        self.clock.store(ms, Ordering::SeqCst);
    }

    pub fn reports(&self) -> Vec<Received> {
        self.with(|s| s.reports.clone())
    }

    /// Addresses of the reports received, in order.
    pub fn reported_ips(&self) -> Vec<String> {
        self.with(|s| s.reports.iter().map(|r| r.body["ip"].as_str().unwrap_or("").to_string()).collect())
    }
}

pub type Reply = Response<Full<Bytes>>;

/// An error that makes hyper drop the connection without an answer.
#[derive(Debug)]
pub struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dropped on purpose")
    }
}
impl std::error::Error for Dropped {}

async fn handle(req: Request<Incoming>, state: Arc<Mutex<State>>, clock: Arc<AtomicI64>) -> Result<Reply, Dropped> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let now = match clock.load(Ordering::SeqCst) {
        0 => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64,
        ms => ms,
    };

    let fault = {
        let mut s = state.lock().unwrap();
        let full = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
        s.requests.push((method.clone(), full, key.is_some()));
        if let Some(k) = &key {
            s.keys_seen.push(k.clone());
        }
        s.faults
            .iter_mut()
            .find(|(p, q)| path.starts_with(p.as_str()) && !q.is_empty())
            .and_then(|(_, q)| q.pop_front())
    };
    if let Some(answer) = serve_fault(fault, b"{\"threats\": [ {\"ip_address\": ", |m| json!({"detail": m})).await {
        return answer;
    }

    let mut s = state.lock().unwrap();
    // Authentication.
    let Some(key) = key else {
        return Ok(json_reply(401, json!({"detail": "Missing API key"}), &[]));
    };
    if s.forbidden.contains(&key) {
        return Ok(json_reply(403, json!({"detail": {"error": "This key may not use this endpoint"}}), &[]));
    }
    if !s.keys.contains(&key) {
        return Ok(json_reply(401, json!({"detail": "Invalid API key"}), &[]));
    }
    // Rate limits: per minute, then per day.
    while s.hits.front().is_some_and(|(_, t)| *t <= now - 86_400_000) {
        s.hits.pop_front();
    }
    let minute: Vec<i64> = s.hits.iter().filter(|(k, t)| *k == key && *t > now - 60_000).map(|(_, t)| *t).collect();
    let day: Vec<i64> = s.hits.iter().filter(|(k, _)| *k == key).map(|(_, t)| *t).collect();
    let mut limit_headers = Vec::new();
    for (limit, hits, window) in [(s.per_minute, &minute, 60_000), (s.per_day, &day, 86_400_000)] {
        let Some(limit) = limit else { continue };
        let reset_ms = hits.first().map_or(now + window, |t| t + window);
        if hits.len() as u32 >= limit {
            let retry = ((reset_ms - now) as f64 / 1000.0).ceil().max(1.0) as u64;
            let headers = vec![
                ("retry-after", retry.to_string()),
                ("x-ratelimit-limit", limit.to_string()),
                ("x-ratelimit-remaining", "0".to_string()),
                ("x-ratelimit-reset", (reset_ms / 1000).to_string()),
            ];
            s.throttled += 1;
            return Ok(json_reply(429, json!({"detail": "Rate limit exceeded"}), &headers));
        }
        limit_headers = vec![
            ("x-ratelimit-limit", limit.to_string()),
            ("x-ratelimit-remaining", (limit - hits.len() as u32 - 1).to_string()),
            ("x-ratelimit-reset", (reset_ms / 1000).to_string()),
        ];
    }
    s.hits.push_back((key.clone(), now));

    let (status, value) = route(&mut s, &method, &path, &query, &body, &key, now);
    Ok(json_reply(status, value, &limit_headers))
}

fn route(s: &mut State, method: &str, path: &str, query: &str, body: &[u8], key: &str, now: i64) -> (u16, Value) {
    let json_body = || serde_json::from_slice::<Value>(body).ok();
    match (method, path) {
        ("POST", "/v1/ip/report") => match json_body().map(|b| validate_report(&b).map(|()| b)) {
            Some(Ok(b)) => {
                s.reports.push(Received { body: b, at: now });
                (202, json!({"report_id": format!("r-{}", s.reports.len()), "status": "accepted"}))
            }
            Some(Err(detail)) => {
                s.rejected += 1;
                (422, json!({"detail": detail}))
            }
            None => (422, json!({"detail": [{"loc": ["body"], "msg": "invalid JSON", "type": "value_error"}]})),
        },
        ("GET", "/v1/ip/threats/live") => (200, live(s, query)),
        ("POST", "/v1/ip/reporters/register") => {
            let Some(b) = json_body().filter(|b| b["name"].is_string() && b["contact"].is_string()) else {
                return (
                    422,
                    json!({"detail": [{"loc": ["body", "name"], "msg": "field required", "type": "missing"}]}),
                );
            };
            let _ = b;
            let n = s.reporters.len() + 1;
            let id = s
                .reporters
                .entry(key.to_string())
                .or_insert_with(|| format!("00000000-0000-4000-8000-{n:012}"))
                .clone();
            (200, json!({"reporter_id": id, "trust_score": 0.4, "status": "active", "usage": {"reports_today": 0}}))
        }
        ("POST", "/v1/ip/reporters/verify") => {
            let b = json_body().unwrap_or(Value::Null);
            let domain = b["domain"].as_str().unwrap_or("").to_string();
            if !s.reporters.values().any(|id| Some(id.as_str()) == b["reporter_id"].as_str()) {
                return (404, json!({"detail": "unknown reporter"}));
            }
            if s.verified.contains(&domain) {
                (200, json!({"status": "verified", "verified_at": "2026-01-02T10:00:00Z"}))
            } else {
                let token = format!(
                    "{:016x}",
                    domain.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
                );
                (
                    200,
                    json!({"status": "pending", "txt_record": {"name": format!("_wayscloud-verify.{domain}"), "type": "TXT", "value": format!("wayscloud-verify={token}")}}),
                )
            }
        }
        ("POST", "/v1/ip/delist") => {
            let b = json_body().unwrap_or(Value::Null);
            s.delists.push(b);
            (202, json!({"request_id": format!("d-{}", s.delists.len()), "status": "pending"}))
        }
        ("GET", p) if p.starts_with("/v1/ip/") => {
            let rest = &p["/v1/ip/".len()..];
            let (ip, threat) = match rest.strip_suffix("/threat") {
                Some(ip) => (ip, true),
                None => (rest, false),
            };
            if ip.parse::<IpAddr>().is_err() {
                return (
                    422,
                    json!({"detail": [{"loc": ["path", "ip"], "msg": "not an IP address", "type": "value_error"}]}),
                );
            }
            (200, lookup(s, ip, threat))
        }
        _ => (404, json!({"detail": "Not Found"})),
    }
}

/// The contract's checks on a report; the FastAPI-style list of problems.
fn validate_report(b: &Value) -> Result<(), Value> {
    let problem = |loc: &str, msg: &str| json!([{"loc": ["body", loc], "msg": msg, "type": "value_error"}]);
    let ip =
        b["ip"].as_str().and_then(|i| i.parse::<IpAddr>().ok()).ok_or_else(|| problem("ip", "not an IP address"))?;
    let private = match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local() || v4.is_documentation(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] == 0x2001 && v6.segments()[1] == 0xdb8)
        }
    };
    if private {
        return Err(problem("ip", "not a public address"));
    }
    let category = b["category"].as_str().unwrap_or("");
    if category.is_empty()
        || category.len() > 64
        || !category.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
    {
        return Err(problem("category", "string does not match regex \"^[a-z0-9_]{1,64}$\""));
    }
    if b["comment"].as_str().is_some_and(|c| c.chars().count() > 1000) {
        return Err(problem("comment", "ensure this value has at most 1000 characters"));
    }
    let evidence: usize =
        b["evidence"].as_array().map_or(0, |e| e.iter().filter_map(Value::as_str).map(str::len).sum());
    if evidence > 4096 {
        return Err(problem("evidence", "evidence is larger than 4 KB"));
    }
    Ok(())
}

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

fn live(s: &State, query: &str) -> Value {
    let limit = param(query, "limit").and_then(|l| l.parse().ok()).unwrap_or(100usize).min(s.max_limit);
    let limit = if s.ignore_limit { usize::MAX } else { limit };
    let offset = param(query, "offset").and_then(|o| o.parse().ok()).unwrap_or(0usize);
    let min_score = param(query, "min_score").and_then(|m| m.parse().ok()).unwrap_or(0.0f64);
    let all: Vec<Value> = match &s.feed {
        FeedSource::Items(items) => items
            .iter()
            .filter(|i| {
                i.get("threat_score")
                    .or_else(|| i.get("score"))
                    .and_then(Value::as_f64)
                    .is_none_or(|sc| sc >= min_score)
            })
            .cloned()
            .collect(),
        FeedSource::Reports => {
            let mut counts: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
            for r in &s.reports {
                let e = counts.entry(r.body["ip"].as_str().unwrap_or("").to_string()).or_default();
                e.0 += 1;
                if let Some(c) = r.body["category"].as_str().filter(|c| !e.1.iter().any(|x| x == c)) {
                    e.1.push(c.to_string());
                }
            }
            counts
                .into_iter()
                .map(|(ip, (n, cats))| json!({"ip_address": ip, "threat_score": (60 + 10 * n).min(100), "categories": cats, "reports_count": n}))
                .filter(|i| i["threat_score"].as_f64().unwrap_or(0.0) >= min_score)
                .collect()
        }
    };
    let total = all.len();
    let page: Vec<Value> = all.into_iter().skip(offset).take(limit).collect();
    match s.shape {
        Shape::Threats => {
            json!({"threats": page, "count": page.len(), "total": total, "limit": limit, "offset": offset,
                                  "generated_at": "2026-01-02T10:00:00Z"})
        }
        Shape::Data => json!({"data": page}),
        Shape::Bare => Value::Array(page),
    }
}

fn lookup(s: &State, ip: &str, threat: bool) -> Value {
    if let Some(v) = s.lookups.get(ip) {
        return v.clone();
    }
    let reports: Vec<&Received> = s.reports.iter().filter(|r| r.body["ip"] == ip).collect();
    let score = if reports.is_empty() { 0 } else { (60 + 10 * reports.len() as u64).min(100) };
    let level = match score {
        0..=19 => "clean",
        20..=39 => "low",
        40..=59 => "medium",
        60..=79 => "high",
        _ => "critical",
    };
    let mut categories: Vec<&str> = reports.iter().filter_map(|r| r.body["category"].as_str()).collect();
    categories.dedup();
    if threat {
        json!({"ip": ip, "score": score, "level": level, "is_clean": score < 20, "categories": categories,
               "flags": {"tor": false}, "reports_count": reports.len()})
    } else {
        json!({"ip": ip, "ip_version": if ip.contains(':') { 6 } else { 4 }, "hostname": null,
               "geo": {"country": "NL"}, "network": {"asn": 64500, "isp": "Example Hosting", "org": "Example Hosting", "connection_type": "datacenter"},
               "threat": {"score": score, "level": level, "is_clean": score < 20, "categories": categories},
               "flags": {"vpn": false, "proxy": false, "tor": false, "datacenter": true, "botnet": false},
               "reports_count": reports.len()})
    }
}

/// Serves `fault`: `Some` answer (or dropped connection) instead of the normal one, `None`
/// to answer normally (after a `Slow` fault's wait). `truncated` is the malformed body;
/// `error_body` shapes an injected status's message as the API does.
pub async fn serve_fault(
    fault: Option<Fault>,
    truncated: &'static [u8],
    error_body: impl Fn(&str) -> Value,
) -> Option<Result<Reply, Dropped>> {
    match fault? {
        Fault::Drop => Some(Err(Dropped)),
        Fault::Slow(d) => {
            tokio::time::sleep(d).await;
            None
        }
        Fault::Malformed => Some(Ok(reply(200, Bytes::from_static(truncated), &[]))),
        Fault::Status { code, retry_after } => {
            let headers: Vec<(&'static str, String)> =
                retry_after.map(|s| ("retry-after", s.to_string())).into_iter().collect();
            Some(Ok(json_reply(code, error_body(&format!("injected fault {code}")), &headers)))
        }
    }
}

pub fn json_reply(status: u16, value: Value, headers: &[(&'static str, String)]) -> Reply {
    reply(status, Bytes::from(value.to_string()), headers)
}

pub fn reply(status: u16, body: Bytes, headers: &[(&'static str, String)]) -> Reply {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    for (k, v) in headers {
        r.headers_mut().insert(*k, v.parse().unwrap());
    }
    r
}

/// `n` distinct public feed items with scores 85-100 (for the large-feed tests).
pub fn many_items(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            // 11.0.0.0 upwards: public space, away from the special-purpose blocks.
            let a = 11 + (i >> 16) as u32;
            let ip = format!("{a}.{}.{}.1", (i >> 8) & 0xff, i & 0xff);
            json!({"ip_address": ip, "threat_score": 85 + (i % 16), "categories": ["ssh_bruteforce"]})
        })
        .collect()
}
