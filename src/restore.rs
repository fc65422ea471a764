//! `restore` and `plan`: resolve the target options (and, for a standby or a call by
//! Patroni, what to restore as), call the restorer, report.

use anyhow::Context;
use chrono::Utc;
use tidemark_protocol::conninfo::ConnInfo;
use tidemark_protocol::TimelineId;
use tidemark_restorer::plan::{Plan, PlanRequest};
use tidemark_restorer::probe::probe;
use tidemark_restorer::recovery_conf::Standby;
use tidemark_restorer::restore::{plan_restore, segment_size, sibling, RestoreOptions};
use tidemark_restorer::start::{
    find_bindir, server_owner, start_and_wait, Goal, Restored, StartOptions,
};
use tidemark_restorer::target::{
    parse_time, Occurrence, RecoveryTarget, TargetAction, TargetArgs, TimelineTarget,
};
use tidemark_store::backup::BackupId;
use tidemark_store::repository::Repository;
use tidemark_store::retry::{RetryPolicy, READ_BUDGET};
use tidemark_store::storage::S3Options;
use tidemark_store::url::RepoUrl;

use crate::cli::{Action, Cli, RestoreArgs, TargetOpts};
use crate::commands::repo_url;
use crate::failure::Usage;
use crate::output::outln;

/// `restore` and `plan` ride out a flaky network: every repository read is retried.
const READS: RetryPolicy = RetryPolicy::reads(READ_BUDGET);

/// What to plan for, from the target options (and `--backup`).
fn request(opts: &TargetOpts, backup: Option<&str>) -> anyhow::Result<PlanRequest> {
    let target = TargetArgs {
        time: opts.target_time.clone(),
        lsn: opts.target_lsn.clone(),
        name: opts.target_name.clone(),
        xid: opts.target_xid.clone(),
        immediate: opts.target_immediate,
    }
    .resolve()?;
    Ok(PlanRequest {
        target,
        timeline: timeline(&opts.target_timeline)?,
        inclusive: opts.target_inclusive,
        action: match opts.target_action {
            Action::Promote => TargetAction::Promote,
            Action::Pause => TargetAction::Pause,
            Action::Shutdown => TargetAction::Shutdown,
        },
        backup: backup.map(str::parse::<BackupId>).transpose()?,
        occurrence: opts
            .target_occurrence
            .as_deref()
            .map(str::parse::<Occurrence>)
            .transpose()?
            .unwrap_or_default(),
    })
}

/// Whether any recovery target was asked for.
fn has_target(opts: &TargetOpts) -> bool {
    opts.target_time.is_some()
        || opts.target_lsn.is_some()
        || opts.target_name.is_some()
        || opts.target_xid.is_some()
        || opts.target_immediate
}

/// Where to restore and as what: from `--pgdata` and `--standby`, or from the arguments
/// Patroni passes (`--datadir`, `--role=replica`, `--connstring`).
struct Destination {
    pgdata: std::path::PathBuf,
    standby: Option<Standby>,
}

fn destination(args: &RestoreArgs) -> anyhow::Result<Destination> {
    let standby = if args.patroni {
        let p = &args.patroni_args;
        tracing::info!(
            scope = p.scope.as_deref().unwrap_or(""),
            role = p.role.as_deref().unwrap_or("(bootstrap)"),
            "restore called by Patroni"
        );
        match p.role.as_deref() {
            Some("replica") => Some(Standby {
                primary_conninfo: p.connstring.clone().filter(|c| !c.trim().is_empty()),
                primary_slot_name: None,
            }),
            None => None,
            Some(_) => return Err(Usage("--role must be replica (Patroni's create_replica_methods), or absent for a bootstrap method").into()),
        }
    } else if args.standby {
        Some(Standby {
            primary_conninfo: args.primary_conninfo.clone(),
            primary_slot_name: args.primary_slot_name.clone(),
        })
    } else {
        None
    };
    if standby.is_some() && has_target(&args.target) {
        // PostgreSQL would stop replay at the target and stay there: a standby that
        // never follows its primary again is no replica.
        return Err(Usage("a standby has no recovery target: it replays the repository's WAL, then follows its primary; HINT: drop the --target-* option, or restore without --standby and with --target-action pause for a copy stopped at the target").into());
    }
    let pgdata =
        match (&args.pgdata, &args.patroni_args.datadir) {
            (Some(dir), _) => dir.clone(),
            (None, Some(dir)) if args.patroni => dir.clone(),
            _ => return Err(Usage(
                "--patroni needs --datadir (Patroni passes it); HINT: use --pgdata outside Patroni",
            )
            .into()),
        };
    Ok(Destination {
        pgdata: std::path::absolute(&pgdata).context("the data directory")?,
        standby,
    })
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

/// `s` as one word of restore_command: single-quoted for the shell that runs it, with
/// `%` doubled so PostgreSQL does not read it as a placeholder.
fn command_word(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''").replace('%', "%%"))
}

/// `--config PATH [--cluster NAME] `: the config file this restore used, for wal-fetch.
fn config_options(config: &crate::config::InUse) -> String {
    let mut out = format!(
        "--config {} ",
        command_word(&config.path.display().to_string())
    );
    if let Some(name) = &config.cluster {
        out.push_str(&format!("--cluster {} ", command_word(name)));
    }
    out
}

/// What `restore` reports: text lines as it goes, or with `--json` one object at the end.
struct Summary {
    json: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Summary {
    fn say(&self, line: std::fmt::Arguments) {
        if self.json.is_none() {
            outln!("{line}");
        }
    }

    fn set(&mut self, key: &str, value: serde_json::Value) {
        if let Some(map) = &mut self.json {
            map.insert(key.to_string(), value);
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        if let Some(map) = self.json {
            outln!("{}", serde_json::to_string_pretty(&map)?);
        }
        Ok(())
    }
}

pub async fn restore(cli: &Cli, args: &RestoreArgs) -> anyhow::Result<()> {
    let mut summary = Summary {
        json: args.json.then(serde_json::Map::new),
    };
    restore_reporting(cli, args, &mut summary).await?;
    summary.finish()
}

async fn restore_reporting(
    cli: &Cli,
    args: &RestoreArgs,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let url = repo_url(cli)?;
    let Destination { pgdata, standby } = destination(args)?;
    let request = request(&args.target, args.backup.as_deref())?;
    let time_target = match &request.target {
        RecoveryTarget::Time(t) => Some(t.with_timezone(&Utc)),
        _ => None,
    };
    if args.verify_refs.is_some() && !(args.start && args.objects.is_some()) {
        return Err(Usage("--verify-refs checks the restored bucket against the restored cluster; HINT: use it with --objects and --start").into());
    }
    if args.objects.is_some() && time_target.is_none() && !args.start {
        return Err(Usage("with a target other than a time, --objects needs --start: the bucket's instant is the commit time where recovery stopped").into());
    }
    // Object-side checks come first, so bad input there writes nothing at all.
    let objects = match &args.objects {
        Some(bucket) => Some(
            crate::objects::prepare(
                cli,
                &url,
                Some(bucket.as_str()),
                &args.objects_dest,
                time_target,
            )
            .await?,
        ),
        None => None,
    };
    let exe = std::env::current_exe().context("cannot find the tidemark executable")?;
    // An S3 repository's settings reach wal-fetch through the config file in use, and
    // those only in the environment through a file beside the data directory; never
    // through the command line.
    let config = cli.config_in_use.as_ref();
    let mut settings = crate::env_file::current();
    settings.retain(|(name, _)| config.is_none_or(|c| !c.exported.contains(&name.as_str())));
    let env_file = match &url {
        RepoUrl::S3 { .. } if !settings.is_empty() => Some(sibling(&pgdata, ".tidemark.env")),
        _ => None,
    };
    let env_option = match &env_file {
        Some(path) => format!(
            "{} {} ",
            crate::env_file::OPTION,
            command_word(&path.display().to_string())
        ),
        None => String::new(),
    };
    let options = RestoreOptions {
        pgdata,
        request,
        restore_command: format!(
            "{} {}{env_option}--repo {} wal-fetch %f %p",
            command_word(&exe.display().to_string()),
            config.map(config_options).unwrap_or_default(),
            command_word(&url.to_string())
        ),
        recovery_end_command: format!("{} wal-fetch-end", command_word(&exe.display().to_string())),
        // A Patroni member is part of the production cluster: Patroni owns its settings.
        keep_archiving: args.archive || args.patroni,
        concurrency: usize::from(args.concurrency),
        tablespace_root: args.tablespace_dir.clone(),
        resume: args.resume,
        standby,
        delta: args.delta,
    };
    let repo = Repository::open_for_reads(&url, &S3Options::from_env()?, READS).await?;
    let started = std::time::Instant::now();
    let plan = plan_restore(&repo, &options).await?;
    let seg = segment_size(&repo).await?;
    // The backup's own major runs it, found before anything is written.
    let bindir = match args.start {
        true => Some(find_bindir(plan.backup.pg_major, args.pg_bin.as_deref())?),
        false => None,
    };
    if let Some(path) = &env_file {
        crate::env_file::write(path, &settings, server_owner())?;
    }
    // The server will run restore_command as its own user with only what tidemark wrote:
    // try it before anything is restored. With --start that server is started right away,
    // so a failure is refused; without, the DBA still has the chance to fix it first.
    let probed = tokio::task::spawn_blocking({
        let command = options.restore_command.clone();
        move || probe(&command, server_owner())
    })
    .await
    .context("the restore_command check failed")?;
    let probed = match probed {
        Err(e) if !args.start => {
            eprintln!("warning: {e}; PostgreSQL will not recover until this is fixed");
            Ok(())
        }
        other => other,
    };
    let report = match probed {
        Ok(()) => tidemark_restorer::restore::restore(repo, plan, &options)
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(e.into()),
    };
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            if let Some(path) = &env_file {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    if let Some(path) = &env_file {
        summary.say(format_args!(
            "storage settings for restore_command written to {}",
            path.display()
        ));
    }
    let prepared = started.elapsed();
    match summary.json {
        Some(_) => summary.set("plan", plan_json(&report.plan, seg)),
        None => print_plan(&report.plan),
    }
    summary.set(
        "restored",
        serde_json::json!({
            "pgdata": options.pgdata.display().to_string(),
            "chunks": report.chunks,
            "bytes": report.bytes,
            "fetched_bytes": report.fetched_bytes,
            "fetch_seconds": report.fetch_time.as_secs_f64(),
            "env_file": env_file.as_ref().map(|p| p.display().to_string()),
            "restore_command": options.restore_command,
            "standby": options.standby.is_some(),
            "tablespaces": report.tablespaces.iter().map(|(oid, dir)| serde_json::json!({"oid": oid, "dir": dir.display().to_string()})).collect::<Vec<_>>(),
            "absolute_links": report.absolute_links.iter().map(|l| serde_json::json!({"link": l.link.display().to_string(), "target": l.target.display().to_string()})).collect::<Vec<_>>(),
            "delta": report.delta.as_ref().map(|d| serde_json::json!({
                "kept_files": d.kept_files, "kept_bytes": d.kept_bytes,
                "written_files": d.written_files, "written_bytes": d.written_bytes,
                "stale_files": d.stale_files, "extra_files": d.extra_files,
                "removed_dirs": d.removed_dirs, "chunks_in_place": d.chunks_in_place,
            })),
        }),
    );
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    summary.say(format_args!(
        "restored {} chunks ({:.1} MB; {:.1} MB fetched) into {} in {:.1} s",
        report.chunks,
        mb(report.bytes),
        mb(report.fetched_bytes),
        options.pgdata.display(),
        report.fetch_time.as_secs_f64()
    ));
    if let Some(d) = &report.delta {
        summary.say(format_args!(
            "delta: kept {} unchanged files ({:.1} MB; {} chunks held only those and were not fetched), wrote {} files ({} bytes), removed {} stale and {} extra files and {} directories",
            d.kept_files,
            mb(d.kept_bytes),
            d.chunks_in_place,
            d.written_files,
            d.written_bytes,
            d.stale_files,
            d.extra_files,
            d.removed_dirs
        ));
    }
    if let Some(standby) = &options.standby {
        summary.say(format_args!(
            "restored as a standby (standby.signal): {}",
            match (&standby.primary_conninfo, &standby.primary_slot_name) {
                (Some(_), Some(slot)) =>
                    format!("streams from primary_conninfo through slot {slot}"),
                (Some(_), None) => "streams from primary_conninfo".to_string(),
                (None, _) => "archive-only, replays the repository's WAL".to_string(),
            }
        ));
    }
    for (oid, dir) in &report.tablespaces {
        summary.say(format_args!(
            "tablespace {oid} restored into {}",
            dir.display()
        ));
    }
    for link in &report.absolute_links {
        summary.say(format_args!(
            "warning: {} restored as a link to {}, which must exist on this host",
            link.link.display(),
            link.target.display()
        ));
    }
    let Some(bindir) = bindir else {
        if let (Some(objects), Some(instant)) = (objects, time_target) {
            // The bucket is restored to the target time right after the database files;
            // the database reaches the same instant when PostgreSQL is started.
            let repo = Repository::open(&url, &S3Options::from_env()?).await?;
            let (objects_report, _) = objects.run(&repo, instant).await?;
            match summary.json {
                Some(_) => summary.set("objects", serde_json::to_value(&objects_report)?),
                None => crate::objects::print_report(&objects_report),
            }
        }
        summary.say(format_args!(
            "recovery settings written; start PostgreSQL on {} to recover",
            options.pgdata.display()
        ));
        return Ok(());
    };
    let major = report.plan.backup.pg_major;
    let start = StartOptions {
        bindir,
        also_owned: report.tablespaces.iter().map(|(_, d)| d.clone()).collect(),
        port: match args.port {
            Some(p) => p,
            None => free_port().context("cannot find a free port for --start; pass --port")?,
        },
        timeout: std::time::Duration::from_secs(args.start_timeout),
    };
    let goal = match &options.standby {
        Some(Standby {
            primary_conninfo: Some(_),
            ..
        }) => Goal::Streaming,
        Some(_) => Goal::ReadOnly,
        None => Goal::Target(options.request.action),
    };
    let (pgdata, port) = (options.pgdata.clone(), start.port);
    let recovering = std::time::Instant::now();
    let restored =
        tokio::task::spawn_blocking(move || start_and_wait(&pgdata, major, &start, goal))
            .await
            .context("the --start task failed")??;
    summary.say(format_args!(
        "PostgreSQL {major} on port {port} (pid {}): {}",
        restored.pid, restored.state
    ));
    if let Some(stop) = &restored.stop {
        summary.say(format_args!("restored point: {stop}"));
    }
    if let Some(t) = &restored.last_transaction {
        summary.say(format_args!("last transaction replayed: {t}"));
    }
    if let Some(tli) = &restored.new_timeline {
        summary.say(format_args!("continues on timeline {tli}"));
    }
    summary.set(
        "started",
        serde_json::json!({
            "major": major,
            "port": port,
            "pid": restored.pid,
            "state": restored.state,
            "stop": restored.stop,
            "last_transaction": restored.last_transaction,
            "new_timeline": restored.new_timeline,
            "recovery_seconds": recovering.elapsed().as_secs_f64(),
            "log": restored.log.display().to_string(),
        }),
    );
    summary.say(format_args!(
        "timings: plan and fetch {:.1} s (of which fetch and unpack {:.1} s), recovery {:.1} s; server log {}",
        prepared.as_secs_f64(),
        report.fetch_time.as_secs_f64(),
        recovering.elapsed().as_secs_f64(),
        restored.log.display()
    ));
    let Some(objects) = objects else {
        return Ok(());
    };
    let instant = match time_target {
        Some(t) => t,
        None => stop_instant(&restored)?,
    };
    let repo = Repository::open(&url, &S3Options::from_env()?).await?;
    let (objects_report, writer) = objects.run(&repo, instant).await?;
    let mut objects_value = serde_json::to_value(&objects_report)?;
    if summary.json.is_none() {
        crate::objects::print_report(&objects_report);
    }
    if let Some(sql) = &args.verify_refs {
        let pg = restored_conninfo(cli, port)?;
        let (checked, missing) = crate::objects::verify_refs(&pg, sql, &writer).await?;
        match summary.json {
            Some(_) => {
                objects_value["verify_refs"] = serde_json::json!({ "checked": checked, "missing": missing.len(), "missing_keys": missing });
            }
            None => crate::objects::print_verification(checked, &missing),
        }
    }
    summary.set("objects", objects_value);
    Ok(())
}

/// The commit time of the last transaction recovery replayed: where it stopped.
fn stop_instant(restored: &Restored) -> anyhow::Result<chrono::DateTime<Utc>> {
    let text = restored.last_transaction.as_deref().ok_or(Usage(
        "recovery replayed no transaction, so it gives no instant for the bucket; HINT: use tidemark objects restore --target-time",
    ))?;
    Ok(parse_time(text)?.with_timezone(&Utc))
}

/// The restored server (TCP on loopback, `port`), as the user and database of --pg, else
/// `postgres`.
fn restored_conninfo(cli: &Cli, port: u16) -> anyhow::Result<ConnInfo> {
    let given = cli.pg.as_deref().map(str::parse::<ConnInfo>).transpose()?;
    let user = given.as_ref().map_or("postgres", |c| c.user.as_str());
    let dbname = given
        .as_ref()
        .and_then(|c| c.dbname.as_deref())
        .unwrap_or("postgres");
    let mut info =
        format!("host=127.0.0.1 port={port} user={user} dbname={dbname}").parse::<ConnInfo>()?;
    info.set_password(given.and_then(|c| c.password().map(str::to_string)));
    Ok(info)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub async fn plan(
    cli: &Cli,
    opts: &TargetOpts,
    backup: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let url = repo_url(cli)?;
    let request = request(opts, backup)?;
    let repo = Repository::open_for_reads(&url, &S3Options::from_env()?, READS).await?;
    let seg = segment_size(&repo).await?;
    let plan = tidemark_restorer::plan::plan(&repo, seg, &request).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&plan_json(&plan, seg))?);
    } else {
        print_plan(&plan);
    }
    Ok(())
}

/// `plan --json`, and the `plan` of `restore --json`.
fn plan_json(plan: &Plan, seg: tidemark_protocol::WalSegmentSize) -> serde_json::Value {
    serde_json::json!({
        "backup": plan.backup.id.to_string(),
        "backup_start_lsn": plan.backup.start_lsn.to_string(),
        "backup_stop_lsn": plan.backup.stop_lsn.to_string(),
        "target": plan.target.to_string(),
        "target_inclusive": plan.inclusive,
        "timeline": plan.timeline.0,
        "note": plan.note,
        "wal_first": plan.wal_first.file_name(seg),
        "wal_last": plan.wal_last.file_name(seg),
        "archive_end": plan.archive_end.to_string(),
        "skipped_files": plan.backup.skipped_files,
    })
}

fn print_plan(plan: &Plan) {
    if let Some(note) = &plan.note {
        outln!("{note}");
    }
    for path in &plan.backup.skipped_files {
        outln!(
            "warning: the backup lacks {path:?}: the server left it out (PostgreSQL copies no symlink outside pg_tblspc); HINT: put the file back by hand after the restore"
        );
    }
    outln!(
        "backup {} (WAL {} .. {}, finished {}), recovering to {}",
        plan.backup.id,
        plan.backup.start_lsn,
        plan.backup.stop_lsn,
        plan.backup.stop_time.format("%Y-%m-%d %H:%M:%S+00"),
        plan.target
    );
    outln!(
        "WAL needed: timeline {} segments {:X} .. {:X}; archive ends at {}",
        plan.wal_first.timeline,
        plan.wal_first.segno,
        plan.wal_last.segno,
        plan.archive_end
    );
}
