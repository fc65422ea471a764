//! Bad input gets one clear line, a documented non-zero exit code, and nothing written:
//! unreachable PostgreSQL, a wrong password, a role without REPLICATION, an unreachable
//! S3, a missing bucket, a malformed --repo.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tidemark_fixtures::{Cluster, ClusterOptions};

/// Run `args` and check exit code, a single `error:` line containing `needle`.
fn refused(mut cmd: std::process::Command, code: i32, needle: &str) -> String {
    let started = Instant::now();
    let out = run({
        cmd.env("TIDEMARK_LOG", "off");
        cmd
    });
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}, got {:?}: {err}",
        out.status
    );
    let lines: Vec<&str> = err.trim().lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "{err:?} should mention {needle:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    err
}

#[test]
fn postgres_problems_are_reported_and_nothing_is_written() {
    let cluster = Cluster::start(ClusterOptions::default()).expect("cluster");
    let repo = Repo::file();
    let archiver = Archiver::new(&cluster, &repo, &[]);
    archiver.init();
    let before = repo.keys();
    let stream_with = |conninfo: &str| {
        let mut cmd = tidemark(&repo);
        cmd.args(["--repo", &repo.url(), "--catalog"])
            .arg(archiver.work.path().join("c.db"))
            .args(["--pg", conninfo, "stream"]);
        cmd
    };

    let port = tidemark_fixtures::free_port();
    refused(
        stream_with(&format!(
            "host=127.0.0.1 port={port} user=postgres connect_timeout=5"
        )),
        3,
        &format!("127.0.0.1:{port}"),
    );
    refused(
        stream_with(&cluster.conninfo_as("pwuser", Some("wrong-password"))),
        3,
        "password authentication failed",
    );
    refused(
        stream_with(&cluster.conninfo_as("norepl", None)),
        3,
        "replication",
    );
    refused(stream_with("host=127.0.0.1 port=notaport"), 2, "port");
    assert_eq!(
        repo.keys(),
        before,
        "a refused stream wrote to the repository"
    );
    assert_eq!(
        cluster
            .psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "0",
        "a refused stream created a slot"
    );
}

#[test]
fn repository_problems_are_reported_and_nothing_is_written() {
    let cluster = Cluster::start(ClusterOptions::default()).expect("cluster");
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let work = tidemark_fixtures::test_dir("bad-repo");
    let catalog = work.path().join("c.db");
    let with_repo = |url: &str, env: Vec<(String, String)>, sub: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark"));
        cmd.envs(env)
            .args(["--repo", url, "--pg", &cluster.conninfo(), "--catalog"])
            .arg(&catalog)
            .arg(sub);
        cmd
    };

    for bad in [
        "s3:/bucket",
        "ftp://host/x",
        "file://relative/path",
        "/plain/path",
        "s3://",
    ] {
        refused(with_repo(bad, s3.env(), "init"), 2, bad);
    }

    // Unreachable S3: a closed port on loopback.
    let port = tidemark_fixtures::free_port();
    let mut env = s3.env();
    env.retain(|(k, _)| k != "AWS_ENDPOINT_URL_S3");
    env.push((
        "AWS_ENDPOINT_URL_S3".into(),
        format!("http://127.0.0.1:{port}"),
    ));
    refused(
        with_repo("s3://some-bucket/p", env.clone(), "init"),
        4,
        "cannot reach",
    );
    refused(
        with_repo("s3://some-bucket/p", env, "stream"),
        4,
        "connection refused",
    );

    // A bucket that does not exist: refused, and not created behind the user's back.
    let missing = format!("tidemark-missing-{}", std::process::id());
    refused(
        with_repo(&format!("s3://{missing}/p"), s3.env(), "init"),
        4,
        &format!("bucket {missing} does not exist"),
    );
    refused(
        with_repo(&format!("s3://{missing}/p"), s3.env(), "stream"),
        4,
        &format!("bucket {missing} does not exist"),
    );
    assert!(
        !s3.bucket_exists(&missing).unwrap(),
        "the missing bucket was created"
    );

    // An uninitialised repository: `stream` refuses and writes nothing.
    let bucket = s3.create_bucket("uninit", false).unwrap();
    refused(
        with_repo(&format!("s3://{bucket}/p"), s3.env(), "stream"),
        5,
        "tidemark init",
    );
    assert!(s3.list_keys(&bucket).unwrap().is_empty());
    assert!(!catalog.exists(), "a refused command created a catalog");
    assert_eq!(
        cluster
            .psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "0"
    );
}
