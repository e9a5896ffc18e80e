//! Kernel timeouts: the one conversion from a decision's remaining time to what each
//! backend is told.
//!
//! Both backends give every element a kernel timeout as the expiry safety net, and both
//! have limits. nft 1.0.6 refuses any number of 100,000,000 or more in a time value
//! (`172799997ms` is "value too large", `2d` is fine) and treats `timeout 0s` as "the set's
//! default", which for banshare's sets is never; the kernel converts element timeouts to
//! jiffies, which older kernels kept in 32 bits of milliseconds (about 49.7 days). ipset
//! takes whole seconds up to 2,147,483 (about 24.8 days) and reads `timeout 0` as
//! permanent. So a decision that outlives its backend's maximum gets the maximum; the
//! daemon's hourly full reconcile writes every element again with its remaining time, so a
//! capped element is renewed weeks before the kernel would drop it.

use std::time::Duration;

use crate::clock::Timestamp;

/// The longest timeout banshare gives an nft element: within what nft parses and what
/// every kernel since 4.x keeps exactly.
pub const NFT_MAX: Duration = Duration::from_secs(30 * 24 * 3600);
/// ipset's largest timeout (its parser's limit), in seconds.
pub const IPSET_MAX_SECS: u64 = 2_147_483;
/// ipset's largest timeout as a duration.
pub const IPSET_MAX: Duration = Duration::from_secs(IPSET_MAX_SECS);

/// What the kernel is told about one element's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelTimeout {
    /// No timeout: a permanent decision.
    Permanent,
    /// This long (at least 1 ms, at most the backend's maximum).
    For(Duration),
    /// Nothing left: the element must not be written.
    Expired,
}

impl KernelTimeout {
    /// The timeout for a decision expiring at `expires` (`None`: permanent), written at
    /// `now` to a backend whose maximum is `max`.
    pub fn of(expires: Option<Timestamp>, now: Timestamp, max: Duration) -> KernelTimeout {
        match expires {
            None => KernelTimeout::Permanent,
            Some(at) => {
                let left = now.until(at);
                if left < Duration::from_millis(1) { KernelTimeout::Expired } else { KernelTimeout::For(left.min(max)) }
            }
        }
    }

    /// ` timeout 2d3h4m5s6ms` for nft, empty for a permanent element, `None` when expired.
    /// Each number stays far below nft's limit of 100,000,000.
    pub fn nft(self) -> Option<String> {
        match self {
            KernelTimeout::Permanent => Some(String::new()),
            KernelTimeout::For(d) => Some(format!(" timeout {}", nft_units(d))),
            KernelTimeout::Expired => None,
        }
    }

    /// The timeout in milliseconds for a netlink element (`Some(None)`: permanent, no
    /// timeout attribute), at least 1; `None` when expired.
    pub fn millis(self) -> Option<Option<u64>> {
        match self {
            KernelTimeout::Permanent => Some(None),
            KernelTimeout::For(d) => Some(Some((d.as_millis() as u64).max(1))),
            KernelTimeout::Expired => None,
        }
    }

    /// ipset's timeout in whole seconds, rounded up and capped (`0`: permanent); `None`
    /// when expired.
    pub fn ipset_secs(self) -> Option<u32> {
        match self {
            KernelTimeout::Permanent => Some(0),
            KernelTimeout::For(d) => Some((d.as_millis() as u64).div_ceil(1000).clamp(1, IPSET_MAX_SECS) as u32),
            KernelTimeout::Expired => None,
        }
    }

    /// `timeout N` for ipset in whole seconds, rounded up (never 0, which ipset reads as
    /// permanent) and capped; `timeout 0` for a permanent element; `None` when expired.
    pub fn ipset(self) -> Option<String> {
        self.ipset_secs().map(|secs| format!("timeout {secs}"))
    }
}

/// `d` in nft's unit form: `1d2h3m4s5ms`, units that are zero left out (`0` never
/// appears alone: a duration under 1 ms is written `1ms`).
pub fn nft_units(d: Duration) -> String {
    let ms = (d.as_millis() as u64).max(1);
    let parts = [
        (ms / 86_400_000, "d"),
        (ms / 3_600_000 % 24, "h"),
        (ms / 60_000 % 60, "m"),
        (ms / 1000 % 60, "s"),
        (ms % 1000, "ms"),
    ];
    parts.iter().filter(|(n, _)| *n > 0).map(|(n, unit)| format!("{n}{unit}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    #[test]
    fn nft_gets_unit_forms_it_parses() {
        assert_eq!(nft_units(Duration::from_secs(2 * DAY)), "2d");
        assert_eq!(nft_units(Duration::from_millis(172_799_997)), "1d23h59m59s997ms");
        assert_eq!(nft_units(Duration::from_secs(3600 + 61)), "1h1m1s");
        assert_eq!(nft_units(Duration::from_millis(1)), "1ms");
        assert_eq!(nft_units(Duration::ZERO), "1ms", "never 0, which nft reads as no timeout");
        // The largest number in any form stays below nft's 100,000,000.
        for secs in [1, 59, 3599, DAY - 1, 40 * DAY, 3650 * DAY, u32::MAX as u64] {
            let text = nft_units(Duration::from_secs(secs));
            let numbers = text.split(|c: char| c.is_ascii_alphabetic()).filter(|n| !n.is_empty());
            assert!(numbers.map(|n| n.parse::<u64>().unwrap()).all(|n| n < 100_000_000), "{text}");
        }
    }

    #[test]
    fn timeouts_are_capped_per_backend_and_never_zero() {
        let now = Timestamp(1_000_000);
        let in_secs = |s: i64| Some(Timestamp(now.0 + s * 1000));
        assert_eq!(KernelTimeout::of(None, now, NFT_MAX).nft().unwrap(), "");
        assert_eq!(KernelTimeout::of(in_secs(3600), now, NFT_MAX).nft().unwrap(), " timeout 1h");
        assert_eq!(KernelTimeout::of(in_secs(40 * DAY as i64), now, NFT_MAX).nft().unwrap(), " timeout 30d");
        assert_eq!(KernelTimeout::of(Some(Timestamp(i64::MAX)), now, NFT_MAX).nft().unwrap(), " timeout 30d");
        assert_eq!(KernelTimeout::of(Some(now), now, NFT_MAX), KernelTimeout::Expired);
        assert_eq!(KernelTimeout::of(Some(Timestamp(0)), now, NFT_MAX).nft(), None);
        assert_eq!(KernelTimeout::of(None, now, IPSET_MAX).ipset().unwrap(), "timeout 0");
        assert_eq!(KernelTimeout::of(Some(Timestamp(now.0 + 1)), now, IPSET_MAX).ipset().unwrap(), "timeout 1");
        assert_eq!(KernelTimeout::of(in_secs(1), now, IPSET_MAX).ipset().unwrap(), "timeout 1");
        assert_eq!(
            KernelTimeout::of(Some(Timestamp(now.0 + 1001)), now, IPSET_MAX).ipset().unwrap(),
            "timeout 2",
            "rounded up: the kernel never lets go before the store"
        );
        assert_eq!(KernelTimeout::of(in_secs(3650 * DAY as i64), now, IPSET_MAX).ipset().unwrap(), "timeout 2147483");
    }
}
