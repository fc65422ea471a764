//! What a retention window keeps of the database's history, decided by time and timeline
//! lineage, never by name (DESIGN §6): every backup that ended inside the window; for the
//! window's first instant, the newest backup that ended before it — on the newest
//! timeline, on every timeline written within the window, and overall; and all WAL that
//! replay from a kept backup can reach. Nothing archived within the window is removed,
//! and WAL of a timeline whose history is unknown is kept.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use tidemark_protocol::{HistoryEntry, SegmentName, TimelineId, WalSegmentSize};
use tidemark_store::backup::BackupInfo;

/// One WAL object in the repository (complete or partial segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalObject {
    pub key: String,
    pub name: SegmentName,
    pub size: u64,
    pub last_modified: Option<DateTime<Utc>>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection<'a> {
    /// Backups kept, oldest end first.
    pub keep: Vec<&'a BackupInfo>,
    /// Backups to remove, oldest end first.
    pub remove: Vec<&'a BackupInfo>,
    /// WAL objects to remove, lowest LSN first.
    pub remove_wal: Vec<&'a WalObject>,
}

impl Selection<'_> {
    /// Where the database's restorable window begins once the removals are done.
    pub fn window_start(&self) -> Option<DateTime<Utc>> {
        self.keep.first().map(|b| b.stop_time)
    }
}

/// The timelines a backup's recovery can follow, from the repository's history files.
struct Lineages<'h> {
    histories: &'h BTreeMap<TimelineId, Vec<HistoryEntry>>,
}

impl Lineages<'_> {
    /// Whether recovery from `backup` can reach timeline `tli`: `Some(true)` when `tli` is
    /// the backup's timeline or branches from it after the backup became consistent;
    /// `None` when `tli`'s history is unknown.
    fn reaches(&self, backup: &BackupInfo, tli: TimelineId) -> Option<bool> {
        let own = TimelineId(backup.timeline);
        if tli == own {
            return Some(true);
        }
        // Timeline 1 has no ancestors, and so no history file.
        let history = match tli {
            TimelineId(1) => &[][..],
            _ => self.histories.get(&tli)?,
        };
        Some(
            history
                .iter()
                .any(|e| e.parent == own && e.switch_lsn >= backup.stop_lsn),
        )
    }
}

/// Chooses what to keep for a window that begins at `cutoff`.
pub fn select<'a>(
    backups: &'a [BackupInfo],
    histories: &BTreeMap<TimelineId, Vec<HistoryEntry>>,
    wal: &'a [WalObject],
    seg: WalSegmentSize,
    cutoff: DateTime<Utc>,
) -> Selection<'a> {
    let lineages = Lineages { histories };
    let mut ordered: Vec<&BackupInfo> = backups.iter().collect();
    ordered.sort_by_key(|b| (b.stop_time, b.stop_lsn));
    let recent = |t: Option<DateTime<Utc>>| t.is_none_or(|t| t >= cutoff);

    // Timelines a target inside the window can be on.
    let mut live: BTreeSet<TimelineId> = wal
        .iter()
        .filter(|w| recent(w.last_modified))
        .map(|w| w.name.timeline)
        .collect();
    live.extend(
        ordered
            .iter()
            .filter(|b| b.stop_time > cutoff)
            .map(|b| TimelineId(b.timeline)),
    );
    let newest = wal
        .iter()
        .map(|w| w.name.timeline)
        .chain(histories.keys().copied())
        .chain(ordered.iter().map(|b| TimelineId(b.timeline)))
        .max();
    live.extend(newest);

    let before: Vec<&BackupInfo> = ordered
        .iter()
        .copied()
        .filter(|b| b.stop_time <= cutoff)
        .collect();
    // The newest backup before the window, overall (what the planner picks by time) and
    // on each live timeline's lineage (unknown lineage: any backup may be on it).
    let mut anchors: Vec<&BackupInfo> = before.last().copied().into_iter().collect();
    for &tli in &live {
        anchors.extend(
            before
                .iter()
                .rev()
                .find(|b| lineages.reaches(b, tli).unwrap_or(true)),
        );
    }
    let (keep, remove): (Vec<&BackupInfo>, Vec<&BackupInfo>) = ordered
        .into_iter()
        .partition(|b| b.stop_time > cutoff || anchors.iter().any(|a| std::ptr::eq(*a, *b)));

    let needed = |w: &WalObject| {
        keep.is_empty()
            || recent(w.last_modified)
            || keep
                .iter()
                .any(|k| match lineages.reaches(k, w.name.timeline) {
                    Some(reaches) => reaches && w.name.end_lsn(seg) > k.start_lsn,
                    None => true,
                })
    };
    let mut remove_wal: Vec<&WalObject> = wal.iter().filter(|w| !needed(w)).collect();
    remove_wal.sort_by_key(|w| (w.name.end_lsn(seg), w.name.timeline, w.key.as_str()));
    Selection {
        keep,
        remove,
        remove_wal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_protocol::Lsn;
    use tidemark_store::backup::BackupId;

    const MB16: u64 = 16 << 20;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(MB16).unwrap()
    }

    fn t(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + h * 3600, 0).unwrap()
    }

    /// A backup on `tli` over segments `start..=stop`, ending at hour `h`.
    fn backup(tli: u32, start: u64, stop: u64, h: i64) -> BackupInfo {
        BackupInfo {
            id: BackupId::from_time(t(h) - chrono::Duration::minutes(10)),
            label: String::new(),
            system_identifier: 1,
            pg_major: 17,
            timeline: tli,
            start_lsn: Lsn(start * MB16 + 40),
            stop_lsn: Lsn(stop * MB16 + 100),
            start_time: t(h) - chrono::Duration::minutes(10),
            stop_time: t(h),
            archives: Vec::new(),
            manifest_key: None,
            skipped_files: Vec::new(),
            from_standby: false,
        }
    }

    /// Segment `segno` of `tli`, uploaded at hour `h`.
    fn wal(tli: u32, segno: u64, h: i64) -> WalObject {
        let name = SegmentName::new(TimelineId(tli), segno);
        WalObject {
            key: format!("wal/{}", name.file_name(seg())),
            name,
            size: 1,
            last_modified: Some(t(h)),
        }
    }

    fn ids(backups: &[&BackupInfo]) -> Vec<i64> {
        backups
            .iter()
            .map(|b| (b.stop_time - t(0)).num_hours())
            .collect()
    }

    fn segnos(wal: &[&WalObject]) -> Vec<(u32, u64)> {
        wal.iter()
            .map(|w| (w.name.timeline.0, w.name.segno))
            .collect()
    }

    #[test]
    fn one_timeline_keeps_the_backup_before_the_window_and_wal_from_its_start() {
        // Backups end at hours 0, 10, 20 and 30 (listed out of time order: ids are not
        // what decides); one WAL segment per hour.
        let backups = vec![
            backup(1, 20, 20, 20),
            backup(1, 0, 0, 0),
            backup(1, 30, 30, 30),
            backup(1, 10, 10, 10),
        ];
        let wal: Vec<WalObject> = (0..=35).map(|h| wal(1, h as u64, h)).collect();
        let none = BTreeMap::new();
        let s = select(&backups, &none, &wal, seg(), t(25));
        assert_eq!(ids(&s.keep), [20, 30]);
        assert_eq!(ids(&s.remove), [0, 10]);
        assert_eq!(s.window_start(), Some(t(20)));
        assert_eq!(
            segnos(&s.remove_wal),
            (0..20).map(|n| (1, n)).collect::<Vec<_>>()
        );

        // A cutoff exactly at a backup's end keeps that backup.
        let s = select(&backups, &none, &wal, seg(), t(20));
        assert_eq!(ids(&s.keep), [20, 30]);
        // Before every backup: nothing goes.
        let s = select(&backups, &none, &wal, seg(), t(-1));
        assert!(s.remove.is_empty() && s.remove_wal.is_empty());
        // After every backup: the newest stays, with its WAL.
        let s = select(&backups, &none, &wal, seg(), t(40));
        assert_eq!(ids(&s.keep), [30]);
        assert_eq!(segnos(&s.remove_wal).len(), 30);
        // Without backups nothing is removed, however old.
        let s = select(&[], &none, &wal, seg(), t(40));
        assert!(s.remove_wal.is_empty());
    }

    #[test]
    fn wal_archived_within_the_window_stays_even_before_every_backup() {
        let backups = vec![backup(1, 10, 10, 10)];
        // Segments 0..5 were uploaded late (at hour 12), e.g. by wal-push catching up.
        let wal: Vec<WalObject> = (0..=12)
            .map(|n| wal(1, n, if n < 5 { 12 } else { n as i64 }))
            .collect();
        let s = select(&backups, &BTreeMap::new(), &wal, seg(), t(11));
        assert_eq!(
            segnos(&s.remove_wal),
            (5..10).map(|n| (1, n)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_restore_that_forked_the_history_keeps_what_each_live_timeline_needs() {
        // Timeline 1: backups ending at hours 0 (segment 0) and 20 (segment 20). At hour
        // 22 the cluster was restored to segment 8 and promoted: timeline 2 branches from
        // timeline 1 at segment 8 and is the one written since. By time alone, the backup
        // at hour 20 would anchor the window — but it cannot reach timeline 2.
        let backups = vec![backup(1, 0, 0, 0), backup(1, 20, 20, 20)];
        let mut archived: Vec<WalObject> = (0..=21).map(|n| wal(1, n, n as i64)).collect();
        archived.extend((8..=30).map(|n| wal(2, n, n as i64 - 8 + 22)));
        let wal = archived;
        let histories = BTreeMap::from([(
            TimelineId(2),
            vec![HistoryEntry {
                parent: TimelineId(1),
                switch_lsn: Lsn(8 * MB16 + 500),
                reason: String::new(),
            }],
        )]);
        let s = select(&backups, &histories, &wal, seg(), t(25));
        assert_eq!(ids(&s.keep), [0, 20]);
        assert!(s.remove.is_empty());
        assert!(s.remove_wal.is_empty(), "{:?}", segnos(&s.remove_wal));

        // Once timeline 2 has its own backup before the window, timeline 1 goes: its old
        // backups, and its WAL that no kept backup reaches.
        let mut backups = backups;
        backups.push(backup(2, 26, 26, 26));
        let s = select(&backups, &histories, &wal, seg(), t(45));
        assert_eq!(ids(&s.keep), [26]);
        assert_eq!(ids(&s.remove), [0, 20]);
        let removed = segnos(&s.remove_wal);
        assert!(
            removed.iter().all(|&(tli, n)| tli == 1 || n < 26),
            "{removed:?}"
        );
        assert_eq!(removed.len(), 22 + (26 - 8));

        // Without timeline 2's history file, which backup reaches it is unknown: all of
        // its WAL stays.
        let s = select(&backups[..2], &BTreeMap::new(), &wal, seg(), t(25));
        assert_eq!(ids(&s.keep), [20]);
        assert_eq!(
            segnos(&s.remove_wal),
            (0..20).map(|n| (1, n)).collect::<Vec<_>>()
        );
    }
}
