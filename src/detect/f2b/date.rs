//! Finding the timestamp in a line as fail2ban's date detector does, so the same text is
//! taken out before the patterns run (fail2ban matches the line without its date).
//!
//! A `datepattern` is a pattern with `strptime` fields (`%Y`, `%b`, `%d`, `%H`, ...;
//! `%Ex..` for the exact two-digit forms), or `EPOCH`, `LEPOCH`, `TAI64N`, each maybe after
//! `{^LN-BEG}` (only at the line's start, after at most two non-word characters), or a
//! pattern with `{DATE}` (each default form in its place), or `{^LN-BEG}` alone (the
//! default forms, at the line's start). Without one, the default forms are searched
//! anywhere, those at the line's start first. The span taken out is the pattern's first
//! group, or the whole date.
//!
//! The default forms below are banshare's own list of the formats daemons log.

use pcre2::bytes::CaptureLocations;

use super::regex::{Re, Search};
use crate::clock::Timestamp;
use crate::detect::time::{TimeParser, utc, year_of};

/// The date formats tried when a definition names none, in order.
const DEFAULTS: &[&str] = &[
    // 2026-11-23 10:00:01,123 +0100, 2026/11/23T10:00:01
    r"%ExY(?P<_sep>[-/.])%m(?P=_sep)%d(?:T|  ?)%H:%M:%S(?:[.,]%f)?(?:\s*%z)?",
    // syslog: Mon Nov 23 10:00:01.123 2026, Nov  3 10:00:01
    r"(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    r"(?:%a )?%b %d %ExY %k:%M:%S(?:\.%f)?",
    // 23/11/2026 10:00:01, 23-11-26 10:00:01
    r"%d(?P<_sep>[-/])%m(?P=_sep)(?:%ExY|%Exy) %k:%M:%S",
    // web access logs: 23/Nov/2026:10:00:01 +0100
    r"%d(?P<_sep>[-/])%b(?P=_sep)%ExY[ :]?%H:%M:%S(?:\.%f)?(?: %z)?",
    r"%m/%d/%ExY:%H:%M:%S",
    r"%m-%d-%ExY %k:%M:%S(?:\.%f)?",
    "EPOCH",
    r"{^LN-BEG}%H:%M:%S",
    r"^<%m/%d/%Exy@%H:%M:%S>",
    r"%Exy%Exm%Exd  ?%H:%M:%S",
    r"%b %d, %ExY %I:%M:%S %p",
    r"^%b-%d-%Exy %k:%M:%S",
    r"%ExY%Exm%Exd(?:T|  ?)%ExH%ExM%ExS(?:[.,]%f)?(?:\s*%z)?",
    r"(?:%Z )?(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    r"(?:%z )?(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    "TAI64N",
];

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];

/// The regex of one `strptime` field.
fn field(name: &str) -> Option<&'static str> {
    Some(match name {
        "Y" => r"(?P<Y>\d{4})",
        "ExY" => r"(?P<Y>(?:19|20)\d{2})",
        "y" | "Exy" => r"(?P<y>\d{2})",
        "m" => r"(?P<m>1[0-2]|0[1-9]|[1-9])",
        "Exm" => r"(?P<m>1[0-2]|0[1-9])",
        "d" | "e" => r"(?P<d>3[01]|[12]\d|0[1-9]|[1-9]| [1-9])",
        "Exd" => r"(?P<d>3[01]|[12]\d|0[1-9])",
        "H" => r"(?P<H>2[0-3]|[01]\d|\d)",
        "ExH" => r"(?P<H>2[0-3]|[01]\d)",
        "k" => r"(?P<H>2[0-3]|[01]?\d| \d)",
        "I" | "l" => r"(?P<I>1[0-2]|0[1-9]|[1-9])",
        "M" => r"(?P<M>[0-5]\d|\d)",
        "ExM" => r"(?P<M>[0-5]\d)",
        "S" => r"(?P<S>6[01]|[0-5]\d|\d)",
        "ExS" => r"(?P<S>6[01]|[0-5]\d)",
        "f" => r"(?P<f>\d+)",
        "p" => r"(?P<p>AM|PM)",
        "a" => r"(?P<a>Mon|Tue|Wed|Thu|Fri|Sat|Sun)",
        "A" => r"(?P<A>Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)",
        "b" => r"(?P<b>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)",
        "B" => r"(?P<B>January|February|March|April|May|June|July|August|September|October|November|December)",
        "z" => r"(?P<z>Z|UTC|GMT|[+-][01]\d(?::?\d{2})?)",
        "Z" => r"(?P<Z>Z|UTC|GMT|[A-Z]{3,5})",
        "j" => r"(?P<j>36[0-6]|3[0-5]\d|[12]\d\d|0[1-9]\d|00[1-9]|[1-9]\d|0[1-9]|[1-9])",
        "s" => r"(?P<s>\d{10,11})",
        _ => return None,
    })
}

/// Writes out the `%` fields of `pattern`; `true` when a field is made of letters (the
/// pattern then ignores case).
fn fields(pattern: &str) -> Result<(String, bool), String> {
    let mut out = String::with_capacity(pattern.len() * 3);
    let mut alpha = false;
    let mut rest = pattern;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('%') {
            out.push('%');
            rest = r;
            continue;
        }
        let len = if rest.starts_with("Ex") { 3 } else { 1 };
        let name = rest.get(..len).ok_or_else(|| format!("`%` at the end of datepattern `{pattern}`"))?;
        let re = field(name)
            .ok_or_else(|| format!("datepattern `{pattern}`: `%{name}` is not a date field banshare reads"))?;
        alpha |= matches!(name, "a" | "A" | "b" | "B" | "p");
        out.push_str(re);
        rest = &rest[len..];
    }
    out.push_str(rest);
    Ok((out, alpha))
}

/// Whether `re` has a plain capturing `(` (not `(?`, not escaped, not in a class).
fn has_plain_group(re: &str) -> bool {
    let b = re.as_bytes();
    let mut in_class = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' if !in_class => in_class = true,
            b']' if in_class => in_class = false,
            b'(' if !in_class && !matches!(b.get(i + 1), Some(b'?' | b'*')) => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// What a template parses its match as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fields,
    Epoch { long: bool },
    Tai64n,
}

/// One compiled date form.
#[derive(Debug)]
struct Template {
    re: Re,
    kind: Kind,
    /// Found only at the line's start (or end): the first such match is taken.
    anchored: bool,
    /// The group index of each field the template has.
    fields: Fields,
}

/// Builds the regex of a `strptime` pattern with fail2ban's boundaries.
fn template(pattern: &str) -> Result<Template, String> {
    let (mut word_begin, mut word_end, mut start) = (true, true, false);
    let mut p = pattern.trim();
    if let Some(r) = p.strip_prefix("{UNB}") {
        (word_begin, word_end, p) = (false, false, r);
    }
    if let Some(r) = p.strip_prefix("{^LN-BEG}") {
        (start, p) = (true, r);
    }
    match p.to_uppercase().as_str() {
        "EPOCH" | "LEPOCH" => return epoch(p.eq_ignore_ascii_case("LEPOCH"), start),
        "TAI64N" => return finish(r"(@[0-9a-f]{24})", false, start, true, Kind::Tai64n),
        _ => {}
    }
    if p.to_uppercase().contains("{EPOCH}") || p.to_uppercase().contains("{LEPOCH}") {
        return Err(format!("datepattern `{pattern}`: an epoch inside a pattern is not supported"));
    }
    let (mut re, alpha) = fields(p)?;
    let starts_bounded = re.starts_with('^') || re.starts_with("(?:^") || re.starts_with("**");
    let ends_bounded = re.ends_with('$') || re.ends_with(r"\b") || re.ends_with(r"\s") || re.ends_with("**");
    re = re.trim_start_matches("**").trim_end_matches("**").to_string();
    if !has_plain_group(&re) {
        // The date proper is group 1: the pattern without its leading `^` and trailing `$`.
        let lead = if re.starts_with('^') { 1 } else { 0 };
        let trail = usize::from(re.ends_with('$') && !re.ends_with(r"\$") && re.len() > lead);
        re = format!("{}({}){}", &re[..lead], &re[lead..re.len() - trail], &re[re.len() - trail..]);
    }
    if alpha {
        re = format!("(?i){re}");
    }
    finish(&re, word_begin && !starts_bounded, start, word_end && !ends_bounded, Kind::Fields)
}

fn epoch(long: bool, start: bool) -> Result<Template, String> {
    let digits = if long { r"\d{10,11}(?:\d{3}(?:\.\d{1,6}|\d{3})?)?" } else { r"\d{10,11}\b(?:\.\d{3,6})?" };
    if start {
        let re = format!(r"((?P<square>(?<=^\[))?{digits})(?(square)(?=\]))");
        return finish(&re, false, true, true, Kind::Epoch { long });
    }
    let re = format!(
        r"((?:^|(?P<square>(?<=^\[))|(?P<selinux>(?<=\baudit\())){digits})(?:(?(selinux)(?=:\d+\)))|(?(square)(?=\])))"
    );
    finish(&re, false, false, true, Kind::Epoch { long })
}

fn finish(re: &str, word_begin: bool, start: bool, word_end: bool, kind: Kind) -> Result<Template, String> {
    let mut full = String::new();
    if start {
        full.push_str(r"^(?:\W{0,2})?");
    } else if word_begin {
        full.push_str(r"(?=^|\b|\W)");
    }
    full.push_str(re);
    if word_end {
        full.push_str(r"(?=\b|\W|$)");
    }
    let anchored = start || re.starts_with('^') || re.starts_with("(?i)^") || re.ends_with('$');
    let re = Re::new(&full, false)?;
    let group = |name: &str| re.group(name);
    let fields = Fields {
        year: group("Y"),
        year2: group("y"),
        month: group("m"),
        month_name: group("b").or_else(|| group("B")),
        day: group("d"),
        hour: group("H"),
        hour12: group("I"),
        ampm: group("p"),
        minute: group("M"),
        second: group("S"),
        fraction: group("f"),
        zone: group("z"),
        zone_name: group("Z"),
        epoch: group("s"),
    };
    Ok(Template { re, kind, anchored, fields })
}

/// Adds the templates of one `datepattern` line.
fn add(templates: &mut Vec<Template>, p: &str) -> Result<(), String> {
    if p.eq_ignore_ascii_case("{DEFAULT}") {
        for p in DEFAULTS.iter().filter(|p| !p.starts_with('^') && !p.starts_with("{^LN-BEG}")) {
            templates.push(template(&format!("{{^LN-BEG}}{p}"))?);
        }
        for p in DEFAULTS {
            templates.push(template(p)?);
        }
    } else if p.eq_ignore_ascii_case("{^LN-BEG}") {
        for p in DEFAULTS {
            let p = if p.starts_with('^') || p.starts_with("{^LN-BEG}") {
                p.to_string()
            } else {
                format!("{{^LN-BEG}}{p}")
            };
            templates.push(template(&p)?);
        }
    } else if p.contains("{DATE}") {
        for d in DEFAULTS.iter().filter(|d| d.contains('%')) {
            let d = d.trim_start_matches("{^LN-BEG}").trim_start_matches('^');
            templates.push(template(&p.replace("{DATE}", d))?);
        }
    } else if !p.eq_ignore_ascii_case("{NONE}") {
        templates.push(template(p)?);
    }
    Ok(())
}

/// Finds dates in lines: the templates of one definition, and which one found the last.
#[derive(Debug)]
pub struct DateDetector {
    templates: Vec<Template>,
}

/// A date found in a line: its span and, when it reads as one, its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub end: usize,
    pub time: Option<Timestamp>,
}

impl DateDetector {
    /// The detector for a definition's `datepattern` (`None`: the defaults): one
    /// form per line, tried in order.
    pub fn new(datepattern: Option<&str>) -> Result<DateDetector, String> {
        let mut templates = Vec::new();
        match datepattern {
            None => add(&mut templates, "{DEFAULT}")?,
            Some(lines) => {
                if lines.len() > super::engine::MAX_PATTERN {
                    return Err(format!("a datepattern of {} KiB: longer than banshare compiles", lines.len() >> 10));
                }
                for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    add(&mut templates, line)?;
                }
            }
        }
        Ok(DateDetector { templates })
    }

    /// The date in `line`: the first template found at the line's start, else the
    /// leftmost of the others (the first, on a tie). `last` is the template that found
    /// the previous date; it is tried first and kept if it finds one at the same place.
    pub fn find(&self, line: &str, last: &mut Option<(usize, usize)>, clock: &mut Clock) -> Option<Found> {
        if clock.locs.len() != self.templates.len() {
            clock.locs = self.templates.iter().map(|t| t.re.locations()).collect();
        }
        let hit = self.search(line, last, &mut clock.locs)?;
        let t = &self.templates[hit.template];
        let time = clock.read(t, line, (hit.start, hit.end), hit.template);
        Some(Found { start: hit.start, end: hit.end, time })
    }

    fn search(&self, line: &str, last: &mut Option<(usize, usize)>, locs: &mut [CaptureLocations]) -> Option<DateHit> {
        let mut date_of = |template: usize| -> Option<DateHit> {
            let locs = &mut locs[template];
            match self.templates[template].re.search(locs, line) {
                Search::Match { .. } => {
                    let (start, end) = locs.get(1)?;
                    Some(DateHit { template, start, end })
                }
                _ => None,
            }
        };
        if let Some((i, at)) = *last
            && i < self.templates.len()
            && let Some(hit) = date_of(i)
            && (self.templates[i].anchored || hit.start == at)
        {
            return Some(hit);
        }
        let mut best: Option<DateHit> = None;
        for i in 0..self.templates.len() {
            let Some(hit) = date_of(i) else { continue };
            if self.templates[i].anchored || hit.start <= 1 {
                best = Some(hit);
                break;
            }
            if best.as_ref().is_none_or(|b| hit.start < b.start) {
                best = Some(hit);
            }
        }
        if let Some(hit) = &best {
            *last = Some((hit.template, hit.start));
        }
        best
    }
}

/// A template's match: the date's span (its fields are in the template's locations).
struct DateHit {
    template: usize,
    start: usize,
    end: usize,
}

/// Group indices of a template's `strptime` fields.
#[derive(Debug, Default)]
struct Fields {
    year: Option<usize>,
    year2: Option<usize>,
    month: Option<usize>,
    month_name: Option<usize>,
    day: Option<usize>,
    hour: Option<usize>,
    hour12: Option<usize>,
    ampm: Option<usize>,
    minute: Option<usize>,
    second: Option<usize>,
    fraction: Option<usize>,
    zone: Option<usize>,
    zone_name: Option<usize>,
    epoch: Option<usize>,
}

/// Reads found dates as times: `now` for a missing year, the host's zone without one.
#[derive(Debug)]
pub struct Clock {
    pub now: Timestamp,
    parser: TimeParser,
    /// Capture slots of each template, made once (each holds a JIT stack).
    locs: Vec<CaptureLocations>,
    /// The last date read. Lines of one second repeat their date: reading it once is
    /// enough.
    last: LastDate,
}

/// A date read, with what its time depends on.
#[derive(Debug, Default)]
struct LastDate {
    template: Option<usize>,
    text: String,
    /// The minute of `now` it was read in (a date without a year is read against `now`).
    minute: i64,
    time: Option<Timestamp>,
}

impl Clock {
    pub fn new(now: Timestamp) -> Clock {
        Clock { now, parser: TimeParser::default(), locs: Vec::new(), last: LastDate::default() }
    }

    /// [`Clock::read_new`], or the last date's time when the line repeats it.
    fn read(&mut self, t: &Template, line: &str, span: (usize, usize), template: usize) -> Option<Timestamp> {
        let whole = &line[span.0..span.1];
        let minute = self.now.0.div_euclid(60_000);
        let last = &self.last;
        if last.template == Some(template) && last.minute == minute && last.text == whole {
            return last.time;
        }
        let time = self.read_new(t, line, span, template);
        let last = &mut self.last;
        (last.template, last.minute, last.time) = (Some(template), minute, time);
        last.text.clear();
        last.text.push_str(whole);
        time
    }

    fn read_new(&mut self, t: &Template, line: &str, span: (usize, usize), template: usize) -> Option<Timestamp> {
        let locs = &self.locs[template];
        let text = |group: Option<usize>| -> Option<&str> {
            let (s, e) = locs.get(group?)?;
            Some(line[s..e].trim())
        };
        let n = |group: Option<usize>| text(group).and_then(|v| v.parse::<i64>().ok());
        let whole = &line[span.0..span.1];
        if whole.is_empty() {
            // A pattern whose date group matched nothing (`^WARNING:()**`): the line
            // has no date of its own; the caller uses the last one.
            return None;
        }
        let f = &t.fields;
        match t.kind {
            // `@4000000052f3c8e82d1e7a9c`: seconds in hex after the `@4`.
            // A label past the clock's range (`@44...`) is no time.
            Kind::Tai64n => {
                i64::from_str_radix(whole.get(2..17)?, 16).ok().and_then(|s| s.checked_mul(1000)).map(Timestamp)
            }
            Kind::Epoch { long } => {
                let v = whole.trim_start_matches('[');
                let secs: f64 = if long && v.len() >= 13 {
                    let n: f64 = v.parse().ok()?;
                    if v.len() >= 16 && !v.contains('.') { n / 1e6 } else { n / 1e3 }
                } else {
                    v.parse().ok()?
                };
                Some(Timestamp((secs * 1000.0) as i64))
            }
            Kind::Fields => {
                if let Some(s) = n(f.epoch) {
                    return s.checked_mul(1000).map(Timestamp);
                }
                let month = n(f.month).or_else(|| {
                    let name = text(f.month_name)?;
                    MONTHS
                        .iter()
                        .position(|m| name.get(..m.len()).is_some_and(|n| n.eq_ignore_ascii_case(m)))
                        .map(|i| i as i64 + 1)
                });
                let mut hour = n(f.hour).unwrap_or(0);
                if let Some(h) = n(f.hour12) {
                    let pm = text(f.ampm).is_some_and(|p| p.eq_ignore_ascii_case("PM"));
                    hour = h % 12 + if pm { 12 } else { 0 };
                }
                let secs = hour * 3600 + n(f.minute).unwrap_or(0) * 60 + n(f.second).unwrap_or(0);
                // Milliseconds: the first three digits of the fraction, padded with zeros.
                let ms = text(f.fraction).map_or(0, |frac| {
                    let mut digits = frac.bytes().chain(*b"000").take(3);
                    digits.try_fold(0i64, |ms, d| Some(ms * 10 + i64::from(char::from(d).to_digit(10)?))).unwrap_or(0)
                });
                let year = n(f.year).or_else(|| n(f.year2).map(|y| 2000 + y));
                let zone = text(f.zone).map(offset).or_else(|| text(f.zone_name).and_then(zone_abbreviation).map(Some));
                let date = Date { month, day: n(f.day), secs, ms, year, zone };
                self.time_of(date)
            }
        }
    }

    /// The time of a date read from a line.
    fn time_of(&mut self, d: Date) -> Option<Timestamp> {
        let (Some(month), Some(day)) = (d.month, d.day) else {
            // A time of day alone: today (in the host's zone), or yesterday when that is
            // ahead of now.
            let (y, m, day) = crate::detect::time::local_date(self.now)?;
            let today = self.parser.local(y, m, day, d.secs, d.ms)?;
            return Some(if today.0 > self.now.0 + 60_000 { Timestamp(today.0 - 86_400_000) } else { today });
        };
        let now = self.now;
        let parser = &mut self.parser;
        let mut at = |y: i64| match d.zone {
            Some(offset) => utc(y, month, day, d.secs, d.ms, offset?),
            None => parser.local(y, month, day, d.secs, d.ms),
        };
        match d.year {
            Some(y) => at(y),
            None => {
                // No year: this year, unless that is more than a day ahead of now.
                let this = at(year_of(now))?;
                if this.0 > now.0 + 86_400_000 { at(year_of(now) - 1) } else { Some(this) }
            }
        }
    }
}

/// The parts of a date as a line gives them.
struct Date {
    month: Option<i64>,
    day: Option<i64>,
    secs: i64,
    ms: i64,
    year: Option<i64>,
    /// The zone's offset, when the line gives a zone (`None` inside: unreadable).
    zone: Option<Option<i64>>,
}

/// Seconds east of UTC of a zone's common abbreviation (`PDT`, `CEST`, ...).
fn zone_abbreviation(z: &str) -> Option<i64> {
    let hours = match z {
        "Z" | "UTC" | "GMT" | "UT" | "WET" => 0,
        "BST" | "CET" | "WEST" => 1,
        "CEST" | "EET" => 2,
        "EEST" | "MSK" => 3,
        "JST" | "KST" => 9,
        "AEST" => 10,
        "EST" => -5,
        "EDT" | "AST" => -4,
        "CDT" => -5,
        "CST" | "MDT" => -6,
        "MST" => -7,
        "PST" => -8,
        "PDT" => -7,
        "AKST" => -9,
        "HST" => -10,
        _ => return None,
    };
    Some(hours * 3600)
}

/// Seconds east of UTC of `Z`, `UTC`, `GMT`, `+01`, `+0100`, `-01:30`.
fn offset(z: &str) -> Option<i64> {
    if matches!(z, "Z" | "UTC" | "GMT") {
        return Some(0);
    }
    let sign = if z.starts_with('-') { -1 } else { 1 };
    let digits: String = z[1..].chars().filter(char::is_ascii_digit).collect();
    let (h, m) = (digits.get(..2)?.parse::<i64>().ok()?, digits.get(2..4).map_or(Some(0), |m| m.parse().ok())?);
    Some(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The time `pattern` reads from `line` at `now`, in UTC.
    fn read(pattern: Option<&str>, line: &str, now: &str) -> Option<(String, String)> {
        // SAFETY: tests in this module are the only users of TZ in this process.
        unsafe { std::env::set_var("TZ", "UTC") };
        let now = Timestamp(
            humantime::parse_rfc3339(now).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64,
        );
        let d = DateDetector::new(pattern).unwrap();
        let f = d.find(line, &mut None, &mut Clock::new(now))?;
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(f.time?.0 as u64);
        let millis = humantime::format_rfc3339_millis(t).to_string();
        Some((line[f.start..f.end].to_string(), millis.replace(".000Z", "Z")))
    }

    #[test]
    fn reads_the_forms_daemons_log() {
        let now = "2026-11-23T12:00:00Z";
        let at = |p, l| read(p, l, now).map(|(_, t)| t);
        assert_eq!(
            at(Some("^%b %d, %ExY %I:%M:%S %p"), "apr 15, 2013 8:34:08 PM org.x warn").as_deref(),
            Some("2013-04-15T20:34:08Z")
        );
        assert_eq!(at(None, "Nov 23 10:00:01 host sshd[1]: x").as_deref(), Some("2026-11-23T10:00:01Z"));
        assert_eq!(
            at(None, "Dec 31 23:59:59 host x").as_deref(),
            Some("2025-12-31T23:59:59Z"),
            "no year, ahead of now: last year"
        );
        assert_eq!(at(None, "2026-11-23 10:00:01,123 +0100 x").as_deref(), Some("2026-11-23T09:00:01.123Z"));
        assert_eq!(
            at(None, "1.2.3.4 - - [23/Nov/2026:10:00:01 -0500] \"GET /\"").as_deref(),
            Some("2026-11-23T15:00:01Z")
        );
        assert_eq!(at(Some("{^LN-BEG}EPOCH"), "1795000000.250 x").as_deref(), Some("2026-11-18T11:06:40.250Z"));
        assert_eq!(at(Some("{^LN-BEG}TAI64N"), "@4000000069222d8000000000 x").as_deref(), Some("2025-11-22T21:39:12Z"));
        // A label past the clock's range is no time (it overflowed once: found by the fuzzer).
        assert_eq!(at(Some("{^LN-BEG}TAI64N"), "@440000004c91b044077a9e94 x"), None);
        let (span, _) = read(Some("^[^\\[]*\\[({DATE})"), "x [Mon Nov 23 10:00:01.5 2026] y", now).unwrap();
        assert_eq!(span, "Mon Nov 23 10:00:01.5 2026", "the pattern's own group is the span taken out");
        assert_eq!(read(None, "no date here", now), None);
    }
}
