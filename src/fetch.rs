//! `wal-fetch`, `wal-prefetch` and `wal-fetch-end`: the restore_command hook, with its own
//! exit-status contract towards PostgreSQL (DESIGN invariant 6), the background cache
//! filler, and the recovery_end_command that removes the cache.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tidemark_protocol::{SegmentName, WalSegmentSize};
use tidemark_restorer::prefetch::Cache;
use tidemark_restorer::{wal_fetch as fetch, FetchOutcome};
use tidemark_store::repository::Repository;
use tidemark_store::retry::RetryPolicy;
use tidemark_store::storage::S3Options;

use crate::cli::{Cli, WalFetchArgs};
use crate::commands::repo_url;
use crate::failure::{self, FETCH_ABSENT, FETCH_FATAL};

/// PostgreSQL runs restore_command in the data directory.
const STANDBY_SIGNAL: &str = "standby.signal";
/// On `pg_wal`'s filesystem, and never in a base backup (BASE_BACKUP sends `pg_wal` empty).
const DEFAULT_CACHE: &str = "pg_wal/.tidemark-prefetch";

/// Run `wal-fetch`; every outcome becomes the exit status PostgreSQL must see.
pub async fn wal_fetch(cli: &Cli, args: &WalFetchArgs) -> ExitCode {
    let cache = (!args.no_prefetch).then(|| Cache::new(cache_dir(args.prefetch_dir.as_deref())));
    // A prefetched segment is served without touching the repository at all.
    if let Some(cache) = cache.as_ref().filter(|c| c.take(&args.file, &args.dest)) {
        tracing::info!(file = %args.file, source = %cache.describe(), "restored");
        spawn_prefetch(cli, &args.file, args.prefetch, cache);
        return ExitCode::SUCCESS;
    }
    match fetch_one(cli, args).await {
        Ok(FetchOutcome::Restored { source, partial }) => {
            tracing::info!(file = %args.file, %source, partial, "restored");
            if let Some(cache) = cache.as_ref().filter(|_| !partial) {
                spawn_prefetch(cli, &args.file, args.prefetch, cache);
            }
            ExitCode::SUCCESS
        }
        Ok(FetchOutcome::NotFound) => {
            tracing::info!(file = %args.file, "not in the repository");
            ExitCode::from(FETCH_ABSENT)
        }
        Err(err) => {
            let (_, line) = failure::describe(&err);
            let (code, meaning) = failed_status();
            eprintln!("error: {line} {meaning}");
            ExitCode::from(code)
        }
    }
}

/// The status of a failed `wal-fetch`, and what it means for recovery: fatal in archive
/// recovery, "not available" in standby mode (PostgreSQL retries).
pub fn failed_status() -> (u8, &'static str) {
    if Path::new(STANDBY_SIGNAL).exists() {
        (FETCH_ABSENT, "(standby mode: PostgreSQL will retry)")
    } else {
        (
            FETCH_FATAL,
            "(archive recovery stops rather than end early)",
        )
    }
}

/// Make a panic exit like any other failure of `wal-fetch` ([`failed_status`]), with one
/// line on stderr: Rust's own panic status, 101, reads to PostgreSQL as "not available",
/// which ends archive recovery early at the wrong point.
pub fn exit_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let (code, meaning) = failed_status();
        let what = info.to_string().replace('\n', " ");
        eprintln!("error: internal error: {what}; HINT: report it with the log {meaning}");
        std::process::exit(code.into());
    }));
}

async fn fetch_one(cli: &Cli, args: &WalFetchArgs) -> anyhow::Result<FetchOutcome> {
    // Debug builds only: lets the end-to-end tests prove what a panic exits with.
    #[cfg(debug_assertions)]
    if std::env::var_os("TIDEMARK_TEST_PANIC").is_some() {
        panic!("TIDEMARK_TEST_PANIC is set");
    }
    let budget = Duration::try_from_secs_f64(args.retry_seconds.max(0.0))
        .map_err(|_| failure::Usage("--retry-seconds must be a number of seconds"))?;
    let policy = RetryPolicy::reads(budget);
    let repo = Repository::open_for_reads(&repo_url(cli)?, &S3Options::from_env()?, policy).await?;
    let seg = segment_size(&repo).await?;
    Ok(fetch(&repo, seg, &args.file, &args.dest).await?)
}

fn cache_dir(dir: Option<&Path>) -> PathBuf {
    dir.map_or_else(|| PathBuf::from(DEFAULT_CACHE), Path::to_path_buf)
}

/// Run `wal-fetch-end` (recovery_end_command): remove the prefetch cache. A failure is
/// a warning (exit 1: PostgreSQL logs it and starts anyway), never a reason to stop.
pub fn wal_fetch_end(dir: Option<&Path>) -> ExitCode {
    let cache = Cache::new(cache_dir(dir));
    match cache.remove() {
        Ok(removed) => {
            tracing::info!(
                removed,
                "{} removed at the end of recovery",
                cache.describe()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "warning: cannot remove the {}: {e}; HINT: remove it by hand",
                cache.describe()
            );
            ExitCode::from(failure::INTERNAL)
        }
    }
}

async fn segment_size(repo: &Repository) -> anyhow::Result<WalSegmentSize> {
    let identity = repo.identity().await?.ok_or(failure::Usage(
        "the repository has no tidemark.json; HINT: check --repo in restore_command",
    ))?;
    Ok(WalSegmentSize::new(identity.wal_segment_size)?)
}

/// Start a detached `tidemark wal-prefetch` for the segments after `file` (only segment
/// names; the filler ignores anything else), creating the cache first. Best effort: if it
/// cannot start, the next `wal-fetch` simply reads the repository.
fn spawn_prefetch(cli: &Cli, file: &str, count: u32, cache: &Cache) {
    if count == 0 || !SegmentName::is_file_name(file) {
        return;
    }
    if let Err(e) = cache.create() {
        tracing::debug!(error = %e, "prefetch not started");
        return;
    }
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    if let Some(config) = &cli.config_in_use {
        cmd.arg("--config").arg(&config.path);
        if let Some(name) = &config.cluster {
            cmd.arg("--cluster").arg(name);
        }
    }
    if let Some(repo) = &cli.repo {
        cmd.arg("--repo").arg(repo);
    }
    cmd.args(["--log", "off", "wal-prefetch", file, "--count"])
        .arg(count.to_string())
        .arg("--dir")
        .arg(cache.dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if let Err(e) = cmd.spawn() {
        tracing::debug!(error = %e, "prefetch not started");
    }
}

/// Run `wal-prefetch`.
pub async fn wal_prefetch(cli: &Cli, after: &str, count: u32, dir: &Path) -> anyhow::Result<()> {
    // Best effort, never retried: after a failure, wal-fetch reads the repository itself.
    let repo = Repository::open(&repo_url(cli)?, &S3Options::from_env()?).await?;
    let seg = segment_size(&repo).await?;
    let name = SegmentName::parse(after, seg)?;
    Cache::new(dir).fill(&repo, name, seg, count).await?;
    Ok(())
}
