//! Unpacking a backup's chunks into an empty directory: each chunk is fetched verified
//! (CRC-32 and size against the repository's record) into a scratch file, then its tar
//! entries are written under the target directory — all of them, except, for a delta
//! restore, the regular files already there with the right contents (`keep`).
//!
//! A backup is outside input, so it must not be able to reach outside the directory:
//! - an entry whose path leaves it (absolute, `..`), or whose parent resolves outside it
//!   through the links already unpacked, is refused and nothing more is written;
//! - a link at a name tidemark writes itself (`postgresql.auto.conf`, `recovery.signal`,
//!   …) is refused: tidemark's own write would follow it;
//! - once every chunk is unpacked, [`check_links`] resolves each relative link through
//!   the real links on disk (a chain like `x/l -> ..`, `x/m -> l/../..` passes a lexical
//!   check and still escapes) and refuses one that leaves the directory or loops. An
//!   absolute link (another tool's backup, a tablespace link) is kept and reported.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Component, Path, PathBuf};

/// Links followed while resolving one path before it counts as a loop (Linux's own
/// limit, `MAXSYMLINKS`).
pub const MAX_LINK_HOPS: usize = 40;

/// Paths tidemark writes in a restored data directory (and the temporary files it writes
/// them through, which start with the same name, in the same directory). A link there
/// would make tidemark write wherever it points.
const OWN_NAMES: &[&str] = &[
    "postgresql.auto.conf",
    "recovery.signal",
    "standby.signal",
    "tablespace_map",
    "backup_manifest",
    // wal-fetch's prefetch cache (relative to the data directory, where PostgreSQL runs
    // restore_command).
    "pg_wal/.tidemark-prefetch",
];

/// Why a chunk could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("backup chunk {chunk} holds an entry that would escape the data directory: {entry:?}; nothing more was unpacked")]
    Hostile { chunk: String, entry: String },
    #[error("backup chunk {chunk} holds a link at {entry:?}, a file tidemark writes itself; refused so that nothing outside the data directory is written; HINT: the backup is not one PostgreSQL made")]
    LinkAtOwnName { chunk: String, entry: String },
    #[error("the backup holds a link {} -> {} that resolves outside the restored directory; refused, and nothing outside it was written; HINT: the backup is not one PostgreSQL made", link.display(), target.display())]
    LinkEscapes { link: PathBuf, target: PathBuf },
    #[error("the backup holds a link {} that does not resolve within {MAX_LINK_HOPS} links (a loop); refused; HINT: the backup is not one PostgreSQL made", .0.display())]
    LinkLoop(PathBuf),
    #[error("cannot unpack backup chunk {chunk} into {}: {source}", dir.display())]
    Io {
        chunk: String,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot check the links restored in {}: {source}", path.display())]
    Check {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A link restored as it was in the backup, pointing at an absolute path: it works only
/// if that path exists on this host, so the restore report lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsoluteLink {
    /// The link, inside the restored directory.
    pub link: PathBuf,
    pub target: PathBuf,
}

/// What to do with a file that is already where an entry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Fail: a fresh restore writes into an empty directory.
    Refuse,
    /// Replace it: a resumed restore unpacks an unfinished chunk again.
    Replace,
}

/// What unpacking one chunk wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Regular files written, and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Every directory the chunk holds (absolute), written or already there.
    pub dirs: Vec<PathBuf>,
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

/// Where resolving a path under a directory ends.
#[derive(Debug, PartialEq, Eq)]
enum Resolved {
    Inside,
    /// Through `..` above the directory, or through an absolute link.
    Outside,
    Loop,
}

/// Resolve `path` (relative, starting in `from`, both relative to `root`) the way the
/// kernel would, following the links that exist under `root` without ever leaving it.
fn resolve(root: &Path, from: &Path, path: &Path) -> io::Result<Resolved> {
    let mut at: Vec<OsString> = from.iter().map(OsString::from).collect();
    let mut rest: VecDeque<OsString> = path.iter().map(OsString::from).collect();
    let mut hops = 0;
    while let Some(part) = rest.pop_front() {
        match Path::new(&part).components().next() {
            Some(Component::Normal(name)) => at.push(name.to_os_string()),
            Some(Component::ParentDir) => {
                if at.pop().is_none() {
                    return Ok(Resolved::Outside);
                }
                continue;
            }
            Some(Component::RootDir | Component::Prefix(_)) => return Ok(Resolved::Outside),
            Some(Component::CurDir) | None => continue,
        }
        let here: PathBuf = at.iter().collect();
        let meta = match fs::symlink_metadata(root.join(&here)) {
            Ok(m) => m,
            // Nothing there (yet): the rest is read as written.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > MAX_LINK_HOPS {
                return Ok(Resolved::Loop);
            }
            let target = fs::read_link(root.join(&here))?;
            if target.is_absolute() {
                return Ok(Resolved::Outside);
            }
            at.pop();
            for part in target.iter().rev() {
                rest.push_front(part.to_os_string());
            }
        }
    }
    Ok(Resolved::Inside)
}

/// Unpack the tar file `tar_path` (chunk `chunk`, for messages) under `dir`, leaving out
/// the regular files whose path (`dir` joined with the entry's) is in `keep`.
pub fn unpack_tar(
    tar_path: &Path,
    dir: &Path,
    chunk: &str,
    existing: Existing,
    keep: &HashSet<PathBuf>,
) -> Result<Unpacked, UnpackError> {
    let io_err = |source| UnpackError::Io {
        chunk: chunk.to_string(),
        dir: dir.to_path_buf(),
        source,
    };
    let file = File::open(tar_path).map_err(io_err)?;
    let mut archive = tar::Archive::new(file);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(existing == Existing::Replace);
    let mut unpacked = Unpacked::default();
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
            let rel: Vec<String> = path
                .components()
                .filter(|c| *c != Component::CurDir)
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let rel = rel.join("/");
            let own = OWN_NAMES
                .iter()
                .any(|n| rel.strip_prefix(n).is_some_and(|rest| !rest.contains('/')));
            if own {
                return Err(UnpackError::LinkAtOwnName {
                    chunk: chunk.to_string(),
                    entry: path.display().to_string(),
                });
            }
            let inside = if entry.header().entry_type().is_hard_link() {
                // A hard link names its target from the top of the archive.
                stays_inside(&link)
            } else {
                // A symlink's target is read from the link's own directory; an absolute
                // one is kept (and reported by `check_links`).
                link.is_absolute()
                    || stays_inside(&path.parent().unwrap_or(Path::new("")).join(&link))
            };
            if !inside {
                return Err(hostile(&path));
            }
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        if resolve(dir, Path::new(""), parent).map_err(io_err)? != Resolved::Inside {
            return Err(hostile(&path));
        }
        let at: PathBuf = dir.join(
            path.components()
                .filter(|c| *c != Component::CurDir)
                .collect::<PathBuf>(),
        );
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            unpacked.dirs.push(at.clone());
        } else if kind.is_file() && keep.contains(&at) {
            continue;
        }
        // unpack_in also refuses to write through symlinks that leave `dir`.
        if !entry.unpack_in(dir).map_err(io_err)? {
            return Err(hostile(&path));
        }
        if kind.is_file() {
            unpacked.files += 1;
            unpacked.bytes += entry.size();
        }
    }
    Ok(unpacked)
}

/// After every chunk is unpacked under `dir`: every relative link must resolve inside
/// it through the links actually there; the absolute ones are returned. Links are never
/// followed while walking.
pub fn check_links(dir: &Path) -> Result<Vec<AbsoluteLink>, UnpackError> {
    let check_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UnpackError::Check { path, source }
    };
    let mut absolute = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let here = dir.join(&rel);
        for entry in fs::read_dir(&here).map_err(check_err(&here))? {
            let entry = entry.map_err(check_err(&here))?;
            let kind = entry.file_type().map_err(check_err(&entry.path()))?;
            let name = rel.join(entry.file_name());
            if kind.is_dir() {
                dirs.push(name);
            } else if kind.is_symlink() {
                let target = fs::read_link(entry.path()).map_err(check_err(&entry.path()))?;
                if target.is_absolute() {
                    absolute.push(AbsoluteLink {
                        link: entry.path(),
                        target,
                    });
                    continue;
                }
                match resolve(dir, &rel, &target).map_err(check_err(&entry.path()))? {
                    Resolved::Inside => {}
                    Resolved::Outside => {
                        return Err(UnpackError::LinkEscapes {
                            link: entry.path(),
                            target,
                        })
                    }
                    Resolved::Loop => return Err(UnpackError::LinkLoop(entry.path())),
                }
            }
        }
    }
    absolute.sort_by(|a, b| a.link.cmp(&b.link));
    Ok(absolute)
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
        let r = unpack_tar(&tar, &out, "data-0000", Existing::Refuse, &HashSet::new());
        (dir, r.map(drop))
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
            vec![("link", Some("../../etc"))],
            vec![("x/l", Some("..")), ("x/m", Some("l/../../.."))],
            // Through a real link: lexically `x/m -> l/..` stays in, really it is the
            // parent of the directory, so a file written under it would escape.
            vec![
                ("x/l", Some("..")),
                ("x/m", Some("l/..")),
                ("x/m/evil", None),
            ],
            vec![("abs", Some("/tmp")), ("abs/evil", None)],
        ] {
            let (dir, r) = unpack(&bad);
            assert!(
                matches!(r, Err(UnpackError::Hostile { .. })),
                "{bad:?}: {r:?}"
            );
            assert!(!dir.path().join("evil").exists());
        }
    }

    fn unpack_and_check(
        entries: &[(&str, Option<&str>)],
    ) -> Result<Vec<AbsoluteLink>, UnpackError> {
        let (dir, r) = unpack(entries);
        r?;
        let found = check_links(&dir.path().join("out"));
        assert!(!dir.path().join("evil").exists());
        found
    }

    #[test]
    fn a_link_chain_escaping_through_real_links_is_refused_after_unpacking() {
        let r = unpack_and_check(&[("x/l", Some("..")), ("x/m", Some("l/.."))]);
        assert!(matches!(r, Err(UnpackError::LinkEscapes { .. })), "{r:?}");
        let r = unpack_and_check(&[("abs", Some("/etc")), ("rel", Some("abs/passwd"))]);
        assert!(matches!(r, Err(UnpackError::LinkEscapes { .. })), "{r:?}");
    }

    #[test]
    fn a_symlink_loop_is_an_error_not_a_stack_overflow() {
        for entries in [
            vec![("a", Some("b")), ("b", Some("a"))],
            vec![("a", Some("a/x"))],
        ] {
            let r = unpack_and_check(&entries);
            assert!(
                matches!(r, Err(UnpackError::LinkLoop(_))),
                "{entries:?}: {r:?}"
            );
        }
    }

    #[test]
    fn links_at_the_files_tidemark_writes_are_refused() {
        for name in [
            "postgresql.auto.conf",
            "./recovery.signal",
            "postgresql.auto.conf.tidemark-tmp",
            "tablespace_map",
            "pg_wal/.tidemark-prefetch",
            "./pg_wal/.tidemark-prefetch.tmp",
        ] {
            let (_dir, r) = unpack(&[(name, Some("/etc/passwd"))]);
            assert!(
                matches!(r, Err(UnpackError::LinkAtOwnName { .. })),
                "{name}: {r:?}"
            );
        }
        // Deeper down, the same name is no file of tidemark's.
        unpack_and_check(&[("conf/recovery.signal", Some("../PG_VERSION"))]).unwrap();
    }

    #[test]
    fn files_to_keep_are_left_as_they_are_and_the_rest_counted() {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("c.tar");
        std::fs::write(
            &tar,
            tar_with(&[("PG_VERSION", None), ("base/1/123", None)]),
        )
        .unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(out.join("base/1")).unwrap();
        std::fs::write(out.join("base/1/123"), b"kept").unwrap();
        let keep = HashSet::from([out.join("base/1/123")]);
        let unpacked = unpack_tar(&tar, &out, "data-0000", Existing::Replace, &keep).unwrap();
        assert_eq!((unpacked.files, unpacked.bytes), (1, 2));
        assert_eq!(std::fs::read(out.join("base/1/123")).unwrap(), b"kept");
        assert_eq!(std::fs::read(out.join("PG_VERSION")).unwrap(), b"hi");
    }

    #[test]
    fn absolute_links_are_kept_and_reported() {
        let found = unpack_and_check(&[
            ("server.crt", Some("/etc/ssl/certs/server.crt")),
            ("pg_wal/x", Some("../PG_VERSION")),
        ])
        .unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].link.ends_with("out/server.crt"));
        assert_eq!(found[0].target, Path::new("/etc/ssl/certs/server.crt"));
    }
}
