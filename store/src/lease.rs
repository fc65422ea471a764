//! Leases under `locks/` (DESIGN §3): a named, time-limited claim that one process at a
//! time holds on part of the repository, taken with an atomic create-if-absent. A lease
//! past its expiry (its holder died) is broken by the next taker. `expire` and the object
//! tracker share one per bucket, so history is never folded under a pass in progress.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::meta;
use crate::repository::{RepoError, Repository};
use crate::storage::{Body, Metadata, PutOutcome};

/// Where leases live.
pub const LOCKS_PREFIX: &str = "locks/";

/// How often a waiting taker tries again.
const POLL: Duration = Duration::from_millis(500);

/// The lease object's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    token: String,
    expires_at: DateTime<Utc>,
}

/// A lease this process holds; give it back with `release`.
#[derive(Debug)]
pub struct Lease {
    repo: Repository,
    key: String,
    name: String,
    holder: String,
    token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{name} is held by {holder} until {until}; HINT: wait for it to finish (or, if that process is gone, for the lease to expire)")]
    Held {
        name: String,
        holder: String,
        until: DateTime<Utc>,
    },
    /// The lease expired while this process held it and another one took it over.
    #[error("{name} was taken over by {holder} after it expired unrenewed here; HINT: only one process may hold it: stop one of them")]
    Lost { name: String, holder: String },
    /// It could not be renewed for longer than it lasts, so another process may have taken
    /// it meanwhile: what it protected must be assumed changed.
    #[error("{name} could not be renewed for longer than it lasts, so another process may have held it meanwhile; HINT: check that the repository is reachable, then run again (a tracker running continuously retries at its next interval)")]
    Lapsed { name: String },
    #[error(transparent)]
    Repository(#[from] RepoError),
}

fn key_of(name: &str) -> String {
    format!("{LOCKS_PREFIX}{name}.json")
}

impl Lease {
    /// Takes lease `name` for `ttl`, trying again until `wait` has passed.
    pub async fn take(
        repo: &Repository,
        name: &str,
        holder: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Lease, LeaseError> {
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            match Lease::try_take(repo, name, holder, ttl).await {
                Err(LeaseError::Held { .. }) if tokio::time::Instant::now() + POLL < give_up => {
                    tokio::time::sleep(POLL).await;
                }
                other => return other,
            }
        }
    }

    async fn try_take(
        repo: &Repository,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, LeaseError> {
        let key = key_of(name);
        let token = format!("{:016x}", rand::thread_rng().gen::<u64>());
        let (json, metadata) = encode(&key, holder, &token, ttl)?;
        // Two tries: the second after breaking an expired lease.
        for _ in 0..2 {
            let outcome = repo
                .storage
                .put_if_absent(&key, Body::Bytes(json.clone().into()), &metadata)
                .await
                .map_err(RepoError::storage(&key))?;
            if outcome == PutOutcome::Created {
                return Ok(Lease {
                    repo: repo.clone(),
                    key,
                    name: name.to_string(),
                    holder: holder.to_string(),
                    token,
                });
            }
            let Some(held) = read(repo, &key).await? else {
                continue; // released meanwhile
            };
            if held.expires_at > Utc::now() {
                return Err(LeaseError::Held {
                    name: name.to_string(),
                    holder: held.holder,
                    until: held.expires_at,
                });
            }
            warn!(lease = %key, holder = %held.holder, expired = %held.expires_at, "breaking an expired lease");
            repo.delete(&key).await?;
        }
        Err(LeaseError::Held {
            name: name.to_string(),
            holder: "another process".to_string(),
            until: Utc::now(),
        })
    }

    /// Extends the lease to `ttl` from now, unless another process took it over (after it
    /// expired here): then `Lost`, and nothing is written.
    pub async fn renew(&self, ttl: Duration) -> Result<(), LeaseError> {
        match read(&self.repo, &self.key).await? {
            Some(held) if held.token != self.token => {
                return Err(LeaseError::Lost {
                    name: self.name.clone(),
                    holder: held.holder,
                })
            }
            // Ours, or broken and not retaken: hold it again.
            _ => {}
        }
        let (json, metadata) = encode(&self.key, &self.holder, &self.token, ttl)?;
        self.repo
            .storage
            .put(&self.key, Body::Bytes(json.into()), &metadata)
            .await
            .map_err(RepoError::storage(&self.key))?;
        Ok(())
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gives the lease back (unless it expired and someone else took it meanwhile).
    pub async fn release(self) -> Result<(), RepoError> {
        match read(&self.repo, &self.key).await? {
            Some(held) if held.token == self.token => self.repo.delete(&self.key).await,
            _ => {
                warn!(lease = %self.key, "the lease expired and was taken over before release");
                Ok(())
            }
        }
    }
}

/// The stored form of a lease held by `holder` with `token` for `ttl` from now.
fn encode(
    key: &str,
    holder: &str,
    token: &str,
    ttl: Duration,
) -> Result<(Vec<u8>, Metadata), RepoError> {
    let record = LeaseRecord {
        holder: holder.to_string(),
        token: token.to_string(),
        expires_at: Utc::now()
            + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1)),
    };
    let json = serde_json::to_vec(&record).map_err(|e| RepoError::Task {
        message: format!("cannot serialise lease {key}: {e}"),
    })?;
    let metadata = Metadata::from([(meta::KIND.to_string(), meta::KIND_LEASE.to_string())]);
    Ok((json, metadata))
}

/// The lease at `key`, `None` when there is none. One that does not parse counts as
/// expired, so a damaged lease never blocks forever.
async fn read(repo: &Repository, key: &str) -> Result<Option<LeaseRecord>, RepoError> {
    match repo.read_document(key).await {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).unwrap_or(
            LeaseRecord {
                holder: "unreadable lease".to_string(),
                token: String::new(),
                expires_at: DateTime::<Utc>::MIN_UTC,
            },
        ))),
        Err(RepoError::Storage {
            source: crate::StorageError::NotFound { .. },
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Who takes a lease: what, on which host, with which process id.
pub fn holder(what: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown host".to_string());
    format!("{what} on {host} (pid {})", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url::RepoUrl;

    #[tokio::test]
    async fn one_holder_at_a_time_and_expired_leases_are_broken() {
        let dir = tempfile::tempdir().unwrap();
        let url = RepoUrl::File {
            path: dir.path().join("repo"),
        };
        let repo = Repository::create(&url, &Default::default()).await.unwrap();
        let hour = Duration::from_secs(3600);
        let first = Lease::take(&repo, "objects-app", "first", hour, Duration::ZERO)
            .await
            .unwrap();
        let err = Lease::take(
            &repo,
            "objects-app",
            "second",
            hour,
            Duration::from_millis(600),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, LeaseError::Held { holder, .. } if holder == "first"),
            "{err}"
        );
        // Another name is independent.
        Lease::take(&repo, "objects-other", "second", hour, Duration::ZERO)
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        first.release().await.unwrap();
        let second = Lease::take(
            &repo,
            "objects-app",
            "second",
            Duration::ZERO,
            Duration::ZERO,
        )
        .await
        .unwrap();
        // `second` expired at once (a holder that died): the next taker breaks it, and
        // the old holder's release leaves the new lease alone.
        let third = Lease::take(&repo, "objects-app", "third", hour, Duration::ZERO)
            .await
            .unwrap();
        let lost = second.renew(hour).await.unwrap_err();
        assert!(
            matches!(&lost, LeaseError::Lost { holder, .. } if holder == "third"),
            "{lost}"
        );
        third.renew(hour).await.unwrap();
        second.release().await.unwrap();
        assert!(repo.head(&key_of("objects-app")).await.unwrap().is_some());
        third.release().await.unwrap();
        assert!(repo.head(&key_of("objects-app")).await.unwrap().is_none());
    }
}
