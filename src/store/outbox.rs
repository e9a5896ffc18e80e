//! The report outbox: reports queued with their decisions (same transaction), sent in
//! order by the feed's reporter, marked sent, failed (rejected by the API) or dropped
//! (too old). Also the lookup cache of `banshare check`.

use rusqlite::{OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use super::{Result, Store};
use crate::clock::Timestamp;
use crate::decision::ReportDraft;

/// A queued report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: i64,
    pub ip: String,
    pub category: String,
    pub payload: String,
    pub created: Timestamp,
    pub attempts: u32,
}

/// Counts for `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStats {
    /// Waiting to be sent.
    pub pending: u64,
    /// Sent, failed (rejected) and dropped (too old) in the last 24 hours.
    pub sent_24h: u64,
    pub failed_24h: u64,
    pub dropped_24h: u64,
    /// The oldest waiting report, if any.
    pub oldest_pending: Option<Timestamp>,
}

/// Queues `report` for decision `decision_id`, unless the same (address, category) was
/// queued within the report's cooldown. Returns whether it was queued.
pub(super) fn enqueue_in(tx: &Transaction, decision_id: i64, report: &ReportDraft, now: Timestamp) -> Result<bool> {
    let ip = report.ip.to_string();
    let since = now.0.saturating_sub(report.cooldown.as_millis() as i64);
    let recent: Option<i64> = tx
        .prepare_cached("SELECT id FROM outbox WHERE ip = ?1 AND category = ?2 AND created_ms > ?3 LIMIT 1")?
        .query_row(params![ip, report.category, since], |r| r.get(0))
        .optional()?;
    if recent.is_some() {
        return Ok(false);
    }
    tx.prepare_cached(
        "INSERT INTO outbox (decision_id, ip, category, payload, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![decision_id, ip, report.category, report.payload, now.0])?;
    Ok(true)
}

impl Store {
    /// The first waiting report (the outbox is sent in order).
    pub fn outbox_head(&self) -> Result<Option<OutboxEntry>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, ip, category, payload, created_ms, attempts FROM outbox
                 WHERE sent_ms IS NULL AND failed_ms IS NULL AND dropped_ms IS NULL ORDER BY id LIMIT 1",
            )?
            .query_row([], |r| {
                Ok(OutboxEntry {
                    id: r.get(0)?,
                    ip: r.get(1)?,
                    category: r.get(2)?,
                    payload: r.get(3)?,
                    created: Timestamp(r.get(4)?),
                    attempts: r.get(5)?,
                })
            })
            .optional()?)
    }

    /// Drops waiting reports queued before `before`. Returns how many.
    pub fn outbox_drop_older(&self, before: Timestamp, now: Timestamp) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE outbox SET dropped_ms = ?2, last_error = 'not sent in time; dropped'
             WHERE sent_ms IS NULL AND failed_ms IS NULL AND dropped_ms IS NULL AND created_ms < ?1",
            params![before.0, now.0],
        )?)
    }

    pub fn outbox_sent(&self, id: i64, now: Timestamp) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET sent_ms = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1",
            params![id, now.0],
        )?;
        Ok(())
    }

    /// The API rejected the report (a 4xx other than 408/429): never retried.
    pub fn outbox_failed(&self, id: i64, now: Timestamp, message: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET failed_ms = ?2, attempts = attempts + 1, last_error = ?3 WHERE id = ?1",
            params![id, now.0, message],
        )?;
        Ok(())
    }

    /// A try that will be repeated (server error, network, rate limit).
    pub fn outbox_retry(&self, id: i64, next_try: Timestamp, message: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_try_ms = ?2, last_error = ?3 WHERE id = ?1",
            params![id, next_try.0, message],
        )?;
        Ok(())
    }

    /// How many reports were sent since `since`, and the earliest of those sendings.
    pub fn outbox_sent_since(&self, since: Timestamp) -> Result<(u32, Option<Timestamp>)> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*), MIN(sent_ms) FROM outbox WHERE sent_ms > ?1")?
            .query_row(params![since.0], |r| {
                Ok((r.get::<_, i64>(0)? as u32, r.get::<_, Option<i64>>(1)?.map(Timestamp)))
            })?)
    }

    pub fn outbox_stats(&self, now: Timestamp) -> Result<OutboxStats> {
        let day = now.0 - 24 * 3600 * 1000;
        let count = |sql: &str| -> Result<u64> {
            Ok(self.conn.prepare_cached(sql)?.query_row(params![day], |r| r.get::<_, i64>(0))? as u64)
        };
        let (pending, oldest): (i64, Option<i64>) = self.conn.query_row(
            "SELECT COUNT(*), MIN(created_ms) FROM outbox WHERE sent_ms IS NULL AND failed_ms IS NULL AND dropped_ms IS NULL",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(OutboxStats {
            pending: pending as u64,
            sent_24h: count("SELECT COUNT(*) FROM outbox WHERE sent_ms > ?1")?,
            failed_24h: count("SELECT COUNT(*) FROM outbox WHERE failed_ms > ?1")?,
            dropped_24h: count("SELECT COUNT(*) FROM outbox WHERE dropped_ms > ?1")?,
            oldest_pending: oldest.map(Timestamp),
        })
    }

    /// A cached lookup of `ip` fetched after `since`: the body and when it was fetched.
    pub fn lookup_get(&self, ip: &str, since: Timestamp) -> Result<Option<(String, Timestamp)>> {
        Ok(self
            .conn
            .prepare_cached("SELECT body, fetched_ms FROM lookups WHERE ip = ?1 AND fetched_ms > ?2")?
            .query_row(params![ip, since.0], |r| Ok((r.get(0)?, Timestamp(r.get(1)?))))
            .optional()?)
    }

    pub fn lookup_put(&self, ip: &str, body: &str, now: Timestamp) -> Result<()> {
        self.conn.execute(
            "INSERT INTO lookups (ip, body, fetched_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (ip) DO UPDATE SET body = excluded.body, fetched_ms = excluded.fetched_ms",
            params![ip, body, now.0],
        )?;
        Ok(())
    }
}

/// The outbox's operations on a borrowed store (see [`super::OutboxAccess`]).
pub struct Outbox<'a>(pub &'a Store);

impl Outbox<'_> {
    pub fn head(&self) -> Result<Option<OutboxEntry>> {
        self.0.outbox_head()
    }
    pub fn drop_older(&self, before: Timestamp, now: Timestamp) -> Result<usize> {
        self.0.outbox_drop_older(before, now)
    }
    pub fn sent(&self, id: i64, now: Timestamp) -> Result<()> {
        self.0.outbox_sent(id, now)
    }
    pub fn failed(&self, id: i64, now: Timestamp, message: &str) -> Result<()> {
        self.0.outbox_failed(id, now, message)
    }
    pub fn retry(&self, id: i64, next_try: Timestamp, message: &str) -> Result<()> {
        self.0.outbox_retry(id, next_try, message)
    }
    pub fn sent_since(&self, since: Timestamp) -> Result<(u32, Option<Timestamp>)> {
        self.0.outbox_sent_since(since)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::decision::{NewDecision, Source, parse_target};

    fn ban(ip: &str, category: &str) -> NewDecision {
        NewDecision {
            target: parse_target(ip).unwrap(),
            source: Source::Detect,
            reason: "test".into(),
            category: Some(category.into()),
            score: None,
            duration: Some(Duration::from_secs(60)),
            evidence: Vec::new(),
            report: Some(ReportDraft {
                ip: ip.parse().unwrap(),
                category: category.into(),
                payload: format!(r#"{{"ip":"{ip}","category":"{category}"}}"#),
                cooldown: Duration::from_secs(900),
            }),
            enforce: true,
        }
    }

    #[test]
    fn one_report_per_address_and_category_per_cooldown() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        let t0 = Timestamp(10_000_000);
        store.upsert_decisions(&[ban("45.155.205.7", "ssh_bruteforce")], t0).unwrap();
        // Lifted and banned again within the cooldown: a new decision, no new report.
        let d = store.active(None, t0).unwrap();
        store.lift(d, super::super::LiftReason::Unban, t0).unwrap();
        store.upsert_decisions(&[ban("45.155.205.7", "ssh_bruteforce")], Timestamp(t0.0 + 60_000)).unwrap();
        // Another category is another report.
        store.upsert_decisions(&[ban("45.155.205.7", "web_attack")], Timestamp(t0.0 + 60_000)).unwrap();
        assert_eq!(store.outbox_stats(t0).unwrap().pending, 2);
        // After the cooldown, the same pair is reported again.
        let later = Timestamp(t0.0 + 901_000);
        let d = store.active(None, later).unwrap();
        store.lift(d, super::super::LiftReason::Unban, later).unwrap();
        store.upsert_decisions(&[ban("45.155.205.7", "ssh_bruteforce")], later).unwrap();
        assert_eq!(store.outbox_stats(later).unwrap().pending, 3);

        let head = store.outbox_head().unwrap().unwrap();
        assert_eq!((head.ip.as_str(), head.category.as_str()), ("45.155.205.7", "ssh_bruteforce"));
        store.outbox_sent(head.id, later).unwrap();
        assert_eq!(store.outbox_sent_since(Timestamp(later.0 - 1)).unwrap(), (1, Some(later)));
        let next = store.outbox_head().unwrap().unwrap();
        assert_eq!(next.category, "web_attack");
        store.outbox_failed(next.id, later, "HTTP 422: bad").unwrap();
        assert_eq!(store.outbox_drop_older(Timestamp(later.0 + 1), later).unwrap(), 1);
        let stats = store.outbox_stats(later).unwrap();
        assert_eq!((stats.pending, stats.sent_24h, stats.failed_24h, stats.dropped_24h), (0, 1, 1, 1));
    }
}
