//! `AppBucket`: the application's own S3 bucket, as object tracking and object restore
//! see it — versioning status, version and object listings with the server's clock,
//! reads, server-side copies of old versions, uploads and delete markers. It never
//! deletes a version: there is no call here that takes a version id to delete.
//!
//! Keys are the application's: any legal S3 key (1 to 1,024 bytes of UTF-8), `dir/`,
//! `a//b`, a leading `/`, backslashes and `..` segments included. They are passed to S3 as
//! they are and never mapped onto paths or other names, so no two keys can collide.

mod capture;

use std::fmt;
use std::path::Path;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::BucketVersioningStatus;
use aws_sdk_s3::Client;
use chrono::{DateTime, Duration, Utc};
use tokio::io::AsyncRead;

use self::capture::{Capture, Captured, EntryKind};
use crate::storage::s3::errors::{map_sdk_error, Call};
use crate::storage::s3::multipart::{self, NewObject, Target};
use crate::storage::s3::{bucket_exists, build_client, size_of, to_chrono, PartSizes};
use crate::storage::{S3Options, StorageError};

/// S3's longest key, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// Refuses what S3 cannot store as a key: empty, or longer than 1,024 bytes. Everything
/// else is the application's business.
pub fn validate_app_key(key: &str) -> Result<(), StorageError> {
    match key.len() {
        0 => Err(StorageError::InvalidKey {
            key: String::new(),
            reason: "empty key",
        }),
        n if n > MAX_KEY_BYTES => Err(StorageError::InvalidKey {
            key: key.to_string(),
            reason: "longer than 1024 bytes, S3's limit",
        }),
        _ => Ok(()),
    }
}

fn validate_app_prefix(prefix: &str) -> Result<(), StorageError> {
    match prefix.is_empty() {
        true => Ok(()),
        false => validate_app_key(prefix),
    }
}

/// A bucket's versioning state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioning {
    Enabled,
    Suspended,
    /// Never enabled.
    Off,
}

/// One version or delete marker as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedVersion {
    pub key: String,
    pub version_id: String,
    /// The server's clock, whole seconds as S3 lists it.
    pub last_modified: DateTime<Utc>,
    pub size: u64,
    pub etag: String,
    pub delete_marker: bool,
}

/// One current object of an unversioned listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentObject {
    pub key: String,
    pub last_modified: DateTime<Utc>,
    pub size: u64,
    pub etag: String,
}

/// One reading of the server's clock: its `Date` header (whole seconds, truncated) and
/// the local clock when the request went out and when the answer came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerReading {
    pub date: DateTime<Utc>,
    pub sent: DateTime<Utc>,
    pub received: DateTime<Utc>,
}

impl ServerReading {
    /// Bounds on (server clock − local clock): the server stamped a time in
    /// `[date, date + 1 s)` somewhere between `sent` and `received`.
    pub fn offset_bounds(&self) -> (Duration, Duration) {
        (
            self.date - self.received,
            self.date + Duration::seconds(1) - self.sent,
        )
    }

    /// A lower bound on the server's clock when it received the request: it answered at
    /// `date` or later, at most one round trip after receiving.
    pub fn received_no_earlier_than(&self) -> DateTime<Utc> {
        self.date - (self.received - self.sent)
    }

    fn from_capture(c: Captured) -> Option<ServerReading> {
        Some(ServerReading {
            date: c.date?,
            sent: c.sent?,
            received: c.received?,
        })
    }
}

/// A listing together with the clock reading of its first page.
#[derive(Debug, Clone)]
pub struct Listing<T> {
    /// Every entry; for versions, each key's entries newest first (S3's order).
    pub entries: Vec<T>,
    pub reading: ServerReading,
}

/// An object being read from the bucket.
pub struct BucketObject {
    pub etag: String,
    pub last_modified: Option<DateTime<Utc>>,
    pub body: std::pin::Pin<Box<dyn AsyncRead + Send>>,
}

/// The application bucket.
#[derive(Clone)]
pub struct AppBucket {
    client: Client,
    bucket: String,
    endpoint: String,
    parts: PartSizes,
}

impl fmt::Debug for AppBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppBucket")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl AppBucket {
    /// A client for `bucket`; `BucketMissing` when it does not exist.
    pub async fn connect(bucket: &str, options: &S3Options) -> Result<AppBucket, StorageError> {
        let b = Self::client_for(bucket, options).await;
        match b.exists().await? {
            true => Ok(b),
            false => Err(StorageError::BucketMissing {
                bucket: bucket.to_string(),
            }),
        }
    }

    /// A client for `bucket`, creating the bucket when it does not exist yet (restore into
    /// a new bucket). Returns whether it was created.
    pub async fn connect_or_create(
        bucket: &str,
        options: &S3Options,
    ) -> Result<(AppBucket, bool), StorageError> {
        let b = Self::client_for(bucket, options).await;
        if b.exists().await? {
            return Ok((b, false));
        }
        match b.client.create_bucket().bucket(bucket).send().await {
            Ok(_) => Ok((b, true)),
            Err(e) => Err(map_sdk_error(e, &b.call("CreateBucket", ""))),
        }
    }

    async fn client_for(bucket: &str, options: &S3Options) -> AppBucket {
        let (client, endpoint) = build_client(options).await;
        AppBucket {
            client,
            bucket: bucket.to_string(),
            endpoint,
            parts: options.parts,
        }
    }

    pub fn name(&self) -> &str {
        &self.bucket
    }

    fn call<'a>(&'a self, operation: &'static str, key: &'a str) -> Call<'a> {
        Call {
            operation,
            key,
            bucket: &self.bucket,
            endpoint: &self.endpoint,
        }
    }

    async fn exists(&self) -> Result<bool, StorageError> {
        bucket_exists(&self.client, &self.call("HeadBucket", "")).await
    }

    /// The bucket's versioning state.
    pub async fn versioning(&self) -> Result<Versioning, StorageError> {
        let out = self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| map_sdk_error(e, &self.call("GetBucketVersioning", "")))?;
        Ok(match out.status() {
            Some(BucketVersioningStatus::Enabled) => Versioning::Enabled,
            Some(BucketVersioningStatus::Suspended) => Versioning::Suspended,
            _ => Versioning::Off,
        })
    }

    /// Every version and delete marker under `prefix`, each key's newest first.
    pub async fn list_versions(
        &self,
        prefix: &str,
    ) -> Result<Listing<ListedVersion>, StorageError> {
        validate_app_prefix(prefix)?;
        let mut entries = Vec::new();
        let mut reading = None;
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        loop {
            let capture = Capture::default();
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .customize()
                .interceptor(capture.clone())
                .send()
                .await
                .map_err(|e| map_sdk_error(e, &self.call("ListObjectVersions", prefix)))?;
            let captured = capture.take();
            let order = captured.order.clone();
            reading = reading.or_else(|| ServerReading::from_capture(captured));
            let versions = page.versions().iter().map(|v| ListedVersion {
                key: v.key().unwrap_or_default().to_string(),
                version_id: v.version_id().unwrap_or("null").to_string(),
                last_modified: v.last_modified().and_then(to_chrono).unwrap_or_default(),
                size: size_of(v.size()),
                etag: v.e_tag().unwrap_or_default().trim_matches('"').to_string(),
                delete_marker: false,
            });
            let markers = page.delete_markers().iter().map(|m| ListedVersion {
                key: m.key().unwrap_or_default().to_string(),
                version_id: m.version_id().unwrap_or("null").to_string(),
                last_modified: m.last_modified().and_then(to_chrono).unwrap_or_default(),
                size: 0,
                etag: String::new(),
                delete_marker: true,
            });
            entries.extend(interleave(versions.collect(), markers.collect(), &order));
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() {
                break;
            }
        }
        Ok(Listing {
            entries,
            reading: reading.ok_or_else(|| self.no_date("ListObjectVersions", prefix))?,
        })
    }

    /// The current objects under `prefix` (for a bucket without versioning).
    pub async fn list_current(&self, prefix: &str) -> Result<Listing<CurrentObject>, StorageError> {
        validate_app_prefix(prefix)?;
        let mut entries = Vec::new();
        let mut reading = None;
        let mut token = None::<String>;
        loop {
            let capture = Capture::default();
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .customize()
                .interceptor(capture.clone())
                .send()
                .await
                .map_err(|e| map_sdk_error(e, &self.call("ListObjectsV2", prefix)))?;
            reading = reading.or_else(|| ServerReading::from_capture(capture.take()));
            entries.extend(page.contents().iter().map(|o| CurrentObject {
                key: o.key().unwrap_or_default().to_string(),
                last_modified: o.last_modified().and_then(to_chrono).unwrap_or_default(),
                size: size_of(o.size()),
                etag: o.e_tag().unwrap_or_default().trim_matches('"').to_string(),
            }));
            token = page.next_continuation_token().map(str::to_string);
            if page.is_truncated() != Some(true) || token.is_none() {
                break;
            }
        }
        Ok(Listing {
            entries,
            reading: reading.ok_or_else(|| self.no_date("ListObjectsV2", prefix))?,
        })
    }

    fn no_date(&self, operation: &'static str, key: &str) -> StorageError {
        StorageError::Backend {
            operation,
            key: key.to_string(),
            message: "the answer has no Date header, so the server's clock cannot be read"
                .to_string(),
            transient: false,
        }
    }

    /// Whether any object (current version) exists under `prefix`.
    pub async fn has_objects(&self, prefix: &str) -> Result<bool, StorageError> {
        validate_app_prefix(prefix)?;
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| map_sdk_error(e, &self.call("ListObjectsV2", prefix)))?;
        Ok(!page.contents().is_empty())
    }

    /// Whether `key` currently exists.
    pub async fn contains(&self, key: &str) -> Result<bool, StorageError> {
        validate_app_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match map_sdk_error(e, &self.call("HeadObject", key)) {
                StorageError::NotFound { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    /// Streams the current version of `key`.
    pub async fn get(&self, key: &str) -> Result<BucketObject, StorageError> {
        validate_app_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| map_sdk_error(e, &self.call("GetObject", key)))?;
        Ok(BucketObject {
            etag: out
                .e_tag()
                .unwrap_or_default()
                .trim_matches('"')
                .to_string(),
            last_modified: out.last_modified().and_then(to_chrono),
            body: Box::pin(out.body.into_async_read()),
        })
    }

    /// Server-side copy of version `version_id` of `src_key` in `source` to `dst_key` here
    /// (a new version when this bucket is versioned), with its content type and user
    /// metadata. Objects over the copy threshold (at most 5 GiB, `CopyObject`'s limit; `size`
    /// is the size tracking recorded) are copied part by part.
    pub async fn copy_version(
        &self,
        source: &AppBucket,
        src_key: &str,
        version_id: &str,
        size: u64,
        dst_key: &str,
    ) -> Result<(), StorageError> {
        validate_app_key(dst_key)?;
        let copy_source = format!(
            "{}/{}?versionId={}",
            source.bucket,
            percent_encode(src_key),
            percent_encode(version_id)
        );
        // An empty object (a `dir/` folder marker, typically) is written rather than
        // copied: there are no bytes to copy, and some S3 servers (SeaweedFS) cannot copy
        // a folder marker.
        if size == 0 || size > self.parts.copy_threshold {
            let head = source
                .client
                .head_object()
                .bucket(&source.bucket)
                .key(src_key)
                .version_id(version_id)
                .send()
                .await
                .map_err(|e| map_sdk_error(e, &source.call("HeadObject", src_key)))?;
            let size = size_of(head.content_length());
            let object = NewObject {
                metadata: head.metadata().cloned(),
                content_type: head.content_type().map(str::to_string),
                if_absent: false,
            };
            if size == 0 {
                return self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(dst_key)
                    .set_metadata(object.metadata)
                    .set_content_type(object.content_type)
                    .body(ByteStream::from_static(b""))
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| map_sdk_error(e, &self.call("PutObject", dst_key)));
            }
            return multipart::copy_object(
                &self.target(dst_key),
                &copy_source,
                size,
                &self.parts,
                object,
            )
            .await
            .map(drop);
        }
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .key(dst_key)
            .copy_source(copy_source)
            .send()
            .await
            .map(drop)
            .map_err(|e| map_sdk_error(e, &self.call("CopyObject", dst_key)))
    }

    /// Uploads a local file as `key`, in parts when it is over the upload threshold.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<(), StorageError> {
        validate_app_key(key)?;
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| StorageError::io(path, e))?
            .len();
        if size > self.parts.upload_threshold {
            return multipart::upload_file(
                &self.target(key),
                path,
                size,
                &self.parts,
                NewObject::default(),
            )
            .await
            .map(drop);
        }
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| StorageError::io(path, std::io::Error::other(e)))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body)
            .send()
            .await
            .map(drop)
            .map_err(|e| map_sdk_error(e, &self.call("PutObject", key)))
    }

    fn target<'a>(&'a self, key: &'a str) -> Target<'a> {
        Target {
            client: &self.client,
            bucket: &self.bucket,
            key,
            shown_key: key,
            endpoint: &self.endpoint,
        }
    }

    /// The SHA-256 (hex) of `key`'s bytes, at `version_id` or the current version, read
    /// as a stream.
    pub async fn sha256(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<String, StorageError> {
        validate_app_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .send()
            .await
            .map_err(|e| map_sdk_error(e, &self.call("GetObject", key)))?;
        let mut body = out.body.into_async_read();
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut body, &mut buf)
                .await
                .map_err(|e| StorageError::Backend {
                    operation: "GetObject",
                    key: key.to_string(),
                    message: e.to_string(),
                    transient: true,
                })?;
            if n == 0 {
                return Ok(hex::encode(sha.finish()));
            }
            sha.update(&buf[..n]);
        }
    }

    /// Deletes `key` without a version id: in a versioned bucket this adds a delete marker
    /// and keeps every version.
    pub async fn delete_current(&self, key: &str) -> Result<(), StorageError> {
        validate_app_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(drop)
            .map_err(|e| map_sdk_error(e, &self.call("DeleteObject", key)))
    }
}

/// Merges a page's versions and delete markers back into document order. When the
/// captured order does not fit (a server that formats differently), falls back to
/// key order with versions first, and the caller's timestamps decide.
fn interleave(
    versions: Vec<ListedVersion>,
    markers: Vec<ListedVersion>,
    order: &[EntryKind],
) -> Vec<ListedVersion> {
    let fits = order.len() == versions.len() + markers.len()
        && order.iter().filter(|k| **k == EntryKind::Version).count() == versions.len();
    if !fits {
        if !markers.is_empty() {
            tracing::warn!("cannot read the listing's entry order; ordering by time only");
        }
        let mut all: Vec<_> = versions.into_iter().chain(markers).collect();
        all.sort_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then(b.last_modified.cmp(&a.last_modified))
        });
        return all;
    }
    let (mut v, mut m) = (versions.into_iter(), markers.into_iter());
    order
        .iter()
        .filter_map(|kind| match kind {
            EntryKind::Version => v.next(),
            EntryKind::DeleteMarker => m.next(),
        })
        .collect()
}

/// Percent-encodes everything but unreserved characters and `/` (for `x-amz-copy-source`).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, id: &str, marker: bool) -> ListedVersion {
        ListedVersion {
            key: key.into(),
            version_id: id.into(),
            last_modified: DateTime::default(),
            size: 0,
            etag: String::new(),
            delete_marker: marker,
        }
    }

    #[test]
    fn versions_and_markers_interleave_in_document_order() {
        let versions = vec![entry("a", "3", false), entry("a", "1", false)];
        let markers = vec![entry("a", "2", true)];
        let order = [
            EntryKind::Version,
            EntryKind::DeleteMarker,
            EntryKind::Version,
        ];
        let ids: Vec<_> = interleave(versions, markers, &order)
            .into_iter()
            .map(|e| e.version_id)
            .collect();
        assert_eq!(ids, ["3", "2", "1"]);
    }

    #[test]
    fn any_legal_s3_key_is_an_application_key() {
        for key in [
            "dir/",
            "a//b",
            "/leading",
            "back\\slash",
            "x/../y",
            "./dot",
            "..",
            "tab\there",
            "ünï cödé",
        ] {
            assert!(validate_app_key(key).is_ok(), "{key:?}");
        }
        assert!(validate_app_key("").is_err());
        assert!(validate_app_key(&"k".repeat(1024)).is_ok());
        assert!(validate_app_key(&"k".repeat(1025)).is_err());
        assert!(validate_app_prefix("").is_ok());
        assert!(validate_app_prefix("/").is_ok());
    }

    #[test]
    fn copy_source_is_percent_encoded() {
        assert_eq!(percent_encode("a b/ü?x=1"), "a%20b/%C3%BC%3Fx%3D1");
    }

    #[test]
    fn clock_bounds_cover_the_truncated_date() {
        let t = |s: i64, ms: i64| DateTime::from_timestamp_millis(s * 1000 + ms).unwrap();
        let r = ServerReading {
            date: t(100, 0),
            sent: t(100, 200),
            received: t(100, 300),
        };
        let (lo, hi) = r.offset_bounds();
        assert_eq!((lo.num_milliseconds(), hi.num_milliseconds()), (-300, 800));
    }
}
