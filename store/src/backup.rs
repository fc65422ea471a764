//! Base backups in the repository (DESIGN §3):
//!
//! ```text
//! backups/<ID>/data-NNNN.tar.zst          the base tablespace's tar stream, in chunks
//! backups/<ID>/tblspc-<OID>-NNNN.tar.zst  each other tablespace's, in chunks
//! backups/<ID>/backup_manifest            PostgreSQL's own manifest (pg_verifybackup)
//! backups/<ID>/backup.json                this record — written last
//! ```
//! A backup without `backup.json` is incomplete and ignored. Each chunk is a plain zstd
//! object of whole tar entries closed by the end-of-archive blocks, so chunks unpack
//! independently (in parallel) and with the `tar` CLI.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tidemark_protocol::Lsn;

/// A backup's id: its start time, `YYYYMMDDTHHMMSSZ`, which sorts chronologically.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupId(String);

/// Not a backup id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a backup id; HINT: ids look like 20261121T093000Z (see `tidemark list backups`)"
)]
pub struct BadBackupId(pub String);

impl BackupId {
    pub fn from_time(t: DateTime<Utc>) -> BackupId {
        BackupId(t.format("%Y%m%dT%H%M%SZ").to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for BackupId {
    type Err = BadBackupId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ")
            .map(|_| BackupId(s.to_string()))
            .map_err(|_| BadBackupId(s.to_string()))
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for BackupId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for BackupId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::serde_text::deserialize(d)
    }
}

/// One stored chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    pub key: String,
    pub raw_size: u64,
    pub stored_size: u64,
    /// CRC-32 of the uncompressed tar bytes.
    pub crc32: u32,
}

/// One tar archive of the backup: the base tablespace or another one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveInfo {
    /// `base.tar` or `<oid>.tar`, as PostgreSQL names them.
    pub name: String,
    /// Where the tablespace lived on the source server (not for `base.tar`).
    pub tablespace: Option<String>,
    pub chunks: Vec<ChunkInfo>,
}

/// `backup.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub id: BackupId,
    pub label: String,
    #[serde(with = "crate::serde_text")]
    pub system_identifier: u64,
    pub pg_major: u32,
    pub timeline: u32,
    #[serde(with = "crate::serde_text")]
    pub start_lsn: Lsn,
    /// Recovery from this backup is consistent once replay reaches this LSN.
    #[serde(with = "crate::serde_text")]
    pub stop_lsn: Lsn,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub archives: Vec<ArchiveInfo>,
    /// Key of PostgreSQL's `backup_manifest`.
    pub manifest_key: Option<String>,
}

impl BackupInfo {
    pub fn raw_size(&self) -> u64 {
        self.chunks().map(|c| c.raw_size).sum()
    }

    pub fn stored_size(&self) -> u64 {
        self.chunks().map(|c| c.stored_size).sum()
    }

    pub fn chunks(&self) -> impl Iterator<Item = &ChunkInfo> {
        self.archives.iter().flat_map(|a| a.chunks.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ids_sort_by_time_and_refuse_junk() {
        let t = Utc.with_ymd_and_hms(2026, 11, 21, 9, 30, 0).unwrap();
        let id = BackupId::from_time(t);
        assert_eq!(id.as_str(), "20261121T093000Z");
        assert_eq!("20261121T093000Z".parse::<BackupId>(), Ok(id.clone()));
        assert!(BackupId::from_time(t + chrono::Duration::seconds(1)) > id);
        for bad in ["", "latest", "../x", "20261321T093000Z", "20261121T093000"] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn backup_json_round_trips_with_lsns_as_text() {
        let t = Utc.with_ymd_and_hms(2026, 11, 21, 9, 30, 0).unwrap();
        let info = BackupInfo {
            id: BackupId::from_time(t),
            label: "nightly".into(),
            system_identifier: u64::MAX - 1,
            pg_major: 16,
            timeline: 1,
            start_lsn: Lsn(0x1_0000_0028),
            stop_lsn: Lsn(0x1_0000_1000),
            start_time: t,
            stop_time: t,
            archives: vec![ArchiveInfo {
                name: "base.tar".into(),
                tablespace: None,
                chunks: vec![ChunkInfo {
                    key: "backups/20261121T093000Z/data-0000.tar.zst".into(),
                    raw_size: 10,
                    stored_size: 5,
                    crc32: 7,
                }],
            }],
            manifest_key: None,
        };
        let json = serde_json::to_string(&info).unwrap();
        assert!(json.contains("\"start_lsn\":\"1/28\""), "{json}");
        assert!(json.contains("\"system_identifier\":\"18446744073709551614\""));
        assert_eq!(serde_json::from_str::<BackupInfo>(&json).unwrap(), info);
        assert_eq!((info.raw_size(), info.stored_size()), (10, 5));
    }
}
