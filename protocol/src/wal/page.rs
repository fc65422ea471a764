//! WAL page headers (`XLogPageHeaderData`, and `XLogLongPageHeaderData` on the
//! first page of each segment) and the checks that tell a valid page from
//! the end of valid WAL and from corruption.
//!
//! Layout (little-endian): `xlp_magic u16, xlp_info u16, xlp_tli u32,
//! xlp_pageaddr u64, xlp_rem_len u32`, padded to 24 bytes; the long header
//! adds `xlp_sysid u64, xlp_seg_size u32, xlp_xlog_blcksz u32`, padded to 40.

use crate::lsn::Lsn;
use crate::segment::WalSegmentSize;

use super::cursor::{Cursor, Truncated};
use super::error::WalDecodeError;
use super::format::WalFormat;

/// `XLOG_BLCKSZ`: the size of a WAL page.
pub(crate) const PAGE_SIZE: u64 = 8192;
/// MAXALIGN(sizeof(XLogPageHeaderData)).
pub(crate) const SHORT_HEADER_LEN: usize = 24;
/// MAXALIGN(sizeof(XLogLongPageHeaderData)).
pub(crate) const LONG_HEADER_LEN: usize = 40;

/// The page starts with the tail of a record begun on an earlier page.
pub(crate) const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// The page has the long header (first page of a segment).
pub(crate) const XLP_LONG_HEADER: u16 = 0x0002;
/// The record that was being continued onto this page was never completed
/// (crash); its tail was overwritten and a new record starts here.
pub(crate) const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// Every flag PostgreSQL 14 to 18 define.
const XLP_ALL_FLAGS: u16 = 0x000F;

/// The header length of the page at `page` (a page boundary).
pub(crate) fn header_len(page: Lsn, seg: WalSegmentSize) -> usize {
    if page.segment_offset(seg) == 0 {
        LONG_HEADER_LEN
    } else {
        SHORT_HEADER_LEN
    }
}

/// A page header that passed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageHeader {
    pub(crate) info: u16,
    /// Bytes of the continued record still to come (`xlp_rem_len`).
    pub(crate) rem_len: u32,
}

impl PageHeader {
    pub(crate) fn continues_record(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }

    pub(crate) fn overwrites_continuation(&self) -> bool {
        self.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0
    }
}

/// What the first valid page said about the stream; later pages must agree.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamIdentity {
    pub(crate) format: WalFormat,
    system_identifier: u64,
    /// The newest timeline seen in a page header (it never goes back).
    timeline: u32,
}

/// The header of the page at `page` read from `bytes` (at least
/// [`header_len`] bytes), with the stream identity updated by it; `Ok(None)`
/// when the page is not valid WAL at all (zeroed, or left over from a
/// recycled segment: the end of valid WAL). `identity` is what earlier pages
/// established, `None` for the first page.
pub(crate) fn read_page_header(
    page: Lsn,
    bytes: &[u8],
    seg: WalSegmentSize,
    identity: Option<&StreamIdentity>,
) -> Result<Option<(PageHeader, StreamIdentity)>, WalDecodeError> {
    let invalid = |problem: String| WalDecodeError::InvalidPageHeader { page, problem };
    let mut c = Cursor::new(bytes);
    let (magic, info, timeline, pageaddr, rem_len) =
        short_fields(&mut c).map_err(|_| invalid("header cut short".to_string()))?;
    if magic == 0 || pageaddr != page.0 {
        return Ok(None);
    }
    let format =
        WalFormat::from_magic(magic).ok_or(WalDecodeError::UnsupportedVersion { page, magic })?;
    if let Some(known) = identity {
        if known.format != format {
            return Err(invalid(format!(
                "magic {magic:#06X} differs from the earlier pages'"
            )));
        }
        if timeline < known.timeline {
            return Err(invalid(format!(
                "timeline {timeline} is older than timeline {} of an earlier page",
                known.timeline
            )));
        }
    }
    if info & !XLP_ALL_FLAGS != 0 {
        return Err(invalid(format!("unknown flags {info:#06X}")));
    }
    let first_in_segment = page.segment_offset(seg) == 0;
    let long = info & XLP_LONG_HEADER != 0;
    if long != first_in_segment {
        return Err(invalid(if long {
            "long header in the middle of a segment".to_string()
        } else {
            "short header at the start of a segment".to_string()
        }));
    }
    let mut long_sysid = None;
    if long {
        let (sysid, seg_size, blcksz) =
            long_fields(&mut c).map_err(|_| invalid("long header cut short".to_string()))?;
        if u64::from(seg_size) != seg.bytes() {
            return Err(invalid(format!(
                "segment size {seg_size} bytes, expected {}",
                seg.bytes()
            )));
        }
        if u64::from(blcksz) != PAGE_SIZE {
            return Err(invalid(format!(
                "page size {blcksz} bytes, expected {PAGE_SIZE}"
            )));
        }
        long_sysid = Some(sysid);
    }
    let system_identifier = match (identity.map(|known| known.system_identifier), long_sysid) {
        (Some(known), Some(sysid)) if known != sysid => {
            return Err(invalid(format!(
                "system identifier {sysid}, expected {known}"
            )))
        }
        (Some(known), _) => known,
        (None, Some(sysid)) => sysid,
        (None, None) => return Err(invalid("the first page lacks the long header".to_string())),
    };
    let identity = StreamIdentity {
        format,
        system_identifier,
        timeline,
    };
    Ok(Some((PageHeader { info, rem_len }, identity)))
}

/// magic, info, timeline, page address, remaining length of a continued record.
fn short_fields(c: &mut Cursor<'_>) -> Result<(u16, u16, u32, u64, u32), Truncated> {
    Ok((c.u16()?, c.u16()?, c.u32()?, c.u64()?, c.u32()?))
}

/// system identifier, segment size, page size.
fn long_fields(c: &mut Cursor<'_>) -> Result<(u64, u32, u32), Truncated> {
    // The short header's 20 bytes are padded to 24 before the long fields.
    c.take(SHORT_HEADER_LEN - 20)?;
    Ok((c.u64()?, c.u32()?, c.u32()?))
}
