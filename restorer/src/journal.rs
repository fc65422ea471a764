//! The restore journal, `<pgdata>.tidemark-restore`: what an unfinished restore has done,
//! so that `restore --resume` can finish it and a plain rerun is refused instead of
//! meeting a half-filled directory.
//!
//! Format (text, one record a line, each appended and fsync'd): `backup <ID>` first, then
//! `chunk <KEY>` for every chunk whose entries are all unpacked. A chunk not recorded may
//! be partly unpacked; resuming unpacks it again over what it left. The journal is
//! removed once the recovery settings are written: a directory without one is complete
//! (or was never restored into). It records a process interrupted, not a host that lost
//! its page cache: unpacked files are not fsync'd chunk by chunk.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tidemark_store::backup::BackupId;

/// An open journal of one restore.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
    done: HashSet<String>,
}

/// What an existing journal says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupted {
    pub backup: String,
    pub chunks_done: usize,
}

impl Journal {
    /// The journal's place for a restore into `pgdata`.
    pub fn path_for(pgdata: &Path) -> PathBuf {
        crate::restore::sibling(pgdata, ".tidemark-restore")
    }

    /// What the journal at `path` records, `None` when there is none.
    pub fn read(path: &Path) -> io::Result<Option<(Interrupted, HashSet<String>)>> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut backup = None;
        let mut done = HashSet::new();
        // A torn last line (killed while appending) is simply not a record.
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            match line.trim_end().split_once(' ') {
                Some(("backup", id)) if backup.is_none() => backup = Some(id.to_string()),
                Some(("chunk", key)) => {
                    done.insert(key.to_string());
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected line {line:?}"),
                    ))
                }
            }
        }
        let backup =
            backup.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no backup line"))?;
        let chunks_done = done.len();
        Ok(Some((
            Interrupted {
                backup,
                chunks_done,
            },
            done,
        )))
    }

    /// Start the journal of a restore of `backup` (none may exist).
    pub fn begin(path: &Path, backup: &BackupId) -> io::Result<Journal> {
        let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
        file.write_all(format!("backup {backup}\n").as_bytes())?;
        file.sync_all()?;
        tidemark_store::crashsafe::fsync_dir(tidemark_store::crashsafe::parent_dir(path))?;
        Ok(Journal {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            done: HashSet::new(),
        })
    }

    /// Continue the journal at `path`, whose chunks `done` are kept (a torn last line is
    /// cut off first).
    pub fn resume(path: &Path, done: HashSet<String>) -> io::Result<Journal> {
        let whole = fs::read(path)?;
        let valid = whole.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let file = OpenOptions::new().append(true).open(path)?;
        file.set_len(valid as u64)?;
        Ok(Journal {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            done,
        })
    }

    /// Whether chunk `key` was completely unpacked by an earlier run.
    pub fn is_done(&self, key: &str) -> bool {
        self.done.contains(key)
    }

    /// Record that chunk `key` is completely unpacked.
    pub fn record(&self, key: &str) -> io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(format!("chunk {key}\n").as_bytes())?;
        file.sync_data()
    }

    /// The restore is complete: remove the journal.
    pub fn finish(self) -> io::Result<()> {
        fs::remove_file(&self.path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_rerun_and_a_torn_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.tidemark-restore");
        let id: BackupId = "20261202T120000Z".parse().unwrap();
        assert_eq!(Journal::read(&path).unwrap(), None);
        let journal = Journal::begin(&path, &id).unwrap();
        assert!(
            Journal::begin(&path, &id).is_err(),
            "one journal per restore"
        );
        journal.record("backups/x/data-0000.tar.zst").unwrap();
        drop(journal);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"chunk backups/x/data-00").unwrap();
        let (interrupted, done) = Journal::read(&path).unwrap().unwrap();
        assert_eq!(
            interrupted,
            Interrupted {
                backup: id.to_string(),
                chunks_done: 1
            }
        );
        let journal = Journal::resume(&path, done).unwrap();
        assert!(journal.is_done("backups/x/data-0000.tar.zst"));
        assert!(!journal.is_done("backups/x/data-0001.tar.zst"));
        journal.record("backups/x/data-0001.tar.zst").unwrap();
        let (interrupted, _) = Journal::read(&path).unwrap().unwrap();
        assert_eq!(interrupted.chunks_done, 2);
        journal.finish().unwrap();
        assert!(!path.exists());
    }
}
