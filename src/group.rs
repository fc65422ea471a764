//! `tidemark group mark|list`: instants across the clusters of a `[group.NAME]` in the
//! config file (each member with its own `pg` and `repo`; `archiver::group_mark` does
//! the marking).

use tidemark_archiver::group_mark::{self, Member};
use tidemark_protocol::conninfo::ConnInfo;
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
