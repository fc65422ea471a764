//! `tidemark status` and `tidemark list wal`: what is archived, the lag behind the server
//! in bytes and seconds, the RPO estimate — read from the catalog and the server.

mod common;

use std::time::Duration;

use common::*;
use tidemark_fixtures::Cluster;
use tidemark_protocol::{Lsn, WalSegmentSize};

fn json(out: std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

#[test]
fn status_reports_lag_and_list_shows_every_archived_segment() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();

    // Before anything is archived there is no catalog on this machine: a clear refusal.
    let out = run(archiver.command(&["status"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no catalog"), "{}", stderr(&out));

    archiver.start();
    cluster
        .psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 50000) g")
        .unwrap();
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg, Duration::from_secs(60));

    // Caught up: the repository holds everything the server flushed.
    let report = wait_for("status to show no lag", Duration::from_secs(30), || {
        let report = json(run(archiver.command(&["status", "--json"])));
        (report["lag_bytes"] == 0).then_some(report)
    });
    let server: Lsn = report["server"]["flush_lsn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let archived: Lsn = report["archived"]["lsn"].as_str().unwrap().parse().unwrap();
    assert!(archived >= server && archived >= through, "{report:#}");
    assert_eq!(report["lag_seconds"], 0.0);
    assert_eq!(report["rpo_estimate_seconds"], 0.0);
    assert_eq!(
        report["server"]["system_identifier"],
        cluster.system_identifier().to_string()
    );

    // Stopped archiver, new WAL: the lag shows in bytes and grows in seconds.
    assert_eq!(archiver.terminate(), 0);
    cluster
        .psql("INSERT INTO t SELECT g FROM generate_series(1, 1000) g")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let report = json(run(archiver.command(&["status", "--json"])));
    assert!(report["lag_bytes"].as_u64().unwrap() > 0, "{report:#}");
    assert!(report["lag_seconds"].as_f64().unwrap() >= 1.0, "{report:#}");
    let text = run(archiver.command(&["status"]));
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("RPO estimate:") && text.contains("lag:"),
        "{text}"
    );

    // The list is the catalog, one row per archived object.
    let rows = json(run(archiver.command(&["list", "wal", "--json"])));
    let rows = rows.as_array().unwrap();
    let segments = archiver.segments();
    assert_eq!(rows.len(), segments.len());
    for (row, rec) in rows.iter().zip(&segments) {
        assert_eq!(row["key"], rec.key.as_str());
        assert_eq!(row["partial"], rec.partial);
        assert_eq!(row["end_lsn"], rec.end_lsn.to_string());
        assert!(
            repo.keys().contains(&rec.key),
            "{} listed but not stored",
            rec.key
        );
    }
}
