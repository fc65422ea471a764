//! `tidemark group mark`: one instant across a group's clusters. Every member's session
//! is opened and checked first (its cluster is its repository's, the name is free in
//! every repository), so a member that cannot be reached leaves nothing behind; then the
//! clocks are read and `pg_create_restore_point` is issued on all members at once, and
//! the mark is recorded in every member's repository.

use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::future::try_join_all;
use tidemark_protocol::conninfo::ConnInfo;
use tidemark_protocol::replication::{ReplicationError, SqlSession};
use tidemark_protocol::{pgtime, Lsn};
use tidemark_store::group::{mark_key, GroupMark, MarkedMember};
use tidemark_store::repository::Repository;

use crate::error::ArchiverError;
use crate::stream::follow::stream_target;

/// A member to mark: its name in the group, its server and its repository.
pub struct Member {
    pub cluster: String,
    pub conninfo: ConnInfo,
    pub repo: Repository,
}

/// Mark `members` of `group` with restore point `name` (see the module comment).
/// `buckets` are the group's, recorded with the mark.
pub async fn mark(
    group: &str,
    name: &str,
    members: &[Member],
    buckets: &[String],
) -> Result<GroupMark, ArchiverError> {
    let in_member = |m: &Member| {
        let cluster = m.cluster.clone();
        move |e: ArchiverError| ArchiverError::GroupMember {
            cluster,
            source: Box::new(e),
        }
    };
    let opened = members
        .iter()
        .map(|m| async move { open(m, group, name).await.map_err(in_member(m)) });
    let mut sessions = try_join_all(opened).await?;

    // Clocks first, then the restore points, each on every member at once.
    let readings = sessions
        .iter_mut()
        .zip(members)
        .map(|((session, _), m)| async move {
            let before = Utc::now();
            let at = session.now().await.map_err(|e| in_member(m)(e.into()))?;
            Ok::<_, ArchiverError>((before, at, Utc::now()))
        });
    let readings = try_join_all(readings).await?;
    let started = Instant::now();
    let made_at = Utc::now();
    let sql = format!(
        "SELECT pg_create_restore_point('{name}')::text || ' ' || ((extract(epoch FROM clock_timestamp()) - 946684800) * 1000000)::bigint"
    );
    let points = sessions.iter_mut().zip(members).map(|((session, _), m)| {
        let sql = &sql;
        async move {
            let row = session
                .first_column(sql)
                .await
                .map_err(|e| in_member(m)(e.into()))?;
            parse_point(&row)
                .ok_or_else(|| in_member(m)(ArchiverError::Task(format!("{sql} returned {row:?}"))))
        }
    });
    let points = try_join_all(points).await?;
    let made_at = made_at + chrono::Duration::from_std(started.elapsed() / 2).unwrap_or_default();
    let mark = GroupMark {
        group: group.to_string(),
        name: name.to_string(),
        made_at,
        members: members
            .iter()
            .zip(&sessions)
            .zip(&points)
            .map(
                |((m, (_, system_identifier)), (lsn, server_time))| MarkedMember {
                    cluster: m.cluster.clone(),
                    system_identifier: *system_identifier,
                    lsn: *lsn,
                    server_time: *server_time,
                },
            )
            .collect(),
        skew_bound_ms: skew_bound_ms(&readings),
        buckets: buckets.to_vec(),
    };
    for (session, _) in sessions {
        if let Err(e) = session.close().await {
            tracing::debug!(error = %e, "closing a member's session");
        }
    }
    let recorded = members.iter().map(|m| async {
        m.repo
            .record_group_mark(&mark)
            .await
            .map_err(|e| in_member(m)(e.into()))
    });
    try_join_all(recorded).await?;
    Ok(mark)
}

/// A session on the member's primary, checked: it is the repository's cluster, and the
/// mark's name is free in the repository.
async fn open(m: &Member, group: &str, name: &str) -> Result<(SqlSession, u64), ArchiverError> {
    let identity = m
        .repo
        .identity()
        .await?
        .ok_or_else(|| ArchiverError::NotInitialised {
            url: m.repo.url.to_string(),
        })?;
    if m.repo.head(&mark_key(group, name)).await?.is_some() {
        return Err(ArchiverError::MarkExists {
            group: group.to_string(),
            name: name.to_string(),
        });
    }
    let mut session = SqlSession::connect(&stream_target(&m.conninfo)).await?;
    const SQL: &str = "SELECT system_identifier::text FROM pg_control_system()";
    let rows = session.first_column(SQL).await?;
    let system = rows
        .first()
        .and_then(|v| v.as_deref())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| ReplicationError::Protocol(format!("{SQL} returned {rows:?}")))?;
    if system != identity.system_identifier {
        return Err(ArchiverError::GroupWrongCluster {
            server: system,
            repository: identity.system_identifier,
        });
    }
    Ok((session, system))
}

/// `0/3000028 757382400000000`: the restore point's LSN and the server's clock.
fn parse_point(rows: &[Option<String>]) -> Option<(Lsn, DateTime<Utc>)> {
    let (lsn, micros) = rows.first()?.as_deref()?.split_once(' ')?;
    Some((
        lsn.parse().ok()?,
        pgtime::from_postgres(micros.parse().ok()?)?,
    ))
}

/// The most two members' clocks can disagree by: each member's offset from the local
/// clock lies between its reading less the local clock after asking and its reading less
/// the local clock before.
fn skew_bound_ms(readings: &[(DateTime<Utc>, DateTime<Utc>, DateTime<Utc>)]) -> i64 {
    let offsets: Vec<(i64, i64)> = readings
        .iter()
        .map(|(before, at, after)| {
            (
                (*at - *after).num_milliseconds(),
                (*at - *before).num_milliseconds(),
            )
        })
        .collect();
    let mut bound = 0;
    for (i, (lo_a, hi_a)) in offsets.iter().enumerate() {
        for (lo_b, hi_b) in &offsets[i + 1..] {
            bound = bound.max(hi_a - lo_b).max(hi_b - lo_a);
        }
    }
    bound
}

/// Whether `name` can be a restore point's name here: letters, digits, `_ . -`, at most
/// 63 bytes (PostgreSQL's limit), so it is written into SQL as it is.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skew_bound_covers_each_pair_of_reading_windows() {
        let t = |ms: i64| DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap();
        // Member a reads 5 ms ahead within a 2 ms window; b reads on time within 4 ms.
        let readings = [(t(0), t(6), t(2)), (t(0), t(2), t(4))];
        // a's offset is in [4, 6], b's in [-2, 2]: they differ by at most 8 ms.
        assert_eq!(skew_bound_ms(&readings), 8);
        assert_eq!(skew_bound_ms(&readings[..1]), 0);
    }

    #[test]
    fn restore_point_names_are_plain() {
        assert!(valid_name("platform-20261204T025000Z"));
        assert!(!valid_name("a'b"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"x".repeat(64)));
    }
}
