//! The catalog is a derived index (DESIGN invariant 2): deleted, it is rebuilt by
//! `tidemark reindex` from the repository alone, on S3 as on `file://`.

mod common;

use std::time::Duration;

use common::*;
use tidemark_fixtures::Cluster;
use tidemark_protocol::WalSegmentSize;

fn listing(archiver: &Archiver) -> Vec<serde_json::Value> {
    let out = run(archiver.command(&["list", "wal", "--json"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let mut rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    // When it was archived is the one thing the repository knows only approximately.
    for row in &mut rows {
        row.as_object_mut().unwrap().remove("archived_at");
    }
    rows
}

fn reindex_restores_the_catalog(repo: Repo) {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster.pgbench_init(1).expect("pgbench -i");
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(
        through,
        WalSegmentSize::new(1 << 20).unwrap(),
        Duration::from_secs(60),
    );
    cluster.psql("CREATE TABLE tail AS SELECT 1").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(archiver.terminate(), 0);
    let before = listing(&archiver);
    assert!(
        before.iter().any(|r| r["partial"] == true),
        "the test wants a partial segment too"
    );
    // What the WAL holds (transaction times) is indexed too, and comes back.
    assert!(
        before.iter().any(|r| !r["last_xact_time"].is_null()),
        "no segment has a transaction time: {before:#?}"
    );

    delete_catalog(&archiver);
    let out = run(archiver.command(&["reindex"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(listing(&archiver), before);

    // And the rebuilt catalog carries on: streaming resumes after the archive's end.
    archiver.start();
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(
        through,
        WalSegmentSize::new(1 << 20).unwrap(),
        Duration::from_secs(60),
    );
    assert_eq!(archiver.terminate(), 0);
}

#[test]
fn reindex_rebuilds_the_catalog_from_a_file_repository() {
    reindex_restores_the_catalog(Repo::file());
}

#[test]
fn reindex_rebuilds_the_catalog_from_s3() {
    reindex_restores_the_catalog(Repo::s3("reindex"));
}

/// `stream` and `objects track` started by two units at the same moment open one fresh
/// catalog together; `reindex` opens (and creates) the catalog the same way and needs no
/// server, so two of them at once on a fresh path stand in for that start-up. Neither may
/// fail with "table ... already exists" (or "database is locked"), in any round.
#[test]
fn two_processes_opening_a_fresh_catalog_never_race_on_its_schema() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let repo = Repo::file();
    Archiver::new(&cluster, &repo, &[]).init();
    let dir = tidemark_fixtures::test_dir("catalog-race");
    for round in 0..15 {
        let catalog = dir.path().join(format!("r{round}/catalog.db"));
        let children: Vec<_> = (0..2)
            .map(|_| {
                let mut cmd = tidemark(&repo);
                cmd.arg("--repo")
                    .arg(repo.url())
                    .arg("--catalog")
                    .arg(&catalog)
                    .arg("reindex")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                cmd.spawn().expect("spawn tidemark reindex")
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().expect("wait for tidemark reindex");
            assert!(
                out.status.success(),
                "round {round}: exit {:?}: {}",
                out.status.code(),
                stderr(&out)
            );
        }
        let mode = |p: &std::path::Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode(&catalog), 0o600, "catalog file mode");
        assert_eq!(
            mode(catalog.parent().unwrap()),
            0o700,
            "catalog directory mode"
        );
    }
}

/// `stream --track-bucket` holds two connections to one catalog in one process. Opening the
/// second once dropped the process's POSIX locks on the file (a descriptor of it was
/// opened and closed outside SQLite), so another process closing its connection (`status`,
/// `list wal`) thought itself the last one and deleted the WAL file under the first
/// connection, whose later writes then reached nobody.
#[test]
fn a_second_catalog_connection_in_one_process_never_hides_the_first_ones_writes() {
    use tidemark_protocol::{SegmentName, TimelineId};
    use tidemark_store::catalog::{Catalog, SegmentRecord};
    let dir = tidemark_fixtures::test_dir("catalog-locks");
    let catalog = dir.path().join("catalog.db");
    let repo = Repo::file();
    let listed = || {
        let mut cmd = tidemark(&repo);
        cmd.arg("--repo")
            .arg(repo.url())
            .arg("--catalog")
            .arg(&catalog)
            .args(["list", "wal", "--json"]);
        let out = run(cmd);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    };
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let record = |segno: u64| {
        let name = SegmentName::new(TimelineId(1), segno);
        SegmentRecord {
            name,
            partial: false,
            start_lsn: name.start_lsn(seg),
            end_lsn: name.end_lsn(seg),
            raw_size: seg.bytes(),
            stored_size: 100,
            crc32: 7,
            key: format!("wal/00000001/{}.zst", name.file_name(seg)),
            archived_at: chrono::Utc::now(),
            summary: None,
        }
    };
    let first = Catalog::open(&catalog).unwrap();
    first.record_segment(&record(1)).unwrap();
    let second = Catalog::open(&catalog).unwrap();
    assert_eq!(listed().len(), 1);
    first.record_segment(&record(2)).unwrap();
    drop(second);
    assert_eq!(listed().len(), 2, "the first connection's write was lost");
}
