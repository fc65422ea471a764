//! Maps aws-sdk-s3 errors onto `StorageError`: one place that decides what is "not found",
//! "unreachable", "denied" and what is worth retrying.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::http::Response;

use crate::storage::StorageError;

/// What a failed call was doing, for error messages.
pub(crate) struct Call<'a> {
    pub operation: &'static str,
    /// Repository-relative key (or list prefix); empty for bucket-level calls.
    pub key: &'a str,
    pub bucket: &'a str,
    pub endpoint: &'a str,
}

/// The HTTP status of a service error, if the server answered.
pub(crate) fn status<E>(err: &SdkError<E, Response>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// True for the answers to a failed `If-None-Match: *`: 412, or 409 (a concurrent
/// conditional write in progress).
pub(crate) fn is_precondition_failure<E>(err: &SdkError<E, Response>) -> bool {
    matches!(err, SdkError::ServiceError(_)) && matches!(status(err), Some(412 | 409))
}

/// Maps a failed SDK call.
pub(crate) fn map_sdk_error<E>(err: SdkError<E, Response>, call: &Call<'_>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let backend = |err: &SdkError<E, Response>, transient| StorageError::Backend {
        operation: call.operation,
        key: call.key.to_string(),
        message: DisplayErrorContext(err).to_string(),
        transient,
    };
    match &err {
        SdkError::TimeoutError(_) => unreachable_endpoint(err, call),
        // Failures caused by the request itself (no credentials, bad endpoint URL) are
        // configuration errors; every other dispatch failure (refused, reset, closed
        // mid-message, timed out) is the network: worth retrying.
        SdkError::DispatchFailure(d) if !d.is_user() => unreachable_endpoint(err, call),
        SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_) => backend(&err, false),
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            let status = status(&err);
            match (err.code(), status) {
                (Some("NoSuchBucket"), _) => StorageError::BucketMissing {
                    bucket: call.bucket.to_string(),
                },
                (Some("NoSuchKey" | "NotFound"), _) | (_, Some(404)) => StorageError::NotFound {
                    key: call.key.to_string(),
                },
                (_, Some(403)) => StorageError::AccessDenied {
                    operation: call.operation,
                    target: format!("s3://{}/{}", call.bucket, call.key),
                    message: err
                        .message()
                        .or(err.code())
                        .unwrap_or("403 Forbidden")
                        .to_string(),
                },
                // Not worth retrying: the server lacks the feature (e.g. If-None-Match).
                (Some("NotImplemented"), _) | (_, Some(501)) => StorageError::Unsupported {
                    operation: call.operation,
                    key: call.key.to_string(),
                    message: err
                        .message()
                        .or(err.code())
                        .unwrap_or("501 Not Implemented")
                        .to_string(),
                },
                (
                    Some("SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable"),
                    _,
                ) => backend(&err, true),
                (_, Some(s)) => backend(&err, s >= 500 || s == 429 || s == 408),
                // A response we could not read: the connection probably broke.
                (_, None) => backend(&err, true),
            }
        }
        _ => backend(&err, false),
    }
}

fn unreachable_endpoint<E>(err: SdkError<E, Response>, call: &Call<'_>) -> StorageError
where
    E: std::error::Error + Send + Sync + 'static,
{
    StorageError::Unreachable {
        endpoint: call.endpoint.to_string(),
        source: root_cause(&err).into(),
    }
}

/// The innermost message of an error chain ("tcp connect error: Connection refused"),
/// which is what a user can act on; the SDK's outer layers only say "dispatch failure".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
