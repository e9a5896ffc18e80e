//! The reporter: sends the outbox to `POST /v1/ip/report`, oldest first, one at a time.
//!
//! Rules (from the issue and `wayscloud-api.md`): within `reports_per_minute` and
//! `reports_per_day` (counted from the store, so restarts do not reset them); a 429 holds
//! everything for its `Retry-After`; `X-RateLimit-Remaining: 0` holds until
//! `X-RateLimit-Reset`; 5xx, 408 and network errors back off exponentially with jitter
//! (capped at 15 minutes) and keep the report at the head; any other 4xx (422) marks that
//! report failed with the server's message and moves on; 401/403 pauses reporting until
//! the key changes (reload) or an hour passes. A report is marked sent only after a 2xx,
//! so a crash mid-request sends it again at the next start (at least once, in order).
//!
//! Time is a parameter: [`Reporter::step`] takes `now` and returns when to call it next,
//! so tests drive it through hours of virtual time without sleeping.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::FeedConfig;
use super::api::{Answer, Api, Call, RateInfo};
use crate::clock::Timestamp;
use crate::store::{Outbox, OutboxAccess, OutboxEntry, StoreError};

/// First backoff after a transient failure; it doubles per failure.
const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// Longest backoff (the contract's cap).
pub const BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);
/// After a 401/403, how long before trying the key again (a reload retries at once).
const PAUSE_RETRY: Duration = Duration::from_secs(3600);
/// The path reports go to.
pub const REPORT_PATH: &str = "/v1/ip/report";

/// When to call [`Reporter::step`] again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The outbox is empty: when a report is queued.
    Idle,
    /// At this time (a budget frees up, a hold or backoff ends).
    At(Timestamp),
}

/// The reporter's memory between steps (everything else is in the store).
#[derive(Debug, Default)]
pub struct Reporter {
    /// No request before this: `Retry-After`, a rate-limit reset or a backoff.
    hold_until: Option<Timestamp>,
    /// Transient failures in a row: the backoff exponent.
    failures: u32,
    /// Set by 401/403: the server's message and when to try again.
    paused: Option<(String, Timestamp)>,
    last_error: Option<(Timestamp, String)>,
    /// The last `X-RateLimit-*` headers seen.
    rate: Option<RateInfo>,
    sent: u64,
    failed: u64,
    dropped: u64,
}

/// The reporter's state, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReporterStatus {
    /// Why reporting is paused (401/403), if it is.
    pub paused: Option<String>,
    /// Sending is held (rate limit or backoff) until then.
    pub hold_until: Option<Timestamp>,
    pub last_error: Option<String>,
    pub last_error_at: Option<Timestamp>,
    /// The API's last rate-limit headers: the quota left.
    pub quota: Option<RateInfo>,
    /// Since the daemon started.
    pub sent: u64,
    pub failed: u64,
    pub dropped: u64,
}

impl Reporter {
    pub fn status(&self) -> ReporterStatus {
        ReporterStatus {
            paused: self.paused.as_ref().map(|(m, _)| m.clone()),
            hold_until: self.hold_until,
            last_error: self.last_error.as_ref().map(|(_, m)| m.clone()),
            last_error_at: self.last_error.as_ref().map(|(t, _)| *t),
            quota: self.rate,
            sent: self.sent,
            failed: self.failed,
            dropped: self.dropped,
        }
    }

    /// Forgets a 401/403 pause and any hold (the key or the config changed).
    pub fn resume(&mut self) {
        self.paused = None;
        self.hold_until = None;
        self.failures = 0;
    }

    /// Sends what the budgets and holds allow at `now`; returns when to come back.
    pub async fn step<S: OutboxAccess>(
        &mut self,
        store: &Arc<S>,
        api: &Api,
        cfg: &FeedConfig,
        now: Timestamp,
    ) -> Result<Next, StoreError> {
        loop {
            if let Some((_, until)) = &self.paused {
                if now < *until {
                    return Ok(Next::At(*until));
                }
                self.paused = None;
            }
            if let Some(until) = self.hold_until.filter(|t| now < *t) {
                return Ok(Next::At(until));
            }
            let (head, dropped, minute, day) = {
                let cutoff = Timestamp(now.0 - cfg.outbox_max_age.as_millis() as i64);
                blocking(store, move |s| {
                    let dropped = s.drop_older(cutoff, now)?;
                    let minute = s.sent_since(Timestamp(now.0 - 60_000))?;
                    let day = s.sent_since(Timestamp(now.0 - 86_400_000))?;
                    Ok((s.head()?, dropped, minute, day))
                })
                .await?
            };
            if dropped > 0 {
                self.dropped += dropped as u64;
                tracing::warn!(count = dropped, max_age = %crate::clock::human_duration(cfg.outbox_max_age),
                    "dropped reports that could not be sent in time");
            }
            let Some(entry) = head else { return Ok(Next::Idle) };
            if let Some(at) = budget_frees(minute, cfg.reports_per_minute, Duration::from_secs(60), now)
                .or_else(|| budget_frees(day, cfg.reports_per_day, Duration::from_secs(86_400), now))
            {
                return Ok(Next::At(at.max(Timestamp(now.0 + 1))));
            }
            self.send(store, api, entry, now).await?;
        }
    }

    /// Sends one report and records the outcome in the store and in `self`.
    async fn send<S: OutboxAccess>(
        &mut self,
        store: &Arc<S>,
        api: &Api,
        entry: OutboxEntry,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let id = entry.id;
        let Ok(body) = serde_json::from_str(&entry.payload) else {
            self.failed += 1;
            return blocking(store, move |s| s.failed(id, now, "unreadable payload in the outbox")).await;
        };
        let (answer, response) = api.exchange(&Call::post(REPORT_PATH, body)).await;
        if let Some(rate) = response.as_ref().map(|r| r.rate).filter(|r| *r != RateInfo::default()) {
            self.rate = Some(rate);
        }
        match answer {
            Answer::Ok => {
                self.failures = 0;
                self.sent += 1;
                tracing::debug!(ip = %entry.ip, category = %entry.category, "report sent");
                if let Some(rate) = self.rate.filter(|r| r.remaining == Some(0)) {
                    let reset = rate.reset.map(|s| Timestamp(s * 1000)).filter(|t| *t > now);
                    self.hold_until = Some(reset.unwrap_or(Timestamp(now.0 + 60_000)));
                }
                blocking(store, move |s| s.sent(id, now)).await
            }
            Answer::Rejected { message, .. } => {
                self.failed += 1;
                tracing::warn!(ip = %entry.ip, category = %entry.category, error = %message,
                    "the API rejected a report; it will not be retried");
                self.last_error = Some((now, message.clone()));
                blocking(store, move |s| s.failed(id, now, &message)).await
            }
            Answer::Unauthorized { message } => {
                tracing::error!(error = %message,
                    "the API refused the key; reporting is paused (fix the key, then `systemctl reload banshare`)");
                self.last_error = Some((now, message.clone()));
                self.paused = Some((message, Timestamp(now.0 + PAUSE_RETRY.as_millis() as i64)));
                Ok(())
            }
            Answer::RateLimited { retry_after } => {
                let wait = retry_after.unwrap_or_else(|| {
                    self.failures += 1;
                    backoff(self.failures)
                });
                let until = now.plus(wait);
                tracing::warn!(wait = %crate::clock::human_duration(wait), "the API says too many requests; holding reports");
                let message = format!("rate limited (HTTP 429); holding until {until}");
                self.hold(now, until, message, store, id).await
            }
            Answer::Unavailable { retry_after, message } => {
                self.failures += 1;
                let wait = backoff(self.failures).max(retry_after.unwrap_or_default()).min(BACKOFF_MAX);
                let until = now.plus(wait);
                tracing::warn!(error = %message, retry_in = %crate::clock::human_duration(wait), "reporting failed; will retry");
                self.hold(now, until, message, store, id).await
            }
        }
    }

    async fn hold<S: OutboxAccess>(
        &mut self,
        now: Timestamp,
        until: Timestamp,
        message: String,
        store: &Arc<S>,
        id: i64,
    ) -> Result<(), StoreError> {
        self.hold_until = Some(until);
        self.last_error = Some((now, message.clone()));
        blocking(store, move |s| s.retry(id, until, &message)).await
    }
}

/// When a budget of `limit` per `window` frees a slot, given (sent in the window, the
/// earliest of those); `None` while there is room.
fn budget_frees(used: (u32, Option<Timestamp>), limit: u32, window: Duration, now: Timestamp) -> Option<Timestamp> {
    let (count, earliest) = used;
    (count >= limit).then(|| earliest.unwrap_or(now).plus(window))
}

/// The wait after `failures` transient failures in a row: 2 s doubling, at most 15
/// minutes, jittered down by up to half (so many hosts do not retry in step).
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let full = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX);
    super::jitter(full, 0.5)
}

/// Runs an outbox operation on a blocking thread (the daemon's store lock can be held for
/// seconds by a large import; async workers must not wait on it in place).
pub(super) async fn blocking<S: OutboxAccess, T: Send + 'static>(
    store: &Arc<S>,
    f: impl FnOnce(&Outbox<'_>) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || store.with_outbox(f)).await.expect("outbox operation panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for n in 1..=30 {
            let full = BACKOFF_BASE.saturating_mul(1 << (n - 1).min(20)).min(BACKOFF_MAX);
            let b = backoff(n);
            assert!(b <= full && b >= full / 2, "failure {n}: {b:?} not within [{:?}, {full:?}]", full / 2);
        }
        assert!(backoff(40) <= BACKOFF_MAX);
    }

    #[test]
    fn budgets_free_a_window_after_the_earliest_sending() {
        let t = Timestamp(1_000_000);
        assert_eq!(budget_frees((9, Some(t)), 10, Duration::from_secs(60), t), None);
        assert_eq!(budget_frees((10, Some(t)), 10, Duration::from_secs(60), t), Some(Timestamp(1_060_000)));
    }
}
