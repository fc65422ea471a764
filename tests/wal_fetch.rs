//! `tidemark wal-fetch %f %p`, PostgreSQL's restore_command: the exit-status contract of
//! DESIGN invariant 6 (a panic included), verified and atomic delivery, zero-padded
//! partial segments, a prefetch cache that never serves a wrong file, lives on pg_wal's
//! filesystem and goes away when recovery ends, a rewind mode that fetches nothing else,
//! and real recoveries through it — also when the repository fails while being opened.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;
use tidemark_fixtures::{Cluster, Fault, FaultRule, OutageProxy};
use tidemark_protocol::{Lsn, SegmentName, TimelineId, WalSegmentSize};

const SEG: u64 = 1 << 20;

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(SEG).unwrap()
}

/// `tidemark --repo URL wal-fetch FILE DEST ARGS…` run in `cwd` (a data directory).
fn wal_fetch(repo: &Repo, cwd: &Path, file: &str, args: &[&str]) -> (i32, String) {
    let mut cmd = tidemark(repo);
    cmd.current_dir(cwd)
        .args([
            "--repo",
            &repo.url(),
            "wal-fetch",
            file,
            "pg_wal/RECOVERYXLOG",
        ])
        .args(args);
    let out = run(cmd);
    (out.status.code().unwrap_or(-1), stderr(&out))
}

fn name(segno: u64) -> String {
    SegmentName::new(TimelineId(1), segno).file_name(seg())
}

#[test]
fn wal_fetch_keeps_its_contract_with_postgres() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    hold_wal(&cluster);
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster.pgbench_init(1).expect("pgbench -i");
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg(), Duration::from_secs(60));
    // A tail that only exists as a partial segment.
    cluster
        .psql("CREATE TABLE tail AS SELECT g FROM generate_series(1, 2000) g")
        .unwrap();
    let tail_end = lsn(&cluster.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    wait_for("the tail to be archived", Duration::from_secs(30), || {
        (archiver.archived_end() >= tail_end).then_some(())
    });
    assert_eq!(archiver.terminate(), 0);

    let last = Lsn(through.0 - 1).segment_number(seg());
    let datadir = tidemark_fixtures::test_dir("fetch-cwd");
    let cwd = datadir.path();
    fs::create_dir(cwd.join("pg_wal")).unwrap();
    let dest = cwd.join("pg_wal/RECOVERYXLOG");
    let server_file = |n: &str| fs::read(cluster.data_dir().join("pg_wal").join(n)).unwrap();

    // A complete segment: exit 0, the server's exact bytes.
    let (code, err) = wal_fetch(&repo, cwd, &name(last), &["--prefetch", "0"]);
    assert_eq!(code, 0, "{err}");
    assert!(fs::read(&dest).unwrap() == server_file(&name(last)));
    fs::remove_file(&dest).unwrap();

    // The newest partial: zero-padded to the segment size, the received prefix intact.
    let tail_seg = tail_end.segment_number(seg());
    let (code, err) = wal_fetch(&repo, cwd, &name(tail_seg), &["--prefetch", "0"]);
    assert_eq!(code, 0, "{err}");
    let served = fs::read(&dest).unwrap();
    assert_eq!(served.len() as u64, SEG);
    let prefix = tail_end.segment_offset(seg()) as usize;
    assert!(served[..prefix] == server_file(&name(tail_seg))[..prefix]);
    let partial_end = archiver
        .segments()
        .iter()
        .find(|s| s.partial && s.name.segno == tail_seg)
        .map(|s| s.end_lsn.segment_offset(seg()) as usize)
        .expect("partial in the catalog");
    assert!(
        served[partial_end..].iter().all(|&b| b == 0),
        "padding must be zeros"
    );
    fs::remove_file(&dest).unwrap();

    // Absent files: exit 1, nothing written.
    for absent in [
        name(last + 1000),
        "00000002.history".into(),
        format!("{}.partial", name(last)),
    ] {
        let (code, err) = wal_fetch(&repo, cwd, &absent, &[]);
        assert_eq!(code, 1, "{absent}: {err}");
        assert!(!dest.exists(), "{absent} left a file");
    }

    // A malformed call must not read as "not found" (that would end recovery).
    let mut cmd = tidemark(&repo);
    cmd.current_dir(cwd)
        .args(["--repo", &repo.url(), "wal-fetch", "only-one-arg"]);
    assert_eq!(run(cmd).status.code(), Some(200));

    // Prefetch: serving a segment fills the cache with the next ones...
    let first = last - 4;
    let (code, err) = wal_fetch(&repo, cwd, &name(first), &["--prefetch", "2"]);
    assert_eq!(code, 0, "{err}");
    fs::remove_file(&dest).unwrap();
    let cache = cwd.join("pg_wal/.tidemark-prefetch");
    wait_for("two prefetched segments", Duration::from_secs(30), || {
        let n = fs::read_dir(&cache)
            .ok()?
            .flatten()
            .filter(|e| {
                SegmentName::is_file_name(
                    &e.file_name().to_string_lossy()[..24.min(e.file_name().len())],
                ) && !e.file_name().to_string_lossy().ends_with(".tmp")
            })
            .count();
        (n >= 2).then_some(())
    });
    // ...which are served even with the repository gone, and only if intact.
    let root = repo.file_root();
    let moved = root.with_file_name("repo-away");
    fs::rename(&root, &moved).unwrap();
    let (code, err) = wal_fetch(&repo, cwd, &name(first + 1), &["--prefetch", "0"]);
    assert_eq!(code, 0, "served from the cache: {err}");
    assert!(fs::read(&dest).unwrap() == server_file(&name(first + 1)));
    fs::remove_file(&dest).unwrap();
    let entry = fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&name(first + 2))
        })
        .expect("second prefetched entry")
        .path();
    let mut bytes = fs::read(&entry).unwrap();
    bytes[4096] ^= 0xFF;
    fs::write(&entry, bytes).unwrap();
    let (code, err) = wal_fetch(&repo, cwd, &name(first + 2), &["--retry-seconds", "1"]);
    assert_eq!(
        code, 200,
        "a damaged cache entry with no repository must be fatal: {err}"
    );
    assert!(!dest.exists(), "a damaged cache entry was served");
    fs::rename(&moved, &root).unwrap();

    // A corrupted object is never served: fatal in archive recovery, 1 in standby mode.
    let victim = root.join(format!("wal/00000001/{}.zst", name(last - 1)));
    let mut bytes = fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    fs::write(&victim, bytes).unwrap();
    let (code, err) = wal_fetch(&repo, cwd, &name(last - 1), &["--retry-seconds", "1"]);
    assert_eq!(code, 200, "{err}");
    assert!(err.contains("archive recovery stops"), "{err}");
    assert!(!dest.exists(), "a corrupted object was served");
    fs::write(cwd.join("standby.signal"), b"").unwrap();
    let (code, err) = wal_fetch(&repo, cwd, &name(last - 1), &["--retry-seconds", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(!dest.exists());
}

#[test]
fn a_base_backup_recovers_through_wal_fetch() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster.psql("CREATE TABLE t(id int)").unwrap();
    cluster
        .psql("INSERT INTO t SELECT generate_series(1, 100)")
        .unwrap();
    let backup = pg_basebackup_without_wal(&cluster);
    cluster.pgbench_init(1).expect("WAL after the backup");
    cluster
        .psql("INSERT INTO t SELECT generate_series(101, 250)")
        .unwrap();
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg(), Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0);
    share_with_postgres(&repo.file_root());

    let data = backup.path().join("data");
    configure_recovery(
        &data,
        &format!(
            "{} --repo {} wal-fetch %f %p",
            env!("CARGO_BIN_EXE_tidemark"),
            repo.url()
        ),
    );
    let restored = Cluster::start_prepared(backup, one_mb()).expect("restored cluster starts");
    wait_for("promotion", Duration::from_secs(120), || {
        (restored.psql("SELECT pg_is_in_recovery()").ok()? == "f").then_some(())
    });
    assert_eq!(
        restored.psql("SELECT count(*), max(id) FROM t").unwrap(),
        "250|250"
    );
    let log = fs::read_to_string(restored.log_path()).unwrap();
    assert!(
        log.contains("restored log file"),
        "recovery did not use wal-fetch:\n{log}"
    );
}

#[test]
fn unreachable_s3_during_archive_recovery_stops_postgres_instead_of_promoting() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let proxy = OutageProxy::start(s3.endpoint.trim_start_matches("http://")).expect("proxy");
    let repo = Repo::s3_via("fetch-outage", proxy.endpoint());
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    let backup = pg_basebackup_without_wal(&cluster);
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg(), Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0);

    proxy.cut();
    let env: String = repo
        .env()
        .iter()
        .map(|(k, v)| format!("{k}={v} "))
        .collect();
    let data = backup.path().join("data");
    configure_recovery(
        &data,
        &format!(
            "{env}{} --repo {} wal-fetch --retry-seconds 2 %f %p",
            env!("CARGO_BIN_EXE_tidemark"),
            repo.url()
        ),
    );
    let err = Cluster::start_prepared(backup, one_mb())
        .expect_err("recovery must not complete without the archive");
    // The server log, which start_prepared returns when postgres exits.
    let log = format!("{err:#}");
    assert!(
        log.contains("FATAL")
            && log.contains("could not restore file")
            && log.contains("exit code 200"),
        "{log}"
    );
    assert!(
        !log.contains("selected new timeline ID") && !log.contains("ready to accept connections"),
        "PostgreSQL promoted without the archive:\n{log}"
    );
}

/// The bucket of an S3 repository.
fn bucket(repo: &Repo) -> String {
    match repo {
        Repo::S3 { bucket, .. } => bucket.clone(),
        Repo::File { .. } => panic!("not an S3 repository"),
    }
}

/// An archive of `cluster` in a fresh S3 bucket, WAL switched and stored through the
/// returned position; the archiver is stopped.
fn archived_in_s3(cluster: &Cluster, hint: &str, before_stop: impl FnOnce()) -> (Repo, Lsn) {
    let repo = Repo::s3(hint);
    let mut archiver = Archiver::new(cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    before_stop();
    let through = switch_wal(cluster);
    archiver.wait_complete_through(through, seg(), Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0);
    (repo, through)
}

#[test]
fn a_recovery_whose_wal_fetch_meets_a_500_and_a_cut_transfer_opening_the_repository_still_completes(
) {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    cluster.psql("CREATE TABLE t(id int)").unwrap();
    cluster
        .psql("INSERT INTO t SELECT generate_series(1, 100)")
        .unwrap();
    let mut backup = None;
    let (repo, _) = archived_in_s3(&cluster, "fetch-open", || {
        backup = Some(pg_basebackup_without_wal(&cluster));
        cluster
            .psql("INSERT INTO t SELECT generate_series(101, 250)")
            .unwrap();
    });
    let backup = backup.unwrap();
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let proxy = OutageProxy::start_http(s3.endpoint.trim_start_matches("http://")).expect("proxy");
    // The first wal-fetch: its HeadBucket answers 500, its read of the identity is cut.
    proxy.fail(FaultRule {
        method: "HEAD",
        path_contains: format!("/{}", bucket(&repo)),
        nth: 1,
        times: 1,
        fault: Fault::Status(500),
    });
    proxy.fail(FaultRule {
        method: "GET",
        path_contains: "tidemark.json".into(),
        nth: 1,
        times: 1,
        fault: Fault::CutBody,
    });
    let env: String = repo
        .env()
        .iter()
        .filter(|(k, _)| k != "AWS_ENDPOINT_URL_S3")
        .map(|(k, v)| format!("{k}={v} "))
        .collect();
    let data = backup.path().join("data");
    configure_recovery(
        &data,
        &format!(
            "{env}AWS_ENDPOINT_URL_S3={} {} --repo {} wal-fetch %f %p",
            proxy.endpoint(),
            env!("CARGO_BIN_EXE_tidemark"),
            repo.url()
        ),
    );
    let restored = start_recovered(backup, one_mb());
    assert_eq!(
        restored.psql("SELECT count(*), max(id) FROM t").unwrap(),
        "250|250"
    );
    assert_eq!(proxy.faults_fired(), 2, "both faults were met");
}

#[test]
fn wal_fetch_exits_200_not_101_when_it_panics() {
    let repo = Repo::file();
    let dir = tidemark_fixtures::test_dir("fetch-panic");
    fs::create_dir(dir.path().join("pg_wal")).unwrap();
    let panicking = || {
        let mut cmd = tidemark(&repo);
        cmd.current_dir(dir.path())
            .env("TIDEMARK_TEST_PANIC", "1")
            .args([
                "--repo",
                &repo.url(),
                "wal-fetch",
                &name(3),
                "pg_wal/RECOVERYXLOG",
            ]);
        let out = run(cmd);
        (out.status.code(), stderr(&out))
    };
    let (code, err) = panicking();
    assert_eq!(code, Some(200), "{err}");
    assert!(
        err.contains("error: internal error") && err.contains("archive recovery stops"),
        "{err}"
    );
    assert!(
        !err.contains("RUST_BACKTRACE"),
        "one line, no Rust panic text: {err}"
    );
    // In standby mode PostgreSQL retries: a panic is "not available", like other failures.
    fs::write(dir.path().join("standby.signal"), b"").unwrap();
    assert_eq!(panicking().0, Some(1));
}

/// Restore from a tidemark backup, move `pg_wal` to another filesystem behind a symlink,
/// recover: segments are served from the prefetch cache, which is gone once recovery has
/// ended, and which a base backup never carries.
fn prefetch_with_pg_wal_on_another_filesystem(major: u32) {
    let opts = tidemark_fixtures::ClusterOptions { major, ..one_mb() };
    let cluster = Cluster::start(opts.clone()).expect("cluster");
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster.psql("CREATE TABLE t(id int)").unwrap();
    cluster
        .psql("INSERT INTO t SELECT generate_series(1, 100)")
        .unwrap();
    backup(&archiver, &[]);
    // Enough WAL after the backup for the prefetch to run ahead of replay.
    cluster.pgbench_init(1).expect("pgbench -i");
    cluster
        .psql("INSERT INTO t SELECT generate_series(101, 250)")
        .unwrap();
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg(), Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0);

    let dir = restore_into(&archiver, &[]);
    let data = dir.path().join("data");
    // pg_wal on another filesystem (tmpfs), as a symlink.
    let elsewhere = tempfile::Builder::new()
        .prefix("tidemark-pg-wal-")
        .tempdir_in("/dev/shm")
        .expect("a directory on /dev/shm");
    assert_ne!(
        device(elsewhere.path()),
        device(&data),
        "/dev/shm is another filesystem"
    );
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(data.join("pg_wal"))
        .arg(elsewhere.path())
        .status()
        .unwrap();
    assert!(status.success());
    fs::remove_dir_all(data.join("pg_wal")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("pg_wal"), data.join("pg_wal")).unwrap();
    give_to_postgres(elsewhere.path());
    let conf = fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains("wal-fetch-end"), "{conf}");

    let restored = start_recovered(dir, opts);
    assert_eq!(
        restored.psql("SELECT count(*), max(id) FROM t").unwrap(),
        "250|250"
    );
    let log = fs::read_to_string(restored.log_path()).unwrap();
    assert!(
        log.contains("source=prefetch cache pg_wal/.tidemark-prefetch"),
        "no segment was served from the prefetch cache:\n{log}"
    );
    let cache = data.join("pg_wal/.tidemark-prefetch");
    wait_for(
        "recovery_end_command to remove the cache",
        Duration::from_secs(10),
        || (!cache.exists()).then_some(()),
    );
    assert!(!data.join(".tidemark-prefetch").exists());
    // Even while it exists, the cache is not part of a base backup.
    fs::create_dir(&cache).unwrap();
    fs::write(cache.join(format!("{}.00000000", name(0x99))), b"x").unwrap();
    let copy = pg_basebackup_into(&restored, "fetch");
    assert!(copy.path().join("data/pg_wal").is_dir());
    assert!(
        !copy.path().join("data/pg_wal/.tidemark-prefetch").exists(),
        "a base backup carried the prefetch cache"
    );
    fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn prefetch_works_with_pg_wal_on_another_filesystem_and_the_cache_is_gone_after_recovery_on_postgresql_14(
) {
    prefetch_with_pg_wal_on_another_filesystem(14);
}

#[test]
fn prefetch_works_with_pg_wal_on_another_filesystem_and_the_cache_is_gone_after_recovery_on_postgresql_15(
) {
    prefetch_with_pg_wal_on_another_filesystem(15);
}

#[test]
fn prefetch_works_with_pg_wal_on_another_filesystem_and_the_cache_is_gone_after_recovery_on_postgresql_16(
) {
    prefetch_with_pg_wal_on_another_filesystem(16);
}

#[test]
fn prefetch_works_with_pg_wal_on_another_filesystem_and_the_cache_is_gone_after_recovery_on_postgresql_17(
) {
    prefetch_with_pg_wal_on_another_filesystem(17);
}

#[test]
fn prefetch_works_with_pg_wal_on_another_filesystem_and_the_cache_is_gone_after_recovery_on_postgresql_18(
) {
    prefetch_with_pg_wal_on_another_filesystem(18);
}

fn device(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().dev()
}

/// Make `dir` (a tree outside a fixture's data directory) the postgres user's when the
/// tests run as root.
fn give_to_postgres(dir: &Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let ok = std::process::Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn no_prefetch_fetches_only_the_asked_file() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let (repo, through) = archived_in_s3(&cluster, "fetch-rewind", || {
        cluster.pgbench_init(1).expect("pgbench -i");
    });
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let proxy = OutageProxy::start_http(s3.endpoint.trim_start_matches("http://")).expect("proxy");
    let dir = tidemark_fixtures::test_dir("fetch-rewind");
    fs::create_dir(dir.path().join("pg_wal")).unwrap();
    let last = Lsn(through.0 - 1).segment_number(seg());
    let fetch = |file: &str, args: &[&str]| {
        let mut cmd = tidemark(&repo);
        cmd.current_dir(dir.path())
            .env("AWS_ENDPOINT_URL_S3", proxy.endpoint())
            .args(["--repo", &repo.url(), "wal-fetch"])
            .args(args)
            .args([file, "pg_wal/RECOVERYXLOG"]);
        let out = run(cmd);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        fs::remove_file(dir.path().join("pg_wal/RECOVERYXLOG")).unwrap();
    };
    let wal_reads = || -> Vec<String> {
        proxy
            .requests()
            .into_iter()
            .filter(|r| r.contains("/wal/"))
            .collect()
    };

    fetch(&name(last - 6), &["--no-prefetch"]);
    std::thread::sleep(Duration::from_secs(1));
    let reads = wal_reads();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert!(reads[0].contains(&name(last - 6)), "{reads:?}");
    assert!(!dir.path().join("pg_wal/.tidemark-prefetch").exists());

    // Without it, the segments after the one asked for are fetched too.
    proxy.clear_requests();
    fetch(&name(last - 6), &["--prefetch", "2"]);
    wait_for("the prefetch", Duration::from_secs(30), || {
        (wal_reads().len() >= 3).then_some(())
    });
}
