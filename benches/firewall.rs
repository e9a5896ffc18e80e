//! Firewall loading benchmark: `sudo cargo bench --bench firewall`.
//!
//! Runs in a network namespace of its own (it unshares one at start; needs root), so the
//! host's firewall is never touched. In one run, with fixed-seed addresses:
//!
//! 1. 100,000 addresses through `banshare import` end to end (CLI, socket, SQLite commit,
//!    one nftables transaction), on a fresh state each time: median of 3 runs. Also with
//!    the ipset backend.
//! 2. The nftables backend alone reloading the same 100,000 (the table by `nft`, the
//!    elements in one netlink batch): median of 3.
//! 3. An incremental batch of 1,000 additions and 1,000 removals on top of 100,000:
//!    median of 5.
//! 4. The way fail2ban's nftables action works: one `nft add element` process per
//!    address, 2,000 addresses on top of the loaded table, extrapolated to 100,000.
//! 5. A restart with 100,000 active decisions, banshare's table removed while it was
//!    stopped: from `banshare run` to its `READY=1` (sd_notify), every element then
//!    checked in the kernel (median of 5). Also with the ipset backend.
//! 6. The peers' bulk loads of the same 100,000: one `nft -f` file, and one bare
//!    `ipset restore` into a fresh set (median of 3 each), and the ratios of
//!    `banshare import` to them.

// Tests drive real programs (ip, nft, the banshare binary) directly.
#![allow(clippy::disallowed_types)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use banshare::clock::Timestamp;
use banshare::decision::Source;
use banshare::enforce::nftables::Nftables;
use banshare::enforce::{Change, Element, Firewall, FirewallOptions, RuleAction};
use common::{addresses, list, median, ms};

const N: usize = 100_000;
const PER_ADDRESS_SAMPLE: usize = 2_000;

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "the firewall benchmark needs root (it creates a network namespace): sudo cargo bench --bench firewall"
        );
        std::process::exit(1);
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare a network namespace");
    sh("ip", &["link", "set", "lo", "up"]);

    let addrs = addresses(N + 1_000, 0x5eed);
    let (base, extra) = addrs.split_at(N);
    println!("banshare firewall benchmark: {N} addresses, in a private network namespace");

    let mut import_nft = Duration::ZERO;
    let mut import_ipset = Duration::ZERO;
    for backend in ["nftables", "ipset"] {
        let runs: Vec<Duration> = (0..5).map(|_| import_run(backend, base)).collect();
        println!("import 100k via `banshare import` ({backend}): median {} (runs {})", ms(median(&runs)), list(&runs));
        if backend == "nftables" {
            import_nft = median(&runs);
        } else {
            import_ipset = median(&runs);
        }
    }
    for backend in ["nftables", "ipset"] {
        let runs = restart_runs(backend, base, 5);
        println!(
            "restart with 100k active decisions, table gone ({backend}): ready after median {} (runs {})",
            ms(median(&runs)),
            list(&runs)
        );
    }
    let bare_nft: Vec<Duration> = (0..3).map(|_| bare_nft_load(base)).collect();
    println!("bare `nft -f` of the 100k into a fresh set: median {} (runs {})", ms(median(&bare_nft)), list(&bare_nft));
    let bare_ipset: Vec<Duration> = (0..3).map(|_| bare_ipset_restore(base)).collect();
    println!(
        "bare `ipset restore` of the 100k into a fresh set: median {} (runs {})",
        ms(median(&bare_ipset)),
        list(&bare_ipset)
    );
    println!(
        "banshare import vs the bare loads: nftables {:.2}x `nft -f`, ipset {:.2}x `ipset restore`",
        import_nft.as_secs_f64() / median(&bare_nft).as_secs_f64(),
        import_ipset.as_secs_f64() / median(&bare_ipset).as_secs_f64()
    );

    let opts = FirewallOptions { forward: true, action: RuleAction::Drop };
    let mut nft = Nftables::probe(opts).expect("nft works");
    let expires = Some(Timestamp::now().plus(Duration::from_secs(3600)));
    let elements: Vec<Element> = base.iter().map(|a| element(*a, expires)).collect();
    let runs: Vec<Duration> = (0..3)
        .map(|_| {
            let t = Instant::now();
            nft.reconcile(&elements, Timestamp::now()).expect("reconcile");
            t.elapsed()
        })
        .collect();
    println!(
        "nftables backend reload of 100k (setup by nft, elements by netlink): median {} (runs {})",
        ms(median(&runs)),
        list(&runs)
    );

    let mut inc = Vec::new();
    for round in 0..5 {
        let (adds, removes) = (&extra[..1_000], &base[round * 1_000..(round + 1) * 1_000]);
        let mut changes: Vec<Change> = adds.iter().map(|a| Change::Add(element(*a, expires))).collect();
        changes.extend(removes.iter().map(|a| Change::Remove(element(*a, expires))));
        let t = Instant::now();
        nft.apply(&changes, Timestamp::now()).expect("apply");
        inc.push(t.elapsed());
        // Undo, so every round starts from the same 100,000.
        let undo: Vec<Change> = changes
            .iter()
            .map(|c| match c {
                Change::Add(e) => Change::Remove(*e),
                Change::Remove(e) => Change::Add(*e),
            })
            .collect();
        nft.apply(&undo, Timestamp::now()).expect("undo");
    }
    println!(
        "incremental 1,000 adds + 1,000 removals on top of 100k: median {} (runs {})",
        ms(median(&inc)),
        list(&inc)
    );

    let sample = &extra[..PER_ADDRESS_SAMPLE.min(extra.len())];
    let sample: Vec<Ipv4Addr> = sample.iter().chain(base.iter()).take(PER_ADDRESS_SAMPLE).copied().collect();
    let t = Instant::now();
    for a in &sample {
        let element = format!("{{ {a} timeout 3600s }}");
        sh("nft", &["add", "element", "inet", "banshare", "manual_v4", &element]);
    }
    let per = t.elapsed() / sample.len() as u32;
    let extrapolated = per * N as u32;
    println!(
        "one `nft add element` process per address: {} per address over {} addresses on top of 100k; 100k extrapolated: {}",
        ms(per),
        sample.len(),
        ms(extrapolated)
    );
    let reload = median(&runs);
    println!(
        "per-address processes vs banshare: {:.0}x slower than `banshare import` end to end, {:.0}x slower than the backend's one-transaction load",
        extrapolated.as_secs_f64() / import_nft.as_secs_f64(),
        extrapolated.as_secs_f64() / reload.as_secs_f64()
    );
    banshare::enforce::teardown().ok();
}

/// One `banshare import` of `addrs` into a fresh daemon on `backend`; returns the time
/// the import command took.
fn import_run(backend: &str, addrs: &[Ipv4Addr]) -> Duration {
    let (dir, config, file) = fresh_state(backend, addrs);

    let mut daemon = Command::new(env!("CARGO_BIN_EXE_banshare"))
        .arg("run")
        .env("BANSHARE_CONFIG", &config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(&dir.path().join("s.sock"));
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_banshare"))
        .args(["import", file.to_str().unwrap(), "--for", "1h"])
        .env("BANSHARE_CONFIG", &config)
        .output()
        .unwrap();
    let took = t.elapsed();
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("imported {} new", addrs.len())));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    daemon.wait().unwrap();
    took
}

/// Imports `addrs` into a daemon on `backend`, then `runs` times: stops it, removes the
/// firewall state, starts it again; returns the times from start to `READY=1`, each
/// checked to have every element in the kernel by then.
fn restart_runs(backend: &str, addrs: &[Ipv4Addr], runs: usize) -> Vec<Duration> {
    let (dir, config, file) = fresh_state(backend, addrs);
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_banshare"))
            .arg("run")
            .env("BANSHARE_CONFIG", &config)
            .env("NOTIFY_SOCKET", &notify_path)
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let ready = |notify: &std::os::unix::net::UnixDatagram| {
        let mut buf = [0u8; 256];
        loop {
            let n = notify.recv(&mut buf).expect("READY=1 within 60 s");
            if buf[..n].starts_with(b"READY=1") {
                return;
            }
        }
    };
    let stop = |mut daemon: std::process::Child| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        daemon.wait().unwrap();
    };
    let daemon = start();
    ready(&notify);
    let out = Command::new(env!("CARGO_BIN_EXE_banshare"))
        .args(["import", file.to_str().unwrap(), "--for", "1h"])
        .env("BANSHARE_CONFIG", &config)
        .output()
        .unwrap();
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
    stop(daemon);
    let mut times = Vec::new();
    for _ in 0..runs {
        banshare::enforce::teardown().ok();
        let t = Instant::now();
        let daemon = start();
        ready(&notify);
        times.push(t.elapsed());
        assert_eq!(kernel_elements(backend), addrs.len(), "every element in the kernel at READY=1");
        stop(daemon);
    }
    banshare::enforce::teardown().ok();
    times
}

/// How many elements banshare's sets hold in the kernel, as the tools list them.
fn kernel_elements(backend: &str) -> usize {
    let listing = |program: &str, args: &[&str]| {
        let out = Command::new(program).args(args).output().expect(program);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    if backend == "nftables" {
        let json = listing("nft", &["-j", "list", "table", "inet", "banshare"]);
        banshare::enforce::nftables::parse_stats(&json).iter().map(|s| s.elements).sum()
    } else {
        listing("ipset", &["list", "banshare-v4"]).lines().skip_while(|l| !l.starts_with("Members:")).skip(1).count()
    }
}

/// One `nft -f` file adding `addrs` (1 h timeouts) to a fresh set of a scratch table.
fn bare_nft_load(addrs: &[Ipv4Addr]) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("load.nft");
    let items: Vec<String> = addrs.iter().map(|a| format!("{a} timeout 3600s")).collect();
    let text = format!(
        "add table inet peer\nadd set inet peer s {{ type ipv4_addr; flags timeout; }}\nadd element inet peer s {{ {} }}\n",
        items.join(", ")
    );
    std::fs::write(&file, text).unwrap();
    let t = Instant::now();
    sh("nft", &["-f", file.to_str().unwrap()]);
    let took = t.elapsed();
    sh("nft", &["delete", "table", "inet", "peer"]);
    took
}

/// One `ipset restore` of `addrs` (1 h timeouts) into a fresh `hash:net` set.
fn bare_ipset_restore(addrs: &[Ipv4Addr]) -> Duration {
    let mut text = String::from("create peer hash:net family inet maxelem 262144 timeout 0\n");
    for a in addrs {
        text.push_str(&format!("add peer {a} timeout 3600\n"));
    }
    let t = Instant::now();
    let mut child = Command::new("ipset").arg("restore").stdin(Stdio::piped()).spawn().expect("ipset");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success(), "ipset restore failed");
    let took = t.elapsed();
    sh("ipset", &["destroy", "peer"]);
    took
}

/// No banshare firewall state, and a directory with a config for `backend` (feed
/// pulls and reports off) and `addrs` as an import list; returns the directory, the
/// config's path and the list's.
fn fresh_state(backend: &str, addrs: &[Ipv4Addr]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    banshare::enforce::teardown().ok();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("banshare.toml");
    let text = format!(
        "state_dir = {:?}\nsocket = {:?}\n[feed]\npull = false\nreport = false\n[firewall]\nbackend = {backend:?}\n",
        dir.path().join("state"),
        dir.path().join("s.sock")
    );
    std::fs::write(&config, text).unwrap();
    let list: String = addrs.iter().map(|a| format!("{a}\n")).collect();
    let file = dir.path().join("list.txt");
    std::fs::write(&file, list).unwrap();
    (dir, config, file)
}

fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn element(a: Ipv4Addr, expires: Option<Timestamp>) -> Element {
    Element { source: Source::Manual, target: ipnet::IpNet::from(std::net::IpAddr::V4(a)), expires }
}

fn sh(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).stdout(Stdio::null()).status().expect(program);
    assert!(status.success(), "{program} {args:?} failed");
}
