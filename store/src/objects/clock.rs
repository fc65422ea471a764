//! One clock for both stores: each tracking pass bounds the offset between the object
//! store's clock and PostgreSQL's, and a restore turns a database time into the object
//! store's time with those bounds — so "T" means the same instant in both.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::bucket::ServerReading;

/// Bounds on (S3 clock − PostgreSQL clock), measured at PostgreSQL time `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockSample {
    /// PostgreSQL's `now()` when measured.
    pub at: DateTime<Utc>,
    pub min_offset_ms: i64,
    pub max_offset_ms: i64,
}

/// A PostgreSQL clock reading: its `now()` and the local clock before and after asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgReading {
    pub now: DateTime<Utc>,
    pub sent: DateTime<Utc>,
    pub received: DateTime<Utc>,
}

impl ClockSample {
    /// Combines one reading of each clock against the local one.
    pub fn measure(pg: PgReading, s3: ServerReading) -> ClockSample {
        // PostgreSQL − local lies in [now − received, now − sent].
        let (s3_lo, s3_hi) = s3.offset_bounds();
        let (pg_lo, pg_hi) = (pg.now - pg.received, pg.now - pg.sent);
        ClockSample {
            at: pg.now,
            min_offset_ms: (s3_lo - pg_hi).num_milliseconds(),
            max_offset_ms: (s3_hi - pg_lo).num_milliseconds(),
        }
    }
}

/// The offset used for one target: the middle of the bounds, and half their width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClockEstimate {
    pub offset_ms: i64,
    pub uncertainty_ms: i64,
}

impl ClockEstimate {
    /// PostgreSQL time `t` on the object store's clock.
    pub fn to_s3(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        t + Duration::milliseconds(self.offset_ms)
    }
}

/// Samples within this distance of the target are combined.
pub(crate) const NEAR: i64 = 3600;

/// The offset at PostgreSQL time `t`: the intersection of the bounds of every sample
/// within an hour of `t` (clocks drift slowly; each sample's one-second `Date` granularity
/// falls differently, so together they are much tighter). If those disagree (a clock was
/// stepped), the nearest sample alone. `None` without samples.
pub fn estimate(samples: &[ClockSample], t: DateTime<Utc>) -> Option<ClockEstimate> {
    let nearest = samples
        .iter()
        .min_by_key(|s| (s.at - t).num_milliseconds().abs())?;
    let near = samples
        .iter()
        .filter(|s| (s.at - t).num_seconds().abs() <= NEAR);
    let (lo, hi) = near.fold((i64::MIN, i64::MAX), |(lo, hi), s| {
        (lo.max(s.min_offset_ms), hi.min(s.max_offset_ms))
    });
    let (lo, hi) = if lo <= hi {
        (lo, hi)
    } else {
        (nearest.min_offset_ms, nearest.max_offset_ms)
    };
    Some(ClockEstimate {
        offset_ms: lo + (hi - lo) / 2,
        uncertainty_ms: (hi - lo + 1) / 2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    #[test]
    fn measurement_bounds_contain_the_true_offset() {
        // S3 runs 2.4 s ahead of PostgreSQL; the local clock is 10 s behind PostgreSQL.
        let pg = PgReading {
            now: t(10_050),
            sent: t(0),
            received: t(100),
        };
        let s3_true = t(10_000 + 2_400 + 150);
        let s3 = ServerReading {
            date: DateTime::from_timestamp(s3_true.timestamp(), 0).unwrap(),
            sent: t(120),
            received: t(180),
        };
        let sample = ClockSample::measure(pg, s3);
        assert!(
            sample.min_offset_ms <= 2_400 && 2_400 <= sample.max_offset_ms,
            "{sample:?}"
        );
        assert!(sample.max_offset_ms - sample.min_offset_ms <= 1_300);
    }

    #[test]
    fn nearby_samples_narrow_the_estimate_and_disagreement_falls_back() {
        let s = |at, lo, hi| ClockSample {
            at: t(at),
            min_offset_ms: lo,
            max_offset_ms: hi,
        };
        let e = estimate(&[s(0, -500, 500), s(10_000, 200, 1_200)], t(5_000)).unwrap();
        assert_eq!((e.offset_ms, e.uncertainty_ms), (350, 150));
        // A stepped clock: no overlap, so the nearest sample decides.
        let e = estimate(&[s(0, -500, 500), s(10_000, 5_000, 6_000)], t(9_000)).unwrap();
        assert_eq!((e.offset_ms, e.uncertainty_ms), (5_500, 500));
        assert_eq!(e.to_s3(t(0)), t(5_500));
        assert!(estimate(&[], t(0)).is_none());
    }
}
