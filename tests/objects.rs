//! The application bucket restored to the same instant as the database: a workload
//! changes rows of a `files` table and the objects they name in lockstep, with idle gaps;
//! for each target the restored cluster's rows and the restored bucket agree exactly (every
//! key a row names holds the bytes the row says, and no other key exists). Versioned
//! buckets (tracked inside `stream`) into new buckets and in place, unversioned buckets
//! (copied), the catalog rebuilt by `reindex`, `--verify-refs`, and bad input. Then the
//! real world's keys and sizes: odd keys, interrupted restores rerun, objects restored in
//! parts, versions listed late (multipart uploads), and passes longer than their lease.

mod common;

use std::time::Duration;

use common::app::*;
use common::*;
use tidemark_fixtures::Cluster;
use tidemark_protocol::WalSegmentSize;

fn backup(archiver: &Archiver) {
    let out = run(archiver.command(&["backup"]));
    assert!(out.status.success(), "backup: {}", stderr(&out));
}

#[test]
fn versioned_bucket_and_database_restore_to_the_same_instant() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let repo = Repo::s3("objects-repo");
    let (mut archiver, bucket) = tracked_archiver(&cluster, &s3, &repo);
    backup(&archiver);
    wait_for_tracking(&archiver, &bucket, 0);
    let mut app = App::new(&cluster, &s3, &bucket);

    for n in 1..=3 {
        app.put(&format!("f{n}"), &format!("one-{n}"));
    }
    let (t1, at1) = app.gap();
    app.put("f1", "two-1");
    app.remove("f2");
    // Created and deleted within the same second: only the listing order tells.
    app.put("gone", "brief");
    app.remove("gone");
    app.put("f4", "one-4");
    // The LSN target's last commit (whose time the bucket follows) comes well after the
    // last object change: S3 times are whole seconds, so a commit within the same second
    // as a change is, rightly, reported uncertain rather than decided.
    std::thread::sleep(Duration::from_millis(1500));
    cluster.psql("CREATE TABLE lsn_target_mark()").unwrap();
    let lsn2 = cluster.psql("SELECT pg_current_wal_lsn()").unwrap();
    let (t2, at2) = app.gap();
    app.remove("f1");
    app.put("f3", "two-3");
    app.put("f5", "one-5");
    let (t3, at3) = app.gap();
    app.put("f6", "after-all");
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg, Duration::from_secs(60));
    let passes = pass_count(&archiver, &bucket);
    wait_for_tracking(&archiver, &bucket, passes + 1);
    assert_eq!(archiver.terminate(), 0);
    assert_eq!(at1.len(), 3);
    let out = run(archiver.command(&["status", "--json"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["buckets"][0]["bucket"], bucket.as_str(), "{status}");
    assert_eq!(status["buckets"][0]["mode"], "versions", "{status}");
    assert!(status["database_window"]["from"].is_string(), "{status}");
    assert_ne!(at1, at2);
    assert_ne!(at2, at3);

    // Time targets, each into a fresh bucket (the last into one tidemark creates).
    let new_bucket = format!("{}-new", &bucket[..bucket.len().min(50)]);
    let mut t3_cluster = None;
    for (i, (t, expected)) in [(&t1, &at1), (&t2, &at2), (&t3, &at3)]
        .into_iter()
        .enumerate()
    {
        let dest = if i == 2 {
            new_bucket.clone()
        } else {
            s3.create_bucket("dest", false).unwrap()
        };
        let started = restore_both_checked(&archiver, &cluster, &s3, &bucket, t, &dest, expected);
        assert!(
            started.stdout.contains("instant: database "),
            "{}",
            started.stdout
        );
        if i == 2 {
            t3_cluster = Some(started);
        }
    }
    assert!(s3.bucket_exists(&new_bucket).unwrap());

    // An LSN target: the bucket follows the commit time where recovery stopped.
    let dest = s3.create_bucket("dest-lsn", false).unwrap();
    let started = restore_started(
        &archiver,
        &[],
        &[
            "--target-lsn",
            &lsn2,
            "--objects",
            "",
            "--objects-to",
            &format!("s3://{dest}/restored"),
            "--verify-refs",
            "SELECT key FROM files",
        ],
    );
    assert_eq!(started.rows(&cluster), at2, "{}", started.stdout);
    let prefixed: Files = at2
        .iter()
        .map(|(k, v)| (format!("restored/{k}"), v.clone()))
        .collect();
    assert_eq!(bucket_files(&s3, &dest), prefixed, "{}", started.stdout);
    assert!(
        started
            .stdout
            .contains("0 missing from the restored bucket"),
        "{}",
        started.stdout
    );
    drop(started);

    // The bucket deliberately restored to another time than the database: the check
    // counts the keys the T3 rows name that the T1 bucket lacks.
    let t3_cluster = t3_cluster.expect("the T3 restore");
    let dest = s3.create_bucket("dest-skew", false).unwrap();
    let skew_pg = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        t3_cluster.port
    );
    let mut cmd = tidemark(&repo);
    cmd.arg("--repo")
        .arg(repo.url())
        .arg("--catalog")
        .arg(&archiver.catalog);
    cmd.args([
        "--pg",
        &skew_pg,
        "objects",
        "restore",
        "--target-time",
        &t1,
        "--objects-to",
        &format!("s3://{dest}"),
        "--verify-refs",
        "SELECT key FROM files",
    ]);
    let out = run(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    let missing: Vec<&String> = at3.keys().filter(|k| !at1.contains_key(*k)).collect();
    assert!(!missing.is_empty());
    assert!(
        stdout.contains(&format!(
            "{} key(s) referenced, {} missing",
            at3.len(),
            missing.len()
        )),
        "{stdout}"
    );
    for key in missing {
        assert!(stdout.contains(&format!("missing: {key}\n")), "{stdout}");
    }
    drop(t3_cluster);

    // Catalog lost: reindex brings the history back, and the restore gives the same state.
    delete_catalog(&archiver);
    let out = run(archiver.command(&["reindex"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let dest = s3.create_bucket("dest-reindex", false).unwrap();
    let out = run(archiver.command(&[
        "objects",
        "restore",
        "--bucket",
        &bucket,
        "--target-time",
        &t2,
        "--objects-to",
        &format!("s3://{dest}"),
        "--json",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(bucket_files(&s3, &dest), at2);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["restored"], at2.len());
    assert!(
        report["clock_uncertainty_ms"].as_i64().unwrap() < 1000,
        "{report}"
    );

    // In place: new versions and delete markers; every old version is kept.
    let versions_before = s3.list_versions(&bucket).unwrap();
    let out = run(archiver.command(&[
        "objects",
        "restore",
        "--target-time",
        &t1,
        "--objects-in-place",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    assert_eq!(bucket_files(&s3, &bucket), at1, "{stdout}");
    let versions_after = s3.list_versions(&bucket).unwrap();
    for v in &versions_before {
        assert!(versions_after.contains(v), "version {v} was lost");
    }
    assert!(versions_after.len() > versions_before.len());
    assert!(stdout.contains("removed"), "{stdout}");
}

#[test]
fn unversioned_bucket_is_copied_into_the_repository_and_restored() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let repo = Repo::file();
    let bucket = s3.create_bucket("plain", false).unwrap();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE files(key text PRIMARY KEY, body text NOT NULL)")
        .unwrap();
    backup(&archiver);
    let track = || {
        let mut cmd = archiver.command(&[
            "objects", "track", "--bucket", &bucket, "--mode", "copy", "--once",
        ]);
        cmd.envs(s3.env());
        let out = run(cmd);
        assert!(out.status.success(), "track: {}", stderr(&out));
    };
    track();
    let mut app = App::new(&cluster, &s3, &bucket);
    app.put("a", "same");
    app.put("b", "same");
    app.put("c", "one-c");
    // The tracking interval is the bucket's RPO: a pass after each gap's instant.
    let (t1, at1) = app.gap();
    track();
    app.put("a", "two-a");
    app.remove("b");
    app.put("d", "one-d");
    let (t2, at2) = app.gap();
    track();
    let through = switch_wal(&cluster);
    archiver.wait_complete_through(through, seg, Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0);

    // Identical bytes are stored once.
    let blobs = repo
        .keys()
        .into_iter()
        .filter(|k| k.contains("/blobs/") && k.ends_with(".zst"))
        .count();
    assert_eq!(blobs, 4, "same, one-c, two-a, one-d");

    // A deletion is seen by the next pass and stamped with its time: until then the
    // restored bucket keeps the object (an orphan is harmless; a missing object is a 404).
    let mut seen2 = at2.clone();
    seen2.insert("b".into(), "same".into());
    for (t, expected) in [(&t1, &at1), (&t2, &seen2)] {
        let dest = s3.create_bucket("plain-dest", false).unwrap();
        let mut cmd = archiver.command(&[
            "objects",
            "restore",
            "--target-time",
            t,
            "--objects-to",
            &format!("s3://{dest}"),
        ]);
        cmd.envs(s3.env());
        let out = run(cmd);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(&bucket_files(&s3, &dest), expected, "at {t}");
    }
    share_with_postgres(&archiver.repo_dir_for_postgres());
    let started = {
        let dest = s3.create_bucket("plain-db", false).unwrap();
        let mut args = vec!["--target-time", &t1, "--objects", "", "--objects-to"];
        let to = format!("s3://{dest}");
        args.push(&to);
        args.extend(["--verify-refs", "SELECT key FROM files"]);
        let started = restore_started(&archiver, &s3.env(), &args);
        assert_eq!(bucket_files(&s3, &dest), at1);
        started
    };
    assert_eq!(started.rows(&cluster), at1);
    assert!(
        started
            .stdout
            .contains("0 missing from the restored bucket"),
        "{}",
        started.stdout
    );

    // Without versioning an in-place restore would overwrite and delete: refused.
    let mut cmd = archiver.command(&[
        "objects",
        "restore",
        "--target-time",
        &t1,
        "--objects-in-place",
    ]);
    cmd.envs(s3.env());
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("tracked by copying"),
        "{}",
        stderr(&out)
    );
    assert_eq!(bucket_files(&s3, &bucket), at2);
}

#[test]
fn bad_object_requests_are_refused_and_write_nothing() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let repo = Repo::file();
    let archiver = Archiver::new(&cluster, &repo, &[]);
    archiver.init();
    let plain = s3.create_bucket("unversioned", false).unwrap();
    let versioned = s3.create_bucket("versioned", true).unwrap();
    let objects_in_repo = || {
        repo.keys()
            .into_iter()
            .filter(|k| k.starts_with("objects/"))
            .count()
    };
    let cmd = |args: &[&str]| {
        let mut cmd = archiver.command(args);
        cmd.envs(s3.env());
        run(cmd)
    };
    let refused = |out: &std::process::Output, code: i32, needle: &str| {
        let err = stderr(out);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(err.contains(needle), "{err:?} should say {needle:?}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    };

    // Version tracking of a bucket without versioning.
    let out = cmd(&["objects", "track", "--bucket", &plain, "--once"]);
    refused(&out, 5, "does not have versioning enabled");
    // A missing bucket.
    let out = cmd(&[
        "objects",
        "track",
        "--bucket",
        "tidemark-no-such-bucket",
        "--once",
    ]);
    refused(&out, 4, "does not exist");
    assert_eq!(objects_in_repo(), 0);
    assert!(!archiver.catalog.exists() || pass_count(&archiver, &plain) == 0);

    s3.put_object(&versioned, "k", b"v1").unwrap();
    let before = pg_now(&cluster);
    std::thread::sleep(Duration::from_millis(1100));
    let out = cmd(&["objects", "track", "--bucket", &versioned, "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let records = objects_in_repo();
    assert!(records > 0);

    // A target before tracking began.
    let dest = s3.create_bucket("bad-dest", false).unwrap();
    let to = format!("s3://{dest}");
    let restore_at = |t: &str| {
        cmd(&[
            "objects",
            "restore",
            "--target-time",
            t,
            "--objects-to",
            &to,
        ])
    };
    let out = restore_at(&before);
    refused(&out, 5, "before tracking");
    // A target after the newest pass.
    std::thread::sleep(Duration::from_millis(1100));
    let later = pg_now(&cluster);
    let out = restore_at(&later);
    refused(&out, 5, "after the newest tracking pass");
    assert!(s3.list_keys(&dest).unwrap().is_empty());
    // A malformed time; no destination.
    let out = restore_at("yesterday");
    refused(&out, 2, "yesterday");
    std::thread::sleep(Duration::from_millis(1100));
    let out = cmd(&[
        "objects", "track", "--bucket", &versioned, "--once", "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tracked: serde_json::Value = serde_json::from_slice(&out.stdout).expect("track --json");
    assert_eq!(tracked["bucket"], versioned.as_str(), "{tracked:#}");
    assert_eq!(tracked["mode"], "versions", "{tracked:#}");
    assert!(tracked["versions"].as_u64().unwrap() >= 1, "{tracked:#}");
    assert!(tracked["last_pass"].as_str().unwrap() > tracked["first_pass"].as_str().unwrap());
    let out = cmd(&["objects", "restore", "--target-time", &later]);
    refused(&out, 2, "--objects-to");
    // A destination that is not empty: nothing is written to it.
    s3.put_object(&dest, "precious", b"keep").unwrap();
    let out = restore_at(&later);
    refused(&out, 5, "is not empty");
    assert_eq!(
        bucket_files(&s3, &dest),
        Files::from([("precious".into(), "keep".into())])
    );
    // A database restore with an LSN target cannot pick the bucket's instant without --start.
    let data = tidemark_fixtures::test_dir("bad-objects");
    let out = cmd(&[
        "restore",
        "--pgdata",
        data.path().join("d").to_str().unwrap(),
        "--target-lsn",
        "0/3000000",
        "--objects",
        "",
        "--objects-to",
        &to,
    ]);
    refused(&out, 2, "needs --start");
    assert!(!data.path().join("d").exists());
    // Nothing was recorded by the refused calls: only the two passes.
    assert_eq!(pass_count(&archiver, &versioned), 2);
    assert_eq!(s3.list_versions(&versioned).unwrap().len(), 1);
}

/// Runs `tidemark` with the S3 server's environment (the repository may be a directory).
fn run_s3(archiver: &Archiver, s3: &tidemark_fixtures::S3, args: &[&str]) -> std::process::Output {
    let mut cmd = archiver.command(args);
    cmd.envs(s3.env());
    run(cmd)
}

/// One tracking pass of `bucket` in `mode`, which must succeed.
fn track_once(archiver: &Archiver, s3: &tidemark_fixtures::S3, bucket: &str, mode: &str) {
    let out = run_s3(
        archiver,
        s3,
        &[
            "objects", "track", "--bucket", bucket, "--mode", mode, "--once",
        ],
    );
    assert!(out.status.success(), "track: {}", stderr(&out));
}

/// Legal S3 keys that tidemark used to refuse, or whose encoding is easy to get wrong, with
/// their bodies. Each is its own object on every S3 server. (Keys with `//`, a leading `/`,
/// a backslash or `.`/`..` segments are legal too, and pass tidemark's checks (unit tests),
/// but SeaweedFS, a filer underneath, folds them onto other keys or refuses them.)
const ODD_KEYS: [(&str, &str); 7] = [
    // A "folder" marker, as consoles create them: empty, with a trailing slash.
    ("dir/", ""),
    ("dir/file", "a file in the folder"),
    ("tab\there", "control character"),
    ("ünïcödé and spaces.txt", "unicode"),
    ("q?uery&x=1%20#frag", "reserved characters"),
    ("plus+equals=semi;colon", "more reserved characters"),
    ("deep/dir/", ""),
];
#[test]
fn keys_with_a_trailing_slash_or_control_characters_are_tracked_and_restored() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let repo = Repo::file();
    let archiver = Archiver::new(&cluster, &repo, &[]);
    archiver.init();
    for (mode, versioned) in [("versions", true), ("copy", false)] {
        let bucket = s3
            .create_bucket(&format!("odd-keys-{mode}"), versioned)
            .unwrap();
        track_once(&archiver, &s3, &bucket, mode);
        let mut expected = Files::new();
        for (key, body) in ODD_KEYS {
            s3.put_object(&bucket, key, body.as_bytes()).unwrap();
            expected.insert(key.to_string(), body.to_string());
        }
        assert_eq!(
            bucket_files(&s3, &bucket),
            expected,
            "the server keeps them apart"
        );
        std::thread::sleep(Duration::from_millis(1100));
        let t = pg_now(&cluster);
        std::thread::sleep(Duration::from_millis(1100));
        track_once(&archiver, &s3, &bucket, mode);
        for (url_tail, prefix) in [("", ""), ("/restored", "restored/")] {
            let dest = s3.create_bucket("odd-keys-dest", false).unwrap();
            let out = run_s3(
                &archiver,
                &s3,
                &[
                    "objects",
                    "restore",
                    "--bucket",
                    &bucket,
                    "--target-time",
                    &t,
                    "--objects-to",
                    &format!("s3://{dest}{url_tail}"),
                ],
            );
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{mode}: {stdout}{}", stderr(&out));
            let want: Files = expected
                .iter()
                .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
                .collect();
            assert_eq!(
                bucket_files(&s3, &dest),
                want,
                "{mode} into {prefix:?}: {stdout}"
            );
            assert!(
                stdout.contains(&format!("{} objects restored", ODD_KEYS.len())),
                "{stdout}"
            );
        }
    }
}

/// A bucket restore that stopped midway left a non-empty destination, and the rerun was
/// refused ("not empty") forever. A rerun to the same instant now checks what is there
/// (each object the planned bytes) and writes only the rest; a destination holding
/// anything else is still refused and left untouched.
#[test]
fn interrupted_bucket_restore_is_finished_by_a_rerun_instead_of_refused() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let repo = Repo::file();
    let archiver = Archiver::new(&cluster, &repo, &[]);
    archiver.init();
    for (mode, versioned) in [("versions", true), ("copy", false)] {
        let bucket = s3
            .create_bucket(&format!("resume-{mode}"), versioned)
            .unwrap();
        track_once(&archiver, &s3, &bucket, mode);
        let mut expected = Files::new();
        for i in 0..12 {
            let (key, body) = (format!("k{i:02}"), format!("{mode}-{i}"));
            s3.put_object(&bucket, &key, body.as_bytes()).unwrap();
            expected.insert(key, body);
        }
        std::thread::sleep(Duration::from_millis(1100));
        let t = pg_now(&cluster);
        std::thread::sleep(Duration::from_millis(1100));
        track_once(&archiver, &s3, &bucket, mode);
        let dest = s3.create_bucket("resume-dest", false).unwrap();
        // What an interrupted run leaves: some of the planned objects, nothing else.
        for (key, body) in expected.iter().take(5) {
            s3.put_object(&dest, key, body.as_bytes()).unwrap();
        }
        let restore = || {
            run_s3(
                &archiver,
                &s3,
                &[
                    "objects",
                    "restore",
                    "--bucket",
                    &bucket,
                    "--target-time",
                    &t,
                    "--objects-to",
                    &format!("s3://{dest}"),
                    "--json",
                ],
            )
        };
        let out = restore();
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["already_restored"], 5, "{report}");
        assert_eq!(report["restored"], 7, "{report}");
        assert_eq!(bucket_files(&s3, &dest), expected);
        // Run again: everything is there already, nothing is written.
        let out = restore();
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (
                report["already_restored"].as_u64(),
                report["restored"].as_u64()
            ),
            (Some(12), Some(0)),
            "{report}"
        );
        // Other bytes under a planned key, or a key the plan lacks: refused, untouched.
        for (key, body) in [("k03", "not what was restored"), ("stranger", "x")] {
            let mut changed = expected.clone();
            changed.insert(key.into(), body.into());
            s3.put_object(&dest, key, body.as_bytes()).unwrap();
            let out = restore();
            assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
            assert!(
                stderr(&out).contains(&format!("is not empty: it holds \"{key}\"")),
                "{}",
                stderr(&out)
            );
            assert_eq!(bucket_files(&s3, &dest), changed);
            s3.put_object(&dest, "k03", expected["k03"].as_bytes())
                .unwrap();
            if key == "stranger" {
                s3.delete_object(&dest, key).unwrap();
            }
        }
    }
}

/// `len` bytes that do not compress (so copy mode stores as many in the repository).
fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed * 2 + 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Objects over 5 GiB could not be restored: `CopyObject` stops there, and copy mode put
/// each object in one request. With the multipart threshold and part size set to 5 MiB
/// (the settings that default to 5 GiB for copies), a 12 MiB object drives the very paths a
/// 6 GiB one takes: `UploadPartCopy` for versioned buckets, multipart uploads for copy
/// mode (into the repository and back into the bucket). The restored bytes are identical,
/// and a rerun verifies the multipart copies (whose ETags differ) by their SHA-256.
#[test]
fn objects_over_the_single_copy_limit_are_restored_in_parts() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let repo = Repo::s3("multipart-repo");
    let archiver = Archiver::new(&cluster, &repo, &[]);
    archiver.init();
    let parts = |args: &[&str]| {
        let mut cmd = archiver.command(args);
        cmd.envs(s3.env())
            .env("TIDEMARK_S3_MULTIPART_THRESHOLD", "5MiB")
            .env("TIDEMARK_S3_PART_SIZE", "5MiB")
            .env("TIDEMARK_LOG", "info,tidemark_store=debug");
        run(cmd)
    };
    for (mode, versioned) in [("versions", true), ("copy", false)] {
        let bucket = s3.create_bucket(&format!("big-{mode}"), versioned).unwrap();
        let out = parts(&[
            "objects", "track", "--bucket", &bucket, "--mode", mode, "--once",
        ]);
        assert!(out.status.success(), "track: {}", stderr(&out));
        let big = incompressible(12 << 20, 7);
        let small = b"small".to_vec();
        s3.put_object(&bucket, "big.bin", &big).unwrap();
        s3.put_object(&bucket, "small.txt", &small).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let t = pg_now(&cluster);
        std::thread::sleep(Duration::from_millis(1100));
        let out = parts(&[
            "objects", "track", "--bucket", &bucket, "--mode", mode, "--once",
        ]);
        assert!(out.status.success(), "track: {}", stderr(&out));
        if mode == "copy" {
            assert!(
                stderr(&out).contains("multipart upload started"),
                "the copy is stored in parts: {}",
                stderr(&out)
            );
        }
        let dest = s3.create_bucket("big-dest", false).unwrap();
        let restore = || {
            parts(&[
                "objects",
                "restore",
                "--bucket",
                &bucket,
                "--target-time",
                &t,
                "--objects-to",
                &format!("s3://{dest}"),
                "--json",
            ])
        };
        let out = restore();
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("multipart upload started"),
            "{mode}: restored in parts: {}",
            stderr(&out)
        );
        assert_eq!(s3.list_keys(&dest).unwrap(), ["big.bin", "small.txt"]);
        assert!(
            s3.get_object(&dest, "big.bin").unwrap() == big,
            "{mode}: same bytes"
        );
        assert_eq!(s3.get_object(&dest, "small.txt").unwrap(), small);
        let out = restore();
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["already_restored"], 2, "{report}");
    }
}

/// On AWS a multipart upload's `LastModified` is when it was *started*, but the object is
/// visible only once complete: taking `LastModified` at its word restored such an object to
/// instants when it did not exist yet. SeaweedFS stamps completion, so the situation is
/// made the way tracking sees it: the pass after the upload is made not to have listed it
/// (its catalog row removed), and the next pass lists it with an old `LastModified`.
#[test]
fn object_listed_only_after_the_target_is_not_restored_to_it_whatever_its_last_modified() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let repo = Repo::file();
    let archiver = Archiver::new(&cluster, &repo, &[]);
    archiver.init();
    let bucket = s3.create_bucket("late-listed", true).unwrap();
    s3.put_object(&bucket, "early.txt", b"early").unwrap();
    track_once(&archiver, &s3, &bucket, "versions");
    s3.put_object(&bucket, "late.bin", b"late").unwrap();
    // Whole-second LastModified: a pass within the same second could not tell.
    std::thread::sleep(Duration::from_millis(2100));
    track_once(&archiver, &s3, &bucket, "versions");
    std::thread::sleep(Duration::from_millis(1100));
    let t = pg_now(&cluster);
    std::thread::sleep(Duration::from_millis(1100));
    // That pass did not see it (on AWS: the upload was still in progress).
    let out = std::process::Command::new("sqlite3")
        .arg(&archiver.catalog)
        .arg("DELETE FROM object_versions WHERE key = 'late.bin'")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    track_once(&archiver, &s3, &bucket, "versions");
    let history = tidemark_store::catalog::Catalog::open(&archiver.catalog)
        .unwrap()
        .object_history(&bucket)
        .unwrap();
    let late = history
        .versions
        .iter()
        .find(|v| v.key == "late.bin")
        .unwrap();
    let observed = late.observed_at.expect("the late listing is recorded");
    assert!(observed > late.last_modified, "{late:?}");
    std::thread::sleep(Duration::from_millis(1100));
    let after = pg_now(&cluster);
    std::thread::sleep(Duration::from_millis(1100));
    track_once(&archiver, &s3, &bucket, "versions");

    let restore = |t: &str| {
        let dest = s3.create_bucket("late-dest", false).unwrap();
        let out = run_s3(
            &archiver,
            &s3,
            &[
                "objects",
                "restore",
                "--bucket",
                &bucket,
                "--target-time",
                t,
                "--objects-to",
                &format!("s3://{dest}"),
                "--json",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (bucket_files(&s3, &dest), report)
    };
    let (files, report) = restore(&t);
    assert_eq!(
        files,
        Files::from([("early.txt".into(), "early".into())]),
        "{report}"
    );
    assert_eq!(
        report["late_listed_keys"],
        serde_json::json!(["late.bin"]),
        "{report}"
    );
    assert!(
        report["uncertain_keys"]
            .as_array()
            .unwrap()
            .contains(&"late.bin".into()),
        "{report}"
    );
    let (files, report) = restore(&after);
    assert_eq!(files.len(), 2, "{report}");
    assert_eq!(files["late.bin"], "late");
    assert_eq!(
        report["late_listed_keys"],
        serde_json::json!([]),
        "{report}"
    );
}

/// A tracking pass held the bucket's lease without renewing it: a pass longer than the
/// lease lost it to the next taker (another tracker, or `expire`, which then folds history
/// and removes copies under the pass). With a 1-second lease and a copy-mode pass of
/// several seconds, a second tracker and `expire` started mid-pass wait for it instead of
/// breaking its lease, and every copy the records refer to is still stored afterwards.
#[test]
fn tracking_pass_longer_than_its_lease_keeps_it_from_other_trackers_and_expire() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let repo = Repo::file();
    let archiver = Archiver::new(&cluster, &repo, &[]);
    archiver.init();
    let bucket = s3.create_bucket("long-pass", false).unwrap();
    for i in 0..40 {
        s3.put_object(
            &bucket,
            &format!("big-{i}"),
            &incompressible(8 << 20, i + 1),
        )
        .unwrap();
    }
    let logs = tidemark_fixtures::test_dir("long-pass-logs");
    let spawn = |name: &str, args: &[&str]| {
        let mut cmd = archiver.command(args);
        cmd.envs(s3.env())
            .env("TIDEMARK_OBJECTS_LEASE_TTL", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(logs.path().join(name)).unwrap());
        cmd.spawn().unwrap()
    };
    let track = [
        "objects", "track", "--bucket", &bucket, "--mode", "copy", "--once",
    ];
    let mut first = spawn("first", &track);
    let lease = repo
        .file_root()
        .join(format!("locks/objects-{bucket}.json"));
    wait_for(
        "the first pass to take the lease",
        Duration::from_secs(30),
        || lease.exists().then_some(()),
    );
    std::thread::sleep(Duration::from_millis(1300));
    assert!(
        first.try_wait().unwrap().is_none(),
        "the pass must outlast its 1 s lease for this test to mean anything: {}",
        std::fs::read_to_string(logs.path().join("first")).unwrap()
    );
    let mut second = spawn("second", &track);
    let mut expire = spawn("expire", &["expire", "--retention", "1s", "--json"]);
    for (name, child) in [
        ("first", &mut first),
        ("second", &mut second),
        ("expire", &mut expire),
    ] {
        let status = child.wait().unwrap();
        let log = std::fs::read_to_string(logs.path().join(name)).unwrap();
        assert!(status.success(), "{name}: {log}");
        for lost in ["breaking an expired lease", "taken over", "left as it is"] {
            assert!(!log.contains(lost), "{name}: {log}");
        }
    }
    assert_eq!(pass_count(&archiver, &bucket), 2);
    let history = tidemark_store::catalog::Catalog::open(&archiver.catalog)
        .unwrap()
        .object_history(&bucket)
        .unwrap();
    let keys = repo.keys();
    assert_eq!(history.versions.len(), 40);
    for v in &history.versions {
        let sha = v.blob.as_deref().unwrap();
        let blob = tidemark_store::objects::blob_key(&bucket, sha);
        assert!(
            keys.contains(&blob),
            "{} refers to {blob}, which is gone",
            v.key
        );
    }
}
