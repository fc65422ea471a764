//! Base backups in the repository (DESIGN §3):
//!
//! ```text
//! backups/<ID>/claim.json                 who took the id — written first, only if absent
//! backups/<ID>/data-NNNN.tar.zst          the base tablespace's tar stream, in chunks
//! backups/<ID>/tblspc-<OID>-NNNN.tar.zst  each other tablespace's, in chunks
//! backups/<ID>/backup_manifest            PostgreSQL's own manifest (pg_verifybackup)
//! backups/<ID>/backup.json                this record — written last
//! ```
//! A backup without `backup.json` is incomplete and ignored. Two backups started in the same
//! second never share a directory: each claims its id before writing anything, and the
//! loser takes the next id of that second (`…Z-01`, `…Z-02`, …). Each chunk is a plain zstd
//! object of whole tar entries closed by the end-of-archive blocks, so chunks unpack
//! independently (in parallel) and with the `tar` CLI.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tidemark_protocol::Lsn;

/// A backup's id: its start time, `YYYYMMDDTHHMMSSZ`, then `-NN` (01 to 99) for the later
/// backups started in the same second. Ids sort chronologically.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupId(String);

/// Not a backup id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a backup id; HINT: ids look like 20261121T093000Z or 20261121T093000Z-01 (see `tidemark list backups`)"
)]
pub struct BadBackupId(pub String);

/// Most backups one second can hold: the plain id and `-01` to `-99`.
pub const IDS_PER_SECOND: usize = 100;

const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

impl BackupId {
    pub fn from_time(t: DateTime<Utc>) -> BackupId {
        BackupId(t.format(TIME_FORMAT).to_string())
    }

    /// The ids of a backup started at `t`, in the order to claim them: the plain one,
    /// then `-01` to `-99`.
    pub fn candidates(t: DateTime<Utc>) -> impl Iterator<Item = BackupId> {
        let base = BackupId::from_time(t).0;
        (0..IDS_PER_SECOND).map(move |n| match n {
            0 => BackupId(base.clone()),
            n => BackupId(format!("{base}-{n:02}")),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for BackupId {
    type Err = BadBackupId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadBackupId(s.to_string());
        let (time, suffix) = match s.split_once('-') {
            Some((time, n)) => (time, Some(n)),
            None => (s, None),
        };
        chrono::NaiveDateTime::parse_from_str(time, TIME_FORMAT).map_err(|_| bad())?;
        // The plain form only as chrono prints it (no single-digit fields).
        if time.len() != 16 {
            return Err(bad());
        }
        if let Some(n) = suffix {
            let digits = n.len() == 2 && n.bytes().all(|b| b.is_ascii_digit());
            if !digits || n == "00" {
                return Err(bad());
            }
        }
        Ok(BackupId(s.to_string()))
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

/// `claim.json`: the process that took a backup id. Created only if absent, before any
/// chunk, so of two backups started in the same second exactly one writes under the id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupClaim {
    pub id: BackupId,
    /// The taking process: what, on which host, with which pid.
    pub holder: String,
    pub start_time: DateTime<Utc>,
    /// Random, so that a claim is recognised as one's own after a retried request.
    pub token: String,
}

impl BackupClaim {
    /// A claim of `id` by `holder` (see `lease::holder`) with a fresh token.
    pub fn new(id: BackupId, holder: String, start_time: DateTime<Utc>) -> BackupClaim {
        BackupClaim {
            id,
            holder,
            start_time,
            token: format!("{:016x}", rand::random::<u64>()),
        }
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
    /// The entries the chunk holds (absent in backups of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<ChunkContents>,
}

/// What one chunk holds, by path in its tar archive, so that `restore --delta` can leave
/// out a chunk whose every entry is already in place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkContents {
    /// Regular files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// Directories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<String>,
    /// Entries of any other kind, or whose path is not plain (links, extension headers,
    /// names that are not UTF-8 or leave the archive): a delta always unpacks their chunk.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub others: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The kind of a tar entry, as [`ChunkContents`] counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Other,
}

impl ChunkContents {
    /// Count one entry: `path` as the header names it (`None` when it is not UTF-8).
    /// A path is kept in its plain form (`a/b`, no `./`, no trailing `/`).
    pub fn add(&mut self, path: Option<&str>, kind: EntryKind) {
        match (path.and_then(plain_path), kind) {
            (Some(p), EntryKind::File) => self.files.push(p),
            (Some(p), EntryKind::Dir) => self.dirs.push(p),
            _ => self.others += 1,
        }
    }
}

/// A tar entry's path in its plain form (`a/b`: no `./`, no doubled or trailing `/`), or
/// `None` when it is empty, absolute or climbs out with `..`.
pub fn plain_path(path: &str) -> Option<String> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let plain = !parts.is_empty() && !parts.contains(&"..") && !path.starts_with('/');
    plain.then(|| parts.join("/"))
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
    /// Files the server left out of the backup, as it named them (relative to the data
    /// directory for the base tablespace): BASE_BACKUP skips symlinks outside
    /// `pg_tblspc` (an admin's `server.crt -> /etc/ssl/…`) and other special files with
    /// a warning. A restore lacks them; `plan` and `restore` say so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_files: Vec<String>,
    /// Taken from a standby (BASE_BACKUP on a server in recovery): its consistency WAL
    /// came from the archive of the primary's stream, not from a segment switch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_standby: bool,
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
    fn chunk_contents_hold_plain_paths_and_count_the_rest() {
        let mut c = ChunkContents::default();
        c.add(Some("./base/1/"), EntryKind::Dir);
        c.add(Some("base//1/112"), EntryKind::File);
        c.add(Some("PG_VERSION"), EntryKind::File);
        c.add(Some("pg_tblspc/16400/"), EntryKind::Other);
        c.add(None, EntryKind::File);
        c.add(Some("../etc/passwd"), EntryKind::File);
        c.add(Some("/etc/passwd"), EntryKind::File);
        c.add(Some("./"), EntryKind::Dir);
        assert_eq!(c.files, ["base/1/112", "PG_VERSION"]);
        assert_eq!(c.dirs, ["base/1"]);
        assert_eq!(c.others, 5);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ChunkContents>(&json).unwrap(), c);
    }

    #[test]
    fn ids_sort_by_time_and_refuse_junk() {
        let t = Utc.with_ymd_and_hms(2026, 11, 21, 9, 30, 0).unwrap();
        let id = BackupId::from_time(t);
        assert_eq!(id.as_str(), "20261121T093000Z");
        assert_eq!("20261121T093000Z".parse::<BackupId>(), Ok(id.clone()));
        assert!(BackupId::from_time(t + chrono::Duration::seconds(1)) > id);
        for bad in [
            "",
            "latest",
            "../x",
            "20261321T093000Z",
            "20261121T093000",
            "20261121T093000Z-",
            "20261121T093000Z-00",
            "20261121T093000Z-1",
            "20261121T093000Z-100",
            "20261121T093000Z-0a",
            "20261121T093000Z-01/..",
        ] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_of_one_second_are_distinct_valid_and_sort_between_the_seconds() {
        let t = Utc.with_ymd_and_hms(2026, 11, 21, 9, 30, 0).unwrap();
        let ids: Vec<BackupId> = BackupId::candidates(t).collect();
        assert_eq!(ids.len(), IDS_PER_SECOND);
        assert_eq!(ids[0], BackupId::from_time(t));
        assert_eq!(ids[1].as_str(), "20261121T093000Z-01");
        assert_eq!(ids[99].as_str(), "20261121T093000Z-99");
        for id in &ids {
            assert_eq!(id.as_str().parse::<BackupId>().as_ref(), Ok(id));
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids, "later claims sort later");
        let next_second = BackupId::from_time(t + chrono::Duration::seconds(1));
        assert!(ids[99] < next_second);
        assert!(BackupId::from_time(t - chrono::Duration::seconds(1)) < ids[0]);
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
                    contents: None,
                }],
            }],
            manifest_key: None,
            skipped_files: Vec::new(),
            from_standby: false,
        };
        let json = serde_json::to_string(&info).unwrap();
        assert!(json.contains("\"start_lsn\":\"1/28\""), "{json}");
        assert!(
            !json.contains("from_standby"),
            "written only when true: {json}"
        );
        assert!(json.contains("\"system_identifier\":\"18446744073709551614\""));
        assert_eq!(serde_json::from_str::<BackupInfo>(&json).unwrap(), info);
        assert_eq!((info.raw_size(), info.stored_size()), (10, 5));
        assert!(
            !json.contains("contents"),
            "written only when known: {json}"
        );
        let standby = BackupInfo {
            from_standby: true,
            ..info
        };
        let json = serde_json::to_string(&standby).unwrap();
        assert!(json.contains("\"from_standby\":true"), "{json}");
        assert_eq!(serde_json::from_str::<BackupInfo>(&json).unwrap(), standby);
    }
}
