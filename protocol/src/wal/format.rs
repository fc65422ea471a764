//! `WalFormat`: the PostgreSQL major that wrote a WAL stream, known from the
//! page magic (`XLOG_PAGE_MAGIC`), and every layout difference between the
//! majors this decoder reads (14 to 18). Nothing else in `wal` branches on
//! the version.

/// `XLOG_PAGE_MAGIC` of each supported major.
const MAGICS: [(u16, u32); 5] = [
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
    (0xD118, 18),
];

/// PostgreSQL 14's only "compressed page image" flag in `bimg_info`.
const BKPIMAGE_IS_COMPRESSED_PG14: u8 = 0x02;
/// PostgreSQL 15+: pglz, lz4 or zstd page image compression (0x02 now means "apply").
const BKPIMAGE_COMPRESS_ANY_PG15: u8 = 0x04 | 0x08 | 0x10;

/// The WAL format of one PostgreSQL major version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalFormat {
    major: u32,
}

impl WalFormat {
    /// The format whose pages start with `magic`, if it is a supported one.
    pub(crate) fn from_magic(magic: u16) -> Option<WalFormat> {
        MAGICS
            .iter()
            .find(|(m, _)| *m == magic)
            .map(|&(_, major)| WalFormat { major })
    }

    /// The page magic of this format.
    #[cfg(test)]
    pub(crate) fn magic(self) -> u16 {
        MAGICS
            .iter()
            .find(|(_, major)| *major == self.major)
            .map_or(0, |&(magic, _)| magic)
    }

    /// The format of `major`, for tests that build WAL by hand.
    #[cfg(test)]
    pub(crate) fn of_major(major: u32) -> WalFormat {
        assert!(MAGICS.iter().any(|&(_, m)| m == major), "major {major}");
        WalFormat { major }
    }

    /// Whether a full-page image with these `bimg_info` flags is compressed
    /// (and so, if it has a hole, carries an explicit hole length).
    pub(crate) fn image_is_compressed(self, bimg_info: u8) -> bool {
        let mask = if self.major == 14 {
            BKPIMAGE_IS_COMPRESSED_PG14
        } else {
            BKPIMAGE_COMPRESS_ANY_PG15
        };
        bimg_info & mask != 0
    }

    /// Size of one dropped-statistics item (`xl_xact_stats_item`) in
    /// transaction commit/abort records, or `None` before PostgreSQL 15,
    /// which has no such section.
    pub(crate) fn dropped_stats_item_len(self) -> Option<usize> {
        match self.major {
            14 => None,
            // kind, dboid, objoid
            15..=17 => Some(12),
            // kind, dboid, objid as two 32-bit halves
            _ => Some(16),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_identifies_the_major() {
        for major in 14..=18 {
            let format = WalFormat::of_major(major);
            assert_eq!(WalFormat::from_magic(format.magic()), Some(format));
        }
        assert_eq!(WalFormat::from_magic(0xD10D).map(|f| f.major), Some(14));
        assert_eq!(WalFormat::from_magic(0xD118).map(|f| f.major), Some(18));
        assert_eq!(WalFormat::from_magic(0xD106), None, "PostgreSQL 13");
        assert_eq!(WalFormat::from_magic(0), None);
    }

    #[test]
    fn compression_flags_changed_in_15() {
        let (pg14, pg15) = (WalFormat::of_major(14), WalFormat::of_major(15));
        assert!(pg14.image_is_compressed(0x02 | 0x01));
        assert!(
            !pg14.image_is_compressed(0x04 | 0x01),
            "0x04 is APPLY in 14"
        );
        assert!(
            !pg15.image_is_compressed(0x02 | 0x01),
            "0x02 is APPLY in 15"
        );
        for flag in [0x04, 0x08, 0x10] {
            assert!(pg15.image_is_compressed(flag | 0x01));
        }
    }

    #[test]
    fn dropped_stats_items_per_major() {
        let len = |major| WalFormat::of_major(major).dropped_stats_item_len();
        assert_eq!(len(14), None);
        assert_eq!(len(15), Some(12));
        assert_eq!(len(17), Some(12));
        assert_eq!(len(18), Some(16));
    }
}
