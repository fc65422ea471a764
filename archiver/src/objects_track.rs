//! `objects track`: records the application bucket's history, pass by pass, so it can be
//! restored to the same instant as the database. With versioning (`--mode versions`) each
//! pass records the versions and delete markers it has not seen; without
//! (`--mode copy`) it copies new and changed objects into the repository and records the
//! keys that disappeared — then the interval between passes is the bucket's RPO. Every
//! pass also measures the object store's clock against PostgreSQL's (`now()`), and is
//! written to the repository before the catalog.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::stream::{self, StreamExt, TryStreamExt};
use tidemark_protocol::conninfo::ConnInfo;
use tidemark_protocol::replication::SqlSession;
use tidemark_store::bucket::{AppBucket, CurrentObject, ListedVersion, ServerReading, Versioning};
use tidemark_store::catalog::Catalog;
use tidemark_store::lease::{self, Lease, LeaseError};
use tidemark_store::meta;
use tidemark_store::objects::{
    self, state_at, ClockSample, ObjectHistory, PassRecord, PgReading, TrackMode, TrackedVersion,
};
use tidemark_store::repository::Repository;
use tidemark_store::storage::S3Options;
use tidemark_store::StorageError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::ArchiverError;
use crate::metrics::Metrics;

/// Objects copied at once in copy mode.
const COPY_CONCURRENCY: usize = 8;
/// The least time a pass waits for the bucket's lease (`expire` holds it while it folds
/// the bucket's history).
const LEASE_WAIT: Duration = Duration::from_secs(30);
/// The default `TrackOptions::lease_ttl`.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);

/// What to track and how.
#[derive(Debug, Clone)]
pub struct TrackOptions {
    pub bucket: String,
    /// Only keys starting with this.
    pub prefix: String,
    pub mode: TrackMode,
    pub interval: Duration,
    /// One pass, then return.
    pub once: bool,
    pub compression_level: i32,
    /// Where copies wait for upload (copy mode).
    pub work_dir: PathBuf,
    /// How long the bucket's lease outlives its last renewal (renewed every third of it
    /// while a pass runs): how long a crashed tracker keeps `expire` and other trackers
    /// waiting.
    pub lease_ttl: Duration,
    /// Where each pass is reported (served by `stream --metrics-listen`).
    pub metrics: Arc<Metrics>,
}

/// What one pass recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassOutcome {
    pub new_versions: usize,
    pub clock: ClockSample,
}

/// Tracks until `shutdown` fires (or after one pass with `once`). Refuses a missing bucket
/// and version tracking of a bucket without versioning before recording anything.
pub async fn track(
    repo: &Repository,
    catalog_path: &Path,
    pg: &ConnInfo,
    s3: &S3Options,
    options: &TrackOptions,
    mut shutdown: watch::Receiver<u32>,
) -> Result<(), ArchiverError> {
    let mut tracker = Tracker::open(repo, catalog_path, pg, s3, options).await?;
    loop {
        let began = std::time::Instant::now();
        match tracker.pass().await {
            Ok(done) => {
                options
                    .metrics
                    .pass_done(&options.bucket, began.elapsed(), done.clock.at);
                info!(
                    bucket = %options.bucket,
                    new_versions = done.new_versions,
                    clock_offset_ms = (done.clock.min_offset_ms + done.clock.max_offset_ms) / 2,
                    "tracking pass recorded"
                )
            }
            Err(e) if options.once => return Err(e),
            Err(e) => {
                warn!(bucket = %options.bucket, error = %e, "tracking pass failed; retrying at the next interval")
            }
        }
        if options.once {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(options.interval) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

struct Tracker<'a> {
    repo: &'a Repository,
    catalog: Catalog,
    bucket: AppBucket,
    pg: &'a ConnInfo,
    sql: Option<SqlSession>,
    options: &'a TrackOptions,
    history: ObjectHistory,
}

impl<'a> Tracker<'a> {
    async fn open(
        repo: &'a Repository,
        catalog_path: &Path,
        pg: &'a ConnInfo,
        s3: &S3Options,
        options: &'a TrackOptions,
    ) -> Result<Tracker<'a>, ArchiverError> {
        let bucket_err = |source| ArchiverError::Bucket {
            bucket: options.bucket.clone(),
            source,
        };
        let bucket = AppBucket::connect(&options.bucket, s3)
            .await
            .map_err(bucket_err)?;
        if options.mode == TrackMode::Versions {
            let state = match bucket.versioning().await.map_err(bucket_err)? {
                Versioning::Enabled => None,
                Versioning::Suspended => Some("suspended"),
                Versioning::Off => Some("never enabled"),
            };
            if let Some(state) = state {
                return Err(ArchiverError::VersioningOff {
                    bucket: options.bucket.clone(),
                    state,
                });
            }
        }
        let sql = SqlSession::connect(pg).await?;
        let mut catalog = Catalog::open(catalog_path)?;
        let mut history = catalog.object_history(&options.bucket)?;
        if history.passes.is_empty() {
            // A new catalog on a repository that already tracks this bucket: continue its
            // history (sequence numbers, known versions) instead of starting another.
            for pass in objects::load_passes(repo, Some(&options.bucket)).await? {
                catalog.record_pass(&pass)?;
            }
            history = catalog.object_history(&options.bucket)?;
        }
        if options.mode == TrackMode::Copy {
            std::fs::create_dir_all(&options.work_dir).map_err(|source| {
                ArchiverError::Repository(tidemark_store::RepoError::Local {
                    path: options.work_dir.clone(),
                    source,
                })
            })?;
        }
        Ok(Tracker {
            repo,
            catalog,
            bucket,
            pg,
            sql: Some(sql),
            options,
            history,
        })
    }

    /// PostgreSQL's clock, reconnecting once if the session was lost.
    async fn pg_reading(&mut self) -> Result<PgReading, ArchiverError> {
        let mut sql = match self.sql.take() {
            Some(sql) => sql,
            None => SqlSession::connect(self.pg).await?,
        };
        let sent = Utc::now();
        let now = sql.now().await?;
        let received = Utc::now();
        self.sql = Some(sql);
        Ok(PgReading {
            now,
            sent,
            received,
        })
    }

    /// One pass, under the bucket's lease (so `expire` never folds history or removes
    /// copies under it), renewed for as long as the pass runs.
    async fn pass(&mut self) -> Result<PassOutcome, ArchiverError> {
        let ttl = self.options.lease_ttl;
        let lease = Lease::take(
            self.repo,
            &objects::lease_name(&self.options.bucket),
            &lease::holder("tidemark objects track"),
            ttl,
            self.options.interval.max(LEASE_WAIT),
        )
        .await?;
        let renewed = Mutex::new(tokio::time::Instant::now());
        let outcome = tokio::select! {
            outcome = self.leased_pass(&lease, &renewed) => outcome,
            lost = renew_until_lost(&lease, ttl, &renewed) => Err(lost),
        };
        lease.release().await?;
        outcome
    }

    /// `renewed`: when the latest successful renewal of `lease` was sent.
    async fn leased_pass(
        &mut self,
        lease: &Lease,
        renewed: &Mutex<tokio::time::Instant>,
    ) -> Result<PassOutcome, ArchiverError> {
        let pg = self.pg_reading().await?;
        let (versions, reading) = match self.options.mode {
            TrackMode::Versions => {
                let listing = self
                    .bucket
                    .list_versions(&self.options.prefix)
                    .await
                    .map_err(|e| self.bucket_error(e))?;
                (
                    self.new_versions(listing.entries, listing.reading),
                    listing.reading,
                )
            }
            TrackMode::Copy => {
                let listing = self
                    .bucket
                    .list_current(&self.options.prefix)
                    .await
                    .map_err(|e| self.bucket_error(e))?;
                let changes = self.copy_changes(listing.entries, listing.reading).await?;
                (changes, listing.reading)
            }
        };
        let late = versions.iter().filter(|v| v.observed_at.is_some()).count();
        if late > 0 {
            warn!(
                bucket = %self.options.bucket,
                versions = late,
                "versions stamped before the previous pass were listed only now (multipart uploads complete after their LastModified); they count from this pass, and restores to instants in between report their keys as uncertain"
            );
        }
        let record = PassRecord {
            bucket: self.options.bucket.clone(),
            prefix: self.options.prefix.clone(),
            mode: self.options.mode,
            // S3 listings are strongly consistent: everything written before the server
            // received the first page's request is in the listing.
            complete_as_of: reading.received_no_earlier_than(),
            clock: ClockSample::measure(pg, reading),
            versions,
            folded: false,
        };
        // Held without a break since it was taken (a lease unrenewed for a whole TTL may
        // have been broken, and copies it covered removed, even if it looks free now), and
        // ours for a whole TTL more: only now may the record refer to copies.
        if elapsed_since(renewed) >= self.options.lease_ttl {
            return Err(lease_lapsed(lease));
        }
        lease.renew(self.options.lease_ttl).await?;
        objects::store_pass(self.repo, &record).await?;
        self.catalog.record_pass(&record)?;
        let outcome = PassOutcome {
            new_versions: record.versions.len(),
            clock: record.clock,
        };
        self.history.versions.extend(record.versions);
        Ok(outcome)
    }

    /// The observation time to record for a version first listed by `reading` with
    /// `last_modified`: this listing's, when the previous pass's listing should already
    /// have shown it (its whole-second `last_modified` is before what that listing
    /// covered) — a multipart upload, visible only once complete.
    fn late_observation(
        &self,
        last_modified: chrono::DateTime<Utc>,
        reading: ServerReading,
    ) -> Option<chrono::DateTime<Utc>> {
        let previous = self.history.passes.last()?.complete_as_of;
        (last_modified + chrono::Duration::seconds(1) <= previous).then_some(reading.date)
    }

    /// Versions and delete markers not recorded yet, each key's oldest first, numbered.
    /// Settled ones that the history lacks were dropped by `expire`, and stay dropped.
    fn new_versions(
        &self,
        listed: Vec<ListedVersion>,
        reading: ServerReading,
    ) -> Vec<TrackedVersion> {
        let known: HashSet<(&str, &str)> = self
            .history
            .versions
            .iter()
            .map(|v| (v.key.as_str(), v.version_id.as_str()))
            .collect();
        let settled = self.history.settled_before();
        let mut by_key: BTreeMap<String, Vec<ListedVersion>> = BTreeMap::new();
        for v in listed {
            if settled.is_some_and(|s| v.last_modified <= s) {
                continue;
            }
            if !known.contains(&(v.key.as_str(), v.version_id.as_str())) {
                by_key.entry(v.key.clone()).or_default().push(v);
            }
        }
        let mut seq = self.history.next_seq();
        let mut out = Vec::new();
        for (_, newest_first) in by_key {
            for v in newest_first.into_iter().rev() {
                out.push(TrackedVersion {
                    seq,
                    key: v.key,
                    version_id: v.version_id,
                    last_modified: v.last_modified,
                    size: v.size,
                    etag: v.etag,
                    delete_marker: v.delete_marker,
                    blob: None,
                    observed_at: self.late_observation(v.last_modified, reading),
                });
                seq += 1;
            }
        }
        out
    }

    /// Copy mode: copies new and changed objects into the repository; keys gone since the
    /// last pass become deletions stamped with this listing's time.
    async fn copy_changes(
        &self,
        listed: Vec<CurrentObject>,
        reading: ServerReading,
    ) -> Result<Vec<TrackedVersion>, ArchiverError> {
        let far_future = reading.date + chrono::Duration::days(36_500);
        let current = state_at(
            &self.history.versions,
            &self.options.prefix,
            far_future,
            chrono::Duration::zero(),
        )
        .live;
        let listed_keys: HashSet<&str> = listed.iter().map(|o| o.key.as_str()).collect();
        let gone: Vec<String> = current
            .keys()
            .filter(|k| !listed_keys.contains(k.as_str()))
            .cloned()
            .collect();
        let changed: Vec<&CurrentObject> = listed
            .iter()
            .filter(|o| {
                current
                    .get(&o.key)
                    .is_none_or(|v| v.etag != o.etag || v.size != o.size)
            })
            .collect();
        let copied: Vec<Option<TrackedVersion>> = stream::iter(changed)
            .map(|o| self.copy_object(o))
            .buffered(COPY_CONCURRENCY)
            .try_collect()
            .await?;
        let mut seq = self.history.next_seq();
        let mut out = Vec::new();
        for mut v in copied.into_iter().flatten() {
            v.seq = seq;
            v.observed_at = self.late_observation(v.last_modified, reading);
            seq += 1;
            out.push(v);
        }
        for key in gone {
            out.push(TrackedVersion {
                seq,
                key,
                version_id: String::new(),
                last_modified: reading.date,
                size: 0,
                etag: String::new(),
                delete_marker: true,
                blob: None,
                observed_at: None,
            });
            seq += 1;
        }
        Ok(out)
    }

    /// Copies one object into the repository (unless its content is already there);
    /// `None` when it vanished between listing and reading (the next pass records that).
    async fn copy_object(
        &self,
        listed: &CurrentObject,
    ) -> Result<Option<TrackedVersion>, ArchiverError> {
        let mut object = match self.bucket.get(&listed.key).await {
            Ok(o) => o,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.bucket_error(e)),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".tidemark-object-")
            .tempfile_in(&self.options.work_dir)
            .map_err(|source| self.local_error(source))?
            .into_temp_path();
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|source| self.local_error(source))?;
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 256 << 10];
        let mut size = 0u64;
        loop {
            let n = object.body.read(&mut buf).await.map_err(|e| {
                self.bucket_error(StorageError::Backend {
                    operation: "GetObject",
                    key: listed.key.clone(),
                    message: e.to_string(),
                    transient: true,
                })
            })?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            size += n as u64;
            file.write_all(&buf[..n])
                .await
                .map_err(|source| self.local_error(source))?;
        }
        file.flush()
            .await
            .map_err(|source| self.local_error(source))?;
        drop(file);
        let sha = hex::encode(sha.finish());
        let key = objects::blob_key(&self.options.bucket, &sha);
        if self.repo.head(&key).await?.is_none() {
            self.repo
                .store_compressed(
                    key,
                    &tmp,
                    self.options.compression_level,
                    meta::KIND_OBJECT_BLOB,
                )
                .await?;
        }
        Ok(Some(TrackedVersion {
            seq: 0,
            key: listed.key.clone(),
            version_id: String::new(),
            last_modified: object.last_modified.unwrap_or(listed.last_modified),
            size,
            etag: object.etag,
            delete_marker: false,
            blob: Some(sha),
            observed_at: None,
        }))
    }

    fn bucket_error(&self, source: StorageError) -> ArchiverError {
        ArchiverError::Bucket {
            bucket: self.options.bucket.clone(),
            source,
        }
    }

    fn local_error(&self, source: std::io::Error) -> ArchiverError {
        ArchiverError::Repository(tidemark_store::RepoError::Local {
            path: self.options.work_dir.clone(),
            source,
        })
    }
}

/// Renews `lease` every third of `ttl`, noting in `renewed` when each successful renewal
/// was sent; returns only when it is lost: taken over by another process, or not renewed
/// for a whole `ttl` (then another process may have broken it, and the pass must not write
/// a record that refers to copies `expire` may have removed).
async fn renew_until_lost(
    lease: &Lease,
    ttl: Duration,
    renewed: &Mutex<tokio::time::Instant>,
) -> ArchiverError {
    loop {
        tokio::time::sleep(ttl / 3).await;
        let sent = tokio::time::Instant::now();
        match lease.renew(ttl).await {
            Ok(()) => {
                if let Ok(mut at) = renewed.lock() {
                    *at = sent;
                }
            }
            Err(LeaseError::Repository(e)) if elapsed_since(renewed) < ttl => {
                warn!(error = %e, "cannot renew the bucket's lease; trying again");
            }
            Err(LeaseError::Repository(_)) => return lease_lapsed(lease),
            Err(lost) => return lost.into(),
        }
    }
}

fn elapsed_since(renewed: &Mutex<tokio::time::Instant>) -> Duration {
    renewed.lock().map_or(Duration::MAX, |at| at.elapsed())
}

fn lease_lapsed(lease: &Lease) -> ArchiverError {
    ArchiverError::Lease(LeaseError::Lapsed {
        name: lease.name().to_string(),
    })
}
