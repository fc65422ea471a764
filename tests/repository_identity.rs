//! A repository belongs to one cluster: a different cluster pointed at it is refused with
//! a clear error and nothing is written.

mod common;

use common::*;
use tidemark_fixtures::{Cluster, ClusterOptions};

#[test]
fn a_second_cluster_is_refused_and_writes_nothing() {
    let a = Cluster::start(ClusterOptions::default()).expect("cluster a");
    let b = Cluster::start(ClusterOptions::default()).expect("cluster b");
    assert_ne!(a.system_identifier(), b.system_identifier());
    let repo = Repo::file();
    let mut archiver_a = Archiver::new(&a, &repo, &["--partial-interval", "1"]);
    archiver_a.init();
    archiver_a.start();
    let through = switch_wal(&a);
    archiver_a.wait_complete_through(
        through,
        tidemark_protocol::WalSegmentSize::DEFAULT,
        std::time::Duration::from_secs(60),
    );
    assert_eq!(archiver_a.terminate(), 0);
    let before = repo.keys();

    let b_archiver = Archiver::new(&b, &repo, &[]);
    for args in [&["init"][..], &["stream"][..]] {
        let out = run(b_archiver.command(args));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {err}");
        assert!(
            err.contains(&a.system_identifier().to_string())
                && err.contains(&b.system_identifier().to_string()),
            "{args:?}: the error should name both clusters: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
        assert_eq!(repo.keys(), before, "{args:?} wrote to the repository");
    }
    assert!(
        b.psql("SELECT count(*) FROM pg_replication_slots").unwrap() == "0",
        "the refused archiver created a slot on the other cluster"
    );
}

/// Split-brain protection: if another server already archived different bytes under the
/// name of the next segment, streaming stops with an error and the stored object is kept.
#[test]
fn different_bytes_under_an_archived_name_are_refused_and_kept() {
    use tidemark_protocol::{SegmentName, TimelineId, WalSegmentSize};
    use tidemark_store::layout::wal_segment_key;

    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg, std::time::Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0);

    // "Another primary" archives the next segment first, with other bytes.
    let next = SegmentName::new(
        TimelineId(1),
        tidemark_protocol::Lsn(through.0 - 1).segment_number(seg) + 1,
    );
    let key = wal_segment_key(next, seg);
    let forged = tidemark_fixtures::test_dir("forged");
    let forged_file = forged.path().join(next.file_name(seg));
    std::fs::write(&forged_file, vec![0x5A; 1 << 20]).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let url: tidemark_store::RepoUrl = repo.url().parse().unwrap();
        let store = tidemark_store::Repository::open(&url, &Default::default())
            .await
            .unwrap();
        store
            .archive_segment(next, seg, &forged_file, 3, Default::default())
            .await
            .unwrap();
    });
    let forged_object = repo_object(&repo, &key);

    // Our cluster's WAL for that segment is different: refused, exit 5, nothing replaced.
    archiver.start();
    cluster.pgbench_init(1).expect("pgbench -i");
    let _ = switch_wal(&cluster);
    let code = common::wait_for(
        "the archiver to stop",
        std::time::Duration::from_secs(60),
        || archiver.exit_code(),
    );
    assert_eq!(code, 5, "{}", archiver.log());
    assert!(archiver.log().contains("split brain"), "{}", archiver.log());
    assert_eq!(
        repo_object(&repo, &key),
        forged_object,
        "the stored object was replaced"
    );
}

fn repo_object(repo: &Repo, key: &str) -> Vec<u8> {
    let dir = tidemark_fixtures::test_dir("object");
    let dst = dir.path().join("o");
    repo.download(key, &dst);
    std::fs::read(dst).unwrap()
}

/// `init` refuses storage that ignores `If-None-Match: *` (store's probe tests prove the
/// refusal); against the real S3 server it must pass the probe and leave no probe object.
#[test]
fn init_probes_conditional_puts_on_s3_and_leaves_no_probe_object() {
    let cluster = Cluster::start(ClusterOptions::default()).expect("cluster");
    let repo = Repo::s3("probe");
    let archiver = Archiver::new(&cluster, &repo, &[]);
    let mut cmd = archiver.command(&["init"]);
    cmd.env("TIDEMARK_LOG", "info,tidemark_archiver=debug");
    let out = run(cmd);
    let err = stderr(&out);
    assert!(out.status.success(), "init failed: {err}");
    assert!(
        err.contains("the storage honours conditional puts"),
        "init did not report the probe: {err}"
    );
    assert_eq!(
        repo.keys(),
        ["tidemark.json"],
        "init left more than its identity"
    );
}
