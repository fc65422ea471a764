//! `tidemark restore --start` run as root, the way an admin runs it in a disaster: the
//! restored server must really start as `postgres` with only what tidemark wrote, with
//! the binaries of the backup's own major, every restored directory its own and nothing
//! outside the data directory touched, even when the backup in the repository is hostile.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::app::psql_port;
use common::*;
use tidemark_fixtures::{Cluster, ClusterOptions};
use tidemark_protocol::WalSegmentSize;
use tidemark_store::backup::{BackupId, BackupInfo, ChunkInfo};
use tidemark_store::repository::Repository;
use tidemark_store::storage::S3Options;
use tidemark_store::{layout, meta};

/// The uid the restored server runs as.
fn postgres_uid() -> u32 {
    tidemark_restorer::start::server_owner()
        .expect("run as root, with a postgres user")
        .0
}

/// A cluster of `major` with 1 MiB segments, streamed into a `file://` repository shared
/// with the postgres user; `setup` runs before the backup, `after` between the backup and
/// the end of the archive. Returns the cluster, the repository, the stopped archiver and
/// the backup id.
fn backed_up(major: u32, setup: &str, after: &str) -> (Cluster, Repo, Archiver, String) {
    let cluster = Cluster::start(ClusterOptions { major, ..one_mb() }).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster.psql(setup).unwrap();
    let id = backup(&archiver, &[]);
    cluster.psql(after).unwrap();
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg, Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0);
    share_with_postgres(&archiver.repo_dir_for_postgres());
    (cluster, repo, archiver, id)
}

/// The pid `restore --start` reported; the server is stopped by the returned guard.
struct Running(i32);

impl Running {
    fn from(stdout: &str) -> Running {
        Running(
            stdout
                .split("(pid ")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no pid in {stdout}")),
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: signalling the server this test started.
        unsafe { libc::kill(self.0, libc::SIGINT) };
        let pid = self.0;
        wait_for(
            "the restored server to stop",
            Duration::from_secs(30),
            || {
                // SAFETY: probing whether the pid still exists.
                (unsafe { libc::kill(pid, 0) } != 0).then_some(())
            },
        );
    }
}

#[test]
fn restore_start_as_root_with_a_tablespace_recovers_instead_of_failing_with_eacces() {
    for major in tidemark_fixtures::pg_majors() {
        let ts = tidemark_fixtures::test_dir("ts");
        Command::new("chown")
            .arg("postgres:postgres")
            .arg(ts.path())
            .status()
            .unwrap();
        let (cluster, _repo, archiver, _) = backed_up(
            major,
            &format!(
                "CREATE TABLESPACE ts LOCATION '{}';
                 CREATE TABLE u(id int) TABLESPACE ts;
                 INSERT INTO u SELECT generate_series(1, 1000);",
                ts.path().display()
            ),
            "INSERT INTO u SELECT generate_series(1001, 1100)",
        );
        let dir = tidemark_fixtures::test_dir("as-root");
        let data = dir.path().join("data");
        let port = tidemark_fixtures::free_port().to_string();
        let out = restore_start(&archiver, &data, &port, &[]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "PG {major}: {stdout}{}", stderr(&out));
        let _running = Running::from(&stdout);
        assert!(!stdout.contains("warning"), "PG {major}: {stdout}");
        assert_eq!(
            psql_port(&cluster, &port, "SELECT count(*), max(id) FROM u"),
            "1100|1100",
            "PG {major}: {stdout}"
        );
        let restored_ts: PathBuf = stdout
            .lines()
            .find_map(|l| l.split_once(" restored into ").map(|(_, d)| d.into()))
            .unwrap_or_else(|| panic!("no tablespace in {stdout}"));
        for path in [
            restored_ts.clone(),
            fs::read_dir(&restored_ts)
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path(),
        ] {
            assert_eq!(
                fs::symlink_metadata(&path).unwrap().uid(),
                postgres_uid(),
                "PG {major}: {} is not the server's",
                path.display()
            );
        }
    }
}

#[test]
fn restore_start_runs_the_backups_own_major_not_the_first_postgres_on_path() {
    for major in tidemark_fixtures::pg_majors() {
        // Any other installed major, selected for this run or not.
        let (other, other_bin) = (14..=18)
            .filter(|m| *m != major)
            .find_map(|m| Some((m, tidemark_fixtures::pg_bin(m).ok()?.bindir)))
            .expect("a second major installed");
        let (cluster, _repo, archiver, _) = backed_up(
            major,
            "CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 10)",
            "INSERT INTO t SELECT generate_series(11, 20)",
        );
        let dir = tidemark_fixtures::test_dir("major");
        let data = dir.path().join("data");
        let port = tidemark_fixtures::free_port().to_string();

        // A --pg-bin of another major is refused before anything is written.
        let out = restore_start(
            &archiver,
            &data,
            &port,
            &["--pg-bin", other_bin.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(6), "PG {major}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("the backup is from PostgreSQL {major}"))
                && err.contains(&format!("{} (PostgreSQL {other})", other_bin.display())),
            "PG {major}: {err}"
        );
        assert!(
            !data.exists(),
            "PG {major}: the refusal wrote {}",
            data.display()
        );

        // Another major first on PATH: the backup's own is found and runs.
        let path = format!(
            "{}:{}",
            other_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = archiver.command(&[
            "restore",
            "--pgdata",
            data.to_str().unwrap(),
            "--start",
            "--port",
            &port,
        ]);
        cmd.env("PATH", path);
        let out = run(cmd);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "PG {major}: {stdout}{}", stderr(&out));
        let _running = Running::from(&stdout);
        let version = psql_port(&cluster, &port, "SHOW server_version_num");
        assert_eq!(
            version.parse::<u32>().unwrap() / 10000,
            major,
            "PG {major}: {stdout}"
        );
        assert_eq!(
            psql_port(&cluster, &port, "SELECT count(*) FROM t"),
            "20",
            "PG {major}"
        );
    }
}

#[test]
fn a_failed_recovery_reports_the_servers_fatal_line_not_its_shutdown_lines() {
    let major = tidemark_fixtures::pg_majors()[0];
    let (_cluster, _repo, archiver, _) = backed_up(
        major,
        "CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 10)",
        "INSERT INTO t SELECT generate_series(11, 20)",
    );
    // The server's user can read the repository (restore's own check of restore_command
    // passes) but no longer its WAL segments.
    let segments = archiver.repo_dir_for_postgres().join("wal/00000001");
    for entry in fs::read_dir(&segments).unwrap() {
        let path = entry.unwrap().path();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let dir = tidemark_fixtures::test_dir("fatal");
    let data = dir.path().join("data");
    let port = tidemark_fixtures::free_port().to_string();
    let out = restore_start(&archiver, &data, &port, &["--start-timeout", "120"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("PostgreSQL stopped during recovery: could not restore file"),
        "{err}"
    );
    assert!(!err.contains("database system is shut down"), "{err}");
}

/// Creates a hostile backup's files in the directory it is given.
type Build = Box<dyn Fn(&Path)>;

/// A tar file holding what `build` creates in an empty directory (GNU tar keeps links as
/// links).
fn tar_of(build: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tidemark_fixtures::test_dir("hostile-tar");
    let content = dir.path().join("content");
    fs::create_dir(&content).unwrap();
    build(&content);
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(dir.path().join("chunk.tar"))
        .arg("-C")
        .arg(&content)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    dir
}

/// A backup like `real` (same WAL range, same chunks) with one more base chunk, the tar
/// file `extra`, stored through the store's API the way `tidemark backup` stores one.
fn craft_backup(repo: &Repo, real: &str, n: u32, extra: &Path) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let repository = Repository::open(&repo.url().parse().unwrap(), &S3Options::default())
            .await
            .unwrap();
        let backups = repository.backups().await.unwrap();
        let real = backups
            .into_iter()
            .find(|b| b.id.as_str() == real)
            .expect("the real backup");
        let id = BackupId::from_time(real.start_time + chrono::Duration::seconds(i64::from(n)));
        let base = real
            .archives
            .iter()
            .position(|a| a.name == "base.tar")
            .unwrap();
        let index = real.archives[base].chunks.len() as u32;
        let key = layout::backup_chunk_key(&id, "base.tar", index);
        let stored = repository
            .store_compressed(key, extra, 1, meta::KIND_BACKUP_CHUNK)
            .await
            .unwrap();
        let mut info = BackupInfo {
            id: id.clone(),
            label: "crafted".into(),
            ..real
        };
        info.archives[base].chunks.push(ChunkInfo {
            key: stored.key,
            raw_size: stored.sealed.raw_size,
            stored_size: stored.sealed.stored_size,
            crc32: stored.sealed.crc32,
            contents: None,
        });
        repository.put_backup_info(&info).await.unwrap();
        id.to_string()
    })
}

#[test]
fn a_hostile_backup_in_the_repository_touches_nothing_outside_the_data_directory() {
    let major = tidemark_fixtures::pg_majors()[0];
    let (cluster, repo, archiver, real) = backed_up(
        major,
        "CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 10)",
        "INSERT INTO t SELECT generate_series(11, 20)",
    );
    // What a hostile backup would like to reach: a root-owned directory and file.
    let outside = tidemark_fixtures::test_dir("outside");
    let victim = outside.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("file"), "untouched").unwrap();
    let before = fs::read_dir(outside.path()).unwrap().count();

    let refused: [(&str, Build, &str); 3] = [
        (
            "a chain of relative links that escapes only through the real links",
            Box::new(|c: &Path| {
                fs::create_dir(c.join("x")).unwrap();
                std::os::unix::fs::symlink("..", c.join("x/l")).unwrap();
                std::os::unix::fs::symlink("l/..", c.join("x/m")).unwrap();
            }),
            "resolves outside the restored directory",
        ),
        (
            "a symlink loop",
            Box::new(|c: &Path| {
                std::os::unix::fs::symlink("b", c.join("a")).unwrap();
                std::os::unix::fs::symlink("a", c.join("b")).unwrap();
            }),
            "(a loop)",
        ),
        (
            "a link at postgresql.auto.conf, which tidemark rewrites",
            {
                let victim = victim.join("file");
                Box::new(move |c: &Path| {
                    std::os::unix::fs::symlink(&victim, c.join("postgresql.auto.conf")).unwrap();
                })
            },
            "a file tidemark writes itself",
        ),
    ];
    for (n, (what, build, message)) in refused.into_iter().enumerate() {
        let tar = tar_of(build);
        let id = craft_backup(&repo, &real, n as u32 + 1, &tar.path().join("chunk.tar"));
        let dir = tidemark_fixtures::test_dir("hostile");
        let data = dir.path().join("data");
        let port = tidemark_fixtures::free_port().to_string();
        let out = restore_start(&archiver, &data, &port, &["--backup", &id]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{what}: {err}");
        assert!(err.contains(message), "{what}: {err}");
        assert!(!data.join("recovery.signal").exists(), "{what}");
    }

    // An absolute link is restored as a link, with a warning; starting the server as
    // root hands it to postgres without following it to what it points at.
    let tar = tar_of(|c| std::os::unix::fs::symlink(&victim, c.join("notes")).unwrap());
    let id = craft_backup(&repo, &real, 9, &tar.path().join("chunk.tar"));
    let dir = tidemark_fixtures::test_dir("absolute");
    let data = dir.path().join("data");
    let port = tidemark_fixtures::free_port().to_string();
    let out = restore_start(&archiver, &data, &port, &["--backup", &id]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    let _running = Running::from(&stdout);
    assert!(
        stdout.contains(&format!(
            "warning: {} restored as a link to {}",
            data.join("notes").display(),
            victim.display()
        )),
        "{stdout}"
    );
    assert_eq!(fs::read_link(data.join("notes")).unwrap(), victim);
    assert_eq!(psql_port(&cluster, &port, "SELECT count(*) FROM t"), "20");
    for path in [victim.clone(), victim.join("file")] {
        assert_eq!(
            fs::metadata(&path).unwrap().uid(),
            0,
            "{} was chowned",
            path.display()
        );
    }
    assert_eq!(
        fs::read_to_string(victim.join("file")).unwrap(),
        "untouched"
    );
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), before);
}
