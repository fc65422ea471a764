//! `tidemark restore`: plan (`plan_restore`, which writes nothing), then fetch and unpack
//! the chosen backup's chunks in parallel into an empty data directory (`restore`), check
//! the links they hold, put PostgreSQL's manifest beside them, and write the recovery
//! settings. Refuses a non-empty directory (DESIGN invariant 5). A journal
//! (`crate::journal`) records the chunks unpacked, so an interrupted restore is finished
//! with `resume` and a plain rerun into its directory is refused. With `delta`, an existing
//! directory is rebuilt instead, writing only the files that differ (`crate::delta`).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemark_protocol::WalSegmentSize;
use tidemark_store::repository::{RepoError, Repository};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::delta::{
    check_same_cluster, in_place, prune_dirs, running_server, survey, DeltaError, Survey,
};
use crate::journal::{Interrupted, Journal};
use crate::plan::{plan, Plan, PlanError, PlanRequest};
use crate::recovery_conf::{RecoverySettings, Standby};
use crate::unpack::{check_links, unpack_tar, AbsoluteLink, Existing, UnpackError, Unpacked};

/// What to restore, where, and how recovery should end.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub pgdata: PathBuf,
    /// The target, timeline, action and backup.
    pub request: PlanRequest,
    /// The command PostgreSQL runs to fetch WAL (`… wal-fetch %f %p`).
    pub restore_command: String,
    /// The command PostgreSQL runs when recovery ends (`… wal-fetch-end`).
    pub recovery_end_command: String,
    pub keep_archiving: bool,
    /// Chunks fetched and unpacked at once.
    pub concurrency: usize,
    /// Where tablespaces go: `<dir>/<oid>` (default: `<pgdata>.tablespaces/<oid>`).
    pub tablespace_root: Option<PathBuf>,
    /// Finish the interrupted restore into `pgdata` that its journal describes, keeping
    /// the chunks it completed (without a journal: an ordinary restore).
    pub resume: bool,
    /// Start as a standby of this primary (or archive-only) instead of recovering.
    pub standby: Option<Standby>,
    /// Rebuild the existing `pgdata` (and tablespace directories): keep the files the
    /// backup's manifest says are unchanged, write the rest, remove what it lacks.
    pub delta: bool,
}

/// What a delta restore kept, wrote and removed.
#[derive(Debug, Clone, Default)]
pub struct DeltaReport {
    pub kept_files: u64,
    pub kept_bytes: u64,
    pub written_files: u64,
    pub written_bytes: u64,
    /// Files removed: stale copies (written again) and what the backup lacks.
    pub stale_files: u64,
    pub extra_files: u64,
    pub removed_dirs: u64,
    /// Chunks not fetched: every entry they hold was already in place.
    pub chunks_in_place: usize,
}

/// What a restore did.
#[derive(Debug)]
pub struct RestoreReport {
    pub plan: Plan,
    /// Uncompressed bytes of the chunks fetched (and unpacked through a scratch file).
    pub bytes: u64,
    /// Bytes fetched from the repository (compressed, as stored).
    pub fetched_bytes: u64,
    pub chunks: usize,
    /// With `delta`: what was kept and written.
    pub delta: Option<DeltaReport>,
    pub tablespaces: Vec<(String, PathBuf)>,
    /// Links restored as they were, pointing at absolute paths (they work only where
    /// those exist).
    pub absolute_links: Vec<AbsoluteLink>,
    pub fetch_time: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{} is not empty; restore never overwrites a data directory; HINT: give an empty or new --pgdata", .0.display())]
    NotEmpty(PathBuf),
    #[error("the repository has no tidemark.json; HINT: check --repo")]
    NotARepository,
    #[error("{} holds an interrupted restore of backup {} ({} chunk(s) done, journal {}); HINT: rerun the same restore with --resume to finish it, or remove both (and any tablespace directories it made) to start over", pgdata.display(), interrupted.backup, interrupted.chunks_done, journal.display())]
    Interrupted {
        pgdata: PathBuf,
        journal: PathBuf,
        interrupted: Interrupted,
    },
    #[error("the interrupted restore in {} is of backup {interrupted}, but this one would restore backup {planned}; HINT: resume with the target options of the first run (or --backup {interrupted}), or remove the directory and {} to start over", pgdata.display(), journal.display())]
    ResumeOtherBackup {
        pgdata: PathBuf,
        journal: PathBuf,
        interrupted: String,
        planned: String,
    },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Repository(#[from] RepoError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("internal task failed: {0}")]
    Task(String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The repository's segment size.
pub async fn segment_size(repo: &Repository) -> Result<WalSegmentSize, RestoreError> {
    let identity = repo.identity().await?.ok_or(RestoreError::NotARepository)?;
    WalSegmentSize::new(identity.wal_segment_size).map_err(|_| RestoreError::NotARepository)
}

/// Create `dir` (mode 0700) or accept it if it exists and is empty.
fn empty_dir(dir: &Path) -> Result<(), RestoreError> {
    use std::os::unix::fs::PermissionsExt;
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(RestoreError::NotEmpty(dir.to_path_buf()));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_at(dir))?;
        }
        Err(e) => return Err(io_at(dir)(e)),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_at(dir))
}

/// Plan the restore `opts` asks for and check where it would go: free directories, or an
/// interrupted restore of the same backup when resuming. Writes nothing.
pub async fn plan_restore(repo: &Repository, opts: &RestoreOptions) -> Result<Plan, RestoreError> {
    let seg = segment_size(repo).await?;
    let plan = plan(repo, seg, &opts.request).await?;
    if opts.delta {
        if let Some(pid) = running_server(&opts.pgdata) {
            return Err(DeltaError::Running {
                pgdata: opts.pgdata.clone(),
                pid,
            }
            .into());
        }
        check_same_cluster(
            &opts.pgdata,
            plan.backup.system_identifier,
            plan.backup.id.as_str(),
        )?;
        if plan.backup.manifest_key.is_none() {
            return Err(DeltaError::NoManifest {
                backup: plan.backup.id.to_string(),
            }
            .into());
        }
        // A delta rebuilds whatever is there, an interrupted restore's leftovers included.
        return Ok(plan);
    }
    let journal_path = Journal::path_for(&opts.pgdata);
    match Journal::read(&journal_path).map_err(io_at(&journal_path))? {
        Some((interrupted, _)) if !opts.resume => Err(RestoreError::Interrupted {
            pgdata: opts.pgdata.clone(),
            journal: journal_path,
            interrupted,
        }),
        Some((interrupted, _)) if interrupted.backup != plan.backup.id.to_string() => {
            Err(RestoreError::ResumeOtherBackup {
                pgdata: opts.pgdata.clone(),
                journal: journal_path,
                interrupted: interrupted.backup,
                planned: plan.backup.id.to_string(),
            })
        }
        Some(_) => Ok(plan),
        None => {
            for dir in std::iter::once(opts.pgdata.clone()).chain(tablespace_dirs(&plan, opts)) {
                if fs::read_dir(&dir).is_ok_and(|mut e| e.next().is_some()) {
                    return Err(RestoreError::NotEmpty(dir));
                }
            }
            Ok(plan)
        }
    }
}

/// Restore `plan` (from [`plan_restore`] with the same `opts`).
pub async fn restore(
    repo: Repository,
    plan: Plan,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    let journal_path = Journal::path_for(&opts.pgdata);
    let mut surveyed = None;
    if opts.delta {
        surveyed = Some(delta_survey(&repo, &plan, opts).await?);
        match fs::remove_file(&journal_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_at(&journal_path)(e)),
            _ => {}
        }
    }
    let journal = match Journal::read(&journal_path).map_err(io_at(&journal_path))? {
        Some((interrupted, done)) => {
            tracing::info!(
                chunks = interrupted.chunks_done,
                "resuming the interrupted restore; its completed chunks are kept"
            );
            Journal::resume(&journal_path, done).map_err(io_at(&journal_path))?
        }
        None => {
            match opts.delta {
                true => fs::create_dir_all(&opts.pgdata).map_err(io_at(&opts.pgdata))?,
                false => empty_dir(&opts.pgdata)?,
            }
            Journal::begin(&journal_path, &plan.backup.id).map_err(io_at(&journal_path))?
        }
    };
    let journal = Arc::new(journal);
    let scratch = sibling(&opts.pgdata, ".tidemark-restore-tmp");
    fs::create_dir_all(&scratch).map_err(io_at(&scratch))?;
    let started = Instant::now();
    let keep = surveyed
        .as_ref()
        .map(|s| s.keep.clone())
        .unwrap_or_default();
    let fetched = fetch_all(&repo, &plan, opts, &scratch, &journal, Arc::new(keep)).await;
    let _ = fs::remove_dir_all(&scratch);
    let Fetched {
        bytes,
        fetched_bytes,
        chunks,
        chunks_in_place,
        tablespaces,
        unpacked,
    } = fetched?;
    let delta = match surveyed {
        Some(s) => {
            let mut roots = vec![opts.pgdata.clone()];
            roots.extend(tablespaces.iter().map(|(_, d)| d.clone()));
            let seen: HashSet<PathBuf> = unpacked.dirs.iter().cloned().collect();
            let removed_dirs = prune_dirs(&roots, &seen)?;
            let report = DeltaReport {
                kept_files: s.keep.len() as u64,
                kept_bytes: s.kept_bytes,
                written_files: unpacked.files,
                written_bytes: unpacked.bytes,
                stale_files: s.stale_files,
                extra_files: s.extra_files,
                removed_dirs,
                chunks_in_place,
            };
            tracing::info!(
                kept_files = report.kept_files,
                kept_bytes = report.kept_bytes,
                written_files = report.written_files,
                written_bytes = report.written_bytes,
                fetched_bytes,
                chunks_in_place,
                removed_files = report.stale_files + report.extra_files,
                "delta restore: unchanged files kept, the rest written"
            );
            Some(report)
        }
        None => None,
    };
    let fetch_time = started.elapsed();
    let mut absolute_links = check_links(&opts.pgdata)?;
    for (_, dir) in &tablespaces {
        absolute_links.extend(check_links(dir)?);
    }

    if let Some(key) = &plan.backup.manifest_key {
        repo.fetch_verified(key, &opts.pgdata.join("backup_manifest"))
            .await?;
    }
    if !tablespaces.is_empty() {
        let map: String = tablespaces
            .iter()
            .map(|(oid, dir)| format!("{oid} {}\n", escape_map_path(dir)))
            .collect();
        let path = opts.pgdata.join("tablespace_map");
        fs::write(&path, map).map_err(io_at(&path))?;
    }
    let settings = RecoverySettings {
        restore_command: opts.restore_command.clone(),
        recovery_end_command: opts.recovery_end_command.clone(),
        target: plan.target.clone(),
        timeline: opts.request.timeline,
        action: opts.request.action,
        inclusive: plan.inclusive,
        keep_archiving: opts.keep_archiving,
        standby: opts.standby.clone(),
    };
    settings.write(&opts.pgdata).map_err(io_at(&opts.pgdata))?;
    let journal = Arc::into_inner(journal).ok_or(RestoreError::Task(
        "the restore journal is still in use".into(),
    ))?;
    let journal_path = journal.path().to_path_buf();
    journal.finish().map_err(io_at(&journal_path))?;
    Ok(RestoreReport {
        plan,
        bytes,
        fetched_bytes,
        chunks,
        delta,
        tablespaces,
        absolute_links,
        fetch_time,
    })
}

/// `<pgdata><suffix>`, beside the data directory.
pub fn sibling(pgdata: &Path, suffix: &str) -> PathBuf {
    let mut name = pgdata.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn tablespace_dirs(plan: &Plan, opts: &RestoreOptions) -> Vec<PathBuf> {
    let root = opts
        .tablespace_root
        .clone()
        .unwrap_or_else(|| sibling(&opts.pgdata, ".tablespaces"));
    plan.backup
        .archives
        .iter()
        .filter_map(|a| a.name.strip_suffix(".tar").filter(|n| *n != "base"))
        .map(|oid| root.join(oid))
        .collect()
}

/// tablespace_map escapes backslashes and line breaks in paths.
fn escape_map_path(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('\n', "\\\n")
        .replace('\r', "\\\r")
}

/// Fetch the backup's manifest and compare the directories with it (see `crate::delta`).
async fn delta_survey(
    repo: &Repository,
    plan: &Plan,
    opts: &RestoreOptions,
) -> Result<Survey, RestoreError> {
    let backup = plan.backup.id.to_string();
    let key = plan
        .backup
        .manifest_key
        .as_deref()
        .ok_or(DeltaError::NoManifest {
            backup: backup.clone(),
        })?;
    let scratch = tempfile::tempdir().map_err(io_at(&opts.pgdata))?;
    let path = scratch.path().join("backup_manifest");
    repo.fetch_verified(key, &path).await?;
    let manifest = fs::read(&path).map_err(io_at(&path))?;
    let oids = plan
        .backup
        .archives
        .iter()
        .filter_map(|a| a.name.strip_suffix(".tar").filter(|n| *n != "base"));
    let tablespaces: Vec<(String, PathBuf)> = oids
        .map(str::to_string)
        .zip(tablespace_dirs(plan, opts))
        .collect();
    let pgdata = opts.pgdata.clone();
    tokio::task::spawn_blocking(move || survey(&manifest, &backup, &pgdata, &tablespaces))
        .await
        .map_err(|e| RestoreError::Task(e.to_string()))?
        .map_err(RestoreError::from)
}

/// What fetching and unpacking every chunk did.
struct Fetched {
    bytes: u64,
    fetched_bytes: u64,
    chunks: usize,
    /// Chunks a delta left unfetched (see [`in_place`]).
    chunks_in_place: usize,
    tablespaces: Vec<(String, PathBuf)>,
    unpacked: Unpacked,
}

async fn fetch_all(
    repo: &Repository,
    plan: &Plan,
    opts: &RestoreOptions,
    scratch: &Path,
    journal: &Arc<Journal>,
    keep: Arc<HashSet<PathBuf>>,
) -> Result<Fetched, RestoreError> {
    // A resumed restore unpacks its unfinished chunks again, over what they left; a delta
    // writes over the stale files it did not remove.
    let existing = match opts.resume || opts.delta {
        true => Existing::Replace,
        false => Existing::Refuse,
    };
    let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut jobs = JoinSet::new();
    let mut tablespaces = Vec::new();
    let mut ts_dirs = tablespace_dirs(plan, opts).into_iter();
    let mut n = 0usize;
    let mut bytes = 0;
    let mut fetched_bytes = 0;
    let mut chunks_in_place = 0;
    let mut unpacked = Unpacked::default();
    for archive in &plan.backup.archives {
        let dest = match archive.name.strip_suffix(".tar") {
            Some("base") | None => opts.pgdata.clone(),
            Some(oid) => {
                let dir = ts_dirs.next().unwrap_or_else(|| scratch.join(oid));
                match existing {
                    Existing::Refuse => empty_dir(&dir)?,
                    Existing::Replace => fs::create_dir_all(&dir).map_err(io_at(&dir))?,
                }
                tablespaces.push((oid.to_string(), dir.clone()));
                dir
            }
        };
        for chunk in &archive.chunks {
            bytes += chunk.raw_size;
            let tmp = scratch.join(format!("{n}.tar"));
            n += 1;
            if journal.is_done(&chunk.key) {
                continue;
            }
            let contents = chunk.contents.as_ref().filter(|_| opts.delta);
            if let Some(c) = contents.filter(|c| in_place(c, &dest, &keep)) {
                unpacked.dirs.extend(c.dirs.iter().map(|d| dest.join(d)));
                chunks_in_place += 1;
                continue;
            }
            fetched_bytes += chunk.stored_size;
            let (repo, dest, key) = (repo.clone(), dest.clone(), chunk.key.clone());
            let (permits, journal, keep) = (permits.clone(), journal.clone(), keep.clone());
            jobs.spawn(async move {
                let _permit = permits.acquire_owned().await;
                repo.fetch_verified(&key, &tmp).await?;
                tokio::task::spawn_blocking(move || {
                    let r = unpack_tar(&tmp, &dest, &key, existing, &keep);
                    let _ = fs::remove_file(&tmp);
                    let unpacked = r?;
                    journal.record(&key).map_err(|source| RestoreError::Io {
                        path: journal.path().to_path_buf(),
                        source,
                    })?;
                    Ok::<_, RestoreError>(unpacked)
                })
                .await
                .map_err(|e| RestoreError::Task(e.to_string()))?
            });
        }
    }
    while let Some(done) = jobs.join_next().await {
        let one = done.map_err(|e| RestoreError::Task(e.to_string()))??;
        unpacked.files += one.files;
        unpacked.bytes += one.bytes;
        unpacked.dirs.extend(one.dirs);
    }
    Ok(Fetched {
        bytes,
        fetched_bytes,
        chunks: n,
        chunks_in_place,
        tablespaces,
        unpacked,
    })
}
