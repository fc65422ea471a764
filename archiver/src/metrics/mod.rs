//! What a running `tidemark stream` tells Prometheus (`--metrics-listen`): positions
//! (received, archived without a gap, the server's), lag and RPO, uploads (bytes, latency,
//! errors by kind), the spool, and — refreshed from the repository and the catalog by
//! [`watch`] — the newest backup's age, each store's restorable window and tracking.
//! Counters and histograms are kept by `prometheus-client`; gauges are computed at each
//! scrape from [`State`], so that ages and the RPO are as of the scrape and a value not
//! yet known is absent rather than a misleading 0. Served by [`http`].

pub mod http;
pub mod watch;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tidemark_protocol::Lsn;
use tidemark_store::repository::RepoError;

/// Received WAL is timed in steps of this: the RPO may read up to this much high.
const RECEIVE_STEP: Duration = Duration::from_millis(100);

/// The kind of object an upload wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    Segment,
    Partial,
}

impl Upload {
    fn label(self) -> Labels {
        Labels {
            kind: match self {
                Upload::Segment => "segment",
                Upload::Partial => "partial",
            }
            .to_string(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    kind: String,
}

/// One tracked bucket, as the catalog and the tracker know it.
#[derive(Debug, Clone, Default)]
struct Bucket {
    /// PostgreSQL's time at its first pass: where its restorable window begins.
    first_pass: Option<DateTime<Utc>>,
    /// PostgreSQL's time at its newest pass.
    last_pass: Option<DateTime<Utc>>,
    /// How long its newest pass in this process took.
    pass_seconds: Option<f64>,
}

impl Bucket {
    /// Passes were recorded from `first` to `last`.
    fn saw_pass(&mut self, first: DateTime<Utc>, last: DateTime<Utc>) {
        self.first_pass = Some(self.first_pass.map_or(first, |t| t.min(first)));
        self.last_pass = Some(self.last_pass.map_or(last, |t| t.max(last)));
    }
}

/// What the gauges are computed from.
#[derive(Debug)]
struct State {
    received: Option<Lsn>,
    archived: Option<Lsn>,
    server: Option<Lsn>,
    flushed: Option<Lsn>,
    /// Since when no replication connection streams (`None` while one does).
    disconnected_since: Option<Instant>,
    /// Received WAL not yet stored: each entry's end, and when its first byte came.
    unstored: VecDeque<(Lsn, Instant)>,
    spool_dir: Option<PathBuf>,
    newest_backup: Option<DateTime<Utc>>,
    /// The oldest backup's end: where the database's restorable window begins.
    oldest_backup: Option<DateTime<Utc>>,
    /// When the newest WAL was stored: where the window ends.
    archived_at: Option<DateTime<Utc>>,
    buckets: BTreeMap<String, Bucket>,
}

/// The metrics of one `stream` process (see the module comment).
pub struct Metrics {
    registry: Registry,
    state: Arc<Mutex<State>>,
    archived_bytes: Counter,
    stored_bytes: Family<Labels, Counter>,
    upload_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    upload_errors: Family<ErrorLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: String,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn upload_histogram() -> Histogram {
    // 10 ms to about 80 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

impl Metrics {
    pub fn new() -> Metrics {
        let state = Arc::new(Mutex::new(State {
            received: None,
            archived: None,
            server: None,
            flushed: None,
            disconnected_since: Some(Instant::now()),
            unstored: VecDeque::new(),
            spool_dir: None,
            newest_backup: None,
            oldest_backup: None,
            archived_at: None,
            buckets: BTreeMap::new(),
        }));
        let mut registry = Registry::default();
        let archived_bytes = Counter::default();
        registry.register_with_unit(
            "tidemark_wal_archived",
            "WAL stored in the repository without a gap since this process started",
            Unit::Bytes,
            archived_bytes.clone(),
        );
        let stored_bytes = Family::<Labels, Counter>::default();
        registry.register_with_unit(
            "tidemark_upload_stored",
            "Bytes written to the repository (compressed), by object kind",
            Unit::Bytes,
            stored_bytes.clone(),
        );
        let upload_seconds =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(upload_histogram);
        registry.register_with_unit(
            "tidemark_upload_duration",
            "Time to store one WAL object, retries included, by object kind",
            Unit::Seconds,
            upload_seconds.clone(),
        );
        let upload_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "tidemark_upload_errors",
            "Failed attempts to write to the repository (each is retried), by kind: transient, access_denied, disk_full, other",
            upload_errors.clone(),
        );
        registry.register_collector(Box::new(Gauges(state.clone())));
        Metrics {
            registry,
            state,
            archived_bytes,
            stored_bytes,
            upload_seconds,
            upload_errors,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The spool is `dir`: its size is reported.
    pub fn spool_dir(&self, dir: &Path) {
        self.state().spool_dir = Some(dir.to_path_buf());
    }

    /// WAL up to `end` has been received.
    pub fn received(&self, end: Lsn) {
        let mut s = self.state();
        s.received = Some(end);
        if s.archived.is_some_and(|a| a >= end) {
            return;
        }
        match s.unstored.back_mut() {
            Some((last, _)) if *last >= end => {}
            Some((last, at)) if at.elapsed() < RECEIVE_STEP => *last = end,
            _ => s.unstored.push_back((end, Instant::now())),
        }
    }

    /// The server said its WAL ends at `end`.
    pub fn server_position(&self, end: Lsn) {
        let mut s = self.state();
        s.server = Some(s.server.map_or(end, |p| p.max(end)));
    }

    /// Everything before `end` is stored in the repository without a gap.
    pub fn stored(&self, end: Lsn) {
        let mut s = self.state();
        if let Some(before) = s.archived {
            if end <= before {
                return;
            }
            self.archived_bytes.inc_by(end.bytes_since(before));
        }
        s.archived = Some(end);
        s.archived_at = Some(Utc::now());
        while s.unstored.front().is_some_and(|(e, _)| *e <= end) {
            s.unstored.pop_front();
        }
    }

    /// A run of WAL begins at `stored`, the end of what the repository holds (at start-up,
    /// or after a gap): not counted as archived by this process.
    pub fn run_begins(&self, stored: Lsn) {
        let mut s = self.state();
        s.archived = Some(stored);
        s.unstored.clear();
    }

    /// The server was told WAL up to `lsn` is flushed (the slot's `restart_lsn` follows).
    pub fn flushed(&self, lsn: Lsn) {
        self.state().flushed = Some(lsn);
    }

    /// A replication connection streams (`true`) or was lost or ended (`false`).
    pub fn connected(&self, streaming: bool) {
        let mut s = self.state();
        match streaming {
            true => s.disconnected_since = None,
            false => {
                s.disconnected_since.get_or_insert_with(Instant::now);
            }
        }
    }

    /// An upload of `kind` stored `bytes` in `took` (retries included).
    pub fn uploaded(&self, kind: Upload, bytes: u64, took: Duration) {
        self.stored_bytes.get_or_create(&kind.label()).inc_by(bytes);
        self.upload_seconds
            .get_or_create(&kind.label())
            .observe(took.as_secs_f64());
    }

    /// An attempt to write to the repository failed with `e` (and is retried or not).
    pub fn write_failed(&self, e: &RepoError) {
        let error = if e.is_transient() {
            "transient"
        } else if e.is_access_denied() {
            "access_denied"
        } else if e.is_disk_full() {
            "disk_full"
        } else {
            "other"
        };
        self.upload_errors
            .get_or_create(&ErrorLabels {
                error: error.to_string(),
            })
            .inc();
    }

    /// A tracking pass of `bucket` took `took` and recorded the bucket as of `at`.
    pub fn pass_done(&self, bucket: &str, took: Duration, at: DateTime<Utc>) {
        let mut s = self.state();
        let b = s.buckets.entry(bucket.to_string()).or_default();
        b.pass_seconds = Some(took.as_secs_f64());
        b.saw_pass(at, at);
    }

    /// What the repository and the catalog say (see [`watch`]).
    fn repository_facts(&self, facts: watch::Facts) {
        let mut s = self.state();
        s.newest_backup = facts.newest_backup;
        s.oldest_backup = facts.oldest_backup;
        s.archived_at = s.archived_at.max(facts.archived_at);
        for (name, first, last) in facts.buckets {
            s.buckets.entry(name).or_default().saw_pass(first, last);
        }
    }

    /// The metrics in OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        text
    }
}

/// One value of a labelled gauge.
type Sample = (Vec<(String, String)>, f64);

/// The gauges, computed from [`State`] at each scrape.
#[derive(Debug)]
struct Gauges(Arc<Mutex<State>>);

impl Collector for Gauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // The spool is measured before the state is locked: streaming waits on that lock.
        let spool_dir = lock(&self.0).spool_dir.clone();
        let spool = spool_dir.map(|d| dir_bytes(&d) as f64);
        let s = lock(&self.0);
        let now = Instant::now();
        let lsn = |l: Option<Lsn>| l.map(|l| l.0 as f64);
        let since = |a: Option<Lsn>, b: Option<Lsn>| match (a, b) {
            (Some(a), Some(b)) => Some(a.bytes_since(b) as f64),
            _ => None,
        };
        let waited = s
            .unstored
            .front()
            .map_or(0.0, |(_, at)| now.duration_since(*at).as_secs_f64());
        let disconnected = s
            .disconnected_since
            .map_or(0.0, |at| now.duration_since(at).as_secs_f64());
        let age = |t: DateTime<Utc>| seconds_between(t, Utc::now());
        let (b, sec) = (Unit::Bytes, Unit::Seconds);
        let (bytes, seconds) = (Some(&b), Some(&sec));
        let plain: [(&str, &str, Option<&Unit>, Option<f64>); 10] = [
            ("tidemark_wal_received_position", "End of the WAL received from the server (an LSN as a byte position)", bytes, lsn(s.received)),
            ("tidemark_wal_archived_position", "End of the WAL stored in the repository without a gap (an LSN as a byte position); a restore can reach it", bytes, lsn(s.archived)),
            ("tidemark_server_position", "End of the server's WAL, as it last said (an LSN as a byte position)", bytes, lsn(s.server)),
            ("tidemark_archive_lag", "WAL the server has that the repository does not", bytes, since(s.server, s.archived)),
            ("tidemark_slot_lag", "WAL the replication slot holds on the server for tidemark (the server's end less the flush position reported, which the slot's restart_lsn follows)", bytes, since(s.server, s.flushed)),
            ("tidemark_archive_lag", "How long the oldest received WAL not yet stored has waited; 0 when all received WAL is stored", seconds, Some(waited)),
            ("tidemark_rpo", "Data a loss of the server now would lose, in seconds: the wait of the oldest WAL not stored, or the time without a replication connection, whichever is longer", seconds, Some(waited.max(disconnected))),
            ("tidemark_server_connected", "1 while a replication connection streams, else 0", None, Some(f64::from(u8::from(s.disconnected_since.is_none())))),
            ("tidemark_spool", "Bytes in the spool (received WAL waiting to be stored, and the segment being received)", bytes, spool),
            ("tidemark_backup_newest_age", "Time since the newest complete base backup ended", seconds, s.newest_backup.map(age)),
        ];
        for (name, help, unit, value) in plain {
            if let Some(v) = value {
                let m = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
                ConstGauge::new(v).encode(m)?;
            }
        }
        let label = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let per_bucket = |f: &dyn Fn(&Bucket) -> Option<f64>| -> Vec<Sample> {
            s.buckets
                .iter()
                .filter_map(|(name, b)| f(b).map(|v| (label(&[("bucket", name)]), v)))
                .collect()
        };
        let mut windows: Vec<_> = s
            .oldest_backup
            .zip(s.archived_at)
            .filter(|(from, to)| to >= from)
            .map(|(from, to)| (label(&[("store", "database")]), seconds_between(from, to)))
            .into_iter()
            .collect();
        windows.extend(s.buckets.iter().filter_map(|(name, b)| {
            let window = seconds_between(b.first_pass?, b.last_pass?);
            Some((label(&[("store", "bucket"), ("bucket", name)]), window))
        }));
        let families: [(&str, &str, Vec<Sample>); 3] = [
            ("tidemark_restorable_window", "How far back each store can be restored: the database from its oldest backup's end to the newest archived WAL, a tracked bucket from its first to its newest tracking pass", windows),
            ("tidemark_bucket_pass_age", "Time since each tracked bucket's newest tracking pass", per_bucket(&|b| b.last_pass.map(age))),
            ("tidemark_bucket_pass_duration", "How long each tracked bucket's newest tracking pass in this process took", per_bucket(&|b| b.pass_seconds)),
        ];
        for (name, help, values) in families {
            if values.is_empty() {
                continue;
            }
            let mut family = encoder.encode_descriptor(name, help, seconds, MetricType::Gauge)?;
            for (labels, v) in &values {
                ConstGauge::new(*v).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// The state, even if a panic elsewhere poisoned its lock (the values stay usable).
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Seconds from `from` to `to`, 0 when `to` is earlier.
fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds().max(0) as f64 / 1000.0
}

/// Bytes in the regular files under `dir` (the spool keeps files one level down at most).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
