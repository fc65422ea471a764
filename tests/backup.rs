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
    let ts_dir = tablespace_dir(&cluster);
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

/// The objects stored under `backups/<ID>/`, repository-relative.
fn objects_of(repo: &Repo, id: &str) -> std::collections::BTreeSet<String> {
    let dir = format!("backups/{id}/");
    repo.keys()
        .into_iter()
        .filter(|k| k.starts_with(&dir))
        .collect()
}

/// Two `tidemark backup` runs started in the same second used to take the same id and
/// write into one `backups/<ID>/` prefix. Each must now end with its own id, both
/// complete and restorable, each prefix holding exactly its own backup's objects.
#[test]
fn two_backups_started_at_once_get_distinct_ids_and_never_mix_their_chunks() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let repo = Repo::s3("backup-twice");
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE t AS SELECT g AS id, repeat('x', 500) AS pad FROM generate_series(1, 10000) g")
        .unwrap();

    // Start both just after a second begins, so that they start within the same second.
    let into_second = chrono::Utc::now().timestamp_subsec_millis().min(999);
    std::thread::sleep(Duration::from_millis(u64::from(1005 - into_second)));
    let children: Vec<_> = (0..2)
        .map(|_| {
            let mut cmd =
                archiver.command(&["backup", "--chunk-size-mb", "1", "--checkpoint", "fast"]);
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().expect("spawn tidemark backup")
        })
        .collect();
    let mut ids = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("wait for tidemark backup");
        assert!(
            out.status.success(),
            "a concurrent backup failed: {}",
            stderr(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let id = stdout
            .strip_prefix("backup ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no backup id in {stdout:?}"))
            .to_string();
        ids.push(id);
    }
    ids.sort();
    assert_ne!(ids[0], ids[1], "two backups reported the same id");
    if ids[1].starts_with(&ids[0]) {
        assert_eq!(
            ids[1],
            format!("{}-01", ids[0]),
            "the second id of a second"
        );
    } else {
        eprintln!("note: the two backups started in different seconds: {ids:?}");
    }

    let listed = run(archiver.command(&["list", "backups", "--json"]));
    assert!(listed.status.success(), "{}", stderr(&listed));
    let backups: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    let listed_ids: Vec<&str> = backups.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(
        listed_ids, ids,
        "both backups are complete and listed, in id order"
    );
    for b in &backups {
        let id = b["id"].as_str().unwrap();
        let mut expected: std::collections::BTreeSet<String> = b["archives"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|a| a["chunks"].as_array().unwrap())
            .map(|c| c["key"].as_str().unwrap().to_string())
            .collect();
        assert!(expected.len() > 3, "1 MiB chunks expected: {b:#}");
        expected.insert(b["manifest_key"].as_str().unwrap().to_string());
        expected.insert(format!("backups/{id}/backup.json"));
        expected.insert(format!("backups/{id}/claim.json"));
        assert_eq!(
            objects_of(&repo, id),
            expected,
            "backup {id}: mixed or missing objects"
        );

        let plan = run(archiver.command(&["plan", "--target-immediate", "--backup", id, "--json"]));
        assert!(
            plan.status.success(),
            "backup {id} cannot be restored: {}",
            stderr(&plan)
        );
        let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
        assert_eq!(plan["backup"], id);
    }
    assert_eq!(archiver.terminate(), 0);
}

/// A backup that fails (here: no archiver stores the WAL it needs) used to leave its
/// chunks in the repository for good; the failing run removes them itself.
#[test]
fn a_failed_backup_leaves_none_of_its_chunks_in_the_repository() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let repo = Repo::s3("backup-failed");
    let archiver = Archiver::new(&cluster, &repo, &[]);
    archiver.init();
    let out = run(archiver.command(&["backup", "--chunk-size-mb", "1", "--wal-wait", "3"]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let left: Vec<String> = repo
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("backups/"))
        .collect();
    assert!(left.is_empty(), "the failed backup left {left:?}");
}

/// A backup whose server connection is cut midway, with chunk uploads in flight, must
/// not leave chunks behind: the failing run waits for its uploads, then removes them.
#[test]
fn a_backup_cut_off_midway_leaves_none_of_its_chunks_in_the_repository() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let repo = Repo::s3("backup-cut");
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) || repeat('x', 400) AS pad FROM generate_series(1, 80000) g")
        .unwrap();
    let child = archiver
        .command(&[
            "backup",
            "--chunk-size-mb",
            "1",
            "--upload-concurrency",
            "4",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tidemark backup");
    wait_for("a first stored chunk", Duration::from_secs(60), || {
        repo.keys()
            .iter()
            .any(|k| k.starts_with("backups/") && k.ends_with(".tar.zst"))
            .then_some(())
    });
    let cut = cluster
        .psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication WHERE state = 'backup'")
        .unwrap();
    assert_eq!(cut, "1", "the backup ended before it could be cut off");
    let out = child.wait_with_output().expect("wait for tidemark backup");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let left: Vec<String> = repo
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("backups/"))
        .collect();
    assert!(left.is_empty(), "the cut-off backup left {left:?}");
    assert_eq!(archiver.terminate(), 0);
}

#[test]
fn a_symlink_in_pgdata_the_server_skips_is_warned_about_at_backup_time_not_in_the_disaster() {
    for major in tidemark_fixtures::pg_majors() {
        let cluster = Cluster::start(tidemark_fixtures::ClusterOptions { major, ..one_mb() })
            .expect("cluster");
        let seg = WalSegmentSize::new(1 << 20).unwrap();
        // An admin's certificate kept outside PGDATA through a link, and a relative link.
        let certs = tidemark_fixtures::test_dir("certs");
        let cert = certs.path().join("server.crt");
        fs::write(&cert, "certificate").unwrap();
        let data = cluster.data_dir();
        std::os::unix::fs::symlink(&cert, data.join("server.crt")).unwrap();
        std::os::unix::fs::symlink("PG_VERSION", data.join("version.link")).unwrap();
        let repo = Repo::file();
        let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
        archiver.init();
        archiver.start();

        let out = run(archiver.command(&["backup"]));
        let (stdout, err) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(out.status.success(), "PG {major}: {err}");
        for name in ["server.crt", "version.link"] {
            assert!(
                err.contains(&format!("the server left \"{name}\" out of the backup"))
                    && err.contains("HINT: replace the link by a regular file"),
                "PG {major}: no warning for {name}: {err}"
            );
        }
        assert!(
            stdout.contains("left out by the server (a restore lacks them): "),
            "PG {major}: {stdout}"
        );
        let listed = run(archiver.command(&["list", "backups", "--json"]));
        let backups: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
        let mut skipped: Vec<&str> = backups[0]["skipped_files"]
            .as_array()
            .unwrap_or_else(|| panic!("PG {major}: no skipped_files: {:#}", backups[0]))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        skipped.sort_unstable();
        assert_eq!(skipped, ["server.crt", "version.link"], "PG {major}");
        let through = switch_wal(&cluster);
        archiver.wait_complete_through(through, seg, Duration::from_secs(60));
        assert_eq!(archiver.terminate(), 0);

        let planned = run(archiver.command(&["plan", "--json"]));
        let plan: serde_json::Value = serde_json::from_slice(&planned.stdout)
            .unwrap_or_else(|_| panic!("PG {major}: {}", stderr(&planned)));
        assert_eq!(
            plan["skipped_files"].as_array().unwrap().len(),
            2,
            "{plan:#}"
        );
        let dir = tidemark_fixtures::test_dir("skipped");
        let restored = dir.path().join("data");
        let out = run(archiver.command(&["restore", "--pgdata", restored.to_str().unwrap()]));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "PG {major}: {}", stderr(&out));
        assert!(
            stdout.contains("warning: the backup lacks \"server.crt\""),
            "PG {major}: {stdout}"
        );
        // Exactly what the warnings said: the links are missing, the rest is there.
        assert!(restored.join("PG_VERSION").is_file(), "PG {major}");
        for name in ["server.crt", "version.link"] {
            assert!(
                fs::symlink_metadata(restored.join(name)).is_err(),
                "PG {major}: {name} restored"
            );
        }
    }
}
