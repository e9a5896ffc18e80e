//! Timestamps in log lines: syslog (`Nov 23 10:00:01`, no year: inferred), RFC 3339
//! (rsyslog high precision, journald), nginx/apache access (`[23/Nov/2026:10:00:01 +0000]`),
//! nginx error (`2026/11/23 10:00:01`) and apache error (`[Mon Nov 23 10:00:01.123 2026]`).
//! Times without a zone are local time. Parsed by hand: only lines a filter matched are
//! parsed, but a scan can match millions.

use std::time::Duration;

use crate::clock::Timestamp;

const MONTHS: [&[u8; 3]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

/// Reads log timestamps relative to `now` (for the missing year of syslog lines), and
/// caches the local UTC offset per hour.
#[derive(Debug, Default)]
pub struct TimeParser {
    offset_cache: Option<(i64, i64)>,
}

impl TimeParser {
    /// The time of `line`, or `None` when it carries no timestamp banshare reads.
    pub fn parse(&mut self, line: &[u8], now: Timestamp) -> Option<Timestamp> {
        let b = line;
        if b.len() >= 19 && b[4] == b'-' && b[7] == b'-' && (b[10] == b'T' || b[10] == b' ') {
            return self.rfc3339(b);
        }
        if b.len() >= 19 && b[4] == b'/' && b[7] == b'/' && b[10] == b' ' {
            let (y, mo, d) = (num(at(b, 0, 4)?)?, num(at(b, 5, 7)?)?, num(at(b, 8, 10)?)?);
            return self.local(y, mo, d, hms(at(b, 11, 19)?)?, 0);
        }
        if b.len() >= 15 && month(at(b, 0, 3)?).is_some() && b[3] == b' ' {
            return self.syslog(b, now);
        }
        if b.first() == Some(&b'[') && b.len() > 26 && month(at(b, 5, 8)?).is_some() {
            return self.apache_error(b);
        }
        let open = b.windows(2).position(|w| w == b" [")? + 2;
        self.access(b.get(open..)?)
    }

    /// `2026-11-23T10:00:01.123456+01:00`, `...Z`, or without a zone (local).
    fn rfc3339(&mut self, b: &[u8]) -> Option<Timestamp> {
        let (y, mo, d) = (num(at(b, 0, 4)?)?, num(at(b, 5, 7)?)?, num(at(b, 8, 10)?)?);
        let secs = hms(at(b, 11, 19)?)?;
        let mut i = 19;
        let mut ms = 0;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            i = start;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            let frac = at(b, start, i.min(start + 3))?;
            ms = num(frac)? * 10i64.pow(3 - frac.len() as u32);
        }
        match b.get(i) {
            Some(b'Z') => utc(y, mo, d, secs, ms, 0),
            Some(sign @ (b'+' | b'-')) if b.len() >= i + 6 => {
                let hh = num(at(b, i + 1, i + 3)?)?;
                let mm = num(at(b, i + 4, i + 6)?).or_else(|| num(at(b, i + 3, i + 5)?))?;
                let off = (hh * 3600 + mm * 60) * if *sign == b'-' { -1 } else { 1 };
                utc(y, mo, d, secs, ms, off)
            }
            _ => self.local(y, mo, d, secs, ms),
        }
    }

    /// `Nov 23 10:00:01` (day may be space-padded); the year is the one that puts the
    /// line at most a day in the future of `now`.
    fn syslog(&mut self, b: &[u8], now: Timestamp) -> Option<Timestamp> {
        let mo = month(at(b, 0, 3)?)?;
        let d = num(trim(at(b, 4, 6)?))?;
        let secs = hms(at(b, 7, 15)?)?;
        let year = year_of(now);
        let t = self.local(year, mo, d, secs, 0)?;
        if t > now.plus(Duration::from_secs(86_400)) { self.local(year - 1, mo, d, secs, 0) } else { Some(t) }
    }

    /// `[Mon Nov 23 10:00:01.123456 2026]`
    fn apache_error(&mut self, b: &[u8]) -> Option<Timestamp> {
        let mo = month(at(b, 5, 8)?)?;
        let d = num(trim(at(b, 9, 11)?))?;
        let secs = hms(at(b, 12, 20)?)?;
        let close = b.iter().position(|c| *c == b']')?;
        let y = num(at(b, close.checked_sub(4)?, close)?)?;
        self.local(y, mo, d, secs, 0)
    }

    /// `23/Nov/2026:10:00:01 +0000]`
    fn access(&mut self, b: &[u8]) -> Option<Timestamp> {
        if b.len() < 26 || b[2] != b'/' || b[6] != b'/' || b[11] != b':' || b[20] != b' ' {
            return None;
        }
        let (d, mo, y) = (num(at(b, 0, 2)?)?, month(at(b, 3, 6)?)?, num(at(b, 7, 11)?)?);
        let secs = hms(at(b, 12, 20)?)?;
        let sign = if b[21] == b'-' { -1 } else { 1 };
        let off = sign * (num(at(b, 22, 24)?)? * 3600 + num(at(b, 24, 26)?)? * 60);
        utc(y, mo, d, secs, 0, off)
    }

    /// A local wall-clock time (the host's zone) as a timestamp.
    pub(crate) fn local(&mut self, y: i64, mo: i64, d: i64, secs: i64, ms: i64) -> Option<Timestamp> {
        let naive = days_from_civil(y, mo, d)? * 86_400 + secs;
        let hour = naive.div_euclid(3600);
        let offset = match self.offset_cache {
            Some((h, off)) if h == hour => off,
            _ => {
                let off = local_offset(y, mo, d, secs)?;
                self.offset_cache = Some((hour, off));
                off
            }
        };
        Some(Timestamp((naive - offset) * 1000 + ms))
    }
}

pub(crate) fn utc(y: i64, mo: i64, d: i64, secs: i64, ms: i64, offset: i64) -> Option<Timestamp> {
    Some(Timestamp((days_from_civil(y, mo, d)? * 86_400 + secs - offset) * 1000 + ms))
}

/// The local zone's offset from UTC (seconds east) at that local wall-clock time.
fn local_offset(y: i64, mo: i64, d: i64, secs: i64) -> Option<i64> {
    // SAFETY: `tm` is a plain C struct, zero-initialised and then filled; mktime reads
    // and normalises it and touches nothing else we own.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        tm.tm_year = (y - 1900) as i32;
        tm.tm_mon = (mo - 1) as i32;
        tm.tm_mday = d as i32;
        tm.tm_hour = (secs / 3600) as i32;
        tm.tm_min = (secs % 3600 / 60) as i32;
        tm.tm_sec = (secs % 60) as i32;
        tm.tm_isdst = -1;
        let t = libc::mktime(&mut tm);
        if t == -1 {
            return None;
        }
        Some(tm.tm_gmtoff)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The host zone's calendar date (year, month, day) at `t`.
pub(crate) fn local_date(t: Timestamp) -> Option<(i64, i64, i64)> {
    // SAFETY: localtime_r fills the tm we own from a time_t we own.
    unsafe {
        let secs = t.0.div_euclid(1000) as libc::time_t;
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            return None;
        }
        Some((i64::from(tm.tm_year) + 1900, i64::from(tm.tm_mon) + 1, i64::from(tm.tm_mday)))
    }
}

pub(crate) fn year_of(t: Timestamp) -> i64 {
    // Inverse of days_from_civil, year only.
    let z = t.0.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(m <= 2)
}

/// `b[start..end]`, or `None` where the line is shorter: no index here can panic.
fn at(b: &[u8], start: usize, end: usize) -> Option<&[u8]> {
    b.get(start..end)
}

fn month(b: &[u8]) -> Option<i64> {
    MONTHS.iter().position(|m| m[..] == *b).map(|i| i as i64 + 1)
}

fn num(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0i64, |acc, c| acc * 10 + i64::from(c - b'0')))
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| *c != b' ').unwrap_or(b.len());
    &b[start..]
}

/// `HH:MM:SS` as seconds of the day.
fn hms(b: &[u8]) -> Option<i64> {
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, m, s) = (num(&b[0..2])?, num(&b[3..5])?, num(&b[6..8])?);
    (h < 24 && m < 60 && s < 61).then_some(h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc_now() -> Timestamp {
        // 2026-11-23T12:00:00Z
        Timestamp(days_from_civil(2026, 11, 23).unwrap() * 86_400_000 + 12 * 3_600_000)
    }

    #[test]
    fn reads_zoned_formats_exactly() {
        let mut p = TimeParser::default();
        let mut at = |line: &str| p.parse(line.as_bytes(), utc_now()).map(|t| t.to_string());
        assert_eq!(at("2026-11-23T10:00:01.123456+01:00 host sshd[1]: x").unwrap(), "2026-11-23T09:00:01Z");
        assert_eq!(at("2026-11-23T10:00:01Z host").unwrap(), "2026-11-23T10:00:01Z");
        assert_eq!(
            at(r#"203.0.113.7 - - [23/Nov/2026:10:00:01 -0500] "GET / HTTP/1.1" 404 1"#).unwrap(),
            "2026-11-23T15:00:01Z"
        );
        assert_eq!(at("no time here"), None);
        assert_eq!(at("Foo 99 99:99:99 x"), None);
    }

    #[test]
    fn infers_the_year_of_syslog_lines() {
        // SAFETY: tests in this module are the only users of TZ in this process.
        unsafe { std::env::set_var("TZ", "UTC") };
        let mut p = TimeParser::default();
        let at = |p: &mut TimeParser, line: &str| p.parse(line.as_bytes(), utc_now()).map(|t| t.to_string());
        assert_eq!(at(&mut p, "Nov 23 10:00:01 host sshd[1]: x").unwrap(), "2026-11-23T10:00:01Z");
        assert_eq!(at(&mut p, "Nov  3 10:00:01 host sshd[1]: x").unwrap(), "2026-11-03T10:00:01Z");
        // A December line read in November is from last year.
        assert_eq!(at(&mut p, "Dec 31 23:59:59 host x").unwrap(), "2025-12-31T23:59:59Z");
        assert_eq!(at(&mut p, "2026/11/23 10:00:01 [error] 1#1: x").unwrap(), "2026-11-23T10:00:01Z");
        assert_eq!(
            at(&mut p, "[Mon Nov 23 10:00:01.123456 2026] [auth_basic:error] x").unwrap(),
            "2026-11-23T10:00:01Z"
        );
        assert_eq!(year_of(utc_now()), 2026);
    }

    /// Lines built from the pieces every timestamp form uses, cut at every length: the
    /// parser and every built-in filter must answer (or not) without a panic. Seeded, so
    /// a failure replays (`BANSHARE_FUZZ_SEED`).
    #[test]
    fn no_line_panics_the_timestamp_parser_or_a_filter() {
        use crate::detect::builtin::BUILT_INS;
        use crate::detect::{Filter, FilterSet};
        let seed: u64 = std::env::var("BANSHARE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let pieces: [&[u8]; 24] = [
            b"[",
            b"]",
            b" [",
            b"/",
            b"-",
            b":",
            b" ",
            b".",
            b"+",
            b"T",
            b"Z",
            b"Nov",
            b"Mon",
            b"2026",
            b"23",
            b"10:00:01",
            b"123456",
            b"\xff",
            b"\0",
            b"sshd[12]: ",
            b"Failed password for ",
            b"from 203.0.113.7 port 22",
            b"[client ",
            b"::1",
        ];
        let mut filters = Vec::new();
        for b in BUILT_INS {
            for mode in b.modes.iter().copied().map(Some).chain([None]) {
                filters.push(Filter::compile(b.with_mode(mode).unwrap()).unwrap());
            }
        }
        let mut set = FilterSet::new(filters);
        let mut parser = TimeParser::default();
        let now = Timestamp(1_795_000_000_000);
        // The reported line first: `]` at position 2 once underflowed the apache reader.
        let reported: &[u8] = b"[]ue Dec 01 07:31:00.123456 2026] [auth_basic:error] [pid 12:tid 34] [client 45.4.4.4:5555] AH01617: user bob: authentication failure for \"/\": Password Mismatch";
        for cut in 0..=reported.len() {
            let _ = parser.parse(&reported[..cut], now);
            let _ = set.test(&reported[..cut], now);
        }
        for _ in 0..20_000 {
            let mut line = Vec::new();
            for _ in 0..(next() % 12) {
                line.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
            }
            for cut in [line.len(), line.len() / 2, (next() as usize) % (line.len() + 1)] {
                let _ = parser.parse(&line[..cut], now);
                let _ = set.test(&line[..cut], now);
            }
        }
    }
}
