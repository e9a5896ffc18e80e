//! The reporter against the emulator, on a virtual clock: `Reporter::step` takes the
//! time, the emulator runs on the same clock, and nothing sleeps. An outage, budgets,
//! `Retry-After`, backoff, rejected reports, the cooldown, and the outbox's age limit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use banshare::clock::Timestamp;
use banshare::config::FeedConfig;
use banshare::decision::{NewDecision, ReportDraft, Source, parse_target};
use banshare::feed::api::{Api, ApiKey};
use banshare::feed::reporter::{Next, Reporter};
use banshare::feed::sanitize::Sanitizer;
use banshare::feed::wire::{ReportInput, report_body};
use banshare::store::Store;

use crate::support::emulator::{Emulator, Fault, TEST_KEY};

const T0: i64 = 1_800_000_000_000;

struct Bench {
    _dir: tempfile::TempDir,
    store: Arc<Mutex<Store>>,
    cfg: FeedConfig,
    rt: tokio::runtime::Runtime,
    reporter: Reporter,
    api: Api,
}

impl Bench {
    fn new(url: &str, cfg: FeedConfig) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let api = Api::new(url, &ApiKey::new(TEST_KEY).unwrap(), Duration::from_secs(2)).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        Bench { _dir: dir, store: Arc::new(Mutex::new(store)), cfg, rt, reporter: Reporter::default(), api }
    }

    /// Local bans of `ips` at `now`, each queuing a report as the daemon does.
    fn ban(&self, ips: &[String], category: &str, now: Timestamp) {
        let news: Vec<NewDecision> = ips.iter().map(|ip| self.decision(ip, category, None)).collect();
        self.store.lock().unwrap().upsert_decisions(&news, now).unwrap();
    }

    fn decision(&self, ip: &str, category: &str, raw_category: Option<&str>) -> NewDecision {
        let input = ReportInput {
            ip: ip.parse().unwrap(),
            category,
            comment: "sshd: 5 failures within 10m",
            seen: Timestamp(T0),
            evidence: &[],
            source: "banshare",
            jail: Some("sshd"),
            failures: Some(5),
        };
        let mut body = report_body(&input, &Sanitizer::default());
        if let Some(raw) = raw_category {
            body["category"] = raw.into(); // what a buggy build might send
        }
        NewDecision {
            target: parse_target(ip).unwrap(),
            source: Source::Detect,
            reason: "test".into(),
            category: Some(category.into()),
            score: None,
            duration: Some(Duration::from_secs(3600)),
            evidence: Vec::new(),
            report: Some(ReportDraft {
                ip: ip.parse().unwrap(),
                category: category.into(),
                payload: body.to_string(),
                cooldown: self.cfg.report_cooldown,
            }),
            enforce: true,
        }
    }

    fn step(&mut self, now: Timestamp) -> Next {
        let Bench { store, cfg, rt, reporter, api, .. } = self;
        rt.block_on(reporter.step(store, api, cfg, now)).expect("step")
    }
}

fn ips(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("45.{}.{}.7", 100 + i / 200, i % 200)).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn an_outage_then_recovery_delivers_every_report_once_in_order_within_the_budget() {
    let port = free_port();
    let cfg = FeedConfig { reports_per_minute: 20, reports_per_day: 100_000, ..FeedConfig::default() };
    let mut bench = Bench::new(&format!("http://127.0.0.1:{port}"), cfg);

    // 1,000 local bans over 800 addresses: the repeats fall within the cooldown.
    let addrs = ips(800);
    for (i, chunk) in addrs.iter().chain(addrs.iter().take(200)).collect::<Vec<_>>().chunks(50).enumerate() {
        let chunk: Vec<String> = chunk.iter().map(|s| s.to_string()).collect();
        bench.ban(&chunk, "ssh_bruteforce", Timestamp(T0 + i as i64 * 1000));
    }
    assert_eq!(bench.store.lock().unwrap().outbox_stats(Timestamp(T0)).unwrap().pending, 800);

    // The API is down: every step makes one attempt and backs off further.
    let mut now = Timestamp(T0 + 60_000);
    let mut waits = Vec::new();
    for _ in 0..8 {
        match bench.step(now) {
            Next::At(t) => {
                assert!(t > now);
                waits.push(t.0 - now.0);
                now = t;
            }
            Next::Idle => panic!("reports are waiting; the reporter cannot be idle"),
        }
    }
    assert!(waits.windows(2).all(|w| w[0] <= w[1]), "backoff grows: {waits:?}");
    assert!(waits[7] >= 128_000, "eighth wait at least 2^7 s: {waits:?}");

    // The API comes back, limited to 20 a minute on the same clock.
    let emu = Emulator::start_on(port);
    emu.with(|s| s.per_minute = Some(20));
    let mut steps = 0;
    loop {
        emu.set_clock(now.0);
        match bench.step(now) {
            Next::Idle => break,
            Next::At(t) => now = t,
        }
        steps += 1;
        assert!(steps < 200, "the outbox drains");
    }
    assert_eq!(emu.reported_ips(), addrs, "every report once, in order");
    assert_eq!(emu.with(|s| s.throttled), 0, "never over the API's limit");
    let times: Vec<i64> = emu.reports().iter().map(|r| r.at).collect();
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..].iter().take_while(|u| **u < t + 60_000).count();
        assert!(in_window <= 20, "{in_window} reports within a minute from report {i}");
    }
    let minutes = (times.last().unwrap() - times[0]) / 60_000;
    assert!((39..=41).contains(&minutes), "800 at 20 a minute take 40 minutes, took {minutes}");

    // After the cooldown the same (address, category) is reported again, once.
    let later = Timestamp(now.0 + 16 * 60_000);
    bench.ban(&addrs[..1], "ssh_bruteforce", later);
    bench.ban(&addrs[..1], "ssh_bruteforce", Timestamp(later.0 + 1000));
    emu.set_clock(later.0 + 2000);
    assert_eq!(bench.step(Timestamp(later.0 + 2000)), Next::Idle);
    assert_eq!(emu.reported_ips().len(), 801);
    assert_eq!(emu.reported_ips()[800], addrs[0]);
}

#[test]
fn retry_after_holds_every_report_for_that_long() {
    let emu = Emulator::start();
    let mut bench = Bench::new(&emu.url(), FeedConfig::default());
    bench.ban(&ips(3), "ssh_bruteforce", Timestamp(T0));
    emu.fault("/v1/ip/report", [Fault::Status { code: 429, retry_after: Some(30) }]);
    let report_requests = || emu.with(|s| s.requests.iter().filter(|r| r.1 == "/v1/ip/report").count());

    assert_eq!(bench.step(Timestamp(T0)), Next::At(Timestamp(T0 + 30_000)));
    assert_eq!(report_requests(), 1);
    // 29.999 s later: still held, no request made.
    assert_eq!(bench.step(Timestamp(T0 + 29_999)), Next::At(Timestamp(T0 + 30_000)));
    assert_eq!(report_requests(), 1);
    assert!(bench.reporter.status().hold_until.is_some());
    // At 30 s everything goes.
    assert_eq!(bench.step(Timestamp(T0 + 30_000)), Next::Idle);
    assert_eq!(emu.reported_ips(), ips(3));
}

#[test]
fn rate_limit_headers_hold_until_the_reset() {
    let emu = Emulator::start();
    emu.set_clock(T0);
    emu.with(|s| s.per_minute = Some(2));
    let mut bench = Bench::new(&emu.url(), FeedConfig { reports_per_minute: 100, ..FeedConfig::default() });
    bench.ban(&ips(3), "ssh_bruteforce", Timestamp(T0));
    // Two fit; the second answer says 0 remaining until the window resets.
    let next = bench.step(Timestamp(T0));
    assert_eq!(emu.reported_ips().len(), 2);
    assert_eq!(next, Next::At(Timestamp(T0 + 60_000)));
    assert_eq!(bench.reporter.status().quota.unwrap().remaining, Some(0));
    emu.set_clock(T0 + 60_000);
    assert_eq!(bench.step(Timestamp(T0 + 60_000)), Next::Idle);
    assert_eq!(emu.reported_ips().len(), 3);
    assert_eq!(emu.with(|s| s.throttled), 0);
}

#[test]
fn server_errors_back_off_and_rejected_reports_are_never_retried() {
    let emu = Emulator::start();
    let mut bench = Bench::new(&emu.url(), FeedConfig::default());
    // The first report is one the API rejects (422), the next two are fine.
    let bad = bench.decision("45.155.205.1", "ssh_bruteforce", Some("Not A Category"));
    bench.store.lock().unwrap().upsert_decisions(&[bad], Timestamp(T0)).unwrap();
    bench.ban(&["45.155.205.2".to_string(), "45.155.205.3".to_string()], "ssh_bruteforce", Timestamp(T0));
    emu.fault("/v1/ip/report", [Fault::Status { code: 503, retry_after: None }, Fault::Drop]);

    let Next::At(t1) = bench.step(Timestamp(T0)) else { panic!("held after a 503") };
    assert!((T0 + 1000..=T0 + 2000).contains(&t1.0), "first backoff 1-2 s: {}", t1.0 - T0);
    let Next::At(t2) = bench.step(t1) else { panic!("held after a dropped connection") };
    assert!((t1.0 + 2000..=t1.0 + 4000).contains(&t2.0), "second backoff 2-4 s: {}", t2.0 - t1.0);
    assert!(bench.reporter.status().last_error.is_some());
    // The 422 marks the bad one failed, and the rest go.
    assert_eq!(bench.step(t2), Next::Idle);
    assert_eq!(emu.with(|s| s.rejected), 1);
    assert_eq!(emu.reported_ips(), ["45.155.205.2", "45.155.205.3"]);
    let stats = bench.store.lock().unwrap().outbox_stats(t2).unwrap();
    assert_eq!((stats.pending, stats.sent_24h, stats.failed_24h), (0, 2, 1));
    // Never retried: more steps send nothing more.
    let requests = emu.with(|s| s.requests.len());
    assert_eq!(bench.step(Timestamp(t2.0 + 3_600_000)), Next::Idle);
    assert_eq!(emu.with(|s| s.requests.len()), requests);
    assert!(bench.reporter.status().last_error.unwrap().contains("category"), "the server's message is kept");
}

#[test]
fn reports_older_than_the_outbox_age_are_dropped_and_counted() {
    let emu = Emulator::start();
    let mut bench = Bench::new(&emu.url(), FeedConfig::default());
    bench.ban(&ips(2), "ssh_bruteforce", Timestamp(T0));
    let late = Timestamp(T0 + 25 * 3_600_000);
    assert_eq!(bench.step(late), Next::Idle);
    assert!(emu.reported_ips().is_empty());
    assert_eq!(bench.reporter.status().dropped, 2);
    assert_eq!(bench.store.lock().unwrap().outbox_stats(late).unwrap().dropped_24h, 2);
}

#[test]
fn a_refused_key_pauses_reporting() {
    let emu = Emulator::start();
    emu.with(|s| s.keys = vec!["another key".into()]);
    let mut bench = Bench::new(&emu.url(), FeedConfig::default());
    bench.ban(&ips(2), "ssh_bruteforce", Timestamp(T0));
    let Next::At(until) = bench.step(Timestamp(T0)) else { panic!("paused, not idle") };
    assert_eq!(until.0, T0 + 3_600_000, "retried after an hour");
    assert!(bench.reporter.status().paused.unwrap().contains("Invalid API key"));
    let requests = emu.with(|s| s.requests.len());
    assert_eq!(bench.step(Timestamp(T0 + 60_000)), Next::At(until));
    assert_eq!(emu.with(|s| s.requests.len()), requests, "no request while paused");
    // The operator fixes the key (a reload resumes the reporter).
    emu.with(|s| s.keys.push(TEST_KEY.into()));
    bench.reporter.resume();
    assert_eq!(bench.step(Timestamp(T0 + 120_000)), Next::Idle);
    assert_eq!(emu.reported_ips().len(), 2);
}
