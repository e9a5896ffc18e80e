//! Throwaway network namespaces for the firewall tests (`ip netns`), and the rule that
//! a test needing root fails under CI instead of skipping.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::Run;

/// Whether this process may create namespaces and drive the firewall tools. Without
/// them a test fails under `CI=true` and says it skipped otherwise (never silently).
pub fn privileged(test: &str, tools: &[&str]) -> bool {
    let mut missing: Vec<String> = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".into());
    }
    for tool in tools.iter().chain(&["ip"]) {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            missing.push(format!("`{tool}`"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let message = format!("{test} needs {} (run scripts/test.sh as root)", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    false
}

/// A named network namespace, deleted on drop (with every process still in it).
pub struct Netns {
    pub name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("bs{}-{}-{tag}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]).expect_code(0);
        ns
    }

    /// Runs `args` inside the namespace and waits for it.
    pub fn exec(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("ip netns exec"))
    }

    /// A command that runs `args` inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Starts `args` inside the namespace in the background; killed when dropped.
    pub fn spawn(&self, args: &[&str]) -> Background {
        Background(self.command(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn in namespace"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes left inside (a listener) would keep nothing alive once the
        // namespace is gone, but kill them so they do not outlive the test.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A background process, killed and reaped on drop.
pub struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Two namespaces joined by a veth pair: `server` has 10.77.0.1 and fd77::1,
/// `client` has 10.77.0.2 and fd77::2.
pub fn veth_pair() -> (Netns, Netns) {
    let server = Netns::new("srv");
    let client = Netns::new("cli");
    ip(&["link", "add", "v0", "netns", &server.name, "type", "veth", "peer", "name", "v1", "netns", &client.name]);
    for (ns, dev, v4, v6) in
        [(&server, "v0", "10.77.0.1/24", "fd77::1/64"), (&client, "v1", "10.77.0.2/24", "fd77::2/64")]
    {
        ns.exec(&["ip", "addr", "add", v4, "dev", dev]).expect_code(0);
        ns.exec(&["ip", "addr", "add", v6, "dev", dev, "nodad"]).expect_code(0);
        ns.exec(&["ip", "link", "set", dev, "up"]).expect_code(0);
    }
    (server, client)
}

/// The firewall backends every kernel test runs on.
pub const BACKENDS: [&str; 2] = ["nftables", "ipset"];

/// The tools `backend` needs.
pub fn tools(backend: &str) -> &'static [&'static str] {
    match backend {
        "nftables" => &["nft"],
        _ => &["ipset", "iptables", "ip6tables"],
    }
}

/// A TCP server on port 8080 (both families) inside `ns`.
pub const LISTENER: &str = "import socket\n\
s = socket.socket(socket.AF_INET6)\n\
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('::', 8080))\n\
s.listen(64)\n\
while True:\n    c, _ = s.accept()\n    c.close()\n";
