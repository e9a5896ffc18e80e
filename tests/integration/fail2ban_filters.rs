//! fail2ban's filter definitions run by banshare: in the daemon (`[filter.NAME] fail2ban =
//! "..."`) and in `banshare scan --fail2ban-filter`, and the errors for what banshare
//! cannot run.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use banshare::clock::Timestamp;

use crate::support::{Env, wait_for};

/// Debian's fail2ban definitions (the suite installs fail2ban).
fn fail2ban_installed() -> bool {
    if Path::new("/etc/fail2ban/filter.d/sshd.conf").is_file() {
        return true;
    }
    let message = "fail2ban definition tests need Debian's fail2ban (run scripts/test.sh as root)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    false
}

fn append(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

#[test]
fn the_daemon_runs_fail2bans_sshd_definition_with_its_sessions() {
    if !fail2ban_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("auth.log");
    let env = Env::new(&format!(
        "[[source]]\npath = {log:?}\nfilters = [\"sshd\"]\n[filter.sshd]\nfail2ban = \"sshd\"\nmaxretry = 3\n"
    ));
    let daemon = env.start_in_process();
    let now = Timestamp::now();
    // A user whose agent offers three keys before the right one: fail2ban's sshd filter
    // counts none of it (the login succeeded), so neither does banshare.
    let mut lines = Vec::new();
    for pid in 100..103 {
        lines.push(format!(
            "{now} web1 sshd[{pid}]: Failed publickey for git from 203.0.113.20 port 5000 ssh2: ED25519 SHA256:x"
        ));
        lines.push(format!(
            "{now} web1 sshd[{pid}]: Accepted publickey for git from 203.0.113.20 port 5000 ssh2: ED25519 SHA256:y"
        ));
    }
    // Three wrong passwords, each in its own connection.
    for pid in 200..203 {
        lines.push(format!("{now} web1 sshd[{pid}]: Failed password for root from 203.0.113.21 port 5001 ssh2"));
    }
    append(&log, &lines);
    wait_for("the ban", Duration::from_secs(10), || env.listed().contains(&"203.0.113.21/32".to_string()));
    assert_eq!(env.listed(), ["203.0.113.21/32"], "the successful publickey logins are not failures");
    let list = env.cli(&["list", "--json"]).json();
    let d = &list["decisions"][0];
    assert_eq!(d["category"], "ssh_bruteforce");
    assert_eq!(d["reason"], "sshd: 3 failures within 10m");
    let status = env.cli(&["status", "--json"]).json();
    assert_eq!(status["sources"][0]["failures"], 3, "{status}");
    daemon.stop();
}

/// A fail2ban directory with one definition per name.
fn definitions(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("filter.d")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("filter.d").join(name), text).unwrap();
    }
    dir
}

#[test]
fn scan_runs_a_definition_with_its_options() {
    if !fail2ban_installed() {
        return;
    }
    let env = Env::new("");
    let log = env.dir.path().join("auth.log");
    std::fs::write(
        &log,
        "Nov 23 10:00:01 web1 sshd[5]: Did not receive identification string from 192.0.2.9 port 4000\n\
         Nov 23 10:00:02 web1 sshd[6]: Failed password for invalid user admin from 192.0.2.10 port 4001 ssh2\n",
    )
    .unwrap();
    let scan = |filter: &str| {
        env.cli(&["scan", "--fail2ban-filter", filter, "--json", log.to_str().unwrap()]).json()["filters"][0]["failures"]
            .clone()
    };
    let normal = scan("sshd");
    assert_eq!(normal, serde_json::json!({"192.0.2.10": 1}));
    let aggressive = scan("sshd[mode=aggressive]");
    assert_eq!(aggressive, serde_json::json!({"192.0.2.9": 1, "192.0.2.10": 1}));
    let shown = env.cli(&["scan", "--fail2ban-filter", "sshd", "--show-missed", log.to_str().unwrap()]);
    assert!(shown.stdout.starts_with("Nov 23 10:00:01 web1 sshd[5]: Did not receive"), "{}", shown.stdout);
}

#[test]
fn what_banshare_cannot_run_is_an_error_naming_file_line_and_construct() {
    let dir = definitions(&[
        ("loop-a.conf", "[INCLUDES]\nbefore = loop-b.conf\n[Definition]\nfailregex = x <HOST>\n"),
        ("loop-b.conf", "[INCLUDES]\nbefore = loop-a.conf\n"),
        ("gone.conf", "[INCLUDES]\nbefore = common.conf\n[Definition]\nfailregex = x <HOST>\n"),
        ("badre.conf", "[Definition]\n\nfailregex = ^ok <HOST>$\n            ^(unclosed <HOST>\n"),
        ("nohost.conf", "[Definition]\nfailregex = ^login failed for \\S+$\n"),
        ("badflag.conf", "[Definition]\nfailregex = (?a)^x <HOST>\n"),
        ("baddate.conf", "[Definition]\nfailregex = ^x <HOST>\ndatepattern = %%Q\n"),
        ("badmax.conf", "[Definition]\nfailregex = ^x <HOST>\nmaxlines = many\n"),
        ("syntax.conf", "[Definition]\nfailregex\n"),
        ("runaway.conf", "[Definition]\nfailregex = ^(a+)+b <HOST>\n"),
    ]);
    let env = Env::new(&format!("[fail2ban]\ndir = {:?}\n", dir.path()));
    let d = dir.path().join("filter.d").display().to_string();
    let log = env.dir.path().join("x.log");
    std::fs::write(&log, format!("{}c 192.0.2.1\n", "a".repeat(40))).unwrap();
    let fails = |filter: &str| {
        let run = env.cli(&["scan", "--fail2ban-filter", filter, log.to_str().unwrap()]);
        run.expect_code(2);
        run.stderr
    };
    for (filter, says) in [
        ("nosuch", format!("--fail2ban-filter nosuch: {d}/nosuch.conf: no such file")),
        ("loop-a", format!("{d}/loop-a.conf: include loop: {d}/loop-a.conf -> {d}/loop-b.conf -> {d}/loop-a.conf")),
        ("gone", format!("{d}/gone.conf:2: includes {d}/common.conf, which does not exist")),
        ("badre", format!("{d}/badre.conf:3: `^(unclosed <HOST>`: PCRE2: error compiling pattern")),
        ("nohost", format!("{d}/nohost.conf:2: failregex `^login failed for \\S+$` has no <HOST>")),
        (
            "badflag",
            format!(
                "{d}/badflag.conf:2: `(?a)^x <HOST>`: the flag group `(?a` (ASCII or locale matching) has no PCRE2 equivalent"
            ),
        ),
        ("baddate", format!("{d}/baddate.conf: datepattern `%Q`: `%Q` is not a date field banshare reads")),
        ("badmax", format!("{d}/badmax.conf:3: maxlines: expected a number from 1 to 1000, not `many`")),
        ("syntax", format!("{d}/syntax.conf:2: `failregex`: expected `key = value`")),
        ("sshd[mode=x", "--fail2ban-filter sshd[mode=x: `sshd[mode=x`: the options need a closing `]`".to_string()),
    ] {
        let got = fails(filter);
        assert!(got.contains(&says), "{filter}: want {says:?}, got {got:?}");
    }
    // A pattern that would backtrack without end on a line is stopped, counted, skipped.
    let run = env.cli(&["scan", "--fail2ban-filter", "runaway", "--json", log.to_str().unwrap()]);
    run.expect_code(0);
    let lines = &run.json()["lines"];
    assert_eq!((lines["read"].as_u64(), lines["match_limit"].as_u64()), (Some(1), Some(1)), "{lines}");

    // The same errors in the config name the key.
    let bad = Env::new(&format!("[fail2ban]\ndir = {:?}\n[filter.web]\nfail2ban = \"nohost\"\n", dir.path()));
    let run = bad.cli(&["scan", log.to_str().unwrap()]);
    assert!(
        run.stderr.contains("key `filter.web.fail2ban`: expected a fail2ban filter definition banshare can run")
            && run.stderr.contains("nohost.conf:2: failregex"),
        "{}",
        run.stderr
    );
    let bad = Env::new("[filter.sshd]\nfail2ban = \"sshd\"\nmode = \"aggressive\"\n");
    let run = bad.cli(&["scan", log.to_str().unwrap()]);
    assert!(run.stderr.contains("key `filter.sshd.mode`: expected nothing beside `fail2ban`"), "{}", run.stderr);
    let bad = Env::new("[fail2ban]\ndir = \"etc/fail2ban\"\n");
    let run = bad.cli(&["scan", log.to_str().unwrap()]);
    assert!(run.stderr.contains("key `fail2ban.dir`: expected an absolute path"), "{}", run.stderr);
}

/// A copy of Debian's fail2ban configuration with `jail_local` as its jail.local.
fn fail2ban_copy(jail_local: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp").args(["-r", "/etc/fail2ban/."]).arg(dir.path()).status().unwrap();
    assert!(status.success(), "copy /etc/fail2ban");
    std::fs::write(dir.path().join("jail.local"), jail_local).unwrap();
    dir
}

#[test]
fn fail2ban_jails_become_banshare_config_that_detects_the_same_attacks() {
    if !fail2ban_installed() {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let auth = logs.path().join("auth.log");
    let f2b = fail2ban_copy(&format!(
        "[DEFAULT]\nignoreip = 127.0.0.1/8 ::1 192.0.2.0/24 trusted.example.org\nbantime.increment = true\nbantime.maxtime = 1w\n\n\
         [sshd]\nenabled = true\nmode = aggressive\nlogpath = {}\nmaxretry = 3\nfindtime = 10m\nbantime = 2h\n\n\
         [nginx-http-auth]\nenabled = true\nlogpath = {}/nginx/error.log\nbantime = -1\n\n\
         [postfix]\nenabled = true\nbackend = systemd\n\n[dovecot]\nenabled = false\n",
        auth.display(),
        logs.path().display()
    ));
    let env = Env::new("");
    let run = env.cli(&["fail2ban", "jails", "--dir", f2b.path().to_str().unwrap()]);
    run.expect_code(0);
    let toml = run.stdout.clone();
    for want in [
        "allowlist = [\"127.0.0.1/8\", \"::1\", \"192.0.2.0/24\"]".to_string(),
        "# not carried over: ignoreip `trusted.example.org`: not an address or network".to_string(),
        "[detect]\nbantime_factor = 2\nbantime_max = \"1w\"".to_string(),
        format!("[[source]]\npath = \"{}\"\nfilters = [\"sshd\"]", auth.display()),
        "[filter.sshd]\nfail2ban = \"sshd[mode=aggressive]\"\nmaxretry = 3\nfindtime = \"10m\"\nbantime = \"2h\""
            .to_string(),
        "# not carried over: bantime `-1` (permanent): banshare's detection bans need a length".to_string(),
        "journal = \"_SYSTEMD_UNIT=postfix".to_string(),
    ] {
        assert!(toml.contains(&want), "want {want:?} in:\n{toml}");
    }
    assert!(!toml.contains("dovecot"), "a disabled jail is not converted:\n{toml}");
    let missing = env.cli(&["fail2ban", "jails", "--dir", "/nonexistent/fail2ban"]);
    missing.expect_code(2);
    assert!(
        missing.stderr.contains("/nonexistent/fail2ban/jail.conf: no such file (nor jail.local, jail.d/)"),
        "{}",
        missing.stderr
    );

    // The converted config loads as it is, and the daemon running it bans what fail2ban's
    // jail would: three scanners' probes (aggressive mode only) from one address.
    let env = Env::new(&format!("{toml}\n[fail2ban]\ndir = {:?}\n", f2b.path()));
    env.cli(&["config", "check"]).expect_code(0);
    let daemon = env.start_in_process();
    let now = Timestamp::now();
    append(
        &auth,
        &(0..3)
            .map(|i| {
                format!(
                    "{now} web1 sshd[{}]: Did not receive identification string from 198.51.100.7 port 4{i}",
                    300 + i
                )
            })
            .collect::<Vec<_>>(),
    );
    wait_for("the scanner's ban", Duration::from_secs(10), || env.listed().contains(&"198.51.100.7/32".to_string()));
    let list = env.cli(&["list", "--json"]).json();
    let d = &list["decisions"][0];
    let secs = |t: &str| humantime::parse_rfc3339(t).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(secs(d["expires"].as_str().unwrap()) - secs(d["created"].as_str().unwrap()), 7200, "the jail's bantime");
    daemon.stop();
}
