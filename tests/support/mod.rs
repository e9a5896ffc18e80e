//! Helpers shared by the integration tests: a temporary banshare environment (config,
//! state directory, socket), the daemon started in-process or as a real `banshare run`
//! process, the real CLI binary, and polling instead of sleeping.

#![allow(dead_code)]

pub mod emulator;
pub mod fail2ban;
pub mod netns;
pub mod providers;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use banshare::config::Config;
use banshare::control::client::Client;
use banshare::control::protocol::Request;
use banshare::daemon::DaemonHandle;
use tempfile::TempDir;

/// The banshare binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_banshare");

/// A throwaway banshare installation: config file, state directory, socket.
pub struct Env {
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
}

impl Env {
    /// An environment on the dry-run backend; `extra` is appended to the config.
    pub fn new(extra: &str) -> Env {
        let dir = tempfile::Builder::new().prefix("bs").tempdir().expect("tempdir");
        let env = Env {
            config_path: dir.path().join("banshare.toml"),
            state_dir: dir.path().join("state"),
            socket: dir.path().join("control.sock"),
            dir,
        };
        env.write_config(extra);
        env
    }

    /// An environment on a real firewall backend (`nftables` or `ipset`).
    pub fn with_backend(backend: &str, extra: &str) -> Env {
        let env = Env::new("");
        env.write_config_for(backend, extra);
        env
    }

    /// Rewrites the config: the environment's paths, the dry-run backend, then `extra`.
    pub fn write_config(&self, extra: &str) {
        self.write_config_for("dry-run", extra);
    }

    /// Rewrites the config with `backend`; `extra` holds top-level keys.
    pub fn write_config_for(&self, backend: &str, extra: &str) {
        let text = format!(
            "state_dir = {:?}\nsocket = {:?}\n{extra}\n[firewall]\nbackend = {backend:?}\n",
            self.state_dir, self.socket
        );
        std::fs::write(&self.config_path, text).expect("write config");
    }

    /// Writes the emulator's key to `api-key` (0600) and returns the `[feed]` section
    /// pointing at `url` with that key file, plus `extra` keys.
    pub fn feed_section(&self, url: &str, extra: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let key = self.dir.path().join("api-key");
        std::fs::write(&key, format!("{}\n", emulator::TEST_KEY)).expect("write the key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod the key");
        format!("[feed]\nbase_url = {url:?}\napi_key_file = {key:?}\n{extra}\n")
    }

    /// Overwrites the config file with exactly `text`.
    pub fn write_raw_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("write config");
    }

    pub fn config(&self) -> Config {
        banshare::config::load(Some(&self.config_path)).expect("test config is valid")
    }

    /// Runs the real CLI against this environment.
    pub fn cli(&self, args: &[&str]) -> Run {
        let out = Command::new(BIN)
            .args(args)
            .env("BANSHARE_CONFIG", &self.config_path)
            .env_remove("BANSHARE_SOCKET")
            .output()
            .expect("run banshare");
        Run::from(out)
    }

    /// Runs the real CLI inside a network namespace (for commands that read the kernel).
    pub fn cli_in(&self, ns: &netns::Netns, args: &[&str]) -> Run {
        let out =
            ns.command(&[BIN]).args(args).env("BANSHARE_CONFIG", &self.config_path).output().expect("run banshare");
        Run::from(out)
    }

    /// A connection to the daemon's control socket.
    pub fn client(&self) -> Client {
        Client::connect(&self.socket, Duration::from_secs(10)).expect("connect to the daemon")
    }

    /// What the dry-run backend recorded, one JSON value per operation.
    pub fn dry_run_log(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.state_dir.join("dry-run.log")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).expect("dry-run log line is JSON")).collect()
    }

    /// The targets `banshare list --json` shows.
    pub fn listed(&self) -> Vec<String> {
        let run = self.cli(&["list", "--json"]);
        assert_eq!(run.code, 0, "list failed: {}", run.stderr);
        run.json()["decisions"]
            .as_array()
            .expect("decisions array")
            .iter()
            .map(|d| d["target"].as_str().unwrap().to_string())
            .collect()
    }

    /// Starts `banshare run` as a child process and waits until it answers.
    pub fn spawn_daemon(&self) -> DaemonProcess {
        self.spawn_daemon_with(&[])
    }

    /// Like [`Env::spawn_daemon`], with extra environment variables.
    pub fn spawn_daemon_with(&self, vars: &[(&str, &str)]) -> DaemonProcess {
        self.spawn_daemon_from(Command::new(BIN), vars)
    }

    /// Starts `banshare run` inside a network namespace.
    pub fn spawn_daemon_in(&self, ns: &netns::Netns) -> DaemonProcess {
        self.spawn_daemon_from(ns.command(&[BIN]), &[])
    }

    fn spawn_daemon_from(&self, mut command: Command, vars: &[(&str, &str)]) -> DaemonProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("daemon log");
        let child = command
            .arg("run")
            .env("BANSHARE_CONFIG", &self.config_path)
            .envs(vars.iter().map(|(k, v)| (*k, *v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn banshare run");
        let mut process = DaemonProcess { child, log: self.dir.path().join("daemon.log") };
        let socket = self.socket.clone();
        wait_for("the daemon to answer", Duration::from_secs(20), || {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("daemon exited early ({status}): {}", process.log_text());
            }
            Client::connect(&socket, Duration::from_secs(2)).is_ok_and(|mut c| c.call(&Request::Ping).is_ok())
        });
        process
    }

    /// Starts the daemon inside this test process.
    pub fn start_in_process(&self) -> InProcess {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let handle = runtime.block_on(banshare::daemon::start(self.config())).expect("daemon starts");
        InProcess { runtime, handle: Some(handle) }
    }
}

/// A daemon running in the test process on its own runtime.
pub struct InProcess {
    runtime: tokio::runtime::Runtime,
    handle: Option<DaemonHandle>,
}

impl InProcess {
    /// Reloads the config, as SIGHUP does.
    pub fn reload(&self) {
        if let Some(h) = &self.handle {
            self.runtime.block_on(h.reload());
        }
    }

    /// Drains and stops the daemon, as SIGTERM does.
    pub fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            self.runtime.block_on(h.shutdown());
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.runtime.block_on(h.shutdown());
        }
    }
}

/// A real `banshare run` process.
pub struct DaemonProcess {
    pub child: Child,
    log: PathBuf,
}

impl DaemonProcess {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal the daemon");
    }

    /// SIGKILL, and reap it.
    pub fn kill_hard(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One run of the CLI.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// Asserts the exit code, showing the output when it differs.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code; stdout: {} stderr: {}", self.stdout, self.stderr);
        self
    }
}

/// Polls `cond` every 20 ms until it holds, failing the test after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a path exists (for readability in assertions).
pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// A small seeded generator (xorshift64*): the same seed replays the same sequence.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// An index below `n` (0 when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}
