//! tidemark-restorer: the restore side — `wal-fetch` for PostgreSQL's `restore_command`
//! with its prefetch cache, restore planning, base backup unpacking and recovery, and the
//! application bucket's point-in-time restore.
//!
//! Architecture invariant: never imports `tidemark-archiver`; reaches the repository only
//! through `tidemark-store`, and works without a catalog.

pub mod archived;
pub mod delta;
pub mod journal;
pub mod lineage;
pub mod manifest;
pub mod objects;
pub mod plan;
pub mod prefetch;
pub mod probe;
pub mod recovery_conf;
pub mod restore;
pub mod start;
pub mod target;
pub mod unpack;
pub mod verify;
pub mod wal_fetch;
pub mod xids;

pub use wal_fetch::{wal_fetch, FetchError, FetchOutcome, WalRequest};
