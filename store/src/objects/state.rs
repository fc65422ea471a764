//! The bucket as it stood at one instant: for each key, the newest version visible at or
//! before it (written then, and listed by then when tracking saw it late), unless that is
//! a delete marker.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

use super::TrackedVersion;

/// The live objects at an instant, and the keys whose state that instant cannot decide
/// (a change within the clock uncertainty plus S3's one-second timestamps, or a version
/// written before the instant but first listed after it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketState {
    pub live: BTreeMap<String, TrackedVersion>,
    pub uncertain_keys: Vec<String>,
    /// Keys with a version whose `last_modified` is at or before the instant but that
    /// tracking first listed after it: taken as not there yet (a multipart upload is
    /// stamped when it starts and visible only once complete).
    pub late_keys: Vec<String>,
}

/// The state under `prefix` at `at` (object-store clock). `uncertainty` widens the window
/// in which a change counts as uncertain; S3 times are whole seconds, truncated.
pub fn state_at(
    versions: &[TrackedVersion],
    prefix: &str,
    at: DateTime<Utc>,
    uncertainty: Duration,
) -> BucketState {
    let mut by_key: BTreeMap<&str, Vec<&TrackedVersion>> = BTreeMap::new();
    for v in versions.iter().filter(|v| v.key.starts_with(prefix)) {
        by_key.entry(&v.key).or_default().push(v);
    }
    let mut state = BucketState::default();
    let window_start = at - uncertainty - Duration::seconds(1);
    let window_end = at + uncertainty;
    for (key, mut history) in by_key {
        history.sort_by_key(|v| (v.visible_from(), v.seq));
        let late = history
            .iter()
            .any(|v| v.last_modified <= at && v.visible_from() > at);
        if late
            || history.iter().any(|v| {
                v.visible_from() > window_start && v.visible_from() <= window_end
                    || v.last_modified > window_start && v.last_modified <= window_end
            })
        {
            state.uncertain_keys.push(key.to_string());
        }
        if late {
            state.late_keys.push(key.to_string());
        }
        let live = history.iter().rev().find(|v| v.visible_from() <= at);
        if let Some(v) = live.filter(|v| !v.delete_marker) {
            state.live.insert(key.to_string(), (*v).clone());
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::tests::version;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn each_key_takes_its_version_live_at_the_instant() {
        let history = vec![
            version(1, "a", 10, false),
            version(2, "a", 20, false),
            version(3, "a", 30, true),
            version(4, "b", 25, false),
            // Same second: sequence decides (created, then deleted).
            version(5, "c", 12, false),
            version(6, "c", 12, true),
            version(7, "other/x", 5, false),
        ];
        let ids = |s: &BucketState| {
            s.live
                .iter()
                .map(|(k, v)| format!("{k}={}", v.version_id))
                .collect::<Vec<_>>()
        };
        let zero = Duration::zero();
        assert_eq!(ids(&state_at(&history, "", at(9), zero)), ["other/x=v7"]);
        assert_eq!(
            ids(&state_at(&history, "", at(15), zero)),
            ["a=v1", "other/x=v7"]
        );
        assert_eq!(
            ids(&state_at(&history, "", at(26), zero)),
            ["a=v2", "b=v4", "other/x=v7"]
        );
        assert_eq!(
            ids(&state_at(&history, "", at(31), zero)),
            ["b=v4", "other/x=v7"]
        );
        assert!(state_at(&history, "", at(31), zero)
            .uncertain_keys
            .is_empty());
        let s = state_at(&history, "", at(30), Duration::milliseconds(500));
        assert_eq!(s.uncertain_keys, ["a"]);
        assert!(s.late_keys.is_empty());
        assert_eq!(
            ids(&state_at(&history, "other/", at(40), zero)),
            ["other/x=v7"]
        );
    }

    #[test]
    fn a_version_listed_late_counts_from_the_listing() {
        let mut late = version(2, "a", 20, false);
        late.observed_at = Some(at(40));
        let history = vec![version(1, "a", 10, false), late];
        let zero = Duration::zero();
        let s = state_at(&history, "", at(30), zero);
        assert_eq!(s.live["a"].version_id, "v1");
        assert_eq!(
            (s.late_keys.clone(), s.uncertain_keys),
            (vec!["a".to_string()], vec!["a".to_string()])
        );
        let s = state_at(&history, "", at(45), zero);
        assert_eq!(s.live["a"].version_id, "v2");
        assert!(s.late_keys.is_empty());
        assert_eq!(
            state_at(&history, "", at(15), zero).late_keys,
            Vec::<String>::new()
        );
    }
}
