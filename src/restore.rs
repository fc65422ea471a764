//! `restore` and `plan`: resolve the target options, call the restorer, report.

use anyhow::Context;
use tidemark_protocol::TimelineId;
use tidemark_restorer::plan::Plan;
use tidemark_restorer::restore::{segment_size, RestoreOptions};
use tidemark_restorer::target::{RecoveryTarget, TargetAction, TargetArgs, TimelineTarget};
use tidemark_store::backup::BackupId;
use tidemark_store::repository::Repository;
use tidemark_store::storage::S3Options;

use crate::cli::{Action, Cli, RestoreArgs, TargetOpts};
use crate::commands::repo_url;
use crate::failure::Usage;

fn target(opts: &TargetOpts) -> anyhow::Result<RecoveryTarget> {
    Ok(TargetArgs {
        time: opts.target_time.clone(),
        lsn: opts.target_lsn.clone(),
        name: opts.target_name.clone(),
        xid: opts.target_xid.clone(),
        immediate: opts.target_immediate,
    }
    .resolve()?)
}

fn timeline(text: &str) -> anyhow::Result<TimelineTarget> {
    Ok(match text {
        "latest" => TimelineTarget::Latest,
        "current" => TimelineTarget::Current,
        n => TimelineTarget::Id(n.parse::<TimelineId>().map_err(|_| {
            Usage("--target-timeline must be latest, current or a timeline number")
        })?),
    })
}

/// Single-quote `s` for the shell that runs restore_command.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub async fn restore(cli: &Cli, args: &RestoreArgs) -> anyhow::Result<()> {
    let url = repo_url(cli)?;
    let target = target(&args.target)?;
    let backup = args
        .backup
        .as_deref()
        .map(str::parse::<BackupId>)
        .transpose()?;
    let exe = std::env::current_exe().context("cannot find the tidemark executable")?;
    let options = RestoreOptions {
        pgdata: std::path::absolute(&args.pgdata).context("--pgdata")?,
        target,
        timeline: timeline(&args.target.target_timeline)?,
        action: match args.target_action {
            Action::Promote => TargetAction::Promote,
            Action::Pause => TargetAction::Pause,
            Action::Shutdown => TargetAction::Shutdown,
        },
        inclusive: args.target_inclusive,
        backup,
        restore_command: format!(
            "{} --repo {} wal-fetch %f %p",
            shell_quote(&exe.display().to_string()),
            shell_quote(&url.to_string())
        ),
        keep_archiving: args.archive,
        concurrency: usize::from(args.concurrency),
        tablespace_root: args.tablespace_dir.clone(),
    };
    let repo = Repository::open(&url, &S3Options::from_env()?).await?;
    let report = tidemark_restorer::restore::restore(repo, &options).await?;
    print_plan(&report.plan);
    println!(
        "restored {} chunks ({:.1} MB) into {} in {:.1} s",
        report.chunks,
        report.bytes as f64 / (1 << 20) as f64,
        options.pgdata.display(),
        report.fetch_time.as_secs_f64()
    );
    for (oid, dir) in &report.tablespaces {
        println!("tablespace {oid} restored into {}", dir.display());
    }
    println!(
        "recovery settings written; start PostgreSQL on {} to recover",
        options.pgdata.display()
    );
    Ok(())
}

pub async fn plan(
    cli: &Cli,
    opts: &TargetOpts,
    backup: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let url = repo_url(cli)?;
    let target = target(opts)?;
    let backup = backup.map(str::parse::<BackupId>).transpose()?;
    let repo = Repository::open(&url, &S3Options::from_env()?).await?;
    let seg = segment_size(&repo).await?;
    let plan = tidemark_restorer::plan::plan(
        &repo,
        seg,
        &target,
        timeline(&opts.target_timeline)?,
        backup.as_ref(),
    )
    .await?;
    if json {
        let value = serde_json::json!({
            "backup": plan.backup.id.to_string(),
            "backup_start_lsn": plan.backup.start_lsn.to_string(),
            "backup_stop_lsn": plan.backup.stop_lsn.to_string(),
            "target": plan.target.to_string(),
            "wal_first": plan.wal_first.file_name(seg),
            "wal_last": plan.wal_last.file_name(seg),
            "archive_end": plan.archive_end.to_string(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_plan(&plan);
    }
    Ok(())
}

fn print_plan(plan: &Plan) {
    if let Some(note) = &plan.note {
        println!("{note}");
    }
    println!(
        "backup {} (WAL {} .. {}, finished {}), recovering to {}",
        plan.backup.id,
        plan.backup.start_lsn,
        plan.backup.stop_lsn,
        plan.backup.stop_time.format("%Y-%m-%d %H:%M:%S+00"),
        plan.target
    );
    println!(
        "WAL needed: timeline {} segments {:X} .. {:X}; archive ends at {}",
        plan.wal_first.timeline, plan.wal_first.segno, plan.wal_last.segno, plan.archive_end
    );
}
