//! `WalDecodeError`: WAL bytes that cannot be valid WAL. The end of valid WAL
//! (zeroed or recycled pages, a zeroed record header) is not an error; the
//! decoder just stops there.

use crate::lsn::Lsn;

/// Why WAL could not be decoded. Every variant names the LSN it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalDecodeError {
    /// The decoder was created at an LSN that is not a segment boundary.
    #[error("cannot decode WAL from {start}: decoding must start at a segment boundary")]
    MisalignedStart { start: Lsn },
    /// A page at the expected address has a header that is malformed or
    /// inconsistent with the earlier pages (flags, segment size, block size,
    /// system identifier, timeline going backwards).
    #[error(
        "invalid WAL page header at {page}: {problem}; the WAL is corrupt or from another cluster"
    )]
    InvalidPageHeader { page: Lsn, problem: String },
    /// The page magic is not that of a PostgreSQL major this decoder reads.
    #[error("WAL page at {page} has magic {magic:#06X}, not PostgreSQL 14 to 18; only those majors are supported")]
    UnsupportedVersion { page: Lsn, magic: u16 },
    /// A record runs past the end of a page, but the next page does not
    /// continue it (no continuation flag, or a different remaining length).
    #[error("WAL page at {page} does not continue the record in progress: {problem}; the WAL is corrupt")]
    BrokenContinuation { page: Lsn, problem: String },
    /// A page says it continues a record, but the previous record ended
    /// before it.
    #[error("WAL page at {page} continues a record, but none is in progress; the WAL is corrupt")]
    UnexpectedContinuation { page: Lsn },
    /// A record header declares a total length no record can have.
    #[error("WAL record at {lsn} has impossible length {len}; the WAL is corrupt")]
    InvalidRecordLength { lsn: Lsn, len: u32 },
    /// A record does not link back to the record before it.
    #[error("WAL record at {lsn} links back to {found} instead of {expected}; the WAL is corrupt or out of order")]
    InvalidPrevLink { lsn: Lsn, expected: Lsn, found: Lsn },
    /// A record's CRC-32C does not match its bytes.
    #[error("WAL record at {lsn} fails its CRC-32C check (stored {stored:08X}, computed {computed:08X}); the WAL is corrupt")]
    CrcMismatch {
        lsn: Lsn,
        stored: u32,
        computed: u32,
    },
    /// A record passed its CRC check but its contents do not fit the layout
    /// of its kind (block headers, transaction or restore point data).
    #[error("WAL record at {lsn} is malformed: {problem}; the WAL is corrupt or from an unsupported version")]
    MalformedRecord { lsn: Lsn, problem: &'static str },
    /// A commit, abort or restore point time that no calendar date can hold.
    #[error("WAL record at {lsn} has timestamp {micros} (microseconds since 2000-01-01), out of range; the WAL is corrupt")]
    TimestampOutOfRange { lsn: Lsn, micros: i64 },
}
