//! PostgreSQL's timestamps: microseconds since its epoch, 2000-01-01 00:00:00 UTC.

use chrono::{DateTime, Utc};

/// Microseconds from the Unix epoch to PostgreSQL's epoch.
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A `TimestampTz` as a `DateTime`; `None` when out of range.
pub fn from_postgres(micros: i64) -> Option<DateTime<Utc>> {
    micros
        .checked_add(POSTGRES_EPOCH_UNIX_MICROS)
        .and_then(DateTime::from_timestamp_micros)
}

/// A `DateTime` as a `TimestampTz`.
pub fn to_postgres(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros() - POSTGRES_EPOCH_UNIX_MICROS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_round_trip() {
        let epoch = from_postgres(0).unwrap();
        assert_eq!(epoch.to_rfc3339(), "2000-01-01T00:00:00+00:00");
        assert_eq!(to_postgres(epoch), 0);
        assert_eq!(from_postgres(i64::MAX), None);
    }
}
