//! Timelines: a restored cluster is promoted onto timeline 2; the archiver follows it
//! (history file archived, the new timeline streamed from where it branched); restores
//! then reach points on timeline 2, or stay on timeline 1 when asked.

mod common;

use std::time::Duration;

use common::*;
use tidemark_fixtures::Cluster;
use tidemark_protocol::WalSegmentSize;

fn rows(cluster: &Cluster, burst: u32) {
    cluster
        .psql(&format!(
            "INSERT INTO events SELECT g, {burst} FROM generate_series(1, 100) g"
        ))
        .unwrap();
}

fn restore(archiver: &Archiver, args: &[&str]) -> Cluster {
    let dir = tidemark_fixtures::test_dir("tli");
    let data = dir.path().join("data");
    let mut all = vec!["restore", "--pgdata", data.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run(archiver.command(&all));
    assert!(out.status.success(), "restore {args:?}: {}", stderr(&out));
    share_with_postgres(&archiver.repo_dir_for_postgres());
    let restored = Cluster::start_prepared(dir, one_mb()).expect("restored cluster");
    wait_for("promotion", Duration::from_secs(120), || {
        (restored.psql("SELECT pg_is_in_recovery()").ok()? == "f").then_some(())
    });
    restored
}

fn bursts(cluster: &Cluster) -> String {
    cluster
        .psql("SELECT string_agg(DISTINCT burst::text, ',' ORDER BY burst::text) FROM events")
        .unwrap()
}

#[test]
fn a_promoted_restore_is_archived_on_its_new_timeline_and_restorable_there() {
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let origin = Cluster::start(one_mb()).expect("cluster");
    let repo = Repo::file();
    let mut archiver = Archiver::new(&origin, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    origin
        .psql("CREATE TABLE events(id int, burst int)")
        .unwrap();
    rows(&origin, 1);
    let out = run(archiver.command(&["backup"]));
    assert!(out.status.success(), "{}", stderr(&out));
    rows(&origin, 2);
    let through = switch_wal(&origin);
    archiver.wait_complete_through(through, seg, Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0);
    drop(origin);

    // Restore to the end and promote: the copy continues on timeline 2.
    let promoted = restore(&archiver, &[]);
    assert_eq!(bursts(&promoted), "1,2");
    assert_eq!(
        promoted
            .psql("SELECT timeline_id FROM pg_control_checkpoint()")
            .unwrap(),
        "2"
    );

    // The archiver follows the promoted copy onto timeline 2.
    archiver.follow(&promoted);
    archiver.start();
    rows(&promoted, 3);
    let on_tli2 = lsn(&promoted.psql("SELECT pg_current_wal_lsn()").unwrap());
    rows(&promoted, 4);
    let through = switch_wal(&promoted);
    archiver.wait_complete_through(through, seg, Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0);
    let keys = repo.keys();
    assert!(
        keys.contains(&"wal/00000002.history".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with("wal/00000002/")),
        "{keys:?}"
    );

    // A point on timeline 2, reached through the branch from timeline 1.
    let at_tli2 = restore(&archiver, &["--target-lsn", &on_tli2.to_string()]);
    assert_eq!(bursts(&at_tli2), "1,2,3");
    // The latest of timeline 2.
    let latest = restore(&archiver, &[]);
    assert_eq!(bursts(&latest), "1,2,3,4");
    // Timeline 1 only, as it was before the promotion.
    let old = restore(&archiver, &["--target-timeline", "current"]);
    assert_eq!(bursts(&old), "1,2");
}
