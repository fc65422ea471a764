//! Expiring bucket history: the passes made well before the restorable window begins are
//! folded into one record that keeps, for each key, the version live then and every later
//! change. Every instant of the window then restores exactly as before, with the same
//! clock estimate (only samples more than an hour before the window are dropped).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};

use super::clock::NEAR;
use super::{PassRecord, StoredPass, TrackedVersion};

/// Versions written this long before the folded passes' completeness instant are settled:
/// only the one live then is kept. Far wider than any clock uncertainty, so no instant
/// from the folded record's own time on sees a dropped version.
pub const SETTLE_MARGIN: Duration = Duration::hours(1);

/// Passes folded into one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// The folded record (`folded: true`), standing for the newest folded pass.
    pub record: PassRecord,
    /// The records it replaces.
    pub replaced: Vec<StoredPass>,
    /// Versions those records held that the folded record does not.
    pub dropped_versions: usize,
}

/// Folds the passes of one bucket made more than an hour before `window_start` (PostgreSQL
/// clock), or `None` when there is nothing to fold (or only an earlier folded record).
pub fn compact(passes: &[StoredPass], window_start: DateTime<Utc>) -> Option<Compaction> {
    let fold_before = window_start - Duration::seconds(NEAR);
    let replaced: Vec<StoredPass> = passes
        .iter()
        .filter(|p| p.record.clock.at < fold_before)
        .cloned()
        .collect();
    if replaced.iter().all(|p| p.record.folded) {
        return None;
    }
    let newest = &replaced.iter().max_by_key(|p| p.record.clock.at)?.record;
    let settled = newest.complete_as_of - SETTLE_MARGIN;
    // The same version may sit in a pass and in a folded record left by an interrupted run.
    let unique: BTreeMap<i64, &TrackedVersion> = replaced
        .iter()
        .flat_map(|p| &p.record.versions)
        .map(|v| (v.seq, v))
        .collect();
    let mut by_key: BTreeMap<&str, Vec<&TrackedVersion>> = BTreeMap::new();
    for v in unique.values() {
        by_key.entry(&v.key).or_default().push(v);
    }
    let mut kept: Vec<TrackedVersion> = Vec::new();
    for (_, mut history) in by_key {
        history.sort_by_key(|v| (v.visible_from(), v.seq));
        let later = history.partition_point(|v| v.visible_from() <= settled);
        let live_then = later
            .checked_sub(1)
            .map(|i| history[i])
            .filter(|v| !v.delete_marker);
        kept.extend(
            live_then
                .into_iter()
                .chain(history[later..].iter().copied())
                .cloned(),
        );
    }
    kept.sort_by_key(|v| v.seq);
    Some(Compaction {
        dropped_versions: unique.len() - kept.len(),
        record: PassRecord {
            bucket: newest.bucket.clone(),
            prefix: newest.prefix.clone(),
            mode: newest.mode,
            complete_as_of: newest.complete_as_of,
            clock: newest.clock,
            versions: kept,
            folded: true,
        },
        replaced,
    })
}

/// Every copied object (blob SHA-256) the records refer to.
pub fn referenced_blobs<'a>(
    records: impl IntoIterator<Item = &'a PassRecord>,
) -> BTreeSet<&'a str> {
    records
        .into_iter()
        .flat_map(|r| &r.versions)
        .filter_map(|v| v.blob.as_deref())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::tests::version;
    use crate::objects::{state_at, ClockSample, TrackMode};

    const HOUR: i64 = 3600;

    fn pass(at: i64, versions: Vec<TrackedVersion>) -> StoredPass {
        let t = DateTime::from_timestamp(at, 0).unwrap();
        StoredPass {
            key: format!("objects/app/passes/{at}-0000.json"),
            record: PassRecord {
                bucket: "app".into(),
                prefix: String::new(),
                mode: TrackMode::Versions,
                complete_as_of: t,
                clock: ClockSample {
                    at: t,
                    min_offset_ms: -100,
                    max_offset_ms: 100,
                },
                versions,
                folded: false,
            },
        }
    }

    fn ids(versions: &[TrackedVersion], at: i64) -> Vec<String> {
        let at = DateTime::from_timestamp(at, 0).unwrap();
        state_at(versions, "", at, Duration::zero())
            .live
            .values()
            .map(|v| v.version_id.clone())
            .collect()
    }

    #[test]
    fn folding_keeps_every_state_from_the_folded_pass_on() {
        let base = 1_800_000_000;
        let passes = vec![
            pass(
                base,
                vec![
                    version(1, "a", base - 10, false),
                    version(2, "b", base - 9, false),
                    version(3, "c", base - 8, false),
                ],
            ),
            pass(
                base + HOUR,
                vec![
                    version(4, "a", base + 10, false), // supersedes v1
                    version(5, "b", base + 20, true),  // b deleted
                ],
            ),
            pass(
                base + 3 * HOUR,
                vec![
                    version(6, "c", base + 3 * HOUR - 30, false), // within the margin
                    version(7, "d", base + 3 * HOUR - 20, false),
                ],
            ),
            pass(
                base + 5 * HOUR,
                vec![version(8, "a", base + 5 * HOUR - 5, false)],
            ),
        ];
        let all: Vec<TrackedVersion> = passes
            .iter()
            .flat_map(|p| p.record.versions.clone())
            .collect();
        let window_start = DateTime::from_timestamp(base + 4 * HOUR + 1, 0).unwrap();
        let c = compact(&passes, window_start).unwrap();
        // The first three passes are folded; the fourth is within the hour before the window.
        assert_eq!(c.replaced, passes[..3]);
        assert!(c.record.folded);
        assert_eq!(c.record.clock, passes[2].record.clock);
        // v1 (superseded), v2 and its delete marker v5 (gone before the settled instant)
        // are dropped; c's old version v3 is kept, since v6 was written within the margin.
        let seqs: Vec<i64> = c.record.versions.iter().map(|v| v.seq).collect();
        assert_eq!(seqs, [3, 4, 6, 7]);
        assert_eq!(c.dropped_versions, 3);
        let mut after: Vec<TrackedVersion> = c.record.versions.clone();
        after.extend(passes[3].record.versions.clone());
        for at in [
            base + 2 * HOUR,
            base + 3 * HOUR - 25,
            base + 3 * HOUR,
            base + 5 * HOUR,
        ] {
            assert_eq!(ids(&after, at), ids(&all, at), "state at {at}");
        }

        // Folding again with the folded record in place: nothing new, nothing to do.
        let mut again = vec![StoredPass {
            key: "objects/app/passes/folded".into(),
            record: c.record.clone(),
        }];
        again.push(passes[3].clone());
        assert_eq!(compact(&again, window_start), None);
        // A later window folds the folded record together with the newer pass.
        let later = compact(&again, window_start + Duration::hours(3)).unwrap();
        assert_eq!(later.replaced.len(), 2);
        assert_eq!(
            ids(&later.record.versions, base + 6 * HOUR),
            ids(&all, base + 6 * HOUR)
        );
        assert!(compact(&passes, DateTime::from_timestamp(base, 0).unwrap()).is_none());
    }

    #[test]
    fn an_interrupted_run_folds_to_the_same_record() {
        let base = 1_800_000_000;
        let passes = vec![
            pass(base, vec![version(1, "a", base - 10, false)]),
            pass(base + 10, vec![version(2, "a", base + 5, false)]),
        ];
        let window_start = DateTime::from_timestamp(base + 3 * HOUR, 0).unwrap();
        let first = compact(&passes, window_start).unwrap();
        let mut left = passes.clone();
        left.push(StoredPass {
            key: "objects/app/passes/folded".into(),
            record: first.record.clone(),
        });
        let second = compact(&left, window_start).unwrap();
        assert_eq!(second.record, first.record);
        let mut with_blob = first.record.clone();
        with_blob.versions[0].blob = Some("ab".into());
        assert_eq!(
            referenced_blobs([&with_blob, &passes[0].record]),
            BTreeSet::from(["ab"])
        );
    }
}
