//! `tidemark group mark|restore|list`: a `[group.NAME]` of two clusters of different
//! majors is marked with one restore point on both, and `group restore` to the mark
//! brings back each cluster with exactly the operations committed before it; a mark's
//! name is taken once; a member that cannot be reached leaves no mark anywhere, and a
//! restore to a mark a member lacks writes nothing.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;
use tidemark_fixtures::{Cluster, ClusterOptions};
use tidemark_protocol::WalSegmentSize;

/// One logical operation: a row in each cluster.
fn operation(clusters: &[&Cluster], i: u32) {
    for c in clusters {
        c.psql(&format!("INSERT INTO ops VALUES ({i})")).unwrap();
    }
}

fn ops(cluster: &Cluster) -> String {
    cluster
        .psql("SELECT string_agg(i::text, ',' ORDER BY i) FROM ops")
        .unwrap()
}

/// `tidemark --config CONFIG group ARGS`.
fn group(config: &Path, args: &[&str]) -> std::process::Output {
    group_with(config, Vec::new(), args)
}

/// `group`, with `env` (the application bucket's S3 settings) set.
fn group_with(config: &Path, env: Vec<(String, String)>, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark"));
    cmd.envs(env)
        .arg("--config")
        .arg(config)
        .arg("group")
        .args(args);
    run(cmd)
}

fn write_config(path: &Path, members: &[(&str, String, String)]) {
    let mut text = String::new();
    for (name, pg, repo) in members {
        text.push_str(&format!(
            "[cluster.{name}]\npg = \"{pg}\"\nrepo = \"{repo}\"\n\n"
        ));
    }
    let names: Vec<String> = members.iter().map(|(n, _, _)| format!("\"{n}\"")).collect();
    text.push_str(&format!(
        "[group.platform]\nclusters = [{}]\n",
        names.join(", ")
    ));
    fs::write(path, text).unwrap();
}

#[test]
fn a_group_mark_restores_two_clusters_of_different_majors_to_the_same_operation() {
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let newer = ClusterOptions {
        major: 17,
        ..one_mb()
    };
    let a = Cluster::start(one_mb()).expect("cluster (15)");
    let b = Cluster::start(newer.clone()).expect("cluster (17)");
    let (repo_a, repo_b) = (Repo::file(), Repo::file());
    let mut archivers = Vec::new();
    for (cluster, repo) in [(&a, &repo_a), (&b, &repo_b)] {
        let mut archiver = Archiver::new(cluster, repo, &["--partial-interval", "1"]);
        archiver.init();
        archiver.start();
        cluster.psql("CREATE TABLE ops(i int)").unwrap();
        backup(&archiver, &[]);
        archivers.push(archiver);
    }
    let etc = tidemark_fixtures::test_dir("etc");
    let config = etc.path().join("tidemark.toml");
    write_config(
        &config,
        &[
            ("identity", a.conninfo(), repo_a.url()),
            ("users", b.conninfo(), repo_b.url()),
        ],
    );

    for i in 1..=5 {
        operation(&[&a, &b], i);
    }
    // An instant between operations 5 and 6, on the first member's clock.
    std::thread::sleep(Duration::from_millis(1500));
    let instant = common::app::pg_now(&a);
    std::thread::sleep(Duration::from_millis(1500));
    let out = group(
        &config,
        &["mark", "platform", "--name", "before-migration", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let marks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mark = &marks[0];
    assert_eq!(mark["name"], "before-migration", "{marks:#}");
    let members: Vec<&str> = mark["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["cluster"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["identity", "users"], "{marks:#}");
    assert!(mark["skew_bound_ms"].as_i64().unwrap() >= 0, "{marks:#}");
    for i in 6..=10 {
        operation(&[&a, &b], i);
    }

    // The name is taken.
    let again = group(&config, &["mark", "platform", "--name", "before-migration"]);
    assert_eq!(again.status.code(), Some(5), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already has a mark"),
        "{}",
        stderr(&again)
    );

    for (cluster, archiver) in [&a, &b].into_iter().zip(&mut archivers) {
        let end = switch_wal(cluster);
        archiver.wait_contiguous_through(end, seg, Duration::from_secs(60));
        assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
        share_with_postgres(&archiver.repo_dir_for_postgres());
    }
    // The restored servers' restore_command reads the config file as postgres.
    share_with_postgres(etc.path());

    // The whole group back to the mark, each member into INTO/<cluster>.
    let into = tidemark_fixtures::test_dir("group-restore");
    let target = into.path().join("platform");
    let out = group(
        &config,
        &[
            "restore",
            "platform",
            "--target-mark",
            "before-migration",
            "--into",
            target.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let skew = mark["skew_bound_ms"].as_i64().unwrap();
    assert!(
        said.contains("group platform: every member at mark before-migration (made ")
            && said.contains(&format!("clocks agreed within {skew} ms")),
        "{said}"
    );
    for (name, opts) in [("identity", one_mb()), ("users", newer.clone())] {
        assert!(
            said.contains(&format!("{name}: restored to mark before-migration")),
            "{said}"
        );
        let dir = tidemark_fixtures::test_dir("member");
        fs::rename(target.join(name), dir.path().join("data")).unwrap();
        let restored = start_recovered(dir, opts);
        assert_eq!(ops(&restored), "1,2,3,4,5", "{name}");
    }

    // And to a time: each member on its own clock.
    let target = into.path().join("at-time");
    let out = group(
        &config,
        &[
            "restore",
            "platform",
            "--target-time",
            &instant,
            "--into",
            target.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for (name, opts) in [("identity", one_mb()), ("users", newer)] {
        let dir = tidemark_fixtures::test_dir("member");
        fs::rename(target.join(name), dir.path().join("data")).unwrap();
        let restored = start_recovered(dir, opts);
        assert_eq!(ops(&restored), "1,2,3,4,5", "{name} at {instant}");
    }

    let out = group(&config, &["list", "platform", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed, marks);
    let text = group(&config, &["list", "platform"]);
    let line = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        line.starts_with("before-migration (") && line.contains("identity at "),
        "{line}"
    );
}

#[test]
fn a_member_that_cannot_be_reached_leaves_no_mark_anywhere() {
    let a = Cluster::start(one_mb()).expect("cluster");
    let (repo_a, repo_b) = (Repo::file(), Repo::file());
    let b = Cluster::start(one_mb()).expect("second cluster");
    Archiver::new(&a, &repo_a, &[]).init();
    Archiver::new(&b, &repo_b, &[]).init();
    // The second member's server is then out of reach.
    let etc = tidemark_fixtures::test_dir("etc");
    let config = etc.path().join("tidemark.toml");
    let gone = format!(
        "host=127.0.0.1 port={} user=postgres connect_timeout=2",
        tidemark_fixtures::free_port()
    );
    write_config(
        &config,
        &[
            ("identity", a.conninfo(), repo_a.url()),
            ("users", gone, repo_b.url()),
        ],
    );
    let out = group(&config, &["mark", "platform"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("group member users"),
        "{}",
        stderr(&out)
    );
    let marks: Vec<String> = repo_a
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("groups/"))
        .collect();
    assert!(marks.is_empty(), "{marks:?}");

    // Nor can the group be restored to a mark it does not have: refused, nothing written.
    let into = tidemark_fixtures::test_dir("group-restore");
    let out = group(
        &config,
        &[
            "restore",
            "platform",
            "--target-mark",
            "nosuch",
            "--into",
            into.path().to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has no mark nosuch"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read_dir(into.path()).unwrap().count(), 0);

    // A group naming a cluster the file lacks is refused with its line.
    fs::write(
        &config,
        format!(
            "[cluster.identity]\npg = \"{}\"\nrepo = \"{}\"\n\n[group.platform]\nclusters = [\"identity\", \"nosuch\"]\n",
            a.conninfo(),
            repo_a.url()
        ),
    )
    .unwrap();
    let out = group(&config, &["list", "platform"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("names cluster nosuch") && stderr(&out).contains("line 5"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_group_restore_brings_the_groups_bucket_to_the_marks_instant() {
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let a = Cluster::start(one_mb()).expect("cluster");
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let repo = Repo::file();
    let (mut archiver, bucket) = common::app::tracked_archiver(&a, &s3, &repo);
    a.psql("CREATE TABLE ops(i int)").unwrap();
    backup(&archiver, &[]);
    let etc = tidemark_fixtures::test_dir("etc");
    let config = etc.path().join("tidemark.toml");
    fs::write(
        &config,
        format!(
            "[cluster.identity]\npg = \"{}\"\nrepo = \"{}\"\ncatalog = \"{}\"\n\n[group.platform]\nclusters = [\"identity\"]\nbuckets = [\"{bucket}\"]\n",
            a.conninfo(),
            repo.url(),
            archiver.catalog.display()
        ),
    )
    .unwrap();
    // The application writes the object, then the row naming it.
    let op = |i: u32| {
        s3.put_object(&bucket, &format!("op-{i}"), format!("body {i}").as_bytes())
            .unwrap();
        a.psql(&format!("INSERT INTO ops VALUES ({i})")).unwrap();
    };
    (1..=3).for_each(op);
    // S3 stamps whole seconds: the mark stands clear of the writes on either side.
    std::thread::sleep(Duration::from_millis(2100));
    let out = group_with(&config, s3.env(), &["mark", "platform", "--name", "m1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_millis(2100));
    (4..=6).for_each(op);
    let passes = common::app::pass_count(&archiver, &bucket);
    common::app::wait_for_tracking(&archiver, &bucket, passes + 1);
    let end = switch_wal(&a);
    archiver.wait_contiguous_through(end, seg, Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    share_with_postgres(&archiver.repo_dir_for_postgres());
    share_with_postgres(etc.path());

    let dest = s3.create_bucket("dest", false).unwrap();
    let into = tidemark_fixtures::test_dir("group-restore");
    let target = into.path().join("platform");
    let out = group_with(
        &config,
        s3.env(),
        &[
            "restore",
            "platform",
            "--target-mark",
            "m1",
            "--into",
            target.to_str().unwrap(),
            "--objects-to",
            &format!("s3://{dest}/restored"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains(&format!("(bucket {bucket}): bucket restored")),
        "{said}"
    );
    let mut restored: Vec<String> = s3
        .list_keys(&dest)
        .unwrap()
        .into_iter()
        .filter_map(|k| k.rsplit('/').next().map(str::to_string))
        .collect();
    restored.sort();
    assert_eq!(restored, ["op-1", "op-2", "op-3"], "{said}");
    let dir = tidemark_fixtures::test_dir("member");
    fs::rename(target.join("identity"), dir.path().join("data")).unwrap();
    assert_eq!(ops(&start_recovered(dir, one_mb())), "1,2,3");
}
