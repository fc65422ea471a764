//! `tidemark stream` stores every WAL byte: archived segments, decompressed by the `zstd`
//! CLI, are byte-identical to the server's own files — on S3 and `file://`, 16 MiB and
//! 1 MiB segments, every supported PostgreSQL major.

mod common;

use std::time::Duration;

use common::*;
use tidemark_fixtures::{Cluster, ClusterOptions};
use tidemark_protocol::WalSegmentSize;

fn every_byte(major: u32, segsize_mb: u32, repo: Repo, scale: u32) {
    let cluster = Cluster::start(ClusterOptions {
        major,
        wal_segsize_mb: segsize_mb,
        ..ClusterOptions::default()
    })
    .expect("cluster");
    let seg = WalSegmentSize::new(u64::from(segsize_mb) << 20).unwrap();
    hold_wal(&cluster);
    let before = lsn(&cluster.psql("SELECT pg_current_wal_lsn()").unwrap());

    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    // The stream starts where the server is when it connects (PostgreSQL 14 cannot read
    // the slot's restart point over replication): let it begin before writing.
    wait_received(&mut archiver, &cluster, before);
    cluster.pgbench_init(scale).expect("pgbench -i");
    cluster.pgbench(&["-T", "2", "-c", "2"]).expect("pgbench");
    let through = switch_wal(&cluster);
    archiver.wait_contiguous_through(through, seg, Duration::from_secs(180));
    assert_eq!(
        archiver.terminate(),
        0,
        "SIGTERM must end cleanly:\n{}",
        archiver.log()
    );

    let first = archiver
        .segments()
        .iter()
        .map(|s| s.name.segno)
        .min()
        .unwrap();
    assert!(
        first <= before.segment_number(seg),
        "archiving began at segment {first:X}, after the stream's start {before}"
    );
    let compared = assert_segments_match_pg_wal(&archiver, &repo, &cluster, seg, through);
    assert!(
        compared >= 5,
        "only {compared} segments archived; the test needs at least 5"
    );
}

#[test]
fn every_byte_reaches_s3_with_16mb_segments() {
    every_byte(15, 16, Repo::s3("every-byte-16"), 10);
}

#[test]
fn every_byte_reaches_a_file_repository_with_16mb_segments() {
    every_byte(15, 16, Repo::file(), 10);
}

#[test]
fn every_byte_reaches_s3_with_1mb_segments() {
    every_byte(15, 1, Repo::s3("every-byte-1"), 1);
}

#[test]
fn every_byte_on_postgresql_14() {
    every_byte(14, 1, Repo::file(), 1);
}

#[test]
fn every_byte_on_postgresql_16() {
    every_byte(16, 1, Repo::file(), 1);
}

#[test]
fn every_byte_on_postgresql_17() {
    every_byte(17, 1, Repo::file(), 1);
}

#[test]
fn every_byte_on_postgresql_18() {
    every_byte(18, 1, Repo::file(), 1);
}
