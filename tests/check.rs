//! `tidemark check`: every line ok on a working setup (real PostgreSQL, SeaweedFS), and
//! the failure a DBA would be paged for when the archiver stops, when --pg reaches another
//! cluster, and when the slot is missing; exit 0 / 1 / 2 and the Nagios line.

mod common;

use std::time::Duration;

use common::app::{tracked_archiver, wait_for_tracking};
use common::*;
use tidemark_fixtures::{Cluster, Fault, FaultRule, OutageProxy};

fn check(archiver: &Archiver, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    run_json(archiver, &[&["check", "--json"], args].concat())
}

/// The level of the finding named `name`.
fn level<'a>(doc: &'a serde_json::Value, name: &str) -> &'a str {
    doc["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} finding: {doc:#}"))["level"]
        .as_str()
        .expect("level")
}

#[test]
fn check_passes_on_a_working_setup_and_fails_once_the_archiver_has_stopped() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let repo = Repo::s3("check");
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
        .unwrap();
    backup(&archiver, &[]);
    cluster.psql("INSERT INTO t VALUES (1001)").unwrap();
    archiver.wait_stored(current_lsn(&cluster), Duration::from_secs(30));

    let (code, doc) = check(&archiver, &[]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["result"], "ok", "{doc:#}");
    for name in [
        "repository",
        "server",
        "settings",
        "slot",
        "archiving",
        "backup",
        "restorable",
    ] {
        assert_eq!(level(&doc, name), "ok", "{name}: {doc:#}");
    }
    // The probe object is gone again.
    assert!(
        !repo.keys().iter().any(|k| k.contains("probe-")),
        "{:?}",
        repo.keys()
    );
    let out = run(archiver.command(&["check", "--nagios"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("TIDEMARK OK - 7 checks ok"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    assert!(detail(&doc, "slot").contains("in use"), "{doc:#}");

    // A segment switched now reaches the repository.
    let (code, doc) = check(&archiver, &["--switch"]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(level(&doc, "switch"), "ok", "{doc:#}");
    let switched = detail(&doc, "switch");
    let name = switched.split_whitespace().nth(1).expect("segment name");
    assert!(
        repo.keys()
            .iter()
            .any(|k| k.contains(name) && !k.contains("partial")),
        "{switched}: {:?}",
        repo.keys()
    );

    // The archiver stops; the server goes on writing.
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    cluster.psql("INSERT INTO t VALUES (1002)").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (code, doc) = check(&archiver, &["--max-archive-age", "2"]);
    assert_eq!(code, Some(2), "{doc:#}");
    assert_eq!(doc["result"], "fail");
    assert_eq!(level(&doc, "archiving"), "fail", "{doc:#}");
    assert_eq!(level(&doc, "repository"), "ok", "{doc:#}");
    assert_eq!(level(&doc, "slot"), "warn", "{doc:#}");
    assert!(detail(&doc, "slot").contains("not in use"), "{doc:#}");
    let (code, doc) = check(&archiver, &["--switch", "--switch-timeout", "2"]);
    assert_eq!(code, Some(2), "{doc:#}");
    assert_eq!(level(&doc, "switch"), "fail", "{doc:#}");
    assert!(
        detail(&doc, "switch").contains("did not reach the repository"),
        "{doc:#}"
    );
    let out = run(archiver.command(&["check", "--nagios", "--max-archive-age", "2"]));
    assert_eq!(out.status.code(), Some(2));
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        line.starts_with("TIDEMARK CRITICAL - archiving: "),
        "{line}"
    );

    // A slot that does not exist (PostgreSQL 15+ can say so over replication).
    let (code, doc) = check(&archiver, &["--slot", "nosuch"]);
    assert_eq!(code, Some(2), "{doc:#}");
    assert_eq!(level(&doc, "slot"), "fail", "{doc:#}");

    // An old backup is a warning, not a failure.
    archiver.start();
    archiver.wait_stored(current_lsn(&cluster), Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let (code, doc) = check(&archiver, &["--max-backup-age", "1s"]);
    assert_eq!(code, Some(1), "{doc:#}");
    assert_eq!(level(&doc, "backup"), "warn", "{doc:#}");
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
}

fn detail(doc: &serde_json::Value, name: &str) -> String {
    doc["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {doc:#}"))["detail"]
        .as_str()
        .expect("detail")
        .to_string()
}

#[test]
fn check_reads_the_slot_of_postgresql_14_which_cannot_over_replication() {
    let opts = tidemark_fixtures::ClusterOptions {
        major: 14,
        ..one_mb()
    };
    let cluster = Cluster::start(opts).expect("PostgreSQL 14 cluster");
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster.psql("CREATE TABLE t(i int)").unwrap();
    archiver.wait_stored(current_lsn(&cluster), Duration::from_secs(30));
    let (_, doc) = check(&archiver, &[]);
    assert_eq!(level(&doc, "slot"), "ok", "{doc:#}");
    assert!(
        detail(&doc, "slot").contains("in use, restart_lsn"),
        "{doc:#}"
    );
    let (_, doc) = check(&archiver, &["--slot", "nosuch"]);
    assert_eq!(level(&doc, "slot"), "fail", "{doc:#}");
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
}

#[test]
fn check_fails_on_bucket_tracking_that_has_stopped() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let repo = Repo::s3("check-tracking");
    let (mut archiver, bucket) = tracked_archiver(&cluster, &s3, &repo);
    wait_for_tracking(&archiver, &bucket, 1);
    let (_, doc) = check(&archiver, &[]);
    assert_eq!(level(&doc, "tracking"), "ok", "{doc:#}");
    assert!(detail(&doc, "tracking").contains(&bucket), "{doc:#}");

    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    std::thread::sleep(Duration::from_secs(3));
    let (code, doc) = check(&archiver, &["--max-track-age", "2"]);
    assert_eq!(code, Some(2), "{doc:#}");
    assert_eq!(level(&doc, "tracking"), "fail", "{doc:#}");
}

#[test]
fn check_fails_when_the_repository_refuses_writes() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let proxy = OutageProxy::start_http(s3.endpoint.trim_start_matches("http://")).expect("proxy");
    let repo = Repo::s3_via("check-readonly", proxy.endpoint());
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster.psql("CREATE TABLE t(i int)").unwrap();
    archiver.wait_stored(current_lsn(&cluster), Duration::from_secs(30));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    // Reads still work; every write is refused, as by a read-only bucket policy.
    proxy.fail(FaultRule {
        method: "PUT",
        path_contains: String::new(),
        nth: 1,
        times: usize::MAX / 2,
        fault: Fault::Status(403),
    });
    let (code, doc) = check(&archiver, &[]);
    assert_eq!(code, Some(2), "{doc:#}");
    assert_eq!(level(&doc, "repository"), "fail", "{doc:#}");
    assert!(
        detail(&doc, "repository").contains("a probe write failed"),
        "{doc:#}"
    );
    assert!(proxy.faults_fired() >= 1);
}

#[test]
fn check_fails_when_pg_reaches_another_cluster_than_the_repositorys() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let other = Cluster::start(one_mb()).expect("other cluster");
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &[]);
    archiver.init();
    archiver.follow(&other);
    let out = run(archiver.command(&["check", "--json"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(level(&doc, "server"), "fail", "{doc:#}");
    let detail = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "server")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("but the repository holds cluster"),
        "{detail}"
    );
    // Nothing archived, no backup: said too.
    assert_eq!(level(&doc, "backup"), "fail", "{doc:#}");
}
