//! `Repository::probe_conditional_put`: does the repository's storage honour
//! create-if-absent (`If-None-Match: *` on S3)? Split-brain protection (the same-bytes
//! rule), leases and backup-id claims all rest on it, and some S3-compatible servers (or
//! proxies in front of them) silently ignore the header and overwrite. `init` runs the
//! probe before it writes anything; `check` can run it at any time.
//!
//! The probe object is `locks/probe-<16 hex>` (random, so concurrent probes never meet),
//! kind `probe`, and is deleted before the probe returns.

use bytes::Bytes;
use rand::Rng;
use tracing::warn;

use crate::lease::LOCKS_PREFIX;
use crate::meta;
use crate::repository::{RepoError, Repository};
use crate::storage::{Body, Metadata, PutOutcome, StorageError};

/// What the probe object holds.
const PROBE_BODY: &[u8] = b"tidemark conditional-put probe; safe to delete\n";

impl Repository {
    /// Creates a fresh probe object with `put_if_absent`, creates it again and requires the
    /// second call to find it (`PutOutcome::Exists`), then deletes it. Refuses with
    /// `RepoError::NoConditionalPut` when the second call also reports `Created` (the
    /// condition was ignored) or the server rejects the condition as not implemented;
    /// other storage errors come back as they are.
    pub async fn probe_conditional_put(&self) -> Result<(), RepoError> {
        let key = format!(
            "{LOCKS_PREFIX}probe-{:016x}",
            rand::thread_rng().gen::<u64>()
        );
        let probed = self.put_twice(&key).await;
        // The first put may have created it whatever happened next.
        let removed = self.delete(&key).await;
        match (probed, removed) {
            (Ok(()), Err(e)) => Err(e),
            (probed, Err(e)) => {
                warn!(key, error = %e, "could not remove the conditional-put probe object");
                probed
            }
            (probed, Ok(())) => probed,
        }
    }

    async fn put_twice(&self, key: &str) -> Result<(), RepoError> {
        let metadata = Metadata::from([(meta::KIND.to_string(), meta::KIND_PROBE.to_string())]);
        let put = || async {
            self.storage
                .put_if_absent(key, Body::Bytes(Bytes::from_static(PROBE_BODY)), &metadata)
                .await
                .map_err(|e| match e {
                    StorageError::Unsupported { message, .. } => RepoError::NoConditionalPut {
                        detail: format!(
                            "the server rejected a conditional PUT of {key}: {message}"
                        ),
                    },
                    e => RepoError::storage(key)(e),
                })
        };
        if let PutOutcome::Exists(_) = put().await? {
            return Err(RepoError::NoConditionalPut {
                detail: format!("creating the new object {key} was refused as if it existed"),
            });
        }
        match put().await? {
            PutOutcome::Exists(_) => Ok(()),
            PutOutcome::Created => Err(RepoError::NoConditionalPut {
                detail: format!(
                    "a second create-if-absent of {key} was accepted and replaced the first"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::storage::{FsStorage, GetObject, ObjectHead, ObjectInfo, Storage};
    use crate::url::RepoUrl;

    /// How a broken server treats `If-None-Match: *`.
    #[derive(Debug, Clone, Copy)]
    enum Flaw {
        /// Ignores it: overwrites and says "created".
        Ignores,
        /// Rejects it as not implemented (HTTP 501).
        Rejects,
    }

    /// The filesystem backend behind a server with `flaw`.
    #[derive(Debug)]
    struct Flawed(FsStorage, Flaw);

    #[async_trait]
    impl Storage for Flawed {
        async fn put_if_absent(
            &self,
            key: &str,
            body: Body,
            meta: &Metadata,
        ) -> Result<PutOutcome, StorageError> {
            match self.1 {
                Flaw::Ignores => self
                    .0
                    .put(key, body, meta)
                    .await
                    .map(|()| PutOutcome::Created),
                Flaw::Rejects => Err(StorageError::Unsupported {
                    operation: "PutObject",
                    key: key.to_string(),
                    message: "A header you provided implies functionality that is not implemented"
                        .to_string(),
                }),
            }
        }
        async fn put(&self, key: &str, body: Body, meta: &Metadata) -> Result<(), StorageError> {
            self.0.put(key, body, meta).await
        }
        async fn get(&self, key: &str) -> Result<GetObject, StorageError> {
            self.0.get(key).await
        }
        async fn head(&self, key: &str) -> Result<Option<ObjectHead>, StorageError> {
            self.0.head(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
            self.0.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<(), StorageError> {
            self.0.delete(key).await
        }
    }

    fn repo(dir: &std::path::Path, flaw: Option<Flaw>) -> Repository {
        let fs = FsStorage::create(dir).unwrap();
        let storage: Arc<dyn Storage> = match flaw {
            Some(flaw) => Arc::new(Flawed(fs, flaw)),
            None => Arc::new(fs),
        };
        Repository {
            storage,
            url: RepoUrl::File {
                path: dir.to_path_buf(),
            },
            reads: None,
            last_partial: Default::default(),
        }
    }

    #[tokio::test]
    async fn storage_that_honours_conditional_puts_passes_and_keeps_no_probe() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path(), None);
        repo.probe_conditional_put().await.unwrap();
        assert!(repo.list("").await.unwrap().is_empty(), "probe left behind");
    }

    #[tokio::test]
    async fn storage_that_ignores_if_none_match_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path(), Some(Flaw::Ignores));
        let err = repo.probe_conditional_put().await.unwrap_err();
        assert!(matches!(err, RepoError::NoConditionalPut { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("replaced the first"), "{text}");
        assert!(
            text.contains("HINT: use an S3 server that supports them"),
            "{text}"
        );
        assert!(repo.list("").await.unwrap().is_empty(), "probe left behind");
    }

    #[tokio::test]
    async fn storage_that_rejects_if_none_match_as_unimplemented_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path(), Some(Flaw::Rejects));
        let err = repo.probe_conditional_put().await.unwrap_err();
        assert!(matches!(err, RepoError::NoConditionalPut { .. }), "{err}");
        assert!(err.to_string().contains("not implemented"), "{err}");
    }
}
