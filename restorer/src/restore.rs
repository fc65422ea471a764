//! `tidemark restore`: plan (`plan_restore`, which writes nothing), then fetch and unpack
//! the chosen backup's chunks in parallel into an empty data directory (`restore`), check
//! the links they hold, put PostgreSQL's manifest beside them, and write the recovery
//! settings. Refuses a non-empty directory (DESIGN invariant 5). A journal
//! (`crate::journal`) records the chunks unpacked, so an interrupted restore is finished
//! with `resume` and a plain rerun into its directory is refused.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemark_protocol::WalSegmentSize;
use tidemark_store::repository::{RepoError, Repository};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::journal::{Interrupted, Journal};
use crate::plan::{plan, Plan, PlanError, PlanRequest};
use crate::recovery_conf::RecoverySettings;
use crate::unpack::{check_links, unpack_tar, AbsoluteLink, Existing, UnpackError};

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
}

/// What a restore did.
#[derive(Debug)]
pub struct RestoreReport {
    pub plan: Plan,
    pub bytes: u64,
    pub chunks: usize,
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
    let journal = match Journal::read(&journal_path).map_err(io_at(&journal_path))? {
        Some((interrupted, done)) => {
            tracing::info!(
                chunks = interrupted.chunks_done,
                "resuming the interrupted restore; its completed chunks are kept"
            );
            Journal::resume(&journal_path, done).map_err(io_at(&journal_path))?
        }
        None => {
            empty_dir(&opts.pgdata)?;
            Journal::begin(&journal_path, &plan.backup.id).map_err(io_at(&journal_path))?
        }
    };
    let journal = Arc::new(journal);
    let scratch = sibling(&opts.pgdata, ".tidemark-restore-tmp");
    fs::create_dir_all(&scratch).map_err(io_at(&scratch))?;
    let started = Instant::now();
    let fetched = fetch_all(&repo, &plan, opts, &scratch, &journal).await;
    let _ = fs::remove_dir_all(&scratch);
    let (bytes, chunks, tablespaces) = fetched?;
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
        chunks,
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

type Fetched = (u64, usize, Vec<(String, PathBuf)>);

async fn fetch_all(
    repo: &Repository,
    plan: &Plan,
    opts: &RestoreOptions,
    scratch: &Path,
    journal: &Arc<Journal>,
) -> Result<Fetched, RestoreError> {
    // A resumed restore unpacks its unfinished chunks again, over what they left.
    let existing = match opts.resume {
        true => Existing::Replace,
        false => Existing::Refuse,
    };
    let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut jobs = JoinSet::new();
    let mut tablespaces = Vec::new();
    let mut ts_dirs = tablespace_dirs(plan, opts).into_iter();
    let mut n = 0usize;
    let mut bytes = 0;
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
            let (repo, dest, key) = (repo.clone(), dest.clone(), chunk.key.clone());
            let (permits, journal) = (permits.clone(), journal.clone());
            jobs.spawn(async move {
                let _permit = permits.acquire_owned().await;
                repo.fetch_verified(&key, &tmp).await?;
                let unpacked = tokio::task::spawn_blocking(move || {
                    let r = unpack_tar(&tmp, &dest, &key, existing);
                    let _ = fs::remove_file(&tmp);
                    r?;
                    journal.record(&key).map_err(|source| RestoreError::Io {
                        path: journal.path().to_path_buf(),
                        source,
                    })
                })
                .await
                .map_err(|e| RestoreError::Task(e.to_string()))?;
                unpacked
            });
        }
    }
    while let Some(done) = jobs.join_next().await {
        done.map_err(|e| RestoreError::Task(e.to_string()))??;
    }
    Ok((bytes, n, tablespaces))
}
