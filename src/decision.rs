//! Decisions and the allowlist guard.
//!
//! A [`Decision`] is one block of one address or CIDR, whatever produced it ([`Source`]).
//! Before a decision reaches the store, and again before an element reaches the kernel
//! (see [`crate::enforce`]), the [`Guard`] refuses targets that would cut the operator
//! off: loopback, link-local, unspecified, multicast and broadcast addresses, the host's
//! own interface addresses and the configured allowlist. A refusal says why.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// What produced a decision. Each source has its own firewall sets so that counters and
/// teardown can be per source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// banshare's own log detection.
    Detect,
    /// A fail2ban jail, through the action hook.
    Fail2ban,
    /// The operator, through `banshare ban` or `banshare import`.
    Manual,
    /// The WAYSCloud live-threat feed.
    Feed,
}

impl Source {
    /// Every source, in display order.
    pub const ALL: [Source; 4] = [Source::Detect, Source::Fail2ban, Source::Manual, Source::Feed];

    /// The name used in the store, on the wire and in firewall set names.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Detect => "detect",
            Source::Fail2ban => "fail2ban",
            Source::Manual => "manual",
            Source::Feed => "feed",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Source::ALL
            .into_iter()
            .find(|src| src.as_str() == s)
            .ok_or_else(|| format!("unknown source `{s}`: expected detect, fail2ban, manual or feed"))
    }
}

/// One block of an address or CIDR, as stored and as shown to the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Row id in the store.
    pub id: i64,
    /// The blocked address (as a /32 or /128) or network.
    pub target: IpNet,
    pub source: Source,
    /// Free text for people: the filter, jail, feed entry or operator note.
    pub reason: String,
    /// Report category (`ssh_bruteforce`, ...), when known.
    pub category: Option<String>,
    /// Threat score 0-100, when known (feed decisions).
    pub score: Option<u8>,
    pub created: Timestamp,
    /// `None` for a permanent block.
    pub expires: Option<Timestamp>,
    /// When the block was lifted (expired, unbanned, allowlisted), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted: Option<Timestamp>,
    /// The log lines that led to it (detection: the last matched lines, at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<String>,
    /// Whether banshare's firewall enforces it. `false` for a fail2ban ban in report
    /// mode: recorded (and reported), while fail2ban's own banaction blocks it.
    #[serde(default = "enforced_default")]
    pub enforced: bool,
}

fn enforced_default() -> bool {
    true
}

impl Decision {
    /// Whether the block is in force at `now`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.lifted.is_none() && self.expires.is_none_or(|e| e > now)
    }
}

/// A decision about to be made: what the sources hand to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDecision {
    pub target: IpNet,
    pub source: Source,
    pub reason: String,
    pub category: Option<String>,
    pub score: Option<u8>,
    /// `None` for a permanent block.
    pub duration: Option<Duration>,
    /// The log lines behind it, if any.
    pub evidence: Vec<String>,
    /// A report for the community feed, queued in the same transaction as the decision.
    pub report: Option<ReportDraft>,
    /// Enforce it in banshare's firewall (see [`Decision::enforced`]).
    pub enforce: bool,
}

/// A community report waiting to be queued: the already sanitised request body, and the
/// rule that keeps one (address, category) from being reported twice within `cooldown`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportDraft {
    pub ip: IpAddr,
    pub category: String,
    /// The JSON body of `POST /v1/ip/report`.
    pub payload: String,
    pub cooldown: Duration,
}

/// The longest ban banshare takes (100 years); longer is `permanent`. Every expiry is
/// then far from the end of what can be stored and written (year 9999), whatever the
/// clock says.
pub const MAX_BAN: Duration = Duration::from_secs(36_525 * 86_400);

/// Accepts a ban length up to [`MAX_BAN`], or says why not.
pub fn check_ban_length(d: Duration) -> Result<(), String> {
    if d > MAX_BAN {
        return Err("longer than the 100-year limit; use \"permanent\" for a ban without end".into());
    }
    Ok(())
}

/// Parses an address or CIDR as an operator types it (`203.0.113.7`, `203.0.113.0/24`,
/// `2001:db8::/32`). Host bits are cleared (`203.0.113.7/24` is `203.0.113.0/24`) and an
/// IPv4-mapped IPv6 address becomes the IPv4 address it carries.
pub fn parse_target(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    let net =
        if text.contains('/') { IpNet::from_str(text).ok() } else { IpAddr::from_str(text).ok().map(IpNet::from) };
    net.map(normalize).ok_or_else(|| {
        format!("`{text}` is not an IP address or CIDR (expected e.g. 203.0.113.7, 203.0.113.0/24 or 2001:db8::/48)")
    })
}

/// Canonical form of a target: host bits cleared, IPv4-mapped IPv6 turned into IPv4.
pub fn normalize(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map(|n| IpNet::V4(n.trunc())).unwrap_or(net),
            None => net.trunc(),
        },
        _ => net.trunc(),
    }
}

/// An address without its `/32` or `/128`, a network as a CIDR: how people write them.
pub fn show_target(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() { net.addr().to_string() } else { net.to_string() }
}

/// The target a ban of `addr` from `source` covers. Local detection widens IPv6 to
/// `ipv6_prefix` (an attacker usually holds a whole /64); every other source takes the
/// address as given.
pub fn ban_target(addr: IpAddr, source: Source, ipv6_prefix: u8) -> IpNet {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    };
    match (addr, source) {
        (IpAddr::V6(v6), Source::Detect) => {
            Ipv6Net::new(v6, ipv6_prefix.min(128)).map(|n| IpNet::V6(n.trunc())).unwrap_or_else(|_| IpNet::from(addr))
        }
        _ => IpNet::from(addr),
    }
}

/// Special-purpose ranges (IANA's registries) that are never reported to the community
/// feed nor accepted from it: private, shared, documentation, benchmarking, reserved,
/// and IPv6's documentation and protocol-assignment blocks. The guard's protected
/// ranges (loopback, link-local, multicast) are covered too.
const SPECIAL: [&str; 18] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/3", // multicast and 240/4 reserved, broadcast included
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "3fff::/20",
];

/// Whether every address of `net` is a public unicast address: one worth reporting to,
/// or accepting from, the community feed. IPv6 must also lie in global unicast (2000::/3).
pub fn is_public(net: &IpNet) -> bool {
    let net = normalize(*net);
    let parse = |text: &str| -> IpNet { text.parse().expect("valid built-in prefix") };
    let unicast = match net {
        IpNet::V4(_) => true,
        IpNet::V6(_) => parse("2000::/3").contains(&net),
    };
    unicast && SPECIAL.iter().all(|range| !overlaps(&parse(range), &net))
}

/// Why the guard refused a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{target} is or covers a loopback address")]
    Loopback { target: IpNet },
    #[error("{target} is or covers a link-local address")]
    LinkLocal { target: IpNet },
    #[error("{target} is or covers the unspecified address")]
    Unspecified { target: IpNet },
    #[error("{target} is or covers multicast or broadcast addresses")]
    Multicast { target: IpNet },
    #[error("{target} is or covers {addr}, an address of this host")]
    HostAddress { target: IpNet, addr: IpAddr },
    #[error("{target} overlaps the allowlist entry {entry}")]
    Allowlisted { target: IpNet, entry: IpNet },
}

/// Builds the refusal for a target that overlaps a protected range.
type RefusalFor = fn(IpNet) -> Refusal;

/// The ranges no source may ever block, with the refusal each one gives.
fn protected_ranges() -> [(IpNet, RefusalFor); 9] {
    fn net(a: IpAddr, len: u8) -> IpNet {
        IpNet::new(a, len).expect("valid built-in prefix")
    }
    let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    let v6 = |seg0| IpAddr::V6(Ipv6Addr::new(seg0, 0, 0, 0, 0, 0, 0, 0));
    [
        (net(v4(127, 0, 0, 0), 8), |target| Refusal::Loopback { target }),
        (net(IpAddr::V6(Ipv6Addr::LOCALHOST), 128), |target| Refusal::Loopback { target }),
        (net(v4(169, 254, 0, 0), 16), |target| Refusal::LinkLocal { target }),
        (net(v6(0xfe80), 10), |target| Refusal::LinkLocal { target }),
        (net(v4(0, 0, 0, 0), 32), |target| Refusal::Unspecified { target }),
        (net(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128), |target| Refusal::Unspecified { target }),
        (net(v4(224, 0, 0, 0), 4), |target| Refusal::Multicast { target }),
        (net(v4(255, 255, 255, 255), 32), |target| Refusal::Multicast { target }),
        (net(v6(0xff00), 8), |target| Refusal::Multicast { target }),
    ]
}

/// Two networks of one family overlap when one contains the other.
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// The never-block rules: built-in protected ranges, the host's own addresses and the
/// configured allowlist. Cheap to clone; the daemon rebuilds it on reload and when the
/// host's addresses change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    allowlist: Vec<IpNet>,
    host: Vec<IpAddr>,
}

impl Guard {
    pub fn new(allowlist: Vec<IpNet>, host: Vec<IpAddr>) -> Self {
        Guard { allowlist, host }
    }

    /// Accepts `target` or says why it must never be blocked. A network is refused when
    /// it overlaps a protected range in either direction: banning 0.0.0.0/0 would block
    /// loopback and the allowlist as surely as banning them one by one.
    pub fn check(&self, target: &IpNet) -> Result<(), Refusal> {
        let target = normalize(*target);
        for (range, refusal) in protected_ranges() {
            if overlaps(&range, &target) {
                return Err(refusal(target));
            }
        }
        if let Some(addr) = self.host.iter().find(|a| target.contains(*a)) {
            return Err(Refusal::HostAddress { target, addr: *addr });
        }
        if let Some(entry) = self.allowlist.iter().find(|e| overlaps(e, &target)) {
            return Err(Refusal::Allowlisted { target, entry: *entry });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> IpNet {
        parse_target(s).unwrap()
    }

    #[test]
    fn only_public_unicast_is_public() {
        for public in ["45.155.205.7", "8.8.8.0/24", "2a01:4f8::1", "2a01:4f8::/32", "::ffff:45.155.205.7"] {
            assert!(is_public(&t(public)), "{public}");
        }
        for special in [
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "203.0.113.7",
            "198.51.100.1",
            "192.0.2.1",
            "198.19.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "0.0.0.0/0",
            "8.0.0.0/4",
            "::1",
            "fe80::1",
            "fc00::1",
            "2001:db8::1",
            "ff02::1",
            "::/0",
            "2000::/2",
            "2002:0101::1",
        ] {
            assert!(!is_public(&t(special)), "{special}");
        }
    }

    #[test]
    fn targets_are_normalised() {
        assert_eq!(t("203.0.113.7").to_string(), "203.0.113.7/32");
        assert_eq!(t("203.0.113.7/24").to_string(), "203.0.113.0/24");
        assert_eq!(t("::ffff:198.51.100.9").to_string(), "198.51.100.9/32");
        assert_eq!(t("2001:db8::1").to_string(), "2001:db8::1/128");
        let err = parse_target("300.1.1.1").unwrap_err();
        assert!(err.contains("`300.1.1.1` is not an IP address or CIDR"), "{err}");
        assert!(parse_target("1.2.3.4/33").is_err());
        assert!(parse_target("").is_err());
    }

    #[test]
    fn detection_widens_ipv6_and_nothing_else() {
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(ban_target(v6, Source::Detect, 64).to_string(), "2001:db8:1:2::/64");
        assert_eq!(ban_target(v6, Source::Manual, 64).to_string(), "2001:db8:1:2:3:4:5:6/128");
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(ban_target(v4, Source::Detect, 64).to_string(), "203.0.113.7/32");
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(ban_target(mapped, Source::Detect, 64).to_string(), "203.0.113.7/32");
    }

    #[test]
    fn guard_refuses_what_would_lock_the_operator_out() {
        let guard = Guard::new(vec![t("192.0.2.0/24"), t("2001:db8::/32")], vec!["198.51.100.10".parse().unwrap()]);
        let refused = |s: &str| guard.check(&t(s)).unwrap_err().to_string();
        assert_eq!(refused("127.0.0.1"), "127.0.0.1/32 is or covers a loopback address");
        assert_eq!(refused("::1"), "::1/128 is or covers a loopback address");
        assert_eq!(refused("fe80::1"), "fe80::1/128 is or covers a link-local address");
        assert_eq!(refused("169.254.1.1"), "169.254.1.1/32 is or covers a link-local address");
        assert_eq!(refused("0.0.0.0"), "0.0.0.0/32 is or covers the unspecified address");
        assert_eq!(refused("239.1.1.1"), "239.1.1.1/32 is or covers multicast or broadcast addresses");
        assert_eq!(refused("0.0.0.0/0"), "0.0.0.0/0 is or covers a loopback address");
        assert_eq!(refused("198.51.100.0/24"), "198.51.100.0/24 is or covers 198.51.100.10, an address of this host");
        assert_eq!(refused("192.0.2.55"), "192.0.2.55/32 overlaps the allowlist entry 192.0.2.0/24");
        assert_eq!(refused("192.0.0.0/16"), "192.0.0.0/16 overlaps the allowlist entry 192.0.2.0/24");
        assert_eq!(refused("2001:db8:5::1"), "2001:db8:5::1/128 overlaps the allowlist entry 2001:db8::/32");
        assert_eq!(refused("::ffff:127.0.0.1"), "127.0.0.1/32 is or covers a loopback address");
        assert!(guard.check(&t("203.0.113.7")).is_ok());
        assert!(guard.check(&t("10.1.2.3")).is_ok(), "private ranges may be blocked locally");
        assert!(guard.check(&t("2a00:1450::/32")).is_ok());
    }

    #[test]
    fn source_names_round_trip() {
        for s in Source::ALL {
            assert_eq!(s.as_str().parse::<Source>().unwrap(), s);
        }
        assert!("sshd".parse::<Source>().unwrap_err().contains("expected detect"));
    }
}
