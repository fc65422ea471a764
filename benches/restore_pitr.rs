//! Point-in-time restore, side by side with PostgreSQL's own tools in the same run.
//!
//! One pgbench database (scale `BENCH_SCALE`, default 50) with a base backup taken both
//! ways, then at least `BENCH_WAL_MB` (default 1024) of WAL, then a restore of each to the
//! same target LSN:
//! - baseline: a `pg_basebackup` copy (`cp -a`) and `restore_command = 'cp <dir>/%f %p'`
//!   from a local directory holding the segments;
//! - `tidemark restore --start` from a `file://` repository (chunks fetched, verified and
//!   unpacked in parallel; WAL through `wal-fetch` with prefetch).
//!
//! Reported: total time, copy/unpack time, WAL replay time and rate (MB/s), and tidemark's
//! figures as ratios of the baseline's. Run: `cargo bench --bench restore_pitr`.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tidemark_fixtures::{Cluster, ClusterOptions};
use tidemark_protocol::{Lsn, SegmentName, TimelineId, WalSegmentSize};
use tidemark_store::catalog::Catalog;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn lsn(cluster: &Cluster, sql: &str) -> Result<Lsn> {
    let text = cluster.psql(sql)?;
    text.trim()
        .parse()
        .with_context(|| format!("not an LSN: {text}"))
}

fn sh(cmd: &mut Command) -> Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Start `postgres` on `data` as the postgres user and wait for the end of recovery.
fn recover(bindir: &Path, data: &Path, port: u16) -> Result<(Duration, u32)> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(data, fs::Permissions::from_mode(0o700))?;
    sh(Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(data))?;
    let log = data.with_extension("log");
    let started = Instant::now();
    let child = Command::new("setpriv")
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(bindir.join("postgres"))
        .arg("-D")
        .arg(data)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "lc_messages=C",
            "-c",
            "unix_socket_directories=/tmp",
            "-p",
        ])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log)?)
        .spawn()?;
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("database system is ready to accept connections") {
            return Ok((started.elapsed(), child.id()));
        }
        if text.contains("FATAL") || started.elapsed() > Duration::from_secs(3600) {
            bail!("baseline recovery failed: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(pid: u32) {
    // SAFETY: signalling a server this benchmark started.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    for _ in 0..600 {
        // SAFETY: probing whether it still exists.
        if unsafe { libc::kill(pid as i32, 0) } != 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() -> Result<()> {
    let scale = env_u64("BENCH_SCALE", 50);
    let wal_mb = env_u64("BENCH_WAL_MB", 1024);
    let cluster = Cluster::start(ClusterOptions {
        settings: vec![
            ("max_wal_size".into(), "8GB".into()),
            ("checkpoint_timeout".into(), "1h".into()),
        ],
        ..ClusterOptions::default()
    })?;
    let seg = WalSegmentSize::new(cluster.wal_segsize())?;
    let bindir = cluster.bin().bindir.clone();
    let work = tidemark_fixtures::test_dir("bench-restore");
    let tidemark = env!("CARGO_BIN_EXE_tidemark");
    let repo = format!("file://{}/repo", work.path().display());
    let catalog = work.path().join("catalog.db");
    let base = |cmd: &mut Command| {
        cmd.args(["--repo", &repo, "--pg", &cluster.conninfo(), "--catalog"])
            .arg(&catalog);
    };
    let tm = |args: &[&str]| {
        let mut cmd = Command::new(tidemark);
        base(&mut cmd);
        cmd.args(args).env("TIDEMARK_LOG", "warn");
        cmd
    };
    sh(&mut tm(&["init"]))?;
    cluster.psql("SELECT pg_create_physical_replication_slot('bench_hold', true)")?;
    let mut stream = tm(&["stream"]).spawn()?;

    eprintln!("pgbench -i -s {scale} ...");
    cluster.pgbench_init(scale as u32)?;
    eprintln!("base backups (tidemark, then pg_basebackup) ...");
    sh(&mut tm(&["backup", "--wal-wait", "600"]))?;
    let baseline_base = work.path().join("baseline-base");
    sh(Command::new(cluster.bin().tool("pg_basebackup"))
        .arg("-D")
        .arg(&baseline_base)
        .args(["-X", "none", "-c", "fast", "-d", &cluster.conninfo()]))?;
    let backup_end = lsn(&cluster, "SELECT pg_current_wal_lsn()")?;

    eprintln!("generating {wal_mb} MB of WAL ...");
    while lsn(&cluster, "SELECT pg_current_wal_lsn()")?.bytes_since(backup_end) < wal_mb << 20 {
        cluster.pgbench(&["-n", "-c", "4", "-j", "2", "-t", "2000"])?;
    }
    let target = lsn(&cluster, "SELECT pg_current_wal_lsn()")?;
    let through = lsn(&cluster, "SELECT pg_switch_wal()")?;
    let last = Lsn(through.0 - 1).segment_number(seg);
    let t0 = Instant::now();
    loop {
        let done = Catalog::open(&catalog)?
            .segments()?
            .iter()
            .any(|s| !s.partial && s.name.segno == last);
        if done {
            break;
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("the archiver did not catch up");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: stopping the archiver this benchmark started.
    unsafe { libc::kill(stream.id() as i32, libc::SIGTERM) };
    stream.wait()?;

    // The baseline's local WAL directory: the same segments, uncompressed.
    let baseline_wal = work.path().join("baseline-wal");
    fs::create_dir_all(&baseline_wal)?;
    let first = backup_end.segment_number(seg).saturating_sub(2);
    for segno in first..=last {
        let name = SegmentName::new(TimelineId(1), segno).file_name(seg);
        let src = cluster.data_dir().join("pg_wal").join(&name);
        if src.exists() {
            fs::copy(&src, baseline_wal.join(&name))?;
        }
    }
    sh(Command::new("chmod").args(["-R", "a+rX"]).arg(work.path()))?;
    let replay_mb = target.bytes_since(backup_end) as f64 / (1 << 20) as f64;

    // Baseline: copy the pg_basebackup, recover with cp.
    let a = work.path().join("restore-baseline");
    let t = Instant::now();
    sh(Command::new("cp").arg("-a").arg(&baseline_base).arg(&a))?;
    let copy = t.elapsed();
    fs::write(a.join("recovery.signal"), b"")?;
    let mut conf = fs::read_to_string(a.join("postgresql.auto.conf")).unwrap_or_default();
    conf.push_str(&format!(
        "restore_command = 'cp {}/%f %p'\nrecovery_target_lsn = '{target}'\nrecovery_target_action = 'promote'\narchive_mode = 'off'\n",
        baseline_wal.display()
    ));
    fs::write(a.join("postgresql.auto.conf"), conf)?;
    let port_a = tidemark_fixtures::free_port();
    let (replay_a, pid_a) = recover(&bindir, &a, port_a)?;
    stop(pid_a);
    let total_a = copy + replay_a;

    // tidemark restore --start.
    let b = work.path().join("restore-tidemark");
    let port_b = tidemark_fixtures::free_port().to_string();
    let t = Instant::now();
    let out = tm(&[
        "restore",
        "--pgdata",
        b.to_str().unwrap_or_default(),
        "--target-lsn",
        &target.to_string(),
        "--start",
        "--port",
        &port_b,
        "--pg-bin",
        bindir.to_str().unwrap_or_default(),
    ])
    .output()?;
    let total_b = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "tidemark restore: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let figure = |label: &str| -> Option<f64> {
        stdout
            .split(label)
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let fetch_b = figure("(of which fetch and unpack").unwrap_or(f64::NAN);
    let replay_b = figure("s), recovery").unwrap_or(f64::NAN);
    if let Some(pid) = stdout
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
    {
        stop(pid);
    }

    println!("database: pgbench scale {scale}; WAL replayed: {replay_mb:.0} MB to {target}");
    println!(
        "{:<32} {:>10} {:>14} {:>12} {:>14}",
        "", "total s", "copy/fetch s", "replay s", "replay MB/s"
    );
    println!(
        "{:<32} {:>10.1} {:>14.1} {:>12.1} {:>14.1}",
        "pg_basebackup copy + cp",
        total_a.as_secs_f64(),
        copy.as_secs_f64(),
        replay_a.as_secs_f64(),
        replay_mb / replay_a.as_secs_f64()
    );
    println!(
        "{:<32} {:>10.1} {:>14.1} {:>12.1} {:>14.1}",
        "tidemark restore --start",
        total_b.as_secs_f64(),
        fetch_b,
        replay_b,
        replay_mb / replay_b
    );
    println!(
        "tidemark / baseline: total time x{:.2}, WAL replay rate x{:.2}",
        total_b.as_secs_f64() / total_a.as_secs_f64(),
        (replay_mb / replay_b) / (replay_mb / replay_a.as_secs_f64())
    );
    Ok(())
}
