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

/// `{k="v",...}` with the values escaped.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
    format!("{{{}}}", inner.join(","))
}

/// One metric family: its HELP and TYPE lines, then a sample per (labels, value).
fn family<V: std::fmt::Display>(
    out: &mut String,
    (name, kind, help): (&str, &str, &str),
    samples: impl IntoIterator<Item = (String, V)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// The whole exposition.
pub fn render(status: &StatusData, check: &CheckCounters) -> String {
    let mut out = String::new();
    let sources = &status.sources;
    family(
        &mut out,
        ("banshare_source_lines_total", "counter", "Log lines read, per source."),
        sources.iter().map(|s| (labels(&[("source", &s.source)]), s.lines)),
    );
    family(
        &mut out,
        (
            "banshare_source_crashed_lines_total",
            "counter",
            "Lines skipped because reading them failed inside banshare (a bug), per source.",
        ),
        sources.iter().map(|s| (labels(&[("source", &s.source)]), s.crashed)),
    );
    family(
        &mut out,
        ("banshare_follower_restarts_total", "counter", "Log follower threads that died and were started again."),
        std::iter::once((String::new(), status.follower_restarts)),
    );
    let per_filter =
        |counts: fn(&crate::control::protocol::SourceStatus) -> &std::collections::BTreeMap<String, u64>| {
            sources
                .iter()
                .flat_map(move |s| counts(s).iter().map(|(f, n)| (labels(&[("source", &s.source), ("filter", f)]), *n)))
        };
    family(
        &mut out,
        ("banshare_source_failures_total", "counter", "Lines a filter matched as failures, per source and filter."),
        per_filter(|s| &s.per_filter),
    );
    family(
        &mut out,
        ("banshare_source_bans_total", "counter", "Bans decided, per source and filter."),
        per_filter(|s| &s.per_filter_bans),
    );
    family(
        &mut out,
        ("banshare_decisions_active", "gauge", "Decisions in force, per source."),
        status.active.iter().map(|(source, n)| (labels(&[("source", source.as_str())]), *n)),
    );
    family(
        &mut out,
        ("banshare_firewall_dropped_packets_total", "counter", "Packets dropped, per set."),
        status.firewall.sets.iter().flatten().map(|set| (labels(&[("set", &set.name)]), set.packets)),
    );
    let f = &status.feed;
    let o = &f.outbox;
    family(
        &mut out,
        ("banshare_reports", "gauge", "Reports queued now, and sent, failed, dropped in the last 24 h."),
        [("queued", o.pending), ("sent_24h", o.sent_24h), ("failed_24h", o.failed_24h), ("dropped_24h", o.dropped_24h)]
            .map(|(state, n)| (labels(&[("state", state)]), n)),
    );
    family(
        &mut out,
        ("banshare_feed_pulls_total", "counter", "Feed pulls since start, by outcome."),
        [("applied", f.pulls), ("failed", f.pull_failures)].map(|(outcome, n)| (labels(&[("outcome", outcome)]), n)),
    );
    family(
        &mut out,
        (
            "banshare_feed_entries",
            "gauge",
            "Entries of the last applied pull: received, added, renewed, unchanged, skipped, missing, delisted.",
        ),
        f.last_pull.iter().flat_map(|p| {
            [
                ("received", p.received),
                ("added", p.added),
                ("renewed", p.renewed),
                ("unchanged", p.unchanged),
                ("skipped", p.skipped.total()),
                ("missing", p.missing),
                ("delisted", p.delisted),
            ]
            .map(|(kind, n)| (labels(&[("kind", kind)]), n))
        }),
    );
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    family(
        &mut out,
        ("banshare_check_requests_total", "counter", "Check requests, by verdict."),
        VERDICTS.iter().zip(&check.verdicts).map(|((_, name), n)| (labels(&[("verdict", name)]), load(n))),
    );
    let count = load(&check.buckets[BUCKETS.len()]);
    let name = "banshare_check_duration_seconds";
    family(&mut out, (name, "histogram", "Check request latency."), std::iter::empty::<(String, u64)>());
    for (bound, n) in BUCKETS.iter().map(ToString::to_string).chain(["+Inf".to_string()]).zip(&check.buckets) {
        let _ = writeln!(out, "{name}_bucket{} {}", labels(&[("le", &bound)]), load(n));
    }
    let _ = writeln!(out, "{name}_sum {}", load(&check.sum_us) as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {count}");
    family(
        &mut out,
        ("banshare_provider_lookups_total", "counter", "Upstream provider lookups (cache misses)."),
        Provider::ALL.map(|p| (labels(&[("provider", p.name())]), load(&check.lookups[slot(p)]))),
    );
    family(
        &mut out,
        ("banshare_provider_errors_total", "counter", "Provider lookups that failed (errors, timeouts, 429s)."),
        Provider::ALL.map(|p| (labels(&[("provider", p.name())]), load(&check.errors[slot(p)]))),
    );
    out
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
