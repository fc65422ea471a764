//! Group marks: one instant across several clusters (and the buckets that go with them),
//! made by creating a restore point of the same name on every member at once.
//! `groups/<group>/marks/<name>.json` in every member's repository records it: each
//! member's restore point and clock, the bound on the clocks' disagreement, and the
//! group's buckets (restored to the mark through their tracking's clock samples, on the
//! first member's clock). A name is taken once (put-if-absent).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tidemark_protocol::Lsn;

use crate::meta;
use crate::repository::{RepoError, Repository};

/// Where group records live.
pub const GROUPS_PREFIX: &str = "groups/";

/// One mark of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMark {
    pub group: String,
    /// The restore point's name on every member.
    pub name: String,
    /// When it was made (the marking host's clock, halfway through).
    pub made_at: DateTime<Utc>,
    pub members: Vec<MarkedMember>,
    /// The most two members' clocks can have disagreed by at the mark, from each
    /// member's `now()` read between two local clock readings.
    pub skew_bound_ms: i64,
    /// The group's buckets.
    pub buckets: Vec<String>,
}

/// A member's restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkedMember {
    pub cluster: String,
    pub system_identifier: u64,
    /// `pg_create_restore_point`'s LSN.
    #[serde(with = "crate::serde_text")]
    pub lsn: Lsn,
    /// The member's `clock_timestamp()` as it made the restore point.
    pub server_time: DateTime<Utc>,
}

/// Where mark `name` of `group` is recorded.
pub fn mark_key(group: &str, name: &str) -> String {
    format!("{GROUPS_PREFIX}{group}/marks/{name}.json")
}

impl Repository {
    /// Record `mark`; a mark of the same group and name already there is refused
    /// ([`RepoError::SplitBrain`], "different bytes at this key").
    pub async fn record_group_mark(&self, mark: &GroupMark) -> Result<(), RepoError> {
        self.store_document(
            mark_key(&mark.group, &mark.name),
            mark,
            meta::KIND_GROUP_MARK,
        )
        .await
        .map(|_| ())
    }

    /// Every mark of `group`, oldest first.
    pub async fn group_marks(&self, group: &str) -> Result<Vec<GroupMark>, RepoError> {
        let mut out: Vec<GroupMark> = self
            .json_documents(&format!("{GROUPS_PREFIX}{group}/marks/"))
            .await?;
        out.sort_by_key(|m| m.made_at);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url::RepoUrl;

    #[tokio::test]
    async fn a_mark_is_recorded_once_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let url = RepoUrl::File {
            path: dir.path().join("repo"),
        };
        let repo = Repository::create(&url, &Default::default()).await.unwrap();
        let mark = GroupMark {
            group: "platform".into(),
            name: "m1".into(),
            made_at: Utc::now(),
            members: vec![MarkedMember {
                cluster: "users".into(),
                system_identifier: 7,
                lsn: Lsn(0x3000028),
                server_time: Utc::now(),
            }],
            skew_bound_ms: 3,
            buckets: Vec::new(),
        };
        repo.record_group_mark(&mark).await.unwrap();
        let again = GroupMark {
            skew_bound_ms: 4,
            ..mark.clone()
        };
        assert!(matches!(
            repo.record_group_mark(&again).await,
            Err(RepoError::SplitBrain { .. })
        ));
        assert_eq!(repo.group_marks("platform").await.unwrap(), vec![mark]);
        assert!(repo.group_marks("other").await.unwrap().is_empty());
    }
}
