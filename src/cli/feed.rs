//! The community-feed commands: `sync`, `check`, `register`, `verify`, `delist`. Each
//! asks the daemon, which holds the API key.

use std::fmt::Write as _;

use super::commands::{CliError, print};
use super::exit;
use crate::clock::Timestamp;
use crate::control::client::Client;
use crate::control::protocol::{CheckData, DelistData, RegisterData, Request, VerifyData};
use crate::feed::pull::{PullReport, summary};

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
