//! `S3Storage`: a repository in an S3 (or S3-compatible) bucket, under an optional prefix.
//!
//! Configuration comes from the standard AWS chain (environment, profiles, SSO, IMDS):
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_REGION` (default `us-east-1`),
//! `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL` for S3-compatible servers. HTTPS uses rustls
//! with ring. Requests use the SDK's standard retry (5 attempts, exponential backoff),
//! a 5 s connect timeout and a 60 s per-attempt timeout. `put_if_absent` relies on
//! `If-None-Match: *`. Files over 64 MiB are uploaded in 16 MiB parts streamed from disk
//! (both sizes are settings: `PartSizes`).

pub(crate) mod errors;
pub(crate) mod multipart;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls;
use chrono::{DateTime, Utc};
use tracing::{debug, warn};

use self::errors::{is_precondition_failure, map_sdk_error, Call};
use super::{
    validate_key, validate_metadata, validate_prefix, Body, GetObject, Metadata, ObjectHead,
    ObjectInfo, PutOutcome, Storage, StorageError,
};

const DEFAULT_REGION: &str = "us-east-1";
const MAX_ATTEMPTS: u32 = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
const PATH_STYLE_ENV: &str = "TIDEMARK_S3_PATH_STYLE";
const THRESHOLD_ENV: &str = "TIDEMARK_S3_MULTIPART_THRESHOLD";
const PART_SIZE_ENV: &str = "TIDEMARK_S3_PART_SIZE";
const MIB: u64 = 1 << 20;
/// S3's limit on a single `PutObject` or `CopyObject`, and on one part.
const SINGLE_REQUEST_LIMIT: u64 = 5 << 30;

/// When transfers switch to multipart, and the size of their parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSizes {
    /// Files larger than this are uploaded in parts (default 64 MiB).
    pub upload_threshold: u64,
    /// Server-side copies of objects larger than this are made part by part with
    /// `UploadPartCopy` (default and most 5 GiB, `CopyObject`'s limit).
    pub copy_threshold: u64,
    /// Part size (default 16 MiB, at least 5 MiB, S3's minimum); grown for objects that
    /// would need more than 10,000 parts.
    pub part_size: u64,
}

impl Default for PartSizes {
    fn default() -> Self {
        PartSizes {
            upload_threshold: 64 * MIB,
            copy_threshold: SINGLE_REQUEST_LIMIT,
            part_size: 16 * MIB,
        }
    }
}

impl PartSizes {
    /// `TIDEMARK_S3_MULTIPART_THRESHOLD` (both thresholds, copies at most 5 GiB) and
    /// `TIDEMARK_S3_PART_SIZE`, each in bytes or with a `KiB`, `MiB` or `GiB` suffix.
    fn from_env() -> Result<Self, StorageError> {
        let mut sizes = PartSizes::default();
        if let Some(threshold) = size_setting(THRESHOLD_ENV, 1, u64::MAX)? {
            sizes.upload_threshold = threshold;
            sizes.copy_threshold = threshold.min(SINGLE_REQUEST_LIMIT);
        }
        if let Some(part) = size_setting(PART_SIZE_ENV, 5 * MIB, SINGLE_REQUEST_LIMIT)? {
            sizes.part_size = part;
        }
        Ok(sizes)
    }
}

/// The byte size in environment variable `name`, refused outside `min..=max`.
fn size_setting(name: &'static str, min: u64, max: u64) -> Result<Option<u64>, StorageError> {
    let Ok(value) = std::env::var(name) else {
        return Ok(None);
    };
    parse_size(&value)
        .filter(|n| (min..=max).contains(n))
        .map(Some)
        .ok_or(StorageError::InvalidSetting { name, value })
}

/// `123`, `5MiB`, `1 GiB`, `64KiB`: bytes.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => MIB,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(unit)
}

/// S3 client settings beyond the standard AWS environment. `None` means "decide from the
/// endpoint": path-style addressing and checksums-only-when-required are on for custom
/// (non-AWS) endpoints and off for AWS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// Endpoint URL overriding `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    /// Path-style (`endpoint/bucket/key`) instead of virtual-hosted addressing.
    pub path_style: Option<bool>,
    /// Send and check checksums only when S3 requires them (some S3-compatible servers
    /// reject the SDK's default checksum headers).
    pub checksums_when_required: Option<bool>,
    /// Multipart thresholds and part size.
    pub parts: PartSizes,
}

impl S3Options {
    /// Options from the environment: `TIDEMARK_S3_PATH_STYLE` (`true`/`false`),
    /// `TIDEMARK_S3_MULTIPART_THRESHOLD` and `TIDEMARK_S3_PART_SIZE` (see `PartSizes`).
    pub fn from_env() -> Result<Self, StorageError> {
        let path_style = match std::env::var(PATH_STYLE_ENV) {
            Ok(v) => Some(parse_bool(&v).ok_or(StorageError::InvalidSetting {
                name: PATH_STYLE_ENV,
                value: v,
            })?),
            Err(_) => None,
        };
        Ok(S3Options {
            path_style,
            parts: PartSizes::from_env()?,
            ..S3Options::default()
        })
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A repository in an S3 bucket.
#[derive(Clone)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    /// The repository prefix with a trailing `/`, or empty.
    prefix: String,
    /// Where requests go, for error messages.
    endpoint: String,
    parts: PartSizes,
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Storage {
    /// Builds a client from the AWS environment and `options`, then checks that the bucket
    /// exists (`BucketMissing`, `Unreachable`, `AccessDenied` otherwise).
    pub async fn connect(
        bucket: &str,
        prefix: &str,
        options: &S3Options,
    ) -> Result<Self, StorageError> {
        let (client, endpoint) = build_client(options).await;
        debug!(bucket, prefix, %endpoint, "connecting to s3");
        let storage = S3Storage {
            client,
            bucket: bucket.to_string(),
            prefix: match prefix.trim_matches('/') {
                "" => String::new(),
                p => format!("{p}/"),
            },
            endpoint,
            parts: options.parts,
        };
        storage.check_bucket().await?;
        Ok(storage)
    }

    async fn check_bucket(&self) -> Result<(), StorageError> {
        match bucket_exists(&self.client, &self.call("HeadBucket", "")).await? {
            true => Ok(()),
            false => Err(StorageError::BucketMissing {
                bucket: self.bucket.clone(),
            }),
        }
    }

    fn call<'a>(&'a self, operation: &'static str, key: &'a str) -> Call<'a> {
        Call {
            operation,
            key,
            bucket: &self.bucket,
            endpoint: &self.endpoint,
        }
    }

    fn full_key(&self, key: &str) -> Result<String, StorageError> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    /// Single-request upload; `Ok(false)` when `if_absent` and the key exists.
    async fn put_object(
        &self,
        key: &str,
        body: &Body,
        meta: &Metadata,
        if_absent: bool,
    ) -> Result<bool, StorageError> {
        let stream = match body {
            Body::Bytes(b) => ByteStream::from(b.clone()),
            Body::File(path) => ByteStream::from_path(path)
                .await
                .map_err(|e| StorageError::io(path, std::io::Error::other(e)))?,
        };
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key)?)
            .set_metadata(Some(to_s3_metadata(meta)))
            .body(stream);
        if if_absent {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if if_absent && is_precondition_failure(&e) => Ok(false),
            Err(e) => Err(map_sdk_error(e, &self.call("PutObject", key))),
        }
    }

    /// Uploads with `put_object` or multipart as the body's size requires.
    async fn upload(
        &self,
        key: &str,
        body: &Body,
        meta: &Metadata,
        if_absent: bool,
    ) -> Result<bool, StorageError> {
        validate_metadata(meta)?;
        if let Body::File(path) = body {
            let size = tokio::fs::metadata(path)
                .await
                .map_err(|e| StorageError::io(path, e))?
                .len();
            if size > self.parts.upload_threshold {
                if if_absent && self.head(key).await?.is_some() {
                    return Ok(false);
                }
                let full_key = self.full_key(key)?;
                let target = multipart::Target {
                    client: &self.client,
                    bucket: &self.bucket,
                    key: &full_key,
                    shown_key: key,
                    endpoint: &self.endpoint,
                };
                let object = multipart::NewObject {
                    metadata: Some(to_s3_metadata(meta)),
                    content_type: None,
                    if_absent,
                };
                return multipart::upload_file(&target, path, size, &self.parts, object).await;
            }
        }
        self.put_object(key, body, meta, if_absent).await
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn put_if_absent(
        &self,
        key: &str,
        body: Body,
        meta: &Metadata,
    ) -> Result<PutOutcome, StorageError> {
        // A refusal followed by "absent" means the object was deleted in between: try again.
        for _ in 0..3 {
            if self.upload(key, &body, meta, true).await? {
                return Ok(PutOutcome::Created);
            }
            if let Some(head) = self.head(key).await? {
                return Ok(PutOutcome::Exists(head));
            }
        }
        Err(StorageError::Backend {
            operation: "PutObject",
            key: key.to_string(),
            message: "the object keeps appearing and disappearing; another writer is active"
                .to_string(),
            transient: true,
        })
    }

    async fn put(&self, key: &str, body: Body, meta: &Metadata) -> Result<(), StorageError> {
        self.upload(key, &body, meta, false).await.map(drop)
    }

    async fn get(&self, key: &str) -> Result<GetObject, StorageError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key)?)
            .send()
            .await
            .map_err(|e| map_sdk_error(e, &self.call("GetObject", key)))?;
        let head = ObjectHead {
            info: ObjectInfo {
                key: key.to_string(),
                size: size_of(out.content_length),
                last_modified: out.last_modified.as_ref().and_then(to_chrono),
            },
            metadata: from_s3_metadata(out.metadata.as_ref()),
        };
        Ok(GetObject {
            head,
            body: Box::pin(out.body.into_async_read()),
        })
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectHead>, StorageError> {
        let res = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key)?)
            .send()
            .await;
        match res {
            Ok(out) => Ok(Some(ObjectHead {
                info: ObjectInfo {
                    key: key.to_string(),
                    size: size_of(out.content_length),
                    last_modified: out.last_modified.as_ref().and_then(to_chrono),
                },
                metadata: from_s3_metadata(out.metadata.as_ref()),
            })),
            Err(e) => match map_sdk_error(e, &self.call("HeadObject", key)) {
                StorageError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        validate_prefix(prefix)?;
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}{prefix}", self.prefix))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_sdk_error(e, &self.call("ListObjectsV2", prefix)))?;
            for obj in page.contents() {
                let Some(key) = obj.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                out.push(ObjectInfo {
                    key: key.to_string(),
                    size: size_of(obj.size),
                    last_modified: obj.last_modified().and_then(to_chrono),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let res = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key)?)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) => match map_sdk_error(e, &self.call("DeleteObject", key)) {
                StorageError::NotFound { .. } => Ok(()),
                other => {
                    warn!(key, error = %other, "delete failed");
                    Err(other)
                }
            },
        }
    }
}

/// An S3 client from the AWS environment and `options`, and the endpoint it talks to (for
/// error messages). Shared by the repository backend and the application-bucket client.
pub(crate) async fn build_client(options: &S3Options) -> (Client, String) {
    let env_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()));
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .load()
        .await;
    let custom_endpoint = options
        .endpoint
        .clone()
        .or(env_endpoint)
        .or_else(|| sdk.endpoint_url().map(str::to_string));
    let region = sdk
        .region()
        .map_or(DEFAULT_REGION.to_string(), |r| r.to_string());
    let is_aws = custom_endpoint
        .as_deref()
        .is_none_or(|e| e.contains(".amazonaws.com"));
    let path_style = options.path_style.unwrap_or(custom_endpoint.is_some());
    let when_required = options.checksums_when_required.unwrap_or(!is_aws);

    let mut config = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(path_style);
    if sdk.region().is_none() {
        config = config.region(Region::new(DEFAULT_REGION));
    }
    if let Some(endpoint) = &options.endpoint {
        config = config.endpoint_url(endpoint);
    }
    if when_required {
        config = config
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    let endpoint = custom_endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    debug!(%endpoint, %region, path_style, when_required, "s3 client");
    (Client::from_conf(config.build()), endpoint)
}

/// Whether `call.bucket` exists. HEAD answers carry no error code: a bare 404 means no
/// such bucket.
pub(crate) async fn bucket_exists(client: &Client, call: &Call<'_>) -> Result<bool, StorageError> {
    match client.head_bucket().bucket(call.bucket).send().await {
        Ok(_) => Ok(true),
        Err(e) if errors::status(&e) == Some(404) => Ok(false),
        Err(e) => Err(map_sdk_error(e, call)),
    }
}

fn to_s3_metadata(meta: &Metadata) -> HashMap<String, String> {
    meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn from_s3_metadata(meta: Option<&HashMap<String, String>>) -> Metadata {
    meta.into_iter()
        .flatten()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}

pub(crate) fn size_of(len: Option<i64>) -> u64 {
    len.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

pub(crate) fn to_chrono(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("5MiB"), Some(5 << 20));
        assert_eq!(parse_size(" 1 GiB "), Some(1 << 30));
        assert_eq!(parse_size("64KiB"), Some(64 << 10));
        for bad in ["", "5MB", "-1", "1.5GiB", "99999999999999999999GiB"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn booleans_from_the_environment() {
        for (v, want) in [
            ("1", Some(true)),
            ("TRUE", Some(true)),
            ("off", Some(false)),
            ("maybe", None),
        ] {
            assert_eq!(parse_bool(v), want, "{v}");
        }
    }

    #[test]
    fn metadata_round_trips_through_s3_form() {
        let meta = Metadata::from([("crc32".to_string(), "00000001".to_string())]);
        let s3 = to_s3_metadata(&meta);
        assert_eq!(from_s3_metadata(Some(&s3)), meta);
        assert!(from_s3_metadata(None).is_empty());
    }
}
