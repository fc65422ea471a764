//! An S3 outage while WAL flows loses nothing: uploads are retried, the slot is not
//! acknowledged past what is stored, and once S3 is back every byte arrives.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tidemark_fixtures::{Cluster, OutageProxy};
use tidemark_protocol::WalSegmentSize;

#[test]
fn an_s3_outage_delays_archiving_but_loses_nothing() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    hold_wal(&cluster);
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let upstream = s3.endpoint.trim_start_matches("http://").to_string();
    let proxy = OutageProxy::start(&upstream).expect("proxy");
    let repo = Repo::s3_via("outage", proxy.endpoint());
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster.pgbench_init(1).expect("pgbench -i");
    let first = switch_wal(&cluster);
    archiver.wait_complete_through(first, seg, Duration::from_secs(60));

    // S3 goes away while WAL keeps coming.
    proxy.cut();
    let stored_before = durable_end(&archiver.catalog, seg).expect("something stored");
    // Several segments' worth of WAL, deterministically.
    cluster
        .psql("CREATE TABLE during_outage AS SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
        .expect("write during the outage");
    let during = switch_wal(&cluster);
    // Long enough for the SDK's own retries to give up, so tidemark's retry policy is exercised.
    let outage_end = Instant::now() + Duration::from_secs(12);
    while Instant::now() < outage_end {
        archiver.assert_running();
        let stored = durable_end(&archiver.catalog, seg).unwrap();
        assert_eq!(
            stored, stored_before,
            "something was recorded as stored while S3 was down"
        );
        let restart = slot_restart(&cluster, "tidemark").expect("slot");
        assert!(
            restart <= stored,
            "slot acknowledged {restart} while only {stored} is stored"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        during.bytes_since(stored_before) > 3 * seg.bytes(),
        "too little WAL during the outage"
    );

    // S3 is back: everything arrives, byte for byte.
    proxy.restore();
    archiver.wait_complete_through(during, seg, Duration::from_secs(120));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    let compared = assert_segments_match_pg_wal(&archiver, &repo, &cluster, seg, during);
    assert!(compared >= 5, "only {compared} segments");
}
