//! The one retry policy for repository calls, shared by the write side (the archiver's
//! uploads, which wait out an outage for as long as it lasts) and the read side (`restore`,
//! `plan`, `wal-fetch`, which give up after a budget so that recovery fails loudly instead
//! of hanging). Transient errors (network, 5xx, throttling, a transfer cut mid-body) are
//! retried with exponential backoff; refused credentials and a full local disk only for a
//! while (keys rotate, space gets freed); anything else is returned at once.

use std::time::Duration;

use tokio::time::Instant;

use crate::repository::RepoError;

/// How long refused credentials and a full local disk are retried by the write side:
/// long enough for keys to rotate, a token to be renewed or an operator to free space.
pub const PATIENCE: Duration = Duration::from_secs(15 * 60);
/// How long the read side retries one call by default (`wal-fetch --retry-seconds`).
pub const READ_BUDGET: Duration = Duration::from_secs(60);
/// At most one warning per this long for one failing operation.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// When to retry a failed repository call, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first pause; each later one doubles, up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// How long transient errors are retried; `None`: for as long as they last.
    pub budget: Option<Duration>,
    /// How long refused credentials and a full local disk are retried.
    pub patience: Duration,
}

impl RetryPolicy {
    /// Repository writes: transient errors indefinitely (the WAL waits on the server
    /// meanwhile), refused credentials and a full disk for [`PATIENCE`].
    pub const WRITES: RetryPolicy = RetryPolicy {
        first_delay: Duration::from_millis(250),
        max_delay: Duration::from_secs(30),
        budget: None,
        patience: PATIENCE,
    };

    /// Repository reads: every failure that may pass is retried for `budget`, then the
    /// last error is returned (wrapped in [`RepoError::GaveUp`]).
    pub const fn reads(budget: Duration) -> RetryPolicy {
        RetryPolicy {
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            budget: Some(budget),
            patience: budget,
        }
    }

    /// Run `op` until it succeeds, fails for good, or the policy gives up. Retries are
    /// logged as warnings, at most one per 30 s for one operation (`what`).
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, RepoError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RepoError>>,
    {
        let started = Instant::now();
        let mut delay = self.first_delay;
        let mut attempt = 1u32;
        let mut logged: Option<Instant> = None;
        loop {
            let e = match op().await {
                Ok(v) => {
                    if attempt > 1 {
                        tracing::info!(attempt, "{what} succeeded after retrying");
                    }
                    return Ok(v);
                }
                Err(e) => e,
            };
            let window = if e.is_transient() {
                self.budget
            } else if e.is_access_denied() || e.is_disk_full() {
                Some(self.patience)
            } else {
                return Err(e);
            };
            if window.is_some_and(|w| started.elapsed() + delay >= w) {
                return Err(match attempt {
                    1 => e,
                    _ => RepoError::GaveUp {
                        what: what.to_string(),
                        attempts: attempt,
                        elapsed: started.elapsed(),
                        source: Box::new(e),
                    },
                });
            }
            let error = chain(&e);
            if logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                tracing::warn!(%error, attempt, failing_for = ?started.elapsed(), retry_in = ?delay, "{what} failed; retrying");
                logged = Some(Instant::now());
            } else {
                tracing::debug!(%error, attempt, "{what} failed; retrying");
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.max_delay);
            attempt += 1;
        }
    }
}

/// `e` and every cause under it, joined by `: `, for log lines (a repository error's own
/// text only names the object; the cause says what went wrong).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageError;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn transient() -> RepoError {
        RepoError::Storage {
            key: "k".into(),
            source: StorageError::Backend {
                operation: "GetObject",
                key: "k".into(),
                message: "500".into(),
                transient: true,
            },
        }
    }

    const FAST: RetryPolicy = RetryPolicy {
        first_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
        budget: Some(Duration::from_millis(200)),
        patience: Duration::from_millis(200),
    };

    #[tokio::test]
    async fn transient_failures_are_retried_until_they_pass() {
        let calls = AtomicU32::new(0);
        let got = FAST
            .run("get", || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(transient()),
                    _ => Ok(7),
                }
            })
            .await;
        assert_eq!(got.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn lasting_failures_give_up_after_the_budget_and_say_so() {
        let calls = AtomicU32::new(0);
        let err = FAST
            .run("get", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(transient())
            })
            .await
            .unwrap_err();
        let RepoError::GaveUp { attempts, .. } = &err else {
            panic!("{err}");
        };
        assert!(*attempts > 2 && *attempts == calls.load(Ordering::SeqCst));
        assert!(chain(&err).contains("500"), "{}", chain(&err));
    }

    #[tokio::test]
    async fn permanent_failures_are_returned_at_once() {
        let calls = AtomicU32::new(0);
        let err = FAST
            .run("get", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(RepoError::SplitBrain { key: "k".into() })
            })
            .await
            .unwrap_err();
        assert!(matches!(err, RepoError::SplitBrain { .. }));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
