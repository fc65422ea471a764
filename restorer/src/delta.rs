//! `restore --delta`: rebuild an existing data directory (a failed old primary) from a
//! backup, writing only what differs. Before anything is fetched, [`survey`] walks the
//! directory and its tablespace directories without following a link: a regular file
//! whose size and CRC-32C equal those PostgreSQL's `backup_manifest` (stored with every
//! backup; BASE_BACKUP computes the checksums) records for it is kept; every other file,
//! link or special file is removed — stale copies, and everything the backup does not
//! hold (old WAL in `pg_wal`, replication slots, `postmaster.pid`). Unpacking then leaves
//! the kept files out, and [`prune_dirs`] removes the directories the backup lacks, so
//! the directory ends exactly as a fresh restore would leave it. A chunk whose every entry
//! is already in place ([`in_place`], from the chunk's contents in `backup.json`) is not
//! fetched at all. A server still running
//! there ([`running_server`]) is refused first, and so is a directory that holds another
//! cluster, or is not a data directory at all ([`check_same_cluster`]).
//!
//! CRC-32C cannot tell apart two files that each end in their own CRC-32C (then padding):
//! the CRC of a message followed by its CRC is a constant. `pg_control`, the relation map
//! files, two-phase state files and the replication origin checkpoint are such files, so
//! they are always written ([`self_checksummed`]); a stale `pg_control` kept looked
//! valid and sent recovery to the old timeline.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use tidemark_protocol::crc32c::Crc32c;
use tidemark_store::backup::ChunkContents;

use crate::manifest;

/// Why a delta restore cannot go ahead.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("a server is running in {} (postmaster.pid names pid {pid}, which is alive); --delta never writes under a running server; HINT: stop it first (pg_ctl stop -D {}); if no PostgreSQL runs there, remove postmaster.pid", pgdata.display(), pgdata.display())]
    Running { pgdata: PathBuf, pid: i32 },
    #[error("{} holds another cluster (system identifier {found}) than backup {backup} (system identifier {expected}); --delta removes whatever the backup lacks, so it only rebuilds the same cluster; HINT: check --pgdata, or restore into an empty directory", pgdata.display())]
    OtherCluster {
        pgdata: PathBuf,
        found: u64,
        expected: u64,
        backup: String,
    },
    #[error("{} is not empty and holds no PostgreSQL data directory (no global/pg_control); --delta removes whatever the backup lacks, so it only rebuilds a data directory; HINT: check --pgdata, or restore into an empty directory", .0.display())]
    NotADataDirectory(PathBuf),
    #[error("backup {backup} has no backup_manifest, so --delta cannot tell which files are unchanged; HINT: restore into an empty directory, or take a new backup with tidemark backup")]
    NoManifest { backup: String },
    #[error("the backup_manifest of backup {backup} cannot be read: {source}; HINT: restore into an empty directory instead")]
    BadManifest {
        backup: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> DeltaError + '_ {
    move |source| DeltaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The pid in `<pgdata>/postmaster.pid` if that process is alive (a pid file left by a
/// crashed server names a dead one, or one this user may not signal: `EPERM` counts as
/// alive).
pub fn running_server(pgdata: &Path) -> Option<i32> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    // SAFETY: signal 0 only checks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    alive.then_some(pid)
}

/// Check that `pgdata` may be rebuilt from a backup of cluster `expected` (backup
/// `backup`): absent or empty, or a data directory of that cluster — its
/// `global/pg_control` starts with the system identifier (native endian).
pub fn check_same_cluster(pgdata: &Path, expected: u64, backup: &str) -> Result<(), DeltaError> {
    match fs::read_dir(pgdata) {
        Ok(mut entries) => {
            if entries.next().is_none() {
                return Ok(());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_at(pgdata)(e)),
    }
    let control = pgdata.join("global/pg_control");
    let mut first = [0u8; 8];
    match File::open(&control).and_then(|mut f| f.read_exact(&mut first)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(DeltaError::NotADataDirectory(pgdata.to_path_buf()))
        }
        Err(e) => return Err(io_at(&control)(e)),
    }
    let found = u64::from_ne_bytes(first);
    if found != expected {
        return Err(DeltaError::OtherCluster {
            pgdata: pgdata.to_path_buf(),
            found,
            expected,
            backup: backup.to_string(),
        });
    }
    Ok(())
}

/// What the directory held before unpacking.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Survey {
    /// Files kept as they are (absolute paths).
    pub keep: HashSet<PathBuf>,
    pub kept_bytes: u64,
    /// Files the backup holds with other contents, removed to be written again.
    pub stale_files: u64,
    /// Files, links and special files the backup does not hold, removed.
    pub extra_files: u64,
}

/// Where each manifest path lives on disk: `pg_tblspc/<oid>/…` in that tablespace's
/// restored directory, the rest under `pgdata`.
fn on_disk(path: &str, pgdata: &Path, tablespaces: &[(String, PathBuf)]) -> PathBuf {
    if let Some(rest) = path.strip_prefix("pg_tblspc/") {
        if let Some((oid, inner)) = rest.split_once('/') {
            if let Some((_, dir)) = tablespaces.iter().find(|(o, _)| o == oid) {
                return dir.join(inner);
            }
        }
    }
    pgdata.join(path)
}

/// Files PostgreSQL ends with their own CRC-32C (followed by nothing but padding): every
/// version of one has the same CRC-32C, so a match proves nothing.
fn self_checksummed(path: &str) -> bool {
    path == "global/pg_control"
        || path == "pg_logical/replorigin_checkpoint"
        || path.starts_with("pg_twophase/")
        || path.rsplit('/').next() == Some("pg_filenode.map")
}

/// The CRC-32C of the file at `path`.
fn crc32c_of(path: &Path) -> io::Result<u32> {
    let mut file = File::open(path)?;
    let mut crc = Crc32c::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(crc.finish());
        }
        crc.update(&buf[..n]);
    }
}

/// Compare `pgdata` and the `tablespaces` directories (oid, directory) with the manifest
/// `manifest` (of backup `backup`, for messages): keep what matches, remove the rest.
pub fn survey(
    manifest: &[u8],
    backup: &str,
    pgdata: &Path,
    tablespaces: &[(String, PathBuf)],
) -> Result<Survey, DeltaError> {
    let parsed = manifest::parse(manifest).map_err(|source| DeltaError::BadManifest {
        backup: backup.to_string(),
        source,
    })?;
    let wanted: HashMap<PathBuf, (u64, Option<u32>)> = parsed
        .files
        .iter()
        .filter_map(|f| {
            let crc = match (&f.algorithm, &f.checksum) {
                (Some(a), Some(c)) if a.eq_ignore_ascii_case("CRC32C") => manifest::crc32c(c),
                _ => None,
            };
            let path = f.path.as_deref()?;
            let crc = crc.filter(|_| !self_checksummed(path));
            Some((on_disk(path, pgdata, tablespaces), (f.size, crc)))
        })
        .collect();
    let mut survey = Survey::default();
    let roots = std::iter::once(pgdata).chain(tablespaces.iter().map(|(_, d)| d.as_path()));
    for root in roots {
        let mut dirs = match fs::symlink_metadata(root) {
            Ok(m) if m.is_dir() => vec![root.to_path_buf()],
            _ => continue,
        };
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
                let entry = entry.map_err(io_at(&dir))?;
                let path = entry.path();
                let kind = entry.file_type().map_err(io_at(&path))?;
                if kind.is_dir() {
                    // A tablespace directory nested in another root is surveyed as its own.
                    if !tablespaces.iter().any(|(_, d)| *d == path) {
                        dirs.push(path);
                    }
                    continue;
                }
                let matches = match (kind.is_file(), wanted.get(&path)) {
                    (true, Some(&(size, Some(crc)))) => {
                        let len = entry.metadata().map_err(io_at(&path))?.len();
                        len == size && crc32c_of(&path).map_err(io_at(&path))? == crc
                    }
                    _ => false,
                };
                if matches {
                    survey.kept_bytes += wanted[&path].0;
                    survey.keep.insert(path);
                    continue;
                }
                match wanted.contains_key(&path) {
                    true => survey.stale_files += 1,
                    false => survey.extra_files += 1,
                }
                fs::remove_file(&path).map_err(io_at(&path))?;
            }
        }
    }
    Ok(survey)
}

/// Whether a chunk whose `contents` unpack under `dest` would write nothing: it holds
/// only files the survey kept (`keep`) and directories already there, so a delta need
/// not fetch it. Its directories then count as unpacked, for [`prune_dirs`].
pub fn in_place(contents: &ChunkContents, dest: &Path, keep: &HashSet<PathBuf>) -> bool {
    contents.others == 0
        && contents.files.iter().all(|f| keep.contains(&dest.join(f)))
        && contents
            .dirs
            .iter()
            .all(|d| fs::symlink_metadata(dest.join(d)).is_ok_and(|m| m.is_dir()))
}

/// After unpacking: remove the directories under `roots` that the backup does not hold
/// (not in `seen`; the roots themselves stay). Returns how many were removed.
pub fn prune_dirs(roots: &[PathBuf], seen: &HashSet<PathBuf>) -> Result<u64, DeltaError> {
    let mut removed = 0;
    for root in roots {
        let mut order = Vec::new();
        let mut pending = vec![root.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let entry = entry.map_err(io_at(&dir))?;
                if entry.file_type().map_err(io_at(&dir))?.is_dir() {
                    pending.push(entry.path());
                }
            }
            order.push(dir);
        }
        // Deepest first, so a parent is empty by the time it is removed.
        for dir in order.iter().skip(1).rev() {
            if !seen.contains(dir) && !roots.contains(dir) {
                fs::remove_dir(dir).map_err(io_at(dir))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: &[(&str, &[u8])]) -> Vec<u8> {
        let files: Vec<serde_json::Value> = files
            .iter()
            .map(|(path, body)| {
                let mut crc = Crc32c::new();
                crc.update(body);
                serde_json::json!({
                    "Path": path, "Size": body.len(), "Last-Modified": "2026-12-02 12:00:00 GMT",
                    "Checksum-Algorithm": "CRC32C", "Checksum": crc.finish().to_le_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>(),
                })
            })
            .collect();
        serde_json::to_vec(
            &serde_json::json!({"PostgreSQL-Backup-Manifest-Version": 1, "Files": files}),
        )
        .unwrap()
    }

    #[test]
    fn a_chunk_is_in_place_only_when_all_it_holds_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path();
        fs::create_dir_all(dest.join("base/1")).unwrap();
        fs::write(dest.join("base/1/100"), b"same").unwrap();
        std::os::unix::fs::symlink(dest.join("base"), dest.join("linked")).unwrap();
        let keep = HashSet::from([dest.join("base/1/100")]);
        let chunk = |files: &[&str], dirs: &[&str], others| ChunkContents {
            files: files.iter().map(|f| f.to_string()).collect(),
            dirs: dirs.iter().map(|d| d.to_string()).collect(),
            others,
        };
        assert!(in_place(
            &chunk(&["base/1/100"], &["base", "base/1"], 0),
            dest,
            &keep
        ));
        // A file not kept (stale or missing), a missing directory, a directory that is a
        // link, or an entry of another kind: the chunk is fetched.
        assert!(!in_place(
            &chunk(&["base/1/100", "base/1/101"], &[], 0),
            dest,
            &keep
        ));
        assert!(!in_place(
            &chunk(&["base/1/100"], &["base/2"], 0),
            dest,
            &keep
        ));
        assert!(!in_place(&chunk(&[], &["linked"], 0), dest, &keep));
        assert!(!in_place(&chunk(&["base/1/100"], &[], 1), dest, &keep));
    }

    #[test]
    fn matching_files_are_kept_and_everything_else_removed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ts = dir.path().join("ts/16400");
        fs::create_dir_all(data.join("base/1")).unwrap();
        fs::create_dir_all(data.join("pg_wal")).unwrap();
        fs::create_dir_all(&ts).unwrap();
        fs::write(data.join("PG_VERSION"), b"15\n").unwrap();
        fs::write(data.join("base/1/100"), b"same").unwrap();
        fs::write(data.join("base/1/101"), b"changed").unwrap();
        fs::write(data.join("pg_wal/000000010000000000000003"), b"old wal").unwrap();
        fs::write(data.join("postmaster.pid"), b"999999999\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", data.join("link")).unwrap();
        fs::write(ts.join("200"), b"tablespace").unwrap();
        let m = manifest(&[
            ("PG_VERSION", b"15\n"),
            ("base/1/100", b"same"),
            ("base/1/101", b"differs"),
            ("pg_tblspc/16400/200", b"tablespace"),
        ]);
        let tablespaces = vec![("16400".to_string(), ts.clone())];
        let s = survey(&m, "b", &data, &tablespaces).unwrap();
        let keep = HashSet::from([
            data.join("PG_VERSION"),
            data.join("base/1/100"),
            ts.join("200"),
        ]);
        assert_eq!(s.keep, keep);
        assert_eq!(s.kept_bytes, 3 + 4 + 10);
        assert_eq!((s.stale_files, s.extra_files), (1, 3));
        assert!(!data.join("base/1/101").exists());
        assert!(!data.join("pg_wal/000000010000000000000003").exists());
        assert!(fs::symlink_metadata(data.join("link")).is_err());
        assert!(Path::new("/etc/passwd").exists());
        assert_eq!(running_server(&data), None);

        fs::create_dir_all(data.join("base/99/sub")).unwrap();
        let seen = HashSet::from([data.join("base"), data.join("base/1"), data.join("pg_wal")]);
        let removed = prune_dirs(&[data.clone(), ts.clone()], &seen).unwrap();
        assert_eq!(removed, 2);
        assert!(data.join("base/1").is_dir() && !data.join("base/99").exists());
    }

    /// A block like pg_control: a message, its CRC-32C (little-endian), zero padding.
    fn self_checked(message: &[u8]) -> Vec<u8> {
        let mut crc = Crc32c::new();
        crc.update(message);
        let mut block = message.to_vec();
        block.extend(crc.finish().to_le_bytes());
        block.resize(8192, 0);
        block
    }

    #[test]
    fn a_stale_pg_control_with_the_same_crc32c_is_written_not_kept() {
        let (ours, theirs) = (
            self_checked(b"timeline 2, shut down"),
            self_checked(b"timeline 1, in backup"),
        );
        let crc = |b: &[u8]| {
            let mut c = Crc32c::new();
            c.update(b);
            c.finish()
        };
        assert_eq!(
            crc(&ours),
            crc(&theirs),
            "the CRC residue makes them collide"
        );
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("global")).unwrap();
        fs::create_dir_all(dir.path().join("base/5")).unwrap();
        fs::write(dir.path().join("global/pg_control"), &ours).unwrap();
        fs::write(dir.path().join("base/5/pg_filenode.map"), &ours).unwrap();
        let m = manifest(&[
            ("global/pg_control", &theirs),
            ("base/5/pg_filenode.map", &theirs),
        ]);
        let s = survey(&m, "b", dir.path(), &[]).unwrap();
        assert!(s.keep.is_empty(), "{s:?}");
        assert_eq!(s.stale_files, 2);
    }

    #[test]
    fn only_the_backed_up_clusters_directory_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        check_same_cluster(&data, 7, "b").unwrap();
        fs::create_dir_all(data.join("global")).unwrap();
        check_same_cluster(&data, 7, "b").unwrap_err();
        let mut control = 7u64.to_ne_bytes().to_vec();
        control.resize(8192, 0);
        fs::write(data.join("global/pg_control"), &control).unwrap();
        check_same_cluster(&data, 7, "b").unwrap();
        match check_same_cluster(&data, 8, "b") {
            Err(DeltaError::OtherCluster {
                found: 7,
                expected: 8,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        fs::remove_file(data.join("global/pg_control")).unwrap();
        assert!(matches!(
            check_same_cluster(&data, 7, "b"),
            Err(DeltaError::NotADataDirectory(_))
        ));
    }

    #[test]
    fn a_live_pid_is_a_running_server() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(running_server(dir.path()), None);
        let me = std::process::id() as i32;
        fs::write(dir.path().join("postmaster.pid"), format!("{me}\n/data\n")).unwrap();
        assert_eq!(running_server(dir.path()), Some(me));
    }
}
