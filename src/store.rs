//! The gateway's durable state in one SQLite file (WAL mode): the upstream queue, the last retained
//! reading per local topic, and the queue's lifetime counters.
//!
//! A message is *accepted* once the transaction holding it has committed; it leaves the queue only
//! when the bridge reports the cloud broker's acknowledgement. Every row carries a CRC-32C of its
//! contents: a row that fails it (a bit flip on an SD card, a hand edit) is counted, deleted and
//! skipped, never fatal. Torn writes at the file level are SQLite's job: its WAL frames are
//! checksummed and an incomplete last transaction is rolled back on open.
//!
//! QoS 2 messages carry the MQTT packet id and stage the bridge last committed for them (`pkid`,
//! `stage`; 0 when unsent), written in the same transactions as the queue, so that a restarted
//! gateway can finish their exchange on a resumed session instead of colliding with it.
//!
//! The lifetime counters are written in the same transaction as the rows they count.
//!
//! All methods but `status` block (SQLite is synchronous); async callers use `spawn_blocking`.
//! `status` reads a snapshot the writing thread publishes after each change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::upstream::outbox::{Stage, StageChange};

/// The queue's settings (`upstream.queue:` resolved).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub max_age: Duration,
    pub when_full: WhenFull,
    pub commit_interval: Duration,
    pub sync: SyncMode,
    pub replay_rate: u32,
    pub inflight: u16,
}

/// `queue.when_full:`: what a full queue does with a new reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Make room by deleting the oldest queued readings.
    #[default]
    DropOldest,
    /// Keep the backlog; refuse new readings until there is room.
    RejectNewest,
}

/// `queue.sync:`: whether each commit is fsynced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// fsync at every commit: a power cut loses at most one commit interval.
    #[default]
    Full,
    /// Leave flushing to the OS (SQLite `synchronous=NORMAL`): a crash of the gateway loses nothing
    /// committed, a power cut may lose everything since the last WAL checkpoint.
    Normal,
}

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// SQLite waits this long for a lock held by another process (`ser2mqtt queue status` reading while
/// the gateway writes) before giving up; a commit takes milliseconds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Oldest rows examined per step when making room; bounds the work one append can cause.
const EVICT_STEP: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // The errors are in the messages, not `source`s: a chain printer would repeat them.
    #[error("cannot create the state directory {}: {error}{}", path.display(),
        crate::advice::file(path, error.kind(), true).map(|a| format!("; {a}")).unwrap_or_default())]
    Dir { path: PathBuf, error: std::io::Error },
    #[error("queue database {}: {error}{}", path.display(), sqlite_advice(path, error))]
    Sqlite { path: PathBuf, error: rusqlite::Error },
}

impl StoreError {
    /// Whether the filesystem holding the store is full.
    pub fn disk_full(&self) -> bool {
        matches!(self, StoreError::Sqlite { error: rusqlite::Error::SqliteFailure(f, _), .. }
            if f.code == rusqlite::ErrorCode::DiskFull)
            || matches!(self, StoreError::Dir { error, .. } if error.kind() == std::io::ErrorKind::StorageFull)
    }
}

/// What to do about an SQLite error on the store at `path` (a directory that is not writable, a full
/// filesystem), as "; advice", or nothing.
fn sqlite_advice(path: &Path, error: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode::*;
    let dir = path.parent().unwrap_or(Path::new("."));
    let kind = match error {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            CannotOpen | ReadOnly | PermissionDenied
                if nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_err() =>
            {
                std::io::ErrorKind::PermissionDenied
            }
            DiskFull => std::io::ErrorKind::StorageFull,
            _ => return String::new(),
        },
        _ => return String::new(),
    };
    crate::advice::file(dir, kind, true).map(|a| format!("; {a}")).unwrap_or_default()
}

/// One message bound upstream (or a retained reading to keep).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// When the gateway accepted it (unix ms); only used for `max_age`. The reading's own receive
    /// time is inside the payload and is never rewritten.
    pub accepted_ms: i64,
}

impl Record {
    fn crc(&self) -> u32 {
        let mut d = CRC.digest();
        d.update(self.topic.as_bytes());
        d.update(&[0, self.qos, self.retain as u8]);
        d.update(&self.accepted_ms.to_le_bytes());
        d.update(&self.payload);
        d.finalize()
    }

    fn size(&self) -> u64 {
        (self.topic.len() + self.payload.len()) as u64
    }
}

/// A queued record with its position.
#[derive(Debug, Clone)]
pub struct Queued {
    pub id: i64,
    pub record: Record,
}

/// What the queue holds and has done, as `ser2mqtt queue status` and the stats topic show it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct QueueStatus {
    pub depth: u64,
    pub bytes: u64,
    /// Age of the oldest queued message, in seconds.
    pub oldest_age_s: Option<f64>,
    pub accepted: u64,
    pub delivered: u64,
    pub dropped_full: u64,
    pub dropped_age: u64,
    pub rejected_full: u64,
    pub corrupted: u64,
    /// Messages that could not be written to the queue at all (filesystem full or failing): still
    /// published locally, never sent upstream.
    pub not_queued: u64,
}

const COUNTERS: [&str; 8] = [
    "accepted",
    "delivered",
    "dropped_full",
    "dropped_age",
    "rejected_full",
    "corrupted",
    "retained_saved",
    "not_queued",
];

#[derive(Debug, Default, Clone, Copy)]
struct Counters([u64; 8]);

impl Counters {
    fn bump(&mut self, name: &str, n: u64) {
        if let Some(i) = COUNTERS.iter().position(|c| *c == name) {
            self.0[i] += n;
        }
    }
    fn get(&self, name: &str) -> u64 {
        COUNTERS.iter().position(|c| *c == name).map(|i| self.0[i]).unwrap_or(0)
    }
}

/// What one append did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub accepted: u64,
    pub dropped_oldest: u64,
    pub rejected: u64,
    pub expired: u64,
}

struct Inner {
    conn: Connection,
    depth: u64,
    bytes: u64,
    counters: Counters,
    /// Ids are given here rather than by SQLite: strictly increasing for the life of the process
    /// (the bridge's cursors rely on it) without AUTOINCREMENT's extra page write per commit.
    next_id: i64,
    /// Counters changed outside a commit (`count_not_queued`): save them with the next one.
    unsaved: bool,
}

/// What `status()` reports, as of the last change: published by whoever changed it, while still
/// holding the lock, so readers on the runtime never wait for a commit or run a query.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    depth: u64,
    bytes: u64,
    oldest_ms: Option<i64>,
    counters: Counters,
}

/// The open store.
pub struct Store {
    path: PathBuf,
    limits: Option<QueueSettings>,
    inner: Mutex<Inner>,
    figures: tokio::sync::watch::Sender<Figures>,
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the store at `path`. `limits` bound the queue; without them (no
    /// `upstream:`) only retained readings are kept.
    ///
    /// A file SQLite cannot read at all (not a database, or damaged beyond its own recovery) is moved
    /// aside as `queue.db.corrupt-<unix ms>` for inspection and a fresh store is created: the gateway
    /// keeps running and keeps readings from now on.
    pub fn open(path: &Path, limits: Option<QueueSettings>) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|error| StoreError::Dir { path: dir.into(), error })?;
        }
        match Store::open_inner(path, limits.clone()) {
            Err(StoreError::Sqlite { error: rusqlite::Error::SqliteFailure(f, _), .. })
                if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) =>
            {
                let aside = path.with_extension(format!("db.corrupt-{}", now_ms()));
                tracing::error!(path = %path.display(), moved_to = %aside.display(), error = %f,
                    "queue database unreadable; moved aside, starting an empty queue");
                std::fs::rename(path, &aside).map_err(|error| StoreError::Dir { path: path.into(), error })?;
                for ext in ["db-wal", "db-shm"] {
                    let _ = std::fs::remove_file(path.with_extension(ext));
                }
                Store::open_inner(path, limits)
            }
            other => other,
        }
    }

    fn open_inner(path: &Path, limits: Option<QueueSettings>) -> Result<Store, StoreError> {
        let err = |error| StoreError::Sqlite { path: path.into(), error };
        let conn = Connection::open(path).map_err(err)?;
        let sync = match limits.as_ref().map(|l| l.sync).unwrap_or_default() {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        };
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", sync).map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS queue (
                 id INTEGER PRIMARY KEY,
                 topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,
                 accepted_ms INTEGER NOT NULL, size INTEGER NOT NULL, crc INTEGER NOT NULL,
                 pkid INTEGER NOT NULL DEFAULT 0, stage INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS retained (
                 topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL,
                 accepted_ms INTEGER NOT NULL, crc INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )
        .map_err(err)?;
        // Files written before QoS 2 stages were kept: add the columns (every row unsent).
        let has_stage = conn
            .prepare("SELECT 1 FROM pragma_table_info('queue') WHERE name = 'stage'")
            .and_then(|mut s| s.exists([]))
            .map_err(err)?;
        if !has_stage {
            conn.execute_batch(
                "ALTER TABLE queue ADD COLUMN pkid INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE queue ADD COLUMN stage INTEGER NOT NULL DEFAULT 0;",
            )
            .map_err(err)?;
        }
        let (depth, bytes, counters) = load_figures(&conn).map_err(err)?;
        let last: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM queue", [], |r| r.get(0)).map_err(err)?;
        let oldest_ms = oldest_ms(&conn).map_err(err)?;
        let inner = Inner { conn, depth, bytes, counters, next_id: last + 1, unsaved: false };
        let (figures, _) = tokio::sync::watch::channel(Figures { depth, bytes, oldest_ms, counters });
        Ok(Store { path: path.into(), limits, inner: Mutex::new(inner), figures })
    }

    /// Reads the status of a store another process may be writing (for `ser2mqtt queue status`).
    pub fn read_status(path: &Path) -> Result<QueueStatus, StoreError> {
        let err = |error| StoreError::Sqlite { path: path.into(), error };
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        let (depth, bytes, counters) = load_figures(&conn).map_err(err)?;
        let oldest = oldest_ms(&conn).map_err(err)?;
        Ok(status_from(depth, bytes, oldest, &counters))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, error: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: self.path.clone(), error }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves SQLite consistent (the transaction rolls back).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the figures after a change (called with the lock held, so they are never older
    /// than a change another thread has already seen).
    fn publish(&self, inner: &Inner) {
        // The oldest row is one primary-key lookup; if it fails, the previous value stays.
        let oldest_ms = oldest_ms(&inner.conn).unwrap_or(self.figures.borrow().oldest_ms);
        self.figures.send_replace(Figures {
            depth: inner.depth,
            bytes: inner.bytes,
            oldest_ms,
            counters: inner.counters,
        });
    }

    /// Writes `queued` (bound upstream) and `retained` (last value per local topic) in one
    /// transaction, applying the queue's age and size bounds first.
    /// `acked` are ids the cloud broker acknowledged, deleted in the same transaction (one commit,
    /// one fsync, for both directions); `stages` are QoS 2 packet ids and stages to record.
    pub fn append(
        &self,
        queued: &[Record],
        retained: &[Record],
        acked: &[i64],
        stages: &[StageChange],
    ) -> Result<AppendOutcome, StoreError> {
        let mut g = self.lock();
        let inner = &mut *g;
        // The figures are updated as the transaction goes; a failed one (disk full) rolls back, and
        // so must they.
        let figures = (inner.depth, inner.bytes);
        let result = self.append_in(inner, queued, retained, acked, stages);
        if result.is_err() {
            (inner.depth, inner.bytes) = figures;
        }
        self.publish(inner);
        result
    }

    fn append_in(
        &self,
        inner: &mut Inner,
        queued: &[Record],
        retained: &[Record],
        acked: &[i64],
        stages: &[StageChange],
    ) -> Result<AppendOutcome, StoreError> {
        let mut out = AppendOutcome::default();
        let tx = inner.conn.transaction().map_err(|e| self.err(e))?;
        let mut delivered = 0;
        {
            let mut up =
                tx.prepare_cached("UPDATE queue SET pkid = ?2, stage = ?3 WHERE id = ?1").map_err(|e| self.err(e))?;
            for c in stages {
                up.execute(params![c.id, c.pkid, c.stage.map(|s| s as i64).unwrap_or(0)]).map_err(|e| self.err(e))?;
            }
        }
        {
            let mut del =
                tx.prepare_cached("DELETE FROM queue WHERE id = ?1 RETURNING size").map_err(|e| self.err(e))?;
            for id in acked {
                // Already gone (evicted meanwhile, or acknowledged twice after a resend): ignored.
                if let Some(size) = del.query_row([id], |r| r.get::<_, i64>(0)).optional().map_err(|e| self.err(e))? {
                    delivered += 1;
                    inner.depth = inner.depth.saturating_sub(1);
                    inner.bytes = inner.bytes.saturating_sub(size as u64);
                }
            }
        }
        if let Some(limits) = &self.limits {
            // Age: rows are in acceptance order, so only the oldest rows need looking at.
            let cutoff = now_ms() - limits.max_age.as_millis() as i64;
            if oldest_ms(&tx).map_err(|e| self.err(e))?.is_some_and(|o| o < cutoff) {
                let (n, b): (i64, i64) = tx
                    .query_row(
                        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM queue WHERE accepted_ms < ?1",
                        [cutoff],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .map_err(|e| self.err(e))?;
                tx.execute("DELETE FROM queue WHERE accepted_ms < ?1", [cutoff]).map_err(|e| self.err(e))?;
                inner.depth -= n as u64;
                inner.bytes -= b as u64;
                out.expired = n as u64;
            }
            let incoming: u64 = queued.iter().map(Record::size).sum();
            let mut keep = queued;
            if inner.bytes + incoming > limits.max_bytes {
                match limits.when_full {
                    WhenFull::DropOldest => {
                        // Never evict for a batch bigger than the whole queue: keep its newest part.
                        let mut total = 0;
                        let start = queued
                            .iter()
                            .rposition(|r| {
                                total += r.size();
                                total > limits.max_bytes
                            })
                            .map(|i| i + 1)
                            .unwrap_or(0);
                        out.dropped_oldest += start as u64;
                        keep = &queued[start..];
                        let kept: u64 = keep.iter().map(Record::size).sum();
                        let need = (inner.bytes + kept).saturating_sub(limits.max_bytes);
                        let (n, b) = evict_oldest(&tx, need).map_err(|e| self.err(e))?;
                        inner.depth -= n;
                        inner.bytes -= b;
                        out.dropped_oldest += n;
                    }
                    WhenFull::RejectNewest => {
                        let mut room = limits.max_bytes.saturating_sub(inner.bytes);
                        let fits = queued
                            .iter()
                            .take_while(|r| {
                                let ok = r.size() <= room;
                                room = room.saturating_sub(r.size());
                                ok
                            })
                            .count();
                        out.rejected = (queued.len() - fits) as u64;
                        keep = &queued[..fits];
                    }
                }
            }
            {
                let mut ins = tx
                    .prepare_cached(
                        "INSERT INTO queue (id, topic, payload, qos, retain, accepted_ms, size, crc)
                         VALUES (?8, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .map_err(|e| self.err(e))?;
                for (i, r) in keep.iter().enumerate() {
                    ins.execute(params![
                        r.topic,
                        &r.payload[..],
                        r.qos,
                        r.retain,
                        r.accepted_ms,
                        r.size() as i64,
                        r.crc(),
                        inner.next_id + i as i64
                    ])
                    .map_err(|e| self.err(e))?;
                    inner.depth += 1;
                    inner.bytes += r.size();
                }
            }
            out.accepted = keep.len() as u64;
        }
        let next_id = inner.next_id + out.accepted as i64;
        {
            let mut up = tx
                .prepare_cached(
                    "INSERT INTO retained (topic, payload, qos, accepted_ms, crc) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(topic) DO UPDATE SET payload = ?2, qos = ?3, accepted_ms = ?4, crc = ?5",
                )
                .map_err(|e| self.err(e))?;
            for r in retained {
                if r.payload.is_empty() {
                    // An empty retained payload clears the topic, as in MQTT.
                    tx.execute("DELETE FROM retained WHERE topic = ?1", [&r.topic]).map_err(|e| self.err(e))?;
                } else {
                    up.execute(params![r.topic, &r.payload[..], r.qos, r.accepted_ms, r.crc()])
                        .map_err(|e| self.err(e))?;
                }
            }
        }
        let mut counters = inner.counters;
        counters.bump("accepted", out.accepted);
        counters.bump("dropped_full", out.dropped_oldest);
        counters.bump("rejected_full", out.rejected);
        counters.bump("dropped_age", out.expired);
        counters.bump("retained_saved", retained.len() as u64);
        counters.bump("delivered", delivered);
        if counters.0 != inner.counters.0 || inner.unsaved {
            save_counters(&tx, &counters).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        inner.counters = counters;
        inner.unsaved = false;
        inner.next_id = next_id;
        Ok(out)
    }

    /// Up to `limit` queued messages with `after < id < before`, in order. Rows failing their
    /// checksum are deleted and counted instead of returned.
    pub fn read(&self, after: i64, before: i64, limit: usize) -> Result<Vec<Queued>, StoreError> {
        let mut g = self.lock();
        let inner = &mut *g;
        let mut out = Vec::new();
        let mut bad = Vec::new();
        {
            let mut stmt = inner
                .conn
                .prepare_cached(
                    "SELECT id, topic, payload, qos, retain, accepted_ms, crc, size FROM queue
                     WHERE id > ?1 AND id < ?2 ORDER BY id LIMIT ?3",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(params![after, before, limit as i64], |r| {
                    // Read as loosely as possible: a damaged row must reach the checksum, not fail here.
                    let topic: Vec<u8> = r.get_ref(1)?.as_bytes_or_null()?.unwrap_or_default().to_vec();
                    let payload: Vec<u8> = r.get_ref(2)?.as_bytes_or_null()?.unwrap_or_default().to_vec();
                    Ok((
                        r.get::<_, i64>(0)?,
                        topic,
                        payload,
                        r.get::<_, i64>(3).unwrap_or(-1),
                        r.get::<_, i64>(4).unwrap_or(-1),
                        r.get::<_, i64>(5).unwrap_or(0),
                        r.get::<_, i64>(6).unwrap_or(-1),
                        r.get::<_, i64>(7).unwrap_or(0),
                    ))
                })
                .map_err(|e| self.err(e))?;
            for row in rows {
                let (id, topic, payload, qos, retain, accepted_ms, crc, size) = row.map_err(|e| self.err(e))?;
                let record = String::from_utf8(topic).ok().map(|topic| Record {
                    topic,
                    payload: payload.into(),
                    qos: qos.clamp(0, 255) as u8,
                    retain: retain == 1,
                    accepted_ms,
                });
                match record {
                    Some(record) if (0..=2).contains(&qos) && crc == record.crc() as i64 => {
                        out.push(Queued { id, record })
                    }
                    _ => bad.push((id, size)),
                }
            }
        }
        if !bad.is_empty() {
            tracing::warn!(count = bad.len(), ids = ?bad.iter().map(|b| b.0).collect::<Vec<_>>(),
                "queued messages failed their checksum; skipped and deleted");
            let tx = inner.conn.transaction().map_err(|e| self.err(e))?;
            for (id, size) in &bad {
                tx.execute("DELETE FROM queue WHERE id = ?1", [id]).map_err(|e| self.err(e))?;
                inner.depth = inner.depth.saturating_sub(1);
                inner.bytes = inner.bytes.saturating_sub(*size as u64);
            }
            let mut counters = inner.counters;
            counters.bump("corrupted", bad.len() as u64);
            save_counters(&tx, &counters).map_err(|e| self.err(e))?;
            tx.commit().map_err(|e| self.err(e))?;
            inner.counters = counters;
            self.publish(inner);
        }
        Ok(out)
    }

    /// Counts messages a failed append could not queue. Kept in memory (the disk may be full) and
    /// saved with the next commit that succeeds.
    pub fn count_not_queued(&self, n: u64) {
        let mut g = self.lock();
        g.counters.bump("not_queued", n);
        g.unsaved = true;
        self.publish(&g);
    }

    /// Gives the write-ahead log's space back to the filesystem (it otherwise keeps its largest size,
    /// up to SQLite's 1,000-page checkpoint): the first thing to free when the filesystem is full.
    pub fn shrink_wal(&self) -> Result<(), StoreError> {
        let g = self.lock();
        g.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(|e| self.err(e))
    }

    /// The newest id in the queue (0 when empty).
    pub fn last_id(&self) -> Result<i64, StoreError> {
        Ok(self.lock().next_id - 1)
    }

    /// QoS 2 messages with a committed packet id and stage (what an earlier run had in flight).
    pub fn in_flight(&self) -> Result<Vec<(Queued, u16, Stage)>, StoreError> {
        let marks: Vec<(i64, i64, i64)> = {
            let g = self.lock();
            let mut stmt = g
                .conn
                .prepare("SELECT id, pkid, stage FROM queue WHERE stage > 0 ORDER BY id")
                .map_err(|e| self.err(e))?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(|e| self.err(e))?;
            rows.flatten().collect()
        };
        let mut out = Vec::with_capacity(marks.len());
        for (id, pkid, stage) in marks {
            let (Some(stage), Ok(pkid)) = (Stage::from_db(stage), u16::try_from(pkid)) else { continue };
            // Through `read`, so a damaged row is counted and dropped here as anywhere.
            if let Some(q) = self.read(id - 1, id + 1, 1)?.pop() {
                out.push((q, pkid, stage));
            }
        }
        Ok(out)
    }

    /// How many messages per upstream topic are queued with `id <= upto`.
    pub fn topic_counts(&self, upto: i64) -> Result<HashMap<String, u64>, StoreError> {
        let g = self.lock();
        let mut stmt = g
            .conn
            .prepare("SELECT topic, COUNT(*) FROM queue WHERE id <= ?1 GROUP BY topic")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([upto], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(|e| self.err(e))?;
        Ok(rows.flatten().collect())
    }

    /// The last retained reading per local topic (checksum failures are skipped).
    pub fn retained(&self) -> Result<Vec<Record>, StoreError> {
        let g = self.lock();
        let mut stmt = g
            .conn
            .prepare("SELECT topic, payload, qos, accepted_ms, crc FROM retained ORDER BY topic")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let record = Record {
                    topic: r.get(0)?,
                    payload: r.get::<_, Vec<u8>>(1)?.into(),
                    qos: r.get(2)?,
                    retain: true,
                    accepted_ms: r.get(3)?,
                };
                Ok((record, r.get::<_, i64>(4)?))
            })
            .map_err(|e| self.err(e))?;
        Ok(rows.flatten().filter(|(r, crc)| r.crc() as i64 == *crc).map(|(r, _)| r).collect())
    }

    /// The figures as of the last change: no lock, no query, so async code may call it.
    pub fn status(&self) -> QueueStatus {
        let f = *self.figures.borrow();
        status_from(f.depth, f.bytes, f.oldest_ms, &f.counters)
    }
}

fn status_from(depth: u64, bytes: u64, oldest: Option<i64>, c: &Counters) -> QueueStatus {
    QueueStatus {
        depth,
        bytes,
        oldest_age_s: oldest.map(|o| (now_ms() - o).max(0) as f64 / 1000.0),
        accepted: c.get("accepted"),
        delivered: c.get("delivered"),
        dropped_full: c.get("dropped_full"),
        dropped_age: c.get("dropped_age"),
        rejected_full: c.get("rejected_full"),
        corrupted: c.get("corrupted"),
        not_queued: c.get("not_queued"),
    }
}

/// Depth and bytes as the queue table has them, and the counters as last saved.
fn load_figures(conn: &Connection) -> rusqlite::Result<(u64, u64, Counters)> {
    let (depth, bytes): (i64, i64) =
        conn.query_row("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM queue", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut counters = Counters::default();
    let mut stmt = conn.prepare("SELECT name, value FROM counters")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (name, value) = row?;
        counters.bump(&name, value as u64);
    }
    Ok((depth as u64, bytes as u64, counters))
}

fn oldest_ms(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT accepted_ms FROM queue ORDER BY id LIMIT 1", [], |r| r.get(0)).optional()
}

/// Deletes the oldest rows until at least `need` bytes are freed; returns (rows, bytes) deleted.
fn evict_oldest(tx: &Connection, need: u64) -> rusqlite::Result<(u64, u64)> {
    let (mut rows, mut freed) = (0u64, 0u64);
    while freed < need {
        let mut stmt = tx.prepare_cached("SELECT id, size FROM queue ORDER BY id LIMIT ?1")?;
        let batch: Vec<(i64, i64)> =
            stmt.query_map([EVICT_STEP as i64], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        if batch.is_empty() {
            break;
        }
        let mut last = 0;
        for (id, size) in batch {
            if freed >= need {
                break;
            }
            freed += size as u64;
            rows += 1;
            last = id;
        }
        tx.execute("DELETE FROM queue WHERE id <= ?1", [last])?;
    }
    Ok((rows, freed))
}

fn save_counters(tx: &Connection, c: &Counters) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = ?2",
    )?;
    for (i, name) in COUNTERS.iter().enumerate() {
        stmt.execute(params![name, c.0[i] as i64])?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
