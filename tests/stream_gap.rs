//! Never skip a byte: when the server has dropped WAL the archive still needs (the slot
//! was dropped meanwhile), `stream` refuses with a clear error instead of resuming later
//! and leaving a silent gap.

mod common;

use std::time::Duration;

use common::*;
use tidemark_fixtures::Cluster;
use tidemark_protocol::WalSegmentSize;

#[test]
fn wal_removed_by_the_server_stops_streaming_with_a_clear_error() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg, Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0);
    let before = repo.keys();

    // Someone drops the slot; the server moves on and recycles the WAL.
    cluster
        .psql("SELECT pg_drop_replication_slot('tidemark')")
        .unwrap();
    for _ in 0..4 {
        switch_wal(&cluster);
    }
    cluster.psql("CHECKPOINT").unwrap();
    // The first segment the archive lacks.
    let missing = tidemark_protocol::SegmentName::new(
        tidemark_protocol::TimelineId(1),
        tidemark_protocol::Lsn(through.0 - 1).segment_number(seg) + 1,
    )
    .file_name(seg);
    assert!(
        !cluster.data_dir().join("pg_wal").join(&missing).exists(),
        "the server still has {missing}; the test needs it gone"
    );

    archiver.start();
    let code = wait_for("the archiver to stop", Duration::from_secs(60), || {
        archiver.exit_code()
    });
    let log = archiver.log();
    assert_eq!(code, 5, "{log}");
    assert!(
        log.contains("no longer has WAL") && log.contains("base backup"),
        "{log}"
    );
    assert_eq!(repo.keys(), before, "WAL after the gap was archived");
}
