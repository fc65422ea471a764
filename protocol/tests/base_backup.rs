//! BASE_BACKUP against real PostgreSQL, every installed major (14 speaks the old
//! syntax and framing): the archives and manifest handed out by `BaseBackup` are
//! written to files, unpacked with `tar`, and must pass `pg_verifybackup`. Fails,
//! never skips, when a major is missing.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tidemark_fixtures::{pg_majors, test_dir, Cluster, ClusterOptions};
use tidemark_protocol::{
    BackupEvent, BaseBackup, BaseBackupOptions, ConnInfo, Lsn, ReplicationClient, TimelineId,
};

/// The majors tidemark supports; all must be installed unless `TIDEMARK_PG_MAJORS`
/// narrows the run.
const SUPPORTED_MAJORS: std::ops::RangeInclusive<u32> = 14..=18;
/// Longest a whole backup of a test cluster may take.
const BACKUP_DEADLINE: Duration = Duration::from_secs(120);

fn majors() -> Vec<u32> {
    let majors = pg_majors();
    if std::env::var_os("TIDEMARK_PG_MAJORS").is_none() {
        for major in SUPPORTED_MAJORS {
            assert!(
                majors.contains(&major),
                "PostgreSQL {major} is not installed (found {majors:?}); run scripts/setup.sh"
            );
        }
    }
    assert!(!majors.is_empty(), "no PostgreSQL major to test");
    majors
}

/// A cluster with a table in the default tablespace and one in tablespace `ts`,
/// whose directory lies beside the data directory, owned by the server's user.
struct Fixture {
    cluster: Cluster,
    ts_oid: u32,
    ts_dir: PathBuf,
}

fn fixture(major: u32) -> Fixture {
    let cluster = Cluster::start(ClusterOptions {
        major,
        wal_segsize_mb: 1,
        settings: Vec::new(),
    })
    .unwrap_or_else(|e| panic!("cannot start PostgreSQL {major}: {e:#}"));
    let data = cluster.data_dir();
    let ts_dir = data.parent().unwrap().join("ts");
    std::fs::create_dir(&ts_dir).unwrap();
    let owner = std::fs::metadata(data).unwrap();
    std::os::unix::fs::chown(&ts_dir, Some(owner.uid()), Some(owner.gid())).unwrap();
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    cluster
        .psql(&format!(
            "CREATE TABLESPACE ts LOCATION '{}';
             CREATE TABLE in_ts (id int, v text) TABLESPACE ts;
             INSERT INTO in_ts SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g;
             CREATE TABLE in_base AS SELECT g AS id, md5(g::text) AS v
               FROM generate_series(1, 20000) g;",
            ts_dir.display()
        ))
        .unwrap();
    let ts_oid = cluster
        .psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'")
        .unwrap()
        .parse()
        .unwrap();
    Fixture {
        cluster,
        ts_oid,
        ts_dir,
    }
}

fn fast(label: &str) -> BaseBackupOptions {
    BaseBackupOptions {
        label: label.to_string(),
        fast_checkpoint: true,
        max_rate_kb: None,
    }
}

async fn connect(conninfo: &str) -> ReplicationClient {
    let info: ConnInfo = conninfo.parse().unwrap();
    ReplicationClient::connect(&info)
        .await
        .unwrap_or_else(|e| panic!("connect {conninfo}: {e}"))
}

/// What a backup produced, besides the files.
struct Taken {
    start_lsn: Lsn,
    start_timeline: TimelineId,
    /// (archive name, tablespace location) in stream order.
    archives: Vec<(String, Option<String>)>,
    /// Size estimate of all tablespaces, bytes.
    estimated_bytes: u64,
    /// Archive bytes received, all archives.
    archive_bytes: u64,
    /// Every progress report, in order.
    progress: Vec<u64>,
    largest_chunk: usize,
    end_lsn: Lsn,
    end_timeline: TimelineId,
    client: ReplicationClient,
}

/// Run a backup to the end, writing each archive to `out/<name>` and the manifest to
/// `out/backup_manifest`, checking the event order as it goes.
async fn take_backup(client: ReplicationClient, opts: &BaseBackupOptions, out: &Path) -> Taken {
    let backup = client.base_backup(opts).await.unwrap();
    finish_backup(backup, out).await
}

/// `drain` within the deadline.
async fn finish_backup(backup: BaseBackup, out: &Path) -> Taken {
    tokio::time::timeout(BACKUP_DEADLINE, drain(backup, out))
        .await
        .expect("the backup did not finish in time")
}

async fn drain(mut backup: BaseBackup, out: &Path) -> Taken {
    use std::io::Write;
    let estimated_bytes = backup
        .tablespaces()
        .iter()
        .map(|t| t.size_kb.expect("PROGRESS gives every tablespace a size") * 1024)
        .sum();
    let mut file: Option<std::fs::File> = None;
    let mut in_manifest = false;
    let mut archives = Vec::new();
    let mut archive_bytes = 0;
    let mut progress = Vec::new();
    let mut largest_chunk = 0;
    loop {
        match backup.next().await.unwrap() {
            BackupEvent::Archive { name, tablespace } => {
                assert!(!in_manifest, "archive {name} after the manifest");
                file = Some(std::fs::File::create(out.join(&name)).unwrap());
                archives.push((name, tablespace));
            }
            BackupEvent::Data(bytes) => {
                assert!(!in_manifest, "archive data after the manifest");
                file.as_mut()
                    .expect("data before any archive")
                    .write_all(&bytes)
                    .unwrap();
                archive_bytes += bytes.len() as u64;
                largest_chunk = largest_chunk.max(bytes.len());
            }
            BackupEvent::Manifest => {
                assert!(!in_manifest, "two manifests");
                in_manifest = true;
                file = Some(std::fs::File::create(out.join("backup_manifest")).unwrap());
            }
            BackupEvent::ManifestData(bytes) => {
                assert!(in_manifest, "manifest data before the manifest");
                file.as_mut().unwrap().write_all(&bytes).unwrap();
            }
            BackupEvent::Progress { done_bytes } => progress.push(done_bytes),
            BackupEvent::Notice { severity, message } => {
                panic!("a plain cluster's backup sent a notice: {severity}: {message}")
            }
            BackupEvent::End {
                end_lsn,
                end_timeline,
            } => {
                assert!(in_manifest, "the backup ended without a manifest");
                let start_lsn = backup.start_lsn();
                let start_timeline = backup.start_timeline();
                assert!(backup.next().await.is_err(), "next() after End must fail");
                return Taken {
                    start_lsn,
                    start_timeline,
                    archives,
                    estimated_bytes,
                    archive_bytes,
                    progress,
                    largest_chunk,
                    end_lsn,
                    end_timeline,
                    client: backup.into_client().unwrap(),
                };
            }
        }
    }
}

/// Run a program, panicking with its output when it fails; returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Unpack the backup in `out` to a plain directory (tablespace archives to their own
/// directories, linked from `pg_tblspc`), check it with `pg_verifybackup -n`, and
/// return the plain directory.
fn unpack_and_verify(fx: &Fixture, taken: &Taken, out: &Path) -> PathBuf {
    let plain = out.join("plain");
    std::fs::create_dir(&plain).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(out.join("base.tar"))
        .arg("-C")
        .arg(&plain));
    for (name, _) in taken.archives.iter().filter(|(n, _)| n != "base.tar") {
        let oid = name.strip_suffix(".tar").unwrap();
        let dir = out.join(format!("ts-{oid}"));
        std::fs::create_dir(&dir).unwrap();
        run(Command::new("tar")
            .arg("-xf")
            .arg(out.join(name))
            .arg("-C")
            .arg(&dir));
        let link = plain.join("pg_tblspc").join(oid);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).unwrap();
        }
        std::os::unix::fs::symlink(&dir, &link).unwrap();
    }
    std::fs::copy(out.join("backup_manifest"), plain.join("backup_manifest")).unwrap();
    run(Command::new(fx.cluster.bin().tool("pg_verifybackup"))
        .arg("-n")
        .arg(&plain));
    plain
}

/// Everything a good backup of the fixture shows.
fn check_backup(fx: &Fixture, taken: &Taken, label: &str, out: &Path) {
    let major = fx.cluster.bin().major;
    assert!(
        taken.start_lsn < taken.end_lsn,
        "pg{major}: start {} end {}",
        taken.start_lsn,
        taken.end_lsn
    );
    assert_eq!(taken.start_timeline, TimelineId(1));
    assert_eq!(taken.end_timeline, TimelineId(1));

    let ts_name = format!("{}.tar", fx.ts_oid);
    let mut archives = taken.archives.clone();
    archives.sort();
    let mut expected = vec![
        (ts_name, Some(fx.ts_dir.display().to_string())),
        ("base.tar".to_string(), None),
    ];
    expected.sort();
    assert_eq!(archives, expected, "pg{major}");

    // Streamed in pieces, not buffered whole.
    assert!(
        taken.largest_chunk <= 1 << 20,
        "pg{major}: a {} byte chunk",
        taken.largest_chunk
    );
    // Progress only grows, ends at exactly the bytes sent, and that is near the
    // server's estimate.
    assert!(
        taken.progress.windows(2).all(|w| w[0] <= w[1]),
        "pg{major}: {:?}",
        taken.progress
    );
    assert_eq!(
        taken.progress.last().copied(),
        Some(taken.archive_bytes),
        "pg{major}"
    );
    let ratio = taken.archive_bytes as f64 / taken.estimated_bytes as f64;
    assert!(
        (0.9..1.1).contains(&ratio),
        "pg{major}: sent {} bytes, estimated {}",
        taken.archive_bytes,
        taken.estimated_bytes
    );
    // Every archive is a complete tar file.
    for (name, _) in &taken.archives {
        let bytes = std::fs::read(out.join(name)).unwrap();
        assert!(
            bytes.len().is_multiple_of(512)
                && bytes.len() >= 1024
                && bytes[bytes.len() - 1024..].iter().all(|&b| b == 0),
            "pg{major}: {name} lacks its end-of-archive blocks"
        );
    }

    let plain = unpack_and_verify(fx, taken, out);
    let backup_label = std::fs::read_to_string(plain.join("backup_label")).unwrap();
    assert!(
        backup_label.contains(&format!("LABEL: {label}\n")),
        "pg{major}: {backup_label}"
    );
    let label_start: Lsn = backup_label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|lsn| lsn.parse().ok())
        .unwrap_or_else(|| panic!("pg{major}: no start in {backup_label}"));
    assert_eq!(label_start, taken.start_lsn, "pg{major}");
    let map = std::fs::read_to_string(plain.join("tablespace_map")).unwrap();
    assert_eq!(
        map.trim_end(),
        format!("{} {}", fx.ts_oid, fx.ts_dir.display()),
        "pg{major}"
    );
}

#[tokio::test]
async fn base_backup_of_every_major_passes_pg_verifybackup() {
    for major in majors() {
        let fx = fixture(major);
        let out = test_dir(&format!("basebackup-pg{major}"));
        let client = connect(&fx.cluster.conninfo()).await;
        let label = format!("tidemark test's pg{major}");
        let mut taken = take_backup(client, &fast(&label), out.path()).await;
        check_backup(&fx, &taken, &label, out.path());

        // The connection is back in command mode.
        let id = taken.client.identify_system().await.unwrap();
        assert!(id.xlogpos >= taken.end_lsn, "pg{major}");
        taken.client.close().await.unwrap();
    }
}

#[tokio::test]
async fn base_backup_runs_while_another_is_in_progress() {
    for major in majors() {
        let fx = fixture(major);
        let (out_a, out_b) = (
            test_dir(&format!("basebackup-a-pg{major}")),
            test_dir(&format!("basebackup-b-pg{major}")),
        );
        // A starts and stays in progress: its server cannot finish while we do not
        // read its 27 MB. B (a plain REPLICATION role over SCRAM, spread checkpoint,
        // throttled) runs from start to end meanwhile.
        let a = connect(&fx.cluster.conninfo()).await;
        let backup_a = a.base_backup(&fast("first")).await.unwrap();
        fx.cluster.psql("CHECKPOINT").unwrap();
        let b = connect(&fx.cluster.conninfo_as("pwuser", Some("pwsecret"))).await;
        let spread_throttled = BaseBackupOptions {
            label: "second".to_string(),
            fast_checkpoint: false,
            max_rate_kb: Some(256 * 1024),
        };
        let taken_b = take_backup(b, &spread_throttled, out_b.path()).await;
        let taken_a = finish_backup(backup_a, out_a.path()).await;
        assert!(
            taken_a.start_lsn < taken_b.start_lsn && taken_b.end_lsn < taken_a.end_lsn,
            "pg{major}: B {}..{} should lie within A {}..{}",
            taken_b.start_lsn,
            taken_b.end_lsn,
            taken_a.start_lsn,
            taken_a.end_lsn
        );
        check_backup(&fx, &taken_a, "first", out_a.path());
        check_backup(&fx, &taken_b, "second", out_b.path());
    }
}

#[tokio::test]
async fn terminated_backup_fails_as_a_connection_failure() {
    for major in majors() {
        let fx = fixture(major);
        let client = connect(&fx.cluster.conninfo()).await;
        let mut backup = client.base_backup(&fast("doomed")).await.unwrap();
        assert!(matches!(
            backup.next().await.unwrap(),
            BackupEvent::Archive { .. }
        ));
        let terminated = fx
            .cluster
            .psql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE backend_type = 'walsender'",
            )
            .unwrap();
        assert_eq!(terminated, "t", "pg{major}");
        let err = tokio::time::timeout(BACKUP_DEADLINE, async {
            loop {
                match backup.next().await {
                    Ok(BackupEvent::End { .. }) => panic!("pg{major}: a terminated backup ended"),
                    Ok(_) => {}
                    Err(err) => return err,
                }
            }
        })
        .await
        .expect("the terminated backup did not fail in time");
        // FATAL 57P01 if the server could still send it, else a closed connection.
        assert!(err.is_connection_failure(), "pg{major}: {err}");
        assert!(backup.next().await.is_err(), "pg{major}");
        assert!(backup.into_client().is_err(), "pg{major}");
    }
}

#[tokio::test]
async fn role_without_replication_cannot_back_up() {
    for major in majors() {
        let fx = fixture(major);
        // PostgreSQL refuses the walsender itself, so BASE_BACKUP is never reached.
        let info: ConnInfo = fx.cluster.conninfo_as("norepl", None).parse().unwrap();
        let err = match ReplicationClient::connect(&info).await {
            Ok(_) => panic!("pg{major}: a role without REPLICATION got a walsender"),
            Err(err) => err,
        };
        assert!(err.is_replication_denied(), "pg{major}: {err}");
        assert!(
            err.to_string().to_lowercase().contains("replication"),
            "pg{major}: {err}"
        );
    }
}
