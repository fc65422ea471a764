//! Known gaps in the archive: WAL the server removed before it was archived, which the
//! operator chose to accept (`stream --accept-gap`) so that archiving could start a new
//! run. `gaps/<TLI:8hex>-<FROM:16hex>.json` records each one; restores to targets inside
//! a gap are refused, targets before it still restore from older backups.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tidemark_protocol::{Lsn, TimelineId};

use crate::meta;
use crate::repository::{RepoError, Repository};

/// Where gap records live.
pub const GAPS_PREFIX: &str = "gaps/";

/// WAL from `from` to `to` on `timeline` is not in the archive and never will be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalGap {
    pub timeline: u32,
    #[serde(with = "crate::serde_text")]
    pub from: Lsn,
    #[serde(with = "crate::serde_text")]
    pub to: Lsn,
    pub recorded_at: DateTime<Utc>,
    /// Why (the server's error).
    pub reason: String,
}

fn key(timeline: TimelineId, from: Lsn) -> String {
    format!("{GAPS_PREFIX}{}-{:016X}.json", timeline.hex(), from.0)
}

impl Repository {
    /// Record an accepted gap. One already recorded from the same LSN is kept as it is.
    pub async fn record_gap(&self, gap: &WalGap) -> Result<(), RepoError> {
        let key = key(TimelineId(gap.timeline), gap.from);
        match self.store_document(key, gap, meta::KIND_WAL_GAP).await {
            Ok(_) | Err(RepoError::SplitBrain { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every recorded gap, oldest first.
    pub async fn gaps(&self) -> Result<Vec<WalGap>, RepoError> {
        let mut out: Vec<WalGap> = self.json_documents(GAPS_PREFIX).await?;
        out.sort_by_key(|g| (g.timeline, g.from));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url::RepoUrl;

    #[tokio::test]
    async fn gaps_are_recorded_once_and_listed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let url = RepoUrl::File {
            path: dir.path().join("repo"),
        };
        let repo = Repository::create(&url, &Default::default()).await.unwrap();
        assert!(repo.gaps().await.unwrap().is_empty());
        let gap = |from: u64| WalGap {
            timeline: 1,
            from: Lsn(from),
            to: Lsn(from + (16 << 20)),
            recorded_at: Utc::now(),
            reason: "requested WAL segment has already been removed".into(),
        };
        let (late, early) = (gap(9 << 24), gap(3 << 24));
        repo.record_gap(&late).await.unwrap();
        repo.record_gap(&early).await.unwrap();
        // Recorded again by a restarted archiver: the first record stays.
        let again = WalGap {
            recorded_at: early.recorded_at + chrono::Duration::seconds(5),
            ..early.clone()
        };
        repo.record_gap(&again).await.unwrap();
        assert_eq!(repo.gaps().await.unwrap(), vec![early, late]);
    }
}
