//! Writing the queue: group-committed appends with their age and size bounds, acknowledged
//! deletions and QoS 2 stages in the same transaction, and the counters saved with the rows they count.

use rusqlite::{params, Connection, OptionalExtension};

use super::*;

impl Store {
    /// Writes `queued` (bound upstream) and `retained` (last value per local topic) in one
    /// transaction, applying the queue's age and size bounds first.
    /// `acked` are ids the cloud broker acknowledged, deleted in the same transaction (one commit,
    /// one fsync, for both directions); `refused` are ids it refused (MQTT 5 reason codes), deleted
    /// and counted as refused; `stages` are QoS 2 packet ids and stages to record.
    pub fn append(
        &self,
        queued: &[Record],
        retained: &[Record],
        acked: &[i64],
        refused: &[i64],
        stages: &[StageChange],
    ) -> Result<AppendOutcome, StoreError> {
        let mut g = self.lock();
        let inner = &mut *g;
        // The figures are updated as the transaction goes; a failed one (disk full) rolls back, and
        // so must they.
        let figures = (inner.depth, inner.bytes);
        let result = self.append_in(inner, queued, retained, acked, refused, stages);
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
        refused: &[i64],
        stages: &[StageChange],
    ) -> Result<AppendOutcome, StoreError> {
        let mut out = AppendOutcome::default();
        let tx = inner.conn.transaction().map_err(|e| self.err(e))?;
        let mut delivered = 0;
        let mut refused_n = 0;
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
            for (id, was_refused) in acked.iter().map(|i| (i, false)).chain(refused.iter().map(|i| (i, true))) {
                // Already gone (evicted meanwhile, or acknowledged twice after a resend): ignored.
                if let Some(size) = del.query_row([id], |r| r.get::<_, i64>(0)).optional().map_err(|e| self.err(e))? {
                    if was_refused {
                        refused_n += 1;
                    } else {
                        delivered += 1;
                    }
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
        counters.bump("refused", refused_n);
        if counters.0 != inner.counters.0 || inner.unsaved {
            save_counters(&tx, &counters).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        inner.counters = counters;
        inner.unsaved = false;
        inner.next_id = next_id;
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

pub(super) fn save_counters(tx: &Connection, c: &Counters) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = ?2",
    )?;
    for (i, name) in COUNTERS.iter().enumerate() {
        stmt.execute(params![name, c.0[i] as i64])?;
    }
    Ok(())
}
