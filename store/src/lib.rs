//! tidemark-store: the repository (layout, storage backends, envelope, identity) and the
//! local SQLite catalog. Architecture invariant: knows nothing of replication.

pub mod backup;
pub mod bucket;
pub mod catalog;
pub mod crashsafe;
pub mod envelope;
pub mod gap;
pub mod group;
pub mod identity;
pub mod layout;
pub mod lease;
pub mod meta;
pub mod objects;
pub mod probe;
pub mod reindex;
pub mod repository;
pub mod retry;
mod serde_text;
mod staged;
pub mod storage;
mod sync_bridge;
pub mod url;
pub mod wal_summary;

pub use envelope::{EnvelopeError, Sealed};
pub use identity::RepoIdentity;
pub use repository::{ArchiveOutcome, ArchivedObject, RepoError, Repository};
pub use storage::{
    Body, GetObject, Metadata, ObjectHead, ObjectInfo, PutOutcome, Storage, StorageError,
};
pub use url::RepoUrl;
