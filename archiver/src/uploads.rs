//! Concurrent uploads of spooled WAL: complete segments, partial segments and the
//! removal of superseded partial objects. Transient storage failures are retried with
//! backoff for as long as they last (the slot keeps the WAL meanwhile); anything else
//! is returned to the stream loop, which stops.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tidemark_protocol::{Lsn, SegmentName, TimelineId, WalSegmentSize};
use tidemark_store::repository::{ArchivedObject, RepoError, Repository};
use tidemark_store::storage::Metadata;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::ArchiverError;
use crate::spool::{PartialSnapshot, SpooledSegment};

/// A finished background job.
#[derive(Debug)]
pub enum Done {
    Segment {
        segment: SpooledSegment,
        object: ArchivedObject,
        /// The metadata stored with it (its WAL summary, if any).
        meta: Metadata,
    },
    Partial {
        name: SegmentName,
        end_lsn: Lsn,
        /// `None` when the repository already held as much (nothing was written).
        object: Option<ArchivedObject>,
        meta: Metadata,
    },
    Removed {
        name: SegmentName,
    },
    Marker,
}

/// The pool of upload jobs.
pub struct Uploads {
    repo: Arc<Repository>,
    seg: WalSegmentSize,
    level: i32,
    permits: Arc<Semaphore>,
    jobs: JoinSet<Result<Done, ArchiverError>>,
}

impl Uploads {
    pub fn new(repo: Arc<Repository>, seg: WalSegmentSize, level: i32, concurrency: usize) -> Self {
        Uploads {
            repo,
            seg,
            level,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            jobs: JoinSet::new(),
        }
    }

    /// Jobs not yet collected with [`Uploads::next`].
    pub fn pending(&self) -> usize {
        self.jobs.len()
    }

    /// Compress and store a complete segment, with `meta` (its WAL summary) added.
    pub fn segment(&mut self, segment: SpooledSegment, meta: Metadata) {
        let (repo, seg, level, permits) = self.parts();
        self.jobs.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let object = with_retry("upload segment", || {
                repo.archive_segment(segment.name, seg, &segment.path, level, meta.clone())
            })
            .await?;
            Ok(Done::Segment {
                segment,
                object,
                meta,
            })
        });
    }

    /// Compress and store the received prefix of the current segment, with `meta`.
    pub fn partial(&mut self, snapshot: PartialSnapshot, meta: Metadata) {
        let (repo, seg, level, permits) = self.parts();
        self.jobs.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let end_lsn = snapshot.name.start_lsn(seg) + snapshot.len;
            let object = with_retry("upload partial segment", || {
                repo.archive_partial(
                    snapshot.name,
                    seg,
                    &snapshot.file,
                    &snapshot.path,
                    snapshot.len,
                    level,
                    meta.clone(),
                )
            })
            .await?;
            Ok(Done::Partial {
                name: snapshot.name,
                end_lsn,
                object,
                meta,
            })
        });
    }

    /// Record that the repository held all of the server's WAL on `timeline` up to `lsn`
    /// when the server's clock read `server_time`.
    pub fn complete_marker(&mut self, timeline: TimelineId, lsn: Lsn, server_time: DateTime<Utc>) {
        let repo = self.repo.clone();
        self.jobs.spawn(async move {
            with_retry("store the archive-complete marker", || {
                repo.mark_complete(timeline, lsn, server_time)
            })
            .await?;
            Ok(Done::Marker)
        });
    }

    /// Remove a partial object that a newer one supersedes.
    pub fn remove_partial(&mut self, name: SegmentName) {
        let (repo, seg, _, permits) = self.parts();
        self.jobs.spawn(async move {
            let _permit = permits.acquire_owned().await;
            with_retry("remove superseded partial segment", || {
                repo.remove_partial(name, seg)
            })
            .await?;
            Ok(Done::Removed { name })
        });
    }

    /// Abandon every job (their files stay in the spool for the next start).
    pub fn abort_all(&mut self) {
        self.jobs.abort_all();
    }

    /// The next finished job; `None` when there are none running. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Done, ArchiverError>> {
        let joined = self.jobs.join_next().await?;
        Some(joined.unwrap_or_else(|e| Err(ArchiverError::Task(e.to_string()))))
    }

    fn parts(&self) -> (Arc<Repository>, WalSegmentSize, i32, Arc<Semaphore>) {
        (
            self.repo.clone(),
            self.seg,
            self.level,
            self.permits.clone(),
        )
    }
}

/// How long refused credentials and a full local disk are retried before giving up: long
/// enough for keys to rotate, a token to be renewed or an operator to free space.
pub const PATIENCE: Duration = Duration::from_secs(15 * 60);
/// At most one warning per this long for one failing operation.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// The one retry policy for repository writes: transient errors (network, 5xx,
/// throttling) are retried with exponential backoff capped at 30 s, indefinitely; refused
/// credentials and a full local disk for [`PATIENCE`]; others are returned at once.
/// Retries are logged loudly but at most every [`LOG_EVERY`].
pub async fn with_retry<T, F, Fut>(what: &str, mut op: F) -> Result<T, ArchiverError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RepoError>>,
{
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1u32;
    let mut logged: Option<tokio::time::Instant> = None;
    loop {
        match op().await {
            Ok(v) => {
                if logged.is_some() {
                    tracing::info!(attempt, "{what} succeeded after retrying");
                }
                return Ok(v);
            }
            Err(e)
                if e.is_transient()
                    || ((e.is_access_denied() || e.is_disk_full())
                        && started.elapsed() < PATIENCE) =>
            {
                let error = chain(&e);
                if logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                    tracing::warn!(%error, attempt, failing_for = ?started.elapsed(), retry_in = ?delay, "{what} failed; retrying");
                    logged = Some(tokio::time::Instant::now());
                } else {
                    tracing::debug!(%error, attempt, "{what} failed; retrying");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
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
