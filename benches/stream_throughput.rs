//! Archiver throughput, side by side with PostgreSQL's own tools in the same run.
//!
//! A backlog of WAL is generated first (held by replication slots), then each contender
//! streams exactly that backlog from the same start to the same end:
//! - baseline: `pg_receivewal --endpos` into a local directory, then the `zstd` CLI
//!   (level 3, like ours) over its output;
//! - `tidemark stream` into a `file://` repository on the same disk.
//!
//! Reported: MB/s of WAL (wall clock) and CPU seconds per GB of WAL (user+system of the
//! child processes), and tidemark's figures as ratios of the baseline's.
//! Run: `cargo bench --bench stream_throughput` (env BENCH_WAL_MB, default 512).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tidemark_fixtures::{Cluster, ClusterOptions};
use tidemark_protocol::{Lsn, WalSegmentSize};
use tidemark_store::catalog::Catalog;

/// User+system CPU seconds of all waited-for children so far.
fn children_cpu() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

struct Run {
    name: &'static str,
    seconds: f64,
    cpu: f64,
}

fn lsn(cluster: &Cluster, sql: &str) -> Result<Lsn> {
    let text = cluster.psql(sql)?;
    text.trim()
        .parse()
        .with_context(|| format!("not an LSN: {text}"))
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_size(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn wait_exit(mut child: Child, what: &str) -> Result<()> {
    let status = child.wait()?;
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let wal_mb: u64 = std::env::var("BENCH_WAL_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let cluster = Cluster::start(ClusterOptions {
        settings: vec![
            ("max_wal_size".into(), "4GB".into()),
            ("checkpoint_timeout".into(), "1h".into()),
        ],
        ..ClusterOptions::default()
    })?;
    let seg = WalSegmentSize::new(cluster.wal_segsize())?;
    let work = tidemark_fixtures::test_dir("bench-stream");
    let tidemark = env!("CARGO_BIN_EXE_tidemark");

    // Slots for both contenders, created before the backlog so both start at its beginning.
    cluster.psql("SELECT pg_create_physical_replication_slot('bench_receivewal', true)")?;
    let repo = format!("file://{}/repo", work.path().display());
    let catalog = work.path().join("catalog.db");
    let common = |cmd: &mut Command| {
        cmd.args(["--repo", &repo, "--pg", &cluster.conninfo(), "--catalog"])
            .arg(&catalog);
    };
    let mut init = Command::new(tidemark);
    common(&mut init);
    if !init.arg("init").status()?.success() {
        bail!("tidemark init failed");
    }
    cluster.psql("SELECT pg_create_physical_replication_slot('tidemark', true)")?;
    let start = lsn(&cluster, "SELECT pg_current_wal_lsn()")?.segment_start(seg);

    eprintln!("generating {wal_mb} MB of WAL ...");
    cluster.psql("CREATE TABLE bench(id bigint, pad text)")?;
    let rows_per_mb = 6_000; // ~170 bytes of WAL per row
    let mut chunk = 0;
    while lsn(&cluster, "SELECT pg_current_wal_lsn()")?.bytes_since(start) < wal_mb << 20 {
        cluster.psql(&format!(
            "INSERT INTO bench SELECT g, md5(g::text) || md5((g+1)::text) FROM generate_series({}, {}) g",
            chunk * rows_per_mb * 64,
            (chunk + 1) * rows_per_mb * 64 - 1
        ))?;
        chunk += 1;
    }
    let end = lsn(&cluster, "SELECT pg_switch_wal()")?;
    let end_segment_end = Lsn(end.0 - 1).segment_start(seg) + seg.bytes();
    let bytes = end_segment_end.bytes_since(start);
    eprintln!("backlog: {start} .. {end_segment_end} ({} MB)", bytes >> 20);

    // Baseline: pg_receivewal, then zstd over its output.
    let out = work.path().join("receivewal");
    std::fs::create_dir_all(&out)?;
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    let rw = Command::new(cluster.bin().tool("pg_receivewal"))
        .args(["-D"])
        .arg(&out)
        .args(["--slot", "bench_receivewal", "--no-loop", "-E"])
        .arg(end_segment_end.to_string())
        .arg(format!("--dbname={}", cluster.conninfo()))
        .stderr(Stdio::null())
        .spawn()?;
    wait_exit(rw, "pg_receivewal")?;
    let receive = Run {
        name: "pg_receivewal",
        seconds: t0.elapsed().as_secs_f64(),
        cpu: children_cpu() - cpu0,
    };
    let files: Vec<_> = std::fs::read_dir(&out)?
        .flatten()
        .map(|e| e.path())
        .collect();
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    let z = Command::new("zstd")
        .args(["-q", "-3", "--rm"])
        .args(&files)
        .spawn()?;
    wait_exit(z, "zstd")?;
    let compress = Run {
        name: "zstd -3",
        seconds: t0.elapsed().as_secs_f64(),
        cpu: children_cpu() - cpu0,
    };
    let baseline_stored = dir_size(&out);

    // tidemark stream until the last backlog segment is in the catalog.
    // Every backlog segment, not only the last: uploads finish in any order.
    let first_segno = start.segment_number(seg);
    let last_segno = Lsn(end.0 - 1).segment_number(seg);
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    let mut stream = Command::new(tidemark);
    common(&mut stream);
    let child = stream
        .args(["stream", "--partial-interval", "3600"])
        .env("TIDEMARK_LOG", "warn")
        .spawn()?;
    loop {
        let done = Catalog::open(&catalog)
            .and_then(|c| c.segments())
            .map(|s| {
                let complete: std::collections::BTreeSet<u64> = s
                    .iter()
                    .filter(|r| !r.partial)
                    .map(|r| r.name.segno)
                    .collect();
                (first_segno..=last_segno).all(|n| complete.contains(&n))
            })
            .unwrap_or(false);
        if done {
            break;
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("tidemark did not archive the backlog within 30 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let seconds = t0.elapsed().as_secs_f64();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_exit(child, "tidemark stream")?;
    let ours = Run {
        name: "tidemark stream",
        seconds,
        cpu: children_cpu() - cpu0,
    };
    let ours_stored = dir_size(&work.path().join("repo"));

    let gb = bytes as f64 / (1u64 << 30) as f64;
    let mb = bytes as f64 / (1u64 << 20) as f64;
    let base = Run {
        name: "pg_receivewal + zstd",
        seconds: receive.seconds + compress.seconds,
        cpu: receive.cpu + compress.cpu,
    };
    println!(
        "WAL streamed: {mb:.0} MB ({} segments of {} MB)",
        bytes / seg.bytes(),
        seg.bytes() >> 20
    );
    println!(
        "{:<22} {:>9} {:>9} {:>14}",
        "", "seconds", "MB/s", "CPU s per GB"
    );
    for r in [&receive, &compress, &base, &ours] {
        println!(
            "{:<22} {:>9.2} {:>9.1} {:>14.2}",
            r.name,
            r.seconds,
            mb / r.seconds,
            r.cpu / gb
        );
    }
    println!(
        "tidemark / baseline: throughput x{:.2}, CPU per GB x{:.2}; stored bytes x{:.3} ({} vs {} MB)",
        base.seconds / ours.seconds,
        ours.cpu / base.cpu,
        ours_stored as f64 / baseline_stored as f64,
        ours_stored >> 20,
        baseline_stored >> 20
    );
    Ok(())
}
