//! The check service over HTTP against the WAYSCloud emulator: every verdict band, a
//! local block, the trusted-proxy rule, fail-open and fail-closed, and one upstream
//! lookup for 100 concurrent checks of one address.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::Env;
use crate::support::emulator::{Emulator, Fault};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A daemon with the check service on a free port; `check` adds `[check]` keys.
fn check_env(emu: &Emulator, check: &str) -> (Env, String) {
    let env = Env::new("");
    let port = free_port();
    let feed = env.feed_section(&emu.url(), "pull = false\nreport = false");
    env.write_config(&format!("{feed}\n[check]\nlisten = \"127.0.0.1:{port}\"\n{check}\n"));
    (env, format!("http://127.0.0.1:{port}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("the check service answers");
    let status = r.status().as_u16();
    let verdict = r.headers().get("x-banshare-verdict").map(|v| v.to_str().unwrap().to_string());
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, verdict, body)
}

#[test]
fn every_band_and_a_local_block() {
    let emu = Emulator::start();
    emu.with(|s| {
        for (ip, score) in [
            ("45.155.205.1", 10),
            ("45.155.205.2", 45),
            ("45.155.205.3", 70),
            ("45.155.205.4", 95),
            ("45.155.205.5", 0),
        ] {
            s.lookups
                .insert(ip.into(), json!({"ip": ip, "score": score, "categories": [], "flags": {"vpn": score == 45}}));
        }
    });
    let (env, url) = check_env(&emu, "");
    let _daemon = env.start_in_process();
    env.cli(&["ban", "45.155.205.5", "--for", "1h"]).expect_code(0);
    let rt = runtime();
    for (ip, verdict, score) in [
        ("45.155.205.1", "allow", 10),
        ("45.155.205.2", "log", 45),
        ("45.155.205.3", "challenge", 70),
        ("45.155.205.4", "block", 95),
        ("45.155.205.5", "block", 0),
    ] {
        let (status, _, body) = rt.block_on(get(&format!("{url}/v1/check/{ip}"), &[]));
        assert_eq!(status, 200);
        assert_eq!(body["verdict"], verdict, "{ip}: {body}");
        assert_eq!(body["score"], score, "{ip}");
        assert_eq!(body["providers"]["wayscloud"]["score"], score);
    }
    let (_, _, blocked) = rt.block_on(get(&format!("{url}/v1/check/45.155.205.5"), &[]));
    assert_eq!(blocked["blocked"]["source"], "manual");
    let (_, _, vpn) = rt.block_on(get(&format!("{url}/v1/check/45.155.205.2"), &[]));
    assert_eq!(vpn["providers"]["wayscloud"]["flags"], json!(["vpn"]));
    assert_eq!(vpn["providers"]["wayscloud"]["cached"], true, "the second check is served from the cache");
    let (status, _, _) = rt.block_on(get(&format!("{url}/v1/check/not-an-ip"), &[]));
    assert_eq!(status, 400);
    // Private addresses never leave the host.
    let (_, _, private) = rt.block_on(get(&format!("{url}/v1/check/10.1.2.3"), &[]));
    assert_eq!(private["verdict"], "allow");
    assert!(emu.with(|s| s.requests.iter().all(|r| !r.1.contains("10.1.2.3"))));
}

#[test]
fn the_auth_endpoint_believes_only_trusted_proxies() {
    let emu = Emulator::start();
    emu.with(|s| {
        s.lookups.insert("45.155.205.9".into(), json!({"ip": "45.155.205.9", "score": 95}));
        s.lookups.insert("45.155.205.8".into(), json!({"ip": "45.155.205.8", "score": 70}));
    });
    let rt = runtime();
    // The test connects from 127.0.0.1: trusted here, so the header is the client.
    let (env, url) = check_env(&emu, "trusted_proxies = [\"127.0.0.1\"]");
    let daemon = env.start_in_process();
    let (status, verdict, _) = rt.block_on(get(&format!("{url}/v1/auth"), &[("X-Real-IP", "45.155.205.9")]));
    assert_eq!((status, verdict.as_deref()), (403, Some("block")));
    let (status, verdict, _) = rt.block_on(get(&format!("{url}/v1/auth"), &[("X-Real-IP", "45.155.205.8")]));
    assert_eq!((status, verdict.as_deref()), (401, Some("challenge")));
    daemon.stop();
    // Untrusted peer: the spoofed header is ignored, the peer (loopback) is judged.
    let (env, url) = check_env(&emu, "trusted_proxies = [\"192.0.2.1\"]");
    let _daemon = env.start_in_process();
    let (status, verdict, _) = rt.block_on(get(&format!("{url}/v1/auth"), &[("X-Real-IP", "45.155.205.9")]));
    assert_eq!((status, verdict.as_deref()), (204, Some("allow")));
}

#[test]
fn an_unknown_score_fails_open_or_closed_as_configured() {
    let emu = Emulator::start();
    let rt = runtime();
    let (env, url) = check_env(&emu, "auth_fail_mode = \"closed\"\ntrusted_proxies = [\"127.0.0.1\"]");
    let _daemon = env.start_in_process();
    emu.fault("/v1/ip/45.155.205.20/threat", [Fault::Status { code: 503, retry_after: None }]);
    let (_, _, open) = rt.block_on(get(&format!("{url}/v1/check/45.155.205.20"), &[]));
    assert_eq!(open["verdict"], "allow");
    assert!(open["score"].is_null(), "unknown, not clean: {open}");
    assert!(open["providers"]["wayscloud"]["error"].as_str().unwrap().contains("503"));
    assert!(open["reasons"].to_string().contains("failing open"));
    // The error is cached briefly: the auth endpoint (closed) sees the same unknown.
    let (status, verdict, _) = rt.block_on(get(&format!("{url}/v1/auth"), &[("X-Real-IP", "45.155.205.20")]));
    assert_eq!((status, verdict.as_deref()), (403, Some("block")));
}

#[test]
fn concurrent_checks_of_one_address_share_one_lookup() {
    let emu = Emulator::start();
    emu.with(|s| {
        s.lookups.insert("45.155.205.30".into(), json!({"ip": "45.155.205.30", "score": 50}));
    });
    emu.fault("/v1/ip/45.155.205.30/threat", [Fault::Slow(Duration::from_millis(300))]);
    let (env, url) = check_env(&emu, "");
    let _daemon = env.start_in_process();
    let rt = runtime();
    let verdicts: Vec<Value> = rt.block_on(async {
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let u = format!("{url}/v1/check/45.155.205.30");
                tokio::spawn(async move { get(&u, &[]).await.2 })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    assert!(verdicts.iter().all(|v| v["verdict"] == "log"));
    let upstream = emu.with(|s| s.requests.iter().filter(|r| r.1 == "/v1/ip/45.155.205.30/threat").count());
    assert_eq!(upstream, 1, "100 concurrent checks, one upstream call");
}

#[test]
fn metrics_in_the_prometheus_text_format() {
    let emu = Emulator::start();
    emu.with(|s| {
        s.lookups.insert("45.155.205.40".into(), json!({"ip": "45.155.205.40", "score": 95}));
        s.feed = crate::support::emulator::FeedSource::Items(vec![
            json!({"ip_address": "45.155.205.41", "threat_score": 99}),
        ]);
    });
    let (env, url) = check_env(&emu, "");
    let _daemon = env.start_in_process();
    env.cli(&["sync"]).expect_code(0);
    env.cli(&["ban", "45.155.205.42", "--for", "1h"]).expect_code(0);
    let rt = runtime();
    rt.block_on(get(&format!("{url}/v1/check/45.155.205.40"), &[]));
    rt.block_on(get(&format!("{url}/v1/check/45.155.205.40"), &[]));
    let text = rt.block_on(async {
        let r = reqwest::get(format!("{url}/metrics")).await.unwrap();
        assert_eq!(r.headers()["content-type"], "text/plain; version=0.0.4");
        r.text().await.unwrap()
    });
    for want in [
        "# TYPE banshare_decisions_active gauge",
        "banshare_decisions_active{source=\"feed\"} 1",
        "banshare_decisions_active{source=\"manual\"} 1",
        "banshare_check_requests_total{verdict=\"block\"} 2",
        "banshare_check_duration_seconds_count 2",
        "banshare_check_duration_seconds_bucket{le=\"+Inf\"} 2",
        "banshare_feed_pulls_total{outcome=\"applied\"} 1",
        "banshare_feed_entries{kind=\"added\"} 1",
        "banshare_reports{state=\"queued\"} 0",
        "banshare_provider_errors_total{provider=\"wayscloud\"} 0",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    // Every sample line is `name{labels} value` or `name value`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a sample: {line}");
    }
}
