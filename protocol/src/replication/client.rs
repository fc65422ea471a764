//! `ReplicationClient`: a walsender connection in command mode, and the replication
//! commands tidemark uses (IDENTIFY_SYSTEM, SHOW, slots, TIMELINE_HISTORY,
//! START_REPLICATION, BASE_BACKUP). Version differences in command syntax live here,
//! BASE_BACKUP's (and its response's) in `base_backup`.

use postgres_protocol::message::frontend;

use super::base_backup::{BaseBackup, BaseBackupOptions};
use super::connection::{Backend, Connection};
use super::error::{ReplicationError, SQLSTATE_DUPLICATE_OBJECT};
use super::query::QueryResponse;
use super::startup;
use super::stream::ReplicationStream;
use crate::conninfo::ConnInfo;
use crate::lsn::Lsn;
use crate::segment::WalSegmentSize;
use crate::timeline::TimelineId;

/// The answer to IDENTIFY_SYSTEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's unique system identifier.
    pub system_id: u64,
    /// The server's current timeline.
    pub timeline: TimelineId,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
}

/// The answer to READ_REPLICATION_SLOT for an existing slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotInfo {
    pub physical: bool,
    /// Oldest WAL the slot retains; `None` until it reserves WAL.
    pub restart_lsn: Option<Lsn>,
    /// Timeline of `restart_lsn`.
    pub restart_timeline: Option<TimelineId>,
}

/// What START_REPLICATION led to.
pub enum StartOutcome {
    /// The server is streaming WAL.
    Streaming(ReplicationStream),
    /// Server answered at/after the timeline's switch point without entering copy mode
    /// (result set with next timeline + its start LSN). The client is back in command mode.
    TimelineEnded {
        client: ReplicationClient,
        next_timeline: TimelineId,
        switch_lsn: Lsn,
    },
}

/// A physical-replication (walsender) connection in command mode.
pub struct ReplicationClient {
    pub(crate) conn: Connection,
    server_version_num: u32,
    /// The host reached (`host:port` or socket path).
    host: String,
}

impl ReplicationClient {
    /// TCP or Unix socket per ConnInfo; startup with `replication=true` (physical walsender),
    /// `application_name`; TLS per sslmode (SSLRequest; prefer/allow fall back to plain when
    /// the server says 'N'; require = encrypt without verifying; verify-ca = verify chain
    /// against sslrootcert but not host name; verify-full = chain + host name; never on
    /// Unix sockets, as libpq); auth: trust, cleartext, md5, SCRAM-SHA-256 (without
    /// channel binding). Each host's attempt is bounded by `connect_timeout`; with several
    /// hosts, the first that matches `target_session_attrs` (`any` when unset) is used.
    pub async fn connect(info: &ConnInfo) -> Result<ReplicationClient, ReplicationError> {
        let session = startup::connect(info, startup::SessionKind::Walsender).await?;
        Ok(ReplicationClient {
            conn: session.conn,
            server_version_num: version_num(&session.server_version),
            host: session.target,
        })
    }

    /// The host this connection reached, `host:port` or the socket path.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The server's version as `PG_VERSION_NUM`, e.g. 150018 for 15.18; 0 if the server
    /// did not report one.
    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    /// IDENTIFY_SYSTEM: system identifier, current timeline, WAL flush position.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, ReplicationError> {
        const CMD: &str = "IDENTIFY_SYSTEM";
        let r = self.query(CMD).await?;
        Ok(SystemIdentity {
            system_id: r.parse(CMD, "systemid")?,
            timeline: r.parse(CMD, "timeline")?,
            xlogpos: r.parse(CMD, "xlogpos")?,
        })
    }

    /// `SHOW setting`: the value as the server prints it (e.g. `16MB`).
    pub async fn show(&mut self, setting: &str) -> Result<String, ReplicationError> {
        let valid = !setting.is_empty()
            && setting
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid {
            return Err(ReplicationError::InvalidName {
                what: "setting name",
                value: setting.to_string(),
            });
        }
        let r = self.query(&format!("SHOW {setting}")).await?;
        r.text("SHOW", setting)?
            .ok_or_else(|| ReplicationError::Protocol(format!("SHOW {setting} returned NULL")))
    }

    /// The server's `wal_segment_size`.
    pub async fn wal_segment_size(&mut self) -> Result<WalSegmentSize, ReplicationError> {
        let text = self.show("wal_segment_size").await?;
        WalSegmentSize::parse_setting(&text)
            .map_err(|e| ReplicationError::Protocol(format!("SHOW wal_segment_size: {e}")))
    }

    /// CREATE_REPLICATION_SLOT name PHYSICAL RESERVE_WAL. Ok(false) when it already exists
    /// (SQLSTATE 42710), Ok(true) when created.
    pub async fn create_physical_slot(&mut self, name: &str) -> Result<bool, ReplicationError> {
        check_slot_name(name)?;
        let command = if self.server_version_num >= 150000 {
            format!("CREATE_REPLICATION_SLOT {name} PHYSICAL (RESERVE_WAL)")
        } else {
            format!("CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL")
        };
        match self.query(&command).await {
            Ok(_) => Ok(true),
            Err(e) if e.sqlstate() == Some(SQLSTATE_DUPLICATE_OBJECT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// READ_REPLICATION_SLOT (PostgreSQL 15+; `Unsupported` on older servers).
    /// `Ok(None)` when the slot does not exist.
    pub async fn read_replication_slot(
        &mut self,
        name: &str,
    ) -> Result<Option<SlotInfo>, ReplicationError> {
        const CMD: &str = "READ_REPLICATION_SLOT";
        check_slot_name(name)?;
        if self.server_version_num < 150000 {
            return Err(ReplicationError::Unsupported {
                what: CMD,
                needs: 15,
                server_version_num: self.server_version_num,
            });
        }
        let r = self.query(&format!("{CMD} {name}")).await?;
        let Some(slot_type) = r.text(CMD, "slot_type")? else {
            return Ok(None);
        };
        Ok(Some(SlotInfo {
            physical: slot_type == "physical",
            restart_lsn: r.parse_opt(CMD, "restart_lsn")?,
            restart_timeline: r.parse_opt(CMD, "restart_tli")?,
        }))
    }

    /// TIMELINE_HISTORY tli -> (file name, content bytes).
    pub async fn timeline_history(
        &mut self,
        tli: TimelineId,
    ) -> Result<(String, Vec<u8>), ReplicationError> {
        const CMD: &str = "TIMELINE_HISTORY";
        let r = self.query(&format!("{CMD} {tli}")).await?;
        let name = r
            .text(CMD, "filename")?
            .ok_or_else(|| ReplicationError::Protocol(format!("{CMD} returned no file name")))?;
        let content = r
            .raw(CMD, "content")?
            .ok_or_else(|| ReplicationError::Protocol(format!("{CMD} returned no content")))?;
        Ok((name, content.to_vec()))
    }

    /// START_REPLICATION [SLOT s] PHYSICAL X/Y TIMELINE n.
    pub async fn start_replication(
        mut self,
        slot: Option<&str>,
        start: Lsn,
        timeline: TimelineId,
    ) -> Result<StartOutcome, ReplicationError> {
        let slot_clause = match slot {
            Some(name) => {
                check_slot_name(name)?;
                format!("SLOT {name} ")
            }
            None => String::new(),
        };
        let command =
            format!("START_REPLICATION {slot_clause}PHYSICAL {start} TIMELINE {timeline}");
        tracing::debug!(%command, "starting replication");
        self.send_query(&command).await?;
        let mut response = QueryResponse::default();
        loop {
            match self.conn.read_message().await? {
                Backend::CopyBothResponse => {
                    return Ok(StartOutcome::Streaming(ReplicationStream::new(self)))
                }
                Backend::Message(m) => {
                    if response.absorb(m)? {
                        break;
                    }
                }
            }
        }
        let (next_timeline, switch_lsn) = next_timeline(&response.finish()?)?;
        Ok(StartOutcome::TimelineEnded {
            client: self,
            next_timeline,
            switch_lsn,
        })
    }

    /// BASE_BACKUP with a manifest (CRC32C), a tablespace map, and no wait for WAL
    /// archiving; the start position and tablespace list are read before this returns,
    /// the archives are then read piece by piece from the returned `BaseBackup`.
    /// PostgreSQL 14+ (`Unsupported` on older servers).
    pub async fn base_backup(
        self,
        opts: &BaseBackupOptions,
    ) -> Result<BaseBackup, ReplicationError> {
        BaseBackup::start(self, opts).await
    }

    /// Say goodbye (Terminate) and close the connection.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        frontend::terminate(&mut self.conn.write_buf);
        self.conn.flush().await
    }

    pub(super) async fn send_query(&mut self, sql: &str) -> Result<(), ReplicationError> {
        frontend::query(sql, &mut self.conn.write_buf)?;
        self.conn.flush().await
    }

    /// Run one replication command and collect its response.
    async fn query(&mut self, sql: &str) -> Result<QueryResponse, ReplicationError> {
        simple_query(&mut self.conn, sql).await
    }
}

/// Send `sql` as a simple query and collect the whole response.
pub(crate) async fn simple_query(
    conn: &mut Connection,
    sql: &str,
) -> Result<QueryResponse, ReplicationError> {
    frontend::query(sql, &mut conn.write_buf)?;
    conn.flush().await?;
    let mut response = QueryResponse::default();
    loop {
        match conn.read_message().await? {
            Backend::Message(m) => {
                if response.absorb(m)? {
                    return response.finish();
                }
            }
            Backend::CopyBothResponse => {
                return Err(ReplicationError::Protocol(format!(
                    "unexpected CopyBothResponse to {sql:?}"
                )))
            }
        }
    }
}

/// The `(next_tli, next_tli_startpos)` result set sent when a timeline ends.
pub(crate) fn next_timeline(r: &QueryResponse) -> Result<(TimelineId, Lsn), ReplicationError> {
    const CMD: &str = "START_REPLICATION";
    if !r.has_rows() {
        return Err(ReplicationError::Protocol(
            "the server ended replication without naming the next timeline".to_string(),
        ));
    }
    Ok((
        r.parse(CMD, "next_tli")?,
        r.parse(CMD, "next_tli_startpos")?,
    ))
}

/// Slot names as PostgreSQL allows them: 1-63 of `[a-z0-9_]`.
fn check_slot_name(name: &str) -> Result<(), ReplicationError> {
    let valid = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ReplicationError::InvalidName {
            what: "replication slot name",
            value: name.to_string(),
        })
    }
}

/// `PG_VERSION_NUM` from `server_version`: `15.18 (Debian ...)` → 150018,
/// `18beta1` → 180000, `9.6.24` → 90624; 0 when unparsable.
fn version_num(version: &str) -> u32 {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    let major = parts.next().flatten().unwrap_or(0);
    let after_major = &version[version
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(version.len())..];
    let minor = if after_major.starts_with('.') {
        parts.next().flatten().unwrap_or(0)
    } else {
        0
    };
    if major >= 10 {
        major * 10000 + minor
    } else {
        let patch = parts.next().flatten().unwrap_or(0);
        major * 10000 + minor * 100 + patch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_versions() {
        for (text, num) in [
            ("15.18 (Debian 15.18-1.pgdg120+1)", 150018),
            ("18.6", 180006),
            ("14.0", 140000),
            ("18beta1", 180000),
            ("16devel", 160000),
            ("9.6.24", 90624),
            ("", 0),
        ] {
            assert_eq!(version_num(text), num, "{text}");
        }
    }

    #[test]
    fn validates_slot_names() {
        assert!(check_slot_name("tidemark_1").is_ok());
        assert!(check_slot_name(&"a".repeat(63)).is_ok());
        for bad in ["", "Upper", "a-b", "a b", "x;DROP", &"a".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad}");
        }
    }
}
