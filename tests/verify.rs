//! `tidemark verify`: a sound repository (real PostgreSQL with a tablespace, SeaweedFS)
//! reads back with no problem and every backup restorable to the newest WAL; then each
//! kind of damage a repository suffers — a flipped byte in a WAL object, another
//! segment's bytes under a segment's name (its checksums consistent), a flipped byte in a
//! backup chunk, an edited `backup_manifest` — is reported by key, with what a restore
//! would lose, and exit status 8.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;
use tidemark_fixtures::Cluster;
use tidemark_protocol::WalSegmentSize;

fn verify(archiver: &Archiver, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    run_json(archiver, &[&["verify", "--json"], args].concat())
}

fn problems(doc: &serde_json::Value) -> Vec<(String, String, String)> {
    doc["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().expect(k).to_string();
            (s("key"), s("problem"), s("loses"))
        })
        .collect()
}

#[test]
fn a_sound_repository_verifies_clean_with_every_backup_restorable_to_the_newest_wal() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let ts_dir = tablespace_dir(&cluster);
    let repo = Repo::s3("verify");
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster
        .psql(&format!(
            "CREATE TABLESPACE ts LOCATION '{}';
             CREATE TABLE t(id int, pad text);
             INSERT INTO t SELECT g, repeat('x', 300) FROM generate_series(1, 5000) g;
             CREATE TABLE u(id int) TABLESPACE ts;
             INSERT INTO u SELECT generate_series(1, 1000);",
            ts_dir.display()
        ))
        .unwrap();
    let first = backup(&archiver, &["--chunk-size-mb", "1"]);
    cluster
        .psql("INSERT INTO t SELECT g, 'after' FROM generate_series(1, 3000) g")
        .unwrap();
    let second = backup(&archiver, &[]);
    let end = switch_wal(&cluster);
    archiver.wait_contiguous_through(end, seg, Duration::from_secs(60));

    let (code, doc) = verify(&archiver, &[]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert!(problems(&doc).is_empty(), "{doc:#}");
    assert!(doc["segments"].as_u64().unwrap() >= 3, "{doc:#}");
    let backups = doc["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 2, "{doc:#}");
    for (b, id) in backups.iter().zip([&first, &second]) {
        assert_eq!(b["id"], id.as_str(), "{doc:#}");
        assert_eq!(b["sound"], true, "{doc:#}");
        // Every file of the data directory and the tablespace was compared.
        assert!(b["files"].as_u64().unwrap() > 500, "{doc:#}");
        let to = lsn(b["restorable_to"].as_str().expect("restorable"));
        assert!(
            to >= end,
            "restorable to {to}, WAL archived through {end}: {doc:#}"
        );
    }

    // --backup limits it to one backup and the WAL from its start.
    let (code, doc) = verify(&archiver, &["--backup", &second, "--jobs", "2"]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["backups"].as_array().unwrap().len(), 1, "{doc:#}");
    let out = run(archiver.command(&["verify", "--backup", "20200101T000000Z"]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not in the repository"),
        "{}",
        stderr(&out)
    );
}

/// Flip one byte in the middle of the file at `path`.
fn flip(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

/// Rewrite `path`, a plain object of a `file://` repository, and its sidecar's checksum
/// and size, as a writer that got the content wrong but sealed it properly would.
fn rewrite_sealed(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap();
    let sidecar = path.with_file_name(format!(
        "{}.meta.json",
        path.file_name().unwrap().to_string_lossy()
    ));
    let mut meta: serde_json::Value = serde_json::from_slice(&fs::read(&sidecar).unwrap()).unwrap();
    meta["metadata"]["crc32"] = format!("{:08x}", crc32(bytes)).into();
    meta["metadata"]["raw-size"] = bytes.len().to_string().into();
    fs::write(&sidecar, serde_json::to_vec(&meta).unwrap()).unwrap();
}

/// Run `damage` on the repository, verify, then put the files back as they were.
fn damaged(
    archiver: &Archiver,
    files: &[&Path],
    damage: impl FnOnce(),
) -> (Option<i32>, serde_json::Value) {
    let saved: Vec<(std::path::PathBuf, Vec<u8>)> = files
        .iter()
        .flat_map(|f| {
            let sidecar = f.with_file_name(format!(
                "{}.meta.json",
                f.file_name().unwrap().to_string_lossy()
            ));
            [f.to_path_buf(), sidecar]
        })
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    damage();
    let found = verify(archiver, &[]);
    for (p, bytes) in saved {
        fs::write(p, bytes).unwrap();
    }
    found
}

#[test]
fn each_kind_of_stored_damage_is_reported_by_key_with_what_a_restore_loses() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let repo = Repo::file();
    let mut archiver = Archiver::new(&cluster, &repo, &["--partial-interval", "1"]);
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE t AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 3000) g")
        .unwrap();
    let id = backup(&archiver, &[]);
    for _ in 0..3 {
        cluster
            .psql("INSERT INTO t SELECT g, 'later' FROM generate_series(1, 2000) g")
            .unwrap();
        switch_wal(&cluster);
    }
    let end = switch_wal(&cluster);
    archiver.wait_contiguous_through(end, seg, Duration::from_secs(60));
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());

    let (code, doc) = verify(&archiver, &[]);
    assert_eq!(code, Some(0), "sound before any damage: {doc:#}");
    let root = repo.file_root();
    let mut complete: Vec<_> = archiver
        .segments()
        .into_iter()
        .filter(|s| !s.partial)
        .collect();
    complete.sort_by_key(|s| s.name.segno);
    let [.., victim, next, _] = &complete[..] else {
        panic!("too few segments: {complete:?}");
    };
    let victim_path = root.join(&victim.key);
    let victim_start = victim.name.start_lsn(seg).to_string();

    // A flipped byte in a stored segment: restores from the backup stop before it.
    let (code, doc) = damaged(&archiver, &[&victim_path], || flip(&victim_path));
    assert_eq!(code, Some(8), "{doc:#}");
    let found = problems(&doc);
    assert_eq!(found.len(), 1, "{doc:#}");
    assert_eq!(found[0].0, victim.key, "{doc:#}");
    assert!(found[0].2.contains(&id), "{doc:#}");
    assert_eq!(
        doc["backups"][0]["restorable_to"],
        victim_start.as_str(),
        "{doc:#}"
    );

    // Another segment's bytes under this segment's name, sealed consistently: only
    // reading the WAL itself shows it is not the segment its name says.
    let (code, doc) = damaged(&archiver, &[&victim_path], || {
        fs::copy(root.join(&next.key), &victim_path).unwrap();
        let side = |k: &str| root.join(format!("{k}.meta.json"));
        fs::copy(side(&next.key), side(&victim.key)).unwrap();
    });
    assert_eq!(code, Some(8), "{doc:#}");
    let found = problems(&doc);
    assert!(
        found
            .iter()
            .any(|(k, p, _)| *k == victim.key && p.contains("WAL")),
        "{doc:#}"
    );
    // The catalog here remembers what was archived under that name.
    assert!(
        found
            .iter()
            .any(|(k, p, _)| *k == victim.key && p.contains("the local catalog records crc32")),
        "{doc:#}"
    );
    assert_eq!(
        doc["backups"][0]["restorable_to"],
        victim_start.as_str(),
        "{doc:#}"
    );

    // A segment deleted: verify names the missing segment, and restores stop before it.
    let victim_meta = root.join(format!("{}.meta.json", victim.key));
    let (code, doc) = damaged(&archiver, &[&victim_path], || {
        fs::remove_file(&victim_path).unwrap();
        fs::remove_file(&victim_meta).unwrap();
    });
    assert_eq!(code, Some(8), "{doc:#}");
    let found = problems(&doc);
    assert_eq!(found.len(), 1, "{doc:#}");
    assert_eq!(found[0].0, victim.key, "{doc:#}");
    assert!(found[0].1.contains("missing"), "{doc:#}");
    assert!(found[0].2.contains(&id), "{doc:#}");
    assert_eq!(doc["backups"][0]["sound"], true, "{doc:#}");
    assert_eq!(
        doc["backups"][0]["restorable_to"],
        victim_start.as_str(),
        "{doc:#}"
    );

    // A flipped byte in a backup chunk: that backup cannot be restored.
    let chunk = repo
        .keys()
        .into_iter()
        .find(|k| k.starts_with(&format!("backups/{id}/data-")) && k.ends_with(".tar.zst"))
        .expect("a chunk");
    let chunk_path = root.join(&chunk);
    let (code, doc) = damaged(&archiver, &[&chunk_path], || flip(&chunk_path));
    assert_eq!(code, Some(8), "{doc:#}");
    let found = problems(&doc);
    assert!(
        found
            .iter()
            .any(|(k, _, l)| *k == chunk && l.contains("cannot be restored")),
        "{doc:#}"
    );
    assert_eq!(doc["backups"][0]["sound"], false, "{doc:#}");

    // An edited manifest, resealed: its own SHA-256 and the file it misdescribes.
    let manifest_path = root.join(format!("backups/{id}/backup_manifest"));
    let text = fs::read_to_string(&manifest_path).unwrap();
    let at = text
        .find("\"Path\": \"PG_VERSION\"")
        .expect("PG_VERSION listed");
    let sum = at + text[at..].find("\"Checksum\": \"").unwrap() + "\"Checksum\": \"".len();
    let mut edited = text.clone().into_bytes();
    edited[sum] = if edited[sum] == b'0' { b'1' } else { b'0' };
    let (code, doc) = damaged(&archiver, &[&manifest_path], || {
        rewrite_sealed(&manifest_path, &edited)
    });
    assert_eq!(code, Some(8), "{doc:#}");
    let found = problems(&doc);
    assert!(
        found.iter().any(|(_, p, _)| p.contains("SHA-256")),
        "{doc:#}"
    );
    assert!(
        found
            .iter()
            .any(|(_, p, _)| p.starts_with("PG_VERSION: backup_manifest records checksum")),
        "{doc:#}"
    );

    // Everything put back: sound again, every complete segment the catalog records held.
    let (code, doc) = verify(&archiver, &[]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(
        doc["catalog_records"].as_u64(),
        Some(complete.len() as u64),
        "{doc:#}"
    );
    // Without a catalog here, the repository alone is verified.
    delete_catalog(&archiver);
    let (code, doc) = verify(&archiver, &[]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert!(doc["catalog_records"].is_null(), "{doc:#}");
}

#[test]
fn a_tracked_buckets_missing_or_wrong_copy_is_reported_by_key() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let bucket = s3.create_bucket("app", false).unwrap();
    let repo = Repo::file();
    let mut archiver = Archiver::new(
        &cluster,
        &repo,
        &[
            "--track-bucket",
            &bucket,
            "--mode",
            "copy",
            "--track-interval",
            "1",
        ],
    )
    .with_env(s3.env());
    archiver.init();
    archiver.start();
    s3.put_object(&bucket, "a.txt", b"first object").unwrap();
    s3.put_object(&bucket, "b.txt", b"second object").unwrap();
    common::app::wait_for_tracking(&archiver, &bucket, 1);
    let copies = wait_for("both copies", Duration::from_secs(60), || {
        let keys: Vec<String> = repo
            .keys()
            .into_iter()
            .filter(|k| k.starts_with(&format!("objects/{bucket}/blobs/")) && k.ends_with(".zst"))
            .collect();
        (keys.len() == 2).then_some(keys)
    });
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());

    let (code, doc) = verify(&archiver, &[]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["buckets"][0]["bucket"], bucket.as_str(), "{doc:#}");
    assert_eq!(doc["buckets"][0]["mode"], "copy", "{doc:#}");
    assert_eq!(doc["buckets"][0]["copies"], 2, "{doc:#}");
    assert_eq!(doc["buckets"][0]["sound"], true, "{doc:#}");

    // One copy's bytes under the other's name, sealed consistently: only its SHA-256
    // shows it.
    let root = repo.file_root();
    let (first, second) = (root.join(&copies[0]), root.join(&copies[1]));
    let (code, doc) = damaged(&archiver, &[&first], || {
        fs::copy(&second, &first).unwrap();
        let side = |p: &Path| {
            p.with_file_name(format!(
                "{}.meta.json",
                p.file_name().unwrap().to_string_lossy()
            ))
        };
        fs::copy(side(&second), side(&first)).unwrap();
    });
    assert_eq!(code, Some(8), "{doc:#}");
    let found = problems(&doc);
    assert_eq!(found.len(), 1, "{doc:#}");
    assert_eq!(found[0].0, copies[0], "{doc:#}");
    assert!(found[0].1.contains("SHA-256"), "{doc:#}");
    assert!(found[0].2.contains(&bucket), "{doc:#}");
    assert_eq!(doc["buckets"][0]["sound"], false, "{doc:#}");

    // A copy deleted.
    let (code, doc) = damaged(&archiver, &[&first], || {
        fs::remove_file(&first).unwrap();
    });
    assert_eq!(code, Some(8), "{doc:#}");
    let found = problems(&doc);
    assert_eq!(found.len(), 1, "{doc:#}");
    assert_eq!(found[0].0, copies[0], "{doc:#}");
    assert!(found[0].1.starts_with("missing"), "{doc:#}");

    let (code, doc) = verify(&archiver, &[]);
    assert_eq!(code, Some(0), "{doc:#}");
}

#[test]
fn a_version_the_application_bucket_no_longer_holds_is_reported() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let bucket = s3.create_bucket("app", true).unwrap();
    let repo = Repo::file();
    let mut archiver = Archiver::new(
        &cluster,
        &repo,
        &["--track-bucket", &bucket, "--track-interval", "1"],
    )
    .with_env(s3.env());
    archiver.init();
    archiver.start();
    s3.put_object(&bucket, "a.txt", b"one").unwrap();
    s3.put_object(&bucket, "a.txt", b"two").unwrap();
    s3.put_object(&bucket, "b.txt", b"three").unwrap();
    common::app::wait_for_tracking(&archiver, &bucket, 1);
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    let (code, doc) = verify(&archiver, &[]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["buckets"][0]["mode"], "versions", "{doc:#}");
    assert_eq!(doc["buckets"][0]["versions"], 3, "{doc:#}");

    // A lifecycle rule expires the noncurrent version of a.txt: the first recorded.
    let history = tidemark_store::catalog::Catalog::open(&archiver.catalog)
        .unwrap()
        .object_history(&bucket)
        .unwrap();
    let noncurrent = history
        .versions
        .iter()
        .filter(|v| v.key == "a.txt")
        .min_by_key(|v| v.seq)
        .expect("a.txt recorded")
        .version_id
        .clone();
    s3.delete_version(&bucket, "a.txt", &noncurrent).unwrap();
    let (code, doc) = verify(&archiver, &[]);
    assert_eq!(code, Some(8), "{doc:#}");
    let found = problems(&doc);
    assert_eq!(found.len(), 1, "{doc:#}");
    assert_eq!(
        found[0].0,
        format!("s3://{bucket}/a.txt?versionId={noncurrent}"),
        "{doc:#}"
    );
    assert!(found[0].1.starts_with("missing"), "{doc:#}");
    assert_eq!(doc["buckets"][0]["sound"], false, "{doc:#}");
}
