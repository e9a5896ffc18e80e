//! Recording bans in batches: one transaction, in address order, new decisions written
//! many rows per statement, and the live decisions a large batch may meet read in one
//! scan.
//!
//! Measured on 100,000 new decisions (`cargo bench --bench store_bulk`): one
//! `INSERT ... ON CONFLICT ... RETURNING` per row took 1.38 s, most of it in the
//! statement journal SQLite keeps for a statement with RETURNING (it runs it as a
//! trigger) and in the failed insert before every extension. Here a target is looked up
//! (a read), and a new one waits to be written with up to [`ROWS_PER_INSERT`] others in
//! one statement, which shares the statement's fixed cost (its cursors, the constraint
//! checks' setup) among them.

use std::collections::HashMap;

use ipnet::IpNet;
use rusqlite::{OptionalExtension, Statement, Transaction, params};

use super::{DECISION_COLUMNS, LiftReason, Result, Upsert, evidence_json, lift_in, outbox, range_keys, read_decision};
use crate::clock::Timestamp;
use crate::decision::{Decision, NewDecision, Source};

/// From this many proposals on, the live decisions of their sources are read in one
/// scan (when the batch is at least an eighth of them) instead of one lookup each.
const SCAN_FROM: usize = 4096;
/// Rows per multi-row `INSERT`.
const ROWS_PER_INSERT: usize = 128;
/// Columns each row binds.
const COLUMNS: usize = 12;

/// A target's first and last address, as the index keys them.
type RangeKeys = ([u8; 16], [u8; 16]);

/// Records `news` in `tx`, in address order (the index order); answers in their order.
/// `before_write` sees the answers after they are known and before anything is written
/// (the ledger starts the kernel's work there, so it runs beside the writes).
pub(super) fn upsert_all(
    tx: &Transaction,
    news: &[NewDecision],
    now: Timestamp,
    before_write: impl FnOnce(&[(Decision, Upsert)]),
) -> Result<Vec<(Decision, Upsert)>> {
    let mut order: Vec<(RangeKeys, usize)> = news.iter().enumerate().map(|(i, n)| (range_keys(&n.target), i)).collect();
    order.sort_unstable();
    let live = Live::for_batch(tx, news)?;
    let mut writes = Writes::new(tx)?;
    let mut out: Vec<Option<(Decision, Upsert)>> = vec![None; news.len()];
    // The batch's own decisions for the target at hand (the same target may come more
    // than once, from one source or several); address order keeps them together.
    let mut run: Vec<usize> = Vec::new();
    let mut run_key = None;
    for (key, i) in order {
        if run_key != Some(key) {
            run.clear();
            run_key = Some(key);
        }
        let new = &news[i];
        let earlier = run.iter().copied().find(|&j| news[j].source == new.source);
        let old = match earlier.and_then(|j| out[j].as_ref()) {
            Some((d, _)) => Some(d.clone()),
            None => live.get(tx, &new.target, new.source)?,
        };
        out[i] = Some(decide_one(&mut writes, old, new, i, now));
        run.retain(|&j| news[j].source != new.source);
        run.push(i);
    }
    let out: Vec<(Decision, Upsert)> = out.into_iter().map(|o| o.expect("every proposal was decided")).collect();
    before_write(&out);
    writes.apply(tx, &out, now)?;
    // Reports after their decisions (the outbox refers to them), in the batch's order.
    for (new, (d, _)) in news.iter().zip(&out) {
        if let Some(report) = &new.report {
            outbox::enqueue_in(tx, d.id, report, now)?;
        }
    }
    Ok(out)
}

/// One proposal over the live decision it meets, if any; what to write is noted in
/// `writes`.
fn decide_one(
    writes: &mut Writes,
    old: Option<Decision>,
    new: &NewDecision,
    index: usize,
    now: Timestamp,
) -> (Decision, Upsert) {
    // Every door refuses longer bans; the cap here keeps any expiry writable anyway.
    let expires = new.duration.map(|d| now.plus(d.min(crate::decision::MAX_BAN)));
    match old {
        Some(old) if old.is_active(now) => {
            let (d, upsert) = extend(old, new, expires);
            if upsert == Upsert::Extended {
                writes.update(d.id, index);
            }
            (d, upsert)
        }
        expired => {
            if let Some(old) = expired {
                // Expired but not yet lifted by the daemon: close it, start the new one.
                writes.expired.push(old);
            }
            (writes.create(new, index, expires, now), Upsert::Created)
        }
    }
}

/// Where a batch finds the live decision a proposal meets.
enum Live {
    /// Read up front: every live decision of the batch's sources.
    Scanned(HashMap<(IpNet, Source), Decision>),
    /// Looked up one by one.
    Lookup,
}

impl Live {
    fn for_batch(tx: &Transaction, news: &[NewDecision]) -> Result<Live> {
        if news.len() < SCAN_FROM {
            return Ok(Live::Lookup);
        }
        let mut sources: Vec<Source> = news.iter().map(|n| n.source).collect();
        sources.sort();
        sources.dedup();
        let mut live = HashMap::new();
        for source in sources {
            let count: i64 = tx.query_row(
                "SELECT count(*) FROM decisions WHERE lifted_ms IS NULL AND source = ?1",
                params![source.as_str()],
                |r| r.get(0),
            )?;
            if (news.len() as i64).saturating_mul(8) < count {
                return Ok(Live::Lookup);
            }
            let sql = format!("SELECT {DECISION_COLUMNS} FROM decisions WHERE lifted_ms IS NULL AND source = ?1");
            let mut stmt = tx.prepare(&sql)?;
            for row in stmt.query_map(params![source.as_str()], read_decision)? {
                let d = row??;
                live.insert((d.target, d.source), d);
            }
        }
        Ok(Live::Scanned(live))
    }

    /// The live decision of `source` for exactly `target`, as the batch found it.
    fn get(&self, tx: &Transaction, target: &IpNet, source: Source) -> Result<Option<Decision>> {
        match self {
            Live::Scanned(map) => Ok(map.get(&(*target, source)).cloned()),
            Live::Lookup => {
                let (start, end) = range_keys(target);
                let sql = format!(
                    "SELECT {DECISION_COLUMNS} FROM decisions
                     WHERE range_start = ?1 AND range_end = ?2 AND source = ?3 AND lifted_ms IS NULL"
                );
                let found = tx
                    .prepare_cached(&sql)?
                    .query_row(params![&start[..], &end[..], source.as_str()], read_decision)
                    .optional()?;
                Ok(found.transpose()?)
            }
        }
    }
}

/// What a batch writes once every answer is known: each decision it touches written
/// once, in its final state (the answer of the last proposal that touched it).
struct Writes {
    /// The id the next new decision gets: assigned here, the transaction being
    /// IMMEDIATE (no other writer runs).
    next_id: i64,
    first_id: i64,
    /// For each new decision (by id from `first_id`), the answer holding its final state.
    inserts: Vec<usize>,
    /// For each extended decision that was already stored, the same.
    updates: std::collections::BTreeMap<i64, usize>,
    /// Stored decisions found expired but not lifted: lifted before the inserts.
    expired: Vec<Decision>,
}

impl Writes {
    fn new(tx: &Transaction) -> Result<Writes> {
        let max: Option<i64> = tx.query_row("SELECT max(id) FROM decisions", [], |r| r.get(0))?;
        let next_id = max.unwrap_or(0) + 1;
        Ok(Writes { next_id, first_id: next_id, inserts: Vec::new(), updates: Default::default(), expired: Vec::new() })
    }

    fn create(&mut self, new: &NewDecision, index: usize, expires: Option<Timestamp>, now: Timestamp) -> Decision {
        let id = self.next_id;
        self.next_id += 1;
        self.inserts.push(index);
        Decision {
            id,
            target: new.target,
            source: new.source,
            reason: new.reason.clone(),
            category: new.category.clone(),
            score: new.score,
            created: now,
            expires,
            lifted: None,
            evidence: new.evidence.clone(),
            enforced: new.enforce,
        }
    }

    /// Decision `id` now stands as the answer at `index`.
    fn update(&mut self, id: i64, index: usize) {
        match usize::try_from(id - self.first_id).ok().and_then(|at| self.inserts.get_mut(at)) {
            Some(insert) => *insert = index, // created in this batch: inserted as extended
            None => {
                self.updates.insert(id, index);
            }
        }
    }

    fn apply(self, tx: &Transaction, out: &[(Decision, Upsert)], now: Timestamp) -> Result<()> {
        lift_in(tx, self.expired, LiftReason::Expired, now)?;
        for chunk in self.inserts.chunks(ROWS_PER_INSERT) {
            // Full chunks share one cached statement; the last, shorter one is prepared once.
            let sql = insert_sql(chunk.len());
            let mut cached;
            let mut once;
            let stmt: &mut Statement = if chunk.len() == ROWS_PER_INSERT {
                cached = tx.prepare_cached(&sql)?;
                &mut cached
            } else {
                once = tx.prepare(&sql)?;
                &mut once
            };
            for (row, &i) in chunk.iter().enumerate() {
                bind_row(stmt, row * COLUMNS, &out[i].0)?;
            }
            stmt.raw_execute()?;
        }
        let mut update = tx.prepare_cached(
            "UPDATE decisions SET expires_ms = ?2, reason = ?3, category = ?4, score = ?5, evidence = ?6,
             enforced = ?7 WHERE id = ?1",
        )?;
        for &i in self.updates.values() {
            let d = &out[i].0;
            update.execute(params![
                d.id,
                d.expires.map(|t| t.0),
                d.reason,
                d.category,
                d.score,
                evidence_json(&d.evidence),
                d.enforced
            ])?;
        }
        Ok(())
    }
}

fn insert_sql(rows: usize) -> String {
    let one = format!("({})", ["?"; COLUMNS].join(","));
    format!(
        "INSERT INTO decisions (id, target, range_start, range_end, source, reason, category, score, created_ms,
         expires_ms, evidence, enforced) VALUES {}",
        vec![one; rows].join(",")
    )
}

fn bind_row(stmt: &mut Statement, at: usize, d: &Decision) -> Result<()> {
    let (start, end) = range_keys(&d.target);
    stmt.raw_bind_parameter(at + 1, d.id)?;
    stmt.raw_bind_parameter(at + 2, d.target.to_string())?;
    stmt.raw_bind_parameter(at + 3, &start[..])?;
    stmt.raw_bind_parameter(at + 4, &end[..])?;
    stmt.raw_bind_parameter(at + 5, d.source.as_str())?;
    stmt.raw_bind_parameter(at + 6, &d.reason)?;
    stmt.raw_bind_parameter(at + 7, &d.category)?;
    stmt.raw_bind_parameter(at + 8, d.score)?;
    stmt.raw_bind_parameter(at + 9, d.created.0)?;
    stmt.raw_bind_parameter(at + 10, d.expires.map(|t| t.0))?;
    stmt.raw_bind_parameter(at + 11, evidence_json(&d.evidence))?;
    stmt.raw_bind_parameter(at + 12, d.enforced)?;
    Ok(())
}

/// `new` over the live decision `old`: the later expiry wins (permanent beats any), and
/// enforcement only ever switches on. (A report is queued even when the block stays as
/// it was: another filter or jail saw another kind of attack; the cooldown keeps
/// repeats out.)
fn extend(old: Decision, new: &NewDecision, expires: Option<Timestamp>) -> (Decision, Upsert) {
    let later = match (old.expires, expires) {
        (None, _) | (_, None) => None,
        (Some(a), Some(b)) => Some(a.max(b)),
    };
    let enforced = old.enforced || new.enforce;
    if later == old.expires && enforced == old.enforced {
        return (old, Upsert::Unchanged);
    }
    let updated = Decision {
        expires: later,
        reason: new.reason.clone(),
        category: new.category.clone().or(old.category),
        score: new.score.or(old.score),
        evidence: if new.evidence.is_empty() { old.evidence } else { new.evidence.clone() },
        enforced,
        ..old
    };
    (updated, Upsert::Extended)
}
