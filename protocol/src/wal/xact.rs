//! The main data of transaction commit and abort records (`xl_xact_commit`,
//! `xl_xact_abort`, also used by COMMIT PREPARED and ABORT PREPARED): the
//! transaction time, then optional sections announced by `xinfo` flags, of
//! which only the prepared transaction's xid is needed here.
//!
//! Layout: `xact_time i64`; if `XLOG_XACT_HAS_INFO` is set in `xl_info`,
//! `xinfo u32`, then in order and only if flagged: database info (2 x u32),
//! subtransactions (count i32, xids), relation files (count i32, 12 bytes
//! each), dropped statistics (PostgreSQL 15+: count i32, items whose size
//! depends on the major), invalidation messages (commit only: count i32,
//! 16 bytes each), the two-phase xid (u32), then gid and origin (unused).

use super::cursor::{Cursor, Truncated};
use super::format::WalFormat;

/// `XLOG_XACT_HAS_INFO` in `xl_info`: an `xinfo` word follows the time.
const XLOG_XACT_HAS_INFO: u8 = 0x80;

const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILELOCATORS: u32 = 1 << 2;
const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;

/// `xl_xact_dbinfo`: database and tablespace oids.
const DBINFO_LEN: usize = 8;
const XID_LEN: usize = 4;
const REL_FILE_LOCATOR_LEN: usize = 12;
/// `SharedInvalidationMessage`, a union of 16 bytes.
const INVAL_MESSAGE_LEN: usize = 16;

/// Whether the record ends a transaction by committing it or aborting it;
/// their layouts differ only in the invalidation messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Commit,
    Abort,
}

/// What a transaction end record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct XactEnd {
    /// Microseconds since 2000-01-01 00:00 UTC.
    pub(crate) time: i64,
    /// For COMMIT/ABORT PREPARED: the prepared transaction's xid.
    pub(crate) twophase_xid: Option<u32>,
}

/// Parses the main data `main` of a transaction end record with `xl_info`
/// `info`.
pub(crate) fn parse_xact_end(
    outcome: Outcome,
    info: u8,
    main: &[u8],
    format: WalFormat,
) -> Result<XactEnd, &'static str> {
    parse(outcome, info, main, format)
        .map_err(|_| "transaction record shorter than its flags announce")
}

fn parse(outcome: Outcome, info: u8, main: &[u8], format: WalFormat) -> Result<XactEnd, Truncated> {
    let mut c = Cursor::new(main);
    let time = c.i64()?;
    let xinfo = if info & XLOG_XACT_HAS_INFO != 0 {
        c.u32()?
    } else {
        0
    };
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        c.skip_items(1, DBINFO_LEN)?;
    }
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        skip_counted(&mut c, XID_LEN)?;
    }
    if xinfo & XACT_XINFO_HAS_RELFILELOCATORS != 0 {
        skip_counted(&mut c, REL_FILE_LOCATOR_LEN)?;
    }
    if let Some(item_len) = format.dropped_stats_item_len() {
        if xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
            skip_counted(&mut c, item_len)?;
        }
    }
    if outcome == Outcome::Commit && xinfo & XACT_XINFO_HAS_INVALS != 0 {
        skip_counted(&mut c, INVAL_MESSAGE_LEN)?;
    }
    let twophase_xid = if xinfo & XACT_XINFO_HAS_TWOPHASE != 0 {
        Some(c.u32()?)
    } else {
        None
    };
    Ok(XactEnd { time, twophase_xid })
}

/// Skips a section made of an `int` count and that many items of `item_len`.
fn skip_counted(c: &mut Cursor<'_>, item_len: usize) -> Result<(), Truncated> {
    let count = usize::try_from(c.u32()? as i32).map_err(|_| Truncated)?;
    c.skip_items(count, item_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds transaction end main data the way PostgreSQL lays it out.
    #[derive(Default)]
    struct Xact {
        dbinfo: bool,
        subxacts: u32,
        rels: u32,
        stats: Option<(u32, usize)>,
        invals: u32,
        twophase: Option<u32>,
        gid: Option<&'static str>,
    }

    impl Xact {
        fn bytes(&self, time: i64) -> (u8, Vec<u8>) {
            let mut xinfo = 0u32;
            let mut rest = Vec::new();
            if self.dbinfo {
                xinfo |= XACT_XINFO_HAS_DBINFO;
                rest.extend_from_slice(&[5; DBINFO_LEN]);
            }
            let mut counted = |flag: u32, n: u32, len: usize, rest: &mut Vec<u8>| {
                if n > 0 {
                    xinfo |= flag;
                    rest.extend_from_slice(&n.to_le_bytes());
                    rest.extend(std::iter::repeat_n(0xEE, n as usize * len));
                }
            };
            counted(XACT_XINFO_HAS_SUBXACTS, self.subxacts, XID_LEN, &mut rest);
            counted(
                XACT_XINFO_HAS_RELFILELOCATORS,
                self.rels,
                REL_FILE_LOCATOR_LEN,
                &mut rest,
            );
            if let Some((n, len)) = self.stats {
                counted(XACT_XINFO_HAS_DROPPED_STATS, n, len, &mut rest);
            }
            counted(
                XACT_XINFO_HAS_INVALS,
                self.invals,
                INVAL_MESSAGE_LEN,
                &mut rest,
            );
            if let Some(xid) = self.twophase {
                xinfo |= XACT_XINFO_HAS_TWOPHASE;
                rest.extend_from_slice(&xid.to_le_bytes());
            }
            if let Some(gid) = self.gid {
                xinfo |= 1 << 7;
                rest.extend_from_slice(gid.as_bytes());
                rest.push(0);
            }
            let mut main = time.to_le_bytes().to_vec();
            if xinfo == 0 {
                return (0, main);
            }
            main.extend_from_slice(&xinfo.to_le_bytes());
            main.extend_from_slice(&rest);
            (XLOG_XACT_HAS_INFO, main)
        }
    }

    fn parse_with(outcome: Outcome, major: u32, x: &Xact) -> Result<XactEnd, &'static str> {
        let (info, main) = x.bytes(123_456_789);
        parse_xact_end(outcome, info, &main, WalFormat::of_major(major))
    }

    #[test]
    fn plain_commit_is_just_a_time() {
        let end = parse_with(Outcome::Commit, 16, &Xact::default()).unwrap();
        assert_eq!(
            end,
            XactEnd {
                time: 123_456_789,
                twophase_xid: None
            }
        );
    }

    #[test]
    fn finds_the_prepared_xid_behind_every_section() {
        for major in 14..=18 {
            let stats = WalFormat::of_major(major)
                .dropped_stats_item_len()
                .map(|len| (2, len));
            let x = Xact {
                dbinfo: true,
                subxacts: 3,
                rels: 2,
                stats,
                invals: 4,
                twophase: Some(4242),
                gid: Some("p1"),
            };
            let end = parse_with(Outcome::Commit, major, &x).unwrap();
            assert_eq!(end.twophase_xid, Some(4242), "commit, pg{major}");
            // Aborts never carry invalidation messages.
            let x = Xact { invals: 0, ..x };
            let end = parse_with(Outcome::Abort, major, &x).unwrap();
            assert_eq!(end.twophase_xid, Some(4242), "abort, pg{major}");
        }
    }

    #[test]
    fn stats_item_size_is_per_major() {
        // Two 16-byte items read as PostgreSQL 17 (12-byte items) land on
        // the wrong xid: the layout really depends on the major.
        let x = Xact {
            stats: Some((2, 16)),
            twophase: Some(77),
            ..Xact::default()
        };
        assert_eq!(
            parse_with(Outcome::Abort, 18, &x).unwrap().twophase_xid,
            Some(77)
        );
        assert_ne!(
            parse_with(Outcome::Abort, 17, &x)
                .ok()
                .and_then(|e| e.twophase_xid),
            Some(77)
        );
    }

    #[test]
    fn truncated_sections_are_errors() {
        let (info, main) = Xact {
            subxacts: 5,
            twophase: Some(1),
            ..Xact::default()
        }
        .bytes(1);
        let format = WalFormat::of_major(15);
        assert!(parse_xact_end(Outcome::Commit, info, &main[..main.len() - 1], format).is_err());
        assert!(parse_xact_end(Outcome::Commit, 0, &main[..7], format).is_err());
        // A negative count is not a length.
        let mut bad = 1i64.to_le_bytes().to_vec();
        bad.extend_from_slice(&XACT_XINFO_HAS_SUBXACTS.to_le_bytes());
        bad.extend_from_slice(&(-1i32).to_le_bytes());
        assert!(parse_xact_end(Outcome::Commit, XLOG_XACT_HAS_INFO, &bad, format).is_err());
    }
}
