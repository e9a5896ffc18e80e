//! Hostile input and resource bounds (issue 14's starting cases): lines that once
//! panicked, the control socket's limits, private state whatever the modes found,
//! terminal escapes, the fail2ban hook with a broken config, closed pipes, and
//! `config check` refusing what `run` refuses.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use banshare::control::protocol::{ErrorCode, MAX_CONNECTIONS, MAX_LINE, Request};

use crate::support::{BIN, Env, wait_for};

/// The line that once panicked the apache-error timestamp reader (its first `]` at 1).
const APACHE_PANIC: &str = "[]ue Dec 01 07:31:00.123456 2026] [auth_basic:error] [pid 12:tid 34] [client 45.4.4.4:5555] AH01617: user bob: authentication failure for \"/\": Password Mismatch";

fn scan_stdin(env: &Env, args: &[&str], input: &[u8]) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .arg("scan")
        .args(args)
        .arg("-")
        .env("BANSHARE_CONFIG", &env.config_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_line_that_panicked_the_apache_reader_is_scanned_and_detection_goes_on() {
    let env = Env::new("");
    let mut input = format!("{APACHE_PANIC}\n");
    for _ in 0..3 {
        input.push_str("[Tue Dec 01 07:31:00.123456 2026] [auth_basic:error] [pid 12:tid 34] [client 45.4.4.9:5555] AH01617: user bob: authentication failure for \"/\": Password Mismatch\n");
    }
    let (code, stdout, stderr) = scan_stdin(&env, &["--filter", "apache-auth", "--json"], input.as_bytes());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["lines"]["read"], 4, "{stdout}");
    assert!(stdout.contains("45.4.4.9"), "the lines after it are still matched: {stdout}");
}

#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let env = Env::new("");
    let line = "Nov 23 10:00:01 host sshd[1]: Failed password for root from 203.0.113.7 port 22 ssh2\n";
    let mut child = Command::new(BIN)
        .args(["scan", "--filter", "sshd", "--show-matches", "-"])
        .env("BANSHARE_CONFIG", &env.config_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        for _ in 0..20_000 {
            if stdin.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
    });
    let mut first = [0u8; 16];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take()); // `| head -c 16`
    let status = child.wait().unwrap();
    feeder.join().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_control_socket_enforces_its_bounds_and_still_serves() {
    let env = Env::new("");
    let _daemon = env.start_in_process();
    let mut client = env.client();
    // A line over 1 MiB: refused, nothing kept.
    let mut huge = b"{\"v\":1,\"cmd\":\"ban\",\"target\":\"203.0.113.7\",\"reason\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
    huge.extend_from_slice(b"\"}\n");
    let reply = client.round_trip(&huge).unwrap();
    assert_eq!(reply.error.unwrap().code, ErrorCode::TooLarge);
    // A reason over 1000 characters: refused with the limit.
    let reason = "r".repeat(1001);
    let run = env.cli(&["ban", "203.0.113.8", "--reason", &reason]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("at most 1000 characters"), "{}", run.stderr);
    // A jail name of control characters through the socket: refused.
    let bad_jail = b"{\"v\":1,\"cmd\":\"fail2ban\",\"event\":{\"kind\":\"ban\",\"mode\":\"report\",\"ip\":\"203.0.113.9\",\"jail\":\"a\\u001b]0;x\\u0007\",\"category\":null,\"failures\":null,\"time\":null,\"bantime\":null,\"restored\":false,\"matches\":[]}}\n";
    let reply = client.round_trip(bad_jail).unwrap();
    assert_eq!(reply.error.unwrap().code, ErrorCode::BadRequest);
    // More connections than the cap: the one past it gets a clear error, the rest serve.
    let held: Vec<_> =
        (0..MAX_CONNECTIONS).map(|_| std::os::unix::net::UnixStream::connect(&env.socket).unwrap()).collect();
    let mut extra = std::os::unix::net::UnixStream::connect(&env.socket).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(answer.contains("\"busy\"") && answer.contains("connections"), "{answer}");
    // fail2ban's hook meanwhile: asks again while busy, then the store takes the ban.
    let hook = env.cli(&["report", "--ip", "203.0.113.14", "--jail", "sshd"]);
    assert_eq!(hook.code, 0, "{}{}", hook.stdout, hook.stderr);
    drop(held);
    assert!(env.listed().contains(&"203.0.113.14/32".to_string()), "the busy daemon's ban was kept");
    wait_for("a free connection", Duration::from_secs(5), || {
        banshare::control::client::Client::connect(&env.socket, Duration::from_secs(2))
            .is_ok_and(|mut c| c.call(&Request::Ping).is_ok())
    });
    // An import far over the line limit goes through, streamed after one request line.
    let file = env.dir.path().join("big.txt");
    let targets: String =
        (0..60_000u32).map(|i| format!("2001:db8:{:x}:{:x}::1\n", i / 65536 + 1, i % 65536)).collect();
    assert!(targets.len() > MAX_LINE, "{}", targets.len());
    std::fs::write(&file, targets).unwrap();
    let run = env.cli(&["import", file.to_str().unwrap(), "--for", "1h"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("imported 60000 new"), "{}", run.stdout);
}

/// A streamed import that lies about its length, carries garbage or ends early: each
/// answered with what went wrong, nothing half-imported, and the socket still serves.
#[test]
fn a_streamed_import_is_bounded_and_checked_line_by_line() {
    use banshare::control::protocol::{MAX_IMPORT, MAX_TARGET};
    let env = Env::new("");
    let _daemon = env.start_in_process();
    let header = |lines: usize| format!("{{\"v\":1,\"cmd\":\"import\",\"lines\":{lines},\"for_secs\":3600}}\n");
    // More lines announced than an import may carry: refused at once, connection closed.
    let mut client = env.client();
    let reply = client.round_trip(header(MAX_IMPORT + 1).as_bytes()).unwrap();
    let error = reply.error.unwrap();
    assert_eq!(error.code, ErrorCode::TooLarge);
    assert!(error.message.contains("at most 1000000 targets"), "{}", error.message);
    // Garbage, an over-long line, invalid UTF-8 and an empty line among good targets:
    // the good ones imported, each bad one named.
    let mut body = header(6).into_bytes();
    body.extend_from_slice(b"198.51.100.1\n");
    body.extend_from_slice(b"not an address\n");
    body.extend(std::iter::repeat_n(b'9', MAX_TARGET + 50));
    body.extend_from_slice(b"\n\xff\xfe\n\n198.51.100.0/30\n");
    let mut client = env.client();
    let reply = client.round_trip(&body).unwrap();
    assert!(reply.ok, "{:?}", reply.error);
    let data = reply.data.unwrap();
    assert_eq!(data["created"], 2, "{data}");
    let invalid = data["invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), 4, "{data}");
    assert!(invalid.iter().any(|m| m.as_str().unwrap().contains("longer than 128 bytes")), "{data}");
    // The stream ends before the announced lines: nothing of it is imported.
    let mut cut = header(3).into_bytes();
    cut.extend_from_slice(b"198.51.100.20\n198.51.100.21\n");
    {
        let mut raw = std::os::unix::net::UnixStream::connect(&env.socket).unwrap();
        raw.write_all(&cut).unwrap();
        raw.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = raw.read_to_string(&mut answer);
        assert!(answer.is_empty(), "no answer to a cut stream: {answer}");
    }
    let listed = env.listed();
    assert!(!listed.iter().any(|t| t.starts_with("198.51.100.2")), "{listed:?}");
    assert!(listed.contains(&"198.51.100.1/32".to_string()) && listed.contains(&"198.51.100.0/30".to_string()));
    // And the socket serves.
    assert!(env.client().call(&Request::Ping).is_ok());
}

#[test]
fn state_is_private_whatever_modes_it_had() {
    let env = Env::new("");
    std::fs::create_dir_all(&env.state_dir).unwrap();
    std::fs::set_permissions(&env.state_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = env.spawn_daemon();
    env.cli(&["ban", "203.0.113.10", "--reason", "Failed password for alice"]).expect_code(0);
    assert_eq!(daemon.stop(), Some(0));
    let db = env.state_dir.join("state.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _daemon = env.spawn_daemon();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env.state_dir), 0o700);
    for entry in std::fs::read_dir(&env.state_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
    assert!(env.state_dir.join("state.db-wal").exists(), "the WAL was checked too");
}

#[test]
fn text_from_outside_never_reaches_the_terminal_raw() {
    let env = Env::new("");
    let _daemon = env.start_in_process();
    let reason = "title\u{1b}]0;pwned\u{7}\rclear\u{1b}[2J\u{9b}";
    env.cli(&["ban", "203.0.113.11", "--reason", reason]).expect_code(0);
    for args in [&["list"][..], &["query", "203.0.113.11"][..]] {
        let out = env.cli(args);
        for raw in ['\u{1b}', '\u{7}', '\r', '\u{9b}'] {
            assert!(!out.stdout.contains(raw), "{args:?} printed {raw:?}: {:?}", out.stdout);
        }
        assert!(out.stdout.contains("\\u{1b}]0;pwned\\u{7}\\rclear"), "{args:?}: {}", out.stdout);
    }
    let json = env.cli(&["list", "--json"]).json();
    assert_eq!(json["decisions"][0]["reason"], reason, "--json keeps the exact text");
}

#[test]
fn the_fail2ban_hook_records_bans_while_the_config_is_broken() {
    let env = Env::new("");
    let daemon = env.spawn_daemon();
    let good = std::fs::read_to_string(&env.config_path).unwrap();
    // An edit in progress: a key that does not exist yet.
    std::fs::write(&env.config_path, format!("{good}\n[filter.sshd]\nmaxretri = 3\n")).unwrap();
    let run = env.cli(&["report", "--ip", "203.0.113.12", "--jail", "sshd"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("the config does not load"), "{}", run.stderr);
    assert_eq!(daemon.stop(), Some(0));
    // With the daemon down too: the ban goes into the store the file names.
    let run = env.cli(&["report", "--ip", "203.0.113.13", "--jail", "sshd"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("saved for its next start"), "{}", run.stdout);
    std::fs::write(&env.config_path, good).unwrap();
    let _daemon = env.spawn_daemon();
    let listed = env.listed();
    assert!(
        listed.contains(&"203.0.113.12/32".to_string()) && listed.contains(&"203.0.113.13/32".to_string()),
        "{listed:?}"
    );
}

#[test]
fn config_check_refuses_what_run_refuses_and_warns_on_a_public_check_service() {
    let env = Env::new("");
    let key = env.dir.path().join("api-key");
    std::fs::write(&key, "k".repeat(40)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    env.write_config(&format!("[feed]\napi_key_file = {key:?}\n"));
    let run = env.cli(&["config", "check"]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("feed.api_key_file") && run.stderr.contains("chmod 600"), "{}", run.stderr);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.write_config(&format!("[feed]\napi_key_file = {key:?}\n[check]\nlisten = \"0.0.0.0:8098\"\n"));
    let run = env.cli(&["config", "check"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("warning: check.listen = \"0.0.0.0:8098\" answers beyond this host"), "{}", run.stderr);
}
