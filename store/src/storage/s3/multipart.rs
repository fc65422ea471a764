//! Multipart transfers, for the repository and the application bucket alike: a large local
//! file uploaded in parts streamed from disk, or a large object copied server-side part by
//! part (`UploadPartCopy`: `CopyObject` stops at 5 GiB). A few parts are in flight, memory
//! stays bounded by the SDK's buffers, and any failure aborts the upload so no orphaned
//! parts are left to bill for.

use std::future::Future;
use std::path::Path;

use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use futures::{StreamExt, TryStreamExt};
use tracing::{debug, warn};

use super::errors::{is_precondition_failure, map_sdk_error, Call};
use super::PartSizes;
use crate::storage::StorageError;

/// Parts transferred concurrently.
const PARTS_IN_FLIGHT: usize = 4;
/// S3's limit on the parts of one upload.
const MAX_PARTS: u64 = 10_000;

/// Where a multipart upload goes.
pub(crate) struct Target<'a> {
    pub client: &'a Client,
    pub bucket: &'a str,
    /// The key in the bucket.
    pub key: &'a str,
    /// The key as errors name it (repository-relative for the repository).
    pub shown_key: &'a str,
    pub endpoint: &'a str,
}

/// What the new object carries besides its bytes.
#[derive(Debug, Default)]
pub(crate) struct NewObject {
    pub metadata: Option<std::collections::HashMap<String, String>>,
    pub content_type: Option<String>,
    /// Complete with `If-None-Match: *`: `Ok(false)` when the key was created meanwhile.
    pub if_absent: bool,
}

impl Target<'_> {
    fn call(&self, operation: &'static str) -> Call<'_> {
        Call {
            operation,
            key: self.shown_key,
            bucket: self.bucket,
            endpoint: self.endpoint,
        }
    }
}

/// The part size for an object of `size` bytes: the configured one, grown so that the
/// object fits in S3's 10,000 parts.
pub(crate) fn part_size_for(sizes: &PartSizes, size: u64) -> u64 {
    sizes.part_size.max(size.div_ceil(MAX_PARTS))
}

/// Uploads the local file `path` (`size` bytes) in parts.
pub(crate) async fn upload_file(
    target: &Target<'_>,
    path: &Path,
    size: u64,
    sizes: &PartSizes,
    object: NewObject,
) -> Result<bool, StorageError> {
    let part = part_size_for(sizes, size);
    run(
        target,
        size,
        part,
        object,
        |upload_id, number, offset, length| {
            upload_part(target, upload_id, path, number, offset, length)
        },
    )
    .await
}

/// Copies `size` bytes from `copy_source` (`bucket/key?versionId=…`, percent-encoded) in
/// parts.
pub(crate) async fn copy_object(
    target: &Target<'_>,
    copy_source: &str,
    size: u64,
    sizes: &PartSizes,
    object: NewObject,
) -> Result<bool, StorageError> {
    let part = part_size_for(sizes, size);
    run(
        target,
        size,
        part,
        object,
        |upload_id, number, offset, length| {
            copy_part(target, upload_id, copy_source, number, offset, length)
        },
    )
    .await
}

/// Creates the upload, transfers every part with `part(upload_id, number, offset, length)`
/// and completes it; aborts it on any failure.
async fn run<F, Fut>(
    target: &Target<'_>,
    size: u64,
    part_size: u64,
    object: NewObject,
    part: F,
) -> Result<bool, StorageError>
where
    F: Fn(String, i32, u64, u64) -> Fut,
    Fut: Future<Output = Result<CompletedPart, StorageError>>,
{
    let created = target
        .client
        .create_multipart_upload()
        .bucket(target.bucket)
        .key(target.key)
        .set_metadata(object.metadata)
        .set_content_type(object.content_type)
        .send()
        .await
        .map_err(|e| map_sdk_error(e, &target.call("CreateMultipartUpload")))?;
    let upload_id = created.upload_id().unwrap_or_default().to_string();
    debug!(
        key = target.shown_key,
        size, part_size, upload_id, "multipart upload started"
    );
    let count = size.div_ceil(part_size).max(1);
    let parts = futures::stream::iter(0..count)
        .map(|i| {
            let offset = i * part_size;
            let length = part_size.min(size - offset);
            // At most 10,000 parts (`part_size_for`), so the number fits.
            let number = i32::try_from(i + 1).unwrap_or(i32::MAX);
            part(upload_id.clone(), number, offset, length)
        })
        .buffer_unordered(PARTS_IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await;
    let result = match parts {
        Ok(parts) => complete(target, &upload_id, parts, object.if_absent).await,
        Err(e) => Err(e),
    };
    if !matches!(result, Ok(true)) {
        abort(target, &upload_id).await;
    }
    result
}

async fn complete(
    target: &Target<'_>,
    upload_id: &str,
    mut parts: Vec<CompletedPart>,
    if_absent: bool,
) -> Result<bool, StorageError> {
    parts.sort_by_key(|p| p.part_number());
    let mut req = target
        .client
        .complete_multipart_upload()
        .bucket(target.bucket)
        .key(target.key)
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
        Err(e) => Err(map_sdk_error(e, &target.call("CompleteMultipartUpload"))),
    }
}

async fn abort(target: &Target<'_>, upload_id: &str) {
    let abort = target
        .client
        .abort_multipart_upload()
        .bucket(target.bucket)
        .key(target.key)
        .upload_id(upload_id)
        .send()
        .await;
    if let Err(e) = abort {
        let e = map_sdk_error(e, &target.call("AbortMultipartUpload"));
        warn!(key = target.shown_key, upload_id, error = %e, "could not abort multipart upload");
    }
}

async fn upload_part(
    target: &Target<'_>,
    upload_id: String,
    path: &Path,
    number: i32,
    offset: u64,
    length: u64,
) -> Result<CompletedPart, StorageError> {
    let body = ByteStream::read_from()
        .path(path)
        .offset(offset)
        .length(Length::Exact(length))
        .build()
        .await
        .map_err(|e| StorageError::io(path, std::io::Error::other(e)))?;
    let out = target
        .client
        .upload_part()
        .bucket(target.bucket)
        .key(target.key)
        .upload_id(upload_id)
        .part_number(number)
        .body(body)
        .send()
        .await
        .map_err(|e| map_sdk_error(e, &target.call("UploadPart")))?;
    Ok(CompletedPart::builder()
        .part_number(number)
        .set_e_tag(out.e_tag)
        .set_checksum_crc32(out.checksum_crc32)
        .set_checksum_crc32_c(out.checksum_crc32_c)
        .set_checksum_crc64_nvme(out.checksum_crc64_nvme)
        .set_checksum_sha1(out.checksum_sha1)
        .set_checksum_sha256(out.checksum_sha256)
        .build())
}

async fn copy_part(
    target: &Target<'_>,
    upload_id: String,
    copy_source: &str,
    number: i32,
    offset: u64,
    length: u64,
) -> Result<CompletedPart, StorageError> {
    let out = target
        .client
        .upload_part_copy()
        .bucket(target.bucket)
        .key(target.key)
        .upload_id(upload_id)
        .part_number(number)
        .copy_source(copy_source)
        .copy_source_range(format!("bytes={offset}-{}", offset + length - 1))
        .send()
        .await
        .map_err(|e| map_sdk_error(e, &target.call("UploadPartCopy")))?;
    let result = out.copy_part_result;
    Ok(CompletedPart::builder()
        .part_number(number)
        .set_e_tag(result.as_ref().and_then(|r| r.e_tag.clone()))
        .set_checksum_crc32(result.as_ref().and_then(|r| r.checksum_crc32.clone()))
        .set_checksum_crc32_c(result.as_ref().and_then(|r| r.checksum_crc32_c.clone()))
        .set_checksum_crc64_nvme(result.as_ref().and_then(|r| r.checksum_crc64_nvme.clone()))
        .set_checksum_sha1(result.as_ref().and_then(|r| r.checksum_sha1.clone()))
        .set_checksum_sha256(result.and_then(|r| r.checksum_sha256))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_so_any_object_fits_in_ten_thousand() {
        let sizes = PartSizes::default();
        assert_eq!(part_size_for(&sizes, 12 << 20), 16 << 20);
        let huge = 5u64 << 40;
        let part = part_size_for(&sizes, huge);
        assert!(huge.div_ceil(part) <= MAX_PARTS);
        assert!(part > sizes.part_size);
    }
}
