//! `kill -9` of the archiver mid-segment, then a restart: no gap, no corrupted or
//! duplicated segment, and at no moment does the slot's `restart_lsn` pass what the
//! catalog says is stored (invariant 1).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tidemark_fixtures::Cluster;
use tidemark_protocol::WalSegmentSize;

#[test]
fn kill_9_and_restart_loses_nothing_and_the_slot_never_runs_ahead() {
    let cluster = Arc::new(Cluster::start(one_mb()).expect("cluster"));
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    hold_wal(&cluster);
    let repo = Repo::s3("crash");
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster.pgbench_init(1).expect("pgbench -i");

    // Watch the slot against the catalog for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let samples = Arc::new(Mutex::new(0u32));
    let monitor = {
        let (cluster, stop, violations, samples) = (
            cluster.clone(),
            stop.clone(),
            violations.clone(),
            samples.clone(),
        );
        let catalog = archiver.catalog.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Slot first, catalog second: the catalog only grows, so a reported
                // violation is real (one shorter than the gap between reads may be missed).
                let restart = slot_restart(&cluster, "tidemark");
                if let (Some(restart), Some(stored)) = (restart, durable_end(&catalog, seg)) {
                    *samples.lock().unwrap() += 1;
                    if restart > stored {
                        violations.lock().unwrap().push((restart, stored));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let load = {
        let cluster = cluster.clone();
        std::thread::spawn(move || cluster.pgbench(&["-T", "8", "-c", "2"]))
    };
    std::thread::sleep(Duration::from_secs(3));
    archiver.assert_running();
    archiver.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    archiver.start();
    load.join().unwrap().expect("pgbench");
    let through = switch_wal(&cluster);
    archiver.wait_contiguous_through(through, seg, Duration::from_secs(120));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    stop.store(true, Ordering::Relaxed);
    monitor.join().unwrap();

    let violations = violations.lock().unwrap();
    assert!(
        violations.is_empty(),
        "slot restart_lsn passed the stored WAL: {violations:?}"
    );
    assert!(*samples.lock().unwrap() > 20, "the monitor barely sampled");
    let compared = assert_segments_match_pg_wal(&archiver, &repo, &cluster, seg, through);
    assert!(compared >= 5, "only {compared} segments");

    // Exactly one object per archived segment, and nothing stray (no temp objects).
    let keys = repo.keys();
    for key in &keys {
        assert!(
            key == "tidemark.json" || key.starts_with("wal/"),
            "unexpected object {key}"
        );
    }
    for rec in archiver.segments().iter().filter(|s| !s.partial) {
        assert_eq!(
            keys.iter().filter(|k| **k == rec.key).count(),
            1,
            "{}",
            rec.key
        );
    }
}

#[test]
fn a_postgres_restart_mid_stream_is_followed_without_a_gap() {
    let mut cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    hold_wal(&cluster);
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster.pgbench_init(1).expect("pgbench -i");
    // Mid-segment: a few rows, not a whole segment.
    cluster
        .psql("CREATE TABLE before_restart AS SELECT g FROM generate_series(1, 1000) g")
        .unwrap();
    cluster.restart().expect("restart PostgreSQL");
    std::thread::sleep(Duration::from_secs(2));
    archiver.assert_running();
    cluster.pgbench(&["-T", "2", "-c", "2"]).expect("pgbench");
    let through = switch_wal(&cluster);
    archiver.wait_contiguous_through(through, seg, Duration::from_secs(120));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    assert!(
        archiver.log().contains("reconnect"),
        "the archiver never noticed the restart:\n{}",
        archiver.log()
    );
    let compared = assert_segments_match_pg_wal(&archiver, &repo, &cluster, seg, through);
    assert!(compared >= 5, "only {compared} segments");
}
