//! The local SQLite catalog: a derived index of the repository (DESIGN §4).
//!
//! Everything here can be rebuilt from the repository alone; the catalog only makes
//! questions cheap ("what is archived, up to where, since when") without listing the
//! bucket. One writer (the archiver), WAL journal mode, schema versioned by
//! `PRAGMA user_version` with forward-only migrations in [`schema`].

mod objects;
mod schema;
mod segments;

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode};

use crate::crashsafe;

pub use objects::TrackedBucket;
pub use segments::SegmentRecord;

/// What can go wrong with the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog file or its directory could not be opened or created.
    #[error("cannot open catalog {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The catalog's directory could not be created.
    #[error("cannot create catalog directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The new catalog's mode could not be set to owner-only.
    #[error("cannot make catalog file {path} private (mode 0600): {source}; HINT: check the file's owner and the directory's permissions")]
    Permissions {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The catalog was written by a newer tidemark.
    #[error("catalog {path} has schema version {found}, newer than this tidemark supports ({supported}); HINT: upgrade tidemark or use another --catalog")]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// The catalog indexes another repository or cluster.
    #[error("catalog {path} indexes {bound}, not {wanted}; HINT: use a separate --catalog per repository")]
    OtherRepository {
        path: PathBuf,
        bound: String,
        wanted: String,
    },
    /// A query failed.
    #[error("catalog query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored value could not be decoded (a damaged catalog).
    #[error("catalog holds an invalid value: {0}; HINT: rebuild it from the repository")]
    Invalid(String),
}

/// How long a catalog call waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `op` again while SQLite reports the database busy or locked, up to
/// `BUSY_TIMEOUT`. For the few statements SQLite does not retry itself through the busy
/// handler (changing the journal mode can answer `SQLITE_BUSY` at once).
fn retry_busy<T>(mut op: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match op() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Gives the catalog file and its SQLite side files (those that exist) mode 0600, by path:
/// once the main file is 0600, SQLite creates later `-wal`/`-shm` files with its mode.
fn restrict_to_owner(path: &Path) -> Result<(), CatalogError> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = vec![path.to_path_buf()];
    for side in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(side);
        files.push(PathBuf::from(name));
    }
    for file in files {
        let private = std::fs::Permissions::from_mode(crashsafe::PRIVATE_FILE_MODE);
        match std::fs::set_permissions(&file, private) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(CatalogError::Permissions {
                    path: file,
                    source: e,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// An open catalog.
#[derive(Debug)]
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

impl Catalog {
    /// Open (creating if needed) the catalog at `path` and bring its schema up to date.
    /// Safe when several processes open one fresh catalog at the same moment (`stream` and
    /// `objects track` started together): switching to WAL mode is retried while another
    /// opener holds the lock, and migrations run under `BEGIN IMMEDIATE`. A catalog (and
    /// its directory) created here is readable by its owner only: files 0600, directory
    /// 0700 (only schema has been written when the mode is set).
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crashsafe::create_private_dir(dir).map_err(|source| CatalogError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        // Never open the file outside SQLite: closing any descriptor of it drops every
        // POSIX lock this process holds on it, those of other connections included.
        let fresh = !path.exists();
        let open_err = |source| CatalogError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        // Before anything that takes a lock, so that every later step waits for others.
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        retry_busy(|| conn.pragma_update(None, "journal_mode", "WAL")).map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        schema::migrate(&mut conn, path)?;
        if fresh {
            restrict_to_owner(path)?;
        }
        Ok(Catalog {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Tie this catalog to one repository identity (`url` plus system identifier).
    /// The first call records it; later calls with anything else are refused, so one
    /// catalog never mixes two repositories.
    pub fn bind(&self, url: &str, system_identifier: u64) -> Result<(), CatalogError> {
        let wanted = format!("{url} (system identifier {system_identifier})");
        // One statement, so that processes binding a fresh catalog at once cannot both
        // find it unbound and both insert.
        self.conn.execute(
            "INSERT OR IGNORE INTO meta (name, value) VALUES ('repository', ?1)",
            [&wanted],
        )?;
        let bound: String = self.conn.query_row(
            "SELECT value FROM meta WHERE name = 'repository'",
            [],
            |r| r.get(0),
        )?;
        if bound == wanted {
            return Ok(());
        }
        Err(CatalogError::OtherRepository {
            path: self.path.clone(),
            bound,
            wanted,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_once_and_refuses_another_repository() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/catalog.db");
        let cat = Catalog::open(&path).unwrap();
        cat.bind("file:///r", 42).unwrap();
        cat.bind("file:///r", 42).unwrap();
        let err = cat.bind("file:///r", 43).unwrap_err();
        assert!(matches!(err, CatalogError::OtherRepository { .. }), "{err}");
        drop(cat);
        // Reopening keeps the binding and does not re-run migrations destructively.
        let cat = Catalog::open(&path).unwrap();
        assert!(cat.bind("s3://b/p", 42).is_err());
    }

    #[test]
    fn threads_opening_one_fresh_catalog_at_once_never_race_on_its_schema() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20 {
            let path = dir.path().join(format!("r{round}/catalog.db"));
            let start = std::sync::Arc::new(std::sync::Barrier::new(8));
            let openers: Vec<_> = (0..8)
                .map(|_| {
                    let (path, start) = (path.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        let catalog = Catalog::open(&path)?;
                        catalog.bind("file:///r", 42)?;
                        catalog.segments().map(|s| s.len())
                    })
                })
                .collect();
            for opener in openers {
                match opener.join().unwrap() {
                    Ok(0) => {}
                    other => panic!("round {round}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_new_catalog_and_its_wal_files_are_readable_by_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/catalog.db");
        let cat = Catalog::open(&path).unwrap();
        cat.bind("file:///r", 42).unwrap();
        assert_eq!(mode(&dir.path().join("new")), 0o700);
        for file in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
            assert_eq!(mode(&dir.path().join("new").join(file)), 0o600, "{file}");
        }
    }
}
