//! `check --switch`: have the server finish its current segment (`pg_switch_wal()`) and
//! wait for that segment to reach the repository — archiving proven end to end, now.

use std::time::{Duration, Instant};

use tidemark_protocol::conninfo::ConnInfo;
use tidemark_protocol::replication::{ReplicationError, SqlSession};
use tidemark_protocol::{Lsn, SegmentName, TimelineId, WalSegmentSize};
use tidemark_store::layout;
use tidemark_store::repository::Repository;

use super::Finding;
use crate::stream::follow::stream_target;

const CHECK: &str = "switch";

/// Switch the server `conninfo` reaches (on `timeline`) to a new segment and wait up to
/// `timeout` for the finished one to be stored in `repo` (segments of `seg`).
pub async fn switch(
    conninfo: &ConnInfo,
    repo: &Repository,
    timeline: TimelineId,
    seg: WalSegmentSize,
    timeout: Duration,
) -> Finding {
    let end = match switch_wal(conninfo).await {
        Ok(end) => end,
        Err(e) => {
            return Finding::fail(
                CHECK,
                format!("cannot switch the server to a new WAL segment: {e}"),
                "run check --switch as a user allowed to call pg_switch_wal() (a superuser, or GRANT EXECUTE ON FUNCTION pg_switch_wal() TO the user)",
            )
        }
    };
    // The byte before the returned position is in the segment just finished (or, when
    // nothing was written since the last switch, the one finished then).
    let name = SegmentName::containing(timeline, Lsn(end.0.saturating_sub(1)), seg);
    let key = layout::wal_segment_key(name, seg);
    let began = Instant::now();
    loop {
        match repo.head(&key).await {
            Ok(Some(_)) => {
                return Finding::ok(
                    CHECK,
                    format!(
                        "segment {} reached the repository {:.1} s after pg_switch_wal()",
                        name.file_name(seg),
                        began.elapsed().as_secs_f64()
                    ),
                )
            }
            Ok(None) if began.elapsed() < timeout => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Ok(None) => {
                return Finding::fail(
                    CHECK,
                    format!(
                        "segment {} (switched at {end}) did not reach the repository within {} s",
                        name.file_name(seg),
                        timeout.as_secs()
                    ),
                    "is `tidemark stream` running and the repository reachable? see its log",
                )
            }
            Err(e) => {
                return Finding::fail(
                    CHECK,
                    format!("cannot look for {key}: {e}"),
                    "check the repository's endpoint and credentials",
                )
            }
        }
    }
}

/// `pg_switch_wal()` on the primary: the end of the segment it finished.
async fn switch_wal(conninfo: &ConnInfo) -> Result<Lsn, ReplicationError> {
    const SQL: &str = "SELECT pg_switch_wal()";
    let rows = SqlSession::ask(&stream_target(conninfo), SQL).await?;
    rows.first()
        .and_then(|v| v.as_deref())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ReplicationError::Protocol(format!("{SQL} returned {rows:?}")))
}
