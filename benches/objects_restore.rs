//! Object restore throughput, side by side with a plain boto3 listing-and-copy in the same
//! run.
//!
//! A versioned source bucket on the loopback SeaweedFS server (`TIDEMARK_TEST_S3_ENDPOINT`,
//! default `http://127.0.0.1:8333`) gets `BENCH_OBJECTS` (default 10000) objects of ~1 KiB
//! with distinct contents (`uploads/00042.bin`, uploaded by boto3 with 32 threads), and is
//! tracked by `tidemark objects track --once` against a fresh PostgreSQL cluster; the target
//! instant is PostgreSQL's `now()` after that pass, and a second pass then covers it. Each
//! contender copies the bucket as it stood into a fresh, empty bucket, `BENCH_RUNS` times
//! (default 2), alternating:
//! - baseline: python3 + boto3, `list_objects_v2` paginator then `copy_object` of every key
//!   on a `ThreadPoolExecutor` of 32 workers, timed around the list and copy only;
//! - `tidemark objects restore --target-time ... --objects-to s3://...` (default
//!   `--objects-concurrency 32`), wall time of the whole command (catalog, plan and copy).
//!
//! Each destination must then hold exactly `BENCH_OBJECTS` keys (counted with boto3), and
//! three of them are compared byte for byte with the source.
//! Reported: seconds, objects per second and the client's CPU seconds (user+system; the
//! whole `tidemark` process, boto3's list+copy only) for every run, and tidemark's objects
//! per second and CPU as ratios of the baseline's. Run: `cargo bench --bench
//! objects_restore` (env `BENCH_OBJECTS`, `BENCH_RUNS`; the S3 server must be running:
//! `scripts/test.sh` starts one; `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
//! `AWS_REGION` default to the test server's keys).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tidemark_fixtures::{Cluster, ClusterOptions, S3};

/// The boto3 side: `upload BUCKET N`, `copy SRC DST` (prints `{"objects", "seconds", "cpu"}`
/// of list+copy), `count BUCKET`. Endpoint and keys come from the environment.
const HELPER: &str = r#"
import json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
import boto3
from botocore.config import Config

WORKERS = 32
s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["BENCH_S3_ENDPOINT"],
    config=Config(
        s3={"addressing_style": "path"},
        max_pool_connections=WORKERS,
        retries={"max_attempts": 3, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    ),
)

def keys(bucket):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            yield o["Key"]

cmd = sys.argv[1]
if cmd == "upload":
    bucket, n = sys.argv[2], int(sys.argv[3])
    def put(i):
        head = ("object %05d of %d\n" % (i, n)).encode()
        body = head + os.urandom(1024 - len(head))
        s3.put_object(Bucket=bucket, Key="uploads/%05d.bin" % i, Body=body)
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(put, range(n)))
elif cmd == "copy":
    src, dst = sys.argv[2], sys.argv[3]
    def copy(key):
        s3.copy_object(Bucket=dst, Key=key, CopySource={"Bucket": src, "Key": key})
    t, cpu = time.monotonic(), time.process_time()
    listed = list(keys(src))
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(copy, listed))
    print(json.dumps({"objects": len(listed), "seconds": time.monotonic() - t,
                      "cpu": time.process_time() - cpu}))
elif cmd == "count":
    print(sum(1 for _ in keys(sys.argv[2])))
else:
    sys.exit("unknown command " + cmd)
"#;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `cmd`; its stdout, or an error with its stderr.
fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// User+system CPU seconds of all waited-for children so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Spot check: the first, middle and last keys hold the source's bytes in `dest`.
fn same_contents(s3: &S3, source: &str, dest: &str, objects: u64) -> Result<()> {
    for i in [0, objects / 2, objects - 1] {
        let key = format!("uploads/{i:05}.bin");
        if s3.get_object(source, &key)? != s3.get_object(dest, &key)? {
            bail!("{dest}/{key} differs from {source}/{key}");
        }
    }
    Ok(())
}

struct Run {
    name: &'static str,
    seconds: f64,
    /// User+system CPU seconds of the client process.
    cpu: f64,
}

fn main() -> Result<()> {
    let objects = env_u64("BENCH_OBJECTS", 10_000).max(1);
    let runs = env_u64("BENCH_RUNS", 2).max(1);
    for (name, default) in [
        ("TIDEMARK_TEST_S3_ENDPOINT", "http://127.0.0.1:8333"),
        ("AWS_ACCESS_KEY_ID", "tidemark-test"),
        ("AWS_SECRET_ACCESS_KEY", "tidemark-test-secret"),
        ("AWS_REGION", "us-east-1"),
    ] {
        if std::env::var_os(name).is_none_or(|v| v.is_empty()) {
            // Single-threaded still: nothing else reads the environment yet.
            std::env::set_var(name, default);
        }
    }
    let s3 = tidemark_fixtures::s3()?;
    let cluster = Cluster::start(ClusterOptions::default())?;
    let work = tidemark_fixtures::test_dir("bench-objects");
    let helper_path = work.path().join("s3_helper.py");
    std::fs::write(&helper_path, HELPER)?;
    let helper = |args: &[&str]| -> Result<String> {
        sh(Command::new("python3")
            .arg(&helper_path)
            .args(args)
            .envs(s3.env())
            .env("BENCH_S3_ENDPOINT", &s3.endpoint))
    };
    let count = |bucket: &str| -> Result<u64> {
        let text = helper(&["count", bucket])?;
        text.trim()
            .parse()
            .with_context(|| format!("not a count: {text}"))
    };

    let tidemark = env!("CARGO_BIN_EXE_tidemark");
    let repo = format!("file://{}/repo", work.path().display());
    let catalog = work.path().join("catalog.db");
    let conninfo = cluster.conninfo();
    let tm = |args: &[&str]| {
        let mut cmd = Command::new(tidemark);
        cmd.args(["--repo", &repo, "--pg", &conninfo, "--catalog"])
            .arg(&catalog)
            .args(args)
            .envs(s3.env())
            .env("TIDEMARK_LOG", "warn");
        cmd
    };
    sh(&mut tm(&["init"]))?;

    let source = s3.create_bucket("bench-objects-src", true)?;
    eprintln!("uploading {objects} objects of 1 KiB to {source} ...");
    let t = Instant::now();
    helper(&["upload", &source, &objects.to_string()])?;
    eprintln!("uploaded in {:.1} s", t.elapsed().as_secs_f64());
    let uploaded = count(&source)?;
    if uploaded != objects {
        bail!("{source} holds {uploaded} objects after the upload, expected {objects}");
    }

    eprintln!("tracking {source} (objects track --once) ...");
    let t = Instant::now();
    sh(&mut tm(&[
        "objects", "track", "--bucket", &source, "--once",
    ]))?;
    let first_pass = t.elapsed();
    let target = cluster.psql(
        r#"SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"#,
    )?;
    // The restore refuses instants after the newest pass's complete_as_of (its S3 Date
    // minus one second): a second pass a little later covers the target.
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    sh(&mut tm(&[
        "objects", "track", "--bucket", &source, "--once",
    ]))?;
    let second_pass = t.elapsed();
    eprintln!(
        "tracking passes: {:.2} s, then {:.2} s; target {target}",
        first_pass.as_secs_f64(),
        second_pass.as_secs_f64()
    );

    let mut results: Vec<Run> = Vec::new();
    for run in 1..=runs {
        // tidemark objects restore into a fresh, empty bucket.
        let dest = s3.create_bucket(&format!("bench-objects-tm{run}"), false)?;
        let cpu0 = children_cpu();
        let t = Instant::now();
        let out = sh(&mut tm(&[
            "objects",
            "restore",
            "--bucket",
            &source,
            "--target-time",
            &target,
            "--objects-to",
            &format!("s3://{dest}"),
            "--json",
        ]))?;
        let seconds = t.elapsed().as_secs_f64();
        let cpu = children_cpu() - cpu0;
        let report: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("tidemark objects restore --json printed: {out}"))?;
        let restored = report["restored"].as_u64().unwrap_or(0);
        let bytes = report["bytes"].as_u64().unwrap_or(0);
        let held = count(&dest)?;
        if restored != objects || held != objects {
            bail!("tidemark run {run}: report says {restored} restored, {dest} holds {held}; expected {objects}");
        }
        same_contents(&s3, &source, &dest, objects)?;
        eprintln!(
            "tidemark run {run}: {restored} objects, {bytes} bytes in {seconds:.2} s -> {dest}"
        );
        results.push(Run {
            name: "tidemark objects restore",
            seconds,
            cpu,
        });

        // Baseline: boto3 list + copy_object into a fresh, empty bucket.
        let dest = s3.create_bucket(&format!("bench-objects-b{run}"), false)?;
        let out = helper(&["copy", &source, &dest])?;
        let figures: serde_json::Value = serde_json::from_str(out.trim())
            .with_context(|| format!("the boto3 copy printed: {out}"))?;
        let copied = figures["objects"].as_u64().unwrap_or(0);
        let seconds = figures["seconds"].as_f64().unwrap_or(f64::NAN);
        let cpu = figures["cpu"].as_f64().unwrap_or(f64::NAN);
        let held = count(&dest)?;
        if copied != objects || held != objects {
            bail!("baseline run {run}: copied {copied}, {dest} holds {held}; expected {objects}");
        }
        same_contents(&s3, &source, &dest, objects)?;
        eprintln!("baseline run {run}: {copied} objects in {seconds:.2} s -> {dest}");
        results.push(Run {
            name: "boto3 list + copy_object",
            seconds,
            cpu,
        });
    }

    report(objects, runs, &results, &s3.endpoint, Path::new(tidemark));
    Ok(())
}

fn report(objects: u64, runs: u64, results: &[Run], endpoint: &str, tidemark: &Path) {
    let n = objects as f64;
    println!(
        "objects: {objects} of 1 KiB, versioned source, S3 at {endpoint}; 32 at once on both sides; {}",
        tidemark.display()
    );
    println!(
        "{:<28} {:>4} {:>9} {:>11} {:>13}",
        "", "run", "seconds", "objects/s", "client CPU s"
    );
    for (i, r) in results.iter().enumerate() {
        println!(
            "{:<28} {:>4} {:>9.2} {:>11.0} {:>13.2}",
            r.name,
            i / 2 + 1,
            r.seconds,
            n / r.seconds,
            r.cpu
        );
    }
    for run in 0..runs as usize {
        let (ours, base) = (&results[2 * run], &results[2 * run + 1]);
        println!(
            "run {}: tidemark / baseline objects/s x{:.2}, client CPU x{:.2}",
            run + 1,
            base.seconds / ours.seconds,
            ours.cpu / base.cpu
        );
    }
    let total = |name: &str| -> f64 {
        results
            .iter()
            .filter(|r| r.name == name)
            .map(|r| r.seconds)
            .sum()
    };
    println!(
        "all runs: tidemark / baseline objects/s x{:.2}",
        total("boto3 list + copy_object") / total("tidemark objects restore")
    );
}
