//! The fail2ban hook's cost: `cargo bench --bench hook_latency`.
//!
//! Runs `banshare report` as fail2ban's action does (a new process per ban, with matched
//! lines), 300 times against a running daemon (in-process, dry-run firewall, reporting
//! on, the API unreachable so reports queue), and 100 times with the daemon stopped (the
//! offline path into the store). Prints the median and the 99th percentile per call.

// Tests drive real programs (the banshare binary) directly.
#![allow(clippy::disallowed_types)]

use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_banshare");

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("api-key");
    std::fs::write(&key, "wayscloud_ip_bench\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config_path = dir.path().join("banshare.toml");
    let text = format!(
        "state_dir = {:?}\nsocket = {:?}\n[[source]]\npath = {:?}\nfilters = [\"sshd\"]\n[firewall]\nbackend = \"dry-run\"\n\
         [feed]\nbase_url = \"http://127.0.0.1:9\"\napi_key_file = {key:?}\npull = false\n",
        dir.path().join("state"),
        dir.path().join("s.sock"),
        dir.path().join("auth.log"),
    );
    std::fs::write(&config_path, &text).unwrap();
    let config = banshare::config::Config::from_toml(&text, &config_path).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let handle = runtime.block_on(banshare::daemon::start(config)).unwrap();

    let up = measure(&config_path, 300, 0);
    runtime.block_on(handle.shutdown());
    let down = measure(&config_path, 100, 1000);
    report("daemon running", &up);
    report("daemon stopped (offline path)", &down);
}

fn measure(config: &std::path::Path, n: u32, offset: u32) -> Vec<Duration> {
    let matches = "Jan  2 03:04:05 web1 sshd[9]: Failed password for root from 45.1.2.3 port 1 ssh2\n".repeat(5);
    let mut samples = Vec::new();
    for i in offset..offset + n {
        let ip = format!("45.{}.{}.{}", 100 + i / 60000, (i / 250) % 240, i % 250 + 1);
        let t = Instant::now();
        let out = Command::new(BIN)
            .args(["report", "--mode", "block", "--ip", &ip, "--jail", "sshd", "--failures", "5"])
            .args(["--time", "1767323045", "--bantime", "600", "--restored", "0", "--matches", &matches])
            .env("BANSHARE_CONFIG", config)
            .output()
            .unwrap();
        samples.push(t.elapsed());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    samples.sort();
    samples
}

fn report(what: &str, samples: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "banshare report, {what}, {} calls: median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        samples.len(),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() * 99 / 100]),
        ms(*samples.last().unwrap())
    );
}
