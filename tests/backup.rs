//! `tidemark backup`: a base backup over the replication protocol, in chunks of whole
//! tar entries that each decompress with `zstd` and unpack with `tar`; PostgreSQL's
//! manifest verifies the result, and recovery through `wal-fetch` brings back every row.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use tidemark_fixtures::Cluster;
use tidemark_protocol::WalSegmentSize;

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Download, decompress (zstd CLI) and unpack (tar CLI) every chunk of `archive` into `dir`.
fn unpack(repo: &Repo, archive: &serde_json::Value, dir: &Path, scratch: &Path) {
    fs::create_dir_all(dir).unwrap();
    for (i, chunk) in archive["chunks"].as_array().unwrap().iter().enumerate() {
        let zst = scratch.join(format!("c{i}.tar.zst"));
        let tar = scratch.join(format!("c{i}.tar"));
        repo.download(chunk["key"].as_str().unwrap(), &zst);
        sh(Command::new("zstd")
            .args(["-q", "-d", "-f", "-o"])
            .arg(&tar)
            .arg(&zst));
        assert_eq!(
            fs::metadata(&tar).unwrap().len(),
            chunk["raw_size"].as_u64().unwrap()
        );
        sh(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(dir));
    }
}

#[test]
fn a_backup_in_chunks_verifies_and_recovers_every_row() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let ts_dir = cluster.data_dir().parent().unwrap().join("ts");
    fs::create_dir(&ts_dir).unwrap();
    sh(Command::new("chown").arg("postgres:postgres").arg(&ts_dir));
    let repo = Repo::s3("backup");
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster
        .psql(&format!(
            "CREATE TABLESPACE ts LOCATION '{}';
             CREATE TABLE t(id int, pad text);
             INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g;
             CREATE TABLE u(id int) TABLESPACE ts;
             INSERT INTO u SELECT generate_series(1, 1000);",
            ts_dir.display()
        ))
        .unwrap();

    let out = run(archiver.command(&["backup", "--chunk-size-mb", "1", "--label", "nightly"]));
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    let listed = run(archiver.command(&["list", "backups", "--json"]));
    assert!(listed.status.success(), "{}", stderr(&listed));
    let backups: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(backups.len(), 1);
    let b = &backups[0];
    assert_eq!(b["label"], "nightly");
    let archives = b["archives"].as_array().unwrap();
    assert_eq!(archives.len(), 2, "base and one tablespace: {b:#}");
    let base = archives.iter().find(|a| a["name"] == "base.tar").unwrap();
    let tblspc = archives.iter().find(|a| a["name"] != "base.tar").unwrap();
    assert!(
        base["chunks"].as_array().unwrap().len() > 3,
        "1 MiB chunks expected: {b:#}"
    );

    // Rows after the backup come from the archived WAL.
    cluster
        .psql("INSERT INTO t SELECT g, 'after' FROM generate_series(20001, 20500) g")
        .unwrap();
    cluster
        .psql("INSERT INTO u SELECT generate_series(1001, 1100)")
        .unwrap();
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg, Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0);

    // Unpack by hand with zstd and tar: the repository is readable without tidemark.
    let restore = tidemark_fixtures::test_dir("backup-restore");
    let scratch = tidemark_fixtures::test_dir("backup-scratch");
    let data = restore.path().join("data");
    let new_ts = restore.path().join("ts");
    unpack(&repo, base, &data, scratch.path());
    unpack(&repo, tblspc, &new_ts, scratch.path());
    repo.download(
        b["manifest_key"].as_str().unwrap(),
        &data.join("backup_manifest"),
    );
    let oid = tblspc["name"].as_str().unwrap().trim_end_matches(".tar");
    fs::create_dir_all(data.join("pg_tblspc")).unwrap();
    std::os::unix::fs::symlink(&new_ts, data.join("pg_tblspc").join(oid)).unwrap();
    sh(Command::new(cluster.bin().tool("pg_verifybackup"))
        .arg("-n")
        .arg(&data));
    // Recovery recreates the tablespace link from tablespace_map: point it at the copy.
    fs::write(
        data.join("tablespace_map"),
        format!("{oid} {}\n", new_ts.display()),
    )
    .unwrap();

    sh(Command::new("chown")
        .arg("-R")
        .arg("postgres:postgres")
        .arg(&new_ts));
    configure_recovery(
        &data,
        &format!(
            "{} --repo {} wal-fetch %f %p",
            repo.env()
                .iter()
                .map(|(k, v)| format!("{k}={v} "))
                .collect::<String>()
                + env!("CARGO_BIN_EXE_tidemark"),
            repo.url()
        ),
    );
    let restored = Cluster::start_prepared(restore, one_mb()).expect("restored cluster");
    wait_for("promotion", Duration::from_secs(120), || {
        (restored.psql("SELECT pg_is_in_recovery()").ok()? == "f").then_some(())
    });
    assert_eq!(
        restored.psql("SELECT count(*), max(id) FROM t").unwrap(),
        "20500|20500"
    );
    assert_eq!(restored.psql("SELECT count(*) FROM u").unwrap(), "1100");
}

#[test]
fn a_backup_without_the_archiver_running_is_not_listed() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let repo = Repo::file();
    let archiver = Archiver::new(&cluster, &repo, &[]);
    archiver.init();
    let out = run(archiver.command(&["backup", "--wal-wait", "3"]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("tidemark stream"), "{}", stderr(&out));
    let listed = run(archiver.command(&["list", "backups", "--json"]));
    let backups: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(backups.is_empty(), "an unrestorable backup was listed");
}
