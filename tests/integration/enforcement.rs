//! "Banned" means blocked in the kernel: durations from 1 s to 10 years and permanent on
//! both backends, a seeded model-based test that compares the kernel with the store after
//! every step (bans, unbans, imports, fail2ban, expiry, flushes, restarts, kill -9), a
//! packet test under a stream of long bans, and the refusals that must be errors.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use nix::sys::signal::Signal;

use crate::support::emulator::{Emulator, FeedSource};
use crate::support::netns::{BACKENDS, LISTENER, Netns, privileged, tools, veth_pair};
use crate::support::{DaemonProcess, Env, Rng, wait_for};

const DAY: u64 = 86_400;

/// The longest kernel timeout each backend gets (seconds): banshare's nft cap, ipset's limit.
fn backend_max(backend: &str) -> u64 {
    if backend == "nftables" { 30 * DAY } else { 2_147_483 }
}

/// What the kernel holds: per element key (`source:target` on nftables, whose sets are
/// per source; `target` on ipset, whose sets are shared), the seconds left of its
/// timeout (`None`: no timeout).
type Kernel = BTreeMap<String, Option<u64>>;

fn kernel(backend: &str, ns: &Netns) -> Kernel {
    let mut out = Kernel::new();
    if backend == "nftables" {
        let run = ns.exec(&["nft", "-j", "list", "table", "inet", "banshare"]);
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&run.stdout) else { return out };
        for set in v["nftables"].as_array().into_iter().flatten().filter_map(|o| o.get("set")) {
            let source = set["name"].as_str().unwrap_or("").split('_').next().unwrap_or("").to_string();
            for e in set["elem"].as_array().into_iter().flatten() {
                let (val, expires) = match e.get("elem") {
                    Some(inner) => (inner["val"].clone(), inner["expires"].as_u64()),
                    None => (e.clone(), None),
                };
                let target = match &val {
                    serde_json::Value::String(s) => s.clone(),
                    other => format!("{}/{}", other["prefix"]["addr"].as_str().unwrap_or("?"), other["prefix"]["len"]),
                };
                out.insert(format!("{source}:{target}"), expires);
            }
        }
    } else {
        for set in ["banshare-v4", "banshare-v6"] {
            let run = ns.exec(&["ipset", "list", set]);
            let members = run.stdout.split("Members:").nth(1).unwrap_or("");
            for line in members.lines().filter(|l| !l.trim().is_empty()) {
                let mut cols = line.split_whitespace();
                let Some(target) = cols.next() else { continue };
                let timeout = cols.skip_while(|c| *c != "timeout").nth(1).and_then(|t| t.parse::<u64>().ok());
                let target: IpNet = target
                    .parse()
                    .or_else(|_| target.parse::<std::net::IpAddr>().map(IpNet::from))
                    .unwrap_or_else(|_| panic!("ipset member {target}"));
                out.insert(show(&target), timeout.filter(|t| *t > 0));
            }
        }
    }
    out
}

fn show(t: &IpNet) -> String {
    if t.prefix_len() == t.max_prefix_len() { t.addr().to_string() } else { t.to_string() }
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// One active decision as `list --json` shows it.
#[derive(Debug, Clone)]
struct Active {
    source: String,
    target: IpNet,
    /// Unix seconds; `None`: permanent.
    expires: Option<f64>,
}

fn active(env: &Env) -> Vec<Active> {
    let run = env.cli(&["list", "--json"]);
    run.expect_code(0);
    run.json()["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["enforced"].as_bool() != Some(false))
        .map(|d| Active {
            source: d["source"].as_str().unwrap().to_string(),
            target: d["target"].as_str().unwrap().parse().unwrap(),
            expires: d["expires"]
                .as_str()
                .map(|t| humantime::parse_rfc3339(t).unwrap().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()),
        })
        .collect()
}

/// The kernel the store's active decisions call for: nftables keeps only the widest of
/// nested networks of one set; ipset holds a target once with the latest expiry.
fn expected(backend: &str, decisions: &[Active]) -> BTreeMap<String, Option<f64>> {
    let mut out = BTreeMap::new();
    if backend == "nftables" {
        for d in decisions {
            let single = d.target.prefix_len() == d.target.max_prefix_len();
            let shadowed = !single
                && decisions.iter().any(|o| {
                    o.source == d.source
                        && o.target != d.target
                        && o.target.prefix_len() < o.target.max_prefix_len()
                        && o.target.contains(&d.target)
                });
            if !shadowed {
                out.insert(format!("{}:{}", d.source, show(&d.target)), d.expires);
            }
        }
    } else {
        for d in decisions {
            let slot = out.entry(show(&d.target)).or_insert(d.expires);
            *slot = match (*slot, d.expires) {
                (None, _) | (_, None) => None,
                (Some(a), Some(b)) => Some(a.max(b)),
            };
        }
    }
    out
}

/// Compares the kernel with the store; `Err` says how they differ.
fn compare(backend: &str, ns: &Netns, env: &Env) -> Result<usize, String> {
    let decisions = active(env);
    let want = expected(backend, &decisions);
    let have = kernel(backend, ns);
    let now = now_secs();
    // An element whose decision ends within a second may be gone from either side.
    let settled = |e: &Option<f64>| e.is_none_or(|e| e - now > 1.5);
    let want_keys: BTreeSet<&String> = want.iter().filter(|(_, e)| settled(e)).map(|(k, _)| k).collect();
    let have_keys: BTreeSet<&String> = have.keys().filter(|k| want.get(*k).is_none_or(settled)).collect();
    if want_keys != have_keys {
        let missing: Vec<_> = want_keys.difference(&have_keys).collect();
        let extra: Vec<_> = have_keys.difference(&want_keys).collect();
        return Err(format!("kernel differs from the store: missing {missing:?}, extra {extra:?}"));
    }
    let max = backend_max(backend) as f64;
    for key in want_keys {
        let (expires, left) = (want[key], have[key]);
        match (expires, left) {
            (None, None) => {}
            (None, Some(t)) => return Err(format!("{key}: permanent in the store, timeout {t} s in the kernel")),
            (Some(_), None) => return Err(format!("{key}: expires in the store, no timeout in the kernel")),
            (Some(e), Some(t)) => {
                let due = (e - now).min(max);
                let t = t as f64;
                // A capped element counts down from the maximum until the hourly full
                // reconcile writes it again.
                let capped = e - now > max - 3700.0;
                if capped && (max - 3700.0..=max).contains(&t) {
                    continue;
                }
                if t + 3.0 < due || t > due + 3.0 {
                    return Err(format!("{key}: kernel timeout {t} s, the store wants {due:.0} s"));
                }
            }
        }
    }
    Ok(have.len())
}

/// Waits until the kernel equals the store (restores and expiries take seconds).
fn converge(backend: &str, ns: &Netns, env: &Env, step: &str) {
    let started = Instant::now();
    loop {
        match compare(backend, ns, env) {
            Ok(_) => return,
            Err(why) if started.elapsed() > Duration::from_secs(15) => {
                panic!(
                    "{backend}, after {step}: {why}\n{}",
                    std::fs::read_to_string(env.dir.path().join("daemon.log")).unwrap_or_default()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Durations the model draws from: 1 s to 10 years, and permanent.
const DURATIONS: [&str; 11] = ["1s", "2s", "3s", "90s", "1h", "1d", "2d", "40d", "400d", "3650d", "permanent"];

/// A target anywhere in the input space: single addresses and networks of every width
/// (/8 to /32, /16 to /128), never a protected range.
fn target(rng: &mut Rng) -> IpNet {
    if rng.below(2) == 0 {
        let first = 1 + rng.below(126) as u8; // 1..=126: never loopback, multicast, 0/8
        let addr = std::net::Ipv4Addr::new(first, rng.below(256) as u8, rng.below(256) as u8, 1 + rng.below(254) as u8);
        let len = if rng.below(2) == 0 { 32 } else { 8 + rng.below(25) as u8 };
        IpNet::new(addr.into(), len).unwrap().trunc()
    } else {
        let segs: [u16; 8] =
            std::array::from_fn(|i| if i == 0 { 0x2a00 + rng.below(256) as u16 } else { rng.below(65536) as u16 });
        let len = if rng.below(2) == 0 { 128 } else { 16 + rng.below(113) as u8 };
        IpNet::new(std::net::Ipv6Addr::from(segs).into(), len).unwrap().trunc()
    }
}

fn restart(env: &Env, ns: &Netns, daemon: DaemonProcess, hard: bool) -> DaemonProcess {
    if hard {
        daemon.kill_hard();
    } else {
        daemon.signal(Signal::SIGTERM);
        drop(daemon);
    }
    env.spawn_daemon_in(ns)
}

fn flush(backend: &str, ns: &Netns) {
    if backend == "nftables" {
        ns.exec(&["nft", "flush", "ruleset"]).expect_code(0);
    } else {
        for tool in ["iptables", "ip6tables"] {
            ns.exec(&[tool, "-F", "INPUT"]).expect_code(0);
            ns.exec(&[tool, "-F", "FORWARD"]).expect_code(0);
        }
        for set in ["banshare-v4", "banshare-v6"] {
            ns.exec(&["ipset", "destroy", set]).expect_code(0);
        }
    }
}

#[test]
fn model_based_kernel_equals_store_after_every_step() {
    let seed: u64 = std::env::var("BANSHARE_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
    let steps: usize = std::env::var("BANSHARE_MODEL_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    eprintln!("model-based test: BANSHARE_MODEL_SEED={seed} BANSHARE_MODEL_STEPS={steps} replays this run");
    for backend in BACKENDS {
        if !privileged("model-based test", tools(backend)) {
            return;
        }
        let mut rng = Rng(seed);
        let ns = Netns::new("model");
        let emu = Emulator::start_in(&ns.name);
        let env = Env::with_backend(backend, "");
        let feed = env.feed_section(&emu.url(), "pull = false\nmin_score = 85");
        env.write_config_for(backend, &feed);
        let mut daemon = env.spawn_daemon_in(&ns);
        let mut known: Vec<IpNet> = Vec::new();
        for i in 0..steps {
            let roll = rng.below(100);
            let step = match roll {
                0..=34 => {
                    let t = target(&mut rng);
                    let d = *rng.pick(&DURATIONS);
                    let run = env.cli(&["ban", &show(&t), "--for", d]);
                    assert_eq!(run.code, 0, "{backend}: ban {t} --for {d}: {}{}", run.stdout, run.stderr);
                    known.push(t);
                    format!("ban {t} --for {d}")
                }
                35..=44 if !known.is_empty() => {
                    let t = *rng.pick(&known);
                    let run = env.cli(&["unban", &show(&t)]);
                    let gone = run.code == 1 && run.stderr.contains("not blocked");
                    assert!(run.code == 0 || gone, "{backend}: unban {t}: {}", run.stderr);
                    format!("unban {t}")
                }
                45..=54 => {
                    let targets: Vec<IpNet> = (0..20).map(|_| target(&mut rng)).collect();
                    let file = env.dir.path().join("import.txt");
                    std::fs::write(&file, targets.iter().map(|t| format!("{}\n", show(t))).collect::<String>())
                        .unwrap();
                    let d = *rng.pick(&DURATIONS);
                    let run = env.cli(&["import", file.to_str().unwrap(), "--for", d]);
                    assert_eq!(run.code, 0, "{backend}: import --for {d}: {}{}", run.stdout, run.stderr);
                    known.extend(targets);
                    format!("import 20 --for {d}")
                }
                55..=69 => {
                    // fail2ban in block mode: single addresses, bantimes up to 10 years.
                    let addr = loop {
                        let t = target(&mut rng);
                        if t.prefix_len() == t.max_prefix_len() {
                            break t;
                        }
                    };
                    let secs = *rng.pick(&["1", "3", "600", "86400", "604800", "3456000", "315360000", "-1"]);
                    let ip = show(&addr);
                    let run = env.cli(&["report", "--ip", &ip, "--jail", "sshd", "--mode", "block", "--bantime", secs]);
                    assert_eq!(run.code, 0, "{backend}: report {ip}: {}{}", run.stdout, run.stderr);
                    known.push(addr);
                    format!("fail2ban ban {ip} bantime {secs}")
                }
                70..=76 if !known.is_empty() => {
                    let t = *rng.pick(&known);
                    let ip = show(&IpNet::from(t.addr()));
                    let run =
                        env.cli(&["report", "--event", "unban", "--ip", &ip, "--jail", "sshd", "--mode", "block"]);
                    assert_eq!(run.code, 0, "{backend}: fail2ban unban {ip}: {}", run.stderr);
                    format!("fail2ban unban {ip}")
                }
                77..=81 => {
                    // The feed lists a new set of threats (addresses and networks); a
                    // sync applies it.
                    let items: Vec<serde_json::Value> = (0..10)
                        .map(|_| serde_json::json!({"ip_address": show(&target(&mut rng)), "threat_score": 90 + rng.below(11)}))
                        .collect();
                    emu.with(|s| s.feed = FeedSource::Items(items));
                    let run = env.cli(&["sync"]);
                    assert_eq!(run.code, 0, "{backend}: sync: {}{}", run.stdout, run.stderr);
                    "a feed pull".to_string()
                }
                82..=84 => {
                    std::thread::sleep(Duration::from_secs(3));
                    "3 s of expiry".to_string()
                }
                85..=89 => {
                    flush(backend, &ns);
                    "a flush of the firewall".to_string()
                }
                90..=94 => {
                    daemon = restart(&env, &ns, daemon, false);
                    "a restart".to_string()
                }
                _ => {
                    daemon = restart(&env, &ns, daemon, true);
                    "kill -9 and a start".to_string()
                }
            };
            converge(backend, &ns, &env, &format!("step {i}: {step} (seed {seed})"));
        }
        let held = compare(backend, &ns, &env).unwrap();
        eprintln!("{backend}: {steps} steps, {held} elements in the kernel at the end, equal to the store");
        daemon.signal(Signal::SIGTERM);
    }
}

#[test]
fn bans_of_days_to_years_are_in_the_kernel_with_a_timeout_it_accepts() {
    for backend in BACKENDS {
        if !privileged("long-ban test", tools(backend)) {
            return;
        }
        let env = Env::with_backend(backend, "");
        let ns = Netns::new("long");
        let daemon = env.spawn_daemon_in(&ns);
        let max = backend_max(backend);
        let cases: [(&str, &str, Option<u64>); 8] = [
            ("203.0.113.1", "1s", Some(1)),
            ("203.0.113.2", "27h", Some(27 * 3600)),
            ("203.0.113.200", "2d", Some(2 * DAY)),
            ("203.0.113.3", "7d", Some(7 * DAY)),
            ("203.0.113.4", "40d", Some(40 * DAY)),
            ("2001:db8::4", "3650d", Some(3650 * DAY)),
            ("198.51.100.0/24", "36500d", Some(36_500 * DAY)),
            ("2001:db8:77::/48", "permanent", None),
        ];
        for (target, length, _) in cases {
            let run = env.cli(&["ban", target, "--for", length]);
            assert_eq!(run.code, 0, "{backend}: ban {target} --for {length}: {}", run.stderr);
            assert!(run.stdout.starts_with("banned"), "{}", run.stdout);
        }
        // fail2ban's recidive week, in block mode.
        env.cli(&["report", "--ip", "203.0.113.9", "--jail", "recidive", "--mode", "block", "--bantime", "604800"])
            .expect_code(0);
        let held = kernel(backend, &ns);
        let key = |t: &str, source: &str| if backend == "nftables" { format!("{source}:{t}") } else { t.to_string() };
        for (target, length, secs) in cases.iter().skip(1).chain(&[("203.0.113.9", "fail2ban", Some(7 * DAY))]) {
            let source = if *length == "fail2ban" { "fail2ban" } else { "manual" };
            let left = held
                .get(&key(target, source))
                .unwrap_or_else(|| panic!("{backend}: {target} ({length}) is not in the kernel: {held:?}"));
            match (secs, left) {
                (None, None) => {}
                (Some(s), Some(t)) => {
                    let due = (*s).min(max);
                    assert!(
                        *t + 5 >= due && *t <= due,
                        "{backend}: {target} ({length}): kernel {t} s, expected {due} s"
                    );
                }
                _ => panic!("{backend}: {target} ({length}): kernel {left:?}, expected {secs:?}"),
            }
        }
        let status = env.cli(&["status", "--json"]).json();
        assert!(status["firewall"]["last_error"].is_null(), "{backend}: {status}");
        assert_eq!(status["firewall"]["refused"].as_array().unwrap().len(), 0, "{backend}: {status}");
        assert_eq!(status["firewall"]["kernel_elements"].as_u64(), Some(held.len() as u64), "{backend}: {status}");
        // The 1 s ban lapses in the kernel and the store alike.
        wait_for("the 1 s ban to lapse", Duration::from_secs(10), || {
            !kernel(backend, &ns).contains_key(&key("203.0.113.1", "manual"))
        });
        converge(backend, &ns, &env, "the long bans");
        daemon.signal(Signal::SIGTERM);
    }
}

#[test]
fn durations_that_cannot_be_represented_are_refused_at_every_door_and_nothing_panics() {
    let env = Env::new("");
    let _daemon = env.start_in_process();
    for length in ["8000y", "36526d", "101y"] {
        let run = env.cli(&["ban", "203.0.113.50", "--for", length]);
        assert_eq!(run.code, 2, "ban --for {length}: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains("100-year limit"), "{}", run.stderr);
    }
    // The socket, with a for_secs of 2.5e11 as a client might send it.
    let reply = env
        .client()
        .round_trip(b"{\"v\":1,\"cmd\":\"ban\",\"target\":\"203.0.113.51\",\"for_secs\":250000000000}\n")
        .expect("a reply");
    let error = reply.error.expect("an error");
    assert_eq!(error.code, banshare::control::protocol::ErrorCode::BadRequest, "{}", error.message);
    assert!(error.message.contains("100-year limit"), "{}", error.message);
    // fail2ban's unbounded bantime.increment: kept, capped, and the record says so.
    env.cli(&["report", "--ip", "203.0.113.52", "--jail", "recidive", "--bantime", "260000000000"]).expect_code(0);
    let listed = env.cli(&["list", "--json"]).json();
    let d = &listed["decisions"][0];
    assert!(d["reason"].as_str().unwrap().contains("capped at banshare's 100-year limit"), "{d}");
    let expires = humantime::parse_rfc3339(d["expires"].as_str().unwrap()).unwrap();
    let years = expires.duration_since(SystemTime::now()).unwrap().as_secs() / (365 * DAY);
    assert!((99..=100).contains(&years), "{d}");
    // Everything that reads it still works.
    env.cli(&["query", "203.0.113.52"]).expect_code(0);
    env.cli(&["status"]).expect_code(0);
    env.cli(&["unban", "203.0.113.52"]).expect_code(0);
    env.cli(&["ban", "203.0.113.53", "--for", "36525d"]).expect_code(0);
    env.cli(&["list"]).expect_code(0);

    for (section, key) in [
        ("[filter.sshd]\n", "bantime"),
        ("[decisions]\n", "manual_bantime"),
        ("[feed]\n", "ttl"),
        ("[detect]\n", "bantime_max"),
        ("[fail2ban]\n", "log_bantime"),
    ] {
        let bad = Env::new(&format!("{section}{key} = \"9000y\""));
        let run = bad.cli(&["config", "check"]);
        assert_eq!(run.code, 2, "{key}: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains(key) && run.stderr.contains("100-year limit"), "{}", run.stderr);
    }
}

#[test]
fn query_of_an_ipv4_address_ignores_ipv6_networks_around_the_mapped_range() {
    let env = Env::new("");
    let _daemon = env.start_in_process();
    env.cli(&["ban", "::ffff:0:0/95", "--for", "1h"]).expect_code(0);
    let q = env.cli(&["query", "8.8.8.8", "--json"]);
    assert_eq!(q.json()["blocked"], false, "{}", q.stdout);
    let q = env.cli(&["query", "::fffe:1:2", "--json"]);
    assert_eq!(q.json()["blocked"], true, "{}", q.stdout);
}

#[test]
fn a_damaged_or_emptied_state_database_is_refused_with_what_to_do() {
    let env = Env::new("");
    let daemon = env.spawn_daemon();
    let file = env.dir.path().join("many.txt");
    std::fs::write(&file, (0..3000u32).map(|i| format!("198.18.{}.{}\n", i / 250, i % 250 + 1)).collect::<String>())
        .unwrap();
    env.cli(&["import", file.to_str().unwrap(), "--for", "1d"]).expect_code(0);
    assert_eq!(daemon.stop(), Some(0));
    let db = env.state_dir.join("state.db");
    let pristine = std::fs::read(&db).unwrap();
    assert!(pristine.len() > 64 * 4096, "the database spans many pages: {}", pristine.len());

    // Garbage in the middle pages.
    let mut damaged = pristine.clone();
    let middle = damaged.len() / 2 / 4096 * 4096;
    for b in &mut damaged[middle..middle + 3 * 4096] {
        *b = 0xA5;
    }
    std::fs::write(&db, &damaged).unwrap();
    let run = run_briefly(&env);
    assert_ne!(run.code, 0, "a damaged database must not start");
    assert!(run.stderr.contains("is damaged") && run.stderr.contains("--new-state"), "{}", run.stderr);

    // A database that lost its contents (truncated): refused unless the operator says so.
    std::fs::write(&db, b"").unwrap();
    let run = run_briefly(&env);
    assert_ne!(run.code, 0, "an emptied database must not start");
    assert!(run.stderr.contains("its contents were lost"), "{}", run.stderr);
    // The fail2ban hook's offline path refuses to write into it too.
    let hook = env.cli(&["report", "--ip", "203.0.113.60", "--jail", "sshd"]);
    assert_ne!(hook.code, 0, "{}", hook.stdout);
    let daemon = env.spawn_daemon_with(&[("BANSHARE_NEW_STATE", "1")]);
    assert_eq!(env.listed().len(), 0);
    assert_eq!(daemon.stop(), Some(0));
    // From then on the new state is the state: a plain start works.
    let daemon = env.spawn_daemon();
    assert_eq!(daemon.stop(), Some(0));

    // The untouched database starts as before.
    std::fs::write(&db, &pristine).unwrap();
    let _ = std::fs::remove_file(env.state_dir.join("state.db-wal"));
    let daemon = env.spawn_daemon();
    assert_eq!(env.listed().len(), 3000);
    assert_eq!(daemon.stop(), Some(0));
}

/// `banshare run` that must exit by itself: killed after 20 s (and then reported as such).
fn run_briefly(env: &Env) -> crate::support::Run {
    let mut child = std::process::Command::new(crate::support::BIN)
        .arg("run")
        .env("BANSHARE_CONFIG", &env.config_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    crate::support::Run::from(child.wait_with_output().unwrap())
}

/// Tries TCP connections from the client for `secs` seconds; prints how many got through.
const ATTACKER: &str = r#"
import socket, sys, time
end = time.time() + float(sys.argv[2]); ok = 0; tries = 0
while time.time() < end:
    tries += 1
    try:
        socket.create_connection((sys.argv[1], 8080), timeout=0.2).close(); ok += 1
    except OSError:
        pass
print(ok, tries)
"#;

#[test]
fn a_banned_attacker_gets_nothing_through_while_20000_bans_and_more_long_ones_arrive() {
    for backend in BACKENDS {
        if !privileged("packet test", tools(backend)) || !privileged("packet test", &["python3"]) {
            return;
        }
        let env = Env::with_backend(backend, "");
        let (server, client) = veth_pair();
        let _listener = server.spawn(&["python3", "-c", LISTENER]);
        let daemon = env.spawn_daemon_in(&server);
        // Before its ban the attacker gets through (so a zero below means blocked).
        for addr in ["10.77.0.1", "fd77::1"] {
            wait_for("the listener", Duration::from_secs(10), || {
                let out = client.command(&["python3", "-c", ATTACKER, addr, "0.5"]).output().unwrap();
                String::from_utf8_lossy(&out.stdout).split_whitespace().next().is_some_and(|ok| ok != "0")
            });
        }
        // 20,000 bans of mixed durations, up to 40 days.
        for (chunk, length) in ["2h", "1d", "10d", "40d"].iter().enumerate() {
            let file = env.dir.path().join(format!("bulk{chunk}.txt"));
            let list: String =
                (0..5000u32).map(|i| format!("100.{}.{}.{}\n", 64 + chunk, i / 250, i % 250 + 1)).collect();
            std::fs::write(&file, list).unwrap();
            env.cli(&["import", file.to_str().unwrap(), "--for", length]).expect_code(0);
        }
        env.cli(&["ban", "10.77.0.2", "--for", "30d"]).expect_code(0);
        env.cli(&["ban", "fd77::2", "--for", "40d"]).expect_code(0);
        // While the attacker tries, long bans keep arriving.
        let attackers: Vec<std::process::Child> = ["10.77.0.1", "fd77::1"]
            .iter()
            .map(|addr| {
                client
                    .command(&["python3", "-c", ATTACKER, addr, "20"])
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let started = Instant::now();
        let mut n = 0u32;
        while started.elapsed() < Duration::from_secs(19) {
            let length = ["2d", "7d", "40d", "400d", "3650d"][n as usize % 5];
            let run = env.cli(&["ban", &format!("100.80.{}.{}", n / 250, n % 250 + 1), "--for", length]);
            assert_eq!(run.code, 0, "{backend}: {}", run.stderr);
            n += 1;
        }
        for (attacker, addr) in attackers.into_iter().zip(["10.77.0.2", "fd77::2"]) {
            let out = attacker.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let mut cols = text.split_whitespace().map(|c| c.parse::<u64>().unwrap());
            let (ok, tries) = (cols.next().unwrap(), cols.next().unwrap());
            eprintln!("{backend}: {addr}: {ok} of {tries} connections through, {n} long bans arrived meanwhile");
            assert!(tries > 10, "{backend}: the attacker tried");
            assert_eq!(ok, 0, "{backend}: {addr} got {ok} connections through");
        }
        let status = env.cli(&["status", "--json"]).json();
        let kernel_elements = status["firewall"]["kernel_elements"].as_u64().unwrap();
        assert_eq!(kernel_elements, 20_002 + n as u64, "{backend}: {status}");
        assert!(status["firewall"]["last_error"].is_null(), "{backend}: {status}");
        daemon.signal(Signal::SIGTERM);
    }
}

#[test]
fn a_kernel_refusal_is_an_error_with_its_message_never_banned() {
    for backend in BACKENDS {
        if !privileged("refusal test", tools(backend)) {
            return;
        }
        let env = Env::with_backend(backend, "");
        let ns = Netns::new("refuse");
        let daemon = env.spawn_daemon_in(&ns);
        env.cli(&["ban", "203.0.113.70", "--for", "1h"]).expect_code(0);
        // Someone else takes banshare's place in the kernel with something it cannot use.
        let _holder;
        if backend == "nftables" {
            flush(backend, &ns);
            // A table owned by another process: the kernel refuses every change to it.
            _holder =
                Some(ns.spawn(&["sh", "-c", "(echo 'add table inet banshare { flags owner; }'; sleep 600) | nft -i"]));
            wait_for("the owned table", Duration::from_secs(5), || {
                ns.exec(&["nft", "list", "table", "inet", "banshare"]).code == 0
            });
        } else {
            _holder = None;
            flush(backend, &ns);
            ns.exec(&["ipset", "create", "banshare-v4", "hash:ip"]).expect_code(0);
        }
        let run = env.cli(&["ban", "203.0.113.71", "--for", "1h"]);
        assert_ne!(run.code, 0, "{backend}: a refused ban must fail: {}", run.stdout);
        assert!(!run.stdout.contains("banned"), "{backend}: {}", run.stdout);
        assert!(run.stderr.contains("NOT blocked"), "{backend}: {}", run.stderr);
        let report = env.cli(&["report", "--ip", "203.0.113.72", "--jail", "sshd", "--mode", "block"]);
        assert_ne!(report.code, 0, "{backend}: a refused fail2ban block must fail: {}", report.stdout);
        let status = env.cli(&["status"]);
        assert!(status.stdout.contains("last error"), "{backend}: {}", status.stdout);
        daemon.kill_hard();
    }
}

#[test]
fn fail2ban_bans_and_unbans_racing_on_one_address_leave_the_kernel_equal_to_the_store() {
    let backend = "nftables";
    if !privileged("fail2ban race test", tools(backend)) {
        return;
    }
    let env = Env::with_backend(backend, "");
    let ns = Netns::new("race");
    let daemon = env.spawn_daemon_in(&ns);
    let env = std::sync::Arc::new(env);
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let env = std::sync::Arc::clone(&env);
            std::thread::spawn(move || {
                for i in 0..40 {
                    let ip = format!("203.0.113.{}", 100 + (i % 3));
                    let event = if (i + w) % 2 == 0 { "ban" } else { "unban" };
                    let run = env.cli(&[
                        "report",
                        "--event",
                        event,
                        "--ip",
                        &ip,
                        "--jail",
                        "sshd",
                        "--mode",
                        "block",
                        "--bantime",
                        "3600",
                    ]);
                    assert_eq!(run.code, 0, "{event} {ip}: {}", run.stderr);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // No waiting here: every command returned after its change reached the kernel.
    compare(backend, &ns, &env).unwrap_or_else(|why| panic!("{why}"));
    daemon.signal(Signal::SIGTERM);
}

#[test]
fn a_refused_batch_never_takes_out_what_is_in_force() {
    let backend = "nftables";
    if !privileged("no-gap test", tools(backend)) {
        return;
    }
    let env = Env::with_backend(backend, "");
    let ns = Netns::new("nogap");
    let daemon = env.spawn_daemon_in(&ns);
    let file = env.dir.path().join("bulk.txt");
    std::fs::write(&file, (0..2000u32).map(|i| format!("198.18.{}.{}\n", i / 250, i % 250 + 1)).collect::<String>())
        .unwrap();
    env.cli(&["import", file.to_str().unwrap(), "--for", "40d"]).expect_code(0);
    env.cli(&["ban", "198.19.0.0/16", "--for", "2d"]).expect_code(0);
    // Something else puts an element in banshare's network set: banshare's next network
    // overlaps it, and the kernel refuses that batch.
    ns.exec(&["nft", "add", "element", "inet", "banshare", "manual_v4_net", "{ 10.0.0.0/8 }"]).expect_code(0);
    let gaps = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (gaps, done, name) = (gaps.clone(), done.clone(), ns.name.clone());
        std::thread::spawn(move || {
            let ns = Netns { name };
            let mut polls = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || polls < 3 {
                let held = kernel("nftables", &ns);
                if !held.contains_key("manual:198.18.7.250") || !held.contains_key("manual:198.19.0.0/16") {
                    gaps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                polls += 1;
            }
            std::mem::forget(ns); // owned by the test
            polls
        })
    };
    let run = env.cli(&["ban", "10.1.0.0/16", "--for", "7d"]);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let polls = watcher.join().unwrap();
    assert_eq!(run.code, 0, "the reload took the new network: {}{}", run.stdout, run.stderr);
    assert_eq!(
        gaps.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "blocks left the kernel during the recovery ({polls} polls)"
    );
    assert!(daemon.log_text().contains("nftables refused a batch"), "the batch was refused: {}", daemon.log_text());
    converge(backend, &ns, &env, "the refused batch");
    assert!(env.cli(&["status", "--json"]).json()["firewall"]["last_error"].is_null());
    daemon.signal(Signal::SIGTERM);
}

#[test]
fn a_stored_expiry_past_year_9999_from_an_older_banshare_is_read_without_a_panic() {
    let env = Env::new("");
    let daemon = env.spawn_daemon();
    env.cli(&["ban", "203.0.113.80", "--for", "1h"]).expect_code(0);
    assert_eq!(daemon.stop(), Some(0));
    let conn = rusqlite::Connection::open(env.state_dir.join("state.db")).unwrap();
    conn.execute("UPDATE decisions SET expires_ms = ?1", [i64::MAX]).unwrap();
    drop(conn);
    let _daemon = env.spawn_daemon();
    let list = env.cli(&["list", "--json"]);
    list.expect_code(0);
    assert_eq!(list.json()["decisions"][0]["expires"], "9999-12-31T23:59:59.999Z", "{}", list.stdout);
    env.cli(&["query", "203.0.113.80"]).expect_code(0);
    env.cli(&["status"]).expect_code(0);
    env.cli(&["unban", "203.0.113.80"]).expect_code(0);
    // The firewall worker lives on: the next ban is in force and says so.
    env.cli(&["ban", "203.0.113.81", "--for", "1h"]).expect_code(0);
    assert!(env.cli(&["status", "--json"]).json()["firewall"]["worker_error"].is_null());
}
