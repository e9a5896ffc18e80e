//! The SQLite store: the truth about what is blocked.
//!
//! One file (`state.db` in the state directory) in WAL mode with a busy timeout, so the
//! CLI can read (and the fail2ban hook can write) while the daemon runs. The daemon is the
//! one regular writer; it commits a decision before it acknowledges it or touches the
//! firewall, so a crash never loses an acknowledged ban. Schema changes are append-only
//! migrations (`schema::MIGRATIONS`); a database from a newer banshare is refused.
//!
//! Neighbours: the [`crate::ledger`] owns the daemon's store (decisions change only
//! through it; the reporter gets only the outbox, [`OutboxAccess`]); [`crate::decision`]
//! defines what is stored.

mod outbox;
mod reputations;
mod schema;
mod upsert;

pub use outbox::{Outbox, OutboxEntry, OutboxStats};
pub use reputations::StoredReputation;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::clock::Timestamp;
use crate::decision::{Decision, NewDecision, Source};

/// How long a writer waits for another (the CLI, the fail2ban hook) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = schema::MIGRATIONS.len() as i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: cannot open the state database: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "{path}: the state database has schema version {found}, but this banshare only knows \
         versions up to {supported}; it was written by a newer banshare (upgrade banshare, or \
         move the file away to start from an empty state)"
    )]
    TooNew { path: PathBuf, found: i64, supported: i64 },
    #[error("{path}: migrating the state database to schema version {version} failed: {source}")]
    Migrate {
        path: PathBuf,
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "{path}: the state database is damaged (integrity check: {detail}). banshare will not \
         run on it: the blocks it holds cannot be trusted. Stop banshare, keep the file \
         (mv {path} {path}.damaged), then restore a backup to {path}, or recover what SQLite \
         can (sqlite3 {path}.damaged .recover | sqlite3 {path}); or start with an empty state \
         with `banshare run --new-state`"
    )]
    Damaged { path: PathBuf, detail: String },
    #[error(
        "{path}: the state database is empty, but this state directory held one (created {created}, \
         see {marker}): its contents were lost (deleted, truncated or replaced). banshare will not \
         start from nothing and lift every block in the kernel. Restore the database from a \
         backup, or, to start afresh on purpose, run `banshare run --new-state` once \
         (or set BANSHARE_NEW_STATE=1)"
    )]
    Lost { path: PathBuf, marker: PathBuf, created: String },
    /// A file of the state directory could not be read, written or made private.
    #[error("{path}: {source}")]
    StateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database: decision {id} has an unreadable {field}: {value:?}")]
    Corrupt { id: i64, field: &'static str, value: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a ban did to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Upsert {
    /// A new decision.
    Created,
    /// An existing decision for the same target and source now lasts longer.
    Extended,
    /// An existing decision already lasted at least as long.
    Unchanged,
}

/// Why a decision was lifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiftReason {
    Expired,
    Unban,
    Allowlisted,
    /// fail2ban unbanned it (not the operator: the feed may list it again).
    Fail2ban,
    /// The community feed stopped listing it (for `feed.lift_after_pulls` pulls).
    Delisted,
}

impl LiftReason {
    fn as_str(self) -> &'static str {
        match self {
            LiftReason::Expired => "expired",
            LiftReason::Unban => "unban",
            LiftReason::Allowlisted => "allowlisted",
            LiftReason::Fail2ban => "fail2ban",
            LiftReason::Delisted => "delisted",
        }
    }
}

const DECISION_COLUMNS: &str =
    "id, target, source, reason, category, score, created_ms, expires_ms, lifted_ms, evidence, enforced";

// Lookups by address: one arm per partial index (`decisions_live`, `decisions_past`).

fn covering_sql() -> String {
    format!(
        "SELECT {DECISION_COLUMNS} FROM decisions
         WHERE range_start <= ?1 AND range_end >= ?1 AND lifted_ms IS NULL
         UNION ALL
         SELECT {DECISION_COLUMNS} FROM decisions
         WHERE range_start <= ?1 AND range_end >= ?1 AND lifted_ms IS NOT NULL
         ORDER BY created_ms DESC, id DESC"
    )
}

const LAST_CATEGORY_SQL: &str = "SELECT category, created_ms, id FROM decisions
     WHERE range_start = ?1 AND range_end = ?2 AND lifted_ms IS NULL AND category IS NOT NULL AND category != 'other'
     UNION ALL
     SELECT category, created_ms, id FROM decisions
     WHERE range_start = ?1 AND range_end = ?2 AND lifted_ms IS NOT NULL AND category IS NOT NULL AND category != 'other'
     ORDER BY created_ms DESC, id DESC LIMIT 1";

const EARLIER_DETECTIONS_SQL: &str = "SELECT
     (SELECT COUNT(*) FROM decisions WHERE range_start = ?1 AND range_end = ?2 AND source = 'detect' AND lifted_ms IS NULL)
   + (SELECT COUNT(*) FROM decisions WHERE range_start = ?1 AND range_end = ?2 AND source = 'detect' AND lifted_ms IS NOT NULL)";

/// Lends the report outbox for a moment (the daemon's ledger under its lock or, in
/// tests, a plain mutex): the one part of the store the reporter may use.
pub trait OutboxAccess: Send + Sync + 'static {
    fn with_outbox<T>(&self, f: impl FnOnce(&Outbox<'_>) -> T) -> T;
}

impl OutboxAccess for std::sync::Mutex<Store> {
    fn with_outbox<T>(&self, f: impl FnOnce(&Outbox<'_>) -> T) -> T {
        f(&Outbox(&self.lock().unwrap_or_else(|e| e.into_inner())))
    }
}

/// An open state database.
pub struct Store {
    conn: Connection,
}

/// A connection to `path` with the busy timeout every writer needs.
fn connect(path: &Path) -> Result<Connection> {
    static CONFIGURE: std::sync::Once = std::sync::Once::new();
    CONFIGURE.call_once(|| {
        // SQLite keeps memory statistics under a global mutex on every allocation;
        // banshare never reads them (measured: 100,000 new decisions 385 ms -> 360 ms).
        // Only valid before SQLite initializes, so before the first connection; later
        // it is refused and changes nothing.
        // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int argument.
        unsafe { rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int) };
    });
    let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    Ok(conn)
}

/// Beside `state.db`: written when a state directory first gets its database, so that a
/// database that later turns up empty is known to have lost its contents.
pub const MARKER: &str = "state.created";

/// Makes `dir` private, whatever the umask: created 0700 if missing, tightened to 0700
/// if looser, and every regular file in it (the database, its WAL, the lock, the
/// marker, the dry-run log) tightened to 0600. The evidence in the database holds
/// attempted usernames that the system's own logs protect. Returns what it tightened.
pub fn secure_state_dir(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |path: &Path, source| StoreError::StateFile { path: path.to_path_buf(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| err(dir, e))?;
    let mut tightened = Vec::new();
    let mut tighten = |path: &Path, mode: u32| -> Result<(), StoreError> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| err(path, e))?;
        if meta.permissions().mode() & 0o777 & !mode != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| err(path, e))?;
            tightened.push(path.to_path_buf());
        }
        Ok(())
    };
    tighten(dir, 0o700)?;
    for entry in std::fs::read_dir(dir).map_err(|e| err(dir, e))? {
        let entry = entry.map_err(|e| err(dir, e))?;
        if entry.file_type().map_err(|e| err(&entry.path(), e))?.is_file() {
            tighten(&entry.path(), 0o600)?;
        }
    }
    Ok(tightened)
}

/// How [`Store::open_checked`] treats a state directory whose database is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Empty {
    /// Refuse when the directory held a database before ([`StoreError::Lost`]).
    Refuse,
    /// The operator starts afresh on purpose (`banshare run --new-state`).
    Accept,
}

impl Store {
    /// Opens the database at `path` for a process that will act on it (the daemon, the
    /// fail2ban hook's offline path): checks its integrity (`PRAGMA quick_check`) and
    /// refuses an empty database in a state directory that held one, then brings the
    /// schema up to date and marks the directory.
    pub fn open_checked(path: &Path, empty: Empty) -> Result<Store> {
        let conn = connect(path)?;
        let detail: String =
            conn.query_row("PRAGMA quick_check(5)", [], |r| r.get(0)).unwrap_or_else(|e| e.to_string());
        if detail != "ok" {
            return Err(StoreError::Damaged { path: path.to_path_buf(), detail: detail.replace('\n', "; ") });
        }
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
        let marker = path.with_file_name(MARKER);
        if version == 0 && empty == Empty::Refuse && marker.exists() {
            let created = std::fs::read_to_string(&marker).unwrap_or_default().trim().to_string();
            return Err(StoreError::Lost { path: path.to_path_buf(), marker, created });
        }
        let store = Store::prepare(conn, path)?;
        if version == 0 || !marker.exists() {
            let text = format!("{}\n", Timestamp::now());
            std::fs::write(&marker, text).map_err(|source| StoreError::StateFile { path: marker.clone(), source })?;
        }
        Ok(store)
    }

    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        Store::prepare(connect(path)?, path)
    }

    /// The store over `conn`: WAL, durability settings, the schema brought up to date.
    fn prepare(conn: Connection, path: &Path) -> Result<Store> {
        let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
        // WAL: readers never block the writer. synchronous=NORMAL in WAL mode keeps every
        // committed transaction across a process crash (kill -9); only a power loss can
        // take the last few, and never corrupts the file.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        let mut store = Store { conn };
        store.migrate(path)?;
        Ok(store)
    }

    fn migrate(&mut self, path: &Path) -> Result<()> {
        let found: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew { path: path.to_path_buf(), found, supported: SCHEMA_VERSION });
        }
        for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = i as i64 + 1;
            let migrate_err = |source| StoreError::Migrate { path: path.to_path_buf(), version, source };
            let tx = self.conn.transaction().map_err(migrate_err)?;
            tx.execute_batch(sql).map_err(migrate_err)?;
            tx.pragma_update(None, "user_version", version).map_err(migrate_err)?;
            tx.commit().map_err(migrate_err)?;
        }
        Ok(())
    }

    /// For the daemon's long-lived connection: no checkpoint inside commits (it doubles
    /// the cost of a large batch: an import of 100,000 would copy its whole WAL into the
    /// database before answering). The daemon calls [`Store::checkpoint`] periodically
    /// instead. Committed data is as safe in the WAL as in the database file.
    pub fn defer_checkpoints(&self) -> Result<()> {
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        self.conn.pragma_update(None, "journal_size_limit", 16 << 20)?;
        Ok(())
    }

    /// Copies the WAL into the database where no reader needs it (never blocks writers).
    pub fn checkpoint(&self) -> Result<()> {
        self.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Records one ban (see [`Store::upsert_decisions`]).
    pub fn upsert_decision(&mut self, new: &NewDecision, now: Timestamp) -> Result<(Decision, Upsert)> {
        let mut out = self.upsert_decisions(std::slice::from_ref(new), now)?;
        Ok(out.remove(0))
    }

    /// Records bans in one transaction. A target that already has a live decision from the
    /// same source is extended (the later expiry wins; permanent beats any expiry), so a
    /// repeated ban never shortens a block.
    pub fn upsert_decisions(&mut self, news: &[NewDecision], now: Timestamp) -> Result<Vec<(Decision, Upsert)>> {
        // IMMEDIATE: the batch reads what it then writes (the fail2ban hook's offline
        // path may write from another process).
        self.upsert_decisions_then(news, now, |_| {})
    }

    /// [`Store::upsert_decisions`], calling `before_write` with the answers once they are
    /// known and before anything is written: a caller can start work that depends on
    /// them (the kernel's) while the writes and the commit run. Nothing is committed when
    /// this returns an error.
    pub fn upsert_decisions_then(
        &mut self,
        news: &[NewDecision],
        now: Timestamp,
        before_write: impl FnOnce(&[(Decision, Upsert)]),
    ) -> Result<Vec<(Decision, Upsert)>> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = upsert::upsert_all(&tx, news, now, before_write)?;
        tx.commit()?;
        Ok(out)
    }

    /// Decisions in force at `now`, optionally of one source, oldest first.
    pub fn active(&self, source: Option<Source>, now: Timestamp) -> Result<Vec<Decision>> {
        let sql = format!(
            "SELECT {DECISION_COLUMNS} FROM decisions
             WHERE lifted_ms IS NULL AND (expires_ms IS NULL OR expires_ms > ?1)
               AND (?2 IS NULL OR source = ?2)
             ORDER BY id"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![now.0, source.map(Source::as_str)], read_decision)?;
        collect(rows)
    }

    /// Decisions whose target contains `ip`: those in force, then up to `history` lifted
    /// or expired ones, most recent first.
    pub fn covering(&self, ip: IpAddr, now: Timestamp, history: usize) -> Result<(Vec<Decision>, Vec<Decision>)> {
        let key = range_key(ip).to_vec();
        let mut stmt = self.conn.prepare_cached(&covering_sql())?;
        let all = collect(stmt.query_map(params![key], read_decision)?)?;
        // The keys put IPv4 in the IPv4-mapped range: an IPv6 network around that range
        // (`::fffe:0:0/95`) matches the key but never an IPv4 packet.
        let ip = crate::decision::normalize(IpNet::from(ip)).addr();
        let all: Vec<Decision> = all.into_iter().filter(|d| d.target.contains(&ip)).collect();
        let (mut active, past): (Vec<_>, Vec<_>) = all.into_iter().partition(|d| d.is_active(now));
        active.reverse();
        Ok((active, past.into_iter().take(history).collect()))
    }

    /// Lifts every live decision for exactly `target` (any source). Returns them.
    pub fn lift_target(&mut self, target: &IpNet, reason: LiftReason, now: Timestamp) -> Result<Vec<Decision>> {
        let sql = format!(
            "SELECT {DECISION_COLUMNS} FROM decisions WHERE range_start = ?1 AND range_end = ?2 AND lifted_ms IS NULL"
        );
        let (start, end) = range_keys(target);
        let tx = self.conn.transaction()?;
        let live = collect(tx.prepare_cached(&sql)?.query_map(params![&start[..], &end[..]], read_decision)?)?;
        let lifted = lift_in(&tx, live, reason, now)?;
        tx.commit()?;
        Ok(lifted)
    }

    /// Lifts the live decision of one source for exactly `target`. Returns it, if any.
    pub fn lift_source(
        &mut self,
        target: &IpNet,
        source: Source,
        reason: LiftReason,
        now: Timestamp,
    ) -> Result<Vec<Decision>> {
        let sql = format!(
            "SELECT {DECISION_COLUMNS} FROM decisions
             WHERE range_start = ?1 AND range_end = ?2 AND source = ?3 AND lifted_ms IS NULL"
        );
        let (start, end) = range_keys(target);
        let tx = self.conn.transaction()?;
        let live = collect(
            tx.prepare_cached(&sql)?.query_map(params![&start[..], &end[..], source.as_str()], read_decision)?,
        )?;
        let lifted = lift_in(&tx, live, reason, now)?;
        tx.commit()?;
        Ok(lifted)
    }

    /// The category of the latest decision for exactly `target` that had a meaningful
    /// one (fail2ban's `recidive` jail reports the original jail's category).
    pub fn last_category(&self, target: &IpNet) -> Result<Option<String>> {
        let (start, end) = range_keys(target);
        Ok(self
            .conn
            .prepare_cached(LAST_CATEGORY_SQL)?
            .query_row(params![&start[..], &end[..]], |r| r.get(0))
            .optional()?)
    }

    /// Lifts the given decisions (by id) for `reason`.
    pub fn lift(&mut self, decisions: Vec<Decision>, reason: LiftReason, now: Timestamp) -> Result<Vec<Decision>> {
        let tx = self.conn.transaction()?;
        let lifted = lift_in(&tx, decisions, reason, now)?;
        tx.commit()?;
        Ok(lifted)
    }

    /// Marks every decision whose expiry has passed as lifted (at its expiry time) and
    /// returns them, so the caller can remove them from the firewall.
    pub fn lift_expired(&mut self, now: Timestamp) -> Result<Vec<Decision>> {
        let sql = format!(
            "UPDATE decisions SET lifted_ms = expires_ms, lift_reason = 'expired'
             WHERE lifted_ms IS NULL AND expires_ms <= ?1
             RETURNING {DECISION_COLUMNS}"
        );
        let tx = self.conn.transaction()?;
        let lifted = collect(tx.prepare_cached(&sql)?.query_map(params![now.0], read_decision)?)?;
        tx.commit()?;
        Ok(lifted)
    }

    /// The earliest expiry among live decisions.
    pub fn next_expiry(&self) -> Result<Option<Timestamp>> {
        let ms: Option<i64> = self.conn.query_row(
            "SELECT MIN(expires_ms) FROM decisions WHERE lifted_ms IS NULL AND expires_ms IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(ms.map(Timestamp))
    }

    /// Deletes decisions lifted before `before`, and outbox entries settled (sent,
    /// failed, dropped) before it. Returns how many decisions.
    pub fn prune(&mut self, before: Timestamp) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let n =
            tx.execute("DELETE FROM decisions WHERE lifted_ms IS NOT NULL AND lifted_ms < ?1", params![before.0])?;
        tx.execute("DELETE FROM outbox WHERE COALESCE(sent_ms, failed_ms, dropped_ms) < ?1", params![before.0])?;
        tx.execute("DELETE FROM lookups WHERE fetched_ms < ?1", params![before.0])?;
        tx.commit()?;
        Ok(n)
    }

    /// Targets the operator unbanned since `since` (the feed must not re-add them).
    pub fn unbanned_since(&self, since: Timestamp) -> Result<Vec<IpNet>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT DISTINCT target FROM decisions WHERE lifted_ms > ?1 AND lift_reason = 'unban'")?;
        let rows = stmt.query_map(params![since.0], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            if let Ok(net) = IpNet::from_str(&row?) {
                out.push(net);
            }
        }
        Ok(out)
    }

    /// Number of decisions in force per source (every source present, zero or not).
    pub fn counts(&self, now: Timestamp) -> Result<BTreeMap<Source, u64>> {
        let mut out: BTreeMap<Source, u64> = Source::ALL.into_iter().map(|s| (s, 0)).collect();
        let mut stmt = self.conn.prepare_cached(
            "SELECT source, COUNT(*) FROM decisions
             WHERE lifted_ms IS NULL AND (expires_ms IS NULL OR expires_ms > ?1) GROUP BY source",
        )?;
        let rows = stmt.query_map(params![now.0], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (source, n) = row?;
            if let Ok(s) = source.parse::<Source>() {
                out.insert(s, n as u64);
            }
        }
        Ok(out)
    }

    /// Where reading of a followed file stopped.
    pub fn file_checkpoint(&self, source: &str) -> Result<Option<crate::tail::Checkpoint>> {
        let row: Option<(i64, i64, i64, Option<String>)> = self
            .conn
            .query_row(
                "SELECT device, inode, offset, head_hash FROM checkpoints WHERE source = ?1 AND inode IS NOT NULL",
                params![source],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        Ok(row.and_then(|(device, inode, offset, head)| {
            let (head_len, head_hash) = crate::tail::Checkpoint::parse_head(head.as_deref()?)?;
            Some(crate::tail::Checkpoint {
                device: device as u64,
                inode: inode as u64,
                offset: offset as u64,
                head_hash,
                head_len,
            })
        }))
    }

    /// Saves checkpoints of followed files, in one transaction.
    pub fn save_checkpoints(
        &mut self,
        checkpoints: &[(String, crate::tail::Checkpoint)],
        now: Timestamp,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO checkpoints (source, device, inode, offset, head_hash, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (source) DO UPDATE SET device = excluded.device, inode = excluded.inode,
                 offset = excluded.offset, head_hash = excluded.head_hash, updated_ms = excluded.updated_ms",
            )?;
            for (source, cp) in checkpoints {
                stmt.execute(params![
                    source,
                    cp.device as i64,
                    cp.inode as i64,
                    cp.offset as i64,
                    cp.head_text(),
                    now.0
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The journald cursor saved for a journal source.
    pub fn journal_cursor(&self, source: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT cursor FROM checkpoints WHERE source = ?1", params![source], |r| r.get(0))
            .optional()?
            .flatten())
    }

    /// Saves a journald cursor.
    pub fn save_journal_cursor(&self, source: &str, cursor: &str, now: Timestamp) -> Result<()> {
        self.conn.execute(
            "INSERT INTO checkpoints (source, cursor, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor, updated_ms = excluded.updated_ms",
            params![source, cursor, now.0],
        )?;
        Ok(())
    }

    /// How many times local detection banned exactly `target` before (for escalation).
    pub fn earlier_detections(&self, target: &IpNet) -> Result<u32> {
        let (start, end) = range_keys(target);
        let n: i64 = self.conn.query_row(EARLIER_DETECTIONS_SQL, params![&start[..], &end[..]], |r| r.get(0))?;
        Ok(n as u32)
    }

    /// Whether a live detect ban of exactly `target` was made at or after `since`: a ban
    /// decided from lines logged before it is a replay of lines already acted on (read
    /// again after a crash, from before the last checkpoint). A lifted ban never counts,
    /// so an address unbanned and caught again is banned again at once.
    pub fn detected_since(&self, target: &IpNet, since: Timestamp) -> Result<bool> {
        let (start, end) = range_keys(target);
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM decisions WHERE range_start = ?1 AND range_end = ?2
               AND source = 'detect' AND lifted_ms IS NULL AND created_ms >= ?3)",
            params![&start[..], &end[..], since.0],
            |r| r.get(0),
        )?)
    }

    /// A value from the key/value table.
    pub fn meta_get(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| r.get(0)).optional()?)
    }

    /// Sets a value in the key/value table.
    pub fn meta_set(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}

fn lift_in(tx: &Transaction, decisions: Vec<Decision>, reason: LiftReason, now: Timestamp) -> Result<Vec<Decision>> {
    let mut stmt =
        tx.prepare_cached("UPDATE decisions SET lifted_ms = ?2, lift_reason = ?3 WHERE id = ?1 AND lifted_ms IS NULL")?;
    let mut out = Vec::with_capacity(decisions.len());
    for mut d in decisions {
        // An expired decision is lifted as of its expiry, not of when we noticed.
        let at = match (reason, d.expires) {
            (LiftReason::Expired, Some(e)) => e.min(now),
            _ => now,
        };
        if stmt.execute(params![d.id, at.0, reason.as_str()])? == 1 {
            d.lifted = Some(at);
            out.push(d);
        }
    }
    Ok(out)
}

/// Evidence as stored: a JSON array, or NULL when there is none.
fn evidence_json(lines: &[String]) -> Option<String> {
    (!lines.is_empty()).then(|| serde_json::to_string(lines).unwrap_or_default())
}

/// Reads a row selected with [`DECISION_COLUMNS`]. The outer `Result` is SQLite's; the
/// inner one reports a row whose text columns do not parse.
fn read_decision(r: &Row) -> rusqlite::Result<Result<Decision>> {
    let id: i64 = r.get(0)?;
    let target: String = r.get(1)?;
    let source: String = r.get(2)?;
    let score: Option<i64> = r.get(5)?;
    let decision = (|| {
        Ok(Decision {
            id,
            target: IpNet::from_str(&target).map_err(|_| StoreError::Corrupt {
                id,
                field: "target",
                value: target.clone(),
            })?,
            source: source.parse().map_err(|_| StoreError::Corrupt { id, field: "source", value: source.clone() })?,
            reason: r.get(3)?,
            category: r.get(4)?,
            score: score.map(|s| s.clamp(0, 100) as u8),
            created: Timestamp(r.get(6)?),
            expires: r.get::<_, Option<i64>>(7)?.map(Timestamp),
            lifted: r.get::<_, Option<i64>>(8)?.map(Timestamp),
            evidence: r
                .get::<_, Option<String>>(9)?
                .and_then(|json| serde_json::from_str(&json).ok())
                .unwrap_or_default(),
            enforced: r.get(10)?,
        })
    })();
    Ok(decision)
}

fn collect(rows: impl Iterator<Item = rusqlite::Result<Result<Decision>>>) -> Result<Vec<Decision>> {
    rows.map(|r| r?).collect()
}

/// An address as a 16-byte key that sorts like the address (IPv4 mapped into IPv6).
fn range_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// First and last address of a network, as [`range_key`]s.
fn range_keys(net: &IpNet) -> ([u8; 16], [u8; 16]) {
    (range_key(net.network()), range_key(net.broadcast()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::parse_target;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        (dir, store)
    }

    fn ban(target: &str, source: Source, secs: Option<u64>) -> NewDecision {
        NewDecision {
            target: parse_target(target).unwrap(),
            source,
            reason: "test".into(),
            category: None,
            score: None,
            duration: secs.map(Duration::from_secs),
            evidence: Vec::new(),
            report: None,
            enforce: true,
        }
    }

    /// One batch gives what the same proposals give one at a time in address order:
    /// the same answers (ids included), decisions and reports, for a batch read by
    /// lookups and one read by a scan, over decisions live, expired and extended, with
    /// targets repeated within the batch and across sources.
    #[test]
    fn a_batch_equals_its_proposals_one_at_a_time() {
        for (size, seed) in [(300, 1u64), (9_000, 2), (9_000, 3)] {
            let mut x = seed;
            let mut next = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let proposal = |next: &mut dyn FnMut(u64) -> u64| {
                let target = format!("198.18.{}.{}", next(8), next(250));
                let source = [Source::Manual, Source::Feed][next(2) as usize];
                let secs = [None, Some(1 + next(100))][(next(4) > 0) as usize];
                let mut b = ban(&target, source, secs);
                b.enforce = next(3) > 0;
                if next(5) == 0 {
                    b.report = Some(crate::decision::ReportDraft {
                        ip: b.target.addr(),
                        category: "ssh".into(),
                        payload: "{}".into(),
                        cooldown: Duration::from_secs(30),
                    });
                }
                b
            };
            let before: Vec<NewDecision> = (0..size / 3).map(|_| proposal(&mut next)).collect();
            let batch: Vec<NewDecision> = (0..size).map(|_| proposal(&mut next)).collect();
            let (t0, t1) = (Timestamp(1_000_000), Timestamp(1_050_000));
            let (_d1, mut one) = open();
            let (_d2, mut all) = open();
            for store in [&mut one, &mut all] {
                store.upsert_decisions(&before, t0).unwrap();
            }
            let mut sorted: Vec<&NewDecision> = batch.iter().collect();
            sorted.sort_by_key(|n| range_keys(&n.target));
            let mut expected: Vec<(Decision, Upsert)> = Vec::new();
            for n in &sorted {
                expected.push(one.upsert_decision(n, t1).unwrap());
            }
            let got = all.upsert_decisions(&batch, t1).unwrap();
            let mut got_sorted: Vec<(usize, &(Decision, Upsert))> = got.iter().enumerate().collect();
            got_sorted.sort_by_key(|(i, _)| (range_keys(&batch[*i].target), *i));
            let got_sorted: Vec<(Decision, Upsert)> = got_sorted.into_iter().map(|(_, o)| o.clone()).collect();
            assert_eq!(got_sorted, expected, "size {size}, seed {seed}");
            assert_eq!(all.active(None, t1).unwrap(), one.active(None, t1).unwrap());
            let outbox = |s: &Store| -> Vec<(i64, String)> {
                let mut stmt = s.conn.prepare("SELECT decision_id, ip FROM outbox ORDER BY id").unwrap();
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
            };
            let (a, b) = (outbox(&all), outbox(&one));
            assert_eq!(a.len(), b.len(), "size {size}, seed {seed}");
            assert_eq!(a.iter().collect::<std::collections::BTreeSet<_>>(), b.iter().collect());
        }
    }

    /// Every lookup by address goes through an index, never a scan of the decisions.
    #[test]
    fn lookups_by_address_use_an_index() {
        let (_dir, mut store) = open();
        let now = Timestamp(1_000_000);
        let news: Vec<NewDecision> = (0..200).map(|i| ban(&format!("198.18.0.{i}"), Source::Detect, Some(9))).collect();
        let made = store.upsert_decisions(&news, now).unwrap();
        let half: Vec<Decision> = made.into_iter().step_by(2).map(|(d, _)| d).collect();
        store.lift(half, LiftReason::Unban, now).unwrap();
        let key = range_key("198.18.0.7".parse().unwrap()).to_vec();
        // Without statistics (as on a host) and with them.
        for (analyze, (sql, text, params)) in [false, true].into_iter().flat_map(|a| {
            let key = key.clone();
            [
                ("covering", covering_sql(), vec![key.clone()]),
                ("last_category", LAST_CATEGORY_SQL.to_string(), vec![key.clone(), key.clone()]),
                ("earlier_detections", EARLIER_DETECTIONS_SQL.to_string(), vec![key.clone(), key]),
            ]
            .map(move |q| (a, q))
        }) {
            if analyze {
                store.conn.execute_batch("ANALYZE").unwrap();
            }
            let mut stmt = store.conn.prepare(&format!("EXPLAIN QUERY PLAN {text}")).unwrap();
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(params.iter()), |r| r.get::<_, String>(3))
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            assert!(plan.iter().all(|p| !p.starts_with("SCAN decisions")), "{sql}: {plan:?}");
            assert!(plan.iter().any(|p| p.contains("decisions_live")), "{sql}: {plan:?}");
            assert!(plan.iter().any(|p| p.contains("decisions_past")), "{sql} (analyze: {analyze}): {plan:?}");
        }
    }

    #[test]
    fn opens_in_wal_mode_at_the_current_schema() {
        let (dir, store) = open();
        let mode: String = store.conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        drop(store);
        // Reopening an up-to-date database runs no migration and keeps the data.
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        store.upsert_decision(&ban("203.0.113.7", Source::Manual, Some(60)), Timestamp::now()).unwrap();
    }

    #[test]
    fn refuses_a_database_from_a_newer_banshare() {
        let (dir, store) = open();
        store.conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        drop(store);
        let err = Store::open(&dir.path().join("state.db")).err().unwrap().to_string();
        assert!(err.contains(&format!("schema version {}", SCHEMA_VERSION + 1)), "{err}");
        assert!(err.contains("written by a newer banshare"), "{err}");
    }

    #[test]
    fn a_second_ban_extends_and_never_shortens() {
        let (_dir, mut store) = open();
        let now = Timestamp(1_000_000);
        let (d1, u1) = store.upsert_decision(&ban("203.0.113.7", Source::Manual, Some(60)), now).unwrap();
        assert_eq!(u1, Upsert::Created);
        let (d2, u2) = store.upsert_decision(&ban("203.0.113.7", Source::Manual, Some(30)), now).unwrap();
        assert_eq!((u2, d2.id, d2.expires), (Upsert::Unchanged, d1.id, d1.expires));
        let (d3, u3) = store.upsert_decision(&ban("203.0.113.7", Source::Manual, None), now).unwrap();
        assert_eq!((u3, d3.id, d3.expires), (Upsert::Extended, d1.id, None));
        // Another source holds its own decision on the same target.
        let (d4, u4) = store.upsert_decision(&ban("203.0.113.7", Source::Feed, Some(60)), now).unwrap();
        assert_eq!(u4, Upsert::Created);
        assert_ne!(d4.id, d1.id);
        assert_eq!(store.active(None, now).unwrap().len(), 2);
        assert_eq!(store.active(Some(Source::Feed), now).unwrap().len(), 1);
    }

    #[test]
    fn covering_finds_addresses_inside_cidrs() {
        let (_dir, mut store) = open();
        let now = Timestamp(1_000_000);
        store.upsert_decision(&ban("198.51.100.0/24", Source::Manual, Some(60)), now).unwrap();
        store.upsert_decision(&ban("2001:db8:1::/48", Source::Detect, Some(60)), now).unwrap();
        store.upsert_decision(&ban("198.51.101.1", Source::Manual, Some(60)), now).unwrap();
        let hit = |ip: &str| store.covering(ip.parse().unwrap(), now, 5).unwrap().0;
        assert_eq!(hit("198.51.100.200")[0].target.to_string(), "198.51.100.0/24");
        assert_eq!(hit("2001:db8:1:ffff::9")[0].target.to_string(), "2001:db8:1::/48");
        assert!(hit("198.51.99.255").is_empty());
        assert!(hit("198.51.101.2").is_empty());
        assert!(hit("::ffff:c633:6401").len() == 1, "mapped form of 198.51.100.1");
    }

    #[test]
    fn expiry_lifts_and_reports_history() {
        let (_dir, mut store) = open();
        let t0 = Timestamp(1_000_000);
        store.upsert_decision(&ban("203.0.113.7", Source::Detect, Some(2)), t0).unwrap();
        store.upsert_decision(&ban("203.0.113.8", Source::Detect, Some(10)), t0).unwrap();
        assert_eq!(store.next_expiry().unwrap(), Some(t0.plus(Duration::from_secs(2))));
        let later = t0.plus(Duration::from_secs(3));
        let lifted = store.lift_expired(later).unwrap();
        assert_eq!(lifted.len(), 1);
        assert_eq!(lifted[0].lifted, Some(t0.plus(Duration::from_secs(2))));
        let (active, past) = store.covering("203.0.113.7".parse().unwrap(), later, 5).unwrap();
        assert!(active.is_empty());
        assert_eq!(past.len(), 1);
        assert_eq!(store.prune(later).unwrap(), 1);
        assert_eq!(store.counts(later).unwrap()[&Source::Detect], 1);
    }

    #[test]
    fn lift_target_lifts_every_source() {
        let (_dir, mut store) = open();
        let now = Timestamp(1_000_000);
        store.upsert_decision(&ban("203.0.113.7", Source::Manual, None), now).unwrap();
        store.upsert_decision(&ban("203.0.113.7", Source::Feed, Some(60)), now).unwrap();
        let lifted = store.lift_target(&parse_target("203.0.113.7").unwrap(), LiftReason::Unban, now).unwrap();
        assert_eq!(lifted.len(), 2);
        assert!(store.active(None, now).unwrap().is_empty());
        // A new ban after an unban is a new decision.
        let (_, u) = store.upsert_decision(&ban("203.0.113.7", Source::Manual, None), now).unwrap();
        assert_eq!(u, Upsert::Created);
    }

    #[test]
    fn evidence_is_kept_and_a_version_1_database_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        // A database as the first release wrote it: schema version 1 with a decision.
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO decisions (target, range_start, range_end, source, created_ms) VALUES ('203.0.113.7/32', ?1, ?2, 'manual', 1)",
                params![&range_key("203.0.113.7".parse().unwrap())[..], &range_key("203.0.113.7".parse().unwrap())[..]],
            )
            .unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let old = &store.active(None, Timestamp(2)).unwrap()[0];
        assert_eq!((old.target.to_string(), old.evidence.len()), ("203.0.113.7/32".into(), 0));
        let mut new = ban("198.51.100.1", Source::Detect, Some(60));
        new.evidence = vec!["line one".into(), "line two".into()];
        let (d, _) = store.upsert_decision(&new, Timestamp(2)).unwrap();
        assert_eq!(d.evidence, ["line one", "line two"]);
        let (found, _) = store.covering("198.51.100.1".parse().unwrap(), Timestamp(3), 0).unwrap();
        assert_eq!(found[0].evidence, ["line one", "line two"]);
    }

    #[test]
    fn meta_round_trips() {
        let (_dir, store) = open();
        assert_eq!(store.meta_get("k").unwrap(), None);
        store.meta_set("k", "v1").unwrap();
        store.meta_set("k", "v2").unwrap();
        assert_eq!(store.meta_get("k").unwrap().as_deref(), Some("v2"));
    }
}
