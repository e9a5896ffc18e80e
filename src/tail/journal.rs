//! Following the systemd journal through `journalctl --follow --output=json`.
//!
//! Each entry becomes a syslog-style line (`2026-11-23T10:00:01Z host sshd[1234]: msg`),
//! so the same filters (and sshd's per-session counting) apply to journald and to files.
//! The cursor of the last entry read is kept in the store; a restart resumes after it.
//! Without a cursor, reading starts `since` ago (the longest `findtime`), never replaying
//! older history.

// The second module allowed to start a process (see clippy.toml): journalctl gets the
// configured match and a cursor as argv, never through a shell.
#![allow(clippy::disallowed_types)]

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};

use serde_json::Value;

use crate::clock::Timestamp;

/// One journal source: journalctl matches (`FIELD=value`, space-separated; the same field
/// repeated means either), optionally read from a journal file or directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSpec {
    pub matches: String,
    pub file: Option<PathBuf>,
}

impl JournalSpec {
    /// The key its cursor is stored under.
    pub fn key(&self) -> String {
        match &self.file {
            Some(f) => format!("journal:{}:{}", f.display(), self.matches),
            None => format!("journal:{}", self.matches),
        }
    }

    /// journalctl's arguments: after `cursor` if there is one, else from `since`.
    pub fn args(&self, cursor: Option<&str>, since: Timestamp) -> Vec<String> {
        let mut args: Vec<String> = vec!["--follow".into(), "--output=json".into(), "--no-pager".into()];
        match &self.file {
            Some(f) if f.is_dir() => args.push(format!("--directory={}", f.display())),
            Some(f) => args.push(format!("--file={}", f.display())),
            None => {}
        }
        match cursor {
            Some(c) => args.push(format!("--after-cursor={c}")),
            None => args.push(format!("--since=@{}", since.0.div_euclid(1000))),
        }
        args.extend(self.matches.split_whitespace().map(String::from));
        args
    }
}

/// A running `journalctl --follow`.
pub struct Journal {
    child: Child,
    out: BufReader<ChildStdout>,
    buf: String,
    /// Reads journalctl's stderr to its end (so a chatty journalctl never blocks on a
    /// full pipe) and returns the last lines: why it ended, when it does.
    complaints: Option<std::thread::JoinHandle<VecDeque<String>>>,
}

/// stderr lines of journalctl kept for the message when it ends.
const KEPT_COMPLAINTS: usize = 3;

/// One journal entry as a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub cursor: String,
    pub line: Vec<u8>,
}

impl Journal {
    pub fn spawn(spec: &JournalSpec, cursor: Option<&str>, since: Timestamp) -> io::Result<Journal> {
        let mut child = Command::new("journalctl")
            .args(spec.args(cursor, since))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let stderr = child.stderr.take().expect("piped stderr");
        let complaints = std::thread::Builder::new().name("banshare-journalctl-stderr".into()).spawn(move || {
            let mut kept = VecDeque::with_capacity(KEPT_COMPLAINTS);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if kept.len() == KEPT_COMPLAINTS {
                    kept.pop_front();
                }
                kept.push_back(line.chars().take(500).collect::<String>());
            }
            kept
        })?;
        Ok(Journal { child, out, buf: String::new(), complaints: Some(complaints) })
    }

    /// Why journalctl ended: its exit status and the last lines it wrote to stderr.
    pub fn why_ended(&mut self) -> String {
        let status = match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(error) => error.to_string(),
        };
        // The pipe's end comes with the exit: the reader returns its last lines.
        let said: Vec<String> = self.complaints.take().and_then(|t| t.join().ok()).map(Vec::from).unwrap_or_default();
        if said.is_empty() { status } else { format!("{status}: {}", said.join(" / ")) }
    }

    /// The child's pid (to stop it from another thread).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next entry; `None` when journalctl ended. Unparseable output is skipped.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        loop {
            self.buf.clear();
            if self.out.read_line(&mut self.buf)? == 0 {
                let _ = self.child.wait();
                return Ok(None);
            }
            if let Some(entry) = render(&self.buf) {
                return Ok(Some(entry));
            }
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Renders a journal JSON entry as `TIME HOST IDENT[PID]: MESSAGE`.
pub fn render(json: &str) -> Option<Entry> {
    let v: Value = serde_json::from_str(json).ok()?;
    let cursor = v["__CURSOR"].as_str()?.to_string();
    let message: Vec<u8> = match &v["MESSAGE"] {
        Value::String(s) => s.clone().into_bytes(),
        // Journald gives non-UTF-8 messages as arrays of bytes.
        Value::Array(bytes) => bytes.iter().filter_map(|b| b.as_u64().map(|b| b as u8)).collect(),
        _ => return None,
    };
    let micros: i64 = v["__REALTIME_TIMESTAMP"].as_str().and_then(|t| t.parse().ok())?;
    let field = |k: &str| v[k].as_str().filter(|s| !s.is_empty());
    let ident = field("SYSLOG_IDENTIFIER").or_else(|| field("_COMM")).unwrap_or("-");
    let host = field("_HOSTNAME").unwrap_or("-");
    let pid = field("_PID").or_else(|| field("SYSLOG_PID")).map(|p| format!("[{p}]")).unwrap_or_default();
    let mut line = format!("{} {host} {ident}{pid}: ", Timestamp(micros / 1000)).into_bytes();
    line.extend_from_slice(&message);
    Some(Entry { cursor, line })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_render_as_syslog_style_lines() {
        let json = r#"{"__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"1795445652857522","MESSAGE":"Failed password for root from 203.0.113.7 port 22 ssh2","_PID":"100","SYSLOG_IDENTIFIER":"sshd-session","_HOSTNAME":"web1"}"#;
        let e = render(json).unwrap();
        assert_eq!(e.cursor, "s=1;i=2");
        assert_eq!(
            String::from_utf8(e.line).unwrap(),
            "2026-11-23T14:54:12Z web1 sshd-session[100]: Failed password for root from 203.0.113.7 port 22 ssh2"
        );
        let binary = r#"{"__CURSOR":"c","__REALTIME_TIMESTAMP":"0","MESSAGE":[104,105,255],"_COMM":"x"}"#;
        assert_eq!(render(binary).unwrap().line, b"1970-01-01T00:00:00Z - x: hi\xff");
        assert_eq!(render("not json"), None);
        assert_eq!(render(r#"{"__CURSOR":"c","__REALTIME_TIMESTAMP":"0"}"#), None, "no message");
    }

    #[test]
    fn arguments_resume_after_the_cursor_or_start_at_since() {
        let spec = JournalSpec { matches: "_SYSTEMD_UNIT=ssh.service _SYSTEMD_UNIT=sshd.service".into(), file: None };
        let args = spec.args(None, Timestamp(1_795_000_000_500));
        assert_eq!(args[3], "--since=@1795000000");
        assert_eq!(&args[4..], ["_SYSTEMD_UNIT=ssh.service", "_SYSTEMD_UNIT=sshd.service"]);
        assert_eq!(spec.args(Some("s=1;i=2"), Timestamp(0))[3], "--after-cursor=s=1;i=2");
    }
}
