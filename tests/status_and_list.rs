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
    // Lag over the bound is unhealthy: the report, and exit status 7.
    let out = run(archiver.command(&["status", "--max-lag", "0.5"]));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
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

#[test]
fn status_never_hangs_on_an_unresponsive_repository_and_fails_when_the_server_is_down() {
    // A repository endpoint that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let work = tidemark_fixtures::test_dir("status");
    let catalog = work.path().join("catalog.db");
    tidemark_store::catalog::Catalog::open(&catalog).unwrap();
    let closed = tidemark_fixtures::free_port();
    let status = |repo: &str, pg: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark"));
        cmd.env("AWS_ENDPOINT_URL_S3", &endpoint)
            .env("AWS_ACCESS_KEY_ID", "k")
            .env("AWS_SECRET_ACCESS_KEY", "s")
            .env_remove("TIDEMARK_REPO")
            .env_remove("TIDEMARK_PG")
            .args(["--repo", repo, "--catalog"])
            .arg(&catalog);
        if let Some(pg) = pg {
            cmd.args(["--pg", pg]);
        }
        cmd.args(["status", "--timeout", "2"]);
        let started = std::time::Instant::now();
        let out = run(cmd);
        (out, started.elapsed())
    };
    let (out, took) = status(
        "s3://silent/repo",
        Some(&format!("host=127.0.0.1 port={closed} user=postgres")),
    );
    assert!(took < Duration::from_secs(20), "status took {took:?}");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("server:         unreachable"), "{text}");

    // Without --pg, only the repository is asked: silent, exit 4.
    let (out, took) = status("s3://silent/repo", None);
    assert!(took < Duration::from_secs(20), "status took {took:?}");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    drop(silent);
}
