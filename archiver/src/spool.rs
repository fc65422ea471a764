//! The durable local spool: WAL received from the server is written here before it is
//! compressed and uploaded.
//!
//! Layout of the spool directory:
//! - `<SEGNAME>.partial` — the segment being received, written contiguously from the
//!   segment's first byte (streaming always starts at a segment boundary);
//! - `<SEGNAME>` — a complete segment, fsync'd and renamed, waiting for upload; removed
//!   once it is stored in the repository and recorded in the catalog.
//!
//! Received bytes are gathered in memory and written in large pieces ([`WRITE_BATCH`],
//! or sooner when [`Spool::write_out`] is called: the archiver does so before it waits
//! for more from the server), not one write per message. Anything that reads the file
//! (a partial snapshot, fsync, finishing a segment) writes out first.
//!
//! After a crash, complete files are trusted (they were fsync'd before the rename) and
//! uploaded first; a `.partial` file is handed back too, so that its valid prefix reaches
//! the repository even when the server that sent it is gone (it is fsync'd whenever the
//! connection ends or the archiver stops on an error).
//!
//! The directory is `0700` and its files `0600`: they hold raw WAL.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tidemark_protocol::{Lsn, SegmentName, TimelineId, WalSegmentSize};
use tidemark_store::crashsafe;

const PARTIAL_SUFFIX: &str = ".partial";
/// Received bytes gathered before they are written to the segment's file.
const WRITE_BATCH: usize = 1 << 20;

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
    /// Bytes in the file, from the segment's start.
    written: u64,
    /// Received bytes that follow them, not yet written.
    pending: Vec<u8>,
}

impl Current {
    fn received(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Write the pending bytes. On an error they stay pending (and are written again
    /// whole, at the same offset, by the next call).
    fn write_out(&mut self) -> Result<(), SpoolError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(&self.pending, self.written)
            .map_err(at(&self.path))?;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }
}

/// The spool directory and the segment being received.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    seg: WalSegmentSize,
    current: Option<Current>,
    /// The segment to create when the next byte arrives (none is open).
    next: Option<SegmentName>,
}

impl Spool {
    /// Open (creating, `0700`) the spool directory and prove it writable. Returns what an
    /// earlier run left: complete segments, oldest first, and the segment it was receiving.
    pub fn open(dir: &Path, seg: WalSegmentSize) -> Result<(Spool, Leftovers), SpoolError> {
        crashsafe::create_private_dir(dir).map_err(at(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(crashsafe::PRIVATE_DIR_MODE))
            .map_err(at(dir))?;
        probe(dir)?;
        let mut left = Leftovers::default();
        for entry in fs::read_dir(dir).map_err(at(dir))? {
            let entry = entry.map_err(at(dir))?;
            let path = entry.path();
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let len = entry.metadata().map_err(at(&path))?.len();
            if let Some(stem) = file_name.strip_suffix(PARTIAL_SUFFIX) {
                if let Ok(name) = SegmentName::parse(stem, seg) {
                    let found = LeftoverPartial { name, path, len };
                    // Only one segment is received at a time; an older one is stale.
                    match &left.partial {
                        Some(p) if p.name > found.name => remove(&found.path)?,
                        Some(p) => {
                            remove(&p.path)?;
                            left.partial = Some(found);
                        }
                        None => left.partial = Some(found),
                    }
                }
            } else if let Ok(name) = SegmentName::parse(file_name, seg) {
                if len == seg.bytes() {
                    left.complete.push(SpooledSegment { name, path });
                } else {
                    // Never produced by this spool; do not guess, but do not upload it either.
                    tracing::warn!(file = %path.display(), len, "ignoring spool file of the wrong size");
                }
            }
        }
        left.complete.sort_by_key(|s| s.name);
        let spool = Spool {
            dir: dir.to_path_buf(),
            seg,
            current: None,
            next: None,
        };
        Ok((spool, left))
    }

    /// The LSN the next received byte must have, once streaming began.
    pub fn position(&self) -> Option<Lsn> {
        match (&self.current, self.next) {
            (Some(c), _) => Some(c.name.start_lsn(self.seg) + c.received()),
            (None, Some(next)) => Some(next.start_lsn(self.seg)),
            (None, None) => None,
        }
    }

    /// Begin receiving at `start`, which must be a segment boundary, on `timeline`.
    /// Any segment being received is discarded.
    pub fn begin(&mut self, timeline: TimelineId, start: Lsn) -> Result<(), SpoolError> {
        debug_assert_eq!(start.segment_offset(self.seg), 0);
        self.discard_current()?;
        self.next = Some(SegmentName::containing(timeline, start, self.seg));
        Ok(())
    }

    /// The segment being received, its file created (with its whole size reserved, so
    /// that a full disk shows here rather than halfway through a write) on first use.
    fn receiving(&mut self) -> Result<&mut Current, SpoolError> {
        if self.current.is_none() {
            let name = self.next.ok_or_else(|| SpoolError {
                path: self.dir.clone(),
                source: io::Error::other("no segment is being received"),
            })?;
            let path = self
                .dir
                .join(format!("{}{PARTIAL_SUFFIX}", name.file_name(self.seg)));
            let file = crashsafe::private_file_options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(at(&path))?;
            if let Err(e) = reserve(&file, self.seg.bytes()) {
                remove(&path)?;
                return Err(at(&path)(e));
            }
            self.current = Some(Current {
                name,
                path,
                file,
                written: 0,
                pending: Vec::with_capacity(WRITE_BATCH),
            });
            self.next = None;
        }
        self.current.as_mut().ok_or_else(|| SpoolError {
            path: self.dir.clone(),
            source: io::Error::other("no segment is being received"),
        })
    }

    fn discard_current(&mut self) -> Result<(), SpoolError> {
        self.next = None;
        if let Some(cur) = self.current.take() {
            drop(cur.file);
            remove(&cur.path)?;
        }
        Ok(())
    }

    /// Append `data`, which the server says starts at `wal_start`, pushing the segments
    /// this completes (fsync'd and renamed) onto `done`. `wal_start` must be exactly the
    /// current position: the spool never leaves a gap nor writes a byte twice.
    ///
    /// Bytes are taken into memory and written out by the [`WRITE_BATCH`]. On an error
    /// (a full disk, say) the position says how much of `data` was taken, and calling
    /// again with the rest continues where this stopped.
    pub fn append(
        &mut self,
        wal_start: Lsn,
        mut data: &[u8],
        done: &mut Vec<SpooledSegment>,
    ) -> Result<(), AppendError> {
        let expected = self.position().ok_or(AppendError::NotStarted)?;
        if wal_start != expected {
            return Err(AppendError::Discontinuity {
                expected,
                got: wal_start,
            });
        }
        let seg_bytes = self.seg.bytes();
        loop {
            if self
                .current
                .as_ref()
                .is_some_and(|c| c.received() == seg_bytes)
            {
                self.finish_current(done)?;
            }
            if data.is_empty() {
                return Ok(());
            }
            let cur = self.receiving()?;
            let room = (seg_bytes - cur.received()) as usize;
            let batch_room = WRITE_BATCH.saturating_sub(cur.pending.len()).max(1);
            let (now, rest) = data.split_at(room.min(batch_room).min(data.len()));
            cur.pending.extend_from_slice(now);
            data = rest;
            if cur.pending.len() >= WRITE_BATCH {
                cur.write_out()?;
            }
        }
    }

    /// fsync and rename the full current segment onto `done`; the next one is created
    /// when its first byte arrives.
    fn finish_current(&mut self, done: &mut Vec<SpooledSegment>) -> Result<(), SpoolError> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(());
        };
        cur.write_out()?;
        cur.file.sync_all().map_err(at(&cur.path))?;
        let path = self.dir.join(cur.name.file_name(self.seg));
        fs::rename(&cur.path, &path).map_err(at(&path))?;
        let name = cur.name;
        self.current = None;
        self.next = Some(name.next());
        done.push(SpooledSegment { name, path });
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(at(&self.dir))
    }

    /// Write what was received of the current segment to its file (the archiver calls
    /// this before waiting for the server).
    pub fn write_out(&mut self) -> Result<(), SpoolError> {
        match &mut self.current {
            Some(cur) => cur.write_out(),
            None => Ok(()),
        }
    }

    /// The received prefix of the current segment, when it holds any bytes.
    pub fn snapshot(&mut self) -> Result<Option<PartialSnapshot>, SpoolError> {
        self.write_out()?;
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

    /// fsync what was received of the current segment, so that it survives a crash of
    /// the host as well as of the process.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        match &mut self.current {
            Some(cur) => {
                cur.write_out()?;
                cur.file.sync_data().map_err(at(&cur.path))
            }
            None => Ok(()),
        }
    }

    /// Remove an uploaded segment's file.
    pub fn remove(segment: &SpooledSegment) -> Result<(), SpoolError> {
        remove(&segment.path)
    }
}

/// What an earlier run left in the spool.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Complete segments not yet stored, oldest first.
    pub complete: Vec<SpooledSegment>,
    /// The segment that run was receiving.
    pub partial: Option<LeftoverPartial>,
}

/// The received prefix of a segment, left by an earlier run.
#[derive(Debug)]
pub struct LeftoverPartial {
    pub name: SegmentName,
    pub path: PathBuf,
    pub len: u64,
}

impl LeftoverPartial {
    /// A read-only view for uploading it, of the first `len` bytes.
    pub fn snapshot(&self, len: u64) -> Result<PartialSnapshot, SpoolError> {
        Ok(PartialSnapshot {
            name: self.name,
            file: File::open(&self.path).map_err(at(&self.path))?,
            path: self.path.clone(),
            len,
        })
    }

    /// Remove the file (its bytes are stored, or the server sends them again).
    pub fn remove(self) -> Result<(), SpoolError> {
        remove(&self.path)
    }
}

/// Reserve `len` bytes of disk for `file` without changing its size. Filesystems that
/// cannot (`EOPNOTSUPP`) simply report a full disk later, at a write.
fn reserve(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
    // SAFETY: fallocate on an open descriptor we own; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
        e => Err(e),
    }
}

fn remove(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(at(path)(e)),
        _ => Ok(()),
    }
}

/// Fail now, before a slot exists, if received WAL could not be written (read-only or
/// full disk, wrong owner): write, fsync and remove a small file.
fn probe(dir: &Path) -> Result<(), SpoolError> {
    let path = dir.join(".probe");
    let written = crashsafe::private_file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .and_then(|f| {
            f.write_all_at(&[0u8; 8192], 0)?;
            f.sync_all()
        });
    let removed = remove(&path);
    written.map_err(at(&path))?;
    removed
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
        assert!(left.complete.is_empty() && left.partial.is_none());
        let start = Lsn(3 << 20);
        spool.begin(TimelineId(1), start).unwrap();
        let data: Vec<u8> = (0..(1 << 20) + 1000).map(|i| (i % 251) as u8).collect();
        let (a, b) = data.split_at(700_000);
        let mut done = Vec::new();
        spool.append(start, a, &mut done).unwrap();
        assert!(done.is_empty());
        spool.append(start + 700_000, b, &mut done).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].name, SegmentName::new(TimelineId(1), 3));
        assert_eq!(fs::read(&done[0].path).unwrap(), &data[..1 << 20]);
        assert_eq!(spool.position(), Some(start + data.len() as u64));
        let snap = spool.snapshot().unwrap().unwrap();
        assert_eq!((snap.name.segno, snap.len), (4, 1000));
    }

    #[test]
    fn small_appends_reach_the_file_in_one_write_when_written_out() {
        let dir = tempfile::tempdir().unwrap();
        let seg = WalSegmentSize::new(16 << 20).unwrap();
        let (mut spool, _) = Spool::open(dir.path(), seg).unwrap();
        spool.begin(TimelineId(1), Lsn(16 << 20)).unwrap();
        let mut done = Vec::new();
        for i in 0..100u64 {
            spool
                .append(Lsn((16 << 20) + i * 10), &[i as u8; 10], &mut done)
                .unwrap();
        }
        let file = dir.path().join("000000010000000000000001.partial");
        // Taken (the position moved) but gathered in memory.
        assert_eq!(spool.position(), Some(Lsn((16 << 20) + 1000)));
        assert_eq!(fs::read(&file).unwrap().len(), 0);
        spool.write_out().unwrap();
        let written = fs::read(&file).unwrap();
        assert_eq!(written.len(), 1000);
        assert!(written
            .chunks(10)
            .enumerate()
            .all(|(i, c)| c == [i as u8; 10]));
        // A batch's worth is written without being asked.
        spool
            .append(Lsn((16 << 20) + 1000), &vec![7u8; WRITE_BATCH], &mut done)
            .unwrap();
        assert_eq!(fs::read(&file).unwrap().len(), 1000 + WRITE_BATCH);
        assert!(done.is_empty());
    }

    #[test]
    fn refuses_gaps_and_overlaps() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), seg()).unwrap();
        let mut done = Vec::new();
        assert!(matches!(
            spool.append(Lsn(0), b"x", &mut done),
            Err(AppendError::NotStarted)
        ));
        spool.begin(TimelineId(1), Lsn(1 << 20)).unwrap();
        spool.append(Lsn(1 << 20), b"abc", &mut done).unwrap();
        for bad in [Lsn((1 << 20) + 2), Lsn((1 << 20) + 4)] {
            assert!(matches!(
                spool.append(bad, b"d", &mut done),
                Err(AppendError::Discontinuity { .. })
            ));
        }
    }

    #[test]
    fn reopening_hands_back_complete_segments_and_the_received_prefix() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(dir.path(), seg()).unwrap();
            spool.begin(TimelineId(2), Lsn(0)).unwrap();
            spool
                .append(Lsn(0), &vec![7u8; (1 << 20) + 5], &mut Vec::new())
                .unwrap();
            spool.sync().unwrap();
        }
        fs::write(dir.path().join("000000020000000000000009"), b"short").unwrap();
        // A stale older prefix (never left by one run, but must not win).
        fs::write(dir.path().join("000000020000000000000000.partial"), b"old").unwrap();
        let (_spool, left) = Spool::open(dir.path(), seg()).unwrap();
        assert_eq!(left.complete.len(), 1);
        assert_eq!(left.complete[0].name, SegmentName::new(TimelineId(2), 0));
        let partial = left.partial.expect("the segment being received");
        assert_eq!((partial.name.segno, partial.len), (1, 5));
        assert!(!dir.path().join("000000020000000000000000.partial").exists());
    }

    #[test]
    fn holds_raw_wal_readable_only_by_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let (mut spool, _) = Spool::open(&spool_dir, seg()).unwrap();
        spool.begin(TimelineId(1), Lsn(0)).unwrap();
        let mut done = Vec::new();
        spool
            .append(Lsn(0), &vec![1u8; (1 << 20) + 1], &mut done)
            .unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&spool_dir), 0o700);
        assert_eq!(mode(&done[0].path), 0o600);
        assert_eq!(
            mode(&spool_dir.join("000000010000000000000001.partial")),
            0o600
        );
    }

    #[test]
    fn an_unwritable_spool_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        assert!(Spool::open(&file.join("spool"), seg()).is_err());
    }
}
