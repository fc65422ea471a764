//! Every repository key, in one place (DESIGN §3, repository format version 1).

use tidemark_protocol::{SegmentName, TimelineId, WalSegmentSize};

/// The repository identity file.
pub const IDENTITY_KEY: &str = "tidemark.json";
/// Where WAL and timeline history files live.
pub const WAL_PREFIX: &str = "wal/";

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

/// `wal/<TLI>.history`: a timeline history file (stored uncompressed).
pub fn history_key(tli: TimelineId) -> String {
    format!("{WAL_PREFIX}{}", tli.history_file_name())
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
}
