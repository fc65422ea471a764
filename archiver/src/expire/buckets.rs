//! Bucket history under the retention window: each tracked bucket's passes from more than
//! an hour before the database's window are folded into one record (`objects::compact`),
//! and copies (copy mode) that no remaining record refers to are removed — unless stored
//! within the grace period (`ExpireOptions::copy_grace`). Done under the bucket's lease,
//! which a tracking pass renews while it runs, so no pass is half-way through meanwhile:
//! a pass that stores or reuses a copy never sees it removed under it, and the grace
//! covers a pass that lost its lease without noticing yet.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tidemark_store::catalog::Catalog;
use tidemark_store::lease::{self, Lease, LeaseError};
use tidemark_store::objects::{self, OBJECTS_PREFIX};
use tidemark_store::repository::Repository;
use tracing::{info, warn};

use super::{delete_all, ExpireOptions};
use crate::error::ArchiverError;

/// How long `expire` may hold a bucket's lease.
const LEASE_TTL: Duration = Duration::from_secs(3600);

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
    options: &ExpireOptions,
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
        if options.dry_run {
            out.push(expire_bucket(repo, None, &bucket, window_start, options).await?);
            continue;
        }
        let holder = lease::holder("tidemark expire");
        let name = objects::lease_name(&bucket);
        let lease = match Lease::take(repo, &name, &holder, LEASE_TTL, options.lease_wait).await {
            Ok(lease) => lease,
            Err(LeaseError::Repository(e)) => return Err(e.into()),
            Err(
                held @ (LeaseError::Held { .. }
                | LeaseError::Lost { .. }
                | LeaseError::Lapsed { .. }),
            ) => {
                warn!(%bucket, reason = %held, "bucket history left as it is");
                out.push(BucketExpiry {
                    skipped: Some(held.to_string()),
                    ..BucketExpiry::new(bucket)
                });
                continue;
            }
        };
        let done =
            expire_bucket(repo, catalog.as_deref_mut(), &bucket, window_start, options).await;
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
    options: &ExpireOptions,
) -> Result<BucketExpiry, ArchiverError> {
    let grace_from = chrono::Duration::from_std(options.copy_grace)
        .ok()
        .and_then(|grace| Utc::now().checked_sub_signed(grace))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
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
        // A copy without a time counts as new: kept.
        .filter(|o| o.last_modified.is_some_and(|t| t < grace_from))
        .collect();
    report.passes_folded = folded.replaced.len();
    report.versions_dropped = folded.dropped_versions;
    report.blobs_removed = unreferenced.len();
    report.blob_bytes_removed = unreferenced.iter().map(|o| o.size).sum();
    report.window_from = Some(folded.record.clock.at);
    if options.dry_run {
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration as Span;
    use tidemark_store::objects::{state_at, ClockSample, PassRecord, TrackMode, TrackedVersion};
    use tidemark_store::url::RepoUrl;

    const HOUR: i64 = 3600;

    fn options(dry_run: bool) -> ExpireOptions {
        ExpireOptions {
            retention: Span::zero(),
            dry_run,
            lease_wait: Duration::from_secs(1),
            copy_grace: Duration::ZERO,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn copied(seq: i64, key: &str, secs: i64, blob: Option<&str>) -> TrackedVersion {
        TrackedVersion {
            seq,
            key: key.to_string(),
            version_id: String::new(),
            last_modified: at(secs),
            size: 1,
            etag: format!("e{seq}"),
            delete_marker: blob.is_none(),
            blob: blob.map(str::to_string),
            observed_at: None,
        }
    }

    fn pass(secs: i64, versions: Vec<TrackedVersion>) -> PassRecord {
        PassRecord {
            bucket: "app".into(),
            prefix: String::new(),
            mode: TrackMode::Copy,
            complete_as_of: at(secs),
            clock: ClockSample {
                at: at(secs),
                min_offset_ms: -50,
                max_offset_ms: 50,
            },
            versions,
            folded: false,
        }
    }

    fn live(versions: &[TrackedVersion], secs: i64) -> Vec<(String, Option<String>)> {
        state_at(versions, "", at(secs), Span::zero())
            .live
            .into_values()
            .map(|v| (v.key, v.blob))
            .collect()
    }

    /// A copy-mode history from hours ago, folded by `expire_buckets` on a filesystem
    /// repository: the folded record restores every instant of the window as the passes
    /// did, the catalog agrees with the repository, copies nothing refers to any more
    /// are removed and the rest stay, and a held lease leaves the bucket alone.
    #[tokio::test]
    async fn old_passes_fold_and_unreferenced_copies_go() {
        let dir = tempfile::tempdir().unwrap();
        let url = RepoUrl::File {
            path: dir.path().join("repo"),
        };
        let repo = Repository::create(&url, &Default::default()).await.unwrap();
        let mut catalog = Catalog::open(&dir.path().join("c.db")).unwrap();
        let passes = vec![
            pass(
                0,
                vec![
                    copied(1, "a", -5, Some("aa01")),
                    copied(2, "b", -4, Some("bb01")),
                ],
            ),
            pass(
                HOUR,
                vec![copied(3, "a", 10, Some("aa02")), copied(4, "b", 20, None)],
            ),
            pass(2 * HOUR, Vec::new()),
            pass(5 * HOUR, vec![copied(5, "c", 5 * HOUR - 3, Some("aa01"))]),
        ];
        let sample = dir.path().join("sample");
        std::fs::write(&sample, b"object bytes").unwrap();
        for sha in ["aa01", "bb01", "aa02", "ff99"] {
            repo.store_compressed(
                objects::blob_key("app", sha),
                &sample,
                1,
                tidemark_store::meta::KIND_OBJECT_BLOB,
            )
            .await
            .unwrap();
        }
        for p in &passes {
            objects::store_pass(&repo, p).await.unwrap();
            catalog.record_pass(p).unwrap();
        }
        let all: Vec<TrackedVersion> = passes.iter().flat_map(|p| p.versions.clone()).collect();

        // The database window begins at hour 4: the passes of hours 0-2 fold.
        let window = at(4 * HOUR);
        // Within the grace period, no copy goes, however unreferenced.
        let graced = ExpireOptions {
            copy_grace: crate::expire::COPY_GRACE,
            ..options(true)
        };
        let dry = expire_buckets(&repo, None, window, &graced).await.unwrap();
        assert_eq!((dry[0].passes_folded, dry[0].blobs_removed), (3, 0));
        let dry = expire_buckets(&repo, None, window, &options(true))
            .await
            .unwrap();
        assert_eq!((dry[0].passes_folded, dry[0].blobs_removed), (3, 2));
        assert_eq!(
            objects::load_passes(&repo, Some("app")).await.unwrap(),
            passes
        );

        let done = expire_buckets(&repo, Some(&mut catalog), window, &options(false))
            .await
            .unwrap();
        let b = &done[0];
        assert_eq!(b.bucket, "app");
        assert_eq!((b.passes_folded, b.versions_dropped), (3, 3));
        // bb01 (b's, deleted before the settled instant) and the stray ff99 go; aa02 (a's
        // live version) stays, and so does aa01: a's old copy, but also c's content.
        assert_eq!(b.blobs_removed, 2);
        assert_eq!(b.window_from, Some(at(2 * HOUR)));
        let stored = objects::load_passes(&repo, Some("app")).await.unwrap();
        assert_eq!(stored.len(), 2);
        assert!(stored[0].folded);
        let kept: Vec<TrackedVersion> = stored.iter().flat_map(|p| p.versions.clone()).collect();
        for secs in [2 * HOUR, 4 * HOUR, 5 * HOUR, 6 * HOUR] {
            assert_eq!(live(&kept, secs), live(&all, secs), "state at {secs}");
        }
        let from_catalog = catalog.object_history("app").unwrap();
        assert_eq!(from_catalog.versions, kept);
        assert_eq!(from_catalog.passes.len(), 2);
        for (sha, present) in [
            ("aa01", true),
            ("aa02", true),
            ("bb01", false),
            ("ff99", false),
        ] {
            let head = repo.head(&objects::blob_key("app", sha)).await.unwrap();
            assert_eq!(head.is_some(), present, "{sha}");
        }
        // Nothing more to fold at the same window; the lease was given back.
        let again = expire_buckets(&repo, Some(&mut catalog), window, &options(false))
            .await
            .unwrap();
        assert_eq!((again[0].passes_folded, again[0].blobs_removed), (0, 0));

        // A tracking pass in progress (its lease held) leaves the bucket as it is.
        let held = Lease::take(
            &repo,
            &objects::lease_name("app"),
            "a pass",
            LEASE_TTL,
            Duration::ZERO,
        )
        .await
        .unwrap();
        let later = at(10 * HOUR);
        let skipped = expire_buckets(&repo, Some(&mut catalog), later, &options(false))
            .await
            .unwrap();
        assert!(
            skipped[0]
                .skipped
                .as_deref()
                .unwrap_or("")
                .contains("a pass"),
            "{skipped:?}"
        );
        assert_eq!(
            objects::load_passes(&repo, Some("app")).await.unwrap(),
            stored
        );
        held.release().await.unwrap();
    }
}
