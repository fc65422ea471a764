//! The prefetch cache beside a recovering cluster, so that replay never waits on the
//! network: after serving segment N, `wal-fetch` starts a detached filler that fetches the
//! next segments into the cache.
//!
//! Its place is `pg_wal/.tidemark-prefetch`: on `pg_wal`'s filesystem (often not the data
//! directory's: `pg_wal` may be a symlink), so an entry is moved to `%p` by a rename (a
//! copy when another `--prefetch-dir` is on another filesystem), and outside what a base
//! backup sends (BASE_BACKUP sends `pg_wal` empty). `recovery_end_command` removes it
//! ([`Cache::remove`]). Only `wal-fetch` creates the directory, so a filler that outlives
//! the removal fails its next write and stops.
//!
//! Entries are complete segments only (never partials, which can grow), named
//! `<SEGNAME>.<crc32>` with the CRC-32 of their bytes as verified against the repository,
//! written under a temporary name and renamed. Before an entry is served its size and
//! CRC are checked again, so the cache can never serve a wrong, torn or stale file: a
//! segment name always denotes the same bytes (the repository never replaces a complete
//! segment), and a damaged entry is deleted and fetched from the repository instead.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use tidemark_protocol::{SegmentName, WalSegmentSize};
use tidemark_store::layout;
use tidemark_store::repository::{RepoError, Repository};
use tidemark_store::storage::StorageError;

const LOCK_FILE: &str = ".lock";
const TMP_SUFFIX: &str = ".tmp";

/// A prefetch cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// Why filling the cache stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PrefetchError {
    #[error("prefetch cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Repository(#[from] RepoError),
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn describe(&self) -> String {
        format!("prefetch cache {}", self.dir.display())
    }

    fn entry(&self, file_name: &str, crc: u32) -> PathBuf {
        self.dir.join(format!("{file_name}.{crc:08x}"))
    }

    /// Cached entries for the segment file `file_name` (normally zero or one).
    fn entries(&self, file_name: &str) -> Vec<(PathBuf, Option<u32>)> {
        let prefix = format!("{file_name}.");
        let Ok(read) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        read.flatten()
            .filter_map(|e| {
                let file = e.file_name().into_string().ok()?;
                let rest = file.strip_prefix(&prefix)?;
                let crc = (rest.len() == 8)
                    .then(|| u32::from_str_radix(rest, 16).ok())
                    .flatten();
                Some((e.path(), crc))
            })
            .collect()
    }

    /// Move a verified cached copy of the segment file `file_name` to `dst`. False when
    /// there is none; a cached copy that fails verification is deleted (and false
    /// returned). Needs no repository access: a prefetched segment costs no round trip.
    pub fn take(&self, file_name: &str, dst: &Path) -> bool {
        if !SegmentName::is_file_name(file_name) {
            return false;
        }
        for (path, crc) in self.entries(file_name) {
            let good = match crc {
                Some(crc) => matches!(checksum(&path), Ok(c) if c == crc),
                None => false,
            };
            if good && move_to(&path, dst).is_ok() {
                return true;
            }
            tracing::warn!(entry = %path.display(), "discarding a prefetched segment that failed verification");
            let _ = fs::remove_file(&path);
        }
        false
    }

    /// Create the cache directory (before a filler is started for it).
    pub fn create(&self) -> io::Result<()> {
        fs::create_dir_all(&self.dir)
    }

    /// Remove the cache directory and everything in it; false when there was none. A
    /// filler still running is not waited for (recovery's end must not wait on the
    /// network): it cannot create the directory again, only fail its next write there,
    /// and what it adds meanwhile is removed by trying again.
    pub fn remove(&self) -> io::Result<bool> {
        let mut tries = 0;
        loop {
            match fs::remove_dir_all(&self.dir) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(tries > 0),
                Err(_) if tries < 5 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fetch up to `count` complete segments after `after` that are not cached yet,
    /// stopping at the first one the repository lacks; drop entries at or before `after`.
    /// Returns how many were fetched. Only one filler runs at a time: if another holds
    /// the lock this returns at once. The directory must exist ([`Cache::create`]).
    pub async fn fill(
        &self,
        repo: &Repository,
        after: SegmentName,
        seg: WalSegmentSize,
        count: u32,
    ) -> Result<u32, PrefetchError> {
        let io_err = |source| PrefetchError::Io {
            path: self.dir.clone(),
            source,
        };
        let Some(_lock) = Lock::try_acquire(&self.dir.join(LOCK_FILE)).map_err(io_err)? else {
            return Ok(0);
        };
        self.drop_up_to(after, seg);
        let mut fetched = 0;
        let mut name = after;
        for _ in 0..count {
            name = name.next();
            let file_name = name.file_name(seg);
            if !self.entries(&file_name).is_empty() {
                continue;
            }
            let tmp = self.dir.join(format!("{file_name}{TMP_SUFFIX}"));
            let sealed = match repo
                .fetch_verified(&layout::wal_segment_key(name, seg), &tmp)
                .await
            {
                Ok(sealed) => sealed,
                Err(RepoError::Storage {
                    source: StorageError::NotFound { .. },
                    ..
                }) => break,
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(e.into());
                }
            };
            fs::rename(&tmp, self.entry(&file_name, sealed.crc32)).map_err(io_err)?;
            fetched += 1;
        }
        Ok(fetched)
    }

    /// Remove entries of segments at or before `upto` on its timeline: consumed or
    /// skipped, they will not be asked for again.
    fn drop_up_to(&self, upto: SegmentName, seg: WalSegmentSize) {
        let Ok(read) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in read.flatten() {
            let file = e.file_name();
            let Some(stem) = file.to_str().and_then(|f| f.get(..24)) else {
                continue;
            };
            if let Ok(name) = SegmentName::parse(stem, seg) {
                if name.timeline == upto.timeline && name.segno <= upto.segno {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Move the verified entry `path` to `dst`: a rename, or where they are on different
/// filesystems a durable copy (temp, fsync, rename) and then the entry's removal.
fn move_to(path: &Path, dst: &Path) -> io::Result<()> {
    match fs::rename(path, dst) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            tidemark_store::crashsafe::write_durably(
                dst,
                tidemark_store::crashsafe::Publish::Replace,
                |out| io::copy(&mut File::open(path)?, out),
            )?;
            fs::remove_file(path)
        }
        moved => moved,
    }
}

/// CRC-32 of the file at `path`.
fn checksum(path: &Path) -> io::Result<u32> {
    let mut file = File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(hasher.finalize()),
            n => hasher.update(&buf[..n]),
        }
    }
}

/// An exclusive `flock` held until dropped.
struct Lock(File);

impl Lock {
    fn try_acquire(path: &Path) -> io::Result<Option<Lock>> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(Lock(file)));
        }
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(err)
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: as above; unlocking an fd we still own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_protocol::TimelineId;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(1 << 20).unwrap()
    }

    #[test]
    fn serves_only_verified_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        fs::create_dir_all(dir.path().join("cache")).unwrap();
        let name = SegmentName::new(TimelineId(1), 7).file_name(seg());
        let data = vec![9u8; 1 << 20];
        let dst = dir.path().join("RECOVERYXLOG");

        // Nothing cached; names that are not segments are never looked up.
        assert!(!cache.take(&name, &dst));
        assert!(!cache.take("../x", &dst));
        // A good entry is moved into place.
        fs::write(cache.entry(&name, crc32fast::hash(&data)), &data).unwrap();
        assert!(cache.take(&name, &dst));
        assert_eq!(fs::read(&dst).unwrap(), data);
        assert!(cache.entries(&name).is_empty());
        // A damaged entry (wrong bytes for its CRC) and an unnamed one are deleted, not served.
        let mut bad = data.clone();
        bad[100] ^= 1;
        fs::write(cache.entry(&name, crc32fast::hash(&data)), &bad).unwrap();
        fs::write(cache.dir.join(format!("{name}.tmp")), &data).unwrap();
        fs::remove_file(&dst).unwrap();
        assert!(!cache.take(&name, &dst));
        assert!(!dst.exists());
        assert!(cache.entries(&name).is_empty());
    }

    #[test]
    fn an_entry_on_another_filesystem_is_copied_into_place() {
        use std::os::unix::fs::MetadataExt;
        let Ok(elsewhere) = tempfile::tempdir_in("/dev/shm") else {
            return; // no second filesystem on this machine
        };
        let here = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let dev = |p: &Path| fs::metadata(p).unwrap().dev();
        if dev(elsewhere.path()) == dev(here.path()) {
            return;
        }
        let cache = Cache::new(elsewhere.path());
        let name = SegmentName::new(TimelineId(1), 7).file_name(seg());
        let data = vec![5u8; 1 << 20];
        fs::write(cache.entry(&name, crc32fast::hash(&data)), &data).unwrap();
        let dst = here.path().join("RECOVERYXLOG");
        assert!(cache.take(&name, &dst));
        assert_eq!(fs::read(&dst).unwrap(), data);
        assert!(
            cache.entries(&name).is_empty(),
            "the entry was moved, not left"
        );
    }

    #[test]
    fn removal_takes_everything_and_a_missing_cache_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        assert!(!cache.remove().unwrap());
        cache.create().unwrap();
        fs::write(cache.dir.join("000000010000000000000003.00000000"), b"x").unwrap();
        assert!(cache.remove().unwrap());
        assert!(!cache.dir.exists());
    }

    #[test]
    fn only_one_filler_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join(LOCK_FILE);
        let first = Lock::try_acquire(&lock).unwrap();
        assert!(first.is_some());
        assert!(Lock::try_acquire(&lock).unwrap().is_none());
        drop(first);
        assert!(Lock::try_acquire(&lock).unwrap().is_some());
    }

    #[test]
    fn drops_consumed_entries_of_the_same_timeline_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        for (tli, segno) in [(1, 3), (1, 4), (1, 5), (2, 3)] {
            let name = SegmentName::new(TimelineId(tli), segno).file_name(seg());
            fs::write(cache.entry(&name, 0), b"x").unwrap();
        }
        cache.drop_up_to(SegmentName::new(TimelineId(1), 4), seg());
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap()[..24].to_string())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["000000010000000000000005", "000000020000000000000003"]
        );
    }
}
