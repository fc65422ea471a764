//! WAL bytes from the spool, staged for one archiving attempt. A segment's worth (up to
//! [`IN_MEMORY_MAX`]) is read once into one buffer, which then serves the split-brain
//! check against a stored partial, a one-pass compression and the upload itself: no
//! second read of the spool file, no compressed temp file written and read back. Larger
//! segments (PostgreSQL allows up to 1 GiB) stream from the file in pieces instead, so
//! memory stays bounded whatever the segment size.

use std::fs::File;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::crashsafe;
use crate::envelope::{self, Sealed};
use crate::repository::{local, task_failed, RepoError};
use crate::storage::Body;

/// The largest prefix held in memory: four default-sized (16 MiB) segments.
pub(crate) const IN_MEMORY_MAX: u64 = 64 << 20;

/// The first `len` bytes of a spool file, as one archiving attempt uses them.
pub(crate) enum Staged {
    /// Read whole.
    Memory(Bytes),
    /// Too large to hold: read from the file (which may keep growing past `len`).
    File { file: File, path: PathBuf, len: u64 },
}

/// The compressed frames of a segment's first `raw_len` bytes, whose CRC-32 is `crc32`:
/// what a partial upload compressed, kept so that the complete segment compresses only
/// the bytes after it.
#[derive(Clone)]
pub(crate) struct CompressedPrefix {
    pub(crate) raw_len: u64,
    pub(crate) crc32: u32,
    pub(crate) frames: Bytes,
}

impl std::fmt::Debug for CompressedPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressedPrefix")
            .field("raw_len", &self.raw_len)
            .field("crc32", &self.crc32)
            .field("stored", &self.frames.len())
            .finish()
    }
}

/// A compressed object ready to upload, and what keeps its bytes alive until then.
pub(crate) enum Compressed {
    Memory(Bytes),
    /// A temp file next to the source, removed when this is dropped.
    File(tempfile::TempPath),
}

impl Compressed {
    /// The body to upload; valid while `self` lives.
    pub(crate) fn body(&self) -> Body {
        match self {
            Compressed::Memory(bytes) => Body::Bytes(bytes.clone()),
            Compressed::File(path) => Body::File(path.to_path_buf()),
        }
    }
}

impl Staged {
    /// Stage the first `len` bytes of `file` (at `path`); fewer is an error.
    pub(crate) async fn read(file: &File, path: &Path, len: u64) -> Result<Staged, RepoError> {
        let file = file.try_clone().map_err(|source| local(path, source))?;
        let path = path.to_path_buf();
        if len > IN_MEMORY_MAX {
            return Ok(Staged::File { file, path, len });
        }
        let task = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, 0)
                .map_err(|source| local(&path, source))?;
            Ok(Staged::Memory(Bytes::from(buf)))
        });
        task.await.map_err(task_failed)?
    }

    /// CRC-32 of the first `n` bytes (at most the staged length).
    pub(crate) async fn prefix_crc32(&self, n: u64) -> Result<u32, RepoError> {
        match self {
            Staged::Memory(bytes) => {
                let bytes = bytes.slice(..(n as usize).min(bytes.len()));
                let task = tokio::task::spawn_blocking(move || crc32fast::hash(&bytes));
                task.await.map_err(task_failed)
            }
            Staged::File { file, path, len } => file_prefix_crc32(file, path, n.min(*len)).await,
        }
    }

    /// Compress for the object at `key`, on a blocking thread.
    pub(crate) async fn compress(
        &self,
        level: i32,
        key: &str,
    ) -> Result<(Sealed, Compressed), RepoError> {
        self.compress_after(None, level, key).await
    }

    /// [`Staged::compress`], reusing `prefix` when given: frames already compressed from
    /// the staged bytes' first `prefix.raw_len` (checked here by their CRC-32), so that
    /// only the rest is compressed. A prefix that does not match is not used.
    pub(crate) async fn compress_after(
        &self,
        prefix: Option<CompressedPrefix>,
        level: i32,
        key: &str,
    ) -> Result<(Sealed, Compressed), RepoError> {
        let prefix = match (prefix, self) {
            (Some(p), Staged::Memory(bytes))
                if p.raw_len <= bytes.len() as u64
                    && self.prefix_crc32(p.raw_len).await? == p.crc32 =>
            {
                Some(p)
            }
            _ => None,
        };
        match self {
            Staged::Memory(bytes) => {
                let (bytes, key) = (bytes.clone(), key.to_string());
                let task = tokio::task::spawn_blocking(move || {
                    let (frames, raw_len) = prefix
                        .as_ref()
                        .map_or((&[][..], 0), |p| (&p.frames[..], p.raw_len));
                    let (out, sealed) =
                        envelope::compress_bytes_after(frames, raw_len as usize, &bytes, level)
                            .map_err(|source| RepoError::Envelope { key, source })?;
                    Ok((sealed, Compressed::Memory(Bytes::from(out))))
                });
                task.await.map_err(task_failed)?
            }
            Staged::File { file, path, len } => {
                let file = file.try_clone().map_err(|source| local(path, source))?;
                let (sealed, tmp) = compress_next_to(path, Some((file, *len)), level, key).await?;
                Ok((sealed, Compressed::File(tmp)))
            }
        }
    }
}

/// Compresses `src` — or, when given, the first `len` bytes of the open file `prefix`
/// whose path is `src` — into a temp file in the same directory (removed when the
/// returned path is dropped), on a blocking thread.
pub(crate) async fn compress_next_to(
    src: &Path,
    prefix: Option<(File, u64)>,
    level: i32,
    key: &str,
) -> Result<(Sealed, tempfile::TempPath), RepoError> {
    let dir = crashsafe::parent_dir(src).to_path_buf();
    let (src, key) = (src.to_path_buf(), key.to_string());
    let task = tokio::task::spawn_blocking(move || {
        let tmp = tempfile::Builder::new()
            .prefix(".tidemark-")
            .suffix(".zst")
            .tempfile_in(&dir)
            .map_err(|source| local(&dir, source))?
            .into_temp_path();
        let sealed = match prefix {
            Some((file, len)) => envelope::compress_prefix(&file, &src, len, &tmp, level),
            None => envelope::compress_file(&src, &tmp, level),
        }
        .map_err(|source| RepoError::Envelope { key, source })?;
        Ok((sealed, tmp))
    });
    task.await.map_err(task_failed)?
}

/// CRC-32 of the first `len` bytes of `data` (the file at `path`), read in pieces.
async fn file_prefix_crc32(data: &File, path: &Path, len: u64) -> Result<u32, RepoError> {
    let data = data.try_clone().map_err(|source| local(path, source))?;
    let path = path.to_path_buf();
    let task = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(buf.len() as u64) as usize;
            data.read_exact_at(&mut buf[..n], at)
                .map_err(|source| local(&path, source))?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        Ok(hasher.finalize())
    });
    task.await.map_err(task_failed)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_prefix_that_no_longer_matches_the_staged_bytes_is_not_reused() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut other = data.clone();
        other[10] ^= 1;
        let (frames, sealed) = envelope::compress_bytes(&other[..50_000], 3).unwrap();
        let stale = CompressedPrefix {
            raw_len: 50_000,
            crc32: sealed.crc32,
            frames: Bytes::from(frames),
        };
        let staged = Staged::Memory(Bytes::from(data.clone()));
        let (sealed, compressed) = staged.compress_after(Some(stale), 3, "k").await.unwrap();
        let Compressed::Memory(out) = compressed else {
            panic!("staged in memory, compressed in memory")
        };
        assert_eq!(zstd::decode_all(&out[..]).unwrap(), data);
        assert_eq!(sealed.crc32, crc32fast::hash(&data));
        assert_eq!(
            zstd::zstd_safe::find_frame_compressed_size(&out).unwrap(),
            out.len(),
            "one frame: the stale prefix was not used"
        );
    }
}
