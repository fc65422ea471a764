//! `tidemark init`: prepare a repository for one cluster (write `tidemark.json`).

use tidemark_protocol::conninfo::ConnInfo;
use tidemark_store::identity::RepoIdentity;
use tidemark_store::repository::Repository;

use crate::cluster::Cluster;
use crate::error::ArchiverError;

/// Write the repository's identity from the cluster at `conninfo`. Idempotent for the same
/// cluster; refused, writing nothing, for another one.
pub async fn init(conninfo: &ConnInfo, repo: &Repository) -> Result<RepoIdentity, ArchiverError> {
    let cluster = Cluster::connect(conninfo).await?;
    cluster.check_repository(repo, true).await
}
