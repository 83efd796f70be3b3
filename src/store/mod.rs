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

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
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

/// SQLite's page cache for the queue, in KiB (SQLite's default is 2,000 KiB). The queue is written
/// at its end and read and deleted from its start, so only a few pages are ever hot; the rest of the
/// default cache would fill with pages that are never read again and stay in the process's memory.
const PAGE_CACHE_KIB: i64 = 256;

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
    /// Messages the cloud broker refused (MQTT 5 reason codes: not authorized, quota…); removed from
    /// the queue, since sending them again would be refused again.
    pub refused: u64,
    pub dropped_full: u64,
    pub dropped_age: u64,
    pub rejected_full: u64,
    pub corrupted: u64,
    /// Messages that could not be written to the queue at all (filesystem full or failing): still
    /// published locally, never sent upstream.
    pub not_queued: u64,
}

const COUNTERS: [&str; 9] = [
    "accepted",
    "delivered",
    "refused",
    "dropped_full",
    "dropped_age",
    "rejected_full",
    "corrupted",
    "retained_saved",
    "not_queued",
];

#[derive(Debug, Default, Clone, Copy)]
struct Counters([u64; 9]);

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
        // Negative: a size in KiB rather than in pages.
        conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB).map_err(err)?;
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
        refused: c.get("refused"),
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

mod read;
#[cfg(test)]
mod tests;
mod write;
