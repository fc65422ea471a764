//! `FsStorage`: a repository in a local (or mounted) directory.
//!
//! On-disk format: object `K` is the file `<root>/K`; its metadata is the JSON sidecar
//! `<root>/K.meta.json` (`{"metadata": {...}}`). Temp files and the per-directory lock file
//! start with `.` and are never listed; keys whose segments start with `.` or that end in
//! `.meta.json` are refused so they cannot collide with them.
//!
//! Durability: every write goes through `crashsafe` (temp, fsync, rename/link, fsync dir).
//! Atomicity with metadata: writers publish the sidecar and then the object while holding an
//! exclusive `flock` on `<dir>/.tidemark.lock`; readers open the object and read the sidecar
//! under a shared lock, so they never pair an object with another object's metadata.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    validate_key, validate_metadata, validate_prefix, Body, GetObject, Metadata, ObjectHead,
    ObjectInfo, PutOutcome, Storage, StorageError,
};
use crate::crashsafe::{self, Publish, Published};

const SIDECAR_SUFFIX: &str = ".meta.json";
const LOCK_FILE: &str = ".tidemark.lock";

/// A repository stored in a directory.
#[derive(Debug, Clone)]
pub struct FsStorage {
    root: Arc<PathBuf>,
}

#[derive(Serialize, Deserialize)]
struct Sidecar {
    metadata: Metadata,
}

impl FsStorage {
    /// Opens an existing repository directory; `RootMissing` if it is absent or not a directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let root = root.into();
        match std::fs::metadata(&root) {
            Ok(m) if m.is_dir() => Ok(FsStorage {
                root: Arc::new(root),
            }),
            Ok(_) => Err(StorageError::RootMissing { path: root }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StorageError::RootMissing { path: root })
            }
            Err(e) => Err(StorageError::io(root, e)),
        }
    }

    /// Creates the repository directory (and missing parents, durably) and opens it.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let root = root.into();
        create_dirs_durably(&root).map_err(|e| StorageError::io(&root, e))?;
        Self::open(root)
    }

    /// The repository directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        let bad = |reason| StorageError::InvalidKey {
            key: key.to_string(),
            reason,
        };
        if key.split('/').any(|seg| seg.starts_with('.')) {
            return Err(bad("segments starting with '.' are reserved"));
        }
        if key.ends_with(SIDECAR_SUFFIX) {
            return Err(bad("keys ending in .meta.json are reserved"));
        }
        Ok(self.root.join(key))
    }

    fn put_blocking(
        &self,
        key: &str,
        body: Body,
        meta: &Metadata,
        publish: Publish,
    ) -> Result<PutOutcome, StorageError> {
        validate_metadata(meta)?;
        let path = self.path_of(key)?;
        let dir = crashsafe::parent_dir(&path).to_path_buf();
        let io_err = |e| StorageError::io(&path, e);
        if !dir.is_dir() {
            create_dirs_durably(&dir).map_err(|e| StorageError::io(&dir, e))?;
        }
        if publish == Publish::CreateNew {
            if let Some(head) = self.head_blocking(key)? {
                return Ok(PutOutcome::Exists(head));
            }
        }
        let mut source: Box<dyn io::Read> = match body {
            Body::Bytes(b) => Box::new(io::Cursor::new(b)),
            Body::File(src) => Box::new(File::open(&src).map_err(|e| StorageError::io(&src, e))?),
        };
        let ((), staged) =
            crashsafe::stage(&path, |f| io::copy(&mut source, f).map(drop)).map_err(io_err)?;

        let _lock =
            DirLock::exclusive(&dir).map_err(|e| StorageError::io(dir.join(LOCK_FILE), e))?;
        if publish == Publish::CreateNew && path.exists() {
            // Lost a race after the fast-path check: report the winner, touch nothing.
            let head = self.read_head(key, &path)?;
            return head
                .map(PutOutcome::Exists)
                .ok_or_else(|| io_err(io::Error::other("object vanished during put")));
        }
        let sidecar = sidecar_path(&path);
        let json = serde_json::to_vec(&Sidecar {
            metadata: meta.clone(),
        })
        .map_err(|e| io_err(io::Error::other(e)))?;
        crashsafe::write_durably(&sidecar, Publish::Replace, |f| {
            io::Write::write_all(f, &json)
        })
        .map_err(|e| StorageError::io(&sidecar, e))?;
        match staged.publish(publish).map_err(io_err)? {
            Published::Written => Ok(PutOutcome::Created),
            // Only possible if something outside tidemark created the file without the lock.
            Published::AlreadyExists => Err(io_err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "object appeared without the directory lock",
            ))),
        }
    }

    fn head_blocking(&self, key: &str) -> Result<Option<ObjectHead>, StorageError> {
        let path = self.path_of(key)?;
        let _lock = DirLock::shared(crashsafe::parent_dir(&path));
        self.read_head(key, &path)
    }

    /// Reads an object's head; the caller holds the directory lock.
    fn read_head(&self, key: &str, path: &Path) -> Result<Option<ObjectHead>, StorageError> {
        let stat = match std::fs::metadata(path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Ok(None),
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(StorageError::io(path, e)),
        };
        let sidecar = sidecar_path(path);
        let metadata = match std::fs::read(&sidecar) {
            Ok(bytes) => {
                serde_json::from_slice::<Sidecar>(&bytes)
                    .map_err(|e| {
                        StorageError::io(&sidecar, io::Error::new(io::ErrorKind::InvalidData, e))
                    })?
                    .metadata
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Metadata::new(),
            Err(e) => return Err(StorageError::io(&sidecar, e)),
        };
        Ok(Some(ObjectHead {
            info: ObjectInfo {
                key: key.to_string(),
                size: stat.len(),
                last_modified: stat.modified().ok().map(DateTime::<Utc>::from),
            },
            metadata,
        }))
    }

    fn open_blocking(&self, key: &str) -> Result<(ObjectHead, File), StorageError> {
        let path = self.path_of(key)?;
        let _lock = DirLock::shared(crashsafe::parent_dir(&path));
        let not_found = || StorageError::NotFound {
            key: key.to_string(),
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if is_absent(&e) => return Err(not_found()),
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        let head = self.read_head(key, &path)?.ok_or_else(not_found)?;
        Ok((head, file))
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        validate_prefix(prefix)?;
        // Walk only the deepest directory the prefix names completely.
        let start = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let mut out = Vec::new();
        let mut stack = vec![(self.root.join(start), start.to_string())];
        while let Some((dir, key_dir)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(it) => it,
                Err(e) if is_absent(&e) => continue,
                Err(e) => return Err(StorageError::io(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| StorageError::io(&dir, e))?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue; // not a key we could have written
                };
                if name.starts_with('.') || name.ends_with(SIDECAR_SUFFIX) {
                    continue;
                }
                let key = if key_dir.is_empty() {
                    name
                } else {
                    format!("{key_dir}/{name}")
                };
                let stat = entry
                    .metadata()
                    .map_err(|e| StorageError::io(entry.path(), e))?;
                if stat.is_dir() {
                    if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                        stack.push((entry.path(), key));
                    }
                } else if stat.is_file() && key.starts_with(prefix) {
                    out.push(ObjectInfo {
                        key,
                        size: stat.len(),
                        last_modified: stat.modified().ok().map(DateTime::<Utc>::from),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete_blocking(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        let dir = crashsafe::parent_dir(&path);
        if !dir.is_dir() {
            return Ok(());
        }
        let _lock =
            DirLock::exclusive(dir).map_err(|e| StorageError::io(dir.join(LOCK_FILE), e))?;
        for p in [path.clone(), sidecar_path(&path)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if is_absent(&e) => {}
                Err(e) => return Err(StorageError::io(&p, e)),
            }
        }
        crashsafe::fsync_dir(dir).map_err(|e| StorageError::io(dir, e))
    }
}

#[async_trait]
impl Storage for FsStorage {
    async fn put_if_absent(
        &self,
        key: &str,
        body: Body,
        meta: &Metadata,
    ) -> Result<PutOutcome, StorageError> {
        let (this, key, meta) = (self.clone(), key.to_string(), meta.clone());
        blocking(move || this.put_blocking(&key, body, &meta, Publish::CreateNew)).await
    }

    async fn put(&self, key: &str, body: Body, meta: &Metadata) -> Result<(), StorageError> {
        let (this, key, meta) = (self.clone(), key.to_string(), meta.clone());
        blocking(move || {
            this.put_blocking(&key, body, &meta, Publish::Replace)
                .map(drop)
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<GetObject, StorageError> {
        let (this, key) = (self.clone(), key.to_string());
        let (head, file) = blocking(move || this.open_blocking(&key)).await?;
        Ok(GetObject {
            head,
            body: Box::pin(tokio::fs::File::from_std(file)),
        })
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectHead>, StorageError> {
        let (this, key) = (self.clone(), key.to_string());
        blocking(move || this.head_blocking(&key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let (this, prefix) = (self.clone(), prefix.to_string());
        blocking(move || this.list_blocking(&prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let (this, key) = (self.clone(), key.to_string());
        blocking(move || this.delete_blocking(&key)).await
    }
}

/// Runs filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Backend {
            operation: "filesystem",
            key: String::new(),
            message: format!("worker task failed: {e}"),
            transient: false,
        })?
}

fn sidecar_path(object: &Path) -> PathBuf {
    let mut s = object.as_os_str().to_owned();
    s.push(SIDECAR_SUFFIX);
    PathBuf::from(s)
}

/// Absent, or a path component is a file (`ENOTDIR`): either way there is no such object.
fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory
}

/// `mkdir -p` that fsyncs each parent whose entries changed.
fn create_dirs_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs_durably(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    crashsafe::fsync_dir(crashsafe::parent_dir(dir))
}

/// An `flock` on a directory's lock file, released on drop.
struct DirLock {
    _file: File,
}

impl DirLock {
    fn exclusive(dir: &Path) -> io::Result<DirLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        file.lock()?;
        Ok(DirLock { _file: file })
    }

    /// A shared lock, or none when the lock file does not exist (no writer ever published in
    /// this directory) or cannot be opened (a read-only repository has no writers).
    fn shared(dir: &Path) -> Option<DirLock> {
        let file = File::open(dir.join(LOCK_FILE)).ok()?;
        file.lock_shared().ok()?;
        Some(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn meta(pairs: &[(&str, &str)]) -> Metadata {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn open_refuses_a_missing_directory_and_create_makes_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b/repo");
        let err = FsStorage::open(&root).unwrap_err();
        assert!(matches!(err, StorageError::RootMissing { .. }));
        assert!(err.to_string().contains("HINT: run tidemark init"), "{err}");
        FsStorage::create(&root).unwrap();
        assert!(root.is_dir());
        FsStorage::open(&root).unwrap();
        FsStorage::create(&root).unwrap();
    }

    #[tokio::test]
    async fn sidecars_locks_and_temps_stay_hidden_and_keys_are_confined() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).unwrap();
        s.put(
            "wal/x",
            Body::Bytes("abc".into()),
            &meta(&[("kind", "wal")]),
        )
        .await
        .unwrap();
        assert!(dir.path().join("wal/x.meta.json").is_file());
        assert!(dir.path().join("wal/.tidemark.lock").is_file());
        std::fs::write(dir.path().join("wal/.x.123.tmp"), b"junk").unwrap();
        let keys: Vec<_> = s
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["wal/x"]);
        for bad in [".tidemark.lock", "wal/.x.123.tmp", "wal/x.meta.json"] {
            let err = s.get(bad).await.unwrap_err();
            assert!(
                matches!(err, StorageError::InvalidKey { .. }),
                "{bad}: {err}"
            );
        }
        let mut got = s.get("wal/x").await.unwrap();
        let mut text = String::new();
        got.body.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "abc");
        assert_eq!(got.head.metadata, meta(&[("kind", "wal")]));
        // A path component that is a file is "absent", not an error.
        assert!(s.head("wal/x/y").await.unwrap().is_none());
        s.delete("wal/x").await.unwrap();
        assert!(!dir.path().join("wal/x.meta.json").exists());
    }

    #[tokio::test]
    async fn an_object_written_by_hand_has_empty_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("plain"), b"x").unwrap();
        let head = s.head("plain").await.unwrap().unwrap();
        assert_eq!(head.info.size, 1);
        assert!(head.metadata.is_empty());
    }
}
