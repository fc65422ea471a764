//! WAL segment sizes and segment file names (`TTTTTTTTXXXXXXXXYYYYYYYY`) for any
//! `wal_segment_size` from 1 MiB to 1 GiB.

use std::fmt;
use std::str::FromStr;

use crate::lsn::Lsn;
use crate::timeline::TimelineId;

/// A validated `wal_segment_size`: a power of two from 1 MiB to 1 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WalSegmentSize(u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("invalid wal_segment_size {0}: must be a power of two from 1 MiB to 1 GiB")]
    InvalidSize(u64),
    #[error("invalid WAL segment name {0:?}: expected 24 hex digits")]
    InvalidName(String),
}

impl WalSegmentSize {
    pub const MIN: u64 = 1 << 20;
    pub const MAX: u64 = 1 << 30;
    pub const DEFAULT: WalSegmentSize = WalSegmentSize(16 << 20);

    pub fn new(bytes: u64) -> Result<Self, SegmentError> {
        if bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes) {
            Ok(WalSegmentSize(bytes))
        } else {
            Err(SegmentError::InvalidSize(bytes))
        }
    }

    /// Parse `SHOW wal_segment_size` output: `16MB`, `1GB`, `1024kB`, or plain bytes.
    pub fn parse_setting(s: &str) -> Result<Self, SegmentError> {
        Self::new(crate::setting::size_bytes(s).ok_or(SegmentError::InvalidSize(0))?)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Segments per 4 GiB "xlogid" (the middle 8 hex digits of a name).
    pub fn segments_per_xlogid(self) -> u64 {
        0x1_0000_0000 / self.0
    }
}

/// A WAL segment file name: timeline plus segment number, independent of size
/// until formatted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    pub timeline: TimelineId,
    pub segno: u64,
}

impl SegmentName {
    pub fn new(timeline: TimelineId, segno: u64) -> Self {
        SegmentName { timeline, segno }
    }

    /// The segment holding `lsn` on `timeline`.
    pub fn containing(timeline: TimelineId, lsn: Lsn, seg: WalSegmentSize) -> Self {
        SegmentName::new(timeline, lsn.segment_number(seg))
    }

    pub fn start_lsn(self, seg: WalSegmentSize) -> Lsn {
        Lsn(self.segno * seg.bytes())
    }

    pub fn end_lsn(self, seg: WalSegmentSize) -> Lsn {
        Lsn((self.segno + 1) * seg.bytes())
    }

    pub fn next(self) -> Self {
        SegmentName::new(self.timeline, self.segno + 1)
    }

    /// The 24-hex-digit file name for segment size `seg`.
    pub fn file_name(self, seg: WalSegmentSize) -> String {
        let per = seg.segments_per_xlogid();
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline.0,
            self.segno / per,
            self.segno % per
        )
    }

    /// Whether `name` has the shape of a segment file name (24 hex digits), whatever the
    /// segment size.
    pub fn is_file_name(name: &str) -> bool {
        name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// Parse a 24-hex-digit segment file name for segment size `seg`.
    pub fn parse(name: &str, seg: WalSegmentSize) -> Result<Self, SegmentError> {
        let bad = || SegmentError::InvalidName(name.to_string());
        if !Self::is_file_name(name) {
            return Err(bad());
        }
        let field =
            |r: std::ops::Range<usize>| u32::from_str_radix(&name[r], 16).map_err(|_| bad());
        let tli = field(0..8)?;
        let hi = u64::from(field(8..16)?);
        let lo = u64::from(field(16..24)?);
        let per = seg.segments_per_xlogid();
        if tli == 0 || lo >= per {
            return Err(bad());
        }
        Ok(SegmentName::new(TimelineId(tli), hi * per + lo))
    }
}

impl fmt::Display for WalSegmentSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}MB", self.0 >> 20)
    }
}

impl FromStr for WalSegmentSize {
    type Err = SegmentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_setting(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(mb: u64) -> WalSegmentSize {
        WalSegmentSize::new(mb << 20).unwrap()
    }

    #[test]
    fn names_round_trip_for_every_size() {
        for (mb, lsn, name) in [
            (16, "0/1000000", "000000010000000000000001"),
            (16, "1/3000028", "000000010000000100000003"),
            (1, "0/FF00000", "0000000100000000000000FF"),
            (1, "1/100000", "000000010000000100000001"),
            (1024, "5/40000000", "000000010000000500000001"),
        ] {
            let seg = size(mb);
            let lsn: Lsn = lsn.parse().unwrap();
            let sn = SegmentName::containing(TimelineId(1), lsn, seg);
            assert_eq!(sn.file_name(seg), name, "{mb}MB {lsn}");
            assert_eq!(SegmentName::parse(name, seg).unwrap(), sn);
            assert!(sn.start_lsn(seg) <= lsn && lsn < sn.end_lsn(seg));
        }
    }

    #[test]
    fn rejects_bad_names_and_sizes() {
        let seg = size(16);
        for bad in [
            "",
            "00000001000000000000000",
            "0000000100000000000000GG",
            "000000000000000000000001",
            "000000010000000000000100",
        ] {
            assert!(SegmentName::parse(bad, seg).is_err(), "{bad}");
        }
        for bad in [0, 1 << 19, 3 << 20, 1 << 31] {
            assert!(WalSegmentSize::new(bad).is_err());
        }
    }

    #[test]
    fn parses_show_output() {
        assert_eq!(
            WalSegmentSize::parse_setting("16MB").unwrap().bytes(),
            16 << 20
        );
        assert_eq!(
            WalSegmentSize::parse_setting("1GB").unwrap().bytes(),
            1 << 30
        );
        assert_eq!(
            WalSegmentSize::parse_setting("1024kB").unwrap().bytes(),
            1 << 20
        );
        assert_eq!(
            WalSegmentSize::parse_setting("1048576").unwrap().bytes(),
            1 << 20
        );
        assert!(WalSegmentSize::parse_setting("3MB").is_err());
        assert!(WalSegmentSize::parse_setting("abc").is_err());
    }
}
