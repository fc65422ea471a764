//! The metrics that come from the repository and the catalog rather than from streaming:
//! the newest and the oldest backup's end (where the database's restorable window begins,
//! as for `status`; streaming keeps its end current), and each tracked bucket's window
//! and newest pass. Re-read every [`EVERY`]; a failed
//! read keeps the last values and is logged.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tidemark_store::catalog::Catalog;
use tidemark_store::repository::Repository;
use tokio::sync::watch;

use super::Metrics;
use crate::error::ArchiverError;

/// How often the repository's backups and gaps, and the catalog, are read.
pub const EVERY: Duration = Duration::from_secs(30);

/// What one reading found.
#[derive(Debug, Default)]
pub(super) struct Facts {
    pub newest_backup: Option<DateTime<Utc>>,
    pub oldest_backup: Option<DateTime<Utc>>,
    /// When the catalog's newest WAL was stored.
    pub archived_at: Option<DateTime<Utc>>,
    /// Each tracked bucket: its first and its newest pass.
    pub buckets: Vec<(String, DateTime<Utc>, DateTime<Utc>)>,
}

/// Refresh `metrics` from `repo` and the catalog at `catalog_path` until `shutdown` fires.
pub async fn watch(
    repo: &Repository,
    catalog_path: &Path,
    metrics: &Metrics,
    mut shutdown: watch::Receiver<u32>,
) {
    loop {
        match read(repo, catalog_path).await {
            Ok(facts) => metrics.repository_facts(facts),
            Err(e) => {
                let error = crate::uploads::chain(&e);
                tracing::warn!(%error, "metrics: cannot read the backups and windows; their gauges keep their last values");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn read(repo: &Repository, catalog_path: &Path) -> Result<Facts, ArchiverError> {
    let backups = repo.backups().await?;
    let gaps = repo.gaps().await?;
    let catalog = Catalog::open(catalog_path)?;
    let oldest_backup = backups.iter().map(|b| b.stop_time).min();
    let report =
        crate::status::status(&repo.url.to_string(), &catalog, oldest_backup, &gaps, None).await?;
    Ok(Facts {
        newest_backup: backups.iter().map(|b| b.stop_time).max(),
        oldest_backup,
        archived_at: report.archived.map(|a| a.archived_at),
        buckets: report
            .buckets
            .into_iter()
            .map(|b| (b.bucket, b.window.from, b.window.to))
            .collect(),
    })
}
