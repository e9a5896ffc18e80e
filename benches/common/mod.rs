//! What several benchmarks share: fixed-seed addresses and the figures' format.

#![allow(dead_code)] // each benchmark uses a part

use std::net::Ipv4Addr;
use std::time::Duration;

/// Distinct public-looking IPv4 addresses from a fixed seed (xorshift64).
pub fn addresses(n: usize, seed: u64) -> Vec<Ipv4Addr> {
    let mut x = seed;
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let a = Ipv4Addr::from((x >> 16) as u32);
        let first = a.octets()[0];
        if (1..=223).contains(&first) && ![10, 100, 127, 169, 172, 192].contains(&first) && seen.insert(a) {
            out.push(a);
        }
    }
    out
}

pub fn median(runs: &[Duration]) -> Duration {
    let mut v = runs.to_vec();
    v.sort();
    v[v.len() / 2]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub fn list(runs: &[Duration]) -> String {
    runs.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
}
