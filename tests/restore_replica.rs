//! Restoring replicas and rebuilding old primaries: `restore --standby` builds a standby
//! that streams from the primary, `restore --patroni` is called exactly as Patroni calls
//! a replica-creation (and a bootstrap) method, and `restore --delta` rebuilds a stale copy
//! writing only what changed — exactly, and never under a running server.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::app::{pg_now, psql_port, started};
use common::*;
use tidemark_fixtures::{Cluster, ClusterOptions};
use tidemark_protocol::{Lsn, WalSegmentSize};

fn options(major: u32) -> ClusterOptions {
    ClusterOptions { major, ..one_mb() }
}

/// A primary of `major` archived into a `file://` repository, with an `events` table.
fn archived(major: u32) -> (Cluster, Repo, Archiver) {
    let cluster = Cluster::start(options(major)).expect("cluster");
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE events(id int, phase int)")
        .unwrap();
    (cluster, repo, archiver)
}

/// 100 rows of `phase`; returns the WAL position after their commit.
fn rows(cluster: &Cluster, phase: u32) -> Lsn {
    cluster
        .psql(&format!(
            "INSERT INTO events SELECT g, {phase} FROM generate_series(1, 100) g"
        ))
        .unwrap();
    current_lsn(cluster)
}

const PHASES: &str = "SELECT coalesce(string_agg(phase || ':' || n, ',' ORDER BY phase), '') FROM (SELECT phase, count(*) n FROM events GROUP BY phase) s";

/// Switch the WAL and wait until the repository holds it all; then let the server's user
/// read the repository.
fn archive_all(cluster: &Cluster, archiver: &mut Archiver) {
    let through = switch_wal(cluster);
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    archiver.wait_complete_through(through, seg, Duration::from_secs(60));
    share_with_postgres(&archiver.repo_dir_for_postgres());
}

#[test]
fn a_restored_standby_streams_from_the_primary() {
    for major in [15, 17] {
        let (primary, _repo, mut archiver) = archived(major);
        rows(&primary, 1);
        backup(&archiver, &[]);
        rows(&primary, 2);
        archive_all(&primary, &mut archiver);

        let dir = tidemark_fixtures::test_dir("standby");
        let data = dir.path().join("data");
        let port = tidemark_fixtures::free_port().to_string();
        let conninfo = primary.conninfo_as("pwuser", Some("pwsecret"));
        primary
            .psql("SELECT pg_create_physical_replication_slot('replica_1')")
            .unwrap();
        let args = [
            "--standby",
            "--primary-conninfo",
            &conninfo,
            "--primary-slot-name",
            "replica_1",
            "--start-timeout",
            "90",
        ];
        let out = restore_start(&archiver, &data, &port, &args);
        let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(!printed.contains("pwsecret"), "password shown: {printed}");
        let standby = started(out, port.clone(), &args);
        assert!(
            standby.stdout.contains("streaming from its primary"),
            "{}",
            standby.stdout
        );
        assert!(data.join("standby.signal").exists());
        assert!(!data.join("recovery.signal").exists());
        let sql = |q: &str| psql_port(&primary, &port, q);
        assert_eq!(sql("SELECT pg_is_in_recovery()"), "t", "PG {major}");
        assert_eq!(sql("SELECT status FROM pg_stat_wal_receiver"), "streaming");
        assert_eq!(sql(PHASES), "1:100,2:100");

        // A row committed on the primary after the restore reaches the standby by streaming.
        rows(&primary, 3);
        wait_for("phase 3 on the standby", Duration::from_secs(30), || {
            (sql(PHASES) == "1:100,2:100,3:100").then_some(())
        });
        primary
            .wait_streaming(1)
            .expect("the primary sees it stream");
        drop(standby);
    }
}

#[test]
fn patroni_create_replica_method_builds_a_standby() {
    let (primary, repo, mut archiver) = archived(15);
    rows(&primary, 1);
    backup(&archiver, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let t = pg_now(&primary);
    std::thread::sleep(Duration::from_millis(1500));
    rows(&primary, 2);
    archive_all(&primary, &mut archiver);

    // As Patroni runs `command` of a create_replica_methods entry with keep_data and
    // no_master set: the method's options, then scope, role, datadir and connstring.
    let patroni = |args: &[&str]| {
        let mut cmd = tidemark(&repo);
        cmd.args(["--repo", &repo.url(), "restore", "--patroni"])
            .args(args);
        run(cmd)
    };
    let dir = tidemark_fixtures::test_dir("patroni-replica");
    let data = dir.path().join("data");
    let datadir = format!("--datadir={}", data.display());
    let connstring = format!(
        "--connstring=dbname=postgres user=postgres host=127.0.0.1 port={}",
        primary.port()
    );
    let replica_args = [
        "--keep_data=False",
        "--no_master=1",
        "--scope=demo",
        "--role=replica",
        &datadir,
        &connstring,
    ];

    // An option Patroni does not pass, and a target for a replica, are refused unwritten.
    let mut bogus = replica_args.to_vec();
    bogus.push("--primary_slot_nmae=x");
    let out = patroni(&bogus);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let mut targeted = replica_args.to_vec();
    targeted.extend(["--target-time", &t]);
    let out = patroni(&targeted);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("a standby has no recovery target"));
    assert!(!data.exists(), "a refusal wrote the data directory");

    let out = patroni(&replica_args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(data.join("standby.signal").exists());
    let auto = fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("restore_command = '"), "{auto}");
    assert!(!auto.contains("archive_mode = 'off'"), "{auto}");

    // Patroni then configures and starts it: it streams from the leader.
    let replica = Cluster::start_prepared(dir, options(15)).expect("replica starts");
    wait_for("the replica to stream", Duration::from_secs(60), || {
        (replica
            .psql("SELECT status FROM pg_stat_wal_receiver")
            .ok()?
            == "streaming")
            .then_some(())
    });
    rows(&primary, 3);
    wait_for("phase 3 on the replica", Duration::from_secs(30), || {
        (replica.psql(PHASES).ok()? == "1:100,2:100,3:100").then_some(())
    });

    // A bootstrap method: a new cluster restored to a time (Patroni passes scope and
    // datadir; the target is part of the method's command).
    // Phase 3's segment complete and readable by the server's user (the partial segment
    // the archiver keeps rewriting is its own until then).
    archive_all(&primary, &mut archiver);
    let dir = tidemark_fixtures::test_dir("patroni-bootstrap");
    let datadir = format!("--datadir={}", dir.path().join("data").display());
    let out = patroni(&["--target-time", &t, "--scope=demo", &datadir]);
    assert!(out.status.success(), "{}", stderr(&out));
    let restored = start_recovered(dir, options(15));
    assert_eq!(restored.psql(PHASES).unwrap(), "1:100");
}

/// The number after `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> f64 {
    text.split(prefix)
        .nth(1)
        .and_then(|r| r.split(|c: char| !(c.is_ascii_digit() || c == '.')).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix:?} in {text}"))
}

#[test]
fn a_delta_restore_over_a_stale_copy_rewrites_only_changed_files_and_is_exact() {
    let ts = tidemark_fixtures::test_dir("delta-ts");
    let chown = std::process::Command::new("chown")
        .arg("postgres:postgres")
        .arg(ts.path())
        .status()
        .unwrap();
    assert!(chown.success());
    let (origin, _repo, mut archiver) = archived(15);
    origin.pgbench_init(1).unwrap();
    origin
        .psql(&format!(
            "CREATE TABLESPACE ts LOCATION '{}';
             CREATE TABLE in_ts(id int) TABLESPACE ts; CREATE TABLE same_in_ts(id int) TABLESPACE ts;
             INSERT INTO in_ts SELECT generate_series(1, 1000); INSERT INTO same_in_ts SELECT generate_series(1, 1000);",
            ts.path().display()
        ))
        .unwrap();
    origin
        .psql(
            "CREATE TABLE a(id int, v text); CREATE TABLE b(id int); CREATE TABLE keep_me(id int);
             INSERT INTO a SELECT g, 'old' FROM generate_series(1, 5000) g;
             INSERT INTO b SELECT generate_series(1, 5000);
             INSERT INTO keep_me SELECT generate_series(1, 5000);
             CHECKPOINT;",
        )
        .unwrap();
    backup(&archiver, &[]);
    let first = rows(&origin, 1).to_string();
    archive_all(&origin, &mut archiver);
    // The stale copy: restored from the first backup, run, stopped (an old primary).
    let copy_dir = tidemark_fixtures::test_dir("stale-copy");
    let copy = copy_dir.path().join("data");
    let port = tidemark_fixtures::free_port().to_string();
    let args = ["--target-lsn", &first];
    drop(started(
        restore_start(&archiver, &copy, &port, &args),
        port,
        &args,
    ));

    // The origin moves on: a few tables change, then a second backup.
    origin
        .psql("UPDATE a SET v = 'changed' WHERE id <= 10; INSERT INTO b SELECT generate_series(5001, 6000); INSERT INTO in_ts VALUES (1001);")
        .unwrap();
    rows(&origin, 2);
    // Small chunks, so that many hold only unchanged files.
    backup(&archiver, &["--chunk-size-mb", "1"]);
    let target = rows(&origin, 3);
    rows(&origin, 4);
    archive_all(&origin, &mut archiver);

    // The copy is damaged too: one file corrupted, one deleted, junk added.
    let file = |table: &str| {
        let rel = origin
            .psql(&format!("SELECT pg_relation_filepath('{table}')"))
            .unwrap();
        copy.join(rel)
    };
    // Files a delta keeps are left in place (same inode), in the base directory and in
    // the restored tablespace (`pg_tblspc/<oid>/…` lives in `<pgdata>.tablespaces/<oid>`).
    let inode = |path: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).unwrap());
    let in_copy = |table: &str| {
        let rel = origin
            .psql(&format!("SELECT pg_relation_filepath('{table}')"))
            .unwrap();
        match rel.strip_prefix("pg_tblspc/") {
            Some(rest) => Path::new(&format!("{}.tablespaces", copy.display())).join(rest),
            None => copy.join(rel),
        }
    };
    let unchanged = [in_copy("same_in_ts"), in_copy("pgbench_accounts")];
    let inodes: Vec<u64> = unchanged.iter().map(|p| inode(p)).collect();
    fs::write(file("b"), vec![0xA5u8; 8192]).unwrap();
    fs::remove_file(file("keep_me")).unwrap();
    fs::create_dir_all(copy.join("base/99999")).unwrap();
    fs::write(copy.join("base/99999/1"), b"junk").unwrap();
    fs::write(copy.join("junk"), b"junk").unwrap();

    let port = tidemark_fixtures::free_port().to_string();
    let target = target.to_string();
    let args = ["--delta", "--target-lsn", &target];
    let out = restore_start(&archiver, &copy, &port, &args);
    let rebuilt = started(out, port.clone(), &args);
    let out = rebuilt.stdout.clone();
    let sql = |q: &str| psql_port(&origin, &port, q);
    assert_eq!(sql(PHASES), "1:100,2:100,3:100", "{out}");
    assert_eq!(sql("SELECT count(*) FROM a WHERE v = 'changed'"), "10");
    assert_eq!(sql("SELECT count(*), sum(id) FROM b"), "6000|18003000");
    assert_eq!(sql("SELECT count(*) FROM keep_me"), "5000");
    assert_eq!(sql("SELECT count(*) FROM pgbench_accounts"), "100000");
    assert_eq!(sql("SELECT count(*) FROM in_ts"), "1001");
    assert_eq!(sql("SELECT count(*) FROM same_in_ts"), "1000");
    let after: Vec<u64> = unchanged.iter().map(|p| inode(p)).collect();
    assert_eq!(after, inodes, "unchanged files were written again: {out}");
    assert!(!copy.join("junk").exists());
    assert!(!copy.join("base/99999").exists());

    // Written: only the changed files, a small part of what a full restore writes.
    let full_mb = number_after(&out, "chunks (");
    let written = number_after(out.split("wrote ").nth(1).unwrap_or(""), "files (");
    let kept = number_after(&out, "kept ");
    eprintln!("delta: {written} bytes written of a {full_mb} MB backup, {kept} files kept\n{out}");
    assert!(kept > 100.0, "{out}");
    // Chunks holding only kept files are not fetched at all.
    let chunks = number_after(&out, "restored ");
    let fetched_mb = number_after(&out, "MB; ");
    let in_place = number_after(out.split("delta: ").nth(1).unwrap_or(""), "MB; ");
    eprintln!("delta: {in_place} of {chunks} chunks in place, {fetched_mb} MB fetched");
    assert!(in_place >= chunks / 4.0, "{out}");
    assert!(
        written < full_mb * f64::from(1 << 20) / 10.0,
        "delta wrote {written} bytes of {full_mb} MB: {out}"
    );
    drop(rebuilt);
}

#[test]
fn a_delta_restore_into_a_running_servers_directory_is_refused() {
    let (origin, _repo, mut archiver) = archived(15);
    rows(&origin, 1);
    backup(&archiver, &[]);
    archive_all(&origin, &mut archiver);
    let data = origin.data_dir();
    let marker = data.join("not-in-the-backup");
    fs::write(&marker, b"still here").unwrap();
    let auto = fs::read(data.join("postgresql.auto.conf")).unwrap();
    let out = run(archiver.command(&["restore", "--delta", "--pgdata", data.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a server is running"),
        "{}",
        stderr(&out)
    );
    assert!(marker.exists(), "the delta removed a file");
    assert_eq!(fs::read(data.join("postgresql.auto.conf")).unwrap(), auto);
    for name in ["standby.signal", "recovery.signal"] {
        assert!(!data.join(name).exists(), "{name} written");
    }
    let journal = Path::new(&format!("{}.tidemark-restore", data.display())).to_path_buf();
    assert!(!journal.exists());
    assert_eq!(origin.psql(PHASES).unwrap(), "1:100");
}

#[test]
fn a_standby_that_cannot_reach_its_primary_says_why_within_its_timeout() {
    let (primary, _repo, mut archiver) = archived(15);
    rows(&primary, 1);
    backup(&archiver, &[]);
    archive_all(&primary, &mut archiver);
    let dir = tidemark_fixtures::test_dir("lost-standby");
    let data = dir.path().join("data");
    let port = tidemark_fixtures::free_port().to_string();
    let nowhere = format!(
        "host=127.0.0.1 port={} user=postgres",
        tidemark_fixtures::free_port()
    );
    let out = restore_start(
        &archiver,
        &data,
        &port,
        &[
            "--standby",
            "--primary-conninfo",
            &nowhere,
            "--start-timeout",
            "5",
        ],
    );
    let err = stderr(&out);
    // The server keeps trying as a standby: stop it.
    let pid: i32 = fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse().ok())
        .expect("the standby is still running");
    // SAFETY: stopping the server this test's restore started.
    unsafe { libc::kill(pid, libc::SIGINT) };
    wait_for("the standby to stop", Duration::from_secs(30), || {
        // SAFETY: probing whether the pid still exists.
        (unsafe { libc::kill(pid, 0) } != 0).then_some(())
    });
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("did not start streaming"), "{err}");
    assert!(
        err.contains("could not connect to the primary server"),
        "{err}"
    );
}

#[test]
fn a_delta_restore_over_another_clusters_or_a_non_data_directory_is_refused() {
    let (origin, _repo, mut archiver) = archived(15);
    rows(&origin, 1);
    backup(&archiver, &[]);
    archive_all(&origin, &mut archiver);
    let mut other = Cluster::start(options(15)).expect("another cluster");
    other.stop().unwrap();
    let dir = tidemark_fixtures::test_dir("not-data");
    fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    for (target, needle) in [
        (other.data_dir(), "holds another cluster"),
        (dir.path(), "holds no PostgreSQL data directory"),
    ] {
        let before = fs::read_dir(target).unwrap().count();
        let out =
            run(archiver.command(&["restore", "--delta", "--pgdata", target.to_str().unwrap()]));
        assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
        assert_eq!(fs::read_dir(target).unwrap().count(), before, "written");
    }
    assert!(dir.path().join("notes.txt").exists());
}
