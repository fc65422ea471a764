//! The one durable-write helper: write a temp file in the destination's directory, fsync it,
//! publish it with `rename` (replace) or `link` (create only if absent), then fsync the
//! directory. `stage` and `Staged::publish` split the dance for callers that must do something
//! in between (under a lock). Once `write_durably` returns, the file survives a crash; before,
//! readers see either nothing new or the whole file, never a partial one.
//!
//! Also the one place that creates local files and directories readable only by their
//! owner (`create_private_dir`, `private_file_options`): spools, catalogs and backup work
//! files hold the database's raw data.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Mode of the local directories tidemark creates for data: owner only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the local data files tidemark creates: owner read and write only.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// How the temp file becomes `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// `rename` over any existing `dst`.
    Replace,
    /// `link` to `dst`, failing harmlessly when `dst` exists.
    CreateNew,
}

/// Whether `dst` now holds what `fill` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// It does.
    Written,
    /// `Publish::CreateNew` found `dst` already present; it was left untouched.
    AlreadyExists,
}

/// A temp file holding the complete, fsynced content of `dst`, not yet visible under `dst`.
/// Dropping it without publishing removes it.
#[derive(Debug)]
pub struct Staged {
    tmp: tempfile::NamedTempFile,
    dst: PathBuf,
}

/// Fills a temp file next to `dst` with `fill` (which need not fsync) and fsyncs it.
pub fn stage<T>(
    dst: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<T>,
) -> io::Result<(T, Staged)> {
    let name = dst.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "destination has no file name")
    })?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(parent_dir(dst))?;
    let value = fill(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    Ok((
        value,
        Staged {
            tmp,
            dst: dst.to_path_buf(),
        },
    ))
}

impl Staged {
    /// Makes the content visible under `dst` as `publish` says, removes the temp name and
    /// fsyncs the directory.
    pub fn publish(self, publish: Publish) -> io::Result<Published> {
        let Staged { tmp, dst } = self;
        let published = match publish {
            Publish::Replace => {
                tmp.persist(&dst).map_err(|e| e.error)?;
                Published::Written
            }
            Publish::CreateNew => {
                let linked = std::fs::hard_link(tmp.path(), &dst);
                // Dropping `tmp` unlinks the temp name; `dst` keeps the data.
                drop(tmp);
                match linked {
                    Ok(()) => Published::Written,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Ok(Published::AlreadyExists)
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        fsync_dir(parent_dir(&dst))?;
        Ok(published)
    }
}

/// `stage` then `publish`: the whole durable write in one call.
pub fn write_durably<T>(
    dst: &Path,
    publish: Publish,
    fill: impl FnOnce(&mut File) -> io::Result<T>,
) -> io::Result<(T, Published)> {
    let (value, staged) = stage(dst, fill)?;
    Ok((value, staged.publish(publish)?))
}

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents with mode 0700 (before the umask, which can
/// only narrow it). Directories that already exist keep their mode: the caller's choice.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// `OpenOptions` whose file, when this open creates it, gets mode 0600; an existing file
/// keeps its mode. Add the access flags (`write`, `create`, `truncate`...) as usual.
/// Not for a SQLite database: closing any descriptor of it drops every POSIX lock the
/// process holds on the file, other connections' included (the catalog sets its mode by
/// path instead).
pub fn private_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(PRIVATE_FILE_MODE);
    options
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replace_and_create_new() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("f");
        let (_, p) = write_durably(&dst, Publish::CreateNew, |f| f.write_all(b"one")).unwrap();
        assert_eq!(p, Published::Written);
        let (_, p) = write_durably(&dst, Publish::CreateNew, |f| f.write_all(b"two")).unwrap();
        assert_eq!(p, Published::AlreadyExists);
        assert_eq!(std::fs::read(&dst).unwrap(), b"one");
        let (_, p) = write_durably(&dst, Publish::Replace, |f| f.write_all(b"three")).unwrap();
        assert_eq!(p, Published::Written);
        assert_eq!(std::fs::read(&dst).unwrap(), b"three");
        assert_eq!(entries(dir.path()), ["f"], "no temp file left behind");
    }

    #[test]
    fn private_dirs_and_files_are_owner_only_and_existing_ones_keep_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_private_dir(&nested).unwrap();
        assert_eq!(mode(&nested), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700, "created parents too");
        create_private_dir(&nested).unwrap(); // exists: fine
        let file = nested.join("f");
        private_file_options()
            .write(true)
            .create_new(true)
            .open(&file)
            .unwrap();
        assert_eq!(mode(&file), 0o600);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        private_file_options()
            .write(true)
            .create(true)
            .open(&file)
            .unwrap();
        assert_eq!(mode(&file), 0o640, "an existing file keeps its mode");
    }

    #[test]
    fn failed_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("f");
        let err = write_durably(&dst, Publish::Replace, |f| {
            f.write_all(b"partial")?;
            Err::<(), _>(io::Error::other("boom"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert!(entries(dir.path()).is_empty());
    }
}
