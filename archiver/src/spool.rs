//! The durable local spool: WAL received from the server is written here before it is
//! compressed and uploaded.
//!
//! Layout of the spool directory:
//! - `<SEGNAME>.partial` — the segment being received, written contiguously from the
//!   segment's first byte (streaming always starts at a segment boundary);
//! - `<SEGNAME>` — a complete segment, fsync'd and renamed, waiting for upload; removed
//!   once it is stored in the repository and recorded in the catalog.
//!
//! After a crash, complete files are trusted (they were fsync'd before the rename) and
//! uploaded first; a `.partial` file is discarded and streamed again from the server,
//! which still holds it because the slot was never acknowledged past it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tidemark_protocol::{Lsn, SegmentName, TimelineId, WalSegmentSize};

const PARTIAL_SUFFIX: &str = ".partial";

/// Spool I/O failure, with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("spool file {path}: {source}")]
pub struct SpoolError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError {
        path: path.to_path_buf(),
        source,
    }
}

/// A complete segment sitting in the spool, ready for upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledSegment {
    pub name: SegmentName,
    pub path: PathBuf,
}

/// A read-only view of the received prefix of the current segment, for partial uploads.
#[derive(Debug)]
pub struct PartialSnapshot {
    pub name: SegmentName,
    /// An independent handle: the spool may finish and rename the file meanwhile.
    pub file: File,
    /// Where the file was when the snapshot was taken (its directory takes temp files).
    pub path: PathBuf,
    /// Bytes valid from the segment's start.
    pub len: u64,
}

#[derive(Debug)]
struct Current {
    name: SegmentName,
    path: PathBuf,
    file: File,
    written: u64,
}

/// The spool directory and the segment being received.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    seg: WalSegmentSize,
    current: Option<Current>,
}

impl Spool {
    /// Open (creating) the spool directory. Leftover `.partial` files are removed; the
    /// complete segments left by an earlier run are returned, oldest first.
    pub fn open(
        dir: &Path,
        seg: WalSegmentSize,
    ) -> Result<(Spool, Vec<SpooledSegment>), SpoolError> {
        fs::create_dir_all(dir).map_err(at(dir))?;
        let mut leftovers = Vec::new();
        for entry in fs::read_dir(dir).map_err(at(dir))? {
            let entry = entry.map_err(at(dir))?;
            let path = entry.path();
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(stem) = file_name.strip_suffix(PARTIAL_SUFFIX) {
                if SegmentName::parse(stem, seg).is_ok() {
                    tracing::info!(file = %path.display(), "discarding incomplete spooled segment; it will be streamed again");
                    fs::remove_file(&path).map_err(at(&path))?;
                }
            } else if let Ok(name) = SegmentName::parse(file_name, seg) {
                let len = entry.metadata().map_err(at(&path))?.len();
                if len == seg.bytes() {
                    leftovers.push(SpooledSegment { name, path });
                } else {
                    // Never produced by this spool; do not guess, but do not upload it either.
                    tracing::warn!(file = %path.display(), len, "ignoring spool file of the wrong size");
                }
            }
        }
        leftovers.sort_by_key(|s| s.name);
        let spool = Spool {
            dir: dir.to_path_buf(),
            seg,
            current: None,
        };
        Ok((spool, leftovers))
    }

    /// The LSN the next received byte must have, if a segment is open.
    pub fn position(&self) -> Option<Lsn> {
        self.current
            .as_ref()
            .map(|c| c.name.start_lsn(self.seg) + c.written)
    }

    /// Begin receiving at `start`, which must be a segment boundary, on `timeline`.
    /// Any segment being received is discarded.
    pub fn begin(&mut self, timeline: TimelineId, start: Lsn) -> Result<(), SpoolError> {
        debug_assert_eq!(start.segment_offset(self.seg), 0);
        self.discard_current()?;
        self.open_segment(SegmentName::containing(timeline, start, self.seg))
    }

    fn open_segment(&mut self, name: SegmentName) -> Result<(), SpoolError> {
        let path = self
            .dir
            .join(format!("{}{PARTIAL_SUFFIX}", name.file_name(self.seg)));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(at(&path))?;
        self.current = Some(Current {
            name,
            path,
            file,
            written: 0,
        });
        Ok(())
    }

    fn discard_current(&mut self) -> Result<(), SpoolError> {
        if let Some(cur) = self.current.take() {
            drop(cur.file);
            match fs::remove_file(&cur.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(at(&cur.path)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Append `data`, which the server says starts at `wal_start`. Returns the segments
    /// this completed, fsync'd and renamed. `wal_start` must be exactly the current
    /// position: the spool never leaves a gap nor writes a byte twice.
    pub fn append(
        &mut self,
        wal_start: Lsn,
        mut data: &[u8],
    ) -> Result<Vec<SpooledSegment>, AppendError> {
        let mut done = Vec::new();
        let expected = self.position().ok_or(AppendError::NotStarted)?;
        if wal_start != expected {
            return Err(AppendError::Discontinuity {
                expected,
                got: wal_start,
            });
        }
        while !data.is_empty() {
            let seg_bytes = self.seg.bytes();
            let cur = self.current.as_mut().ok_or(AppendError::NotStarted)?;
            let room = (seg_bytes - cur.written) as usize;
            let (now, rest) = data.split_at(room.min(data.len()));
            cur.file
                .write_all_at(now, cur.written)
                .map_err(at(&cur.path))?;
            cur.written += now.len() as u64;
            data = rest;
            if cur.written == seg_bytes {
                done.push(self.finish_current()?);
            }
        }
        Ok(done)
    }

    /// fsync and rename the full current segment, then open the next one.
    fn finish_current(&mut self) -> Result<SpooledSegment, SpoolError> {
        let cur = self.current.take().ok_or_else(|| SpoolError {
            path: self.dir.clone(),
            source: io::Error::other("no segment is being received"),
        })?;
        cur.file.sync_all().map_err(at(&cur.path))?;
        let path = self.dir.join(cur.name.file_name(self.seg));
        fs::rename(&cur.path, &path).map_err(at(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(at(&self.dir))?;
        self.open_segment(cur.name.next())?;
        Ok(SpooledSegment {
            name: cur.name,
            path,
        })
    }

    /// The received prefix of the current segment, when it holds any bytes.
    pub fn snapshot(&self) -> Result<Option<PartialSnapshot>, SpoolError> {
        let Some(cur) = self.current.as_ref().filter(|c| c.written > 0) else {
            return Ok(None);
        };
        Ok(Some(PartialSnapshot {
            name: cur.name,
            file: cur.file.try_clone().map_err(at(&cur.path))?,
            path: cur.path.clone(),
            len: cur.written,
        }))
    }

    /// Remove an uploaded segment's file.
    pub fn remove(segment: &SpooledSegment) -> Result<(), SpoolError> {
        fs::remove_file(&segment.path).map_err(at(&segment.path))
    }
}

/// Why received WAL could not be appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Data arrived before streaming began (a bug, never server input).
    #[error("WAL data arrived before the spool was positioned")]
    NotStarted,
    /// The server sent WAL that does not continue what was received.
    #[error("WAL stream jumped from {expected} to {got}; refusing to leave a gap or overlap")]
    Discontinuity { expected: Lsn, got: Lsn },
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(1 << 20).unwrap()
    }

    #[test]
    fn appends_across_segments_and_completes_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, left) = Spool::open(dir.path(), seg()).unwrap();
        assert!(left.is_empty());
        let start = Lsn(3 << 20);
        spool.begin(TimelineId(1), start).unwrap();
        let data: Vec<u8> = (0..(1 << 20) + 1000).map(|i| (i % 251) as u8).collect();
        let (a, b) = data.split_at(700_000);
        assert!(spool.append(start, a).unwrap().is_empty());
        let done = spool.append(start + 700_000, b).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].name, SegmentName::new(TimelineId(1), 3));
        assert_eq!(fs::read(&done[0].path).unwrap(), &data[..1 << 20]);
        assert_eq!(spool.position(), Some(start + data.len() as u64));
        let snap = spool.snapshot().unwrap().unwrap();
        assert_eq!((snap.name.segno, snap.len), (4, 1000));
    }

    #[test]
    fn refuses_gaps_and_overlaps() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), seg()).unwrap();
        assert!(matches!(
            spool.append(Lsn(0), b"x"),
            Err(AppendError::NotStarted)
        ));
        spool.begin(TimelineId(1), Lsn(1 << 20)).unwrap();
        spool.append(Lsn(1 << 20), b"abc").unwrap();
        for bad in [Lsn((1 << 20) + 2), Lsn((1 << 20) + 4)] {
            assert!(matches!(
                spool.append(bad, b"d"),
                Err(AppendError::Discontinuity { .. })
            ));
        }
    }

    #[test]
    fn reopening_keeps_complete_segments_and_drops_partial_ones() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(dir.path(), seg()).unwrap();
            spool.begin(TimelineId(2), Lsn(0)).unwrap();
            spool.append(Lsn(0), &vec![7u8; (1 << 20) + 5]).unwrap();
        }
        fs::write(dir.path().join("000000020000000000000009"), b"short").unwrap();
        let (_spool, left) = Spool::open(dir.path(), seg()).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].name, SegmentName::new(TimelineId(2), 0));
        assert!(!dir.path().join("000000020000000000000001.partial").exists());
    }
}
