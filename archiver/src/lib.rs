//! tidemark-archiver: the archiving jobs — `init`, `stream` (replication -> spool ->
//! compress -> upload -> catalog -> slot feedback), `backup`, `objects track`, `expire`
//! (the retention window) and `status`.
//!
//! Architecture invariant: the archiver never imports the restorer; it reaches the
//! repository only through `tidemark-store` and PostgreSQL only through
//! `tidemark-protocol`.

mod acks;
pub mod backup;
pub mod backup_source;
pub mod check;
pub mod cluster;
pub mod error;
mod events;
pub mod expire;
pub mod group_mark;
pub mod init;
pub mod metrics;
pub mod objects_track;
mod single_writer;
pub mod spool;
pub mod status;
pub mod stream;
mod tar_split;
mod uploads;

pub use error::ArchiverError;
