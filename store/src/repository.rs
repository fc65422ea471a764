//! `Repository`: the repository-level operations the archiver and restorer share — open or
//! create by URL, check identity, archive WAL segments, partial segments and history files
//! with the envelope and the same-bytes rule, and fetch any object verified.
//!
//! Same-bytes rule (split-brain protection): archiving a name that already exists succeeds
//! with a warning when the stored CRC-32 and size match, and fails with `SplitBrain`, without
//! overwriting anything, when they differ.

use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tidemark_protocol::{Lsn, SegmentName, TimelineId, WalSegmentSize};
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

use crate::backup::{BackupClaim, BackupInfo};
use crate::crashsafe::{self, Publish};
use crate::envelope::{self, EnvelopeError, Sealed};
use crate::identity::{RepoIdentity, FORMAT_VERSION};
use crate::layout::{self, IDENTITY_KEY};
use crate::meta;
use crate::retry::RetryPolicy;
use crate::staged::{self, Compressed, CompressedPrefix, Staged};
use crate::storage::{
    Body, FsStorage, GetObject, Metadata, ObjectHead, ObjectInfo, PutOutcome, S3Options, S3Storage,
    Storage, StorageError,
};
use crate::sync_bridge::BlockingReader;
use crate::url::RepoUrl;

/// Largest document (identity, backup.json) read whole; they are a few kilobytes.
const MAX_DOCUMENT_BYTES: u64 = 16 << 20;

/// An open repository.
#[derive(Debug, Clone)]
pub struct Repository {
    pub storage: Arc<dyn Storage>,
    pub url: RepoUrl,
    /// Set by [`Repository::open_for_reads`]: reads (listings, heads, documents, verified
    /// fetches) are retried under this policy, each call on its own budget.
    pub(crate) reads: Option<RetryPolicy>,
    /// The newest partial segment this handle compressed and stored, so that the complete
    /// segment compresses only what follows it (`archive_segment`).
    pub(crate) last_partial: Arc<std::sync::Mutex<Option<(SegmentName, CompressedPrefix)>>>,
}

/// `wal/<TLI>.complete`: as of `server_time` (the server's clock), every byte of the
/// server's WAL on the timeline before `lsn` was in the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CompleteMarker {
    #[serde(with = "crate::serde_text")]
    pub lsn: Lsn,
    pub server_time: DateTime<Utc>,
}

/// What archiving did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveOutcome {
    /// The object was created.
    Created,
    /// An identical object (same CRC-32 and size) was already there; nothing was written.
    AlreadyPresent,
    /// The object was written with replace semantics (partial segments).
    Replaced,
}

/// One archived object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedObject {
    pub key: String,
    pub sealed: Sealed,
    pub outcome: ArchiveOutcome,
}

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The repository could not be opened or created.
    #[error("cannot open repository {url}")]
    Open {
        url: String,
        #[source]
        source: StorageError,
    },
    /// A storage operation on `key` failed.
    #[error("repository object {key}")]
    Storage {
        key: String,
        #[source]
        source: StorageError,
    },
    /// Reading the body of `key` failed midway.
    #[error("reading repository object {key} failed")]
    Read {
        key: String,
        #[source]
        source: io::Error,
    },
    /// Sealing or verifying `key` failed (corruption, checksum, local i/o).
    #[error("repository object {key}")]
    Envelope {
        key: String,
        #[source]
        source: EnvelopeError,
    },
    /// A local file next to the caller's data could not be created or written.
    #[error("i/o error on {}", path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `tidemark.json` is not a valid identity.
    #[error("{IDENTITY_KEY} is not a valid repository identity; HINT: check that the URL points at a tidemark repository")]
    BadIdentity {
        #[source]
        source: serde_json::Error,
    },
    /// The repository was written by a newer tidemark.
    #[error("repository format version {version} is not supported (this tidemark reads {FORMAT_VERSION}); HINT: upgrade tidemark")]
    UnsupportedFormat { version: u32 },
    /// The repository belongs to another cluster (different system identifier).
    #[error("this repository belongs to cluster {repo_sysid}, not {cluster_sysid}; HINT: use another --repo")]
    OtherCluster { repo_sysid: u64, cluster_sysid: u64 },
    /// The repository was created for another `wal_segment_size`.
    #[error("this repository holds WAL segments of {repo} bytes, not {cluster}; HINT: use another --repo")]
    SegmentSizeMismatch { repo: u64, cluster: u64 },
    /// A different object already exists under `key`; nothing was overwritten.
    #[error("a different {key} is already archived: another server is writing this timeline (split brain); nothing was overwritten; HINT: stop the other archiver and check which cluster is the primary")]
    SplitBrain { key: String },
    /// The WAL file to archive does not have the segment size.
    #[error("{} is {actual} bytes, not a whole segment of {expected}; HINT: archive only complete segments", path.display())]
    IncompleteSegment {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    /// The object lacks the CRC-32/size metadata that every tidemark object carries.
    #[error(
        "repository object {key} has no {} / {} metadata; it was not written by tidemark",
        meta::CRC32,
        meta::RAW_SIZE
    )]
    MissingChecksum { key: String },
    /// A repository document (backup.json) is not what tidemark writes.
    #[error("repository object {key} is not valid: {reason}; HINT: check that nothing else writes under this prefix")]
    BadDocument { key: String, reason: String },
    /// The storage server does not honour `If-None-Match: *` (see `probe_conditional_put`).
    #[error("the repository's storage does not honour conditional puts (If-None-Match: *): {detail}; tidemark needs them to refuse split-brain WAL instead of overwriting it, and for its leases, so this repository is refused; HINT: use an S3 server that supports them: AWS S3 (since August 2024), MinIO, SeaweedFS, or a recent Ceph RGW; on a gateway or proxy, let the If-None-Match header through")]
    NoConditionalPut { detail: String },
    /// A worker task failed unexpectedly.
    #[error("internal task failed: {message}")]
    Task { message: String },
    /// A call kept failing for as long as the retry policy allows (`source`: the last
    /// failure).
    #[error("{what} failed {attempts} times over {elapsed:.1?}; giving up")]
    GaveUp {
        what: String,
        attempts: u32,
        elapsed: Duration,
        #[source]
        source: Box<RepoError>,
    },
}

impl RepoError {
    /// True when the same call may succeed later (network trouble, server errors).
    pub fn is_transient(&self) -> bool {
        match self {
            RepoError::Open { source, .. } | RepoError::Storage { source, .. } => {
                source.is_transient()
            }
            RepoError::Envelope { source, .. } => source.is_transient(),
            RepoError::Read { .. } => true,
            _ => false,
        }
    }

    /// True when the local disk is full (compressing next to the spool, say): freeing
    /// space cures it.
    pub fn is_disk_full(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if e.downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::StorageFull)
            {
                return true;
            }
            cause = e.source();
        }
        false
    }

    /// True when the credentials were refused: rotating keys or an expiring token cure
    /// that without anyone's help, a wrong policy does not.
    pub fn is_access_denied(&self) -> bool {
        if let RepoError::GaveUp { source, .. } = self {
            return source.is_access_denied();
        }
        matches!(
            self,
            RepoError::Storage {
                source: StorageError::AccessDenied { .. },
                ..
            } | RepoError::Open {
                source: StorageError::AccessDenied { .. },
                ..
            }
        )
    }

    pub(crate) fn storage(key: &str) -> impl FnOnce(StorageError) -> RepoError + '_ {
        move |source| RepoError::Storage {
            key: key.to_string(),
            source,
        }
    }
}

impl Repository {
    /// Opens an existing repository. A `file://` directory must exist (else: run `tidemark
    /// init`); an S3 bucket must exist and be reachable.
    pub async fn open(url: &RepoUrl, s3: &S3Options) -> Result<Repository, RepoError> {
        let storage: Arc<dyn Storage> = match url {
            RepoUrl::File { path } => Arc::new(FsStorage::open(path).map_err(open_err(url))?),
            RepoUrl::S3 { bucket, prefix } => Arc::new(
                S3Storage::connect(bucket, prefix, s3)
                    .await
                    .map_err(open_err(url))?,
            ),
        };
        Ok(Repository {
            storage,
            url: url.clone(),
            reads: None,
            last_partial: Default::default(),
        })
    }

    /// Opens an existing repository for a reader that must ride out a flaky network
    /// (`restore`, `plan`, `wal-fetch`): the opening itself and every later read are
    /// retried under `policy`. A transfer cut mid-body is a transient error, retried like
    /// a failed request; only verified bytes are ever returned.
    pub async fn open_for_reads(
        url: &RepoUrl,
        s3: &S3Options,
        policy: RetryPolicy,
    ) -> Result<Repository, RepoError> {
        let mut repo = policy
            .run("open the repository", || Self::open(url, s3))
            .await?;
        repo.reads = Some(policy);
        Ok(repo)
    }

    /// `op` under the read policy, if any.
    async fn reading<T, F, Fut>(&self, what: &str, op: F) -> Result<T, RepoError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RepoError>>,
    {
        match &self.reads {
            Some(policy) => policy.run(what, op).await,
            None => {
                let mut op = op;
                op().await
            }
        }
    }

    /// Opens a repository for `tidemark init`: a `file://` directory is created (with its
    /// parents); an S3 bucket must already exist.
    pub async fn create(url: &RepoUrl, s3: &S3Options) -> Result<Repository, RepoError> {
        if let RepoUrl::File { path } = url {
            FsStorage::create(path).map_err(open_err(url))?;
        }
        Self::open(url, s3).await
    }

    /// The repository identity, `None` when `tidemark.json` does not exist yet.
    pub async fn identity(&self) -> Result<Option<RepoIdentity>, RepoError> {
        let bytes = match self.read_document(IDENTITY_KEY).await {
            Ok(bytes) => bytes,
            Err(RepoError::Storage {
                source: StorageError::NotFound { .. },
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let identity: RepoIdentity =
            serde_json::from_slice(&bytes).map_err(|source| RepoError::BadIdentity { source })?;
        if identity.format_version != FORMAT_VERSION {
            return Err(RepoError::UnsupportedFormat {
                version: identity.format_version,
            });
        }
        Ok(Some(identity))
    }

    /// Makes sure the repository belongs to the cluster described by `wanted`: creates
    /// `tidemark.json` when absent, returns the stored identity when it matches, and refuses
    /// (writing nothing) when it names another cluster or segment size.
    pub async fn ensure_identity(&self, wanted: &RepoIdentity) -> Result<RepoIdentity, RepoError> {
        if let Some(existing) = self.identity().await? {
            return check_identity(existing, wanted);
        }
        let json = serde_json::to_vec_pretty(wanted)
            .map_err(|source| RepoError::BadIdentity { source })?;
        let mut metadata =
            Metadata::from([(meta::KIND.to_string(), meta::KIND_IDENTITY.to_string())]);
        metadata.insert(
            meta::CRC32.to_string(),
            meta::format_crc32(crc32fast::hash(&json)),
        );
        metadata.insert(meta::RAW_SIZE.to_string(), json.len().to_string());
        let outcome = self
            .storage
            .put_if_absent(IDENTITY_KEY, Body::Bytes(Bytes::from(json)), &metadata)
            .await
            .map_err(RepoError::storage(IDENTITY_KEY))?;
        match outcome {
            PutOutcome::Created => {
                info!(repo = %self.url, sysid = wanted.system_identifier, "repository identity created");
                Ok(wanted.clone())
            }
            // Another process initialised it concurrently: judge what it wrote.
            PutOutcome::Exists(_) => match self.identity().await? {
                Some(existing) => check_identity(existing, wanted),
                None => Err(RepoError::storage(IDENTITY_KEY)(StorageError::NotFound {
                    key: IDENTITY_KEY.to_string(),
                })),
            },
        }
    }

    /// Archives a complete WAL segment from `spool_file` (exactly one segment long):
    /// compresses it next to the spool file, then creates `wal/<TLI>/<SEG>.zst` if absent
    /// (same-bytes rule when present). `extra_meta` is stored too, but cannot override the
    /// standard entries.
    pub async fn archive_segment(
        &self,
        name: SegmentName,
        seg: WalSegmentSize,
        spool_file: &Path,
        level: i32,
        extra_meta: Metadata,
    ) -> Result<ArchivedObject, RepoError> {
        let key = layout::wal_segment_key(name, seg);
        let actual = tokio::fs::metadata(spool_file)
            .await
            .map_err(|source| local(spool_file, source))?
            .len();
        if actual != seg.bytes() {
            return Err(RepoError::IncompleteSegment {
                path: spool_file.to_path_buf(),
                expected: seg.bytes(),
                actual,
            });
        }
        // A partial stored earlier (by us, or by the primary this one was cloned from)
        // must be this segment's prefix: else it is another server's WAL.
        let file = std::fs::File::open(spool_file).map_err(|source| local(spool_file, source))?;
        let staged = Staged::read(&file, spool_file, actual).await?;
        self.agrees_with_stored_partial(name, seg, &staged, actual)
            .await?;
        let prefix = self.take_last_partial(name);
        let (sealed, compressed) = staged.compress_after(prefix, level, &key).await?;
        drop(staged);
        let metadata = wal_metadata(
            extra_meta,
            meta::KIND_WAL,
            name,
            seg,
            name.end_lsn(seg),
            &sealed,
        );
        let outcome = self
            .storage
            .put_if_absent(&key, compressed.body(), &metadata)
            .await
            .map_err(RepoError::storage(&key))?;
        self.judge_put(key, sealed, outcome)
    }

    /// Archives the newest partial segment: the first `len` bytes of `data` (the file at
    /// `data_path`, which may still be growing) are the valid prefix of the segment.
    ///
    /// A stored partial of the same segment is replaced only by one that extends it (its
    /// bytes are a prefix of ours); a different one is `SplitBrain`, nothing overwritten.
    /// `Ok(None)`, writing nothing, when the repository already holds as much: the
    /// complete segment, an identical partial, or a longer one.
    #[allow(clippy::too_many_arguments)]
    pub async fn archive_partial(
        &self,
        name: SegmentName,
        seg: WalSegmentSize,
        data: &std::fs::File,
        data_path: &Path,
        len: u64,
        level: i32,
        extra_meta: Metadata,
    ) -> Result<Option<ArchivedObject>, RepoError> {
        if self
            .head(&layout::wal_segment_key(name, seg))
            .await?
            .is_some()
        {
            return Ok(None);
        }
        let key = layout::wal_partial_key(name, seg);
        let staged = Staged::read(data, data_path, len).await?;
        match self
            .agrees_with_stored_partial(name, seg, &staged, len)
            .await?
        {
            Some(stored_len) if stored_len > len => {
                warn!(
                    key,
                    stored_len, len, "a longer partial segment is already stored; keeping it"
                );
                return Ok(None);
            }
            Some(stored_len) if stored_len == len => return Ok(None),
            _ => {}
        }
        let (sealed, compressed) = staged.compress(level, &key).await?;
        drop(staged);
        let metadata = wal_metadata(
            extra_meta,
            meta::KIND_WAL_PARTIAL,
            name,
            seg,
            name.start_lsn(seg) + len,
            &sealed,
        );
        self.storage
            .put(&key, compressed.body(), &metadata)
            .await
            .map_err(RepoError::storage(&key))?;
        if let Compressed::Memory(frames) = &compressed {
            let prefix = CompressedPrefix {
                raw_len: len,
                crc32: sealed.crc32,
                frames: frames.clone(),
            };
            *self.last_partial_slot() = Some((name, prefix));
        }
        Ok(Some(ArchivedObject {
            key,
            sealed,
            outcome: ArchiveOutcome::Replaced,
        }))
    }

    /// The frames of the newest partial of `name` stored through this handle, if that is
    /// the newest partial it stored; a later segment's partial replaces it.
    fn take_last_partial(&self, name: SegmentName) -> Option<CompressedPrefix> {
        let mut slot = self.last_partial_slot();
        match slot.take() {
            Some((n, prefix)) if n == name => Some(prefix),
            other => {
                *slot = other;
                None
            }
        }
    }

    fn last_partial_slot(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<(SegmentName, CompressedPrefix)>> {
        // A panic while holding it left at worst a stale prefix, which is checked anyway.
        self.last_partial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The length of the stored partial of segment `name`, if there is one, once it is
    /// known to agree with the first `len` bytes staged in `data`: its bytes are their
    /// prefix. `SplitBrain` when they differ. A stored partial longer than `len` cannot
    /// be compared here; its length is returned as is.
    async fn agrees_with_stored_partial(
        &self,
        name: SegmentName,
        seg: WalSegmentSize,
        data: &Staged,
        len: u64,
    ) -> Result<Option<u64>, RepoError> {
        let key = layout::wal_partial_key(name, seg);
        let Some(stored) = self.head(&key).await? else {
            return Ok(None);
        };
        let (Some(stored_len), Some(stored_crc)) = (
            meta::raw_size(&stored.metadata),
            meta::crc32(&stored.metadata),
        ) else {
            return Err(RepoError::MissingChecksum { key });
        };
        if stored_len <= len && data.prefix_crc32(stored_len).await? != stored_crc {
            return Err(RepoError::SplitBrain { key });
        }
        Ok(Some(stored_len))
    }

    /// Removes the partial object of segment `name`, superseded by a newer one or by the
    /// complete segment. Absent is fine.
    pub async fn remove_partial(
        &self,
        name: SegmentName,
        seg: WalSegmentSize,
    ) -> Result<(), RepoError> {
        let key = layout::wal_partial_key(name, seg);
        self.storage
            .delete(&key)
            .await
            .map_err(RepoError::storage(&key))
    }

    /// How far the repository holds segment `name`: its end when stored complete, else
    /// the end of its stored partial; `None` when neither is there. (A partial is removed
    /// once the complete segment is stored, so the complete one is looked up first.)
    pub async fn stored_through(
        &self,
        name: SegmentName,
        seg: WalSegmentSize,
    ) -> Result<Option<Lsn>, RepoError> {
        if self
            .head(&layout::wal_segment_key(name, seg))
            .await?
            .is_some()
        {
            return Ok(Some(name.end_lsn(seg)));
        }
        let partial = self.head(&layout::wal_partial_key(name, seg)).await?;
        Ok(partial.and_then(|h| meta::end_lsn(&h.metadata)))
    }

    /// Archives a timeline history file, uncompressed, if absent (same-bytes rule).
    pub async fn archive_history(
        &self,
        tli: TimelineId,
        content: &[u8],
    ) -> Result<ArchivedObject, RepoError> {
        let mut metadata = Metadata::from([(meta::TIMELINE.to_string(), tli.to_string())]);
        metadata.insert(meta::KIND.to_string(), meta::KIND_HISTORY.to_string());
        let body = Body::Bytes(Bytes::copy_from_slice(content));
        self.store_plain(
            layout::history_key(tli),
            body,
            plain_seal(content),
            metadata,
        )
        .await
    }

    /// Stores an uncompressed object whose CRC-32 and size the caller computed (`sealed`)
    /// if absent (same-bytes rule when present), with `metadata` plus the seal.
    pub async fn store_plain(
        &self,
        key: String,
        body: Body,
        sealed: Sealed,
        metadata: Metadata,
    ) -> Result<ArchivedObject, RepoError> {
        let mut metadata = metadata;
        metadata.extend(sealed.metadata());
        let outcome = self
            .storage
            .put_if_absent(&key, body, &metadata)
            .await
            .map_err(RepoError::storage(&key))?;
        self.judge_put(key, sealed, outcome)
    }

    /// Compresses the local file `src` (a backup chunk, a copied application object) and
    /// stores it at `key` with metadata `kind` if absent (same-bytes rule when present).
    pub async fn store_compressed(
        &self,
        key: String,
        src: &Path,
        level: i32,
        kind: &str,
    ) -> Result<ArchivedObject, RepoError> {
        let (sealed, compressed) = staged::compress_next_to(src, None, level, &key).await?;
        let mut metadata = sealed.metadata();
        metadata.insert(meta::KIND.to_string(), kind.to_string());
        let outcome = self
            .storage
            .put_if_absent(&key, Body::File(compressed.to_path_buf()), &metadata)
            .await
            .map_err(RepoError::storage(&key))?;
        self.judge_put(key, sealed, outcome)
    }

    /// Writes `backup.json`, the record that makes a backup complete: last, once.
    pub async fn put_backup_info(&self, info: &BackupInfo) -> Result<ArchivedObject, RepoError> {
        self.store_document(
            layout::backup_info_key(&info.id),
            info,
            meta::KIND_BACKUP_INFO,
        )
        .await
    }

    /// Claims a backup id: creates `backups/<ID>/claim.json` only if absent. `true` when
    /// the id is now this claim's (created, or found holding this claim's token after a
    /// retried request), `false` when another process holds it.
    pub async fn claim_backup(&self, claim: &BackupClaim) -> Result<bool, RepoError> {
        let key = layout::backup_claim_key(&claim.id);
        let (json, sealed, mut metadata) = document(&key, claim, meta::KIND_BACKUP_CLAIM)?;
        metadata.extend(sealed.metadata());
        let outcome = self
            .storage
            .put_if_absent(&key, Body::Bytes(json), &metadata)
            .await
            .map_err(RepoError::storage(&key))?;
        match outcome {
            PutOutcome::Created => Ok(true),
            PutOutcome::Exists(_) => {
                let held = self.read_document(&key).await?;
                Ok(serde_json::from_slice::<BackupClaim>(&held)
                    .is_ok_and(|held| held.token == claim.token))
            }
        }
    }

    /// Stores `value` as a JSON document at `key` with metadata `kind`, if absent
    /// (same-bytes rule when present).
    pub async fn store_document(
        &self,
        key: String,
        value: &impl serde::Serialize,
        kind: &str,
    ) -> Result<ArchivedObject, RepoError> {
        let (json, sealed, metadata) = document(&key, value, kind)?;
        self.store_plain(key, Body::Bytes(json), sealed, metadata)
            .await
    }

    /// Record that the repository holds all of the server's WAL on `timeline` up to `lsn`
    /// as of the server's clock reading `server_time` (replaces the previous marker).
    pub async fn mark_complete(
        &self,
        timeline: TimelineId,
        lsn: Lsn,
        server_time: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        let key = layout::wal_complete_key(timeline);
        let json = serde_json::to_vec(&CompleteMarker { lsn, server_time }).map_err(|e| {
            RepoError::Task {
                message: format!("cannot serialise {key}: {e}"),
            }
        })?;
        let mut metadata = plain_seal(&json).metadata();
        metadata.insert(meta::KIND.to_string(), meta::KIND_WAL_COMPLETE.to_string());
        self.storage
            .put(&key, Body::Bytes(Bytes::from(json)), &metadata)
            .await
            .map_err(RepoError::storage(&key))
    }

    /// The newest archive-complete marker of `timeline`, if any.
    pub async fn complete_marker(
        &self,
        timeline: TimelineId,
    ) -> Result<Option<CompleteMarker>, RepoError> {
        let key = layout::wal_complete_key(timeline);
        let bytes = match self.read_document(&key).await {
            Ok(b) => b,
            Err(RepoError::Storage {
                source: StorageError::NotFound { .. },
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RepoError::BadDocument {
                key,
                reason: e.to_string(),
            })
    }

    /// `Storage::head` with the key as error context.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectHead>, RepoError> {
        self.reading(&format!("look up {key}"), || async {
            self.storage
                .head(key)
                .await
                .map_err(RepoError::storage(key))
        })
        .await
    }

    /// `Storage::delete` with the key as error context (`Ok` when already absent).
    pub async fn delete(&self, key: &str) -> Result<(), RepoError> {
        self.storage
            .delete(key)
            .await
            .map_err(RepoError::storage(key))
    }

    /// `Storage::list` with the prefix as error context.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, RepoError> {
        self.reading(&format!("list {prefix}"), || async {
            self.storage
                .list(prefix)
                .await
                .map_err(RepoError::storage(prefix))
        })
        .await
    }

    /// The history file of `timeline`, if archived (verified against its CRC-32).
    pub async fn history(&self, timeline: TimelineId) -> Result<Option<Vec<u8>>, RepoError> {
        match self.read_document(&layout::history_key(timeline)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(RepoError::Storage {
                source: StorageError::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every complete backup (those with a `backup.json`), oldest first.
    pub async fn backups(&self) -> Result<Vec<BackupInfo>, RepoError> {
        let listing = self.list(layout::BACKUPS_PREFIX).await?;
        let mut out = Vec::new();
        for info in listing {
            let Some(dir) = info.key.strip_suffix(layout::BACKUP_INFO_FILE) else {
                continue;
            };
            let bytes = self.read_document(&info.key).await?;
            let backup: BackupInfo =
                serde_json::from_slice(&bytes).map_err(|e| RepoError::BadDocument {
                    key: info.key.clone(),
                    reason: e.to_string(),
                })?;
            if format!("{}{}/", layout::BACKUPS_PREFIX, backup.id) != dir {
                return Err(RepoError::BadDocument {
                    key: info.key,
                    reason: format!("it describes backup {}", backup.id),
                });
            }
            out.push(backup);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Every JSON document under `prefix`, in key order; one that does not parse as `T`
    /// is an error naming it.
    pub(crate) async fn json_documents<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<T>, RepoError> {
        let mut out = Vec::new();
        for info in self.list(prefix).await? {
            let bytes = self.read_document(&info.key).await?;
            let value = serde_json::from_slice(&bytes).map_err(|e| RepoError::BadDocument {
                key: info.key.clone(),
                reason: e.to_string(),
            })?;
            out.push(value);
        }
        Ok(out)
    }

    /// A small object read whole (at most `MAX_DOCUMENT_BYTES`) and checked against the
    /// CRC-32 in its metadata.
    pub(crate) async fn read_document(&self, key: &str) -> Result<Vec<u8>, RepoError> {
        self.reading(&format!("read {key}"), || self.read_document_once(key))
            .await
    }

    async fn read_document_once(&self, key: &str) -> Result<Vec<u8>, RepoError> {
        let mut get = self
            .storage
            .get(key)
            .await
            .map_err(RepoError::storage(key))?;
        let mut bytes = Vec::new();
        (&mut get.body)
            .take(MAX_DOCUMENT_BYTES)
            .read_to_end(&mut bytes)
            .await
            .map_err(|source| RepoError::Read {
                key: key.to_string(),
                source,
            })?;
        let announced = get.head.info.size;
        if (bytes.len() as u64) < announced.min(MAX_DOCUMENT_BYTES) {
            return Err(RepoError::Read {
                key: key.to_string(),
                source: short_transfer(bytes.len() as u64, announced),
            });
        }
        if let Some(expected) = meta::crc32(&get.head.metadata) {
            let actual = crc32fast::hash(&bytes);
            if actual != expected {
                return Err(RepoError::Envelope {
                    key: key.to_string(),
                    source: EnvelopeError::ChecksumMismatch { expected, actual },
                });
            }
        }
        Ok(bytes)
    }

    /// Streams `key` to `dst`, decompressing `.zst` objects, and checks size and CRC-32
    /// against the object's metadata. `dst` appears atomically (temp, fsync, rename) and
    /// only when verification passed. Returns the object's seal.
    pub async fn fetch_verified(&self, key: &str, dst: &Path) -> Result<Sealed, RepoError> {
        self.reading(&format!("fetch {key}"), || {
            self.fetch_verified_once(key, dst)
        })
        .await
    }

    async fn fetch_verified_once(&self, key: &str, dst: &Path) -> Result<Sealed, RepoError> {
        let (get, sealed) = self.get_sealed(key).await?;
        let compressed = key.ends_with(".zst");
        let handle = tokio::runtime::Handle::current();
        let (key_owned, dst_owned) = (key.to_string(), dst.to_path_buf());
        let task = tokio::task::spawn_blocking(move || {
            let reader = BlockingReader::new(handle, get.body, sealed.stored_size);
            let mut failure = None;
            let written = crashsafe::write_durably(&dst_owned, Publish::Replace, |file| {
                let out = BufWriter::new(file);
                let (crc32, raw_size) = (sealed.crc32, Some(sealed.raw_size));
                let verified = if compressed {
                    envelope::decompress_verified(reader, out, crc32, raw_size)
                } else {
                    envelope::copy_verified(reader, out, crc32, raw_size)
                };
                verified.map_err(|e| {
                    failure = Some(e);
                    io::Error::other("verification failed")
                })
            });
            match (written, failure) {
                (Ok(_), _) => Ok(()),
                (Err(_), Some(source)) => Err(RepoError::Envelope {
                    key: key_owned,
                    source,
                }),
                (Err(source), None) => Err(local(&dst_owned, source)),
            }
        });
        task.await.map_err(task_failed)??;
        Ok(sealed)
    }

    /// Reads `key` through `consume`, which sees its uncompressed bytes (decompressed for
    /// `.zst` objects) as they arrive, on a blocking thread. Once it returns, what it left
    /// is read and size and CRC-32 are checked against the object's metadata: its result
    /// counts only then. Retried as a whole, like `fetch_verified`, when reading fails.
    pub async fn read_verified<T, F>(&self, key: &str, consume: F) -> Result<(Sealed, T), RepoError>
    where
        T: Send + 'static,
        F: Fn(&mut dyn io::Read) -> T + Clone + Send + 'static,
    {
        self.reading(&format!("read {key}"), || {
            self.read_verified_once(key, consume.clone())
        })
        .await
    }

    async fn read_verified_once<T, F>(
        &self,
        key: &str,
        consume: F,
    ) -> Result<(Sealed, T), RepoError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn io::Read) -> T + Send + 'static,
    {
        let (get, sealed) = self.get_sealed(key).await?;
        let compressed = key.ends_with(".zst");
        let handle = tokio::runtime::Handle::current();
        let key_owned = key.to_string();
        let task = tokio::task::spawn_blocking(move || {
            let reader = BlockingReader::new(handle, get.body, sealed.stored_size);
            let (crc32, raw_size) = (sealed.crc32, Some(sealed.raw_size));
            let envelope_err = |source| RepoError::Envelope {
                key: key_owned.clone(),
                source,
            };
            let mut verified = match compressed {
                true => {
                    envelope::Verified::compressed(reader, crc32, raw_size).map_err(envelope_err)?
                }
                false => envelope::Verified::plain(reader, crc32, raw_size),
            };
            let consumed = consume(&mut verified);
            verified.finish().map_err(envelope_err)?;
            Ok(consumed)
        });
        let consumed = task.await.map_err(task_failed)??;
        Ok((sealed, consumed))
    }

    /// An object being read, and the seal its metadata records.
    async fn get_sealed(&self, key: &str) -> Result<(GetObject, Sealed), RepoError> {
        let get = self
            .storage
            .get(key)
            .await
            .map_err(RepoError::storage(key))?;
        let missing = || RepoError::MissingChecksum {
            key: key.to_string(),
        };
        let sealed = Sealed {
            crc32: meta::crc32(&get.head.metadata).ok_or_else(missing)?,
            raw_size: meta::raw_size(&get.head.metadata).ok_or_else(missing)?,
            stored_size: get.head.info.size,
        };
        Ok((get, sealed))
    }

    fn judge_put(
        &self,
        key: String,
        sealed: Sealed,
        outcome: PutOutcome,
    ) -> Result<ArchivedObject, RepoError> {
        let outcome = match outcome {
            PutOutcome::Created => ArchiveOutcome::Created,
            PutOutcome::Exists(head) => {
                let same = meta::crc32(&head.metadata) == Some(sealed.crc32)
                    && meta::raw_size(&head.metadata) == Some(sealed.raw_size);
                if !same {
                    return Err(RepoError::SplitBrain { key });
                }
                warn!(
                    key,
                    "already archived with identical content; keeping the stored copy"
                );
                ArchiveOutcome::AlreadyPresent
            }
        };
        Ok(ArchivedObject {
            key,
            sealed,
            outcome,
        })
    }
}

/// The error of a body that ended before the length the server announced: the transfer
/// was cut (a reset, a proxy timeout), which says nothing about the stored object.
pub(crate) fn short_transfer(received: u64, announced: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the transfer ended after {received} of {announced} bytes"),
    )
}

fn check_identity(
    existing: RepoIdentity,
    wanted: &RepoIdentity,
) -> Result<RepoIdentity, RepoError> {
    if existing.system_identifier != wanted.system_identifier {
        return Err(RepoError::OtherCluster {
            repo_sysid: existing.system_identifier,
            cluster_sysid: wanted.system_identifier,
        });
    }
    if existing.wal_segment_size != wanted.wal_segment_size {
        return Err(RepoError::SegmentSizeMismatch {
            repo: existing.wal_segment_size,
            cluster: wanted.wal_segment_size,
        });
    }
    Ok(existing)
}

fn wal_metadata(
    extra: Metadata,
    kind: &str,
    name: SegmentName,
    seg: WalSegmentSize,
    end_lsn: Lsn,
    sealed: &Sealed,
) -> Metadata {
    let mut m = extra;
    m.extend(sealed.metadata());
    m.insert(meta::KIND.to_string(), kind.to_string());
    m.insert(meta::TIMELINE.to_string(), name.timeline.to_string());
    m.insert(meta::START_LSN.to_string(), name.start_lsn(seg).to_string());
    m.insert(meta::END_LSN.to_string(), end_lsn.to_string());
    m
}

/// `value` as the JSON document stored at `key`, its seal, and metadata of `kind`.
fn document(
    key: &str,
    value: &impl serde::Serialize,
    kind: &str,
) -> Result<(Bytes, Sealed, Metadata), RepoError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| RepoError::Task {
        message: format!("cannot serialise {key}: {e}"),
    })?;
    let metadata = Metadata::from([(meta::KIND.to_string(), kind.to_string())]);
    let sealed = plain_seal(&json);
    Ok((Bytes::from(json), sealed, metadata))
}

/// The seal of an object stored as is.
fn plain_seal(content: &[u8]) -> Sealed {
    Sealed {
        crc32: crc32fast::hash(content),
        raw_size: content.len() as u64,
        stored_size: content.len() as u64,
    }
}

fn open_err(url: &RepoUrl) -> impl FnOnce(StorageError) -> RepoError + '_ {
    move |source| RepoError::Open {
        url: url.to_string(),
        source,
    }
}

pub(crate) fn local(path: &Path, source: io::Error) -> RepoError {
    RepoError::Local {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn task_failed(e: tokio::task::JoinError) -> RepoError {
    RepoError::Task {
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1 << 20;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(SEG).unwrap()
    }

    fn segment_bytes(seed: u8) -> Vec<u8> {
        (0..SEG as usize)
            .map(|i| ((i / 64) as u8).wrapping_mul(seed) ^ (i as u8 & 3))
            .collect()
    }

    async fn repo(dir: &Path) -> Repository {
        let url = RepoUrl::File {
            path: dir.join("repo"),
        };
        Repository::create(&url, &S3Options::default())
            .await
            .unwrap()
    }

    fn stored_path(dir: &Path, key: &str) -> PathBuf {
        dir.join("repo").join(key)
    }

    #[tokio::test]
    async fn open_needs_init_and_create_makes_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let url = RepoUrl::File {
            path: dir.path().join("nested/repo"),
        };
        let err = Repository::open(&url, &S3Options::default())
            .await
            .unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            chain.contains("does not exist; HINT: run tidemark init"),
            "{chain}"
        );
        Repository::create(&url, &S3Options::default())
            .await
            .unwrap();
        Repository::open(&url, &S3Options::default()).await.unwrap();
    }

    /// A filesystem repository whose first `cuts` GETs deliver half the body and then a
    /// clean end of stream, as a connection cut mid-transfer can look.
    #[derive(Debug)]
    struct CutBodies(FsStorage, std::sync::atomic::AtomicU32);

    #[async_trait::async_trait]
    impl Storage for CutBodies {
        async fn put_if_absent(
            &self,
            key: &str,
            body: Body,
            meta: &Metadata,
        ) -> Result<PutOutcome, StorageError> {
            self.0.put_if_absent(key, body, meta).await
        }
        async fn put(&self, key: &str, body: Body, meta: &Metadata) -> Result<(), StorageError> {
            self.0.put(key, body, meta).await
        }
        async fn get(&self, key: &str) -> Result<crate::storage::GetObject, StorageError> {
            let mut get = self.0.get(key).await?;
            let left = self.1.load(std::sync::atomic::Ordering::SeqCst);
            if left > 0 {
                self.1.store(left - 1, std::sync::atomic::Ordering::SeqCst);
                get.body = Box::pin(get.body.take(get.head.info.size / 2));
            }
            Ok(get)
        }
        async fn head(&self, key: &str) -> Result<Option<ObjectHead>, StorageError> {
            self.0.head(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
            self.0.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<(), StorageError> {
            self.0.delete(key).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_transfer_is_a_transfer_error_retried_not_a_damaged_object() {
        let dir = tempfile::tempdir().unwrap();
        let written = repo(dir.path()).await;
        let spool = dir.path().join("000000010000000000000003");
        std::fs::write(&spool, segment_bytes(5)).unwrap();
        let name = SegmentName::new(TimelineId(1), 3);
        let key = written
            .archive_segment(name, seg(), &spool, 3, Metadata::new())
            .await
            .unwrap()
            .key;
        let cut = |cuts, reads| Repository {
            storage: Arc::new(CutBodies(
                FsStorage::open(dir.path().join("repo")).unwrap(),
                std::sync::atomic::AtomicU32::new(cuts),
            )),
            url: written.url.clone(),
            reads,
            last_partial: Default::default(),
        };
        let dst = dir.path().join("fetched");
        // Without a read policy the cut surfaces as a transient read error...
        let err = cut(1, None).fetch_verified(&key, &dst).await.unwrap_err();
        assert!(err.is_transient(), "{}", crate::retry::chain(&err));
        assert!(
            crate::retry::chain(&err).contains("the transfer ended after"),
            "{}",
            crate::retry::chain(&err)
        );
        assert!(!dst.exists());
        // ...which a reader's policy retries, getting the verified object.
        let reads = Some(RetryPolicy::reads(Duration::from_secs(5)));
        cut(2, reads).fetch_verified(&key, &dst).await.unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), segment_bytes(5));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_round_trip_and_plain_zstd_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let spool = dir.path().join("000000010000000000000003");
        let data = segment_bytes(7);
        std::fs::write(&spool, &data).unwrap();
        let name = SegmentName::new(TimelineId(1), 3);
        let extra = Metadata::from([(
            "first-commit".to_string(),
            "2025-01-01T00:00:00Z".to_string(),
        )]);
        let archived = repo
            .archive_segment(name, seg(), &spool, 3, extra)
            .await
            .unwrap();
        assert_eq!(archived.key, "wal/00000001/000000010000000000000003.zst");
        assert_eq!(archived.outcome, ArchiveOutcome::Created);
        assert_eq!(archived.sealed.crc32, crc32fast::hash(&data));
        let head = repo.storage.head(&archived.key).await.unwrap().unwrap();
        for (k, v) in [
            ("kind", "wal"),
            ("timeline", "1"),
            ("start-lsn", "0/300000"),
            ("end-lsn", "0/400000"),
            ("raw-size", "1048576"),
            ("first-commit", "2025-01-01T00:00:00Z"),
        ] {
            assert_eq!(head.metadata.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert_eq!(
            head.metadata["crc32"],
            format!("{:08x}", crc32fast::hash(&data))
        );
        // No compressed temp file is left next to the spool file.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        let dst = dir.path().join("restored");
        let sealed = repo.fetch_verified(&archived.key, &dst).await.unwrap();
        assert_eq!(sealed.crc32, archived.sealed.crc32);
        assert_eq!(std::fs::read(&dst).unwrap(), data);

        let out = std::process::Command::new("zstd")
            .args(["-d", "-q", "-c"])
            .arg(stored_path(dir.path(), &archived.key))
            .output()
            .expect("the zstd CLI must be installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, data);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_bytes_are_accepted_and_different_bytes_are_split_brain() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let spool = dir.path().join("spool");
        let name = SegmentName::new(TimelineId(2), 9);
        std::fs::write(&spool, segment_bytes(3)).unwrap();
        let first = repo
            .archive_segment(name, seg(), &spool, 1, Metadata::new())
            .await
            .unwrap();
        let stored = std::fs::read(stored_path(dir.path(), &first.key)).unwrap();

        let again = repo
            .archive_segment(name, seg(), &spool, 9, Metadata::new())
            .await
            .unwrap();
        assert_eq!(again.outcome, ArchiveOutcome::AlreadyPresent);

        std::fs::write(&spool, segment_bytes(5)).unwrap();
        let err = repo
            .archive_segment(name, seg(), &spool, 1, Metadata::new())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RepoError::SplitBrain { key } if *key == first.key),
            "{err:?}"
        );
        assert!(err.to_string().contains("nothing was overwritten"));
        assert_eq!(
            std::fs::read(stored_path(dir.path(), &first.key)).unwrap(),
            stored
        );
        let dst = dir.path().join("check");
        repo.fetch_verified(&first.key, &dst).await.unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), segment_bytes(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn incomplete_segments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let spool = dir.path().join("short");
        std::fs::write(&spool, b"not a whole segment").unwrap();
        let err = repo
            .archive_segment(
                SegmentName::new(TimelineId(1), 1),
                seg(),
                &spool,
                1,
                Metadata::new(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, RepoError::IncompleteSegment { actual: 19, .. }),
            "{err:?}"
        );
        assert!(repo.storage.list("").await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damaged_objects_fail_verification_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let spool = dir.path().join("spool");
        std::fs::write(&spool, segment_bytes(11)).unwrap();
        let archived = repo
            .archive_segment(
                SegmentName::new(TimelineId(1), 1),
                seg(),
                &spool,
                3,
                Metadata::new(),
            )
            .await
            .unwrap();
        let path = stored_path(dir.path(), &archived.key);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let dst = dir.path().join("restored");
        let err = repo.fetch_verified(&archived.key, &dst).await.unwrap_err();
        assert!(
            matches!(
                &err,
                RepoError::Envelope {
                    source: EnvelopeError::Corrupt { .. } | EnvelopeError::ChecksumMismatch { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.is_transient());
        assert!(
            !dst.exists(),
            "nothing written where PostgreSQL would read it"
        );
        let absent = repo
            .fetch_verified("wal/00000001/nothing.zst", &dst)
            .await
            .unwrap_err();
        assert!(matches!(
            absent,
            RepoError::Storage {
                source: StorageError::NotFound { .. },
                ..
            }
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partial_from_another_server_never_replaces_the_stored_one() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let name = SegmentName::new(TimelineId(1), 5);
        let ours = dir.path().join("ours");
        std::fs::write(&ours, &segment_bytes(2)[..6000]).unwrap();
        let file = std::fs::File::open(&ours).unwrap();
        repo.archive_partial(name, seg(), &file, &ours, 4000, 1, Metadata::new())
            .await
            .unwrap()
            .expect("stored");
        // A clone that diverged inside the stored prefix, longer than it.
        let mut clone = segment_bytes(2)[..6000].to_vec();
        clone[100] ^= 0xFF;
        let theirs = dir.path().join("theirs");
        std::fs::write(&theirs, &clone).unwrap();
        let file = std::fs::File::open(&theirs).unwrap();
        let err = repo
            .archive_partial(name, seg(), &file, &theirs, 6000, 1, Metadata::new())
            .await
            .unwrap_err();
        assert!(matches!(err, RepoError::SplitBrain { .. }), "{err}");
        let key = layout::wal_partial_key(name, seg());
        let dst = dir.path().join("fetched");
        repo.fetch_verified(&key, &dst).await.unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), &segment_bytes(2)[..4000]);
        // Nor does a complete segment that disagrees with the stored partial.
        let mut other = segment_bytes(2);
        other[100] ^= 0xFF;
        let other_path = dir.path().join("other-whole");
        std::fs::write(&other_path, &other).unwrap();
        let err = repo
            .archive_segment(name, seg(), &other_path, 1, Metadata::new())
            .await
            .unwrap_err();
        assert!(matches!(err, RepoError::SplitBrain { .. }), "{err}");
        // Once the complete segment is stored, no partial of it is written any more.
        let whole = dir.path().join("whole");
        std::fs::write(&whole, segment_bytes(2)).unwrap();
        repo.archive_segment(name, seg(), &whole, 1, Metadata::new())
            .await
            .unwrap();
        let file = std::fs::File::open(&ours).unwrap();
        let late = repo
            .archive_partial(name, seg(), &file, &ours, 6000, 1, Metadata::new())
            .await
            .unwrap();
        assert!(late.is_none());
    }

    #[tokio::test]
    async fn a_complete_segment_compresses_only_what_follows_its_stored_partial() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let name = SegmentName::new(TimelineId(1), 5);
        let spool = dir.path().join("000000010000000000000005");
        std::fs::write(&spool, segment_bytes(3)).unwrap();
        let file = std::fs::File::open(&spool).unwrap();
        let half = SEG / 2;
        let partial = repo
            .archive_partial(name, seg(), &file, &spool, half, 3, Metadata::new())
            .await
            .unwrap()
            .expect("stored");
        let whole = repo
            .archive_segment(name, seg(), &spool, 3, Metadata::new())
            .await
            .unwrap();
        let stored = std::fs::read(stored_path(dir.path(), &whole.key)).unwrap();
        let partial_frames = std::fs::read(stored_path(dir.path(), &partial.key)).unwrap();
        // The partial's frame, then one frame of the second half.
        assert!(stored.starts_with(&partial_frames));
        let first = zstd::zstd_safe::find_frame_compressed_size(&stored).unwrap();
        assert_eq!(first, partial_frames.len());
        assert_eq!(
            zstd::decode_all(&stored[first..]).unwrap(),
            &segment_bytes(3)[half as usize..]
        );
        // Read whole, checked against the segment's CRC-32, by us and by the zstd CLI.
        let dst = dir.path().join("fetched");
        let sealed = repo.fetch_verified(&whole.key, &dst).await.unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), segment_bytes(3));
        assert_eq!(sealed.crc32, crc32fast::hash(&segment_bytes(3)));
        let cli = std::process::Command::new("zstd")
            .arg("-dc")
            .arg(stored_path(dir.path(), &whole.key))
            .output()
            .expect("the zstd CLI (scripts/setup.sh installs it)");
        assert!(cli.status.success());
        assert_eq!(cli.stdout, segment_bytes(3));
        // The next segment has no partial: one frame of its own.
        let next = name.next();
        let spool = dir.path().join("000000010000000000000006");
        std::fs::write(&spool, segment_bytes(4)).unwrap();
        let whole = repo
            .archive_segment(next, seg(), &spool, 3, Metadata::new())
            .await
            .unwrap();
        let stored = std::fs::read(stored_path(dir.path(), &whole.key)).unwrap();
        assert_eq!(
            zstd::zstd_safe::find_frame_compressed_size(&stored).unwrap(),
            stored.len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partial_segments_are_replaced_and_history_follows_the_same_bytes_rule() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let name = SegmentName::new(TimelineId(1), 5);
        let data = dir.path().join("partial");
        // The spool file holds more than the prefix being archived (it keeps growing).
        std::fs::write(&data, &segment_bytes(2)[..6000]).unwrap();
        let file = std::fs::File::open(&data).unwrap();
        assert_eq!(repo.stored_through(name, seg()).await.unwrap(), None);
        for (len, end) in [(1000usize, "0/5003E8"), (5000, "0/501388")] {
            let a = repo
                .archive_partial(name, seg(), &file, &data, len as u64, 1, Metadata::new())
                .await
                .unwrap()
                .expect("stored");
            assert_eq!(a.key, "wal/00000001/000000010000000000000005.partial.zst");
            assert_eq!(a.outcome, ArchiveOutcome::Replaced);
            let head = repo.storage.head(&a.key).await.unwrap().unwrap();
            assert_eq!(head.metadata["end-lsn"], end);
            assert_eq!(head.metadata["kind"], "wal-partial");
            assert_eq!(
                repo.stored_through(name, seg()).await.unwrap(),
                Some(end.parse().unwrap()),
                "a stored partial covers the WAL up to its end"
            );
            let dst = dir.path().join("fetched");
            repo.fetch_verified(&a.key, &dst).await.unwrap();
            assert_eq!(std::fs::read(&dst).unwrap(), &segment_bytes(2)[..len]);
        }
        let too_long = repo
            .archive_partial(name, seg(), &file, &data, 7000, 1, Metadata::new())
            .await;
        assert!(too_long.is_err(), "a prefix longer than the file must fail");
        // The same or a shorter prefix adds nothing: nothing is written.
        for len in [5000, 3000] {
            let again = repo
                .archive_partial(name, seg(), &file, &data, len, 1, Metadata::new())
                .await
                .unwrap();
            assert!(again.is_none(), "{len} bytes rewrote the stored 5000");
        }
        repo.remove_partial(name, seg()).await.unwrap();
        repo.remove_partial(name, seg()).await.unwrap();
        let key = layout::wal_partial_key(name, seg());
        assert!(repo.storage.head(&key).await.unwrap().is_none());
        assert_eq!(repo.stored_through(name, seg()).await.unwrap(), None);
        let whole = dir.path().join("000000010000000000000005");
        std::fs::write(&whole, segment_bytes(2)).unwrap();
        repo.archive_segment(name, seg(), &whole, 1, Metadata::new())
            .await
            .unwrap();
        assert_eq!(
            repo.stored_through(name, seg()).await.unwrap(),
            Some(name.end_lsn(seg())),
            "a complete segment covers all of it"
        );

        let history = b"1\t0/3000000\tno recovery target specified\n";
        let h = repo.archive_history(TimelineId(2), history).await.unwrap();
        assert_eq!(
            (h.key.as_str(), h.outcome),
            ("wal/00000002.history", ArchiveOutcome::Created)
        );
        assert_eq!(
            std::fs::read(stored_path(dir.path(), &h.key)).unwrap(),
            history,
            "stored plain"
        );
        let again = repo.archive_history(TimelineId(2), history).await.unwrap();
        assert_eq!(again.outcome, ArchiveOutcome::AlreadyPresent);
        let err = repo
            .archive_history(TimelineId(2), b"other\n")
            .await
            .unwrap_err();
        assert!(matches!(err, RepoError::SplitBrain { .. }));
        let dst = dir.path().join("00000002.history");
        repo.fetch_verified(&h.key, &dst).await.unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), history);
    }

    #[tokio::test]
    async fn identity_is_created_once_and_other_clusters_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        assert_eq!(repo.identity().await.unwrap(), None);
        let mine = RepoIdentity::new(7_301_234_567_890_123_457, 16, 16 << 20);
        assert_eq!(repo.ensure_identity(&mine).await.unwrap(), mine);
        let path = stored_path(dir.path(), IDENTITY_KEY);
        let stored = std::fs::read(&path).unwrap();
        assert!(String::from_utf8_lossy(&stored).contains("\"7301234567890123457\""));
        // Same cluster later: the stored identity (with its original created_at) comes back.
        let later = RepoIdentity::new(mine.system_identifier, 16, 16 << 20);
        assert_eq!(repo.ensure_identity(&later).await.unwrap(), mine);

        let other = RepoIdentity::new(42, 16, 16 << 20);
        let err = repo.ensure_identity(&other).await.unwrap_err();
        assert!(matches!(
            err,
            RepoError::OtherCluster {
                repo_sysid: 7_301_234_567_890_123_457,
                cluster_sysid: 42
            }
        ));
        assert_eq!(
            err.to_string(),
            "this repository belongs to cluster 7301234567890123457, not 42; HINT: use another --repo"
        );
        let err = repo
            .ensure_identity(&RepoIdentity::new(mine.system_identifier, 16, 1 << 20))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RepoError::SegmentSizeMismatch { .. }),
            "{err:?}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            stored,
            "refusals write nothing"
        );
        assert_eq!(repo.storage.list("").await.unwrap().len(), 1);

        let newer = String::from_utf8(stored)
            .unwrap()
            .replace("\"format_version\": 1", "\"format_version\": 2");
        repo.storage
            .put(
                IDENTITY_KEY,
                Body::Bytes(Bytes::from(newer)),
                &Metadata::new(),
            )
            .await
            .unwrap();
        let err = repo.identity().await.unwrap_err();
        assert!(
            matches!(err, RepoError::UnsupportedFormat { version: 2 }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_backup_id_is_claimed_by_one_process_only() {
        use crate::backup::{BackupClaim, BackupId};
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let t = chrono::Utc::now();
        let claim = |token: &str| BackupClaim {
            id: BackupId::from_time(t),
            holder: "test".into(),
            start_time: t,
            token: token.into(),
        };
        assert!(repo.claim_backup(&claim("a")).await.unwrap());
        assert!(
            !repo.claim_backup(&claim("b")).await.unwrap(),
            "taken twice"
        );
        assert!(
            repo.claim_backup(&claim("a")).await.unwrap(),
            "a retried claim is still its own"
        );
        assert!(
            repo.backups().await.unwrap().is_empty(),
            "a claim alone is not a backup"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_backups_with_backup_json_are_listed() {
        use crate::backup::{ArchiveInfo, BackupId, ChunkInfo};
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let t = chrono::Utc::now();
        let id = BackupId::from_time(t);
        let tar = dir.path().join("chunk.tar");
        std::fs::write(&tar, vec![0u8; 10240]).unwrap();
        let key = layout::backup_chunk_key(&id, "base.tar", 0);
        let chunk = repo
            .store_compressed(key.clone(), &tar, 1, meta::KIND_BACKUP_CHUNK)
            .await
            .unwrap();
        // Not complete yet: no backup.json.
        assert!(repo.backups().await.unwrap().is_empty());
        let info = BackupInfo {
            id: id.clone(),
            label: "t".into(),
            system_identifier: 1,
            pg_major: 15,
            timeline: 1,
            start_lsn: Lsn(0x100_0028),
            stop_lsn: Lsn(0x100_0100),
            start_time: t,
            stop_time: t,
            archives: vec![ArchiveInfo {
                name: "base.tar".into(),
                tablespace: None,
                chunks: vec![ChunkInfo {
                    key,
                    raw_size: chunk.sealed.raw_size,
                    stored_size: chunk.sealed.stored_size,
                    crc32: chunk.sealed.crc32,
                    contents: None,
                }],
            }],
            manifest_key: None,
            skipped_files: Vec::new(),
            from_standby: false,
        };
        repo.put_backup_info(&info).await.unwrap();
        assert_eq!(repo.backups().await.unwrap(), vec![info.clone()]);
        // Written once: a different record for the same id is refused.
        let mut other = info.clone();
        other.label = "other".into();
        assert!(matches!(
            repo.put_backup_info(&other).await,
            Err(RepoError::SplitBrain { .. })
        ));
        // A record that lies about its id is refused when listed.
        let wrong = BackupId::from_time(t + chrono::Duration::hours(1));
        let json = serde_json::to_vec(&info).unwrap();
        repo.store_plain(
            layout::backup_info_key(&wrong),
            Body::Bytes(json.clone().into()),
            plain_seal(&json),
            Metadata::new(),
        )
        .await
        .unwrap();
        assert!(matches!(
            repo.backups().await,
            Err(RepoError::BadDocument { .. })
        ));
    }
}
