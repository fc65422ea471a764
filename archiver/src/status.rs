//! `tidemark status`: how far archiving has got, how far behind the server it is, and the
//! window each store (the database, each tracked bucket) can be restored to.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tidemark_protocol::conninfo::ConnInfo;
use tidemark_protocol::replication::ReplicationClient;
use tidemark_store::catalog::Catalog;
use tidemark_store::gap::WalGap;

use crate::error::ArchiverError;
use crate::stream::follow::stream_target;

/// What `status` reports.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub repository: String,
    pub catalog: String,
    /// End of the WAL stored in the repository without a gap (a partial segment counts;
    /// segments stored beyond one still uploading do not).
    pub archived: Option<ArchivedPoint>,
    /// The server's position, when it could be asked.
    pub server: Option<ServerPoint>,
    /// Why the server could not be asked.
    pub server_error: Option<String>,
    /// WAL the server has that the repository does not.
    pub lag_bytes: Option<u64>,
    /// Age of the newest archived WAL while the server has more; 0 when caught up.
    pub lag_seconds: Option<f64>,
    /// Data that would be lost if the server vanished now, in seconds: the lag, since
    /// WAL beyond the archived point may have been written any time after it was stored.
    pub rpo_estimate_seconds: Option<f64>,
    /// Instants the database can be restored to: from the oldest backup's end to the
    /// newest archived WAL.
    pub database_window: Option<Window>,
    /// Instants (PostgreSQL's clock) each tracked bucket can be restored to: its first to
    /// its newest tracking pass.
    pub buckets: Vec<BucketWindow>,
}

#[derive(Debug, Serialize)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct BucketWindow {
    pub bucket: String,
    pub mode: &'static str,
    pub versions: u64,
    pub window: Window,
}

#[derive(Debug, Serialize)]
pub struct ArchivedPoint {
    pub timeline: u32,
    pub lsn: String,
    pub segment_key: String,
    pub partial: bool,
    pub archived_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct ServerPoint {
    /// The host reached (`host:port` or socket path): the primary of a host list, as for
    /// `stream`.
    pub host: String,
    pub timeline: u32,
    pub flush_lsn: String,
    pub system_identifier: String,
}

/// Build the report from the catalog, the oldest backup's end (`oldest_backup_end`), the
/// gaps accepted in the archive (the stored run is counted from after the newest) and,
/// if `conninfo` is given, the server.
pub async fn status(
    repository: &str,
    catalog: &Catalog,
    oldest_backup_end: Option<DateTime<Utc>>,
    gaps: &[WalGap],
    conninfo: Option<&ConnInfo>,
) -> Result<StatusReport, ArchiverError> {
    let newest = catalog.stored_run_end(gaps.last().map(|g| g.to))?;
    let buckets = catalog
        .tracked_buckets()?
        .into_iter()
        .map(|b| BucketWindow {
            mode: b.mode.as_str(),
            versions: b.versions,
            window: Window {
                from: b.first_pass,
                to: b.last_pass,
            },
            bucket: b.bucket,
        })
        .collect();
    let mut report = StatusReport {
        repository: repository.to_string(),
        catalog: catalog.path().display().to_string(),
        archived: newest.as_ref().map(|r| ArchivedPoint {
            timeline: r.name.timeline.0,
            lsn: r.end_lsn.to_string(),
            segment_key: r.key.clone(),
            partial: r.partial,
            archived_at: r.archived_at,
        }),
        server: None,
        server_error: None,
        lag_bytes: None,
        lag_seconds: None,
        rpo_estimate_seconds: None,
        database_window: match (oldest_backup_end, &newest) {
            (Some(from), Some(n)) if n.archived_at >= from => Some(Window {
                from,
                to: n.archived_at,
            }),
            _ => None,
        },
        buckets,
    };
    let Some(conninfo) = conninfo else {
        return Ok(report);
    };
    let system = match ReplicationClient::connect(&stream_target(conninfo)).await {
        Ok(mut client) => client
            .identify_system()
            .await
            .map(|s| (client.host().to_string(), s)),
        Err(e) => Err(e),
    };
    match system {
        Ok((host, system)) => {
            report.server = Some(ServerPoint {
                host,
                timeline: system.timeline.0,
                flush_lsn: system.xlogpos.to_string(),
                system_identifier: system.system_id.to_string(),
            });
            if let Some(newest) = &newest {
                let lag = system.xlogpos.bytes_since(newest.end_lsn);
                let age =
                    (Utc::now() - newest.archived_at).num_milliseconds().max(0) as f64 / 1000.0;
                let seconds = if lag == 0 { 0.0 } else { age };
                report.lag_bytes = Some(lag);
                report.lag_seconds = Some(seconds);
                report.rpo_estimate_seconds = Some(seconds);
            }
        }
        Err(e) => report.server_error = Some(e.to_string()),
    }
    Ok(report)
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "repository:     {}", self.repository)?;
        writeln!(f, "catalog:        {}", self.catalog)?;
        match &self.archived {
            Some(a) => writeln!(
                f,
                "archived up to: {} on timeline {} ({}{}), stored {}",
                a.lsn,
                a.timeline,
                a.segment_key,
                if a.partial { ", partial" } else { "" },
                a.archived_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )?,
            None => writeln!(f, "archived up to: nothing archived yet")?,
        }
        match (&self.server, &self.server_error) {
            (Some(s), _) => writeln!(
                f,
                "server at:      {} on timeline {} ({})",
                s.flush_lsn, s.timeline, s.host
            )?,
            (None, Some(e)) => writeln!(f, "server:         unreachable ({e})")?,
            (None, None) => writeln!(f, "server:         not asked (no --pg)")?,
        }
        if let (Some(bytes), Some(secs), Some(rpo)) =
            (self.lag_bytes, self.lag_seconds, self.rpo_estimate_seconds)
        {
            writeln!(f, "lag:            {bytes} bytes, {secs:.1} s")?;
            writeln!(f, "RPO estimate:   {rpo:.1} s")?;
        }
        let secs = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        match &self.database_window {
            Some(w) => writeln!(
                f,
                "restorable:     database {} .. {}",
                secs(&w.from),
                secs(&w.to)
            )?,
            None => writeln!(
                f,
                "restorable:     database: no backup with archived WAL after it yet"
            )?,
        }
        for b in &self.buckets {
            writeln!(
                f,
                "                bucket {} ({}, {} versions) {} .. {}",
                b.bucket,
                b.mode,
                b.versions,
                secs(&b.window.from),
                secs(&b.window.to)
            )?;
        }
        Ok(())
    }
}
