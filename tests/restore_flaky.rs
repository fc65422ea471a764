//! `tidemark restore` over a flaky network: every repository request of the restore (the
//! plan's reads, each chunk, and the restored server's wal-fetch) rides out a failed GET —
//! a 500 or a transfer cut mid-body — and the cluster holds exactly the rows committed;
//! an interrupted restore is finished by `restore --resume`, keeping the chunks it
//! completed, and a plain rerun into its half-filled directory is refused.
//!
//! Faults come from the fixtures' HTTP proxy in front of the S3 test server; the archiver
//! and the backup reach S3 directly, only the restore goes through the proxy.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use tidemark_fixtures::{Cluster, Fault, FaultRule, OutageProxy};
use tidemark_protocol::WalSegmentSize;

/// The rows every restore must bring back exactly.
const ROWS: &str = "3000|4501500";

/// A cluster archived into a fresh S3 bucket with one backup cut into 1 MiB chunks (many
/// chunks), and rows written after it; the archiver is stopped.
fn archived_with_backup(hint: &str) -> (Cluster, Repo, Archiver) {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let repo = Repo::s3(hint);
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster.psql("CREATE TABLE t(id int)").unwrap();
    cluster
        .psql("INSERT INTO t SELECT generate_series(1, 1000)")
        .unwrap();
    backup(&archiver, &["--chunk-size-mb", "1"]);
    cluster
        .psql("INSERT INTO t SELECT generate_series(1001, 3000)")
        .unwrap();
    let through = switch_wal(&cluster);
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    archiver.wait_complete_through(through, seg, Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0);
    (cluster, repo, archiver)
}

fn proxy() -> OutageProxy {
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    OutageProxy::start_http(s3.endpoint.trim_start_matches("http://")).expect("proxy")
}

/// `tidemark restore --pgdata DATA ARGS…` reaching S3 through `proxy` (and so does the
/// restored server's wal-fetch: the endpoint goes into the env file restore writes).
fn restore_command(archiver: &Archiver, proxy: &OutageProxy, data: &str, args: &[&str]) -> Command {
    let mut all = vec!["restore", "--pgdata", data];
    all.extend_from_slice(args);
    let mut cmd = archiver.command(&all);
    cmd.env("AWS_ENDPOINT_URL_S3", proxy.endpoint());
    cmd
}

fn restore(archiver: &Archiver, proxy: &OutageProxy, data: &str, args: &[&str]) -> Output {
    run(restore_command(archiver, proxy, data, args))
}

fn get(path_contains: &str, nth: usize, fault: Fault) -> FaultRule {
    FaultRule {
        method: "GET",
        path_contains: path_contains.into(),
        nth,
        times: 1,
        fault,
    }
}

/// The chunk keys the proxy saw fetched.
fn chunk_reads(proxy: &OutageProxy) -> BTreeSet<String> {
    proxy
        .requests()
        .iter()
        .filter_map(|r| {
            let path = r.strip_prefix("GET ")?.split('?').next()?;
            let at = path.find("backups/")?;
            path[at..]
                .contains("/data-")
                .then(|| path[at..].to_string())
        })
        .collect()
}

#[test]
fn a_restore_survives_a_get_failing_with_500_or_cut_mid_body_with_exactly_the_rows() {
    let (_cluster, _repo, archiver) = archived_with_backup("flaky-get");
    for fault in [Fault::Status(500), Fault::CutBody] {
        let proxy = proxy();
        // The plan's read of backup.json, the second chunk, the first WAL segment.
        proxy.fail(get("backup.json", 1, fault));
        proxy.fail(get("/data-", 2, fault));
        proxy.fail(get("/wal/", 1, fault));
        let dir = tidemark_fixtures::test_dir("flaky");
        let data = dir.path().join("data");
        let out = restore(&archiver, &proxy, data.to_str().unwrap(), &[]);
        assert!(out.status.success(), "{fault:?}: {}", stderr(&out));
        let restored = start_recovered(dir, one_mb());
        assert_eq!(
            restored.psql("SELECT count(*), sum(id) FROM t").unwrap(),
            ROWS,
            "{fault:?}"
        );
        assert_eq!(proxy.faults_fired(), 3, "{fault:?}: every fault was met");
    }
}

#[test]
fn an_interrupted_restore_resumes_with_resume_and_a_plain_rerun_is_refused() {
    let (_cluster, _repo, archiver) = archived_with_backup("flaky-resume");
    let proxy = proxy();
    // The third chunk stalls: the restore is killed while it waits, two chunks done.
    proxy.fail(get("/data-", 3, Fault::Stall(Duration::from_secs(60))));
    let dir = tidemark_fixtures::test_dir("resume");
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let journal = dir.path().join("data.tidemark-restore");
    let mut first = restore_command(&archiver, &proxy, data_arg, &["--concurrency", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn restore");
    let done: BTreeSet<String> = wait_for("two chunks unpacked", Duration::from_secs(60), || {
        let text = fs::read_to_string(&journal).ok()?;
        let done: BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("chunk "))
            .map(str::to_string)
            .collect();
        (done.len() >= 2).then_some(done)
    });
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(fs::read_dir(&data).unwrap().next().is_some(), "half-filled");

    let out = restore(&archiver, &proxy, data_arg, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("interrupted restore") && err.contains("--resume"),
        "{err}"
    );

    proxy.clear_requests();
    let out = restore(&archiver, &proxy, data_arg, &["--resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !journal.exists(),
        "the journal goes once the restore is complete"
    );
    let fetched = chunk_reads(&proxy);
    assert!(!fetched.is_empty());
    let refetched: Vec<_> = done.iter().filter(|k| fetched.contains(*k)).collect();
    assert!(
        refetched.is_empty(),
        "completed chunks were fetched again: {refetched:?}"
    );
    let restored = start_recovered(dir, one_mb());
    assert_eq!(
        restored.psql("SELECT count(*), sum(id) FROM t").unwrap(),
        ROWS
    );
}
