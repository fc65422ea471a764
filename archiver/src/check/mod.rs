//! `tidemark check`'s findings on the write side: the server `stream` would archive (its
//! cluster, the settings archiving needs, the slot — `slot`), whether archiving keeps up,
//! whether a segment switched now reaches the repository (`switch`), and whether each
//! tracked bucket's history is fresh. Each
//! finding is one line, ok / warn / fail, with a hint saying what to do; the binary adds
//! the repository's and the restore planner's, prints them and exits by the worst.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tidemark_protocol::conninfo::ConnInfo;
use tidemark_protocol::replication::{ReplicationClient, ReplicationError};
use tidemark_protocol::{setting, Lsn, TimelineId};
use tidemark_store::catalog::Catalog;
use tidemark_store::gap::WalGap;

use crate::error::ArchiverError;
use crate::stream::follow::stream_target;

mod slot;
mod switch;

pub use switch::switch;

/// How bad a finding is; the worst sets `check`'s exit status (0, 1, 2, as Nagios reads
/// them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One line of `check`.
#[derive(Debug, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Finding {
    pub fn ok(check: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            check,
            level: Level::Ok,
            detail: detail.into(),
            hint: None,
        }
    }

    pub fn warn(check: &'static str, detail: impl Into<String>, hint: &str) -> Finding {
        Finding {
            level: Level::Warn,
            hint: Some(hint.to_string()),
            ..Finding::ok(check, detail)
        }
    }

    pub fn fail(check: &'static str, detail: impl Into<String>, hint: &str) -> Finding {
        Finding {
            level: Level::Fail,
            hint: Some(hint.to_string()),
            ..Finding::ok(check, detail)
        }
    }
}

/// Below this, `max_slot_wal_keep_size` lets the server drop WAL after a short outage.
const SMALL_SLOT_KEEP: u64 = 1 << 30;

/// What `server` learnt, besides its findings: where the server's WAL ends, on which
/// timeline.
pub struct ServerFindings {
    pub findings: Vec<Finding>,
    pub flush_lsn: Option<Lsn>,
    pub timeline: Option<TimelineId>,
}

/// Reach the server `stream` would archive (the primary of a host list) and check it
/// against the repository's cluster (`system_identifier`), the settings archiving needs,
/// and slot `slot`, whose retained WAL above `max_slot_lag` bytes is a warning.
pub async fn server(
    conninfo: &ConnInfo,
    system_identifier: Option<u64>,
    slot: &str,
    max_slot_lag: u64,
) -> ServerFindings {
    let mut out = ServerFindings {
        findings: Vec::new(),
        flush_lsn: None,
        timeline: None,
    };
    let connected = match ReplicationClient::connect(&stream_target(conninfo)).await {
        Ok(mut client) => client.identify_system().await.map(|s| (client, s)),
        Err(e) => Err(e),
    };
    let (mut client, system) = match connected {
        Ok(c) => c,
        Err(e) => {
            out.findings.push(Finding::fail(
                "server",
                format!("cannot reach the primary: {e}"),
                "check --pg, that the server runs, and that its user has REPLICATION and a `replication` line in pg_hba.conf",
            ));
            return out;
        }
    };
    let host = client.host().to_string();
    match system_identifier {
        Some(id) if id != system.system_id => {
            out.findings.push(Finding::fail(
                "server",
                format!(
                    "{host} is cluster {}, but the repository holds cluster {id}",
                    system.system_id
                ),
                "point --pg at the repository's cluster, or --repo at this cluster's repository",
            ));
            return out;
        }
        _ => out.findings.push(Finding::ok(
            "server",
            format!(
                "{host}: cluster {}, timeline {}, WAL at {}",
                system.system_id, system.timeline, system.xlogpos
            ),
        )),
    }
    out.flush_lsn = Some(system.xlogpos);
    out.timeline = Some(system.timeline);
    out.findings.push(settings(&mut client).await);
    let slot = slot::finding(conninfo, &mut client, slot, system.xlogpos, max_slot_lag).await;
    out.findings.push(slot);
    out
}

/// `wal_level`, `max_wal_senders` and `max_slot_wal_keep_size`, as one finding.
async fn settings(client: &mut ReplicationClient) -> Finding {
    const CHECK: &str = "settings";
    let read = async {
        Ok::<_, ReplicationError>((
            client.show("wal_level").await?,
            client.show("max_wal_senders").await?,
            client.show("max_slot_wal_keep_size").await?,
        ))
    };
    let (wal_level, senders, keep) = match read.await {
        Ok(values) => values,
        Err(e) => {
            return Finding::fail(
                CHECK,
                format!("cannot read the server's settings: {e}"),
                "see the server's log",
            )
        }
    };
    let shown =
        format!("wal_level={wal_level}, max_wal_senders={senders}, max_slot_wal_keep_size={keep}");
    if !matches!(wal_level.as_str(), "replica" | "logical") {
        return Finding::fail(
            CHECK,
            shown,
            "set wal_level = replica (or logical) and restart the server",
        );
    }
    if senders.parse::<u32>().is_ok_and(|n| n < 2) {
        return Finding::warn(
            CHECK,
            shown,
            "set max_wal_senders to at least 2 (stream and backup each use one) plus one per standby",
        );
    }
    if setting::size_bytes(&keep).is_some_and(|b| b < SMALL_SLOT_KEEP) {
        return Finding::warn(
            CHECK,
            shown,
            "the server drops WAL the archiver has not stored once the slot holds more than this; raise max_slot_wal_keep_size above the WAL of the longest archiver outage you tolerate",
        );
    }
    Finding::ok(CHECK, shown)
}

/// Whether archiving keeps up: the stored run (after the newest accepted gap) is younger
/// than `max_age` whenever the server has WAL beyond it (`server_end`; unknown when the
/// server could not be asked).
pub fn archiving(
    catalog: &Catalog,
    gaps: &[WalGap],
    server_end: Option<Lsn>,
    max_age: Duration,
    now: DateTime<Utc>,
) -> Result<Finding, ArchiverError> {
    const CHECK: &str = "archiving";
    let Some(newest) = catalog.stored_run_end(gaps.last().map(|g| g.to))? else {
        return Ok(Finding::fail(
            CHECK,
            "nothing archived yet",
            "start `tidemark stream`",
        ));
    };
    let age = (now - newest.archived_at).to_std().unwrap_or_default();
    let stored = format!(
        "archived up to {} on timeline {}, stored {}s ago",
        newest.end_lsn,
        newest.name.timeline,
        age.as_secs()
    );
    Ok(match server_end {
        Some(end) if end > newest.end_lsn && age > max_age => Finding::fail(
            CHECK,
            format!("{stored}, while the server is at {end}"),
            "is `tidemark stream` running? see its log; `tidemark status` shows the lag",
        ),
        Some(end) if end > newest.end_lsn => Finding::ok(
            CHECK,
            format!(
                "{stored}; the server is {} kB ahead",
                end.bytes_since(newest.end_lsn) >> 10
            ),
        ),
        Some(_) => Finding::ok(CHECK, format!("{stored}; caught up with the server")),
        None if age > max_age => Finding::warn(
            CHECK,
            format!("{stored}; the server could not be asked whether it has more"),
            "see the server finding above",
        ),
        None => Finding::ok(CHECK, stored),
    })
}

/// Whether each tracked bucket's newest pass (PostgreSQL's clock) is younger than
/// `max_age`: one finding per bucket, none when no bucket is tracked.
pub fn tracking(
    catalog: &Catalog,
    max_age: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<Finding>, ArchiverError> {
    const CHECK: &str = "tracking";
    Ok(catalog
        .tracked_buckets()?
        .into_iter()
        .map(|b| {
            let age = (now - b.last_pass).to_std().unwrap_or_default();
            let detail = format!(
                "bucket {}: newest pass {}s ago, {} versions recorded",
                b.bucket,
                age.as_secs(),
                b.versions
            );
            match age > max_age {
                true => Finding::fail(
                    CHECK,
                    detail,
                    "is bucket tracking running (`stream --track-bucket` or `objects track`)? see its log; until it runs, restores of the bucket stop at that pass",
                ),
                false => Finding::ok(CHECK, detail),
            }
        })
        .collect())
}
