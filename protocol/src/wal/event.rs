//! What the decoder reports: every record (`WalRecord`), and for the few
//! records point-in-time restore cares about, a `WalEvent` (commit, abort,
//! restore point with its time; checkpoint with the xid counter and its epoch). Also which records those are, and how their
//! main data is read.

use chrono::{DateTime, Utc};

use crate::lsn::Lsn;

use super::error::WalDecodeError;
use super::format::WalFormat;
use super::record::{main_data, RecordHeader};
use super::xact::{parse_xact_end, Outcome};

/// `RM_XLOG_ID`: the WAL machinery's own records.
pub(crate) const RM_XLOG_ID: u8 = 0;
/// `RM_XACT_ID`: transaction records.
const RM_XACT_ID: u8 = 1;
/// Resource-manager-specific bits of `xl_info` for `RM_XLOG_ID` (the low
/// four bits belong to the WAL machinery).
const XLOG_INFO_MASK: u8 = 0xF0;
const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
pub(crate) const XLOG_SWITCH: u8 = 0x40;
const XLOG_RESTORE_POINT: u8 = 0x70;
/// `XLOG_XACT_OPMASK`: the operation bits of a transaction record's `xl_info`.
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
/// `xl_restore_point`: `rp_time i64` then `rp_name char[64]`.
const RESTORE_POINT_LEN: usize = 8 + 64;
/// `CheckPoint.nextXid` (a `FullTransactionId`, 8-aligned after `redo`, the two
/// timeline ids and `fullPageWrites`): at this offset on every major from 14 to 18.
const CHECKPOINT_NEXT_XID: std::ops::Range<usize> = 24..32;

/// Something point-in-time restore needs to know about, found in the WAL.
/// `start` is the record's LSN, `end` the LSN just past it (MAXALIGNed, like
/// PostgreSQL's `EndRecPtr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalEvent {
    /// A transaction committed: COMMIT, or COMMIT PREPARED (then `xid` is the
    /// prepared transaction's).
    Commit {
        start: Lsn,
        end: Lsn,
        xid: u32,
        time: DateTime<Utc>,
    },
    /// A transaction aborted: ABORT, or ROLLBACK PREPARED (then `xid` is the
    /// prepared transaction's).
    Abort {
        start: Lsn,
        end: Lsn,
        xid: u32,
        time: DateTime<Utc>,
    },
    /// `pg_create_restore_point(name)`.
    RestorePoint {
        start: Lsn,
        end: Lsn,
        name: String,
        time: DateTime<Utc>,
    },
    /// A checkpoint (online or at shutdown, including the one `pg_resetwal` writes):
    /// `next_xid` is the next transaction id with its epoch (`FullTransactionId`), which
    /// gives the epoch of the 32-bit xids that end after it.
    Checkpoint { start: Lsn, end: Lsn, next_xid: u64 },
}

impl WalEvent {
    /// Just past the event's record.
    pub fn end(&self) -> Lsn {
        match self {
            WalEvent::Commit { end, .. }
            | WalEvent::Abort { end, .. }
            | WalEvent::RestorePoint { end, .. }
            | WalEvent::Checkpoint { end, .. } => *end,
        }
    }
}

/// One decoded WAL record, whatever its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    /// The record's LSN.
    pub start: Lsn,
    /// Just past the record, MAXALIGNed (PostgreSQL's `EndRecPtr`); for
    /// XLOG_SWITCH, the end of its segment.
    pub end: Lsn,
    /// `xl_tot_len`: header and payload, without page headers or padding.
    pub len: u32,
    /// `xl_rmid`: the resource manager that wrote it.
    pub rmid: u8,
    /// `xl_info`.
    pub info: u8,
    /// `xl_xid`: the transaction that wrote it, 0 if none.
    pub xid: u32,
    /// The event this record is, if it is one.
    pub event: Option<WalEvent>,
}

/// The records that are events, told apart by `xl_rmid` and `xl_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    Xact { outcome: Outcome, prepared: bool },
    RestorePoint,
    Checkpoint,
}

fn event_kind(rmid: u8, info: u8) -> Option<EventKind> {
    let xact = |outcome, prepared| Some(EventKind::Xact { outcome, prepared });
    match rmid {
        RM_XACT_ID => match info & XLOG_XACT_OPMASK {
            XLOG_XACT_COMMIT => xact(Outcome::Commit, false),
            XLOG_XACT_ABORT => xact(Outcome::Abort, false),
            XLOG_XACT_COMMIT_PREPARED => xact(Outcome::Commit, true),
            XLOG_XACT_ABORT_PREPARED => xact(Outcome::Abort, true),
            _ => None,
        },
        RM_XLOG_ID => match info & XLOG_INFO_MASK {
            XLOG_RESTORE_POINT => Some(EventKind::RestorePoint),
            XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE => Some(EventKind::Checkpoint),
            _ => None,
        },
        _ => None,
    }
}

/// Whether the record is an XLOG_SWITCH (the rest of its segment is unused).
pub(crate) fn is_switch(header: &RecordHeader) -> bool {
    header.rmid == RM_XLOG_ID && header.info & XLOG_INFO_MASK == XLOG_SWITCH
}

/// Whether the decoder must keep the payload of a record with this header
/// to read its event (all other payloads are checksummed and dropped).
pub(crate) fn needs_payload(header: &RecordHeader) -> bool {
    event_kind(header.rmid, header.info).is_some()
}

/// The event a complete record is, if any. `body` is the record's bytes
/// after the header when [`needs_payload`] said so, else empty.
pub(crate) fn record_event(
    header: &RecordHeader,
    body: &[u8],
    format: WalFormat,
    start: Lsn,
    end: Lsn,
) -> Result<Option<WalEvent>, WalDecodeError> {
    let Some(kind) = event_kind(header.rmid, header.info) else {
        return Ok(None);
    };
    let malformed = |problem| WalDecodeError::MalformedRecord {
        lsn: start,
        problem,
    };
    let time = |micros: i64| {
        crate::pgtime::from_postgres(micros)
            .ok_or(WalDecodeError::TimestampOutOfRange { lsn: start, micros })
    };
    let main = main_data(body, format).map_err(malformed)?;
    let event = match kind {
        EventKind::Xact { outcome, prepared } => {
            let parsed = parse_xact_end(outcome, header.info, main, format).map_err(malformed)?;
            let xid = match (prepared, parsed.twophase_xid) {
                (false, _) => header.xid,
                (true, Some(xid)) => xid,
                (true, None) => return Err(malformed("prepared transaction end without its xid")),
            };
            let time = time(parsed.time)?;
            match outcome {
                Outcome::Commit => WalEvent::Commit {
                    start,
                    end,
                    xid,
                    time,
                },
                Outcome::Abort => WalEvent::Abort {
                    start,
                    end,
                    xid,
                    time,
                },
            }
        }
        EventKind::RestorePoint => {
            if main.len() < RESTORE_POINT_LEN {
                return Err(malformed("restore point record too short"));
            }
            let (micros, name) = main[..RESTORE_POINT_LEN].split_at(8);
            let mut micros_bytes = [0u8; 8];
            micros_bytes.copy_from_slice(micros);
            let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            WalEvent::RestorePoint {
                start,
                end,
                name: String::from_utf8_lossy(&name[..name_len]).into_owned(),
                time: time(i64::from_le_bytes(micros_bytes))?,
            }
        }
        EventKind::Checkpoint => {
            let bytes = main
                .get(CHECKPOINT_NEXT_XID)
                .ok_or_else(|| malformed("checkpoint record too short"))?;
            let mut next_xid = [0u8; 8];
            next_xid.copy_from_slice(bytes);
            WalEvent::Checkpoint {
                start,
                end,
                next_xid: u64::from_le_bytes(next_xid),
            }
        }
    };
    Ok(Some(event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::testing::main_only;

    fn header(rmid: u8, info: u8, xid: u32) -> RecordHeader {
        RecordHeader {
            tot_len: 0,
            xid,
            prev: Lsn(0),
            info,
            rmid,
            crc: 0,
        }
    }

    fn event(h: RecordHeader, main: &[u8]) -> Result<Option<WalEvent>, WalDecodeError> {
        record_event(
            &h,
            &main_only(main),
            WalFormat::of_major(16),
            Lsn(64),
            Lsn(128),
        )
    }

    #[test]
    fn only_transaction_ends_restore_points_and_checkpoints_are_events() {
        let main = 0i64.to_le_bytes();
        // PREPARE, ASSIGNMENT, INVALIDATIONS; XLOG_SWITCH, NEXTOID; heap insert.
        for (rmid, info) in [
            (1, 0x10),
            (1, 0x50),
            (1, 0x60),
            (0, 0x40),
            (0, 0x30),
            (10, 0x00),
        ] {
            assert!(!needs_payload(&header(rmid, info, 0)), "{rmid}/{info:#x}");
            assert_eq!(event(header(rmid, info, 0), &main), Ok(None));
        }
        assert!(is_switch(&header(0, 0x40, 0)));
        assert!(!is_switch(&header(1, 0x40, 0)));
        // With an xinfo word, and a low (WAL machinery) bit of xl_info set.
        let commit = event(header(1, 0x80 | 0x01, 5), &[&main[..], &[0; 4]].concat());
        assert!(matches!(commit, Ok(Some(WalEvent::Commit { xid: 5, .. }))));
    }

    #[test]
    fn times_are_microseconds_since_2000() {
        let micros = 757_382_400_000_001i64; // 2024-01-01T00:00:00.000001Z
        let got = event(header(1, 0x20, 9), &micros.to_le_bytes()).unwrap();
        let time: DateTime<Utc> = "2024-01-01T00:00:00.000001Z".parse().unwrap();
        assert_eq!(
            got,
            Some(WalEvent::Abort {
                start: Lsn(64),
                end: Lsn(128),
                xid: 9,
                time
            })
        );
        let err = event(header(1, 0x00, 9), &i64::MAX.to_le_bytes()).unwrap_err();
        assert_eq!(
            err,
            WalDecodeError::TimestampOutOfRange {
                lsn: Lsn(64),
                micros: i64::MAX
            }
        );
    }

    #[test]
    fn restore_point_name_stops_at_nul() {
        let mut main = 0i64.to_le_bytes().to_vec();
        let mut name = [0u8; 64];
        name[..5].copy_from_slice(b"daily");
        main.extend_from_slice(&name);
        let got = event(header(0, 0x70, 0), &main).unwrap();
        assert!(matches!(got, Some(WalEvent::RestorePoint { name, .. }) if name == "daily"));
        assert!(matches!(
            event(header(0, 0x70, 0), &main[..40]),
            Err(WalDecodeError::MalformedRecord { .. })
        ));
    }

    #[test]
    fn a_checkpoint_gives_the_next_xid_with_its_epoch() {
        let mut main = vec![0u8; 88];
        let next = (3u64 << 32) | 5000;
        main[24..32].copy_from_slice(&next.to_le_bytes());
        for info in [0x00, 0x10] {
            assert!(needs_payload(&header(0, info, 0)));
            let got = event(header(0, info, 0), &main).unwrap();
            assert_eq!(
                got,
                Some(WalEvent::Checkpoint {
                    start: Lsn(64),
                    end: Lsn(128),
                    next_xid: next
                })
            );
        }
        assert!(matches!(
            event(header(0, 0x10, 0), &main[..30]),
            Err(WalDecodeError::MalformedRecord { .. })
        ));
    }

    #[test]
    fn prepared_transaction_end_needs_its_xid() {
        // COMMIT PREPARED with an xinfo that lacks the two-phase section.
        let mut main = 0i64.to_le_bytes().to_vec();
        main.extend_from_slice(&0u32.to_le_bytes());
        let err = event(header(1, 0x30 | 0x80, 0), &main).unwrap_err();
        assert_eq!(
            err,
            WalDecodeError::MalformedRecord {
                lsn: Lsn(64),
                problem: "prepared transaction end without its xid"
            }
        );
    }
}
