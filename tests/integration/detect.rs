//! Detection end to end: lines appended to a followed log become `detect` decisions in
//! the store and blocks in the firewall, across rotation and restarts.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use banshare::clock::Timestamp;

use crate::support::{Env, wait_for};

fn append(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// `n` failed passwords of `ip`, stamped now (each in its own sshd session).
fn failures(ip: &str, n: usize, pid: usize) -> Vec<String> {
    let now = Timestamp::now();
    (0..n).map(|i| format!("{now} web1 sshd[{}]: Failed password for root from {ip} port 4000 ssh2", pid + i)).collect()
}

fn decision<'a>(list: &'a serde_json::Value, target: &str) -> Option<&'a serde_json::Value> {
    list["decisions"].as_array().unwrap().iter().find(|d| d["target"] == target)
}

#[test]
fn appended_lines_become_detect_decisions_through_rotation_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("auth.log");
    // A failure from two hours ago: too old for the window, it must not count.
    let old = Timestamp(Timestamp::now().0 - 2 * 3600 * 1000);
    append(&log, &[format!("{old} web1 sshd[1]: Failed password for root from 203.0.113.7 port 1 ssh2")]);
    let env = Env::new(&format!("[[source]]\npath = {log:?}\nfilters = [\"sshd\"]\n[filter.sshd]\nmaxretry = 3\n"));
    let daemon = env.start_in_process();

    append(&log, &failures("203.0.113.7", 2, 100));
    std::thread::sleep(Duration::from_millis(300));
    assert!(env.listed().is_empty(), "two recent failures and one too old: no ban yet");
    append(&log, &failures("203.0.113.7", 1, 200));
    wait_for("the detect decision", Duration::from_secs(10), || env.listed() == ["203.0.113.7/32"]);
    let list = env.cli(&["list", "--json"]).json();
    let d = decision(&list, "203.0.113.7/32").unwrap();
    assert_eq!(d["source"], "detect");
    assert_eq!(d["category"], "ssh_bruteforce");
    assert_eq!(d["reason"], "sshd: 3 failures within 10m");
    let evidence = d["evidence"].as_array().expect("the matched lines are kept");
    assert_eq!(evidence.len(), 3);
    assert!(evidence.iter().all(|l| l.as_str().unwrap().contains("Failed password for root from 203.0.113.7")));
    let q = env.cli(&["query", "203.0.113.7"]);
    assert_eq!(q.stdout.matches("  evidence: ").count(), 3, "{}", q.stdout);
    assert!(env.dry_run_log().iter().any(|l| l["op"] == "add" && l["target"] == "203.0.113.7/32"));

    // IPv6 from detection is widened to the /64.
    append(&log, &failures("2001:db8:5:6::7", 3, 300));
    wait_for("the IPv6 ban", Duration::from_secs(10), || env.listed().contains(&"2001:db8:5:6::/64".to_string()));

    // Rotation by rename + create.
    std::fs::rename(&log, dir.path().join("auth.log.1")).unwrap();
    append(&log, &failures("203.0.113.8", 3, 400));
    wait_for("a ban from the new file", Duration::from_secs(10), || {
        env.listed().contains(&"203.0.113.8/32".to_string())
    });
    let status = env.cli(&["status", "--json"]).json();
    let source = &status["sources"][0];
    assert_eq!(source["rotations"], 1, "{status}");
    assert_eq!(source["failures"], 9, "every failure counted once: {status}");

    // Lines written while banshare is stopped are read after the restart, once.
    daemon.stop();
    append(&log, &failures("203.0.113.9", 3, 500));
    let daemon = env.start_in_process();
    wait_for("a ban from lines written while stopped", Duration::from_secs(10), || {
        env.listed().contains(&"203.0.113.9/32".to_string())
    });
    let status = env.cli(&["status", "--json"]).json();
    assert_eq!(status["sources"][0]["failures"], 3, "nothing before the checkpoint was read again: {status}");

    // A repeat offender: unbanned, caught again, banned twice as long.
    env.cli(&["unban", "203.0.113.7"]).expect_code(0);
    append(&log, &failures("203.0.113.7", 3, 600));
    wait_for("the second ban", Duration::from_secs(10), || env.listed().contains(&"203.0.113.7/32".to_string()));
    let list = env.cli(&["list", "--json"]).json();
    let d = decision(&list, "203.0.113.7/32").unwrap();
    let (created, expires) = (d["created"].as_str().unwrap(), d["expires"].as_str().unwrap());
    let secs = |t: &str| humantime::parse_rfc3339(t).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(secs(expires) - secs(created), 7200, "bantime doubled for a repeat offender");
    daemon.stop();
}

/// Appends journal entries to `file` as systemd-journal-remote writes them.
fn journal_append(file: &Path, entries: &[(&str, u32)], seq: &mut u32) {
    let mut export = String::new();
    let now = Timestamp::now().0 * 1000;
    for (message, pid) in entries {
        *seq += 1;
        export.push_str(&format!(
            "__CURSOR=s=0;i={seq}\n__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={seq}\n\
             _BOOT_ID=0123456789abcdef0123456789abcdef\n_SYSTEMD_UNIT=ssh.service\n\
             SYSLOG_IDENTIFIER=sshd\n_PID={pid}\n_HOSTNAME=web1\nMESSAGE={message}\n\n",
            now + i64::from(*seq)
        ));
    }
    let export_path = file.with_extension("export");
    std::fs::write(&export_path, export).unwrap();
    let out = std::process::Command::new("/lib/systemd/systemd-journal-remote")
        .arg(format!("--output={}", file.display()))
        .arg(&export_path)
        .output()
        .expect("systemd-journal-remote");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn journal_entries_become_detect_decisions_and_the_cursor_survives_a_restart() {
    if !crate::support::netns::privileged("journal test", &["journalctl"]) {
        return;
    }
    assert!(
        Path::new("/lib/systemd/systemd-journal-remote").exists() || std::env::var("CI").is_err(),
        "the journal test needs systemd-journal-remote (scripts/install-test-deps.sh installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("remote.journal");
    let mut seq = 0;
    let fail = |ip: &str| format!("Failed password for root from {ip} port 22 ssh2");
    journal_append(&journal, &[(&fail("203.0.113.7"), 1)], &mut seq);
    let env = Env::new(&format!(
        "[[source]]\njournal = \"_SYSTEMD_UNIT=ssh.service\"\njournal_file = {journal:?}\nfilters = [\"sshd\"]\n[filter.sshd]\nmaxretry = 3\n"
    ));
    let daemon = env.start_in_process();
    journal_append(&journal, &[(&fail("203.0.113.7"), 2), (&fail("203.0.113.7"), 3)], &mut seq);
    wait_for("a ban from the journal", Duration::from_secs(15), || env.listed() == ["203.0.113.7/32"]);
    let list = env.cli(&["list", "--json"]).json();
    assert_eq!(decision(&list, "203.0.113.7/32").unwrap()["source"], "detect");

    // Entries written while banshare is stopped are read after it, and nothing before
    // the saved cursor is counted again.
    daemon.stop();
    journal_append(
        &journal,
        &[(&fail("198.51.100.4"), 4), (&fail("198.51.100.4"), 5), (&fail("198.51.100.4"), 6)],
        &mut seq,
    );
    let _daemon = env.start_in_process();
    wait_for("a ban from entries written while stopped", Duration::from_secs(15), || {
        env.listed().contains(&"198.51.100.4/32".to_string())
    });
    wait_for("the journal source's counters", Duration::from_secs(5), || {
        env.cli(&["status", "--json"]).json()["sources"][0]["failures"] == 3
    });
}

#[test]
fn lines_read_again_after_a_crash_are_not_counted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("auth.log");
    append(&log, &[]);
    let env = Env::new(&format!(
        "[[source]]\npath = {log:?}\nfilters = [\"sshd\"]\n[filter.sshd]\nmaxretry = 3\nbantime = \"1h\"\n"
    ));
    let daemon = env.spawn_daemon();
    append(&log, &failures("203.0.113.77", 3, 100));
    wait_for("the ban", Duration::from_secs(10), || env.listed() == ["203.0.113.77/32"]);
    assert_eq!(daemon.stop(), Some(0));
    // A crash between the ban's commit and the checkpoint: the lines are read again.
    let conn = rusqlite::Connection::open(env.state_dir.join("state.db")).unwrap();
    conn.execute("DELETE FROM checkpoints", []).unwrap();
    drop(conn);
    let daemon = env.spawn_daemon();
    std::thread::sleep(Duration::from_millis(1500)); // a few reading rounds
    let q = env.cli(&["query", "203.0.113.77", "--json"]).json();
    let active = q["active"].as_array().unwrap();
    assert_eq!(active.len(), 1, "{q}");
    let seconds = |key: &str| {
        humantime::parse_rfc3339(active[0][key].as_str().unwrap())
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let length = seconds("expires") - seconds("created");
    assert!((3590..=3610).contains(&length), "still one 1 h ban, not escalated: {length} s: {q}");
    assert_eq!(daemon.stop(), Some(0));
}

#[test]
fn a_reload_puts_new_sources_filters_and_edited_fail2ban_definitions_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let (auth, app) = (dir.path().join("auth.log"), dir.path().join("app.log"));
    let f2b = dir.path().join("fail2ban");
    std::fs::create_dir_all(f2b.join("filter.d")).unwrap();
    let definition = |re: &str| {
        std::fs::write(f2b.join("filter.d/myapp.conf"), format!("[Definition]\nfailregex = {re}\n")).unwrap()
    };
    definition(r"^\s*myapp: bad login from <HOST>$");
    let config = |maxretry: u32, with_app: bool| {
        let mut c =
            format!("[[source]]\npath = {auth:?}\nfilters = [\"sshd\"]\n[filter.sshd]\nmaxretry = {maxretry}\n");
        if with_app {
            c.push_str(&format!(
                "[[source]]\npath = {app:?}\nfilters = [\"myapp\"]\n[filter.myapp]\nfail2ban = \"myapp\"\nmaxretry = 1\n[fail2ban]\ndir = {f2b:?}\n"
            ));
        }
        c
    };
    let env = Env::new(&config(5, false));
    let daemon = env.start_in_process();
    append(&auth, &failures("203.0.113.30", 2, 100));
    std::thread::sleep(Duration::from_millis(300));
    assert!(env.listed().is_empty());

    // A lower maxretry and a new source: in force when reload answers.
    env.write_config(&config(2, true));
    let run = env.cli(&["reload"]);
    run.expect_code(0);
    assert!(run.stdout.starts_with("reloaded: ") && !run.stdout.contains("takes a restart"), "{}", run.stdout);
    append(&auth, &failures("203.0.113.31", 2, 200));
    wait_for("a ban at the new maxretry", Duration::from_secs(10), || {
        env.listed().contains(&"203.0.113.31/32".to_string())
    });
    let now = Timestamp::now();
    append(&app, &[format!("{now} myapp: bad login from 203.0.113.32")]);
    wait_for("a ban from the new source", Duration::from_secs(10), || {
        env.listed().contains(&"203.0.113.32/32".to_string())
    });

    // An edited fail2ban definition, the config unchanged: reload reads it again.
    definition(r"^\s*myapp: denied <HOST>$");
    env.cli(&["reload"]).expect_code(0);
    append(&app, &[format!("{now} myapp: denied 203.0.113.33")]);
    wait_for("a ban by the edited definition", Duration::from_secs(10), || {
        env.listed().contains(&"203.0.113.33/32".to_string())
    });
    let status = env.cli(&["status", "--json"]).json();
    assert_eq!(status["sources"].as_array().unwrap().len(), 2, "the sources in force: {status}");
    daemon.stop();
}

/// An sshd log that needs fail2ban's multi-line semantics, stamped `at`, sessions
/// interleaved: an attacker with one wrong password per connection (5), an agent that
/// offers two keys and logs in (no failure), a key scanner cut off for too many
/// failures (5, the address only on the session's earlier line), one short of the
/// threshold (4), and IPv6 addresses of one /64 with one failure each.
fn multi_line_log(at: Timestamp) -> Vec<String> {
    let mut lines = Vec::new();
    for round in 0..5 {
        let pid = |k: usize| 1000 + round * 10 + k;
        let mut session = vec![
            (pid(0), "Failed password for root from 203.0.113.10 port 4000 ssh2".to_string()),
            (pid(1), "Failed publickey for git from 203.0.113.11 port 4001 ssh2: RSA SHA256:a".into()),
            (pid(2), "Failed publickey for root from 203.0.113.12 port 4002 ssh2: RSA SHA256:b".into()),
            (pid(1), "Failed publickey for git from 203.0.113.11 port 4001 ssh2: ED25519 SHA256:c".into()),
            (pid(1), "Accepted publickey for git from 203.0.113.11 port 4001 ssh2: ED25519 SHA256:d".into()),
            (pid(2), "Disconnecting: Too many authentication failures for root [preauth]".into()),
            (pid(3), format!("Failed password for root from 2001:db8:9:9::{} port 4003 ssh2", round + 1)),
        ];
        if round < 4 {
            session.push((pid(4), "Failed password for admin from 203.0.113.13 port 4004 ssh2".into()));
        }
        lines.extend(session.into_iter().map(|(pid, msg)| format!("{at} web1 sshd[{pid}]: {msg}")));
    }
    lines
}

#[test]
fn the_daemon_and_scan_decide_the_same_bans_from_the_same_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("auth.log");
    append(&log, &multi_line_log(Timestamp(Timestamp::now().0 - 5_000)));
    let env = Env::new(&format!("[[source]]\npath = {log:?}\nfilters = [\"sshd\"]\n"));

    let scan = env.cli(&["scan", "--filter", "sshd", "--json", log.to_str().unwrap()]).json();
    let sshd = &scan["filters"][0];
    let mut scanned: Vec<String> =
        sshd["bans"].as_array().unwrap().iter().map(|b| format!("{}/32", b["target"].as_str().unwrap())).collect();
    scanned.sort();
    assert_eq!(scanned, ["203.0.113.10/32", "203.0.113.12/32"], "{scan}");
    let scan_failures: u64 = sshd["failures"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(scan_failures, 5 + 5 + 4 + 5, "{scan}");

    let daemon = env.start_in_process();
    wait_for("the daemon's bans", Duration::from_secs(10), || env.listed().len() >= 2);
    std::thread::sleep(Duration::from_millis(500)); // no third ban on the way
    let mut listed = env.listed();
    listed.sort();
    assert_eq!(listed, scanned, "the daemon bans what scan says it would");
    let status = env.cli(&["status", "--json"]).json();
    assert_eq!(status["sources"][0]["failures"], scan_failures, "the same failures counted: {status}");
    daemon.stop();
}
