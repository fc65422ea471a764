//! Restore planning: which backup, which WAL, and whether the target is reachable at
//! all — decided from the repository alone before anything is written.

use tidemark_protocol::{Lsn, SegmentName, TimelineId, WalSegmentSize};
use tidemark_store::backup::{BackupId, BackupInfo};
use tidemark_store::repository::{CompleteMarker, RepoError, Repository};
use tidemark_store::wal_summary::RestorePoint;

use crate::archived::{last_record_start, summaries, ArchivedWal};
use crate::lineage::{Lineage, Timelines};
use crate::target::{Occurrence, RecoveryTarget, TargetAction, TimelineTarget};
use crate::xids;

/// What a restore will do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub backup: BackupInfo,
    /// Where recovery stops, as PostgreSQL is told (the planner may have made it exact).
    pub target: RecoveryTarget,
    /// Whether recovery stops after the target (`recovery_target_inclusive`).
    pub inclusive: bool,
    /// The timeline recovery ends on.
    pub timeline: TimelineId,
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
    #[error("restore point {name:?} was made more than once ({occurrences}); recovery would stop at whichever it meets first; HINT: add --target-occurrence newest, oldest or a number from the list, or use --target-lsn")]
    AmbiguousName { name: String, occurrences: String },
    #[error("restore point {name:?} occurs {count} time(s) in the archive, not {asked}; HINT: see `tidemark plan --target-name` without --target-occurrence for the list")]
    NoSuchOccurrence {
        name: String,
        asked: usize,
        count: usize,
    },
    #[error("transaction id {xid} ended in more than one epoch in the archive ({occurrences}); recovery would stop at whichever it meets first; HINT: give the full xid (epoch * 4294967296 + xid, as pg_current_xact_id() prints it), or add --target-occurrence oldest, newest or a number from the list")]
    AmbiguousXid { xid: u64, occurrences: String },
    #[error("transaction id {xid} ended in {count} epoch(s) in the archive, not {asked}; HINT: see `tidemark plan --target-xid` without --target-occurrence for the list")]
    NoSuchXidOccurrence {
        xid: u64,
        asked: usize,
        count: usize,
    },
    #[error("{target}: a transaction with the same low 32 bits ended before it, by LSN {twin_end}, after backup {backup} started, and PostgreSQL stops at the first; no usable backup starts after that; HINT: restore with --target-lsn or --target-time instead")]
    TwinAfterBackup {
        target: RecoveryTarget,
        backup: BackupId,
        twin_end: Lsn,
    },
    #[error("no whole WAL record found at the end of the archive ({archive_end}), so recovery cannot be told where to pause or shut down; HINT: use --target-action promote, or a --target-lsn")]
    NoRecordAtEnd { archive_end: Lsn },
    #[error("the history file of timeline {0} is damaged: {1}")]
    BadHistory(TimelineId, String),
    #[error(transparent)]
    Repository(#[from] RepoError),
}

/// What to plan a restore for.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub target: RecoveryTarget,
    pub timeline: TimelineTarget,
    /// `--target-inclusive`: whether recovery stops after (or before) the target.
    pub inclusive: bool,
    /// What the server does at the target: for pause and shutdown even "latest" needs a
    /// target PostgreSQL can reach, or it would promote.
    pub action: TargetAction,
    pub backup: Option<BackupId>,
    /// Which restore point, when a name was used more than once.
    pub occurrence: Occurrence,
}

/// Plan a restore: resolve the timeline recovery ends on, keep the backups on its line,
/// locate a restore point or transaction along that line, choose the newest backup that
/// ends before the target (or check the one asked for), and prove the WAL is there.
pub async fn plan(
    repo: &Repository,
    seg: WalSegmentSize,
    req: &PlanRequest,
) -> Result<Plan, PlanError> {
    let target = &req.target;
    let backups = repo.backups().await?;
    if backups.is_empty() {
        return Err(PlanError::NoBackups);
    }
    let on_line = on_the_line(repo, &backups, req.timeline).await?;
    let requested = match &req.backup {
        Some(id) => {
            let b = backups
                .iter()
                .find(|b| &b.id == id)
                .ok_or_else(|| PlanError::UnknownBackup(id.clone()))?;
            let found = on_line.iter().find(|(c, _)| c.id == b.id).cloned();
            Some(found.ok_or_else(|| {
                PlanError::NotDescendant {
                    timeline: on_line
                        .last()
                        .map_or(TimelineId(b.timeline), |(_, l)| l.last),
                    backup: b.id.clone(),
                }
            })?)
        }
        None => None,
    };
    let (oldest, newest) = match (&requested, on_line.first(), on_line.last()) {
        (Some(r), _, _) => (r.clone(), r.clone()),
        (None, Some(o), Some(n)) => (o.clone(), n.clone()),
        _ => unreachable!("on_the_line never returns an empty list"),
    };
    // Restore points and transactions are found in the WAL summaries along the line; a
    // backup must end before them. Unknown (unsummarised WAL): only the oldest backup is
    // certain to.
    let located = match target {
        RecoveryTarget::Name(_) | RecoveryTarget::Xid(_) => {
            let start =
                SegmentName::containing(TimelineId(oldest.0.timeline), oldest.0.start_lsn, seg);
            locate(repo, seg, &newest.1, start, req).await?
        }
        _ => None,
    };
    let at = located.as_ref().map(|l| l.lsn);
    let not_before = located.as_ref().and_then(|l| l.not_before);
    let ends_before = |b: &BackupInfo| match (target, at) {
        (RecoveryTarget::Lsn(l), _) => b.stop_lsn <= *l,
        (RecoveryTarget::Time(t), _) => b.stop_time <= *t,
        (RecoveryTarget::Name(_) | RecoveryTarget::Xid(_), Some(at)) => {
            b.stop_lsn <= at && not_before.is_none_or(|n| b.start_lsn >= n)
        }
        (RecoveryTarget::Name(_) | RecoveryTarget::Xid(_), None) => b.id == oldest.0.id,
        _ => true,
    };
    let past_twin = |b: &BackupInfo| match not_before {
        Some(n) if b.stop_lsn <= at.unwrap_or(n) => Some(PlanError::TwinAfterBackup {
            target: target.clone(),
            backup: b.id.clone(),
            twin_end: n,
        }),
        _ => None,
    };
    let (chosen, lineage) = match requested {
        Some((b, lineage)) => {
            if !ends_before(&b) {
                if let Some(e) = past_twin(&b) {
                    return Err(e);
                }
                return Err(PlanError::BackupAfterTarget {
                    backup: b.id.clone(),
                    end: describe_end(&b),
                    target: target.clone(),
                });
            }
            (b, lineage)
        }
        None => on_line
            .iter()
            .rev()
            .find(|(b, _)| ends_before(b))
            .cloned()
            .ok_or_else(|| {
                let twin = on_line.iter().rev().find_map(|(b, _)| past_twin(b));
                twin.unwrap_or_else(|| PlanError::BeforeOldestBackup {
                    target: target.clone(),
                    oldest: oldest.0.id.clone(),
                    end: describe_end(&oldest.0),
                })
            })?,
    };

    let (wal, wal_first, archive_end, gap) = follow_timelines(repo, seg, &chosen, &lineage).await?;
    let timeline = wal.timeline;
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
    let beyond = covered > archive_end || at.is_some_and(|at| at >= archive_end);
    if beyond {
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
                xact_reaching(repo, &wal, seg, from, Some(missing.segno), t, req.inclusive).await?
            }
            _ => false,
        };
        if matches!(target, RecoveryTarget::Latest | RecoveryTarget::Time(_)) && !reached_before {
            return Err(gap_error(missing));
        }
    }
    let mut resolved = located
        .as_ref()
        .and_then(|l| l.exact.clone())
        .unwrap_or_else(|| target.clone());
    let mut inclusive = req.inclusive || located.as_ref().is_some_and(|l| l.exact.is_some());
    let mut note = located.and_then(|l| l.note);
    if let RecoveryTarget::Time(t) = target {
        if !xact_reaching(repo, &wal, seg, from, None, t, req.inclusive).await? {
            // PostgreSQL stops on a time only at a transaction that ended after it (at or
            // after it, when exclusive); with none in the archive, the end of the archive
            // is the same database — if the archive provably held everything written up
            // to the target time.
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
                        "no transaction ended {} {target}; the archive was {}, so recovery runs to its end",
                        if req.inclusive { "after" } else { "at or after" },
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
    if resolved == RecoveryTarget::Latest && req.action != TargetAction::Promote {
        // Without a target PostgreSQL promotes at the end of the WAL whatever the target
        // action says: name the archive's last whole record, so that it pauses or shuts
        // down there instead.
        let last = last_record_start(repo, &wal, seg, archive_end)
            .await?
            .ok_or(PlanError::NoRecordAtEnd { archive_end })?;
        let end_note =
            format!("recovery stops after the archive's last whole record, at LSN {last}");
        note = Some(match note {
            Some(n) => format!("{n}; {end_note}"),
            None => end_note,
        });
        resolved = RecoveryTarget::Lsn(last);
        inclusive = true;
    }
    let wal_last = SegmentName::containing(timeline, Lsn(covered.0.saturating_sub(1)), seg);
    Ok(Plan {
        backup: chosen,
        target: resolved,
        inclusive,
        timeline,
        wal_first,
        wal_last,
        archive_end,
        note,
    })
}

/// The backups recovery can start from, oldest first, each with the line of timelines it
/// would follow (PostgreSQL picks the final timeline from the backup's own one: see
/// [`Timelines::final_for`]). A backup on a line the final timeline branched off before
/// the backup ended is left out: restoring from it would reach a different history.
async fn on_the_line(
    repo: &Repository,
    backups: &[BackupInfo],
    wanted: TimelineTarget,
) -> Result<Vec<(BackupInfo, Lineage)>, PlanError> {
    let mut timelines = Timelines::list(repo).await?;
    let mut out = Vec::new();
    let mut refused = None;
    for b in backups {
        let last = timelines.final_for(b, wanted);
        match timelines.lineage(last).await {
            Ok(lineage) if lineage.descends_from(b) => out.push((b.clone(), lineage)),
            Ok(_) => {
                refused.get_or_insert(PlanError::NotDescendant {
                    timeline: last,
                    backup: b.id.clone(),
                });
            }
            Err(e @ (PlanError::UnknownTimeline(_) | PlanError::BadHistory(..))) => {
                refused.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    match (out.is_empty(), refused) {
        (true, Some(e)) => Err(e),
        (true, None) => Err(PlanError::NoBackups),
        _ => Ok(out),
    }
}

/// Walk the archived WAL from the backup's start along the line of timelines: each
/// timeline up to the segment where the next one branches off (that segment itself comes
/// from the new timeline, which holds a copy of the old one's part), then the final
/// timeline to its end. Returns the WAL of the timeline where the walk ended, the first
/// segment, where the unbroken WAL ends, and the first missing segment if it stops short.
async fn follow_timelines(
    repo: &Repository,
    seg: WalSegmentSize,
    backup: &BackupInfo,
    lineage: &Lineage,
) -> Result<(ArchivedWal, SegmentName, Lsn, Option<SegmentName>), PlanError> {
    let own = TimelineId(backup.timeline);
    let first = SegmentName::containing(own, backup.start_lsn, seg);
    let mut pos = backup.start_lsn;
    for (tli, leaves) in lineage.from(own) {
        let wal = ArchivedWal::list(repo, tli, seg).await?;
        let (end, gap) = wal.unbroken_from(pos.segment_number(seg), seg);
        match leaves {
            Some(switch) if end >= switch.segment_start(seg) => pos = switch.segment_start(seg),
            Some(_) => {
                let missing = SegmentName::containing(tli, end, seg);
                return Ok((wal, first, end, Some(missing)));
            }
            None => return Ok((wal, first, end, gap.map(|g| SegmentName::new(tli, g)))),
        }
    }
    unreachable!("a lineage always ends with its last timeline")
}

/// A restore point or transaction found along the line.
struct Located {
    /// Where it is: the restore point's LSN, or the start of the earliest segment whose
    /// transactions' xid range holds the xid.
    lsn: Lsn,
    /// A usable backup starts at or after this (a transaction sharing the target xid's
    /// low 32 bits ended before it: PostgreSQL would stop there).
    not_before: Option<Lsn>,
    /// The exact target to give PostgreSQL instead of the name (one occurrence of a name
    /// used several times: its LSN, inclusive), if the name alone is not enough.
    exact: Option<RecoveryTarget>,
    note: Option<String>,
}

/// Find a restore point or transaction in the summarised WAL along `lineage`, from
/// segment `from` (where the oldest usable backup starts: nothing before it can be
/// reached) on. `None` when some of that WAL has no summary and the target was not found
/// in the rest; an error when every object is summarised and none holds it, or when a
/// name was used more than once and no occurrence was chosen.
async fn locate(
    repo: &Repository,
    seg: WalSegmentSize,
    lineage: &Lineage,
    from: SegmentName,
    req: &PlanRequest,
) -> Result<Option<Located>, PlanError> {
    let target = &req.target;
    let mut points: Vec<RestorePoint> = Vec::new();
    let mut sightings: Vec<xids::Sighting> = Vec::new();
    let mut all_known = true;
    for (tli, leaves) in lineage.from(from.timeline) {
        let wal = ArchivedWal::list(repo, tli, seg).await?;
        let first = if tli == from.timeline { from.segno } else { 0 };
        let to = leaves.map_or(u64::MAX, |l| l.segment_number(seg));
        for (segno, summary) in summaries(repo, wal.keys(first, to, seg)).await? {
            let Some(summary) = summary else {
                all_known = false;
                continue;
            };
            match target {
                RecoveryTarget::Name(n) => points.extend(
                    summary
                        .restore_points
                        .into_iter()
                        .filter(|r| &r.name == n && lineage.holds(tli, r.lsn)),
                ),
                RecoveryTarget::Xid(x) => {
                    let start = SegmentName::new(tli, segno).start_lsn(seg);
                    // The xid without its epoch, as WAL records carry it.
                    if let Some(full) = xids::sighting(&summary, *x as u32) {
                        if lineage.holds(tli, start) {
                            sightings.push(xids::Sighting {
                                full,
                                start,
                                end: SegmentName::new(tli, segno + 1).start_lsn(seg),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if let RecoveryTarget::Xid(x) = target {
        let found = xids::locate(*x, req.occurrence, &sightings).map_err(|e| match e {
            xids::XidChoice::Ambiguous { occurrences } => PlanError::AmbiguousXid {
                xid: *x,
                occurrences,
            },
            xids::XidChoice::NoSuchOccurrence { asked, count } => PlanError::NoSuchXidOccurrence {
                xid: *x,
                asked,
                count,
            },
        })?;
        return match found {
            Some(l) => Ok(Some(Located {
                lsn: l.lsn,
                not_before: l.not_before,
                exact: None,
                note: l.note,
            })),
            None if all_known => Err(PlanError::NotInArchive(target.clone())),
            None => Ok(None),
        };
    }
    if points.is_empty() {
        return if all_known {
            Err(PlanError::NotInArchive(target.clone()))
        } else {
            Ok(None)
        };
    }
    let RecoveryTarget::Name(name) = target else {
        unreachable!("only restore points are collected")
    };
    let count = points.len();
    let pick = match req.occurrence {
        Occurrence::Only if count == 1 => {
            return Ok(Some(Located {
                lsn: points[0].lsn,
                not_before: None,
                exact: None,
                note: None,
            }))
        }
        Occurrence::Only => {
            return Err(PlanError::AmbiguousName {
                name: name.clone(),
                occurrences: points
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        format!(
                            "{}: {} at LSN {}",
                            i + 1,
                            r.time.format("%Y-%m-%d %H:%M:%S%.6f+00"),
                            r.lsn
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            })
        }
        Occurrence::Oldest => 0,
        Occurrence::Newest => count - 1,
        Occurrence::Nth(n) if (1..=count).contains(&n) => n - 1,
        Occurrence::Nth(n) => {
            return Err(PlanError::NoSuchOccurrence {
                name: name.clone(),
                asked: n,
                count,
            })
        }
    };
    let point = &points[pick];
    Ok(Some(Located {
        lsn: point.lsn,
        not_before: None,
        exact: Some(RecoveryTarget::Lsn(point.lsn)),
        note: Some(format!(
            "restore point {name:?} occurs {count} times; using occurrence {} of {count}, made at {}: recovery stops right after it, at LSN {}",
            pick + 1,
            point.time.format("%Y-%m-%d %H:%M:%S%.6f+00"),
            point.lsn
        )),
    }))
}

/// Whether the archive (from segment `from` on, and up to segment `before` if given — the
/// WAL short of a gap, with the partial object of the segment at the gap, a prefix that
/// recovery replays) may hold a transaction that ended after `t` (at or after it
/// when not `inclusive`): where PostgreSQL stops on a time target. Every object is
/// read, because commit times need not grow with the LSN. An object without a summary
/// counts as "may hold one" (then PostgreSQL decides, as it would without tidemark).
async fn xact_reaching(
    repo: &Repository,
    wal: &ArchivedWal,
    seg: WalSegmentSize,
    from: u64,
    before: Option<u64>,
    t: &chrono::DateTime<chrono::FixedOffset>,
    inclusive: bool,
) -> Result<bool, RepoError> {
    let keys = wal.keys(from, before.unwrap_or(u64::MAX), seg);
    Ok(summaries(repo, keys).await?.into_iter().any(|(_, s)| {
        let Some(s) = s else { return true };
        s.last_xact
            .is_some_and(|last| last > *t || (!inclusive && last == *t))
    }))
}

fn describe_end(b: &BackupInfo) -> String {
    format!(
        "{} ({})",
        b.stop_lsn,
        b.stop_time.format("%Y-%m-%d %H:%M:%S%.3f+00")
    )
}
