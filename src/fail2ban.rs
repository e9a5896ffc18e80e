//! fail2ban integration: the ban and unban events that the `banshare` action
//! (`banshare report ...`) and the fail2ban.log follower hand to banshare, the map from
//! jail names to report categories, the log-line parser, and the decision an event makes.
//! Pure functions; the daemon ([`crate::daemon`]) and the CLI's offline path (daemon
//! down: straight into the store) both apply [`plan_ban`].

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::decision::{MAX_BAN, NewDecision, Source, ban_target};
use crate::feed::wire::{ReportInput, valid_category};

/// The pseudo-filter that reads fail2ban's own log (`Ban`/`Unban` lines) in `[[source]]`.
pub const LOG_FILTER: &str = "fail2ban";
/// Where Debian's fail2ban logs.
pub const DEFAULT_LOG: &str = "/var/log/fail2ban.log";
/// Most matched lines kept as evidence.
const MAX_EVIDENCE_LINES: usize = 10;
/// The longest evidence line kept (characters): longer ones are cut, never refused, so a
/// fail2ban ban is never lost to its `<matches>`.
pub const MAX_EVIDENCE_LINE: usize = 1000;

/// Report only (fail2ban's own banaction blocks), or block in banshare's sets too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Report,
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Ban,
    Unban,
}

/// How an event reached banshare. fail2ban logs `Ban` before it runs its actions, so a
/// host with the action and the fail2ban.log follower hears each ban twice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Via {
    /// The `banshare` action (`banshare report`): fail2ban's own bantime and mode.
    #[default]
    Action,
    /// A fail2ban.log line, read by the follower.
    Log,
}

/// One ban or unban, as fail2ban tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: Kind,
    pub mode: Mode,
    pub ip: IpAddr,
    pub jail: String,
    /// Explicit category; otherwise mapped from the jail's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// When fail2ban banned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
    /// fail2ban's bantime in seconds; negative is permanent; `None` unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bantime: Option<i64>,
    /// A ban fail2ban restored at its start: recorded, never reported again.
    #[serde(default)]
    pub restored: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<String>,
    /// Never on the wire: what comes over the control socket is the action's.
    #[serde(skip)]
    pub via: Via,
}

/// How long two events for the same address, jail and kind count as one ban told twice
/// (fail2ban runs its actions one after another: a burst of bans can delay one by seconds).
pub const ECHO_WINDOW: Duration = Duration::from_secs(60);

/// How long the mode and bantime a jail's action last used are taken for that jail's
/// fail2ban.log lines.
pub const JAIL_MODE_KEPT: Duration = Duration::from_secs(24 * 3600);
/// The most events and jails remembered: a flood of made-up ones (a local user with the
/// socket) costs memory within these bounds; past them, a telling is not remembered and
/// its echo, if any, is applied again (an extension, never a lost ban).
const MAX_HEARD: usize = 100_000;
const MAX_JAILS: usize = 4096;

/// What to do with an event, given the events heard lately ([`Echoes::hear`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// The first telling: applied and logged.
    First,
    /// The log's echo of what the action told: dropped (the action's bantime and mode
    /// are the better account).
    Echo,
    /// The action after the log told the same ban (applied in mode `logged`): applied,
    /// its bantime winning, and logged only if banshare now blocks what the log's line
    /// only recorded.
    Confirms { logged: Mode },
}

impl Heard {
    /// Whether applying the event makes a journal line of its own.
    pub fn announces(self, mode: Mode) -> bool {
        match self {
            Heard::First => true,
            Heard::Echo => false,
            Heard::Confirms { logged } => mode == Mode::Block && logged == Mode::Report,
        }
    }
}

/// What a jail's action last told: its mode and bantime, and when.
#[derive(Debug, Clone, Copy)]
struct JailHabit {
    mode: Mode,
    bantime: Option<i64>,
    at: std::time::Instant,
}

/// The ban and unban events heard in the last [`ECHO_WINDOW`], by address, jail and kind,
/// so each fail2ban ban is one decision and one journal line however many ways it came;
/// and the mode and bantime each jail's action last used, so a fail2ban.log line (which
/// fail2ban writes before it runs the action, and which says neither) is applied as the
/// jail's ban.
#[derive(Debug, Default)]
pub struct Echoes {
    heard: std::collections::HashMap<(IpAddr, String, Kind), (Via, Mode, std::time::Instant)>,
    jails: std::collections::HashMap<String, JailHabit>,
    swept: Option<std::time::Instant>,
}

impl Echoes {
    /// Classifies `event` and remembers it; a log event takes its jail's action mode. An
    /// unban forgets the address's ban (fail2ban may ban it again at once), and a ban
    /// its unban.
    pub fn hear(&mut self, event: &mut Event, now: std::time::Instant) -> Heard {
        // Old entries go at most once a second: a flood pays for the sweep once, not per event.
        if self.swept.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            self.heard.retain(|_, (_, _, at)| now.duration_since(*at) < ECHO_WINDOW);
            self.jails.retain(|_, habit| now.duration_since(habit.at) < JAIL_MODE_KEPT);
            self.swept = Some(now);
        }
        // Between sweeps, an old entry is no telling of this event.
        let fresh = |at: std::time::Instant| now.duration_since(at) < ECHO_WINDOW;
        match event.via {
            Via::Action => {
                if self.jails.len() < MAX_JAILS || self.jails.contains_key(&event.jail) {
                    let habit = self.jails.entry(event.jail.clone()).or_insert(JailHabit {
                        mode: event.mode,
                        bantime: None,
                        at: now,
                    });
                    (habit.mode, habit.at) = (event.mode, now);
                    if event.kind == Kind::Ban && event.bantime.is_some() {
                        habit.bantime = event.bantime;
                    }
                }
            }
            Via::Log => {
                if let Some(habit) = self.jails.get(&event.jail)
                    && now.duration_since(habit.at) < JAIL_MODE_KEPT
                {
                    event.mode = habit.mode;
                    event.bantime = event.bantime.or(habit.bantime);
                }
            }
        }
        let other = match event.kind {
            Kind::Ban => Kind::Unban,
            Kind::Unban => Kind::Ban,
        };
        self.heard.remove(&(event.ip, event.jail.clone(), other));
        let key = (event.ip, event.jail.clone(), event.kind);
        let told = self.heard.get(&key).filter(|(_, _, at)| fresh(*at)).map(|(via, mode, _)| (*via, *mode));
        let heard = match (told, event.via) {
            (None, _) => Heard::First,
            (Some((Via::Action, _)), Via::Log) => return Heard::Echo,
            (Some((Via::Log, logged)), Via::Action) => Heard::Confirms { logged },
            // The same channel twice: fail2ban said it twice (a restart's restore).
            (Some(_), _) => Heard::First,
        };
        if self.heard.len() < MAX_HEARD {
            self.heard.insert(key, (event.via, event.mode, now));
        }
        heard
    }

    /// Forgets `event` (it could not be applied): its other telling is not an echo.
    pub fn forget(&mut self, event: &Event) {
        self.heard.remove(&(event.ip, event.jail.clone(), event.kind));
    }
}

/// Built-in jail patterns and their categories, after the config's own.
const BUILTIN_CATEGORIES: [(&str, &str); 9] = [
    ("sshd*", "ssh_bruteforce"),
    ("ssh", "ssh_bruteforce"),
    ("postfix*", "mail_bruteforce"),
    ("dovecot*", "mail_bruteforce"),
    ("*sasl*", "mail_bruteforce"),
    ("nginx-http-auth", "web_bruteforce"),
    ("apache-auth", "web_bruteforce"),
    ("*botsearch*", "web_attack"),
    ("*noscript*", "web_attack"),
];

/// The category for a jail: the config's `[fail2ban.categories]` first, then the built-in
/// map. `None` for `recidive` (the caller looks up the original jail's category) and for
/// jails nothing matches.
pub fn jail_category<'a>(jail: &str, configured: &'a [(String, String)]) -> Option<&'a str> {
    let matches = |pattern: &str| glob::Pattern::new(pattern).is_ok_and(|p| p.matches(jail));
    if let Some((_, c)) = configured.iter().find(|(p, _)| matches(p)) {
        return Some(c);
    }
    BUILTIN_CATEGORIES.iter().find(|(p, _)| matches(p)).map(|(_, c)| *c)
}

/// `[fail2ban]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail2banConfig {
    /// Jail name patterns (`*` wildcards) and their report categories, checked before
    /// the built-in map (sshd* → ssh_bruteforce, ...).
    pub categories: Vec<(String, String)>,
    /// How long a ban read from fail2ban.log is recorded (the log does not say; its
    /// `Unban` line ends it sooner).
    pub log_bantime: Duration,
    /// fail2ban's configuration directory, where `[filter.NAME] fail2ban = "..."`
    /// definitions are read (`filter.d/NAME.conf`).
    pub dir: std::path::PathBuf,
}

impl Default for Fail2banConfig {
    fn default() -> Self {
        Fail2banConfig {
            categories: Vec::new(),
            log_bantime: Duration::from_secs(600),
            dir: std::path::PathBuf::from("/etc/fail2ban"),
        }
    }
}

/// The decision (and report) a ban event makes. `earlier` is the address's last known
/// category (for `recidive`); `draft` builds the report when one is due.
pub fn plan_ban(
    event: &Event,
    config: &Fail2banConfig,
    earlier: Option<String>,
    draft: impl FnOnce(&ReportInput<'_>) -> Option<crate::decision::ReportDraft>,
) -> NewDecision {
    let category = event
        .category
        .clone()
        .filter(|c| valid_category(c))
        .or_else(|| jail_category(&event.jail, &config.categories).map(str::to_string))
        .or(earlier)
        .unwrap_or_else(|| "other".into());
    // fail2ban's `bantime.increment` without `maxtime` grows without bound (8,000 years
    // and more): such a ban is kept, capped at banshare's longest, and the record says so.
    let (duration, capped) = match event.bantime {
        Some(s) if s < 0 => (None, false),
        Some(s) => {
            let asked = Duration::from_secs(s.max(1) as u64);
            (Some(asked.min(MAX_BAN)), asked > MAX_BAN)
        }
        None => (Some(config.log_bantime), false),
    };
    let failures = event.failures.map(|n| format!(": {n} failures")).unwrap_or_default();
    let mut reason = match event.mode {
        Mode::Block => format!("fail2ban jail {}{failures}", event.jail),
        Mode::Report => format!("fail2ban jail {}{failures} (fail2ban blocks it)", event.jail),
    };
    if capped {
        let asked = event.bantime.unwrap_or_default();
        reason.push_str(&format!(" (fail2ban asked for {asked} s; capped at banshare's 100-year limit)"));
    }
    let evidence: Vec<String> = event
        .matches
        .iter()
        .rev()
        .take(MAX_EVIDENCE_LINES)
        .rev()
        .map(|line| line.chars().take(MAX_EVIDENCE_LINE).collect())
        .collect();
    let comment = reason.clone();
    let report = if event.restored {
        None
    } else {
        draft(&ReportInput {
            ip: event.ip,
            category: &category,
            comment: &comment,
            seen: event.time.unwrap_or_else(Timestamp::now),
            evidence: &evidence,
            source: "fail2ban",
            jail: Some(&event.jail),
            failures: event.failures,
        })
    };
    NewDecision {
        target: ban_target(event.ip, Source::Fail2ban, 128),
        source: Source::Fail2ban,
        reason,
        category: Some(category),
        score: None,
        duration,
        evidence,
        report,
        enforce: event.mode == Mode::Block,
    }
}

static LOG_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:,\d+)? fail2ban\.actions\s*\[\d+\]:\s+NOTICE\s+\[([^\]]+)\]\s+(Restore Ban|Ban|Unban)\s+(\S+)",
    )
    .expect("valid built-in regex")
});

/// Reads one fail2ban.log line: a ban, a restored ban or an unban, with when (fail2ban
/// logs local time). Other lines are `None`.
pub fn parse_log_line(line: &str) -> Option<(Event, Timestamp)> {
    let c = LOG_LINE.captures(line)?;
    let ip: IpAddr = c[9].parse().ok()?;
    let n = |i: usize| c[i].parse::<i32>().ok();
    let at = local_time(n(1)?, n(2)?, n(3)?, n(4)?, n(5)?, n(6)?)?;
    let (kind, restored) = match &c[8] {
        "Unban" => (Kind::Unban, false),
        "Restore Ban" => (Kind::Ban, true),
        _ => (Kind::Ban, false),
    };
    let event = Event {
        kind,
        mode: Mode::Report,
        ip,
        jail: c[7].to_string(),
        category: None,
        failures: None,
        time: Some(at),
        bantime: None,
        restored,
        matches: Vec::new(),
        via: Via::Log,
    };
    Some((event, at))
}

/// A local wall-clock time as a timestamp (mktime with the host's time zone).
fn local_time(year: i32, month: i32, day: i32, hour: i32, min: i32, sec: i32) -> Option<Timestamp> {
    // SAFETY: `tm` is a plain C struct; zeroed is a valid value, and mktime only reads
    // and normalises it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = year - 1900;
    tm.tm_mon = month - 1;
    tm.tm_mday = day;
    tm.tm_hour = hour;
    tm.tm_min = min;
    tm.tm_sec = sec;
    tm.tm_isdst = -1;
    // SAFETY: a valid, exclusively borrowed `tm`.
    let t = unsafe { libc::mktime(&mut tm) };
    (t != -1).then_some(Timestamp(t * 1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn jails_map_to_categories() {
        let none: Vec<(String, String)> = Vec::new();
        for (jail, want) in [
            ("sshd", Some("ssh_bruteforce")),
            ("sshd-ddos", Some("ssh_bruteforce")),
            ("postfix-sasl", Some("mail_bruteforce")),
            ("dovecot", Some("mail_bruteforce")),
            ("courier-smtp-sasl", Some("mail_bruteforce")),
            ("nginx-http-auth", Some("web_bruteforce")),
            ("apache-auth", Some("web_bruteforce")),
            ("nginx-botsearch", Some("web_attack")),
            ("apache-noscript", Some("web_attack")),
            ("recidive", None),
            ("my-app", None),
        ] {
            assert_eq!(jail_category(jail, &none), want, "{jail}");
        }
        let mine = vec![("my-*".to_string(), "web_attack".to_string()), ("sshd".to_string(), "other".to_string())];
        assert_eq!(jail_category("my-app", &mine), Some("web_attack"));
        assert_eq!(jail_category("sshd", &mine), Some("other"), "the config wins");
    }

    #[test]
    fn fail2ban_log_lines_become_events() {
        let (e, _) =
            parse_log_line("2026-01-02 03:04:05,123 fail2ban.actions        [811]: NOTICE  [sshd] Ban 45.155.205.7")
                .unwrap();
        assert_eq!(
            (e.kind, e.restored, e.jail.as_str(), e.ip.to_string()),
            (Kind::Ban, false, "sshd", "45.155.205.7".into())
        );
        let (e, _) = parse_log_line(
            "2026-01-02 03:04:05,123 fail2ban.actions        [811]: NOTICE  [nginx-botsearch] Restore Ban 2a01:4f8::7",
        )
        .unwrap();
        assert!(e.restored && e.kind == Kind::Ban);
        let (e, _) =
            parse_log_line("2026-01-02 03:14:05,123 fail2ban.actions        [811]: NOTICE  [sshd] Unban 45.155.205.7")
                .unwrap();
        assert_eq!(e.kind, Kind::Unban);
        for other in [
            "2026-01-02 03:04:05,123 fail2ban.filter         [811]: INFO    [sshd] Found 45.155.205.7 - 2026-01-02 03:04:05",
            "2026-01-02 03:04:05,123 fail2ban.actions        [811]: NOTICE  [sshd] 45.155.205.7 already banned",
            "2026-01-02 03:04:05,123 fail2ban.actions        [811]: NOTICE  [sshd] Ban not-an-ip",
            "garbage",
        ] {
            assert!(parse_log_line(other).is_none(), "{other}");
        }
    }

    #[test]
    fn a_ban_told_by_the_action_and_the_log_is_heard_once() {
        let event = |kind, via, ip: &str| Event {
            kind,
            mode: Mode::Report,
            ip: ip.parse().unwrap(),
            jail: "sshd".into(),
            category: None,
            failures: None,
            time: None,
            bantime: None,
            restored: false,
            matches: Vec::new(),
            via,
        };
        let t0 = std::time::Instant::now();
        let mut echoes = Echoes::default();
        let mut hear = |e: &mut Event, at| echoes.hear(e, at);
        let (a, b, c) = ("192.0.2.1", "192.0.2.2", "192.0.2.3");
        // The log first (fail2ban logs before it acts), then the action: it confirms,
        // quietly in report mode.
        let first = hear(&mut event(Kind::Ban, Via::Log, b), t0);
        assert_eq!(first, Heard::First);
        let confirms = hear(&mut event(Kind::Ban, Via::Action, b), t0);
        assert_eq!(confirms, Heard::Confirms { logged: Mode::Report });
        assert!(!confirms.announces(Mode::Report) && confirms.announces(Mode::Block));
        // The action first, then the log's line: the line is an echo.
        assert_eq!(hear(&mut event(Kind::Ban, Via::Action, a), t0), Heard::First);
        assert_eq!(hear(&mut event(Kind::Ban, Via::Log, a), t0), Heard::Echo);
        assert_eq!(hear(&mut event(Kind::Ban, Via::Log, a), t0), Heard::Echo, "still the action's");
        // Another jail is another ban.
        let mut other = event(Kind::Ban, Via::Log, a);
        other.jail = "recidive".into();
        assert_eq!(hear(&mut other, t0), Heard::First);
        // An unban, then a new ban of the same address: a new ban, not an echo.
        assert_eq!(hear(&mut event(Kind::Unban, Via::Action, a), t0), Heard::First);
        assert_eq!(hear(&mut event(Kind::Unban, Via::Log, a), t0), Heard::Echo);
        assert_eq!(hear(&mut event(Kind::Ban, Via::Log, a), t0), Heard::First);
        // A block-mode action teaches the jail's mode: its next log line blocks at once,
        // and the action after it has nothing new to say.
        let mut block = event(Kind::Ban, Via::Action, a);
        block.mode = Mode::Block;
        block.kind = Kind::Unban;
        block.bantime = Some(7200);
        hear(&mut block, t0);
        let mut line = event(Kind::Ban, Via::Log, c);
        assert_eq!(hear(&mut line, t0), Heard::First);
        assert_eq!((line.mode, line.bantime), (Mode::Block, None), "the jail's mode; an unban tells no bantime");
        hear(&mut event(Kind::Unban, Via::Log, c), t0);
        block.kind = Kind::Ban;
        block.ip = "192.0.2.4".parse().unwrap();
        hear(&mut block, t0);
        let mut line = event(Kind::Ban, Via::Log, c);
        assert_eq!(hear(&mut line, t0), Heard::First);
        assert_eq!((line.mode, line.bantime), (Mode::Block, Some(7200)), "the jail's mode and bantime");
        block.kind = Kind::Ban;
        block.ip = c.parse().unwrap();
        let confirms = hear(&mut block, t0);
        assert_eq!(confirms, Heard::Confirms { logged: Mode::Block });
        assert!(!confirms.announces(Mode::Block));
        // Past the window, the same event is new again.
        let later = t0 + ECHO_WINDOW;
        assert_eq!(hear(&mut event(Kind::Ban, Via::Action, b), later), Heard::First);
        assert_eq!(echoes.heard.len(), 1, "old events are forgotten");
        let next_day = t0 + JAIL_MODE_KEPT + ECHO_WINDOW;
        let mut line = event(Kind::Ban, Via::Log, c);
        line.jail = "recidive".into();
        echoes.hear(&mut line, next_day);
        assert!(echoes.jails.is_empty(), "a jail's mode is forgotten after a day");

        // A flood of made-up events and jails stays within bounds.
        let mut flood = Echoes::default();
        for n in 0..(MAX_HEARD as u32 + 10) {
            let mut e = event(Kind::Ban, Via::Action, "192.0.2.9");
            e.ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            e.jail = format!("jail{}", n % (MAX_JAILS as u32 * 2));
            flood.hear(&mut e, t0);
        }
        assert_eq!((flood.heard.len(), flood.jails.len()), (MAX_HEARD, MAX_JAILS));
    }

    #[test]
    fn a_ban_event_makes_a_decision_and_a_report_unless_restored() {
        let config = Config::default();
        let mut event = Event {
            kind: Kind::Ban,
            mode: Mode::Report,
            ip: "45.155.205.7".parse().unwrap(),
            jail: "sshd".into(),
            category: Some(String::new()),
            failures: Some(5),
            time: Some(Timestamp(1_767_323_045_000)),
            bantime: Some(600),
            restored: false,
            matches: vec!["a".into(), "b".into()],
            via: Via::Action,
        };
        let d = plan_ban(&event, &config.fail2ban, None, |i| {
            assert_eq!((i.category, i.source, i.jail), ("ssh_bruteforce", "fail2ban", Some("sshd")));
            Some(crate::decision::ReportDraft {
                ip: i.ip,
                category: i.category.into(),
                payload: String::new(),
                cooldown: Duration::ZERO,
            })
        });
        assert_eq!(d.source, Source::Fail2ban);
        assert_eq!(d.duration, Some(Duration::from_secs(600)));
        assert!(!d.enforce, "report mode: fail2ban's banaction blocks");
        assert!(d.report.is_some());
        assert_eq!(d.reason, "fail2ban jail sshd: 5 failures (fail2ban blocks it)");

        event.restored = true;
        event.mode = Mode::Block;
        event.bantime = Some(-1);
        event.jail = "recidive".into();
        let d = plan_ban(&event, &config.fail2ban, Some("web_attack".into()), |_| {
            panic!("a restored ban is never reported")
        });
        assert!(d.enforce && d.report.is_none() && d.duration.is_none());
        assert_eq!(d.category.as_deref(), Some("web_attack"), "recidive takes the original jail's category");
    }
}
