//! `Lsn`: a position in the write-ahead log, written `X/Y` as PostgreSQL does.

use std::fmt;
use std::str::FromStr;

use crate::segment::WalSegmentSize;

/// A WAL position (PostgreSQL's `XLogRecPtr`): a byte offset into the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// A string that is not an LSN of the form `X/Y` (hex halves, each at most 8 digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal halves like 16/B374D848")]
pub struct ParseLsnError(pub String);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);

    /// Segment number holding the byte at this LSN.
    pub fn segment_number(self, seg: WalSegmentSize) -> u64 {
        self.0 / seg.bytes()
    }

    /// Offset of this LSN within its segment.
    pub fn segment_offset(self, seg: WalSegmentSize) -> u64 {
        self.0 % seg.bytes()
    }

    /// The first LSN of the segment holding this LSN.
    pub fn segment_start(self, seg: WalSegmentSize) -> Lsn {
        Lsn(self.0 - self.segment_offset(seg))
    }

    /// Bytes from `earlier` to `self`; zero when `earlier` is not earlier.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }
}

impl std::ops::Add<u64> for Lsn {
    type Output = Lsn;
    fn add(self, rhs: u64) -> Lsn {
        Lsn(self.0 + rhs)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 {
                return Err(err());
            }
            u32::from_str_radix(h, 16).map_err(|_| err())
        };
        Ok(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        for (text, value) in [
            ("0/0", 0u64),
            ("16/B374D848", 0x16_B374_D848),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
            ("0/1000000", 0x100_0000),
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value));
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("0/a".parse::<Lsn>().unwrap(), Lsn(10));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "0",
            "/0",
            "0/",
            "1/2/3",
            "G/0",
            "123456789/0",
            "0/-1",
            " 0/1",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn segment_arithmetic() {
        let seg = WalSegmentSize::new(16 * 1024 * 1024).unwrap();
        let lsn: Lsn = "1/3000028".parse().unwrap();
        assert_eq!(lsn.segment_number(seg), 0x100 + 3);
        assert_eq!(lsn.segment_offset(seg), 0x28);
        assert_eq!(lsn.segment_start(seg), "1/3000000".parse().unwrap());
        assert_eq!(lsn.bytes_since(Lsn(0x1_0300_0000)), 0x28);
        assert_eq!(Lsn(5).bytes_since(Lsn(9)), 0);
    }
}
