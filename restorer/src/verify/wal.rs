//! What `verify` reads in a WAL object: the long page header's system identifier, and
//! every record decoded with its CRC-32C checked; and whether the history files agree.

use std::collections::BTreeMap;
use std::io::Read;

use tidemark_protocol::wal::WalDecoder;
use tidemark_protocol::{HistoryEntry, Lsn, TimelineId, WalSegmentSize};

const BUF: usize = 1 << 20;
/// Where `xlp_sysid` lies in the long page header that opens every segment.
const SYSID_AT: usize = 24;

/// What decoding one segment's bytes found.
#[derive(Debug, Default)]
pub struct Decoded {
    /// `xlp_sysid` of the first page, if the segment is long enough to hold it.
    pub system_identifier: Option<u64>,
    /// The first record or page that failed its checks.
    pub error: Option<String>,
    /// The end of the last whole record decoded.
    pub decoded_up_to: Lsn,
    /// Decoding met the end of valid WAL (a zeroed or recycled page) at `decoded_up_to`.
    pub ended: bool,
}

/// Decode the segment starting at `start` from `bytes` (a reader that fails on damage:
/// decoding then simply stops, and the envelope says why).
pub fn decode(bytes: &mut dyn Read, start: Lsn, seg: WalSegmentSize) -> Decoded {
    let mut decoder = WalDecoder::new(start, seg);
    let mut head = Vec::with_capacity(SYSID_AT + 8);
    let mut out = Decoded::default();
    let mut buf = vec![0; BUF];
    loop {
        let n = match bytes.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if head.len() < SYSID_AT + 8 {
            let take = (SYSID_AT + 8 - head.len()).min(n);
            head.extend_from_slice(&buf[..take]);
        }
        if out.error.is_some() {
            continue;
        }
        decoder.feed(&buf[..n]);
        loop {
            match decoder.next_record() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(e.to_string());
                    break;
                }
            }
        }
    }
    out.system_identifier = head
        .get(SYSID_AT..SYSID_AT + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    out.decoded_up_to = decoder.decoded_up_to();
    out.ended = decoder.ended();
    out
}

/// Where the history files disagree: each timeline's history must be its parent's
/// followed by the parent itself, and every parent but timeline 1 must have one.
pub fn disagreements(
    histories: &BTreeMap<TimelineId, Vec<HistoryEntry>>,
) -> Vec<(TimelineId, String)> {
    let mut found = Vec::new();
    for (tli, entries) in histories {
        let Some((last, earlier)) = entries.split_last() else {
            found.push((*tli, "it lists no parent timeline".to_string()));
            continue;
        };
        if last.parent >= *tli {
            found.push((
                *tli,
                format!("its parent {} is not older than it", last.parent),
            ));
        }
        if last.parent == TimelineId(1) {
            if !earlier.is_empty() {
                found.push((*tli, "it lists ancestors before timeline 1".to_string()));
            }
            continue;
        }
        match histories.get(&last.parent) {
            None => found.push((
                *tli,
                format!(
                    "the history file of its parent timeline {} is missing",
                    last.parent
                ),
            )),
            Some(parents) if !same_switches(parents, earlier) => found.push((
                *tli,
                format!(
                    "its ancestry differs from the history file of its parent timeline {}",
                    last.parent
                ),
            )),
            Some(_) => {}
        }
    }
    found
}

/// Whether two ancestries name the same timelines switching at the same points (the
/// free-text reasons are not what a restore follows).
fn same_switches(a: &[HistoryEntry], b: &[HistoryEntry]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x.parent, x.switch_lsn) == (y.parent, y.switch_lsn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_protocol::parse_history;

    #[test]
    fn histories_must_extend_their_parents() {
        let h = |text: &str| parse_history(text.as_bytes()).unwrap();
        let mut all = BTreeMap::from([
            (
                TimelineId(2),
                h("1\t0/3000000\tno recovery target specified\n"),
            ),
            (
                TimelineId(3),
                h("1\t0/3000000\tx\n2\t0/5000000\tno recovery target specified\n"),
            ),
        ]);
        assert!(disagreements(&all).is_empty());
        all.insert(TimelineId(3), h("1\t0/3100000\tx\n2\t0/5000000\ty\n"));
        let found = disagreements(&all);
        assert_eq!(found.len(), 1);
        assert!(found[0].1.contains("differs"), "{found:?}");
        all.remove(&TimelineId(2));
        let found = disagreements(&all);
        assert!(found[0].1.contains("missing"), "{found:?}");
    }

    #[test]
    fn garbage_is_not_wal() {
        let seg = WalSegmentSize::new(16 << 20).unwrap();
        let bytes = vec![0x5a_u8; 64 << 10];
        let d = decode(&mut &bytes[..], Lsn(0x100_0000), seg);
        assert_eq!(d.system_identifier, Some(0x5a5a_5a5a_5a5a_5a5a));
        assert!(d.error.is_some() || d.ended, "{d:?}");
        assert_eq!(d.decoded_up_to, Lsn(0x100_0000));
    }
}
