//! One function per subcommand: resolve the arguments, call the library, print.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tidemark_archiver::metrics;
use tidemark_archiver::stream::StreamConfig;
use tidemark_protocol::conninfo::ConnInfo;
use tidemark_protocol::WalSegmentSize;
use tidemark_store::catalog::Catalog;
use tidemark_store::identity::RepoIdentity;
use tidemark_store::repository::Repository;
use tidemark_store::storage::S3Options;
use tidemark_store::url::RepoUrl;

use crate::cli::{
    BackupArgs, Checkpoint, Cli, Command, GroupCommand, ListWhat, ObjectsCommand, StatusArgs,
    StreamArgs,
};
use crate::failure::Usage;
use crate::output::{out, outln};
use crate::paths;

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let done = match &cli.command {
        Command::Init => init(&cli).await,
        Command::Stream(args) => stream(&cli, args).await,
        Command::Status(args) => return status(&cli, args).await,
        Command::Check(args) => return crate::check::check(&cli, args).await,
        Command::Verify(args) => return crate::verify::verify(&cli, args).await,
        Command::Reindex { json } => reindex(&cli, *json).await,
        Command::Expire(args) => crate::expire::expire(&cli, args).await,
        Command::Objects {
            what: ObjectsCommand::Track(args),
        } => crate::objects::track(&cli, args).await,
        Command::Objects {
            what: ObjectsCommand::Restore(args),
        } => crate::objects::restore(&cli, args).await,
        Command::Restore(args) => crate::restore::restore(&cli, args).await,
        Command::Plan {
            target,
            backup,
            json,
        } => crate::restore::plan(&cli, target, backup.as_deref(), *json).await,
        Command::Backup(args) => backup(&cli, args).await,
        Command::List {
            what: ListWhat::Backups { json },
        } => list_backups(&cli, *json).await,
        Command::List {
            what: ListWhat::Wal { json },
        } => list_wal(&cli, *json),
        Command::WalFetch(args) => return Ok(crate::fetch::wal_fetch(&cli, args).await),
        Command::WalFetchEnd { prefetch_dir } => {
            return Ok(crate::fetch::wal_fetch_end(prefetch_dir.as_deref()))
        }
        Command::Group {
            what: GroupCommand::Mark { group, name, json },
        } => crate::group::mark(&cli, group, name.as_deref(), *json).await,
        Command::Group {
            what:
                GroupCommand::Restore {
                    group,
                    target_mark,
                    target_time,
                    into,
                    start,
                    parallel,
                    objects_to,
                },
        } => {
            let target = match (target_mark, target_time) {
                (Some(mark), _) => crate::group::GroupTarget::Mark(mark),
                (None, Some(time)) => crate::group::GroupTarget::Time(*time),
                (None, None) => return Err(Usage("give --target-mark or --target-time").into()),
            };
            let how = crate::group::RestoreHow {
                target,
                into,
                start: *start,
                parallel: usize::from(*parallel),
                objects_to: objects_to.as_deref(),
            };
            return crate::group::restore(&cli, group, &how).await;
        }
        Command::Group {
            what: GroupCommand::List { group, json },
        } => crate::group::list(&cli, group, *json).await,
        Command::Completions { shell } => crate::generate::completions(*shell),
        Command::Man { command } => crate::generate::man(command.as_deref()),
        Command::WalPrefetch { after, count, dir } => {
            crate::fetch::wal_prefetch(&cli, after, *count, dir).await
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}

pub(crate) fn repo_url(cli: &Cli) -> anyhow::Result<RepoUrl> {
    let raw = cli.repo.as_deref().ok_or(Usage(
        "no repository given; HINT: pass --repo s3://bucket/prefix or --repo file:///path (or set TIDEMARK_REPO)",
    ))?;
    Ok(raw.parse::<RepoUrl>()?)
}

pub(crate) fn conninfo(cli: &Cli) -> anyhow::Result<ConnInfo> {
    let raw = cli.pg.as_deref().ok_or(Usage(
        "no PostgreSQL connection given; HINT: pass --pg 'host=... user=...' or a postgres:// URL (or set TIDEMARK_PG)",
    ))?;
    let mut info = raw.parse::<ConnInfo>()?;
    // Name ourselves in pg_stat_replication unless the user chose a name.
    info.application_name
        .get_or_insert_with(|| "tidemark".to_string());
    Ok(info)
}

pub(crate) fn catalog_path(cli: &Cli, url: &RepoUrl) -> PathBuf {
    cli.catalog
        .clone()
        .unwrap_or_else(|| paths::default_catalog(&url.to_string()))
}

async fn init(cli: &Cli) -> anyhow::Result<()> {
    let url = repo_url(cli)?;
    let pg = conninfo(cli)?;
    let repo = Repository::create(&url, &S3Options::from_env()?).await?;
    let identity = tidemark_archiver::init::init(&pg, &repo).await?;
    outln!(
        "repository {url} belongs to cluster {} (PostgreSQL {}, {} MB WAL segments)",
        identity.system_identifier,
        identity.pg_major,
        identity.wal_segment_size >> 20
    );
    Ok(())
}

async fn stream(cli: &Cli, args: &StreamArgs) -> anyhow::Result<()> {
    let url = repo_url(cli)?;
    let pg = conninfo(cli)?;
    if !(args.partial_interval.is_finite() && args.partial_interval >= 0.1) {
        return Err(Usage("--partial-interval must be at least 0.1 seconds").into());
    }
    let repo = Repository::open(&url, &S3Options::from_env()?).await?;
    let catalog_path = catalog_path(cli, &url);
    let mut config = StreamConfig::new(
        args.spool
            .clone()
            .unwrap_or_else(|| paths::beside_catalog(&catalog_path, "spool")),
    );
    config.slot = args.slot.clone();
    config.partial_interval = Duration::from_secs_f64(args.partial_interval);
    config.compression_level = args.compression_level;
    config.upload_concurrency = usize::from(args.upload_concurrency);
    config.synchronous = args.synchronous;
    config.accept_gap = args.accept_gap;
    config.complete_marker_interval = Duration::try_from_secs_f64(
        args.complete_marker_interval
            .unwrap_or(args.partial_interval)
            .max(0.0),
    )
    .map_err(|_| Usage("--complete-marker-interval must be a number of seconds"))?;

    let metrics = config.metrics.clone();
    let tracking: Vec<_> = args
        .track_bucket
        .iter()
        .map(|b| {
            let mut options =
                crate::objects::track_options(&catalog_path, b, &args.tracking, false)?;
            options.metrics = metrics.clone();
            Ok(options)
        })
        .collect::<anyhow::Result<_>>()?;
    let s3 = S3Options::from_env()?;
    // Bound before anything else starts: a taken address is refused at once (exit 2).
    let listener = match args.metrics_listen {
        Some(addr) => Some(metrics::http::bind(addr).await?),
        None => None,
    };

    let (tx, rx) = tokio::sync::watch::channel(0u32);
    tokio::spawn(forward_signals(tx));
    // The endpoint and its repository readings run beside streaming; they never fail it.
    let endpoint = async {
        if let Some(listener) = listener {
            tracing::info!(address = ?args.metrics_listen, "serving metrics at /metrics");
            tokio::join!(
                metrics::http::serve(listener, metrics.clone(), rx.clone()),
                metrics::watch::watch(&repo, &catalog_path, &metrics, rx.clone()),
            );
        }
        Ok::<(), tidemark_archiver::ArchiverError>(())
    };
    // Bucket tracking runs beside streaming and stops with it. A tracker fails only when
    // it cannot start (missing bucket, no versioning), and that stops the whole command.
    let trackers = tracking.iter().map(|options| {
        tidemark_archiver::objects_track::track(&repo, &catalog_path, &pg, &s3, options, rx.clone())
    });
    let streaming =
        tidemark_archiver::stream::stream(&pg, repo.clone(), &catalog_path, config, rx.clone());
    tokio::try_join!(streaming, futures::future::try_join_all(trackers), endpoint)?;
    tracing::info!("stopped; in-flight uploads finished");
    Ok(())
}

/// Count SIGINT/SIGTERM into the shutdown channel. The handlers are installed when this
/// is called, not when the returned future is first polled: on `stream`'s one-thread
/// runtime a spawned task may wait, and a signal before then would kill the process.
pub(crate) fn forward_signals(
    tx: tokio::sync::watch::Sender<u32>,
) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut int), Ok(mut term)) = handlers else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL only");
            return;
        };
        forward(&tx, &mut int, &mut term).await;
    }
}

async fn forward(
    tx: &tokio::sync::watch::Sender<u32>,
    int: &mut tokio::signal::unix::Signal,
    term: &mut tokio::signal::unix::Signal,
) {
    loop {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tx.send_modify(|n| *n += 1);
        tracing::info!(
            "stop requested; finishing in-flight uploads (signal again to abandon them)"
        );
    }
}

/// `status`: what is archived, the server's position, the windows; its exit code says
/// whether all is well. Every outside question is bounded by `--timeout`.
async fn status(cli: &Cli, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let url = repo_url(cli)?;
    let catalog = open_existing_catalog(cli, &url)?;
    let pg = cli.pg.as_deref().map(str::parse::<ConnInfo>).transpose()?;
    let limit = timeout_arg(args.timeout)?;
    let no_answer = || anyhow::anyhow!("no answer within {} s", args.timeout);
    // The database window needs the backups, the stored run the accepted gaps; status
    // still reports the rest without them.
    let facts = tokio::time::timeout(limit, async {
        let repo = Repository::open(&url, &S3Options::from_env()?).await?;
        anyhow::Ok((repo.backups().await?, repo.gaps().await?))
    })
    .await
    .unwrap_or_else(|_| Err(no_answer()));
    let repository_ok = facts.is_ok();
    let (oldest_backup_end, gaps) = match facts {
        Ok((backups, gaps)) => (backups.first().map(|b| b.stop_time), gaps),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot read the repository; the database window is not shown");
            (None, Vec::new())
        }
    };
    let url_text = url.to_string();
    let report =
        |pg| tidemark_archiver::status::status(&url_text, &catalog, oldest_backup_end, &gaps, pg);
    let report = match tokio::time::timeout(limit, report(pg.as_ref())).await {
        Ok(report) => report?,
        Err(_) => {
            let mut report = report(None).await?;
            report.server_error = Some(no_answer().to_string());
            report
        }
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{report}");
    }
    let code = if report.server_error.is_some() {
        crate::failure::POSTGRES
    } else if !repository_ok {
        crate::failure::STORAGE
    } else if report.lag_seconds.is_some_and(|lag| lag > args.max_lag) {
        crate::failure::UNHEALTHY
    } else {
        0
    };
    Ok(ExitCode::from(code))
}

async fn backup(cli: &Cli, args: &BackupArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let url = repo_url(cli)?;
    let pg = conninfo(cli)?;
    let repo = Repository::open(&url, &S3Options::from_env()?).await?;
    let work_dir = args.work_dir.clone().unwrap_or_else(|| {
        paths::beside_catalog(&catalog_path(cli, &url), "spool").join("backup-work")
    });
    let config = tidemark_archiver::backup::BackupConfig {
        label: args.label.clone(),
        fast_checkpoint: args.checkpoint == Checkpoint::Fast,
        chunk_size: args.chunk_size_mb << 20,
        compression_level: args.compression_level,
        upload_concurrency: usize::from(args.upload_concurrency),
        work_dir,
        wal_wait: Duration::from_secs(args.wal_wait),
        require_standby: args.from_standby,
        max_rate_kb: args.max_rate_kb,
        progress: std::io::stderr().is_terminal(),
    };
    let info = tidemark_archiver::backup::backup(&pg, repo, config).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    outln!(
        "backup {} complete: {} to {} on timeline {}{}, {:.1} MB stored ({:.1} MB of files), {} chunks",
        info.id,
        info.start_lsn,
        info.stop_lsn,
        info.timeline,
        if info.from_standby { " (from a standby)" } else { "" },
        info.stored_size() as f64 / (1 << 20) as f64,
        info.raw_size() as f64 / (1 << 20) as f64,
        info.chunks().count()
    );
    if !info.skipped_files.is_empty() {
        outln!(
            "left out by the server (a restore lacks them): {}",
            info.skipped_files.join(", ")
        );
    }
    Ok(())
}

async fn list_backups(cli: &Cli, json: bool) -> anyhow::Result<()> {
    let url = repo_url(cli)?;
    let repo = Repository::open(&url, &S3Options::from_env()?).await?;
    let backups = repo.backups().await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&backups)?);
        return Ok(());
    }
    outln!(
        "{:<19} {:<4} {:<17} {:<17} {:>10}  {:<20}  LABEL",
        "ID",
        "TLI",
        "START",
        "STOP",
        "STORED MB",
        "FINISHED"
    );
    for b in &backups {
        outln!(
            "{:<19} {:<4} {:<17} {:<17} {:>10.1}  {:<20}  {}",
            b.id.to_string(),
            b.timeline,
            b.start_lsn.to_string(),
            b.stop_lsn.to_string(),
            b.stored_size() as f64 / (1 << 20) as f64,
            b.stop_time.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            b.label
        );
    }
    Ok(())
}

/// The repository at `--repo`, which must have its identity, with its WAL segment size.
pub(crate) async fn open_identified(
    cli: &Cli,
) -> anyhow::Result<(RepoUrl, Repository, RepoIdentity, WalSegmentSize)> {
    let url = repo_url(cli)?;
    let repo = Repository::open(&url, &S3Options::from_env()?).await?;
    let identity = repo.identity().await?.ok_or(Usage(
        "the repository has no tidemark.json; HINT: check --repo, or run `tidemark init`",
    ))?;
    let seg = WalSegmentSize::new(identity.wal_segment_size)?;
    Ok((url, repo, identity, seg))
}

async fn reindex(cli: &Cli, json: bool) -> anyhow::Result<()> {
    let (url, repo, identity, seg) = open_identified(cli).await?;
    let path = catalog_path(cli, &url);
    let mut catalog = Catalog::open(&path)?;
    catalog.bind(&url.to_string(), identity.system_identifier)?;
    let summary = tidemark_store::reindex::reindex_wal(&repo, &catalog, seg).await?;
    let passes = tidemark_store::reindex::reindex_objects(&repo, &mut catalog).await?;
    if json {
        let value = serde_json::json!({
            "repository": url.to_string(),
            "catalog": path.display().to_string(),
            "segments": summary.segments,
            "partial_segments": summary.partials,
            "object_passes": passes,
            "skipped_keys": summary.skipped,
        });
        outln!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    outln!(
        "indexed {} segments, {} partial segments and {passes} object-tracking passes from {url} into {}",
        summary.segments,
        summary.partials,
        path.display()
    );
    if !summary.skipped.is_empty() {
        tracing::warn!(count = summary.skipped.len(), first = %summary.skipped[0], "objects under wal/ that are not tidemark WAL were skipped");
    }
    Ok(())
}

/// `--timeout SECONDS` of `status` and `check`.
pub(crate) fn timeout_arg(seconds: f64) -> Result<Duration, Usage> {
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or(Usage("--timeout must be a positive number of seconds"))
}

pub(crate) fn open_existing_catalog(cli: &Cli, url: &RepoUrl) -> anyhow::Result<Catalog> {
    let path = catalog_path(cli, url);
    if !path.exists() {
        return Err(Usage(
            "no catalog for this repository on this machine; HINT: run `tidemark stream` here, or pass --catalog",
        ))
        .with_context(|| format!("catalog {} does not exist", path.display()));
    }
    Ok(Catalog::open(&path)?)
}

fn list_wal(cli: &Cli, json: bool) -> anyhow::Result<()> {
    let url = repo_url(cli)?;
    let catalog = open_existing_catalog(cli, &url)?;
    let segments = catalog.segments()?;
    if json {
        let rows: Vec<_> = segments
            .iter()
            .map(|s| {
                serde_json::json!({
                    "timeline": s.name.timeline.0,
                    "segno": s.name.segno,
                    "partial": s.partial,
                    "start_lsn": s.start_lsn.to_string(),
                    "end_lsn": s.end_lsn.to_string(),
                    "raw_size": s.raw_size,
                    "stored_size": s.stored_size,
                    "crc32": format!("{:08x}", s.crc32),
                    "key": s.key,
                    "archived_at": s.archived_at.to_rfc3339(),
                    "first_xact_time": s.summary.as_ref().and_then(|w| w.first_xact).map(|t| t.to_rfc3339()),
                    "last_xact_time": s.summary.as_ref().and_then(|w| w.last_xact).map(|t| t.to_rfc3339()),
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    outln!(
        "{:<4} {:<17} {:<17} {:>10} {:>10}  KEY",
        "TLI",
        "START",
        "END",
        "RAW",
        "STORED"
    );
    for s in &segments {
        outln!(
            "{:<4} {:<17} {:<17} {:>10} {:>10}  {}",
            s.name.timeline.0,
            s.start_lsn.to_string(),
            s.end_lsn.to_string(),
            s.raw_size,
            s.stored_size,
            s.key
        );
    }
    Ok(())
}
