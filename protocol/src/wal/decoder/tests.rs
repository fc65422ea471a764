//! Decoder tests on hand-built WAL: every chunking of the same bytes gives
//! the same records; each layout rule and each way WAL ends or breaks.

use chrono::{DateTime, Utc};

use super::*;
use crate::wal::testing::{WalBuilder, RM_HEAP};

const MIB: u64 = 1 << 20;

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(MIB).unwrap()
}

/// Microseconds since 2000-01-01 for an RFC 3339 time.
fn pg_micros(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_micros()
        - 946_684_800_000_000
}

fn utc(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339).unwrap().into()
}

/// What decoding `bytes` from `start` in `chunk`-byte feeds gives.
#[derive(Debug, PartialEq)]
struct Outcome {
    records: Vec<WalRecord>,
    error: Option<WalDecodeError>,
    decoded_up_to: Lsn,
    ended: bool,
}

fn decode(start: Lsn, bytes: &[u8], chunk: usize) -> Outcome {
    let mut decoder = WalDecoder::new(start, seg());
    let mut records = Vec::new();
    let mut error = None;
    'feed: for piece in bytes.chunks(chunk) {
        decoder.feed(piece);
        loop {
            match decoder.next_record() {
                Ok(Some(record)) => records.push(record),
                Ok(None) => break,
                Err(err) => {
                    error = Some(err);
                    break 'feed;
                }
            }
        }
    }
    Outcome {
        records,
        error,
        decoded_up_to: decoder.decoded_up_to(),
        ended: decoder.ended(),
    }
}

/// Decodes with every interesting chunk size, asserts they all agree, and
/// returns the outcome.
fn decode_every_way(start: Lsn, bytes: &[u8]) -> Outcome {
    let whole = decode(start, bytes, bytes.len().max(1));
    for chunk in [1, 7, 24, 4096, 8191, 8192, 8193, 65_537, MIB as usize] {
        assert_eq!(decode(start, bytes, chunk), whole, "chunk size {chunk}");
    }
    whole
}

fn starts(outcome: &Outcome) -> Vec<Lsn> {
    outcome.records.iter().map(|r| r.start).collect()
}

fn events(outcome: &Outcome) -> Vec<WalEvent> {
    outcome
        .records
        .iter()
        .filter_map(|r| r.event.clone())
        .collect()
}

#[test]
fn decodes_a_realistic_stream_identically_in_any_chunks() {
    for major in [14, 15, 18] {
        let start = Lsn(3 * MIB);
        let mut w = WalBuilder::new(start, seg(), major);
        // A record from the previous segment continues over two pages.
        w.continuation(10_000);
        let mut expected_events = Vec::new();
        let (s, e) = w.commit(700, pg_micros("2024-03-01T10:00:00.123456Z"));
        expected_events.push(WalEvent::Commit {
            start: s,
            end: e,
            xid: 700,
            time: utc("2024-03-01T10:00:00.123456Z"),
        });
        w.filler(30_000); // spans pages
        let (s, e) = w.abort(701, pg_micros("2024-03-01T10:00:01Z"));
        expected_events.push(WalEvent::Abort {
            start: s,
            end: e,
            xid: 701,
            time: utc("2024-03-01T10:00:01Z"),
        });
        // A record whose header straddles a page boundary.
        w.fill_until_page_end_minus(8);
        let (s, e) = w.finish_prepared(true, 650, pg_micros("2024-03-01T10:00:02Z"));
        assert_eq!(s.0 % PAGE_SIZE, PAGE_SIZE - 8);
        expected_events.push(WalEvent::Commit {
            start: s,
            end: e,
            xid: 650,
            time: utc("2024-03-01T10:00:02Z"),
        });
        w.fill_until_page_end_minus(16);
        let (s, e) = w.finish_prepared(false, 651, pg_micros("2024-03-01T10:00:03Z"));
        expected_events.push(WalEvent::Abort {
            start: s,
            end: e,
            xid: 651,
            time: utc("2024-03-01T10:00:03Z"),
        });
        // A record that ends exactly at a page end.
        w.fill_until_page_end_minus(64);
        let (_, e) = w.filler(64 - 26);
        assert_eq!(e.0 % PAGE_SIZE, 0);
        let (s, e) = w.restore_point("before-upgrade", pg_micros("2024-03-01T10:00:04Z"));
        expected_events.push(WalEvent::RestorePoint {
            start: s,
            end: e,
            name: "before-upgrade".to_string(),
            time: utc("2024-03-01T10:00:04Z"),
        });
        // Fill to near the segment end, then a record across the boundary.
        while w.pos().0 < 4 * MIB - 20_000 {
            w.filler(5_000);
        }
        let (s, e) = w.filler(40_000);
        assert!(s.0 < 4 * MIB && e.0 > 4 * MIB, "{s}..{e}");
        let (s, e) = w.commit(702, pg_micros("2024-03-01T10:00:05Z"));
        expected_events.push(WalEvent::Commit {
            start: s,
            end: e,
            xid: 702,
            time: utc("2024-03-01T10:00:05Z"),
        });
        // XLOG_SWITCH: the rest of segment 4 is padding.
        let (switch_start, switch_end) = w.switch();
        assert_eq!(switch_end, Lsn(5 * MIB));
        let (s, e) = w.commit(703, pg_micros("2024-03-01T10:00:06Z"));
        assert_eq!(s, Lsn(5 * MIB + 40));
        expected_events.push(WalEvent::Commit {
            start: s,
            end: e,
            xid: 703,
            time: utc("2024-03-01T10:00:06Z"),
        });
        let last_end = e;
        // Then nothing: the rest of the page is zeros.
        w.zeros_to(Lsn(6 * MIB));

        let outcome = decode_every_way(start, w.bytes());
        assert_eq!(outcome.error, None, "pg{major}");
        assert!(outcome.ended);
        assert_eq!(starts(&outcome), w.starts(), "pg{major}");
        assert_eq!(events(&outcome), expected_events, "pg{major}");
        assert_eq!(outcome.decoded_up_to, last_end);
        let switch = outcome
            .records
            .iter()
            .find(|r| r.start == switch_start)
            .unwrap();
        assert_eq!(
            (switch.rmid, switch.info, switch.end),
            (0, 0x40, Lsn(5 * MIB))
        );
        let heap = outcome.records.iter().find(|r| r.rmid == RM_HEAP).unwrap();
        assert_eq!(heap.len, 24 + 5 + 30_000);
    }
}

#[test]
fn next_event_skips_other_records() {
    let mut w = WalBuilder::new(Lsn(MIB), seg(), 16);
    w.filler(100);
    let (s, e) = w.commit(9, 0);
    w.filler(100);
    let mut decoder = WalDecoder::new(Lsn(MIB), seg());
    decoder.feed(w.bytes());
    let event = decoder.next_event().unwrap();
    assert_eq!(
        event,
        Some(WalEvent::Commit {
            start: s,
            end: e,
            xid: 9,
            time: utc("2000-01-01T00:00:00Z")
        })
    );
    assert_eq!(decoder.next_event().unwrap(), None);
    assert_eq!(decoder.decoded_up_to(), w.pos());
    assert!(!decoder.ended(), "more WAL may come");
}

#[test]
fn continuation_at_start_is_skipped_and_counts_as_decoded() {
    let mut w = WalBuilder::new(Lsn(MIB), seg(), 17);
    w.continuation(20_000);
    let after = w.pos();
    let (s, _) = w.commit(5, 1);
    assert_eq!(s, after);
    let mut decoder = WalDecoder::new(Lsn(MIB), seg());
    assert_eq!(decoder.decoded_up_to(), Lsn(MIB));
    decoder.feed(&w.bytes()[..(after.0 - MIB) as usize]);
    assert_eq!(decoder.next_record().unwrap(), None);
    assert_eq!(decoder.decoded_up_to(), after);
    decoder.feed(&w.bytes()[(after.0 - MIB) as usize..]);
    assert_eq!(decoder.next_record().unwrap().map(|r| r.start), Some(s));
}

#[test]
fn a_first_page_that_continues_a_record_is_reported_and_one_that_does_not_is_not() {
    for continued in [true, false] {
        let mut w = WalBuilder::new(Lsn(MIB), seg(), 16);
        if continued {
            w.continuation(100);
        }
        w.commit(5, 1);
        let mut decoder = WalDecoder::new(Lsn(MIB), seg());
        assert_eq!(decoder.began_mid_record(), None, "nothing read yet");
        decoder.feed(w.bytes());
        while decoder.next_record().unwrap().is_some() {}
        assert_eq!(decoder.began_mid_record(), Some(continued));
    }
}

#[test]
fn recycled_page_ends_decoding() {
    let mut w = WalBuilder::new(Lsn(MIB), seg(), 15);
    w.filler(10);
    w.fill_until_page_end_minus(0);
    let end = w.pos();
    assert_eq!(end, Lsn(MIB + PAGE_SIZE));
    // The next page is left over from segment 0.
    w.stale_page(Lsn(end.0 - MIB));
    w.commit(1, 1);
    let outcome = decode_every_way(Lsn(MIB), w.bytes());
    assert_eq!(outcome.error, None);
    assert!(outcome.ended);
    assert_eq!(outcome.decoded_up_to, end);
}

#[test]
fn zeroed_segment_or_page_mid_record_ends_decoding() {
    // Nothing at all: a fresh zero-filled segment.
    let outcome = decode_every_way(Lsn(MIB), &vec![0; 3 * PAGE_SIZE as usize]);
    assert_eq!((outcome.records.len(), outcome.ended), (0, true));
    assert_eq!(outcome.decoded_up_to, Lsn(MIB));
    // A record whose second half never made it to disk.
    let mut w = WalBuilder::new(Lsn(MIB), seg(), 15);
    let (first, first_end) = w.filler(10);
    w.filler(10_000);
    let cut = Lsn(MIB + PAGE_SIZE);
    let mut bytes = w.bytes()[..(cut.0 - MIB) as usize].to_vec();
    bytes.resize(bytes.len() + PAGE_SIZE as usize, 0);
    let outcome = decode_every_way(Lsn(MIB), &bytes);
    assert_eq!(starts(&outcome), vec![first]);
    assert_eq!((outcome.error, outcome.ended), (None, true));
    assert_eq!(outcome.decoded_up_to, first_end);
}

#[test]
fn bytes_fed_after_the_end_are_ignored() {
    let mut w = WalBuilder::new(Lsn(MIB), seg(), 15);
    w.filler(10);
    w.zeros_to(w.pos() + 64);
    let mut decoder = WalDecoder::new(Lsn(MIB), seg());
    decoder.feed(w.bytes());
    assert!(decoder.next_record().unwrap().is_some());
    assert_eq!(decoder.next_record().unwrap(), None);
    assert!(decoder.ended());
    decoder.feed(&[1; 100_000]);
    assert_eq!(decoder.next_record().unwrap(), None);
    assert!(
        format!("{decoder:?}").contains("buffered: 0"),
        "{decoder:?}"
    );
}

#[test]
fn crc_mismatch_is_an_error_with_the_record_lsn() {
    let mut w = WalBuilder::new(Lsn(MIB), seg(), 16);
    w.filler(100);
    let (s, e) = w.commit(7, 1234);
    w.filler(100);
    *w.byte_at(Lsn(e.0 - 8)) ^= 0x01; // inside the commit time
    let outcome = decode_every_way(Lsn(MIB), w.bytes());
    assert_eq!(outcome.records.len(), 1);
    assert!(
        matches!(outcome.error, Some(WalDecodeError::CrcMismatch { lsn, .. }) if lsn == s),
        "{:?}",
        outcome.error
    );
    // A corrupt header field is caught too (here: xl_xid of a big record
    // spanning pages, so the payload streams by without being kept).
    let mut w = WalBuilder::new(Lsn(MIB), seg(), 16);
    let (s, _) = w.filler(50_000);
    *w.byte_at(s + 4) ^= 0x80;
    let outcome = decode_every_way(Lsn(MIB), w.bytes());
    assert!(matches!(outcome.error, Some(WalDecodeError::CrcMismatch { lsn, .. }) if lsn == s));
}

#[test]
fn an_error_is_sticky() {
    let mut w = WalBuilder::new(Lsn(MIB), seg(), 16);
    let (s, _) = w.commit(7, 1234);
    *w.byte_at(s + 30) ^= 0xFF;
    let mut decoder = WalDecoder::new(Lsn(MIB), seg());
    decoder.feed(w.bytes());
    let first = decoder.next_event().unwrap_err();
    decoder.feed(&[0; 10]);
    assert_eq!(decoder.next_event().unwrap_err(), first);
    assert!(!decoder.ended());
}

#[test]
fn continuation_that_does_not_continue_is_an_error() {
    let mut w = WalBuilder::new(Lsn(MIB), seg(), 18);
    w.filler(10);
    let (s, _) = w.filler(20_000);
    let page = Lsn(MIB + PAGE_SIZE);
    assert!(s < page);
    // No continuation flag on the next page.
    let mut broken = WalBuilder::new(Lsn(MIB), seg(), 18);
    broken.filler(10);
    broken.filler(20_000);
    *broken.byte_at(page + 2) &= !0x01;
    let outcome = decode_every_way(Lsn(MIB), broken.bytes());
    assert!(
        matches!(&outcome.error, Some(WalDecodeError::BrokenContinuation { page: p, .. }) if *p == page),
        "{:?}",
        outcome.error
    );
    // A remaining length that does not match.
    *w.byte_at(page + 16) ^= 0x04;
    let outcome = decode_every_way(Lsn(MIB), w.bytes());
    let message = outcome.error.unwrap().to_string();
    assert!(message.contains(&format!("the record at {s}")), "{message}");
}

#[test]
fn continuation_flag_without_a_record_in_progress_is_an_error() {
    let mut w = WalBuilder::new(Lsn(MIB), seg(), 18);
    w.filler(10);
    w.fill_until_page_end_minus(0);
    let page = w.pos();
    assert_eq!(page, Lsn(MIB + PAGE_SIZE));
    w.filler(10);
    *w.byte_at(page + 2) |= 0x01;
    let outcome = decode_every_way(Lsn(MIB), w.bytes());
    assert_eq!(
        outcome.error,
        Some(WalDecodeError::UnexpectedContinuation { page })
    );
}

#[test]
fn overwritten_continuation_restarts_at_the_new_record() {
    let mut w = WalBuilder::new(Lsn(MIB), seg(), 15);
    let (first, _) = w.filler(100);
    w.fill_until_page_end_minus(200);
    let kept = w.pos();
    let abandoned = w.abandoned_record(5_000);
    let (after, _) = w.commit(44, 0);
    assert_eq!(after, Lsn(MIB + PAGE_SIZE + 24));
    let outcome = decode_every_way(Lsn(MIB), w.bytes());
    assert_eq!(outcome.error, None);
    let got = starts(&outcome);
    assert_eq!(got.first(), Some(&first));
    assert!(!got.contains(&abandoned));
    assert_eq!(got.last(), Some(&after));
    assert!(got.iter().all(|&s| s < kept || s == after));
}

#[test]
fn impossible_lengths_and_prev_links_are_errors() {
    let mut w = WalBuilder::new(Lsn(MIB), seg(), 16);
    w.filler(10);
    let (s, _) = w.filler(10);
    w.byte_at(s).clone_from(&5);
    *w.byte_at(s + 1) = 0;
    let outcome = decode_every_way(Lsn(MIB), w.bytes());
    assert_eq!(
        outcome.error,
        Some(WalDecodeError::InvalidRecordLength { lsn: s, len: 5 })
    );

    let mut w = WalBuilder::new(Lsn(MIB), seg(), 16);
    let (first, _) = w.filler(10);
    w.set_prev(Lsn(MIB + 8));
    let (second, _) = w.filler(10);
    let outcome = decode_every_way(Lsn(MIB), w.bytes());
    assert_eq!(
        outcome.error,
        Some(WalDecodeError::InvalidPrevLink {
            lsn: second,
            expected: first,
            found: Lsn(MIB + 8)
        })
    );
}

#[test]
fn page_header_problems_are_errors() {
    let base = || {
        let mut w = WalBuilder::new(Lsn(MIB), seg(), 17);
        w.filler(20_000);
        w
    };
    // Unknown magic (PostgreSQL 13's) on the first page.
    let mut w = base();
    w.byte_at(Lsn(MIB)).clone_from(&0x06);
    let outcome = decode_every_way(Lsn(MIB), w.bytes());
    assert_eq!(
        outcome.error,
        Some(WalDecodeError::UnsupportedVersion {
            page: Lsn(MIB),
            magic: 0xD106
        })
    );
    // A different segment size in the long header.
    let mut w = base();
    *w.byte_at(Lsn(MIB + 34)) = 0x02;
    let outcome = decode_every_way(Lsn(MIB), w.bytes());
    let message = outcome.error.unwrap().to_string();
    assert!(
        message.contains("segment size 131072 bytes, expected 1048576"),
        "{message}"
    );
    // Another major's magic (16's) on a later page.
    let mut w = base();
    *w.byte_at(Lsn(MIB + PAGE_SIZE)) = 0x13;
    let outcome = decode_every_way(Lsn(MIB), w.bytes());
    assert!(
        matches!(outcome.error, Some(WalDecodeError::InvalidPageHeader { page, .. }) if page == Lsn(MIB + PAGE_SIZE))
    );
    // Unknown flags.
    let mut w = base();
    *w.byte_at(Lsn(MIB + PAGE_SIZE + 2)) |= 0x40;
    let outcome = decode_every_way(Lsn(MIB), w.bytes());
    assert!(outcome.error.unwrap().to_string().contains("unknown flags"));
    // The timeline going backwards.
    let mut w = base();
    *w.byte_at(Lsn(MIB + 4)) = 2;
    let outcome = decode_every_way(Lsn(MIB), w.bytes());
    assert!(outcome
        .error
        .unwrap()
        .to_string()
        .contains("timeline 1 is older than timeline 2"));
}

#[test]
fn misaligned_start_is_an_error() {
    let start = Lsn(MIB + PAGE_SIZE);
    let mut decoder = WalDecoder::new(start, seg());
    decoder.feed(&[0; 100]);
    assert_eq!(
        decoder.next_event(),
        Err(WalDecodeError::MisalignedStart { start })
    );
    assert_eq!(decoder.decoded_up_to(), start);
}

#[test]
fn huge_records_stream_through_without_being_buffered() {
    let mut w = WalBuilder::new(Lsn(MIB), seg(), 16);
    w.filler(3 * MIB as usize);
    let (s, _) = w.commit(1, 1);
    let mut decoder = WalDecoder::new(Lsn(MIB), seg());
    let mut seen = Vec::new();
    for chunk in w.bytes().chunks(64 * 1024) {
        decoder.feed(chunk);
        while let Some(record) = decoder.next_record().unwrap() {
            seen.push(record.start);
        }
        assert!(
            decoder.memory_held() <= 64 * 1024,
            "{}",
            decoder.memory_held()
        );
    }
    assert_eq!(seen, vec![Lsn(MIB + 40), s]);
}
