//! The WAL decoder against `pg_waldump` on real WAL, for every installed
//! PostgreSQL major with 1 MiB segments: a workload of commits, aborts,
//! prepared transactions committed and rolled back, a restore point, large
//! rows and records spanning pages and segments, and a `pg_switch_wal()`.
//! Every record start must match, and every commit, abort and restore point
//! must match in LSN, xid, time and name. Fails, never skips, when a major
//! is missing.

use std::path::Path;
use std::process::Command;

use chrono::{DateTime, NaiveDateTime, Utc};
use tidemark_fixtures::{pg_majors, Cluster, ClusterOptions};
use tidemark_protocol::{
    Lsn, SegmentName, TimelineId, WalDecoder, WalEvent, WalRecord, WalSegmentSize,
};

const SEGMENT_MB: u32 = 1;

/// What the workload did: the WAL range to compare and the restore point's
/// name and the clock around it.
struct Workload {
    start: Lsn,
    end: Lsn,
    restore_point: String,
    restore_point_window: (DateTime<Utc>, DateTime<Utc>),
}

/// An event as both sides can describe it: kind, LSN, xid, time (µs), name.
type EventKey = (&'static str, Lsn, u32, Option<i64>, String);

/// One record as `pg_waldump` prints it.
#[derive(Debug)]
struct DumpRecord {
    rmgr: String,
    tot_len: u32,
    xid: u32,
    lsn: Lsn,
    desc: String,
}

#[test]
fn decoder_agrees_with_pg_waldump_on_every_major() {
    let majors = pg_majors();
    assert!(
        !majors.is_empty(),
        "no PostgreSQL installation found; run scripts/setup.sh"
    );
    for major in majors {
        check_major(major).unwrap_or_else(|err| panic!("PostgreSQL {major}: {err:#}"));
    }
}

fn check_major(major: u32) -> anyhow::Result<()> {
    let seg = WalSegmentSize::new(u64::from(SEGMENT_MB) << 20)?;
    let mut cluster = Cluster::start(ClusterOptions {
        major,
        wal_segsize_mb: SEGMENT_MB,
        settings: vec![("max_prepared_transactions".into(), "5".into())],
    })?;
    let workload = run_workload(&cluster, seg)?;
    // A clean shutdown: every segment file is complete and stays put.
    cluster.stop()?;
    let pg_wal = cluster.data_dir().join("pg_wal");

    let decoded = decode_segments(&pg_wal, workload.start, seg)?;
    let dumped = pg_waldump(&cluster, &pg_wal, workload.start, workload.end)?;

    // The workload really produced what this test is about.
    let in_range: Vec<&WalRecord> = decoded.iter().filter(|r| r.start < workload.end).collect();
    let descs: Vec<&str> = dumped.iter().map(|d| d.desc.as_str()).collect();
    for wanted in [
        "COMMIT ",
        "ABORT ",
        "COMMIT_PREPARED ",
        "ABORT_PREPARED ",
        "RESTORE_POINT ",
        "SWITCH",
    ] {
        assert!(
            descs.iter().any(|d| d.starts_with(wanted)),
            "pg{major}: the workload wrote no {wanted:?} record"
        );
    }
    let page = |lsn: Lsn| lsn.0 / 8192;
    assert!(
        in_range
            .iter()
            .any(|r| page(r.start) != page(Lsn(r.start.0 + u64::from(r.len)))),
        "pg{major}: no record spans pages"
    );
    assert!(
        in_range
            .iter()
            .any(|r| r.start.segment_number(seg) != r.end.segment_number(seg) && r.rmid != 0),
        "pg{major}: no record spans a segment boundary"
    );
    assert!(
        workload.end.segment_number(seg) >= workload.start.segment_number(seg) + 4,
        "pg{major}: the workload spans too few segments"
    );

    // Every record start, length and xid.
    let ours: Vec<(Lsn, u32, u32)> = in_range.iter().map(|r| (r.start, r.len, r.xid)).collect();
    let theirs: Vec<(Lsn, u32, u32)> = dumped.iter().map(|d| (d.lsn, d.tot_len, d.xid)).collect();
    if ours != theirs {
        let diff = first_difference(&ours, &theirs);
        anyhow::bail!(
            "records differ from pg_waldump ({} ours, {} theirs); first difference: {diff}",
            ours.len(),
            theirs.len()
        );
    }

    // Every event.
    let our_events: Vec<EventKey> = in_range
        .iter()
        .filter_map(|r| r.event.as_ref())
        .map(event_key)
        .collect();
    let their_events: Vec<EventKey> = dumped
        .iter()
        .filter_map(dump_event_key)
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(our_events, their_events, "pg{major}: events differ");
    assert!(our_events.len() >= 6, "pg{major}: too few events");
    assert!(
        our_events.iter().any(|e| e.0 == "checkpoint"),
        "pg{major}: the workload's CHECKPOINT was not decoded"
    );

    // pg_waldump does not print restore point times: check it against the
    // clock read around pg_create_restore_point().
    let (before, after) = workload.restore_point_window;
    let rp_time = in_range
        .iter()
        .find_map(|r| match &r.event {
            Some(WalEvent::RestorePoint { name, time, .. }) if *name == workload.restore_point => {
                Some(*time)
            }
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("restore point not decoded"))?;
    assert!(
        before <= rp_time && rp_time <= after,
        "pg{major}: restore point time {rp_time} outside {before}..{after}"
    );
    Ok(())
}

fn run_workload(cluster: &Cluster, seg: WalSegmentSize) -> anyhow::Result<Workload> {
    cluster.psql("SELECT pg_create_physical_replication_slot('oracle', true)")?;
    let first: Lsn = lsn(&cluster.psql("SELECT pg_current_wal_insert_lsn()")?)?;
    let start = first.segment_start(seg);
    cluster.psql(
        "CREATE TABLE t (id int, payload text);
         INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 100) g;
         BEGIN; INSERT INTO t VALUES (-1, 'rolled back'); ROLLBACK;
         BEGIN; INSERT INTO t VALUES (-2, 'sub'); SAVEPOINT s1; INSERT INTO t VALUES (-3, 'sub');
           RELEASE s1; SAVEPOINT s2; INSERT INTO t VALUES (-4, 'sub'); ROLLBACK TO s2; COMMIT;
         BEGIN; INSERT INTO t VALUES (-5, 'prepared'); PREPARE TRANSACTION 'p1';
         COMMIT PREPARED 'p1';
         BEGIN; INSERT INTO t VALUES (-6, 'prepared'); PREPARE TRANSACTION 'p2';
         ROLLBACK PREPARED 'p2';
         CREATE TABLE t_drop (x int);
         BEGIN; DROP TABLE t_drop; PREPARE TRANSACTION 'p3';
         COMMIT PREPARED 'p3';
         BEGIN; CREATE TABLE t_new (x int); INSERT INTO t_new VALUES (1); PREPARE TRANSACTION 'p4';
         ROLLBACK PREPARED 'p4';",
    )?;
    let restore_point = "oracle restore point".to_string();
    let window = cluster.psql(&format!(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US');
         SELECT pg_create_restore_point('{restore_point}');
         SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US');"
    ))?;
    let times: Vec<&str> = window.lines().collect();
    let (before, after) = match times.as_slice() {
        [before, _, after] => (utc(before)?, utc(after)?),
        _ => anyhow::bail!("unexpected psql output {window:?}"),
    };
    cluster.psql(
        // Large rows: incompressible values are TOASTed in ~2 kB chunks.
        "CREATE TABLE big (id int, payload text);
         INSERT INTO big SELECT g, (SELECT string_agg(md5(random()::text || i), '')
                                    FROM generate_series(1, 150 + g % 7) i)
           FROM generate_series(1, 300) g;
         CHECKPOINT;
         UPDATE t SET payload = payload || '!';
         SELECT pg_switch_wal();
         CREATE INDEX big_id ON big (id);
         INSERT INTO t SELECT g, repeat('y', 300) FROM generate_series(1, 8000) g;
         BEGIN; INSERT INTO t VALUES (-7, 'last'); COMMIT;",
    )?;
    let end = lsn(&cluster.psql("SELECT pg_current_wal_insert_lsn()")?)?;
    Ok(Workload {
        start,
        end,
        restore_point,
        restore_point_window: (before, after),
    })
}

/// Decodes the segment files of timeline 1 from `start` on, until a file
/// is missing or the WAL ends.
fn decode_segments(
    pg_wal: &Path,
    start: Lsn,
    seg: WalSegmentSize,
) -> anyhow::Result<Vec<WalRecord>> {
    let mut decoder = WalDecoder::new(start, seg);
    let mut records = Vec::new();
    let mut segment = SegmentName::containing(TimelineId(1), start, seg);
    loop {
        let path = pg_wal.join(segment.file_name(seg));
        let Ok(bytes) = std::fs::read(&path) else {
            break;
        };
        // Odd chunk sizes, so pieces never line up with pages.
        for chunk in bytes.chunks(12_345) {
            decoder.feed(chunk);
            while let Some(record) = decoder.next_record()? {
                records.push(record);
            }
        }
        if decoder.ended() {
            break;
        }
        segment = segment.next();
    }
    assert!(
        decoder.ended(),
        "the WAL should end in a recycled or zeroed segment"
    );
    Ok(records)
}

fn pg_waldump(
    cluster: &Cluster,
    pg_wal: &Path,
    start: Lsn,
    end: Lsn,
) -> anyhow::Result<Vec<DumpRecord>> {
    let out = Command::new(cluster.bin().tool("pg_waldump"))
        .env("TZ", "UTC")
        .arg("-p")
        .arg(pg_wal)
        .arg("-s")
        .arg(start.to_string())
        .arg("-e")
        .arg(end.to_string())
        .output()?;
    let stdout = String::from_utf8(out.stdout)?;
    if !out.status.success() {
        anyhow::bail!(
            "pg_waldump failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout.lines().map(parse_dump_line).collect()
}

/// Parses `rmgr: Transaction len (rec/tot): 34/ 34, tx: 735, lsn:
/// 0/01000108, prev 0/010000D0, desc: COMMIT 2024-05-09 07:33:22.123456 UTC`.
fn parse_dump_line(line: &str) -> anyhow::Result<DumpRecord> {
    let bad = || anyhow::anyhow!("unexpected pg_waldump line {line:?}");
    let after = |key: &str| {
        line.split_once(key)
            .map(|(_, rest)| rest.trim_start())
            .ok_or_else(bad)
    };
    let until_comma = |s: &str| s.split(',').next().unwrap_or("").trim().to_string();
    let rmgr = after("rmgr:")?
        .split_whitespace()
        .next()
        .ok_or_else(bad)?
        .to_string();
    let tot_len = until_comma(after("len (rec/tot):")?)
        .split('/')
        .nth(1)
        .ok_or_else(bad)?
        .trim()
        .parse()?;
    let xid = until_comma(after("tx:")?).parse()?;
    let lsn = lsn(&until_comma(after("lsn:")?))?;
    let desc = after("desc:")?.to_string();
    Ok(DumpRecord {
        rmgr,
        tot_len,
        xid,
        lsn,
        desc,
    })
}

fn event_key(event: &WalEvent) -> EventKey {
    match event {
        WalEvent::Commit {
            start, xid, time, ..
        } => (
            "commit",
            *start,
            *xid,
            Some(time.timestamp_micros()),
            String::new(),
        ),
        WalEvent::Abort {
            start, xid, time, ..
        } => (
            "abort",
            *start,
            *xid,
            Some(time.timestamp_micros()),
            String::new(),
        ),
        WalEvent::RestorePoint { start, name, .. } => {
            ("restore point", *start, 0, None, name.clone())
        }
        WalEvent::Checkpoint {
            start, next_xid, ..
        } => ("checkpoint", *start, 0, None, next_xid.to_string()),
    }
}

/// The event a `pg_waldump` record describes, if any.
fn dump_event_key(d: &DumpRecord) -> Option<anyhow::Result<EventKey>> {
    let (kind, rest) = d.desc.split_once(' ').unwrap_or((d.desc.as_str(), ""));
    let xact = |kind: &'static str, prepared: bool| -> anyhow::Result<EventKey> {
        // "<time>[; details]", or for prepared ones "<xid>: <time>[; details]".
        let (xid, rest) = if prepared {
            let (xid, rest) = rest
                .split_once(": ")
                .ok_or_else(|| anyhow::anyhow!("no xid in {:?}", d.desc))?;
            (xid.parse()?, rest)
        } else {
            (d.xid, rest)
        };
        let time = rest.split(';').next().unwrap_or("").trim();
        let time = time
            .strip_suffix(" UTC")
            .ok_or_else(|| anyhow::anyhow!("time not in UTC in {:?}", d.desc))?;
        Ok((
            kind,
            d.lsn,
            xid,
            Some(utc(time)?.timestamp_micros()),
            String::new(),
        ))
    };
    match (d.rmgr.as_str(), kind) {
        ("Transaction", "COMMIT") => Some(xact("commit", false)),
        ("Transaction", "ABORT") => Some(xact("abort", false)),
        ("Transaction", "COMMIT_PREPARED") => Some(xact("commit", true)),
        ("Transaction", "ABORT_PREPARED") => Some(xact("abort", true)),
        ("XLOG", "RESTORE_POINT") => Some(Ok(("restore point", d.lsn, 0, None, rest.to_string()))),
        ("XLOG", "CHECKPOINT_ONLINE" | "CHECKPOINT_SHUTDOWN") => Some(
            checkpoint_next_xid(rest).map(|next| ("checkpoint", d.lsn, 0, None, next.to_string())),
        ),
        _ => None,
    }
}

/// The full next xid in a checkpoint's description: `…; xid EPOCH:XID; …`.
fn checkpoint_next_xid(desc: &str) -> anyhow::Result<u64> {
    let field = desc
        .split("; ")
        .find_map(|f| f.strip_prefix("xid "))
        .ok_or_else(|| anyhow::anyhow!("no xid in checkpoint {desc:?}"))?;
    let (epoch, xid) = field
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("xid {field:?} is not EPOCH:XID"))?;
    Ok((epoch.parse::<u64>()? << 32) | xid.parse::<u64>()?)
}

fn first_difference<T: std::fmt::Debug + PartialEq>(ours: &[T], theirs: &[T]) -> String {
    let at = ours
        .iter()
        .zip(theirs)
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(theirs.len()));
    format!(
        "at index {at}: ours {:?}, theirs {:?}",
        ours.get(at),
        theirs.get(at)
    )
}

fn lsn(text: &str) -> anyhow::Result<Lsn> {
    Ok(text.trim().parse()?)
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` in UTC.
fn utc(text: &str) -> anyhow::Result<DateTime<Utc>> {
    Ok(NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S%.f")?.and_utc())
}
