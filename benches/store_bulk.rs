//! Store bulk-write benchmark: `cargo bench --bench store_bulk`.
//!
//! 100,000 manual decisions (fixed-seed IPv4 addresses, 1 h) committed in one
//! `Store::upsert_decisions` call into a fresh database (median of 5), on a connection
//! set up as the daemon's (checkpoints deferred), then the same
//! 100,000 again (every one an unchanged decision), and the daemon's start-up read of
//! the 100,000 active decisions.

use std::time::{Duration, Instant};

mod common;

use banshare::clock::Timestamp;
use banshare::decision::{NewDecision, Source};
use banshare::store::Store;
use common::{addresses, median, ms};

const N: usize = 100_000;

fn main() {
    let proposals = proposals(N, 0x5eed);
    let mut fresh = Vec::new();
    let mut again = Vec::new();
    let mut read = Vec::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        store.defer_checkpoints().unwrap(); // as the daemon's connection does
        let now = Timestamp::now();
        let t = Instant::now();
        store.upsert_decisions(&proposals, now).unwrap();
        fresh.push(t.elapsed());
        let t = Instant::now();
        store.upsert_decisions(&proposals, now).unwrap();
        again.push(t.elapsed());
        let t = Instant::now();
        let active = store.active(None, now).unwrap();
        read.push(t.elapsed());
        assert_eq!(active.len(), N);
    }
    println!("store: {N} new decisions in one transaction: median {}", ms(median(&fresh)));
    println!("store: the same {N} again (unchanged): median {}", ms(median(&again)));
    println!("store: reading the {N} active decisions: median {}", ms(median(&read)));
}

fn proposals(n: usize, seed: u64) -> Vec<NewDecision> {
    addresses(n, seed)
        .into_iter()
        .map(|a| NewDecision {
            target: ipnet::IpNet::from(std::net::IpAddr::V4(a)),
            source: Source::Manual,
            reason: "imported".into(),
            category: None,
            score: None,
            duration: Some(Duration::from_secs(3600)),
            evidence: Vec::new(),
            report: None,
            enforce: true,
        })
        .collect()
}
