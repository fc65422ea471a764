//! Failover: a primary with a streaming standby, archived through a connection string
//! naming both (`target_session_attrs=read-write`). The standby is promoted and the old
//! primary stopped; the archiver follows the new primary onto timeline 2 with no gap, and
//! restores on both sides of the promotion are exact. The old primary, back as a primary
//! on timeline 1 (split brain), is refused and nothing of it stored.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tidemark_fixtures::{Cluster, ClusterOptions};
use tidemark_protocol::{Lsn, WalSegmentSize};

const MAJORS: [u32; 2] = [15, 17];

fn options(major: u32) -> ClusterOptions {
    ClusterOptions { major, ..one_mb() }
}

fn insert(cluster: &Cluster, ids: std::ops::RangeInclusive<u32>) {
    cluster
        .psql(&format!(
            "INSERT INTO t SELECT g FROM generate_series({}, {}) g",
            ids.start(),
            ids.end()
        ))
        .unwrap();
}

/// `min,max,count` of the ids in `t`.
fn ids(cluster: &Cluster) -> String {
    cluster
        .psql("SELECT min(id) || ',' || max(id) || ',' || count(*) FROM t")
        .unwrap()
}

fn two_hosts(first: &Cluster, second: &Cluster) -> String {
    format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres target_session_attrs=read-write",
        first.port(),
        second.port()
    )
}

/// A primary with table `t` and a streaming standby, archived (running) through a
/// connection string naming both, the standby first if `standby_first`.
fn archived_pair(major: u32, standby_first: bool) -> (Cluster, Cluster, Repo, Archiver) {
    let primary = Cluster::start(options(major)).expect("primary");
    primary.psql("CREATE TABLE t(id int PRIMARY KEY)").unwrap();
    let standby = primary.start_standby().expect("standby");
    primary.wait_streaming(1).expect("standby streams");
    let repo = Repo::file();
    let mut archiver = Archiver::new(&primary, &repo, &["--partial-interval", "0.5"]);
    archiver.set_conninfo(&match standby_first {
        true => two_hosts(&standby, &primary),
        false => two_hosts(&primary, &standby),
    });
    archiver.init();
    archiver.start();
    (primary, standby, repo, archiver)
}

/// What a failover left: the old primary (stopped), the new one, the archiver (stopped)
/// and the LSN of a target just before the promotion.
struct FailedOver {
    old: Cluster,
    new: Cluster,
    repo: Repo,
    archiver: Archiver,
    before_promotion: Lsn,
}

/// Archive a primary with load, take a backup, promote its standby, stop the old primary,
/// keep writing on the new one until timeline 2 is archived. Ids 1-200 are committed
/// before `before_promotion`, 201-250 after it on timeline 1 (the standby has them),
/// 301-400 on timeline 2.
fn fail_over(major: u32) -> FailedOver {
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    // The standby first: read-write must skip it.
    let (mut old, new, repo, mut archiver) = archived_pair(major, true);
    insert(&old, 1..=100);
    backup(&archiver, &[]);
    insert(&old, 101..=200);
    let before_promotion = current_lsn(&old);
    insert(&old, 201..=250);
    let end = current_lsn(&old);
    wait_for("the standby to replay", Duration::from_secs(30), || {
        let replayed = new.psql("SELECT pg_last_wal_replay_lsn()").ok()?;
        (lsn(&replayed) >= end).then_some(())
    });
    archiver.wait_stored(end, Duration::from_secs(30));
    assert!(
        archiver
            .log()
            .contains(&format!("127.0.0.1:{}", old.port())),
        "not connected to the primary:\n{}",
        archiver.log()
    );

    let promoted = Instant::now();
    new.promote().expect("promote");
    let old_end = current_lsn(&old);
    old.pg_ctl_stop("fast", 60)
        .expect("fast shutdown of the old primary");
    let stopped = Instant::now();
    // The fast shutdown waited for the archiver to store what it was sent.
    let unstored = old_end.0.saturating_sub(archiver.archived_end().0);
    insert(&new, 301..=400);
    let on_tli2 = wait_for("timeline 2 streaming", Duration::from_secs(60), || {
        archiver.assert_running();
        archiver
            .segments()
            .iter()
            .any(|s| s.name.timeline.0 == 2)
            .then(Instant::now)
    });
    println!(
        "RPO PG {major}: WAL not in the repository when the old primary stopped: {unstored} bytes; promotion -> old primary stopped: {:?}; old primary stopped -> timeline 2 stored: {:?}; promotion -> timeline 2 stored: {:?}",
        stopped - promoted,
        on_tli2 - stopped,
        on_tli2 - promoted
    );
    assert_eq!(
        unstored, 0,
        "WAL of the old primary not stored at its shutdown"
    );
    // The old primary's shutdown checkpoint lies past the branch point: the archiver had
    // received more of timeline 1 than the new primary has, and continued on timeline 2.
    assert!(
        archiver
            .log()
            .contains("continuing on it from the branch point"),
        "{}",
        archiver.log()
    );
    let through = switch_wal(&new);
    archiver.wait_complete_through(through, seg, Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0);
    FailedOver {
        old,
        new,
        repo,
        archiver,
        before_promotion,
    }
}

#[test]
fn the_archiver_follows_a_promoted_standby_with_no_gap_and_restores_on_both_sides_are_exact() {
    for major in MAJORS {
        let f = fail_over(major);
        let keys = f.repo.keys();
        assert!(
            keys.contains(&"wal/00000002.history".to_string()),
            "{keys:?}"
        );
        assert!(!keys.iter().any(|k| k.starts_with("gaps/")), "{keys:?}");
        // No gap: timeline 1's complete segments run unbroken up to the one where
        // timeline 2 begins, and timeline 2's from there.
        let segments = f.archiver.segments();
        let complete = |tli: u32| -> Vec<u64> {
            let mut v: Vec<u64> = segments
                .iter()
                .filter(|s| !s.partial && s.name.timeline.0 == tli)
                .map(|s| s.name.segno)
                .collect();
            v.sort_unstable();
            v
        };
        let (one, two) = (complete(1), complete(2));
        assert!(!one.is_empty() && !two.is_empty(), "{segments:?}");
        assert_eq!(
            one,
            (one[0]..=one[one.len() - 1]).collect::<Vec<_>>(),
            "PG {major}: gap on timeline 1"
        );
        assert_eq!(
            two,
            (two[0]..=two[two.len() - 1]).collect::<Vec<_>>(),
            "PG {major}: gap on timeline 2"
        );
        assert_eq!(
            two[0],
            one[one.len() - 1] + 1,
            "PG {major}: timeline 2 does not continue timeline 1"
        );
        let status = run(f.archiver.command(&["status"]));
        assert!(status.status.success(), "{}", stderr(&status));

        let opts = options(major);
        let before = start_recovered(
            restore_into(
                &f.archiver,
                &["--target-lsn", &f.before_promotion.to_string()],
            ),
            opts.clone(),
        );
        assert_eq!(
            ids(&before),
            "1,200,200",
            "PG {major}: before the promotion"
        );
        drop(before);
        let latest = start_recovered(restore_into(&f.archiver, &[]), opts);
        assert_eq!(
            latest
                .psql("SELECT count(*) FILTER (WHERE id <= 250) || ',' || count(*) FILTER (WHERE id > 250) || ',' || max(id) FROM t")
                .unwrap(),
            "250,100,400",
            "PG {major}: latest"
        );
        assert_eq!(
            latest
                .psql("SELECT timeline_id FROM pg_control_checkpoint()")
                .unwrap(),
            "3",
            "PG {major}: the restore of timeline 2's latest promotes onto timeline 3"
        );
    }
}

#[test]
fn the_old_primary_back_on_the_old_timeline_is_refused() {
    for major in MAJORS {
        let mut f = fail_over(major);
        // The old primary starts again: still a primary, on timeline 1.
        f.old.restart().expect("old primary starts");
        assert_eq!(f.old.psql("SELECT pg_is_in_recovery()").unwrap(), "f");
        f.old.psql("INSERT INTO t VALUES (9999)").unwrap();
        switch_wal(&f.old);
        let before = f.repo.keys();

        f.archiver.set_conninfo(&f.old.conninfo());
        let started = Instant::now();
        let out = run(f.archiver.command(&["stream"]));
        assert_eq!(out.status.code(), Some(5), "PG {major}: {}", stderr(&out));
        let message = stderr(&out);
        assert!(
            message.contains("split brain") && message.contains("older than timeline 2"),
            "PG {major}: {message}"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(f.repo.keys(), before, "PG {major}: something was stored");

        // Listed first beside the new primary, the old one is skipped for it.
        f.archiver.set_conninfo(&two_hosts(&f.old, &f.new));
        f.archiver.start();
        insert(&f.new, 401..=450);
        let through = switch_wal(&f.new);
        f.archiver.wait_complete_through(
            through,
            WalSegmentSize::new(1 << 20).unwrap(),
            Duration::from_secs(60),
        );
        assert_eq!(f.archiver.terminate(), 0);
        let log = f.archiver.log();
        assert!(log.contains("split brain"), "PG {major}: {log}");
        assert!(
            !f.archiver.segments().iter().any(|s| s.name.timeline.0 == 1
                && s.end_lsn > f.before_promotion
                && !before.contains(&s.key)),
            "PG {major}: WAL of the old primary's new line was archived"
        );
    }
}

/// The oldest WAL segment number in `cluster`'s pg_wal.
fn oldest_segment(cluster: &Cluster) -> u64 {
    std::fs::read_dir(cluster.data_dir().join("pg_wal"))
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let hex = name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit());
            // log (8 hex digits) and segment within it (8) for 1 MiB segments: 4096 a log.
            hex.then(|| {
                let log = u64::from_str_radix(&name[8..16], 16).unwrap();
                let seg = u64::from_str_radix(&name[16..24], 16).unwrap();
                log * 4096 + seg
            })
        })
        .min()
        .expect("segments in pg_wal")
}

#[test]
fn a_new_primary_without_the_wal_the_repository_needs_is_a_gap_reported_with_its_exact_range() {
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    for major in MAJORS {
        let (mut old, new, repo, mut archiver) = archived_pair(major, false);
        insert(&old, 1..=100);
        let through = switch_wal(&old);
        archiver.wait_complete_through(through, seg, Duration::from_secs(60));
        assert_eq!(archiver.terminate(), 0);
        // While the archiver is away, the standby (no slot for it there) recycles WAL.
        for burst in 0..6 {
            insert(&old, (1000 + burst * 100)..=(1099 + burst * 100));
            switch_wal(&old);
        }
        old.psql("CHECKPOINT").unwrap();
        let end = current_lsn(&old);
        wait_for("the standby to replay", Duration::from_secs(30), || {
            let replayed = new.psql("SELECT pg_last_wal_replay_lsn()").ok()?;
            (lsn(&replayed) >= end).then_some(())
        });
        new.psql("CHECKPOINT").unwrap();
        new.promote().expect("promote");
        old.pg_ctl_stop("fast", 60).expect("stop the old primary");
        let wal_before: Vec<String> = repo
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("wal/0") && k.ends_with(".zst"))
            .collect();
        let oldest = oldest_segment(&new);
        let archived_next = archiver
            .segments()
            .iter()
            .filter(|s| !s.partial)
            .map(|s| s.name.segno + 1)
            .max()
            .unwrap();
        assert!(
            oldest > archived_next,
            "PG {major}: the new primary still has segment {archived_next:X} (oldest {oldest:X}); nothing to test"
        );

        let out = run(archiver.command(&["stream"]));
        let message = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "PG {major}: {message}");
        let from = Lsn(archived_next * seg.bytes());
        let to = Lsn(oldest * seg.bytes());
        assert!(
            message.contains(&format!(
                "no longer has WAL from {from} up to {to}, where the oldest WAL it still has begins"
            )),
            "PG {major}: expected the gap {from}..{to}: {message}"
        );
        let wal_after: Vec<String> = repo
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("wal/0") && k.ends_with(".zst"))
            .collect();
        assert_eq!(
            wal_after, wal_before,
            "PG {major}: WAL after the gap was stored"
        );
        assert!(!repo.keys().iter().any(|k| k.starts_with("gaps/")));
    }
}

#[test]
fn status_with_a_standby_listed_first_reports_the_primary() {
    let (primary, standby, _repo, mut archiver) = archived_pair(15, true);
    archiver.wait_stored(current_lsn(&primary), Duration::from_secs(30));
    assert_eq!(archiver.terminate(), 0);
    // No target_session_attrs: `stream` takes the primary, and `status` must ask the same
    // server (it reported the standby, the first host to answer).
    archiver.set_conninfo(&format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres",
        standby.port(),
        primary.port()
    ));
    let out = run(archiver.command(&["status"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains(&format!("(127.0.0.1:{})", primary.port())),
        "{text}"
    );
}
