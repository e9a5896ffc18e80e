//! Fuzzing on the stable toolchain: a seeded mutation fuzzer (no coverage guidance) for
//! every parser that takes outside input: log lines (the timestamp reader and every
//! built-in filter, both modes), control-socket requests, the config, the feed's JSON,
//! fail2ban's log lines, fail2ban's filter definitions (their reader, tags, patterns and
//! dates, with lines run through what compiles) and log lines through fail2ban's own
//! definitions. Seeds come from fail2ban's own sample logs (read from the
//! installed package, never copied here), our fixtures, the shipped config and valid
//! requests; mutations flip, insert, delete, repeat and splice bytes.
//!
//! Each target runs for `BANSHARE_FUZZ_SECS` seconds (default 60; CI runs the default).
//! A panic fails the test, names the seed to replay (`BANSHARE_FUZZ_SEED`) and leaves the
//! input in `target/fuzz-crashes/`; each crash found becomes a regression test beside the
//! parser's own tests.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

use banshare::detect::builtin::BUILT_INS;
use banshare::detect::time::TimeParser;
use banshare::detect::{Escalation, Filter, FilterSet, Stage, Timing};

use crate::support::Rng;

const SAMPLES: &str = "/usr/lib/python3/dist-packages/fail2ban/tests/files/logs";

/// Bytes that parsers treat specially.
const TOKENS: &[&[u8]] = &[
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b"\\",
    b":",
    b"/",
    b"%",
    b"\n",
    b"\r",
    b"\0",
    b"\xff",
    b"\xc3",
    b"::",
    b"1e999",
    b"-1",
    b"18446744073709551616",
    b"9999-12-31T23:59:59Z",
    b"<HOST>",
    b"(?P<host>",
    b"=",
    b"#",
    b"'''",
    b"nan",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut input = seeds[rng.index(seeds.len())].clone();
    for _ in 0..1 + rng.index(6) {
        let at = rng.index(input.len() + 1);
        match rng.index(7) {
            0 if !input.is_empty() => {
                let i = rng.index(input.len());
                input[i] ^= 1 << rng.index(8);
            }
            1 => {
                let token = TOKENS[rng.index(TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            2 if !input.is_empty() => {
                let end = (at + rng.index(32)).min(input.len());
                input.drain(at.min(end)..end);
            }
            3 if !input.is_empty() => {
                // Repeat a piece many times: long lines, deep nesting.
                let end = (at + 1 + rng.index(16)).min(input.len());
                let piece = input[at.min(end - 1)..end].to_vec();
                for _ in 0..rng.index(2000) {
                    input.splice(at..at, piece.iter().copied());
                }
            }
            4 => {
                let other = &seeds[rng.index(seeds.len())];
                let from = rng.index(other.len() + 1);
                input.splice(at..at, other[from..].iter().copied());
            }
            5 => input.truncate(at),
            _ => input.insert(at, rng.next() as u8),
        }
    }
    input.truncate(64 * 1024);
    input
}

/// One target at a time, at the lowest CPU priority: the fuzzers must not starve the
/// timing-sensitive tests running beside them in this binary.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `target` on mutated seeds for the configured time; a panic fails with the input.
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, mut target: impl FnMut(&[u8])) {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: gettid and setpriority on this thread only (Linux keeps nice per thread).
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
    }
    let secs = std::env::var("BANSHARE_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let seed = std::env::var("BANSHARE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut runs = 0u64;
    for s in &seeds {
        run_one(name, seed, s, &mut target);
    }
    while Instant::now() < deadline {
        let input = mutate(&mut rng, &seeds);
        run_one(name, seed, &input, &mut target);
        runs += 1;
    }
    eprintln!("fuzz {name}: {runs} inputs from {} seeds in {secs} s (BANSHARE_FUZZ_SEED={seed})", seeds.len());
}

fn run_one(name: &str, seed: u64, input: &[u8], target: &mut impl FnMut(&[u8])) {
    if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{name}-{seed}"));
        std::fs::write(&file, input).unwrap();
        panic!("fuzz {name}: a panic on the input saved in {} (BANSHARE_FUZZ_SEED={seed})", file.display());
    }
}

/// Lines of fail2ban's sample logs (skipping its `#` annotations) and our own fixtures.
fn log_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    let dirs = [Path::new(SAMPLES).to_path_buf(), Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/filters")];
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read(entry.path()) else { continue };
            seeds.extend(text.split(|b| *b == b'\n').filter(|l| !l.is_empty() && l[0] != b'#').map(<[u8]>::to_vec));
        }
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        assert!(seeds.len() > 1000, "fail2ban's sample logs are installed ({SAMPLES}): {} seeds", seeds.len());
    }
    seeds
}

#[test]
fn fuzz_log_lines_through_the_timestamp_reader_and_every_built_in_filter() {
    let mut filters = Vec::new();
    for b in BUILT_INS {
        for mode in b.modes.iter().copied().map(Some).chain([None]) {
            filters.push(Filter::compile(b.with_mode(mode).unwrap()).unwrap());
        }
    }
    // One stream through the detection stage: sessions, windows and bans span the inputs.
    let mut stage = Stage::new(FilterSet::new(filters), Timing::Replay { ipv6_prefix: 64 }, Escalation::default());
    let now = banshare::clock::Timestamp::now();
    fuzz("log-line", log_seeds(), |line| {
        let _ = TimeParser::default().parse(line, now);
        let _ = stage.line(&mut line.to_vec(), now);
    });
}

#[test]
fn fuzz_control_requests() {
    let seeds: Vec<Vec<u8>> = [
        r#"{"v":1,"cmd":"ping"}"#,
        r#"{"v":1,"cmd":"ban","target":"203.0.113.7","for_secs":3600,"reason":"x"}"#,
        r#"{"v":1,"cmd":"import","targets":["203.0.113.7","2001:db8::/48"],"for_secs":60}"#,
        r#"{"v":1,"cmd":"list","source":"manual"}"#,
        r#"{"v":1,"cmd":"fail2ban","event":{"kind":"ban","mode":"block","ip":"203.0.113.9","jail":"sshd","category":null,"failures":5,"time":1795000000.5,"bantime":600,"restored":false,"matches":["a","b"]}}"#,
        r#"{"v":1,"cmd":"delist","ip":"203.0.113.7","reason":"r","hostname":"h"}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz("control", seeds, |line| {
        let _ = banshare::control::server::parse_request(line);
    });
}

#[test]
fn fuzz_the_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds = vec![std::fs::read(root.join("packaging/banshare.toml")).unwrap()];
    for entry in std::fs::read_dir(root.join("examples")).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "toml") {
            seeds.push(std::fs::read(entry.path()).unwrap());
        }
    }
    seeds.push(
        b"state_dir = \"/tmp/x\"\nallowlist = [\"192.0.2.0/24\"]\n[filter.myapp]\nfailregex = [\"from <HOST>\"]\nbantime = \"1h\"\n[feed]\nttl = 3600\n[check]\nlisten = \"127.0.0.1:8098\"\n[fail2ban.categories]\n\"web*\" = \"web_attack\"\n"
            .to_vec(),
    );
    let path = root.join("banshare.toml");
    fuzz("config", seeds, |text| {
        let _ = banshare::config::Config::from_toml(&String::from_utf8_lossy(text), &path);
    });
}

#[test]
fn fuzz_the_feeds_json() {
    let seeds: Vec<Vec<u8>> = [
        r#"{"threats":[{"ip_address":"45.155.205.1","threat_score":92,"categories":["ssh_bruteforce"]},{"ip_address":"185.220.101.0/24","threat_score":"95"}],"count":2,"total":2}"#,
        r#"{"data":[{"ip_address":"2a01:4f8:1:2::7","threat":{"score":99}}]}"#,
        r#"[{"ip_address":42,"threat_score":99},{"ip":"1.2.3.4"}]"#,
        r#"{"ip":"45.155.205.1","score":70,"categories":["scanner"],"flags":{"vpn":true},"country":"DE","asn":{"number":24940}}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz("feed-json", seeds, |body| {
        let _ = banshare::feed::wire::parse_live(body);
        let _ = banshare::feed::wire::parse_lookup(body);
    });
}

#[test]
fn fuzz_fail2ban_log_lines() {
    let mut seeds: Vec<Vec<u8>> = [
        "2026-11-23 10:00:01,123 fail2ban.actions        [1234]: NOTICE  [sshd] Ban 203.0.113.7",
        "2026-11-23 10:00:01,123 fail2ban.actions        [1234]: NOTICE  [recidive] Restore Ban 2001:db8::1",
        "2026-11-23 10:00:01 fail2ban.actions [1]: NOTICE [nginx-http-auth] Unban 198.51.100.1",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    if let Ok(text) = std::fs::read(Path::new(SAMPLES).join("fail2ban")) {
        seeds.extend(text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec));
    }
    fuzz("fail2ban-log", seeds, |line| {
        let _ = banshare::fail2ban::parse_log_line(&String::from_utf8_lossy(line));
    });
}

/// Debian's fail2ban definitions, as installed (the suite installs fail2ban).
const FILTER_D: &str = "/etc/fail2ban/filter.d";

#[test]
fn fuzz_fail2ban_definitions_and_filter_references() {
    use banshare::detect::f2b::engine::Compiled;
    use banshare::detect::f2b::{Definition, FilterRef};

    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(FILTER_D)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "conf"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        assert!(seeds.len() > 50, "fail2ban's filter.d is installed ({FILTER_D}): {} seeds", seeds.len());
    }
    seeds.push(b"sshd[mode=aggressive, publickey=\"invalid, x\", logtype='journal']".to_vec());
    // A directory the mutated definition is written into, with fail2ban's common files.
    let dir = tempfile::tempdir().unwrap();
    let filter_d = dir.path().join("filter.d");
    std::fs::create_dir(&filter_d).unwrap();
    for common in ["common.conf", "apache-common.conf", "botsearch-common.conf"] {
        let _ = std::fs::copy(Path::new(FILTER_D).join(common), filter_d.join(common));
    }
    let lines = log_seeds();
    let now = banshare::clock::Timestamp::now();
    fuzz("fail2ban-definition", seeds, |text| {
        let text = String::from_utf8_lossy(text);
        let _ = text.parse::<FilterRef>();
        std::fs::write(filter_d.join("fuzz.conf"), text.as_bytes()).unwrap();
        let filter = FilterRef { name: "fuzz".into(), options: vec![("mode".into(), "aggressive".into())] };
        let Ok(def) = Definition::load(dir.path(), &filter) else { return };
        let Ok(compiled) = Compiled::new(def) else { return };
        let mut state = compiled.state();
        for line in lines.iter().step_by(97).take(20) {
            let _ = compiled.line(&mut state, &String::from_utf8_lossy(line), now);
        }
    });
}

#[test]
fn fuzz_log_lines_through_fail2bans_definitions() {
    use banshare::detect::f2b::engine::Compiled;
    use banshare::detect::f2b::{Definition, FilterRef};

    let mut compiled = Vec::new();
    for spec in
        ["sshd[mode=aggressive]", "apache-auth", "dovecot", "postfix[mode=aggressive]", "nginx-http-auth", "exim"]
    {
        let filter: FilterRef = spec.parse().unwrap();
        match Definition::load(Path::new("/etc/fail2ban"), &filter).and_then(Compiled::new) {
            Ok(c) => compiled.push(c),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("{spec}: {e}"),
            Err(_) => {}
        }
    }
    let states: Vec<_> = compiled.iter().map(|c| std::sync::Mutex::new(c.state())).collect();
    let now = banshare::clock::Timestamp::now();
    fuzz("fail2ban-line", log_seeds(), |line| {
        let line = String::from_utf8_lossy(line);
        for (c, st) in compiled.iter().zip(&states) {
            let mut st = st.lock().unwrap_or_else(|e| e.into_inner());
            let _ = c.line(&mut st, &line, now);
            let _ = c.line_dated(&mut st, &line, now);
        }
    });
}
