//! `TimelineId`: PostgreSQL's timeline number (1 for a fresh cluster, +1 per promotion).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelineId(pub u32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timeline {0:?}: expected a positive number or 8 hex digits")]
pub struct ParseTimelineError(pub String);

impl TimelineId {
    pub const FIRST: TimelineId = TimelineId(1);

    /// Eight upper-case hex digits, as in segment and history file names.
    pub fn hex(self) -> String {
        format!("{:08X}", self.0)
    }

    /// Parse the 8-hex-digit form used in file names.
    pub fn from_hex(s: &str) -> Result<Self, ParseTimelineError> {
        if s.len() != 8 {
            return Err(ParseTimelineError(s.to_string()));
        }
        match u32::from_str_radix(s, 16) {
            Ok(0) | Err(_) => Err(ParseTimelineError(s.to_string())),
            Ok(v) => Ok(TimelineId(v)),
        }
    }

    /// `NNNNNNNN.history`, the name of this timeline's history file.
    pub fn history_file_name(self) -> String {
        format!("{}.history", self.hex())
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for TimelineId {
    type Err = ParseTimelineError;
    /// Decimal, as PostgreSQL prints it in IDENTIFY_SYSTEM and settings.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<u32>() {
            Ok(0) | Err(_) => Err(ParseTimelineError(s.to_string())),
            Ok(v) => Ok(TimelineId(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(TimelineId(26).hex(), "0000001A");
        assert_eq!(TimelineId::from_hex("0000001A").unwrap(), TimelineId(26));
        assert_eq!("26".parse::<TimelineId>().unwrap(), TimelineId(26));
        assert_eq!(TimelineId(2).history_file_name(), "00000002.history");
        for bad in ["0", "-1", "x", ""] {
            assert!(bad.parse::<TimelineId>().is_err());
        }
        for bad in ["00000000", "1A", "0000001G"] {
            assert!(TimelineId::from_hex(bad).is_err());
        }
    }
}
