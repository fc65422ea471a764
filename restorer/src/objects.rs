//! Object-store point-in-time restore: the application bucket as it stood at the
//! database's target instant — each key at the version live then, keys that did not exist
//! then absent — into a new bucket or prefix (the default), or in place, where it writes
//! new versions and delete markers and never deletes a version (DESIGN invariant 5).
//! Also the reference check: which keys named by the restored database are missing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use tidemark_store::bucket::{AppBucket, ListedVersion, Versioning};
use tidemark_store::objects::{self, estimate, state_at, ObjectHistory, TrackMode, TrackedVersion};
use tidemark_store::repository::{RepoError, Repository};
use tidemark_store::storage::S3Options;
use tidemark_store::StorageError;

/// Where the restored bucket goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A bucket (created if missing) and a key prefix under which nothing may exist yet.
    Copy { bucket: String, prefix: String },
    /// The tracked bucket itself, by new versions and delete markers.
    InPlace,
}

/// One object restore.
#[derive(Debug, Clone)]
pub struct ObjectRestoreRequest {
    pub bucket: String,
    /// The instant, on PostgreSQL's clock.
    pub target: DateTime<Utc>,
    pub destination: Destination,
    pub concurrency: usize,
    /// Where copies from the repository wait for upload (copy-mode buckets).
    pub work_dir: PathBuf,
}

/// What an object restore did, with the instant used for each store.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectRestoreReport {
    pub bucket: String,
    pub destination: String,
    /// The target on PostgreSQL's clock.
    pub database_instant: DateTime<Utc>,
    /// The same instant on the object store's clock.
    pub bucket_instant: DateTime<Utc>,
    /// How far the two clocks' offset may be off, either way.
    pub clock_uncertainty_ms: i64,
    /// Objects written (copies, or new versions in place).
    pub restored: u64,
    /// Delete markers written in place for keys that did not exist at the instant.
    pub removed: u64,
    /// Keys already as they were (in place).
    pub unchanged: u64,
    /// Objects an earlier, interrupted restore to this instant already wrote into the
    /// destination (each checked: the planned bytes), so not written again.
    pub already_restored: u64,
    pub bytes: u64,
    /// Keys that changed so close to the instant that the clocks cannot order the change.
    pub uncertain_keys: Vec<String>,
    /// Keys with a version stamped before the instant that tracking first listed after it
    /// (a multipart upload is stamped when it starts, visible once complete), restored as
    /// they were without it; also in `uncertain_keys`.
    pub late_listed_keys: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectRestoreError {
    #[error("bucket {bucket} has never been tracked by this repository's catalog; HINT: run `tidemark objects track --bucket {bucket}` (or `tidemark reindex` if the catalog was lost)")]
    NotTracked { bucket: String },
    #[error("{target} is before tracking of bucket {bucket} began ({first}); its state then is not known; HINT: choose a later target")]
    BeforeTracking {
        bucket: String,
        target: DateTime<Utc>,
        first: DateTime<Utc>,
    },
    #[error("{target} is after the newest tracking pass of bucket {bucket} ({last}), so changes up to the target may be unrecorded; HINT: wait for the next pass of `tidemark objects track`, or run it with --once")]
    BeyondTracking {
        bucket: String,
        target: DateTime<Utc>,
        last: DateTime<Utc>,
    },
    #[error("destination {destination} is not empty; restore never overwrites objects; HINT: choose a new bucket or prefix with --objects-to, or --objects-in-place")]
    DestinationNotEmpty { destination: String },
    #[error("destination {destination} is not empty: it holds {key:?}, which a restore to this instant would not write (not with those bytes); restore never overwrites objects; HINT: choose a new bucket or prefix with --objects-to (a rerun to the same instant resumes only where everything present is what it would write)")]
    DestinationDiffers { destination: String, key: String },
    #[error("bucket {bucket} is tracked by copying (no versioning), and an in-place restore would have to overwrite and delete objects; HINT: restore into a new bucket or prefix with --objects-to")]
    InPlaceNeedsVersions { bucket: String },
    #[error("bucket {bucket} no longer has versioning enabled, so an in-place restore could destroy data; HINT: re-enable versioning or restore with --objects-to")]
    VersioningOff { bucket: String },
    #[error("bucket {bucket}")]
    Bucket {
        bucket: String,
        #[source]
        source: StorageError,
    },
    #[error(transparent)]
    Repository(#[from] RepoError),
}

fn bucket_err(bucket: &str) -> impl Fn(StorageError) -> ObjectRestoreError + '_ {
    move |source| ObjectRestoreError::Bucket {
        bucket: bucket.to_string(),
        source,
    }
}

/// The bucket's state at the instant, and the instant on the object store's clock.
#[derive(Debug, Clone)]
pub struct ObjectPlan {
    pub bucket_instant: DateTime<Utc>,
    pub uncertainty_ms: i64,
    pub live: BTreeMap<String, TrackedVersion>,
    pub uncertain_keys: Vec<String>,
    pub late_listed_keys: Vec<String>,
    pub mode: TrackMode,
    pub prefix: String,
}

/// Resolves `target` (PostgreSQL clock) against the recorded history, refusing instants
/// outside the tracked window.
pub fn plan(
    bucket: &str,
    history: &ObjectHistory,
    target: DateTime<Utc>,
) -> Result<ObjectPlan, ObjectRestoreError> {
    let (Some(first), Some(last)) = (history.passes.first(), history.passes.last()) else {
        return Err(ObjectRestoreError::NotTracked {
            bucket: bucket.to_string(),
        });
    };
    if target < first.clock.at {
        return Err(ObjectRestoreError::BeforeTracking {
            bucket: bucket.to_string(),
            target,
            first: first.clock.at,
        });
    }
    let clock = estimate(&history.clock_samples(), target).ok_or_else(|| {
        ObjectRestoreError::NotTracked {
            bucket: bucket.to_string(),
        }
    })?;
    let at = clock.to_s3(target);
    if at > last.complete_as_of {
        return Err(ObjectRestoreError::BeyondTracking {
            bucket: bucket.to_string(),
            target,
            last: last.clock.at,
        });
    }
    let state = state_at(
        &history.versions,
        &last.prefix,
        at,
        Duration::milliseconds(clock.uncertainty_ms),
    );
    Ok(ObjectPlan {
        bucket_instant: at,
        uncertainty_ms: clock.uncertainty_ms,
        live: state.live,
        uncertain_keys: state.uncertain_keys,
        late_listed_keys: state.late_keys,
        mode: last.mode,
        prefix: last.prefix.clone(),
    })
}

/// The restore's write side, checked before anything is written.
pub struct Writer {
    source: AppBucket,
    dest: AppBucket,
    dest_prefix: String,
    in_place: bool,
}

impl Writer {
    /// Connects to both buckets and refuses what would destroy or mix data: a non-empty
    /// destination (unless `plan` is known and everything there is what it would write: an
    /// interrupted restore, resumed), an in-place restore without versioning. Creates a
    /// missing destination bucket only after those checks.
    pub async fn open(
        bucket: &str,
        mode: TrackMode,
        destination: &Destination,
        s3: &S3Options,
        plan: Option<&ObjectPlan>,
    ) -> Result<Writer, ObjectRestoreError> {
        let source = AppBucket::connect(bucket, s3)
            .await
            .map_err(bucket_err(bucket))?;
        match destination {
            Destination::InPlace => {
                if mode != TrackMode::Versions {
                    return Err(ObjectRestoreError::InPlaceNeedsVersions {
                        bucket: bucket.to_string(),
                    });
                }
                if source.versioning().await.map_err(bucket_err(bucket))? != Versioning::Enabled {
                    return Err(ObjectRestoreError::VersioningOff {
                        bucket: bucket.to_string(),
                    });
                }
                Ok(Writer {
                    dest: source.clone(),
                    source,
                    dest_prefix: String::new(),
                    in_place: true,
                })
            }
            Destination::Copy { bucket: to, prefix } => {
                // A bucket created just now is empty; an existing one must be, under prefix.
                let (dest, created) = AppBucket::connect_or_create(to, s3)
                    .await
                    .map_err(bucket_err(to))?;
                let writer = Writer {
                    source,
                    dest,
                    dest_prefix: prefix.clone(),
                    in_place: false,
                };
                if !created
                    && writer
                        .dest
                        .has_objects(prefix)
                        .await
                        .map_err(bucket_err(to))?
                {
                    match plan {
                        Some(plan) => drop(writer.already_restored(plan).await?),
                        None => {
                            return Err(ObjectRestoreError::DestinationNotEmpty {
                                destination: format!("s3://{to}/{prefix}"),
                            })
                        }
                    }
                }
                Ok(writer)
            }
        }
    }

    /// The keys an earlier restore to `plan`'s instant already wrote into the (copy)
    /// destination. Every object under the destination prefix must be a planned key with
    /// the planned bytes — the same size, and the same ETag or, where the ETag cannot tell
    /// (a multipart copy), the same SHA-256 — or the destination is refused.
    async fn already_restored(
        &self,
        plan: &ObjectPlan,
    ) -> Result<BTreeSet<String>, ObjectRestoreError> {
        let dest_name = self.dest.name();
        let present = self
            .dest
            .list_current(&self.dest_prefix)
            .await
            .map_err(bucket_err(dest_name))?;
        let mut done = BTreeSet::new();
        for object in present.entries {
            let differs = || ObjectRestoreError::DestinationDiffers {
                destination: format!("s3://{dest_name}/{}", self.dest_prefix),
                key: object.key.clone(),
            };
            let planned = object
                .key
                .strip_prefix(self.dest_prefix.as_str())
                .and_then(|key| plan.live.get_key_value(key));
            let Some((key, v)) = planned else {
                return Err(differs());
            };
            if object.size != v.size {
                return Err(differs());
            }
            if object.etag != v.etag {
                let restored = self
                    .dest
                    .sha256(&object.key, None)
                    .await
                    .map_err(bucket_err(dest_name))?;
                let expected = match &v.blob {
                    Some(sha) => sha.clone(),
                    None => self
                        .source
                        .sha256(key, Some(&v.version_id))
                        .await
                        .map_err(bucket_err(self.source.name()))?,
                };
                if restored != expected {
                    return Err(differs());
                }
            }
            done.insert(key.clone());
        }
        Ok(done)
    }

    /// The bucket where restored keys live and the prefix they carry there.
    pub fn restored_bucket(&self) -> (&AppBucket, &str) {
        (&self.dest, &self.dest_prefix)
    }

    /// Writes the planned state.
    pub async fn apply(
        &self,
        repo: &Repository,
        plan: &ObjectPlan,
        request: &ObjectRestoreRequest,
    ) -> Result<ObjectRestoreReport, ObjectRestoreError> {
        let mut report = ObjectRestoreReport {
            bucket: request.bucket.clone(),
            destination: match &request.destination {
                Destination::InPlace => format!("s3://{} (in place)", request.bucket),
                Destination::Copy { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            },
            database_instant: request.target,
            bucket_instant: plan.bucket_instant,
            clock_uncertainty_ms: plan.uncertainty_ms,
            restored: 0,
            removed: 0,
            unchanged: 0,
            already_restored: 0,
            bytes: 0,
            uncertain_keys: plan.uncertain_keys.clone(),
            late_listed_keys: plan.late_listed_keys.clone(),
        };
        // Each step: restore this version, or (None) put a delete marker on the key.
        let mut steps: Vec<(String, Option<&TrackedVersion>)> = Vec::new();
        if self.in_place {
            let current = self
                .source
                .list_versions(&plan.prefix)
                .await
                .map_err(bucket_err(&request.bucket))?;
            let mut latest: BTreeMap<String, ListedVersion> = BTreeMap::new();
            for v in current.entries {
                latest.entry(v.key.clone()).or_insert(v);
            }
            for (key, v) in &plan.live {
                match latest.get(key) {
                    // The planned version, or a copy of it an earlier run wrote.
                    Some(l)
                        if !l.delete_marker
                            && (l.version_id == v.version_id
                                || (l.etag == v.etag && l.size == v.size)) =>
                    {
                        report.unchanged += 1
                    }
                    _ => steps.push((key.clone(), Some(v))),
                }
            }
            for (key, l) in &latest {
                if !plan.live.contains_key(key) {
                    if l.delete_marker {
                        report.unchanged += 1;
                    } else {
                        steps.push((key.clone(), None));
                    }
                }
            }
        } else {
            let done = self.already_restored(plan).await?;
            report.already_restored = done.len() as u64;
            steps.extend(
                plan.live
                    .iter()
                    .filter(|(k, _)| !done.contains(*k))
                    .map(|(k, v)| (k.clone(), Some(v))),
            );
        }
        let total = steps.len() as u64;
        let done = AtomicU64::new(0);
        let started = Instant::now();
        let progress = std::io::stderr().is_terminal();
        let outcomes: Vec<(bool, u64)> = stream::iter(steps)
            .map(|(key, version)| {
                let done = &done;
                async move {
                    let outcome = match version {
                        Some(v) => {
                            self.restore_one(repo, &request.bucket, &key, v, &request.work_dir)
                                .await?
                        }
                        None => {
                            self.dest
                                .delete_current(&key)
                                .await
                                .map_err(bucket_err(&request.bucket))?;
                            (false, 0)
                        }
                    };
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if progress {
                        eprint!(
                            "\robjects: {n} of {total} ({:.0}/s)   ",
                            n as f64 / started.elapsed().as_secs_f64().max(0.001)
                        );
                    }
                    Ok::<_, ObjectRestoreError>(outcome)
                }
            })
            .buffer_unordered(request.concurrency.max(1))
            .try_collect()
            .await?;
        if progress && total > 0 {
            eprintln!();
        }
        for (restored, bytes) in outcomes {
            if restored {
                report.restored += 1;
                report.bytes += bytes;
            } else {
                report.removed += 1;
            }
        }
        Ok(report)
    }

    /// Writes one key at its version; `(true, bytes)`.
    async fn restore_one(
        &self,
        repo: &Repository,
        bucket: &str,
        key: &str,
        v: &TrackedVersion,
        work_dir: &std::path::Path,
    ) -> Result<(bool, u64), ObjectRestoreError> {
        let dest_key = format!("{}{key}", self.dest_prefix);
        match &v.blob {
            None => self
                .dest
                .copy_version(&self.source, key, &v.version_id, v.size, &dest_key)
                .await
                .map_err(bucket_err(bucket))?,
            Some(sha) => {
                let tmp = tempfile::Builder::new()
                    .prefix(".tidemark-object-")
                    .tempfile_in(work_dir)
                    .map_err(|source| RepoError::Local {
                        path: work_dir.to_path_buf(),
                        source,
                    })?
                    .into_temp_path();
                repo.fetch_verified(&objects::blob_key(bucket, sha), &tmp)
                    .await?;
                self.dest
                    .put_file(&dest_key, &tmp)
                    .await
                    .map_err(bucket_err(self.dest.name()))?;
            }
        }
        Ok((true, v.size))
    }
}

/// The keys among `keys` that `bucket` does not hold under `prefix`, sorted.
pub async fn missing_keys(
    bucket: &AppBucket,
    prefix: &str,
    keys: &[String],
    concurrency: usize,
) -> Result<Vec<String>, ObjectRestoreError> {
    let unique: BTreeSet<&String> = keys.iter().collect();
    let found: Vec<Option<String>> = stream::iter(unique)
        .map(|key| async move {
            let exists = bucket
                .contains(&format!("{prefix}{key}"))
                .await
                .map_err(bucket_err(bucket.name()))?;
            Ok::<_, ObjectRestoreError>((!exists).then(|| key.clone()))
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}
