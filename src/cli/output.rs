//! Human-readable rendering of daemon replies. Pure functions from data to text.

use std::fmt::Write;

use crate::clock::{Timestamp, human_duration};
use crate::control::protocol::{ImportData, QueryData, StatusData};
use crate::decision::{Decision, show_target};
use crate::detect::scan::ScanReport;
use crate::enforce::SetStats;

/// `text` with every control character but newline and tab escaped (`\u{1b}`): ESC, BEL,
/// CR and the C1 controls from a log line or a fail2ban `<matches>` never reach the
/// operator's terminal as commands (window title, clear screen, an overwritten line).
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `until 2026-11-24T13:00:00Z (in 23h 59m)`, or `permanently`.
pub fn until(expires: Option<Timestamp>, now: Timestamp) -> String {
    match expires {
        None => "permanently".into(),
        Some(t) => format!("until {t} (in {})", human_duration(now.until(t))),
    }
}

/// The `list` table.
pub fn decision_table(decisions: &[Decision], now: Timestamp) -> String {
    if decisions.is_empty() {
        return "no blocks in force\n".into();
    }
    let rows: Vec<[String; 4]> = decisions
        .iter()
        .map(|d| {
            let expires = match d.expires {
                None => "never".into(),
                Some(t) => format!("{t} (in {})", human_duration(now.until(t))),
            };
            [show_target(&d.target), d.source.to_string(), expires, d.reason.clone()]
        })
        .collect();
    let header = ["TARGET", "SOURCE", "EXPIRES", "REASON"];
    let widths: Vec<usize> =
        (0..3).map(|i| rows.iter().map(|r| r[i].len()).chain([header[i].len()]).max().unwrap_or(0)).collect();
    let mut out = String::new();
    let mut line = |cols: [&str; 4]| {
        let _ = writeln!(
            out,
            "{:w0$}  {:w1$}  {:w2$}  {}",
            cols[0],
            cols[1],
            cols[2],
            cols[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    };
    line(header);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3]]);
    }
    let _ = writeln!(out, "{} block{}", rows.len(), if rows.len() == 1 { "" } else { "s" });
    out
}

/// The `query` answer.
pub fn query(q: &QueryData, now: Timestamp) -> String {
    let mut out = String::new();
    if let Some(why) = &q.protected {
        let _ = writeln!(out, "{} is never blocked: {why}", q.ip);
    }
    if q.active.is_empty() {
        let _ = writeln!(out, "{} is not blocked", q.ip);
    }
    for d in &q.active {
        let by = if d.target.prefix_len() == d.target.max_prefix_len() {
            String::new()
        } else {
            format!(" as part of {}", d.target)
        };
        let _ = writeln!(out, "{} is blocked{by} by {} since {}, {}", q.ip, d.source, d.created, until(d.expires, now));
        let _ = writeln!(out, "  reason: {}", d.reason);
        if let Some(c) = &d.category {
            let _ = writeln!(out, "  category: {c}");
        }
        if let Some(s) = d.score {
            let _ = writeln!(out, "  score: {s}");
        }
        for line in &d.evidence {
            let _ = writeln!(out, "  evidence: {line}");
        }
    }
    for d in &q.history {
        let ended = d.lifted.or(d.expires).map(|t| t.to_string()).unwrap_or_default();
        let _ = writeln!(
            out,
            "  earlier: {} by {} from {} to {ended} ({})",
            show_target(&d.target),
            d.source,
            d.created,
            d.reason
        );
    }
    out
}

/// The `status` report.
pub fn status(s: &StatusData) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "banshare {} running (pid {}, up {})",
        s.version,
        s.pid,
        human_duration(std::time::Duration::from_secs(s.uptime_secs))
    );
    let _ = writeln!(out, "config:    {} (loaded {})", s.config, s.config_loaded);
    if let Some(e) = &s.reload_error {
        let _ = writeln!(out, "           last reload FAILED, previous config kept: {e}");
    }
    let _ = writeln!(out, "state:     {} (schema {})", s.state_db, s.schema_version);
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let elements = match (s.firewall.kernel_elements, s.firewall.elements) {
        (Some(k), Some(w)) if k == w => format!(", {k} element{} in the kernel", plural(k)),
        (Some(k), Some(w)) => format!(", {k} element{} in the kernel (banshare wrote {w})", plural(k)),
        (Some(k), None) => format!(", {k} element{} in the kernel", plural(k)),
        (None, Some(w)) => format!(", {w} element{} (banshare's own count; the kernel was not read)", plural(w)),
        (None, None) => String::new(),
    };
    let _ = writeln!(out, "firewall:  {}{elements}, {} batches applied", s.firewall.backend, s.firewall.batches);
    if let Some(e) = &s.firewall.worker_error {
        let _ = writeln!(out, "           FAILING: {e}");
    }
    for r in &s.firewall.refused {
        let _ = writeln!(out, "           refused by the kernel, NOT blocked: {r}");
    }
    if let Some(sets) = &s.firewall.sets {
        let dropped: Vec<String> = sets
            .iter()
            .filter(|set| set.packets > 0)
            .map(|set| format!("{} {} packets ({} bytes)", set.name, set.packets, set.bytes))
            .collect();
        let dropped = if dropped.is_empty() { "nothing yet".to_string() } else { dropped.join(", ") };
        let _ = writeln!(out, "dropped:   {dropped}");
    }
    if let Some(e) = &s.firewall.last_error {
        let _ = writeln!(out, "           last error: {e}");
    }
    let total: u64 = s.active.values().sum();
    let per: Vec<String> = s.active.iter().map(|(src, n)| format!("{src} {n}")).collect();
    let _ = writeln!(out, "blocks:    {total} ({})", per.join(", "));
    let _ = writeln!(
        out,
        "protected: {} allowlist entries, {} host addresses, loopback and link-local",
        s.allowlist_entries, s.host_addresses
    );
    for src in &s.sources {
        let _ = writeln!(
            out,
            "source:    {} ({}): {} lines, {} failures, {} bans, {} rotations, {} unparseable{}",
            src.source,
            src.filters.join(", "),
            src.lines,
            src.failures,
            src.bans,
            src.rotations,
            src.no_timestamp + src.not_an_address + src.too_long,
            if src.crashed > 0 {
                format!(", {} CRASHED (skipped; a bug, please report)", src.crashed)
            } else {
                String::new()
            }
        );
        if let Some(w) = &src.warning {
            let _ = writeln!(out, "           WARNING: {w}");
        }
    }
    feed_status(&mut out, &s.feed);
    if let Some(c) = &s.check {
        let providers = if c.providers.is_empty() { "none".to_string() } else { c.providers.join(", ") };
        let _ = writeln!(out, "check:     listening on {} (providers: {providers})", c.listen);
    }
    out
}

/// The community feed's part of `status`.
fn feed_status(out: &mut String, f: &crate::control::protocol::FeedStatus) {
    let key = if f.ready { format!("key from {}", f.key) } else { format!("OFF: {}", f.key) };
    let id = f.reporter_id.as_deref().map(|id| format!(", reporter {id}")).unwrap_or_default();
    let _ = writeln!(out, "feed:      {} ({key}{id})", f.base_url);
    let r = &f.reporter;
    let o = &f.outbox;
    let mut reports = if f.report {
        format!("{} queued, {} sent, {} failed, {} dropped in 24 h", o.pending, o.sent_24h, o.failed_24h, o.dropped_24h)
    } else {
        "off (feed.report = false)".to_string()
    };
    if let Some(q) = r.quota.filter(|q| q.remaining.is_some()) {
        let _ = write!(reports, "; quota left {}", q.remaining.unwrap_or(0));
        if let Some(limit) = q.limit {
            let _ = write!(reports, " of {limit}");
        }
    }
    let _ = writeln!(out, "reports:   {reports}");
    if let Some(p) = &r.paused {
        let _ = writeln!(out, "           PAUSED: {p} (fix the key, then `systemctl reload banshare`)");
    } else if let Some(until) = r.hold_until.filter(|t| *t > Timestamp::now()) {
        let _ = writeln!(out, "           holding until {until}");
    }
    if let (Some(e), Some(at)) = (&r.last_error, r.last_error_at) {
        let _ = writeln!(out, "           last error at {at}: {e}");
    }
    let pull = match (&f.last_pull, f.pull) {
        (_, false) => "scheduled pulls off (feed.pull = false); `banshare sync` pulls on demand".to_string(),
        (Some(p), true) => format!("last at {}: {}", p.at, crate::feed::pull::summary(p)),
        (None, true) => "no pull yet".to_string(),
    };
    let _ = writeln!(out, "pull:      {pull}");
    if let (Some(e), Some(at)) = (&f.last_pull_error, f.last_pull_error_at) {
        let _ = writeln!(out, "           last pull FAILED at {at}: {e}");
    }
    if let Some(next) = f.next_pull.filter(|_| f.pull) {
        let _ = writeln!(out, "           next pull at {next}");
    }
}

/// The `import` summary.
pub fn import(d: &ImportData, invalid_lines: usize) -> String {
    let mut out = format!("imported {} new, {} extended, {} already banned", d.created, d.extended, d.unchanged);
    if !d.refused.is_empty() {
        let _ = write!(out, "; {} refused by the safety rules", d.refused.len());
    }
    if invalid_lines > 0 {
        let _ = write!(out, "; {invalid_lines} invalid lines skipped");
    }
    out.push('\n');
    for r in d.refused.iter().take(10) {
        let _ = writeln!(out, "  refused: {r}");
    }
    out
}

/// The `firewall show` table.
pub fn sets(sets: &[SetStats], dry_run: bool) -> String {
    if dry_run {
        return "the dry-run backend puts nothing in the kernel\n".into();
    }
    if sets.is_empty() {
        return "banshare has nothing in the kernel (is the daemon running?)\n".into();
    }
    let mut out = format!("{:<20} {:>10} {:>12} {:>14}\n", "SET", "ELEMENTS", "PACKETS", "BYTES");
    for s in sets {
        let _ = writeln!(out, "{:<20} {:>10} {:>12} {:>14}", s.name, s.elements, s.packets, s.bytes);
    }
    out
}

/// The `scan` summary, in the spirit of fail2ban-regex.
pub fn scan(r: &ScanReport) -> String {
    let l = &r.lines;
    let mut out =
        format!("Lines: {} read, {} matched, {} ignored, {} missed\n", l.read, l.matched, l.ignored, l.missed);
    let _ = writeln!(
        out,
        "       {} without a timestamp, {} not an address, {} invalid UTF-8, {} with NUL bytes, {} too long (skipped)",
        l.no_timestamp, l.not_an_address, l.invalid_utf8, l.nul_bytes, l.too_long
    );
    for f in &r.filters {
        let banned: std::collections::BTreeSet<_> = f.bans.iter().map(|b| b.ip).collect();
        let _ = writeln!(
            out,
            "\n{} ({}): {} matched, {} ignored, {} addresses, {} would be banned",
            f.name,
            f.category,
            f.matched,
            f.ignored,
            f.failures.len(),
            banned.len()
        );
        if f.failures.is_empty() {
            continue;
        }
        let mut top: Vec<_> = f.failures.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let _ = writeln!(out, "  {:<40} {:>9}  {:<22} BANTIME", "ADDRESS", "FAILURES", "FIRST BAN");
        for (ip, n) in top.iter().take(20) {
            let bans: Vec<_> = f.bans.iter().filter(|b| b.ip == **ip).collect();
            let (first, bantime) = match bans.first() {
                Some(b) => {
                    let more = if bans.len() > 1 { format!(" (+{} more)", bans.len() - 1) } else { String::new() };
                    (
                        b.at.to_string(),
                        format!("{}{more}", human_duration(std::time::Duration::from_secs(b.bantime_secs))),
                    )
                }
                None => ("-".into(), "-".into()),
            };
            let _ = writeln!(out, "  {:<40} {:>9}  {:<22} {}", ip, n, first, bantime);
        }
        if top.len() > 20 {
            let _ = writeln!(out, "  ... {} more addresses (--json lists all)", top.len() - 20);
        }
    }
    out
}
