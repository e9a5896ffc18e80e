//! Detection latency: `cargo bench --bench detect_latency` (as root for the kernel part).
//!
//! The daemon runs in-process with the sshd filter at maxretry 1 (each line is a ban);
//! 200 lines are appended to a followed log one at a time, 20 ms apart, and for each the time is
//! taken until:
//!
//! 1. its decision is committed in the store (dry-run firewall; a second SQLite
//!    connection watches), and
//! 2. as root, in a network namespace of its own, its element is in the kernel
//!    (nftables backend; polled with `nft get element`, as an operator would check,
//!    so each poll costs a process start of about 2 ms and the figure is an upper
//!    bound).
//!
//! Prints the median, the 99th percentile and the maximum of each. With
//! `BANSHARE_BENCH_FAIL2BAN=sshd` the filter runs fail2ban's own definition
//! (`/etc/fail2ban/filter.d/sshd.conf`) instead of the built-in patterns.

// Tests drive real programs (ip, nft, the banshare binary) directly.
#![allow(clippy::disallowed_types)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banshare::clock::Timestamp;
use banshare::store::Store;

const LINES: u32 = 200;

fn main() {
    let root = nix::unistd::geteuid().is_root();
    if root {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare a network namespace");
        let _ = Command::new("ip").args(["link", "set", "lo", "up"]).status();
    }
    let store_samples = run("dry-run", |dir, ip| {
        let store = Store::open(&dir.join("state/state.db")).unwrap();
        let addr = ip.parse().unwrap();
        move || !store.covering(addr, Timestamp::now(), 0).unwrap().0.is_empty()
    });
    report("line appended -> decision in the store", store_samples);
    if !root {
        println!("line appended -> element in the kernel: needs root (it creates a network namespace)");
        return;
    }
    let kernel_samples = run("nftables", |_, ip| {
        let element = format!("{{ {ip} }}");
        move || {
            Command::new("nft")
                .args(["get", "element", "inet", "banshare", "detect_v4", &element])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        }
    });
    report("line appended -> element in the kernel (nftables)", kernel_samples);
    banshare::enforce::teardown().ok();
}

/// Runs a daemon on `backend` and appends [`LINES`] failures, each from a new address;
/// `done(dir, ip)` gives the check that the ban of `ip` has landed.
fn run<F: FnMut() -> bool>(backend: &str, done: impl Fn(&Path, &str) -> F) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("auth.log");
    std::fs::write(&log, "").unwrap();
    let definition =
        std::env::var("BANSHARE_BENCH_FAIL2BAN").map(|d| format!("fail2ban = {d:?}\n")).unwrap_or_default();
    let text = format!(
        "state_dir = {:?}\nsocket = {:?}\n[[source]]\npath = {:?}\nfilters = [\"sshd\"]\n[filter.sshd]\nmaxretry = 1\n{definition}[firewall]\nbackend = {backend:?}\n",
        dir.path().join("state"),
        dir.path().join("s.sock"),
        log
    );
    let config = banshare::config::Config::from_toml(&text, &dir.path().join("banshare.toml")).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let handle = runtime.block_on(banshare::daemon::start(config)).unwrap();

    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let mut samples = Vec::new();
    for i in 0..LINES {
        let ip = format!("198.51.{}.{}", i / 250, i % 250 + 1);
        let line =
            format!("{} web1 sshd[{}]: Failed password for root from {ip} port 22 ssh2\n", Timestamp::now(), 1000 + i);
        let mut landed = done(dir.path(), &ip);
        let t = Instant::now();
        file.write_all(line.as_bytes()).unwrap();
        while !landed() {
            assert!(t.elapsed() < Duration::from_secs(10), "no ban for {ip}");
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(t.elapsed());
        // Lines 20 ms apart: single bans, not a storm (which the worker coalesces).
        std::thread::sleep(Duration::from_millis(20));
    }
    runtime.block_on(handle.shutdown());
    samples
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}, {} lines: median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        samples.len(),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() * 99 / 100]),
        ms(*samples.last().unwrap())
    );
}
