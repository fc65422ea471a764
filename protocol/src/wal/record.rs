//! WAL record layout: the 24-byte `XLogRecord` header, and the block
//! reference headers that precede a record's data, walked to find the
//! record's main data.
//!
//! Header (little-endian): `xl_tot_len u32, xl_xid u32, xl_prev u64,
//! xl_info u8, xl_rmid u8, 2 bytes padding, xl_crc u32`. The CRC-32C covers
//! the bytes after the header, then the header up to `xl_crc`.
//!
//! After the header come headers for block references (id 0..=32, each with
//! optional full-page image and data), the replication origin (253), the
//! top-level xid (252), and last the main data length (255: u8, 254: u32).
//! Then the block images and data in that order, and finally the main data,
//! which therefore ends the record.

use crate::lsn::Lsn;

use super::cursor::{Cursor, Truncated};
use super::format::WalFormat;

/// `SizeOfXLogRecord`.
pub(crate) const RECORD_HEADER_LEN: usize = 24;
/// Offset of `xl_crc` in the header: the CRC covers the header up to here.
pub(crate) const CRC_OFFSET: usize = 20;
/// No record is longer than PostgreSQL's largest allocation (1 GiB - 1).
pub(crate) const MAX_RECORD_LEN: u32 = 0x3FFF_FFFF;

/// `XLR_MAX_BLOCK_ID`.
const MAX_BLOCK_ID: u8 = 32;
const BLOCK_ID_DATA_SHORT: u8 = 255;
const BLOCK_ID_DATA_LONG: u8 = 254;
const BLOCK_ID_ORIGIN: u8 = 253;
const BLOCK_ID_TOPLEVEL_XID: u8 = 252;

/// `fork_flags` bits of a block reference.
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_SAME_REL: u8 = 0x80;
/// `bimg_info` bit: the image has a hole (omitted zero bytes).
const BKPIMAGE_HAS_HOLE: u8 = 0x01;

/// `RelFileLocator` (tablespace, database, relation number), 3 x u32.
const REL_FILE_LOCATOR_LEN: usize = 12;

/// The fixed header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub(crate) tot_len: u32,
    pub(crate) xid: u32,
    pub(crate) prev: Lsn,
    pub(crate) info: u8,
    pub(crate) rmid: u8,
    pub(crate) crc: u32,
}

impl RecordHeader {
    pub(crate) fn parse(bytes: &[u8; RECORD_HEADER_LEN]) -> RecordHeader {
        let le32 = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let mut prev = [0u8; 8];
        prev.copy_from_slice(&bytes[8..16]);
        RecordHeader {
            tot_len: le32(0),
            xid: le32(4),
            prev: Lsn(u64::from_le_bytes(prev)),
            info: bytes[16],
            rmid: bytes[17],
            crc: le32(CRC_OFFSET),
        }
    }
}

/// The main data of a record, given `body`, the record's bytes after its
/// header. Fails (with what is wrong) when the block headers do not fit
/// the record's length.
pub(crate) fn main_data(body: &[u8], format: WalFormat) -> Result<&[u8], &'static str> {
    let mut c = Cursor::new(body);
    let truncated = |_: Truncated| "block headers run past the end of the record";
    // Bytes of block images and data announced so far, which follow the headers.
    let mut announced: u64 = 0;
    let mut main_len: u64 = 0;
    while c.remaining() as u64 > announced {
        let id = c.u8().map_err(truncated)?;
        match id {
            BLOCK_ID_DATA_SHORT => {
                main_len = c.u8().map_err(truncated)?.into();
                announced += main_len;
                break;
            }
            BLOCK_ID_DATA_LONG => {
                main_len = c.u32().map_err(truncated)?.into();
                announced += main_len;
                break;
            }
            BLOCK_ID_ORIGIN => c.skip_items(1, 2).map_err(truncated)?,
            BLOCK_ID_TOPLEVEL_XID => c.skip_items(1, 4).map_err(truncated)?,
            0..=MAX_BLOCK_ID => announced += block_reference(&mut c, format).map_err(truncated)?,
            _ => return Err("unknown block id in the record's headers"),
        }
    }
    if c.remaining() as u64 != announced {
        return Err("block headers do not add up to the record's length");
    }
    // main_len <= announced == remaining <= body.len(), so this cannot underflow.
    let main_start = body.len() - main_len as usize;
    Ok(&body[main_start..])
}

/// Skips one block reference header (after its id); returns the bytes of
/// image and data it announces.
fn block_reference(c: &mut Cursor<'_>, format: WalFormat) -> Result<u64, Truncated> {
    let fork_flags = c.u8()?;
    let mut announced = u64::from(c.u16()?);
    if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
        let image_len = c.u16()?;
        let _hole_offset = c.u16()?;
        let bimg_info = c.u8()?;
        if bimg_info & BKPIMAGE_HAS_HOLE != 0 && format.image_is_compressed(bimg_info) {
            let _hole_len = c.u16()?;
        }
        announced += u64::from(image_len);
    }
    if fork_flags & BKPBLOCK_SAME_REL == 0 {
        c.skip_items(1, REL_FILE_LOCATOR_LEN)?;
    }
    let _block_number = c.u32()?;
    Ok(announced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(major: u32) -> WalFormat {
        WalFormat::of_major(major)
    }

    #[test]
    fn parses_the_header() {
        let mut bytes = [0u8; RECORD_HEADER_LEN];
        bytes[0..4].copy_from_slice(&100u32.to_le_bytes());
        bytes[4..8].copy_from_slice(&7u32.to_le_bytes());
        bytes[8..16].copy_from_slice(&0x1_0000_0028u64.to_le_bytes());
        bytes[16] = 0x80;
        bytes[17] = 1;
        bytes[20..24].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        let h = RecordHeader::parse(&bytes);
        assert_eq!(
            h,
            RecordHeader {
                tot_len: 100,
                xid: 7,
                prev: Lsn(0x1_0000_0028),
                info: 0x80,
                rmid: 1,
                crc: 0xDEAD_BEEF
            }
        );
    }

    /// Block 0 with an image (with hole, compressed per `bimg_info`) and data,
    /// block 1 of the same relation with data only, an origin, then `main`.
    fn body_with_blocks(bimg_info: u8, hole_len_field: bool, main: &[u8]) -> Vec<u8> {
        let image = [0xAAu8; 40];
        let data0 = [0xBBu8; 6];
        let data1 = [0xCCu8; 3];
        let mut b = vec![0u8, BKPBLOCK_HAS_IMAGE | 0x20];
        b.extend_from_slice(&(data0.len() as u16).to_le_bytes());
        b.extend_from_slice(&(image.len() as u16).to_le_bytes());
        b.extend_from_slice(&100u16.to_le_bytes()); // hole offset
        b.push(bimg_info);
        if hole_len_field {
            b.extend_from_slice(&8000u16.to_le_bytes());
        }
        b.extend_from_slice(&[1; REL_FILE_LOCATOR_LEN]);
        b.extend_from_slice(&5u32.to_le_bytes());
        b.extend_from_slice(&[1, 0x20 | BKPBLOCK_SAME_REL]);
        b.extend_from_slice(&(data1.len() as u16).to_le_bytes());
        b.extend_from_slice(&6u32.to_le_bytes());
        b.extend_from_slice(&[BLOCK_ID_ORIGIN, 1, 0]);
        b.extend_from_slice(&[BLOCK_ID_DATA_LONG]);
        b.extend_from_slice(&(main.len() as u32).to_le_bytes());
        b.extend_from_slice(&image);
        b.extend_from_slice(&data0);
        b.extend_from_slice(&data1);
        b.extend_from_slice(main);
        b
    }

    #[test]
    fn finds_main_data_after_block_references() {
        let main = b"main data here";
        // Uncompressed image with hole: no hole length field, every major.
        for major in 14..=18 {
            let body = body_with_blocks(0x01, false, main);
            assert_eq!(main_data(&body, pg(major)), Ok(&main[..]), "pg{major}");
        }
        // Compressed with hole: 14 says so with 0x02, 15+ with 0x04/0x08/0x10.
        let body = body_with_blocks(0x01 | 0x02, true, main);
        assert_eq!(main_data(&body, pg(14)), Ok(&main[..]));
        let body = body_with_blocks(0x01 | 0x08, true, main);
        assert_eq!(main_data(&body, pg(16)), Ok(&main[..]));
        // 0x02 is "apply" on 15+: no hole length field.
        let body = body_with_blocks(0x01 | 0x02, false, main);
        assert_eq!(main_data(&body, pg(15)), Ok(&main[..]));
    }

    #[test]
    fn short_main_data_and_empty_records() {
        let mut body = vec![BLOCK_ID_TOPLEVEL_XID, 9, 0, 0, 0, BLOCK_ID_DATA_SHORT, 3];
        body.extend_from_slice(b"abc");
        assert_eq!(main_data(&body, pg(15)), Ok(&b"abc"[..]));
        assert_eq!(main_data(&[], pg(15)), Ok(&b""[..]));
    }

    #[test]
    fn rejects_headers_that_do_not_fit() {
        for (body, why) in [
            (
                vec![BLOCK_ID_DATA_SHORT, 10, 1, 2],
                "main data longer than the record",
            ),
            (vec![BLOCK_ID_DATA_SHORT, 1, 1, 2], "bytes left over"),
            (vec![BLOCK_ID_DATA_LONG, 1, 0], "length cut short"),
            (vec![40, 0, 0, 0], "block id above 32"),
            (vec![0, 0x20, 4, 0, 1], "block header cut short"),
        ] {
            assert!(main_data(&body, pg(17)).is_err(), "{why}");
        }
    }
}
