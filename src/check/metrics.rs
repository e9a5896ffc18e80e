//! `/metrics` in the Prometheus text format: built from the daemon's status (sources,
//! decisions, firewall, reports, pulls) and the check service's own counters. Pure.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Verdict;
use super::providers::Provider;
use crate::control::protocol::StatusData;

/// Upper bounds (seconds) of the check latency histogram.
pub const BUCKETS: [f64; 9] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 2.5];
const VERDICTS: [(Verdict, &str); 4] =
    [(Verdict::Allow, "allow"), (Verdict::Log, "log"), (Verdict::Challenge, "challenge"), (Verdict::Block, "block")];

/// The check service's counters, updated lock-free per request.
#[derive(Debug, Default)]
pub struct CheckCounters {
    verdicts: [AtomicU64; 4],
    /// Cumulative counts per bucket, then +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Total latency in microseconds.
    sum_us: AtomicU64,
    /// Upstream lookups and failed ones, per provider (in [`Provider::ALL`]'s order).
    lookups: [AtomicU64; 4],
    errors: [AtomicU64; 4],
}

impl CheckCounters {
    pub fn record(&self, verdict: Verdict, seconds: f64) {
        let i = VERDICTS.iter().position(|(v, _)| *v == verdict).unwrap_or(0);
        self.verdicts[i].fetch_add(1, Ordering::Relaxed);
        for (b, bound) in self.buckets.iter().zip(BUCKETS.iter().chain([&f64::INFINITY])) {
            if seconds <= *bound {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn lookup(&self, provider: Provider) {
        self.lookups[slot(provider)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn provider_error(&self, provider: Provider) {
        self.errors[slot(provider)].fetch_add(1, Ordering::Relaxed);
    }
}

fn slot(provider: Provider) -> usize {
    Provider::ALL.iter().position(|p| *p == provider).unwrap_or(0)
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// The whole exposition.
pub fn render(status: &StatusData, check: &CheckCounters) -> String {
    let mut out = String::new();
    let mut lines: Vec<String> = Vec::new();
    family(&mut out, "banshare_source_lines_total", "counter", "Log lines read, per source.");
    for s in &status.sources {
        lines.push(format!("banshare_source_lines_total{{source=\"{}\"}} {}", label(&s.source), s.lines));
    }
    flush(&mut out, &mut lines);
    family(
        &mut out,
        "banshare_source_failures_total",
        "counter",
        "Lines a filter matched as failures, per source and filter.",
    );
    for s in &status.sources {
        for (filter, n) in &s.per_filter {
            lines.push(format!(
                "banshare_source_failures_total{{source=\"{}\",filter=\"{}\"}} {n}",
                label(&s.source),
                label(filter),
            ));
        }
    }
    flush(&mut out, &mut lines);
    family(&mut out, "banshare_source_bans_total", "counter", "Bans decided, per source and filter.");
    for s in &status.sources {
        for (filter, n) in &s.per_filter_bans {
            lines.push(format!(
                "banshare_source_bans_total{{source=\"{}\",filter=\"{}\"}} {n}",
                label(&s.source),
                label(filter),
            ));
        }
    }
    flush(&mut out, &mut lines);
    family(&mut out, "banshare_decisions_active", "gauge", "Decisions in force, per source.");
    for (source, n) in &status.active {
        lines.push(format!("banshare_decisions_active{{source=\"{source}\"}} {n}"));
    }
    flush(&mut out, &mut lines);
    family(&mut out, "banshare_firewall_dropped_packets_total", "counter", "Packets dropped, per set.");
    for set in status.firewall.sets.iter().flatten() {
        lines.push(format!("banshare_firewall_dropped_packets_total{{set=\"{}\"}} {}", label(&set.name), set.packets));
    }
    flush(&mut out, &mut lines);
    let f = &status.feed;
    family(&mut out, "banshare_reports", "gauge", "Reports queued now, and sent, failed, dropped in the last 24 h.");
    for (state, n) in [
        ("queued", f.outbox.pending),
        ("sent_24h", f.outbox.sent_24h),
        ("failed_24h", f.outbox.failed_24h),
        ("dropped_24h", f.outbox.dropped_24h),
    ] {
        lines.push(format!("banshare_reports{{state=\"{state}\"}} {n}"));
    }
    flush(&mut out, &mut lines);
    family(&mut out, "banshare_feed_pulls_total", "counter", "Feed pulls since start, by outcome.");
    lines.push(format!("banshare_feed_pulls_total{{outcome=\"applied\"}} {}", f.pulls));
    lines.push(format!("banshare_feed_pulls_total{{outcome=\"failed\"}} {}", f.pull_failures));
    flush(&mut out, &mut lines);
    family(
        &mut out,
        "banshare_feed_entries",
        "gauge",
        "Entries of the last applied pull: received, added, refreshed, skipped.",
    );
    if let Some(p) = &f.last_pull {
        for (what, n) in
            [("received", p.received), ("added", p.added), ("refreshed", p.refreshed), ("skipped", p.skipped.total())]
        {
            lines.push(format!("banshare_feed_entries{{kind=\"{what}\"}} {n}"));
        }
    }
    flush(&mut out, &mut lines);
    family(&mut out, "banshare_check_requests_total", "counter", "Check requests, by verdict.");
    for (i, (_, name)) in VERDICTS.iter().enumerate() {
        lines.push(format!(
            "banshare_check_requests_total{{verdict=\"{name}\"}} {}",
            check.verdicts[i].load(Ordering::Relaxed)
        ));
    }
    flush(&mut out, &mut lines);
    family(&mut out, "banshare_check_duration_seconds", "histogram", "Check request latency.");
    for (i, bound) in BUCKETS.iter().enumerate() {
        lines.push(format!(
            "banshare_check_duration_seconds_bucket{{le=\"{bound}\"}} {}",
            check.buckets[i].load(Ordering::Relaxed)
        ));
    }
    let count = check.buckets[BUCKETS.len()].load(Ordering::Relaxed);
    lines.push(format!("banshare_check_duration_seconds_bucket{{le=\"+Inf\"}} {count}"));
    lines.push(format!("banshare_check_duration_seconds_sum {}", check.sum_us.load(Ordering::Relaxed) as f64 / 1e6));
    lines.push(format!("banshare_check_duration_seconds_count {count}"));
    flush(&mut out, &mut lines);
    family(&mut out, "banshare_provider_lookups_total", "counter", "Upstream provider lookups (cache misses).");
    for p in Provider::ALL {
        let n = check.lookups[slot(p)].load(Ordering::Relaxed);
        lines.push(format!("banshare_provider_lookups_total{{provider=\"{}\"}} {n}", p.name()));
    }
    flush(&mut out, &mut lines);
    family(
        &mut out,
        "banshare_provider_errors_total",
        "counter",
        "Provider lookups that failed (errors, timeouts, 429s).",
    );
    for p in Provider::ALL {
        let n = check.errors[slot(p)].load(Ordering::Relaxed);
        lines.push(format!("banshare_provider_errors_total{{provider=\"{}\"}} {n}", p.name()));
    }
    flush(&mut out, &mut lines);
    out
}

/// The HELP and TYPE lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn flush(out: &mut String, lines: &mut Vec<String>) {
    for l in lines.drain(..) {
        out.push_str(&l);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative() {
        let c = CheckCounters::default();
        c.record(Verdict::Block, 0.0004);
        c.record(Verdict::Allow, 0.02);
        assert_eq!(c.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(c.buckets[5].load(Ordering::Relaxed), 2, "0.05 holds both");
        assert_eq!(c.buckets[BUCKETS.len()].load(Ordering::Relaxed), 2);
        assert_eq!(label("a\"b"), "a\\\"b");
    }
}
