//! The check service over HTTP against the WAYSCloud emulator and the emulators of the
//! three other providers: every verdict band, a local block, the trusted-proxy rule,
//! fail-open and fail-closed, each provider's request and answer, errors, 429s and slow
//! answers as "unknown", one upstream lookup per provider for 100 concurrent checks of
//! one address, and the cache's warm start from the store.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::Env;
use crate::support::emulator::{Emulator, Fault};
use crate::support::providers::{self, Kind, PROVIDER_KEY, ProviderEmulator};

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

/// `n` GETs of `url` sent at once; their JSON bodies.
fn all_at_once(rt: &tokio::runtime::Runtime, url: &str, n: usize) -> Vec<Value> {
    rt.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let u = url.to_string();
                tokio::spawn(async move { get(&u, &[]).await.2 })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    })
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
    // Clients percent-encode IPv6 colons; a bad escape is still a 400.
    env.cli(&["ban", "2a01:4f8::7", "--for", "1h"]).expect_code(0);
    let (status, _, encoded) = rt.block_on(get(&format!("{url}/v1/check/2a01%3a4f8%3A%3a7"), &[]));
    assert_eq!(status, 200, "{encoded}");
    assert_eq!(encoded["blocked"]["source"], "manual", "{encoded}");
    let (status, _, _) = rt.block_on(get(&format!("{url}/v1/check/2a01%3g4f8::7"), &[]));
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
    let verdicts = all_at_once(&rt, &format!("{url}/v1/check/45.155.205.30"), 100);
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

/// The three other providers' emulators, and the `[check.providers.*]` sections that
/// point at them with their keys (0600 files in the environment).
struct Providers {
    geo: ProviderEmulator,
    armor: ProviderEmulator,
    ipasis: ProviderEmulator,
}

impl Providers {
    fn start() -> Providers {
        Providers {
            geo: ProviderEmulator::start(Kind::Ipgeolocation),
            armor: ProviderEmulator::start(Kind::Apiarmor),
            ipasis: ProviderEmulator::start(Kind::Ipasis),
        }
    }

    fn sections(&self, env: &Env, extra: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let mut out = String::new();
        for (name, emu) in [("ipgeolocation", &self.geo), ("apiarmor", &self.armor), ("ipasis", &self.ipasis)] {
            let key = env.dir.path().join(format!("{name}.key"));
            std::fs::write(&key, format!("{PROVIDER_KEY}\n")).unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            out.push_str(&format!(
                "[check.providers.{name}]\nbase_url = {:?}\nkey_file = {key:?}\n{extra}\n",
                emu.url()
            ));
        }
        out
    }
}

/// A daemon asking WAYSCloud and the three others; `check` adds `[check]` keys,
/// `provider` keys to each of the three sections.
fn providers_env(emu: &Emulator, p: &Providers, check: &str, provider: &str) -> (Env, String) {
    let env = Env::new("");
    let port = free_port();
    let feed = env.feed_section(&emu.url(), "pull = false\nreport = false");
    let sections = p.sections(&env, provider);
    env.write_config(&format!("{feed}\n[check]\nlisten = \"127.0.0.1:{port}\"\n{check}\n{sections}"));
    (env, format!("http://127.0.0.1:{port}"))
}

#[test]
fn every_provider_is_asked_its_own_way_and_the_scores_combine() {
    let emu = Emulator::start();
    let p = Providers::start();
    let ip = "45.155.205.50";
    emu.with(|s| {
        s.lookups.insert(ip.into(), json!({"ip": ip, "score": 20, "categories": []}));
    });
    p.geo.with(|s| s.answers.insert(ip.into(), providers::ipgeolocation(ip, 65, &["is_vpn", "is_cloud_provider"])));
    p.armor.with(|s| s.answers.insert(ip.into(), providers::apiarmor(ip, "warning", false, "hosting")));
    p.ipasis.with(|s| s.answers.insert(ip.into(), providers::ipasis(ip, &["is_tor"])));
    let (env, url) = providers_env(&emu, &p, "", "");
    let daemon = env.start_in_process();
    let rt = runtime();
    let (_, _, body) = rt.block_on(get(&format!("{url}/v1/check/{ip}"), &[]));
    let pr = &body["providers"];
    assert_eq!(pr["wayscloud"]["score"], 20, "{body}");
    assert_eq!(
        (pr["ipgeolocation"]["score"].clone(), pr["ipgeolocation"]["flags"].clone()),
        (json!(65), json!(["vpn", "datacenter"]))
    );
    assert_eq!((pr["apiarmor"]["score"].clone(), pr["apiarmor"]["flags"].clone()), (json!(70), json!(["datacenter"])));
    assert_eq!((pr["ipasis"]["score"].clone(), pr["ipasis"]["flags"].clone()), (json!(70), json!(["tor"])));
    // The maximum by default: 70 is "challenge".
    assert_eq!((body["score"].clone(), body["verdict"].clone()), (json!(70), json!("challenge")));
    // What else each said, for the person deciding.
    assert_eq!(pr["ipgeolocation"]["notes"], json!(["vpn: Nord VPN (confidence 80)", "cloud: Packethub S.A."]));
    assert_eq!(pr["apiarmor"]["notes"], json!(["kind: hosting"]));
    // Each key went where its provider wants it (query, Bearer, query), and only there.
    for e in [&p.geo, &p.armor, &p.ipasis] {
        let requests = e.with(|s| s.requests.clone());
        assert_eq!(requests.len(), 1, "{:?}", e.kind);
        assert_eq!(requests[0].1.as_deref(), Some(PROVIDER_KEY), "{:?}: {requests:?}", e.kind);
    }
    assert!(p.armor.with(|s| !s.requests[0].0.contains(PROVIDER_KEY)), "API Armor's key is a header, not in the URL");
    let status = env.cli(&["status"]);
    let want = format!("check:     listening on {} (providers: wayscloud, ipgeolocation, apiarmor, ipasis)", &url[7..]);
    assert!(status.stdout.contains(&want), "{}", status.stdout);
    daemon.stop();

    // Weighted: (20*1 + 65*1 + 70*1 + 70*5) / 8 = 63.1 → 63 (challenge); a clean address
    // with every provider clean is allow.
    let (env, url) = providers_env(&emu, &p, "combine = \"weighted\"", "");
    let text = std::fs::read_to_string(&env.config_path).unwrap().replacen(
        "[check.providers.ipasis]\n",
        "[check.providers.ipasis]\nweight = 5\n",
        1,
    );
    env.write_raw_config(&text);
    let _daemon = env.start_in_process();
    let (_, _, body) = rt.block_on(get(&format!("{url}/v1/check/{ip}"), &[]));
    assert_eq!(body["score"], 63, "{body}");
    let (_, _, clean) = rt.block_on(get(&format!("{url}/v1/check/45.155.205.51"), &[]));
    assert_eq!((clean["score"].clone(), clean["verdict"].clone()), (json!(0), json!("allow")), "{clean}");
    // Private addresses reach no provider.
    rt.block_on(get(&format!("{url}/v1/check/192.168.1.20"), &[]));
    assert_eq!(p.geo.asked("192.168.1.20") + p.armor.asked("192.168.1.20") + p.ipasis.asked("192.168.1.20"), 0);
}

#[test]
fn provider_errors_429s_and_slow_answers_are_unknown_never_clean() {
    let emu = Emulator::start();
    let p = Providers::start();
    let (a, b) = ("45.155.205.60", "45.155.205.61");
    emu.fault(
        "/v1/ip/",
        [Fault::Status { code: 503, retry_after: None }, Fault::Status { code: 503, retry_after: None }],
    );
    p.geo.with(|s| s.faults.push_back(Fault::Status { code: 429, retry_after: Some(120) }));
    p.armor.with(|s| s.faults.extend([Fault::Malformed, Fault::Drop]));
    p.ipasis.with(|s| {
        s.faults.extend([Fault::Slow(Duration::from_secs(3)), Fault::Status { code: 500, retry_after: None }])
    });
    let (env, url) = providers_env(
        &emu,
        &p,
        "auth_fail_mode = \"closed\"\ntrusted_proxies = [\"127.0.0.1\"]",
        "timeout = \"300ms\"",
    );
    let _daemon = env.start_in_process();
    let rt = runtime();
    let started = std::time::Instant::now();
    let (_, _, body) = rt.block_on(get(&format!("{url}/v1/check/{a}"), &[]));
    assert!(started.elapsed() < Duration::from_millis(2500), "a slow provider costs its timeout, not its delay");
    let pr = &body["providers"];
    assert!(pr["ipgeolocation"]["error"].as_str().unwrap().contains("rate limited (429, retry after 120s)"), "{body}");
    assert!(pr["apiarmor"]["error"].as_str().unwrap().contains("not the documented shape"), "{body}");
    assert!(pr["ipasis"]["error"].as_str().unwrap().contains("timed out"), "{body}");
    assert!(pr["wayscloud"]["error"].as_str().unwrap().contains("503"), "{body}");
    assert!(body["score"].is_null() && body["verdict"] == "allow", "unknown, failing open: {body}");
    // The auth endpoint fails closed on the same (cached) unknown.
    let (status, verdict, _) = rt.block_on(get(&format!("{url}/v1/auth"), &[("X-Real-IP", a)]));
    assert_eq!((status, verdict.as_deref()), (403, Some("block")));
    // Another address: ipgeolocation is paused (not asked at all), the others fail again
    // (dropped connection, 500, 503) and are counted.
    let (_, _, body) = rt.block_on(get(&format!("{url}/v1/check/{b}"), &[]));
    assert_eq!(p.geo.asked(b), 0, "a 429 pauses the provider for its Retry-After");
    assert!(body["providers"]["ipgeolocation"]["error"].as_str().unwrap().contains("not asked"), "{body}");
    assert!(body["score"].is_null(), "{body}");
    // With WAYSCloud back (and the other two answering clean), the maximum is its score.
    emu.with(|s| {
        s.lookups.insert("45.155.205.62".into(), json!({"ip": "45.155.205.62", "score": 40}));
    });
    let (_, _, body) = rt.block_on(get(&format!("{url}/v1/check/45.155.205.62"), &[]));
    assert_eq!((body["score"].clone(), body["verdict"].clone()), (json!(40), json!("log")), "{body}");
    let text = rt.block_on(async { reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap() });
    for want in [
        "banshare_provider_errors_total{provider=\"ipgeolocation\"} 1",
        "banshare_provider_errors_total{provider=\"apiarmor\"} 2",
        "banshare_provider_errors_total{provider=\"ipasis\"} 2",
        "banshare_provider_errors_total{provider=\"wayscloud\"} 2",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
}

#[test]
fn a_key_others_can_read_is_refused_and_said_so() {
    use std::os::unix::fs::PermissionsExt;
    let emu = Emulator::start();
    let p = Providers::start();
    let (env, url) = providers_env(&emu, &p, "", "");
    let key = env.dir.path().join("ipasis.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _daemon = env.start_in_process();
    let (_, _, body) = runtime().block_on(get(&format!("{url}/v1/check/45.155.205.70"), &[]));
    let error = body["providers"]["ipasis"]["error"].as_str().unwrap();
    assert!(error.contains("readable by group or others") && error.contains("chmod 600"), "{error}");
    assert_eq!(p.ipasis.with(|s| s.requests.len()), 0, "nothing is sent without a safe key");
}

#[test]
fn concurrent_checks_share_one_lookup_per_provider_and_the_cache_survives_a_restart() {
    let emu = Emulator::start();
    let p = Providers::start();
    let ip = "45.155.205.80";
    emu.with(|s| {
        s.lookups.insert(ip.into(), json!({"ip": ip, "score": 50}));
    });
    emu.fault(&format!("/v1/ip/{ip}/threat"), [Fault::Slow(Duration::from_millis(300))]);
    p.geo.with(|s| s.faults.push_back(Fault::Slow(Duration::from_millis(300))));
    p.armor.with(|s| s.faults.push_back(Fault::Slow(Duration::from_millis(300))));
    p.ipasis.with(|s| s.faults.push_back(Fault::Slow(Duration::from_millis(300))));
    let (env, url) = providers_env(&emu, &p, "", "cache = \"1h\"");
    let daemon = env.start_in_process();
    let rt = runtime();
    let verdicts = all_at_once(&rt, &format!("{url}/v1/check/{ip}"), 100);
    assert!(verdicts.iter().all(|v| v["verdict"] == "log"), "{:?}", verdicts[0]);
    let wayscloud = || emu.with(|s| s.requests.iter().filter(|r| r.1 == format!("/v1/ip/{ip}/threat")).count());
    assert_eq!(
        (wayscloud(), p.geo.asked(ip), p.armor.asked(ip), p.ipasis.asked(ip)),
        (1, 1, 1, 1),
        "100 concurrent checks, one upstream call per provider"
    );
    // A restart starts warm: the answers come from the store, nobody is asked again.
    daemon.stop();
    let _daemon = env.start_in_process();
    let (_, _, body) = rt.block_on(get(&format!("{url}/v1/check/{ip}"), &[]));
    assert_eq!(body["verdict"], "log", "{body}");
    for name in ["wayscloud", "ipgeolocation", "apiarmor", "ipasis"] {
        assert_eq!(body["providers"][name]["cached"], true, "{name}: {body}");
    }
    assert_eq!((wayscloud(), p.geo.asked(ip), p.armor.asked(ip), p.ipasis.asked(ip)), (1, 1, 1, 1));
}

#[test]
fn a_unix_socket_listener_answers_and_believes_the_proxy_header() {
    use std::io::{Read, Write};
    let emu = Emulator::start();
    emu.with(|s| {
        s.lookups.insert("45.155.205.90".into(), json!({"ip": "45.155.205.90", "score": 90}));
    });
    let env = Env::new("");
    let path = env.dir.path().join("check.sock");
    let feed = env.feed_section(&emu.url(), "pull = false\nreport = false");
    env.write_config(&format!("{feed}\n[check]\nlisten = {path:?}\n"));
    let _daemon = env.start_in_process();
    let ask = |request: &str| {
        let mut stream = std::os::unix::net::UnixStream::connect(&path).expect("the socket listens once ready");
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    let answer = ask("GET /v1/check/45.155.205.90 HTTP/1.1\r\nHost: banshare\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"verdict\":\"block\""), "{answer}");
    // Only local processes reach a Unix socket: the proxy's header is the client.
    let answer =
        ask("GET /v1/auth HTTP/1.1\r\nHost: banshare\r\nX-Real-IP: 45.155.205.90\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o666);
    drop(_daemon);
    // A file that is not a socket is never replaced: the service stays off, the file intact.
    std::fs::write(&path, "precious").unwrap();
    let daemon = env.start_in_process();
    assert!(std::os::unix::net::UnixStream::connect(&path).is_err());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    drop(daemon);
}

#[test]
fn a_reload_changes_the_providers_but_not_the_listener() {
    let emu = Emulator::start();
    let p = Providers::start();
    let ip = "45.155.205.95";
    p.ipasis.with(|s| s.answers.insert(ip.into(), providers::ipasis(ip, &["is_abuse"])));
    let (env, url) = check_env(&emu, "");
    let daemon = env.start_in_process();
    let rt = runtime();
    let (_, _, body) = rt.block_on(get(&format!("{url}/v1/check/{ip}"), &[]));
    assert_eq!(body["providers"].as_object().unwrap().keys().collect::<Vec<_>>(), ["wayscloud"], "{body}");
    // Add IPASIS and move the listener: the provider takes effect, the listener stays.
    let text = std::fs::read_to_string(&env.config_path).unwrap();
    let moved = text.replace(&url[7..], &format!("127.0.0.1:{}", free_port()));
    let sections = p.sections(&env, "");
    let ipasis = &sections[sections.find("[check.providers.ipasis]").unwrap()..];
    env.write_raw_config(&format!("{moved}\n{ipasis}"));
    daemon.reload();
    let (_, _, body) = rt.block_on(get(&format!("{url}/v1/check/{ip}"), &[]));
    assert_eq!(body["providers"]["ipasis"]["score"], 85, "{body}");
    assert_eq!(body["verdict"], "block", "{body}");
    let status = env.cli(&["status"]).stdout;
    assert!(status.contains(&format!("check:     listening on {}", &url[7..])), "{status}");
}

#[test]
fn a_metrics_flood_reads_the_kernel_at_most_once_a_second() {
    let emu = Emulator::start();
    let (env, url) = check_env(&emu, "");
    let _daemon = env.start_in_process();
    let before = env.cli(&["status", "--json"]).json()["firewall"]["kernel_reads"].as_u64().unwrap();
    let rt = runtime();
    let started = std::time::Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let u = format!("{url}/metrics");
                tokio::spawn(async move { reqwest::get(u).await.unwrap().status().as_u16() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
    });
    let elapsed = started.elapsed().as_secs() + 1;
    let after = env.cli(&["status", "--json"]).json()["firewall"]["kernel_reads"].as_u64().unwrap();
    // 64 requests, plus the status call: one read per second at most (and the boundary's).
    assert!(after - before <= elapsed + 2, "{} kernel reads for 64 requests in {elapsed} s", after - before);
}

#[test]
fn a_connection_flood_on_the_check_service_leaves_the_daemon_working() {
    // Descriptors for the flood in this process (the daemon runs in it too).
    let limit = libc::rlimit { rlim_cur: 16_384, rlim_max: 16_384 };
    // SAFETY: setrlimit with a valid struct; raising the limit for this test process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0, "raise RLIMIT_NOFILE (root)");
    let emu = Emulator::start();
    let (env, url) = check_env(&emu, "");
    let _daemon = env.start_in_process();
    let addr = url.trim_start_matches("http://").to_string();
    let cap = banshare::check::MAX_CONNECTIONS;
    let mut held = Vec::new();
    for i in 0..cap {
        held.push(std::net::TcpStream::connect(&addr).unwrap());
        if i % 128 == 127 {
            // Let the service accept them: an overflowing accept queue would keep some
            // of them in the kernel, not in the service.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    // Past the cap: accepted by the kernel, then closed by the service without an answer.
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::io::Write::write_all(&mut extra, b"GET /v1/check/45.155.205.1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap_or(());
    let mut buf = [0u8; 64];
    let read = std::io::Read::read(&mut extra, &mut buf).unwrap_or(0);
    assert_eq!(read, 0, "the connection past the cap is closed: {:?}", String::from_utf8_lossy(&buf[..read]));
    // Meanwhile the control socket and the firewall work.
    env.cli(&["ban", "203.0.113.90", "--for", "1h"]).expect_code(0);
    drop(held);
    let rt = runtime();
    crate::support::wait_for("the check service answers again", Duration::from_secs(10), || {
        rt.block_on(async { reqwest::get(format!("{url}/v1/check/45.155.205.1")).await.is_ok() })
    });
}
