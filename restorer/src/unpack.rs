//! Unpacking a backup's chunks into an empty directory: each chunk is fetched verified
//! (CRC-32 and size against the repository's record) into a scratch file, then its tar
//! entries are written under the target directory. An entry that would land outside it
//! (absolute path, `..`, a link pointing out) is refused and nothing more is written.

use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Why a chunk could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("backup chunk {chunk} holds an entry that would escape the data directory: {entry:?}; nothing more was unpacked")]
    Hostile { chunk: String, entry: String },
    #[error("cannot unpack backup chunk {chunk} into {}: {source}", dir.display())]
    Io {
        chunk: String,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What to do with a file that is already where an entry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Fail: a fresh restore writes into an empty directory.
    Refuse,
    /// Replace it: a resumed restore unpacks an unfinished chunk again.
    Replace,
}

/// Whether `path` stays inside the directory it is relative to.
fn stays_inside(path: &Path) -> bool {
    let mut depth: i64 = 0;
    for c in path.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Unpack the tar file `tar_path` (chunk `chunk`, for messages) under `dir`.
pub fn unpack_tar(
    tar_path: &Path,
    dir: &Path,
    chunk: &str,
    existing: Existing,
) -> Result<(), UnpackError> {
    let io_err = |source| UnpackError::Io {
        chunk: chunk.to_string(),
        dir: dir.to_path_buf(),
        source,
    };
    let file = File::open(tar_path).map_err(io_err)?;
    let mut archive = tar::Archive::new(file);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(existing == Existing::Replace);
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let path = entry.path().map_err(io_err)?.into_owned();
        let hostile = |entry: &Path| UnpackError::Hostile {
            chunk: chunk.to_string(),
            entry: entry.display().to_string(),
        };
        if !stays_inside(&path) {
            return Err(hostile(&path));
        }
        if let Some(link) = entry.link_name().map_err(io_err)? {
            // A link's target is read relative to the link's own directory.
            let resolved = path.parent().unwrap_or(Path::new("")).join(&link);
            if link.is_absolute() || !stays_inside(&resolved) {
                return Err(hostile(&path));
            }
        }
        // unpack_in also refuses to write through symlinks that leave `dir`.
        if !entry.unpack_in(dir).map_err(io_err)? {
            return Err(hostile(&path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, link) in entries {
            let mut h = tar::Header::new_gnu();
            match link {
                None => {
                    h.set_size(2);
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o600);
                    // Write the name raw: the builder itself refuses "..".
                    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                    h.set_cksum();
                    b.append(&h, &b"hi"[..]).unwrap();
                }
                Some(target) => {
                    h.set_size(0);
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                    h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
                    h.set_cksum();
                    b.append(&h, io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn unpack(entries: &[(&str, Option<&str>)]) -> (tempfile::TempDir, Result<(), UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("c.tar");
        std::fs::write(&tar, tar_with(entries)).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let r = unpack_tar(&tar, &out, "data-0000", Existing::Refuse);
        (dir, r)
    }

    #[test]
    fn unpacks_ordinary_entries() {
        let (dir, r) = unpack(&[
            ("PG_VERSION", None),
            ("base/1/123", None),
            ("pg_wal/x", Some("../PG_VERSION")),
        ]);
        r.unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("out/base/1/123")).unwrap(),
            b"hi"
        );
    }

    #[test]
    fn refuses_entries_that_escape() {
        for bad in [
            vec![("../evil", None)],
            vec![("/etc/evil", None)],
            vec![("a/../../evil", None)],
            vec![("link", Some("/etc"))],
            vec![("link", Some("../../etc"))],
        ] {
            let (dir, r) = unpack(&bad);
            assert!(
                matches!(r, Err(UnpackError::Hostile { .. })),
                "{bad:?}: {r:?}"
            );
            assert!(!dir.path().join("evil").exists());
        }
    }
}
