//! Wire shapes of the WAYSCloud API, both ways: the report body banshare sends, and
//! tolerant readers for what the feed and the lookups return (every variant
//! `wayscloud-api.md` lists; unknown fields ignored; one bad item never fails the rest).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::sanitize::Sanitizer;
use crate::clock::Timestamp;
use crate::decision::parse_target;

/// Whether `c` matches the contract's `^[a-z0-9_]{1,64}$`.
pub fn valid_category(c: &str) -> bool {
    (1..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// What a report says, before sanitising.
#[derive(Debug, Clone)]
pub struct ReportInput<'a> {
    pub ip: IpAddr,
    pub category: &'a str,
    pub comment: &'a str,
    pub seen: Timestamp,
    pub evidence: &'a [String],
    /// `banshare`, `fail2ban` or `manual`.
    pub source: &'a str,
    /// The filter or fail2ban jail.
    pub jail: Option<&'a str>,
    pub failures: Option<u32>,
}

/// The JSON body of `POST /v1/ip/report`, sanitised and within the size caps.
pub fn report_body(input: &ReportInput, sanitizer: &Sanitizer) -> Value {
    let category = if valid_category(input.category) { input.category } else { "other" };
    let mut body = json!({
        "ip": input.ip.to_string(),
        "category": category,
        "timestamp": input.seen.to_string(),
        "source": input.source,
    });
    let comment = sanitizer.comment(input.comment);
    if !comment.is_empty() {
        body["comment"] = json!(comment);
    }
    let evidence = sanitizer.evidence(input.evidence);
    if !evidence.is_empty() {
        body["evidence"] = json!(evidence);
    }
    if let Some(jail) = input.jail {
        body["jail"] = json!(jail);
    }
    if let Some(n) = input.failures {
        body["failures"] = json!(n);
    }
    body
}

/// One usable entry of the live feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedItem {
    pub target: IpNet,
    pub score: u8,
    pub categories: Vec<String>,
}

/// A page of the live feed as read: the items that parsed and how many did not.
#[derive(Debug, Default)]
pub struct FeedPage {
    pub items: Vec<FeedItem>,
    /// Items without a readable address or score.
    pub invalid: usize,
    /// Items in the page, good or bad (to tell a full page from the last one).
    pub received: usize,
    /// The feed's `total`, when it says.
    pub total: Option<u64>,
}

/// Reads `GET /v1/ip/threats/live`: the list under `threats` or `data`, or the document
/// itself; addresses under `ip_address` or `ip` (possibly CIDRs); scores under
/// `threat_score`, `score` or `threat.score` (numbers or numeric strings). `Err` only
/// when no list can be found at all.
pub fn parse_live(body: &[u8]) -> Result<FeedPage, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("the feed is not JSON: {e}"))?;
    let (list, total) = match &doc {
        Value::Array(items) => (items, None),
        Value::Object(o) => {
            let list = o
                .get("threats")
                .or_else(|| o.get("data"))
                .and_then(Value::as_array)
                .ok_or("the feed has no `threats` or `data` list")?;
            (list, o.get("total").and_then(Value::as_u64))
        }
        _ => return Err("the feed is neither a list nor an object".into()),
    };
    let mut page = FeedPage { received: list.len(), total, ..FeedPage::default() };
    for item in list {
        match feed_item(item) {
            Some(i) => page.items.push(i),
            None => page.invalid += 1,
        }
    }
    Ok(page)
}

fn feed_item(item: &Value) -> Option<FeedItem> {
    let addr = item.get("ip_address").or_else(|| item.get("ip")).and_then(Value::as_str)?;
    let target = parse_target(addr).ok()?;
    let score = item
        .get("threat_score")
        .or_else(|| item.get("score"))
        .or_else(|| item.get("threat").and_then(|t| t.get("score")))
        .and_then(number)?;
    if !(0.0..=100.0).contains(&score) {
        return None;
    }
    let categories = item
        .get("categories")
        .and_then(Value::as_array)
        .map(|c| c.iter().filter_map(Value::as_str).filter(|c| valid_category(c)).map(str::to_string).collect())
        .unwrap_or_default();
    Some(FeedItem { target, score: score.round() as u8, categories })
}

/// A number, or a string holding one.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// What `GET /v1/ip/{ip}` (or `/threat`) says about an address, as `banshare check`
/// shows it. Every field may be missing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lookup {
    pub score: Option<u8>,
    pub level: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// The flags that are set (`vpn`, `tor`, `datacenter`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    pub country: Option<String>,
    /// `AS15169 Google LLC (datacenter)`.
    pub network: Option<String>,
    pub hostname: Option<String>,
    pub reports: Option<u64>,
}

/// Reads a lookup answer tolerantly; `None` when it is not a JSON object.
pub fn parse_lookup(body: &[u8]) -> Option<Lookup> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let o = doc.as_object()?;
    let threat = o.get("threat");
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let score = o
        .get("score")
        .or_else(|| o.get("threat_score"))
        .or_else(|| threat.and_then(|t| t.get("score")))
        .and_then(number)
        .filter(|s| (0.0..=100.0).contains(s))
        .map(|s| s.round() as u8);
    let level = text(o.get("level")).or_else(|| text(threat.and_then(|t| t.get("level"))));
    let categories = o
        .get("categories")
        .or_else(|| threat.and_then(|t| t.get("categories")))
        .and_then(Value::as_array)
        .map(|c| c.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let flags = o
        .get("flags")
        .and_then(Value::as_object)
        .map(|f| f.iter().filter(|(_, v)| v.as_bool() == Some(true)).map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let geo = o.get("geo");
    let country = text(geo.and_then(|g| g.get("country"))).or_else(|| text(o.get("country")));
    let network = o.get("network").and_then(|n| {
        let asn = n.get("asn").and_then(Value::as_u64).map(|a| format!("AS{a}"));
        let name = text(n.get("org")).or_else(|| text(n.get("isp")));
        let kind = text(n.get("connection_type")).map(|k| format!("({k})"));
        let parts: Vec<String> = [asn, name, kind].into_iter().flatten().collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    });
    Some(Lookup {
        score,
        level,
        categories,
        flags,
        country,
        network,
        hostname: text(o.get("hostname")),
        reports: o.get("reports_count").and_then(Value::as_u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_body_is_sanitised_and_valid() {
        let lines = vec!["Jan  2 03:04:05 web1 sshd[1]: Failed password for root from 45.155.205.7 port 1 ssh2".into()];
        let input = ReportInput {
            ip: "45.155.205.7".parse().unwrap(),
            category: "ssh_bruteforce",
            comment: "sshd: 5 failures within 10m",
            seen: Timestamp(1_767_323_045_000),
            evidence: &lines,
            source: "banshare",
            jail: Some("sshd"),
            failures: Some(5),
        };
        let body = report_body(&input, &Sanitizer::new(&["web1".into()], &[]));
        assert_eq!(body["ip"], "45.155.205.7");
        assert_eq!(body["category"], "ssh_bruteforce");
        assert_eq!(body["timestamp"], "2026-01-02T03:04:05Z");
        assert_eq!(body["failures"], 5);
        let ev = body["evidence"][0].as_str().unwrap();
        assert!(!ev.contains("web1") && !ev.contains("root"), "{ev}");
        let bad = ReportInput { category: "SSH brute force!", ..input };
        assert_eq!(report_body(&bad, &Sanitizer::default())["category"], "other");
    }

    #[test]
    fn the_live_feed_is_read_in_every_listed_shape() {
        let documented =
            br#"{"threats": [{"ip_address": "45.155.205.7", "threat_score": 92, "categories": ["ssh_bruteforce"]}],
                              "count": 1, "total": 1, "limit": 100, "offset": 0}"#;
        let page = parse_live(documented).unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].score, 92);
        assert_eq!(page.items[0].categories, ["ssh_bruteforce"]);
        assert_eq!(page.total, Some(1));

        let variants = br#"{"data": [
            {"ip": "45.155.205.8", "score": 88},
            {"ip": "185.220.101.0/24", "threat": {"score": 99}},
            {"ip_address": "45.155.205.9", "threat_score": "90.4"},
            {"ip_address": "not an ip", "threat_score": 95},
            {"ip_address": "45.155.205.10"},
            {"ip_address": "45.155.205.11", "threat_score": 250},
            "a string",
            {"ip_address": 12345, "threat_score": 95}
        ]}"#;
        let page = parse_live(variants).unwrap();
        let got: Vec<(String, u8)> = page.items.iter().map(|i| (i.target.to_string(), i.score)).collect();
        assert_eq!(
            got,
            [("45.155.205.8/32".into(), 88), ("185.220.101.0/24".into(), 99), ("45.155.205.9/32".into(), 90)]
        );
        assert_eq!((page.invalid, page.received), (5, 8));

        let bare = br#"[{"ip": "45.155.205.8", "score": 88}]"#;
        assert_eq!(parse_live(bare).unwrap().items.len(), 1);
        assert!(parse_live(b"<html>").is_err());
        assert!(parse_live(br#"{"detail": "x"}"#).is_err());
    }

    #[test]
    fn lookups_are_read_tolerantly() {
        let full = br#"{"ip": "8.8.8.8", "hostname": "dns.google", "geo": {"country": "US"},
            "network": {"asn": 15169, "isp": "Google LLC", "org": "Google LLC", "connection_type": "datacenter"},
            "threat": {"score": 0, "level": "clean", "is_clean": true},
            "flags": {"vpn": false, "datacenter": true}}"#;
        let l = parse_lookup(full).unwrap();
        assert_eq!(l.score, Some(0));
        assert_eq!(l.level.as_deref(), Some("clean"));
        assert_eq!(l.flags, ["datacenter"]);
        assert_eq!(l.network.as_deref(), Some("AS15169 Google LLC (datacenter)"));
        let sparse = parse_lookup(br#"{"ip": "8.8.8.8", "geo": null, "network": null}"#).unwrap();
        assert_eq!(sparse, Lookup::default());
        let threat = parse_lookup(br#"{"ip": "1.2.3.4", "score": 91, "categories": ["port_scan"]}"#).unwrap();
        assert_eq!((threat.score, threat.categories.len()), (Some(91), 1));
        assert!(parse_lookup(b"[]").is_none());
    }
}
