//! `reindex`: rebuild the catalog from the repository alone (DESIGN invariant 2) — the
//! WAL index from a listing of `wal/` and each object's metadata, and application-bucket
//! history from the pass records under `objects/`.

use chrono::Utc;
use futures::stream::{self, StreamExt, TryStreamExt};
use tidemark_protocol::WalSegmentSize;

use crate::catalog::{Catalog, CatalogError, SegmentRecord};
use crate::layout::{self, WAL_PREFIX};
use crate::meta;
use crate::repository::{RepoError, Repository};
use crate::storage::ObjectInfo;
use crate::wal_summary::WalSummary;

/// Metadata lookups running at once.
const PARALLEL_HEADS: usize = 16;

/// What `reindex` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReindexSummary {
    pub segments: usize,
    pub partials: usize,
    /// Keys under `wal/` that are not tidemark WAL objects or lack their metadata.
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    #[error(transparent)]
    Repository(#[from] RepoError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Replace the catalog's WAL index with what the repository holds.
pub async fn reindex_wal(
    repo: &Repository,
    catalog: &Catalog,
    seg: WalSegmentSize,
) -> Result<ReindexSummary, ReindexError> {
    let listing = repo.list(WAL_PREFIX).await?;
    let mut summary = ReindexSummary::default();
    let mut wal = Vec::new();
    for info in listing {
        match layout::parse_wal_key(&info.key, seg) {
            Some(key) => wal.push((key, info)),
            None if info.key.ends_with(".history") || info.key.ends_with(".complete") => {}
            None => summary.skipped.push(info.key),
        }
    }
    let looked_up: Vec<_> = stream::iter(wal)
        .map(|(key, info)| async move { record(repo, key, info, seg).await })
        .buffered(PARALLEL_HEADS)
        .try_collect()
        .await?;
    let mut records = Vec::with_capacity(looked_up.len());
    for found in looked_up {
        match found {
            Ok(rec) => {
                if rec.partial {
                    summary.partials += 1;
                } else {
                    summary.segments += 1;
                }
                records.push(rec);
            }
            Err(key) => summary.skipped.push(key),
        }
    }
    catalog.replace_segments(&records)?;
    Ok(summary)
}

/// Replace the catalog's application-bucket history with the repository's pass records;
/// returns how many records were loaded.
pub async fn reindex_objects(
    repo: &Repository,
    catalog: &mut Catalog,
) -> Result<usize, ReindexError> {
    let passes = crate::objects::load_passes(repo, None).await?;
    catalog.clear_object_history()?;
    for pass in &passes {
        catalog.record_pass(pass)?;
    }
    Ok(passes.len())
}

/// The catalog row for one WAL object, or `Err(key)` when its metadata is missing or
/// malformed (it was not written by tidemark, or was damaged).
async fn record(
    repo: &Repository,
    key: layout::WalKey,
    info: ObjectInfo,
    seg: WalSegmentSize,
) -> Result<Result<SegmentRecord, String>, RepoError> {
    // Removed since the listing (a superseded partial): not part of the archive.
    let Some(head) = repo.head(&info.key).await? else {
        return Ok(Err(info.key));
    };
    let m = &head.metadata;
    let end_lsn = meta::end_lsn(m);
    let (Some(crc32), Some(raw_size), Some(end_lsn)) = (meta::crc32(m), meta::raw_size(m), end_lsn)
    else {
        tracing::warn!(key = %info.key, "WAL object without tidemark metadata; not indexed");
        return Ok(Err(info.key));
    };
    Ok(Ok(SegmentRecord {
        name: key.name,
        partial: key.partial,
        start_lsn: key.name.start_lsn(seg),
        end_lsn,
        raw_size,
        stored_size: head.info.size,
        crc32,
        key: info.key,
        summary: WalSummary::from_metadata(m),
        archived_at: head
            .info
            .last_modified
            .or(info.last_modified)
            .unwrap_or_else(Utc::now),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Metadata;
    use crate::url::RepoUrl;
    use tidemark_protocol::{SegmentName, TimelineId};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rebuilds_the_wal_index_from_the_repository_alone() {
        let dir = tempfile::tempdir().unwrap();
        let seg = WalSegmentSize::new(1 << 20).unwrap();
        let url: RepoUrl = format!("file://{}/repo", dir.path().display())
            .parse()
            .unwrap();
        let repo = Repository::create(&url, &Default::default()).await.unwrap();
        let spool = dir.path().join("seg");
        let mut expected = Vec::new();
        for segno in [3u64, 4, 5] {
            std::fs::write(&spool, vec![segno as u8; 1 << 20]).unwrap();
            let name = SegmentName::new(TimelineId(1), segno);
            let a = repo
                .archive_segment(name, seg, &spool, 1, Metadata::new())
                .await
                .unwrap();
            expected.push((a.key, false, a.sealed.crc32, name.end_lsn(seg)));
        }
        let name = SegmentName::new(TimelineId(1), 6);
        let file = std::fs::File::open(&spool).unwrap();
        let a = repo
            .archive_partial(name, seg, &file, &spool, 1000, 1, Metadata::new())
            .await
            .unwrap()
            .expect("stored");
        expected.push((a.key, true, a.sealed.crc32, name.start_lsn(seg) + 1000));
        repo.archive_history(TimelineId(2), b"1\t0/3000000\tx\n")
            .await
            .unwrap();
        // A stray object under wal/ is reported, not indexed.
        repo.storage
            .put(
                "wal/README",
                crate::storage::Body::Bytes("hi".into()),
                &Metadata::new(),
            )
            .await
            .unwrap();

        let catalog = Catalog::open(&dir.path().join("c.db")).unwrap();
        let summary = reindex_wal(&repo, &catalog, seg).await.unwrap();
        assert_eq!((summary.segments, summary.partials), (3, 1));
        assert_eq!(summary.skipped, vec!["wal/README".to_string()]);
        let got: Vec<_> = catalog
            .segments()
            .unwrap()
            .into_iter()
            .map(|r| (r.key, r.partial, r.crc32, r.end_lsn))
            .collect();
        assert_eq!(got, expected);
        // Running it again gives the same index, not duplicates.
        reindex_wal(&repo, &catalog, seg).await.unwrap();
        assert_eq!(catalog.segments().unwrap().len(), 4);
    }
}
