//! `banshare scan`: the offline replay an operator runs to test a filter.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::{BIN, Env};

fn attack(n: usize, ip: &str) -> String {
    (0..n)
        .map(|i| {
            format!("Nov 23 10:00:{i:02} web1 sshd[{}]: Failed password for root from {ip} port 4000 ssh2\n", 100 + i)
        })
        .collect()
}

#[test]
fn scan_reports_matches_and_would_be_bans() {
    let env = Env::new("");
    let log = env.dir.path().join("auth.log");
    let text = format!(
        "{}{}Nov 23 10:01:00 web1 sshd[9]: Accepted password for root from 203.0.113.50 port 1 ssh2\n",
        attack(6, "203.0.113.7"),
        attack(2, "2001:db8:1:2::9")
    );
    std::fs::write(&log, text).unwrap();
    let run = env.cli(&["scan", "--filter", "sshd", log.to_str().unwrap()]);
    run.expect_code(0);
    assert!(run.stdout.starts_with("Lines: 9 read, 8 matched, 0 ignored, 1 missed\n"), "{}", run.stdout);
    assert!(
        run.stdout.contains("sshd (ssh_bruteforce): 8 matched, 0 ignored, 2 addresses, 1 would be banned"),
        "{}",
        run.stdout
    );
    let json = env.cli(&["scan", "--filter", "sshd", "--json", log.to_str().unwrap()]).json();
    let sshd = &json["filters"][0];
    assert_eq!(sshd["bans"].as_array().unwrap().len(), 1);
    assert_eq!(sshd["bans"][0]["ip"], "203.0.113.7");
    assert_eq!(sshd["bans"][0]["bantime_secs"], 3600);
    assert_eq!(sshd["failures"]["2001:db8:1:2::9"], 2);

    let shown = env.cli(&["scan", "--filter", "sshd", "--show-missed", log.to_str().unwrap()]);
    assert!(shown.stdout.starts_with("Nov 23 10:01:00 web1 sshd[9]: Accepted password"), "{}", shown.stdout);
    let shown = env.cli(&["scan", "--filter", "sshd", "--show-matches", log.to_str().unwrap()]);
    assert_eq!(shown.stdout.lines().filter(|l| l.contains("Failed password")).count(), 8);
}

#[test]
fn scan_uses_the_configs_thresholds_and_custom_filters_and_reads_stdin() {
    let env = Env::new(
        "[filter.sshd]\nmaxretry = 2\n[filter.myapp]\nfailregex = ['myapp: bad login from <HOST>']\ncategory = \"web_bruteforce\"\nmaxretry = 1",
    );
    let mut child = Command::new(BIN)
        .args(["scan", "-"])
        .env("BANSHARE_CONFIG", &env.config_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input = format!("{}2026-11-23T10:00:00Z web1 myapp: bad login from 198.51.100.4\n", attack(2, "203.0.113.7"));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sshd (ssh_bruteforce): 2 matched, 0 ignored, 1 addresses, 1 would be banned"), "{text}");
    assert!(text.contains("myapp (web_bruteforce): 1 matched, 0 ignored, 1 addresses, 1 would be banned"), "{text}");
}

#[test]
fn scan_bad_input_is_clear_and_garbage_lines_are_counted() {
    let env = Env::new("");
    let run = env.cli(&["scan", "--filter", "sshdd", "/dev/null"]);
    run.expect_code(2);
    assert!(
        run.stderr.starts_with("banshare: --filter sshdd: no such filter (known: apache-auth, apache-badbots,"),
        "{}",
        run.stderr
    );
    let run = env.cli(&["scan", "/nonexistent/auth.log"]);
    run.expect_code(2);
    assert!(run.stderr.starts_with("banshare: /nonexistent/auth.log: cannot read: No such file"), "{}", run.stderr);

    let log = env.dir.path().join("garbage.log");
    let mut bytes = b"\xff\xfe\x00\x01 binary junk\n".to_vec();
    bytes.extend(std::iter::repeat_n(b'A', 100_000));
    bytes.extend_from_slice(b"\n");
    bytes.extend_from_slice(attack(1, "203.0.113.7").as_bytes());
    std::fs::write(&log, bytes).unwrap();
    let json = env.cli(&["scan", "--json", log.to_str().unwrap()]).json();
    let lines = &json["lines"];
    assert_eq!((lines["read"].as_u64(), lines["matched"].as_u64()), (Some(3), Some(1)));
    assert_eq!(
        (lines["invalid_utf8"].as_u64(), lines["nul_bytes"].as_u64(), lines["too_long"].as_u64()),
        (Some(1), Some(1), Some(1))
    );
}
