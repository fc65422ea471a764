//! Application-bucket history (DESIGN §5 "objects"): what tracking records and restore
//! reads. Each tracking pass writes a `PassRecord` to the repository
//! (`objects/<bucket>/passes/<time>-<part>.json`, the truth that `reindex` reads back) and
//! then to the catalog. A bucket with versioning is recorded as S3 versions and delete
//! markers; a bucket without it is copied into the repository
//! (`objects/<bucket>/blobs/<sha256>.zst`, content-addressed, deduplicated).

pub mod clock;
mod compact;
mod state;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use self::clock::{estimate, ClockEstimate, ClockSample, PgReading};
pub use self::compact::{compact, referenced_blobs, Compaction, SETTLE_MARGIN};
pub use self::state::{state_at, BucketState};
use crate::meta;
use crate::repository::{RepoError, Repository};

/// Where all application-bucket history lives in the repository.
pub const OBJECTS_PREFIX: &str = "objects/";
/// Versions per pass record object (a first pass over a large bucket is split).
const VERSIONS_PER_RECORD: usize = 5_000;

/// How a bucket is tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackMode {
    /// S3 versioning keeps the bytes; tidemark records versions and delete markers.
    Versions,
    /// No versioning: tidemark copies new and changed objects into the repository.
    Copy,
}

impl TrackMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TrackMode::Versions => "versions",
            TrackMode::Copy => "copy",
        }
    }
}

/// One version or delete marker of an application object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedVersion {
    /// Orders the versions of one key that share a `last_modified` second.
    pub seq: i64,
    pub key: String,
    /// S3's version id (versions mode); empty in copy mode.
    #[serde(default)]
    pub version_id: String,
    /// When the object store wrote it, on its own clock. For a deletion seen by copy
    /// mode, the pass that first saw the key gone.
    pub last_modified: DateTime<Utc>,
    pub size: u64,
    #[serde(default)]
    pub etag: String,
    pub delete_marker: bool,
    /// SHA-256 (hex) of the bytes copied into the repository (copy mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// Set when the pass that first listed it came after a pass whose listing should
    /// already have shown it by `last_modified` — a multipart upload, stamped with its
    /// *initiation* time on AWS and visible only once complete: the server's clock at the
    /// observing listing. The version counts from then (`visible_from`), and restores to
    /// an instant between the two are reported as uncertain for its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<DateTime<Utc>>,
}

impl TrackedVersion {
    /// From when the version is known to have been visible (object-store clock): its
    /// `last_modified`, or the later listing that first showed it.
    pub fn visible_from(&self) -> DateTime<Utc> {
        self.observed_at
            .map_or(self.last_modified, |o| o.max(self.last_modified))
    }
}

/// What one tracking pass learned: new versions, and how the clocks compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassRecord {
    pub bucket: String,
    pub prefix: String,
    pub mode: TrackMode,
    /// Every change the object store made before this instant (its clock) is recorded
    /// by this pass or an earlier one.
    pub complete_as_of: DateTime<Utc>,
    pub clock: ClockSample,
    pub versions: Vec<TrackedVersion>,
    /// Written by `expire`: the passes up to this one folded into one record (see
    /// `compact`), stored under its own key beside the pass it stands for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub folded: bool,
}

/// A pass record and the repository key it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPass {
    pub key: String,
    pub record: PassRecord,
}

/// A bucket's whole recorded history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectHistory {
    /// Oldest first.
    pub passes: Vec<PassSummary>,
    pub versions: Vec<TrackedVersion>,
}

/// A pass without its versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassSummary {
    pub prefix: String,
    pub mode: TrackMode,
    pub complete_as_of: DateTime<Utc>,
    pub clock: ClockSample,
}

impl ObjectHistory {
    pub fn clock_samples(&self) -> Vec<ClockSample> {
        self.passes.iter().map(|p| p.clock).collect()
    }

    /// Next free sequence number.
    pub fn next_seq(&self) -> i64 {
        self.versions.iter().map(|v| v.seq + 1).max().unwrap_or(1)
    }

    /// Versions the object store wrote before this instant (its clock) are settled: the
    /// first pass listed every one of them, or `expire` kept those live at it — so one
    /// listed again and not in the history is a superseded version `expire` dropped, not
    /// a new one.
    pub fn settled_before(&self) -> Option<DateTime<Utc>> {
        self.passes
            .first()
            .map(|p| p.complete_as_of - SETTLE_MARGIN)
    }
}

/// The SHA-256 of the blob at `key`, if `key` is one of `bucket`'s blobs.
pub fn blob_sha<'k>(bucket: &str, key: &'k str) -> Option<&'k str> {
    let (_, file) = key.strip_prefix(&blobs_prefix(bucket))?.split_once('/')?;
    let sha = file.strip_suffix(".zst")?;
    (blob_key(bucket, sha) == key).then_some(sha)
}

/// The repository lease (`locks/`) that a tracking pass and `expire` take on `bucket`'s
/// history.
pub fn lease_name(bucket: &str) -> String {
    format!("objects-{bucket}")
}

/// Key of the content-addressed copy with SHA-256 `sha`.
pub fn blob_key(bucket: &str, sha: &str) -> String {
    format!(
        "{}{}/{sha}.zst",
        blobs_prefix(bucket),
        &sha[..2.min(sha.len())]
    )
}

/// `objects/<bucket>/passes/<time>-<part>.json`, or `<time>-folded-<part>.json` for a
/// folded record (it sorts after the pass of the same time it stands for).
fn pass_key(record: &PassRecord, part: usize) -> String {
    format!(
        "{OBJECTS_PREFIX}{}/passes/{}-{}{part:04}.json",
        record.bucket,
        record.clock.at.format("%Y%m%dT%H%M%S%.6fZ"),
        if record.folded { "folded-" } else { "" }
    )
}

/// Where `bucket`'s copied objects live.
pub fn blobs_prefix(bucket: &str) -> String {
    format!("{OBJECTS_PREFIX}{bucket}/blobs/")
}

/// Writes a pass to the repository (split into parts of at most 5,000 versions) and
/// returns the keys written. A pass without new versions is still written: it carries the
/// clock sample and extends the restorable window.
pub async fn store_pass(repo: &Repository, record: &PassRecord) -> Result<Vec<String>, RepoError> {
    let parts: Vec<&[TrackedVersion]> = if record.versions.is_empty() {
        vec![&[]]
    } else {
        record.versions.chunks(VERSIONS_PER_RECORD).collect()
    };
    let mut keys = Vec::with_capacity(parts.len());
    for (n, versions) in parts.into_iter().enumerate() {
        let part = PassRecord {
            versions: versions.to_vec(),
            ..record.clone()
        };
        let stored = repo
            .store_document(pass_key(record, n), &part, meta::KIND_OBJECT_PASS)
            .await?;
        keys.push(stored.key);
    }
    Ok(keys)
}

/// The bucket whose pass record `key` is (`objects/<bucket>/passes/<name>.json`);
/// `None` for any other key.
pub fn pass_bucket(key: &str) -> Option<&str> {
    let (bucket, name) = key.strip_prefix(OBJECTS_PREFIX)?.split_once("/passes/")?;
    name.ends_with(".json").then_some(bucket)
}

/// The pass record stored at `key`, which must describe `bucket`.
pub async fn read_pass(
    repo: &Repository,
    key: &str,
    bucket: &str,
) -> Result<PassRecord, RepoError> {
    let bytes = repo.read_document(key).await?;
    let record: PassRecord =
        serde_json::from_slice(&bytes).map_err(|e| RepoError::BadDocument {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
    if record.bucket != bucket {
        return Err(RepoError::BadDocument {
            key: key.to_string(),
            reason: format!("it describes bucket {}", record.bucket),
        });
    }
    Ok(record)
}

/// The pass records of `bucket` (of every bucket when `None`), in key order (oldest first
/// per bucket). A record that does not parse or names another bucket is an error.
pub async fn load_passes(
    repo: &Repository,
    bucket: Option<&str>,
) -> Result<Vec<PassRecord>, RepoError> {
    let stored = load_stored_passes(repo, bucket).await?;
    Ok(stored.into_iter().map(|p| p.record).collect())
}

/// `load_passes`, with each record's key.
pub async fn load_stored_passes(
    repo: &Repository,
    bucket: Option<&str>,
) -> Result<Vec<StoredPass>, RepoError> {
    let prefix = match bucket {
        Some(b) => format!("{OBJECTS_PREFIX}{b}/passes/"),
        None => OBJECTS_PREFIX.to_string(),
    };
    let mut out = Vec::new();
    for info in repo.list(&prefix).await? {
        let Some(bucket) = pass_bucket(&info.key) else {
            continue;
        };
        let record = read_pass(repo, &info.key, bucket).await?;
        out.push(StoredPass {
            key: info.key,
            record,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url::RepoUrl;

    pub(crate) fn version(seq: i64, key: &str, secs: i64, marker: bool) -> TrackedVersion {
        TrackedVersion {
            seq,
            key: key.to_string(),
            version_id: format!("v{seq}"),
            last_modified: DateTime::from_timestamp(secs, 0).unwrap(),
            size: 1,
            etag: "e".into(),
            delete_marker: marker,
            blob: None,
            observed_at: None,
        }
    }

    #[test]
    fn versions_an_hour_before_the_first_pass_are_settled() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let clock = ClockSample {
            at,
            min_offset_ms: 0,
            max_offset_ms: 0,
        };
        let mut history = ObjectHistory::default();
        assert_eq!(history.settled_before(), None);
        history.passes.push(PassSummary {
            prefix: String::new(),
            mode: TrackMode::Versions,
            complete_as_of: at + chrono::Duration::seconds(2),
            clock,
        });
        assert_eq!(
            history.settled_before(),
            Some(at + chrono::Duration::seconds(2) - SETTLE_MARGIN)
        );
    }

    #[tokio::test]
    async fn passes_round_trip_through_the_repository_in_parts() {
        let dir = tempfile::tempdir().unwrap();
        let url = RepoUrl::File {
            path: dir.path().join("repo"),
        };
        let repo = Repository::create(&url, &Default::default()).await.unwrap();
        let clock = ClockSample {
            at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            min_offset_ms: -10,
            max_offset_ms: 900,
        };
        let record = PassRecord {
            bucket: "app".into(),
            prefix: "uploads/".into(),
            mode: TrackMode::Versions,
            complete_as_of: clock.at,
            clock,
            versions: (0..12_001)
                .map(|i| version(i, &format!("k{i}"), 1, false))
                .collect(),
            folded: false,
        };
        store_pass(&repo, &record).await.unwrap();
        // Same pass again (a retry after a crash): same bytes, accepted.
        store_pass(&repo, &record).await.unwrap();
        let loaded = load_passes(&repo, None).await.unwrap();
        assert_eq!(load_passes(&repo, Some("app")).await.unwrap(), loaded);
        assert!(load_passes(&repo, Some("other")).await.unwrap().is_empty());
        assert_eq!(loaded.len(), 3);
        let versions: Vec<_> = loaded.into_iter().flat_map(|p| p.versions).collect();
        assert_eq!(versions, record.versions);
        assert_eq!(blob_key("app", "abcdef"), "objects/app/blobs/ab/abcdef.zst");
        assert_eq!(
            blob_sha("app", "objects/app/blobs/ab/abcdef.zst"),
            Some("abcdef")
        );
        for other in [
            "objects/app/blobs/cd/abcdef.zst",
            "objects/app/blobs/ab/abcdef",
            "objects/other/blobs/ab/abcdef.zst",
        ] {
            assert_eq!(blob_sha("app", other), None, "{other}");
        }
    }
}
