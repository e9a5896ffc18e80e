//! IP-reputation providers, each normalised to one shape: a score from 0 to 100 and
//! flags (vpn, proxy, tor, datacenter, known attacker). Pure readers of each provider's
//! documented answer; the HTTP side and the cache live elsewhere. The mapping is the
//! README's table ("The check service: providers").

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Timestamp;
use crate::store::StoredReputation;

/// What one provider says about an address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reputation {
    pub score: u8,
    pub flags: Vec<Flag>,
    /// What else the provider said that a person deciding would want: VPN and proxy
    /// provider names with their confidence, report counts, the network's kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A provider's answer as the store keeps it, and back: `None` for a row this binary
/// cannot read (a provider or flag from elsewhere, a bad address, bad JSON).
pub fn to_stored(provider: Provider, ip: std::net::IpAddr, rep: &Reputation, fetched: Timestamp) -> StoredReputation {
    StoredReputation {
        provider: provider.name().into(),
        ip: ip.to_string(),
        score: rep.score.into(),
        flags: serde_json::to_string(&rep.flags).unwrap_or_else(|_| "[]".into()),
        notes: serde_json::to_string(&rep.notes).unwrap_or_else(|_| "[]".into()),
        fetched,
    }
}

/// The inverse of [`to_stored`].
pub fn from_stored(row: &StoredReputation) -> Option<(Provider, std::net::IpAddr, Reputation, Timestamp)> {
    let reputation = Reputation {
        score: u8::try_from(row.score).ok().filter(|s| *s <= 100)?,
        flags: serde_json::from_str(&row.flags).ok()?,
        notes: serde_json::from_str(&row.notes).ok()?,
    };
    Some((Provider::from_name(&row.provider)?, row.ip.parse().ok()?, reputation, row.fetched))
}

impl Reputation {
    pub fn new(score: u8, flags: Vec<Flag>) -> Reputation {
        Reputation { score, flags, notes: Vec::new() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    Vpn,
    Proxy,
    Tor,
    Datacenter,
    KnownAttacker,
}

/// The providers banshare knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Wayscloud,
    Ipgeolocation,
    Apiarmor,
    Ipasis,
}

impl Provider {
    pub const ALL: [Provider; 4] = [Provider::Wayscloud, Provider::Ipgeolocation, Provider::Apiarmor, Provider::Ipasis];

    /// The name in the config, the JSON answers and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Wayscloud => "wayscloud",
            Provider::Ipgeolocation => "ipgeolocation",
            Provider::Apiarmor => "apiarmor",
            Provider::Ipasis => "ipasis",
        }
    }

    pub fn from_name(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Reads this provider's answer; `None` when it is not the documented shape.
    pub fn read(self, body: &[u8]) -> Option<Reputation> {
        let doc: Value = serde_json::from_slice(body).ok()?;
        let mut r = match self {
            Provider::Wayscloud => wayscloud(&doc),
            Provider::Ipgeolocation => ipgeolocation(&doc),
            Provider::Apiarmor => apiarmor(&doc),
            Provider::Ipasis => ipasis(&doc),
        }?;
        r.flags.sort();
        r.flags.dedup();
        Some(r)
    }
}

fn yes(v: Option<&Value>) -> bool {
    v.and_then(Value::as_bool).unwrap_or(false)
}

fn flags(pairs: &[(bool, Flag)]) -> Vec<Flag> {
    pairs.iter().filter(|(set, _)| *set).map(|(_, f)| *f).collect()
}

fn clamp(score: f64) -> u8 {
    score.round().clamp(0.0, 100.0) as u8
}

/// WAYSCloud `GET /v1/ip/{ip}/threat`: `score` (or `threat.score`) as is; flags from
/// `flags` (`vpn`, `proxy`, `tor`, `datacenter`, `botnet` → known attacker), and a
/// non-empty category list also marks a known attacker.
fn wayscloud(doc: &Value) -> Option<Reputation> {
    let score = doc.get("score").or_else(|| doc.get("threat").and_then(|t| t.get("score"))).and_then(Value::as_f64)?;
    let f = doc.get("flags");
    let get = |k: &str| yes(f.and_then(|f| f.get(k)));
    let categories: Vec<&str> = doc
        .get("categories")
        .or_else(|| doc.get("threat").and_then(|t| t.get("categories")))
        .and_then(Value::as_array)
        .map(|c| c.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut notes = Vec::new();
    if !categories.is_empty() {
        notes.push(format!("categories: {}", categories.join(", ")));
    }
    if let Some(n) = doc.get("reports_count").and_then(Value::as_u64).filter(|n| *n > 0) {
        notes.push(format!("{n} community reports"));
    }
    Some(Reputation {
        score: clamp(score),
        flags: flags(&[
            (get("vpn"), Flag::Vpn),
            (get("proxy"), Flag::Proxy),
            (get("tor"), Flag::Tor),
            (get("datacenter"), Flag::Datacenter),
            (get("botnet") || !categories.is_empty(), Flag::KnownAttacker),
        ]),
        notes,
    })
}

/// `what: names (confidence N)` from a provider's name list and confidence score.
fn named(what: &str, names: Option<&Value>, confidence: Option<&Value>) -> Option<String> {
    let names: Vec<&str> = match names {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).filter(|s| !s.is_empty()).collect(),
        Some(Value::String(s)) if !s.is_empty() => vec![s.as_str()],
        _ => Vec::new(),
    };
    if names.is_empty() {
        return None;
    }
    let confidence = confidence.and_then(Value::as_f64).map(|c| format!(" (confidence {c})")).unwrap_or_default();
    Some(format!("{what}: {}{confidence}", names.join(", ")))
}

/// ipgeolocation.io `GET /v3/security`: `security.threat_score` (0-100) as is; `is_tor`,
/// `is_proxy` and `is_residential_proxy` (proxy), `is_vpn`, `is_known_attacker`,
/// `is_cloud_provider` (datacenter).
fn ipgeolocation(doc: &Value) -> Option<Reputation> {
    let s = doc.get("security")?;
    let score = s.get("threat_score").and_then(Value::as_f64)?;
    let get = |k: &str| yes(s.get(k));
    let notes = [
        named("vpn", s.get("vpn_provider_names"), s.get("vpn_confidence_score")),
        named("proxy", s.get("proxy_provider_names"), s.get("proxy_confidence_score")),
        named("cloud", s.get("cloud_provider_name"), None),
        get("is_residential_proxy").then(|| "residential proxy".to_string()),
    ];
    Some(Reputation {
        score: clamp(score),
        flags: flags(&[
            (get("is_vpn"), Flag::Vpn),
            (get("is_proxy") || get("is_residential_proxy"), Flag::Proxy),
            (get("is_tor"), Flag::Tor),
            (get("is_cloud_provider"), Flag::Datacenter),
            (get("is_known_attacker"), Flag::KnownAttacker),
        ]),
        notes: notes.into_iter().flatten().collect(),
    })
}

/// API Armor `GET /v1/ip-reputation-check`: `reputation.reputation` bad 90, warning 70,
/// suspicious 50, informative 20, ok 0; `reputation.risky` raises it to at least 75 and
/// marks a known attacker; `kind` (`vpn`, `proxy`, `tor`, `hosting`/`datacenter`) sets flags.
fn apiarmor(doc: &Value) -> Option<Reputation> {
    let r = doc.get("reputation")?;
    let base: u8 = match r.get("reputation").and_then(Value::as_str)? {
        "bad" => 90,
        "warning" => 70,
        "suspicious" => 50,
        "informative" => 20,
        "ok" => 0,
        _ => return None,
    };
    let risky = yes(r.get("risky"));
    let kind = doc.get("kind").or_else(|| r.get("kind")).and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
    let reports = match r.get("reports") {
        Some(Value::Object(o)) => o.get("total").and_then(Value::as_u64),
        Some(v) => v.as_u64(),
        None => None,
    };
    let mut notes = Vec::new();
    if let Some(n) = reports.filter(|n| *n > 0) {
        notes.push(format!("{n} reports"));
    }
    if !kind.is_empty() {
        notes.push(format!("kind: {kind}"));
    }
    Some(Reputation {
        score: if risky { base.max(75) } else { base },
        flags: flags(&[
            (kind.contains("vpn"), Flag::Vpn),
            (kind.contains("proxy"), Flag::Proxy),
            (kind.contains("tor"), Flag::Tor),
            (kind.contains("hosting") || kind.contains("datacenter"), Flag::Datacenter),
            (risky || base >= 90, Flag::KnownAttacker),
        ]),
        notes,
    })
}

/// IPASIS `GET /json/{ip}`: no score of its own; the worst flag sets it: `is_abuse` 85,
/// `is_tor` 70, `is_proxy` 60, `is_vpn` 40, `is_datacenter`/`is_hosting` 20, else 0.
fn ipasis(doc: &Value) -> Option<Reputation> {
    let o = doc.as_object()?;
    if !o.keys().any(|k| k.starts_with("is_")) {
        return None;
    }
    let get = |k: &str| yes(o.get(k));
    let (abuse, tor, proxy, vpn, dc) =
        (get("is_abuse"), get("is_tor"), get("is_proxy"), get("is_vpn"), get("is_datacenter") || get("is_hosting"));
    let score = [(abuse, 85), (tor, 70), (proxy, 60), (vpn, 40), (dc, 20)]
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, s)| *s)
        .max()
        .unwrap_or(0);
    Some(Reputation {
        score,
        flags: flags(&[
            (vpn, Flag::Vpn),
            (proxy, Flag::Proxy),
            (tor, Flag::Tor),
            (dc, Flag::Datacenter),
            (abuse, Flag::KnownAttacker),
        ]),
        notes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: Provider, body: &str) -> Option<Reputation> {
        p.read(body.as_bytes())
    }

    #[test]
    fn each_provider_normalises_to_a_score_and_flags() {
        let w = read(
            Provider::Wayscloud,
            r#"{"ip":"1.2.3.4","score":92,"level":"critical","categories":["ssh_bruteforce"],"flags":{"tor":true}}"#,
        )
        .unwrap();
        assert_eq!(
            (w.score, w.flags, w.notes),
            (92, vec![Flag::Tor, Flag::KnownAttacker], vec!["categories: ssh_bruteforce".into()])
        );
        let nested = read(Provider::Wayscloud, r#"{"threat":{"score":10}}"#).unwrap();
        assert_eq!(nested.score, 10);

        let g = read(
            Provider::Ipgeolocation,
            r#"{"ip":"1.2.3.4","security":{"threat_score":80,"is_tor":false,"is_proxy":false,"is_residential_proxy":true,
               "is_vpn":true,"is_known_attacker":true,"is_cloud_provider":false,"proxy_provider_names":["X"],"vpn_confidence_score":90}}"#,
        )
        .unwrap();
        assert_eq!((g.score, g.flags), (80, vec![Flag::Vpn, Flag::Proxy, Flag::KnownAttacker]));
        assert_eq!(g.notes, ["proxy: X", "residential proxy"]);

        let a = read(
            Provider::Apiarmor,
            r#"{"ip":"1.2.3.4","reputation":{"risky":true,"reputation":"suspicious","reports":12},"kind":"hosting"}"#,
        )
        .unwrap();
        assert_eq!(
            (a.score, a.flags, a.notes),
            (75, vec![Flag::Datacenter, Flag::KnownAttacker], vec!["12 reports".to_string(), "kind: hosting".into()])
        );
        assert_eq!(read(Provider::Apiarmor, r#"{"reputation":{"risky":false,"reputation":"ok"}}"#).unwrap().score, 0);
        assert_eq!(read(Provider::Apiarmor, r#"{"reputation":{"reputation":"unheard-of"}}"#), None);

        let i =
            read(Provider::Ipasis, r#"{"ip":"1.2.3.4","is_proxy":true,"is_vpn":true,"is_tor":false,"is_abuse":false}"#)
                .unwrap();
        assert_eq!(i, Reputation::new(60, vec![Flag::Vpn, Flag::Proxy]));
        assert_eq!(read(Provider::Ipasis, r#"{"ip":"1.2.3.4","is_abuse":false}"#).unwrap().score, 0);
        assert_eq!(read(Provider::Ipasis, r#"{"error":"quota"}"#), None);
    }

    #[test]
    fn other_shapes_are_not_read_as_clean() {
        for p in Provider::ALL {
            assert_eq!(p.read(b"<html>502</html>"), None, "{p:?}");
            assert_eq!(p.read(br#"{"detail":"rate limited"}"#), None, "{p:?}");
        }
    }
}
