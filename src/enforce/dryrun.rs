//! The dry-run backend: touches nothing, keeps in memory what it would hold, and appends
//! one JSON line per operation to a log file (`dry-run.log` in the state directory), so an
//! operator trying banshare, and the tests, can see exactly what would have been done.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::json;

use super::{Change, Element, Firewall, FirewallError, Refused};
use crate::clock::Timestamp;
use crate::decision::Source;

pub struct DryRun {
    log: File,
    path: PathBuf,
    /// What a real backend would hold now.
    held: BTreeMap<(Source, IpNet), Option<Timestamp>>,
}

impl DryRun {
    pub fn open(path: &Path) -> Result<DryRun, FirewallError> {
        let log = OpenOptions::new().create(true).append(true).open(path).map_err(|source| FirewallError::Io {
            context: format!("{}: cannot open the dry-run log", path.display()),
            source,
        })?;
        Ok(DryRun { log, path: path.to_path_buf(), held: BTreeMap::new() })
    }

    fn record(&mut self, line: serde_json::Value) -> Result<(), FirewallError> {
        let mut text = line.to_string();
        text.push('\n');
        self.log.write_all(text.as_bytes()).map_err(|source| FirewallError::Io {
            context: format!("{}: cannot write the dry-run log", self.path.display()),
            source,
        })
    }
}

fn element_json(op: &str, e: &Element, now: Timestamp) -> serde_json::Value {
    json!({ "at": now, "op": op, "source": e.source, "target": e.target, "expires": e.expires })
}

impl Firewall for DryRun {
    fn name(&self) -> &'static str {
        "dry-run"
    }

    fn reconcile(&mut self, elements: &[Element], now: Timestamp) -> Result<Vec<Refused>, FirewallError> {
        self.held = elements.iter().map(|e| ((e.source, e.target), e.expires)).collect();
        let targets: Vec<String> = elements.iter().map(|e| format!("{}:{}", e.source, e.target)).collect();
        tracing::info!(elements = elements.len(), "dry-run: would rebuild the firewall sets");
        self.record(json!({ "at": now, "op": "reconcile", "elements": targets }))?;
        Ok(Vec::new())
    }

    fn apply(&mut self, changes: &[Change], now: Timestamp) -> Result<Vec<Refused>, FirewallError> {
        for change in changes {
            let line = match change {
                Change::Add(e) => {
                    tracing::info!(ip = %e.target, source = %e.source, "dry-run: would block");
                    self.held.insert((e.source, e.target), e.expires);
                    element_json("add", e, now)
                }
                Change::Remove(e) => {
                    tracing::info!(ip = %e.target, source = %e.source, "dry-run: would unblock");
                    self.held.remove(&(e.source, e.target));
                    element_json("remove", e, now)
                }
            };
            self.record(line)?;
        }
        Ok(Vec::new())
    }

    fn element_count(&mut self) -> Result<usize, FirewallError> {
        Ok(self.held.len())
    }

    fn intact(&mut self) -> Result<bool, FirewallError> {
        Ok(true)
    }
}
