//! The daemon's lifecycle, driven through the real CLI: ban, list, query, unban, expiry,
//! restart, reload, a second daemon, and a hard kill in the middle of a ban storm.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banshare::control::protocol::Request;
use nix::sys::signal::Signal;

use crate::support::{Env, wait_for};

#[test]
fn ban_list_query_unban_round_trip() {
    let env = Env::new("");
    let _daemon = env.start_in_process();

    let ban = env.cli(&["ban", "203.0.113.7", "--for", "1h", "--reason", "ssh scanner"]);
    ban.expect_code(0);
    assert!(ban.stdout.starts_with("banned 203.0.113.7 (manual) until "), "{}", ban.stdout);
    env.cli(&["ban", "198.51.100.0/24", "--for", "1h"]).expect_code(0);

    let list = env.cli(&["list"]);
    list.expect_code(0);
    assert!(list.stdout.contains("203.0.113.7 ") && list.stdout.contains("ssh scanner"), "{}", list.stdout);
    assert!(list.stdout.contains("198.51.100.0/24"), "{}", list.stdout);
    assert_eq!(env.listed(), ["203.0.113.7/32", "198.51.100.0/24"]);
    let only_feed = env.cli(&["list", "--source", "feed", "--json"]);
    assert_eq!(only_feed.json()["decisions"].as_array().unwrap().len(), 0);

    let q = env.cli(&["query", "203.0.113.7"]);
    q.expect_code(0);
    assert!(q.stdout.starts_with("203.0.113.7 is blocked by manual since "), "{}", q.stdout);
    assert!(q.stdout.contains("reason: ssh scanner"), "{}", q.stdout);
    // An address inside a blocked CIDR: the answer names the CIDR.
    let q = env.cli(&["query", "198.51.100.77", "--json"]);
    q.expect_code(0);
    assert_eq!(q.json()["active"][0]["target"], "198.51.100.0/24");
    let q = env.cli(&["query", "198.51.100.77"]);
    assert!(q.stdout.contains("is blocked as part of 198.51.100.0/24 by manual"), "{}", q.stdout);
    env.cli(&["query", "203.0.113.8"]).expect_code(1);

    // Unbanning one address inside a CIDR says what covers it.
    let u = env.cli(&["unban", "198.51.100.5"]);
    u.expect_code(1);
    assert!(u.stderr.contains("covered by 198.51.100.0/24 (manual)"), "{}", u.stderr);

    env.cli(&["unban", "203.0.113.7"]).expect_code(0);
    assert_eq!(env.listed(), ["198.51.100.0/24"]);
    let q = env.cli(&["query", "203.0.113.7"]);
    q.expect_code(1);
    assert!(q.stdout.contains("203.0.113.7 is not blocked"), "{}", q.stdout);
    assert!(q.stdout.contains("earlier: 203.0.113.7 by manual"), "history is kept: {}", q.stdout);
    let again = env.cli(&["unban", "203.0.113.7"]);
    again.expect_code(1);
    assert_eq!(again.stderr.trim(), "banshare: 203.0.113.7 is not blocked");

    // The firewall saw every add and the removal.
    let ops: Vec<(String, String)> = env
        .dry_run_log()
        .iter()
        .filter(|l| l["op"] != "reconcile")
        .map(|l| (l["op"].as_str().unwrap().into(), l["target"].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        ops,
        [
            ("add".into(), "203.0.113.7/32".into()),
            ("add".into(), "198.51.100.0/24".into()),
            ("remove".into(), "203.0.113.7/32".into())
        ]
    );
}

#[test]
fn a_two_second_ban_lifts_itself_and_the_firewall_is_told() {
    let env = Env::new("");
    let _daemon = env.start_in_process();
    let t0 = Instant::now();
    env.cli(&["ban", "203.0.113.9", "--for", "2s"]).expect_code(0);
    assert_eq!(env.listed(), ["203.0.113.9/32"]);
    wait_for("the ban to expire", Duration::from_secs(10), || env.listed().is_empty());
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1900), "lifted too early: {took:?}");
    assert!(took < Duration::from_secs(4), "lifted too late: {took:?}");
    wait_for("the dry-run backend to record the lift", Duration::from_secs(5), || {
        env.dry_run_log().iter().any(|l| l["op"] == "remove" && l["target"] == "203.0.113.9/32")
    });
    let q = env.cli(&["query", "203.0.113.9", "--json"]);
    q.expect_code(1);
    assert_eq!(q.json()["history"][0]["target"], "203.0.113.9/32");
}

#[test]
fn a_restarted_daemon_holds_every_unexpired_ban() {
    let env = Env::new("");
    let daemon = env.start_in_process();
    env.cli(&["ban", "203.0.113.10", "--for", "1h"]).expect_code(0);
    env.cli(&["ban", "2001:db8:77::/48", "--for", "permanent"]).expect_code(0);
    env.cli(&["ban", "203.0.113.11", "--for", "1s"]).expect_code(0);
    daemon.stop();
    assert!(!env.socket.exists(), "a clean stop removes the socket");
    std::thread::sleep(Duration::from_millis(1200)); // let the 1 s ban expire while stopped

    let _daemon = env.start_in_process();
    assert_eq!(env.listed(), ["203.0.113.10/32", "2001:db8:77::/48"]);
    // The firewall was rebuilt from the store in one reconcile with exactly those.
    let reconciles: Vec<_> = env.dry_run_log().into_iter().filter(|l| l["op"] == "reconcile").collect();
    assert_eq!(reconciles.len(), 2);
    assert_eq!(reconciles[1]["elements"], serde_json::json!(["manual:203.0.113.10/32", "manual:2001:db8:77::/48"]));
    let status = env.cli(&["status", "--json"]).json();
    assert_eq!(status["active"]["manual"], 2);
    assert_eq!(status["firewall"]["elements"], 2);
}

#[test]
fn sighup_reloads_a_good_config_and_keeps_the_old_one_on_a_broken_config() {
    let env = Env::new("allowlist = [\"192.0.2.0/24\"]");
    let daemon = env.spawn_daemon();
    env.cli(&["ban", "198.51.100.7", "--for", "1h"]).expect_code(0);

    // A broken config: the daemon logs it, shows it in status, and keeps the old one.
    env.write_raw_config("allowlist = [\"192.0.2.0/24\", \"not-a-cidr\"]\n");
    daemon.signal(Signal::SIGHUP);
    wait_for("the reload error in status", Duration::from_secs(10), || {
        !env.cli(&["--socket", env.socket.to_str().unwrap(), "status", "--json"]).json()["reload_error"].is_null()
    });
    let status = env.cli(&["--socket", env.socket.to_str().unwrap(), "status"]);
    assert!(status.stdout.contains("last reload FAILED, previous config kept"), "{}", status.stdout);
    assert!(status.stdout.contains("key `allowlist[1]`"), "{}", status.stdout);
    let refused = env.cli(&["--socket", env.socket.to_str().unwrap(), "ban", "192.0.2.5"]);
    refused.expect_code(4);
    assert!(refused.stderr.contains("overlaps the allowlist entry 192.0.2.0/24"), "{}", refused.stderr);

    // A good config takes effect: the new allowlist lifts the ban it now covers.
    env.write_config("allowlist = [\"192.0.2.0/24\", \"198.51.100.0/24\"]");
    daemon.signal(Signal::SIGHUP);
    wait_for("the reload to succeed", Duration::from_secs(10), || {
        env.cli(&["status", "--json"]).json()["reload_error"].is_null()
    });
    assert!(env.listed().is_empty(), "the newly allowlisted ban is lifted");
    env.cli(&["ban", "198.51.100.8"]).expect_code(4);
    let log = daemon.log_text();
    assert!(log.contains("config reload failed: ") && log.contains("; keeping the previous config"), "{log}");
    assert_eq!(daemon.stop(), Some(0), "SIGTERM exits cleanly");
}

/// `banshare reload` (the unit's ExecReload) returns once the new config is in force, or
/// fails with the config's error while the old one stays; systemd hears RELOADING and
/// READY around it.
#[test]
fn reload_answers_once_the_config_is_in_force_or_with_its_error() {
    let env = Env::new("allowlist = [\"192.0.2.0/24\"]");
    let notify_path = env.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let daemon = env.spawn_daemon_with(&[("NOTIFY_SOCKET", notify_path.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"READY=1"));
    env.cli(&["ban", "198.51.100.7", "--for", "1h", "--reason", "scanner"]).expect_code(0);
    // The log line reads on its own, as `journalctl` prints it (without the fields).
    wait_for("the block's log line", Duration::from_secs(5), || {
        daemon.log_text().contains("blocked 198.51.100.7 (manual: scanner) until 20")
    });
    let socket = env.socket.to_str().unwrap().to_string();

    // Broken: exit 2 with the file, the key and what was expected; the old config stays.
    env.write_raw_config("allowlist = [\"192.0.2.0/24\", \"not-a-cidr\"]\n");
    let run = env.cli(&["--socket", &socket, "reload"]);
    run.expect_code(2);
    assert!(run.stderr.contains("previous one stays in force"), "{}", run.stderr);
    assert!(run.stderr.contains("key `allowlist[1]`"), "{}", run.stderr);
    env.cli(&["--socket", &socket, "query", "198.51.100.7"]).expect_code(0);
    // As the unit's ExecReload runs it, without --socket: the socket is read from the
    // broken file, and the daemon judges it, keeps the old config and tells `status`.
    env.write_config("allowlist = [\"not-a-cidr\"]");
    let run = env.cli(&["reload"]);
    run.expect_code(2);
    assert!(run.stderr.contains("key `allowlist[0]`"), "{}", run.stderr);
    let status = env.cli(&["--socket", &socket, "status"]);
    assert!(status.stdout.contains("last reload FAILED, previous config kept"), "{}", status.stdout);
    env.cli(&["--socket", &socket, "query", "198.51.100.7"]).expect_code(0);
    let sent: Vec<String> = (0..4)
        .map(|_| {
            let n = notify.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
        .collect();
    assert_eq!(sent, ["RELOADING=1", "READY=1", "RELOADING=1", "READY=1"]);

    // Good: in force when the command returns (the new allowlist has already lifted the
    // ban it covers), and the CLI says so.
    env.write_config("allowlist = [\"192.0.2.0/24\", \"198.51.100.0/24\"]");
    let run = env.cli(&["reload"]);
    run.expect_code(0);
    assert!(run.stdout.starts_with("reloaded: "), "{}", run.stdout);
    assert!(env.listed().is_empty(), "the newly allowlisted ban is lifted before reload returns");
    assert!(env.cli(&["status", "--json"]).json()["reload_error"].is_null());
    assert!(!run.stdout.contains("takes a restart"), "nothing that needs one changed: {}", run.stdout);
    assert_eq!(daemon.stop(), Some(0));
}

#[test]
fn a_second_daemon_on_the_same_state_refuses_and_names_the_holder() {
    let env = Env::new("");
    let first = env.spawn_daemon();
    let second = env.cli(&["run"]);
    second.expect_code(5);
    let expected = format!("another banshare daemon (pid {}) is running on this state", first.pid());
    assert!(second.stderr.contains(&expected), "{}", second.stderr);
    // The first one is unaffected.
    env.cli(&["status"]).expect_code(0);
}

#[test]
fn a_kill_9_during_a_ban_storm_loses_no_acknowledged_ban() {
    let env = Env::new("");
    let daemon = env.spawn_daemon();

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (acked, done) = (Arc::clone(&acked), Arc::clone(&done));
        let mut client = env.client();
        std::thread::spawn(move || {
            for i in 0..1000u32 {
                let target = format!("198.18.{}.{}", i / 250, i % 250 + 1);
                let request = Request::Ban {
                    target: target.clone(),
                    for_secs: Some(3600),
                    permanent: false,
                    reason: None,
                    report: false,
                    category: None,
                };
                if client.call(&request).is_err() {
                    break;
                }
                acked.lock().unwrap().push(format!("{target}/32"));
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    wait_for("300 acknowledged bans", Duration::from_secs(60), || acked.lock().unwrap().len() >= 300);
    daemon.kill_hard();
    sender.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() < 1000, "the kill landed in the middle of the storm ({} acked)", acked.len());
    assert!(env.socket.exists(), "SIGKILL leaves the socket file behind");

    // The restarted daemon replaces the stale socket and holds every acknowledged ban.
    let daemon = env.spawn_daemon();
    let listed: HashSet<String> = env.listed().into_iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|t| !listed.contains(*t)).collect();
    assert!(lost.is_empty(), "{} acknowledged bans lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    assert!(daemon.log_text().contains("replacing a stale control socket"));
    assert_eq!(daemon.stop(), Some(0));
}

#[test]
fn the_safety_rules_refuse_with_the_reason() {
    let env = Env::new("allowlist = [\"192.0.2.0/24\", \"2001:db8:aaaa::/48\"]");
    let _daemon = env.start_in_process();
    for (target, why) in [
        ("127.0.0.1", "127.0.0.1/32 is or covers a loopback address"),
        ("::1", "::1/128 is or covers a loopback address"),
        ("fe80::1", "fe80::1/128 is or covers a link-local address"),
        ("169.254.10.1", "169.254.10.1/32 is or covers a link-local address"),
        ("0.0.0.0/0", "0.0.0.0/0 is or covers a loopback address"),
        ("192.0.2.44", "192.0.2.44/32 overlaps the allowlist entry 192.0.2.0/24"),
        ("2001:db8:aaaa::5", "2001:db8:aaaa::5/128 overlaps the allowlist entry 2001:db8:aaaa::/48"),
    ] {
        let run = env.cli(&["ban", target]);
        run.expect_code(4);
        assert_eq!(run.stderr.trim(), format!("banshare: refused: {why}; banshare never blocks it"));
    }
    // The host's own addresses, as the kernel reports them.
    let own = banshare::hostaddr::host_addresses()
        .unwrap()
        .into_iter()
        .find(|a| !a.is_loopback() && !matches!(a, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local()));
    if let Some(own) = own {
        let run = env.cli(&["ban", &own.to_string()]);
        run.expect_code(4);
        assert!(run.stderr.contains("an address of this host"), "{}", run.stderr);
    }
    let q = env.cli(&["query", "127.0.0.1"]);
    q.expect_code(1);
    assert!(q.stdout.contains("127.0.0.1 is never blocked"), "{}", q.stdout);
    assert!(env.listed().is_empty());
    assert!(env.dry_run_log().iter().all(|l| l["op"] == "reconcile"), "nothing reached the firewall");
}

#[test]
fn commands_say_in_one_line_when_the_daemon_is_not_running() {
    let env = Env::new("");
    for args in
        [&["status"][..], &["list"], &["query", "203.0.113.7"], &["ban", "203.0.113.7"], &["unban", "203.0.113.7"]]
    {
        let run = env.cli(args);
        run.expect_code(3);
        assert_eq!(
            run.stderr,
            format!(
                "banshare: the daemon is not running (no listener on {}); start it with `systemctl start banshare` or `banshare run`\n",
                env.socket.display()
            )
        );
    }
}

#[test]
fn systemd_is_told_ready_reloading_and_stopping() {
    let env = Env::new("");
    let notify_path = env.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let daemon = env.spawn_daemon_with(&[("NOTIFY_SOCKET", notify_path.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("a readiness message");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.starts_with("READY=1"), "{msg}");
    env.cli(&["status"]).expect_code(0);
    daemon.signal(Signal::SIGHUP);
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"RELOADING=1");
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    daemon.signal(Signal::SIGTERM);
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn concurrent_bans_share_firewall_transactions() {
    let env = Env::new("");
    let _daemon = env.start_in_process();
    let before = env.cli(&["status", "--json"]).json()["firewall"]["batches"].as_u64().unwrap();
    let clients: Vec<_> = (0..50u32)
        .map(|c| {
            let mut client = env.client();
            std::thread::spawn(move || {
                for i in 0..10u32 {
                    let target = format!("198.19.{c}.{}", i + 1);
                    client
                        .call(&Request::Ban {
                            target,
                            for_secs: Some(600),
                            permanent: false,
                            reason: None,
                            report: false,
                            category: None,
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(env.listed().len(), 500);
    let batches = env.cli(&["status", "--json"]).json()["firewall"]["batches"].as_u64().unwrap() - before;
    eprintln!("500 concurrent bans took {batches} firewall batches");
    assert!(batches <= 250, "queued changes must share transactions: {batches} batches for 500 bans");
    let adds = env.dry_run_log().iter().filter(|l| l["op"] == "add").count();
    assert_eq!(adds, 500, "every ban reached the firewall exactly once");
}
