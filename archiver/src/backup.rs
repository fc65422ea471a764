//! `tidemark backup`: a base backup over the replication protocol into the repository.
//!
//! BASE_BACKUP's tar streams are cut into chunks of whole entries (`tar_split`), each
//! written to the work directory, then compressed and uploaded concurrently; at most
//! `upload_concurrency` chunks exist on disk at once and none is held in memory, whatever
//! the database size. PostgreSQL's `backup_manifest` is stored as sent. Before
//! `backup.json` — the record that makes the backup complete — is written, the WAL up to
//! the backup's end must be in the repository, so a listed backup is always restorable:
//! the complete segment holding the stop LSN (a primary switches segments at the backup's
//! end) or, for a standby's backup, which has no such switch, also a stored partial of it
//! that reaches the stop LSN (`backup_source`).
//!
//! One writer per backup (invariant 9): the id is claimed (`claim.json`, create-if-absent)
//! before any chunk, so concurrent backups get distinct ids; each run has its own work
//! directory (0700, chunk files 0600: they are raw database files); a failed run removes
//! what it stored.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tidemark_protocol::conninfo::ConnInfo;
use tidemark_protocol::replication::{
    skipped_file, BackupEvent, BaseBackupOptions, ReplicationClient,
};
use tidemark_protocol::{Lsn, SegmentName, TimelineId, WalSegmentSize};
use tidemark_store::backup::{
    ArchiveInfo, BackupClaim, BackupId, BackupInfo, ChunkContents, ChunkInfo,
};
use tidemark_store::crashsafe;
use tidemark_store::identity::RepoIdentity;
use tidemark_store::layout;
use tidemark_store::lease;
use tidemark_store::meta;
use tidemark_store::repository::Repository;
use tidemark_store::storage::{Body, Metadata};
use tidemark_store::Sealed;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::backup_source::{self, Source};
use crate::cluster::Cluster;
use crate::error::ArchiverError;
use crate::expire::remove_backup;
use crate::spool::SpoolError;
use crate::tar_split::{Piece, TarSplitter, END_OF_ARCHIVE};
use crate::uploads::with_retry;

/// How `backup` behaves.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    pub label: String,
    pub fast_checkpoint: bool,
    /// Uncompressed tar bytes per chunk (a chunk holds whole files, so a larger file
    /// makes a larger chunk).
    pub chunk_size: u64,
    pub compression_level: i32,
    pub upload_concurrency: usize,
    /// Where chunks wait for upload.
    pub work_dir: PathBuf,
    /// How long to wait for the archiver to store the WAL the backup needs.
    pub wal_wait: Duration,
    /// Refuse the backup unless the server is a standby (`--from-standby`); a standby is
    /// detected and backed up as one without it too.
    pub require_standby: bool,
    /// Server-side throttle in kB/s (`--max-rate-kb`), `None` for unlimited.
    pub max_rate_kb: Option<u32>,
    /// Print progress (on a terminal).
    pub progress: bool,
}

/// Take a base backup of the cluster at `conninfo` into `repo`. The id is claimed in the
/// repository before anything is written under it, the chunks wait in a work directory of
/// this run's own, and a backup that fails removes what it stored (best effort).
pub async fn backup(
    conninfo: &ConnInfo,
    repo: Repository,
    config: BackupConfig,
) -> Result<BackupInfo, ArchiverError> {
    let mut cluster = Cluster::connect(conninfo).await?;
    let source = backup_source::source(config.require_standby, cluster.in_recovery().await?)?;
    if source == Source::Standby {
        info!("the server is a standby: backing up from it; the WAL that makes the backup consistent must reach the repository from `tidemark stream` of its primary");
    }
    let identity = cluster.check_repository(&repo, false).await?;
    let start_time = Utc::now();
    let id = claim_id(&repo, start_time).await?;
    let repo = Arc::new(repo);
    let stored = store(cluster, source, &repo, &config, &id, &identity, start_time).await;
    if stored.is_err() {
        if let Err(e) = remove_backup(&repo, &id).await {
            warn!(backup = %id, error = %e, "the failed backup's objects could not all be removed; they are ignored (no backup.json)");
        }
    }
    stored
}

/// Claims the first free id of the second `start_time` falls in (`…Z`, then `…Z-01`, …).
async fn claim_id(repo: &Repository, start_time: DateTime<Utc>) -> Result<BackupId, ArchiverError> {
    let holder = lease::holder("tidemark backup");
    for id in BackupId::candidates(start_time) {
        let claim = BackupClaim::new(id, holder.clone(), start_time);
        if with_retry("claim the backup id", || repo.claim_backup(&claim)).await? {
            return Ok(claim.id);
        }
        debug!(id = %claim.id, "backup id taken by another backup; trying the next");
    }
    Err(ArchiverError::BackupIdsExhausted {
        second: BackupId::from_time(start_time),
    })
}

/// This run's own work directory under `work_dir` (both 0700 when created here), removed
/// when the returned handle is dropped. Named after the backup, unique even when two runs
/// on this host take the same id in different repositories.
fn run_work_dir(work_dir: &Path, id: &BackupId) -> Result<tempfile::TempDir, ArchiverError> {
    let failed = |source| SpoolError {
        path: work_dir.to_path_buf(),
        source,
    };
    crashsafe::create_private_dir(work_dir).map_err(failed)?;
    tempfile::Builder::new()
        .prefix(&format!("{id}."))
        .permissions(std::fs::Permissions::from_mode(crashsafe::PRIVATE_DIR_MODE))
        .tempdir_in(work_dir)
        .map_err(|source| failed(source).into())
}

/// A new file in the work directory, 0600: it holds raw database files.
fn work_file(path: &Path) -> Result<File, ArchiverError> {
    crashsafe::private_file_options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(Chunks::io(path))
}

/// Take the backup under the claimed `id` through this run's work directory, wait for
/// the WAL that makes it consistent, then write `backup.json`.
async fn store(
    cluster: Cluster,
    source: Source,
    repo: &Arc<Repository>,
    config: &BackupConfig,
    id: &BackupId,
    identity: &RepoIdentity,
    start_time: DateTime<Utc>,
) -> Result<BackupInfo, ArchiverError> {
    let (seg, pg_major) = (cluster.seg, cluster.pg_major);
    let work = run_work_dir(&config.work_dir, id)?;
    let taken = take(cluster.client, repo, config, id, work.path()).await;
    drop(work);
    let taken = taken.map_err(|e| backup_source::promoted(source, e))?;
    backup_source::check_timelines(source, taken.start_timeline, taken.end_timeline)?;
    wait_for_wal(
        repo,
        seg,
        source,
        taken.end_timeline,
        taken.end_lsn,
        config.wal_wait,
    )
    .await?;
    let info = BackupInfo {
        id: id.clone(),
        label: config.label.clone(),
        system_identifier: identity.system_identifier,
        pg_major,
        timeline: taken.start_timeline.0,
        start_lsn: taken.start_lsn,
        stop_lsn: taken.end_lsn,
        start_time,
        stop_time: Utc::now(),
        archives: taken.archives,
        manifest_key: taken.manifest_key,
        skipped_files: taken.skipped_files,
        from_standby: source == Source::Standby,
    };
    with_retry("store backup.json", || repo.put_backup_info(&info)).await?;
    Ok(info)
}

/// What the server sent, stored.
struct Taken {
    start_lsn: Lsn,
    start_timeline: TimelineId,
    end_lsn: Lsn,
    end_timeline: TimelineId,
    archives: Vec<ArchiveInfo>,
    manifest_key: Option<String>,
    skipped_files: Vec<String>,
}

/// The chunk being written and the uploads in flight.
struct Chunks<'a> {
    repo: &'a Arc<Repository>,
    config: &'a BackupConfig,
    id: &'a BackupId,
    work: &'a Path,
    permits: Arc<Semaphore>,
    uploads: JoinSet<Result<(usize, usize, ChunkInfo), ArchiverError>>,
    archives: Vec<ArchiveInfo>,
    current: Option<Open>,
}

struct Open {
    archive: usize,
    index: usize,
    path: PathBuf,
    out: BufWriter<File>,
    written: u64,
    contents: ChunkContents,
    permit: OwnedSemaphorePermit,
}

impl Chunks<'_> {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiverError + '_ {
        move |source| {
            SpoolError {
                path: path.to_path_buf(),
                source,
            }
            .into()
        }
    }

    async fn begin_archive(
        &mut self,
        name: String,
        tablespace: Option<String>,
    ) -> Result<(), ArchiverError> {
        self.close().await?;
        self.archives.push(ArchiveInfo {
            name,
            tablespace,
            chunks: Vec::new(),
        });
        self.open(0).await
    }

    /// Open chunk `index` of the newest archive, once an upload slot is free.
    async fn open(&mut self, index: usize) -> Result<(), ArchiverError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ArchiverError::Task(e.to_string()))?;
        let archive = self.archives.len() - 1;
        let path = self.work.join(format!("{archive}-{index:04}.tar"));
        let file = work_file(&path)?;
        self.current = Some(Open {
            archive,
            index,
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            written: 0,
            contents: ChunkContents::default(),
            permit,
        });
        Ok(())
    }

    async fn write(
        &mut self,
        splitter: &mut TarSplitter,
        data: &[u8],
    ) -> Result<(), ArchiverError> {
        for piece in splitter.split(data)? {
            match piece {
                Piece::Cut => {
                    let full = self
                        .current
                        .as_ref()
                        .is_some_and(|c| c.written >= self.config.chunk_size);
                    if full {
                        let next = self.current.as_ref().map_or(0, |c| c.index + 1);
                        self.close().await?;
                        self.open(next).await?;
                    }
                }
                Piece::Entry(path, kind) => self.open_chunk()?.contents.add(path.as_deref(), kind),
                Piece::Bytes(bytes) => {
                    let cur = self.open_chunk()?;
                    cur.out.write_all(&bytes).map_err(Self::io(&cur.path))?;
                    cur.written += bytes.len() as u64;
                }
            }
        }
        Ok(())
    }

    fn open_chunk(&mut self) -> Result<&mut Open, ArchiverError> {
        self.current
            .as_mut()
            .ok_or_else(|| ArchiverError::Task("archive data before an archive began".into()))
    }

    /// Finish the open chunk (end-of-archive blocks, flush) and start its upload.
    async fn close(&mut self) -> Result<(), ArchiverError> {
        let Some(mut cur) = self.current.take() else {
            return Ok(());
        };
        cur.out
            .write_all(&END_OF_ARCHIVE)
            .map_err(Self::io(&cur.path))?;
        cur.out.flush().map_err(Self::io(&cur.path))?;
        let key =
            layout::backup_chunk_key(self.id, &self.archives[cur.archive].name, cur.index as u32);
        let (repo, level) = (self.repo.clone(), self.config.compression_level);
        self.uploads.spawn(async move {
            let Open {
                archive,
                index,
                path,
                contents,
                permit,
                ..
            } = cur;
            let stored = with_retry("upload backup chunk", || {
                repo.store_compressed(key.clone(), &path, level, meta::KIND_BACKUP_CHUNK)
            })
            .await?;
            let _ = fs::remove_file(&path);
            drop(permit);
            Ok((
                archive,
                index,
                ChunkInfo {
                    key: stored.key,
                    raw_size: stored.sealed.raw_size,
                    stored_size: stored.sealed.stored_size,
                    crc32: stored.sealed.crc32,
                    contents: Some(contents),
                },
            ))
        });
        // Surface failures early rather than at the end.
        while let Some(done) = self.uploads.try_join_next() {
            self.collect(done)?;
        }
        Ok(())
    }

    fn collect(
        &mut self,
        done: Result<Result<(usize, usize, ChunkInfo), ArchiverError>, tokio::task::JoinError>,
    ) -> Result<(), ArchiverError> {
        let (archive, index, chunk) = done.map_err(|e| ArchiverError::Task(e.to_string()))??;
        let chunks = &mut self.archives[archive].chunks;
        if chunks.len() <= index {
            chunks.resize(
                index + 1,
                ChunkInfo {
                    key: String::new(),
                    raw_size: 0,
                    stored_size: 0,
                    crc32: 0,
                    contents: None,
                },
            );
        }
        chunks[index] = chunk;
        Ok(())
    }

    /// Close the last chunk and wait for every upload. On failure, the uploads still in
    /// flight are waited for too (see `settle`).
    async fn finish(mut self) -> Result<Vec<ArchiveInfo>, ArchiverError> {
        let done = self.finish_uploads().await;
        match done {
            Ok(()) => Ok(self.archives),
            Err(e) => {
                self.settle().await;
                Err(e)
            }
        }
    }

    async fn finish_uploads(&mut self) -> Result<(), ArchiverError> {
        self.close().await?;
        while let Some(done) = self.uploads.join_next().await {
            self.collect(done)?;
        }
        Ok(())
    }

    /// After a failure: let the uploads in flight end (whatever their outcome) so that no
    /// chunk lands in the repository after the failed backup removed its objects.
    async fn settle(mut self) {
        self.current = None;
        while self.uploads.join_next().await.is_some() {}
    }
}

async fn take(
    client: ReplicationClient,
    repo: &Arc<Repository>,
    config: &BackupConfig,
    id: &BackupId,
    work: &Path,
) -> Result<Taken, ArchiverError> {
    let mut bb = client
        .base_backup(&BaseBackupOptions {
            label: config.label.clone(),
            fast_checkpoint: config.fast_checkpoint,
            max_rate_kb: config.max_rate_kb,
        })
        .await?;
    let total_kb: u64 = bb.tablespaces().iter().filter_map(|t| t.size_kb).sum();
    let mut chunks = Chunks {
        repo,
        config,
        id,
        work,
        permits: Arc::new(Semaphore::new(config.upload_concurrency.max(1))),
        uploads: JoinSet::new(),
        archives: Vec::new(),
        current: None,
    };
    let manifest_path = work.join("backup_manifest");
    let mut manifest: Option<(BufWriter<File>, crc32fast::Hasher, u64)> = None;
    let mut splitter = TarSplitter::new();
    let mut skipped_files = Vec::new();
    let started = Instant::now();
    let streamed = async {
        let end = loop {
            match bb.next().await? {
                BackupEvent::Archive { name, tablespace } => {
                    splitter.finish()?;
                    splitter = TarSplitter::new();
                    chunks.begin_archive(name, tablespace).await?;
                }
                BackupEvent::Data(data) => chunks.write(&mut splitter, &data).await?,
                BackupEvent::Manifest => {
                    let file = work_file(&manifest_path)?;
                    manifest = Some((BufWriter::new(file), crc32fast::Hasher::new(), 0));
                }
                BackupEvent::ManifestData(data) => {
                    if let Some((out, hasher, len)) = manifest.as_mut() {
                        out.write_all(&data).map_err(Chunks::io(&manifest_path))?;
                        hasher.update(&data);
                        *len += data.len() as u64;
                    }
                }
                BackupEvent::Progress { done_bytes } => {
                    if config.progress {
                        report_progress(done_bytes, total_kb * 1024, started);
                    }
                }
                BackupEvent::Notice { severity, message } => match skipped_file(&message) {
                    Some(path) => {
                        warn!(
                            "the server left {path:?} out of the backup (PostgreSQL copies \
                             only regular files and directories; a symlink outside pg_tblspc is \
                             skipped), so a restore will lack it; HINT: replace the link by a \
                             regular file, or keep the file outside the data directory and \
                             point postgresql.conf at it"
                        );
                        skipped_files.push(path.to_string());
                    }
                    None if severity == "WARNING" => warn!("server: {message}"),
                    None => info!(%severity, "server: {message}"),
                },
                BackupEvent::End {
                    end_lsn,
                    end_timeline,
                } => break (end_lsn, end_timeline),
            }
        };
        splitter.finish()?;
        Ok::<_, ArchiverError>(end)
    }
    .await;
    let (end_lsn, end_timeline) = match streamed {
        Ok(end) => end,
        Err(e) => {
            chunks.settle().await;
            return Err(e);
        }
    };
    if config.progress {
        eprintln!();
    }
    let start_lsn = bb.start_lsn();
    let start_timeline = bb.start_timeline();
    let archives = chunks.finish().await?;
    let manifest_key = match manifest {
        Some((mut out, hasher, len)) => {
            out.flush().map_err(Chunks::io(&manifest_path))?;
            let key = layout::backup_manifest_key(id);
            let sealed = Sealed {
                crc32: hasher.finalize(),
                raw_size: len,
                stored_size: len,
            };
            let metadata = Metadata::from([(
                meta::KIND.to_string(),
                meta::KIND_BACKUP_MANIFEST.to_string(),
            )]);
            with_retry("store backup_manifest", || {
                repo.store_plain(
                    key.clone(),
                    Body::File(manifest_path.clone()),
                    sealed,
                    metadata.clone(),
                )
            })
            .await?;
            Some(key)
        }
        None => None,
    };
    Ok(Taken {
        start_lsn,
        start_timeline,
        end_lsn,
        end_timeline,
        archives,
        manifest_key,
        skipped_files,
    })
}

fn report_progress(done: u64, total: u64, started: Instant) {
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let rate = mb(done) / started.elapsed().as_secs_f64().max(0.001);
    let pct = if total > 0 {
        (done as f64 / total as f64 * 100.0).min(100.0)
    } else {
        0.0
    };
    eprint!(
        "\rbackup: {:.0} of ~{:.0} MB ({pct:.0}%), {rate:.0} MB/s   ",
        mb(done),
        mb(total)
    );
}

/// Wait until the repository holds the WAL of `timeline` up to `end_lsn`: then recovery
/// from this backup can become consistent from the repository alone. Of a primary, which
/// switches segments at the backup's end, the segment holding the byte before `end_lsn`
/// stored complete; of a standby, which does not, that or a stored partial of it that
/// reaches `end_lsn`. (The segments before it are the archiver's to store in order; the
/// restore planner proves their continuity.)
async fn wait_for_wal(
    repo: &Repository,
    seg: WalSegmentSize,
    source: Source,
    timeline: TimelineId,
    end_lsn: Lsn,
    patience: Duration,
) -> Result<(), ArchiverError> {
    let last = SegmentName::containing(timeline, Lsn(end_lsn.0.saturating_sub(1)), seg);
    let needed = match source {
        Source::Primary => last.end_lsn(seg),
        Source::Standby => end_lsn,
    };
    let deadline = Instant::now() + patience;
    loop {
        if repo
            .stored_through(last, seg)
            .await?
            .is_some_and(|through| through >= needed)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ArchiverError::WalNotArchived {
                key: layout::wal_segment_key(last, seg),
                lsn: end_lsn,
                waited: patience,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn backup_work_files_are_owner_only_and_two_runs_never_share_a_work_directory() {
        let dir = tempfile::tempdir().unwrap();
        let work_dir = dir.path().join("spool/backup-work");
        let id: BackupId = "20261121T093000Z".parse().unwrap();
        let first = run_work_dir(&work_dir, &id).unwrap();
        let second = run_work_dir(&work_dir, &id).unwrap();
        assert_ne!(first.path(), second.path(), "one id, one shared directory");
        for created in [dir.path().join("spool"), work_dir.clone()] {
            assert_eq!(mode(&created), 0o700, "{}", created.display());
        }
        for run in [&first, &second] {
            assert_eq!(mode(run.path()), 0o700);
            let chunk = run.path().join("0-0000.tar");
            work_file(&chunk).unwrap().write_all(b"raw data").unwrap();
            assert_eq!(mode(&chunk), 0o600);
            assert!(work_file(&chunk).is_err(), "a work file is never reused");
        }
        let kept = second.path().to_path_buf();
        drop(first);
        assert!(
            kept.join("0-0000.tar").exists(),
            "the first run removed the second's files"
        );
        drop(second);
        assert!(!kept.exists());
    }
}
