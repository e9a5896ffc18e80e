//! The community feed through the daemon and the real CLI, against the emulator:
//! reports from detection and manual bans, a hard kill mid-send, pulls with garbage and
//! with 200,000 entries, unban grace, lookups, registration, and the key kept secret.

use std::collections::HashSet;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::emulator::{Emulator, Fault, FeedSource, Shape, TEST_KEY, many_items};
use crate::support::netns::{Netns, privileged};
use crate::support::{Env, wait_for};

/// An environment whose feed points at `emu`; `feed` adds `[feed]` keys, `top` top-level ones.
fn feed_env(emu: &Emulator, feed: &str, top: &str) -> Env {
    let env = Env::new("");
    let section = env.feed_section(&emu.url(), feed);
    env.write_config(&format!("{top}\n{section}"));
    env
}

fn status(env: &Env) -> Value {
    let run = env.cli(&["status", "--json"]);
    run.expect_code(0);
    run.json()
}

#[test]
fn detections_are_reported_sanitised_and_private_addresses_never() {
    let emu = Emulator::start();
    let env = Env::new("");
    let log = env.dir.path().join("auth.log");
    std::fs::write(&log, "").unwrap();
    let section = env.feed_section(&emu.url(), "pull = false");
    env.write_config(&format!("[[source]]\npath = {log:?}\nfilters = [\"sshd\"]\n{section}"));
    let _daemon = env.start_in_process();

    let now = chrono_like_syslog_now();
    let mut lines = String::new();
    for i in 0..5 {
        lines.push_str(&format!(
            "{now} web1 sshd[{}]: Failed password for invalid user oracle from 45.155.205.7 port {} ssh2\n",
            100 + i,
            40000 + i
        ));
        lines.push_str(&format!("{now} web1 sshd[{}]: Failed password for root from 10.1.2.3 port 22 ssh2\n", 200 + i));
    }
    std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(lines.as_bytes()).unwrap();

    wait_for("the report", Duration::from_secs(10), || !emu.reports().is_empty());
    let listed = env.listed();
    assert!(listed.contains(&"45.155.205.7/32".into()) && listed.contains(&"10.1.2.3/32".into()), "{listed:?}");
    let body = &emu.reports()[0].body;
    assert_eq!(body["ip"], "45.155.205.7");
    assert_eq!(body["category"], "ssh_bruteforce");
    assert_eq!(body["jail"], "sshd");
    assert_eq!(body["source"], "banshare");
    assert_eq!(body["failures"], 5);
    let evidence: Vec<&str> = body["evidence"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert_eq!(evidence.len(), 5);
    for line in &evidence {
        assert!(!line.contains("web1") && !line.contains("oracle"), "not sanitised: {line}");
        assert!(line.contains("[host]") && line.contains("invalid user [user] from 45.155.205.7"), "{line}");
    }
    // The private attacker is blocked here but never reported.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(emu.reported_ips(), ["45.155.205.7"]);
    assert_eq!(status(&env)["feed"]["outbox"]["pending"], 0);
}

/// Now as a syslog timestamp (the detector ignores lines outside its window).
fn chrono_like_syslog_now() -> String {
    let out = std::process::Command::new("date").args(["+%b %e %H:%M:%S"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim_end().to_string()
}

use std::io::Write as _;

#[test]
fn manual_bans_are_reported_only_when_asked() {
    let emu = Emulator::start();
    let env = feed_env(&emu, "pull = false", "");
    let _daemon = env.start_in_process();
    env.cli(&["ban", "45.155.205.20"]).expect_code(0);
    env.cli(&["ban", "45.155.205.21", "--report", "--category", "web_attack", "--reason", "probing /wp-login.php"])
        .expect_code(0);
    let private = env.cli(&["ban", "10.9.9.9", "--report"]);
    private.expect_code(4);
    assert!(private.stderr.contains("not a public address"), "{}", private.stderr);
    env.cli(&["ban", "45.155.205.22", "--report", "--category", "Web Attack"]).expect_code(2);
    wait_for("the report", Duration::from_secs(10), || !emu.reports().is_empty());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(emu.reported_ips(), ["45.155.205.21"]);
    let body = &emu.reports()[0].body;
    assert_eq!((body["category"].as_str(), body["source"].as_str()), (Some("web_attack"), Some("manual")));
    assert_eq!(body["comment"], "probing /wp-login.php");
}

#[test]
fn a_hard_kill_while_sending_loses_no_report() {
    let emu = Emulator::start();
    let env = feed_env(&emu, "pull = false\nreports_per_minute = 1000", "");
    // The first report hangs for 3 s: the daemon is killed while it waits.
    emu.fault("/v1/ip/report", [Fault::Slow(Duration::from_secs(3))]);
    let daemon = env.spawn_daemon();
    let ips: Vec<String> = (1..=20).map(|i| format!("45.155.206.{i}")).collect();
    for ip in &ips {
        env.cli(&["ban", ip, "--report", "--category", "ssh_bruteforce"]).expect_code(0);
    }
    let report_requests = || emu.with(|s| s.requests.iter().filter(|r| r.1 == "/v1/ip/report").count());
    wait_for("a report in flight", Duration::from_secs(10), || report_requests() >= 1);
    daemon.kill_hard();
    let _daemon = env.spawn_daemon();
    wait_for("every report", Duration::from_secs(20), || {
        emu.reported_ips().iter().collect::<HashSet<_>>().len() == ips.len()
    });
    let got = emu.reported_ips();
    let mut first_seen: Vec<&String> = Vec::new();
    for ip in &got {
        if !first_seen.contains(&ip) {
            first_seen.push(ip);
        }
    }
    assert_eq!(first_seen, ips.iter().collect::<Vec<_>>(), "in order");
    assert!(got.len() <= ips.len() + 1, "only the report in flight may arrive twice: {got:?}");
}

#[test]
fn a_refused_key_pauses_reporting_until_reload_and_status_says_why() {
    let emu = Emulator::start();
    emu.with(|s| s.keys = vec!["someone else's key".into()]);
    let env = feed_env(&emu, "pull = false", "");
    let daemon = env.spawn_daemon();
    env.cli(&["ban", "45.155.205.30", "--report"]).expect_code(0);
    wait_for("the pause", Duration::from_secs(10), || !status(&env)["feed"]["reporter"]["paused"].is_null());
    let text = env.cli(&["status"]).stdout;
    assert!(text.contains("PAUSED") && text.contains("Invalid API key"), "{text}");
    assert!(daemon.log_text().contains("the API refused the key; reporting is paused"));
    assert_eq!(status(&env)["feed"]["outbox"]["pending"], 1, "kept for later");

    emu.with(|s| s.keys.push(TEST_KEY.into()));
    daemon.signal(Signal::SIGHUP);
    wait_for("the report after the reload", Duration::from_secs(10), || emu.reported_ips().len() == 1);
    wait_for("status clears the pause", Duration::from_secs(5), || {
        status(&env)["feed"]["reporter"]["paused"].is_null()
    });
}

/// A feed with good entries among every kind of garbage.
fn garbage_feed() -> Vec<Value> {
    vec![
        json!({"ip_address": "45.155.205.1", "threat_score": 92, "categories": ["ssh_bruteforce"]}),
        json!({"ip": "45.155.205.2", "score": 88}),
        json!({"ip_address": "45.155.205.3", "threat": {"score": 99}}),
        json!({"ip_address": "185.220.101.0/24", "threat_score": "95"}),
        json!({"ip_address": "2a01:4f8:1:2::7", "threat_score": 90}),
        json!({"ip_address": "not-an-ip", "threat_score": 99}),
        json!({"ip_address": "10.0.0.1", "threat_score": 99}),
        json!({"ip_address": "192.168.0.0/16", "threat_score": 99}),
        json!({"ip_address": "127.0.0.1", "threat_score": 99}),
        json!({"ip_address": "0.0.0.0/0", "threat_score": 100}),
        json!({"ip_address": "45.0.0.0/8", "threat_score": 100}),
        json!({"ip_address": "45.155.205.4", "threat_score": "40"}),
        json!({"ip_address": "45.155.205.5"}),
        json!({"ip_address": "185.220.100.7", "threat_score": 97}),
        json!("just a string"),
        json!({"ip_address": 42, "threat_score": 99}),
        json!({"ip_address": "45.155.205.1", "threat_score": 91}),
    ]
}

#[test]
fn a_pull_applies_the_good_entries_and_counts_the_rest() {
    let emu = Emulator::start();
    emu.with(|s| {
        s.feed = FeedSource::Items(garbage_feed());
        s.shape = Shape::Data;
    });
    let env = feed_env(&emu, "pull = false", "allowlist = [\"185.220.100.0/24\"]");
    let _daemon = env.start_in_process();
    let sync = env.cli(&["sync", "--json"]);
    sync.expect_code(0);
    let r = sync.json();
    assert_eq!(r["received"], 17);
    assert_eq!(r["added"], 5);
    let skipped = &r["skipped"];
    let counts: Vec<(&str, u64)> = ["invalid", "low_score", "not_public", "over_wide", "duplicate", "protected"]
        .iter()
        .map(|k| (*k, skipped[k].as_u64().unwrap()))
        .collect();
    assert_eq!(
        counts,
        [("invalid", 4), ("low_score", 1), ("not_public", 4), ("over_wide", 1), ("duplicate", 1), ("protected", 1)]
    );
    let mut feed: Vec<String> = env.cli(&["list", "--source", "feed", "--json"]).json()["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["target"].as_str().unwrap().to_string())
        .collect();
    feed.sort();
    assert_eq!(
        feed,
        ["185.220.101.0/24", "2a01:4f8:1:2::7/128", "45.155.205.1/32", "45.155.205.2/32", "45.155.205.3/32"]
    );
    // Nothing that came from the feed is reported back.
    std::thread::sleep(Duration::from_millis(300));
    assert!(emu.reports().is_empty());
    assert_eq!(status(&env)["feed"]["outbox"]["pending"], 0);
    // A second pull finds them all in force: nothing to add or renew.
    let again = env.cli(&["sync", "--json"]).json();
    let counts = |r: &Value| ["added", "renewed", "unchanged"].map(|k| r[k].as_u64().unwrap());
    assert_eq!(counts(&again), [0, 0, 5]);
    let text = env.cli(&["sync"]).stdout;
    assert!(text.starts_with("received 17, added 0, renewed 0, unchanged 5"), "{text}");
}

#[test]
fn a_failed_pull_changes_nothing() {
    let emu = Emulator::start();
    emu.with(|s| s.feed = FeedSource::Items(garbage_feed()));
    let env = feed_env(&emu, "pull = false", "");
    let _daemon = env.start_in_process();
    env.cli(&["sync"]).expect_code(0);
    let before = env.listed();
    assert_eq!(before.len(), 6);
    for fault in [Fault::Status { code: 503, retry_after: None }, Fault::Malformed, Fault::Drop] {
        emu.fault("/v1/ip/threats/live", [fault.clone()]);
        let run = env.cli(&["sync"]);
        run.expect_code(5);
        assert!(run.stderr.starts_with("banshare: "), "{fault:?}: {}", run.stderr);
        assert_eq!(env.listed(), before, "{fault:?}");
    }
    let s = status(&env);
    assert!(s["feed"]["last_pull_error"].is_string());
    assert_eq!(s["feed"]["last_pull"]["added"], 6, "the last good pull is still shown");
}

#[test]
fn an_unban_sticks_against_the_feed() {
    let emu = Emulator::start();
    emu.with(|s| {
        s.feed = FeedSource::Items(vec![
            json!({"ip_address": "45.155.205.50", "threat_score": 95}),
            json!({"ip_address": "45.155.205.51", "threat_score": 95}),
        ])
    });
    let env = feed_env(&emu, "pull = false", "");
    let _daemon = env.start_in_process();
    env.cli(&["sync"]).expect_code(0);
    env.cli(&["unban", "45.155.205.50"]).expect_code(0);
    let r = env.cli(&["sync", "--json"]).json();
    assert_eq!(r["skipped"]["unbanned"], 1);
    assert_eq!(env.listed(), ["45.155.205.51/32"]);
    env.cli(&["query", "45.155.205.50"]).expect_code(1);
}

#[test]
fn a_feed_of_200000_entries_is_capped_and_applied_in_one_firewall_batch() {
    if !privileged("feed cap test", &["nft"]) {
        return;
    }
    let ns = Netns::new("feed");
    let emu = Emulator::start_in(&ns.name);
    emu.with(|s| {
        s.feed = FeedSource::Items(many_items(200_000));
        s.ignore_limit = true; // the whole feed in one answer, whatever `limit` says
    });
    let env = Env::new("");
    let section = env.feed_section(&emu.url(), "pull = false");
    env.write_config_for("nftables", &section);
    let _daemon = env.spawn_daemon_in(&ns);
    let batches = |env: &Env| status(env)["firewall"]["batches"].as_u64().unwrap();
    let before = batches(&env);

    let started = std::time::Instant::now();
    let sync = env.cli(&["sync", "--json"]);
    sync.expect_code(0);
    let took = started.elapsed();
    let r = sync.json();
    assert_eq!(r["received"], 200_000);
    assert_eq!(r["added"], 50_000);
    assert_eq!(r["skipped"]["over_cap"], 150_000);
    assert_eq!(batches(&env), before + 1, "one kernel transaction");
    let s = status(&env);
    assert_eq!(s["active"]["feed"], 50_000);
    assert_eq!(s["firewall"]["elements"], 50_000);
    // The highest scores won: 200,000 items cycle scores 85..=100, 12,500 each.
    let list = env.cli(&["list", "--source", "feed", "--json"]).json();
    let min = list["decisions"].as_array().unwrap().iter().map(|d| d["score"].as_u64().unwrap()).min().unwrap();
    assert_eq!(min, 97);
    eprintln!("200,000-entry pull: capped to 50,000 and applied in {took:?}");
}

/// The kernel's nft elements of banshare's feed sets, with the seconds until each
/// expires.
fn feed_elements(ns: &Netns) -> std::collections::HashMap<String, u64> {
    let out = ns.exec(&["nft", "-j", "list", "table", "inet", "banshare"]);
    let v: Value = serde_json::from_str(&out.stdout).expect("nft -j output");
    let mut found = std::collections::HashMap::new();
    for set in v["nftables"].as_array().unwrap().iter().filter_map(|o| o.get("set")) {
        if !set["name"].as_str().unwrap().starts_with("feed_") {
            continue;
        }
        for e in set["elem"].as_array().into_iter().flatten() {
            let inner = &e["elem"];
            found.insert(inner["val"].as_str().unwrap().to_string(), inner["expires"].as_u64().unwrap_or(0));
        }
    }
    found
}

#[test]
fn feed_pulls_are_applied_as_a_difference_and_delisted_entries_lifted_after_a_grace() {
    if !privileged("feed diff test", &["nft"]) {
        return;
    }
    let ns = Netns::new("fdiff");
    let emu = Emulator::start_in(&ns.name);
    let n = 50_000;
    let items = many_items(n);
    emu.with(|s| {
        s.feed = FeedSource::Items(items.clone());
        s.ignore_limit = true;
    });
    let env = Env::new("");
    let section = env.feed_section(&emu.url(), "pull = false\nmin_score = 0\nlift_after_pulls = 3");
    env.write_config_for("nftables", &section);
    let _daemon = env.spawn_daemon_in(&ns);
    let batches = |env: &Env| status(env)["firewall"]["batches"].as_u64().unwrap();
    let sync = |env: &Env| {
        let run = env.cli(&["sync", "--json"]);
        run.expect_code(0);
        run.json()
    };
    let counts = |r: &Value| ["added", "renewed", "unchanged", "missing", "delisted"].map(|k| r[k].as_u64().unwrap());

    assert_eq!(counts(&sync(&env)), [n as u64, 0, 0, 0, 0]);
    let first = feed_elements(&ns);
    assert_eq!(first.len(), n);

    // The same 50,000 again: no store write, no kernel transaction, timeouts untouched.
    std::thread::sleep(Duration::from_secs(2));
    let before = batches(&env);
    let started = std::time::Instant::now();
    let r = sync(&env);
    let took = started.elapsed();
    assert_eq!(counts(&r), [0, 0, n as u64, 0, 0]);
    assert_eq!(batches(&env), before, "an unchanged pull does no kernel work");
    let again = feed_elements(&ns);
    assert_eq!(again.len(), n);
    let (a, b) = (first["11.0.0.1"], again["11.0.0.1"]);
    assert!(b < a && a - b <= 10, "the timeout was not rewritten: {a} then {b}");
    eprintln!("a pull of {n} unchanged entries: {took:?} end to end, no kernel transaction");

    // Ten entries leave the feed, ten arrive: one kernel transaction for the ten new;
    // the ten gone stay in force for two more pulls and are lifted by the third.
    let mut changed = items.clone();
    let gone: Vec<String> = changed.drain(..10).map(|i| i["ip_address"].as_str().unwrap().to_string()).collect();
    changed.extend((0..10).map(|i| json!({"ip_address": format!("45.155.206.{}", i + 1), "threat_score": 99})));
    emu.with(|s| s.feed = FeedSource::Items(changed.clone()));
    let before = batches(&env);
    assert_eq!(counts(&sync(&env)), [10, 0, n as u64 - 10, 10, 0]);
    assert_eq!(batches(&env), before + 1);
    assert_eq!(feed_elements(&ns).len(), n + 10);
    assert_eq!(counts(&sync(&env)), [0, 0, n as u64, 10, 0]);
    let r = sync(&env);
    assert_eq!(counts(&r), [0, 0, n as u64, 0, 10]);
    let now = feed_elements(&ns);
    assert_eq!(now.len(), n);
    assert!(gone.iter().all(|g| !now.contains_key(g)), "the delisted entries left the kernel");
    assert!(now.contains_key("45.155.206.1"));
    env.cli(&["query", &gone[0]]).expect_code(1);
    // A failed pull counts for nothing: what is in force stays.
    emu.fault("/v1/ip/threats/live", [Fault::Status { code: 503, retry_after: None }]);
    env.cli(&["sync"]).expect_code(5);
    assert_eq!(feed_elements(&ns).len(), n);
}

/// With a TTL of 10 minutes (pulls every 5), every pull renews: the kernel's timeouts go
/// back to the full TTL.
#[test]
fn a_listed_entry_is_renewed_before_its_expiry_comes_within_two_pulls() {
    if !privileged("feed renewal test", &["nft"]) {
        return;
    }
    let ns = Netns::new("frenew");
    let emu = Emulator::start_in(&ns.name);
    emu.with(|s| s.feed = FeedSource::Items(vec![json!({"ip_address": "45.155.205.70", "threat_score": 95})]));
    let env = Env::new("");
    let section = env.feed_section(&emu.url(), "pull = false\nttl = \"10m\"\npull_interval = \"5m\"");
    env.write_config_for("nftables", &section);
    let _daemon = env.spawn_daemon_in(&ns);
    env.cli(&["sync"]).expect_code(0);
    std::thread::sleep(Duration::from_secs(3));
    let aged = feed_elements(&ns)["45.155.205.70"];
    assert!((590..=597).contains(&aged), "{aged}");
    let r = env.cli(&["sync", "--json"]).json();
    assert_eq!(r["renewed"], 1);
    let renewed = feed_elements(&ns)["45.155.205.70"];
    assert!(renewed >= 598, "renewed to the full TTL: {renewed}");
}

#[test]
fn check_looks_up_once_per_cache_period_and_failure_is_unknown_not_clean() {
    let emu = Emulator::start();
    let env = feed_env(&emu, "pull = false", "");
    let _daemon = env.start_in_process();
    env.cli(&["ban", "45.155.205.60", "--report", "--category", "ssh_bruteforce"]).expect_code(0);
    wait_for("the report", Duration::from_secs(10), || emu.reported_ips().len() == 1);

    let first = env.cli(&["check", "45.155.205.60", "--json"]);
    first.expect_code(0);
    let c = first.json();
    assert_eq!(c["local"]["blocked"], true);
    assert_eq!(c["lookup"]["score"], 70);
    assert_eq!(c["lookup"]["level"], "high");
    assert_eq!(c["lookup"]["categories"][0], "ssh_bruteforce");
    assert_eq!(c["lookup"]["network"], "AS64500 Example Hosting (datacenter)");
    assert_eq!(c["cached"], false);
    let second = env.cli(&["check", "45.155.205.60"]);
    assert!(second.stdout.contains("community feed: score 70 (high)") && second.stdout.contains("(cached)"));
    let lookups = emu.with(|s| s.requests.iter().filter(|r| r.1 == "/v1/ip/45.155.205.60").count());
    assert_eq!(lookups, 1);

    emu.fault("/v1/ip/45.155.205.61", [Fault::Status { code: 503, retry_after: None }]);
    let failed = env.cli(&["check", "45.155.205.61"]);
    failed.expect_code(1);
    assert!(failed.stdout.contains("community feed: unknown: the API is unavailable"), "{}", failed.stdout);
    assert!(!failed.stdout.contains("clean"), "{}", failed.stdout);
    let private = env.cli(&["check", "10.0.0.1"]);
    assert!(private.stdout.contains("never sent to the feed"), "{}", private.stdout);
    assert!(emu.with(|s| s.requests.iter().all(|r| !r.1.contains("10.0.0.1"))));
}

#[test]
fn register_verify_and_delist() {
    let emu = Emulator::start();
    let env = feed_env(&emu, "pull = false", "");
    let _daemon = env.start_in_process();
    let reg =
        env.cli(&["register", "--name", "example web", "--contact", "ops@example.org", "--domain", "example.org"]);
    reg.expect_code(0);
    assert!(reg.stdout.starts_with("registered: reporter id 00000000-"), "{}", reg.stdout);
    let id = status(&env)["feed"]["reporter_id"].as_str().unwrap().to_string();
    // Registering again with the same key gives the same id.
    let again = env.cli(&["register", "--name", "example web", "--contact", "ops@example.org", "--json"]).json();
    assert_eq!(again["reporter_id"], id.as_str());

    let pending = env.cli(&["verify"]);
    pending.expect_code(1);
    assert!(pending.stdout.starts_with("example.org: pending"), "{}", pending.stdout);
    assert!(pending.stdout.contains("_wayscloud-verify.example.org. IN TXT \"wayscloud-verify="), "{}", pending.stdout);
    emu.with(|s| s.verified.push("example.org".into()));
    let done = env.cli(&["verify"]);
    done.expect_code(0);
    assert!(done.stdout.starts_with("example.org: verified"), "{}", done.stdout);

    let delist = env.cli(&["delist", "45.155.205.70", "--reason", "our NAT gateway", "--hostname", "gw.example.org"]);
    delist.expect_code(0);
    assert!(delist.stdout.contains("pending"), "{}", delist.stdout);
    let sent = emu.with(|s| s.delists[0].clone());
    assert_eq!(sent, json!({"ip": "45.155.205.70", "reason": "our NAT gateway", "hostname": "gw.example.org"}));
    env.cli(&["delist", "not-an-ip", "--reason", "x", "--hostname", "y"]).expect_code(2);
}

#[test]
fn the_api_key_never_appears_in_logs_or_output() {
    let emu = Emulator::start();
    emu.with(|s| s.feed = FeedSource::Items(garbage_feed()));
    let env = Env::new("");
    // The key comes from the environment here; the key file does not exist.
    let missing = env.dir.path().join("no-key-file");
    env.write_config(&format!("[feed]\nbase_url = {:?}\napi_key_file = {missing:?}\n", emu.url()));
    let daemon = env.spawn_daemon_with(&[("BANSHARE_API_KEY", TEST_KEY), ("BANSHARE_LOG", "trace")]);
    wait_for("the first pull", Duration::from_secs(10), || !status(&env)["feed"]["last_pull"].is_null());
    env.cli(&["ban", "45.155.205.80", "--report"]).expect_code(0);
    wait_for("the report", Duration::from_secs(10), || emu.reported_ips().len() == 1);
    env.cli(&["check", "45.155.205.80"]);
    env.cli(&["register", "--name", "n", "--contact", "c@example.org"]).expect_code(0);
    // Then the key is refused: errors are logged, the key is not.
    emu.with(|s| s.keys.clear());
    env.cli(&["ban", "45.155.205.81", "--report"]).expect_code(0);
    env.cli(&["sync"]).expect_code(5);
    wait_for("the pause", Duration::from_secs(10), || !status(&env)["feed"]["reporter"]["paused"].is_null());
    let status_text = env.cli(&["status", "--json"]).stdout;
    assert!(status_text.contains("BANSHARE_API_KEY"), "status names where the key comes from");
    daemon.stop();

    assert!(emu.with(|s| s.keys_seen.iter().all(|k| k == TEST_KEY) && !s.keys_seen.is_empty()));
    let log = std::fs::read_to_string(env.dir.path().join("daemon.log")).unwrap();
    assert!(log.len() > 1000 && log.contains("TRACE") || log.contains("DEBUG"), "the log was captured at trace level");
    for text in [&log, &status_text] {
        assert!(!text.contains(TEST_KEY) && !text.contains("5ecret"), "the key leaked");
    }
}

#[test]
fn pages_are_followed_until_the_feed_ends() {
    let emu = Emulator::start();
    emu.with(|s| s.feed = FeedSource::Items(many_items(2500)));
    let env = feed_env(&emu, "pull = false", "");
    let _daemon = env.start_in_process();
    let r = env.cli(&["sync", "--json"]).json();
    assert_eq!((r["pages"].as_u64(), r["received"].as_u64(), r["added"].as_u64()), (Some(3), Some(2500), Some(2500)));
    let asked: Vec<String> = emu.with(|s| s.requests.iter().map(|r| r.1.clone()).collect());
    assert_eq!(
        asked,
        [
            "/v1/ip/threats/live?limit=1000&min_score=85&time_range=24h",
            "/v1/ip/threats/live?limit=1000&min_score=85&time_range=24h&offset=1000",
            "/v1/ip/threats/live?limit=1000&min_score=85&time_range=24h&offset=2000",
        ]
    );
}

#[test]
fn report_dry_run_prints_exactly_what_would_be_sent() {
    let env = Env::new("");
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let matches = format!(
        "Jan  2 03:04:05 {host} sshd[9]: Failed password for alice from 45.155.205.7 port 1 ssh2\n\
         Jan  2 03:04:07 {host} sshd[9]: Failed password for alice from 45.155.205.7 port 2 ssh2"
    );
    let run = env.cli(&[
        "report",
        "--dry-run",
        "--ip",
        "45.155.205.7",
        "--jail",
        "sshd",
        "--category",
        "ssh_bruteforce",
        "--failures",
        "5",
        "--time",
        "1767323045",
        "--matches",
        &matches,
    ]);
    run.expect_code(0);
    let (first, body) = run.stdout.split_once('\n').unwrap();
    assert_eq!(first, "POST https://api.wayscloud.services/v1/ip/report");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["ip"], "45.155.205.7");
    assert_eq!(body["timestamp"], "2026-01-02T03:04:05Z");
    assert_eq!(
        body["evidence"][0],
        "Jan  2 03:04:05 [host] sshd[9]: Failed password for [user] from 45.155.205.7 port 1 ssh2"
    );
    assert!(!run.stdout.contains("alice"));
    env.cli(&["report", "--dry-run", "--ip", "10.0.0.1", "--jail", "sshd"]).expect_code(4);
    env.cli(&["report", "--dry-run", "--ip", "nope", "--jail", "sshd"]).expect_code(2);
}
