//! Concurrent uploads of spooled WAL: complete segments, partial segments and the
//! removal of superseded partial objects. Transient storage failures are retried with
//! backoff for as long as they last (the slot keeps the WAL meanwhile); anything else
//! is returned to the stream loop, which stops.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tidemark_protocol::{Lsn, SegmentName, TimelineId, WalSegmentSize};
use tidemark_store::repository::{ArchivedObject, RepoError, Repository};
use tidemark_store::retry::RetryPolicy;
use tidemark_store::storage::Metadata;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::ArchiverError;
use crate::metrics::{Metrics, Upload};
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
    gate: Gate,
    metrics: Arc<Metrics>,
}

/// The first complete segment of a run is stored before anything after it: it is where
/// the server's WAL meets what the repository holds (a stored partial of it, or segments
/// a lagging catalog re-sends), so a split brain is refused there before a later segment
/// of the other server's WAL could land beside it.
enum Gate {
    /// The next complete segment is the run's first.
    Next,
    /// The run's first segment is being stored; what comes after it waits.
    Waiting(SegmentName, Vec<Held>),
    Open,
}

enum Held {
    Segment(SpooledSegment, Metadata),
    Partial(PartialSnapshot, Metadata),
}

impl Uploads {
    pub fn new(
        repo: Arc<Repository>,
        seg: WalSegmentSize,
        level: i32,
        concurrency: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Uploads {
            repo,
            seg,
            level,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            jobs: JoinSet::new(),
            gate: Gate::Next,
            metrics,
        }
    }

    /// A run begins (at start-up, or streaming from a new point): its first complete
    /// segment is stored alone first. A first segment still being stored keeps gating.
    pub fn new_run(&mut self) {
        if matches!(self.gate, Gate::Open) {
            self.gate = Gate::Next;
        }
    }

    /// Jobs waiting for the run's first segment, as [`Uploads::pending`] counts them.
    fn held(&self) -> usize {
        match &self.gate {
            Gate::Waiting(_, held) => held.len(),
            _ => 0,
        }
    }

    /// Jobs not yet collected with [`Uploads::next`].
    pub fn pending(&self) -> usize {
        self.jobs.len() + self.held()
    }

    /// Compress and store a complete segment, with `meta` (its WAL summary) added.
    pub fn segment(&mut self, segment: SpooledSegment, meta: Metadata) {
        match &mut self.gate {
            Gate::Next => self.gate = Gate::Waiting(segment.name, Vec::new()),
            Gate::Waiting(_, held) => return held.push(Held::Segment(segment, meta)),
            Gate::Open => {}
        }
        self.spawn_segment(segment, meta);
    }

    fn spawn_segment(&mut self, segment: SpooledSegment, meta: Metadata) {
        let (repo, seg, level, permits, metrics) = self.parts();
        self.jobs.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let began = Instant::now();
            let (r, m, path, meta_ref) = (&repo, &metrics, &segment.path, &meta);
            let object = with_retry("upload segment", || async move {
                let stored = r
                    .archive_segment(segment.name, seg, path, level, meta_ref.clone())
                    .await;
                stored.inspect_err(|e| m.write_failed(e))
            })
            .await?;
            metrics.uploaded(Upload::Segment, object.sealed.stored_size, began.elapsed());
            Ok(Done::Segment {
                segment,
                object,
                meta,
            })
        });
    }

    /// Compress and store the received prefix of the current segment, with `meta`.
    pub fn partial(&mut self, snapshot: PartialSnapshot, meta: Metadata) {
        if let Gate::Waiting(first, held) = &mut self.gate {
            if snapshot.name > *first {
                return held.push(Held::Partial(snapshot, meta));
            }
        }
        self.spawn_partial(snapshot, meta);
    }

    fn spawn_partial(&mut self, snapshot: PartialSnapshot, meta: Metadata) {
        let (repo, seg, level, permits, metrics) = self.parts();
        self.jobs.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let end_lsn = snapshot.name.start_lsn(seg) + snapshot.len;
            let began = Instant::now();
            let (r, m, snap, meta_ref) = (&repo, &metrics, &snapshot, &meta);
            let object = with_retry("upload partial segment", || async move {
                let stored = r
                    .archive_partial(
                        snap.name,
                        seg,
                        &snap.file,
                        &snap.path,
                        snap.len,
                        level,
                        meta_ref.clone(),
                    )
                    .await;
                stored.inspect_err(|e| m.write_failed(e))
            })
            .await?;
            if let Some(o) = &object {
                metrics.uploaded(Upload::Partial, o.sealed.stored_size, began.elapsed());
            }
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
        let (repo, seg, _, permits, _) = self.parts();
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
        self.gate = Gate::Next;
    }

    /// The next finished job; `None` when there are none running. Cancel-safe. Once the
    /// run's first segment is stored, what waited for it starts.
    pub async fn next(&mut self) -> Option<Result<Done, ArchiverError>> {
        let joined = self.jobs.join_next().await?;
        let done = joined.unwrap_or_else(|e| Err(ArchiverError::Task(e.to_string())));
        if let Ok(Done::Segment { segment, .. }) = &done {
            self.open_gate_after(segment.name);
        }
        Some(done)
    }

    /// `stored` is stored: if it was the run's first segment, start what waited for it.
    fn open_gate_after(&mut self, stored: SegmentName) {
        if !matches!(&self.gate, Gate::Waiting(first, _) if *first == stored) {
            return;
        }
        if let Gate::Waiting(_, held) = std::mem::replace(&mut self.gate, Gate::Open) {
            for job in held {
                match job {
                    Held::Segment(segment, meta) => self.spawn_segment(segment, meta),
                    Held::Partial(snapshot, meta) => self.spawn_partial(snapshot, meta),
                }
            }
        }
    }

    fn parts(
        &self,
    ) -> (
        Arc<Repository>,
        WalSegmentSize,
        i32,
        Arc<Semaphore>,
        Arc<Metrics>,
    ) {
        (
            self.repo.clone(),
            self.seg,
            self.level,
            self.permits.clone(),
            self.metrics.clone(),
        )
    }
}

pub use tidemark_store::retry::{chain, PATIENCE};

/// Repository writes under the one retry policy ([`RetryPolicy::WRITES`]): transient
/// errors are retried for as long as they last, refused credentials and a full local disk
/// for [`PATIENCE`], others are returned at once.
pub async fn with_retry<T, F, Fut>(what: &str, op: F) -> Result<T, ArchiverError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RepoError>>,
{
    Ok(RetryPolicy::WRITES.run(what, op).await?)
}
