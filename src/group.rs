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
use tidemark_restorer::objects::ObjectRestoreError;
use tidemark_restorer::plan::{plan, PlanRequest};
use tidemark_restorer::restore::{segment_size, RestoreError};
use tidemark_restorer::target::{Occurrence, RecoveryTarget, TargetAction, TimelineTarget};
use tidemark_store::group::GroupMark;
use tidemark_store::objects;
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
    /// Where the group's buckets go (`URL/<bucket>`); `None`: not restored.
    pub objects_to: Option<&'a str>,
}

/// Restore every member of `group` to a mark or a time, and with `objects_to` the
/// group's buckets to the same instant (see the module comment).
pub async fn restore(cli: &Cli, group: &str, how: &RestoreHow<'_>) -> anyhow::Result<ExitCode> {
    let (members, buckets) = members(cli, group).await?;
    let config = cli
        .config_in_use
        .as_ref()
        .map(|c| c.path.clone())
        .context("groups need the config file")?;
    let (target, args, what) = match &how.target {
        GroupTarget::Mark(mark) => (
            RecoveryTarget::Name(mark.to_string()),
            vec!["--target-name".to_string(), mark.to_string()],
            format!("mark {mark}"),
        ),
        GroupTarget::Time(t) => (
            RecoveryTarget::Time(*t),
            vec!["--target-time".to_string(), t.to_rfc3339()],
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
    // Everything is checked before anything is written.
    let mark = check_members(group, &members, how, &request, &what).await?;
    let bucket_runs = match how.objects_to {
        Some(to) => bucket_runs(&members, &buckets, mark.as_ref(), how, to).await?,
        None => Vec::new(),
    };

    let exe = std::env::current_exe().context("cannot find the tidemark executable")?;
    let permits = Arc::new(tokio::sync::Semaphore::new(how.parallel.max(1)));
    let runs = members.iter().map(|m| {
        let mut words = vec![
            "restore".to_string(),
            "--pgdata".to_string(),
            how.into.join(&m.cluster).display().to_string(),
        ];
        words.extend(args.iter().cloned());
        if how.start {
            words.push("--start".to_string());
        }
        let child = member_command(&exe, &config, &m.cluster, &words);
        let permits = permits.clone();
        async move {
            let _permit = permits.acquire_owned().await;
            (m.cluster.as_str(), run_child(child).await)
        }
    });
    let mut worst = 0u8;
    for (cluster, done) in futures::future::join_all(runs).await {
        let code = report_child(cluster, done?, &format!("restored to {what}"));
        worst = if worst == 0 { code } else { worst };
    }
    if let (0, Some(mark)) = (worst, &mark) {
        outln!(
            "group {group}: every member at mark {} (made {}); the members' clocks agreed within {} ms",
            mark.name,
            mark.made_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            mark.skew_bound_ms
        );
    }
    // The buckets once every member is back, each through the member that tracks it.
    if worst == 0 {
        for (cluster, bucket, words) in bucket_runs {
            let child = member_command(&exe, &config, &cluster, &words);
            let label = format!("{cluster} (bucket {bucket})");
            let code = report_child(&label, run_child(child).await?, "bucket restored");
            worst = if worst == 0 { code } else { worst };
        }
    }
    Ok(ExitCode::from(worst))
}

/// Every member holds the mark (returned, as the first member records it), its WAL
/// reaches the target, and its directory is free.
async fn check_members(
    group: &str,
    members: &[Member],
    how: &RestoreHow<'_>,
    request: &PlanRequest,
    what: &str,
) -> anyhow::Result<Option<GroupMark>> {
    let mut found = None;
    for m in members {
        let in_member = || format!("group member {}", m.cluster);
        if let GroupTarget::Mark(name) = how.target {
            let marks = m.repo.group_marks(group).await.with_context(in_member)?;
            let Some(mark) = marks.into_iter().find(|k| k.name == name) else {
                return Err(anyhow::Error::new(
                    tidemark_restorer::plan::PlanError::NotInArchive(request.target.clone()),
                )
                .context(format!(
                    "group member {}: its repository has no mark {name} of group {group}; nothing was written",
                    m.cluster
                )));
            };
            found.get_or_insert(mark);
        }
        let seg = segment_size(&m.repo).await.with_context(in_member)?;
        plan(&m.repo, seg, request).await.with_context(|| {
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
    Ok(found)
}

/// For each of the group's buckets: the member whose repository tracks it and the
/// `objects restore` arguments that bring it to the target instant on that member's
/// clock, into `to/<bucket>`. A bucket no member tracks, or an instant outside its
/// tracked window, is refused here, before anything is written.
async fn bucket_runs(
    members: &[Member],
    buckets: &[String],
    mark: Option<&GroupMark>,
    how: &RestoreHow<'_>,
    to: &str,
) -> anyhow::Result<Vec<(String, String, Vec<String>)>> {
    let mut runs = Vec::new();
    for bucket in buckets {
        let mut tracked = None;
        for m in members {
            let passes = objects::load_passes(&m.repo, Some(bucket)).await?;
            if !passes.is_empty() {
                tracked = Some((m, passes));
                break;
            }
        }
        let Some((m, passes)) = tracked else {
            return Err(anyhow::Error::new(ObjectRestoreError::NotTracked {
                bucket: bucket.clone(),
            })
            .context("no member of the group tracks it; nothing was written"));
        };
        let instant = match (&how.target, mark) {
            (GroupTarget::Time(t), _) => t.with_timezone(&chrono::Utc),
            (GroupTarget::Mark(_), Some(mark)) => mark
                .members
                .iter()
                .find(|p| p.cluster == m.cluster)
                .map(|p| p.server_time)
                .context("the mark does not name the member that tracks the bucket")?,
            (GroupTarget::Mark(_), None) => anyhow::bail!("the mark was not read"),
        };
        let times = passes.iter().map(|p| p.clock.at);
        let (Some(first), Some(last)) = (times.clone().min(), times.max()) else {
            continue;
        };
        let outside = if instant < first {
            Some(ObjectRestoreError::BeforeTracking {
                bucket: bucket.clone(),
                target: instant,
                first,
            })
        } else if instant > last {
            Some(ObjectRestoreError::BeyondTracking {
                bucket: bucket.clone(),
                target: instant,
                last,
            })
        } else {
            None
        };
        if let Some(e) = outside {
            return Err(anyhow::Error::new(e).context("nothing was written"));
        }
        let words = [
            "objects",
            "restore",
            "--bucket",
            bucket,
            "--target-time",
            &instant.to_rfc3339(),
            "--objects-to",
            &format!("{}/{bucket}", to.trim_end_matches('/')),
        ];
        runs.push((
            m.cluster.clone(),
            bucket.clone(),
            words.iter().map(|w| w.to_string()).collect(),
        ));
    }
    Ok(runs)
}

/// `tidemark --config CONFIG --cluster CLUSTER WORDS…`, as a child of this process.
fn member_command(
    exe: &Path,
    config: &Path,
    cluster: &str,
    words: &[String],
) -> tokio::process::Command {
    let mut child = tokio::process::Command::new(exe);
    child
        .arg("--config")
        .arg(config)
        .arg("--cluster")
        .arg(cluster)
        .args(words)
        .stdin(Stdio::null());
    child
}

async fn run_child(mut child: tokio::process::Command) -> anyhow::Result<std::process::Output> {
    child
        .output()
        .await
        .context("cannot run a member's tidemark")
}

/// Print a member's output, each line prefixed with `who`; its exit status as a code.
fn report_child(who: &str, out: std::process::Output, success: &str) -> u8 {
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        outln!("{who}: {line}");
    }
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        eprintln!("{who}: {line}");
    }
    match out.status.code() {
        Some(0) => {
            outln!("{who}: {success}");
            0
        }
        code => {
            let code = code.and_then(|c| u8::try_from(c).ok()).unwrap_or(1);
            eprintln!("{who}: failed (exit {code})");
            code
        }
    }
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
