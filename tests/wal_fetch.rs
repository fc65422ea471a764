//! `tidemark wal-fetch %f %p`, PostgreSQL's restore_command: the exit-status contract of
//! DESIGN invariant 6, verified and atomic delivery, zero-padded partial segments, a
//! prefetch cache that never serves a wrong file, and real recoveries through it.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;
use tidemark_fixtures::{Cluster, OutageProxy};
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
