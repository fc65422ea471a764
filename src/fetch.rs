//! `wal-fetch` and `wal-prefetch`: the restore_command hook, with its own exit-status
//! contract towards PostgreSQL (DESIGN invariant 6), and the background cache filler.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tidemark_protocol::{SegmentName, WalSegmentSize};
use tidemark_restorer::prefetch::Cache;
use tidemark_restorer::{wal_fetch as fetch, FetchOutcome};
use tidemark_store::repository::Repository;
use tidemark_store::storage::S3Options;

use crate::cli::{Cli, WalFetchArgs};
use crate::commands::repo_url;
use crate::failure::{self, FETCH_ABSENT, FETCH_FATAL};

/// PostgreSQL runs restore_command in the data directory.
const STANDBY_SIGNAL: &str = "standby.signal";
const DEFAULT_CACHE: &str = ".tidemark-prefetch";

/// Run `wal-fetch`; every outcome becomes the exit status PostgreSQL must see.
pub async fn wal_fetch(cli: &Cli, args: &WalFetchArgs) -> ExitCode {
    let cache = Cache::new(cache_dir(args));
    // A prefetched segment is served without touching the repository at all.
    if cache.take(&args.file, &args.dest) {
        tracing::info!(file = %args.file, source = %cache.describe(), "restored");
        if args.prefetch > 0 {
            spawn_prefetch(cli, &args.file, args.prefetch, &cache_dir(args));
        }
        return ExitCode::SUCCESS;
    }
    match fetch_one(cli, args).await {
        Ok(FetchOutcome::Restored { source, partial }) => {
            tracing::info!(file = %args.file, %source, partial, "restored");
            if !partial && args.prefetch > 0 {
                spawn_prefetch(cli, &args.file, args.prefetch, &cache_dir(args));
            }
            ExitCode::SUCCESS
        }
        Ok(FetchOutcome::NotFound) => {
            tracing::info!(file = %args.file, "not in the repository");
            ExitCode::from(FETCH_ABSENT)
        }
        Err(err) => {
            let (_, line) = failure::describe(&err);
            if Path::new(STANDBY_SIGNAL).exists() {
                eprintln!("error: {line} (standby mode: PostgreSQL will retry)");
                ExitCode::from(FETCH_ABSENT)
            } else {
                eprintln!("error: {line} (archive recovery stops rather than end early)");
                ExitCode::from(FETCH_FATAL)
            }
        }
    }
}

async fn fetch_one(cli: &Cli, args: &WalFetchArgs) -> anyhow::Result<FetchOutcome> {
    let budget = Duration::try_from_secs_f64(args.retry_seconds.max(0.0))
        .map_err(|_| failure::Usage("--retry-seconds must be a number of seconds"))?;
    let repo = Repository::open(&repo_url(cli)?, &S3Options::from_env()?).await?;
    let seg = segment_size(&repo).await?;
    Ok(fetch(&repo, seg, &args.file, &args.dest, budget).await?)
}

fn cache_dir(args: &WalFetchArgs) -> PathBuf {
    args.prefetch_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

async fn segment_size(repo: &Repository) -> anyhow::Result<WalSegmentSize> {
    let identity = repo.identity().await?.ok_or(failure::Usage(
        "the repository has no tidemark.json; HINT: check --repo in restore_command",
    ))?;
    Ok(WalSegmentSize::new(identity.wal_segment_size)?)
}

/// Start a detached `tidemark wal-prefetch` for the segments after `file` (only segment
/// names; the filler ignores anything else). Best effort: if it cannot start, the next
/// `wal-fetch` simply reads the repository.
fn spawn_prefetch(cli: &Cli, file: &str, count: u32, dir: &Path) {
    if !SegmentName::is_file_name(file) {
        return;
    }
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    if let Some(repo) = &cli.repo {
        cmd.arg("--repo").arg(repo);
    }
    cmd.args(["--log", "off", "wal-prefetch", file, "--count"])
        .arg(count.to_string())
        .arg("--dir")
        .arg(dir)
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
    let repo = Repository::open(&repo_url(cli)?, &S3Options::from_env()?).await?;
    let seg = segment_size(&repo).await?;
    let name = SegmentName::parse(after, seg)?;
    Cache::new(dir).fill(&repo, name, seg, count).await?;
    Ok(())
}
