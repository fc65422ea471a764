//! An S3 outage while WAL flows loses nothing: uploads are retried, the slot is not
//! acknowledged past what is stored, and once S3 is back every byte arrives.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tidemark_fixtures::{Cluster, OutageProxy};
use tidemark_protocol::WalSegmentSize;

/// A 1 MiB-segment cluster that keeps its WAL, streamed (`stream` with `args`) into an S3
/// repository reached through an outage proxy, with a first stretch (`pgbench -i`)
/// archived.
fn archived_through_proxy(hint: &str, args: &[&str]) -> (Cluster, OutageProxy, Repo, Archiver) {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    hold_wal(&cluster);
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let upstream = s3.endpoint.trim_start_matches("http://").to_string();
    let proxy = OutageProxy::start(&upstream).expect("proxy");
    let repo = Repo::s3_via(hint, proxy.endpoint());
    let mut archiver = Archiver::new(&cluster, &repo, args);
    archiver.init();
    archiver.start();
    cluster.pgbench_init(1).expect("pgbench -i");
    let first = switch_wal(&cluster);
    archiver.wait_complete_through(first, seg, Duration::from_secs(60));
    (cluster, proxy, repo, archiver)
}

#[test]
fn an_s3_outage_delays_archiving_but_loses_nothing() {
    let (cluster, proxy, repo, mut archiver) =
        archived_through_proxy("outage", &["--partial-interval", "1"]);
    let seg = WalSegmentSize::new(1 << 20).unwrap();

    // S3 goes away while WAL keeps coming.
    proxy.cut();
    let stored_before = durable_end(&archiver.catalog, seg).expect("something stored");
    // Several segments' worth of WAL, deterministically.
    cluster
        .psql("CREATE TABLE during_outage AS SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
        .expect("write during the outage");
    let during = switch_wal(&cluster);
    // Long enough for the SDK's own retries to give up, so tidemark's retry policy is exercised.
    let outage_end = Instant::now() + Duration::from_secs(12);
    while Instant::now() < outage_end {
        archiver.assert_running();
        let stored = durable_end(&archiver.catalog, seg).unwrap();
        assert_eq!(
            stored, stored_before,
            "something was recorded as stored while S3 was down"
        );
        let restart = slot_restart(&cluster, "tidemark").expect("slot");
        assert!(
            restart <= stored,
            "slot acknowledged {restart} while only {stored} is stored"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        during.bytes_since(stored_before) > 3 * seg.bytes(),
        "too little WAL during the outage"
    );

    // S3 is back: everything arrives, byte for byte.
    proxy.restore();
    archiver.wait_contiguous_through(during, seg, Duration::from_secs(120));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    let compared = assert_segments_match_pg_wal(&archiver, &repo, &cluster, seg, during);
    assert!(compared >= 5, "only {compared} segments");
}

/// A small tmpfs mounted on a directory, unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tidemark_fixtures::test_dir("small-disk");
        let mut disk = SmallDisk::mount_at(dir.path(), size);
        disk._dir = Some(dir);
        disk
    }

    fn mount_at(path: &std::path::Path, size: &str) -> SmallDisk {
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs (the tests run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk {
            path: path.to_path_buf(),
            _dir: None,
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[test]
fn a_full_spool_disk_is_waited_out_and_loses_nothing() {
    // Room for about four 1 MiB segments and their compressed copies.
    let disk = SmallDisk::mount("6m");
    let spool = disk.path.join("spool");
    let (cluster, proxy, repo, mut archiver) = archived_through_proxy(
        "disk-full",
        &[
            "--partial-interval",
            "1",
            "--spool",
            spool.to_str().unwrap(),
        ],
    );
    let seg = WalSegmentSize::new(1 << 20).unwrap();

    // Uploads stall, so the spool fills up with WAL that keeps coming.
    proxy.cut();
    cluster
        .psql("CREATE TABLE during_outage AS SELECT g, md5(g::text) FROM generate_series(1, 150000) g")
        .expect("write during the outage");
    let during = switch_wal(&cluster);
    wait_for("the spool to fill", Duration::from_secs(60), || {
        archiver.assert_running();
        archiver.log().contains("disk is full").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    archiver.assert_running();
    let stored = durable_end(&archiver.catalog, seg).expect("something stored");
    let restart = slot_restart(&cluster, "tidemark").expect("slot");
    assert!(
        restart <= stored,
        "slot acknowledged {restart} while only {stored} is stored"
    );

    // Uploads resume and free the disk: every byte arrives.
    proxy.restore();
    archiver.wait_contiguous_through(during, seg, Duration::from_secs(120));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    let compared = assert_segments_match_pg_wal(&archiver, &repo, &cluster, seg, during);
    assert!(compared >= 8, "only {compared} segments");
    drop(disk);
}

#[test]
fn access_denied_while_credentials_rotate_does_not_stop_the_archiver() {
    let (cluster, proxy, repo, mut archiver) =
        archived_through_proxy("denied", &["--partial-interval", "1"]);
    let seg = WalSegmentSize::new(1 << 20).unwrap();

    // Every request is refused for a while (an expired token, keys being rotated).
    proxy.deny();
    cluster
        .psql(
            "CREATE TABLE during_denial AS SELECT g, md5(g::text) FROM generate_series(1, 50000) g",
        )
        .expect("write while denied");
    let during = switch_wal(&cluster);
    let denial_end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < denial_end {
        archiver.assert_running();
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = archiver.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("access denied"))
        .count();
    assert!(warnings > 0, "the denial was not reported:\n{log}");
    // Loud, but not a line per attempt: at most one per operation every 30 s.
    assert!(warnings <= 12, "{warnings} warnings in 20 s:\n{log}");

    proxy.restore();
    archiver.wait_contiguous_through(during, seg, Duration::from_secs(120));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    let compared = assert_segments_match_pg_wal(&archiver, &repo, &cluster, seg, during);
    assert!(compared >= 5, "only {compared} segments");
}

#[test]
fn sigterm_is_honoured_while_an_earlier_runs_segments_are_still_being_stored() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    hold_wal(&cluster);
    // A file:// repository on a disk that will be full.
    let repo = Repo::file();
    let disk = SmallDisk::mount_at(repo.file_root().parent().unwrap(), "16m");
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster.psql("CREATE TABLE t(n int)").unwrap();
    wait_received(&mut archiver, &cluster, current_lsn(&cluster));

    // The repository's disk fills up; segments pile up in the spool; the archiver dies.
    let filler = disk.path.join("filler");
    let df = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(&disk.path)
        .output()
        .expect("df");
    let avail: u64 = String::from_utf8_lossy(&df.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df output");
    // Room for leases and markers, not for a segment.
    let out = std::process::Command::new("fallocate")
        .args(["-l", &(avail - 32 * 1024).to_string()])
        .arg(&filler)
        .output()
        .expect("fallocate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.pgbench_init(1).expect("pgbench -i");
    let through = switch_wal(&cluster);
    std::thread::sleep(Duration::from_secs(2));
    archiver.kill9();
    let spool = archiver.work.path().join("catalog.db.spool");
    let spooled = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().filter(|e| e.file_name().len() == 24).count())
            .unwrap_or(0)
    };
    assert!(
        spooled(&spool) >= 3,
        "only {} segments spooled",
        spooled(&spool)
    );

    // Restarted, it stores the leftovers first; SIGTERM there stops it at once.
    archiver.start();
    wait_for(
        "the leftovers being stored",
        Duration::from_secs(60),
        || {
            archiver.assert_running();
            archiver
                .log()
                .contains("uploading segments left in the spool")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let asked = Instant::now();
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?} while leftovers were being stored",
        asked.elapsed()
    );
    assert!(spooled(&spool) >= 3, "the leftovers were dropped");

    // Space again: everything arrives, byte for byte.
    std::fs::remove_file(&filler).unwrap();
    archiver.start();
    archiver.wait_contiguous_through(through, seg, Duration::from_secs(120));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    let compared = assert_segments_match_pg_wal(&archiver, &repo, &cluster, seg, through);
    assert!(compared >= 10, "only {compared} segments");
}
