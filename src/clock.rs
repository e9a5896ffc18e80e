//! Wall-clock timestamps.
//!
//! Decisions are stored and compared as unix milliseconds ([`Timestamp`]); on the wire and
//! on screen they are RFC 3339 (UTC). Expiry must survive restarts and reboots, so it is
//! wall-clock time, never `Instant`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in wall-clock time, in milliseconds since the unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z). Expiries are
    /// kept well before it (see [`crate::decision::MAX_BAN`]); shown times are clamped to it.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);

    /// The current wall-clock time.
    pub fn now() -> Self {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Timestamp(since.as_millis() as i64)
    }

    /// Milliseconds since the unix epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// This time plus `d`, saturating instead of overflowing.
    pub fn plus(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// This time minus `d`, saturating instead of overflowing.
    pub fn minus(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(ms))
    }

    /// Time from `self` until `later`, zero when `later` is not later.
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0).max(0) as u64)
    }

    /// As a `SystemTime` within what RFC 3339 can write (formatting never panics).
    fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.clamp(0, Timestamp::MAX.0) as u64)
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC, to the second (`2026-11-23T13:13:35Z`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_seconds(self.to_system_time()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = humantime::format_rfc3339_millis(self.to_system_time()).to_string();
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let t = humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)?;
        let ms =
            t.duration_since(UNIX_EPOCH).map_err(|_| serde::de::Error::custom("timestamp before 1970"))?.as_millis();
        Ok(Timestamp(ms as i64))
    }
}

/// A duration for people: `59m`, `1h 30m`, `2d 4h` (seconds dropped above an hour).
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let rounded = if secs >= 3600 { secs - secs % 60 } else { secs };
    humantime::format_duration(Duration::from_secs(rounded)).to_string()
}

/// Parses a duration as the config and CLI accept it: `90s`, `10m`, `1h`, `7d`,
/// `1h 30m`, or a bare number of seconds (fail2ban's convention).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_rfc3339() {
        let t = Timestamp(1_795_000_000_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-11-18T11:06:40.123Z\"");
        let back: Timestamp = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn times_past_year_9999_are_shown_clamped_not_panicking() {
        assert_eq!(Timestamp(i64::MAX).to_string(), "9999-12-31T23:59:59Z");
        assert_eq!(serde_json::to_string(&Timestamp(i64::MAX)).unwrap(), "\"9999-12-31T23:59:59.999Z\"");
        assert_eq!(Timestamp(i64::MIN).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("600").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("ten minutes").is_err());
        assert_eq!(human_duration(Duration::from_secs(3725)), "1h 2m");
    }
}
