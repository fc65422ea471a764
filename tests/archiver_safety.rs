//! Regression tests for the archiver's safety promises (DESIGN invariants 1 and 8), each
//! named for the failure it pins, against real PostgreSQL and a real repository: the
//! primary's shutdown is never held up, what was received survives the primary's and the
//! archiver's deaths, and an idle archive is provably complete within seconds.

mod common;

use std::time::Duration;

use common::*;
use tidemark_fixtures::{Cluster, ClusterOptions};

fn one_mb_on(major: u32) -> ClusterOptions {
    ClusterOptions { major, ..one_mb() }
}

/// A cluster being streamed (partial uploads every `partial_interval` seconds) with one
/// base backup and a table `t(n)` holding rows 1..=3.
fn streamed_with_backup(
    opts: ClusterOptions,
    repo: &Repo,
    partial_interval: &str,
) -> (Cluster, Archiver) {
    let cluster = Cluster::start(opts).expect("cluster");
    let mut archiver = Archiver::new(&cluster, repo, &["--partial-interval", partial_interval]);
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE t(n int); INSERT INTO t SELECT generate_series(1, 3)")
        .unwrap();
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
    let (mut cluster, mut archiver) = streamed_with_backup(one_mb_on(major), &repo, "3600");
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
    let (mut cluster, mut archiver) = streamed_with_backup(one_mb(), &repo, "60");
    cluster.psql("INSERT INTO t VALUES (4)").unwrap();
    let last_commit = current_lsn(&cluster);
    wait_received(&mut archiver, &cluster, last_commit);
    cluster.kill9().expect("kill -9 the postmaster");
    // Kept down: the archiver stores what it holds while it retries the connection.
    wait_for("the tail stored", Duration::from_secs(20), || {
        archiver.assert_running();
        (archiver.archived_end() >= last_commit).then_some(())
    });
    assert_eq!(rows_restored_to_latest(&archiver, one_mb()), "1,2,3,4");
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
}

#[test]
fn an_archiver_killed_with_sigkill_stores_its_spooled_tail_on_restart_without_the_primary() {
    let repo = Repo::file();
    let (mut cluster, mut archiver) = streamed_with_backup(one_mb(), &repo, "3600");
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
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let mut archiver = Archiver::new(&cluster, &repo, &[]);
    archiver.init();
    archiver.start();
    cluster.psql("CREATE TABLE t(n int)").unwrap();
    let out = run(archiver.command(&["backup"]));
    assert!(out.status.success(), "backup: {}", stderr(&out));
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
    wait_for("the tail stored", Duration::from_secs(30), || {
        (archiver.archived_end() >= tail).then_some(())
    });
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
