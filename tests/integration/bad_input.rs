//! Bad input gets a clear error and loses nothing: malformed config files, invalid
//! addresses on the command line, and garbage on the control socket.

use std::io::Write;

use banshare::control::protocol::{ErrorCode, Request};

use crate::support::Env;

/// `config check` and `run` report a bad config with the file, key and expectation.
#[test]
fn bad_configs_are_reported_with_file_key_and_expectation() {
    let env = Env::new("");
    let path = env.config_path.display().to_string();
    let cases = [
        ("allowlist = [\"192.0.2.0/24\"\n", "line 1, column 28: unclosed array, expected `]`"),
        (
            "[decisions]\nipv6_prefix = \"wide\"\n",
            "line 2, column 15: key `decisions.ipv6_prefix`: invalid type: string \"wide\", expected i64",
        ),
        (
            "[firewall]\nbackend = \"nftables\"\nflavour = \"x\"\n",
            "line 3, column 1: key `firewall.flavour`: unknown field `flavour`, expected one of `backend`, `forward`, `action`",
        ),
        (
            "allowlist = [\"10.0.0.0/8\", \"192.0.2.300/24\"]\n",
            "key `allowlist[1]`: expected an IP address or CIDR like 192.0.2.0/24, got \"192.0.2.300/24\"",
        ),
        (
            "[decisions]\nmanual_bantime = \"soon\"\n",
            "key `decisions.manual_bantime`: expected a duration like \"24h\" or \"permanent\", got \"soon\"",
        ),
    ];
    for (text, expected) in cases {
        env.write_raw_config(text);
        for cmd in [&["config", "check"][..], &["run"]] {
            let run = env.cli(cmd);
            run.expect_code(2);
            let line = run.stderr.lines().next().unwrap_or_default();
            assert!(
                line.starts_with(&format!("banshare: {path}: {expected}")),
                "for {text:?} via {cmd:?}: {}",
                run.stderr
            );
        }
    }
    env.write_raw_config("");
    let ok = env.cli(&["config", "check"]);
    ok.expect_code(0);
    assert_eq!(ok.stdout, format!("{path}: OK\n"));
    let missing = env.cli(&["--config", "/nonexistent/banshare.toml", "config", "check"]);
    missing.expect_code(2);
    assert!(
        missing.stderr.starts_with("banshare: /nonexistent/banshare.toml: cannot read the config: No such file"),
        "{}",
        missing.stderr
    );
}

#[test]
fn invalid_addresses_are_rejected_before_reaching_the_daemon() {
    let env = Env::new("");
    // No daemon runs: a bad address must fail on its own, with exit 2, not "not running".
    for bad in ["203.0.113.256", "example.com", "1.2.3.4/40", "", "2001:db8:::1"] {
        let run = env.cli(&["ban", bad]);
        run.expect_code(2);
        assert_eq!(
            run.stderr,
            format!(
                "banshare: `{bad}` is not an IP address or CIDR (expected e.g. 203.0.113.7, 203.0.113.0/24 or 2001:db8::/48)\n"
            )
        );
    }
    let run = env.cli(&["ban", "203.0.113.7", "--for", "a while"]);
    run.expect_code(2);
    assert!(run.stderr.contains("--for \"a while\": expected a duration"), "{}", run.stderr);
    env.cli(&["query", "nonsense"]).expect_code(2);
    env.cli(&["list", "--source", "sshd"]).expect_code(2);
}

#[test]
fn garbage_on_the_control_socket_gets_an_error_reply_and_the_connection_lives_on() {
    let env = Env::new("");
    let _daemon = env.start_in_process();
    let mut client = env.client();
    let mut expect = |raw: &[u8], code: ErrorCode, text: &str| {
        let reply = client.round_trip(raw).expect("a reply, not a hang or a hangup");
        assert!(!reply.ok);
        let err = reply.error.expect("error body");
        assert_eq!(err.code, code, "{}", err.message);
        assert!(err.message.contains(text), "{:?} does not contain {text:?}", err.message);
    };
    expect(b"hello daemon\n", ErrorCode::BadRequest, "request is not valid JSON");
    expect(b"\xff\xfe\x00garbage\n", ErrorCode::BadRequest, "request is not valid JSON");
    expect(b"42\n", ErrorCode::BadRequest, "must be a JSON object");
    expect(b"{\"cmd\":\"status\"}\n", ErrorCode::BadRequest, "missing protocol version `v`");
    expect(b"{\"v\":99,\"cmd\":\"status\"}\n", ErrorCode::UnsupportedVersion, "protocol version 99 is newer");
    expect(b"{\"v\":1,\"cmd\":\"self_destruct\"}\n", ErrorCode::BadRequest, "unknown variant `self_destruct`");
    expect(
        b"{\"v\":1,\"cmd\":\"ban\",\"target\":\"not-an-ip\"}\n",
        ErrorCode::InvalidTarget,
        "`not-an-ip` is not an IP address",
    );
    expect(
        b"{\"v\":1,\"cmd\":\"ban\",\"target\":\"203.0.113.7\",\"for_secs\":0}\n",
        ErrorCode::BadRequest,
        "at least one second",
    );
    let mut huge = vec![b'x'; banshare::control::protocol::MAX_LINE + 10];
    huge.push(b'\n');
    expect(&huge, ErrorCode::TooLarge, "longer than");
    // After all that, the same connection still serves a good request.
    let ok = client.call(&Request::Ping).expect("ping after garbage");
    assert_eq!(ok, "pong");
    // A client that sends half a line and hangs up costs nothing.
    let mut raw = std::os::unix::net::UnixStream::connect(&env.socket).unwrap();
    raw.write_all(b"{\"v\":1,\"cmd\":").unwrap();
    drop(raw);
    assert!(env.listed().is_empty(), "nothing was banned by any of it");
}

#[test]
fn a_database_from_a_newer_banshare_is_refused_with_a_clear_message() {
    let env = Env::new("");
    std::fs::create_dir_all(&env.state_dir).unwrap();
    let conn = rusqlite::Connection::open(env.state_dir.join("state.db")).unwrap();
    conn.pragma_update(None, "user_version", 999).unwrap();
    drop(conn);
    let run = env.cli(&["run"]);
    run.expect_code(5);
    assert!(run.stderr.contains("schema version 999, but this banshare only knows versions up to"), "{}", run.stderr);
}
