//! `tidemark wal-fetch %f %p`: serve one WAL file to PostgreSQL's `restore_command`.
//!
//! Starts from "assume the file will not be found": `NotFound` only when the repository
//! truly has neither the segment nor a partial of it (PostgreSQL then ends recovery or, in
//! standby mode, retries). Every other failure is retried within a budget — the read
//! policy of a repository opened with `Repository::open_for_reads`, which covers opening
//! it and reading its identity too — and then reported as an error, which the binary turns
//! into a fatal exit status (DESIGN invariant 6). What reaches `%p` is verified (CRC-32 and size) and appears atomically;
//! a partial segment is zero-padded to `wal_segment_size`.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use tidemark_protocol::{SegmentName, TimelineId, WalSegmentSize};
use tidemark_store::layout;
use tidemark_store::repository::{RepoError, Repository};
use tidemark_store::storage::StorageError;

/// What PostgreSQL asked for (`%f`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalRequest {
    Segment(SegmentName),
    History(TimelineId),
}

impl WalRequest {
    /// Parse `%f`. `None` for names tidemark never stores (`.partial`, `.backup`, junk):
    /// those are simply not in the repository.
    pub fn parse(file_name: &str, seg: WalSegmentSize) -> Option<WalRequest> {
        if let Some(tli) = file_name.strip_suffix(".history") {
            return TimelineId::from_hex(tli).ok().map(WalRequest::History);
        }
        SegmentName::parse(file_name, seg)
            .ok()
            .map(WalRequest::Segment)
    }
}

/// What `wal_fetch` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// `%p` holds the file. `partial`: it was a partial segment, zero-padded.
    Restored { source: String, partial: bool },
    /// The repository does not have it.
    NotFound,
}

/// A fetch that failed for a reason other than absence, after the repository's retries.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot fetch {file} from the repository")]
    Repository {
        file: String,
        #[source]
        source: RepoError,
    },
}

/// Fetch `file_name` into `dst` from the repository (whose read policy retries failures
/// other than absence). The prefetch cache is consulted before this, by
/// [`crate::prefetch::Cache::take`], without opening the repository.
pub async fn wal_fetch(
    repo: &Repository,
    seg: WalSegmentSize,
    file_name: &str,
    dst: &Path,
) -> Result<FetchOutcome, FetchError> {
    let Some(request) = WalRequest::parse(file_name, seg) else {
        return Ok(FetchOutcome::NotFound);
    };
    let result = match request {
        WalRequest::History(tli) => fetch_key(repo, &layout::history_key(tli), dst, None).await,
        WalRequest::Segment(name) => fetch_segment(repo, name, seg, dst).await,
    };
    result.map_err(|source| FetchError::Repository {
        file: file_name.to_string(),
        source,
    })
}

/// The complete segment if archived, else its newest partial, zero-padded.
async fn fetch_segment(
    repo: &Repository,
    name: SegmentName,
    seg: WalSegmentSize,
    dst: &Path,
) -> Result<FetchOutcome, RepoError> {
    match fetch_key(repo, &layout::wal_segment_key(name, seg), dst, None).await? {
        FetchOutcome::NotFound => {
            fetch_key(
                repo,
                &layout::wal_partial_key(name, seg),
                dst,
                Some(seg.bytes()),
            )
            .await
        }
        found => Ok(found),
    }
}

/// Fetch `key` verified into `dst`; with `pad_to`, zero-extend it to that size before it
/// appears at `dst`.
async fn fetch_key(
    repo: &Repository,
    key: &str,
    dst: &Path,
    pad_to: Option<u64>,
) -> Result<FetchOutcome, RepoError> {
    let staged = match pad_to {
        None => dst.to_path_buf(),
        Some(_) => staging_path(dst),
    };
    match repo.fetch_verified(key, &staged).await {
        Ok(_) => {}
        Err(RepoError::Storage {
            source: StorageError::NotFound { .. },
            ..
        }) => return Ok(FetchOutcome::NotFound),
        Err(e) => return Err(e),
    }
    if let Some(size) = pad_to {
        let padded = OpenOptions::new()
            .write(true)
            .open(&staged)
            .and_then(|f| {
                f.set_len(size)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&staged, dst));
        if let Err(source) = padded {
            let _ = std::fs::remove_file(&staged);
            return Err(RepoError::Local {
                path: dst.to_path_buf(),
                source,
            });
        }
    }
    Ok(FetchOutcome::Restored {
        source: key.to_string(),
        partial: pad_to.is_some(),
    })
}

/// A name beside `dst` for a file that is not ready to be seen at `dst` yet.
fn staging_path(dst: &Path) -> PathBuf {
    let mut name = dst.file_name().unwrap_or_default().to_os_string();
    name.push(".tidemark-partial");
    dst.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_postgres_asks_for() {
        let seg = WalSegmentSize::new(16 << 20).unwrap();
        assert_eq!(
            WalRequest::parse("000000020000000100000003", seg),
            Some(WalRequest::Segment(SegmentName::new(TimelineId(2), 0x103)))
        );
        assert_eq!(
            WalRequest::parse("0000000A.history", seg),
            Some(WalRequest::History(TimelineId(10)))
        );
        for other in [
            "000000010000000000000003.partial",
            "000000010000000000000003.00000028.backup",
            "00000000.history",
            "RECOVERYXLOG",
            "../../etc/passwd",
        ] {
            assert_eq!(WalRequest::parse(other, seg), None, "{other}");
        }
    }
}
