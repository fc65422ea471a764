//! Hand-built WAL for unit tests: `WalBuilder` lays out records the way
//! PostgreSQL does (page headers, long headers at segment starts,
//! continuation records, MAXALIGN padding, CRC-32C, prev links), with knobs
//! to break each rule the decoder checks.

use crate::lsn::Lsn;
use crate::segment::WalSegmentSize;

use super::format::WalFormat;
use super::page::{
    LONG_HEADER_LEN, PAGE_SIZE, SHORT_HEADER_LEN, XLP_FIRST_IS_CONTRECORD,
    XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLP_LONG_HEADER,
};
use super::record::{CRC_OFFSET, RECORD_HEADER_LEN};
use crate::crc32c::Crc32c;

pub(crate) const SYSID: u64 = 7_000_000_000_000_000_001;
pub(crate) const RM_HEAP: u8 = 10;

/// WAL bytes from `start`, written record by record.
pub(crate) struct WalBuilder {
    pub(crate) seg: WalSegmentSize,
    format: WalFormat,
    start: u64,
    bytes: Vec<u8>,
    prev: Lsn,
    /// Start of every record written.
    starts: Vec<Lsn>,
    /// Flags added to the next page header written.
    next_page_flags: u16,
}

impl WalBuilder {
    pub(crate) fn new(start: Lsn, seg: WalSegmentSize, major: u32) -> Self {
        WalBuilder {
            seg,
            format: WalFormat::of_major(major),
            start: start.0,
            bytes: Vec::new(),
            prev: Lsn(0),
            starts: Vec::new(),
            next_page_flags: 0,
        }
    }

    pub(crate) fn pos(&self) -> Lsn {
        Lsn(self.start + self.bytes.len() as u64)
    }

    /// The start of every complete record written, in order.
    pub(crate) fn starts(&self) -> Vec<Lsn> {
        self.starts.clone()
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Mutable access to the byte at `lsn`, to corrupt it.
    pub(crate) fn byte_at(&mut self, lsn: Lsn) -> &mut u8 {
        &mut self.bytes[(lsn.0 - self.start) as usize]
    }

    /// Overrides the prev link the next record carries.
    pub(crate) fn set_prev(&mut self, prev: Lsn) {
        self.prev = prev;
    }

    /// Writes `len` bytes of a record that began before the start (only at
    /// the very start).
    pub(crate) fn continuation(&mut self, len: usize) {
        assert!(self.bytes.is_empty());
        self.put(&vec![0x5A; len], true);
        self.align();
    }

    /// Appends a record with payload `body` (block headers, data, main
    /// data); returns its start and its aligned end.
    pub(crate) fn record(&mut self, rmid: u8, info: u8, xid: u32, body: &[u8]) -> (Lsn, Lsn) {
        let record = self.encode(rmid, info, xid, body);
        if self.pos().0.is_multiple_of(PAGE_SIZE) {
            self.page_header(None);
        }
        let start = self.pos();
        self.put(&record, false);
        self.align();
        self.prev = start;
        self.starts.push(start);
        (start, self.pos())
    }

    /// A heap-like record with `main_len` bytes of main data.
    pub(crate) fn filler(&mut self, main_len: usize) -> (Lsn, Lsn) {
        self.record(RM_HEAP, 0, 0, &main_only(&vec![0x11; main_len]))
    }

    /// Fillers until the next record would start exactly `before_end` bytes
    /// before the end of the current or a following page (0: at a page
    /// boundary, before the next page's header).
    pub(crate) fn fill_until_page_end_minus(&mut self, before_end: u64) {
        loop {
            let gap = self.pos().0.next_multiple_of(PAGE_SIZE) - self.pos().0;
            if gap == before_end {
                return;
            }
            // A filler of total length L ends MAXALIGN(L) later, if it fits.
            let want = gap.checked_sub(before_end).filter(|&g| g >= 32);
            match want {
                Some(total) => {
                    let main_len = total as usize - RECORD_HEADER_LEN - 2;
                    if main_len < 256 {
                        self.filler(main_len);
                    } else {
                        self.filler(main_len - 3);
                    }
                }
                // Too close: go past this page end and retry on the next page.
                None => {
                    self.filler(64);
                }
            }
        }
    }

    pub(crate) fn commit(&mut self, xid: u32, micros: i64) -> (Lsn, Lsn) {
        self.record(1, 0x00, xid, &main_only(&micros.to_le_bytes()))
    }

    pub(crate) fn abort(&mut self, xid: u32, micros: i64) -> (Lsn, Lsn) {
        self.record(1, 0x20, xid, &main_only(&micros.to_le_bytes()))
    }

    /// COMMIT PREPARED (or ROLLBACK PREPARED) of `xid`, written by a
    /// backend without an xid of its own, with database info.
    pub(crate) fn finish_prepared(&mut self, commit: bool, xid: u32, micros: i64) -> (Lsn, Lsn) {
        let mut main = micros.to_le_bytes().to_vec();
        main.extend_from_slice(&(1u32 | 1 << 4).to_le_bytes());
        main.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        main.extend_from_slice(&xid.to_le_bytes());
        let op = if commit { 0x30 } else { 0x40 };
        self.record(1, op | 0x80, 0, &main_only(&main))
    }

    pub(crate) fn restore_point(&mut self, name: &str, micros: i64) -> (Lsn, Lsn) {
        let mut main = micros.to_le_bytes().to_vec();
        let mut rp_name = [0u8; 64];
        rp_name[..name.len()].copy_from_slice(name.as_bytes());
        main.extend_from_slice(&rp_name);
        self.record(0, 0x70, 0, &main_only(&main))
    }

    /// XLOG_SWITCH, then zeros to the end of the segment.
    pub(crate) fn switch(&mut self) -> (Lsn, Lsn) {
        let (start, _) = self.record(0, 0x40, 0, &[]);
        let seg_end = (start.0 / self.seg.bytes() + 1) * self.seg.bytes();
        self.zeros_to(Lsn(seg_end));
        (start, Lsn(seg_end))
    }

    /// Writes the first part of a record of `tot_len` bytes up to the end
    /// of the page, then marks the next page as overwriting its tail (as
    /// after a crash with the record half flushed).
    pub(crate) fn abandoned_record(&mut self, tot_len: usize) -> Lsn {
        let prev = self.prev;
        let record = self.encode(RM_HEAP, 0, 0, &main_only(&vec![0x22; tot_len - 24 - 5]));
        if self.pos().0.is_multiple_of(PAGE_SIZE) {
            self.page_header(None);
        }
        let start = self.pos();
        let room = (PAGE_SIZE - start.0 % PAGE_SIZE) as usize;
        assert!(record.len() > room);
        self.bytes.extend_from_slice(&record[..room]);
        self.next_page_flags = XLP_FIRST_IS_OVERWRITE_CONTRECORD;
        self.prev = prev;
        start
    }

    /// Zeros up to `lsn` (no page headers).
    pub(crate) fn zeros_to(&mut self, lsn: Lsn) {
        let len = (lsn.0 - self.start) as usize;
        self.bytes.resize(len, 0);
    }

    /// A page header at the current position (a page boundary) saying it is
    /// at `pageaddr`, as in a recycled segment; then zeros to the page end.
    pub(crate) fn stale_page(&mut self, pageaddr: Lsn) {
        let at = self.pos();
        self.page_header(None);
        let hdr = (at.0 - self.start) as usize;
        self.bytes[hdr + 8..hdr + 16].copy_from_slice(&pageaddr.0.to_le_bytes());
        self.zeros_to(at + PAGE_SIZE);
    }

    fn encode(&self, rmid: u8, info: u8, xid: u32, body: &[u8]) -> Vec<u8> {
        let mut header = [0u8; RECORD_HEADER_LEN];
        header[0..4].copy_from_slice(&((RECORD_HEADER_LEN + body.len()) as u32).to_le_bytes());
        header[4..8].copy_from_slice(&xid.to_le_bytes());
        header[8..16].copy_from_slice(&self.prev.0.to_le_bytes());
        header[16] = info;
        header[17] = rmid;
        let mut crc = Crc32c::new();
        crc.update(body);
        crc.update(&header[..CRC_OFFSET]);
        header[CRC_OFFSET..].copy_from_slice(&crc.finish().to_le_bytes());
        let mut record = header.to_vec();
        record.extend_from_slice(body);
        record
    }

    /// Writes `data` across pages; `continued` if its first byte already
    /// continues a record from an earlier page.
    fn put(&mut self, data: &[u8], continued: bool) {
        let mut done = 0;
        while done < data.len() {
            if self.pos().0.is_multiple_of(PAGE_SIZE) {
                let rem = (continued || done > 0).then_some(data.len() - done);
                self.page_header(rem);
            }
            let room = (PAGE_SIZE - self.pos().0 % PAGE_SIZE) as usize;
            let n = room.min(data.len() - done);
            self.bytes.extend_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    fn align(&mut self) {
        while !self.pos().0.is_multiple_of(8) {
            self.bytes.push(0);
        }
    }

    fn page_header(&mut self, rem_len: Option<usize>) {
        let pos = self.pos();
        let long = pos.segment_offset(self.seg) == 0;
        let mut info = std::mem::take(&mut self.next_page_flags);
        if long {
            info |= XLP_LONG_HEADER;
        }
        if rem_len.is_some() {
            info |= XLP_FIRST_IS_CONTRECORD;
        }
        let mut h = Vec::new();
        h.extend_from_slice(&self.format.magic().to_le_bytes());
        h.extend_from_slice(&info.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&pos.0.to_le_bytes());
        h.extend_from_slice(&(rem_len.unwrap_or(0) as u32).to_le_bytes());
        h.resize(SHORT_HEADER_LEN, 0);
        if long {
            h.extend_from_slice(&SYSID.to_le_bytes());
            h.extend_from_slice(&(self.seg.bytes() as u32).to_le_bytes());
            h.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            h.resize(LONG_HEADER_LEN, 0);
        }
        self.bytes.extend_from_slice(&h);
    }
}

/// A record payload holding only main data.
pub(crate) fn main_only(main: &[u8]) -> Vec<u8> {
    let mut body = match u8::try_from(main.len()) {
        Ok(len) => vec![255, len],
        Err(_) => {
            let mut b = vec![254];
            b.extend_from_slice(&(main.len() as u32).to_le_bytes());
            b
        }
    };
    body.extend_from_slice(main);
    body
}
