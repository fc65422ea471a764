//! The archiver's errors. Callers at the binary's edge turn them into one-line messages
//! and exit codes.

use tidemark_protocol::replication::ReplicationError;
use tidemark_store::catalog::CatalogError;
use tidemark_store::repository::RepoError;

use crate::spool::{AppendError, SpoolError};

#[derive(Debug, thiserror::Error)]
pub enum ArchiverError {
    /// Talking to PostgreSQL failed.
    #[error(transparent)]
    Postgres(#[from] ReplicationError),
    /// The repository refused or failed an operation.
    #[error(transparent)]
    Repository(#[from] RepoError),
    /// A repository lease could not be taken.
    #[error(transparent)]
    Lease(#[from] tidemark_store::lease::LeaseError),
    /// The local catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The local spool failed (disk full, permissions...).
    #[error("{0}; HINT: check the spool directory's disk space and permissions (--spool)")]
    Spool(#[from] SpoolError),
    /// Received WAL did not continue what was stored.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// `stream` was pointed at a repository that `init` never prepared.
    #[error("repository {url} is not initialised; HINT: run `tidemark init` with the same --repo and --pg first")]
    NotInitialised { url: String },
    /// The server no longer has the WAL streaming must resume from: the archive would have
    /// a gap (slot dropped or invalidated by `max_slot_wal_keep_size`).
    #[error("the server no longer has WAL from {from}{}, so the archive has a gap there ({source}); HINT: take a new base backup, and check max_slot_wal_keep_size and that nobody dropped the slot (after a failover: keep the slot on every member, see docs/operations.md)", to.map(|to| format!(" up to {to}, where the oldest WAL it still has begins")).unwrap_or_default())]
    WalRemoved {
        from: tidemark_protocol::Lsn,
        /// Where the WAL the server still has begins, once found: the gap is `from..to`.
        to: Option<tidemark_protocol::Lsn>,
        source: Box<ReplicationError>,
    },
    /// The base backup's tar stream could not be cut into chunks.
    #[error("the base backup stream is not a tar archive tidemark can split: {0}")]
    Tar(#[from] crate::tar_split::TarError),
    /// The WAL a new backup needs did not reach the repository in time.
    #[error("the WAL that makes the backup consistent (up to {lsn}, in {key}) was not archived within {waited:?}; the backup is incomplete and will be ignored; HINT: is `tidemark stream` running for this cluster (for a standby's backup: streaming from its primary)?")]
    WalNotArchived {
        key: String,
        lsn: tidemark_protocol::Lsn,
        waited: std::time::Duration,
    },
    /// `backup --from-standby` reached a server that is not in recovery.
    #[error("--from-standby was given, but the server is a primary (not in recovery); nothing was written; HINT: point --pg at a standby, or drop --from-standby to back up the primary")]
    NotAStandby,
    /// The standby being backed up was promoted (or switched timeline) while the backup ran.
    #[error("the standby was promoted while the backup ran ({reason}), so the backup is not consistent on one timeline; the backup is incomplete and will be ignored; HINT: take a new backup, of the new primary or of one of its standbys")]
    StandbyPromoted { reason: String },
    /// Every id of the backup's start second is taken (claimed by other backups).
    #[error("all {} backup ids of the second {second} are taken by other backups; HINT: start backups one at a time", tidemark_store::backup::IDS_PER_SECOND)]
    BackupIdsExhausted {
        second: tidemark_store::backup::BackupId,
    },
    /// The server's timeline history does not contain the archived timeline: it is
    /// another cluster's history (or the archive's timeline was abandoned).
    #[error("the server is on timeline {server}, whose history does not pass through timeline {archived} archived here; HINT: archive it into a new repository, or restore from this one first")]
    DivergentTimeline {
        archived: tidemark_protocol::TimelineId,
        server: tidemark_protocol::TimelineId,
    },
    /// The server is on a timeline older than the newest the repository follows: the old
    /// primary back after a failover (split brain). Nothing is archived from it.
    #[error("{host} is on timeline {server}, older than timeline {archived} that the repository already follows: it is the old primary back after a failover (split brain), so nothing was archived from it; HINT: point tidemark at the new primary (several hosts in --pg with target_session_attrs=read-write find it), and rebuild {host} as a standby of the new primary (pg_rewind, or a restore)")]
    OldTimeline {
        host: String,
        server: tidemark_protocol::TimelineId,
        archived: tidemark_protocol::TimelineId,
    },
    /// The server sent a history file that cannot be read.
    #[error("the server's history file of timeline {timeline} is malformed: {reason}")]
    BadHistory {
        timeline: tidemark_protocol::TimelineId,
        reason: String,
    },
    /// A second signal arrived while uploads were still finishing.
    #[error("interrupted again while finishing uploads; {pending} segment(s) stay in the spool and are uploaded on the next start")]
    Interrupted { pending: usize },
    /// The application bucket could not be read.
    #[error("application bucket {bucket}")]
    Bucket {
        bucket: String,
        #[source]
        source: tidemark_store::StorageError,
    },
    /// Version tracking was asked of a bucket without versioning.
    #[error("bucket {bucket} does not have versioning enabled (it is {state}), so its old versions are not kept and cannot be recorded; nothing was recorded; HINT: enable it (aws s3api put-bucket-versioning --bucket {bucket} --versioning-configuration Status=Enabled) or track with --mode copy, which copies the objects into the repository")]
    VersioningOff { bucket: String, state: &'static str },
    /// Another archiver already streams into this repository, spool or catalog.
    #[error("another archiver holds the {what}: {holder}; nothing was touched; HINT: run one `tidemark stream` per repository; stop the other one first")]
    SecondArchiver { what: String, holder: String },
    /// A local lock file could not be created or locked.
    #[error("cannot lock {}: {source}; HINT: check the directory's permissions", path.display())]
    LocalLock {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The server could choose tidemark as a synchronous standby, and commits would then
    /// wait for it.
    #[error("synchronous_standby_names = '{setting}' lets the server choose this archiver (application_name '{application_name}') as a synchronous standby, so commits could wait for it; HINT: name the standbys explicitly in synchronous_standby_names, or give tidemark an application_name it does not list (application_name=... in --pg), or pass --synchronous to acknowledge WAL once it is fsync'd in the spool (see docs/operations.md)")]
    SynchronousStandby {
        setting: String,
        application_name: String,
    },
    /// A background task died (a bug).
    #[error("cannot listen on {addr} for metrics: {source}; HINT: choose another --metrics-listen address (is another archiver using this one?)")]
    MetricsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },

    #[error("group member {cluster}: {source}")]
    GroupMember {
        cluster: String,
        source: Box<ArchiverError>,
    },
    #[error("the server is cluster {server}, but its repository holds cluster {repository}; nothing was marked; HINT: check the member's pg and repo in the config file")]
    GroupWrongCluster { server: u64, repository: u64 },
    #[error("group {group} already has a mark named {name}; nothing was marked; HINT: choose another --name (`tidemark group list {group}` shows the marks)")]
    MarkExists { group: String, name: String },

    #[error("internal task failed: {0}")]
    Task(String),
}

impl ArchiverError {
    /// Failures that a reconnect may cure: the connection to PostgreSQL dropped or could
    /// not be made for network reasons.
    pub fn is_connection_loss(&self) -> bool {
        matches!(self, ArchiverError::Postgres(e) if e.is_connection_failure())
    }

    /// The server reached is not one to archive into this repository: another cluster, an
    /// older timeline (split brain), or a history that does not continue the archive's.
    pub fn is_wrong_server(&self) -> bool {
        matches!(
            self,
            ArchiverError::OldTimeline { .. }
                | ArchiverError::DivergentTimeline { .. }
                | ArchiverError::Repository(RepoError::OtherCluster { .. })
        )
    }
}
