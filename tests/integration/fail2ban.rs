//! banshare as a fail2ban action, against Debian's real fail2ban-server: block mode in a
//! network namespace with nftables, report mode beside another banaction, and following
//! fail2ban.log without touching any jail.

use std::time::Duration;

use banshare::decision::Source;
use serde_json::Value;

use crate::support::emulator::Emulator;
use crate::support::fail2ban::Fail2ban;
use crate::support::netns::{Netns, privileged};
use crate::support::{BIN, Env, wait_for};

fn listed_fail2ban(env: &Env) -> Vec<Value> {
    let run = env.cli(&["list", "--source", "fail2ban", "--json"]);
    run.expect_code(0);
    run.json()["decisions"].as_array().unwrap().clone()
}

/// Whether the namespace's nftables set of fail2ban bans holds `ip`.
fn in_set(ns: &Netns, ip: &str) -> bool {
    let out = ns.exec(&["nft", "list", "set", "inet", "banshare", "fail2ban_v4"]);
    out.stdout.contains(ip)
}

/// fail2ban decisions in the state database, read directly (the daemon is down).
fn stored_fail2ban(env: &Env) -> usize {
    let store = banshare::store::Store::open(&env.state_dir.join("state.db")).unwrap();
    store.active(Some(Source::Fail2ban), banshare::clock::Timestamp::now()).unwrap().len()
}

#[test]
fn block_mode_bans_reports_survives_restarts_and_unbans() {
    if !privileged("fail2ban block-mode test", &["nft", "fail2ban-server"]) {
        return;
    }
    let ns = Netns::new("f2b");
    let emu = Emulator::start_in(&ns.name);
    let env = Env::new("");
    let section = env.feed_section(&emu.url(), "pull = false");
    env.write_config_for("nftables", &section);
    let daemon = env.spawn_daemon_in(&ns);
    let mut f2b =
        Fail2ban::new(&format!("banshare[banshare={BIN}, mode=block]"), &[("BANSHARE_CONFIG", &env.config_path)]);
    f2b.start();

    // Five failures: fail2ban bans, banshare blocks in the kernel and reports once.
    f2b.failures("45.155.205.7", 5);
    wait_for("the block", Duration::from_secs(20), || in_set(&ns, "45.155.205.7"));
    let listed = listed_fail2ban(&env);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["reason"], "fail2ban jail sshd: 5 failures");
    assert_eq!(listed[0]["enforced"], true);
    wait_for("the report", Duration::from_secs(10), || emu.reports().len() == 1);
    let body = emu.reports()[0].body.clone();
    assert_eq!(body["ip"], "45.155.205.7");
    assert_eq!(body["category"], "ssh_bruteforce");
    assert_eq!(
        (body["source"].as_str(), body["jail"].as_str(), body["failures"].as_u64()),
        (Some("fail2ban"), Some("sshd"), Some(5))
    );
    let evidence = body["evidence"].as_array().unwrap();
    assert_eq!(evidence.len(), 5);
    for line in evidence {
        let line = line.as_str().unwrap();
        assert!(!line.contains("web1") && !line.contains("oracle"), "not sanitised: {line}");
    }

    // fail2ban restarts and restores its ban: recorded, not reported again.
    f2b.stop();
    f2b.start();
    wait_for("the restored ban", Duration::from_secs(20), || f2b.log_text().contains("Restore Ban 45.155.205.7"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(emu.reports().len(), 1, "a restored ban is not reported");
    assert!(in_set(&ns, "45.155.205.7"));

    // banshare is down while fail2ban bans three more: nothing is lost.
    assert_eq!(daemon.stop(), Some(0));
    for ip in ["45.155.205.8", "45.155.205.9", "45.155.205.10"] {
        f2b.failures(ip, 5);
    }
    wait_for("the offline writes", Duration::from_secs(30), || stored_fail2ban(&env) == 4);
    let daemon = env.spawn_daemon_in(&ns);
    wait_for("the three reports", Duration::from_secs(20), || emu.reports().len() == 4);
    let mut later: Vec<String> = emu.reported_ips()[1..].to_vec();
    later.sort();
    assert_eq!(later, ["45.155.205.10", "45.155.205.8", "45.155.205.9"]);
    for ip in ["45.155.205.8", "45.155.205.9", "45.155.205.10"] {
        assert!(in_set(&ns, ip), "{ip} blocked after the daemon's start");
    }

    // Unban in fail2ban: the block is gone.
    f2b.client(&["set", "sshd", "unbanip", "45.155.205.7"]).expect("unbanip");
    wait_for("the unblock", Duration::from_secs(20), || !in_set(&ns, "45.155.205.7"));
    assert_eq!(listed_fail2ban(&env).len(), 3);
    // fail2ban's unban is not an operator's: the feed may list it again.
    let q = env.cli(&["query", "45.155.205.7", "--json"]).json();
    assert_eq!(q["blocked"], false);
    f2b.stop();
    daemon.stop();
}

#[test]
fn report_mode_records_and_reports_while_fail2ban_blocks() {
    if !privileged("fail2ban report-mode test", &["fail2ban-server"]) {
        return;
    }
    let emu = Emulator::start();
    let env = Env::new("");
    let section = env.feed_section(&emu.url(), "pull = false");
    env.write_config(&section);
    let _daemon = env.start_in_process();
    let mut f2b = Fail2ban::new(
        &format!("dummy[target=DUMMY]\n         banshare[banshare={BIN}, category=web_attack]"),
        &[("BANSHARE_CONFIG", &env.config_path)],
    );
    f2b.start();
    f2b.failures("45.155.205.20", 5);
    wait_for("the report", Duration::from_secs(20), || emu.reports().len() == 1);
    assert_eq!(emu.reports()[0].body["category"], "web_attack", "the action's category wins");
    let listed = listed_fail2ban(&env);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["enforced"], false, "fail2ban's banaction blocks it, not banshare");
    let dummy = std::fs::read_to_string(f2b.dir.path().join("dummy")).unwrap_or_default();
    assert!(dummy.contains("+45.155.205.20"), "the jail's own banaction ran: {dummy:?}");
    assert!(
        env.dry_run_log().iter().all(|op| !op.to_string().contains("45.155.205.20")),
        "banshare's firewall was not asked to block it"
    );
    f2b.client(&["set", "sshd", "unbanip", "45.155.205.20"]).expect("unbanip");
    wait_for("the record to end", Duration::from_secs(20), || listed_fail2ban(&env).is_empty());
}

#[test]
fn following_fail2ban_log_reports_bans_but_not_restored_ones() {
    if !privileged("fail2ban log-following test", &["fail2ban-server"]) {
        return;
    }
    let emu = Emulator::start();
    let mut f2b = Fail2ban::new("dummy[target=DUMMY]", &[]);
    let env = Env::new("");
    let section = env.feed_section(&emu.url(), "pull = false");
    env.write_config(&format!("[[source]]\npath = {:?}\nfilters = [\"fail2ban\"]\n{section}", f2b.log_path()));
    let _daemon = env.start_in_process();
    f2b.start();
    f2b.failures("45.155.205.30", 5);
    wait_for("the report", Duration::from_secs(20), || emu.reports().len() == 1);
    let body = &emu.reports()[0].body;
    assert_eq!((body["ip"].as_str(), body["jail"].as_str()), (Some("45.155.205.30"), Some("sshd")));
    assert_eq!(body["category"], "ssh_bruteforce");
    assert_eq!(listed_fail2ban(&env).len(), 1);

    f2b.stop();
    f2b.start();
    wait_for("the restored ban", Duration::from_secs(20), || f2b.log_text().contains("Restore Ban 45.155.205.30"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(emu.reports().len(), 1, "restored bans are not reported");
    f2b.client(&["set", "sshd", "unbanip", "45.155.205.30"]).expect("unbanip");
    wait_for("the Unban line to end the record", Duration::from_secs(20), || listed_fail2ban(&env).is_empty());
}

/// The journal's lines that tell of `ip`, from the daemon's log.
fn lines_about(log: &str, ip: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(&format!("recorded {ip} ")) || l.contains(&format!("blocked {ip} ")))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_ban_told_by_the_action_and_by_fail2ban_log_is_one_decision_one_line_one_report() {
    if !privileged("fail2ban action + log test", &["fail2ban-server"]) {
        return;
    }
    let emu = Emulator::start();
    let env = Env::new("");
    let mut f2b = Fail2ban::new(
        &format!("dummy[target=DUMMY]\n         banshare[banshare={BIN}]"),
        &[("BANSHARE_CONFIG", &env.config_path)],
    );
    let section = env.feed_section(&emu.url(), "pull = false");
    // The default config follows fail2ban.log as well as taking the action's events.
    env.write_config(&format!("[[source]]\npath = {:?}\nfilters = [\"fail2ban\"]\n{section}", f2b.log_path()));
    let daemon = env.spawn_daemon();
    f2b.start();
    for ip in ["45.155.205.40", "45.155.205.41", "45.155.205.42"] {
        f2b.failures(ip, 5);
    }
    wait_for("the three reports", Duration::from_secs(30), || emu.reports().len() == 3);
    wait_for("fail2ban's three Ban lines", Duration::from_secs(10), || {
        f2b.log_text().matches("] Ban 45.155.205.4").count() == 3
    });
    // Both tellings have arrived: the action ran after each Ban line, and the follower
    // reads within a second.
    std::thread::sleep(Duration::from_secs(3));
    let log = daemon.log_text();
    for ip in ["45.155.205.40", "45.155.205.41", "45.155.205.42"] {
        let lines = lines_about(&log, ip);
        assert_eq!(lines.len(), 1, "one journal line for the ban of {ip}: {lines:#?}\n{log}\n{}", f2b.log_text());
        assert!(lines[0].contains(&format!("recorded {ip} (fail2ban: fail2ban jail sshd")), "{}", lines[0]);
    }
    assert_eq!(listed_fail2ban(&env).len(), 3, "one decision per ban");
    assert_eq!(emu.reports().len(), 3, "one report per ban");

    // An unban and a new ban of the same address: a new ban, logged again.
    f2b.client(&["set", "sshd", "unbanip", "45.155.205.40"]).expect("unbanip");
    wait_for("the unban", Duration::from_secs(20), || listed_fail2ban(&env).len() == 2);
    f2b.failures("45.155.205.40", 5);
    wait_for("the second ban", Duration::from_secs(20), || listed_fail2ban(&env).len() == 3);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lines_about(&daemon.log_text(), "45.155.205.40").len(), 2, "{}", daemon.log_text());
    f2b.stop();
    daemon.stop();
}

#[test]
fn the_hook_validates_and_never_needs_the_daemon() {
    let emu = Emulator::start();
    let env = Env::new("");
    let section = env.feed_section(&emu.url(), "pull = false");
    env.write_config(&section);
    // A bad address: exit 2, one line fail2ban logs.
    let bad = env.cli(&["report", "--ip", "300.1.1.1", "--jail", "sshd"]);
    bad.expect_code(2);
    assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);
    env.cli(&["report", "--ip", "127.0.0.1", "--jail", "sshd"]).expect_code(4);
    // Matches arrive with newlines and shell characters: data only.
    let matches = "line one $(touch /tmp/pwned) `id`\nline two; rm -rf /";
    let offline = env.cli(&[
        "report",
        "--ip",
        "45.155.205.40",
        "--jail",
        "sshd",
        "--failures",
        "5",
        "--bantime",
        "-1",
        "--matches",
        matches,
    ]);
    offline.expect_code(0);
    assert!(offline.stdout.contains("saved for its next start"), "{}", offline.stdout);
    assert!(!std::path::Path::new("/tmp/pwned").exists());
    let _daemon = env.start_in_process();
    wait_for("the report after start", Duration::from_secs(10), || emu.reports().len() == 1);
    let body = &emu.reports()[0].body;
    assert_eq!(body["evidence"][0], "line one $(touch /tmp/pwned) `id`");
    let listed = listed_fail2ban(&env);
    assert!(listed[0]["expires"].is_null(), "bantime -1 is permanent");
    let online = env.cli(&["report", "--ip", "45.155.205.41", "--jail", "postfix-sasl"]);
    online.expect_code(0);
    assert_eq!(online.stdout.trim(), "45.155.205.41: recorded and reported");
    wait_for("the second report", Duration::from_secs(10), || emu.reports().len() == 2);
    assert_eq!(emu.reports()[1].body["category"], "mail_bruteforce");
}
