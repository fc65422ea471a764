//! Base backups from a streaming standby: the archiver streams from the primary, the
//! backup connects to the standby, and the backup completes from the archive (a stored
//! partial suffices, since a standby makes no segment switch) and restores exactly. A
//! standby promoted mid-backup leaves no listed backup; `--from-standby` refuses a primary.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use tidemark_fixtures::{Cluster, ClusterOptions};

fn one_mb_on(major: u32) -> ClusterOptions {
    ClusterOptions { major, ..one_mb() }
}

/// A primary archived by `stream --partial-interval 1`, with a table `t(n)`, and a
/// streaming standby of it.
fn primary_and_standby(major: u32, repo: &Repo) -> (Cluster, Archiver, Cluster) {
    let primary = Cluster::start(one_mb_on(major)).expect("primary");
    let mut archiver = Archiver::new(&primary, repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    primary.wait_streaming(1).expect("the archiver streams");
    primary.psql("CREATE TABLE t(n int)").unwrap();
    let standby = primary.start_standby().expect("standby");
    primary
        .wait_streaming(2)
        .expect("the archiver and the standby stream");
    (primary, archiver, standby)
}

fn insert(cluster: &Cluster, from: u32, to: u32) {
    cluster
        .psql(&format!(
            "INSERT INTO t SELECT generate_series({from}, {to})"
        ))
        .unwrap();
}

fn rows(cluster: &Cluster) -> String {
    cluster
        .psql("SELECT string_agg(n::text, ',' ORDER BY n) FROM t")
        .unwrap()
}

/// Wait until the standby has replayed everything the primary wrote so far.
fn wait_replayed(primary: &Cluster, standby: &Cluster) {
    let upto = current_lsn(primary);
    wait_for("the standby to replay", Duration::from_secs(30), || {
        let replayed = standby.psql("SELECT pg_last_wal_replay_lsn()").ok()?;
        (lsn(&replayed) >= upto).then_some(())
    });
}

fn backups(archiver: &Archiver) -> Vec<serde_json::Value> {
    let listed = run(archiver.command(&["list", "backups", "--json"]));
    assert!(listed.status.success(), "{}", stderr(&listed));
    serde_json::from_slice(&listed.stdout).unwrap()
}

fn standby_backup_completes_without_a_segment_switch_and_restores_exactly(major: u32, repo: Repo) {
    let (primary, mut archiver, standby) = primary_and_standby(major, &repo);
    insert(&primary, 1, 3);
    wait_replayed(&primary, &standby);

    // The backup connects to the standby; nobody switches the WAL, and the idle primary
    // fills no segment: only the stored partial can complete the backup.
    let at_standby = Archiver::new(&standby, &repo, &[]);
    let started = Instant::now();
    let out = run(at_standby.command(&["backup", "--wal-wait", "120"]));
    let took = started.elapsed();
    assert!(out.status.success(), "backup: {}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("(from a standby)"), "{said}");
    assert!(
        took < Duration::from_secs(30),
        "the standby's backup took {took:?}: it waited for a segment to fill"
    );
    let id = said.split_whitespace().nth(1).unwrap().to_string();
    let listed = backups(&archiver);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["from_standby"], true);
    assert_eq!(listed[0]["timeline"], 1);

    insert(&primary, 4, 5);
    let target = current_lsn(&primary);
    insert(&primary, 6, 7);
    archiver.wait_stored(current_lsn(&primary), Duration::from_secs(30));
    // The restored servers read the repository as their own user: stop writing to it.
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());

    let plan = run(archiver.command(&["plan", "--target-lsn", &target.to_string(), "--json"]));
    assert!(plan.status.success(), "{}", stderr(&plan));
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["backup"], id.as_str(), "the standby's backup is used");

    let at_target = start_recovered(
        restore_into(&archiver, &["--target-lsn", &target.to_string()]),
        one_mb_on(major),
    );
    assert_eq!(rows(&at_target), "1,2,3,4,5");
    drop(at_target);
    let consistent = start_recovered(
        restore_into(&archiver, &["--target-immediate"]),
        one_mb_on(major),
    );
    assert_eq!(
        rows(&consistent),
        "1,2,3",
        "the backup's own rows, no later ones"
    );
    drop(consistent);
    let latest = start_recovered(restore_into(&archiver, &[]), one_mb_on(major));
    assert_eq!(rows(&latest), "1,2,3,4,5,6,7");
}

#[test]
fn a_backup_from_a_standby_completes_without_a_segment_switch_and_restores_exactly() {
    standby_backup_completes_without_a_segment_switch_and_restores_exactly(15, Repo::file());
    standby_backup_completes_without_a_segment_switch_and_restores_exactly(
        17,
        Repo::s3("standby-backup"),
    );
}

#[test]
fn from_standby_against_a_primary_is_refused() {
    let primary = Cluster::start(one_mb()).expect("primary");
    let repo = Repo::file();
    let archiver = Archiver::new(&primary, &repo, &[]);
    archiver.init();
    let out = run(archiver.command(&["backup", "--from-standby"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("--from-standby was given, but the server is a primary")
            && err.contains("HINT"),
        "{err}"
    );
    assert!(
        !repo.keys().iter().any(|k| k.starts_with("backups/")),
        "{:?}",
        repo.keys()
    );
}

/// `SHOW in_hot_standby` over a walsender connection tells a standby from a primary on
/// every major: `--from-standby` is refused by the primary and accepted by the standby
/// (whose backup then waits for WAL that no archiver stores here).
#[test]
fn a_standby_is_detected_and_a_primary_refused_on_every_major() {
    for major in tidemark_fixtures::pg_majors() {
        let primary = Cluster::start(one_mb_on(major)).expect("primary");
        let repo = Repo::file();
        let at_primary = Archiver::new(&primary, &repo, &[]);
        at_primary.init();
        let standby = primary.start_standby().expect("standby");
        primary.wait_streaming(1).expect("the standby streams");
        let refused = run(at_primary.command(&["backup", "--from-standby"]));
        assert_eq!(
            refused.status.code(),
            Some(2),
            "PG {major}: {}",
            stderr(&refused)
        );
        let at_standby = Archiver::new(&standby, &repo, &[]);
        let out = run(at_standby.command(&["backup", "--from-standby", "--wal-wait", "1"]));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "PG {major}: {err}");
        assert!(
            err.contains("the server is a standby") && err.contains("was not archived within 1s"),
            "PG {major}: {err}"
        );
    }
}

#[test]
fn a_standby_promoted_mid_backup_leaves_no_listed_backup_and_says_why() {
    let repo = Repo::s3("standby-promoted");
    let (primary, mut archiver, standby) = primary_and_standby(15, &repo);
    insert(&primary, 1, 3);
    wait_replayed(&primary, &standby);
    // Throttled, so that the promotion lands while the files stream (about 5 s).
    let at_standby = Archiver::new(&standby, &repo, &[]);
    let mut backup = at_standby.command(&["backup", "--max-rate-kb", "4096", "--wal-wait", "30"]);
    let child = backup
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backup");
    wait_for(
        "the standby's backup to stream files",
        Duration::from_secs(30),
        || {
            let phase = standby
                .psql("SELECT phase FROM pg_stat_progress_basebackup")
                .ok()?;
            (phase == "streaming database files").then_some(())
        },
    );
    standby.promote().expect("promote the standby");
    let out = child.wait_with_output().expect("backup ends");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("the standby was promoted while the backup ran")
            && err.contains("the server said: the standby was promoted during online backup")
            && err.contains("incomplete"),
        "{err}"
    );
    assert!(
        backups(&archiver).is_empty(),
        "a promoted standby's backup is listed"
    );
    let left: Vec<String> = repo
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("backups/"))
        .collect();
    assert!(left.is_empty(), "the failed backup left {left:?}");
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
}
