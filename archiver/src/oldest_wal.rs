//! After the server removed WAL the archive needed (`--accept-gap`): the oldest segment
//! it can still stream, so that the gap is only what is really gone. The server removes
//! segments oldest first, so what it still has is one run ending at its current segment:
//! a binary search, each probe a short START_REPLICATION without a slot that ends at the
//! first message (WAL data: still there; SQLSTATE 58P01: removed).

use std::time::Duration;

use tidemark_protocol::conninfo::ConnInfo;
use tidemark_protocol::replication::{
    ReplicationClient, ReplicationError, StartOutcome, StreamMessage,
};
use tidemark_protocol::{SegmentName, TimelineId, WalSegmentSize};

/// How long a probe waits for the first message of a complete segment.
const PROBE_WAIT: Duration = Duration::from_secs(10);

/// The oldest segment after `removed` (a segment the server no longer has) and up to
/// `current` (its current one, taken to be there) that the server can still stream.
/// A probe that cannot tell (a lost connection, a slow answer) ends the search early at
/// the oldest segment proven there: the gap is then larger than needed, never wrong.
pub async fn oldest_streamable(
    conninfo: &ConnInfo,
    timeline: TimelineId,
    removed: u64,
    current: u64,
    seg: WalSegmentSize,
) -> u64 {
    let (mut gone, mut there) = (removed, current);
    while there - gone > 1 {
        let mid = gone + (there - gone) / 2;
        match still_there(conninfo, SegmentName::new(timeline, mid), seg).await {
            Some(true) => there = mid,
            Some(false) => gone = mid,
            None => break,
        }
    }
    there
}

/// Whether the server still has segment `name` (complete, older than its current one);
/// `None` (logged) when the probe cannot tell.
async fn still_there(conninfo: &ConnInfo, name: SegmentName, seg: WalSegmentSize) -> Option<bool> {
    let start = name.start_lsn(seg);
    let first = async {
        let client: ReplicationClient = ReplicationClient::connect(conninfo).await?;
        match client.start_replication(None, start, name.timeline).await? {
            StartOutcome::Streaming(mut stream) => loop {
                match stream.next_message().await? {
                    StreamMessage::XLogData { .. } => return Ok(true),
                    StreamMessage::Keepalive { .. } => continue,
                    StreamMessage::EndOfTimeline { .. } => return Ok(false),
                }
            },
            StartOutcome::TimelineEnded { .. } => Ok::<_, ReplicationError>(false),
        }
    };
    let why = match tokio::time::timeout(PROBE_WAIT, first).await {
        Ok(Ok(there)) => return Some(there),
        Ok(Err(e)) if e.sqlstate() == Some("58P01") => return Some(false),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {PROBE_WAIT:?}"),
    };
    tracing::warn!(error = %why, segment = %name.file_name(seg),
        "cannot tell whether the server still has this WAL; the gap may be larger than what was removed");
    None
}
