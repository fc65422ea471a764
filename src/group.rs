//! `tidemark group mark|restore|list`: instants across the clusters of a `[group.NAME]`
//! in the config file (each member with its own `pg` and `repo`; `archiver::group_mark`
//! does the marking). A group restore plans every member first — one that cannot reach
//! the mark refuses the whole restore before anything is written — then runs each
//! member's own `tidemark --cluster NAME restore`, side by side, so every member's
//! restore is exactly what a restore of that cluster alone would be.

use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;

use anyhow::Context;
use tidemark_archiver::group_mark::{self, Member};
use tidemark_protocol::conninfo::ConnInfo;
use tidemark_restorer::plan::{plan, PlanRequest};
use tidemark_restorer::restore::{segment_size, RestoreError};
use tidemark_restorer::target::{Occurrence, RecoveryTarget, TargetAction, TimelineTarget};
use tidemark_store::group::GroupMark;
use tidemark_store::repository::Repository;
use tidemark_store::storage::S3Options;
use tidemark_store::url::RepoUrl;

use crate::cli::Cli;
use crate::failure::Usage;
use crate::output::outln;

/// Mark `group` with restore point `name` (default `GROUP-<UTC time>`).
pub async fn mark(cli: &Cli, group: &str, name: Option<&str>, json: bool) -> anyhow::Result<()> {
    let name = match name {
        Some(n) => n.to_string(),
        None => format!(
            "{group}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ),
    };
    if !group_mark::valid_name(&name) {
        return Err(Usage(
            "--name must be letters, digits, _ . - (at most 63); HINT: e.g. --name before-migration",
        )
        .into());
    }
    let (members, buckets) = members(cli, group).await?;
    let mark = group_mark::mark(group, &name, &members, &buckets).await?;
    print(&[mark], json)
}

/// Where `group restore` takes the members.
pub enum GroupTarget<'a> {
    /// A group mark: each member to its restore point.
    Mark(&'a str),
    /// An instant, on each member's own clock.
    Time(chrono::DateTime<chrono::FixedOffset>),
}

/// How `group restore` runs.
pub struct RestoreHow<'a> {
    pub target: GroupTarget<'a>,
    pub into: &'a Path,
    pub start: bool,
    pub parallel: usize,
}

/// Restore every member of `group` to a mark (see the module comment).
pub async fn restore(cli: &Cli, group: &str, how: &RestoreHow<'_>) -> anyhow::Result<ExitCode> {
    let (members, _) = members(cli, group).await?;
    let config = cli
        .config_in_use
        .as_ref()
        .map(|c| c.path.clone())
        .context("groups need the config file")?;
    let (target, args, what) = match &how.target {
        GroupTarget::Mark(mark) => (
            RecoveryTarget::Name(mark.to_string()),
            ["--target-name".to_string(), mark.to_string()],
            format!("mark {mark}"),
        ),
        GroupTarget::Time(t) => (
            RecoveryTarget::Time(*t),
            ["--target-time".to_string(), t.to_rfc3339()],
            t.to_rfc3339(),
        ),
    };
    let request = PlanRequest {
        target,
        timeline: TimelineTarget::Latest,
        inclusive: true,
        action: TargetAction::Promote,
        backup: None,
        occurrence: Occurrence::default(),
    };
    // Every member first: its mark, its plan, its directory.
    for m in &members {
        let in_member = || format!("group member {}", m.cluster);
        if let GroupTarget::Mark(mark) = how.target {
            let marks = m.repo.group_marks(group).await.with_context(in_member)?;
            if !marks.iter().any(|k| k.name == mark) {
                return Err(anyhow::Error::new(
                    tidemark_restorer::plan::PlanError::NotInArchive(request.target.clone()),
                )
                .context(format!(
                    "group member {}: its repository has no mark {mark} of group {group}; nothing was written",
                    m.cluster
                )));
            }
        }
        let seg = segment_size(&m.repo).await.with_context(in_member)?;
        plan(&m.repo, seg, &request).await.with_context(|| {
            format!(
                "group member {} cannot be restored to {what}; nothing was written",
                m.cluster
            )
        })?;
        let dir = how.into.join(&m.cluster);
        let empty = match std::fs::read_dir(&dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        if !empty {
            return Err(anyhow::Error::new(RestoreError::NotEmpty(dir)).context(in_member()));
        }
    }
    let exe = std::env::current_exe().context("cannot find the tidemark executable")?;
    let permits = Arc::new(tokio::sync::Semaphore::new(how.parallel.max(1)));
    let runs = members.iter().map(|m| {
        let mut child = tokio::process::Command::new(&exe);
        child
            .arg("--config")
            .arg(&config)
            .arg("--cluster")
            .arg(&m.cluster)
            .arg("restore")
            .arg("--pgdata")
            .arg(how.into.join(&m.cluster))
            .args(&args)
            .stdin(Stdio::null());
        if how.start {
            child.arg("--start");
        }
        let permits = permits.clone();
        async move {
            let _permit = permits.acquire_owned().await;
            let out = child.output().await;
            (m.cluster.as_str(), out)
        }
    });
    let mut worst = 0u8;
    for (cluster, out) in futures::future::join_all(runs).await {
        let out = out.with_context(|| format!("cannot run the restore of {cluster}"))?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            outln!("{cluster}: {line}");
        }
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            eprintln!("{cluster}: {line}");
        }
        match out.status.code() {
            Some(0) => outln!("{cluster}: restored to {what}"),
            code => {
                let code = code.and_then(|c| u8::try_from(c).ok()).unwrap_or(1);
                eprintln!("{cluster}: restore failed (exit {code})");
                if worst == 0 {
                    worst = code;
                }
            }
        }
    }
    Ok(ExitCode::from(worst))
}

/// List `group`'s marks, as its first member's repository records them.
pub async fn list(cli: &Cli, group: &str, json: bool) -> anyhow::Result<()> {
    let (members, _) = members(cli, group).await?;
    let first = members.first().ok_or(Usage("the group has no clusters"))?;
    print(&first.repo.group_marks(group).await?, json)
}

fn print(marks: &[GroupMark], json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(marks)?);
        return Ok(());
    }
    for m in marks {
        let members: Vec<String> = m
            .members
            .iter()
            .map(|p| format!("{} at {}", p.cluster, p.lsn))
            .collect();
        outln!(
            "{} ({}): {}; clocks within {} ms{}",
            m.name,
            m.made_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            members.join(", "),
            m.skew_bound_ms,
            match m.buckets.is_empty() {
                true => String::new(),
                false => format!("; buckets {}", m.buckets.join(", ")),
            }
        );
    }
    Ok(())
}

/// The members of `[group.GROUP]`, each with its server and repository opened.
async fn members(cli: &Cli, group: &str) -> anyhow::Result<(Vec<Member>, Vec<String>)> {
    let config = cli.config_in_use.as_ref().ok_or(Usage(
        "groups are defined in the config file; HINT: pass --config PATH with a [group.NAME] table",
    ))?;
    let Some(found) = config.groups.get(group) else {
        anyhow::bail!(Usage(
            "no such [group.NAME] in the config file; HINT: check the name (groups are [group.NAME] tables)"
        ));
    };
    let s3 = S3Options::from_env()?;
    let mut members = Vec::new();
    for m in &found.members {
        let url: RepoUrl = m.repo.parse()?;
        members.push(Member {
            cluster: m.name.clone(),
            conninfo: m.pg.parse::<ConnInfo>()?,
            repo: Repository::open(&url, &s3).await?,
        });
    }
    Ok((members, found.buckets.clone()))
}
