//! `RepoIdentity`: the repository's `tidemark.json`, which ties it to one PostgreSQL cluster.
//!
//! ```json
//! {"format_version":1,"system_identifier":"7301234567890123456","pg_major":16,
//!  "wal_segment_size":16777216,"created_at":"2025-01-01T00:00:00Z"}
//! ```
//! `system_identifier` is a JSON string: it exceeds 2^53 and JSON readers lose digits.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The repository format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Who the repository belongs to and how its WAL is cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoIdentity {
    /// Repository format version (`FORMAT_VERSION`).
    pub format_version: u32,
    /// The cluster's system identifier (pg_control, IDENTIFY_SYSTEM).
    #[serde(with = "crate::serde_text")]
    pub system_identifier: u64,
    /// PostgreSQL major version, e.g. 16.
    pub pg_major: u32,
    /// The cluster's `wal_segment_size` in bytes.
    pub wal_segment_size: u64,
    /// When the repository was initialised.
    pub created_at: DateTime<Utc>,
}

impl RepoIdentity {
    /// An identity in the current format, created now.
    pub fn new(system_identifier: u64, pg_major: u32, wal_segment_size: u64) -> Self {
        RepoIdentity {
            format_version: FORMAT_VERSION,
            system_identifier,
            pg_major,
            wal_segment_size,
            created_at: Utc::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_identifier_survives_json_as_a_string() {
        let id = RepoIdentity {
            format_version: 1,
            system_identifier: 7_301_234_567_890_123_457,
            pg_major: 16,
            wal_segment_size: 16 << 20,
            created_at: "2025-01-02T03:04:05Z".parse().unwrap(),
        };
        let json = serde_json::to_string(&id).unwrap();
        assert!(
            json.contains(r#""system_identifier":"7301234567890123457""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<RepoIdentity>(&json).unwrap(), id);
        let bad = json.replace("7301234567890123457", "x1");
        assert!(serde_json::from_str::<RepoIdentity>(&bad).is_err());
    }
}
