//! `tidemark check`: is archiving working, end to end, right now? The repository (its
//! identity, a probe object put twice and deleted), the server and archiving (from
//! `archiver::check`; with `--switch`, a segment switched now reaching the repository), each
//! tracked bucket's freshness, the newest backup's age, and the restore planner's proof that WAL
//! runs unbroken from the oldest backup to the newest archived WAL. Exit 0 / 1 / 2 by the
//! worst finding (ok / warn / fail), as Nagios reads them.

use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use tidemark_archiver::check::{self as findings, Finding, Level};
use tidemark_protocol::conninfo::ConnInfo;
use tidemark_restorer::plan::{plan, PlanRequest};
use tidemark_restorer::restore::segment_size;
use tidemark_restorer::target::{Occurrence, RecoveryTarget, TargetAction, TimelineTarget};
use tidemark_store::backup::BackupInfo;
use tidemark_store::gap::WalGap;
use tidemark_store::repository::Repository;
use tidemark_store::storage::S3Options;

use crate::cli::{CheckArgs, Cli};
use crate::commands::{open_existing_catalog, repo_url, timeout_arg};
use crate::failure::Usage;
use crate::output::outln;

/// What the repository told: its cluster, backups and accepted gaps.
struct Stored {
    repo: Repository,
    system_identifier: u64,
    backups: Vec<BackupInfo>,
    gaps: Vec<WalGap>,
}

pub async fn check(cli: &Cli, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let url = repo_url(cli)?;
    let pg = cli
        .pg
        .as_deref()
        .ok_or(Usage(
            "no server given; HINT: pass --pg (or set TIDEMARK_PG, or pg in tidemark.toml)",
        ))?
        .parse::<ConnInfo>()?;
    let limit = timeout_arg(args.timeout)?;
    let seconds =
        |v: f64, what: &'static str| Duration::try_from_secs_f64(v).map_err(|_| Usage(what));
    let max_archive_age = seconds(
        args.max_archive_age,
        "--max-archive-age must be a number of seconds",
    )?;
    let max_track_age = seconds(
        args.max_track_age,
        "--max-track-age must be a number of seconds",
    )?;
    let switch_timeout = seconds(
        args.switch_timeout,
        "--switch-timeout must be a number of seconds",
    )?;
    let mut found = Vec::new();

    let stored = match tokio::time::timeout(limit, repository(&url, &mut found)).await {
        Ok(stored) => stored,
        Err(_) => {
            found.push(Finding::fail(
                "repository",
                format!("{url}: no answer within {} s", args.timeout),
                "check the endpoint, the network and the credentials",
            ));
            None
        }
    };

    let server = tokio::time::timeout(
        limit,
        findings::server(
            &pg,
            stored.as_ref().map(|s| s.system_identifier),
            &args.slot,
            args.max_slot_lag_mb << 20,
        ),
    )
    .await
    .unwrap_or_else(|_| findings::ServerFindings {
        findings: vec![Finding::fail(
            "server",
            format!("no answer within {} s", args.timeout),
            "check --pg and the network",
        )],
        flush_lsn: None,
        timeline: None,
    });
    found.extend(server.findings);
    if args.switch {
        found.push(match (&stored, server.timeline) {
            (Some(stored), Some(timeline)) => match segment_size(&stored.repo).await {
                Ok(seg) => findings::switch(&pg, &stored.repo, timeline, seg, switch_timeout).await,
                Err(e) => Finding::fail("switch", format!("{e:#}"), "see the repository finding"),
            },
            _ => Finding::fail(
                "switch",
                "not switched: the repository or the server could not be read",
                "see the findings above",
            ),
        });
    }

    let gaps = stored.as_ref().map_or(&[][..], |s| &s.gaps[..]);
    match open_existing_catalog(cli, &url) {
        Ok(catalog) => {
            found.push(findings::archiving(
                &catalog,
                gaps,
                server.flush_lsn,
                max_archive_age,
                Utc::now(),
            )?);
            found.extend(findings::tracking(&catalog, max_track_age, Utc::now())?);
        }
        Err(e) => found.push(Finding::fail(
            "archiving",
            format!("{e:#}"),
            "run check where `tidemark stream` runs, with its --catalog",
        )),
    }

    if let Some(stored) = &stored {
        found.push(newest_backup(&stored.backups, args.max_backup_age));
        if let Some(oldest) = stored.backups.iter().min_by_key(|b| b.stop_time) {
            found.push(restorable(stored, oldest).await);
        }
    }
    report(&found, args)
}

/// The repository answers, is a tidemark repository, and takes writes with
/// put-if-absent honoured; its backups and gaps, when it does.
async fn repository(
    url: &tidemark_store::url::RepoUrl,
    found: &mut Vec<Finding>,
) -> Option<Stored> {
    const CHECK: &str = "repository";
    let hint = "check --repo, the endpoint and the credentials";
    let repo = match S3Options::from_env() {
        Ok(s3) => Repository::open(url, &s3).await,
        Err(e) => {
            found.push(Finding::fail(CHECK, e.to_string(), hint));
            return None;
        }
    };
    let read = async {
        let repo = repo?;
        let identity = repo.identity().await?;
        let backups = repo.backups().await?;
        let gaps = repo.gaps().await?;
        Ok::<_, tidemark_store::repository::RepoError>((repo, identity, backups, gaps))
    };
    let (repo, identity, backups, gaps) = match read.await {
        Ok(read) => read,
        Err(e) => {
            found.push(Finding::fail(CHECK, format!("{url}: {e}"), hint));
            return None;
        }
    };
    let Some(identity) = identity else {
        found.push(Finding::fail(
            CHECK,
            format!("{url} holds no tidemark.json"),
            "run `tidemark init` (or fix --repo)",
        ));
        return None;
    };
    match repo.probe_conditional_put().await {
        Ok(()) => found.push(Finding::ok(
            CHECK,
            format!(
                "{url}: cluster {}, PostgreSQL {}; writable, put-if-absent honoured",
                identity.system_identifier, identity.pg_major
            ),
        )),
        Err(e) => found.push(Finding::fail(
            CHECK,
            format!("{url}: a probe write failed: {e}"),
            "the archiver cannot store WAL here: check permissions, quota and the S3 server",
        )),
    }
    Some(Stored {
        repo,
        system_identifier: identity.system_identifier,
        backups,
        gaps,
    })
}

/// The newest base backup exists and is younger than `max_age`.
fn newest_backup(backups: &[BackupInfo], max_age: chrono::Duration) -> Finding {
    const CHECK: &str = "backup";
    let Some(newest) = backups.iter().max_by_key(|b| b.stop_time) else {
        return Finding::fail(
            CHECK,
            "no base backup",
            "run `tidemark backup`: without one nothing can be restored",
        );
    };
    let age = Utc::now() - newest.stop_time;
    let detail = format!(
        "newest {} ended {} h ago ({} in all)",
        newest.id,
        age.num_hours(),
        backups.len()
    );
    if age > max_age {
        Finding::warn(
            CHECK,
            detail,
            "take a base backup (recovery replays all WAL since the newest)",
        )
    } else {
        Finding::ok(CHECK, detail)
    }
}

/// The planner proves what a restore would need: WAL from the `oldest` backup to the
/// newest archived WAL, on the latest timeline.
async fn restorable(stored: &Stored, oldest: &BackupInfo) -> Finding {
    const CHECK: &str = "restorable";
    let request = PlanRequest {
        target: RecoveryTarget::Latest,
        timeline: TimelineTarget::Latest,
        inclusive: true,
        action: TargetAction::Promote,
        backup: Some(oldest.id.clone()),
        occurrence: Occurrence::default(),
    };
    let planned = async {
        let seg = segment_size(&stored.repo).await?;
        let plan = plan(&stored.repo, seg, &request).await?;
        anyhow::Ok((plan, seg))
    };
    match planned.await {
        Ok((plan, seg)) => Finding::ok(
            CHECK,
            format!(
                "WAL unbroken from the oldest backup {} through {} (timeline {})",
                plan.backup.id,
                plan.wal_last.file_name(seg),
                plan.timeline
            ),
        ),
        Err(e) => Finding::fail(
            CHECK,
            format!("from the oldest backup {}: {e:#}", oldest.id),
            "`tidemark plan --backup ID` says where WAL is missing; take a new base backup after it",
        ),
    }
}

fn report(found: &[Finding], args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let worst = found.iter().map(|f| f.level).max().unwrap_or(Level::Ok);
    if args.json {
        let doc = serde_json::json!({ "result": worst, "checks": found });
        outln!("{}", serde_json::to_string_pretty(&doc)?);
    } else if args.nagios {
        let word = match worst {
            Level::Ok => "OK",
            Level::Warn => "WARNING",
            Level::Fail => "CRITICAL",
        };
        let bad: Vec<String> = found
            .iter()
            .filter(|f| f.level == worst && worst != Level::Ok)
            .map(|f| format!("{}: {}", f.check, f.detail))
            .collect();
        match bad.is_empty() {
            true => outln!("TIDEMARK {word} - {} checks ok", found.len()),
            false => outln!("TIDEMARK {word} - {}", bad.join("; ")),
        }
    } else {
        for f in found {
            let level = match f.level {
                Level::Ok => "ok",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            outln!("{level:<5} {:<11} {}", f.check, f.detail);
            if let Some(hint) = &f.hint {
                outln!("{:<17} HINT: {hint}", "");
            }
        }
    }
    Ok(ExitCode::from(match worst {
        Level::Ok => 0,
        Level::Warn => 1,
        Level::Fail => 2,
    }))
}
