//! tidemark-protocol: PostgreSQL's bytes and wire.
//!
//! LSNs, timelines, segment names, transaction ids, history files, connection strings and the
//! physical replication client. Architecture invariant: this crate knows
//! nothing of S3, SQLite or tidemark's policies; it speaks PostgreSQL only.

pub mod conninfo;
pub mod crc32c;
pub mod history;
pub mod lsn;
pub mod os_user;
pub mod pgtime;
pub mod replication;
pub mod segment;
pub mod setting;
pub mod sync_standby;
pub mod timeline;
pub mod wal;
pub mod xid;

pub use conninfo::{
    ConnInfo, ConnInfoError, Endpoint, Host, RootCert, SslMode, TargetSessionAttrs,
};
pub use history::{parse_history, HistoryEntry, HistoryError};
pub use lsn::Lsn;
pub use replication::{
    BackupEvent, BaseBackup, BaseBackupOptions, ReplicationClient, ReplicationError,
    ReplicationStream, ServerError, SlotInfo, SqlSession, StartOutcome, StreamMessage,
    SystemIdentity, Tablespace,
};
pub use segment::{SegmentName, WalSegmentSize};
pub use timeline::TimelineId;
pub use wal::{WalDecodeError, WalDecoder, WalEvent, WalRecord};
