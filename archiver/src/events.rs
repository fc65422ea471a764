//! Decoding the WAL as it streams in, to summarise each segment (transaction end times,
//! xid range with epochs, restore points) for the planner. Archiving never depends on it: a decoding
//! failure is logged and the summaries simply stop (objects without one are treated as
//! unknown by the planner).

use std::collections::BTreeMap;

use tidemark_protocol::{xid, Lsn, SegmentName, TimelineId, WalDecoder, WalEvent, WalSegmentSize};
use tidemark_store::storage::Metadata;
use tidemark_store::wal_summary::{RestorePoint, WalSummary};

/// Summaries of the segments being received.
pub struct EventTracker {
    decoder: Option<WalDecoder>,
    timeline: TimelineId,
    seg: WalSegmentSize,
    /// The first segment: a record continuing into it from before the start is not seen,
    /// so its summary is complete only when its first page continues no record.
    first: SegmentName,
    summaries: BTreeMap<u64, WalSummary>,
    /// The xid counter with its epoch at the newest checkpoint decoded: xids ending after
    /// it are widened against it. Not carried over from an earlier stream (`pg_resetwal`
    /// may have changed the epoch in between): until the first checkpoint, unknown.
    next_xid: Option<u64>,
}

impl EventTracker {
    /// Start decoding at `start`, a segment boundary on `timeline`.
    pub fn new(timeline: TimelineId, start: Lsn, seg: WalSegmentSize) -> Self {
        EventTracker {
            decoder: Some(WalDecoder::new(start, seg)),
            timeline,
            seg,
            first: SegmentName::containing(timeline, start, seg),
            summaries: BTreeMap::new(),
            next_xid: None,
        }
    }

    /// Decode `data`, which continues the stream.
    pub fn feed(&mut self, data: &[u8]) {
        let Some(decoder) = self.decoder.as_mut() else {
            return;
        };
        decoder.feed(data);
        loop {
            match decoder.next_event() {
                Ok(Some(event)) => {
                    let segno = Lsn(event.end().0 - 1).segment_number(self.seg);
                    let summary = self.summaries.entry(segno).or_default();
                    match event {
                        WalEvent::Commit { xid, time, .. } | WalEvent::Abort { xid, time, .. } => {
                            let full = self.next_xid.and_then(|n| xid::widen(n, xid));
                            summary.xact(xid, full, time)
                        }
                        WalEvent::Checkpoint { next_xid, .. } => self.next_xid = Some(next_xid),
                        WalEvent::RestorePoint {
                            start, name, time, ..
                        } => summary.restore_points.push(RestorePoint {
                            lsn: start,
                            name,
                            time,
                        }),
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot decode the WAL stream; segment summaries for restore planning stop here (archiving continues)");
                    self.decoder = None;
                    return;
                }
            }
        }
    }

    /// Metadata for the complete segment `name`, whose bytes have all been fed; its
    /// summary is dropped. Empty when the summary is not known to be complete.
    pub fn finish(&mut self, name: SegmentName) -> Metadata {
        let summary = self.summaries.remove(&name.segno).unwrap_or_default();
        self.metadata(name, summary)
    }

    /// Metadata for the received prefix of segment `name` (a partial upload).
    pub fn so_far(&self, name: SegmentName) -> Metadata {
        let summary = self.summaries.get(&name.segno).cloned().unwrap_or_default();
        self.metadata(name, summary)
    }

    fn metadata(&self, name: SegmentName, summary: WalSummary) -> Metadata {
        let Some(decoder) = self.decoder.as_ref().filter(|d| !d.ended()) else {
            return Metadata::new();
        };
        let unseen_record = name == self.first && decoder.began_mid_record() != Some(false);
        if unseen_record || name.timeline != self.timeline {
            return Metadata::new();
        }
        summary.metadata()
    }
}

/// How many of `data`'s bytes (the received prefix of segment `name`, left in the spool by
/// an earlier run) are valid WAL: up to the end of the last complete, checksummed record.
/// Whatever follows (a torn record, bytes a host crash never wrote) is not stored.
pub fn valid_prefix_len(name: SegmentName, data: &[u8], seg: WalSegmentSize) -> u64 {
    let start = name.start_lsn(seg);
    let mut decoder = WalDecoder::new(start, seg);
    decoder.feed(data);
    while let Ok(Some(_)) = decoder.next_record() {}
    decoder
        .decoded_up_to()
        .bytes_since(start)
        .min(data.len() as u64)
}
