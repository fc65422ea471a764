//! The tracked buckets' side of `verify`: every pass record parses and describes its
//! bucket; every copy the records refer to (copy mode) is stored and holds the bytes its
//! name's SHA-256 says; every version they refer to (versions mode) is still in the
//! application bucket, with the size recorded — a lifecycle rule that expires
//! noncurrent versions would otherwise take the bucket's history away unseen.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};

use serde::Serialize;
use tidemark_store::bucket::AppBucket;
use tidemark_store::objects::{self, PassRecord, TrackMode, OBJECTS_PREFIX};
use tidemark_store::repository::{RepoError, Repository};
use tidemark_store::storage::S3Options;

use super::Problem;

/// What verifying one tracked bucket's history found.
#[derive(Debug, Clone, Serialize)]
pub struct BucketVerdict {
    pub bucket: String,
    /// `versions` or `copy`, as its newest pass.
    pub mode: &'static str,
    pub passes: usize,
    /// Copies the records refer to (copy mode).
    pub copies: usize,
    /// Versions the records refer to that were looked for in the application bucket.
    pub versions: usize,
    /// Whether every record, copy and version read back as recorded.
    pub sound: bool,
    /// Why the versions were not looked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The buckets' records, read; the copies still to read.
pub(super) struct Survey {
    pub verdicts: Vec<BucketVerdict>,
    /// Each copy to read: its key, its bucket's index in `verdicts`, its SHA-256.
    pub copies: Vec<(String, usize, String)>,
    pub problems: Vec<Problem>,
}

/// What a restore of `bucket` loses by a damaged or missing copy.
pub(super) fn loses(bucket: &str) -> String {
    format!("restores of bucket {bucket} cannot bring back the versions with these bytes")
}

/// Read every pass record under `objects/` and list the copies they refer to.
pub(super) async fn survey(
    repo: &Repository,
    app: Option<&S3Options>,
) -> Result<Survey, RepoError> {
    let listed = repo.list(OBJECTS_PREFIX).await?;
    let keys: HashSet<&str> = listed.iter().map(|i| i.key.as_str()).collect();
    let mut records: BTreeMap<String, Vec<PassRecord>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut damaged = HashSet::new();
    for info in &listed {
        let Some(bucket) = objects::pass_bucket(&info.key) else {
            continue;
        };
        match objects::read_pass(repo, &info.key, bucket).await {
            Ok(record) => records.entry(bucket.to_string()).or_default().push(record),
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                damaged.insert(bucket.to_string());
                records.entry(bucket.to_string()).or_default();
                problems.push(Problem {
                    key: info.key.clone(),
                    problem: e.to_string(),
                    loses: format!(
                        "restores of bucket {bucket} cannot use this pass: what it recorded is lost"
                    ),
                });
            }
        }
    }
    let mut verdicts = Vec::new();
    let mut copies = Vec::new();
    for (i, (bucket, recs)) in records.iter().enumerate() {
        let referenced = objects::referenced_blobs(recs);
        let mut sound = !damaged.contains(bucket);
        for sha in &referenced {
            let key = objects::blob_key(bucket, sha);
            if keys.contains(key.as_str()) {
                copies.push((key, i, sha.to_string()));
            } else {
                sound = false;
                problems.push(Problem {
                    key,
                    problem: "missing: pass records refer to this copy".into(),
                    loses: loses(bucket),
                });
            }
        }
        let mut verdict = BucketVerdict {
            bucket: bucket.clone(),
            mode: recs
                .iter()
                .max_by_key(|r| r.clock.at)
                .map_or("versions", |r| r.mode.as_str()),
            passes: recs.len(),
            copies: referenced.len(),
            versions: 0,
            sound,
            note: None,
        };
        let gone = versions_kept(bucket, recs, app, &mut verdict).await?;
        verdict.sound &= gone.is_empty();
        problems.extend(gone);
        verdicts.push(verdict);
    }
    Ok(Survey {
        verdicts,
        copies,
        problems,
    })
}

/// The versions `records` refer to (versions mode) that the application bucket no longer
/// holds as recorded. Without access to the bucket, none are looked for and `verdict`
/// says why.
async fn versions_kept(
    bucket: &str,
    records: &[PassRecord],
    app: Option<&S3Options>,
    verdict: &mut BucketVerdict,
) -> Result<Vec<Problem>, RepoError> {
    let wanted: BTreeMap<(&str, &str), u64> = records
        .iter()
        .filter(|r| r.mode == TrackMode::Versions)
        .flat_map(|r| &r.versions)
        .filter(|v| !v.delete_marker && !v.version_id.is_empty())
        .map(|v| ((v.key.as_str(), v.version_id.as_str()), v.size))
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let Some(app) = app else {
        verdict.note = Some("versions not looked for: no S3 settings for the bucket".into());
        return Ok(Vec::new());
    };
    let listed = async {
        let client = AppBucket::connect(bucket, app).await?;
        client.list_versions("").await
    };
    let listed = match listed.await {
        Ok(listed) => listed,
        Err(e) if e.is_transient() => {
            return Err(RepoError::Storage {
                key: format!("s3://{bucket}/"),
                source: e,
            })
        }
        Err(e) => {
            verdict.note = Some(format!("versions not looked for: {e}"));
            return Ok(Vec::new());
        }
    };
    verdict.versions = wanted.len();
    let held: HashMap<(&str, &str), u64> = listed
        .entries
        .iter()
        .filter(|v| !v.delete_marker)
        .map(|v| ((v.key.as_str(), v.version_id.as_str()), v.size))
        .collect();
    Ok(wanted
        .iter()
        .filter_map(|((key, version), size)| {
            let problem = match held.get(&(*key, *version)) {
                None => "missing: the bucket no longer holds this version (a lifecycle rule expiring noncurrent versions, or a deletion)".to_string(),
                Some(found) if found != size => {
                    format!("the history records {size} bytes, the bucket holds {found}")
                }
                Some(_) => return None,
            };
            Some(Problem {
                key: format!("s3://{bucket}/{key}?versionId={version}"),
                problem,
                loses: loses(bucket),
            })
        })
        .collect())
}

/// The SHA-256 (hex) of everything `r` yields.
pub(super) fn sha256(r: &mut dyn Read) -> io::Result<String> {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut buf)? {
            0 => break,
            n => digest.update(&buf[..n]),
        }
    }
    Ok(crate::manifest::hex(digest.finish().as_ref()))
}
