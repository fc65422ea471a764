//! `tidemark restore`: the planner picks the newest backup that ends before the target,
//! proves the WAL is there, and the restored cluster holds exactly the rows committed up
//! to the target. Bad input is refused with nothing written.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use tidemark_fixtures::{Cluster, ClusterOptions};
use tidemark_protocol::{Lsn, WalSegmentSize};

/// Commit burst `n`: three transactions of rows tagged `n`; returns the WAL position
/// after its last commit.
fn burst(cluster: &Cluster, n: u32) -> Lsn {
    for t in 0..3 {
        cluster
            .psql(&format!(
                "INSERT INTO events SELECT g, {n} FROM generate_series({}, {}) g",
                t * 100,
                t * 100 + 99
            ))
            .unwrap();
    }
    lsn(&cluster.psql("SELECT pg_current_wal_lsn()").unwrap())
}

/// Restore with `args` into a fresh directory, verify it, start it, and return the
/// bursts present (burst -> rows).
fn restore_and_count(archiver: &Archiver, cluster: &Cluster, args: &[&str]) -> String {
    let dir = restore_into(archiver, args);
    verify_backup(cluster, &dir.path().join("data"));
    let restored = start_recovered(dir, one_mb());
    amcheck(&restored);
    restored
        .psql("SELECT string_agg(burst || ':' || n, ',' ORDER BY burst) FROM (SELECT burst, count(*) n FROM events GROUP BY burst) s")
        .unwrap()
}

/// `pg_amcheck` finds nothing wrong in any database of the recovered cluster.
fn amcheck(restored: &Cluster) {
    let out = std::process::Command::new(restored.bin().tool("pg_amcheck"))
        .args([
            "--all",
            "--install-missing",
            "--heapallindexed",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
        ])
        .arg(restored.port().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_amcheck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn verify_backup(cluster: &Cluster, data: &Path) {
    let out = std::process::Command::new(cluster.bin().tool("pg_verifybackup"))
        .arg("-n")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn restores_to_lsn_targets_latest_and_immediate_with_exactly_the_right_rows() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE events(id int, burst int)")
        .unwrap();
    let _b1 = burst(&cluster, 1);
    let backup_a = backup(&archiver, &[]);
    let b2 = burst(&cluster, 2);
    switch_wal(&cluster);
    let b3 = burst(&cluster, 3);
    let _backup_b = backup(&archiver, &[]);
    let b4 = burst(&cluster, 4);
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg, Duration::from_secs(60));
    let b5 = burst(&cluster, 5);
    wait_for("the tail archived", Duration::from_secs(30), || {
        (archiver.archived_end() >= b5).then_some(())
    });
    assert_eq!(archiver.terminate(), 0);

    // Restores need no catalog: lose it (the archiver's host is gone).
    delete_catalog(&archiver);

    // The plan names the backup it would use.
    let out = run(archiver.command(&["plan", "--target-lsn", &b2.to_string(), "--json"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["backup"], backup_a.as_str(), "{plan:#}");

    for (args, expected) in [
        (
            vec!["--target-lsn".to_string(), b2.to_string()],
            "1:300,2:300",
        ),
        (
            vec!["--target-lsn".into(), b3.to_string()],
            "1:300,2:300,3:300",
        ),
        (
            vec!["--target-lsn".into(), b4.to_string()],
            "1:300,2:300,3:300,4:300",
        ),
        (vec![], "1:300,2:300,3:300,4:300,5:300"),
        (
            vec![
                "--target-immediate".into(),
                "--backup".into(),
                backup_a.clone(),
            ],
            "1:300",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(
            restore_and_count(&archiver, &cluster, &args),
            expected,
            "{args:?}"
        );
    }
}

#[test]
fn bad_restore_requests_are_refused_and_write_nothing() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE events(id int, burst int)")
        .unwrap();
    let before_backup = burst(&cluster, 1);
    backup(&archiver, &[]);
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg, Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0);

    let dir = tidemark_fixtures::test_dir("refused");
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap().to_string();
    let beyond = Lsn(through.0 + (64 << 20)).to_string();
    let before = before_backup.to_string();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["--target-time", "2026-11-21 09:30:00"],
            2,
            "no time zone",
        ),
        (vec!["--target-time", "soon"], 2, "not a time"),
        (
            vec!["--target-lsn", "0/1", "--target-name", "x"],
            2,
            "2 targets",
        ),
        (vec!["--target-lsn", "zz"], 2, "not an LSN"),
        (
            vec!["--target-lsn", &before],
            5,
            "before the end of the oldest",
        ),
        (vec!["--target-lsn", &beyond], 5, "beyond the archived WAL"),
        (
            vec!["--backup", "20200101T000000Z"],
            5,
            "not in the repository",
        ),
        (vec!["--backup", "yesterday"], 2, "not a backup id"),
    ];
    // A repository the server could read: the refusals are the targets' own.
    share_with_postgres(&archiver.repo_dir_for_postgres());
    for (args, code, needle) in cases {
        let mut all = vec!["restore", "--pgdata", &data_s];
        all.extend_from_slice(&args);
        let out = run(archiver.command(&all));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} should say {needle:?}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!data.exists(), "{args:?} created the data directory");
    }

    // A non-empty data directory is never touched.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("PG_VERSION"), b"precious").unwrap();
    let out = run(archiver.command(&["restore", "--pgdata", &data_s]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty"));
    assert_eq!(std::fs::read(data.join("PG_VERSION")).unwrap(), b"precious");
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 1);
}

#[test]
fn restores_to_times_restore_points_and_transactions() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE events(id int, burst int)")
        .unwrap();
    let now = || cluster.psql("SELECT clock_timestamp()").unwrap();
    let gap = || std::thread::sleep(Duration::from_millis(1200));
    burst(&cluster, 1);
    let backup_a = backup(&archiver, &[]);
    burst(&cluster, 2);
    cluster
        .psql("SELECT pg_create_restore_point('after_burst_2')")
        .unwrap();
    gap();
    let t2 = now(); // idle: between bursts 2 and 3
    gap();
    let xid = cluster
        .psql("BEGIN; INSERT INTO events SELECT g, 3 FROM generate_series(1, 100) g; SELECT txid_current(); COMMIT;")
        .unwrap();
    let xid = xid
        .lines()
        .find(|l| l.trim().parse::<u64>().is_ok())
        .expect("xid")
        .trim()
        .to_string();
    cluster
        .psql("INSERT INTO events SELECT g, 3 FROM generate_series(101, 300) g")
        .unwrap();
    switch_wal(&cluster);
    let backup_b = backup(&archiver, &[]);
    gap();
    let t3 = now(); // idle: between bursts 3 and 4, after the second backup
    gap();
    burst(&cluster, 4);
    cluster
        .psql("SELECT pg_create_restore_point('after_burst_4')")
        .unwrap();
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg, Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0);

    // Restore points and transactions are found in the WAL summaries: each plan starts
    // from the newest backup that precedes its target.
    for (args, backup) in [
        (["--target-name", "after_burst_2"], &backup_a),
        (["--target-name", "after_burst_4"], &backup_b),
        (["--target-xid", xid.as_str()], &backup_a),
    ] {
        let mut all = vec!["plan", "--json"];
        all.extend_from_slice(&args);
        let out = run(archiver.command(&all));
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(plan["backup"], backup.as_str(), "{args:?}: {plan:#}");
    }

    for (args, expected) in [
        (
            vec!["--target-name", "after_burst_4"],
            "1:300,2:300,3:300,4:300",
        ),
        (vec!["--target-time", t2.as_str()], "1:300,2:300"),
        (vec!["--target-time", t3.as_str()], "1:300,2:300,3:300"),
        (vec!["--target-name", "after_burst_2"], "1:300,2:300"),
        (vec!["--target-xid", xid.as_str()], "1:300,2:300,3:100"),
    ] {
        assert_eq!(
            restore_and_count(&archiver, &cluster, &args),
            expected,
            "{args:?}"
        );
    }
}

#[test]
fn a_time_after_the_last_commit_on_an_idle_database_restores() {
    let cluster = Cluster::start(ClusterOptions {
        wal_segsize_mb: 1,
        // Keepalives every 2 s while idle: they are what proves the archive complete.
        settings: vec![("wal_sender_timeout".into(), "4s".into())],
        ..ClusterOptions::default()
    })
    .expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let repo = Repo::file();
    let mut archiver = Archiver::new(
        &cluster,
        &repo,
        &["--partial-interval", "1", "--complete-marker-interval", "1"],
    );
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE events(id int, burst int)")
        .unwrap();
    // Commits land after the first segment the archiver decodes (whose summary is never
    // complete: a record may continue into it from before).
    let first = switch_wal(&cluster);
    archiver.wait_complete_through(first, seg, Duration::from_secs(60));
    backup(&archiver, &[]);
    burst(&cluster, 1);
    burst(&cluster, 2);
    std::thread::sleep(Duration::from_secs(2));
    let idle_since = cluster.psql("SELECT clock_timestamp()").unwrap();
    let marker_path = repo.file_root().join("wal/00000001.complete");
    wait_for(
        "an archive-complete marker after the target time",
        Duration::from_secs(60),
        || {
            archiver.assert_running();
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&marker_path).ok()?).ok()?;
            let at = chrono::DateTime::parse_from_rfc3339(json["server_time"].as_str()?).ok()?;
            let target = chrono::DateTime::parse_from_str(
                &format!("{idle_since}00"),
                "%Y-%m-%d %H:%M:%S%.f%#z",
            )
            .ok()?;
            (at > target).then_some(())
        },
    );
    assert_eq!(archiver.terminate(), 0);

    // No commit follows the target: PostgreSQL alone would fail; the plan resolves it.
    let out = run(archiver.command(&["plan", "--target-time", &idle_since]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no transaction ended after"));
    assert_eq!(
        restore_and_count(&archiver, &cluster, &["--target-time", &idle_since]),
        "1:300,2:300"
    );
    // A time the archive cannot vouch for is refused, not guessed.
    let out = run(archiver.command(&["plan", "--target-time", "2100-01-01 00:00:00+00"]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not known to have been complete"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn restore_start_recovers_to_the_target_and_reports_where_it_stopped() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE events(id int, burst int)")
        .unwrap();
    burst(&cluster, 1);
    backup(&archiver, &[]);
    let b2 = burst(&cluster, 2);
    burst(&cluster, 3);
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg, Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0);
    share_with_postgres(&archiver.repo_dir_for_postgres());

    let dir = tidemark_fixtures::test_dir("start");
    let data = dir.path().join("data");
    let port = tidemark_fixtures::free_port().to_string();
    let out = restore_start(&archiver, &data, &port, &["--target-lsn", &b2.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    let pid: i32 = stdout
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stdout}"));
    let count = std::process::Command::new(cluster.bin().tool("psql"))
        .args(["-XAtq", "-h", "127.0.0.1", "-U", "postgres", "-p", &port, "-d", "postgres", "-c"])
        .arg("SELECT string_agg(burst || ':' || n, ',' ORDER BY burst) FROM (SELECT burst, count(*) n FROM events GROUP BY burst) s")
        .output()
        .unwrap();
    // SAFETY: signalling the server this test started.
    unsafe { libc::kill(pid, libc::SIGINT) };
    assert_eq!(
        String::from_utf8_lossy(&count.stdout).trim(),
        "1:300,2:300",
        "{stdout}"
    );
    assert!(stdout.contains("promoted"), "{stdout}");
    assert!(
        stdout.contains("restored point: recovery stopping after"),
        "{stdout}"
    );
    assert!(stdout.contains("continues on timeline 2"), "{stdout}");
    assert!(stdout.contains("timings: plan and fetch"), "{stdout}");
    wait_for(
        "the restored server to stop",
        Duration::from_secs(30),
        || {
            // SAFETY: probing whether the pid still exists.
            (unsafe { libc::kill(pid, 0) } != 0).then_some(())
        },
    );
}
