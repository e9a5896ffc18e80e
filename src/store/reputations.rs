//! The check service's provider answers: written behind its in-memory cache, read once
//! at start so a restart does not send every address to the providers again. Errors are
//! never stored (they are kept in memory for seconds only).

use rusqlite::params;

use super::{Result, Store};
use crate::clock::Timestamp;

/// One stored answer, as text: the check service writes and reads it
/// (`crate::check::providers` converts), so the store needs no provider types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReputation {
    /// The provider's name (`wayscloud`, `ipasis`, ...).
    pub provider: String,
    pub ip: String,
    pub score: i64,
    /// JSON arrays.
    pub flags: String,
    pub notes: String,
    pub fetched: Timestamp,
}

impl Store {
    /// Saves answers (newer ones replace older ones) and forgets those fetched before
    /// `forget_before`, in one transaction.
    pub fn save_reputations(&mut self, rows: &[StoredReputation], forget_before: Timestamp) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO reputations (provider, ip, score, flags, notes, fetched_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (provider, ip) DO UPDATE SET score = excluded.score, flags = excluded.flags,
                   notes = excluded.notes, fetched_ms = excluded.fetched_ms
                 WHERE excluded.fetched_ms >= reputations.fetched_ms",
            )?;
            for r in rows {
                insert.execute(params![r.provider, r.ip, r.score, r.flags, r.notes, r.fetched.0])?;
            }
            tx.execute("DELETE FROM reputations WHERE fetched_ms < ?1", params![forget_before.0])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The answers fetched at or after `since`, as stored (rows whose columns have the
    /// wrong SQL type are skipped; the check service skips what it cannot read).
    pub fn load_reputations(&self, since: Timestamp) -> Result<Vec<StoredReputation>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT provider, ip, score, flags, notes, fetched_ms FROM reputations WHERE fetched_ms >= ?1",
        )?;
        let rows = stmt.query_map(params![since.0], |r| {
            Ok((|| {
                Some(StoredReputation {
                    provider: r.get(0).ok()?,
                    ip: r.get(1).ok()?,
                    score: r.get(2).ok()?,
                    flags: r.get(3).ok()?,
                    notes: r.get(4).ok()?,
                    fetched: Timestamp(r.get(5).ok()?),
                })
            })())
        })?;
        let mut out = Vec::new();
        for row in rows {
            out.extend(row?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_survive_a_reopen_and_old_ones_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let row = |provider: &str, ip: &str, score, fetched| StoredReputation {
            provider: provider.into(),
            ip: ip.into(),
            score,
            flags: r#"["tor"]"#.into(),
            notes: r#"["vpn: Nord VPN (confidence 80)"]"#.into(),
            fetched: Timestamp(fetched),
        };
        {
            let mut store = Store::open(&path).unwrap();
            store
                .save_reputations(
                    &[row("ipasis", "203.0.113.7", 70, 1_000), row("wayscloud", "2001:db8::1", 20, 5_000)],
                    Timestamp(0),
                )
                .unwrap();
            // An older answer does not replace a newer one; the forget bound drops the first row.
            store.save_reputations(&[row("wayscloud", "2001:db8::1", 99, 4_000)], Timestamp(2_000)).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.load_reputations(Timestamp(0)).unwrap(), vec![row("wayscloud", "2001:db8::1", 20, 5_000)]);
        assert!(store.load_reputations(Timestamp(5_001)).unwrap().is_empty());
        // A row whose columns have the wrong type is skipped.
        store
            .conn
            .execute_batch("INSERT INTO reputations VALUES ('ipasis', '203.0.113.9', 'x', X'00', '[]', 6000);")
            .unwrap();
        assert_eq!(store.load_reputations(Timestamp(0)).unwrap().len(), 1, "only the readable row");
    }
}
