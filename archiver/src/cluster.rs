//! Connecting to the cluster being archived and checking it against the repository.

use tidemark_protocol::conninfo::ConnInfo;
use tidemark_protocol::replication::{ReplicationClient, SystemIdentity};
use tidemark_protocol::WalSegmentSize;
use tidemark_store::identity::RepoIdentity;
use tidemark_store::repository::Repository;

use crate::error::ArchiverError;

/// A connected walsender and what it told us about its cluster.
pub struct Cluster {
    pub client: ReplicationClient,
    pub system: SystemIdentity,
    pub seg: WalSegmentSize,
    pub pg_major: u32,
}

impl Cluster {
    /// Connect, IDENTIFY_SYSTEM and read `wal_segment_size`.
    pub async fn connect(conninfo: &ConnInfo) -> Result<Cluster, ArchiverError> {
        let mut client = ReplicationClient::connect(conninfo).await?;
        let system = client.identify_system().await?;
        let seg = client.wal_segment_size().await?;
        let pg_major = client.server_version_num() / 10_000;
        Ok(Cluster {
            client,
            system,
            seg,
            pg_major,
        })
    }

    /// Whether the server is in recovery (a standby). `in_hot_standby` (PostgreSQL 14+)
    /// shows the server's current state, also on a walsender connection (checked on 14
    /// to 18).
    pub async fn in_recovery(&mut self) -> Result<bool, ArchiverError> {
        Ok(self.client.show("in_hot_standby").await? == "on")
    }

    /// The identity this cluster gives a repository.
    pub fn identity(&self) -> RepoIdentity {
        RepoIdentity::new(self.system.system_id, self.pg_major, self.seg.bytes())
    }

    /// Refuse a repository that belongs to another cluster; write the identity of an
    /// initialised-but-empty one only when `create` is set (that is `tidemark init`).
    pub async fn check_repository(
        &self,
        repo: &Repository,
        create: bool,
    ) -> Result<RepoIdentity, ArchiverError> {
        match repo.identity().await? {
            None if !create => Err(ArchiverError::NotInitialised {
                url: repo.url.to_string(),
            }),
            _ => Ok(repo.ensure_identity(&self.identity()).await?),
        }
    }
}
