//! `tidemark init`: prepare a repository for one cluster (write `tidemark.json`), once its
//! storage has shown that it honours conditional puts.

use tidemark_protocol::conninfo::ConnInfo;
use tidemark_store::identity::RepoIdentity;
use tidemark_store::repository::Repository;
use tracing::debug;

use crate::cluster::Cluster;
use crate::error::ArchiverError;

/// Check that the repository's storage honours create-if-absent (refused otherwise, before
/// anything is written), then write the repository's identity from the cluster at
/// `conninfo`. Idempotent for the same cluster; refused, writing nothing, for another one.
pub async fn init(conninfo: &ConnInfo, repo: &Repository) -> Result<RepoIdentity, ArchiverError> {
    let cluster = Cluster::connect(conninfo).await?;
    repo.probe_conditional_put().await?;
    debug!(repo = %repo.url, "the storage honours conditional puts (If-None-Match: *)");
    cluster.check_repository(repo, true).await
}
