//! WAL decoding: from raw WAL bytes (as streamed or as segment files) to the
//! commit and abort timestamps and restore points that point-in-time restore
//! resolves targets with, without replaying anything.
//!
//! Architecture invariant: the rest of tidemark has no knowledge of WAL
//! layout; every page, record and version detail lives here, and every
//! difference between PostgreSQL majors lives in `format`.

mod assembly;
mod cursor;
mod decoder;
mod error;
mod event;
mod format;
mod page;
mod record;
#[cfg(test)]
mod testing;
mod xact;

pub use decoder::WalDecoder;
pub use error::WalDecodeError;
pub use event::{WalEvent, WalRecord};
