//! `WalDecoder`: an incremental WAL decoder. Contiguous WAL bytes go in, in
//! chunks of any size; decoded records and events come out.
//!
//! The decoder walks the stream page by page: it checks every page header
//! (address, magic, flags, continuation lengths), reassembles records split
//! across pages and segments, verifies every record's CRC-32C and link to
//! the previous record, and reads the events of commit, abort and restore
//! point records. Memory stays bounded: fed bytes are dropped once consumed,
//! and a record in progress is kept only if its event must be read.
//!
//! A zeroed page or record header, or a page left over from a recycled
//! segment (wrong page address), is the end of valid WAL, not an error:
//! decoding stops there for good. Anything else that cannot be valid WAL is
//! a [`WalDecodeError`], returned again by every later call.

use std::fmt;

use crate::lsn::Lsn;
use crate::segment::WalSegmentSize;

use super::assembly::{PartialBody, PartialHeader};
use super::error::WalDecodeError;
use super::event::{is_switch, record_event, WalEvent, WalRecord};
use super::page::{header_len, read_page_header, PageHeader, StreamIdentity, PAGE_SIZE};
use super::record::{MAX_RECORD_LEN, RECORD_HEADER_LEN};

/// Records start at MAXALIGN (8-byte) boundaries.
const RECORD_ALIGN: u64 = 8;

/// Incremental decoder: feed contiguous WAL bytes in any chunk sizes; pull
/// decoded records or events.
pub struct WalDecoder {
    seg: WalSegmentSize,
    input: Input,
    state: State,
    /// Start of the last complete record: the next one must link back to it.
    last_record: Option<Lsn>,
    decoded_up_to: Lsn,
    /// The error that stopped decoding, returned by every later call.
    failure: Option<WalDecodeError>,
    /// Whether the first page began with the tail of a record from before the start
    /// (skipped); `None` until that page's header is read.
    began_mid_record: Option<bool>,
}

enum State {
    /// Nothing read yet: the first page's header establishes the stream's
    /// identity and tells whether a record from before the start continues.
    FirstPage,
    /// Reading pages that must agree with `identity`.
    Decoding {
        identity: StreamIdentity,
        step: Step,
    },
    /// The end of valid WAL was found; nothing more is decoded.
    Ended,
}

/// Where the decoder is within the page stream.
enum Step {
    /// Skipping the tail of a record that began before the decoding start.
    SkipContinuation {
        remaining: u64,
    },
    /// Discarding bytes up to `until` (alignment padding, or the rest of the
    /// segment after XLOG_SWITCH) without reading page headers.
    Padding {
        until: Lsn,
    },
    /// A record (or the end of valid WAL) starts here.
    RecordStart,
    RecordHeader(PartialHeader),
    RecordBody(Box<PartialBody>),
}

/// What one step of decoding achieved.
enum Progress {
    Record(WalRecord),
    /// Something was consumed or the state changed: keep going.
    Continue,
    /// Nothing more can be done with the bytes fed so far.
    NeedInput,
}

impl WalDecoder {
    /// Start at `start`, which must be a segment boundary (streaming always
    /// starts at one); if it is not, every call to [`WalDecoder::next_event`]
    /// fails with [`WalDecodeError::MisalignedStart`]. A first page that
    /// begins with a continuation record skips it.
    pub fn new(start: Lsn, seg: WalSegmentSize) -> WalDecoder {
        let aligned = start.segment_offset(seg) == 0;
        WalDecoder {
            seg,
            input: Input {
                bytes: Vec::new(),
                read: 0,
                pos: start,
            },
            state: if aligned {
                State::FirstPage
            } else {
                State::Ended
            },
            last_record: None,
            decoded_up_to: start,
            failure: (!aligned).then_some(WalDecodeError::MisalignedStart { start }),
            began_mid_record: None,
        }
    }

    /// Append bytes that continue exactly where the previous feed ended.
    /// Ignored once decoding has stopped (end of valid WAL or an error).
    pub fn feed(&mut self, data: &[u8]) {
        if self.failure.is_none() && !self.ended() {
            self.input.push(data);
        }
    }

    /// The next event from the bytes fed so far; `Ok(None)` when more bytes
    /// are needed (or after the end of valid WAL). Records that are not
    /// events are decoded and checked on the way.
    pub fn next_event(&mut self) -> Result<Option<WalEvent>, WalDecodeError> {
        while let Some(record) = self.next_record()? {
            if let Some(event) = record.event {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    /// The next record, whatever its kind, from the bytes fed so far;
    /// `Ok(None)` when more bytes are needed (or after the end of valid WAL).
    /// Consumes the same stream as [`WalDecoder::next_event`]: use one or
    /// the other.
    pub fn next_record(&mut self) -> Result<Option<WalRecord>, WalDecodeError> {
        if let Some(err) = &self.failure {
            return Err(err.clone());
        }
        loop {
            let state = std::mem::replace(&mut self.state, State::Ended);
            match self.advance(state) {
                Ok((state, progress)) => {
                    self.state = state;
                    match progress {
                        Progress::Record(record) => return Ok(Some(record)),
                        Progress::Continue => {}
                        Progress::NeedInput => return Ok(None),
                    }
                }
                Err(err) => {
                    self.input.clear();
                    self.failure = Some(err.clone());
                    return Err(err);
                }
            }
        }
    }

    /// LSN up to which all records have been decoded: the end of the last
    /// complete record (MAXALIGNed; for XLOG_SWITCH, the end of its
    /// segment), or the start until a record is complete.
    pub fn decoded_up_to(&self) -> Lsn {
        self.decoded_up_to
    }

    /// Whether the first page began with the tail of a record from before the start,
    /// which is skipped: then a record ending in the first segment went unseen. `None`
    /// until the first page header has been read.
    pub fn began_mid_record(&self) -> Option<bool> {
        self.began_mid_record
    }

    /// Whether decoding stopped at the end of valid WAL (a zeroed or
    /// recycled page, a zeroed record header); bytes fed after it are ignored.
    pub fn ended(&self) -> bool {
        matches!(self.state, State::Ended) && self.failure.is_none()
    }

    fn advance(&mut self, state: State) -> Result<(State, Progress), WalDecodeError> {
        match state {
            State::Ended => Ok((State::Ended, Progress::NeedInput)),
            State::FirstPage => self.first_page(),
            State::Decoding { identity, step } => {
                if self.input.at_page_start() && !matches!(step, Step::Padding { .. }) {
                    self.next_page(identity, step)
                } else {
                    self.advance_step(identity, step)
                }
            }
        }
    }

    /// Reads the header of the page at the decoding start.
    fn first_page(&mut self) -> Result<(State, Progress), WalDecodeError> {
        let page = self.input.pos;
        let Some(bytes) = self.input.peek(header_len(page, self.seg)) else {
            return Ok((State::FirstPage, Progress::NeedInput));
        };
        let Some((header, identity)) = read_page_header(page, bytes, self.seg, None)? else {
            return Ok((self.end_of_wal(), Progress::Continue));
        };
        self.input.consume(header_len(page, self.seg));
        let continued = header.continues_record() && !header.overwrites_continuation();
        self.began_mid_record = Some(continued);
        let step = if continued {
            self.skip(u64::from(header.rem_len))
        } else {
            Step::RecordStart
        };
        Ok((State::Decoding { identity, step }, Progress::Continue))
    }

    /// Reads the header of the page starting at the current position and
    /// checks that it continues (or not) what `step` is in the middle of.
    fn next_page(
        &mut self,
        identity: StreamIdentity,
        step: Step,
    ) -> Result<(State, Progress), WalDecodeError> {
        let page = self.input.pos;
        let len = header_len(page, self.seg);
        let Some(bytes) = self.input.peek(len) else {
            return Ok((State::Decoding { identity, step }, Progress::NeedInput));
        };
        let Some((header, identity)) = read_page_header(page, bytes, self.seg, Some(&identity))?
        else {
            return Ok((self.end_of_wal(), Progress::Continue));
        };
        self.input.consume(len);
        // Bytes still to come of the record in progress, and its start
        // (unknown for one begun before the decoding start).
        let in_progress = match &step {
            Step::SkipContinuation { remaining } => Some((*remaining, None)),
            Step::RecordHeader(partial) => Some((partial.remaining(), Some(partial.start()))),
            Step::RecordBody(partial) => Some((partial.remaining(), Some(partial.start()))),
            Step::RecordStart | Step::Padding { .. } => None,
        };
        let step = match in_progress {
            None if header.continues_record() => {
                return Err(WalDecodeError::UnexpectedContinuation { page })
            }
            None => step,
            Some((_, record)) if header.overwrites_continuation() => {
                tracing::warn!(
                    %page,
                    "WAL written after a crash overwrote the rest of {}; skipping it",
                    describe_record(record)
                );
                Step::RecordStart
            }
            Some((remaining, record)) => {
                check_continuation(page, &header, remaining, record)?;
                step
            }
        };
        Ok((State::Decoding { identity, step }, Progress::Continue))
    }

    /// Advances within the current page.
    fn advance_step(
        &mut self,
        identity: StreamIdentity,
        step: Step,
    ) -> Result<(State, Progress), WalDecodeError> {
        let decoding = |step| State::Decoding { identity, step };
        match step {
            Step::Padding { until } => {
                let wanted = until.bytes_since(self.input.pos);
                let n = usize::try_from(wanted)
                    .unwrap_or(usize::MAX)
                    .min(self.input.available().len());
                self.input.consume(n);
                if self.input.pos == until {
                    Ok((decoding(Step::RecordStart), Progress::Continue))
                } else {
                    Ok((decoding(Step::Padding { until }), Progress::NeedInput))
                }
            }
            Step::SkipContinuation { remaining } => {
                let on_page = self.input.on_page().len();
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(on_page);
                if n == 0 {
                    return Ok((
                        decoding(Step::SkipContinuation { remaining }),
                        Progress::NeedInput,
                    ));
                }
                self.input.consume(n);
                Ok((
                    decoding(self.skip(remaining - n as u64)),
                    Progress::Continue,
                ))
            }
            Step::RecordStart => {
                let Some(len_bytes) = self.input.peek(4) else {
                    return Ok((decoding(Step::RecordStart), Progress::NeedInput));
                };
                let tot_len =
                    u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
                if tot_len == 0 {
                    return Ok((self.end_of_wal(), Progress::Continue));
                }
                if tot_len < RECORD_HEADER_LEN as u32 || tot_len > MAX_RECORD_LEN {
                    return Err(WalDecodeError::InvalidRecordLength {
                        lsn: self.input.pos,
                        len: tot_len,
                    });
                }
                let mut partial = PartialHeader::new(self.input.pos, tot_len);
                let on_page = self.input.on_page();
                let Some(whole) = on_page.get(..tot_len as usize) else {
                    return Ok((decoding(Step::RecordHeader(partial)), Progress::Continue));
                };
                // The common case, the whole record on this page: read it in one go, no
                // piece-by-piece assembly.
                partial.absorb(whole);
                let mut body = partial.into_body(self.last_record)?;
                body.absorb(&whole[RECORD_HEADER_LEN..]);
                self.input.consume(tot_len as usize);
                self.after_body_progress(identity, body)
            }
            Step::RecordHeader(mut partial) => {
                let used = partial.absorb(self.input.on_page());
                if used == 0 {
                    return Ok((decoding(Step::RecordHeader(partial)), Progress::NeedInput));
                }
                self.input.consume(used);
                if !partial.is_complete() {
                    return Ok((decoding(Step::RecordHeader(partial)), Progress::Continue));
                }
                let body = partial.into_body(self.last_record)?;
                self.after_body_progress(identity, body)
            }
            Step::RecordBody(mut partial) => {
                let used = partial.absorb(self.input.on_page());
                if used == 0 {
                    return Ok((decoding(Step::RecordBody(partial)), Progress::NeedInput));
                }
                self.input.consume(used);
                self.after_body_progress(identity, *partial)
            }
        }
    }

    /// Finishes the record at once if its last byte was just consumed, so a
    /// record ending exactly at a page end is not taken to continue onto
    /// the next page.
    fn after_body_progress(
        &mut self,
        identity: StreamIdentity,
        partial: PartialBody,
    ) -> Result<(State, Progress), WalDecodeError> {
        if !partial.is_complete() {
            let step = Step::RecordBody(Box::new(partial));
            return Ok((State::Decoding { identity, step }, Progress::Continue));
        }
        let complete = partial.finish()?;
        let mut end = align(self.input.pos);
        if is_switch(&complete.header) && end.segment_offset(self.seg) != 0 {
            end = end.segment_start(self.seg) + self.seg.bytes();
        }
        let event = record_event(
            &complete.header,
            &complete.payload,
            identity.format,
            complete.start,
            end,
        )?;
        self.last_record = Some(complete.start);
        self.decoded_up_to = end;
        let record = WalRecord {
            start: complete.start,
            end,
            len: complete.header.tot_len,
            rmid: complete.header.rmid,
            info: complete.header.info,
            xid: complete.header.xid,
            event,
        };
        let step = Step::Padding { until: end };
        Ok((State::Decoding { identity, step }, Progress::Record(record)))
    }

    /// The step for skipping `remaining` more bytes of a record begun before
    /// the start: once none remain, what follows is padding up to the first
    /// whole record.
    fn skip(&mut self, remaining: u64) -> Step {
        if remaining > 0 {
            return Step::SkipContinuation { remaining };
        }
        let until = align(self.input.pos);
        self.decoded_up_to = until;
        Step::Padding { until }
    }

    fn end_of_wal(&mut self) -> State {
        tracing::debug!(lsn = %self.input.pos, "end of valid WAL");
        self.input.clear();
        State::Ended
    }
}

#[cfg(test)]
impl WalDecoder {
    /// Bytes held: buffered input plus any record payload being kept.
    fn memory_held(&self) -> usize {
        let payload = match &self.state {
            State::Decoding {
                step: Step::RecordBody(partial),
                ..
            } => partial.kept_len(),
            _ => 0,
        };
        self.input.bytes.capacity() + payload
    }
}

#[cfg(test)]
mod tests;

impl fmt::Debug for WalDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalDecoder")
            .field("position", &self.input.pos)
            .field("buffered", &self.input.available().len())
            .field("decoded_up_to", &self.decoded_up_to)
            .field("ended", &self.ended())
            .field("failure", &self.failure)
            .finish()
    }
}

/// Checks that `header` (of the page at `page`) continues the record
/// starting at `record` (`None`: begun before the decoding start), of which
/// `remaining` bytes are still to come.
fn check_continuation(
    page: Lsn,
    header: &PageHeader,
    remaining: u64,
    record: Option<Lsn>,
) -> Result<(), WalDecodeError> {
    let what = describe_record(record);
    let problem = if !header.continues_record() {
        format!("{what} needs {remaining} more bytes, but the page has no continuation flag")
    } else if u64::from(header.rem_len) != remaining {
        format!(
            "{what} needs {remaining} more bytes, but the page says {}",
            header.rem_len
        )
    } else {
        return Ok(());
    };
    Err(WalDecodeError::BrokenContinuation { page, problem })
}

/// Names the record in progress for messages.
fn describe_record(record: Option<Lsn>) -> String {
    match record {
        Some(start) => format!("the record at {start}"),
        None => "the record begun before the decoding start".to_string(),
    }
}

/// `lsn` rounded up to the record alignment.
fn align(lsn: Lsn) -> Lsn {
    Lsn(lsn.0.next_multiple_of(RECORD_ALIGN))
}

/// Fed bytes not consumed yet, and the LSN of the first of them.
struct Input {
    bytes: Vec<u8>,
    /// `bytes[..read]` are consumed.
    read: usize,
    pos: Lsn,
}

impl Input {
    fn push(&mut self, data: &[u8]) {
        self.bytes.drain(..self.read);
        self.read = 0;
        self.bytes.extend_from_slice(data);
    }

    fn available(&self) -> &[u8] {
        &self.bytes[self.read..]
    }

    /// The next `n` bytes, if fed already.
    fn peek(&self, n: usize) -> Option<&[u8]> {
        self.available().get(..n)
    }

    /// The unconsumed bytes up to the end of the current page.
    fn on_page(&self) -> &[u8] {
        let room = (PAGE_SIZE - self.pos.0 % PAGE_SIZE) as usize;
        let available = self.available();
        &available[..room.min(available.len())]
    }

    fn at_page_start(&self) -> bool {
        self.pos.0.is_multiple_of(PAGE_SIZE)
    }

    fn consume(&mut self, n: usize) {
        self.read += n;
        self.pos = self.pos + n as u64;
    }

    /// Drops every buffered byte (decoding has stopped).
    fn clear(&mut self) {
        self.bytes = Vec::new();
        self.read = 0;
    }
}
