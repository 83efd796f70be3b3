//! Reading the queue: the backlog in id order (rows failing their CRC deleted and counted), QoS 2
//! messages in flight, per-topic counts, and the kept retained values.

use std::collections::HashMap;

use rusqlite::params;

use super::write::save_counters;
use super::*;

impl Store {
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
}
