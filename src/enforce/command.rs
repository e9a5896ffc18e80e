//! The one place banshare starts firewall processes (`nft`, `ipset`, `iptables`).
//!
//! Untrusted text (addresses, names) reaches them only as argv entries or on stdin, never
//! through a shell. A failure keeps the command line and its stderr.

// The one module allowed to start processes (see clippy.toml).
#![allow(clippy::disallowed_types)]

use std::io::Write;
use std::process::{Command, Stdio};

use super::FirewallError;

/// Runs `program args...`, feeding `stdin` if given; returns stdout on success.
pub fn run(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, FirewallError> {
    let command_line = || std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FirewallError::Unavailable(format!(
                "`{program}` is not installed (apt install {})",
                debian_package(program)
            )),
            _ => FirewallError::Io { context: format!("cannot start `{}`", command_line()), source: e },
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error (the child exited early) shows up in its exit status and stderr.
        let _ = pipe.write_all(input);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| FirewallError::Io { context: format!("waiting for `{}`", command_line()), source: e })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
            return Err(FirewallError::Unavailable(format!(
                "`{program}` needs root or CAP_NET_ADMIN: {}",
                first_line(&stderr)
            )));
        }
        Err(FirewallError::Command { command: command_line(), stderr })
    }
}

/// The Debian package that ships `program`.
pub fn debian_package(program: &str) -> &'static str {
    match program {
        "nft" => "nftables",
        "ipset" => "ipset",
        "iptables" | "ip6tables" => "iptables",
        _ => "the package providing it",
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_missing_programs_and_keeps_stderr() {
        let e = run("banshare-no-such-tool", &[], None).unwrap_err().to_string();
        assert!(e.starts_with("`banshare-no-such-tool` is not installed"), "{e}");
        let e = run("sh", &["-c", "echo boom >&2; exit 3"], None).unwrap_err().to_string();
        assert_eq!(e, "`sh -c echo boom >&2; exit 3` failed: boom");
        assert_eq!(run("cat", &[], Some(b"fed on stdin")).unwrap(), "fed on stdin");
    }
}
