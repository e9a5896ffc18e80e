//! `banshare fail2ban jails`: the jails a fail2ban host runs, as banshare config.
//!
//! The jail files are read as fail2ban reads them (`jail.conf`, `jail.d/*.conf`,
//! `jail.local`, `jail.d/*.local`, each with its includes, `%(name)s` resolved in the
//! jail's section with `[DEFAULT]` behind it). Each enabled jail becomes a filter that
//! runs the jail's fail2ban definition with its options (`fail2ban = "sshd[mode=...]"`),
//! with the jail's `maxretry`, `findtime` and `bantime`, and a `[[source]]` per log path
//! (or one journal source with the definition's `journalmatch` for `backend = systemd`).
//! `[DEFAULT]`'s `ignoreip` becomes the allowlist, `bantime.increment` banshare's
//! escalation. Every setting that does not carry over is a comment in the output.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::detect::f2b::conf::Conf;
use crate::detect::f2b::{Definition, DefinitionError, FilterRef};

/// The files fail2ban reads for its jails, in its order.
fn jail_files(dir: &Path) -> Vec<PathBuf> {
    let sorted = |ext: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("jail.d"))
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == ext)).collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let mut files = vec![dir.join("jail.conf")];
    files.extend(sorted("conf"));
    files.push(dir.join("jail.local"));
    files.extend(sorted("local"));
    files
}

/// One enabled jail, as banshare runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    pub name: String,
    pub filter: FilterRef,
    pub sources: Vec<JailSource>,
    pub maxretry: Option<u32>,
    pub findtime: Option<String>,
    pub bantime: Option<String>,
    /// Settings that do not carry over, each as a sentence.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JailSource {
    Path(String),
    Journal(String),
}

/// The converted configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Converted {
    pub files: Vec<PathBuf>,
    pub allowlist: Vec<String>,
    pub escalation: Option<(String, Option<String>)>,
    pub jails: Vec<Jail>,
    pub notes: Vec<String>,
}

/// A fail2ban duration (`600`, `10m`, `1h 30m`, `-1`) as banshare's, or why not.
fn duration(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err(format!("`{t}` (permanent): banshare's detection bans need a length"));
    }
    let value = if t.chars().all(|c| c.is_ascii_digit()) { format!("{t}s") } else { t.to_string() };
    match crate::clock::parse_duration(&value) {
        Ok(_) => Ok(value),
        Err(_) => Err(format!("`{t}` is not a duration banshare reads")),
    }
}

fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "yes" | "1" | "on" | "enabled")
}

/// Reads the jails under `dir` (fail2ban's directory).
pub fn convert(dir: &Path) -> Result<Converted, DefinitionError> {
    let files: Vec<PathBuf> = jail_files(dir).into_iter().filter(|f| f.is_file()).collect();
    if files.is_empty() {
        return Err(DefinitionError::new(&dir.join("jail.conf"), "no such file (nor jail.local, jail.d/)".into()));
    }
    let conf = Conf::read_files(&files)?;
    let mut out = Converted { files: conf.files.clone(), ..Converted::default() };
    let none = std::collections::HashMap::new();
    let get = |section: &str, key: &str| conf.get(section, key, &none);
    // The global ignoreip is the allowlist; per-jail ones cannot carry over.
    let global_ignore = get("DEFAULT", "ignoreip").ok().flatten().unwrap_or_default();
    for entry in global_ignore.split([' ', ',', '\n']).filter(|e| !e.is_empty()) {
        if entry.parse::<ipnet::IpNet>().is_ok() || entry.parse::<std::net::IpAddr>().is_ok() {
            out.allowlist.push(entry.to_string());
        } else {
            out.notes.push(format!("ignoreip `{entry}`: not an address or network (banshare never resolves names)"));
        }
    }
    let increment = get("DEFAULT", "bantime.increment").ok().flatten().is_some_and(|v| truthy(&v));
    if increment {
        let max = get("DEFAULT", "bantime.maxtime").ok().flatten().and_then(|m| duration(&m).ok());
        // fail2ban's default formula doubles each ban (bantime.factor 1); banshare's factor 2.
        let factor =
            get("DEFAULT", "bantime.factor").ok().flatten().and_then(|f| f.trim().parse::<f64>().ok()).unwrap_or(1.0);
        out.escalation = Some((format!("{}", 2.0 * factor), max));
        if get("DEFAULT", "bantime.multipliers").ok().flatten().is_some_and(|m| !m.trim().is_empty()) {
            out.notes.push("bantime.multipliers: not carried over (banshare multiplies by a factor)".into());
        }
    }
    let names: Vec<String> = conf.sections().filter(|s| *s != "DEFAULT").map(str::to_string).collect();
    for name in names {
        let enabled = get(&name, "enabled")?.is_some_and(|v| truthy(&v));
        if !enabled {
            continue;
        }
        out.jails.push(jail(dir, &conf, &name, &global_ignore)?);
    }
    Ok(out)
}

fn jail(dir: &Path, conf: &Conf, name: &str, global_ignore: &str) -> Result<Jail, DefinitionError> {
    let none = std::collections::HashMap::new();
    let get = |key: &str| conf.get(name, key, &none);
    let at = conf.raw(name, "enabled").map(|v| (v.file.clone(), v.line)).unwrap_or_default();
    let filter_text = get("filter")?.unwrap_or_else(|| name.to_string());
    let filter: FilterRef =
        filter_text.parse().map_err(|m: String| DefinitionError::at(&at.0, at.1, format!("[{name}] filter: {m}")))?;
    let mut notes = Vec::new();
    let backend = get("backend")?.unwrap_or_else(|| "auto".into());
    let mut sources = Vec::new();
    if backend.trim().starts_with("systemd") {
        let matches = match get("journalmatch")? {
            Some(m) if !m.trim().is_empty() => m,
            _ => Definition::load(dir, &filter)?.journalmatch.join(" + "),
        };
        if matches.trim().is_empty() {
            notes.push(format!("backend {backend}: the filter gives no journalmatch; add a journal source by hand"));
        } else {
            sources.push(JailSource::Journal(matches.split_whitespace().collect::<Vec<_>>().join(" ")));
        }
    } else {
        for path in get("logpath")?.unwrap_or_default().lines() {
            // `path tail` / `path head`: where fail2ban starts reading.
            let path = path.split_whitespace().next().unwrap_or("");
            if path.is_empty() {
                continue;
            }
            if Path::new(path).is_absolute() {
                sources.push(JailSource::Path(path.to_string()));
            } else {
                notes.push(format!("logpath `{path}`: not an absolute path"));
            }
        }
        if sources.is_empty() {
            notes.push("no logpath: the jail reads nothing".into());
        }
    }
    let maxretry = match get("maxretry")? {
        Some(m) => match m.trim().parse::<u32>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                notes.push(format!("maxretry `{m}`: not a count"));
                None
            }
        },
        None => None,
    };
    let mut window = |key: &str| -> Result<Option<String>, DefinitionError> {
        Ok(match get(key)? {
            Some(v) => match duration(&v) {
                Ok(d) => Some(d),
                Err(why) => {
                    notes.push(format!("{key} {why}"));
                    None
                }
            },
            None => None,
        })
    };
    let findtime = window("findtime")?;
    let bantime = window("bantime")?;
    if get("ignoreip")?.is_some_and(|i| i.trim() != global_ignore.trim()) {
        notes.push("ignoreip: this jail's own list does not carry over (banshare's allowlist is global)".into());
    }
    // The action's interpolation needs values banshare does not read (port, chain):
    // only whether it names banshare matters here.
    let action = get("action").ok().flatten().unwrap_or_default();
    if action.contains("banshare") {
        notes.push("action: this jail already reports to banshare; run one or the other".into());
    }
    Ok(Jail { name: name.to_string(), filter, sources, maxretry, findtime, bantime, notes })
}

/// A TOML string.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A TOML key: bare when it can be.
fn key(s: &str) -> String {
    let bare = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare { s.to_string() } else { quoted(s) }
}

impl Converted {
    /// The banshare config, with a comment for what did not carry over.
    pub fn toml(&self) -> String {
        let mut t = String::new();
        let files: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        let _ = writeln!(t, "# banshare config converted from fail2ban's jails by `banshare fail2ban jails`.");
        let _ = writeln!(t, "# Read: {}", files.join(", "));
        for n in &self.notes {
            let _ = writeln!(t, "# not carried over: {n}");
        }
        if !self.allowlist.is_empty() {
            let list: Vec<String> = self.allowlist.iter().map(|a| quoted(a)).collect();
            let _ = writeln!(t, "allowlist = [{}]", list.join(", "));
        }
        if let Some((factor, max)) = &self.escalation {
            let _ = writeln!(t, "\n[detect]\nbantime_factor = {factor}");
            if let Some(max) = max {
                let _ = writeln!(t, "bantime_max = {}", quoted(max));
            }
        }
        let mut seen = BTreeSet::new();
        for jail in &self.jails {
            let name = quoted(&jail.name);
            let _ = writeln!(t, "\n# jail [{}]", jail.name);
            for n in &jail.notes {
                let _ = writeln!(t, "# not carried over: {n}");
            }
            for s in &jail.sources {
                let (k, v) = match s {
                    JailSource::Path(p) => ("path", p),
                    JailSource::Journal(m) => ("journal", m),
                };
                let _ = writeln!(t, "[[source]]\n{k} = {}\nfilters = [{name}]", quoted(v));
            }
            if seen.insert(jail.name.clone()) {
                let _ = writeln!(t, "[filter.{}]\nfail2ban = {}", key(&jail.name), quoted(&jail.filter.to_string()));
                if let Some(m) = jail.maxretry {
                    let _ = writeln!(t, "maxretry = {m}");
                }
                for (k, v) in [("findtime", &jail.findtime), ("bantime", &jail.bantime)] {
                    if let Some(v) = v {
                        let _ = writeln!(t, "{k} = {}", quoted(v));
                    }
                }
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_carry_over_or_say_why_not() {
        assert_eq!(duration("600").unwrap(), "600s");
        assert_eq!(duration("10m").unwrap(), "10m");
        assert!(duration("-1").unwrap_err().contains("permanent"));
        assert!(duration("soon").unwrap_err().contains("not a duration"));
    }
}
