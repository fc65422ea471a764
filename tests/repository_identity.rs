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
