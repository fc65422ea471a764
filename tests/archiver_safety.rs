//! Regression tests for the archiver's safety promises (DESIGN invariants 1 and 8), each
//! named for the failure it pins, against real PostgreSQL and a real repository: the
//! primary's shutdown is never held up, what was received survives the primary's and the
//! archiver's deaths, and an idle archive is provably complete within seconds.

mod common;

use std::time::Duration;

use common::*;
use tidemark_fixtures::{Cluster, ClusterOptions};
use tidemark_protocol::Lsn;

fn one_mb_on(major: u32) -> ClusterOptions {
    ClusterOptions { major, ..one_mb() }
}

/// A table `t(n)` holding rows 1..=3.
const ROWS_1_TO_3: &str = "CREATE TABLE t(n int); INSERT INTO t SELECT generate_series(1, 3)";

/// A cluster being streamed (`stream` with `args`), where `sql` ran, then one base backup.
fn streamed_with_backup(
    opts: ClusterOptions,
    repo: &Repo,
    args: &[&str],
    sql: &str,
) -> (Cluster, Archiver) {
    let cluster = Cluster::start(opts).expect("cluster");
    let mut archiver = Archiver::new(&cluster, repo, args);
    archiver.init();
    archiver.start();
    cluster.psql(sql).unwrap();
    let out = run(archiver.command(&["backup"]));
    assert!(out.status.success(), "backup: {}", stderr(&out));
    (cluster, archiver)
}

/// Rows of `t` in a cluster restored to latest from the repository alone.
fn rows_restored_to_latest(archiver: &Archiver, opts: ClusterOptions) -> String {
    let restored = start_recovered(restore_into(archiver, &[]), opts);
    restored
        .psql("SELECT string_agg(n::text, ',' ORDER BY n) FROM t")
        .unwrap()
}

fn fast_shutdown_is_not_held_up_by_stream(major: u32) {
    let repo = Repo::file();
    let (mut cluster, mut archiver) = streamed_with_backup(
        one_mb_on(major),
        &repo,
        &["--partial-interval", "3600"],
        ROWS_1_TO_3,
    );
    cluster.psql("INSERT INTO t VALUES (4)").unwrap();
    let last_commit = current_lsn(&cluster);
    wait_received(&mut archiver, &cluster, last_commit);

    let took = cluster
        .pg_ctl_stop("fast", 60)
        .expect("pg_ctl stop -m fast");
    assert!(
        took < Duration::from_secs(10),
        "pg_ctl stop -m fast took {took:?} with tidemark stream connected:\n{}",
        archiver.log()
    );
    // Stored before the server finished stopping, not at some later partial interval.
    assert!(
        archiver.archived_end() > last_commit,
        "after the stop the repository ends at {}, before the last commit {last_commit}:\n{}",
        archiver.archived_end(),
        archiver.log()
    );
    archiver.assert_running();
    assert_eq!(
        rows_restored_to_latest(&archiver, one_mb_on(major)),
        "1,2,3,4"
    );
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
}

#[test]
fn fast_shutdown_is_not_held_up_by_stream_on_postgresql_14() {
    fast_shutdown_is_not_held_up_by_stream(14);
}

#[test]
fn fast_shutdown_is_not_held_up_by_stream_on_postgresql_15() {
    fast_shutdown_is_not_held_up_by_stream(15);
}

#[test]
fn fast_shutdown_is_not_held_up_by_stream_on_postgresql_16() {
    fast_shutdown_is_not_held_up_by_stream(16);
}

#[test]
fn fast_shutdown_is_not_held_up_by_stream_on_postgresql_17() {
    fast_shutdown_is_not_held_up_by_stream(17);
}

#[test]
fn fast_shutdown_is_not_held_up_by_stream_on_postgresql_18() {
    fast_shutdown_is_not_held_up_by_stream(18);
}

#[test]
fn a_primary_killed_with_sigkill_does_not_take_the_received_tail_with_it() {
    let repo = Repo::file();
    // A partial interval far beyond the test: only the loss of the connection can store it.
    let (mut cluster, mut archiver) =
        streamed_with_backup(one_mb(), &repo, &["--partial-interval", "60"], ROWS_1_TO_3);
    cluster.psql("INSERT INTO t VALUES (4)").unwrap();
    let last_commit = current_lsn(&cluster);
    wait_received(&mut archiver, &cluster, last_commit);
    cluster.kill9().expect("kill -9 the postmaster");
    // Kept down: the archiver stores what it holds while it retries the connection.
    archiver.wait_stored(last_commit, Duration::from_secs(20));
    assert_eq!(rows_restored_to_latest(&archiver, one_mb()), "1,2,3,4");
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
}

#[test]
fn an_archiver_killed_with_sigkill_stores_its_spooled_tail_on_restart_without_the_primary() {
    let repo = Repo::file();
    let (mut cluster, mut archiver) = streamed_with_backup(
        one_mb(),
        &repo,
        &["--partial-interval", "3600"],
        ROWS_1_TO_3,
    );
    cluster.psql("INSERT INTO t VALUES (4)").unwrap();
    let last_commit = current_lsn(&cluster);
    wait_received(&mut archiver, &cluster, last_commit);
    // Both die, archiver first: the tail was only ever in its spool.
    archiver.kill9();
    assert!(archiver.archived_end() < last_commit, "tail stored already");
    cluster.kill9().expect("kill -9 the postmaster");

    archiver.start();
    let code = wait_for(
        "the restarted archiver to stop",
        Duration::from_secs(60),
        || archiver.exit_code(),
    );
    assert_eq!(code, 3, "no PostgreSQL to stream from:\n{}", archiver.log());
    assert!(
        archiver.archived_end() >= last_commit,
        "the spooled tail was not stored before connecting:\n{}",
        archiver.log()
    );
    assert_eq!(rows_restored_to_latest(&archiver, one_mb()), "1,2,3,4");
}

#[test]
fn an_idle_archive_proves_a_time_seconds_after_the_last_commit_restorable() {
    let repo = Repo::file();
    // Defaults throughout: partial interval 5 s, wal_sender_timeout 60 s.
    let (cluster, mut archiver) =
        streamed_with_backup(one_mb(), &repo, &[], "CREATE TABLE t(n int)");
    cluster.psql("INSERT INTO t VALUES (1)").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let target = cluster.psql("SELECT now()::text").unwrap();
    std::thread::sleep(Duration::from_secs(13));
    archiver.assert_running();
    let out = run(archiver.command(&["plan", "--target-time", &target]));
    assert!(
        out.status.success(),
        "a target 2 s after the last commit, planned 15 s later, was refused: {}\n{}",
        stderr(&out),
        archiver.log()
    );
    assert_eq!(archiver.terminate(), 0);
}

#[test]
fn superseded_partial_objects_are_never_left_behind() {
    let repo = Repo::s3("no-orphans");
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "0.2"]);
    archiver.init();
    archiver.start();
    cluster.pgbench_init(1).expect("pgbench -i");
    cluster.pgbench(&["-T", "4", "-c", "2"]).expect("pgbench");
    let through = switch_wal(&cluster);
    let seg = tidemark_protocol::WalSegmentSize::new(1 << 20).unwrap();
    archiver.wait_complete_through(through, seg, Duration::from_secs(120));
    cluster.psql("INSERT INTO tm_switch VALUES (2)").unwrap();
    let tail = current_lsn(&cluster);
    archiver.wait_stored(tail, Duration::from_secs(30));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());

    let keys = repo.keys();
    let partials: Vec<&String> = keys
        .iter()
        .filter(|k| k.ends_with(".partial.zst"))
        .collect();
    let complete = keys.iter().filter(|k| k.ends_with(".zst")).count() - partials.len();
    assert!(complete >= 5, "only {complete} segments");
    assert!(
        partials.len() <= 1,
        "{} partial objects left among {complete} segments: {partials:?}",
        partials.len()
    );
    for p in partials {
        let whole = p.replace(".partial.zst", ".zst");
        assert!(!keys.contains(&whole), "{p} left beside {whole}");
    }
}

#[test]
fn a_second_stream_is_refused_naming_the_first_and_touches_nothing() {
    let repo = Repo::s3("one-writer");
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let mut first = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    first.init();
    first.start();
    cluster.psql("CREATE TABLE t(n int)").unwrap();
    wait_received(&mut first, &cluster, current_lsn(&cluster));
    let holder = format!("(pid {})", first.pid());

    // Started by mistake with the same catalog and spool.
    let out = run(first.command(&["stream"]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another archiver holds the catalog")
            && stderr(&out).contains(&holder),
        "{}",
        stderr(&out)
    );
    // On another host: its own catalog and spool, the same repository.
    let mut second = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    second.start();
    let code = wait_for(
        "the second archiver to be refused",
        Duration::from_secs(30),
        || second.exit_code(),
    );
    assert_eq!(code, 5, "{}", second.log());
    assert!(
        second
            .log()
            .contains("another archiver holds the repository")
            && second.log().contains(&holder),
        "{}",
        second.log()
    );
    assert!(
        !second.catalog.exists(),
        "the refused archiver created its catalog"
    );

    // The first never noticed.
    cluster.psql("INSERT INTO t VALUES (1)").unwrap();
    let written = current_lsn(&cluster);
    first.wait_stored(written, Duration::from_secs(30));
    assert_eq!(first.terminate(), 0, "{}", first.log());
    // Its lease went with it: the second starts at once.
    second.start();
    cluster.psql("INSERT INTO t VALUES (2)").unwrap();
    let written = current_lsn(&cluster);
    second.wait_stored(written, Duration::from_secs(30));
    assert_eq!(second.terminate(), 0, "{}", second.log());
    assert!(
        !repo.keys().iter().any(|k| k.starts_with("locks/")),
        "a lease outlived its archiver: {:?}",
        repo.keys()
    );
}

#[test]
fn a_server_that_could_choose_tidemark_as_a_synchronous_standby_is_refused() {
    let repo = Repo::file();
    let mut cluster = Cluster::start(one_mb()).expect("cluster");
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "60"]);
    archiver.init();
    archiver.start();
    cluster.psql("CREATE TABLE t(n int)").unwrap();
    wait_received(&mut archiver, &cluster, current_lsn(&cluster));
    // The DBA makes every standby eligible and restarts; the archiver reconnects.
    cluster
        .psql("ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (*)'")
        .unwrap();
    cluster.restart().expect("restart");
    let code = wait_for("the archiver to refuse", Duration::from_secs(60), || {
        archiver.exit_code()
    });
    assert_eq!(code, 5, "{}", archiver.log());
    assert!(
        archiver.log().contains("synchronous_standby_names"),
        "{}",
        archiver.log()
    );
    // And at start.
    archiver.start();
    let code = wait_for("the archiver to refuse", Duration::from_secs(30), || {
        archiver.exit_code()
    });
    assert_eq!(code, 5, "{}", archiver.log());
    assert!(
        archiver.log().contains("ANY 1 (*)") && archiver.log().contains("--synchronous"),
        "{}",
        archiver.log()
    );
}

#[test]
fn synchronous_mode_acknowledges_commits_from_the_spool_promptly() {
    let repo = Repo::file();
    let cluster = Cluster::start(ClusterOptions {
        settings: vec![("synchronous_standby_names".into(), "tidemark".into())],
        ..one_mb()
    })
    .expect("cluster");
    // A partial interval far beyond the test: commits must not wait for the repository.
    let mut archiver = Archiver::new(
        &cluster,
        &repo,
        &["--partial-interval", "3600", "--synchronous"],
    );
    archiver.init();
    archiver.start();
    wait_for(
        "tidemark chosen as synchronous standby",
        Duration::from_secs(30),
        || {
            archiver.assert_running();
            let state = cluster
            .psql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'tidemark'")
            .ok()?;
            (state == "sync").then_some(())
        },
    );
    let started = std::time::Instant::now();
    for n in 0..20 {
        cluster
            .psql(&format!(
                "CREATE TABLE IF NOT EXISTS t(n int); INSERT INTO t VALUES ({n})"
            ))
            .expect("a synchronous commit");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "20 synchronous commits took {:?}",
        started.elapsed()
    );
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
}

/// Archive a first stretch, stop, lose the catalog (and, with `new_slot`, the slot), write
/// more WAL while stopped, restart: the archive stays contiguous, byte for byte.
fn resumes_at_the_repositorys_end_after_losing_the_catalog(major: u32, new_slot: bool) {
    let cluster = Cluster::start(one_mb_on(major)).expect("cluster");
    let seg = tidemark_protocol::WalSegmentSize::new(1 << 20).unwrap();
    hold_wal(&cluster);
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster.pgbench_init(1).expect("pgbench -i");
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg, Duration::from_secs(120));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());

    delete_catalog(&archiver);
    if new_slot {
        cluster
            .psql("SELECT pg_drop_replication_slot('tidemark')")
            .unwrap();
    }
    cluster.pgbench(&["-T", "2", "-c", "2"]).expect("pgbench");
    switch_wal(&cluster);
    archiver.start();
    cluster.pgbench(&["-T", "1", "-c", "1"]).expect("pgbench");
    let through = switch_wal(&cluster);
    archiver.wait_contiguous_through(through, seg, Duration::from_secs(120));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    // Contiguous from the first segment, each equal to the server's own file.
    let compared = assert_segments_match_pg_wal(&archiver, &repo, &cluster, seg, through);
    assert!(compared >= 5, "only {compared} segments");
}

#[test]
fn a_lost_catalog_does_not_make_stream_skip_wal_on_postgresql_14() {
    // PostgreSQL 14 has no READ_REPLICATION_SLOT: only the repository knows the end.
    resumes_at_the_repositorys_end_after_losing_the_catalog(14, false);
}

#[test]
fn a_lost_catalog_and_a_new_slot_do_not_make_stream_skip_wal() {
    resumes_at_the_repositorys_end_after_losing_the_catalog(15, true);
}

#[test]
fn after_the_server_removed_unarchived_wal_accept_gap_restarts_archiving_and_older_targets_still_restore(
) {
    let repo = Repo::file();
    let (cluster, mut archiver) = streamed_with_backup(
        one_mb(),
        &repo,
        &["--partial-interval", "1"],
        "CREATE TABLE t(n int)",
    );
    cluster.psql("INSERT INTO t VALUES (1)").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let before_gap = cluster.psql("SELECT now()::text").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    cluster.psql("INSERT INTO t VALUES (2)").unwrap();
    // The tail left in the spool then starts a segment (after a switch no record continues
    // into it), so the stored prefix's summary is complete and the plan can prove that
    // nothing ended inside the gap.
    switch_wal(&cluster);
    let archived = current_lsn(&cluster);
    archiver.wait_stored(archived, Duration::from_secs(30));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());

    // While the archiver is down its slot is dropped and the server recycles the WAL.
    cluster.psql("INSERT INTO t VALUES (3)").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let in_gap = cluster.psql("SELECT now()::text").unwrap();
    drop_slot_and_remove_wal(&cluster);

    archiver.start();
    let code = wait_for("the gap refused", Duration::from_secs(30), || {
        archiver.exit_code()
    });
    assert_eq!(code, 5, "{}", archiver.log());
    assert!(
        archiver.log().contains("take a new base backup"),
        "{}",
        archiver.log()
    );

    archiver.set_options(&["--partial-interval", "1", "--accept-gap"]);
    archiver.start();
    // The record is stored before the warning is logged: wait for both.
    wait_for(
        "the gap recorded and reported",
        Duration::from_secs(30),
        || {
            archiver.assert_running();
            (repo.keys().iter().any(|k| k.starts_with("gaps/"))
                && archiver.log().contains("ACCEPTED A GAP"))
            .then_some(())
        },
    );
    cluster.psql("INSERT INTO t VALUES (4)").unwrap();
    let out = run(archiver.command(&["backup"]));
    assert!(
        out.status.success(),
        "a backup after the gap: {}",
        stderr(&out)
    );
    cluster.psql("INSERT INTO t VALUES (5)").unwrap();
    let newest = current_lsn(&cluster);
    archiver.wait_stored(newest, Duration::from_secs(30));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());

    let rows = |args: &[&str]| {
        start_recovered(restore_into(&archiver, args), one_mb())
            .psql("SELECT string_agg(n::text, ',' ORDER BY n) FROM t")
            .unwrap()
    };
    // Before the gap: the older backup and the WAL before the gap.
    assert_eq!(rows(&["--target-time", &before_gap]), "1");
    // Inside it: refused, nothing written.
    let out = run(archiver.command(&["plan", "--target-time", &in_gap]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    // After it: the new backup.
    assert_eq!(rows(&[]), "1,2,3,4,5");
}

#[test]
fn accept_gap_keeps_the_wal_the_server_still_has() {
    let repo = Repo::file();
    let (cluster, mut archiver) = streamed_with_backup(
        one_mb(),
        &repo,
        &["--partial-interval", "1"],
        "CREATE TABLE t(n int)",
    );
    switch_wal(&cluster);
    let archived = current_lsn(&cluster);
    archiver.wait_stored(archived, Duration::from_secs(30));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());

    // Slot dropped while the archiver is down; checkpoints remove the older WAL. Then
    // rows 1 and 2 are written into segments the server keeps.
    drop_slot_and_remove_wal(&cluster);
    let oldest_kept = cluster
        .psql("SELECT min(name) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'")
        .unwrap();
    cluster.psql("INSERT INTO t VALUES (1)").unwrap();
    switch_wal(&cluster);
    let row_2 = current_lsn(&cluster);
    cluster.psql("INSERT INTO t VALUES (2)").unwrap();
    switch_wal(&cluster);
    switch_wal(&cluster);

    archiver.set_options(&["--partial-interval", "1", "--accept-gap"]);
    archiver.start();
    let gap = wait_for("the gap recorded", Duration::from_secs(60), || {
        archiver.assert_running();
        let key = repo.keys().into_iter().find(|k| {
            k.starts_with("gaps/") && k.ends_with(".json") && !k.ends_with(".meta.json")
        })?;
        let text = std::fs::read_to_string(repo.file_root().join(&key)).ok()?;
        let gap = serde_json::from_str::<serde_json::Value>(&text);
        Some(gap.unwrap_or_else(|e| panic!("{key}: {e}: {text}")))
    });
    // The new run starts at the oldest segment the server still had, not at its current
    // one: the segments holding rows 1 and 2 are archived complete.
    let to = lsn(gap["to"].as_str().expect("gap end"));
    let seg = tidemark_protocol::WalSegmentSize::new(1 << 20).unwrap();
    let first_kept =
        tidemark_protocol::SegmentName::containing(tidemark_protocol::TimelineId(1), to, seg);
    assert_eq!(first_kept.file_name(seg), oldest_kept, "gap {gap}");
    let holding = |lsn: Lsn| {
        tidemark_protocol::SegmentName::containing(tidemark_protocol::TimelineId(1), lsn, seg)
    };
    let rows_1_and_2 = [holding(Lsn(row_2.0 - 1)), holding(row_2)];
    wait_for(
        "the segments holding rows 1 and 2 archived complete",
        Duration::from_secs(60),
        || {
            archiver.assert_running();
            let kept = archiver.segments();
            rows_1_and_2
                .iter()
                .all(|name| kept.iter().any(|r| r.name == *name && !r.partial))
                .then_some(())
        },
    );
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
}

#[test]
fn a_cloned_primary_archiving_into_the_same_repository_cannot_replace_the_real_primarys_wal() {
    let repo = Repo::file();
    let (cluster, mut real) =
        streamed_with_backup(one_mb(), &repo, &["--partial-interval", "1"], ROWS_1_TO_3);
    // The clone: a base backup of the real primary, later started as a primary itself.
    let dir = pg_basebackup_into(&cluster, "stream");
    // The real primary commits after the clone was taken; it is stored (a partial).
    cluster.psql("INSERT INTO t VALUES (4)").unwrap();
    let committed = current_lsn(&cluster);
    real.wait_stored(committed, Duration::from_secs(30));
    assert_eq!(real.terminate(), 0, "{}", real.log());

    // The clone diverges, filling segments of its own, and is archived by mistake into
    // the same repository (same system identifier) from another host.
    let clone = Cluster::start_prepared(dir, one_mb()).expect("the clone starts");
    clone
        .psql("INSERT INTO t SELECT 100 FROM generate_series(1, 20000)")
        .unwrap();
    switch_wal(&clone);
    let mut second = Archiver::new(&clone, &repo, &["--partial-interval", "1"]);
    second.start();
    let code = wait_for(
        "the clone's archiver refused",
        Duration::from_secs(60),
        || second.exit_code(),
    );
    assert_eq!(code, 5, "{}", second.log());
    assert!(second.log().contains("split brain"), "{}", second.log());
    // Not one of the clone's later segments landed beside the refused one (its first
    // segment, where it meets the stored partial, is judged before any later is stored).
    let seg = tidemark_protocol::WalSegmentSize::new(1 << 20).unwrap();
    let real_end = tidemark_protocol::SegmentName::containing(
        tidemark_protocol::TimelineId(1),
        committed,
        seg,
    );
    let beyond: Vec<String> = repo
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("wal/") && k.ends_with(".zst"))
        .filter(|k| {
            let file = k.rsplit('/').next().unwrap_or("");
            file.get(..24)
                .and_then(|n| tidemark_protocol::SegmentName::parse(n, seg).ok())
                .is_some_and(|n| n > real_end)
        })
        .collect();
    assert!(beyond.is_empty(), "the clone's WAL was stored: {beyond:?}");

    // The repository still restores the real primary's rows, and none of the clone's.
    assert_eq!(rows_restored_to_latest(&real, one_mb()), "1,2,3,4");
}

#[test]
fn an_unwritable_spool_is_refused_before_the_slot_is_created() {
    let repo = Repo::file();
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let blocker = tidemark_fixtures::test_dir("not-a-dir");
    let file = blocker.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let spool = file.join("spool");
    let mut archiver = Archiver::new(&cluster, &repo, &["--spool", spool.to_str().unwrap()]);
    archiver.init();
    archiver.start();
    let code = wait_for("the archiver to refuse", Duration::from_secs(30), || {
        archiver.exit_code()
    });
    assert_eq!(code, 6, "{}", archiver.log());
    assert_eq!(
        slot_restart(&cluster, "tidemark"),
        None,
        "a slot was created"
    );
    assert_eq!(
        cluster
            .psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "0"
    );
    assert!(!archiver.catalog.exists(), "a catalog was created");
}

#[test]
fn a_catalog_behind_the_repository_is_no_gap_when_the_server_recycled_that_wal() {
    let repo = Repo::file();
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = tidemark_protocol::WalSegmentSize::new(1 << 20).unwrap();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster.psql("CREATE TABLE t(n int)").unwrap();
    cluster.pgbench_init(1).expect("pgbench -i");
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg, Duration::from_secs(120));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    // The catalog loses its newest rows (a host restored from an old copy, or commits
    // lost to a power cut); the repository and the slot have them.
    let catalog = tidemark_store::catalog::Catalog::open(&archiver.catalog).unwrap();
    let mut rows = catalog.segments().unwrap();
    rows.sort_by_key(|r| r.name.segno);
    let lost: Vec<_> = rows
        .iter()
        .rev()
        .take(8)
        .map(|r| (r.name, r.key.as_str()))
        .collect();
    catalog.forget_segments(&lost, seg).unwrap();
    drop(catalog);
    // The server recycles all of it: only the repository has it now.
    for _ in 0..4 {
        switch_wal(&cluster);
        cluster.psql("CHECKPOINT").unwrap();
    }

    archiver.start();
    cluster.psql("INSERT INTO t VALUES (1)").unwrap();
    archiver.wait_stored(current_lsn(&cluster), Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    assert!(
        archiver.log().contains("the repository holds it"),
        "the server still had the WAL: the test proves nothing\n{}",
        archiver.log()
    );
    // One unbroken run of complete segments, from the first to the newest.
    let mut complete: Vec<u64> = archiver
        .segments()
        .iter()
        .filter(|s| !s.partial)
        .map(|s| s.name.segno)
        .collect();
    complete.sort_unstable();
    let expected: Vec<u64> = (complete[0]..=complete[complete.len() - 1]).collect();
    assert_eq!(complete, expected, "{}", archiver.log());
}
