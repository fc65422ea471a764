//! `tidemark stream`: continuous WAL archiving over the physical replication protocol.
//!
//! replication -> spool -> compress -> upload -> catalog -> slot feedback. The flush
//! position reported to the server (and so the slot's `restart_lsn`) only ever covers
//! WAL that is stored in the repository and recorded in the catalog (invariant 1).
//! The received prefix of the current segment is uploaded as a partial segment every
//! `partial_interval` while WAL flows, which bounds the RPO.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tidemark_protocol::conninfo::ConnInfo;
use tidemark_protocol::replication::{
    ReplicationClient, ReplicationError, ReplicationStream, StartOutcome, StreamMessage,
    SystemIdentity,
};
use tidemark_protocol::{parse_history, Lsn, SegmentName, TimelineId, WalSegmentSize};
use tidemark_store::catalog::{Catalog, SegmentRecord};
use tidemark_store::gap::WalGap;
use tidemark_store::identity::RepoIdentity;
use tidemark_store::layout;
use tidemark_store::reindex::ReindexError;
use tidemark_store::repository::{ArchivedObject, Repository};
use tidemark_store::storage::Metadata;
use tidemark_store::wal_summary::WalSummary;
use tokio::sync::watch;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::acks::AckTracker;
use crate::cluster::Cluster;
use crate::error::ArchiverError;
use crate::events::{valid_prefix_len, EventTracker};
use crate::metrics::Metrics;
use crate::single_writer;
use crate::spool::{AppendError, LeftoverPartial, Leftovers, Spool, SpoolError};
use crate::uploads::{Done, Uploads, PATIENCE};

pub(crate) mod follow;

/// How `stream` behaves. Defaults match the CLI's.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Physical replication slot to create (if missing) and advance.
    pub slot: String,
    /// Where received WAL is kept until it is stored.
    pub spool_dir: PathBuf,
    /// How often the received prefix of the current segment is uploaded.
    pub partial_interval: Duration,
    /// zstd level.
    pub compression_level: i32,
    /// Uploads running at once.
    pub upload_concurrency: usize,
    /// How often a standby status update is sent when nothing else prompts one.
    pub status_interval: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// How often, at most, an idle but complete archive re-writes its archive-complete
    /// marker (more often when the archived end moves).
    pub complete_marker_interval: Duration,
    /// How long a reply the server asked for may wait for the received tail to be
    /// stored. A server that is shutting down waits for that reply; past this, tidemark
    /// lets go of the connection instead of holding the shutdown up.
    pub tail_timeout: Duration,
    /// Opt-in synchronous-standby mode: WAL is reported flushed once it is fsync'd in the
    /// spool (DESIGN invariant 1's one exception), so the server may choose this
    /// archiver as a synchronous standby. Off: such a server configuration is refused.
    pub synchronous: bool,
    /// When the server no longer has the WAL streaming must resume from, record the gap
    /// in the repository and start a new run at the server's current segment (instead of
    /// stopping with `WalRemoved`). For the operator to set once, deliberately.
    pub accept_gap: bool,
    /// Where streaming reports what it does (served by `--metrics-listen`).
    pub metrics: Arc<Metrics>,
}

impl StreamConfig {
    pub fn new(spool_dir: PathBuf) -> Self {
        StreamConfig {
            slot: "tidemark".into(),
            spool_dir,
            partial_interval: Duration::from_secs(5),
            compression_level: 3,
            upload_concurrency: 4,
            status_interval: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
            complete_marker_interval: Duration::from_secs(5),
            tail_timeout: Duration::from_secs(5),
            synchronous: false,
            accept_gap: false,
            metrics: Arc::default(),
        }
    }
}

/// Shutdown requests: the count of signals received. One finishes in-flight uploads and
/// returns; two abandon them (they stay in the spool for the next start).
pub type Shutdown = watch::Receiver<u32>;

/// Archive WAL from `conninfo` into `repo` until `shutdown` fires.
pub async fn stream(
    conninfo: &ConnInfo,
    repo: Repository,
    catalog: &Path,
    config: StreamConfig,
    shutdown: Shutdown,
) -> Result<(), ArchiverError> {
    let identity = repo
        .identity()
        .await?
        .ok_or_else(|| ArchiverError::NotInitialised {
            url: repo.url.to_string(),
        })?;
    let seg = WalSegmentSize::new(identity.wal_segment_size)
        .map_err(|e| ArchiverError::Task(format!("repository identity: {e}")))?;
    // One archiver: refused here, before anything is touched.
    let _catalog_lock =
        single_writer::lock_local(&single_writer::catalog_lock_path(catalog), "catalog")?;
    let _spool_lock = single_writer::lock_local(&config.spool_dir.join("LOCK"), "spool")?;
    let lease = single_writer::take_lease(&repo).await?;
    let outcome = tokio::select! {
        outcome = stream_holding_lease(conninfo, repo, &identity, seg, catalog, config, shutdown) => outcome,
        lost = single_writer::keep_lease(&lease) => Err(lost),
    };
    if let Err(e) = lease.release().await {
        let error = crate::uploads::chain(&e);
        tracing::warn!(%error, "cannot release the repository lease; it expires by itself");
    }
    outcome
}

async fn stream_holding_lease(
    conninfo: &ConnInfo,
    repo: Repository,
    identity: &RepoIdentity,
    seg: WalSegmentSize,
    catalog: &Path,
    config: StreamConfig,
    shutdown: Shutdown,
) -> Result<(), ArchiverError> {
    // What an earlier run received is stored first, before the server is asked for
    // anything: that server may be gone, and then the spool holds the only copy.
    let (spool, leftovers) = Spool::open(&config.spool_dir, seg)?;
    config.metrics.spool_dir(&config.spool_dir);
    let catalog = Catalog::open(catalog)?;
    catalog.bind(&repo.url.to_string(), identity.system_identifier)?;
    let repo = Arc::new(repo);
    let mut archiver = Archiver {
        uploads: Uploads::new(
            repo.clone(),
            seg,
            config.compression_level,
            config.upload_concurrency,
            config.metrics.clone(),
        ),
        repo,
        catalog,
        seg,
        spool,
        acks: AckTracker::new(Lsn::INVALID),
        events: EventTracker::new(TimelineId::FIRST, Lsn::INVALID, seg),
        timeline: TimelineId::FIRST,
        last_partial: Lsn::INVALID,
        partial_running: false,
        partial_stored: None,
        last_marker: None,
        last_status: None,
        system_identifier: identity.system_identifier,
        config,
        shutdown,
    };
    if archiver.store_leftovers(leftovers).await? == Stored::Interrupted {
        return Ok(());
    }

    let mut cluster = archiver.connect_server(conninfo).await?;
    cluster.check_repository(&archiver.repo, false).await?;
    let (timeline, start) = archiver.resume_point(&mut cluster).await?;
    tracing::info!(%timeline, %start, slot = %archiver.config.slot, "streaming");
    archiver.acks = AckTracker::new(start);
    archiver.begin(timeline, start)?;
    let outcome = archiver.run(conninfo, cluster.client, timeline).await;
    if let Err(e) = &outcome {
        // Whatever stopped us, what was received stays for the next start.
        if let Err(sync) = archiver.spool.sync() {
            tracing::warn!(error = %sync, "cannot fsync the received tail");
        }
        tracing::debug!(error = %e, "stream stopped on an error");
    }
    outcome
}

/// Messages taken from the socket's buffer in a row before the spool is written out and
/// timers, uploads and signals get their turn.
const BATCH_MESSAGES: usize = 64;

/// Once caught up with the server, the loop waits this long before reading again, so that
/// what a busy server sends in many small messages (a flush per commit) is taken in a few
/// large reads and one spool write instead of a wake-up and a write each — the per-message
/// cost that dominated steady streaming. The spool then trails the server by at most this
/// much, which the partial interval dwarfs; the slot keeps the WAL meanwhile. Not in
/// synchronous mode, where a commit waits for each acknowledgement.
const COALESCE: Duration = Duration::from_millis(20);

/// The socket's low-water mark meanwhile, so that the messages arriving do not each wake
/// the runtime either.
const COALESCE_LOW_WATER: usize = 32 << 10;

/// Waits [`COALESCE`] with the socket's low-water mark raised. It is set back to 1 before
/// returning, which signals whatever is queued: a lone keepalive must still wake the loop.
/// A socket that refuses the mark only costs the wake-ups it would have saved.
async fn coalesce(stream: &ReplicationStream) -> Result<(), ReplicationError> {
    let raised = stream.set_read_low_water(COALESCE_LOW_WATER).is_ok();
    tokio::time::sleep(COALESCE).await;
    match raised {
        true => stream.set_read_low_water(1),
        false => Ok(()),
    }
}

/// How long the spool's disk has been full, and when that was last said.
#[derive(Default)]
struct FullDisk {
    since: Option<Instant>,
    logged: Option<Instant>,
}

fn is_full(e: &SpoolError) -> bool {
    e.source.kind() == std::io::ErrorKind::StorageFull
}

/// Whether start-up storing of an earlier run's leftovers finished.
#[derive(Debug, PartialEq, Eq)]
enum Stored {
    Done,
    Interrupted,
}

/// How one replication connection ended.
enum End {
    Shutdown,
    /// tidemark let go of the connection (a reply it could not give in time).
    Reconnect,
    TimelineSwitch {
        client: ReplicationClient,
        next: TimelineId,
        switch: Lsn,
    },
}

struct Archiver {
    repo: Arc<Repository>,
    catalog: Catalog,
    seg: WalSegmentSize,
    spool: Spool,
    acks: AckTracker,
    uploads: Uploads,
    /// Summaries of the WAL being received, for restore planning.
    events: EventTracker,
    /// The timeline being received.
    timeline: TimelineId,
    /// End of the newest partial upload started.
    last_partial: Lsn,
    partial_running: bool,
    /// The newest partial upload that finished: its segment's start and its end.
    partial_stored: Option<(Lsn, Lsn)>,
    /// When the archive-complete marker was last written, and for which LSN.
    last_marker: Option<(Instant, Lsn)>,
    /// The last status update sent (write, flush).
    last_status: Option<(Lsn, Lsn)>,
    /// The repository's cluster: every connection must reach it.
    system_identifier: u64,
    config: StreamConfig,
    shutdown: Shutdown,
}

impl Archiver {
    /// Store what an earlier run left in the spool: its complete segments, then the valid
    /// prefix of the segment it was receiving (when the repository lacks it). A shutdown
    /// signal stops this at once; the files stay for the next start.
    async fn store_leftovers(&mut self, left: Leftovers) -> Result<Stored, ArchiverError> {
        if !left.complete.is_empty() {
            tracing::info!(
                count = left.complete.len(),
                "uploading segments left in the spool by an earlier run"
            );
        }
        for segment in left.complete {
            // Not decoded by this run: no WAL summary (the planner treats it as unknown).
            self.uploads.segment(segment, Metadata::new());
        }
        let partial = match left.partial {
            Some(partial) => self.store_leftover_partial(partial)?,
            None => None,
        };
        loop {
            tokio::select! {
                done = self.uploads.next() => match done {
                    Some(done) => { self.finished(done?)?; }
                    None => break,
                },
                _ = self.shutdown.changed() => {
                    tracing::info!(
                        pending = self.uploads.pending(),
                        "stopping on request; what an earlier run left stays in the spool for the next start"
                    );
                    self.uploads.abort_all();
                    return Ok(Stored::Interrupted);
                }
            }
        }
        if let Some(partial) = partial {
            partial.remove()?;
        }
        Ok(Stored::Done)
    }

    /// Start storing the valid prefix of a segment an earlier run was receiving; returns
    /// it to be removed once stored (`None`: removed already, nothing worth storing).
    fn store_leftover_partial(
        &mut self,
        partial: LeftoverPartial,
    ) -> Result<Option<LeftoverPartial>, ArchiverError> {
        let data = std::fs::read(&partial.path).map_err(|source| SpoolError {
            path: partial.path.clone(),
            source,
        })?;
        let valid = valid_prefix_len(partial.name, &data, self.seg);
        if valid == 0 {
            partial.remove()?;
            return Ok(None);
        }
        tracing::info!(
            file = %partial.path.display(),
            bytes = valid,
            "storing the received prefix an earlier run left in the spool"
        );
        // Its summary, from the prefix itself (complete unless a record from the segment
        // before continues into it).
        let mut events = EventTracker::new(
            partial.name.timeline,
            partial.name.start_lsn(self.seg),
            self.seg,
        );
        events.feed(&data[..valid as usize]);
        let meta = events.so_far(partial.name);
        self.partial_running = true;
        self.uploads.partial(partial.snapshot(valid)?, meta);
        Ok(Some(partial))
    }

    /// Where streaming resumes: the earliest segment the catalog lacks, looking both after
    /// the newest unbroken run of archived segments and at or after the slot's restart
    /// point (the slot is only acknowledged up to stored WAL, so a hole after it is real).
    /// Never beyond the archive's end: if the server dropped that WAL, resuming there
    /// fails loudly instead of leaving a silent gap. On a fresh repository: the slot's
    /// restart point, else the server's current segment.
    ///
    /// The catalog is only an index (invariant 2): when it is empty (lost with its host),
    /// its WAL index is rebuilt from the repository first, so streaming resumes at the
    /// repository's own end. A catalog that is merely behind re-sends what is already
    /// stored (same bytes are accepted, others refused as split brain), unless the server
    /// no longer has it (`behind_repository`).
    async fn resume_point(
        &self,
        cluster: &mut Cluster,
    ) -> Result<(TimelineId, Lsn), ArchiverError> {
        if self.catalog.newest()?.is_none() {
            self.index_repository("the catalog has no WAL index")
                .await?;
        }
        self.resume_point_from_catalog(cluster).await
    }

    /// The server no longer has WAL from `from`: if the repository already holds that
    /// segment (a catalog restored from an old copy, or missing its newest rows after the
    /// host lost power), this is no gap. Rebuild the index and return where the
    /// repository's run from there ends; `None` when the repository lacks it too.
    async fn behind_repository(
        &self,
        timeline: TimelineId,
        from: Lsn,
    ) -> Result<Option<Lsn>, ArchiverError> {
        let name = SegmentName::containing(timeline, from, self.seg);
        let key = layout::wal_segment_key(name, self.seg);
        let stored =
            crate::uploads::with_retry("look up the resume segment", || self.repo.head(&key))
                .await?;
        if stored.is_none() {
            return Ok(None);
        }
        self.index_repository(
            "the server no longer has WAL the catalog lacks, but the repository holds it",
        )
        .await?;
        let next = self
            .catalog
            .first_missing(timeline, Some(name.segno))?
            .unwrap_or(name.segno + 1);
        Ok(Some(SegmentName::new(timeline, next).start_lsn(self.seg)))
    }

    /// Rebuild the catalog's WAL index from the repository, saying `why` (loudly when
    /// the repository held WAL the catalog did not know).
    async fn index_repository(&self, why: &str) -> Result<(), ArchiverError> {
        let found = tidemark_store::reindex::reindex_wal(&self.repo, &self.catalog, self.seg)
            .await
            .map_err(|e| match e {
                ReindexError::Repository(e) => ArchiverError::Repository(e),
                ReindexError::Catalog(e) => ArchiverError::Catalog(e),
            })?;
        if found.segments + found.partials > 0 {
            tracing::warn!(
                segments = found.segments,
                partials = found.partials,
                "{why}; rebuilt its WAL index from the repository so that streaming resumes at the repository's end"
            );
        }
        Ok(())
    }

    async fn resume_point_from_catalog(
        &self,
        cluster: &mut Cluster,
    ) -> Result<(TimelineId, Lsn), ArchiverError> {
        let slot = match cluster
            .client
            .read_replication_slot(&self.config.slot)
            .await
        {
            Ok(info) => info.and_then(|s| Some((s.restart_timeline?, s.restart_lsn?))),
            Err(ReplicationError::Unsupported { .. }) => None, // PostgreSQL 14
            Err(e) => return Err(e.into()),
        };
        if let Some(start) = self.branch_point(cluster).await? {
            return Ok(start);
        }
        let timeline = self
            .catalog
            .newest_timeline()?
            .or(slot.map(|s| s.0))
            .unwrap_or(cluster.system.timeline);
        let after_archive = self.catalog.first_missing(timeline, None)?;
        let after_slot = match slot.filter(|s| s.0 == timeline) {
            Some((_, lsn)) => self
                .catalog
                .first_missing(timeline, Some(lsn.segment_number(self.seg)))?,
            None => None,
        };
        let segno = match (after_archive, after_slot) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => cluster.system.xlogpos.segment_number(self.seg),
        };
        Ok((
            timeline,
            SegmentName::new(timeline, segno).start_lsn(self.seg),
        ))
    }

    /// The server is on a newer timeline than the archive (it was promoted, or it is a
    /// restored copy promoted): archive its history file, and when the archive already
    /// holds the old timeline up to the segment where the new one branched off, start the
    /// new timeline there (that segment of the new timeline carries the old one's part).
    /// `None` when streaming must first finish the old timeline (the normal resume does,
    /// following the switch), or when the server is on the archive's timeline.
    async fn branch_point(
        &self,
        cluster: &mut Cluster,
    ) -> Result<Option<(TimelineId, Lsn)>, ArchiverError> {
        let server = cluster.system.timeline;
        if server == TimelineId::FIRST {
            return Ok(None);
        }
        // Every timeline above 1 has a history file; restores follow it. It is stored only
        // once it is known to continue what is archived.
        let (_, content) = cluster.client.timeline_history(server).await?;
        let history = parse_history(&content).map_err(|e| ArchiverError::BadHistory {
            timeline: server,
            reason: e.to_string(),
        })?;
        let archived = self.catalog.newest_timeline()?.filter(|t| *t < server);
        let switch = match archived {
            Some(archived) => Some(
                history
                    .iter()
                    .find(|e| e.parent == archived)
                    .map(|e| e.switch_lsn)
                    .ok_or(ArchiverError::DivergentTimeline { archived, server })?,
            ),
            None => None,
        };
        crate::uploads::with_retry("store timeline history", || {
            self.repo.archive_history(server, &content)
        })
        .await?;
        let (Some(archived), Some(switch)) = (archived, switch) else {
            return Ok(None);
        };
        let needed = switch.segment_start(self.seg);
        let archived_end = self
            .catalog
            .first_missing(archived, None)?
            .map(|s| SegmentName::new(archived, s).start_lsn(self.seg));
        Ok(archived_end
            .filter(|end| *end >= needed)
            .map(|_| (server, needed)))
    }

    /// Stream, reconnecting with backoff after connection losses, until shutdown.
    async fn run(
        &mut self,
        conninfo: &ConnInfo,
        client: ReplicationClient,
        mut timeline: TimelineId,
    ) -> Result<(), ArchiverError> {
        let mut client = Some(client);
        let mut backoff = Duration::from_secs(1);
        loop {
            let current = match client.take() {
                Some(c) => c,
                None => match self.reconnect(conninfo, &mut backoff).await? {
                    Some((c, system)) if system.timeline > timeline => {
                        match self
                            .onto_server_timeline(c, timeline, system.timeline)
                            .await?
                        {
                            (c, Some(next)) => {
                                timeline = next;
                                c
                            }
                            (c, None) => c,
                        }
                    }
                    Some((c, _)) => c,
                    None => break,
                },
            };
            let ended = self.stream_timeline(current, timeline).await;
            self.config.metrics.connected(false);
            match ended {
                Ok(End::Shutdown) => return Ok(()),
                Ok(End::TimelineSwitch {
                    client: c,
                    next,
                    switch,
                }) => {
                    self.switch_timeline(timeline, next, switch)?;
                    self.archive_history(c, next)
                        .await
                        .map(|c| client = Some(c))?;
                    timeline = next;
                }
                Ok(End::Reconnect) => {}
                Err(ArchiverError::WalRemoved { from, source, .. }) => {
                    if let Some(start) = self.behind_repository(timeline, from).await? {
                        self.acks = AckTracker::new(start);
                        self.begin(timeline, start)?;
                    } else if self.config.accept_gap {
                        client = Some(
                            self.start_after_gap(conninfo, timeline, from, &source)
                                .await?,
                        );
                    } else {
                        let to = self.gap_end(conninfo, timeline, from).await?;
                        return Err(ArchiverError::WalRemoved {
                            from,
                            to: Some(to),
                            source,
                        });
                    }
                    continue;
                }
                Err(e) if e.is_connection_loss() => {
                    tracing::warn!(error = %e, "replication connection lost; reconnecting");
                }
                Err(e) => return Err(e),
            }
            // The server may not come back (a primary that died): store the received tail
            // now rather than at the next partial interval.
            self.spool.sync()?;
            if !self.partial_running {
                self.start_partial()?;
            }
        }
        self.drain(true).await
    }

    /// The server no longer has WAL from `from` (`why`), and the operator accepted that:
    /// record the gap, then start a new run at the oldest segment the server still has
    /// on a new connection.
    async fn start_after_gap(
        &mut self,
        conninfo: &ConnInfo,
        timeline: TimelineId,
        from: Lsn,
        why: &ReplicationError,
    ) -> Result<ReplicationClient, ArchiverError> {
        let to = self.gap_end(conninfo, timeline, from).await?;
        let (client, system) = self.connect_checked(conninfo).await?;
        if system.timeline != timeline {
            return Err(ArchiverError::DivergentTimeline {
                archived: timeline,
                server: system.timeline,
            });
        }
        let gap = WalGap {
            timeline: timeline.0,
            from,
            to,
            recorded_at: Utc::now(),
            reason: why.to_string(),
        };
        crate::uploads::with_retry("record the gap", || self.repo.record_gap(&gap)).await?;
        tracing::error!(
            %timeline, %from, %to,
            "ACCEPTED A GAP IN THE ARCHIVE (--accept-gap): the server no longer has this WAL, so it is lost; restores to targets inside the gap are refused and backups taken before it reach only targets before {from}; take a new base backup now, and remove --accept-gap"
        );
        self.acks = AckTracker::new(to);
        self.begin(timeline, to)?;
        Ok(client)
    }

    /// Connect again, to a server of the same cluster configured as at start (see
    /// `follow`): a server restored or cloned behind the same address, one on an older
    /// timeline, or a changed synchronous_standby_names, is refused.
    async fn connect_checked(
        &self,
        conninfo: &ConnInfo,
    ) -> Result<(ReplicationClient, SystemIdentity), ArchiverError> {
        let cluster = self.connect_server(conninfo).await?;
        Ok((cluster.client, cluster.system))
    }

    /// A reconnect reached a server on `server`, newer than the `current` timeline being
    /// received (the standby promoted by a failover). When what was received of `current`
    /// reaches the point where the next timeline of the server's history branched off
    /// (the old primary's last WAL, its shutdown checkpoint say, lies beyond it and is
    /// only on `current`), continue on that next timeline from the segment holding the
    /// branch point, its history file stored first; returns that timeline. Otherwise the
    /// server streams `current` up to the branch point and then switches as usual.
    async fn onto_server_timeline(
        &mut self,
        mut client: ReplicationClient,
        current: TimelineId,
        server: TimelineId,
    ) -> Result<(ReplicationClient, Option<TimelineId>), ArchiverError> {
        let (_, content) = client.timeline_history(server).await?;
        let history = parse_history(&content).map_err(|e| ArchiverError::BadHistory {
            timeline: server,
            reason: e.to_string(),
        })?;
        let Some(at) = history.iter().position(|e| e.parent == current) else {
            return Err(ArchiverError::DivergentTimeline {
                archived: current,
                server,
            });
        };
        let switch = history[at].switch_lsn;
        if self.position()? < switch {
            return Ok((client, None));
        }
        let next = history.get(at + 1).map_or(server, |e| e.parent);
        tracing::info!(host = %client.host(), %current, %next, %switch, received = %self.position()?, "the new primary's timeline branched off before the end of what was received; continuing on it from the branch point");
        self.switch_timeline(current, next, switch)?;
        let client = self.archive_history(client, next).await?;
        Ok((client, Some(next)))
    }

    /// Wait `backoff`, then connect again. Uploads keep being recorded meanwhile.
    /// `None` when shutdown was requested first.
    async fn reconnect(
        &mut self,
        conninfo: &ConnInfo,
        backoff: &mut Duration,
    ) -> Result<Option<(ReplicationClient, SystemIdentity)>, ArchiverError> {
        loop {
            let wake = Instant::now() + *backoff;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    _ = self.shutdown.changed() => return Ok(None),
                    Some(done) = self.uploads.next() => {
                        self.finished(done?)?;
                        if !self.partial_running {
                            self.start_partial()?;
                        }
                    }
                }
            }
            *backoff = (*backoff * 2).min(self.config.max_backoff);
            match self.connect_checked(conninfo).await {
                Ok(connected) => {
                    *backoff = Duration::from_secs(1);
                    return Ok(Some(connected));
                }
                Err(e) if e.is_connection_loss() => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot reconnect to PostgreSQL");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stream one timeline on one connection.
    async fn stream_timeline(
        &mut self,
        client: ReplicationClient,
        timeline: TimelineId,
    ) -> Result<End, ArchiverError> {
        let start = self.position()?;
        let slot = self.config.slot.clone();
        let started = client
            .start_replication(Some(&slot), start, timeline)
            .await
            .map_err(|e| wal_error(e, start))?;
        let mut stream = match started {
            StartOutcome::Streaming(mut s) => {
                // At once, not at the first status interval: a slot just created on a new
                // primary reserved WAL only from its last checkpoint; reporting where the
                // repository ends moves it back to keep all WAL the repository lacks.
                self.send_status(&mut s, false).await?;
                self.config.metrics.connected(true);
                s
            }
            StartOutcome::TimelineEnded {
                client,
                next_timeline,
                switch_lsn,
            } => {
                return Ok(End::TimelineSwitch {
                    client,
                    next: next_timeline,
                    switch: switch_lsn,
                })
            }
        };
        // The first ticks come one period from now, not at once.
        let mut partial_tick = interval_at(
            Instant::now() + self.config.partial_interval,
            self.config.partial_interval,
        );
        partial_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut status_tick = interval_at(
            Instant::now() + self.config.status_interval,
            self.config.status_interval,
        );
        status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut batched = 0;
        loop {
            // Messages already read from the socket are taken without waiting, so that a
            // burst reaches the spool in large writes. Before waiting for more, what was
            // received is written out: a crash of this process then loses only what the
            // server still has and sends again.
            let ready = match batched < BATCH_MESSAGES {
                true => stream.next_message().now_or_never(),
                false => None,
            };
            let msg = match ready {
                Some(msg) => {
                    batched += 1;
                    msg
                }
                None => {
                    let caught_up = batched < BATCH_MESSAGES;
                    batched = 0;
                    self.write_spool().await?;
                    if caught_up && !self.config.synchronous {
                        coalesce(&stream).await.map_err(|e| wal_error(e, start))?;
                    }
                    tokio::select! {
                        msg = stream.next_message() => msg,
                        Some(done) = self.uploads.next() => {
                            if self.finished(done?)? {
                                self.send_status(&mut stream, false).await?;
                            }
                            continue;
                        }
                        _ = partial_tick.tick() => {
                            let received = self.position()?;
                            if received > self.last_partial {
                                self.start_partial()?;
                            } else if !self.partial_running && self.stored_end() >= received {
                                // Idle and all stored: ask for a keepalive, whose end-of-WAL
                                // and clock renew the archive-complete marker (`mark_complete`).
                                self.send_status(&mut stream, true).await?;
                            }
                            continue;
                        }
                        _ = status_tick.tick() => {
                            if self.last_status != Some((self.position()?, self.flush_position())) {
                                self.send_status(&mut stream, false).await?;
                            }
                            continue;
                        }
                        _ = self.shutdown.changed() => {
                            self.drain(true).await?;
                            // Best effort: the slot learns of the last uploads now rather
                            // than at the next start; nothing depends on it.
                            if let Err(e) = self.send_status(&mut stream, false).await {
                                tracing::debug!(error = %e, "final status update not sent");
                            }
                            return Ok(End::Shutdown);
                        }
                    }
                }
            };
            match msg.map_err(|e| wal_error(e, start))? {
                StreamMessage::XLogData {
                    wal_start,
                    server_wal_end,
                    data,
                    ..
                } => {
                    // Decode first: a segment's summary is final once all of it is fed.
                    self.events.feed(&data);
                    self.receive(wal_start, &data).await?;
                    self.config.metrics.server_position(server_wal_end);
                    self.config.metrics.received(self.position()?);
                    if self.config.synchronous {
                        // A commit may be waiting for exactly this acknowledgement.
                        self.spool.sync()?;
                        self.send_status(&mut stream, false).await?;
                    }
                }
                StreamMessage::Keepalive {
                    reply_requested,
                    server_wal_end,
                    server_time,
                } => {
                    self.config.metrics.server_position(server_wal_end);
                    // A server shutting down asks, and waits for every byte it sent to be
                    // reported flushed: store the tail, then say so.
                    if reply_requested && !self.store_tail().await? {
                        tracing::warn!(
                            timeout = ?self.config.tail_timeout,
                            position = %self.position()?,
                            stored = %self.stored_end(),
                            "the received tail could not be stored in time for the reply the server asked for; disconnecting so that the server is not held up (the tail stays in the spool and is stored as soon as the repository allows)"
                        );
                        return Ok(End::Reconnect);
                    }
                    self.mark_complete(server_wal_end, server_time)?;
                    if reply_requested {
                        self.send_status(&mut stream, false).await?;
                    }
                }
                StreamMessage::EndOfTimeline {
                    next_timeline,
                    switch_lsn,
                } => {
                    return Ok(End::TimelineSwitch {
                        client: stream.into_client()?,
                        next: next_timeline,
                        switch: switch_lsn,
                    });
                }
            }
        }
    }

    /// Append received WAL to the spool and queue the segments it completes. A full disk
    /// is waited out (`wait_for_space`).
    async fn receive(&mut self, wal_start: Lsn, data: &[u8]) -> Result<(), ArchiverError> {
        let mut done = Vec::new();
        let mut full = FullDisk::default();
        let mut at = wal_start;
        loop {
            let taken = at.bytes_since(wal_start) as usize;
            let appended = self.spool.append(at, &data[taken..], &mut done);
            for segment in done.drain(..) {
                let meta = self.events.finish(segment.name);
                self.uploads.segment(segment, meta);
            }
            match appended {
                Ok(()) => return Ok(()),
                Err(AppendError::Spool(e)) if is_full(&e) => {
                    self.wait_for_space(&mut full, e).await?;
                    at = self.position()?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Write what was received to the spool's file; a full disk is waited out.
    async fn write_spool(&mut self) -> Result<(), ArchiverError> {
        let mut full = FullDisk::default();
        loop {
            match self.spool.write_out() {
                Ok(()) => return Ok(()),
                Err(e) if is_full(&e) => self.wait_for_space(&mut full, e).await?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The spool's disk is full (`e`): wait a second, recording uploads meanwhile (each
    /// frees a segment's space). Once it has been full for [`PATIENCE`], `e` stops the
    /// archiver (exit 6) with the WAL still on the server.
    async fn wait_for_space(
        &mut self,
        full: &mut FullDisk,
        e: SpoolError,
    ) -> Result<(), ArchiverError> {
        let since = *full.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= PATIENCE {
            return Err(e.into());
        }
        if full
            .logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
        {
            tracing::warn!(error = %e, full_for = ?since.elapsed(), "the spool's disk is full; waiting for uploads to free space (the server keeps the WAL meanwhile)");
            full.logged = Some(Instant::now());
        }
        let wake = Instant::now() + Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => return Ok(()),
                Some(finished) = self.uploads.next() => { self.finished(finished?)?; }
            }
        }
    }

    fn position(&self) -> Result<Lsn, ArchiverError> {
        self.spool
            .position()
            .ok_or_else(|| ArchiverError::Task("spool not positioned".into()))
    }

    /// What the server may treat as flushed, and so advance the slot to: every byte
    /// before it is in the repository (invariant 1), or, in synchronous mode, fsync'd in
    /// the spool.
    fn flush_position(&self) -> Lsn {
        match self.spool.position() {
            Some(received) if self.config.synchronous => received,
            _ => self.stored_end(),
        }
    }

    /// Refuse a server that could make this archiver a synchronous standby, unless the
    /// operator chose synchronous mode.
    async fn refuse_synchronous(
        &self,
        client: &mut ReplicationClient,
        conninfo: &ConnInfo,
    ) -> Result<(), ArchiverError> {
        if self.config.synchronous {
            return Ok(());
        }
        let setting = client.show("synchronous_standby_names").await?;
        let application_name = conninfo.application_name.clone().unwrap_or_default();
        if tidemark_protocol::sync_standby::can_be_synchronous(&setting, &application_name) {
            return Err(ArchiverError::SynchronousStandby {
                setting,
                application_name,
            });
        }
        Ok(())
    }

    async fn send_status(
        &mut self,
        stream: &mut ReplicationStream,
        reply_requested: bool,
    ) -> Result<(), ArchiverError> {
        let written = self.position()?;
        let flushed = self.flush_position();
        tracing::trace!(%written, %flushed, reply_requested, "status update");
        stream
            .send_status(written, flushed, Lsn::INVALID, reply_requested)
            .await?;
        self.last_status = Some((written, flushed));
        self.config.metrics.flushed(flushed);
        Ok(())
    }

    /// Store everything received so far (as a partial segment, after the complete ones
    /// before it), waiting at most `tail_timeout`. True once it is stored.
    async fn store_tail(&mut self) -> Result<bool, ArchiverError> {
        let target = self.position()?;
        let give_up = Instant::now() + self.config.tail_timeout;
        while self.stored_end() < target {
            if !self.partial_running {
                self.start_partial()?;
            }
            tokio::select! {
                done = self.uploads.next() => match done {
                    Some(done) => { self.finished(done?)?; }
                    None => break,
                },
                _ = tokio::time::sleep_until(give_up) => break,
            }
        }
        Ok(self.stored_end() >= target)
    }

    /// Start receiving `timeline` at `start` (a segment boundary).
    fn begin(&mut self, timeline: TimelineId, start: Lsn) -> Result<(), ArchiverError> {
        self.spool.begin(timeline, start)?;
        self.uploads.new_run();
        self.events = EventTracker::new(timeline, start, self.seg);
        self.timeline = timeline;
        self.last_partial = Lsn::INVALID;
        self.partial_stored = None;
        self.config.metrics.run_begins(self.stored_end());
        Ok(())
    }

    /// Everything before this LSN is in the repository: the contiguous stored run, or,
    /// when the newest finished partial continues it, the end of that partial.
    fn stored_end(&self) -> Lsn {
        let durable = self.acks.durable();
        match self.partial_stored {
            Some((seg_start, end)) if seg_start <= durable => durable.max(end),
            _ => durable,
        }
    }

    /// The server says its WAL ends at `server_wal_end` as of `server_time`: if the
    /// repository holds all of it, write (at most every `complete_marker_interval`, or when
    /// it moved) the marker that lets a restore prove the archive complete at that time.
    fn mark_complete(
        &mut self,
        server_wal_end: Lsn,
        server_time: DateTime<Utc>,
    ) -> Result<(), ArchiverError> {
        if self.position()? < server_wal_end || self.stored_end() < server_wal_end {
            return Ok(());
        }
        let due = match self.last_marker {
            None => true,
            Some((at, lsn)) => {
                // Half: renewals requested every interval must not just miss it.
                lsn != server_wal_end || at.elapsed() >= self.config.complete_marker_interval / 2
            }
        };
        if due {
            self.uploads
                .complete_marker(self.timeline, server_wal_end, server_time);
            self.last_marker = Some((Instant::now(), server_wal_end));
        }
        Ok(())
    }

    /// Upload the received prefix of the current segment if it grew since the last
    /// partial upload and no partial upload is running.
    fn start_partial(&mut self) -> Result<(), ArchiverError> {
        if self.partial_running || self.position()? <= self.last_partial {
            return Ok(());
        }
        if let Some(snapshot) = self.spool.snapshot()? {
            self.last_partial = snapshot.name.start_lsn(self.seg) + snapshot.len;
            self.partial_running = true;
            let meta = self.events.so_far(snapshot.name);
            self.uploads.partial(snapshot, meta);
        }
        Ok(())
    }

    /// Record a finished job. Returns true when the acknowledged position moved.
    fn finished(&mut self, done: Done) -> Result<bool, ArchiverError> {
        let moved = self.record_job(done)?;
        self.config.metrics.stored(self.stored_end());
        Ok(moved)
    }

    fn record_job(&mut self, done: Done) -> Result<bool, ArchiverError> {
        match done {
            Done::Segment {
                segment,
                object,
                meta,
            } => {
                let start = segment.name.start_lsn(self.seg);
                let end = segment.name.end_lsn(self.seg);
                self.record(segment.name, false, start, end, &object, &meta)?;
                Spool::remove(&segment)?;
                self.remove_stale_partials(segment.name)?;
                Ok(self.acks.stored(start, end))
            }
            Done::Partial {
                name,
                end_lsn,
                object,
                meta,
            } => {
                self.partial_running = false;
                let Some(object) = object else {
                    return Ok(false);
                };
                let seg_start = name.start_lsn(self.seg);
                if name.timeline == self.timeline
                    && self.partial_stored.is_none_or(|(_, e)| e < end_lsn)
                {
                    self.partial_stored = Some((seg_start, end_lsn));
                }
                self.record(name, true, seg_start, end_lsn, &object, &meta)?;
                self.remove_stale_partials(name)?;
                Ok(false)
            }
            Done::Removed { name } => {
                self.catalog.forget_partial(name)?;
                Ok(false)
            }
            Done::Marker => Ok(false),
        }
    }

    fn record(
        &self,
        name: SegmentName,
        partial: bool,
        start_lsn: Lsn,
        end_lsn: Lsn,
        object: &ArchivedObject,
        meta: &Metadata,
    ) -> Result<(), ArchiverError> {
        tracing::debug!(key = %object.key, partial, %end_lsn, "archived");
        self.catalog.record_segment(&SegmentRecord {
            name,
            partial,
            start_lsn,
            end_lsn,
            raw_size: object.sealed.raw_size,
            stored_size: object.sealed.stored_size,
            crc32: object.sealed.crc32,
            key: object.key.clone(),
            archived_at: Utc::now(),
            summary: WalSummary::from_metadata(meta),
        })?;
        Ok(())
    }

    fn remove_stale_partials(&mut self, name: SegmentName) -> Result<(), ArchiverError> {
        for stale in self.catalog.stale_partials(name)? {
            self.uploads.remove_partial(stale.name);
        }
        Ok(())
    }

    /// Finish what is in flight: with `final_partial`, first upload what was received of
    /// the current segment. A second shutdown signal abandons the rest.
    async fn drain(&mut self, final_partial: bool) -> Result<(), ArchiverError> {
        if final_partial && !self.partial_running {
            self.start_partial()?;
        }
        let signals = *self.shutdown.borrow();
        loop {
            tokio::select! {
                done = self.uploads.next() => match done {
                    Some(done) => { self.finished(done?)?; }
                    None => break,
                },
                _ = self.shutdown.changed(), if signals > 0 => {
                    return Err(ArchiverError::Interrupted { pending: self.uploads.pending() });
                }
            }
            if final_partial && !self.partial_running {
                // A partial upload that finished late may have left newer bytes behind.
                self.start_partial()?;
            }
        }
        Ok(())
    }

    /// The server ended `old` at `switch`: the rest of the current segment belongs to
    /// `next`, which resumes from that segment's start.
    fn switch_timeline(
        &mut self,
        old: TimelineId,
        next: TimelineId,
        switch: Lsn,
    ) -> Result<(), ArchiverError> {
        tracing::info!(%old, %next, %switch, "timeline switch");
        self.start_partial()?;
        self.begin(next, switch.segment_start(self.seg))?;
        Ok(())
    }

    /// Fetch the new timeline's history file and store it.
    async fn archive_history(
        &self,
        mut client: ReplicationClient,
        timeline: TimelineId,
    ) -> Result<ReplicationClient, ArchiverError> {
        let (_, content) = client.timeline_history(timeline).await?;
        crate::uploads::with_retry("store timeline history", || {
            self.repo.archive_history(timeline, &content)
        })
        .await?;
        Ok(client)
    }
}

/// A replication error, recognising the server's "requested WAL segment ... has already
/// been removed" (SQLSTATE 58P01, undefined_file) for streaming that began at `from`.
fn wal_error(e: ReplicationError, from: Lsn) -> ArchiverError {
    match e.sqlstate() {
        Some("58P01") => ArchiverError::WalRemoved {
            from,
            to: None,
            source: Box::new(e),
        },
        _ => e.into(),
    }
}
