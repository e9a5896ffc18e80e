//! The community-feed commands: `sync`, `check`, `report --dry-run`, `register`,
//! `verify`, `delist`. All but `report --dry-run` ask the daemon, which holds the key.

use std::fmt::Write as _;
use std::path::Path;

use super::commands::{CliError, load_config, print};
use super::{ReportArgs, exit};
use crate::clock::Timestamp;
use crate::control::client::Client;
use crate::control::protocol::{CheckData, DelistData, RegisterData, Request, VerifyData};
use crate::decision::{is_public, parse_target};
use crate::feed::pull::{PullReport, summary};
use crate::feed::sanitize::Sanitizer;
use crate::feed::wire::{ReportInput, report_body};

pub fn sync(mut client: Client, json: bool) -> Result<u8, CliError> {
    let r: PullReport = client.call_as(&Request::Sync)?;
    print(json, &r, || {
        let s = &r.skipped;
        format!(
            "{}\nskipped: {} invalid, {} below min_score, {} not public, {} too wide, {} unbanned lately, \
             {} duplicates, {} over the cap, {} protected\n",
            summary(&r),
            s.invalid,
            s.low_score,
            s.not_public,
            s.over_wide,
            s.unbanned,
            s.duplicate,
            s.over_cap,
            s.protected
        )
    });
    Ok(exit::OK)
}

pub fn check(mut client: Client, ip: String, json: bool) -> Result<u8, CliError> {
    let c: CheckData = client.call_as(&Request::Check { ip })?;
    print(json, &c, || {
        let mut out = super::output::query(&c.local, Timestamp::now());
        match (&c.lookup, &c.lookup_error) {
            (Some(l), _) => {
                let cached = if c.cached { " (cached)" } else { "" };
                let fetched = c.fetched.map(|t| format!(", fetched {t}{cached}")).unwrap_or_default();
                let score = l.score.map_or("unknown".to_string(), |s| s.to_string());
                let level = l.level.as_deref().unwrap_or("unknown");
                let _ = writeln!(out, "community feed: score {score} ({level}){fetched}");
                let mut line = |k: &str, v: String| {
                    if !v.is_empty() {
                        let _ = writeln!(out, "  {k:<11}{v}");
                    }
                };
                line("categories", l.categories.join(", "));
                line("flags", l.flags.join(", "));
                line("country", l.country.clone().unwrap_or_default());
                line("network", l.network.clone().unwrap_or_default());
                line("hostname", l.hostname.clone().unwrap_or_default());
                line("reports", l.reports.map(|n| n.to_string()).unwrap_or_default());
            }
            (None, Some(e)) => {
                let _ = writeln!(out, "community feed: {e}");
            }
            (None, None) => {
                let _ = writeln!(out, "community feed: unknown");
            }
        }
        out
    });
    Ok(if c.local.blocked { exit::OK } else { exit::NO })
}

/// `report --dry-run`: the exact body the daemon would queue for this event.
pub fn report(config: Option<&Path>, args: ReportArgs, dry_run: bool) -> Result<u8, CliError> {
    if !dry_run {
        return Err(CliError::new(
            exit::BAD_INPUT,
            "reporting a ban through the daemon is the fail2ban action's job (not built yet); use --dry-run to see the report",
        ));
    }
    let cfg = load_config(config)?;
    let target = parse_target(&args.ip).map_err(|m| CliError::new(exit::BAD_INPUT, m))?;
    if target.prefix_len() != target.max_prefix_len() {
        return Err(CliError::new(exit::BAD_INPUT, format!("--ip {}: one address, not a network", args.ip)));
    }
    if !is_public(&target) {
        return Err(CliError::new(exit::REFUSED, format!("{} is not a public address; it is never reported", args.ip)));
    }
    let host = crate::hostaddr::host_addresses().unwrap_or_default();
    let matches: Vec<String> =
        args.matches.as_deref().unwrap_or("").lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    let seen = args.time.map_or_else(Timestamp::now, |t| Timestamp((t * 1000.0) as i64));
    let category = args.category.unwrap_or_else(|| "other".into());
    let comment = format!("{}: banned", args.jail);
    let input = ReportInput {
        ip: target.addr(),
        category: &category,
        comment: &comment,
        seen,
        evidence: &matches,
        source: "fail2ban",
        jail: Some(&args.jail),
        failures: args.failures,
    };
    let body = report_body(&input, &Sanitizer::for_host(&host));
    println!("POST {}{}", cfg.feed.base_url, crate::feed::reporter::REPORT_PATH);
    println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default());
    Ok(exit::OK)
}

pub fn register(mut client: Client, request: Request, json: bool) -> Result<u8, CliError> {
    let r: RegisterData = client.call_as(&request)?;
    print(json, &r, || {
        let status = r.status.as_deref().unwrap_or("unknown");
        let trust = r.trust_score.map(|t| format!(", trust score {t}")).unwrap_or_default();
        format!("registered: reporter id {} ({status}{trust})\n", r.reporter_id)
    });
    Ok(exit::OK)
}

pub fn verify(mut client: Client, domain: Option<String>, json: bool) -> Result<u8, CliError> {
    let v: VerifyData = client.call_as(&Request::Verify { domain })?;
    print(json, &v, || {
        let mut out = format!("{}: {}\n", v.domain, v.status);
        if let (Some(name), Some(value)) = (&v.record_name, &v.record_value) {
            let _ = writeln!(out, "create this DNS record, then run `banshare verify` again:");
            let _ = writeln!(out, "  {name}. IN TXT \"{value}\"");
        }
        if let Some(at) = &v.verified_at {
            let _ = writeln!(out, "verified at {at}");
        }
        out
    });
    Ok(if v.status == "verified" { exit::OK } else { exit::NO })
}

pub fn delist(mut client: Client, request: Request, json: bool) -> Result<u8, CliError> {
    let d: DelistData = client.call_as(&request)?;
    print(json, &d, || {
        format!(
            "delisting requested: {} (request {}); people review it and may ask for proof of control\n",
            d.status.as_deref().unwrap_or("submitted"),
            d.request_id.as_deref().unwrap_or("without an id")
        )
    });
    Ok(exit::OK)
}
