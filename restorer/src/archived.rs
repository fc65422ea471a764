//! What the repository holds of one timeline's WAL, for planning: which segments are
//! complete, which partial tails end what is there, the WAL summaries of a range of
//! objects, and where the last whole record of the archive starts.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, TryStreamExt};
use tidemark_protocol::wal::WalDecoder;
use tidemark_protocol::{Lsn, SegmentName, TimelineId, WalSegmentSize};
use tidemark_store::repository::{RepoError, Repository};
use tidemark_store::wal_summary::WalSummary;
use tidemark_store::{layout, meta};

/// HEAD requests in flight when reading summaries.
const SUMMARY_READS: usize = 16;

/// What the repository holds of one timeline's WAL.
pub struct ArchivedWal {
    pub timeline: TimelineId,
    pub complete: BTreeSet<u64>,
    /// The newest partial segment: its number, end and key.
    pub partial: Option<(u64, Lsn, String)>,
    /// Partial segments of segments not stored complete (the newest, and the tail
    /// before each accepted gap): end and key, by segment number.
    pub tails: BTreeMap<u64, (Lsn, String)>,
}

impl ArchivedWal {
    pub async fn list(
        repo: &Repository,
        timeline: TimelineId,
        seg: WalSegmentSize,
    ) -> Result<Self, RepoError> {
        let prefix = layout::wal_timeline_prefix(timeline);
        let listing = repo.list(&prefix).await?;
        let mut complete = BTreeSet::new();
        let mut partial_segnos = Vec::new();
        for info in listing {
            match layout::parse_wal_key(&info.key, seg) {
                Some(k) if !k.partial => {
                    complete.insert(k.name.segno);
                }
                Some(k) => partial_segnos.push((k.name, info.key)),
                None => {}
            }
        }
        // Partials of completed segments are superseded; the others end what is there.
        let mut tails = BTreeMap::new();
        for (name, key) in partial_segnos {
            if complete.contains(&name.segno) {
                continue;
            }
            let head = repo.head(&key).await?;
            let end = head.and_then(|h| meta::end_lsn(&h.metadata));
            if let Some(end) = end {
                tails.insert(name.segno, (end, key));
            }
        }
        let top = complete.last().copied();
        let partial = tails
            .last_key_value()
            .filter(|(s, _)| top.is_none_or(|t| **s > t))
            .map(|(s, (end, key))| (*s, *end, key.clone()));
        Ok(ArchivedWal {
            timeline,
            complete,
            partial,
            tails,
        })
    }

    /// The end of WAL that is unbroken from segment `from`, and the first missing
    /// segment (if the run stops before the newest archived WAL).
    pub fn unbroken_from(&self, from: u64, seg: WalSegmentSize) -> (Lsn, Option<u64>) {
        let mut next = from;
        while self.complete.contains(&next) {
            next += 1;
        }
        let newest = self.complete.last().copied().map_or(0, |t| t + 1);
        match (&self.partial, self.tails.get(&next)) {
            (Some((p, end, _)), _) if *p == next => (*end, None),
            // The tail before a gap: the WAL stops within this segment.
            (_, Some((end, _))) => (*end, Some(next)),
            _ => {
                let end = Lsn(next * seg.bytes());
                let later_partial = self.partial.as_ref().is_some_and(|(p, _, _)| *p > next);
                let gap = (next < newest || later_partial).then_some(next);
                (end, gap)
            }
        }
    }

    /// The object holding segment `segno`: the complete segment, else its partial tail.
    pub fn key_of(&self, segno: u64, seg: WalSegmentSize) -> Option<String> {
        if self.complete.contains(&segno) {
            return Some(layout::wal_segment_key(
                SegmentName::new(self.timeline, segno),
                seg,
            ));
        }
        self.tails.get(&segno).map(|(_, key)| key.clone())
    }

    /// The objects of segments `from ..= to` that the repository holds, oldest first.
    pub fn keys(&self, from: u64, to: u64, seg: WalSegmentSize) -> Vec<(u64, String)> {
        let mut segnos: BTreeSet<u64> = self.complete.range(from..=to).copied().collect();
        segnos.extend(self.tails.range(from..=to).map(|(s, _)| *s));
        segnos
            .into_iter()
            .filter_map(|s| self.key_of(s, seg).map(|k| (s, k)))
            .collect()
    }
}

/// The WAL summaries of `keys` (segment number and object key), in order; `None` for an
/// object stored without one (unknown ground).
pub async fn summaries(
    repo: &Repository,
    keys: Vec<(u64, String)>,
) -> Result<Vec<(u64, Option<WalSummary>)>, RepoError> {
    futures::stream::iter(keys)
        .map(|(segno, key)| async move {
            let head = repo.head(&key).await?;
            Ok::<_, RepoError>((
                segno,
                head.and_then(|h| WalSummary::from_metadata(&h.metadata)),
            ))
        })
        .buffered(SUMMARY_READS)
        .try_collect()
        .await
}

/// Where the last whole record that ends at or before `end` starts, read from the WAL of
/// `wal` (the object holding `end`'s segment, else the one before when no record starts
/// in it): what `recovery_target_lsn` must name for recovery to stop at the end of the
/// archive rather than run out of WAL. `None` when no whole record is found.
pub async fn last_record_start(
    repo: &Repository,
    wal: &ArchivedWal,
    seg: WalSegmentSize,
    end: Lsn,
) -> Result<Option<Lsn>, RepoError> {
    let last = Lsn(end.0.saturating_sub(1)).segment_number(seg);
    for segno in (last.saturating_sub(1)..=last).rev() {
        let Some(key) = wal.key_of(segno, seg) else {
            continue;
        };
        let scratch = tempfile::tempdir().map_err(|source| RepoError::Local {
            path: std::env::temp_dir(),
            source,
        })?;
        let path = scratch.path().join("segment");
        repo.fetch_verified(&key, &path).await?;
        let bytes = std::fs::read(&path).map_err(|source| RepoError::Local {
            path: path.clone(),
            source,
        })?;
        let start = SegmentName::new(wal.timeline, segno).start_lsn(seg);
        let mut decoder = WalDecoder::new(start, seg);
        decoder.feed(&bytes);
        let mut found = None;
        while let Ok(Some(record)) = decoder.next_record() {
            if record.end <= end {
                found = Some(record.start);
            }
        }
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}
