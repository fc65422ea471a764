//! The application side of the end-to-end tests: a `files` table and the objects its
//! rows name, changed in lockstep; reading a bucket back; and clusters restored with
//! `--start`.

use std::collections::BTreeMap;
use std::time::Duration;

use tidemark_fixtures::{Cluster, S3};
use tidemark_store::catalog::Catalog;

use super::{run, stderr, succeeded, wait_for, Archiver, Repo};

pub type Files = BTreeMap<String, String>;

/// The application: rows in `files` and the objects they name, changed the way careful
/// applications do it — the object is written before the row names it, and the row is
/// deleted before the object.
pub struct App<'a> {
    pub cluster: &'a Cluster,
    pub s3: &'a S3,
    pub bucket: String,
    pub files: Files,
}

/// A cluster with a `files` table, archived into `repo` (S3 or `file://`) by `stream`,
/// which also tracks a new versioned bucket (one pass a second). Returns the running archiver and the bucket.
pub fn tracked_archiver(cluster: &Cluster, s3: &S3, repo: &Repo) -> (Archiver, String) {
    let bucket = s3.create_bucket("app", true).unwrap();
    let mut archiver = Archiver::new(
        cluster,
        repo,
        &[
            "--partial-interval",
            "1",
            "--track-bucket",
            &bucket,
            "--track-interval",
            "1",
        ],
    )
    .with_env(s3.env());
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE files(key text PRIMARY KEY, body text NOT NULL)")
        .unwrap();
    (archiver, bucket)
}

impl<'a> App<'a> {
    pub fn new(cluster: &'a Cluster, s3: &'a S3, bucket: &str) -> App<'a> {
        App {
            cluster,
            s3,
            bucket: bucket.to_string(),
            files: Files::new(),
        }
    }

    pub fn put(&mut self, key: &str, body: &str) {
        self.s3
            .put_object(&self.bucket, key, body.as_bytes())
            .unwrap();
        let sql = if self.files.contains_key(key) {
            format!("UPDATE files SET body = '{body}' WHERE key = '{key}'")
        } else {
            format!("INSERT INTO files VALUES ('{key}', '{body}')")
        };
        self.cluster.psql(&sql).unwrap();
        self.files.insert(key.to_string(), body.to_string());
    }

    pub fn remove(&mut self, key: &str) {
        self.cluster
            .psql(&format!("DELETE FROM files WHERE key = '{key}'"))
            .unwrap();
        self.s3.delete_object(&self.bucket, key).unwrap();
        self.files.remove(key);
    }

    /// An idle gap with an instant (PostgreSQL's clock) in its middle, and what the
    /// application held at that instant.
    pub fn gap(&self) -> (String, Files) {
        std::thread::sleep(Duration::from_millis(1500));
        let t = pg_now(self.cluster);
        std::thread::sleep(Duration::from_millis(1500));
        (t, self.files.clone())
    }
}

pub fn pg_now(cluster: &Cluster) -> String {
    cluster
        .psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
        .unwrap()
}

/// Every object in `bucket` with its bytes.
pub fn bucket_files(s3: &S3, bucket: &str) -> Files {
    s3.list_keys(bucket)
        .unwrap()
        .into_iter()
        .map(|k| {
            let body = String::from_utf8(s3.get_object(bucket, &k).unwrap()).unwrap();
            (k, body)
        })
        .collect()
}

pub fn psql_port(cluster: &Cluster, port: &str, sql: &str) -> String {
    let mut psql = std::process::Command::new(cluster.bin().tool("psql"));
    psql.args([
        "-XAtq",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-p",
        port,
        "-d",
        "postgres",
        "-c",
        sql,
    ]);
    succeeded(psql)
}

/// A cluster restored with `--start`, stopped when dropped.
pub struct Started {
    pub port: String,
    pub pid: i32,
    pub stdout: String,
}

impl Started {
    pub fn rows(&self, cluster: &Cluster) -> Files {
        psql_port(
            cluster,
            &self.port,
            "SELECT key || '=' || body FROM files ORDER BY key",
        )
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        // SAFETY: signalling the server this test started.
        unsafe { libc::kill(self.pid, libc::SIGINT) };
        let pid = self.pid;
        wait_for(
            "the restored server to stop",
            Duration::from_secs(30),
            || {
                // SAFETY: probing whether the pid still exists.
                (unsafe { libc::kill(pid, 0) } != 0).then_some(())
            },
        );
    }
}

/// `restore --start` with `args`; `env` reaches the application bucket when the
/// repository is not on the same S3 server.
pub fn restore_started(archiver: &Archiver, env: &[(String, String)], args: &[&str]) -> Started {
    let dir = tidemark_fixtures::test_dir("objects-restore");
    let data = dir.path().join("data");
    let port = tidemark_fixtures::free_port().to_string();
    let mut all = vec![
        "restore",
        "--pgdata",
        data.to_str().unwrap(),
        "--start",
        "--port",
        &port,
    ];
    all.extend_from_slice(args);
    let mut cmd = archiver.command(&all);
    cmd.envs(env.iter().cloned());
    let started = started(run(cmd), port, args);
    // The data directory must outlive the server.
    std::mem::forget(dir);
    started
}

/// The server a successful `restore --start … --port PORT` (with `args`, for messages)
/// left running, from its output.
pub fn started(out: std::process::Output, port: String, args: &[&str]) -> Started {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "restore {args:?}: {stdout}{}",
        stderr(&out)
    );
    let pid = stdout
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stdout}"));
    Started { port, pid, stdout }
}

/// Waits until the catalog holds more than `passes_after` tracking passes of `bucket`.
pub fn wait_for_tracking(archiver: &Archiver, bucket: &str, passes_after: usize) {
    wait_for("tracking passes", Duration::from_secs(60), || {
        let catalog = Catalog::open(&archiver.catalog).ok()?;
        let history = catalog.object_history(bucket).ok()?;
        (history.passes.len() > passes_after).then_some(())
    });
}

pub fn pass_count(archiver: &Archiver, bucket: &str) -> usize {
    Catalog::open(&archiver.catalog)
        .unwrap()
        .object_history(bucket)
        .unwrap()
        .passes
        .len()
}

/// A coordinated restore to time `t` (`restore --start --objects … --objects-to s3://dest
/// --verify-refs`), checked: the restored rows and the restored bucket both equal
/// `expected`, and no row names a missing object.
pub fn restore_both_checked(
    archiver: &Archiver,
    cluster: &Cluster,
    s3: &S3,
    bucket: &str,
    t: &str,
    dest: &str,
    expected: &Files,
) -> Started {
    let to = format!("s3://{dest}");
    let started = restore_started(
        archiver,
        &[],
        &[
            "--target-time",
            t,
            "--objects",
            bucket,
            "--objects-to",
            &to,
            "--verify-refs",
            "SELECT key FROM files",
        ],
    );
    let out = &started.stdout;
    assert_eq!(&started.rows(cluster), expected, "rows at {t}: {out}");
    assert_eq!(&bucket_files(s3, dest), expected, "bucket at {t}: {out}");
    assert!(
        out.contains(&format!("{} objects restored", expected.len())),
        "{out}"
    );
    assert!(out.contains("0 missing from the restored bucket"), "{out}");
    started
}
