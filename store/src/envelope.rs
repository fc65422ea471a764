//! The object envelope (DESIGN invariant 3): a stored object is a plain zstd stream with
//! zstd's content checksum, so `zstd -d` reads it without tidemark; the CRC-32 of the
//! *uncompressed* bytes and their size go in the object's metadata (`meta::CRC32`,
//! `meta::RAW_SIZE`) and are checked on every read. All functions stream with bounded memory.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::crashsafe::{self, Publish};
use crate::meta;
use crate::storage::Metadata;

const CHUNK: usize = 1 << 20;

/// What sealing produced: checksum and sizes of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// CRC-32 of the uncompressed bytes.
    pub crc32: u32,
    /// Uncompressed size.
    pub raw_size: u64,
    /// Size as stored (compressed).
    pub stored_size: u64,
}

impl Sealed {
    /// The `crc32` and `raw-size` metadata entries for this object.
    pub fn metadata(&self) -> Metadata {
        Metadata::from([
            (meta::CRC32.to_string(), meta::format_crc32(self.crc32)),
            (meta::RAW_SIZE.to_string(), self.raw_size.to_string()),
        ])
    }
}

/// Why sealing or opening an object failed.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// A local file could not be read or written.
    #[error("i/o error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading the stored object failed (network or disk); retrying may help.
    #[error("reading the stored object failed")]
    Read {
        #[source]
        source: io::Error,
    },
    /// Writing the decoded output failed.
    #[error("writing the restored data failed")]
    Write {
        #[source]
        source: io::Error,
    },
    /// zstd could not compress (for instance an unsupported level).
    #[error("zstd compression failed")]
    Compress {
        #[source]
        source: io::Error,
    },
    /// The stored bytes are not a valid zstd stream, or zstd's own checksum failed.
    #[error("stored object is corrupt (zstd)")]
    Corrupt {
        #[source]
        source: io::Error,
    },
    /// The uncompressed bytes do not have the CRC-32 recorded in the metadata.
    #[error("checksum mismatch: expected crc32 {expected:08x}, got {actual:08x}; the stored object is damaged")]
    ChecksumMismatch { expected: u32, actual: u32 },
    /// The uncompressed size differs from the size recorded in the metadata.
    #[error(
        "size mismatch: expected {expected} bytes, got {actual}; the stored object is damaged"
    )]
    SizeMismatch { expected: u64, actual: u64 },
}

impl EnvelopeError {
    /// True when reading again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, EnvelopeError::Read { .. })
    }
}

/// Compresses `src` into `dst` (written durably: temp, fsync, rename) and returns its seal.
pub fn compress_file(src: &Path, dst: &Path, level: i32) -> Result<Sealed, EnvelopeError> {
    let io_src = |source| EnvelopeError::Io {
        path: src.to_path_buf(),
        source,
    };
    let input = File::open(src).map_err(io_src)?;
    let len = input.metadata().map_err(io_src)?.len();
    compress_prefix(&input, src, len, dst, level)
}

/// Compresses the first `len` bytes of `input` (whose path `src` names it in errors) into
/// `dst`, like [`compress_file`]. Reads are positional, so the file may keep growing
/// beyond `len` and its offset is left alone; fewer than `len` bytes is an error.
pub fn compress_prefix(
    input: &File,
    src: &Path,
    len: u64,
    dst: &Path,
    level: i32,
) -> Result<Sealed, EnvelopeError> {
    use std::os::unix::fs::FileExt;
    let io_src = |source| EnvelopeError::Io {
        path: src.to_path_buf(),
        source,
    };
    let mut src_failure = None;
    let written = crashsafe::write_durably(dst, Publish::Replace, |out| {
        let mut enc = new_encoder(Counting::new(BufWriter::new(out)), level, len)?;
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0; CHUNK];
        let mut raw_size = 0;
        while raw_size < len {
            let want = CHUNK.min((len - raw_size) as usize);
            let n = match input.read_at(&mut buf[..want], raw_size) {
                Ok(0) => {
                    src_failure = Some(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("file ended at {raw_size} of {len} bytes"),
                    ));
                    return Err(io::Error::other("source too short"));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    src_failure = Some(e);
                    return Err(io::Error::other("source read failed"));
                }
            };
            hasher.update(&buf[..n]);
            enc.write_all(&buf[..n])?;
            raw_size += n as u64;
        }
        let mut counting = enc.finish()?;
        counting.flush()?;
        Ok(Sealed {
            crc32: hasher.finalize(),
            raw_size,
            stored_size: counting.count,
        })
    });
    match written {
        Ok((sealed, _)) => Ok(sealed),
        Err(e) => Err(match src_failure {
            Some(source) => io_src(source),
            None => EnvelopeError::Io {
                path: dst.to_path_buf(),
                source: e,
            },
        }),
    }
}

/// Compresses `data`, held whole in memory, in one pass: zstd matches against the input
/// itself rather than a window copied piece by piece (its slower dictionary-continuation
/// path), the fastest way it has. The frame is the same as the streaming functions write:
/// content size and checksum included.
pub fn compress_bytes(data: &[u8], level: i32) -> Result<(Vec<u8>, Sealed), EnvelopeError> {
    compress_bytes_after(&[], 0, data, level)
}

/// [`compress_bytes`] for `data` whose first `prefix_raw` bytes are already compressed, as
/// the frames `prefix`: the object is those frames followed by one frame of the rest, so
/// only the rest is compressed. `zstd -d` reads the frames as one stream. The caller
/// vouches that `prefix` decodes to `data[..prefix_raw]`.
pub fn compress_bytes_after(
    prefix: &[u8],
    prefix_raw: usize,
    data: &[u8],
    level: i32,
) -> Result<(Vec<u8>, Sealed), EnvelopeError> {
    let rest = &data[prefix_raw.min(data.len())..];
    let compress = || {
        let mut c = zstd::bulk::Compressor::new(level)?;
        c.include_checksum(true)?;
        c.include_contentsize(true)?;
        let frame = c.compress(rest)?;
        Ok::<_, io::Error>(match prefix.is_empty() {
            true => frame,
            false => [prefix, &frame[..]].concat(),
        })
    };
    let out = compress().map_err(|source| EnvelopeError::Compress { source })?;
    let sealed = Sealed {
        crc32: crc32fast::hash(data),
        raw_size: data.len() as u64,
        stored_size: out.len() as u64,
    };
    Ok((out, sealed))
}

/// Decompresses a stored object from `reader` into `writer`, checking zstd's checksum, the
/// uncompressed size (when known; checked while streaming, so a damaged object cannot fill
/// the disk) and the CRC-32. Returns the uncompressed size. `writer` is flushed, not synced.
pub fn decompress_verified(
    reader: impl Read,
    writer: impl Write,
    expected_crc: u32,
    expected_size: Option<u64>,
) -> Result<u64, EnvelopeError> {
    copy_out(
        Verified::compressed(reader, expected_crc, expected_size)?,
        writer,
    )
}

/// Copies an uncompressed stored object (history files) with the same size and CRC-32
/// checks as `decompress_verified`.
pub fn copy_verified(
    reader: impl Read,
    writer: impl Write,
    expected_crc: u32,
    expected_size: Option<u64>,
) -> Result<u64, EnvelopeError> {
    copy_out(Verified::plain(reader, expected_crc, expected_size), writer)
}

fn copy_out(mut src: Verified<'_>, mut writer: impl Write) -> Result<u64, EnvelopeError> {
    let mut buf = vec![0; CHUNK];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return src.finish(),
        };
        writer
            .write_all(&buf[..n])
            .map_err(|source| EnvelopeError::Write { source })?;
    }
    writer
        .flush()
        .map_err(|source| EnvelopeError::Write { source })?;
    src.finish()
}

/// The uncompressed bytes of a stored object as a reader, checked as they pass: zstd's
/// own checksum, and never more bytes than the size expected; [`Verified::finish`] reads
/// what its user left and checks the size and the CRC-32. A read that fails keeps the
/// reason (transfer, corruption, size), which `finish` returns.
pub struct Verified<'a> {
    src: Box<dyn Read + 'a>,
    /// Set when the stored bytes' reader failed (`None` for plain objects, whose every
    /// read error is the reader's).
    reader_failed: Option<Rc<Cell<bool>>>,
    hasher: crc32fast::Hasher,
    total: u64,
    expected_crc: u32,
    expected_size: Option<u64>,
    failure: Option<EnvelopeError>,
}

impl<'a> Verified<'a> {
    /// A zstd object's decoded bytes.
    pub fn compressed(
        reader: impl Read + 'a,
        expected_crc: u32,
        expected_size: Option<u64>,
    ) -> Result<Verified<'a>, EnvelopeError> {
        let failed = Rc::new(Cell::new(false));
        let tracked = Tracked {
            inner: reader,
            failed: failed.clone(),
        };
        let decoder = zstd::stream::read::Decoder::new(tracked)
            .map_err(|source| EnvelopeError::Compress { source })?;
        let mut v = Verified::plain(decoder, expected_crc, expected_size);
        v.reader_failed = Some(failed);
        Ok(v)
    }

    /// An uncompressed object's bytes.
    pub fn plain(reader: impl Read + 'a, expected_crc: u32, expected_size: Option<u64>) -> Self {
        Verified {
            src: Box::new(reader),
            reader_failed: None,
            hasher: crc32fast::Hasher::new(),
            total: 0,
            expected_crc,
            expected_size,
            failure: None,
        }
    }

    /// Reads the rest, then checks size and CRC-32; the uncompressed size when they match.
    pub fn finish(mut self) -> Result<u64, EnvelopeError> {
        let mut buf = vec![0; CHUNK];
        while self.failure.is_none() {
            match self.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.failure
                        .get_or_insert(EnvelopeError::Read { source: e });
                }
            }
        }
        if let Some(failure) = self.failure {
            return Err(failure);
        }
        if let Some(expected) = self.expected_size.filter(|&e| self.total != e) {
            return Err(EnvelopeError::SizeMismatch {
                expected,
                actual: self.total,
            });
        }
        let actual = self.hasher.finalize();
        if actual != self.expected_crc {
            return Err(EnvelopeError::ChecksumMismatch {
                expected: self.expected_crc,
                actual,
            });
        }
        Ok(self.total)
    }
}

impl Read for Verified<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("the stored object could not be read"));
        }
        match self.src.read(buf) {
            Ok(n) => {
                self.total += n as u64;
                if let Some(expected) = self.expected_size.filter(|&e| self.total > e) {
                    self.failure = Some(EnvelopeError::SizeMismatch {
                        expected,
                        actual: self.total,
                    });
                    return Err(io::Error::other(
                        "the stored object is larger than recorded",
                    ));
                }
                self.hasher.update(&buf[..n]);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let transfer = self.reader_failed.as_ref().is_none_or(|f| f.get());
                let kind = e.kind();
                let message = e.to_string();
                self.failure = Some(match transfer {
                    true => EnvelopeError::Read { source: e },
                    false => EnvelopeError::Corrupt { source: e },
                });
                Err(io::Error::new(kind, message))
            }
        }
    }
}

fn new_encoder<W: Write>(
    out: W,
    level: i32,
    pledged: u64,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut enc = zstd::stream::write::Encoder::new(out, level)?;
    enc.include_checksum(true)?;
    enc.set_pledged_src_size(Some(pledged))?;
    Ok(enc)
}

/// A writer that counts the bytes passed through it.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W> Counting<W> {
    fn new(inner: W) -> Self {
        Counting { inner, count: 0 }
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that remembers whether the underlying reader failed, to tell transport errors
/// from corruption once zstd has wrapped them.
struct Tracked<R> {
    inner: R,
    failed: Rc<Cell<bool>>,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| self.failed.set(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: a repeating counter with some noise.
        (0..len)
            .map(|i| ((i / 7) as u8) ^ ((i * 31) as u8 & 0x0f))
            .collect()
    }

    #[test]
    fn file_round_trip_and_seal() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample(3 * CHUNK + 123);
        let src = dir.path().join("seg");
        let dst = dir.path().join("seg.zst");
        std::fs::write(&src, &data).unwrap();
        let sealed = compress_file(&src, &dst, 3).unwrap();
        assert_eq!(sealed.crc32, crc32fast::hash(&data));
        assert_eq!(sealed.raw_size, data.len() as u64);
        assert_eq!(sealed.stored_size, std::fs::metadata(&dst).unwrap().len());
        assert!(sealed.stored_size < sealed.raw_size);
        let stored = std::fs::read(&dst).unwrap();
        let mut out = Vec::new();
        let n = decompress_verified(&stored[..], &mut out, sealed.crc32, Some(sealed.raw_size))
            .unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(out, data);
        // Plain zstd reads it too.
        assert_eq!(zstd::decode_all(&stored[..]).unwrap(), data);
        assert_eq!(
            sealed.metadata(),
            Metadata::from([
                ("crc32".to_string(), format!("{:08x}", sealed.crc32)),
                ("raw-size".to_string(), data.len().to_string()),
            ])
        );
    }

    #[test]
    fn bytes_round_trip_including_empty() {
        for data in [Vec::new(), b"hello".to_vec(), sample(100_000)] {
            let (stored, sealed) = compress_bytes(&data, 1).unwrap();
            assert_eq!(sealed.stored_size, stored.len() as u64);
            let mut out = Vec::new();
            decompress_verified(&stored[..], &mut out, sealed.crc32, Some(sealed.raw_size))
                .unwrap();
            assert_eq!(out, data);
            // One frame that names its size and carries zstd's checksum, like the
            // streaming encoder's: damage shows in `zstd -t` too.
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(&stored).ok(),
                Some(Some(data.len() as u64))
            );
            assert_eq!(stored[4] & 0x04, 0x04, "content checksum flag");
        }
    }

    #[test]
    fn damage_is_detected() {
        let data = sample(200_000);
        let (stored, sealed) = compress_bytes(&data, 3).unwrap();
        let check = |bytes: &[u8], crc: u32, size: Option<u64>| {
            decompress_verified(bytes, io::sink(), crc, size).unwrap_err()
        };
        // A flipped byte anywhere in the frame: zstd's checksum (or decoding) catches it.
        for pos in [stored.len() / 2, stored.len() - 2] {
            let mut bad = stored.clone();
            bad[pos] ^= 0x40;
            let err = check(&bad, sealed.crc32, Some(sealed.raw_size));
            assert!(
                matches!(
                    err,
                    EnvelopeError::Corrupt { .. } | EnvelopeError::ChecksumMismatch { .. }
                ),
                "{pos}: {err:?}"
            );
        }
        let err = check(
            &stored[..stored.len() - 10],
            sealed.crc32,
            Some(sealed.raw_size),
        );
        assert!(matches!(err, EnvelopeError::Corrupt { .. }), "{err:?}");
        // Intact frame, wrong expectations: our own CRC and size checks.
        let err = check(&stored, sealed.crc32 ^ 1, Some(sealed.raw_size));
        assert!(
            matches!(err, EnvelopeError::ChecksumMismatch { expected, actual }
            if expected == sealed.crc32 ^ 1 && actual == sealed.crc32)
        );
        let err = check(&stored, sealed.crc32, Some(sealed.raw_size - 1));
        assert!(matches!(err, EnvelopeError::SizeMismatch { .. }), "{err:?}");
        let err = check(&stored, sealed.crc32, Some(sealed.raw_size + 1));
        assert!(matches!(err, EnvelopeError::SizeMismatch { .. }), "{err:?}");
        let err = check(b"not zstd at all", sealed.crc32, None);
        assert!(matches!(err, EnvelopeError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn a_failing_reader_is_transient_not_corrupt() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
            }
        }
        let err = decompress_verified(Broken, io::sink(), 0, None).unwrap_err();
        assert!(matches!(err, EnvelopeError::Read { .. }), "{err:?}");
        assert!(err.is_transient());
    }

    #[test]
    fn copy_verified_checks_plain_objects() {
        let mut out = Vec::new();
        copy_verified(
            &b"history"[..],
            &mut out,
            crc32fast::hash(b"history"),
            Some(7),
        )
        .unwrap();
        assert_eq!(out, b"history");
        let err = copy_verified(
            &b"histOry"[..],
            io::sink(),
            crc32fast::hash(b"history"),
            Some(7),
        );
        assert!(matches!(err, Err(EnvelopeError::ChecksumMismatch { .. })));
    }
}
