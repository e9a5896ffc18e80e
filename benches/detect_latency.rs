//! Detection latency: `cargo bench --bench detect_latency`.
//!
//! From a line appended to a followed log to the decision committed in the store: the
//! daemon runs in-process (dry-run firewall, sshd filter with maxretry 1, so each line
//! is a ban) and a second SQLite connection watches for the decision. 200 lines, one at
//! a time; prints the median and the 99th percentile.

// Tests drive real programs (ip, nft, the banshare binary) directly.
#![allow(clippy::disallowed_types)]

use std::io::Write;
use std::time::{Duration, Instant};

use banshare::clock::Timestamp;
use banshare::store::Store;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("auth.log");
    std::fs::write(&log, "").unwrap();
    let text = format!(
        "state_dir = {:?}\nsocket = {:?}\n[[source]]\npath = {:?}\nfilters = [\"sshd\"]\n[filter.sshd]\nmaxretry = 1\n[firewall]\nbackend = \"dry-run\"\n",
        dir.path().join("state"),
        dir.path().join("s.sock"),
        log
    );
    let config = banshare::config::Config::from_toml(&text, &dir.path().join("banshare.toml")).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let handle = runtime.block_on(banshare::daemon::start(config)).unwrap();
    let store = Store::open(&dir.path().join("state/state.db")).unwrap();

    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let mut samples = Vec::new();
    for i in 0..200u32 {
        let ip = format!("198.51.{}.{}", i / 250, i % 250 + 1);
        let line =
            format!("{} web1 sshd[{}]: Failed password for root from {ip} port 22 ssh2\n", Timestamp::now(), 1000 + i);
        let addr = ip.parse().unwrap();
        let t = Instant::now();
        file.write_all(line.as_bytes()).unwrap();
        loop {
            if !store.covering(addr, Timestamp::now(), 0).unwrap().0.is_empty() {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "no decision for {ip}");
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "line appended -> decision in the store, {} lines: median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        samples.len(),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() * 99 / 100]),
        ms(*samples.last().unwrap())
    );
    runtime.block_on(handle.shutdown());
}
