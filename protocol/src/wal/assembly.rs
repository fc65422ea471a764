//! A record put together from the page-sized pieces it is split into: first
//! its 24-byte header (`PartialHeader`), then its payload (`PartialBody`),
//! checksummed as it streams by. The payload is kept only for the records
//! whose events are read; any other record, however large, costs no memory.

use crate::lsn::Lsn;

use super::error::WalDecodeError;
use super::event::needs_payload;
use super::record::{RecordHeader, CRC_OFFSET, RECORD_HEADER_LEN};
use crate::crc32c::Crc32c;

/// A record whose header has not been read whole yet.
#[derive(Debug)]
pub(crate) struct PartialHeader {
    start: Lsn,
    tot_len: u32,
    bytes: [u8; RECORD_HEADER_LEN],
    got: usize,
}

impl PartialHeader {
    /// A record starting at `start` whose `xl_tot_len` (at least the header's
    /// size) was read ahead.
    pub(crate) fn new(start: Lsn, tot_len: u32) -> Self {
        PartialHeader {
            start,
            tot_len,
            bytes: [0; RECORD_HEADER_LEN],
            got: 0,
        }
    }

    pub(crate) fn start(&self) -> Lsn {
        self.start
    }

    /// Bytes of the record still to come (header and payload).
    pub(crate) fn remaining(&self) -> u64 {
        u64::from(self.tot_len) - self.got as u64
    }

    /// Takes what the header still lacks from the front of `data`; returns
    /// how many bytes it took.
    pub(crate) fn absorb(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(RECORD_HEADER_LEN - self.got);
        self.bytes[self.got..self.got + n].copy_from_slice(&data[..n]);
        self.got += n;
        n
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.got == RECORD_HEADER_LEN
    }

    /// The complete header, checked to link back to `prev` (the start of the
    /// previous record, when known), and the payload still to come.
    pub(crate) fn into_body(self, prev: Option<Lsn>) -> Result<PartialBody, WalDecodeError> {
        let header = RecordHeader::parse(&self.bytes);
        if let Some(expected) = prev {
            if header.prev != expected {
                return Err(WalDecodeError::InvalidPrevLink {
                    lsn: self.start,
                    expected,
                    found: header.prev,
                });
            }
        }
        Ok(PartialBody {
            start: self.start,
            header,
            header_bytes: self.bytes,
            remaining: u64::from(header.tot_len) - RECORD_HEADER_LEN as u64,
            crc: Crc32c::new(),
            payload: needs_payload(&header).then(Vec::new),
        })
    }
}

/// A record whose header is read and whose payload is streaming by.
#[derive(Debug)]
pub(crate) struct PartialBody {
    start: Lsn,
    header: RecordHeader,
    header_bytes: [u8; RECORD_HEADER_LEN],
    remaining: u64,
    crc: Crc32c,
    /// The payload so far, for records whose events are read.
    payload: Option<Vec<u8>>,
}

/// A complete record whose CRC matched.
#[derive(Debug)]
pub(crate) struct CompleteRecord {
    pub(crate) start: Lsn,
    pub(crate) header: RecordHeader,
    /// The bytes after the header if they were kept, else empty.
    pub(crate) payload: Vec<u8>,
}

impl PartialBody {
    pub(crate) fn start(&self) -> Lsn {
        self.start
    }

    /// Payload bytes still to come.
    pub(crate) fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Takes the front of `data`, up to the rest of the payload; returns how
    /// many bytes it took.
    pub(crate) fn absorb(&mut self, data: &[u8]) -> usize {
        let n = data
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let piece = &data[..n];
        self.crc.update(piece);
        if let Some(payload) = &mut self.payload {
            payload.extend_from_slice(piece);
        }
        self.remaining -= n as u64;
        n
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.remaining == 0
    }

    /// Payload bytes kept so far.
    #[cfg(test)]
    pub(crate) fn kept_len(&self) -> usize {
        self.payload.as_ref().map_or(0, Vec::len)
    }

    /// The record, once its CRC-32C (payload, then header up to `xl_crc`)
    /// matches.
    pub(crate) fn finish(mut self) -> Result<CompleteRecord, WalDecodeError> {
        self.crc.update(&self.header_bytes[..CRC_OFFSET]);
        let computed = self.crc.finish();
        if computed != self.header.crc {
            return Err(WalDecodeError::CrcMismatch {
                lsn: self.start,
                stored: self.header.crc,
                computed,
            });
        }
        Ok(CompleteRecord {
            start: self.start,
            header: self.header,
            payload: self.payload.unwrap_or_default(),
        })
    }
}
