//! Matching cost of hostile lines: `cargo bench --bench adversarial_scan`.
//!
//! 20 lines of 64 KB (the line limit) built to make a matcher rescan (`sshd: Failed
//! password for ` repeated, and the same for each built-in filter's leading words),
//! against 20 x 64 KB of ordinary log lines, through every built-in filter (every mode).
//! Prints the median of 5 runs of each and their ratio; the goal is at most 5x.

use std::time::Instant;

use banshare::detect::builtin::BUILT_INS;
use banshare::detect::{Filter, FilterSet};

const LINE: usize = 64 * 1024 - 1;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(set: &mut FilterSet, lines: &[Vec<u8>]) -> f64 {
    let now = banshare::clock::Timestamp::now();
    let started = Instant::now();
    let mut hits = 0;
    for l in lines {
        hits += set.test(l, now).len();
    }
    std::hint::black_box(hits);
    started.elapsed().as_secs_f64()
}

fn main() {
    let mut filters = Vec::new();
    for b in BUILT_INS {
        for mode in b.modes.iter().copied().map(Some).chain([None]) {
            filters.push(Filter::compile(b.with_mode(mode).unwrap()).unwrap());
        }
    }
    let mut set = FilterSet::new(filters);
    let repeat = |unit: &str| unit.repeat(LINE / unit.len()).into_bytes();
    let hostile: Vec<Vec<u8>> = [
        "sshd: Failed password for ",
        "sshd[1]: Invalid user ",
        "[client 1.2.3.4] AH01617: user ",
        "dovecot: auth: ",
        "postfix/smtpd[1]: warning: ",
        "GET /wp-login.php HTTP/1.1\" ",
        "exim[1]: H=(x) [1.2.3.4] F=<a@b> ",
        "proftpd[1] h (x[1.2.3.4]): USER ",
        "roundcube: IMAP Error: Login failed for a from ",
        "imap-login: Disconnected: x: y(z) ",
    ]
    .iter()
    .cycle()
    .take(20)
    .map(|u| repeat(u))
    .collect();
    let ordinary_line = "Nov 23 10:00:01 host sshd[1234]: Failed password for root from 203.0.113.7 port 22 ssh2";
    let per_line = LINE / (ordinary_line.len() + 1);
    let ordinary: Vec<Vec<u8>> = (0..20 * per_line).map(|_| ordinary_line.as_bytes().to_vec()).collect();
    let (mut h, mut o) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        h.push(time(&mut set, &hostile));
        o.push(time(&mut set, &ordinary));
    }
    let (h, o) = (median(h), median(o));
    println!(
        "20 hostile 64 KB lines: {:.1} ms; 20 x 64 KB of ordinary lines: {:.1} ms; ratio {:.2} (goal <= 5)",
        h * 1e3,
        o * 1e3,
        h / o
    );
}
