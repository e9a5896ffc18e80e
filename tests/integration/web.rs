//! Where web apps meet the check service, each against a running daemon and the WAYSCloud
//! emulator: Debian's nginx with `contrib/nginx/banshare-auth.conf` (the four verdicts,
//! the challenge page, the verdict passed to the upstream, the client address believed
//! only from a trusted proxy, banshare down on a fail-open and a fail-closed location,
//! the Unix-socket listener), and the login middleware of `contrib/`: Python with real
//! Flask and FastAPI (uvicorn), Node with real Express (their own test files, run here
//! with the daemon they need).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::emulator::Emulator;
use crate::support::{Env, InProcess, wait_for};

/// The addresses of each verdict, as the emulator scores them (and one banned here).
const IPS: [(&str, &str); 5] = [
    ("allow", "45.155.205.1"),
    ("log", "45.155.205.2"),
    ("challenge", "45.155.205.3"),
    ("block", "45.155.205.4"),
    ("banned", "45.155.205.5"),
];

fn ip(kind: &str) -> &'static str {
    IPS.iter().find(|(k, _)| *k == kind).map(|(_, ip)| *ip).expect("a verdict of IPS")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Where the pinned web frameworks live (scripts/install-test-deps.sh puts them there).
fn web_cache() -> PathBuf {
    let cache = std::env::var_os("BANSHARE_TEST_CACHE").map_or("/var/cache/banshare-tests".into(), PathBuf::from);
    cache.join("web")
}

/// Whether `paths` all exist; if not, fails under CI and skips elsewhere.
fn have(test: &str, paths: &[&Path]) -> bool {
    let missing: Vec<String> = paths.iter().filter(|p| !p.exists()).map(|p| p.display().to_string()).collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!("{test} needs {} (run scripts/install-test-deps.sh as root)", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    false
}

/// The emulator scoring each address of [`IPS`].
fn scored_emulator() -> Emulator {
    let emu = Emulator::start();
    emu.with(|s| {
        for (kind, score) in [("allow", 10), ("log", 45), ("challenge", 70), ("block", 95), ("banned", 0)] {
            let ip = ip(kind);
            s.lookups.insert(ip.into(), json!({"ip": ip, "score": score, "categories": []}));
        }
    });
    emu
}

/// A running daemon with the check service listening on `listen` (an address or a socket
/// path), the `banned` address of [`IPS`] banned on it.
fn check_daemon(emu: &Emulator, listen: &str) -> (Env, InProcess) {
    let env = Env::new("");
    let feed = env.feed_section(&emu.url(), "pull = false\nreport = false");
    env.write_config(&format!(
        "{feed}\n[check]\nlisten = {listen:?}\ntrusted_proxies = [\"127.0.0.1\"]\nclient_header = \"X-Real-IP\"\n"
    ));
    let daemon = env.start_in_process();
    env.cli(&["ban", ip("banned"), "--for", "1h"]).expect_code(0);
    (env, daemon)
}

/// nginx on `front` in front of an app server (nginx itself, echoing what it was given),
/// with the contrib snippet pointed at `banshare` (`127.0.0.1:PORT` or `unix:PATH`).
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    front: u16,
}

impl Nginx {
    fn start(banshare: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let snippet = std::fs::read_to_string("contrib/nginx/banshare-auth.conf").unwrap();
        assert!(snippet.contains("proxy_pass http://127.0.0.1:8098/v1/auth;"), "the snippet's documented line");
        let pass = match banshare.strip_prefix("unix:") {
            Some(path) => format!("proxy_pass http://unix:{path}:/v1/auth;"),
            None => format!("proxy_pass http://{banshare}/v1/auth;"),
        };
        std::fs::write(
            dir.path().join("banshare-auth.conf"),
            snippet.replace("proxy_pass http://127.0.0.1:8098/v1/auth;", &pass),
        )
        .unwrap();
        let (front, app) = (free_port(), free_port());
        let d = dir.path().display();
        let conf = format!(
            r#"
user root;
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{app};
        location / {{
            default_type text/plain;
            return 200 "app client=$http_x_real_ip verdict=$http_x_banshare_verdict\n";
        }}
    }}
    server {{
        listen 127.0.0.1:{front};
        # The client address: believed from the proxy in front (127.0.0.1) only.
        set_real_ip_from 127.0.0.1;
        real_ip_header X-Forwarded-For;
        include {d}/banshare-auth.conf;
        location /login {{
            auth_request /_banshare_open;
            auth_request_set $banshare_verdict $upstream_http_x_banshare_verdict;
            proxy_set_header X-Banshare-Verdict $banshare_verdict;
            proxy_set_header X-Real-IP $remote_addr;
            error_page 401 = /challenge;
            proxy_pass http://127.0.0.1:{app};
        }}
        location /api/login {{
            auth_request /_banshare_open;
            auth_request_set $banshare_verdict $upstream_http_x_banshare_verdict;
            proxy_set_header X-Banshare-Verdict $banshare_verdict;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_pass http://127.0.0.1:{app};
        }}
        location /checkout {{
            auth_request /_banshare_closed;
            auth_request_set $banshare_verdict $upstream_http_x_banshare_verdict;
            proxy_set_header X-Banshare-Verdict $banshare_verdict;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_pass http://127.0.0.1:{app};
        }}
        location = /challenge {{
            default_type text/plain;
            return 200 "challenge page\n";
        }}
    }}
}}
"#
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let test = Command::new("nginx")
            .args(["-t", "-q", "-p"])
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .output()
            .unwrap();
        assert!(test.status.success(), "nginx -t: {}", String::from_utf8_lossy(&test.stderr));
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        wait_for("nginx to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", front)).is_ok()
        });
        Nginx { child, dir, front }
    }

    /// GET `path` as if from `client` (through the trusted proxy, X-Forwarded-For):
    /// status and body.
    fn get(&self, path: &str, client: &str) -> (u16, String) {
        http_get(self.front, path, client, "127.0.0.1")
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGQUIT,
        );
        let _ = self.child.wait();
    }
}

#[test]
fn nginx_asks_banshare_before_a_login_fails_open_or_closed_and_works_over_the_unix_socket() {
    if !have("the nginx test", &[Path::new("/usr/sbin/nginx")]) {
        return;
    }
    let emu = scored_emulator();
    let port = free_port();
    let (_env, daemon) = check_daemon(&emu, &format!("127.0.0.1:{port}"));
    let nginx = Nginx::start(&format!("127.0.0.1:{port}"));

    // allow and log reach the app, with the client address and the verdict.
    for kind in ["allow", "log"] {
        let (status, body) = nginx.get("/login", ip(kind));
        assert_eq!(status, 200, "{kind}: {body}\n{}", nginx.error_log());
        assert_eq!(body.trim(), format!("app client={} verdict={kind}", ip(kind)));
    }
    // challenge: 401, or the challenge page where the location sends it there.
    assert_eq!(nginx.get("/api/login", ip("challenge")).0, 401);
    assert_eq!(nginx.get("/login", ip("challenge")), (200, "challenge page\n".into()));
    // block: by score and by a ban on this host.
    for kind in ["block", "banned"] {
        assert_eq!(nginx.get("/login", ip(kind)).0, 403, "{kind}");
        assert_eq!(nginx.get("/checkout", ip(kind)).0, 403, "{kind}");
    }
    assert_eq!(nginx.get("/checkout", ip("allow")).0, 200);
    // A forwarded header from a peer nginx does not trust is not the client: a direct
    // request from 127.0.0.2 claiming to be a banned address is checked as 127.0.0.2.
    let (status, body) = http_get(nginx.front, "/login", ip("banned"), "127.0.0.2");
    assert_eq!((status, body.trim()), (200, "app client=127.0.0.2 verdict=allow"));

    // banshare down (an upgrade, a crash): login goes through, checkout is refused.
    drop(daemon);
    wait_for("the check service to stop", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    let (status, body) = nginx.get("/login", ip("banned"));
    assert_eq!((status, body.trim()), (200, format!("app client={} verdict=", ip("banned")).as_str()), "fail-open");
    assert_eq!(nginx.get("/api/login", ip("allow")).0, 200, "fail-open");
    assert_eq!(nginx.get("/checkout", ip("allow")).0, 500, "fail-closed");
    drop(nginx);

    // The same over the Unix-socket listener.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("check.sock").display().to_string();
    let _daemon = check_daemon(&emu, &socket);
    let nginx = Nginx::start(&format!("unix:{socket}"));
    assert_eq!(nginx.get("/login", ip("banned")).0, 403, "{}", nginx.error_log());
    assert_eq!(nginx.get("/login", ip("challenge")).1, "challenge page\n");
    let (status, body) = nginx.get("/checkout", ip("log"));
    assert_eq!((status, body.trim()), (200, format!("app client={} verdict=log", ip("log")).as_str()));
}

/// A plain HTTP/1.0 GET of `path` on a loopback `port`, sent from the address `from`, with
/// `X-Forwarded-For: xff`: the status and the body.
fn http_get(port: u16, path: &str, xff: &str, from: &str) -> (u16, String) {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    use std::io::{Read, Write};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    let local: std::net::SocketAddrV4 = format!("{from}:0").parse().unwrap();
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(local)).unwrap();
    let remote = SockaddrIn::from(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port));
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &remote).expect("connect");
    let mut stream = std::net::TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\nX-Forwarded-For: {xff}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("an answer");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status: {answer}"));
    (status, body.to_string())
}

/// `ips` as the JSON the contrib tests read from BANSHARE_TEST_IPS.
fn ips_json() -> String {
    serde_json::to_string(&IPS.iter().map(|(k, v)| (*k, *v)).collect::<std::collections::BTreeMap<_, _>>()).unwrap()
}

/// Runs a contrib test program with the daemon's URLs; panics with its output on failure.
fn run_contrib_test(mut command: Command, urls: &[(&str, String)]) {
    command.env("BANSHARE_TEST_IPS", ips_json());
    for (k, v) in urls {
        command.env(k, v);
    }
    let out = command.output().expect("start the contrib test");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "the contrib test failed:\n{text}");
}

#[test]
fn the_python_middleware_guards_flask_and_fastapi() {
    let python = web_cache().join("venv/bin/python");
    if !have("the Python middleware test", &[&python]) {
        return;
    }
    let emu = scored_emulator();
    let port = free_port();
    let _tcp = check_daemon(&emu, &format!("127.0.0.1:{port}"));
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("check.sock");
    let _unix = check_daemon(&emu, &socket.display().to_string());
    let mut command = Command::new(python);
    command.args(["-m", "unittest", "-v", "test_banshare_check"]).current_dir("contrib/python");
    run_contrib_test(
        command,
        &[
            ("BANSHARE_URL", format!("http://127.0.0.1:{port}")),
            ("BANSHARE_SOCKET_URL", format!("unix:{}", socket.display())),
        ],
    );
}

#[test]
fn the_express_middleware_guards_an_express_app() {
    let modules = web_cache().join("node/node_modules");
    if !have("the Express middleware test", &[&modules.join("express")]) {
        return;
    }
    let emu = scored_emulator();
    let port = free_port();
    let _daemon = check_daemon(&emu, &format!("127.0.0.1:{port}"));
    let mut command = Command::new("node");
    command.args(["--test", "contrib/node/test.js"]).env("NODE_PATH", &modules);
    run_contrib_test(command, &[("BANSHARE_URL", format!("http://127.0.0.1:{port}"))]);
}
