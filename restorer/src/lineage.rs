//! Timeline lineage: which timelines recovery walks, and where it leaves each one, as
//! PostgreSQL decides it from the history files — resolved before a backup is chosen, so
//! a target on one line of a fork is never reached through a backup on another.

use std::collections::{BTreeSet, HashMap};

use tidemark_protocol::{parse_history, HistoryEntry, Lsn, TimelineId};
use tidemark_store::backup::BackupInfo;
use tidemark_store::layout;
use tidemark_store::repository::Repository;

use crate::plan::PlanError;
use crate::target::TimelineTarget;

/// The timelines recovery follows to reach `last`: each ancestor with the LSN where the
/// line branched off it (from the history file of `last`), then `last` itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub last: TimelineId,
    pub ancestors: Vec<HistoryEntry>,
}

impl Lineage {
    /// Whether the WAL position `lsn` of timeline `tli` lies on this line.
    pub fn holds(&self, tli: TimelineId, lsn: Lsn) -> bool {
        tli == self.last
            || self
                .ancestors
                .iter()
                .any(|e| e.parent == tli && lsn <= e.switch_lsn)
    }

    /// Whether recovery from `backup` can follow this line: the backup is on it and became
    /// consistent before the line left its timeline.
    pub fn descends_from(&self, backup: &BackupInfo) -> bool {
        self.holds(TimelineId(backup.timeline), backup.stop_lsn)
    }

    /// The timelines of the line from `from` on, each with where the line leaves it
    /// (`None` for the last).
    pub fn from(&self, from: TimelineId) -> Vec<(TimelineId, Option<Lsn>)> {
        self.ancestors
            .iter()
            .filter(|e| e.parent >= from)
            .map(|e| (e.parent, Some(e.switch_lsn)))
            .chain(std::iter::once((self.last, None)))
            .collect()
    }
}

/// The repository's timeline histories, read once per plan.
pub struct Timelines<'a> {
    repo: &'a Repository,
    /// Timelines that have a history file.
    known: BTreeSet<TimelineId>,
    read: HashMap<TimelineId, Lineage>,
}

impl<'a> Timelines<'a> {
    pub async fn list(repo: &'a Repository) -> Result<Timelines<'a>, PlanError> {
        let listing = repo.list(layout::WAL_PREFIX).await?;
        Ok(Timelines {
            repo,
            known: listing
                .iter()
                .filter_map(|o| layout::parse_history_key(&o.key))
                .collect(),
            read: HashMap::new(),
        })
    }

    /// The timeline recovery from `backup` ends on, as PostgreSQL picks it: the backup's
    /// own (`current`), the one asked for, or (`latest`) the newest one found by probing
    /// history files upwards from the backup's timeline, one after another.
    pub fn final_for(&self, backup: &BackupInfo, wanted: TimelineTarget) -> TimelineId {
        let own = TimelineId(backup.timeline);
        match wanted {
            TimelineTarget::Current => own,
            TimelineTarget::Id(t) => t,
            TimelineTarget::Latest => {
                let mut t = own;
                while self.known.contains(&TimelineId(t.0 + 1)) {
                    t = TimelineId(t.0 + 1);
                }
                t
            }
        }
    }

    /// The lineage that ends on `last`.
    pub async fn lineage(&mut self, last: TimelineId) -> Result<Lineage, PlanError> {
        if let Some(l) = self.read.get(&last) {
            return Ok(l.clone());
        }
        let ancestors = if last == TimelineId::FIRST {
            Vec::new()
        } else {
            let bytes = self
                .repo
                .history(last)
                .await?
                .ok_or(PlanError::UnknownTimeline(last))?;
            parse_history(&bytes).map_err(|e| PlanError::BadHistory(last, e.to_string()))?
        };
        let lineage = Lineage { last, ancestors };
        self.read.insert(last, lineage.clone());
        Ok(lineage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(parent: u32, switch: &str) -> HistoryEntry {
        HistoryEntry {
            parent: TimelineId(parent),
            switch_lsn: switch.parse().unwrap(),
            reason: String::new(),
        }
    }

    #[test]
    fn a_position_is_on_the_line_only_before_it_branched_off() {
        let line = Lineage {
            last: TimelineId(3),
            ancestors: vec![entry(1, "0/5000000"), entry(2, "0/9000000")],
        };
        assert!(line.holds(TimelineId(1), "0/4FFFFFF".parse().unwrap()));
        assert!(line.holds(TimelineId(1), "0/5000000".parse().unwrap()));
        assert!(!line.holds(TimelineId(1), "0/5000001".parse().unwrap()));
        assert!(line.holds(TimelineId(2), "0/8000000".parse().unwrap()));
        assert!(line.holds(TimelineId(3), "9/0".parse().unwrap()));
        assert!(!line.holds(TimelineId(4), "0/1".parse().unwrap()));
        assert_eq!(
            line.from(TimelineId(2)),
            vec![
                (TimelineId(2), Some("0/9000000".parse().unwrap())),
                (TimelineId(3), None)
            ]
        );
    }
}
