//! Multipart upload of a large local file: 16 MiB parts streamed from disk (a few in flight),
//! aborted on any failure so no orphaned parts are left to bill for.

use std::path::Path;

use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::{StreamExt, TryStreamExt};
use tracing::{debug, warn};

use super::errors::{is_precondition_failure, map_sdk_error};
use super::{to_s3_metadata, S3Storage, PART_SIZE};
use crate::storage::{Metadata, Storage, StorageError};

/// Parts uploaded concurrently.
const PARTS_IN_FLIGHT: usize = 4;

/// Uploads `path` (`size` bytes) to `key`. With `if_absent`, returns `Ok(false)` without
/// uploading when the key exists, and completes with `If-None-Match: *` so a concurrent
/// creator still wins cleanly.
pub(super) async fn upload(
    s3: &S3Storage,
    key: &str,
    path: &Path,
    size: u64,
    meta: &Metadata,
    if_absent: bool,
) -> Result<bool, StorageError> {
    if if_absent && s3.head(key).await?.is_some() {
        return Ok(false);
    }
    let full_key = s3.full_key(key)?;
    let created = s3
        .client
        .create_multipart_upload()
        .bucket(&s3.bucket)
        .key(&full_key)
        .set_metadata(Some(to_s3_metadata(meta)))
        .send()
        .await
        .map_err(|e| map_sdk_error(e, &s3.call("CreateMultipartUpload", key)))?;
    let upload_id = created.upload_id().unwrap_or_default().to_string();
    debug!(key, size, upload_id, "multipart upload started");

    let result =
        upload_parts_and_complete(s3, key, &full_key, &upload_id, path, size, if_absent).await;
    if !matches!(result, Ok(true)) {
        let abort = s3
            .client
            .abort_multipart_upload()
            .bucket(&s3.bucket)
            .key(&full_key)
            .upload_id(&upload_id)
            .send()
            .await;
        if let Err(e) = abort {
            let e = map_sdk_error(e, &s3.call("AbortMultipartUpload", key));
            warn!(key, upload_id, error = %e, "could not abort multipart upload");
        }
    }
    result
}

async fn upload_parts_and_complete(
    s3: &S3Storage,
    key: &str,
    full_key: &str,
    upload_id: &str,
    path: &Path,
    size: u64,
    if_absent: bool,
) -> Result<bool, StorageError> {
    let count = size.div_ceil(PART_SIZE);
    let mut parts: Vec<CompletedPart> = futures::stream::iter(0..count)
        .map(|i| upload_part(s3, key, full_key, upload_id, path, i, size))
        .buffer_unordered(PARTS_IN_FLIGHT)
        .try_collect()
        .await?;
    parts.sort_by_key(|p| p.part_number());
    let mut req = s3
        .client
        .complete_multipart_upload()
        .bucket(&s3.bucket)
        .key(full_key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        );
    if if_absent {
        req = req.if_none_match("*");
    }
    match req.send().await {
        Ok(_) => Ok(true),
        Err(e) if if_absent && is_precondition_failure(&e) => Ok(false),
        Err(e) => Err(map_sdk_error(e, &s3.call("CompleteMultipartUpload", key))),
    }
}

async fn upload_part(
    s3: &S3Storage,
    key: &str,
    full_key: &str,
    upload_id: &str,
    path: &Path,
    index: u64,
    size: u64,
) -> Result<CompletedPart, StorageError> {
    let offset = index * PART_SIZE;
    let length = PART_SIZE.min(size - offset);
    let body = ByteStream::read_from()
        .path(path)
        .offset(offset)
        .length(Length::Exact(length))
        .build()
        .await
        .map_err(|e| StorageError::io(path, std::io::Error::other(e)))?;
    // Part numbers start at 1 (S3 allows 10 000 parts: 156 GiB at 16 MiB).
    let part_number = i32::try_from(index + 1).map_err(|_| StorageError::Backend {
        operation: "UploadPart",
        key: key.to_string(),
        message: "file too large for a multipart upload".to_string(),
        transient: false,
    })?;
    let out = s3
        .client
        .upload_part()
        .bucket(&s3.bucket)
        .key(full_key)
        .upload_id(upload_id)
        .part_number(part_number)
        .body(body)
        .send()
        .await
        .map_err(|e| map_sdk_error(e, &s3.call("UploadPart", key)))?;
    Ok(CompletedPart::builder()
        .part_number(part_number)
        .set_e_tag(out.e_tag)
        .set_checksum_crc32(out.checksum_crc32)
        .set_checksum_crc32_c(out.checksum_crc32_c)
        .set_checksum_crc64_nvme(out.checksum_crc64_nvme)
        .set_checksum_sha1(out.checksum_sha1)
        .set_checksum_sha256(out.checksum_sha256)
        .build())
}
