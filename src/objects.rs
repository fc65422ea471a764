//! `objects track`, `objects restore`, and the object side of `restore --objects` and
//! `stream --track-bucket`: resolve the arguments, call the archiver and restorer, report.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tidemark_archiver::objects_track::TrackOptions;
use tidemark_protocol::conninfo::ConnInfo;
use tidemark_protocol::replication::SqlSession;
use tidemark_restorer::objects::{
    missing_keys, plan, Destination, ObjectPlan, ObjectRestoreReport, ObjectRestoreRequest, Writer,
};
use tidemark_store::catalog::Catalog;
use tidemark_store::objects::{ObjectHistory, TrackMode};
use tidemark_store::repository::Repository;
use tidemark_store::storage::S3Options;
use tidemark_store::url::RepoUrl;

use crate::cli::{
    Cli, ObjectsDestination, ObjectsRestoreArgs, TrackArgs, TrackModeArg, TrackingOpts,
};
use crate::commands::{catalog_path, conninfo, open_existing_catalog, repo_url};
use crate::failure::Usage;
use crate::output::outln;
use crate::paths;

/// Tracking settings for `bucket`.
pub fn track_options(
    catalog: &Path,
    bucket: &str,
    opts: &TrackingOpts,
    once: bool,
) -> anyhow::Result<TrackOptions> {
    let interval = Duration::try_from_secs_f64(opts.interval)
        .ok()
        .filter(|d| *d >= Duration::from_millis(100))
        .ok_or(Usage("--track-interval must be at least 0.1 seconds"))?;
    Ok(TrackOptions {
        bucket: bucket.to_string(),
        prefix: opts.prefix.clone(),
        mode: match opts.mode {
            TrackModeArg::Versions => TrackMode::Versions,
            TrackModeArg::Copy => TrackMode::Copy,
        },
        interval,
        once,
        compression_level: 3,
        work_dir: paths::beside_catalog(catalog, "objects"),
        lease_ttl: lease_ttl()?,
        metrics: Default::default(),
    })
}

/// `TIDEMARK_OBJECTS_LEASE_TTL` (seconds, at least 1), else the default.
fn lease_ttl() -> anyhow::Result<Duration> {
    match std::env::var(LEASE_TTL_ENV) {
        Err(_) => Ok(tidemark_archiver::objects_track::DEFAULT_LEASE_TTL),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .filter(|d| *d >= Duration::from_secs(1))
            .ok_or_else(|| {
                Usage("TIDEMARK_OBJECTS_LEASE_TTL must be a number of seconds, at least 1").into()
            }),
    }
}

const LEASE_TTL_ENV: &str = "TIDEMARK_OBJECTS_LEASE_TTL";

pub async fn track(cli: &Cli, args: &TrackArgs) -> anyhow::Result<()> {
    let url = repo_url(cli)?;
    let pg = conninfo(cli)?;
    let s3 = S3Options::from_env()?;
    let repo = Repository::open(&url, &s3).await?;
    if repo.identity().await?.is_none() {
        return Err(
            Usage("the repository is not initialised; HINT: run `tidemark init` first").into(),
        );
    }
    let catalog = catalog_path(cli, &url);
    let options = track_options(&catalog, &args.bucket, &args.tracking, args.once)?;
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    tokio::spawn(crate::commands::forward_signals(tx));
    tidemark_archiver::objects_track::track(&repo, &catalog, &pg, &s3, &options, rx).await?;
    if args.once && args.json {
        let catalog = Catalog::open(&catalog)?;
        let tracked = catalog.tracked_buckets()?;
        let b = tracked.iter().find(|b| b.bucket == args.bucket);
        let value = serde_json::json!({
            "bucket": args.bucket,
            "mode": b.map(|b| b.mode.as_str()),
            "versions": b.map(|b| b.versions),
            "first_pass": b.map(|b| b.first_pass.to_rfc3339()),
            "last_pass": b.map(|b| b.last_pass.to_rfc3339()),
        });
        outln!("{}", serde_json::to_string_pretty(&value)?);
    } else if args.once {
        outln!("recorded one tracking pass of bucket {}", args.bucket);
    }
    Ok(())
}

/// An object restore whose inputs are checked, waiting for its instant.
pub struct PendingObjects {
    request: ObjectRestoreRequest,
    history: ObjectHistory,
    writer: Writer,
}

/// Checks everything an object restore needs before anything is written (tracked
/// bucket, destination empty, versioning for in place) and, when the instant is known
/// already, that it lies in the tracked window.
pub async fn prepare(
    cli: &Cli,
    url: &RepoUrl,
    bucket: Option<&str>,
    destination: &ObjectsDestination,
    known_target: Option<DateTime<Utc>>,
) -> anyhow::Result<PendingObjects> {
    let catalog = open_existing_catalog(cli, url)?;
    let bucket = match bucket.filter(|b| !b.is_empty()) {
        Some(b) => b.to_string(),
        None => only_tracked_bucket(&catalog)?,
    };
    let history = catalog.object_history(&bucket)?;
    let dest = match (&destination.objects_to, destination.objects_in_place) {
        (Some(to), false) => match to.parse::<RepoUrl>() {
            Ok(RepoUrl::S3 { bucket, prefix }) => Destination::Copy {
                bucket,
                prefix: if prefix.is_empty() { prefix } else { format!("{prefix}/") },
            },
            _ => return Err(Usage("--objects-to must be s3://bucket or s3://bucket/prefix").into()),
        },
        (None, true) => Destination::InPlace,
        _ => {
            return Err(Usage(
                "say where the bucket goes; HINT: --objects-to s3://new-bucket[/prefix] (a new bucket or an empty prefix) or --objects-in-place",
            )
            .into())
        }
    };
    let known_plan = match known_target {
        Some(t) => Some(plan(&bucket, &history, t)?),
        None => None,
    };
    let mode = match &known_plan {
        Some(p) => p.mode,
        None => plan_mode(&bucket, &history)?,
    };
    let writer = Writer::open(
        &bucket,
        mode,
        &dest,
        &S3Options::from_env()?,
        known_plan.as_ref(),
    )
    .await?;
    let work_dir = paths::beside_catalog(&catalog_path(cli, url), "objects");
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("cannot create {}", work_dir.display()))?;
    Ok(PendingObjects {
        request: ObjectRestoreRequest {
            bucket,
            target: known_target.unwrap_or_default(),
            destination: dest,
            concurrency: usize::from(destination.objects_concurrency),
            work_dir,
        },
        history,
        writer,
    })
}

fn plan_mode(bucket: &str, history: &ObjectHistory) -> anyhow::Result<TrackMode> {
    history.passes.last().map(|p| p.mode).ok_or_else(|| {
        tidemark_restorer::objects::ObjectRestoreError::NotTracked {
            bucket: bucket.to_string(),
        }
        .into()
    })
}

fn only_tracked_bucket(catalog: &Catalog) -> anyhow::Result<String> {
    let tracked = catalog.tracked_buckets()?;
    match tracked.as_slice() {
        [one] => Ok(one.bucket.clone()),
        [] => Err(Usage("no bucket is tracked in this catalog; HINT: run `tidemark objects track --bucket NAME` first (or `tidemark reindex` if the catalog was lost)").into()),
        _ => Err(Usage("several buckets are tracked; HINT: name one (--objects BUCKET, or --bucket)").into()),
    }
}

impl PendingObjects {
    /// Restores the bucket to `target` (PostgreSQL's clock).
    pub async fn run(
        mut self,
        repo: &Repository,
        target: DateTime<Utc>,
    ) -> anyhow::Result<(ObjectRestoreReport, Writer)> {
        self.request.target = target;
        let plan: ObjectPlan = plan(&self.request.bucket, &self.history, target)?;
        let report = self.writer.apply(repo, &plan, &self.request).await?;
        Ok((report, self.writer))
    }
}

/// Runs `sql` on `pg`; the first column of each row is an object key. Returns the keys
/// missing from the restored bucket.
pub async fn verify_refs(
    pg: &ConnInfo,
    sql: &str,
    writer: &Writer,
) -> anyhow::Result<(usize, Vec<String>)> {
    let mut session = SqlSession::connect(pg)
        .await
        .context("cannot connect to run --verify-refs")?;
    let keys: Vec<String> = session
        .first_column(sql)
        .await
        .context("the --verify-refs query failed")?
        .into_iter()
        .flatten()
        .collect();
    let _ = session.close().await;
    let (bucket, prefix) = writer.restored_bucket();
    let missing = missing_keys(bucket, prefix, &keys, 32).await?;
    Ok((keys.len(), missing))
}

pub fn print_report(report: &ObjectRestoreReport) {
    outln!(
        "bucket {} restored into {}: {} objects restored ({:.1} MB), {} removed, {} unchanged",
        report.bucket,
        report.destination,
        report.restored,
        report.bytes as f64 / (1 << 20) as f64,
        report.removed,
        report.unchanged
    );
    if report.already_restored > 0 {
        outln!(
            "resumed: {} object(s) already restored by an earlier run were checked and kept",
            report.already_restored
        );
    }
    outln!(
        "instant: database {} = bucket {} (object store clock, ±{} ms)",
        report.database_instant.format("%Y-%m-%d %H:%M:%S%.6f+00"),
        report.bucket_instant.format("%Y-%m-%d %H:%M:%S%.3f+00"),
        report.clock_uncertainty_ms
    );
    if !report.uncertain_keys.is_empty() {
        outln!(
            "warning: {} key(s) changed within the clock uncertainty of the instant, so their state is uncertain: {}",
            report.uncertain_keys.len(),
            report.uncertain_keys.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    print_late_listed(report);
}

fn print_late_listed(report: &ObjectRestoreReport) {
    if !report.late_listed_keys.is_empty() {
        outln!(
            "warning: {} key(s) have a version stamped before the instant that tracking first listed after it (a multipart upload is stamped when it starts and visible once complete), so it was left out: {}",
            report.late_listed_keys.len(),
            report.late_listed_keys.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
        );
    }
}

pub fn print_verification(checked: usize, missing: &[String]) {
    outln!(
        "verify-refs: {checked} key(s) referenced, {} missing from the restored bucket",
        missing.len()
    );
    for key in missing.iter().take(100) {
        outln!("missing: {key}");
    }
    if missing.len() > 100 {
        outln!("… and {} more", missing.len() - 100);
    }
}

pub async fn restore(cli: &Cli, args: &ObjectsRestoreArgs) -> anyhow::Result<()> {
    let url = repo_url(cli)?;
    let target = tidemark_restorer::target::parse_time(&args.target_time)?.with_timezone(&Utc);
    if args.verify_refs.is_some() && cli.pg.is_none() {
        return Err(Usage(
            "--verify-refs runs its query on --pg; HINT: pass --pg for the restored cluster",
        )
        .into());
    }
    let pending = prepare(
        cli,
        &url,
        args.bucket.as_deref(),
        &args.destination,
        Some(target),
    )
    .await?;
    let repo = Repository::open(&url, &S3Options::from_env()?).await?;
    let (report, writer) = pending.run(&repo, target).await?;
    let verified = match &args.verify_refs {
        Some(sql) => Some(verify_refs(&conninfo(cli)?, sql, &writer).await?),
        None => None,
    };
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if let Some((checked, missing)) = &verified {
            value["verify_refs"] = serde_json::json!({ "checked": checked, "missing": missing.len(), "missing_keys": missing });
        }
        outln!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_report(&report);
        if let Some((checked, missing)) = &verified {
            print_verification(*checked, missing);
        }
    }
    Ok(())
}
