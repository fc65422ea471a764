//! The `Storage` trait: the few object operations the repository needs, with one contract
//! shared by the S3 and filesystem backends.
//!
//! Keys are `/`-separated and relative to the repository root (the S3 prefix or the
//! directory). Hostile keys (absolute, empty segments, `.`/`..`, control characters) are
//! refused by every backend with `StorageError::InvalidKey`.

pub mod fs;
pub mod s3;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;

pub use fs::FsStorage;
pub use s3::{S3Options, S3Storage};

/// User metadata of an object: names match `[a-z0-9-]+`, values are short printable ASCII.
pub type Metadata = BTreeMap<String, String>;

/// What to store.
#[derive(Debug, Clone)]
pub enum Body {
    /// Bytes already in memory (small objects).
    Bytes(bytes::Bytes),
    /// A local file, streamed by the backend and never read whole into memory. The file
    /// must not change while the call runs.
    File(PathBuf),
}

/// One object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the repository root.
    pub key: String,
    /// Stored size in bytes.
    pub size: u64,
    /// When the backend last wrote it, if it says.
    pub last_modified: Option<DateTime<Utc>>,
}

/// An object's listing entry plus its user metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    pub info: ObjectInfo,
    pub metadata: Metadata,
}

/// An object being read: its head and a stream of its stored bytes.
pub struct GetObject {
    pub head: ObjectHead,
    pub body: Pin<Box<dyn AsyncRead + Send>>,
}

impl fmt::Debug for GetObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetObject")
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

/// Result of `Storage::put_if_absent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// This call created the object.
    Created,
    /// The key already held an object (left untouched); its head.
    Exists(ObjectHead),
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object does not exist.
    #[error("object {key} does not exist")]
    NotFound { key: String },
    /// The backend could not be reached (connection refused, DNS, timeout); retrying may help.
    #[error("cannot reach {endpoint}; HINT: check the endpoint URL, the network and that the server is up")]
    Unreachable {
        endpoint: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The S3 bucket does not exist.
    #[error("bucket {bucket} does not exist; HINT: create it or fix the repository URL")]
    BucketMissing { bucket: String },
    /// The credentials are not allowed to do this.
    #[error("access denied: {operation} {target}: {message}; HINT: check the credentials and the bucket policy")]
    AccessDenied {
        operation: &'static str,
        target: String,
        message: String,
    },
    /// The repository directory does not exist or is not a directory.
    #[error("repository directory {} does not exist; HINT: run tidemark init", path.display())]
    RootMissing { path: PathBuf },
    /// A local filesystem operation failed.
    #[error("i/o error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Any other error reported by the backend; `transient` tells whether retrying may help.
    #[error("{operation} {key} failed: {message}")]
    Backend {
        operation: &'static str,
        key: String,
        message: String,
        transient: bool,
    },
    /// The server does not implement what the request asked for (HTTP 501, `NotImplemented`).
    #[error("{operation} {key} is not supported by this server: {message}")]
    Unsupported {
        operation: &'static str,
        key: String,
        message: String,
    },
    /// A setting (environment variable or option) has a value tidemark cannot use.
    #[error("invalid {name}={value:?}; HINT: use true or false")]
    InvalidSetting { name: &'static str, value: String },
    /// The key is not a safe relative key (hostile or malformed input).
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// A metadata name or value cannot be stored.
    #[error("invalid metadata {name:?}: {reason}")]
    InvalidMetadata { name: String, reason: &'static str },
}

impl StorageError {
    /// True when the same call may succeed later (network trouble, server errors, throttling).
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Unreachable { .. } => true,
            StorageError::Backend { transient, .. } => *transient,
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Object storage for one repository. Implementations are cheap to share (`Arc<dyn Storage>`)
/// and safe to call concurrently.
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// Creates `key` only if it is absent. Atomic: no reader ever sees a partial object or an
    /// object without its metadata. When the key already exists, returns `Exists` with the
    /// existing object's head and modifies nothing. Of concurrent callers on one key, exactly
    /// one gets `Created`.
    async fn put_if_absent(
        &self,
        key: &str,
        body: Body,
        meta: &Metadata,
    ) -> Result<PutOutcome, StorageError>;

    /// Creates or replaces `key` atomically: readers see the old object or the new one,
    /// each with its own metadata, never a mix or a partial object.
    async fn put(&self, key: &str, body: Body, meta: &Metadata) -> Result<(), StorageError>;

    /// Streaming read of the stored bytes. `Err(StorageError::NotFound)` when absent, and only
    /// then. Errors while streaming surface as `io::Error`s from the body.
    async fn get(&self, key: &str) -> Result<GetObject, StorageError>;

    /// The object's head, `Ok(None)` when absent. A cheap point lookup (no listing).
    async fn head(&self, key: &str) -> Result<Option<ObjectHead>, StorageError>;

    /// All objects whose key starts with `prefix` (a plain string prefix, not only whole
    /// segments), sorted by key, paginating internally. Never shows backend-internal files.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError>;

    /// Removes `key` with its metadata; `Ok(())` if it was already absent.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
}

/// Refuses keys that are not safe relative keys: empty, absolute, with empty, `.` or `..`
/// segments, or with control characters or backslashes.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let bad = |reason| {
        Err(StorageError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty key");
    }
    if key.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    if key.starts_with('/') {
        return bad("absolute key");
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return bad("control character or backslash");
    }
    for seg in key.split('/') {
        match seg {
            "" => return bad("empty path segment"),
            "." | ".." => return bad("'.' or '..' segment"),
            _ => {}
        }
    }
    Ok(())
}

/// Refuses list prefixes that could escape the root: like keys, but may be empty and may end
/// with `/`.
pub fn validate_prefix(prefix: &str) -> Result<(), StorageError> {
    match prefix.strip_suffix('/').unwrap_or(prefix) {
        "" if prefix.is_empty() => Ok(()),
        trimmed => validate_key(trimmed).map_err(|_| StorageError::InvalidKey {
            key: prefix.to_string(),
            reason: "invalid list prefix",
        }),
    }
}

/// Refuses metadata that S3 and the filesystem sidecar cannot both store faithfully.
pub fn validate_metadata(meta: &Metadata) -> Result<(), StorageError> {
    let mut total = 0;
    for (name, value) in meta {
        let bad = |reason| {
            Err(StorageError::InvalidMetadata {
                name: name.clone(),
                reason,
            })
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        {
            return bad("names must match [a-z0-9-]+");
        }
        if !value.bytes().all(|c| (0x20..0x7f).contains(&c)) {
            return bad("values must be printable ASCII");
        }
        total += name.len() + value.len();
    }
    if total > 1800 {
        return Err(StorageError::InvalidMetadata {
            name: "*".to_string(),
            reason: "more than 1800 bytes in total (S3 allows 2 KiB)",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_keys_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "..",
            "../x",
            "a/../b",
            "a//b",
            "a/",
            "./a",
            "a/.",
            "a\\b",
            "a\0b",
            "a\nb",
        ] {
            assert!(
                matches!(validate_key(bad), Err(StorageError::InvalidKey { .. })),
                "{bad:?}"
            );
        }
        for good in [
            "tidemark.json",
            "wal/00000001/000000010000000000000001.zst",
            "a.b/..c",
        ] {
            validate_key(good).unwrap();
        }
        for good in ["", "wal/", "wal/0000", "wal/00000001/"] {
            validate_prefix(good).unwrap();
        }
        for bad in ["/", "../", "/wal", "wal//"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn metadata_rules() {
        let ok: Metadata = [
            ("crc32".into(), "0a1b2c3d".into()),
            ("start-lsn".into(), "0/1000000".into()),
        ]
        .into();
        validate_metadata(&ok).unwrap();
        for (k, v) in [
            ("Crc", "x"),
            ("a_b", "x"),
            ("", "x"),
            ("k", "é"),
            ("k", "a\nb"),
        ] {
            let m: Metadata = [(k.to_string(), v.to_string())].into();
            assert!(validate_metadata(&m).is_err(), "{k:?}={v:?}");
        }
        let big: Metadata = [("k".to_string(), "x".repeat(2000))].into();
        assert!(validate_metadata(&big).is_err());
    }
}
