//! `expire`: one retention window for every store. Backups and WAL that no instant of the
//! window needs are removed (`select` decides, by time and timeline lineage), then each
//! tracked bucket's history is folded so that it reaches back exactly as far as the
//! database can now be restored (`buckets`). The repository changes first, the catalog
//! after; removal goes oldest first, and a backup loses its `backup.json` before its data,
//! so an interrupted run leaves only ignorable leftovers that the next run removes.

mod buckets;
pub mod select;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use tidemark_protocol::{parse_history, TimelineId, WalSegmentSize};
use tidemark_store::backup::BackupId;
use tidemark_store::catalog::Catalog;
use tidemark_store::layout;
use tidemark_store::repository::{RepoError, Repository};
use tracing::{info, warn};

pub use self::buckets::BucketExpiry;
use self::select::{select, WalObject};
use crate::error::ArchiverError;

/// Deletions running at once.
const PARALLEL_DELETES: usize = 16;

/// What to expire.
#[derive(Debug, Clone, Copy)]
pub struct ExpireOptions {
    /// How far back every store must stay restorable.
    pub retention: chrono::Duration,
    /// Report what would be removed, remove nothing.
    pub dry_run: bool,
    /// How long to wait for a bucket's lease while a tracking pass holds it.
    pub lease_wait: std::time::Duration,
    /// Copies (copy mode) stored more recently than this are kept even when no record
    /// refers to them yet: a pass may be about to (`COPY_GRACE`).
    pub copy_grace: std::time::Duration,
}

/// The default `copy_grace`: far longer than any tracking pass's lease, so a copy a pass
/// stored or is reusing is never removed before the pass's record refers to it, even if
/// that pass lost its lease and has not noticed yet.
pub const COPY_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// What `expire` removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Serialize)]
pub struct ExpireReport {
    /// The window's first instant: now minus the retention.
    pub cutoff: DateTime<Utc>,
    pub dry_run: bool,
    pub backups_kept: Vec<BackupId>,
    pub backups_removed: Vec<RemovedBackup>,
    pub wal_removed: usize,
    pub wal_bytes_removed: u64,
    /// The first instant the database can be restored to afterwards (the oldest kept
    /// backup's end); at or before the cutoff whenever a backup ended before it.
    pub database_window_from: Option<DateTime<Utc>>,
    pub buckets: Vec<BucketExpiry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemovedBackup {
    pub id: BackupId,
    pub stop_time: DateTime<Utc>,
    pub bytes: u64,
}

/// Applies the retention window to the repository, and to `catalog` if there is one here.
pub async fn expire(
    repo: &Repository,
    mut catalog: Option<&mut Catalog>,
    seg: WalSegmentSize,
    options: ExpireOptions,
) -> Result<ExpireReport, ArchiverError> {
    let cutoff = Utc::now() - options.retention;
    let backups = repo.backups().await?;
    let (wal, histories) = archived_wal(repo, seg).await?;
    let chosen = select(&backups, &histories, &wal, seg, cutoff);
    let mut report = ExpireReport {
        cutoff,
        dry_run: options.dry_run,
        backups_kept: chosen.keep.iter().map(|b| b.id.clone()).collect(),
        backups_removed: chosen
            .remove
            .iter()
            .map(|b| RemovedBackup {
                id: b.id.clone(),
                stop_time: b.stop_time,
                bytes: b.stored_size(),
            })
            .collect(),
        wal_removed: chosen.remove_wal.len(),
        wal_bytes_removed: chosen.remove_wal.iter().map(|w| w.size).sum(),
        database_window_from: chosen.window_start(),
        buckets: Vec::new(),
    };
    if !options.dry_run {
        for backup in &chosen.remove {
            remove_backup(repo, &backup.id).await?;
            info!(backup = %backup.id, "expired backup removed");
        }
        delete_all(repo, chosen.remove_wal.iter().map(|w| w.key.clone())).await?;
        if let Some(catalog) = catalog.as_deref_mut() {
            let removed: Vec<_> = chosen
                .remove_wal
                .iter()
                .map(|w| (w.name, w.key.as_str()))
                .collect();
            catalog.forget_segments(&removed, seg)?;
        }
        info!(
            backups = chosen.remove.len(),
            wal = chosen.remove_wal.len(),
            "expired backups and WAL before the retention window"
        );
    }
    // Bucket history reaches back as far as the database: no further.
    if let Some(window_start) = report.database_window_from {
        report.buckets = buckets::expire_buckets(repo, catalog, window_start, &options).await?;
    }
    Ok(report)
}

/// Every WAL object in the repository, and the timelines' parsed history files (a damaged
/// one is left out, which keeps all of that timeline's WAL).
async fn archived_wal(
    repo: &Repository,
    seg: WalSegmentSize,
) -> Result<
    (
        Vec<WalObject>,
        BTreeMap<TimelineId, Vec<tidemark_protocol::HistoryEntry>>,
    ),
    RepoError,
> {
    let mut wal = Vec::new();
    let mut histories = BTreeMap::new();
    for info in repo.list(layout::WAL_PREFIX).await? {
        if let Some(key) = layout::parse_wal_key(&info.key, seg) {
            wal.push(WalObject {
                key: info.key,
                name: key.name,
                size: info.size,
                last_modified: info.last_modified,
            });
            continue;
        }
        let Some(tli) = layout::parse_history_key(&info.key) else {
            continue;
        };
        let Some(bytes) = repo.history(tli).await? else {
            continue;
        };
        match parse_history(&bytes) {
            Ok(history) => {
                histories.insert(tli, history);
            }
            Err(e) => {
                warn!(timeline = tli.0, error = %e, "damaged history file; all WAL of that timeline is kept")
            }
        }
    }
    Ok((wal, histories))
}

/// Removes a backup: `backup.json` first (the backup is then incomplete and ignored), then
/// everything else under its directory (chunks, manifest, claim). Also how a failed backup
/// removes what it wrote.
pub(crate) async fn remove_backup(repo: &Repository, id: &BackupId) -> Result<(), RepoError> {
    repo.delete(&layout::backup_info_key(id)).await?;
    let rest = repo.list(&layout::backup_dir(id)).await?;
    delete_all(repo, rest.into_iter().map(|o| o.key)).await
}

/// Deletes `keys`, several at a time, in about the order given.
pub(crate) async fn delete_all(
    repo: &Repository,
    keys: impl IntoIterator<Item = String>,
) -> Result<(), RepoError> {
    stream::iter(keys)
        .map(|key| async move { repo.delete(&key).await })
        .buffered(PARALLEL_DELETES)
        .try_collect::<()>()
        .await
}
