//! Names and formats of the object metadata that `reindex` relies on (DESIGN §3): S3 user
//! metadata (`x-amz-meta-*`) or the filesystem sidecar.

use crate::storage::Metadata;

/// What the object is: one of the `KIND_*` values.
pub const KIND: &str = "kind";
/// A complete WAL segment.
pub const KIND_WAL: &str = "wal";
/// The newest partial WAL segment of a timeline.
pub const KIND_WAL_PARTIAL: &str = "wal-partial";
/// A timeline history file.
pub const KIND_HISTORY: &str = "history";
/// A chunk of a base backup's tar stream.
pub const KIND_BACKUP_CHUNK: &str = "backup-chunk";
/// A backup's `backup.json`.
pub const KIND_BACKUP_INFO: &str = "backup-info";
/// A backup's `claim.json`: which process took the id.
pub const KIND_BACKUP_CLAIM: &str = "backup-claim";
/// PostgreSQL's `backup_manifest` of a backup.
pub const KIND_BACKUP_MANIFEST: &str = "backup-manifest";
/// The archiver's archive-complete marker of a timeline.
pub const KIND_WAL_COMPLETE: &str = "wal-complete";
/// One pass of application-bucket tracking (`objects/<bucket>/passes/…`).
pub const KIND_OBJECT_PASS: &str = "object-pass";
/// A copy of an application object, content-addressed (`objects/<bucket>/blobs/…`).
pub const KIND_OBJECT_BLOB: &str = "object-blob";
/// A known gap in the archive under `gaps/`.
pub const KIND_WAL_GAP: &str = "wal-gap";
/// A group mark under `groups/`.
pub const KIND_GROUP_MARK: &str = "group-mark";
/// A lease under `locks/`.
pub const KIND_LEASE: &str = "lease";
/// The short-lived object `init` writes to check conditional puts (`locks/probe-…`).
pub const KIND_PROBE: &str = "probe";
/// The repository identity file.
pub const KIND_IDENTITY: &str = "identity";
/// Timeline, decimal.
pub const TIMELINE: &str = "timeline";
/// First LSN covered, `X/Y`.
pub const START_LSN: &str = "start-lsn";
/// LSN just past the last byte covered, `X/Y`.
pub const END_LSN: &str = "end-lsn";
/// Uncompressed size in bytes, decimal.
pub const RAW_SIZE: &str = "raw-size";
/// CRC-32 (IEEE, as crc32fast computes it) of the uncompressed bytes, 8 lowercase hex digits.
pub const CRC32: &str = "crc32";

/// The `CRC32` value for `crc`.
pub fn format_crc32(crc: u32) -> String {
    format!("{crc:08x}")
}

/// The CRC-32 recorded in `meta`, if present and well formed.
pub fn crc32(meta: &Metadata) -> Option<u32> {
    let v = meta.get(CRC32)?;
    if v.len() != 8 {
        return None;
    }
    u32::from_str_radix(v, 16).ok()
}

/// The end LSN recorded in `meta`, if present and well formed.
pub fn end_lsn(meta: &Metadata) -> Option<tidemark_protocol::Lsn> {
    meta.get(END_LSN)?.parse().ok()
}

/// The uncompressed size recorded in `meta`, if present and well formed.
pub fn raw_size(meta: &Metadata) -> Option<u64> {
    meta.get(RAW_SIZE)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_size_round_trip() {
        let mut m = Metadata::new();
        assert_eq!(crc32(&m), None);
        m.insert(CRC32.into(), format_crc32(0x0a1b_2c3d));
        m.insert(RAW_SIZE.into(), "16777216".into());
        assert_eq!(m[CRC32], "0a1b2c3d");
        assert_eq!(crc32(&m), Some(0x0a1b_2c3d));
        assert_eq!(raw_size(&m), Some(16 << 20));
        for bad in ["", "123", "zzzzzzzz", "0a1b2c3d0"] {
            m.insert(CRC32.into(), bad.into());
            assert_eq!(crc32(&m), None, "{bad}");
        }
    }
}
