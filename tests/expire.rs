//! `tidemark expire --retention`: one window for every store. Against a real cluster
//! archived into S3 with its versioned bucket tracked by `stream`, expiry removes the
//! backup that ended before the window's anchor and all WAL before that anchor — and
//! every instant of the window still restores both stores with exactly the right rows and
//! objects, while an instant before it is refused. A dry run changes nothing, and a
//! second run removes nothing more.

mod common;

use std::time::{Duration, Instant};

use common::app::*;
use common::*;
use tidemark_fixtures::Cluster;
use tidemark_protocol::{Lsn, SegmentName, WalSegmentSize};
use tidemark_store::catalog::Catalog;
use tidemark_store::layout;

fn backup(archiver: &Archiver) {
    let out = run(archiver.command(&["backup"]));
    assert!(out.status.success(), "backup: {}", stderr(&out));
}

fn json(archiver: &Archiver, args: &[&str]) -> serde_json::Value {
    let out = run(archiver.command(args));
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// `expire` with a window that begins about at `mark`.
fn expire(archiver: &Archiver, mark: Instant, extra: &[&str]) -> serde_json::Value {
    let retention = format!("{}s", mark.elapsed().as_secs());
    let mut args = vec!["expire", "--retention", &retention, "--json"];
    args.extend_from_slice(extra);
    json(archiver, &args)
}

/// Where the WAL object at `key` ends (its segment's end), if it is one.
fn wal_end(key: &str, seg: WalSegmentSize) -> Option<(SegmentName, Lsn)> {
    layout::parse_wal_key(key, seg).map(|k| (k.name, k.name.end_lsn(seg)))
}

#[test]
fn expire_keeps_every_instant_of_the_window_restorable_in_both_stores() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let repo = Repo::s3("expire-repo");
    let (mut archiver, bucket) = tracked_archiver(&cluster, &s3, &repo);
    let mut app = App::new(&cluster, &s3, &bucket);

    app.put("f1", "one-1");
    backup(&archiver); // A
    app.put("f2", "one-2");
    let (t_a, _) = app.gap(); // restorable from A only: expired below
    app.put("f1", "two-1");
    switch_wal(&cluster);
    backup(&archiver); // B: the newest backup before the window, so it stays
    std::thread::sleep(Duration::from_secs(2));
    let mark = Instant::now(); // the window begins here
    std::thread::sleep(Duration::from_secs(2));
    app.put("f3", "one-3");
    app.remove("f2");
    let (t_b, at_b) = app.gap(); // inside the window, before C: needs B
    switch_wal(&cluster);
    backup(&archiver); // C
    app.put("f4", "one-4");
    let (t_c, at_c) = app.gap();
    app.put("f5", "after-all");
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg, Duration::from_secs(60));
    wait_for_tracking(&archiver, &bucket, pass_count(&archiver, &bucket) + 1);

    let backups = json(&archiver, &["list", "backups", "--json"]);
    let backups = backups.as_array().unwrap();
    assert_eq!(backups.len(), 3);
    let id = |i: usize| backups[i]["id"].as_str().unwrap().to_string();
    let b_start = lsn(backups[1]["start_lsn"].as_str().unwrap());
    let b_stop_time = backups[1]["stop_time"].as_str().unwrap().to_string();

    // A dry run reports and touches nothing.
    let before = repo.keys();
    let dry = expire(&archiver, mark, &["--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["backups_removed"][0]["id"], id(0).as_str(), "{dry}");
    assert!(dry["wal_removed"].as_u64().unwrap() > 0, "{dry}");
    let after_dry = repo.keys();
    assert!(
        before
            .iter()
            .all(|k| after_dry.contains(k) || k.contains(".partial")),
        "a dry run removed something"
    );

    // The real run, while `stream` keeps archiving and tracking the bucket.
    let report = expire(&archiver, mark, &[]);
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().or(b["id"].as_str()).unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&report["backups_removed"]), [id(0)], "{report}");
    assert_eq!(ids(&report["backups_kept"]), [id(1), id(2)], "{report}");
    assert_eq!(
        report["database_window_from"]
            .as_str()
            .map(|t| t.parse::<chrono::DateTime<chrono::Utc>>().unwrap()),
        Some(b_stop_time.parse().unwrap()),
        "{report}"
    );
    let buckets = report["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 1, "{report}");
    assert_eq!(buckets[0]["bucket"], bucket.as_str());
    assert!(buckets[0]["skipped"].is_null(), "{report}");
    // Every pass is within the hour before the window: nothing of the bucket goes yet.
    assert_eq!(buckets[0]["versions_dropped"], 0, "{report}");

    // The repository: backup A is gone whole, WAL before B's start is gone, the rest stays.
    let after = repo.keys();
    let a_dir = format!("backups/{}/", id(0));
    assert!(before.iter().any(|k| k.starts_with(&a_dir)));
    assert!(!after.iter().any(|k| k.starts_with(&a_dir)), "{after:?}");
    let mut removed = 0;
    for key in &before {
        match wal_end(key, seg) {
            Some((_, end)) if end <= b_start => {
                assert!(!after.contains(key), "{key} survived");
                removed += 1;
            }
            Some(_) if !key.contains(".partial") => {
                assert!(after.contains(key), "{key} was removed")
            }
            _ if key.ends_with(".history")
                || (key.starts_with("backups/") && !key.starts_with(&a_dir)) =>
            {
                assert!(after.contains(key), "{key} was removed")
            }
            _ => {}
        }
    }
    assert!(removed > 0);
    assert_eq!(report["wal_removed"].as_u64(), Some(removed), "{report}");
    // The catalog forgot the same WAL.
    let catalog = Catalog::open(&archiver.catalog).unwrap();
    let segments = catalog.segments().unwrap();
    assert!(
        segments.iter().all(|s| s.name.end_lsn(seg) > b_start),
        "catalog still lists expired WAL"
    );
    drop(catalog);

    // A second run with the same window finds nothing more to remove.
    let again = expire(&archiver, mark, &[]);
    assert_eq!(
        again["backups_removed"].as_array().unwrap().len(),
        0,
        "{again}"
    );
    assert_eq!(again["wal_removed"], 0, "{again}");
    let status = json(&archiver, &["status", "--json"]);
    assert_eq!(
        status["database_window"]["from"]
            .as_str()
            .map(|t| t.parse::<chrono::DateTime<chrono::Utc>>().unwrap()),
        Some(b_stop_time.parse().unwrap()),
        "{status}"
    );
    assert_eq!(archiver.terminate(), 0);
    assert!(
        !archiver.log().contains("tracking pass failed"),
        "tracking failed beside expire: {}",
        archiver.log()
    );

    // Inside the window both stores restore exactly, from B and from C.
    for (t, expected) in [(&t_b, &at_b), (&t_c, &at_c)] {
        let dest = s3.create_bucket("dest", false).unwrap();
        restore_both_checked(&archiver, &cluster, &s3, &bucket, t, &dest, expected);
    }

    // Before the window: refused, with nothing written.
    let dir = tidemark_fixtures::test_dir("expired-target");
    let data = dir.path().join("data");
    let out = run(archiver.command(&[
        "restore",
        "--pgdata",
        data.to_str().unwrap(),
        "--target-time",
        &t_a,
    ]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("before the end of the oldest usable backup"),
        "{}",
        stderr(&out)
    );
    assert!(!data.exists() || std::fs::read_dir(&data).unwrap().next().is_none());
}

#[test]
fn a_malformed_retention_and_a_wrong_repository_are_refused_with_nothing_removed() {
    let repo = Repo::file();
    let not_a_repo = tidemark_fixtures::test_dir("not-a-repo");
    std::fs::write(not_a_repo.path().join("keep.txt"), b"mine").unwrap();
    let url = format!("file://{}", not_a_repo.path().display());
    let tidemark = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark"));
        cmd.env("TIDEMARK_LOG", "off").args(args);
        run(cmd)
    };
    for bad in ["2x", "0d", "-1d", "14"] {
        let retention = format!("--retention={bad}");
        let out = tidemark(&["--repo", &repo.url(), "expire", &retention]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is not a retention"),
            "{}",
            stderr(&out)
        );
    }
    let out = tidemark(&["--repo", &url, "expire", "--retention", "1s"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has no tidemark.json"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(not_a_repo.path().join("keep.txt")).unwrap(),
        b"mine"
    );
    // A catalog bound to another repository is never edited.
    let identity = tidemark_store::RepoIdentity::new(42, 17, 1 << 20);
    let url_of_repo = repo.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r =
            tidemark_store::Repository::create(&url_of_repo.parse().unwrap(), &Default::default())
                .await
                .unwrap();
        r.ensure_identity(&identity).await.unwrap();
    });
    let other = not_a_repo.path().join("other.db");
    Catalog::open(&other)
        .unwrap()
        .bind("file:///elsewhere", 42)
        .unwrap();
    let out = tidemark(&[
        "--repo",
        &url_of_repo,
        "--catalog",
        other.to_str().unwrap(),
        "expire",
        "--retention",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("file:///elsewhere"),
        "{}",
        stderr(&out)
    );
    let gone = format!("file://{}/absent", not_a_repo.path().display());
    let out = tidemark(&["--repo", &gone, "expire", "--retention", "1s"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}
