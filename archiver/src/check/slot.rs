//! The slot finding: the slot exists, a walsender uses it (`tidemark stream` runs), it
//! still has its WAL, and it holds no more than a bound. Read with SQL from
//! `pg_replication_slots` (every major), or — when the user cannot open a database
//! session — over replication with READ_REPLICATION_SLOT (PostgreSQL 15+; it does not say
//! whether the slot is in use).

use tidemark_protocol::conninfo::ConnInfo;
use tidemark_protocol::replication::{ReplicationClient, ReplicationError, SqlSession};
use tidemark_protocol::Lsn;

use super::Finding;
use crate::stream::follow::stream_target;

const CHECK: &str = "slot";

/// What the server says of the slot.
#[derive(Debug, PartialEq, Eq)]
struct Slot {
    /// `None`: not known (read over replication).
    active: Option<bool>,
    restart_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`; `None` when not known.
    wal_status: Option<String>,
}

/// Slot `slot` on the server `client` is connected to (`conninfo`), whose WAL ends at
/// `server_end`; holding more than `max_lag` bytes is a warning.
pub(super) async fn finding(
    conninfo: &ConnInfo,
    client: &mut ReplicationClient,
    slot: &str,
    server_end: Lsn,
    max_lag: u64,
) -> Finding {
    let read = match by_sql(conninfo, slot).await {
        Ok(read) => read,
        Err(sql) => match client.read_replication_slot(slot).await {
            Ok(info) => info.map(|i| Slot {
                active: None,
                restart_lsn: i.restart_lsn,
                wal_status: None,
            }),
            Err(ReplicationError::Unsupported { .. }) => {
                return Finding::warn(
                    CHECK,
                    format!("slot {slot} not read: {sql}; READ_REPLICATION_SLOT needs PostgreSQL 15"),
                    "let the user open a database session (dbname in --pg) so check can read pg_replication_slots",
                )
            }
            Err(e) => {
                return Finding::fail(
                    CHECK,
                    format!("cannot read slot {slot}: {e}"),
                    "see the server's log",
                )
            }
        },
    };
    judge(slot, read, server_end, max_lag)
}

fn judge(slot: &str, read: Option<Slot>, server_end: Lsn, max_lag: u64) -> Finding {
    let Some(read) = read else {
        return Finding::fail(
            CHECK,
            format!("slot {slot} does not exist on the server"),
            "start `tidemark stream` (it creates the slot); until then the server keeps no WAL for the archive",
        );
    };
    if read.wal_status.as_deref() == Some("lost") {
        return Finding::fail(
            CHECK,
            format!("slot {slot} has lost WAL the archive needed (wal_status lost): the server removed it past max_slot_wal_keep_size"),
            "`tidemark stream` stops at the gap: take a new base backup, and raise max_slot_wal_keep_size",
        );
    }
    let Some(restart) = read.restart_lsn else {
        return Finding::warn(
            CHECK,
            format!("slot {slot} reserves no WAL"),
            "start `tidemark stream`: it reserves WAL from where the repository ends",
        );
    };
    let held = server_end.bytes_since(restart);
    let state = format!(
        "slot {slot}: {}restart_lsn {restart}, {} MiB behind the server{}",
        match read.active {
            Some(true) => "in use, ",
            Some(false) => "not in use, ",
            None => "",
        },
        held >> 20,
        read.wal_status
            .as_deref()
            .map(|s| format!(", wal_status {s}"))
            .unwrap_or_default()
    );
    if read.wal_status.as_deref() == Some("unreserved") {
        return Finding::warn(
            CHECK,
            state,
            "the server is about to remove WAL the slot holds (past max_slot_wal_keep_size): is `tidemark stream` keeping up? raise max_slot_wal_keep_size",
        );
    }
    if held > max_lag {
        return Finding::warn(
            CHECK,
            state,
            "archiving lags: is `tidemark stream` running and the repository reachable? `tidemark status` shows the lag",
        );
    }
    if read.active == Some(false) {
        return Finding::warn(
            CHECK,
            state,
            "no walsender uses the slot: is `tidemark stream` running? (the server keeps the WAL meanwhile)",
        );
    }
    Finding::ok(CHECK, state)
}

/// The slot's row in `pg_replication_slots`, over an ordinary SQL session.
async fn by_sql(conninfo: &ConnInfo, slot: &str) -> Result<Option<Slot>, ReplicationError> {
    // PostgreSQL allows only these in a slot name, so it can be written as a literal.
    if !slot
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(ReplicationError::Protocol(format!(
            "{slot:?} is not a valid slot name"
        )));
    }
    let sql = format!(
        "SELECT concat_ws(' ', active, coalesce(restart_lsn::text, '-'), coalesce(wal_status, '-')) \
         FROM pg_replication_slots WHERE slot_name = '{slot}'"
    );
    let rows = SqlSession::ask(&stream_target(conninfo), &sql).await?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    parse_row(row.as_deref().unwrap_or_default())
        .map(Some)
        .ok_or_else(|| ReplicationError::Protocol(format!("{sql} returned {row:?}")))
}

/// `t 0/3000148 reserved` (active, restart_lsn or `-`, wal_status or `-`).
fn parse_row(row: &str) -> Option<Slot> {
    let mut words = row.split_whitespace();
    let active = match words.next()? {
        "t" => true,
        "f" => false,
        _ => return None,
    };
    let restart_lsn = match words.next()? {
        "-" => None,
        lsn => Some(lsn.parse().ok()?),
    };
    let wal_status = match words.next()? {
        "-" => None,
        s => Some(s.to_string()),
    };
    Some(Slot {
        active: Some(active),
        restart_lsn,
        wal_status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Level;

    #[test]
    fn a_row_of_pg_replication_slots_is_read_and_judged() {
        let row = parse_row("f 0/3000148 reserved").unwrap();
        assert_eq!(row.active, Some(false));
        assert_eq!(row.restart_lsn, Some(Lsn(0x3000148)));
        let end = Lsn(0x3000148 + (1 << 20));
        assert_eq!(judge("s", Some(row), end, 1 << 30).level, Level::Warn);
        let lost = parse_row("f - lost").unwrap();
        assert_eq!(judge("s", Some(lost), end, 1 << 30).level, Level::Fail);
        let fine = parse_row("t 0/3000148 reserved").unwrap();
        assert_eq!(judge("s", Some(fine), end, 1 << 30).level, Level::Ok);
        assert!(parse_row("yes 0/1 reserved").is_none());
    }
}
