//! tidemark-protocol: PostgreSQL's bytes and wire.
//!
//! LSNs, timelines, segment names, history files, connection strings and the
//! physical replication client. Architecture invariant: this crate knows
//! nothing of S3, SQLite or tidemark's policies; it speaks PostgreSQL only.

pub mod lsn;
pub mod segment;
pub mod timeline;

pub use lsn::Lsn;
pub use segment::{SegmentName, WalSegmentSize};
pub use timeline::TimelineId;
