//! Restore planning: which backup, which WAL, and whether the target is reachable at
//! all — decided from the repository alone before anything is written.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, TryStreamExt};

use tidemark_protocol::{
    parse_history, HistoryEntry, Lsn, SegmentName, TimelineId, WalSegmentSize,
};
use tidemark_store::backup::{BackupId, BackupInfo};
use tidemark_store::layout;
use tidemark_store::repository::{CompleteMarker, RepoError, Repository};
use tidemark_store::wal_summary::WalSummary;

use crate::target::{RecoveryTarget, TimelineTarget};

/// What a restore will do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub backup: BackupInfo,
    pub target: RecoveryTarget,
    /// First and last WAL segment recovery needs (the last may be partial).
    pub wal_first: SegmentName,
    pub wal_last: SegmentName,
    /// Where the archived WAL ends (complete segments, then the newest partial).
    pub archive_end: Lsn,
    /// How the target was resolved, when the planner changed it.
    pub note: Option<String>,
}

/// Why a target cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the repository has no complete backup; HINT: take one with `tidemark backup`")]
    NoBackups,
    #[error("backup {0} is not in the repository; HINT: see `tidemark list backups`")]
    UnknownBackup(BackupId),
    #[error("{target} is before the end of the oldest usable backup ({oldest} ended at {end}); no backup can reach it")]
    BeforeOldestBackup {
        target: RecoveryTarget,
        oldest: BackupId,
        end: String,
    },
    #[error("backup {backup} ends at {end}, after {target}; HINT: choose an older backup or leave --backup out")]
    BackupAfterTarget {
        backup: BackupId,
        end: String,
        target: RecoveryTarget,
    },
    #[error("{target} is beyond the archived WAL, which ends at {archive_end}; HINT: is `tidemark stream` running? `tidemark status` shows the archive's end")]
    BeyondArchive {
        target: RecoveryTarget,
        archive_end: Lsn,
    },
    #[error("the archived WAL has a gap: segment {missing} is missing between backup {backup} and {target}; HINT: choose a target before the gap, or a backup after it")]
    Gap {
        missing: String,
        backup: BackupId,
        target: RecoveryTarget,
    },
    #[error("{0} is not in the archived WAL; HINT: check the name or transaction id")]
    NotInArchive(RecoveryTarget),
    #[error("no transaction in the archive ended after {target}, and the archive is not known to have been complete then ({complete}); PostgreSQL could not stop there; HINT: choose an earlier time, or wait for `tidemark stream` to catch up")]
    NotProvablyComplete {
        target: RecoveryTarget,
        complete: String,
    },
    #[error("timeline {0} has no history file in the repository; HINT: see `tidemark list wal` for the archived timelines")]
    UnknownTimeline(TimelineId),
    #[error("timeline {timeline} does not descend from backup {backup} after it became consistent; HINT: choose another backup or timeline")]
    NotDescendant {
        timeline: TimelineId,
        backup: BackupId,
    },
    #[error("the history file of timeline {0} is damaged: {1}")]
    BadHistory(TimelineId, String),
    #[error(transparent)]
    Repository(#[from] RepoError),
}

/// What the repository holds of one timeline's WAL.
struct ArchivedWal {
    complete: BTreeSet<u64>,
    /// The newest partial segment: its number, end and key.
    partial: Option<(u64, Lsn, String)>,
    /// Partial segments of segments not stored complete (the newest, and the tail
    /// before each accepted gap): end and key, by segment number.
    tails: BTreeMap<u64, (Lsn, String)>,
}

impl ArchivedWal {
    async fn list(
        repo: &Repository,
        timeline: TimelineId,
        seg: WalSegmentSize,
    ) -> Result<Self, RepoError> {
        let prefix = layout::wal_timeline_prefix(timeline);
        let listing = repo.list(&prefix).await?;
        let mut complete = BTreeSet::new();
        let mut partial_segnos = Vec::new();
        for info in listing {
            match layout::parse_wal_key(&info.key, seg) {
                Some(k) if !k.partial => {
                    complete.insert(k.name.segno);
                }
                Some(k) => partial_segnos.push((k.name, info.key)),
                None => {}
            }
        }
        // Partials of completed segments are superseded; the others end what is there.
        let mut tails = BTreeMap::new();
        for (name, key) in partial_segnos {
            if complete.contains(&name.segno) {
                continue;
            }
            let head = repo.head(&key).await?;
            let end = head
                .and_then(|h| h.metadata.get(tidemark_store::meta::END_LSN).cloned())
                .and_then(|v| v.parse::<Lsn>().ok());
            if let Some(end) = end {
                tails.insert(name.segno, (end, key));
            }
        }
        let top = complete.last().copied();
        let partial = tails
            .last_key_value()
            .filter(|(s, _)| top.is_none_or(|t| **s > t))
            .map(|(s, (end, key))| (*s, *end, key.clone()));
        Ok(ArchivedWal {
            complete,
            partial,
            tails,
        })
    }

    /// The end of WAL that is unbroken from segment `from`, and the first missing
    /// segment (if the run stops before the newest archived WAL).
    fn unbroken_from(&self, from: u64, seg: WalSegmentSize) -> (Lsn, Option<u64>) {
        let mut next = from;
        while self.complete.contains(&next) {
            next += 1;
        }
        let newest = self.complete.last().copied().map_or(0, |t| t + 1);
        match (&self.partial, self.tails.get(&next)) {
            (Some((p, end, _)), _) if *p == next => (*end, None),
            // The tail before a gap: the WAL stops within this segment.
            (_, Some((end, _))) => (*end, Some(next)),
            _ => {
                let end = Lsn(next * seg.bytes());
                let later_partial = self.partial.as_ref().is_some_and(|(p, _, _)| *p > next);
                let gap = (next < newest || later_partial).then_some(next);
                (end, gap)
            }
        }
    }
}

/// Plan a restore to `target`, from `backup` if given, else the newest backup that
/// ends before the target.
pub async fn plan(
    repo: &Repository,
    seg: WalSegmentSize,
    target: &RecoveryTarget,
    timeline_target: TimelineTarget,
    backup: Option<&BackupId>,
) -> Result<Plan, PlanError> {
    let backups = repo.backups().await?;
    let oldest = backups.first().cloned().ok_or(PlanError::NoBackups)?;
    // Restore points and transactions are found in the WAL summaries; a backup must end
    // before them. Unknown (unsummarised WAL): only the oldest backup is certain to.
    let located = match target {
        RecoveryTarget::Name(_) | RecoveryTarget::Xid(_) => {
            let newest = backups.last().unwrap_or(&oldest);
            locate(repo, seg, TimelineId(newest.timeline), target).await?
        }
        _ => None,
    };
    let ends_before = |b: &BackupInfo| match (target, located) {
        (RecoveryTarget::Lsn(l), _) => b.stop_lsn <= *l,
        (RecoveryTarget::Time(t), _) => b.stop_time <= *t,
        (RecoveryTarget::Name(_) | RecoveryTarget::Xid(_), Some(at)) => b.stop_lsn <= at,
        (RecoveryTarget::Name(_) | RecoveryTarget::Xid(_), None) => b.id == oldest.id,
        _ => true,
    };
    let chosen = match backup {
        Some(id) => {
            let b = backups
                .iter()
                .find(|b| &b.id == id)
                .cloned()
                .ok_or_else(|| PlanError::UnknownBackup(id.clone()))?;
            if !ends_before(&b) {
                return Err(PlanError::BackupAfterTarget {
                    backup: b.id.clone(),
                    end: describe_end(&b),
                    target: target.clone(),
                });
            }
            b
        }
        None => backups
            .iter()
            .rev()
            .find(|b| ends_before(b))
            .cloned()
            .ok_or_else(|| PlanError::BeforeOldestBackup {
                target: target.clone(),
                oldest: oldest.id.clone(),
                end: describe_end(&oldest),
            })?,
    };

    let (timeline, wal, wal_first, archive_end, gap) =
        follow_timelines(repo, seg, &chosen, timeline_target).await?;
    // The WAL recovery must have: through the target's LSN when it has one, else all of it.
    let needed_end = match target {
        RecoveryTarget::Lsn(l) => *l,
        RecoveryTarget::Immediate => chosen.stop_lsn,
        _ => archive_end,
    };
    let covered = needed_end.max(chosen.stop_lsn);
    let gap_error = |missing: SegmentName| PlanError::Gap {
        missing: missing.file_name(seg),
        backup: chosen.id.clone(),
        target: target.clone(),
    };
    if covered > archive_end {
        return Err(match gap {
            Some(missing) => gap_error(missing),
            None => PlanError::BeyondArchive {
                target: target.clone(),
                archive_end,
            },
        });
    }
    let from = if wal_first.timeline == timeline {
        wal_first.segno
    } else {
        0
    };
    if let Some(missing) = gap {
        // Recovery would stop at the gap, short of what was asked — unless a time target
        // is reached before it (a transaction in the WAL before the gap ended after it).
        let reached_before = match target {
            RecoveryTarget::Time(t) => {
                xact_after(repo, &wal, timeline, seg, from, Some(missing.segno), t).await?
            }
            _ => false,
        };
        if matches!(target, RecoveryTarget::Latest | RecoveryTarget::Time(_)) && !reached_before {
            return Err(gap_error(missing));
        }
    }
    let mut resolved = target.clone();
    let mut note = None;
    if let RecoveryTarget::Time(t) = target {
        if !xact_after(repo, &wal, timeline, seg, from, None, t).await? {
            // PostgreSQL stops on a time only at a transaction that ended after it; with
            // none in the archive, the end of the archive is the same database — if the
            // archive provably held everything written up to the target time.
            let marker = repo.complete_marker(timeline).await?;
            let when = |m: &CompleteMarker| {
                format!(
                    "complete through {} at {}",
                    m.lsn,
                    m.server_time
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                )
            };
            match marker {
                Some(m) if m.server_time >= *t && m.lsn <= archive_end => {
                    note = Some(format!(
                        "no transaction ended after {target}; the archive was {}, so recovery runs to its end",
                        when(&m)
                    ));
                    resolved = RecoveryTarget::Latest;
                }
                other => {
                    return Err(PlanError::NotProvablyComplete {
                        target: target.clone(),
                        complete: match other {
                            Some(m) => format!("it was last known {}", when(&m)),
                            None => "the archiver never recorded it complete".to_string(),
                        },
                    })
                }
            }
        }
    }
    let wal_last = SegmentName::containing(timeline, Lsn(covered.0.saturating_sub(1)), seg);
    Ok(Plan {
        backup: chosen,
        target: resolved,
        wal_first,
        wal_last,
        archive_end,
        note,
    })
}

/// The timeline recovery ends on: the backup's own (`current`), the one asked for, or
/// (`latest`) the highest timeline in the repository whose history descends from it.
async fn final_timeline(
    repo: &Repository,
    backup: &BackupInfo,
    wanted: TimelineTarget,
) -> Result<(TimelineId, Vec<HistoryEntry>), PlanError> {
    let own = TimelineId(backup.timeline);
    let candidates: Vec<TimelineId> = match wanted {
        TimelineTarget::Current => return Ok((own, Vec::new())),
        TimelineTarget::Id(t) if t == own => return Ok((own, Vec::new())),
        TimelineTarget::Id(t) => vec![t],
        TimelineTarget::Latest => {
            let listing = repo.list(layout::WAL_PREFIX).await?;
            let mut tlis: Vec<TimelineId> = listing
                .iter()
                .filter_map(|o| layout::parse_history_key(&o.key))
                .filter(|t| *t > own)
                .collect();
            tlis.sort();
            tlis.reverse();
            tlis
        }
    };
    for tli in candidates {
        let bytes = match repo.history(tli).await? {
            Some(bytes) => bytes,
            None if wanted == TimelineTarget::Latest => continue,
            None => return Err(PlanError::UnknownTimeline(tli)),
        };
        let history =
            parse_history(&bytes).map_err(|e| PlanError::BadHistory(tli, e.to_string()))?;
        // It must branch from the backup's timeline after the backup became consistent.
        match history.iter().find(|e| e.parent == own) {
            Some(e) if e.switch_lsn >= backup.stop_lsn => return Ok((tli, history)),
            _ if wanted == TimelineTarget::Latest => continue,
            _ => {
                return Err(PlanError::NotDescendant {
                    timeline: tli,
                    backup: backup.id.clone(),
                })
            }
        }
    }
    Ok((own, Vec::new()))
}

/// Walk the archived WAL from the backup's start along the timelines recovery follows:
/// each timeline up to the segment where the next one branches off (that segment itself
/// comes from the new timeline, which holds a copy of the old one's part), then the final
/// timeline to its end. Returns the final timeline, its WAL, the first segment, where the
/// unbroken WAL ends, and the first missing segment if the WAL stops short.
async fn follow_timelines(
    repo: &Repository,
    seg: WalSegmentSize,
    backup: &BackupInfo,
    wanted: TimelineTarget,
) -> Result<
    (
        TimelineId,
        ArchivedWal,
        SegmentName,
        Lsn,
        Option<SegmentName>,
    ),
    PlanError,
> {
    let (last, history) = final_timeline(repo, backup, wanted).await?;
    let own = TimelineId(backup.timeline);
    let first = SegmentName::containing(own, backup.start_lsn, seg);
    // Each timeline before the last, with the LSN where the next one branches off.
    let branches = history
        .iter()
        .filter(|e| e.parent >= own)
        .map(|e| (e.parent, e.switch_lsn));
    let mut pos = backup.start_lsn;
    for (tli, switch) in branches {
        let wal = ArchivedWal::list(repo, tli, seg).await?;
        let (end, _) = wal.unbroken_from(pos.segment_number(seg), seg);
        let needed = switch.segment_start(seg);
        if end < needed {
            let missing = SegmentName::containing(tli, end, seg);
            return Ok((tli, wal, first, end, Some(missing)));
        }
        pos = needed;
    }
    let wal = ArchivedWal::list(repo, last, seg).await?;
    let (end, gap) = wal.unbroken_from(pos.segment_number(seg), seg);
    Ok((
        last,
        wal,
        first,
        end,
        gap.map(|g| SegmentName::new(last, g)),
    ))
}

/// Where a restore point or transaction is in the archived WAL of `timeline`: the
/// restore point's LSN, or the start of the earliest segment whose transactions' xid range
/// holds the xid. `None` when some WAL has no summary and the target was not found in the
/// rest; an error when every object is summarised and none holds it.
async fn locate(
    repo: &Repository,
    seg: WalSegmentSize,
    timeline: TimelineId,
    target: &RecoveryTarget,
) -> Result<Option<Lsn>, PlanError> {
    let wal = ArchivedWal::list(repo, timeline, seg).await?;
    let mut keys: Vec<(u64, String)> = wal
        .complete
        .iter()
        .map(|&s| {
            (
                s,
                layout::wal_segment_key(SegmentName::new(timeline, s), seg),
            )
        })
        .collect();
    if let Some((p, _, key)) = &wal.partial {
        keys.push((*p, key.clone()));
    }
    let heads: Vec<(u64, Option<WalSummary>)> = futures::stream::iter(keys)
        .map(|(segno, key)| async move {
            let head = repo.head(&key).await?;
            Ok::<_, RepoError>((
                segno,
                head.and_then(|h| WalSummary::from_metadata(&h.metadata)),
            ))
        })
        .buffered(16)
        .try_collect()
        .await?;
    let mut all_known = true;
    for (segno, summary) in heads {
        let Some(summary) = summary else {
            all_known = false;
            continue;
        };
        let found = match target {
            RecoveryTarget::Name(n) => summary
                .restore_points
                .iter()
                .find(|r| &r.name == n)
                .map(|r| r.lsn),
            RecoveryTarget::Xid(x) => {
                let x = *x as u32; // the xid without its epoch, as WAL records carry it
                match (summary.xid_min, summary.xid_max) {
                    (Some(lo), Some(hi)) if lo <= x && x <= hi => {
                        Some(SegmentName::new(timeline, segno).start_lsn(seg))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if found.is_some() {
            return Ok(found);
        }
    }
    if all_known {
        return Err(PlanError::NotInArchive(target.clone()));
    }
    Ok(None)
}

/// Whether the archive (from segment `from` on, and before segment `before` if given —
/// the WAL short of a gap) may hold a transaction that ended after `t`: scanning the WAL
/// summaries backwards from the newest, stop at the first segment
/// whose transactions all ended at or before `t`. An object without a summary counts as
/// "may hold one" (then PostgreSQL decides, as it would without tidemark).
async fn xact_after(
    repo: &Repository,
    wal: &ArchivedWal,
    timeline: TimelineId,
    seg: WalSegmentSize,
    from: u64,
    before: Option<u64>,
    t: &chrono::DateTime<chrono::FixedOffset>,
) -> Result<bool, RepoError> {
    let mut keys: Vec<String> = Vec::new();
    let tail = match before {
        None => wal.partial.as_ref().map(|(_, _, key)| key),
        Some(gap) => wal.tails.get(&gap).map(|(_, key)| key),
    };
    keys.extend(tail.cloned());
    keys.extend(
        wal.complete
            .range(from..before.unwrap_or(u64::MAX))
            .rev()
            .map(|&s| layout::wal_segment_key(SegmentName::new(timeline, s), seg)),
    );
    for key in keys {
        let head = repo.head(&key).await?;
        let Some(summary) = head.and_then(|h| WalSummary::from_metadata(&h.metadata)) else {
            return Ok(true);
        };
        match summary.last_xact {
            Some(last) if last > *t => return Ok(true),
            Some(_) => return Ok(false),
            None => continue,
        }
    }
    Ok(false)
}

fn describe_end(b: &BackupInfo) -> String {
    format!(
        "{} ({})",
        b.stop_lsn,
        b.stop_time.format("%Y-%m-%d %H:%M:%S%.3f+00")
    )
}
