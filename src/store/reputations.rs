//! The check service's provider answers: written behind its in-memory cache, read once
//! at start so a restart does not send every address to the providers again. Errors are
//! never stored (they are kept in memory for seconds only).

use rusqlite::params;

use super::{Result, Store};
use crate::check::providers::{Flag, Provider, Reputation};
use crate::clock::Timestamp;

/// One stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReputation {
    pub provider: Provider,
    pub ip: std::net::IpAddr,
    pub reputation: Reputation,
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
                let rep = &r.reputation;
                let flags = serde_json::to_string(&rep.flags).unwrap_or_else(|_| "[]".into());
                let notes = serde_json::to_string(&rep.notes).unwrap_or_else(|_| "[]".into());
                insert.execute(params![r.provider.name(), r.ip.to_string(), rep.score, flags, notes, r.fetched.0])?;
            }
            tx.execute("DELETE FROM reputations WHERE fetched_ms < ?1", params![forget_before.0])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The answers fetched at or after `since`. Rows this binary cannot read (a provider
    /// or flag it does not know) are skipped.
    pub fn load_reputations(&self, since: Timestamp) -> Result<Vec<StoredReputation>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT provider, ip, score, flags, notes, fetched_ms FROM reputations WHERE fetched_ms >= ?1",
        )?;
        let rows = stmt.query_map(params![since.0], |r| Ok(read_reputation(r)))?;
        let mut out = Vec::new();
        for row in rows {
            out.extend(row?);
        }
        Ok(out)
    }
}

/// One row, or `None` when this binary cannot read it.
fn read_reputation(r: &rusqlite::Row<'_>) -> Option<StoredReputation> {
    let text = |i: usize| r.get::<_, String>(i).ok();
    Some(StoredReputation {
        provider: Provider::from_name(&text(0)?)?,
        ip: text(1)?.parse().ok()?,
        reputation: Reputation {
            score: r.get::<_, i64>(2).ok().and_then(|s| u8::try_from(s).ok()).filter(|s| *s <= 100)?,
            flags: serde_json::from_str::<Vec<Flag>>(&text(3)?).ok()?,
            notes: serde_json::from_str::<Vec<String>>(&text(4)?).ok()?,
        },
        fetched: Timestamp(r.get(5).ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_survive_a_reopen_and_old_ones_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let row = |provider, ip: &str, score, fetched| StoredReputation {
            provider,
            ip: ip.parse().unwrap(),
            reputation: Reputation {
                score,
                flags: vec![Flag::Tor],
                notes: vec!["vpn: Nord VPN (confidence 80)".into()],
            },
            fetched: Timestamp(fetched),
        };
        {
            let mut store = Store::open(&path).unwrap();
            store
                .save_reputations(
                    &[
                        row(Provider::Ipasis, "203.0.113.7", 70, 1_000),
                        row(Provider::Wayscloud, "2001:db8::1", 20, 5_000),
                    ],
                    Timestamp(0),
                )
                .unwrap();
            // An older answer does not replace a newer one; the forget bound drops the first row.
            store.save_reputations(&[row(Provider::Wayscloud, "2001:db8::1", 99, 4_000)], Timestamp(2_000)).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.load_reputations(Timestamp(0)).unwrap(),
            vec![row(Provider::Wayscloud, "2001:db8::1", 20, 5_000)]
        );
        assert!(store.load_reputations(Timestamp(5_001)).unwrap().is_empty());
        // Rows this binary cannot read (a provider or flag from elsewhere, bad JSON) are skipped.
        store
            .conn
            .execute_batch(
                "INSERT INTO reputations VALUES ('shodan', '203.0.113.8', 50, '[]', '[]', 6000);
                 INSERT INTO reputations VALUES ('ipasis', '203.0.113.9', 50, '[\"psychic\"]', '[]', 6000);
                 INSERT INTO reputations VALUES ('ipasis', 'not-an-ip', 50, '[]', '[]', 6000);
                 INSERT INTO reputations VALUES ('ipasis', '203.0.113.10', 50, '[]', 'garbage', 6000);",
            )
            .unwrap();
        assert_eq!(store.load_reputations(Timestamp(0)).unwrap().len(), 1, "only the readable row");
    }
}
