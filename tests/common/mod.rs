//! Shared helpers for the end-to-end tests: run the built `tidemark` binary against real
//! PostgreSQL clusters and a real S3 server, and inspect what it stored.

#![allow(dead_code)] // each test binary uses a different subset

pub mod app;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tidemark_fixtures::{Cluster, S3};
use tidemark_protocol::{Lsn, SegmentName, WalSegmentSize};
use tidemark_store::catalog::{Catalog, SegmentRecord};

/// The prefix of S3 repositories under test, inside their bucket.
const S3_PREFIX: &str = "tidemark/";

/// A repository under test: a `file://` directory or a fresh S3 bucket.
pub enum Repo {
    File {
        dir: TempDir,
    },
    S3 {
        s3: S3,
        bucket: String,
        /// Where the binary reaches S3, when not directly (an outage proxy).
        via: Option<String>,
    },
}

impl Repo {
    pub fn file() -> Repo {
        Repo::File {
            dir: tidemark_fixtures::test_dir("repo"),
        }
    }

    pub fn s3(hint: &str) -> Repo {
        let s3 = tidemark_fixtures::s3().expect("S3 test server");
        let bucket = s3.create_bucket(hint, false).expect("bucket");
        Repo::S3 {
            s3,
            bucket,
            via: None,
        }
    }

    /// An S3 repository that the binary reaches through `endpoint` (the test itself
    /// still inspects the bucket directly).
    pub fn s3_via(hint: &str, endpoint: String) -> Repo {
        match Repo::s3(hint) {
            Repo::S3 { s3, bucket, .. } => Repo::S3 {
                s3,
                bucket,
                via: Some(endpoint),
            },
            file => file,
        }
    }

    pub fn url(&self) -> String {
        match self {
            Repo::File { dir } => file_url(&dir.path().join("repo")),
            Repo::S3 { bucket, .. } => format!("s3://{bucket}/{}", S3_PREFIX.trim_end_matches('/')),
        }
    }

    pub fn env(&self) -> Vec<(String, String)> {
        match self {
            Repo::File { .. } => Vec::new(),
            Repo::S3 { s3, via, .. } => {
                let mut env = s3.env();
                if let Some(via) = via {
                    env.retain(|(k, _)| k != "AWS_ENDPOINT_URL_S3");
                    env.push(("AWS_ENDPOINT_URL_S3".into(), via.clone()));
                }
                env
            }
        }
    }

    /// Every key stored, sorted (sidecars included for `file://`: they are writes too).
    pub fn keys(&self) -> Vec<String> {
        match self {
            Repo::File { dir } => {
                let mut out = Vec::new();
                walk(&dir.path().join("repo"), &dir.path().join("repo"), &mut out);
                out.sort();
                out
            }
            Repo::S3 { s3, bucket, .. } => s3
                .list_keys(bucket)
                .expect("list bucket")
                .into_iter()
                .map(|k| match k.strip_prefix(S3_PREFIX) {
                    Some(rest) => rest.to_string(),
                    None => k,
                })
                .collect(),
        }
    }

    /// The directory of a `file://` repository.
    pub fn file_root(&self) -> PathBuf {
        match self {
            Repo::File { dir } => dir.path().join("repo"),
            Repo::S3 { .. } => panic!("not a file:// repository"),
        }
    }

    /// Fetch the object at `key` (the repository-relative key) to a local file.
    pub fn download(&self, key: &str, dst: &Path) {
        match self {
            Repo::File { dir } => {
                fs::copy(dir.path().join("repo").join(key), dst).expect("copy object");
            }
            Repo::S3 { s3, bucket, .. } => {
                let bytes = s3
                    .get_object(bucket, &format!("{S3_PREFIX}{key}"))
                    .expect("get object");
                fs::write(dst, bytes).expect("write object");
            }
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().display().to_string());
        }
    }
}

/// The built binary with a clean tidemark environment.
pub fn tidemark(repo: &Repo) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    for var in [
        "TIDEMARK_REPO",
        "TIDEMARK_PG",
        "TIDEMARK_CATALOG",
        "AWS_ENDPOINT_URL_S3",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(repo.env());
    cmd
}

/// Run to completion, capturing output.
pub fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null());
    cmd.output().expect("run tidemark")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Run `cmd`, which must succeed (its stderr says why not); its stdout, trimmed.
pub fn succeeded(mut cmd: Command) -> String {
    let out = cmd.output().expect("run the command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Run a command that prints JSON (`check --json`, `verify --json`): its exit code and
/// the document.
pub fn run_json(archiver: &Archiver, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = run(archiver.command(args));
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        )
    });
    (out.status.code(), doc)
}

/// One archiver (`tidemark stream`) for one cluster and repository.
pub struct Archiver {
    pub work: TempDir,
    pub catalog: PathBuf,
    repo_url: String,
    repo_env: Vec<(String, String)>,
    conninfo: String,
    extra: Vec<String>,
    /// `--config PATH --cluster NAME` instead of `--repo`, `--pg` and `--catalog`.
    config: Option<(PathBuf, String)>,
    child: Option<Child>,
    runs: u32,
}

impl Archiver {
    pub fn new(cluster: &Cluster, repo: &Repo, extra: &[&str]) -> Archiver {
        let work = tidemark_fixtures::test_dir("archiver");
        Archiver {
            catalog: work.path().join("catalog.db"),
            work,
            repo_url: repo.url(),
            repo_env: repo.env(),
            conninfo: cluster.conninfo(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            config: None,
            child: None,
            runs: 0,
        }
    }

    /// Also pass `env` (the S3 settings of an application bucket tracked beside a
    /// `file://` repository).
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Archiver {
        self.repo_env.extend(env);
        self
    }

    /// An archiver driven only by the config file `config` and its `[cluster.NAME]`:
    /// commands get `--config` and `--cluster` and no storage or tidemark variables.
    /// `repo_url` and `catalog` are what the file says, for the helpers that read them.
    pub fn configured(config: &Path, name: &str, repo_url: &str, catalog: PathBuf) -> Archiver {
        Archiver {
            work: tidemark_fixtures::test_dir("archiver"),
            catalog,
            repo_url: repo_url.to_string(),
            repo_env: Vec::new(),
            conninfo: String::new(),
            extra: Vec::new(),
            config: Some((config.to_path_buf(), name.to_string())),
            child: None,
            runs: 0,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemark"));
        if let Some((path, name)) = &self.config {
            for (var, _) in std::env::vars() {
                if var.starts_with("AWS_") || var.starts_with("TIDEMARK_") {
                    cmd.env_remove(var);
                }
            }
            cmd.arg("--config")
                .arg(path)
                .arg("--cluster")
                .arg(name)
                .args(args);
            return cmd;
        }
        cmd.env_remove("TIDEMARK_REPO")
            .env_remove("TIDEMARK_PG")
            .envs(self.repo_env.clone())
            .arg("--repo")
            .arg(&self.repo_url)
            .arg("--pg")
            .arg(&self.conninfo)
            .arg("--catalog")
            .arg(&self.catalog)
            .args(args);
        cmd
    }

    /// Archive another cluster from now on (a promoted copy of the first: same system
    /// identifier), keeping this archiver's catalog and spool.
    pub fn follow(&mut self, cluster: &Cluster) {
        assert!(self.child.is_none(), "stop the archiver first");
        self.conninfo = cluster.conninfo();
    }

    /// Connect with `conninfo` (several hosts, say) from the next command on.
    pub fn set_conninfo(&mut self, conninfo: &str) {
        assert!(self.child.is_none(), "stop the archiver first");
        self.conninfo = conninfo.to_string();
    }

    /// Run `stream` with these options from the next start on.
    pub fn set_options(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    /// `tidemark init`, which must succeed.
    pub fn init(&self) {
        let out = run(self.command(&["init"]));
        assert!(out.status.success(), "init failed: {}", stderr(&out));
    }

    /// Start `tidemark stream` in the background; its log goes to the work dir.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "archiver already running");
        self.runs += 1;
        let log = fs::File::create(self.work.path().join(format!("stream-{}.log", self.runs)))
            .expect("log file");
        let mut args = vec!["stream".to_string()];
        args.extend(self.extra.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = self.command(&args);
        cmd.env("TIDEMARK_LOG", "info,tidemark_archiver=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn tidemark stream"));
    }

    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|i| {
                fs::read_to_string(self.work.path().join(format!("stream-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// The running archiver's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("archiver running").id()
    }

    /// Panic with the log if the archiver has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("archiver exited early with {status}:\n{}", self.log());
            }
        }
    }

    /// The exit code once the archiver has exited by itself (`None` while it runs).
    pub fn exit_code(&mut self) -> Option<i32> {
        let status = self.child.as_mut()?.try_wait().expect("wait")?;
        self.child = None;
        Some(status.code().unwrap_or(-1))
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("archiver running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    /// SIGTERM and wait (with a deadline) for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> i32 {
        let mut child = self.child.take().expect("archiver running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "archiver did not stop within 60 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A `file://` repository's directory, to be shared with the postgres user before a
    /// restored cluster reads it through wal-fetch.
    pub fn repo_dir_for_postgres(&self) -> PathBuf {
        let path = self
            .repo_url
            .strip_prefix("file://")
            .expect("a file:// repository");
        PathBuf::from(path)
    }

    /// The catalog's rows (opened read-mostly beside the running archiver).
    pub fn segments(&self) -> Vec<SegmentRecord> {
        if !self.catalog.exists() {
            return Vec::new();
        }
        Catalog::open(&self.catalog)
            .and_then(|c| c.segments())
            .unwrap_or_default()
    }

    /// End of the newest archived WAL (partial or complete).
    pub fn archived_end(&self) -> Lsn {
        self.segments()
            .iter()
            .map(|s| s.end_lsn)
            .max()
            .unwrap_or(Lsn(0))
    }

    /// Wait (while it keeps running) until the repository holds WAL up to `lsn`.
    pub fn wait_stored(&mut self, lsn: Lsn, timeout: Duration) {
        wait_for(&format!("WAL up to {lsn} stored"), timeout, || {
            self.assert_running();
            (self.archived_end() >= lsn).then_some(())
        });
    }

    /// Wait until the complete segment holding `lsn - 1` is archived (segments before it
    /// may still be uploading: they finish in any order).
    pub fn wait_complete_through(&mut self, lsn: Lsn, seg: WalSegmentSize, timeout: Duration) {
        let want = Lsn(lsn.0 - 1).segment_number(seg);
        self.wait_complete(want, timeout, |complete| complete.contains(&want));
    }

    /// Wait until the complete segments are archived without a hole from the first one
    /// through the one holding `lsn - 1`: the newest one being stored says nothing about
    /// the ones before it. Not for archives with a hole by design (a gap, pg_resetwal).
    pub fn wait_contiguous_through(&mut self, lsn: Lsn, seg: WalSegmentSize, timeout: Duration) {
        let want = Lsn(lsn.0 - 1).segment_number(seg);
        self.wait_complete(want, timeout, |complete| {
            complete.first().is_some_and(|&first| {
                first <= want && (first..=want).all(|n| complete.contains(&n))
            })
        });
    }

    fn wait_complete(
        &mut self,
        want: u64,
        timeout: Duration,
        done: impl Fn(&std::collections::BTreeSet<u64>) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            let complete: std::collections::BTreeSet<u64> = self
                .segments()
                .iter()
                .filter(|s| !s.partial)
                .map(|s| s.name.segno)
                .collect();
            if done(&complete) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "segment {want:X} not archived within {timeout:?}; catalog: {:?}\nlog:\n{}",
                    self.segments()
                        .iter()
                        .map(|s| (s.name.segno, s.partial))
                        .collect::<Vec<_>>(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Parse `X/Y` from psql output.
pub fn lsn(text: &str) -> Lsn {
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not an LSN: {text:?}"))
}

/// `pg_switch_wal()` after some WAL, returning the switch record's end.
pub fn switch_wal(cluster: &Cluster) -> Lsn {
    cluster
        .psql("CREATE TABLE IF NOT EXISTS tm_switch(x int); INSERT INTO tm_switch VALUES (1);")
        .expect("write before switch");
    lsn(&cluster
        .psql("SELECT pg_switch_wal()")
        .expect("pg_switch_wal"))
}

/// Check every complete segment in the catalog: contiguous from the first, covering the
/// segment before `through`, and each object — decompressed by the `zstd` CLI — equal to
/// the server's own file in pg_wal. Returns how many segments were compared.
pub fn assert_segments_match_pg_wal(
    archiver: &Archiver,
    repo: &Repo,
    cluster: &Cluster,
    seg: WalSegmentSize,
    through: Lsn,
) -> usize {
    let complete: Vec<SegmentRecord> = archiver
        .segments()
        .into_iter()
        .filter(|s| !s.partial)
        .collect();
    assert!(!complete.is_empty(), "nothing archived");
    let last = Lsn(through.0 - 1).segment_number(seg);
    let first = complete[0].name.segno;
    let segnos: Vec<u64> = complete.iter().map(|s| s.name.segno).collect();
    let expected: Vec<u64> = (first..=segnos[segnos.len() - 1]).collect();
    assert_eq!(segnos, expected, "archived segments are not contiguous");
    assert!(segnos.contains(&last), "segment {last:X} missing");
    let scratch = tidemark_fixtures::test_dir("compare");
    for rec in complete.iter().filter(|s| s.name.segno <= last) {
        let name: SegmentName = rec.name;
        let file = name.file_name(seg);
        let compressed = scratch.path().join(format!("{file}.zst"));
        let raw = scratch.path().join(&file);
        repo.download(&rec.key, &compressed);
        let status = Command::new("zstd")
            .args(["-q", "-d", "-f", "-o"])
            .arg(&raw)
            .arg(&compressed)
            .status()
            .expect("run zstd");
        assert!(status.success(), "zstd -d failed on {}", rec.key);
        let ours = fs::read(&raw).unwrap();
        let theirs = fs::read(cluster.data_dir().join("pg_wal").join(&file))
            .unwrap_or_else(|e| panic!("server file {file}: {e}"));
        assert_eq!(ours.len() as u64, seg.bytes(), "{file}: wrong size");
        assert!(ours == theirs, "{file}: archived bytes differ from pg_wal");
        assert_eq!(
            rec.crc32,
            crc32(&ours),
            "{file}: catalog CRC is not the data's"
        );
    }
    complete.iter().filter(|s| s.name.segno <= last).count()
}

/// CRC-32 (IEEE), bit by bit: an independent check of what the store computes.
pub fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// Keep all WAL from now on in pg_wal (a slot nobody advances), so archived segments can
/// be compared with the server's files.
pub fn hold_wal(cluster: &Cluster) {
    cluster
        .psql("SELECT pg_create_physical_replication_slot('test_hold', true)")
        .expect("hold slot");
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// End of the unbroken run of complete segments that starts at the first one in the
/// catalog at `catalog`, extended by a stored partial segment that continues it: what the
/// slot may be acknowledged up to.
pub fn durable_end(catalog: &Path, seg: WalSegmentSize) -> Option<Lsn> {
    let segments = Catalog::open(catalog).ok()?.segments().ok()?;
    let mut complete: Vec<u64> = segments
        .iter()
        .filter(|s| !s.partial)
        .map(|s| s.name.segno)
        .collect();
    complete.sort_unstable();
    let mut next = *complete.first()?;
    for s in complete {
        if s != next {
            break;
        }
        next += 1;
    }
    let partial_end = segments
        .iter()
        .filter(|s| s.partial && s.name.segno == next)
        .map(|s| s.end_lsn)
        .max();
    Some(partial_end.unwrap_or(Lsn(next * seg.bytes())))
}

/// The slot's `restart_lsn`, if the slot exists and has one.
pub fn slot_restart(cluster: &Cluster, slot: &str) -> Option<Lsn> {
    cluster
        .psql(&format!(
            "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| lsn(&s))
}

/// `pg_basebackup -X none` of `cluster` into `<dir>/data`: a base backup whose recovery
/// needs every WAL segment from the archive. Returns the directory (for
/// `Cluster::start_prepared`).
pub fn pg_basebackup_without_wal(cluster: &Cluster) -> TempDir {
    pg_basebackup_into(cluster, "none")
}

/// `pg_basebackup -X WAL_METHOD` of `cluster` into `<dir>/data`; returns the directory.
pub fn pg_basebackup_into(cluster: &Cluster, wal_method: &str) -> TempDir {
    let dir = tidemark_fixtures::test_dir("restore");
    let out = Command::new(cluster.bin().tool("pg_basebackup"))
        .arg("-D")
        .arg(dir.path().join("data"))
        .args([
            "-X",
            wal_method,
            "-c",
            "fast",
            "--no-sync",
            "-d",
            &cluster.conninfo(),
        ])
        .output()
        .expect("run pg_basebackup");
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Make `data_dir` recover from the archive through `restore_command`.
pub fn configure_recovery(data_dir: &Path, restore_command: &str) {
    use std::io::Write;
    let mut conf = fs::OpenOptions::new()
        .append(true)
        .open(data_dir.join("postgresql.auto.conf"))
        .expect("postgresql.auto.conf");
    writeln!(
        conf,
        "restore_command = '{}'",
        restore_command.replace('\'', "''")
    )
    .unwrap();
    fs::write(data_dir.join("recovery.signal"), b"").unwrap();
}

/// The `file://` URL of `path`, every byte outside `[A-Za-z0-9/._~-]` percent-encoded.
pub fn file_url(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut url = String::from("file://");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/._~-".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// An empty directory beside the cluster's data directory, owned by postgres (for a
/// tablespace).
pub fn tablespace_dir(cluster: &Cluster) -> PathBuf {
    let dir = cluster.data_dir().parent().expect("parent").join("ts");
    fs::create_dir(&dir).expect("create tablespace directory");
    let ok = Command::new("chown")
        .arg("postgres:postgres")
        .arg(&dir)
        .status()
        .expect("chown");
    assert!(ok.success());
    dir
}

/// Let the postgres user read a `file://` repository written by root.
pub fn share_with_postgres(dir: &Path) {
    let ok = Command::new("chmod")
        .arg("-R")
        .arg("a+rX")
        .arg(dir)
        .status()
        .expect("chmod");
    assert!(ok.success());
}

/// Someone drops the archiver's slot while it is down, and checkpoints let the server
/// remove the WAL the slot held.
pub fn drop_slot_and_remove_wal(cluster: &Cluster) {
    cluster
        .psql("SELECT pg_drop_replication_slot('tidemark')")
        .unwrap();
    for _ in 0..4 {
        switch_wal(cluster);
        cluster.psql("CHECKPOINT").unwrap();
    }
}

/// A cluster with 1 MiB WAL segments: many segments from little data.
pub fn one_mb() -> tidemark_fixtures::ClusterOptions {
    tidemark_fixtures::ClusterOptions {
        wal_segsize_mb: 1,
        ..tidemark_fixtures::ClusterOptions::default()
    }
}

/// Lose the archiver's catalog (and SQLite's side files), as when its host is gone.
pub fn delete_catalog(archiver: &Archiver) {
    for suffix in ["", "-wal", "-shm"] {
        let mut path = archiver.catalog.clone().into_os_string();
        path.push(suffix);
        let _ = fs::remove_file(path);
    }
}

/// `tidemark backup ARGS…`, which must succeed; returns the backup id. Waits a second
/// afterwards: ids have one-second resolution, so two backups stay apart.
pub fn backup(archiver: &Archiver, args: &[&str]) -> String {
    let mut all = vec!["backup"];
    all.extend_from_slice(args);
    let out = run(archiver.command(&all));
    assert!(out.status.success(), "backup: {}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("backup id in the output")
        .to_string();
    std::thread::sleep(Duration::from_millis(1100));
    id
}

/// `restore --pgdata DATA --start --port PORT` with `args`; returns the output (the
/// restored server is left running).
pub fn restore_start(archiver: &Archiver, data: &Path, port: &str, args: &[&str]) -> Output {
    let mut all = vec![
        "restore",
        "--pgdata",
        data.to_str().unwrap(),
        "--start",
        "--port",
        port,
    ];
    all.extend_from_slice(args);
    run(archiver.command(&all))
}

/// `tidemark restore` with `args` into a fresh directory, which must succeed; a `file://`
/// repository is first shared with the postgres user, who runs `wal-fetch` during
/// recovery (restore checks that it can).
/// Returns the directory holding `data/`.
pub fn restore_into(archiver: &Archiver, args: &[&str]) -> TempDir {
    let dir = tidemark_fixtures::test_dir("pitr");
    let data = dir.path().join("data");
    let mut all = vec!["restore", "--pgdata", data.to_str().unwrap()];
    all.extend_from_slice(args);
    if archiver.repo_url.starts_with("file://") {
        share_with_postgres(&archiver.repo_dir_for_postgres());
    }
    let out = run(archiver.command(&all));
    assert!(out.status.success(), "restore {args:?}: {}", stderr(&out));
    dir
}

/// Start PostgreSQL on a restored directory (see [`restore_into`]) and wait for the end
/// of recovery.
pub fn start_recovered(dir: TempDir, opts: tidemark_fixtures::ClusterOptions) -> Cluster {
    let restored = Cluster::start_prepared(dir, opts).expect("restored cluster starts");
    wait_for("the end of recovery", Duration::from_secs(120), || {
        (restored.psql("SELECT pg_is_in_recovery()").ok()? == "f").then_some(())
    });
    restored
}

/// The server's current WAL insert position.
pub fn current_lsn(cluster: &Cluster) -> Lsn {
    lsn(&cluster.psql("SELECT pg_current_wal_lsn()").unwrap())
}

/// Wait until the archiver has received WAL up to `upto` (the server reports it written).
pub fn wait_received(archiver: &mut Archiver, cluster: &Cluster, upto: Lsn) {
    wait_for(
        "the archiver to receive the WAL",
        Duration::from_secs(30),
        || {
            archiver.assert_running();
            let written = cluster
                .psql(
                    "SELECT write_lsn FROM pg_stat_replication WHERE application_name = 'tidemark'",
                )
                .ok()?;
            (!written.is_empty() && lsn(&written) >= upto).then_some(())
        },
    );
}
