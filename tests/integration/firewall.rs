//! The firewall backends against the real kernel, inside throwaway network namespaces.
//! Every behaviour is checked for both backends with the same test body.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::netns::{BACKENDS, LISTENER, Netns, privileged, tools, veth_pair};
use crate::support::{Env, wait_for};

/// Whether a TCP connection from `ns` to `addr`:8080 succeeds within a second.
fn connects(ns: &Netns, addr: &str) -> bool {
    let probe = "import socket, sys\nsocket.create_connection((sys.argv[1], 8080), timeout=1).close()";
    ns.exec(&["python3", "-c", probe, addr]).code == 0
}

/// The kernel timeout of `target`'s element in seconds (`Some(0)`: no timeout), or
/// `None` when the kernel does not hold it.
fn kernel_timeout(backend: &str, ns: &Netns, target: &str) -> Option<u64> {
    if backend == "nftables" {
        let out = ns.exec(&["nft", "-j", "list", "table", "inet", "banshare"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        let sets = v["nftables"].as_array()?.iter().filter_map(|o| o.get("set"));
        for set in sets {
            for e in set["elem"].as_array().into_iter().flatten() {
                let (val, timeout) = match e.get("elem") {
                    Some(inner) => (inner["val"].clone(), inner["timeout"].as_u64().unwrap_or(0)),
                    None => (e.clone(), 0),
                };
                let shown = match &val {
                    serde_json::Value::String(s) => s.clone(),
                    other => format!("{}/{}", other["prefix"]["addr"].as_str()?, other["prefix"]["len"]),
                };
                if shown == target {
                    return Some(timeout);
                }
            }
        }
        None
    } else {
        let set = if target.contains(':') { "banshare-v6" } else { "banshare-v4" };
        let out = ns.exec(&["ipset", "list", set]);
        let wanted = target.to_string();
        out.stdout.lines().find_map(|l| {
            let mut cols = l.split_whitespace();
            let addr = cols.next()?;
            (addr == wanted || addr == format!("{wanted}/32") || addr == format!("{wanted}/128"))
                .then(|| cols.skip_while(|c| *c != "timeout").nth(1).and_then(|t| t.parse().ok()).unwrap_or(0))
        })
    }
}

#[test]
fn packets_from_a_banned_address_are_dropped_until_unban_or_expiry() {
    for backend in BACKENDS {
        if !privileged("packet test", tools(backend)) || !privileged("packet test", &["python3"]) {
            return;
        }
        let env = Env::with_backend(backend, "");
        let (server, client) = veth_pair();
        let _listener = server.spawn(&["python3", "-c", LISTENER]);
        wait_for("the listener", Duration::from_secs(10), || connects(&client, "10.77.0.1"));
        let daemon = env.spawn_daemon_in(&server);

        for (peer, server_addr) in [("10.77.0.2", "10.77.0.1"), ("fd77::2", "fd77::1")] {
            assert!(connects(&client, server_addr), "{backend}: {peer} connects before any ban");
            env.cli(&["ban", peer, "--for", "1h"]).expect_code(0);
            assert!(!connects(&client, server_addr), "{backend}: {peer} is blocked once banned");
            env.cli(&["unban", peer]).expect_code(0);
            assert!(connects(&client, server_addr), "{backend}: {peer} connects again after unban");

            env.cli(&["ban", peer, "--for", "2s"]).expect_code(0);
            let banned_at = Instant::now();
            assert!(!connects(&client, server_addr), "{backend}: {peer} is blocked by a 2 s ban");
            wait_for("the 2 s ban to lift", Duration::from_secs(10), || connects(&client, server_addr));
            assert!(banned_at.elapsed() >= Duration::from_millis(1900), "{backend}: lifted early");
        }
        let status = env.cli(&["status", "--json"]).json();
        let dropped: u64 =
            status["firewall"]["sets"].as_array().unwrap().iter().map(|s| s["packets"].as_u64().unwrap()).sum();
        assert!(dropped > 0, "{backend}: the drop counters saw the blocked SYNs: {status}");
        assert_eq!(daemon.stop(), Some(0));
    }
}

#[test]
fn kernel_timeouts_match_and_blocks_survive_flushes_and_restarts_without_a_gap() {
    for backend in BACKENDS {
        if !privileged("expiry test", tools(backend)) {
            return;
        }
        let env = Env::with_backend(backend, "");
        let ns = Netns::new("fw");
        let daemon = env.spawn_daemon_in(&ns);
        env.cli(&["ban", "203.0.113.7", "--for", "1h"]).expect_code(0);
        env.cli(&["ban", "198.51.100.0/24", "--for", "permanent"]).expect_code(0);
        let timeout = kernel_timeout(backend, &ns, "203.0.113.7").expect("the element is in the kernel");
        assert!((3590..=3600).contains(&timeout), "{backend}: kernel timeout {timeout} s for a 1 h ban");
        assert_eq!(
            kernel_timeout(backend, &ns, "198.51.100.0/24"),
            Some(0),
            "{backend}: a permanent ban has no timeout"
        );

        // Someone flushes the firewall: banshare restores every block within 10 s.
        if backend == "nftables" {
            ns.exec(&["nft", "flush", "ruleset"]).expect_code(0);
        } else {
            for (tool, set) in [("iptables", "banshare-v4"), ("ip6tables", "banshare-v6")] {
                ns.exec(&[tool, "-F", "INPUT"]).expect_code(0);
                ns.exec(&[tool, "-F", "FORWARD"]).expect_code(0);
                ns.exec(&["ipset", "destroy", set]).expect_code(0);
            }
        }
        assert_eq!(kernel_timeout(backend, &ns, "203.0.113.7"), None);
        let flushed = Instant::now();
        wait_for("the blocks to come back", Duration::from_secs(10), || {
            kernel_timeout(backend, &ns, "203.0.113.7").is_some()
                && kernel_timeout(backend, &ns, "198.51.100.0/24").is_some()
        });
        eprintln!("{backend}: restored {:?} after the flush", flushed.elapsed());

        // A restart: the block never leaves the kernel, not even for a moment.
        let gaps = Arc::new(AtomicUsize::new(0));
        let polls = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (gaps, polls, done, name) = (gaps.clone(), polls.clone(), done.clone(), ns.name.clone());
            let backend = backend.to_string();
            std::thread::spawn(move || {
                let ns = Netns { name };
                while !done.load(Ordering::SeqCst) {
                    if kernel_timeout(&backend, &ns, "203.0.113.7").is_none() {
                        gaps.fetch_add(1, Ordering::SeqCst);
                    }
                    polls.fetch_add(1, Ordering::SeqCst);
                }
                std::mem::forget(ns); // owned by the test, not by this thread
            })
        };
        assert_eq!(daemon.stop(), Some(0));
        assert!(
            kernel_timeout(backend, &ns, "203.0.113.7").is_some(),
            "{backend}: stopping leaves the blocks in place"
        );
        let daemon = env.spawn_daemon_in(&ns);
        env.cli(&["status"]).expect_code(0);
        done.store(true, Ordering::SeqCst);
        watcher.join().unwrap();
        assert!(polls.load(Ordering::SeqCst) > 2, "the watcher looked during the restart");
        assert_eq!(gaps.load(Ordering::SeqCst), 0, "{backend}: the block was missing during the restart");
        daemon.signal(Signal::SIGTERM);
    }
}

#[test]
fn import_show_and_teardown() {
    for backend in BACKENDS {
        if !privileged("import test", tools(backend)) {
            return;
        }
        let env = Env::with_backend(backend, "allowlist = [\"192.0.2.0/24\"]");
        let ns = Netns::new("imp");
        let _daemon = env.spawn_daemon_in(&ns);
        let mut list = String::from("# migrated blocklist\n192.0.2.10\nnot-an-address\n");
        for i in 0..1000u32 {
            list.push_str(&format!("198.18.{}.{}\n", i / 250, i % 250 + 1));
        }
        list.push_str("2001:db8:99::/48 # a v6 range\n");
        let file = env.dir.path().join("blocklist.txt");
        std::fs::write(&file, list).unwrap();
        let run = env.cli(&["import", file.to_str().unwrap(), "--for", "1d", "--reason", "migrated"]);
        run.expect_code(2); // one invalid line, the rest imported
        assert!(run.stdout.starts_with("imported 1001 new, 0 extended, 0 already banned; 1 refused by the safety rules; 1 invalid lines skipped"), "{}", run.stdout);
        assert!(run.stderr.contains("line 3: `not-an-address` is not an IP address"), "{}", run.stderr);
        assert!(
            run.stdout.contains("refused: 192.0.2.10/32 overlaps the allowlist entry 192.0.2.0/24"),
            "{}",
            run.stdout
        );
        assert_eq!(env.listed().len(), 1001);

        let show = Env::cli_in(&env, &ns, &["firewall", "show", "--json"]);
        show.expect_code(0);
        let elements: u64 = show.json().as_array().unwrap().iter().map(|s| s["elements"].as_u64().unwrap()).sum();
        assert_eq!(elements, 1001, "{backend}: {}", show.stdout);
        assert!(kernel_timeout(backend, &ns, "198.18.3.250").is_some());
        assert!(kernel_timeout(backend, &ns, "192.0.2.10").is_none(), "allowlisted never reaches the kernel");

        // The JSON of `list` imports back; on top of itself with a shorter length it
        // changes nothing (a ban is never shortened).
        let listed = env.dir.path().join("list.json");
        std::fs::write(&listed, env.cli(&["list", "--json"]).stdout).unwrap();
        let again = env.cli(&["import", listed.to_str().unwrap(), "--for", "1h"]);
        again.expect_code(0);
        assert!(again.stdout.starts_with("imported 0 new, 0 extended, 1001 already banned"), "{}", again.stdout);

        drop(_daemon);
        let teardown = Env::cli_in(&env, &ns, &["firewall", "teardown"]);
        teardown.expect_code(0);
        assert_eq!(teardown.stdout, format!("removed banshare's {backend} rules and sets\n"));
        assert!(kernel_timeout(backend, &ns, "198.18.0.1").is_none());
        let nothing = Env::cli_in(&env, &ns, &["firewall", "teardown"]);
        assert_eq!(nothing.stdout, "nothing of banshare's was in the kernel\n");
    }
}

#[test]
fn a_missing_backend_tool_is_one_clear_line() {
    let env = Env::with_backend("nftables", "");
    let out = std::process::Command::new(crate::support::BIN)
        .arg("run")
        .env("BANSHARE_CONFIG", &env.config_path)
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap(),
        "banshare: firewall: `nft` is not installed (apt install nftables)"
    );
}

#[test]
fn ipset_rules_also_guard_docker_published_ports() {
    if !privileged("DOCKER-USER test", tools("ipset")) {
        return;
    }
    let env = Env::with_backend("ipset", "");
    let ns = Netns::new("dock");
    for tool in ["iptables", "ip6tables"] {
        ns.exec(&[tool, "-N", "DOCKER-USER"]).expect_code(0);
    }
    let daemon = env.spawn_daemon_in(&ns);
    for (tool, set) in [("iptables", "banshare-v4"), ("ip6tables", "banshare-v6")] {
        for chain in ["INPUT", "FORWARD", "DOCKER-USER"] {
            let rule = ["-C", chain, "-m", "set", "--match-set", set, "src", "-j", "DROP"];
            ns.exec(&[&[tool][..], &rule[..]].concat()).expect_code(0);
        }
    }
    // Rules are inserted once: a restart does not duplicate them.
    assert_eq!(daemon.stop(), Some(0));
    let _daemon = env.spawn_daemon_in(&ns);
    let rules = ns.exec(&["iptables", "-S", "INPUT"]).stdout;
    assert_eq!(rules.matches("banshare-v4").count(), 1, "{rules}");
}
