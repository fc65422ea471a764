//! Every repository key, in one place (DESIGN §3, repository format version 1).

use tidemark_protocol::{SegmentName, TimelineId, WalSegmentSize};

use crate::backup::BackupId;

/// The repository identity file.
pub const IDENTITY_KEY: &str = "tidemark.json";
/// Where WAL and timeline history files live.
pub const WAL_PREFIX: &str = "wal/";

/// Where base backups live.
pub const BACKUPS_PREFIX: &str = "backups/";
/// The record that completes a backup, last in its directory.
pub const BACKUP_INFO_FILE: &str = "backup.json";

const ZST: &str = ".zst";
const PARTIAL_ZST: &str = ".partial.zst";

/// `wal/<TLI>/`: the prefix holding a timeline's segments.
pub fn wal_timeline_prefix(tli: TimelineId) -> String {
    format!("{WAL_PREFIX}{}/", tli.hex())
}

/// `wal/<TLI>/<SEGNAME>.zst`: a complete segment.
pub fn wal_segment_key(name: SegmentName, seg: WalSegmentSize) -> String {
    format!(
        "{}{}{ZST}",
        wal_timeline_prefix(name.timeline),
        name.file_name(seg)
    )
}

/// `wal/<TLI>/<SEGNAME>.partial.zst`: the newest partial segment.
pub fn wal_partial_key(name: SegmentName, seg: WalSegmentSize) -> String {
    format!(
        "{}{}{PARTIAL_ZST}",
        wal_timeline_prefix(name.timeline),
        name.file_name(seg)
    )
}

/// `wal/<TLI>.complete`: the archiver's proof that the archive held all of the server's
/// WAL on this timeline up to an LSN at a server time (see `archiver::stream`).
pub fn wal_complete_key(tli: TimelineId) -> String {
    format!("{WAL_PREFIX}{}.complete", tli.hex())
}

/// `wal/<TLI>.history`: a timeline history file (stored uncompressed).
pub fn history_key(tli: TimelineId) -> String {
    format!("{WAL_PREFIX}{}", tli.history_file_name())
}

/// The timeline whose history file `key` is, or `None` for any other key.
pub fn parse_history_key(key: &str) -> Option<TimelineId> {
    let tli = key.strip_prefix(WAL_PREFIX)?.strip_suffix(".history")?;
    TimelineId::from_hex(tli).ok()
}

/// `backups/<ID>/`: everything of one backup, its claim included.
pub fn backup_dir(id: &BackupId) -> String {
    format!("{BACKUPS_PREFIX}{id}/")
}

/// `backups/<ID>/claim.json`: who took the id; written first, only if absent.
pub fn backup_claim_key(id: &BackupId) -> String {
    format!("{BACKUPS_PREFIX}{id}/claim.json")
}

/// `backups/<ID>/backup.json`.
pub fn backup_info_key(id: &BackupId) -> String {
    format!("{BACKUPS_PREFIX}{id}/{BACKUP_INFO_FILE}")
}

/// `backups/<ID>/backup_manifest`: PostgreSQL's manifest, stored as sent.
pub fn backup_manifest_key(id: &BackupId) -> String {
    format!("{BACKUPS_PREFIX}{id}/backup_manifest")
}

/// `backups/<ID>/data-NNNN.tar.zst` for PostgreSQL's `base.tar`, and
/// `backups/<ID>/tblspc-<OID>-NNNN.tar.zst` for `<OID>.tar`.
pub fn backup_chunk_key(id: &BackupId, archive: &str, n: u32) -> String {
    let stem = match archive.strip_suffix(".tar") {
        Some("base") | None => "data".to_string(),
        Some(oid) => format!("tblspc-{oid}"),
    };
    format!("{BACKUPS_PREFIX}{id}/{stem}-{n:04}.tar{ZST}")
}

/// A WAL segment key, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalKey {
    pub name: SegmentName,
    pub partial: bool,
}

/// The segment a key names, or `None` for any other key (history files included).
pub fn parse_wal_key(key: &str, seg: WalSegmentSize) -> Option<WalKey> {
    let rest = key.strip_prefix(WAL_PREFIX)?;
    let (tli_dir, file) = rest.split_once('/')?;
    let (stem, partial) = match file.strip_suffix(PARTIAL_ZST) {
        Some(stem) => (stem, true),
        None => (file.strip_suffix(ZST)?, false),
    };
    let name = SegmentName::parse(stem, seg).ok()?;
    if TimelineId::from_hex(tli_dir).ok()? != name.timeline {
        return None;
    }
    Some(WalKey { name, partial })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_their_reverse() {
        let seg = WalSegmentSize::new(16 << 20).unwrap();
        let name = SegmentName::new(TimelineId(0x1a), 0x1_03);
        let key = wal_segment_key(name, seg);
        assert_eq!(key, "wal/0000001A/0000001A0000000100000003.zst");
        assert_eq!(
            parse_wal_key(&key, seg),
            Some(WalKey {
                name,
                partial: false
            })
        );
        let key = wal_partial_key(name, seg);
        assert_eq!(key, "wal/0000001A/0000001A0000000100000003.partial.zst");
        assert_eq!(
            parse_wal_key(&key, seg),
            Some(WalKey {
                name,
                partial: true
            })
        );
        assert_eq!(history_key(TimelineId(2)), "wal/00000002.history");
        assert_eq!(
            parse_history_key("wal/00000002.history"),
            Some(TimelineId(2))
        );
        assert_eq!(parse_history_key("wal/00000002/00000002.history"), None);
        assert_eq!(wal_timeline_prefix(TimelineId(2)), "wal/00000002/");

        let one_mb = WalSegmentSize::new(1 << 20).unwrap();
        let key = wal_segment_key(SegmentName::new(TimelineId(1), 0x10ff), one_mb);
        assert_eq!(key, "wal/00000001/0000000100000001000000FF.zst");
        assert_eq!(parse_wal_key(&key, one_mb).unwrap().name.segno, 0x10ff);
    }

    #[test]
    fn other_keys_are_not_segments() {
        let seg = WalSegmentSize::new(16 << 20).unwrap();
        for key in [
            "tidemark.json",
            "wal/00000002.history",
            "wal/00000001/000000010000000000000001",
            "wal/00000001/000000010000000000000001.gz",
            "wal/00000002/000000010000000000000001.zst",
            "wal/00000001/000000010000000000000100.zst",
            "backups/x/wal/00000001/000000010000000000000001.zst",
            "wal/00000001/sub/000000010000000000000001.zst",
        ] {
            assert_eq!(parse_wal_key(key, seg), None, "{key}");
        }
    }

    #[test]
    fn backup_keys() {
        let id: BackupId = "20261121T093000Z".parse().unwrap();
        assert_eq!(backup_info_key(&id), "backups/20261121T093000Z/backup.json");
        assert_eq!(backup_claim_key(&id), "backups/20261121T093000Z/claim.json");
        assert_eq!(backup_dir(&id), "backups/20261121T093000Z/");
        assert_eq!(
            backup_manifest_key(&id),
            "backups/20261121T093000Z/backup_manifest"
        );
        assert_eq!(
            backup_chunk_key(&id, "base.tar", 7),
            "backups/20261121T093000Z/data-0007.tar.zst"
        );
        assert_eq!(
            backup_chunk_key(&id, "16385.tar", 0),
            "backups/20261121T093000Z/tblspc-16385-0000.tar.zst"
        );
    }
}
