//! `tidemark verify`: read back what is stored and prove it restorable, without a cluster.
//! Every WAL object decompresses to the size and CRC-32 its metadata records and decodes
//! as this cluster's WAL (each record's CRC-32C checked; a complete segment holds valid
//! WAL to its end); history files parse and agree with each other; every backup chunk
//! matches `backup.json`, and every file in it PostgreSQL's `backup_manifest` (the work of
//! `pg_verifybackup`); and the planner proves WAL unbroken from each backup's start
//! through its consistency point to the newest archived WAL; each tracked bucket's pass
//! records parse and its copies hold the bytes their names say (`objects`); the local
//! catalog, where there is one, agrees with what is stored. Objects are read in
//! parallel; damage is reported per object, with what a restore would lose by it.

mod backup;
mod objects;
mod wal;

pub use objects::BucketVerdict;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use tidemark_protocol::{parse_history, Lsn, SegmentName, TimelineId, WalSegmentSize};
use tidemark_store::backup::{BackupId, BackupInfo};
use tidemark_store::catalog::SegmentRecord;
use tidemark_store::layout::{self, WalKey};
use tidemark_store::repository::{RepoError, Repository};

use crate::manifest::{self, Manifest};
use crate::plan::{plan, PlanError, PlanRequest};
use crate::target::{Occurrence, RecoveryTarget, TargetAction, TimelineTarget};

/// What to verify.
#[derive(Debug, Clone)]
pub struct VerifyRequest {
    /// Only this backup, and the WAL from its start on.
    pub backup: Option<BackupId>,
    /// Only backups taken and objects written at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Objects read at once.
    pub jobs: usize,
    /// The local catalog's segment records, read before the repository is listed (so
    /// each names an object stored by then), to compare with what is stored; `None`
    /// when there is no catalog here.
    pub catalog: Option<Vec<SegmentRecord>>,
    /// The S3 settings for tracked application buckets (versions mode keeps the bytes
    /// there); `None`: their versions are not looked for.
    pub app_s3: Option<tidemark_store::storage::S3Options>,
}

/// One thing found wrong.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The object (or backup directory) concerned.
    pub key: String,
    /// What is wrong: what was expected, what was found.
    pub problem: String,
    /// What a restore loses by it.
    pub loses: String,
}

/// What verifying one backup found.
#[derive(Debug, Clone, Serialize)]
pub struct BackupVerdict {
    pub id: BackupId,
    pub chunks: usize,
    /// Regular files read and compared with the manifest.
    pub files: usize,
    /// Uncompressed bytes read.
    pub bytes: u64,
    /// Whether the backup itself (chunks, manifest, the WAL to its consistency point) is sound.
    pub sound: bool,
    /// How far a restore from it can replay: the end of the archived WAL, or the start
    /// of the first damaged segment after it; `None` when it cannot be restored.
    pub restorable_to: Option<String>,
    /// Why it cannot be restored, or why it was not followed to the newest WAL.
    pub note: Option<String>,
}

/// Everything `verify` found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub segments: u64,
    pub partials: u64,
    pub histories: u64,
    pub markers: u64,
    /// Uncompressed WAL bytes read.
    pub wal_bytes: u64,
    pub backups: Vec<BackupVerdict>,
    /// Each tracked bucket's history (not with `--backup`).
    pub buckets: Vec<objects::BucketVerdict>,
    /// Catalog records of complete segments compared with the repository; `None`: no
    /// local catalog.
    pub catalog_records: Option<usize>,
    pub problems: Vec<Problem>,
}

/// How far verifying has come: objects read of all, and uncompressed bytes.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub bytes: u64,
}

/// Why verifying could not run at all (damage is not an error: it is in the report).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "the repository has no valid tidemark.json; HINT: check --repo, or run `tidemark init`"
    )]
    NotARepository,
    #[error("backup {0} is not in the repository; HINT: see `tidemark list backups`")]
    UnknownBackup(BackupId),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// One object to read.
enum Job {
    Wal(WalKey),
    History(TimelineId),
    Marker,
    Chunk {
        backup: usize,
        archive: String,
        crc32: u32,
        raw_size: u64,
    },
    /// A tracked bucket's copy (its index in the report's buckets), named by its SHA-256.
    Copy {
        bucket: usize,
        name: String,
        sha: String,
    },
}

/// What reading one object gave.
enum Contents {
    Wal(wal::Decoded),
    History(Vec<u8>),
    Marker,
    Chunk(backup::ChunkRead),
    Copy(std::io::Result<String>),
}

/// Verify the repository (see the module comment); `progress` is called as objects finish.
pub async fn verify(
    repo: &Repository,
    req: &VerifyRequest,
    mut progress: impl FnMut(Progress),
) -> Result<Report, VerifyError> {
    let identity = repo.identity().await?.ok_or(VerifyError::NotARepository)?;
    let seg =
        WalSegmentSize::new(identity.wal_segment_size).map_err(|_| VerifyError::NotARepository)?;
    let sysid = identity.system_identifier;
    let mut backups = repo.backups().await?;
    if let Some(id) = &req.backup {
        backups.retain(|b| &b.id == id);
        if backups.is_empty() {
            return Err(VerifyError::UnknownBackup(id.clone()));
        }
    }
    if let Some(since) = req.since {
        backups.retain(|b| b.start_time >= since);
    }
    let mut report = Report::default();

    // Manifests first: reading a chunk needs to know which checksum each file has.
    let mut manifests: Vec<Option<(Vec<u8>, Manifest)>> = Vec::new();
    for b in &backups {
        let Some(key) = &b.manifest_key else {
            report.problems.push(Problem {
                key: layout::backup_dir(&b.id),
                problem: "it has no backup_manifest, so its files cannot be checked".into(),
                loses: "nothing yet: its chunks are still checked against backup.json".into(),
            });
            manifests.push(None);
            continue;
        };
        let read = repo
            .read_verified(key, |r: &mut dyn Read| {
                let mut bytes = Vec::new();
                r.read_to_end(&mut bytes).map(|_| bytes)
            })
            .await;
        let parsed = match read {
            Ok((_, Ok(bytes))) => manifest::parse(&bytes)
                .map(|m| (bytes, m))
                .map_err(|e| format!("it is not a valid manifest: {e}")),
            Ok((_, Err(e))) => Err(e.to_string()),
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => Err(e.to_string()),
        };
        match parsed {
            Ok(m) => manifests.push(Some(m)),
            Err(problem) => {
                report.problems.push(Problem {
                    key: key.clone(),
                    problem,
                    loses: format!("restores from backup {} cannot use --delta", b.id),
                });
                manifests.push(None);
            }
        }
    }

    let mut jobs: Vec<(String, Job)> = Vec::new();
    let mut listed_wal = HashSet::new();
    let first_segno = backups
        .iter()
        .map(|b| b.start_lsn.segment_number(seg))
        .min();
    for info in repo.list(layout::WAL_PREFIX).await? {
        listed_wal.insert(info.key.clone());
        let recent = match (req.since, info.last_modified) {
            (Some(since), Some(t)) => t >= since,
            _ => true,
        };
        if !recent {
            continue;
        }
        let job = if let Some(k) = layout::parse_wal_key(&info.key, seg) {
            if req.backup.is_some() && first_segno.is_some_and(|f| k.name.segno < f) {
                continue;
            }
            Job::Wal(k)
        } else if let Some(tli) = layout::parse_history_key(&info.key) {
            Job::History(tli)
        } else if info.key.ends_with(".complete") {
            Job::Marker
        } else {
            continue;
        };
        jobs.push((info.key, job));
    }
    for (i, b) in backups.iter().enumerate() {
        for a in &b.archives {
            for c in &a.chunks {
                jobs.push((
                    c.key.clone(),
                    Job::Chunk {
                        backup: i,
                        archive: a.name.clone(),
                        crc32: c.crc32,
                        raw_size: c.raw_size,
                    },
                ));
            }
        }
    }

    if req.backup.is_none() {
        let survey = objects::survey(repo, req.app_s3.as_ref()).await?;
        report.problems.extend(survey.problems);
        for (key, bucket, sha) in survey.copies {
            let name = survey.verdicts[bucket].bucket.clone();
            jobs.push((key, Job::Copy { bucket, name, sha }));
        }
        report.buckets = survey.verdicts;
    }

    let algorithms: Vec<Arc<HashMap<String, manifest::ManifestFile>>> = manifests
        .iter()
        .map(|m| {
            Arc::new(
                m.as_ref()
                    .map(|(_, m)| backup::by_path(m))
                    .unwrap_or_default(),
            )
        })
        .collect();
    let total = jobs.len();
    let reads = futures::stream::iter(jobs.into_iter().map(|(key, job)| {
        let algorithms = match &job {
            Job::Chunk { backup, .. } => algorithms[*backup].clone(),
            _ => Arc::default(),
        };
        async move {
            let read = match &job {
                Job::Wal(k) => {
                    let start = k.name.start_lsn(seg);
                    repo.read_verified(&key, move |r: &mut dyn Read| {
                        Contents::Wal(wal::decode(r, start, seg))
                    })
                    .await
                }
                Job::History(_) => {
                    repo.read_verified(&key, |r: &mut dyn Read| {
                        let mut bytes = Vec::new();
                        let _ = r.read_to_end(&mut bytes);
                        Contents::History(bytes)
                    })
                    .await
                }
                Job::Marker => {
                    repo.read_verified(&key, |_: &mut dyn Read| Contents::Marker)
                        .await
                }
                Job::Copy { .. } => {
                    repo.read_verified(&key, |r: &mut dyn Read| Contents::Copy(objects::sha256(r)))
                        .await
                }
                Job::Chunk { archive, .. } => {
                    let archive = archive.clone();
                    repo.read_verified(&key, move |r: &mut dyn Read| {
                        Contents::Chunk(backup::read_chunk(r, &archive, &algorithms))
                    })
                    .await
                }
            };
            (key, job, read)
        }
    }))
    .buffer_unordered(req.jobs.max(1));
    futures::pin_mut!(reads);

    let mut damaged_wal: Vec<(SegmentName, String)> = Vec::new();
    let mut histories = BTreeMap::new();
    let mut seen: Vec<Vec<backup::FileSeen>> = backups.iter().map(|_| Vec::new()).collect();
    let mut verdicts: Vec<BackupVerdict> = backups
        .iter()
        .map(|b| BackupVerdict {
            id: b.id.clone(),
            chunks: b.chunks().count(),
            files: 0,
            bytes: 0,
            sound: true,
            restorable_to: None,
            note: None,
        })
        .collect();
    // Complete segments only: a partial object is rewritten as streaming goes on, so the
    // catalog's record of it may be older than the object read.
    let recorded: HashMap<&str, &SegmentRecord> = req
        .catalog
        .iter()
        .flatten()
        .filter(|r| !r.partial)
        .map(|r| (r.key.as_str(), r))
        .collect();
    report.catalog_records = req.catalog.as_ref().map(|_| recorded.len());
    let mut done = 0;
    let mut bytes = 0;
    while let Some((key, job, read)) = reads.next().await {
        done += 1;
        let (sealed, read) = match read {
            Ok(r) => r,
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => {
                let problem = e.to_string();
                match &job {
                    Job::Wal(k) => damaged_wal.push((k.name, key.clone())),
                    Job::Chunk { backup, .. } => verdicts[*backup].sound = false,
                    Job::Copy { bucket, .. } => report.buckets[*bucket].sound = false,
                    _ => {}
                }
                report.problems.push(Problem {
                    loses: loses(&job, &key, &backups, seg),
                    key,
                    problem,
                });
                progress(Progress { done, total, bytes });
                continue;
            }
        };
        bytes += sealed.raw_size;
        progress(Progress { done, total, bytes });
        let mut found = Vec::new();
        match (&job, read) {
            (Job::Wal(k), Contents::Wal(d)) => {
                report.wal_bytes += sealed.raw_size;
                match k.partial {
                    true => report.partials += 1,
                    false => report.segments += 1,
                }
                found.extend(judge_segment(k, &d, sysid, seg, sealed.raw_size));
                if let Some(r) = recorded.get(key.as_str()) {
                    if (r.crc32, r.raw_size) != (sealed.crc32, sealed.raw_size) {
                        found.push(format!(
                            "the local catalog records crc32 {:08x} and {} bytes, the repository holds crc32 {:08x} and {} bytes (replaced since it was archived here?)",
                            r.crc32, r.raw_size, sealed.crc32, sealed.raw_size
                        ));
                    }
                }
                if !found.is_empty() {
                    damaged_wal.push((k.name, key.clone()));
                }
            }
            (Job::History(tli), Contents::History(text)) => {
                report.histories += 1;
                match parse_history(&text) {
                    Ok(entries) => {
                        histories.insert(*tli, entries);
                    }
                    Err(e) => found.push(e.to_string()),
                }
            }
            (Job::Marker, Contents::Marker) => report.markers += 1,
            (
                Job::Chunk {
                    backup,
                    crc32,
                    raw_size,
                    ..
                },
                Contents::Chunk(chunk),
            ) => {
                let v = &mut verdicts[*backup];
                v.bytes += sealed.raw_size;
                v.files += chunk.files.len();
                if (sealed.crc32, sealed.raw_size) != (*crc32, *raw_size) {
                    found.push(format!(
                        "backup.json records crc32 {crc32:08x} and {raw_size} bytes, the object holds crc32 {:08x} and {} bytes",
                        sealed.crc32, sealed.raw_size
                    ));
                }
                found.extend(
                    chunk
                        .tar_error
                        .map(|e| format!("its tar stream is damaged: {e}")),
                );
                if !found.is_empty() {
                    v.sound = false;
                }
                seen[*backup].extend(chunk.files);
            }
            (Job::Copy { bucket, sha, .. }, Contents::Copy(read)) => {
                let problem = match read {
                    Ok(found) if found == *sha => None,
                    Ok(found) => Some(format!(
                        "it should hold the bytes whose SHA-256 is {sha}, it holds {found}"
                    )),
                    Err(e) => Some(format!("cannot be read: {e}")),
                };
                if let Some(p) = problem {
                    report.buckets[*bucket].sound = false;
                    found.push(p);
                }
            }
            _ => unreachable!("each job reads its own kind"),
        }
        for problem in found {
            report.problems.push(Problem {
                key: key.clone(),
                problem,
                loses: loses(&job, &key, &backups, seg),
            });
        }
    }

    // Complete segments the catalog says were stored, gone from the repository.
    for r in recorded.values() {
        if !listed_wal.contains(&r.key) {
            report.problems.push(Problem {
                key: r.key.clone(),
                problem: format!(
                    "missing: the local catalog records it stored at {}, the repository does not hold it",
                    r.archived_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                loses: loses(
                    &Job::Wal(WalKey {
                        name: r.name,
                        partial: false,
                    }),
                    &r.key,
                    &backups,
                    seg,
                ),
            });
        }
    }
    for (tli, problem) in wal::disagreements(&histories) {
        report.problems.push(Problem {
            key: layout::history_key(tli),
            problem,
            loses: format!("restores cannot follow timeline {tli}"),
        });
    }
    for (i, b) in backups.iter().enumerate() {
        if let Some((bytes, m)) = &manifests[i] {
            for problem in backup::compare(b, bytes, m, &seen[i]) {
                verdicts[i].sound = false;
                report.problems.push(Problem {
                    key: layout::backup_dir(&b.id),
                    problem,
                    loses: format!("backup {} restores a damaged data directory", b.id),
                });
            }
        }
        reach(
            repo,
            seg,
            (b, &backups),
            &damaged_wal,
            &mut verdicts[i],
            &mut report,
        )
        .await?;
    }
    report.backups = verdicts;
    Ok(report)
}

/// Where a complete or partial segment's bytes are not what its name says.
fn judge_segment(
    k: &WalKey,
    d: &wal::Decoded,
    sysid: u64,
    seg: WalSegmentSize,
    raw_size: u64,
) -> Vec<String> {
    let mut found = Vec::new();
    let start = k.name.start_lsn(seg);
    if !k.partial && raw_size != seg.bytes() {
        found.push(format!(
            "a complete segment of {raw_size} bytes, expected {}",
            seg.bytes()
        ));
    }
    match d.system_identifier {
        Some(s) if s != sysid && d.decoded_up_to > start => found.push(format!(
            "it holds WAL of system identifier {s}, the repository's cluster is {sysid}"
        )),
        _ => {}
    }
    if let Some(e) = &d.error {
        found.push(format!("its WAL fails PostgreSQL's checks: {e}"));
    } else if !k.partial && d.ended && d.decoded_up_to < Lsn(start.0 + seg.bytes()) {
        found.push(format!(
            "valid WAL ends at {} inside a complete segment",
            d.decoded_up_to
        ));
    }
    found
}

/// What a restore loses by damage to the object `key` read as `job`.
fn loses(job: &Job, key: &str, backups: &[BackupInfo], seg: WalSegmentSize) -> String {
    match job {
        Job::Chunk { backup, .. } => format!("backup {} cannot be restored", backups[*backup].id),
        Job::History(tli) => format!("restores cannot follow timeline {tli}"),
        Job::Marker => "nothing: the marker only proves the archive complete at an instant".into(),
        Job::Copy { name, .. } => objects::loses(name),
        Job::Wal(k) => {
            let hit: Vec<String> = backups
                .iter()
                .filter(|b| b.timeline <= k.name.timeline.0)
                .filter(|b| b.start_lsn.segment_number(seg) <= k.name.segno)
                .map(|b| b.id.to_string())
                .collect();
            match hit.is_empty() {
                true => format!("nothing replays {key}: it is older than every backup"),
                false => format!("restores from backup(s) {} stop before it", hit.join(", ")),
            }
        }
    }
}

/// How far a restore from `b` reaches: the planner's proof to the newest WAL, cut at the
/// first damaged or missing segment it would replay (a missing one is reported once, by
/// the key it should have, with every backup whose restores stop before it).
async fn reach(
    repo: &Repository,
    seg: WalSegmentSize,
    (b, backups): (&BackupInfo, &[BackupInfo]),
    damaged: &[(SegmentName, String)],
    verdict: &mut BackupVerdict,
    report: &mut Report,
) -> Result<(), VerifyError> {
    let request = PlanRequest {
        target: RecoveryTarget::Latest,
        timeline: TimelineTarget::Latest,
        inclusive: true,
        action: TargetAction::Promote,
        backup: Some(b.id.clone()),
        occurrence: Occurrence::default(),
    };
    let (last, end, missing) = match plan(repo, seg, &request).await {
        Ok(p) => (p.wal_last, Some(p.archive_end), None),
        Err(PlanError::Repository(e)) if e.is_transient() => return Err(e.into()),
        Err(e @ PlanError::NotDescendant { .. }) => {
            verdict.note = Some(format!("not on the newest timeline's line: {e}"));
            return Ok(());
        }
        Err(e) => match gap_at(&e, seg) {
            Some(name) => {
                let key = layout::wal_segment_key(name, seg);
                if !report.problems.iter().any(|p| p.key == key) {
                    let job = Job::Wal(WalKey {
                        name,
                        partial: false,
                    });
                    report.problems.push(Problem {
                        loses: loses(&job, &key, backups, seg),
                        key: key.clone(),
                        problem: "missing: the archived WAL has a gap here".into(),
                    });
                }
                (name, None, Some((name, key)))
            }
            None => {
                verdict.sound = false;
                verdict.note = Some(e.to_string());
                report.problems.push(Problem {
                    key: layout::backup_dir(&b.id),
                    problem: e.to_string(),
                    loses: format!("backup {} cannot be restored to the newest WAL", b.id),
                });
                return Ok(());
            }
        },
    };
    let first = SegmentName::containing(TimelineId(b.timeline), b.start_lsn, seg);
    let consistent = SegmentName::containing(TimelineId(b.timeline), b.stop_lsn, seg);
    let hit = damaged
        .iter()
        .filter(|(name, _)| name.segno >= first.segno && name.segno <= last.segno)
        .map(|(name, key)| (*name, key.clone(), "damaged"))
        .chain(missing.map(|(name, key)| (name, key, "missing")))
        .min_by_key(|(name, _, _)| name.segno);
    match hit {
        Some((name, key, what)) if name.segno <= consistent.segno => {
            verdict.sound = false;
            verdict.note = Some(format!(
                "{key}, which it needs to become consistent, is {what}"
            ));
        }
        Some((name, key, what)) => {
            verdict.restorable_to = Some(name.start_lsn(seg).to_string());
            verdict.note = Some(format!("replay stops before the {what} {key}"));
        }
        None => verdict.restorable_to = end.map(|e| e.to_string()),
    }
    Ok(())
}

/// The segment missing where the planner found the archived WAL broken.
fn gap_at(e: &PlanError, seg: WalSegmentSize) -> Option<SegmentName> {
    match e {
        PlanError::Gap { missing, .. } => SegmentName::parse(missing, seg).ok(),
        _ => None,
    }
}
