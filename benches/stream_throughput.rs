//! Archiver cost, side by side in one run with pg_receivewal, pgBackRest and the zstd CLI.
//!
//! One PostgreSQL 15 cluster (pgBackRest 2.45 supports it) and, on the same WAL:
//! - **steady load**: pgbench at a fixed rate for `BENCH_STEADY_SECONDS` while every
//!   contender archives at once — `pg_receivewal` (no compression), pgBackRest
//!   `archive-push` sync and async with zstd level 3 (posix repositories; both from one
//!   `archive_command`), `tidemark stream` into `file://` and into S3. Reported: CPU
//!   seconds per GB of WAL generated.
//! - **backlog drain**: `BENCH_WAL_MB` of WAL held back (slots, a failing
//!   `archive_command`), then drained by each contender alone in turn; plus the floor,
//!   `zstd -3` over the same segments. Reported: MB/s, CPU seconds per GB, stored bytes,
//!   and tidemark's peak RSS.
//!
//! CPU is the whole process tree's, from a `cpuacct` cgroup per contender (pgBackRest's
//! async daemon detaches from `archive_command`, so rusage of children cannot see it):
//! the bench needs root and a cgroup v1 `cpuacct` hierarchy, as on these machines.
//! S3 is the SeaweedFS server of `scripts/test.sh` (`TIDEMARK_TEST_S3_ENDPOINT`).
//! Run: `cargo bench --bench stream_throughput`.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tidemark_fixtures::{Cluster, ClusterOptions};
use tidemark_protocol::{Lsn, SegmentName, TimelineId, WalSegmentSize};
use tidemark_store::catalog::Catalog;

const CPUACCT: &str = "/sys/fs/cgroup/cpuacct";
const GB: f64 = (1u64 << 30) as f64;
const MB: f64 = (1u64 << 20) as f64;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `cpuacct` cgroup that one contender's processes, and everything they start, run in.
struct CpuGroup {
    dir: PathBuf,
}

impl CpuGroup {
    fn new(name: &str) -> Result<CpuGroup> {
        let dir = Path::new(CPUACCT).join(format!("tidemark-bench-{}-{name}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| {
            format!(
                "cannot create the cgroup {} (the bench needs root and cgroup v1 cpuacct)",
                dir.display()
            )
        })?;
        // archive_command runs as postgres and moves itself in.
        chown_postgres(&dir.join("cgroup.procs"))?;
        Ok(CpuGroup { dir })
    }

    fn seconds(&self) -> Result<f64> {
        let text = std::fs::read_to_string(self.dir.join("cpuacct.usage"))?;
        Ok(text.trim().parse::<f64>()? / 1e9)
    }

    /// `program` started inside this group (through the wrapper script).
    fn command(&self, wrap: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(wrap);
        cmd.arg(&self.dir).arg(program);
        cmd
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn chown_postgres(path: &Path) -> Result<()> {
    let status = Command::new("chown")
        .arg("-R")
        .arg("postgres:postgres")
        .arg(path)
        .status()?;
    if !status.success() {
        bail!("chown postgres {} failed", path.display());
    }
    Ok(())
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

fn wait_until(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let t0 = Instant::now();
    while !done()? {
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("{what} did not happen within 30 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Stops `child` with `signal` (SIGINT for pg_receivewal, SIGTERM for tidemark).
fn stop(mut child: Child, signal: i32, what: &str) -> Result<()> {
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = child.wait()?;
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(())
}

/// Peak resident memory of a running process (`VmHWM`), in MiB.
fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Segment names `first..=last` on timeline 1.
fn segment_names(first: u64, last: u64, seg: WalSegmentSize) -> Vec<String> {
    (first..=last)
        .map(|n| SegmentName::new(TimelineId(1), n).file_name(seg))
        .collect()
}

/// One `tidemark stream` contender: its slot, repository and catalog.
struct Tidemark {
    name: &'static str,
    slot: &'static str,
    repo: String,
    catalog: PathBuf,
    env: Vec<(String, String)>,
    stored: Box<dyn Fn() -> Result<u64>>,
}

impl Tidemark {
    fn command(&self, cluster: &Cluster, group: &CpuGroup, wrap: &Path) -> Command {
        let mut cmd = group.command(wrap, env!("CARGO_BIN_EXE_tidemark"));
        cmd.args([
            "--repo",
            &self.repo,
            "--pg",
            &cluster.conninfo(),
            "--catalog",
        ])
        .arg(&self.catalog)
        .env("TIDEMARK_LOG", "warn")
        .envs(self.env.iter().cloned());
        cmd
    }

    fn init(&self, cluster: &Cluster, group: &CpuGroup, wrap: &Path) -> Result<()> {
        if !self
            .command(cluster, group, wrap)
            .arg("init")
            .status()?
            .success()
        {
            bail!("tidemark init ({}) failed", self.name);
        }
        Ok(())
    }

    fn stream(&self, cluster: &Cluster, group: &CpuGroup, wrap: &Path) -> Result<Child> {
        Ok(self
            .command(cluster, group, wrap)
            .args(["stream", "--slot", self.slot])
            .args(
                std::env::var("BENCH_STREAM_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .spawn()?)
    }

    /// Every segment of `first..=last` is complete in the catalog.
    fn has(&self, first: u64, last: u64) -> bool {
        Catalog::open(&self.catalog)
            .and_then(|c| c.segments())
            .map(|s| {
                let complete: BTreeSet<u64> = s
                    .iter()
                    .filter(|r| !r.partial)
                    .map(|r| r.name.segno)
                    .collect();
                (first..=last).all(|n| complete.contains(&n))
            })
            .unwrap_or(false)
    }
}

/// pgBackRest with one stanza per mode, each with its own configuration and repository.
struct PgBackRest {
    name: &'static str,
    config: PathBuf,
    repo: PathBuf,
}

impl PgBackRest {
    fn new(work: &Path, cluster: &Cluster, name: &'static str, asynchronous: bool) -> Result<Self> {
        let base = work.join(name.replace(' ', "-"));
        let repo = base.join("repo");
        for dir in ["repo", "lock", "log", "spool"] {
            std::fs::create_dir_all(base.join(dir))?;
        }
        let config = base.join("pgbackrest.conf");
        let mut text = format!(
            "[global]\nrepo1-path={}\nlock-path={}\nlog-path={}\nspool-path={}\n\
             log-level-console=warn\nlog-level-file=off\ncompress-type=zst\ncompress-level=3\n",
            repo.display(),
            base.join("lock").display(),
            base.join("log").display(),
            base.join("spool").display()
        );
        if asynchronous {
            text.push_str("archive-async=y\nprocess-max=2\n");
        }
        text.push_str(&format!(
            "\n[bench]\npg1-path={}\npg1-port={}\npg1-socket-path={}\n",
            cluster.data_dir().display(),
            cluster.port(),
            cluster.socket_dir().display()
        ));
        std::fs::write(&config, text)?;
        chown_postgres(&base)?;
        let out = Command::new("setpriv")
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "pgbackrest",
            ])
            .arg(format!("--config={}", config.display()))
            .args(["--stanza=bench", "stanza-create"])
            .output()
            .context("pgbackrest is missing: run scripts/setup.sh")?;
        if !out.status.success() {
            bail!(
                "pgbackrest stanza-create ({name}) failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(PgBackRest { name, config, repo })
    }

    fn archive_command(&self, group: &CpuGroup, wrap: &Path) -> String {
        format!(
            "{} {} pgbackrest --config={} --stanza=bench archive-push %p",
            wrap.display(),
            group.dir.display(),
            self.config.display()
        )
    }
}

fn set_archive_command(cluster: &Cluster, command: &str) -> Result<()> {
    cluster.psql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'; SELECT pg_reload_conf()",
        command.replace('\'', "''")
    ))?;
    Ok(())
}

/// Which of `names` still wait in `pg_wal/archive_status` (`.ready`).
fn ready(cluster: &Cluster, names: &[String]) -> usize {
    let status = cluster.data_dir().join("pg_wal/archive_status");
    names
        .iter()
        .filter(|n| status.join(format!("{n}.ready")).exists())
        .count()
}

struct Row {
    name: String,
    seconds: f64,
    cpu: f64,
    stored: Option<u64>,
    rss_mb: Option<f64>,
}

fn main() -> Result<()> {
    let wal_mb = env_or("BENCH_WAL_MB", 512);
    let steady_secs = env_or("BENCH_STEADY_SECONDS", 60);
    let steady_tps = env_or("BENCH_STEADY_TPS", 1000);
    let s3 = tidemark_fixtures::s3()?;
    let cluster = Cluster::start(ClusterOptions {
        major: 15,
        settings: vec![
            ("max_wal_size".into(), "8GB".into()),
            ("checkpoint_timeout".into(), "1h".into()),
            ("archive_mode".into(), "on".into()),
        ],
        ..ClusterOptions::default()
    })?;
    let seg = WalSegmentSize::new(cluster.wal_segsize())?;
    let work = tidemark_fixtures::test_dir("bench-stream");
    let wrap = work.path().join("in-cgroup.sh");
    std::fs::write(
        &wrap,
        "#!/bin/sh\necho $$ > \"$1/cgroup.procs\" || exit 1\nshift\nexec \"$@\"\n",
    )?;
    std::fs::set_permissions(&wrap, std::fs::Permissions::from_mode(0o755))?;
    eprintln!("preparing pgBackRest stanzas and tidemark repositories ...");
    // In postgresql.auto.conf, not on the command line, so that ALTER SYSTEM changes it.
    set_archive_command(&cluster, "/bin/true")?;
    cluster.psql(
        "CREATE TABLE steady(id bigserial, at timestamptz DEFAULT now(), pad text); \
         CREATE TABLE bench(id bigint, pad text)",
    )?;
    // One application transaction: 20 rows of about 300 bytes.
    let script = work.path().join("steady.sql");
    std::fs::write(
        &script,
        "INSERT INTO steady(pad) SELECT repeat(md5(random()::text), 9) FROM generate_series(1, 20);\n",
    )?;

    let sync = PgBackRest::new(work.path(), &cluster, "pgBackRest sync", false)?;
    let asyn = PgBackRest::new(work.path(), &cluster, "pgBackRest async", true)?;
    let bucket = s3.create_bucket("bench-stream", false)?;
    let file_repo = work.path().join("tidemark-repo");
    let file_stored = file_repo.clone();
    let s3_for_size = tidemark_fixtures::s3()?;
    let bucket_for_size = bucket.clone();
    let tidemarks = [
        Tidemark {
            name: "tidemark file://",
            slot: "tidemark_file",
            repo: format!("file://{}", file_repo.display()),
            catalog: work.path().join("file.db"),
            env: Vec::new(),
            stored: Box::new(move || Ok(dir_size(&file_stored))),
        },
        Tidemark {
            name: "tidemark s3://",
            slot: "tidemark_s3",
            repo: format!("s3://{bucket}/wal"),
            catalog: work.path().join("s3.db"),
            env: s3.env(),
            stored: Box::new(move || s3_for_size.total_size(&bucket_for_size)),
        },
    ];
    let setup = CpuGroup::new("setup")?;
    for t in &tidemarks {
        t.init(&cluster, &setup, &wrap)?;
        cluster.psql(&format!(
            "SELECT pg_create_physical_replication_slot('{}', true)",
            t.slot
        ))?;
    }
    cluster.psql("SELECT pg_create_physical_replication_slot('bench_receivewal', true)")?;
    let receivewal = |dir: &Path, group: &CpuGroup, endpos: Option<Lsn>| -> Result<Child> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = group.command(&wrap, cluster.bin().tool("pg_receivewal"));
        cmd.arg("-D")
            .arg(dir)
            .args([
                "--slot",
                "bench_receivewal",
                "--no-loop",
                "--status-interval",
                "1",
            ])
            .arg(format!("--dbname={}", cluster.conninfo()))
            .stderr(Stdio::null());
        if let Some(end) = endpos {
            cmd.arg("-E").arg(end.to_string());
        }
        Ok(cmd.spawn()?)
    };

    // ---- Steady load: everyone archives the same pgbench WAL at once. ----
    lsn(&cluster, "SELECT pg_switch_wal()")?;
    let groups: Vec<CpuGroup> = ["receivewal", "pgbr-sync", "pgbr-async", "tm-file", "tm-s3"]
        .iter()
        .map(|n| CpuGroup::new(&format!("steady-{n}")))
        .collect::<Result<_>>()?;
    let steady_dir = work.path().join("receivewal-steady");
    let rw = receivewal(&steady_dir, &groups[0], None)?;
    let streams: Vec<Child> = tidemarks
        .iter()
        .zip(&groups[3..])
        .map(|(t, g)| t.stream(&cluster, g, &wrap))
        .collect::<Result<_>>()?;
    set_archive_command(
        &cluster,
        &format!(
            "{} && {}",
            sync.archive_command(&groups[1], &wrap),
            asyn.archive_command(&groups[2], &wrap)
        ),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let cpu_before: Vec<f64> = groups.iter().map(|g| g.seconds()).collect::<Result<_>>()?;
    let l0 = lsn(&cluster, "SELECT pg_current_wal_lsn()")?;
    eprintln!("steady load: pgbench {steady_tps} tps for {steady_secs} s with every contender archiving ...");
    cluster.pgbench(&[
        "-c",
        "2",
        "-j",
        "2",
        "-T",
        &steady_secs.to_string(),
        "-R",
        &steady_tps.to_string(),
        "-n",
        "-f",
        &script.display().to_string(),
    ])?;
    let l1 = lsn(&cluster, "SELECT pg_current_wal_lsn()")?;
    lsn(&cluster, "SELECT pg_switch_wal()")?;
    let steady_bytes = l1.bytes_since(l0);
    let (first, last) = (l0.segment_number(seg), Lsn(l1.0 - 1).segment_number(seg));
    let names = segment_names(first, last, seg);
    let last_name = names.last().cloned().unwrap_or_default();
    wait_until("the steady WAL reaching every contender", || {
        Ok(steady_dir.join(&last_name).exists()
            && ready(&cluster, &names) == 0
            && tidemarks.iter().all(|t| t.has(first, last)))
    })?;
    let steady_cpu: Vec<f64> = groups
        .iter()
        .zip(&cpu_before)
        .map(|(g, before)| Ok(g.seconds()? - before))
        .collect::<Result<_>>()?;
    set_archive_command(&cluster, "exit 1")?;
    // Its slot past the steady WAL too, so that the backlog starts after it for everyone.
    let steady_end = Lsn((last + 1) * seg.bytes());
    wait_until("pg_receivewal reporting the steady WAL flushed", || {
        Ok(lsn(
            &cluster,
            "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'bench_receivewal'",
        )? >= steady_end)
    })?;
    stop(rw, libc::SIGINT, "pg_receivewal")?;
    // The floor for this WAL: the zstd CLI over the same segments.
    let floor = CpuGroup::new("steady-zstd")?;
    let status = floor
        .command(&wrap, "zstd")
        .args(["-q", "-3", "--rm"])
        .args(names.iter().map(|n| steady_dir.join(n)))
        .status()?;
    if !status.success() {
        bail!("zstd failed: {status}");
    }
    let steady_floor =
        floor.seconds()? * (steady_bytes as f64 / (names.len() as u64 * seg.bytes()) as f64);
    for (t, child) in tidemarks.iter().zip(streams) {
        stop(child, libc::SIGTERM, t.name)?;
    }

    // ---- Backlog: held by the slots and the failing archive_command. ----
    eprintln!("generating a backlog of {wal_mb} MB of WAL ...");
    // From where the slots stand, so that every contender drains exactly the same WAL.
    let start = lsn(
        &cluster,
        "SELECT min(restart_lsn) FROM pg_replication_slots",
    )?
    .segment_start(seg);
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
    // WAL past the backlog's end, so that pg_receivewal sees --endpos reached at once.
    cluster.psql("CREATE TABLE after_backlog()")?;
    let (first, last) = (
        start.segment_number(seg),
        Lsn(end.0 - 1).segment_number(seg),
    );
    let names = segment_names(first, last, seg);
    let backlog = (last - first + 1) * seg.bytes();
    eprintln!("backlog: {} segments, {} MB", names.len(), backlog >> 20);
    let mut drain = Vec::new();

    // pg_receivewal, then the zstd floor over its segments.
    let out = work.path().join("receivewal-drain");
    let group = CpuGroup::new("drain-receivewal")?;
    let t0 = Instant::now();
    let child = receivewal(&out, &group, Some(Lsn(last * seg.bytes() + seg.bytes())))?;
    let status = child.wait_with_output()?.status;
    if !status.success() {
        bail!("pg_receivewal failed: {status}");
    }
    drain.push(Row {
        name: "pg_receivewal (none)".into(),
        seconds: t0.elapsed().as_secs_f64(),
        cpu: group.seconds()?,
        stored: Some(dir_size(&out)),
        rss_mb: None,
    });
    let files: Vec<PathBuf> = names.iter().map(|n| out.join(n)).collect();
    let compressed = || -> u64 {
        names
            .iter()
            .filter_map(|n| std::fs::metadata(out.join(format!("{n}.zst"))).ok())
            .map(|m| m.len())
            .sum()
    };
    let group = CpuGroup::new("drain-zstd")?;
    let t0 = Instant::now();
    let status = group
        .command(&wrap, "zstd")
        .args(["-q", "-3", "--rm"])
        .args(&files)
        .status()?;
    if !status.success() {
        bail!("zstd failed: {status}");
    }
    drain.push(Row {
        name: "zstd -3 (floor)".into(),
        seconds: t0.elapsed().as_secs_f64(),
        cpu: group.seconds()?,
        stored: Some(compressed()),
        rss_mb: None,
    });

    // pgBackRest, sync then async, each archiving the whole backlog from pg_wal.
    for pgbr in [&sync, &asyn] {
        let group = CpuGroup::new(&format!("drain-{}", pgbr.name.replace(' ', "-")))?;
        let before = dir_size(&pgbr.repo);
        // Every backlog segment waits to be archived (again, for the second contender).
        let status = cluster.data_dir().join("pg_wal/archive_status");
        for n in &names {
            let done = status.join(format!("{n}.done"));
            if done.exists() {
                std::fs::rename(&done, status.join(format!("{n}.ready")))?;
            }
        }
        let t0 = Instant::now();
        set_archive_command(&cluster, &pgbr.archive_command(&group, &wrap))?;
        wait_until(&format!("{} archiving the backlog", pgbr.name), || {
            Ok(ready(&cluster, &names) == 0)
        })?;
        drain.push(Row {
            name: format!("{} zst", pgbr.name),
            seconds: t0.elapsed().as_secs_f64(),
            cpu: group.seconds()?,
            stored: Some(dir_size(&pgbr.repo) - before),
            rss_mb: None,
        });
        set_archive_command(&cluster, "exit 1")?;
    }

    for t in &tidemarks {
        let group = CpuGroup::new(&format!("drain-{}", t.slot))?;
        let before = (t.stored)()?;
        let t0 = Instant::now();
        let child = t.stream(&cluster, &group, &wrap)?;
        wait_until(&format!("{} archiving the backlog", t.name), || {
            Ok(t.has(first, last))
        })?;
        let seconds = t0.elapsed().as_secs_f64();
        let rss_mb = peak_rss_mb(child.id());
        let cpu = group.seconds()?;
        stop(child, libc::SIGTERM, t.name)?;
        drain.push(Row {
            name: t.name.into(),
            seconds,
            cpu,
            stored: Some((t.stored)()? - before),
            rss_mb,
        });
    }

    let mut steady_cpu = steady_cpu;
    steady_cpu.push(steady_floor);
    report(
        steady_bytes,
        steady_secs,
        steady_tps,
        &steady_cpu,
        backlog,
        &drain,
    );
    Ok(())
}

fn report(steady_bytes: u64, secs: u64, tps: u64, cpu: &[f64], backlog: u64, drain: &[Row]) {
    let steady_gb = steady_bytes as f64 / GB;
    let names = [
        "pg_receivewal (none)",
        "pgBackRest sync zst",
        "pgBackRest async zst",
        "tidemark file://",
        "tidemark s3://",
        "zstd -3 (floor)",
    ];
    println!(
        "\nsteady load: pgbench {tps} tps for {secs} s, {:.0} MB of WAL ({:.1} MB/s), every contender at once",
        steady_bytes as f64 / MB,
        steady_bytes as f64 / MB / secs as f64
    );
    println!(
        "{:<24} {:>12} {:>14}",
        "", "CPU s per GB", "x pgBackRest sync"
    );
    for (name, c) in names.iter().zip(cpu) {
        println!("{name:<24} {:>12.2} {:>14.2}", c / steady_gb, c / cpu[1]);
    }

    let gb = backlog as f64 / GB;
    println!(
        "\nbacklog drain: {:.0} MB of WAL, each contender alone",
        backlog as f64 / MB
    );
    println!(
        "{:<24} {:>8} {:>8} {:>12} {:>10} {:>9}",
        "", "seconds", "MB/s", "CPU s per GB", "stored MB", "peak RSS"
    );
    for r in drain {
        println!(
            "{:<24} {:>8.2} {:>8.1} {:>12.2} {:>10} {:>9}",
            r.name,
            r.seconds,
            backlog as f64 / MB / r.seconds,
            r.cpu / gb,
            r.stored
                .map_or("-".into(), |b| format!("{:.1}", b as f64 / MB)),
            r.rss_mb.map_or("-".into(), |m| format!("{m:.0} MB")),
        );
    }
    let find = |prefix: &str| drain.iter().find(|r| r.name.starts_with(prefix));
    let (Some(floor), Some(pgbr_async)) = (find("zstd"), find("pgBackRest async")) else {
        return;
    };
    println!();
    for (i, t) in ["tidemark file://", "tidemark s3://"].iter().enumerate() {
        let Some(ours) = find(t) else { continue };
        println!(
            "{t}: steady CPU/GB x{:.2} pgBackRest sync; drain MB/s x{:.2} pgBackRest async, CPU/GB x{:.2} the zstd floor, stored x{:.3} zstd's",
            cpu[3 + i] / cpu[1],
            pgbr_async.seconds / ours.seconds,
            ours.cpu / floor.cpu,
            ours.stored.unwrap_or(0) as f64 / floor.stored.unwrap_or(1) as f64,
        );
    }
}
