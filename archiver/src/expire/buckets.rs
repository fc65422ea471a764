//! Bucket history under the retention window: each tracked bucket's passes from more than
//! an hour before the database's window are folded into one record (`objects::compact`),
//! and copies (copy mode) that no remaining record refers to are removed. Done under the
//! bucket's lease, so no tracking pass is half-way through meanwhile: a pass that reuses
//! a stored copy never sees it removed under it.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tidemark_store::catalog::Catalog;
use tidemark_store::lease::{self, Lease, LeaseError};
use tidemark_store::objects::{self, OBJECTS_PREFIX};
use tidemark_store::repository::Repository;
use tracing::{info, warn};

use super::delete_all;
use crate::error::ArchiverError;

/// How long `expire` may hold a bucket's lease, and wait for it.
const LEASE_TTL: Duration = Duration::from_secs(3600);
const LEASE_WAIT: Duration = Duration::from_secs(60);

/// What expiry did to one bucket's history.
#[derive(Debug, Clone, Serialize)]
pub struct BucketExpiry {
    pub bucket: String,
    /// Pass records folded into one.
    pub passes_folded: usize,
    /// Versions no instant of the window needs.
    pub versions_dropped: usize,
    /// Copies (copy mode) no longer referred to.
    pub blobs_removed: usize,
    pub blob_bytes_removed: u64,
    /// The first instant (PostgreSQL's clock) the bucket can be restored to afterwards.
    pub window_from: Option<DateTime<Utc>>,
    /// Why the bucket was left alone this time.
    pub skipped: Option<String>,
}

/// Expires every bucket that has history in the repository.
pub(super) async fn expire_buckets(
    repo: &Repository,
    mut catalog: Option<&mut Catalog>,
    window_start: DateTime<Utc>,
    dry_run: bool,
) -> Result<Vec<BucketExpiry>, ArchiverError> {
    let buckets: BTreeSet<String> = repo
        .list(OBJECTS_PREFIX)
        .await?
        .iter()
        .filter_map(|o| o.key.strip_prefix(OBJECTS_PREFIX)?.split_once('/'))
        .map(|(bucket, _)| bucket.to_string())
        .collect();
    let mut out = Vec::new();
    for bucket in buckets {
        if dry_run {
            out.push(expire_bucket(repo, None, &bucket, window_start, true).await?);
            continue;
        }
        let holder = lease::holder("tidemark expire");
        let name = objects::lease_name(&bucket);
        let lease = match Lease::take(repo, &name, &holder, LEASE_TTL, LEASE_WAIT).await {
            Ok(lease) => lease,
            Err(LeaseError::Repository(e)) => return Err(e.into()),
            Err(held @ LeaseError::Held { .. }) => {
                warn!(%bucket, reason = %held, "bucket history left as it is");
                out.push(BucketExpiry {
                    skipped: Some(held.to_string()),
                    ..BucketExpiry::new(bucket)
                });
                continue;
            }
        };
        let done = expire_bucket(repo, catalog.as_deref_mut(), &bucket, window_start, false).await;
        lease.release().await?;
        out.push(done?);
    }
    Ok(out)
}

impl BucketExpiry {
    fn new(bucket: String) -> BucketExpiry {
        BucketExpiry {
            bucket,
            passes_folded: 0,
            versions_dropped: 0,
            blobs_removed: 0,
            blob_bytes_removed: 0,
            window_from: None,
            skipped: None,
        }
    }
}

async fn expire_bucket(
    repo: &Repository,
    catalog: Option<&mut Catalog>,
    bucket: &str,
    window_start: DateTime<Utc>,
    dry_run: bool,
) -> Result<BucketExpiry, ArchiverError> {
    let passes = objects::load_stored_passes(repo, Some(bucket)).await?;
    let mut report = BucketExpiry::new(bucket.to_string());
    let Some(folded) = objects::compact(&passes, window_start) else {
        report.window_from = passes.iter().map(|p| p.record.clock.at).min();
        return Ok(report);
    };
    let replaced: BTreeSet<&str> = folded.replaced.iter().map(|p| p.key.as_str()).collect();
    let remaining = passes
        .iter()
        .filter(|p| !replaced.contains(p.key.as_str()))
        .map(|p| &p.record);
    let referenced = objects::referenced_blobs(remaining.chain([&folded.record]));
    let unreferenced: Vec<_> = repo
        .list(&objects::blobs_prefix(bucket))
        .await?
        .into_iter()
        .filter(|o| objects::blob_sha(bucket, &o.key).is_some_and(|sha| !referenced.contains(sha)))
        .collect();
    report.passes_folded = folded.replaced.len();
    report.versions_dropped = folded.dropped_versions;
    report.blobs_removed = unreferenced.len();
    report.blob_bytes_removed = unreferenced.iter().map(|o| o.size).sum();
    report.window_from = Some(folded.record.clock.at);
    if dry_run {
        return Ok(report);
    }
    // The folded record first: until the replaced ones are gone, both are read and agree.
    let written = objects::store_pass(repo, &folded.record).await?;
    let stale = replaced
        .iter()
        .filter(|k| !written.iter().any(|w| w == *k))
        .map(|k| k.to_string());
    delete_all(repo, stale).await?;
    if let Some(catalog) = catalog {
        let records: Vec<_> = folded.replaced.iter().map(|p| p.record.clone()).collect();
        catalog.replace_passes(&records, &folded.record)?;
    }
    delete_all(repo, unreferenced.into_iter().map(|o| o.key)).await?;
    info!(
        bucket,
        passes = report.passes_folded,
        versions = report.versions_dropped,
        blobs = report.blobs_removed,
        "bucket history folded up to the retention window"
    );
    Ok(report)
}
