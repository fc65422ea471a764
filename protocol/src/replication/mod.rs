//! The physical replication client: a walsender connection (`ReplicationClient`) and
//! its CopyBoth WAL stream (`ReplicationStream`), spoken over `postgres-protocol`'s
//! message codecs on a tokio socket.

mod client;
mod connection;
mod error;
mod query;
mod startup;
mod stream;
mod tls;

pub use client::{ReplicationClient, SlotInfo, StartOutcome, SystemIdentity};
pub use error::{
    ReplicationError, ServerError, SQLSTATE_DUPLICATE_OBJECT, SQLSTATE_INSUFFICIENT_PRIVILEGE,
    SQLSTATE_INVALID_AUTHORIZATION, SQLSTATE_INVALID_PASSWORD,
};
pub use stream::{ReplicationStream, StreamMessage};
