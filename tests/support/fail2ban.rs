//! A real fail2ban-server for the integration tests: Debian's filters and actions plus
//! banshare's action, a jail on a temporary log file (polling backend), its own socket,
//! pid file, database and log in a temp directory. Started in the foreground as a child.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_for;

pub struct Fail2ban {
    pub dir: tempfile::TempDir,
    pub auth_log: PathBuf,
    /// Environment for the server, inherited by its actions (`BANSHARE_CONFIG`).
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Fail2ban {
    /// A configuration whose `sshd` jail runs `action` (fail2ban syntax).
    pub fn new(action: &str, env: &[(&str, &Path)]) -> Fail2ban {
        let dir = tempfile::Builder::new().prefix("f2b").tempdir().expect("tempdir");
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        for sub in ["filter.d", "action.d"] {
            let status = Command::new("cp").arg("-r").arg(Path::new("/etc/fail2ban").join(sub)).arg(&conf).status();
            assert!(status.expect("cp").success(), "copy /etc/fail2ban/{sub} (is fail2ban installed?)");
        }
        let action_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/fail2ban/action.d/banshare.conf");
        std::fs::copy(action_src, conf.join("action.d/banshare.conf")).expect("install the banshare action");
        let run = dir.path();
        std::fs::write(
            conf.join("fail2ban.conf"),
            format!(
                "[Definition]\nloglevel = INFO\nlogtarget = {0}/fail2ban.log\nsocket = {0}/f2b.sock\n\
                 pidfile = {0}/f2b.pid\ndbfile = {0}/f2b.sqlite3\n",
                run.display()
            ),
        )
        .unwrap();
        let auth_log = run.join("auth.log");
        std::fs::write(&auth_log, "").unwrap();
        let action = action.replace("DUMMY", &run.join("dummy").display().to_string());
        std::fs::write(
            conf.join("jail.conf"),
            format!(
                "[DEFAULT]\nbackend = polling\nmaxretry = 5\nfindtime = 10m\nbantime = 1h\n\n\
                 [sshd]\nenabled = true\nfilter = sshd\nlogpath = {}\naction = {action}\n",
                auth_log.display()
            ),
        )
        .unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.display().to_string())).collect();
        Fail2ban { dir, auth_log, env, child: None }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("f2b.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("fail2ban.log")
    }

    /// Starts the server and waits until the jail runs.
    pub fn start(&mut self) {
        let out =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("server.out")).unwrap();
        let child = Command::new("fail2ban-server")
            .args(["-f", "-x", "-c"])
            .arg(self.dir.path().join("conf"))
            .arg("-s")
            .arg(self.socket())
            .arg("-p")
            .arg(self.dir.path().join("f2b.pid"))
            .arg("start")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start fail2ban-server");
        self.child = Some(child);
        wait_for("fail2ban's sshd jail", Duration::from_secs(30), || {
            self.client(&["status", "sshd"]).is_ok_and(|s| s.contains("Currently banned"))
        });
    }

    /// Stops the server cleanly (its database keeps the bans for restoring).
    pub fn stop(&mut self) {
        let _ = self.client(&["stop"]);
        if let Some(mut child) = self.child.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `fail2ban-client` against this server: stdout, or stderr as the error.
    pub fn client(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("fail2ban-client").arg("-s").arg(self.socket()).args(args).output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Appends `n` sshd password failures of `ip` (user `oracle`, host `web1`) to the jail's log.
    pub fn failures(&self, ip: &str, n: usize) {
        let now = String::from_utf8(Command::new("date").arg("+%b %e %H:%M:%S").output().unwrap().stdout).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.auth_log).unwrap();
        for i in 0..n {
            writeln!(
                f,
                "{} web1 sshd[{}]: Failed password for invalid user oracle from {ip} port {} ssh2",
                now.trim(),
                300 + i,
                40000 + i
            )
            .unwrap();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Fail2ban {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}
