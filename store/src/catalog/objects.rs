//! Application-bucket history in the catalog: tracking passes (with their clock samples)
//! and every recorded version, so a restore plans without listing anything.

use chrono::{DateTime, Utc};
use rusqlite::{params, Row};

use super::{Catalog, CatalogError};
use crate::objects::{
    ClockSample, ObjectHistory, PassRecord, PassSummary, TrackMode, TrackedVersion,
};

/// One tracked bucket at a glance (for `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedBucket {
    pub bucket: String,
    pub mode: TrackMode,
    /// PostgreSQL time of the first and the newest pass.
    pub first_pass: DateTime<Utc>,
    pub last_pass: DateTime<Utc>,
    pub versions: u64,
}

/// Timestamps are stored as fixed-width RFC 3339 (microseconds, `Z`) so text order is
/// time order.
fn text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn time(s: &str) -> Result<DateTime<Utc>, CatalogError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| CatalogError::Invalid(format!("time {s:?}")))
}

fn mode(s: &str) -> Result<TrackMode, CatalogError> {
    match s {
        "versions" => Ok(TrackMode::Versions),
        "copy" => Ok(TrackMode::Copy),
        other => Err(CatalogError::Invalid(format!("tracking mode {other:?}"))),
    }
}

impl Catalog {
    /// Records a pass and its versions; recording the same pass again changes nothing.
    pub fn record_pass(&mut self, pass: &PassRecord) -> Result<(), CatalogError> {
        let tx = self.conn.transaction()?;
        insert_pass(&tx, pass)?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces the passes `replaced` (and their versions) of one bucket by the folded
    /// record `with`, in one transaction (see `objects::compact`).
    pub fn replace_passes(
        &mut self,
        replaced: &[PassRecord],
        with: &PassRecord,
    ) -> Result<(), CatalogError> {
        let tx = self.conn.transaction()?;
        {
            let mut pass = tx.prepare("DELETE FROM object_passes WHERE bucket = ?1 AND at = ?2")?;
            let mut version =
                tx.prepare("DELETE FROM object_versions WHERE bucket = ?1 AND seq = ?2")?;
            for r in replaced {
                pass.execute(params![r.bucket, text(r.clock.at)])?;
                for v in &r.versions {
                    version.execute(params![r.bucket, v.seq])?;
                }
            }
        }
        insert_pass(&tx, with)?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets every bucket's history (before `reindex` loads it again).
    pub fn clear_object_history(&self) -> Result<(), CatalogError> {
        self.conn
            .execute_batch("DELETE FROM object_versions; DELETE FROM object_passes;")?;
        Ok(())
    }

    /// Everything recorded for `bucket`; empty when it was never tracked.
    pub fn object_history(&self, bucket: &str) -> Result<ObjectHistory, CatalogError> {
        let mut passes = Vec::new();
        let mut stmt = self.conn.prepare(
            "SELECT at, prefix, mode, complete_as_of, min_offset_ms, max_offset_ms
             FROM object_passes WHERE bucket = ?1 ORDER BY at",
        )?;
        let mut rows = stmt.query([bucket])?;
        while let Some(row) = rows.next()? {
            passes.push(pass_from_row(row)?);
        }
        let mut versions = Vec::new();
        let mut stmt = self.conn.prepare(
            "SELECT seq, key, version_id, last_modified, size, etag, delete_marker, blob, observed_at
             FROM object_versions WHERE bucket = ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([bucket])?;
        while let Some(row) = rows.next()? {
            versions.push(TrackedVersion {
                seq: row.get(0)?,
                key: row.get(1)?,
                version_id: row.get(2)?,
                last_modified: time(&row.get::<_, String>(3)?)?,
                size: row.get::<_, i64>(4)? as u64,
                etag: row.get(5)?,
                delete_marker: row.get::<_, i64>(6)? != 0,
                blob: row.get(7)?,
                observed_at: row
                    .get::<_, Option<String>>(8)?
                    .map(|t| time(&t))
                    .transpose()?,
            });
        }
        Ok(ObjectHistory { passes, versions })
    }

    /// Every tracked bucket with its window, by name.
    pub fn tracked_buckets(&self) -> Result<Vec<TrackedBucket>, CatalogError> {
        let mut stmt = self.conn.prepare(
            "SELECT p.bucket, MIN(p.at), MAX(p.at),
                    (SELECT mode FROM object_passes q WHERE q.bucket = p.bucket ORDER BY at DESC LIMIT 1),
                    (SELECT COUNT(*) FROM object_versions v WHERE v.bucket = p.bucket)
             FROM object_passes p GROUP BY p.bucket ORDER BY p.bucket",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(TrackedBucket {
                bucket: row.get(0)?,
                first_pass: time(&row.get::<_, String>(1)?)?,
                last_pass: time(&row.get::<_, String>(2)?)?,
                mode: mode(&row.get::<_, String>(3)?)?,
                versions: row.get::<_, i64>(4)? as u64,
            });
        }
        Ok(out)
    }
}

/// Inserts a pass and its versions; rows already there are kept.
fn insert_pass(tx: &rusqlite::Transaction<'_>, pass: &PassRecord) -> Result<(), CatalogError> {
    tx.execute(
        "INSERT OR IGNORE INTO object_passes (bucket, at, prefix, mode, complete_as_of, min_offset_ms, max_offset_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            pass.bucket,
            text(pass.clock.at),
            pass.prefix,
            pass.mode.as_str(),
            text(pass.complete_as_of),
            pass.clock.min_offset_ms,
            pass.clock.max_offset_ms
        ],
    )?;
    let mut insert = tx.prepare(
        "INSERT OR IGNORE INTO object_versions (bucket, seq, key, version_id, last_modified, size, etag, delete_marker, blob, observed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for v in &pass.versions {
        insert.execute(params![
            pass.bucket,
            v.seq,
            v.key,
            v.version_id,
            text(v.last_modified),
            v.size as i64,
            v.etag,
            i64::from(v.delete_marker),
            v.blob,
            v.observed_at.map(text)
        ])?;
    }
    Ok(())
}

fn pass_from_row(row: &Row<'_>) -> Result<PassSummary, CatalogError> {
    Ok(PassSummary {
        prefix: row.get(1)?,
        mode: mode(&row.get::<_, String>(2)?)?,
        complete_as_of: time(&row.get::<_, String>(3)?)?,
        clock: ClockSample {
            at: time(&row.get::<_, String>(0)?)?,
            min_offset_ms: row.get(4)?,
            max_offset_ms: row.get(5)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_and_versions_round_trip_and_repeat_harmlessly() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let at = DateTime::from_timestamp(1_800_000_000, 123_456_000).unwrap();
        let v = TrackedVersion {
            seq: 1,
            key: "k".into(),
            version_id: "abc".into(),
            last_modified: DateTime::from_timestamp(1_799_999_999, 0).unwrap(),
            size: 3,
            etag: "e".into(),
            delete_marker: false,
            blob: Some("ff".into()),
            observed_at: Some(DateTime::from_timestamp(1_800_000_003, 0).unwrap()),
        };
        let pass = PassRecord {
            bucket: "app".into(),
            prefix: String::new(),
            mode: TrackMode::Copy,
            complete_as_of: at,
            clock: ClockSample {
                at,
                min_offset_ms: -5,
                max_offset_ms: 7,
            },
            versions: vec![v.clone()],
            folded: false,
        };
        cat.record_pass(&pass).unwrap();
        cat.record_pass(&pass).unwrap();
        let h = cat.object_history("app").unwrap();
        assert_eq!(h.versions, [v]);
        assert_eq!(h.passes.len(), 1);
        assert_eq!(h.passes[0].clock, pass.clock);
        assert_eq!(h.next_seq(), 2);
        let tracked = cat.tracked_buckets().unwrap();
        assert_eq!(tracked.len(), 1);
        assert_eq!((tracked[0].first_pass, tracked[0].versions), (at, 1));
        assert!(cat.object_history("other").unwrap().versions.is_empty());
        cat.clear_object_history().unwrap();
        assert!(cat.tracked_buckets().unwrap().is_empty());
    }
}
