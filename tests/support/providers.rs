//! Emulators of the three other reputation providers the check service asks, on
//! loopback, each with its documented request (path, where the key goes) and answer
//! shape: ipgeolocation.io (`GET /v3/security?apiKey=..&ip=..`), API Armor
//! (`GET /v1/ip-reputation-check?ip=..` with `Authorization: Bearer ..`) and IPASIS
//! (`GET /json/{ip}?key=..`). A wrong or missing key gets the provider's 401; faults
//! (error statuses, 429 with `Retry-After`, slow answers, dropped connections, malformed
//! JSON) are served on demand. Tests set answers per address and read what arrived.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::Request;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::emulator::{Dropped, Fault, Reply, Server, json_reply, serve_fault};

/// Which provider an emulator plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ipgeolocation,
    Apiarmor,
    Ipasis,
}

/// The key every provider emulator accepts.
pub const PROVIDER_KEY: &str = "provider-test-key-0123456789";

#[derive(Debug, Default)]
pub struct ProviderState {
    /// Answers by address, in the provider's shape; other addresses get a clean answer.
    pub answers: HashMap<String, Value>,
    /// Served in order before normal answers.
    pub faults: VecDeque<Fault>,
    /// Every request: path with query, and the key it carried (`None`: none or wrong place).
    pub requests: Vec<(String, Option<String>)>,
}

pub struct ProviderEmulator {
    pub kind: Kind,
    pub addr: SocketAddr,
    state: Arc<Mutex<ProviderState>>,
    _server: Server,
}

impl ProviderEmulator {
    pub fn start(kind: Kind) -> ProviderEmulator {
        let state = Arc::new(Mutex::new(ProviderState::default()));
        let s = Arc::clone(&state);
        let server = Server::start(0, None, move |req| handle(kind, req, Arc::clone(&s)));
        ProviderEmulator { kind, addr: server.addr, state, _server: server }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut ProviderState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Requests that asked about `ip`.
    pub fn asked(&self, ip: &str) -> usize {
        self.with(|s| s.requests.iter().filter(|(path, _)| asked_ip(self.kind, path) == Some(ip.to_string())).count())
    }
}

/// The address a request asks about, read the way the provider reads it.
fn asked_ip(kind: Kind, path_and_query: &str) -> Option<String> {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    match kind {
        Kind::Ipasis => path.strip_prefix("/json/").map(str::to_string),
        Kind::Ipgeolocation | Kind::Apiarmor => param(query, "ip"),
    }
}

fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v.replace("%3A", ":"))
}

async fn handle(kind: Kind, req: Request<Incoming>, state: Arc<Mutex<ProviderState>>) -> Result<Reply, Dropped> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let full = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
    let key = match kind {
        Kind::Ipgeolocation => param(&query, "apiKey"),
        Kind::Ipasis => param(&query, "key"),
        Kind::Apiarmor => req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string),
    };
    let fault = {
        let mut s = state.lock().unwrap();
        s.requests.push((full.clone(), key.clone()));
        s.faults.pop_front()
    };
    if let Some(answer) = serve_fault(fault, b"{\"security\": {\"threat_sc", |m| error_body(kind, m)).await {
        return answer;
    }
    let expected_path = match kind {
        Kind::Ipgeolocation => path == "/v3/security",
        Kind::Apiarmor => path == "/v1/ip-reputation-check",
        Kind::Ipasis => path.starts_with("/json/"),
    };
    if !expected_path {
        return Ok(json_reply(404, error_body(kind, "not found"), &[]));
    }
    if key.as_deref() != Some(PROVIDER_KEY) {
        return Ok(json_reply(401, error_body(kind, "invalid or missing API key"), &[]));
    }
    let Some(ip) = asked_ip(kind, &full).filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()) else {
        return Ok(json_reply(400, error_body(kind, "invalid IP address"), &[]));
    };
    let answer = state.lock().unwrap().answers.get(&ip).cloned().unwrap_or_else(|| clean(kind, &ip));
    Ok(json_reply(200, answer, &[]))
}

/// Each provider's error shape.
fn error_body(kind: Kind, message: &str) -> Value {
    match kind {
        Kind::Ipgeolocation => json!({"message": message}),
        Kind::Apiarmor => json!({"error": {"message": message}}),
        Kind::Ipasis => json!({"error": message}),
    }
}

/// A clean answer for `ip`, in the provider's documented shape.
pub fn clean(kind: Kind, ip: &str) -> Value {
    match kind {
        Kind::Ipgeolocation => ipgeolocation(ip, 0, &[]),
        Kind::Apiarmor => apiarmor(ip, "ok", false, "residential"),
        Kind::Ipasis => ipasis(ip, &[]),
    }
}

/// ipgeolocation.io's `/v3/security` answer: a threat score and the `is_*` flags given.
pub fn ipgeolocation(ip: &str, threat_score: u8, set: &[&str]) -> Value {
    let flag = |k: &str| set.contains(&k);
    json!({
        "ip": ip,
        "security": {
            "threat_score": threat_score,
            "is_tor": flag("is_tor"),
            "is_proxy": flag("is_proxy"),
            "proxy_provider_names": if flag("is_proxy") { json!(["Zyte Proxy"]) } else { json!([]) },
            "proxy_confidence_score": if flag("is_proxy") { 80 } else { 0 },
            "is_residential_proxy": flag("is_residential_proxy"),
            "is_vpn": flag("is_vpn"),
            "vpn_provider_names": if flag("is_vpn") { json!(["Nord VPN"]) } else { json!([]) },
            "vpn_confidence_score": if flag("is_vpn") { 80 } else { 0 },
            "is_relay": false,
            "is_anonymous": flag("is_vpn") || flag("is_proxy") || flag("is_tor"),
            "is_known_attacker": flag("is_known_attacker"),
            "is_bot": false,
            "is_spam": false,
            "is_cloud_provider": flag("is_cloud_provider"),
            "cloud_provider_name": if flag("is_cloud_provider") { "Packethub S.A." } else { "" },
        }
    })
}

/// API Armor's `/v1/ip-reputation-check` answer.
pub fn apiarmor(ip: &str, reputation: &str, risky: bool, kind: &str) -> Value {
    json!({
        "ip": ip,
        "reputation": {
            "risky": risky,
            "reputation": reputation,
            "reports": {"total": if risky { 42 } else { 0 }, "last_30_days": if risky { 7 } else { 0 }},
        },
        "kind": kind,
    })
}

/// IPASIS's `/json/{ip}` answer with the `is_*` flags given.
pub fn ipasis(ip: &str, set: &[&str]) -> Value {
    let flag = |k: &str| set.contains(&k);
    json!({
        "ip": ip,
        "is_proxy": flag("is_proxy"),
        "is_vpn": flag("is_vpn"),
        "is_tor": flag("is_tor"),
        "is_abuse": flag("is_abuse"),
        "is_datacenter": flag("is_datacenter"),
        "is_mobile": false,
        "asn": {"asn": 64500, "org": "Example Networks"},
        "location": {"country": "NL"},
    })
}
