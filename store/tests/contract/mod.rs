//! The `Storage` contract, as one suite every backend must pass (shared by `fs_contract.rs`
//! and `s3_contract.rs`).

use std::sync::Arc;

use bytes::Bytes;
use tidemark_store::storage::{Body, Metadata, PutOutcome, Storage, StorageError};
use tokio::io::AsyncReadExt;

pub fn meta(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub async fn read_all(s: &dyn Storage, key: &str) -> (Vec<u8>, Metadata) {
    let mut got = s.get(key).await.unwrap();
    let mut buf = Vec::new();
    got.body.read_to_end(&mut buf).await.unwrap();
    assert_eq!(got.head.info.size, buf.len() as u64, "{key}: size in head");
    (buf, got.head.metadata)
}

/// Runs every contract check against an empty repository.
pub async fn run_all(s: Arc<dyn Storage>) {
    put_if_absent_twice(&*s).await;
    concurrent_put_if_absent_has_one_winner(s.clone()).await;
    put_replaces_and_absent_keys_behave(&*s).await;
    file_bodies_are_streamed(&*s).await;
    list_is_sorted_and_prefix_filtered(&*s).await;
    hostile_keys_are_refused(&*s).await;
}

async fn put_if_absent_twice(s: &dyn Storage) {
    let first = meta(&[("crc32", "00000001"), ("kind", "wal")]);
    let out = s
        .put_if_absent("c/once", Body::Bytes(Bytes::from_static(b"first")), &first)
        .await
        .unwrap();
    assert_eq!(out, PutOutcome::Created);
    let out = s
        .put_if_absent(
            "c/once",
            Body::Bytes(Bytes::from_static(b"second!")),
            &meta(&[("crc32", "00000002")]),
        )
        .await
        .unwrap();
    match out {
        PutOutcome::Exists(head) => {
            assert_eq!(head.info.key, "c/once");
            assert_eq!(head.info.size, 5);
            assert_eq!(head.metadata, first);
        }
        other => panic!("second put_if_absent: {other:?}"),
    }
    assert_eq!(read_all(s, "c/once").await, (b"first".to_vec(), first));
}

async fn concurrent_put_if_absent_has_one_winner(s: Arc<dyn Storage>) {
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let body = Body::Bytes(Bytes::from(format!("writer {i}")));
                let m = meta(&[("writer", &i.to_string())]);
                (i, s.put_if_absent("c/race", body, &m).await.unwrap())
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        let (i, out) = t.await.unwrap();
        if out == PutOutcome::Created {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one creator: {winners:?}");
    let w = winners[0];
    let (body, m) = read_all(&*s, "c/race").await;
    assert_eq!(body, format!("writer {w}").into_bytes());
    assert_eq!(
        m,
        meta(&[("writer", &w.to_string())]),
        "metadata is the winner's"
    );
}

async fn put_replaces_and_absent_keys_behave(s: &dyn Storage) {
    s.put(
        "c/p",
        Body::Bytes(Bytes::from_static(b"v1")),
        &meta(&[("v", "1")]),
    )
    .await
    .unwrap();
    s.put(
        "c/p",
        Body::Bytes(Bytes::from_static(b"version 2")),
        &meta(&[("v", "2")]),
    )
    .await
    .unwrap();
    assert_eq!(
        read_all(s, "c/p").await,
        (b"version 2".to_vec(), meta(&[("v", "2")]))
    );
    let head = s.head("c/p").await.unwrap().unwrap();
    assert_eq!(head.info.size, 9);
    assert_eq!(head.metadata, meta(&[("v", "2")]));
    assert!(head.info.last_modified.is_some());

    assert!(s.head("c/absent").await.unwrap().is_none());
    match s.get("c/absent").await {
        Err(StorageError::NotFound { key }) => assert_eq!(key, "c/absent"),
        other => panic!("get of an absent key: {other:?}"),
    }
    s.delete("c/p").await.unwrap();
    assert!(s.head("c/p").await.unwrap().is_none());
    s.delete("c/p").await.unwrap();
    s.delete("c/never/existed").await.unwrap();
    // Deleted keys can be created again.
    let out = s
        .put_if_absent(
            "c/p",
            Body::Bytes(Bytes::from_static(b"v3")),
            &Metadata::new(),
        )
        .await
        .unwrap();
    assert_eq!(out, PutOutcome::Created);
    assert_eq!(read_all(s, "c/p").await.0, b"v3");
}

async fn file_bodies_are_streamed(s: &dyn Storage) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let out = s
        .put_if_absent(
            "c/file",
            Body::File(path.clone()),
            &meta(&[("raw-size", "3000000")]),
        )
        .await
        .unwrap();
    assert_eq!(out, PutOutcome::Created);
    assert_eq!(read_all(s, "c/file").await.0, data);
    s.put("c/file2", Body::File(path), &Metadata::new())
        .await
        .unwrap();
    assert_eq!(
        s.head("c/file2").await.unwrap().unwrap().info.size,
        3_000_000
    );
    let err = s
        .put(
            "c/file3",
            Body::File(dir.path().join("missing")),
            &Metadata::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Io { .. }), "{err:?}");
}

async fn list_is_sorted_and_prefix_filtered(s: &dyn Storage) {
    for key in [
        "l/wal/00000002/b",
        "l/wal/00000001/a",
        "l/wal/00000001.history",
        "l/tidemark.json",
        "l/wal/00000001/c",
    ] {
        s.put(
            key,
            Body::Bytes(Bytes::from_static(b"x")),
            &meta(&[("kind", "t")]),
        )
        .await
        .unwrap();
    }
    let keys =
        |v: Vec<tidemark_store::ObjectInfo>| v.into_iter().map(|o| o.key).collect::<Vec<_>>();
    assert_eq!(
        keys(s.list("l/").await.unwrap()),
        [
            "l/tidemark.json",
            "l/wal/00000001.history",
            "l/wal/00000001/a",
            "l/wal/00000001/c",
            "l/wal/00000002/b"
        ]
    );
    assert_eq!(
        keys(s.list("l/wal/00000001/").await.unwrap()),
        ["l/wal/00000001/a", "l/wal/00000001/c"]
    );
    assert_eq!(
        keys(s.list("l/wal/00000001").await.unwrap()),
        [
            "l/wal/00000001.history",
            "l/wal/00000001/a",
            "l/wal/00000001/c"
        ]
    );
    assert!(s.list("l/nothing/").await.unwrap().is_empty());
    let all = s.list("").await.unwrap();
    assert!(all.windows(2).all(|w| w[0].key < w[1].key), "sorted");
    assert!(all
        .iter()
        .all(|o| !o.key.contains(".meta.json") && !o.key.contains(".tmp")));
    let one = s.list("l/wal/00000002/").await.unwrap();
    assert_eq!(one[0].size, 1);
}

async fn hostile_keys_are_refused(s: &dyn Storage) {
    for key in [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../escape",
        "a//b",
        "a/./b",
        "a\\b",
    ] {
        let body = || Body::Bytes(Bytes::from_static(b"x"));
        let m = Metadata::new();
        assert!(
            matches!(
                s.put(key, body(), &m).await,
                Err(StorageError::InvalidKey { .. })
            ),
            "put {key:?}"
        );
        assert!(
            matches!(
                s.put_if_absent(key, body(), &m).await,
                Err(StorageError::InvalidKey { .. })
            ),
            "put_if_absent {key:?}"
        );
        assert!(
            matches!(s.get(key).await, Err(StorageError::InvalidKey { .. })),
            "get {key:?}"
        );
        assert!(
            matches!(s.head(key).await, Err(StorageError::InvalidKey { .. })),
            "head {key:?}"
        );
        assert!(
            matches!(s.delete(key).await, Err(StorageError::InvalidKey { .. })),
            "delete {key:?}"
        );
    }
    assert!(matches!(
        s.list("../").await,
        Err(StorageError::InvalidKey { .. })
    ));
    let bad_meta = meta(&[("Not_Valid", "x")]);
    let err = s
        .put("c/meta", Body::Bytes(Bytes::from_static(b"x")), &bad_meta)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::InvalidMetadata { .. }),
        "{err:?}"
    );
}
