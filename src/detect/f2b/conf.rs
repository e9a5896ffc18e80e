//! A fail2ban configuration as its reader sees it: a file, its `.local`, and what their
//! `[INCLUDES]` bring in (`before` files first, `after` files last, each with its own
//! `.local`), merged in that order. A later file's key replaces an earlier one's, and the
//! replaced value stays reachable as `%(known/key)s`. Values are read with `%(name)s`
//! interpolation (from the caller's variables, then the section, then `[DEFAULT]`; also
//! `%(section/name)s`, `%(default/name)s`, `%(known/name)s`), ten levels deep at most.
//!
//! Stricter than fail2ban where fail2ban would silently run something else: an include
//! that does not exist is an error unless it is a `.local` (the optional overrides), and
//! an include loop is an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::DefinitionError;
use super::ini::{self, Ini};

/// A value and where it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub text: String,
    pub file: PathBuf,
    pub line: usize,
}

type Options = HashMap<String, Value>;

/// The merged files.
#[derive(Debug, Clone, Default)]
pub struct Conf {
    defaults: Options,
    sections: HashMap<String, Options>,
    /// The values later files replaced, per section (`%(known/key)s`).
    known: HashMap<String, Options>,
    /// The files read, in merge order.
    pub files: Vec<PathBuf>,
    /// Section names in the order they first appeared.
    order: Vec<String>,
}

/// How deep `%(name)s` may nest (Python's limit).
const MAX_DEPTH: usize = 10;

/// The file's `.local` sibling.
fn local_of(file: &Path) -> PathBuf {
    file.with_extension("local")
}

/// Where a configuration's files are read from: the disk, or banshare's own built-in
/// definitions (compiled into the binary, under [`Files::BUILT_IN_ROOT`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Files {
    Disk,
    /// Paths (`(built-in)/filter.d/sshd.conf`) and their text.
    Embedded(&'static [(&'static str, &'static str)]),
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Files::Disk => f.write_str("Disk"),
            Files::Embedded(table) => write!(f, "Embedded({} files)", table.len()),
        }
    }
}

impl Files {
    /// The directory the embedded files are named under, in paths and messages.
    pub const BUILT_IN_ROOT: &'static str = "(built-in)";

    fn embedded(&self, file: &Path) -> Option<Option<&'static str>> {
        match self {
            Files::Disk => None,
            Files::Embedded(table) => Some(table.iter().find(|(p, _)| Path::new(p) == file).map(|(_, t)| *t)),
        }
    }

    pub fn is_file(&self, file: &Path) -> bool {
        match self.embedded(file) {
            Some(text) => text.is_some(),
            None => file.is_file(),
        }
    }

    fn read(&self, file: &Path) -> std::io::Result<Vec<u8>> {
        match self.embedded(file) {
            Some(Some(text)) => Ok(text.as_bytes().to_vec()),
            Some(None) => Err(std::io::ErrorKind::NotFound.into()),
            None => std::fs::read(file),
        }
    }
}

fn read_ini(files: Files, file: &Path) -> Result<Option<Ini>, DefinitionError> {
    match files.read(file) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|e| {
                DefinitionError::new(file, format!("not UTF-8 (at byte {})", e.utf8_error().valid_up_to()))
            })?;
            ini::parse(&text, file).map(Some)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DefinitionError::new(file, format!("cannot read: {e}"))),
    }
}

impl Conf {
    /// Reads `file` with its `.local` and includes; `file` itself must exist.
    pub fn read(file: &Path) -> Result<Conf, DefinitionError> {
        Conf::read_from(Files::Disk, file)
    }

    /// Like [`Conf::read`], from `files`.
    pub fn read_from(files: Files, file: &Path) -> Result<Conf, DefinitionError> {
        let mut order = Vec::new();
        let mut parsed = HashMap::new();
        if !files.is_file(file) {
            return Err(DefinitionError::new(file, "no such file".into()));
        }
        collect(files, file, &mut Vec::new(), &mut order, &mut parsed)?;
        Ok(Conf::merged(order, parsed))
    }

    /// Reads `files` in this order (each with its includes, not its `.local`: list it),
    /// as fail2ban reads `jail.conf`, `jail.d/*.conf`, `jail.local`, `jail.d/*.local`.
    /// Files that do not exist are skipped.
    pub fn read_files(files: &[PathBuf]) -> Result<Conf, DefinitionError> {
        let mut order = Vec::new();
        let mut parsed = HashMap::new();
        for f in files.iter().filter(|f| f.is_file()) {
            one(Files::Disk, f, &mut Vec::new(), &mut order, &mut parsed)?;
        }
        Ok(Conf::merged(order, parsed))
    }

    fn merged(order: Vec<PathBuf>, mut parsed: HashMap<PathBuf, Ini>) -> Conf {
        let mut conf = Conf::default();
        for path in order {
            let ini = parsed.remove(&path).expect("each collected file was parsed");
            conf.merge(&path, ini);
            conf.files.push(path);
        }
        conf
    }

    /// The sections other than `[DEFAULT]` and `[INCLUDES]`, in the order they appeared.
    pub fn sections(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str).filter(|s| *s != "INCLUDES")
    }

    fn merge(&mut self, path: &Path, ini: Ini) {
        for section in ini.sections {
            let values = section
                .options
                .into_iter()
                .map(|o| (o.key, Value { text: o.value, file: path.to_path_buf(), line: o.line }));
            if section.name == "DEFAULT" {
                self.defaults.extend(values);
                continue;
            }
            // `[Init?family=inet6]`: its keys carry the condition (`key?family=inet6`).
            let (name, cond) = match section.name.split_once('?') {
                Some((n, c)) if !n.is_empty() && n.chars().all(|c| c.is_alphanumeric() || c == '_') => {
                    (n.to_string(), format!("?{c}"))
                }
                _ => (section.name.clone(), String::new()),
            };
            if !self.sections.contains_key(&name) {
                self.order.push(name.clone());
            }
            let target = self.sections.entry(name.clone()).or_default();
            for (key, value) in values {
                let key = format!("{key}{cond}");
                if let Some(old) = target.insert(key.clone(), value) {
                    self.known.entry(name.clone()).or_default().insert(key, old);
                }
            }
        }
    }

    pub fn has_section(&self, section: &str) -> bool {
        self.sections.contains_key(section)
    }

    /// The keys set in `section` itself (not `[DEFAULT]`).
    pub fn keys(&self, section: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.sections.get(section).map(|s| s.keys().cloned().collect()).unwrap_or_default();
        keys.sort();
        keys
    }

    /// The raw value of `key` in `section` (or `[DEFAULT]`), before interpolation.
    pub fn raw(&self, section: &str, key: &str) -> Option<&Value> {
        self.sections.get(section).and_then(|s| s.get(key)).or_else(|| self.defaults.get(key))
    }

    /// `key` of `section`, interpolated; `vars` come first. `Ok(None)` when unset.
    pub fn get(
        &self,
        section: &str,
        key: &str,
        vars: &HashMap<String, String>,
    ) -> Result<Option<String>, DefinitionError> {
        let key = key.to_lowercase();
        if let Some(v) = vars.get(&key) {
            return self.interpolate(section, &key, v, None, vars, 0).map(Some);
        }
        match self.raw(section, &key) {
            Some(v) => self.interpolate(section, &key, &v.text, Some(v), vars, 0).map(Some),
            None => Ok(None),
        }
    }

    /// Like [`Conf::get`], and `key` may name another section (`section/key`,
    /// `known/key`, `default/key`), as fail2ban's `<section/key>` tags do.
    pub fn get_ex(
        &self,
        section: &str,
        key: &str,
        vars: &HashMap<String, String>,
    ) -> Result<Option<String>, DefinitionError> {
        if let Some((sec, opt)) = key.split_once('/') {
            match sec.to_lowercase().as_str() {
                "known" => {
                    if let Some(v) = self.known.get(section).and_then(|k| k.get(opt)) {
                        return self.interpolate(section, opt, &v.text, Some(v), vars, 0).map(Some);
                    }
                }
                "default" => {
                    if let Some(v) = self.defaults.get(opt) {
                        return self.interpolate("DEFAULT", opt, &v.text, Some(v), vars, 0).map(Some);
                    }
                }
                _ => {
                    if self.has_section(sec)
                        && let Some(v) = self.get(sec, opt, vars)?
                    {
                        return Ok(Some(v));
                    }
                }
            }
        }
        self.get(section, key, vars)
    }

    /// Resolves `name` for `%(name)s` in `section`.
    fn lookup(&self, section: &str, name: &str, vars: &HashMap<String, String>) -> Option<(String, Option<&Value>)> {
        if let Some(v) = vars.get(name) {
            return Some((v.clone(), None));
        }
        if name == "__name__" {
            return Some((section.to_string(), None));
        }
        if let Some(v) = self.raw(section, name) {
            return Some((v.text.clone(), Some(v)));
        }
        let (sec, opt) = name.split_once('/')?;
        let found = match sec {
            "known" => self.known.get(section).and_then(|k| k.get(opt)).or_else(|| self.defaults.get(opt)),
            "default" => self.defaults.get(opt),
            _ => self.sections.get(sec).and_then(|s| s.get(opt)).or_else(|| self.defaults.get(opt)),
        }?;
        Some((found.text.clone(), Some(found)))
    }

    fn interpolate(
        &self,
        section: &str,
        key: &str,
        text: &str,
        at: Option<&Value>,
        vars: &HashMap<String, String>,
        depth: usize,
    ) -> Result<String, DefinitionError> {
        let err = |message: String| match at {
            Some(v) => DefinitionError::at(&v.file, v.line, message),
            None => DefinitionError::new(Path::new(&format!("[{section}]")), message),
        };
        if depth > MAX_DEPTH {
            return Err(err(format!("{key}: `%(...)s` nested more than {MAX_DEPTH} deep (a loop?)")));
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find('%') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            if let Some(r) = rest.strip_prefix("%%") {
                out.push('%');
                rest = r;
            } else if let Some(r) = rest.strip_prefix("%(") {
                let Some(close) = r.find(")s") else {
                    return Err(err(format!("{key}: `%(` without its `)s`")));
                };
                let name = r[..close].to_lowercase();
                let Some((value, from)) = self.lookup(section, &name, vars) else {
                    return Err(err(format!("{key}: `%({name})s` names nothing set in [{section}] or [DEFAULT]")));
                };
                let value = if value.contains('%') {
                    self.interpolate(section, &name, &value, from.or(at), vars, depth + 1)?
                } else {
                    value
                };
                if out.len() + value.len() > super::MAX_VALUE {
                    return Err(err(format!("{key}: expands beyond {} KiB at %({name})s", super::MAX_VALUE >> 10)));
                }
                out.push_str(&value);
                rest = &r[close + 2..];
            } else {
                return Err(err(format!(
                    "{key}: a `%` must be followed by `%` or `(` (write `%%` for a percent sign)"
                )));
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Adds `file` (then its `.local`) with their includes to `order`, depth first.
fn collect(
    files: Files,
    file: &Path,
    stack: &mut Vec<PathBuf>,
    order: &mut Vec<PathBuf>,
    parsed: &mut HashMap<PathBuf, Ini>,
) -> Result<(), DefinitionError> {
    let mut paths = vec![file.to_path_buf()];
    let local = local_of(file);
    if local != file && files.is_file(&local) {
        paths.push(local);
    }
    for f in paths {
        one(files, &f, stack, order, parsed)?;
    }
    Ok(())
}

fn one(
    files: Files,
    file: &Path,
    stack: &mut Vec<PathBuf>,
    order: &mut Vec<PathBuf>,
    parsed: &mut HashMap<PathBuf, Ini>,
) -> Result<(), DefinitionError> {
    if stack.iter().any(|f| f == file) {
        let chain: Vec<String> = stack.iter().chain([&file.to_path_buf()]).map(|p| p.display().to_string()).collect();
        return Err(DefinitionError::new(file, format!("include loop: {}", chain.join(" -> "))));
    }
    if order.iter().any(|f| f == file) {
        return Ok(());
    }
    let Some(ini) = read_ini(files, file)? else {
        return Ok(());
    };
    let dir = file.parent().unwrap_or(Path::new("."));
    let includes = |key: &str| -> Vec<(PathBuf, usize)> {
        ini.section("INCLUDES")
            .and_then(|s| s.get(key))
            .map(|o| o.value.lines().filter(|l| !l.trim().is_empty()).map(|l| (dir.join(l.trim()), o.line)).collect())
            .unwrap_or_default()
    };
    let (before, after) = (includes("before"), includes("after"));
    stack.push(file.to_path_buf());
    for (inc, line) in &before {
        include(files, file, inc, *line, stack, order, parsed)?;
    }
    order.push(file.to_path_buf());
    parsed.insert(file.to_path_buf(), ini);
    for (inc, line) in &after {
        include(files, file, inc, *line, stack, order, parsed)?;
    }
    stack.pop();
    Ok(())
}

fn include(
    files: Files,
    from: &Path,
    inc: &Path,
    line: usize,
    stack: &mut Vec<PathBuf>,
    order: &mut Vec<PathBuf>,
    parsed: &mut HashMap<PathBuf, Ini>,
) -> Result<(), DefinitionError> {
    if !files.is_file(inc) {
        if inc.extension().is_some_and(|e| e == "local") {
            return Ok(());
        }
        return Err(DefinitionError::at(from, line, format!("includes {}, which does not exist", inc.display())));
    }
    collect(files, inc, stack, order, parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn merges_includes_locals_and_known_values() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "common.conf", "[DEFAULT]\n_daemon = \\S*\nprefix = <_daemon>:\n");
        write(
            d.path(),
            "f.conf",
            "[INCLUDES]\nbefore = common.conf\nafter = f-extra.local\n[DEFAULT]\n_daemon = sshd\n[Definition]\nfailregex = ^%(prefix)s bad <HOST>\nx = 100%%\n",
        );
        write(d.path(), "f.local", "[Definition]\nfailregex = %(known/failregex)s\n            ^worse <HOST>\n");
        let conf = Conf::read(&d.path().join("f.conf")).unwrap();
        let vars = HashMap::new();
        assert_eq!(
            conf.get("Definition", "failregex", &vars).unwrap().unwrap(),
            "^<_daemon>: bad <HOST>\n^worse <HOST>"
        );
        assert_eq!(conf.get("Definition", "x", &vars).unwrap().unwrap(), "100%");
        assert_eq!(conf.get("Definition", "_daemon", &vars).unwrap().unwrap(), "sshd", "the later [DEFAULT] wins");
        let vars = HashMap::from([("_daemon".to_string(), "vsftpd".to_string())]);
        assert_eq!(conf.get_ex("Definition", "default/_daemon", &vars).unwrap().unwrap(), "sshd");
        assert_eq!(conf.get("Definition", "_daemon", &vars).unwrap().unwrap(), "vsftpd", "variables first");
        assert_eq!(conf.files.len(), 3);
    }

    #[test]
    fn refuses_loops_missing_includes_and_bad_interpolation() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.conf", "[INCLUDES]\nbefore = b.conf\n[Definition]\nfailregex = x\n");
        write(d.path(), "b.conf", "[INCLUDES]\nafter = a.conf\n");
        let e = Conf::read(&d.path().join("a.conf")).unwrap_err().to_string();
        assert!(e.contains("include loop") && e.contains("a.conf -> ") && e.contains("b.conf -> "), "{e}");
        write(d.path(), "c.conf", "[INCLUDES]\n\nbefore = gone.conf\n");
        let e = Conf::read(&d.path().join("c.conf")).unwrap_err().to_string();
        assert!(e.ends_with("c.conf:3: includes ") || e.contains("c.conf:3: includes"), "{e}");
        assert!(e.contains("gone.conf, which does not exist"), "{e}");
        write(d.path(), "e.conf", "[Definition]\na = %(nothing)s\nb = 5%\nc = %(c)s\n");
        let conf = Conf::read(&d.path().join("e.conf")).unwrap();
        let vars = HashMap::new();
        let e = |k| conf.get("Definition", k, &vars).unwrap_err().to_string();
        assert!(
            e("a").ends_with("e.conf:2: a: `%(nothing)s` names nothing set in [Definition] or [DEFAULT]"),
            "{}",
            e("a")
        );
        assert!(e("b").contains("e.conf:3: b: a `%` must be followed"), "{}", e("b"));
        assert!(e("c").contains("nested more than 10 deep"), "{}", e("c"));
        assert!(Conf::read(&d.path().join("none.conf")).unwrap_err().to_string().ends_with("none.conf: no such file"));
    }
}
