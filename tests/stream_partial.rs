//! The newest partial segment bounds the RPO: while WAL trickles (far less than a
//! segment), the repository is never more than partial-interval plus upload time behind
//! the server's flush LSN. And SIGTERM uploads what was received before exiting 0.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tidemark_fixtures::{Cluster, ClusterOptions};
use tidemark_protocol::Lsn;

#[test]
fn partial_segments_keep_the_repository_seconds_behind_the_server() {
    let cluster = Cluster::start(ClusterOptions::default()).expect("cluster");
    let repo = Repo::s3("partial-lag");
    let interval = 1.0;
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster.pgbench_init(1).expect("pgbench -i");
    // Let the initial load settle into the repository.
    let settled = lsn(&cluster.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    wait_for("initial WAL archived", Duration::from_secs(60), || {
        archiver.assert_running();
        (archiver.archived_end() >= settled).then_some(())
    });

    // A trickle: ~20 transactions a second for 12 s, far less than a 16 MB segment.
    let load = {
        let conn = cluster.conninfo();
        let bin = cluster.bin().tool("pgbench");
        std::thread::spawn(move || {
            std::process::Command::new(bin)
                .args(["-n", "-R", "20", "-T", "12", "-c", "1"])
                .arg(conn)
                .output()
        })
    };
    let start = Instant::now();
    let mut server: Vec<(Instant, Lsn)> = Vec::new();
    let mut archived: Vec<(Instant, Lsn)> = Vec::new();
    while start.elapsed() < Duration::from_secs(16) {
        archiver.assert_running();
        server.push((
            Instant::now(),
            lsn(&cluster.psql("SELECT pg_current_wal_flush_lsn()").unwrap()),
        ));
        archived.push((Instant::now(), archiver.archived_end()));
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = load.join().unwrap().expect("pgbench");
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Tail: the last samples need time to be covered.
    let tail_until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < tail_until {
        archived.push((Instant::now(), archiver.archived_end()));
        std::thread::sleep(Duration::from_millis(200));
    }

    // For each server sample, how long until the repository covered it.
    let mut lags = Vec::new();
    for &(t, flush) in &server {
        let covered = archived
            .iter()
            .find(|&&(ta, end)| ta >= t && end >= flush)
            .map(|&(ta, _)| ta - t)
            .unwrap_or_else(|| {
                panic!(
                    "server WAL up to {flush} was never archived:\n{}",
                    archiver.log()
                )
            });
        lags.push(covered.as_secs_f64());
    }
    lags.sort_by(f64::total_cmp);
    let p50 = lags[lags.len() / 2];
    let max = lags[lags.len() - 1];
    eprintln!("partial-segment lag behind the server's flush LSN: p50 {p50:.2} s, max {max:.2} s (partial interval {interval} s, {} samples)", lags.len());
    assert!(
        max <= interval + 10.0,
        "repository fell {max:.1} s behind (bound: partial interval {interval} s + 10 s upload allowance)"
    );
    // The WAL really trickled: the lag was not bought by filling segments.
    let grown = server.last().unwrap().1.bytes_since(server[0].1);
    assert!(
        grown > 0 && grown < 16 << 20,
        "WAL grew {grown} bytes during the trickle"
    );
    assert_eq!(archiver.terminate(), 0);
}

#[test]
fn sigterm_uploads_the_received_tail_and_exits_0() {
    let cluster = Cluster::start(ClusterOptions::default()).expect("cluster");
    let repo = Repo::file();
    // A partial interval far beyond the test: only the shutdown path can upload the tail.
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "3600"]);
    archiver.init();
    archiver.start();
    wait_for("the archiver to stream", Duration::from_secs(30), || {
        archiver.assert_running();
        let state = cluster
            .psql("SELECT state FROM pg_stat_replication WHERE application_name = 'tidemark'")
            .ok()?;
        (state == "streaming").then_some(())
    });
    cluster
        .psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g")
        .unwrap();
    let flush = lsn(&cluster.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    wait_received(&mut archiver, &cluster, flush);
    assert!(
        archiver.archived_end() < flush,
        "tail archived before SIGTERM: the test proves nothing"
    );
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    assert!(
        archiver.archived_end() >= flush,
        "after SIGTERM the repository ends at {}, the server had flushed {flush}",
        archiver.archived_end()
    );
    let partial = archiver
        .segments()
        .into_iter()
        .find(|s| s.partial)
        .expect("a partial segment");
    assert!(
        repo.keys().contains(&partial.key),
        "{} not in the repository",
        partial.key
    );
}
