//! Conformance with fail2ban's own annotated sample logs, read the way fail2ban's sample
//! test (`samplestestcase.py`) reads them: each sample log that has a definition in
//! `/etc/fail2ban/filter.d`, with its `# fileOptions:`, `# filterOptions:` sections
//! (each option set run as its own filter, `test.condition` honoured), `# addFILE:`
//! includes and `# failJSON:` entries (`match`, `host`, `time`, `constraint`); a line
//! without a `failJSON` must not match. Times are fail2ban's test zone's wall clock
//! (Europe/Zurich); a date without a zone is read in this process's zone, so it is compared
//! as wall-clock time. Journal-type sections are replayed as fail2ban's journal
//! backend hands lines over (no date search, `test.prefix-line` prepended).
//!
//! Every entry must come out right, or be listed with its reason in
//! `tests/fail2ban-known-gaps.txt` (a listed entry that now passes is an error too, so the
//! list stays true), and at least 99% of all entries must be right.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use banshare::clock::Timestamp;
use banshare::detect::builtin;
use banshare::detect::f2b::engine::{Compiled, Host, State};
use banshare::detect::f2b::{Definition, FilterRef};
use serde_json::Value;

const FILTERS: &str = "/etc/fail2ban";
const SAMPLES: &str = "/usr/lib/python3/dist-packages/fail2ban/tests/files/logs";
/// fail2ban's sample test runs at this instant (2005-08-14T12:00:00 UTC).
const TEST_NOW: Timestamp = Timestamp(1_124_013_600_000);

/// One `failJSON` entry (or an unannotated line) and its verdict.
#[derive(Debug)]
struct Entry {
    /// `file:line (options)`.
    at: String,
    ok: bool,
    detail: String,
}

/// One option set of a section: its name and the compiled definition with its state.
struct Run {
    name: String,
    opts: BTreeMap<String, String>,
    filter: Result<(Compiled, State), String>,
}

fn corpus_present() -> bool {
    if Path::new(SAMPLES).is_dir() && Path::new(FILTERS).join("filter.d/sshd.conf").is_file() {
        return true;
    }
    let message = format!("the fail2ban corpus test needs Debian's fail2ban ({SAMPLES}); run scripts/test.sh as root");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    false
}

/// Evaluates the corpus's conditions: `name == 'x'`, `opts.get('k') != 'v'`.
fn condition(expr: &str, name: &str, opts: &BTreeMap<String, String>) -> bool {
    let (lhs, rhs, eq) = if let Some((l, r)) = expr.split_once("!=") {
        (l, r, false)
    } else if let Some((l, r)) = expr.split_once("==") {
        (l, r, true)
    } else {
        panic!("condition `{expr}`: not a comparison this reader knows");
    };
    let lit = |s: &str| s.trim().trim_matches(|c| c == '\'' || c == '"').to_string();
    let lhs = lhs.trim();
    let value = if lhs == "name" {
        Some(name.to_string())
    } else if let Some(key) = lhs.strip_prefix("opts.get(").and_then(|k| k.strip_suffix(')')) {
        opts.get(&lit(key)).cloned()
    } else {
        panic!("condition `{expr}`: unknown left side `{lhs}`");
    };
    (value.as_deref() == Some(lit(rhs).as_str())) == eq
}

fn options(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// How a run gets its filter: a sample's name and a section's options (without the
/// `test.` ones) to a compiled definition.
type Loader = dyn Fn(&str, &[(String, String)]) -> Result<Definition, String>;

/// fail2ban's own definition of that name.
fn fail2bans(name: &str, options: &[(String, String)]) -> Result<Definition, String> {
    let filter = FilterRef { name: name.to_string(), options: options.to_vec() };
    Definition::load(Path::new(FILTERS), &filter).map_err(|e| e.to_string())
}

/// banshare's built-in filter of that name.
fn built_in(name: &str, options: &[(String, String)]) -> Result<Definition, String> {
    let b = builtin::get(name).ok_or_else(|| format!("no built-in {name}"))?;
    b.spec(options).fail2ban.expect("a built-in runs a definition").load().map_err(|e| e.to_string())
}

fn load(loader: &Loader, name: &str, opts: &BTreeMap<String, String>) -> Result<(Compiled, State), String> {
    let options: Vec<(String, String)> =
        opts.iter().filter(|(k, _)| !k.starts_with("test.")).map(|(k, v)| (k.clone(), v.clone())).collect();
    let compiled = Compiled::new(loader(name, &options)?).map_err(|e| e.to_string())?;
    let state = compiled.state();
    Ok((compiled, state))
}

/// Whether `host` is what the entry expects.
fn same_host(got: &Host, want: &str) -> bool {
    match (got, want.parse::<std::net::IpAddr>()) {
        (Host::Addr(a, None), Ok(w)) => *a == w,
        _ => got.to_string() == want,
    }
}

/// Days since 1970-01-01 of a date (proleptic Gregorian).
fn days(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

/// The last Sunday of a month, as days since 1970.
fn last_sunday(y: i64, m: i64) -> i64 {
    let next = if m == 12 { days(y + 1, 1, 1) } else { days(y, m + 1, 1) };
    let last = next - 1;
    // 1970-01-01 was a Thursday.
    last - (last + 4).rem_euclid(7)
}

/// fail2ban's sample test reads times in Europe/Zurich: CET, CEST from the last Sunday of
/// March 01:00 UTC to the last Sunday of October 01:00 UTC (since 1981).
fn zurich_to_utc(naive_secs: i64) -> i64 {
    let y = 1970 + naive_secs.div_euclid(86_400 * 365) + 1;
    let year = (y - 2..=y).rev().find(|y| days(*y, 1, 1) * 86_400 <= naive_secs).unwrap_or(y);
    let start = last_sunday(year, 3) * 86_400 + 3600;
    let end = last_sunday(year, 10) * 86_400 + 3600;
    let summer = naive_secs - 7200 >= start && naive_secs - 7200 < end;
    naive_secs - if summer { 7200 } else { 3600 }
}

/// Whether banshare's time of the line is the entry's `time` (wall clock in Zurich,
/// `2005-08-14T11:40:00` or with `.ffffff`). A date without a zone is read in this
/// process's zone: it is compared as wall-clock time.
fn same_time(got: Option<Timestamp>, want: &str) -> bool {
    let Some(got) = got else { return false };
    let (date, clock) = want.split_once('T').expect("failJSON time");
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, "0"));
    let c: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    let naive = days(d[0], d[1], d[2]) * 86_400 + c[0] * 3600 + c[1] * 60 + c[2];
    let ms = format!("{frac:0<3}")[..3].parse::<i64>().unwrap();
    let want_ms = zurich_to_utc(naive) * 1000 + ms;
    // SAFETY: localtime_r fills the tm we own from a time_t we own.
    let local_offset = unsafe {
        let t = got.0.div_euclid(1000) as libc::time_t;
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        tm.tm_gmtoff
    };
    let as_wall_clock = zurich_to_utc(got.0.div_euclid(1000) + local_offset) * 1000 + got.0.rem_euclid(1000);
    (got.0 - want_ms).abs() < 1000 || (as_wall_clock - want_ms).abs() < 1000
}

/// Replays one sample log (and what it adds) through the definition `loader` gives.
fn replay(name: &str, loader: &Loader) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut files = vec![name.to_string()];
    let mut runs: Vec<Run> = Vec::new();
    // Filters by option set, kept across sections and files as fail2ban's test does.
    let mut cache: BTreeMap<String, Run> = BTreeMap::new();
    let mut common: BTreeMap<String, String> = BTreeMap::new();
    let mut i = 0;
    while i < files.len() {
        let file = files[i].clone();
        i += 1;
        let bytes = std::fs::read(Path::new(SAMPLES).join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let mut lines = text.split('\n').enumerate().peekable();
        let mut ignore_block = false;
        while let Some((n, raw)) = lines.next() {
            let raw = raw.trim_end_matches('\r');
            let annotation = raw.starts_with('#').then(|| raw.trim_start_matches('#')).and_then(|r| {
                let r = r.strip_prefix(' ').unwrap_or(r);
                ["failJSON", "fileOptions", "filterOptions", "addFILE"]
                    .into_iter()
                    .find_map(|k| r.strip_prefix(k).and_then(|v| v.strip_prefix(':')).map(|v| (k, v)))
            });
            let (faildata, line_no, line) = match annotation {
                Some((kind, json)) => {
                    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{file}:{}: {e}", n + 1));
                    match kind {
                        "fileOptions" => {
                            common = options(&v);
                            continue;
                        }
                        "filterOptions" => {
                            // Runs go back to the cache before the section changes.
                            for r in runs.drain(..) {
                                cache.insert(r.name.clone(), r);
                            }
                            ignore_block = false;
                            let sets: Vec<Value> = match v {
                                Value::Array(a) => a,
                                o => vec![o],
                            };
                            for set in sets {
                                let mut opts = common.clone();
                                opts.extend(options(&set));
                                if let Some(c) = opts.get("test.condition") {
                                    ignore_block = !condition(c, name, &opts);
                                }
                                if ignore_block {
                                    continue;
                                }
                                let real: BTreeMap<_, _> = opts
                                    .iter()
                                    .filter(|(k, _)| !k.starts_with("test."))
                                    .map(|(k, v)| (k.clone(), v.clone()))
                                    .collect();
                                let run_name =
                                    opts.get("test.filter-name").cloned().unwrap_or_else(|| format!("{real:?}"));
                                let run = cache.remove(&run_name).unwrap_or_else(|| Run {
                                    name: run_name.clone(),
                                    filter: load(loader, name, &real),
                                    opts: opts.clone(),
                                });
                                runs.push(Run { opts, ..run });
                            }
                            continue;
                        }
                        "addFILE" => {
                            files.push(v.as_str().expect("addFILE names a file").to_string());
                            continue;
                        }
                        _ => {}
                    }
                    let Some((m, next)) = lines.next() else { break };
                    (v, m + 1, next.trim_end_matches('\r').to_string())
                }
                None if ignore_block || raw.starts_with('#') || raw.trim().is_empty() => continue,
                None => (Value::Object(Default::default()), n + 1, raw.to_string()),
            };
            if ignore_block {
                continue;
            }
            if runs.is_empty() {
                let run = cache.remove("{}").unwrap_or_else(|| Run {
                    name: "{}".into(),
                    filter: load(loader, name, &BTreeMap::new()),
                    opts: BTreeMap::new(),
                });
                runs.push(run);
            }
            let want_match = faildata.get("match").and_then(Value::as_bool).unwrap_or(false);
            let want_host = faildata.get("host").and_then(Value::as_str).map(str::to_string);
            let want_time = faildata.get("time").and_then(Value::as_str).map(str::to_string);
            for run in &mut runs {
                if let Some(c) = faildata.get("constraint").and_then(Value::as_str)
                    && !condition(c, name, &run.opts)
                {
                    continue;
                }
                let at = format!("{file}:{line_no} {}", run.name);
                let (compiled, state) = match &mut run.filter {
                    Ok(f) => (&f.0, &mut f.1),
                    Err(e) => {
                        entries.push(Entry { at, ok: false, detail: format!("definition not loaded: {e}") });
                        continue;
                    }
                };
                let journal = run.opts.get("logtype").is_some_and(|t| t == "journal");
                let text = if journal {
                    format!("{}{line}", run.opts.get("test.prefix-line").map(String::as_str).unwrap_or(""))
                } else {
                    line.clone()
                };
                let outcome = if journal {
                    compiled.line_dated(state, &text, TEST_NOW)
                } else {
                    compiled.line(state, &text, TEST_NOW)
                };
                let (ok, detail) = match (&outcome.failure, want_match) {
                    (None, false) => (true, String::new()),
                    (None, true) => (false, format!("missed (want {})", want_host.as_deref().unwrap_or("?"))),
                    (Some(f), false) => (false, format!("matched {} by failregex {} but must not", f.host, f.regex)),
                    (Some(f), true) => match (&want_host, &want_time) {
                        (Some(h), _) if !same_host(&f.host, h) => (false, format!("host {} instead of {h}", f.host)),
                        (_, Some(t)) if !journal && !same_time(outcome.time, t) => (
                            false,
                            format!("time {:?} instead of {t} (Europe/Zurich)", outcome.time.map(|t| t.to_string())),
                        ),
                        _ => (true, String::new()),
                    },
                };
                entries.push(Entry { at, ok, detail: if ok { detail } else { format!("{detail}: {line}") } });
            }
        }
    }
    entries
}

/// The sample logs that have a definition in filter.d.
fn samples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(Path::new(FILTERS).join("filter.d"))
        .expect("filter.d")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".conf")?.to_string();
            (stem != "common" && Path::new(SAMPLES).join(&stem).is_file()).then_some(stem)
        })
        .collect();
    names.sort();
    names
}

fn known_gaps() -> BTreeMap<String, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fail2ban-known-gaps.txt");
    std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (at, why) =
                l.split_once(" -- ").unwrap_or_else(|| panic!("{}: `{l}`: expected `ENTRY -- reason`", path.display()));
            (at.trim().to_string(), why.trim().to_string())
        })
        .collect()
}

#[test]
fn fail2ban_definitions_pass_fail2bans_own_samples() {
    if !corpus_present() {
        return;
    }
    let gaps = known_gaps();
    let mut total = 0;
    let mut right = 0;
    let mut unexpected = Vec::new();
    let mut listed_but_right = Vec::new();
    let mut per_filter = Vec::new();
    let mut seen = BTreeSet::new();
    for name in samples() {
        let entries = replay(&name, &fail2bans);
        let ok = entries.iter().filter(|e| e.ok).count();
        per_filter.push(format!("{name}: {ok}/{}", entries.len()));
        total += entries.len();
        right += ok;
        for e in entries {
            seen.insert(e.at.clone());
            match (e.ok, gaps.contains_key(&e.at)) {
                (false, false) => unexpected.push(format!("{} -- {}", e.at, e.detail)),
                (true, true) => listed_but_right.push(e.at),
                _ => {}
            }
        }
    }
    let stale: Vec<&String> = gaps.keys().filter(|k| !seen.contains(*k)).collect();
    let share = right as f64 / total as f64;
    eprintln!("fail2ban corpus: {right} of {total} entries right ({:.2}%)\n{}", share * 100.0, per_filter.join("\n"));
    assert!(
        unexpected.is_empty(),
        "{} entries wrong and not in the known gaps:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
    assert!(listed_but_right.is_empty(), "known gaps that now pass (remove them): {listed_but_right:#?}");
    assert!(stale.is_empty(), "known gaps that name no entry: {stale:#?}");
    assert!(total > 1000, "the corpus has thousands of entries; read {total}");
    assert!(share >= 0.99, "{right} of {total} right: under 99%");
}

/// The built-in filters on the samples of fail2ban's filters of the same names: every
/// entry right (each failure found with its host and time, nothing matched that must
/// not be), so the built-ins are at least as accurate as fail2ban's own filters on its
/// own corpus. `BANSHARE_CORPUS_ONLY=sshd` runs one.
#[test]
fn built_in_filters_pass_fail2bans_samples_of_the_same_names() {
    if !corpus_present() {
        return;
    }
    let only = std::env::var("BANSHARE_CORPUS_ONLY").ok();
    let mut wrong = Vec::new();
    let mut summary = Vec::new();
    let mut total = 0;
    for b in builtin::BUILT_INS {
        if only.as_deref().is_some_and(|o| o != b.name) || !Path::new(SAMPLES).join(b.name).is_file() {
            continue;
        }
        let entries = replay(b.name, &built_in);
        let ok = entries.iter().filter(|e| e.ok).count();
        summary.push(format!("{}: {ok}/{}", b.name, entries.len()));
        total += entries.len();
        assert!(!entries.is_empty(), "{}: no entry read", b.name);
        wrong.extend(entries.into_iter().filter(|e| !e.ok).map(|e| format!("{} -- {}", e.at, e.detail)));
    }
    eprintln!("built-in filters on fail2ban's corpus ({total} entries):\n{}", summary.join("\n"));
    assert!(wrong.is_empty(), "{} entries wrong:\n{}", wrong.len(), wrong.join("\n"));
}
