//! Configuration: the TOML file, its defaults, and its validation.
//!
//! `raw::RawConfig` mirrors the file (`deny_unknown_fields`, every key optional).
//! `Config::from_raw` converts it once into a validated [`Config`] (parsed CIDRs,
//! `Duration`s, enums); nothing else in the crate sees raw strings. Every error names the
//! file, the key (`allowlist[2]`, `decisions.ipv6_prefix`) and what was expected.
//! `banshare config check` runs exactly [`load`], as `banshare run` and SIGHUP do.

mod check;
mod fail2ban;
mod feed;
mod raw;

pub use crate::check::ProviderConfig;
pub use check::{CheckConfig, Listen};
pub use fail2ban::Fail2banConfig;

pub mod jails;
pub use feed::FeedConfig;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use std::collections::BTreeMap;

use crate::clock::parse_duration;
use crate::decision::parse_target;
use crate::detect::f2b::FilterRef;
use crate::detect::filter::Fail2banDefinition;
use crate::detect::{Escalation, Filter, FilterSpec, builtin};
pub use crate::enforce::Backend;
use crate::enforce::{FirewallOptions, RuleAction};
use raw::{RawConfig, RawDuration};

/// Where the config lives unless `--config` or `BANSHARE_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/banshare/banshare.toml";

/// The longest path a Unix socket address can hold (`sun_path` minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was loaded from; `None` for the built-in defaults.
    pub source_path: Option<PathBuf>,
    /// Holds `state.db` and the daemon's lock file.
    pub state_dir: PathBuf,
    /// The control socket the CLI talks to.
    pub socket: PathBuf,
    /// Group given access to the socket (mode 0660); ignored if the group does not exist.
    pub socket_group: String,
    /// Networks never blocked, whatever the source (on top of the built-in protections).
    pub allowlist: Vec<IpNet>,
    pub firewall: FirewallConfig,
    pub decisions: DecisionConfig,
    /// Every filter by name, compiled once here: the built-ins (with `[filter.NAME]`
    /// overrides) and the config's own. Each stream that runs one keeps its own state
    /// ([`crate::detect::FilterSet`]).
    pub filters: BTreeMap<String, Filter>,
    /// `[detect]`: how repeat offenders' bans grow.
    pub escalation: Escalation,
    /// `[[source]]` entries; empty means the built-in defaults ([`default_sources`]).
    pub sources: Vec<SourceConfig>,
    /// `[feed]`: the WAYSCloud community feed.
    pub feed: FeedConfig,
    /// `[fail2ban]`: jail categories, the log follower.
    pub fail2ban: Fail2banConfig,
    /// `[check]`: the local check service.
    pub check: CheckConfig,
}

/// A log to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// Names of filters in [`Config::filters`].
    pub filters: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// A path or glob.
    File(String),
    /// journald matches such as `_SYSTEMD_UNIT=ssh.service`, optionally in a journal file.
    Journal(crate::tail::journal::JournalSpec),
}

/// The sources used when the config names none: auth.log with sshd when it exists (a
/// fresh Debian 12 has no auth.log: rsyslog is not installed by default, sshd logs to the
/// journal), and nginx's logs when present.
pub fn default_sources() -> Vec<SourceConfig> {
    let file = |path: &str, filters: &[&str]| SourceConfig {
        kind: SourceKind::File(path.into()),
        filters: filters.iter().map(|f| f.to_string()).collect(),
    };
    let mut out = Vec::new();
    if Path::new("/var/log/auth.log").exists() {
        out.push(file("/var/log/auth.log", &["sshd"]));
    } else {
        // Matches on one field are alternatives: either unit name Debian or others use.
        let matches = "_SYSTEMD_UNIT=ssh.service _SYSTEMD_UNIT=sshd.service".to_string();
        out.push(SourceConfig {
            kind: SourceKind::Journal(crate::tail::journal::JournalSpec { matches, file: None }),
            filters: vec!["sshd".into()],
        });
    }
    if Path::new("/var/log/nginx/access.log").exists() {
        out.push(file("/var/log/nginx/access.log", &["nginx-botsearch"]));
    }
    if Path::new("/var/log/nginx/error.log").exists() {
        out.push(file("/var/log/nginx/error.log", &["nginx-http-auth", "nginx-limit-req"]));
    }
    // fail2ban's bans, without touching its jails (reported; fail2ban blocks them).
    if Path::new(crate::fail2ban::DEFAULT_LOG).exists() {
        out.push(file(crate::fail2ban::DEFAULT_LOG, &[crate::fail2ban::LOG_FILTER]));
    }
    out
}

/// `[firewall]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConfig {
    pub backend: Backend,
    /// `forward` (also block forwarded traffic) and `action` (drop or reject).
    pub options: FirewallOptions,
}

/// `[decisions]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionConfig {
    /// Length of a `banshare ban` without `--for`; `None` is permanent.
    pub manual_bantime: Option<Duration>,
    /// Prefix an IPv6 address from local detection is widened to.
    pub ipv6_prefix: u8,
    /// How long expired and lifted decisions stay in the store (for `query` history).
    pub retention: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source_path: None,
            state_dir: PathBuf::from("/var/lib/banshare"),
            socket: PathBuf::from("/run/banshare/control.sock"),
            socket_group: "banshare".into(),
            allowlist: Vec::new(),
            firewall: FirewallConfig {
                backend: Backend::Auto,
                options: FirewallOptions { forward: true, action: RuleAction::Drop },
            },
            decisions: DecisionConfig {
                manual_bantime: Some(Duration::from_secs(24 * 3600)),
                ipv6_prefix: 64,
                retention: Duration::from_secs(30 * 24 * 3600),
            },
            filters: builtin::compiled().clone(),
            escalation: Escalation::default(),
            sources: Vec::new(),
            feed: FeedConfig::default(),
            fail2ban: Fail2banConfig::default(),
            check: CheckConfig::default(),
        }
    }
}

/// A config that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a wrong type.
    #[error("{path}: {location}{message}")]
    Parse { path: PathBuf, location: Location, message: String },
    /// A value of the right type that does not make sense.
    #[error("{path}: key `{key}`: expected {expected}, got {got}")]
    Invalid { path: PathBuf, key: String, expected: String, got: String },
}

/// Line, column and key of a parse error, each when known.
#[derive(Debug, Default)]
pub struct Location {
    pub line_col: Option<(usize, usize)>,
    pub key: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, col)) = self.line_col {
            write!(f, "line {line}, column {col}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        Ok(())
    }
}

/// Loads the config the way every command does: `explicit` (from `--config` or
/// `BANSHARE_CONFIG`) must exist; otherwise [`DEFAULT_PATH`] is read if present, and a
/// host without it runs on the built-in defaults.
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
        None => return Ok(Config::default()),
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
    Config::from_toml(&text, &path)
}

/// What a process that must not lose an event (the fail2ban hook) can still take from a
/// config that does not load: the built-in defaults with the file's own `state_dir` and
/// `socket` when those two keys still read as absolute paths (`None` when the file is
/// not even TOML, or names neither).
pub fn salvage(explicit: Option<&Path>) -> Config {
    let mut config = Config::default();
    let path = explicit.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
    let Ok(text) = std::fs::read_to_string(&path) else { return config };
    let Ok(table) = text.parse::<toml::Table>() else { return config };
    let absolute = |key: &str| table.get(key).and_then(|v| v.as_str()).map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(dir) = absolute("state_dir") {
        config.state_dir = dir;
    }
    if let Some(socket) = absolute("socket") {
        config.socket = socket;
    }
    config
}

impl Config {
    /// What is valid but probably not meant: a check service that answers beyond this host.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(crate::config::Listen::Tcp(addr)) = &self.check.listen
            && !addr.ip().is_loopback()
        {
            out.push(format!(
                "check.listen = \"{addr}\" answers beyond this host: anyone who reaches it learns what is blocked and spends your provider quota; listen on 127.0.0.1 or a Unix socket behind your proxy"
            ));
        }
        out
    }

    /// Parses and validates `text` as the contents of `path`.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw = raw::parse(text).map_err(|(location, message)| ConfigError::Parse {
            path: path.to_path_buf(),
            location,
            message,
        })?;
        Config::from_raw(raw, path)
    }

    /// The one conversion from the file's mirror to the validated config.
    fn from_raw(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: &str, expected: &str, got: &dyn fmt::Display| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            expected: expected.to_string(),
            got: got.to_string(),
        };
        let defaults = Config::default();

        let state_dir = absolute_path(raw.state_dir, defaults.state_dir)
            .map_err(|got| invalid("state_dir", "an absolute path", &got))?;
        let socket =
            absolute_path(raw.socket, defaults.socket).map_err(|got| invalid("socket", "an absolute path", &got))?;
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            let expected = format!("a path of at most {MAX_SOCKET_PATH} bytes (a Unix socket limit)");
            return Err(invalid("socket", &expected, &format!("{} bytes", socket.as_os_str().len())));
        }

        let mut allowlist = Vec::new();
        for (i, entry) in raw.allowlist.unwrap_or_default().iter().enumerate() {
            let net = parse_target(entry).map_err(|_| {
                invalid(&format!("allowlist[{i}]"), "an IP address or CIDR like 192.0.2.0/24", &format!("{entry:?}"))
            })?;
            allowlist.push(net);
        }

        let raw_fw = raw.firewall.unwrap_or_default();
        let backend = match raw_fw.backend {
            None => defaults.firewall.backend,
            Some(text) => Backend::parse(&text).ok_or_else(|| {
                invalid(
                    "firewall.backend",
                    "one of \"auto\", \"nftables\", \"ipset\", \"dry-run\"",
                    &format!("{text:?}"),
                )
            })?,
        };

        let action = match raw_fw.action.as_deref() {
            None => defaults.firewall.options.action,
            Some("drop") => RuleAction::Drop,
            Some("reject") => RuleAction::Reject,
            Some(other) => return Err(invalid("firewall.action", "\"drop\" or \"reject\"", &format!("{other:?}"))),
        };
        let options = FirewallOptions { forward: raw_fw.forward.unwrap_or(defaults.firewall.options.forward), action };

        let raw_dec = raw.decisions.unwrap_or_default();
        let manual_bantime = match raw_dec.manual_bantime {
            None => defaults.decisions.manual_bantime,
            Some(d) => bantime(&d)
                .map_err(|got| invalid("decisions.manual_bantime", "a duration like \"24h\" or \"permanent\"", &got))?,
        };
        let ipv6_prefix = match raw_dec.ipv6_prefix {
            None => defaults.decisions.ipv6_prefix,
            Some(p) if (1..=128).contains(&p) => p as u8,
            Some(p) => {
                return Err(invalid("decisions.ipv6_prefix", "a prefix length from 1 to 128", &p));
            }
        };
        let retention = match raw_dec.retention {
            None => defaults.decisions.retention,
            Some(d) => duration(&d).map_err(|got| invalid("decisions.retention", "a duration like \"30d\"", &got))?,
        };

        let raw_detect = raw.detect.unwrap_or_default();
        let escalation = Escalation {
            factor: match raw_detect.bantime_factor {
                None => defaults.escalation.factor,
                Some(f) if (1.0..=100.0).contains(&f) => f,
                Some(f) => return Err(invalid("detect.bantime_factor", "a number from 1 to 100", &f)),
            },
            max: match raw_detect.bantime_max {
                None => defaults.escalation.max,
                Some(d) => duration(&d).map_err(|got| invalid("detect.bantime_max", "a duration like \"1w\"", &got))?,
            },
        };
        let fail2ban = fail2ban::fail2ban_config(raw.fail2ban, &invalid)?;
        let mut filters = defaults.filters;
        for (name, raw_filter) in raw.filter.unwrap_or_default() {
            let filter = filter(&name, raw_filter, filters.remove(&name), &fail2ban, &invalid)?;
            filters.insert(name, filter);
        }
        let mut sources = Vec::new();
        for (i, src) in raw.source.unwrap_or_default().into_iter().enumerate() {
            let kind = match (src.path, src.journal, src.journal_file) {
                (Some(_), _, Some(_)) => {
                    return Err(invalid(
                        &format!("source[{i}].journal_file"),
                        "`journal_file` only with `journal`",
                        &"`path`",
                    ));
                }
                (Some(p), None, None) if Path::new(&p).is_absolute() => SourceKind::File(p),
                (Some(p), None, None) => {
                    return Err(invalid(&format!("source[{i}].path"), "an absolute path or glob", &format!("{p:?}")));
                }
                (None, Some(m), file) => {
                    if m.split_whitespace().any(|t| t != "+" && !t.contains('=')) {
                        let expected = "journalctl matches like \"_SYSTEMD_UNIT=ssh.service\"";
                        return Err(invalid(&format!("source[{i}].journal"), expected, &format!("{m:?}")));
                    }
                    let file = match file {
                        Some(f) if Path::new(&f).is_absolute() => Some(PathBuf::from(f)),
                        Some(f) => {
                            return Err(invalid(
                                &format!("source[{i}].journal_file"),
                                "an absolute path",
                                &format!("{f:?}"),
                            ));
                        }
                        None => None,
                    };
                    SourceKind::Journal(crate::tail::journal::JournalSpec { matches: m, file })
                }
                _ => {
                    return Err(invalid(
                        &format!("source[{i}]"),
                        "exactly one of `path` or `journal`",
                        &"both or neither",
                    ));
                }
            };
            let names = src.filters.unwrap_or_default();
            if names.is_empty() {
                return Err(invalid(&format!("source[{i}].filters"), "at least one filter name", &"none"));
            }
            for (j, name) in names.iter().enumerate() {
                if name != crate::fail2ban::LOG_FILTER && !filters.contains_key(name) {
                    let known = filters
                        .keys()
                        .map(String::as_str)
                        .chain([crate::fail2ban::LOG_FILTER])
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(invalid(
                        &format!("source[{i}].filters[{j}]"),
                        &format!("one of {known}"),
                        &format!("{name:?}"),
                    ));
                }
            }
            sources.push(SourceConfig { kind, filters: names });
        }

        let feed = feed::feed_config(raw.feed, &invalid)?;
        let check = check::check_config(raw.check, &feed.base_url, &invalid)?;

        Ok(Config {
            source_path: Some(path.to_path_buf()),
            state_dir,
            socket,
            socket_group: raw.socket_group.unwrap_or(defaults.socket_group),
            allowlist,
            firewall: FirewallConfig { backend, options },
            decisions: DecisionConfig { manual_bantime, ipv6_prefix, retention },
            filters,
            escalation,
            sources,
            feed,
            fail2ban,
            check,
        })
    }

    /// The SQLite database inside the state directory.
    pub fn state_db(&self) -> PathBuf {
        self.state_dir.join("state.db")
    }

    /// Where the config came from, for messages.
    pub fn origin(&self) -> String {
        match &self.source_path {
            Some(p) => p.display().to_string(),
            None => format!("built-in defaults ({DEFAULT_PATH} not present)"),
        }
    }
}

/// Builds a filter from `[filter.NAME]`: overrides on `base` (a built-in), or a new
/// filter when `base` is `None`, and compiles it (a built-in whose patterns are left
/// alone keeps its compiled engine).
fn filter(
    name: &str,
    raw: raw::RawFilter,
    base_filter: Option<Filter>,
    f2b: &Fail2banConfig,
    invalid: &dyn Fn(&str, &str, &dyn fmt::Display) -> ConfigError,
) -> Result<Filter, ConfigError> {
    let base = base_filter.as_ref().map(|f| f.spec.clone());
    let key = |k: &str| format!("filter.{name}.{k}");
    let definition = match &raw.fail2ban {
        None => None,
        Some(text) => {
            for (k, set) in [
                ("mode", raw.mode.is_some()),
                ("failregex", raw.failregex.is_some()),
                ("ignoreregex", raw.ignoreregex.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        &key(k),
                        "nothing beside `fail2ban` (give fail2ban's options in brackets: \"sshd[mode=aggressive]\")",
                        &"a value",
                    ));
                }
            }
            let filter: FilterRef = text.parse().map_err(|m: String| {
                invalid(&key("fail2ban"), "a fail2ban filter like \"sshd[mode=aggressive]\"", &m)
            })?;
            Some(Fail2banDefinition::on_disk(&f2b.dir, filter))
        }
    };
    let base = match (base, raw.mode.as_deref(), builtin::get(name)) {
        (Some(_), Some(mode), Some(b)) => {
            Some(b.with_mode(Some(mode)).map_err(|expected| invalid(&key("mode"), &expected, &format!("{mode:?}")))?)
        }
        (_, Some(mode), None) => {
            return Err(invalid(&key("mode"), "no mode (only built-in filters have one)", &format!("{mode:?}")));
        }
        (base, _, _) => base,
    };
    let mut spec = match (base, &raw.failregex) {
        (Some(b), _) => b,
        (None, _) if definition.is_some() => {
            FilterSpec::new(name, crate::fail2ban::jail_category(name, &f2b.categories).unwrap_or("other"))
        }
        (None, None) => {
            return Err(invalid(
                &key("failregex"),
                "a list of regexes with <HOST> (this is not a built-in filter)",
                &"nothing",
            ));
        }
        (None, Some(_)) => FilterSpec::new(name, "other"),
    };
    if definition.is_some() {
        // fail2ban's definition replaces the patterns (a built-in's too).
        spec.failregex.clear();
        spec.ignoreregex.clear();
        spec.fail2ban = definition;
    }
    if let Some(f) = raw.failregex {
        spec.failregex = f;
    }
    if let Some(i) = raw.ignoreregex {
        spec.ignoreregex = i;
    }
    if let Some(c) = raw.category {
        let valid = !c.is_empty()
            && c.len() <= 64
            && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(invalid(
                &key("category"),
                "a category like \"ssh_bruteforce\" (a-z, 0-9, _)",
                &format!("{c:?}"),
            ));
        }
        spec.category = c;
    }
    if let Some(m) = raw.maxretry {
        spec.maxretry = u32::try_from(m)
            .ok()
            .filter(|m| *m >= 1)
            .ok_or_else(|| invalid(&key("maxretry"), "a count of at least 1", &m))?;
    }
    if let Some(d) = raw.findtime {
        spec.findtime = duration(&d).map_err(|got| invalid(&key("findtime"), "a duration like \"10m\"", &got))?;
    }
    if let Some(d) = raw.bantime {
        spec.bantime = duration(&d).map_err(|got| invalid(&key("bantime"), "a duration like \"1h\"", &got))?;
    }
    let same_engine = base_filter.filter(|b| {
        (&b.spec.failregex, &b.spec.ignoreregex, &b.spec.fail2ban)
            == (&spec.failregex, &spec.ignoreregex, &spec.fail2ban)
    });
    if let Some(b) = same_engine {
        return Ok(b.with_window(&spec.category, spec.maxretry, spec.findtime, spec.bantime));
    }
    Filter::compile(spec).map_err(|e| match e.key {
        "fail2ban" => invalid(&key("fail2ban"), "a fail2ban filter definition banshare can run", &e.message),
        k => invalid(&format!("filter.{name}.{k}[{}]", e.index), "a regex with <HOST>", &e.message),
    })
}

fn absolute_path(raw: Option<String>, default: PathBuf) -> Result<PathBuf, String> {
    match raw {
        None => Ok(default),
        Some(text) if Path::new(&text).is_absolute() => Ok(PathBuf::from(text)),
        Some(text) => Err(format!("{text:?}")),
    }
}

/// Any duration of the config: at most [`MAX_BAN`] (100 years), so that every expiry it
/// makes can be stored, shown and given to the kernel.
fn duration(raw: &RawDuration) -> Result<Duration, String> {
    let (d, shown) = match raw {
        RawDuration::Seconds(s) => (Duration::from_secs(*s), s.to_string()),
        RawDuration::Text(t) => (parse_duration(t).map_err(|_| format!("{t:?}"))?, format!("{t:?}")),
    };
    crate::decision::check_ban_length(d).map_err(|why| format!("{shown} ({why})"))?;
    Ok(d)
}

/// A ban length: a duration, or `"permanent"` for `None`.
fn bantime(raw: &RawDuration) -> Result<Option<Duration>, String> {
    match raw {
        RawDuration::Text(t) if t == "permanent" => Ok(None),
        other => duration(other).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml(text, Path::new("/etc/banshare/banshare.toml")).map_err(|e| e.to_string())
    }

    /// The error of loading `text` as `/etc/banshare/banshare.toml` (the sections' tests share it).
    pub(super) fn err(text: &str) -> String {
        parse(text).unwrap_err()
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(Config { source_path: None, ..c }, Config::default());
    }

    #[test]
    fn values_are_converted() {
        let c = parse(
            r#"
            state_dir = "/srv/banshare"
            allowlist = ["192.0.2.0/24", "2001:db8::1"]
            [firewall]
            backend = "dry-run"
            [decisions]
            manual_bantime = "permanent"
            ipv6_prefix = 56
            retention = 86400
            "#,
        )
        .unwrap();
        assert_eq!(c.state_db(), PathBuf::from("/srv/banshare/state.db"));
        assert_eq!(c.allowlist.len(), 2);
        assert_eq!(c.allowlist[1].to_string(), "2001:db8::1/128");
        assert_eq!(c.firewall.backend, Backend::DryRun);
        assert_eq!(c.decisions.manual_bantime, None);
        assert_eq!(c.decisions.ipv6_prefix, 56);
        assert_eq!(c.decisions.retention, Duration::from_secs(86400));
    }

    #[test]
    fn errors_name_file_key_and_expectation() {
        let e = parse("allowlist = [\"192.0.2.0/24\", \"10.0.0.0/8\", \"bogus\"]").unwrap_err();
        assert_eq!(
            e,
            "/etc/banshare/banshare.toml: key `allowlist[2]`: expected an IP address or CIDR like 192.0.2.0/24, got \"bogus\""
        );
        let e = parse("[decisions]\nipv6_prefix = \"wide\"").unwrap_err();
        assert!(e.starts_with("/etc/banshare/banshare.toml: line 2, column 15: key `decisions.ipv6_prefix`: invalid type: string \"wide\", expected"), "{e}");
        let e = parse("[firewall]\nbackend = \"pf\"").unwrap_err();
        assert!(e.contains("key `firewall.backend`: expected one of \"auto\""), "{e}");
        let e = parse("[firewall]\naction = \"tarpit\"").unwrap_err();
        assert!(e.contains("key `firewall.action`: expected \"drop\" or \"reject\", got \"tarpit\""), "{e}");
        let e = parse("[decisions]\nretention = \"a while\"").unwrap_err();
        assert!(e.contains("key `decisions.retention`: expected a duration like \"30d\", got \"a while\""), "{e}");
        let e = parse("state_dir = \"relative/dir\"").unwrap_err();
        assert!(e.contains("key `state_dir`: expected an absolute path"), "{e}");
        let long = format!("socket = \"/{}\"", "s".repeat(120));
        assert!(parse(&long).unwrap_err().contains("at most 107 bytes"));
    }

    #[test]
    fn filters_are_overridden_or_defined_and_checked() {
        let c = parse(
            r#"
            [detect]
            bantime_factor = 3
            bantime_max = "2d"
            [filter.sshd]
            mode = "aggressive"
            maxretry = 3
            [filter.myapp]
            failregex = ['myapp: login failed from <HOST>']
            category = "web_bruteforce"
            "#,
        )
        .unwrap();
        let sshd = &c.filters["sshd"].spec;
        assert_eq!(sshd.maxretry, 3);
        let options = &sshd.fail2ban.as_ref().expect("a built-in runs its definition").filter.options;
        assert_eq!(options, &[("mode".to_string(), "aggressive".to_string())]);
        assert_eq!(c.filters["myapp"].spec.category, "web_bruteforce");
        assert_eq!(c.filters["nginx-botsearch"].spec.maxretry, 2, "untouched built-ins keep their defaults");
        assert_eq!(c.escalation.factor, 3.0);

        let e = parse("[filter.myapp]\nmaxretry = 3").unwrap_err();
        assert!(
            e.contains(
                "key `filter.myapp.failregex`: expected a list of regexes with <HOST> (this is not a built-in filter)"
            ),
            "{e}"
        );
        let e = parse("[filter.myapp]\nfailregex = ['no host here']").unwrap_err();
        assert!(e.contains("key `filter.myapp.failregex[0]`: expected a regex with <HOST>, got has no <HOST>"), "{e}");
        let e = parse("[filter.myapp]\nfailregex = ['(unclosed <HOST>']").unwrap_err();
        assert!(
            e.contains("key `filter.myapp.failregex[0]`: expected a regex with <HOST>, got regex parse error"),
            "{e}"
        );
        let e = parse("[filter.sshd]\nmaxretry = 0").unwrap_err();
        assert!(e.contains("key `filter.sshd.maxretry`: expected a count of at least 1, got 0"), "{e}");
        let e = parse("[filter.nginx-limit-req]\nmode = \"aggressive\"").unwrap_err();
        assert!(
            e.contains("key `filter.nginx-limit-req.mode`: expected no mode (the built-in nginx-limit-req has none)"),
            "{e}"
        );
        let e = parse("[filter.sshd]\nmode = \"agressive\"").unwrap_err();
        assert!(
            e.contains(
                r#"key `filter.sshd.mode`: expected one of "normal", "ddos", "extra", "aggressive", got "agressive""#
            ),
            "{e}"
        );
        let e = parse("[filter.myapp]\nmode = \"aggressive\"\nfailregex = ['x <HOST>']").unwrap_err();
        assert!(e.contains("key `filter.myapp.mode`: expected no mode (only built-in filters have one)"), "{e}");
        let e = parse("[filter.sshd]\ncategory = \"SSH!\"").unwrap_err();
        assert!(e.contains("key `filter.sshd.category`"), "{e}");
        let e = parse("[filter.sshd]\nmaxretries = 3").unwrap_err();
        assert!(e.contains("key `filter.sshd.maxretries`: unknown field"), "{e}");
    }

    #[test]
    fn sources_are_checked() {
        let c = parse("[[source]]\njournal = \"_SYSTEMD_UNIT=ssh.service\"\nfilters = [\"sshd\"]\n[[source]]\npath = \"/var/log/nginx/*.log\"\nfilters = [\"nginx-botsearch\"]").unwrap();
        assert_eq!(c.sources.len(), 2);
        assert_eq!(c.sources[1].kind, SourceKind::File("/var/log/nginx/*.log".into()));
        let e = parse("[[source]]\npath = \"/var/log/auth.log\"\nfilters = [\"sshd\", \"sshdd\"]").unwrap_err();
        assert!(e.contains("key `source[0].filters[1]`: expected one of apache-auth, apache-badbots,"), "{e}");
        let e = parse("[[source]]\nfilters = [\"sshd\"]").unwrap_err();
        assert!(e.contains("key `source[0]`: expected exactly one of `path` or `journal`"), "{e}");
        let e = parse("[[source]]\npath = \"auth.log\"\nfilters = [\"sshd\"]").unwrap_err();
        assert!(e.contains("key `source[0].path`: expected an absolute path or glob"), "{e}");
        let e = parse("[[source]]\njournal = \"ssh\"\nfilters = [\"sshd\"]").unwrap_err();
        assert!(e.contains("key `source[0].journal`: expected journalctl matches"), "{e}");
        let e = parse("[[source]]\npath = \"/x\"\njournal_file = \"/j\"\nfilters = [\"sshd\"]").unwrap_err();
        assert!(e.contains("key `source[0].journal_file`"), "{e}");
        let e = parse("[[source]]\npath = \"/var/log/auth.log\"").unwrap_err();
        assert!(e.contains("key `source[0].filters`: expected at least one filter name"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = parse("[firewall]\nbackend = \"auto\"\nbackned = \"x\"").unwrap_err();
        assert!(e.starts_with("/etc/banshare/banshare.toml: line 3, column 1: key `firewall.backned`: unknown field `backned`, expected one of `backend`, `forward`, `action`"), "{e}");
        let e = parse("statedir = \"/x\"").unwrap_err();
        assert!(e.contains("unknown field `statedir`"), "{e}");
    }

    #[test]
    fn malformed_toml_names_the_line() {
        let e = parse("state_dir = \"/var/lib/x\"\nallowlist = [\"1.2.3.4\"\n").unwrap_err();
        assert!(e.starts_with("/etc/banshare/banshare.toml: line 2"), "{e}");
    }

    #[test]
    fn the_packaged_default_config_is_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/banshare.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let c = Config::from_toml(&text, &path).unwrap();
        assert_eq!(Config { source_path: None, ..c }, Config::default());
        // The file documents the defaults in commented-out lines; uncommenting every
        // `# key = value` line must still give the defaults.
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") || rest.starts_with('[') => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::from_toml(&uncommented, &path).unwrap();
        assert_eq!(Config { source_path: None, ..c }, Config::default());
    }
}
