//! Catalog schema and its forward-only migrations, versioned by `PRAGMA user_version`,
//! applied under `BEGIN IMMEDIATE` so that concurrent openers never race on them.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::CatalogError;

/// Each entry upgrades the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: repository binding and archived WAL (complete and partial segments).
    "CREATE TABLE meta (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE segments (
        timeline     INTEGER NOT NULL,
        segno        INTEGER NOT NULL,
        partial      INTEGER NOT NULL CHECK (partial IN (0, 1)),
        start_lsn    INTEGER NOT NULL,
        end_lsn      INTEGER NOT NULL,
        raw_size     INTEGER NOT NULL,
        stored_size  INTEGER NOT NULL,
        crc32        INTEGER NOT NULL,
        key          TEXT NOT NULL,
        archived_at  TEXT NOT NULL,
        PRIMARY KEY (timeline, segno, partial)
    );",
    // 2: what each WAL object holds, for restore planning (from its WAL summary).
    "ALTER TABLE segments ADD COLUMN first_xact_time TEXT;
    ALTER TABLE segments ADD COLUMN last_xact_time TEXT;
    CREATE TABLE restore_points (
        timeline INTEGER NOT NULL,
        lsn      INTEGER NOT NULL,
        name     TEXT NOT NULL,
        time     TEXT NOT NULL,
        PRIMARY KEY (timeline, lsn)
    );",
    // 3: application-bucket history (tracking passes and object versions).
    "CREATE TABLE object_passes (
        bucket          TEXT NOT NULL,
        at              TEXT NOT NULL,
        prefix          TEXT NOT NULL,
        mode            TEXT NOT NULL,
        complete_as_of  TEXT NOT NULL,
        min_offset_ms   INTEGER NOT NULL,
        max_offset_ms   INTEGER NOT NULL,
        PRIMARY KEY (bucket, at)
    );
    CREATE TABLE object_versions (
        bucket         TEXT NOT NULL,
        seq            INTEGER NOT NULL,
        key            TEXT NOT NULL,
        version_id     TEXT NOT NULL,
        last_modified  TEXT NOT NULL,
        size           INTEGER NOT NULL,
        etag           TEXT NOT NULL,
        delete_marker  INTEGER NOT NULL CHECK (delete_marker IN (0, 1)),
        blob           TEXT,
        PRIMARY KEY (bucket, seq)
    );",
    // 4: when tracking first listed a version it should have listed earlier (multipart).
    "ALTER TABLE object_versions ADD COLUMN observed_at TEXT;",
];

/// Bring `conn` to the newest schema in one `BEGIN IMMEDIATE` transaction: the version is
/// read after the write lock is taken, so of several processes opening one fresh catalog
/// at once exactly one runs the migrations and the others then find them done.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), CatalogError> {
    let supported = MIGRATIONS.len() as i64;
    // Taking the write lock waits through the busy handler (set before this is called).
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > supported {
        return Err(CatalogError::TooNew {
            path: path.to_path_buf(),
            found: current,
            supported,
        });
    }
    if current == supported {
        return Ok(());
    }
    for sql in MIGRATIONS.iter().skip(current as usize) {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", supported)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_fresh_and_refuses_newer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path).unwrap();
        migrate(&mut conn, &path).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        conn.pragma_update(None, "user_version", 999).unwrap();
        assert!(matches!(
            migrate(&mut conn, &path),
            Err(CatalogError::TooNew { found: 999, .. })
        ));
    }
}
