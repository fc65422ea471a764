//! Restores land exactly where they were asked to, on every path: an exclusive time at
//! the last commit, pause and shutdown at the end of the archive, recovery settings a
//! restored cluster carried into its backups, targets on the new line of a timeline fork,
//! restore point names made twice, the bucket of a coordinated restore without `--start`,
//! `restore_command` for paths holding quotes, spaces, backslashes and `%`, and a
//! repository the server's user cannot read, and a gap that refuses only what is after it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::app::*;
use common::*;
use tidemark_fixtures::{Cluster, ClusterOptions};
use tidemark_protocol::WalSegmentSize;

const SEG: u64 = 1 << 20;

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(SEG).unwrap()
}

fn rows(cluster: &Cluster, burst: u32) {
    cluster
        .psql(&format!(
            "INSERT INTO events SELECT g, {burst} FROM generate_series(1, 100) g"
        ))
        .unwrap();
}

fn bursts(cluster: &Cluster) -> String {
    cluster
        .psql("SELECT string_agg(DISTINCT burst::text, ',' ORDER BY burst::text) FROM events")
        .unwrap()
}

/// A 1 MiB-segment cluster streamed into a new `file://` repository, with an `events`
/// table.
fn streamed(opts: ClusterOptions) -> (Cluster, Archiver) {
    let cluster = Cluster::start(opts).expect("cluster");
    let mut archiver = Archiver::new(
        &cluster,
        &Repo::file(),
        &["--partial-interval", "1", "--complete-marker-interval", "1"],
    );
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE events(id int, burst int)")
        .unwrap();
    (cluster, archiver)
}

/// Switch the WAL, wait until it is all archived, and stop the archiver.
fn finish(cluster: &Cluster, archiver: &mut Archiver) {
    let through = switch_wal(cluster);
    archiver.wait_complete_through(through, seg(), Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
}

/// Wait until the archive-complete marker of timeline 1 is later than `t` (a server
/// time as psql prints it): the archive then provably holds everything up to `t`.
fn wait_complete_after(archiver: &mut Archiver, t: &str) {
    let marker = Path::new(&archiver.repo_dir_for_postgres()).join("wal/00000001.complete");
    let target =
        chrono::DateTime::parse_from_str(&format!("{t}00"), "%Y-%m-%d %H:%M:%S%.f%#z").unwrap();
    wait_for(
        "an archive-complete marker after the target time",
        Duration::from_secs(60),
        || {
            archiver.assert_running();
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&marker).ok()?).ok()?;
            let at = chrono::DateTime::parse_from_rfc3339(json["server_time"].as_str()?).ok()?;
            (at > target).then_some(())
        },
    );
}

fn plan_out(archiver: &Archiver, args: &[&str]) -> std::process::Output {
    let mut all = vec!["plan"];
    all.extend_from_slice(args);
    run(archiver.command(&all))
}

#[test]
fn an_exclusive_time_target_at_the_last_commit_does_not_replay_it() {
    let (cluster, mut archiver) = streamed(ClusterOptions {
        wal_segsize_mb: 1,
        settings: vec![
            ("wal_sender_timeout".into(), "4s".into()),
            ("track_commit_timestamp".into(), "on".into()),
        ],
        ..ClusterOptions::default()
    });
    let first = switch_wal(&cluster);
    archiver.wait_complete_through(first, seg(), Duration::from_secs(60));
    backup(&archiver, &[]);
    rows(&cluster, 1);
    // The DBA wants to undo this, the last commit on an idle database.
    cluster.psql("DROP TABLE events").unwrap();
    let dropped_at = cluster
        .psql("SELECT timestamp FROM pg_last_committed_xact()")
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    wait_complete_after(&mut archiver, &dropped_at);
    assert_eq!(archiver.terminate(), 0);

    let out = plan_out(
        &archiver,
        &["--target-time", &dropped_at, "--target-inclusive", "false"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout.contains("runs to its end"), "{stdout}");
    let restored = start_recovered(
        restore_into(
            &archiver,
            &["--target-time", &dropped_at, "--target-inclusive", "false"],
        ),
        one_mb(),
    );
    assert_eq!(bursts(&restored), "1", "the DROP TABLE was replayed");
    drop(restored);

    // Inclusive, the DROP at that very time is part of the target.
    let restored = start_recovered(
        restore_into(&archiver, &["--target-time", &dropped_at]),
        one_mb(),
    );
    assert_eq!(
        restored
            .psql("SELECT count(*) FROM pg_class WHERE relname = 'events'")
            .unwrap(),
        "0"
    );
}

#[test]
fn pause_and_shutdown_at_the_end_of_the_archive_never_become_a_promotion() {
    let (cluster, mut archiver) = streamed(one_mb());
    rows(&cluster, 1);
    backup(&archiver, &[]);
    rows(&cluster, 2);
    finish(&cluster, &mut archiver);
    share_with_postgres(&archiver.repo_dir_for_postgres());

    // Latest, paused: the server stays in recovery at the end, with every row.
    let dir = tidemark_fixtures::test_dir("pause");
    let data = dir.path().join("data");
    let port = tidemark_fixtures::free_port().to_string();
    let out = restore_start(
        &archiver,
        &data,
        &port,
        &["--target-action", "pause", "--start-timeout", "90"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    assert!(stdout.contains("paused at the target"), "{stdout}");
    let sql = |q: &str| psql_port(&cluster, &port, q);
    assert_eq!(sql("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(sql("SELECT pg_get_wal_replay_pause_state()"), "paused");
    assert_eq!(
        sql("SELECT string_agg(DISTINCT burst::text, ',' ORDER BY burst::text) FROM events"),
        "1,2"
    );
    let pid: i32 = stdout
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .expect("pid");
    // SAFETY: stopping the server this test started.
    unsafe { libc::kill(pid, libc::SIGINT) };

    // Latest, shut down: the server stops at the end, in recovery, not promoted.
    let dir = tidemark_fixtures::test_dir("shutdown");
    let data = dir.path().join("data");
    let out = run(archiver.command(&[
        "restore",
        "--pgdata",
        data.to_str().unwrap(),
        "--target-action",
        "shutdown",
        "--start",
        "--start-timeout",
        "90",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    assert!(stdout.contains("shut down at the target"), "{stdout}");
    let control = std::process::Command::new(cluster.bin().tool("pg_controldata"))
        .arg(&data)
        .output()
        .unwrap();
    let control = String::from_utf8_lossy(&control.stdout).into_owned();
    assert!(
        control.contains("Database cluster state:               shut down in recovery"),
        "{control}"
    );
}

#[test]
fn a_restored_clusters_old_recovery_target_never_leaks_into_the_next_restore() {
    let (origin, mut archiver) = streamed(one_mb());
    rows(&origin, 1);
    backup(&archiver, &[]);
    rows(&origin, 2);
    origin
        .psql("SELECT pg_create_restore_point('before_mistake')")
        .unwrap();
    rows(&origin, 3);
    finish(&origin, &mut archiver);

    // Restored to the restore point and promoted: its postgresql.auto.conf names it.
    let promoted = start_recovered(
        restore_into(&archiver, &["--target-name", "before_mistake"]),
        one_mb(),
    );
    assert_eq!(bursts(&promoted), "1,2");

    // That cluster becomes production: a new repository, a new backup (which carries the
    // old recovery settings), more rows.
    let mut second = Archiver::new(&promoted, &Repo::file(), &["--partial-interval", "1"]);
    second.init();
    second.start();
    rows(&promoted, 4);
    backup(&second, &[]);
    rows(&promoted, 5);
    finish(&promoted, &mut second);

    let latest = start_recovered(restore_into(&second, &[]), one_mb());
    assert_eq!(bursts(&latest), "1,2,4,5");
    let auto = std::fs::read_to_string(latest.data_dir().join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains("# (disabled by tidemark restore) recovery_target_name = 'before_mistake'"),
        "{auto}"
    );
}

#[test]
fn a_target_on_the_new_timeline_is_never_reached_through_a_backup_on_the_abandoned_line() {
    let (origin, mut archiver) = streamed(one_mb());
    rows(&origin, 1);
    backup(&archiver, &[]);
    rows(&origin, 2);
    origin
        .psql("SELECT pg_create_restore_point('fork')")
        .unwrap();
    rows(&origin, 3);
    // A backup of the old line, after the point the new line will branch off at.
    backup(&archiver, &[]);
    rows(&origin, 4);
    finish(&origin, &mut archiver);
    drop(origin);

    // The DBA goes back to `fork` and carries on from there: timeline 2.
    let promoted = start_recovered(
        restore_into(&archiver, &["--target-name", "fork"]),
        one_mb(),
    );
    assert_eq!(bursts(&promoted), "1,2");
    archiver.follow(&promoted);
    archiver.start();
    rows(&promoted, 5);
    let on_tli2 = current_lsn(&promoted);
    rows(&promoted, 6);
    finish(&promoted, &mut archiver);

    let out = plan_out(&archiver, &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["timeline"], 2, "{plan:#}");

    let latest = start_recovered(restore_into(&archiver, &[]), one_mb());
    assert_eq!(bursts(&latest), "1,2,5,6");
    drop(latest);
    let at = start_recovered(
        restore_into(&archiver, &["--target-lsn", &on_tli2.to_string()]),
        one_mb(),
    );
    assert_eq!(bursts(&at), "1,2,5");
    drop(at);
    // The old line stays reachable when asked for.
    let old = start_recovered(
        restore_into(&archiver, &["--target-timeline", "current"]),
        one_mb(),
    );
    assert_eq!(bursts(&old), "1,2,3,4");
}

#[test]
fn a_restore_point_name_made_twice_is_refused_until_an_occurrence_is_chosen() {
    let (cluster, mut archiver) = streamed(one_mb());
    rows(&cluster, 1);
    // The backup starts in a segment the archiver decoded from its first byte: the first
    // segment it streamed has no summary (a record may continue into it unseen), and with
    // WAL of unknown content the plan cannot prove a name absent.
    let now = current_lsn(&cluster);
    wait_received(&mut archiver, &cluster, now);
    switch_wal(&cluster);
    backup(&archiver, &[]);
    // The daily deploy, twice.
    cluster
        .psql("SELECT pg_create_restore_point('before_deploy')")
        .unwrap();
    rows(&cluster, 2);
    cluster
        .psql("SELECT pg_create_restore_point('before_deploy')")
        .unwrap();
    rows(&cluster, 3);
    finish(&cluster, &mut archiver);

    let out = plan_out(&archiver, &["--target-name", "before_deploy"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("made more than once"), "{err}");
    assert!(err.contains("1: ") && err.contains("2: "), "{err}");
    let dir = tidemark_fixtures::test_dir("ambiguous");
    let data = dir.path().join("data");
    let out = run(archiver.command(&[
        "restore",
        "--pgdata",
        data.to_str().unwrap(),
        "--target-name",
        "before_deploy",
    ]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(!data.exists(), "a refused restore wrote {}", data.display());

    for (which, expected) in [("newest", "1,2"), ("1", "1"), ("oldest", "1")] {
        let restored = start_recovered(
            restore_into(
                &archiver,
                &[
                    "--target-name",
                    "before_deploy",
                    "--target-occurrence",
                    which,
                ],
            ),
            one_mb(),
        );
        assert_eq!(bursts(&restored), expected, "occurrence {which}");
    }
    let out = plan_out(
        &archiver,
        &["--target-name", "before_deploy", "--target-occurrence", "3"],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));

    // A name that is not in the archive is refused by the plan, not by recovery later.
    let out = plan_out(&archiver, &["--target-name", "never_made"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not in the archived WAL"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_coordinated_restore_without_start_restores_the_bucket_too() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let repo = Repo::s3("coordinated");
    let (mut archiver, bucket) = tracked_archiver(&cluster, &s3, &repo);
    backup(&archiver, &[]);
    wait_for_tracking(&archiver, &bucket, 0);
    let mut app = App::new(&cluster, &s3, &bucket);
    app.put("a", "one");
    app.put("b", "one");
    let (t1, at1) = app.gap();
    app.put("a", "two");
    app.remove("b");
    app.put("c", "one");
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg(), Duration::from_secs(60));
    let passes = pass_count(&archiver, &bucket);
    wait_for_tracking(&archiver, &bucket, passes + 1);
    assert_eq!(archiver.terminate(), 0);

    // Exactly the documented command: no --start.
    let dest = s3.create_bucket("coordinated-dest", false).unwrap();
    let dir = restore_into(
        &archiver,
        &[
            "--target-time",
            &t1,
            "--objects",
            &bucket,
            "--objects-to",
            &format!("s3://{dest}"),
        ],
    );
    assert_eq!(bucket_files(&s3, &dest), at1);

    // The DBA starts the server: restore_command reaches the S3 repository with the
    // settings restore wrote beside the data directory, and the database reaches the
    // bucket's instant.
    let env_file = dir.path().join("data.tidemark.env");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&env_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let auto = std::fs::read_to_string(dir.path().join("data/postgresql.auto.conf")).unwrap();
    assert!(!auto.contains("tidemark-test-secret"), "{auto}");
    let restored = start_recovered(dir, one_mb());
    let rows: Files = restored
        .psql("SELECT key || '=' || body FROM files ORDER BY key")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(rows, at1);
}

#[test]
fn restore_command_survives_quotes_spaces_backslashes_and_percent_in_paths() {
    let awkward = tempfile::Builder::new()
        .prefix("it's a \\dir %f ")
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    let exe = awkward.path().join("tidemark");
    std::fs::copy(env!("CARGO_BIN_EXE_tidemark"), &exe).unwrap();
    let repo = Repo::File { dir: awkward };
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE events(id int, burst int)")
        .unwrap();
    rows(&cluster, 1);
    backup(&archiver, &[]);
    rows(&cluster, 2);
    finish(&cluster, &mut archiver);
    share_with_postgres(repo.file_root().parent().unwrap());

    let dir = tidemark_fixtures::test_dir("quoted-restore");
    let data = dir.path().join("data");
    let mut cmd = std::process::Command::new(&exe);
    cmd.envs(repo.env())
        .args(["--repo", &repo.url(), "restore", "--pgdata"])
        .arg(&data);
    let out = run(cmd);
    assert!(out.status.success(), "{}", stderr(&out));
    let restored = start_recovered(dir, one_mb());
    assert_eq!(bursts(&restored), "1,2");
}

#[test]
fn a_repository_the_server_user_cannot_read_is_refused_before_start_writes_anything() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test reproduces a root-run archiver; run the suite as root"
    );
    let (cluster, mut archiver) = streamed(one_mb());
    rows(&cluster, 1);
    backup(&archiver, &[]);
    rows(&cluster, 2);
    finish(&cluster, &mut archiver);

    // Root wrote the file:// repository: its files are private to root, and the server
    // runs restore_command as postgres.
    let dir = tidemark_fixtures::test_dir("unreadable-repo");
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let out = run(archiver.command(&["restore", "--pgdata", data_s, "--start"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("restore_command fails when run as the server's user")
            && err.contains("Permission denied"),
        "{err}"
    );
    assert!(!data.exists(), "a refused restore wrote {data_s}");

    // Without --start the DBA is warned, and recovers once the repository is shared.
    let out = run(archiver.command(&["restore", "--pgdata", data_s]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: restore_command fails when run as the server's user"),
        "{}",
        stderr(&out)
    );
    share_with_postgres(&archiver.repo_dir_for_postgres());
    let restored = start_recovered(dir, one_mb());
    assert_eq!(bursts(&restored), "1,2");
}

#[test]
fn a_gap_in_the_archive_refuses_only_the_targets_after_it() {
    let (cluster, mut archiver) = streamed(one_mb());
    let now = || cluster.psql("SELECT clock_timestamp()").unwrap();
    rows(&cluster, 1);
    backup(&archiver, &[]);
    rows(&cluster, 2);
    let before_gap = now();
    let lsn_before_gap = current_lsn(&cluster);
    rows(&cluster, 3);
    switch_wal(&cluster);
    let gap_start = current_lsn(&cluster);
    rows(&cluster, 4);
    let after_gap = now();
    switch_wal(&cluster);
    rows(&cluster, 5);
    finish(&cluster, &mut archiver);

    // The segment holding burst 4 is lost from the repository, with any partial object
    // of it (a prefix recovery could still replay).
    let lost = tidemark_protocol::SegmentName::containing(
        tidemark_protocol::TimelineId(1),
        gap_start,
        seg(),
    );
    let root = archiver.repo_dir_for_postgres();
    for key in [
        tidemark_store::layout::wal_segment_key(lost, seg()),
        tidemark_store::layout::wal_partial_key(lost, seg()),
    ] {
        let _ = std::fs::remove_file(root.join(&key));
        let _ = std::fs::remove_file(root.join(format!("{key}.meta.json")));
    }
    assert!(
        !root
            .join(tidemark_store::layout::wal_segment_key(lost, seg()))
            .exists(),
        "the lost segment is still there"
    );

    // Targets before the gap restore from the backup before it, with exactly their rows.
    let dir = restore_into(&archiver, &["--target-time", &before_gap]);
    assert_eq!(bursts(&start_recovered(dir, one_mb())), "1,2");
    let dir = restore_into(&archiver, &["--target-lsn", &lsn_before_gap.to_string()]);
    assert_eq!(bursts(&start_recovered(dir, one_mb())), "1,2");

    // Targets after it, and the end of the archive, are refused naming the lost segment.
    let missing = lost.file_name(seg());
    for target in [vec!["--target-time", after_gap.as_str()], vec![]] {
        let dir = tidemark_fixtures::test_dir("after-gap");
        let data = dir.path().join("data");
        let mut args = vec!["restore", "--pgdata", data.to_str().unwrap()];
        args.extend_from_slice(&target);
        let out = run(archiver.command(&args));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{target:?}: {err}");
        assert!(err.contains(&missing), "{target:?}: {err}");
        assert!(!data.exists(), "{target:?} wrote the data directory");
    }
}

/// One transaction per tag, each inserting its tag and its own full xid; returns the xids.
fn tagged(cluster: &Cluster, tags: &[String]) -> Vec<u64> {
    let sql: String = tags
        .iter()
        .map(|t| format!("INSERT INTO tagged VALUES ('{t}', pg_current_xact_id()) RETURNING x;\n"))
        .collect();
    let out = cluster.psql(&sql).unwrap();
    let xids: Vec<u64> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(xids.len(), tags.len(), "{out}");
    xids
}

fn tags(cluster: &Cluster) -> String {
    cluster
        .psql("SELECT string_agg(tag, ',' ORDER BY x) FROM tagged")
        .unwrap()
}

#[test]
fn a_transaction_id_that_ended_in_two_epochs_is_refused_until_its_epoch_is_given() {
    let mut cluster = Cluster::start(one_mb()).expect("cluster");
    let mut archiver = Archiver::new(
        &cluster,
        &Repo::file(),
        &[
            "--partial-interval",
            "1",
            "--complete-marker-interval",
            "1",
            "--accept-gap",
        ],
    );
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE tagged(tag text, x xid8)")
        .unwrap();
    // The backup starts in WAL the archiver decoded whole; its checkpoint gives the epoch.
    let now = current_lsn(&cluster);
    wait_received(&mut archiver, &cluster, now);
    switch_wal(&cluster);
    backup(&archiver, &[]);
    let epoch0: Vec<String> = (1..=20).map(|i| format!("e0-{i:02}")).collect();
    let old = tagged(&cluster, &epoch0);
    assert!(old.iter().all(|x| x >> 32 == 0), "{old:?}");
    // Frozen, the rows stay visible when their 32-bit xids are handed out again.
    cluster.psql("VACUUM FREEZE").unwrap();
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg(), Duration::from_secs(60));

    // The DBA moves the counter into epoch 1 at the same 32 bits: the next transactions
    // reuse the low bits of the ones above. pg_resetwal starts new WAL after the old, a gap
    // the archiver accepts (--accept-gap); the backup after it serves the new epoch.
    cluster.pg_ctl_stop("fast", 60).unwrap();
    let low = (old[0] as u32).to_string();
    cluster.resetwal(&["-e", "1", "-x", &low]).unwrap();
    cluster.restart().unwrap();
    // As the archiver's message asks: once it has accepted the gap, a new base backup.
    wait_for(
        "the archiver to accept the gap",
        Duration::from_secs(60),
        || {
            archiver.assert_running();
            archiver.log().contains("ACCEPTED A GAP").then_some(())
        },
    );
    backup(&archiver, &[]);
    let new = tagged(&cluster, &["e1-two".to_string(), "e1-after".to_string()]);
    let twin = new[0];
    assert_eq!(twin >> 32, 1, "{new:?}");
    let k = old
        .iter()
        .position(|x| *x as u32 == twin as u32)
        .unwrap_or_else(|| panic!("{twin} reuses none of {old:?}"));
    finish(&cluster, &mut archiver);
    let low = (twin as u32).to_string();

    // The 32 bits alone are ambiguous: refused, both listed, nothing written.
    let out = plan_out(&archiver, &["--target-xid", &low]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("more than one epoch"), "{err}");
    assert!(
        err.contains(&format!("0:{low}")) && err.contains(&format!("1:{low}")),
        "{err}"
    );
    let dir = tidemark_fixtures::test_dir("xid-ambiguous");
    let data = dir.path().join("data");
    let out = run(archiver.command(&[
        "restore",
        "--pgdata",
        data.to_str().unwrap(),
        "--target-xid",
        &low,
    ]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(!data.exists(), "a refused restore wrote {}", data.display());

    // The full xid keeps its epoch: recovery stops at epoch 1's transaction, not at the
    // older one with the same 32 bits.
    let all_old = epoch0.join(",");
    let restored = start_recovered(
        restore_into(&archiver, &["--target-xid", &twin.to_string()]),
        one_mb(),
    );
    assert_eq!(tags(&restored), format!("{all_old},e1-two"));
    drop(restored);
    // The older one, chosen by occurrence, stops in epoch 0.
    let restored = start_recovered(
        restore_into(
            &archiver,
            &["--target-xid", &low, "--target-occurrence", "oldest"],
        ),
        one_mb(),
    );
    assert_eq!(tags(&restored), epoch0[..=k].join(","));
    drop(restored);

    // Transactions that are not in the archive are refused by the plan.
    for absent in [u64::from(u32::MAX - 7), (2 << 32) | u64::from(twin as u32)] {
        let out = plan_out(&archiver, &["--target-xid", &absent.to_string()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{absent}: {err}");
        assert!(err.contains("not in the archived WAL"), "{absent}: {err}");
    }
}
