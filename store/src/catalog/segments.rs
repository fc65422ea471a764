//! Archived WAL in the catalog: complete segments and the newest partial ones.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};
use tidemark_protocol::{Lsn, SegmentName, TimelineId, WalSegmentSize};

use super::{Catalog, CatalogError};
use crate::wal_summary::{RestorePoint, WalSummary};

/// One archived WAL object, complete or partial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRecord {
    pub name: SegmentName,
    /// A partial object holds `start_lsn..end_lsn`, a prefix of the segment.
    pub partial: bool,
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
    pub raw_size: u64,
    pub stored_size: u64,
    /// CRC-32 of the uncompressed bytes.
    pub crc32: u32,
    /// Repository key of the object.
    pub key: String,
    pub archived_at: DateTime<Utc>,
    /// What the WAL holds, when it was summarised (see `wal_summary`).
    pub summary: Option<WalSummary>,
}

const COLUMNS: &str = "timeline, segno, partial, start_lsn, end_lsn, raw_size, stored_size, crc32, key, archived_at, first_xact_time, last_xact_time";

/// LSNs and sizes are stored as SQLite's signed 64-bit integers, bit for bit.
fn to_i64(v: u64) -> i64 {
    v as i64
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<Result<SegmentRecord, CatalogError>> {
    let tli: i64 = row.get(0)?;
    let segno: i64 = row.get(1)?;
    let archived_at: String = row.get(9)?;
    let Ok(tli) = u32::try_from(tli) else {
        return Ok(Err(CatalogError::Invalid(format!("timeline {tli}"))));
    };
    let archived_at = match DateTime::parse_from_rfc3339(&archived_at) {
        Ok(t) => t.with_timezone(&Utc),
        Err(_) => return Ok(Err(CatalogError::Invalid(format!("time {archived_at:?}")))),
    };
    Ok(Ok(SegmentRecord {
        name: SegmentName::new(TimelineId(tli), segno as u64),
        partial: row.get::<_, i64>(2)? != 0,
        start_lsn: Lsn(row.get::<_, i64>(3)? as u64),
        end_lsn: Lsn(row.get::<_, i64>(4)? as u64),
        raw_size: row.get::<_, i64>(5)? as u64,
        stored_size: row.get::<_, i64>(6)? as u64,
        crc32: row.get::<_, i64>(7)? as u32,
        key: row.get(8)?,
        archived_at,
        // Restore points live in their own table; the times are what listings show.
        summary: match (
            row.get::<_, Option<String>>(10)?,
            row.get::<_, Option<String>>(11)?,
        ) {
            (Some(a), Some(b)) => Some(WalSummary {
                first_xact: DateTime::parse_from_rfc3339(&a)
                    .ok()
                    .map(|t| t.with_timezone(&Utc)),
                last_xact: DateTime::parse_from_rfc3339(&b)
                    .ok()
                    .map(|t| t.with_timezone(&Utc)),
                ..WalSummary::default()
            }),
            _ => None,
        },
    }))
}

fn insert(conn: &rusqlite::Connection, rec: &SegmentRecord) -> Result<(), CatalogError> {
    let tli = i64::from(rec.name.timeline.0);
    let segno = to_i64(rec.name.segno);
    conn.execute(
        &format!("INSERT OR REPLACE INTO segments ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
        params![
            tli,
            segno,
            i64::from(rec.partial),
            to_i64(rec.start_lsn.0),
            to_i64(rec.end_lsn.0),
            to_i64(rec.raw_size),
            to_i64(rec.stored_size),
            i64::from(rec.crc32),
            rec.key,
            rec.archived_at.to_rfc3339(),
            rec.summary.as_ref().and_then(|s| s.first_xact).map(|t| t.to_rfc3339()),
            rec.summary.as_ref().and_then(|s| s.last_xact).map(|t| t.to_rfc3339()),
        ],
    )?;
    for rp in rec.summary.iter().flat_map(|s| &s.restore_points) {
        conn.execute(
            "INSERT OR REPLACE INTO restore_points (timeline, lsn, name, time) VALUES (?1, ?2, ?3, ?4)",
            params![tli, to_i64(rp.lsn.0), rp.name, rp.time.to_rfc3339()],
        )?;
    }
    Ok(())
}

impl Catalog {
    /// Record an archived object. A partial row replaces the previous partial row of that
    /// segment. A complete segment leaves the partial row of the same segment in place:
    /// that row names an object still to be removed (`stale_partials`), and goes with it
    /// (`forget_partial`).
    pub fn record_segment(&self, rec: &SegmentRecord) -> Result<(), CatalogError> {
        let tx = self.conn().unchecked_transaction()?;
        insert(&tx, rec)?;
        tx.commit()?;
        Ok(())
    }

    /// Replace the whole WAL index with `records`, in one transaction (`reindex`).
    pub fn replace_segments(&self, records: &[SegmentRecord]) -> Result<(), CatalogError> {
        let tx = self.conn().unchecked_transaction()?;
        tx.execute("DELETE FROM segments", [])?;
        tx.execute("DELETE FROM restore_points", [])?;
        for rec in records {
            insert(&tx, rec)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every restore point found in the archived WAL, by timeline and LSN.
    pub fn restore_points(&self) -> Result<Vec<(TimelineId, RestorePoint)>, CatalogError> {
        let mut stmt = self.conn().prepare(
            "SELECT timeline, lsn, name, time FROM restore_points ORDER BY timeline, lsn",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (tli, lsn, name, time) = row?;
            let time = DateTime::parse_from_rfc3339(&time)
                .map_err(|_| CatalogError::Invalid(format!("time {time:?}")))?
                .with_timezone(&Utc);
            let tli =
                u32::try_from(tli).map_err(|_| CatalogError::Invalid(format!("timeline {tli}")))?;
            out.push((
                TimelineId(tli),
                RestorePoint {
                    lsn: Lsn(lsn as u64),
                    name,
                    time,
                },
            ));
        }
        Ok(out)
    }

    /// Forgets WAL objects removed from the repository (by `expire`): their rows, and the
    /// restore points inside them.
    pub fn forget_segments(
        &self,
        removed: &[(SegmentName, &str)],
        seg: WalSegmentSize,
    ) -> Result<(), CatalogError> {
        let tx = self.conn().unchecked_transaction()?;
        for (name, key) in removed {
            tx.execute("DELETE FROM segments WHERE key = ?1", [key])?;
            tx.execute(
                "DELETE FROM restore_points WHERE timeline = ?1 AND lsn >= ?2 AND lsn < ?3",
                params![
                    i64::from(name.timeline.0),
                    to_i64(name.start_lsn(seg).0),
                    to_i64(name.end_lsn(seg).0)
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Forget a partial row (its object was removed from the repository).
    pub fn forget_partial(&self, name: SegmentName) -> Result<(), CatalogError> {
        self.conn().execute(
            "DELETE FROM segments WHERE timeline = ?1 AND segno = ?2 AND partial = 1",
            params![i64::from(name.timeline.0), to_i64(name.segno)],
        )?;
        Ok(())
    }

    fn query(
        &self,
        sql_tail: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<SegmentRecord>, CatalogError> {
        let mut stmt = self
            .conn()
            .prepare(&format!("SELECT {COLUMNS} FROM segments {sql_tail}"))?;
        let rows = stmt.query_map(args, from_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row??);
        }
        Ok(out)
    }

    /// Every archived object, by timeline, segment, complete before partial.
    pub fn segments(&self) -> Result<Vec<SegmentRecord>, CatalogError> {
        self.query("ORDER BY timeline, segno, partial", [])
    }

    /// Partial rows that a complete segment has made stale: on `name.timeline`, up to
    /// `name.segno`, each partial whose segment is stored complete. A partial without
    /// its complete segment is never stale: it may be all that is left of that WAL (the
    /// tail before an accepted gap).
    pub fn stale_partials(&self, name: SegmentName) -> Result<Vec<SegmentRecord>, CatalogError> {
        self.query(
            "WHERE partial = 1 AND timeline = ?1 AND segno IN
                (SELECT segno FROM segments WHERE partial = 0 AND timeline = ?1 AND segno <= ?2)
             ORDER BY segno",
            params![i64::from(name.timeline.0), to_i64(name.segno)],
        )
    }

    /// The newest archived object (highest end LSN), complete or partial.
    pub fn newest(&self) -> Result<Option<SegmentRecord>, CatalogError> {
        Ok(self
            .query(
                "ORDER BY end_lsn DESC, timeline DESC, partial ASC LIMIT 1",
                [],
            )?
            .pop())
    }

    /// Where the WAL a restore can reach ends: on the newest timeline, the object that
    /// ends the unbroken run of complete segments from its lowest one (at or after
    /// `since`, the end of an accepted gap) — the partial of the first missing segment if
    /// there is one, else the run's last segment. Segments stored beyond a hole (an
    /// upload stuck on an earlier one) do not count.
    pub fn stored_run_end(
        &self,
        since: Option<Lsn>,
    ) -> Result<Option<SegmentRecord>, CatalogError> {
        let Some(timeline) = self.newest_timeline()? else {
            return self.newest();
        };
        let tli = i64::from(timeline.0);
        let lowest: Option<i64> = self.conn().query_row(
            "SELECT min(segno) FROM segments WHERE partial = 0 AND timeline = ?1 AND start_lsn >= ?2",
            params![tli, to_i64(since.map_or(0, |l| l.0))],
            |r| r.get(0),
        )?;
        let Some(lowest) = lowest else {
            return self.newest();
        };
        let hole = self
            .first_missing(timeline, Some(lowest as u64))?
            .unwrap_or(lowest as u64);
        let at = |partial: bool, segno: u64| {
            self.query(
                "WHERE timeline = ?1 AND partial = ?2 AND segno = ?3",
                params![tli, i64::from(partial), to_i64(segno)],
            )
        };
        let mut found = at(true, hole)?;
        if found.is_empty() {
            found = at(false, hole.saturating_sub(1))?;
        }
        Ok(found.pop())
    }

    /// The newest timeline with a complete segment.
    pub fn newest_timeline(&self) -> Result<Option<TimelineId>, CatalogError> {
        let tli: Option<i64> = self
            .conn()
            .query_row(
                "SELECT max(timeline) FROM segments WHERE partial = 0",
                [],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        Ok(tli.and_then(|t| u32::try_from(t).ok()).map(TimelineId))
    }

    /// The first segment number on `timeline`, at or after `from`, that has no complete
    /// segment archived: where streaming must resume so that no byte is skipped.
    /// With `from = None`, the search starts at the lowest segment of the newest
    /// unbroken run of complete segments on that timeline; `None` when the timeline
    /// has no complete segment.
    pub fn first_missing(
        &self,
        timeline: TimelineId,
        from: Option<u64>,
    ) -> Result<Option<u64>, CatalogError> {
        let mut stmt = self.conn().prepare(
            "SELECT segno FROM segments WHERE partial = 0 AND timeline = ?1 ORDER BY segno DESC",
        )?;
        let segnos: Vec<u64> = stmt
            .query_map([i64::from(timeline.0)], |r| r.get::<_, i64>(0))?
            .map(|r| r.map(|v| v as u64))
            .collect::<Result<_, _>>()?;
        let start = match from {
            Some(f) => f,
            None => {
                let Some(&top) = segnos.first() else {
                    return Ok(None);
                };
                // Walk down the newest unbroken run.
                let mut low = top;
                for &s in &segnos[1..] {
                    if s + 1 != low {
                        break;
                    }
                    low = s;
                }
                low
            }
        };
        let mut next = start;
        for &s in segnos.iter().rev().filter(|&&s| s >= start) {
            if s != next {
                break;
            }
            next += 1;
        }
        Ok(Some(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn rec(tli: u32, segno: u64, partial: bool, end_off: u64) -> SegmentRecord {
        let seg = 1u64 << 24;
        SegmentRecord {
            name: SegmentName::new(TimelineId(tli), segno),
            partial,
            start_lsn: Lsn(segno * seg),
            end_lsn: Lsn(segno * seg + end_off),
            raw_size: end_off,
            stored_size: 100,
            crc32: 0xDEAD_BEEF,
            key: format!("wal/{tli}/{segno}{}", if partial { ".partial" } else { "" }),
            archived_at: Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap(),
            summary: None,
        }
    }

    fn catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        (dir, cat)
    }

    #[test]
    fn a_completed_segment_keeps_its_partial_row_until_the_object_is_removed() {
        let (_d, cat) = catalog();
        let full = 1 << 24;
        cat.record_segment(&rec(1, 3, true, 100)).unwrap();
        cat.record_segment(&rec(1, 3, true, 200)).unwrap();
        assert_eq!(cat.segments().unwrap(), vec![rec(1, 3, true, 200)]);
        assert_eq!(cat.newest().unwrap(), Some(rec(1, 3, true, 200)));
        cat.record_segment(&rec(1, 3, false, full)).unwrap();
        // The partial object still exists: its row is how it gets removed.
        let name = SegmentName::new(TimelineId(1), 3);
        assert_eq!(
            cat.stale_partials(name).unwrap(),
            vec![rec(1, 3, true, 200)]
        );
        cat.forget_partial(name).unwrap();
        assert_eq!(cat.segments().unwrap(), vec![rec(1, 3, false, full)]);
        assert_eq!(cat.newest_timeline().unwrap(), Some(TimelineId(1)));
    }

    #[test]
    fn the_stored_run_ends_at_the_first_hole_not_at_the_newest_object() {
        let (_d, cat) = catalog();
        assert_eq!(cat.stored_run_end(None).unwrap(), None);
        let full = 1 << 24;
        for s in [3, 4, 6] {
            cat.record_segment(&rec(1, s, false, full)).unwrap();
        }
        cat.record_segment(&rec(1, 7, true, 10)).unwrap();
        // Segment 5's upload is stuck: the run ends with 4.
        assert_eq!(
            cat.stored_run_end(None).unwrap(),
            Some(rec(1, 4, false, full))
        );
        // Unless 5 was lost in an accepted gap ending at 6: the run after it counts.
        assert_eq!(
            cat.stored_run_end(Some(Lsn(6 << 24))).unwrap(),
            Some(rec(1, 7, true, 10))
        );
        cat.record_segment(&rec(1, 5, true, 10)).unwrap();
        assert_eq!(cat.stored_run_end(None).unwrap(), Some(rec(1, 5, true, 10)));
        cat.record_segment(&rec(1, 5, false, full)).unwrap();
        assert_eq!(cat.stored_run_end(None).unwrap(), Some(rec(1, 7, true, 10)));
    }

    #[test]
    fn only_partials_of_completed_segments_are_stale() {
        let (_d, cat) = catalog();
        cat.record_segment(&rec(1, 3, true, 10)).unwrap();
        cat.record_segment(&rec(1, 4, true, 10)).unwrap();
        cat.record_segment(&rec(1, 5, true, 10)).unwrap();
        cat.record_segment(&rec(2, 1, true, 10)).unwrap();
        cat.record_segment(&rec(1, 4, false, 1 << 24)).unwrap();
        let stale = |segno| -> Vec<u64> {
            cat.stale_partials(SegmentName::new(TimelineId(1), segno))
                .unwrap()
                .iter()
                .map(|r| r.name.segno)
                .collect()
        };
        // 3 was never completed (the tail before a gap): kept.
        assert_eq!(stale(5), vec![4]);
        assert_eq!(stale(3), Vec::<u64>::new());
        cat.forget_partial(SegmentName::new(TimelineId(1), 4))
            .unwrap();
        assert_eq!(cat.segments().unwrap().len(), 4);
    }

    #[test]
    fn first_missing_finds_the_resume_point() {
        let (_d, cat) = catalog();
        let t = TimelineId(1);
        assert_eq!(cat.first_missing(t, None).unwrap(), None);
        assert_eq!(cat.first_missing(t, Some(7)).unwrap(), Some(7));
        for s in [2, 3, 5, 6, 8] {
            cat.record_segment(&rec(1, s, false, 1 << 24)).unwrap();
        }
        cat.record_segment(&rec(1, 9, true, 5)).unwrap();
        // From the slot's position: the first hole at or after it.
        assert_eq!(cat.first_missing(t, Some(2)).unwrap(), Some(4));
        assert_eq!(cat.first_missing(t, Some(5)).unwrap(), Some(7));
        assert_eq!(cat.first_missing(t, Some(8)).unwrap(), Some(9));
        assert_eq!(cat.first_missing(t, Some(100)).unwrap(), Some(100));
        // Without it: the end of the newest unbroken run.
        assert_eq!(cat.first_missing(t, None).unwrap(), Some(9));
        assert_eq!(cat.first_missing(TimelineId(2), None).unwrap(), None);
    }

    #[test]
    fn summaries_and_restore_points_are_indexed() {
        let (_d, cat) = catalog();
        let t = Utc.with_ymd_and_hms(2026, 11, 21, 9, 30, 0).unwrap();
        let mut summary = WalSummary::default();
        summary.xact(700, Some(700), t);
        summary.restore_points.push(RestorePoint {
            lsn: Lsn(0x300_0028),
            name: "before".into(),
            time: t,
        });
        let mut r = rec(1, 3, false, 1 << 24);
        r.summary = Some(summary);
        cat.record_segment(&r).unwrap();
        let got = cat.segments().unwrap().pop().unwrap().summary.unwrap();
        assert_eq!((got.first_xact, got.last_xact), (Some(t), Some(t)));
        let rps = cat.restore_points().unwrap();
        assert_eq!(rps.len(), 1);
        assert_eq!(
            (rps[0].0, rps[0].1.name.as_str()),
            (TimelineId(1), "before")
        );
        // reindex replaces them with what the repository says.
        cat.replace_segments(&[rec(1, 3, false, 1 << 24)]).unwrap();
        assert!(cat.restore_points().unwrap().is_empty());
        assert_eq!(cat.segments().unwrap()[0].summary, None);
    }
}
