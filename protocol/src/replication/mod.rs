//! The physical replication client: a walsender connection (`ReplicationClient`) and
//! its CopyBoth WAL stream (`ReplicationStream`) and BASE_BACKUP's archive stream
//! (`BaseBackup`), plus a plain SQL session (`SqlSession`), spoken over `postgres-protocol`'s
//! message codecs on a tokio socket.

mod base_backup;
mod client;
mod connection;
mod error;
mod query;
mod sql;
mod startup;
mod stream;
mod tls;

pub use base_backup::{skipped_file, BackupEvent, BaseBackup, BaseBackupOptions, Tablespace};
pub use client::{ReplicationClient, SlotInfo, StartOutcome, SystemIdentity};
pub use error::{
    ReplicationError, ServerError, SQLSTATE_DUPLICATE_OBJECT, SQLSTATE_INSUFFICIENT_PRIVILEGE,
    SQLSTATE_INVALID_AUTHORIZATION, SQLSTATE_INVALID_PASSWORD,
};
pub use sql::SqlSession;
pub use stream::{ReplicationStream, StreamMessage};
