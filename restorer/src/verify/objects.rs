//! The tracked buckets' side of `verify`: every pass record parses and describes its
//! bucket, and every copy the records refer to (copy mode) is stored and holds the bytes
//! its name's SHA-256 says. Versions mode keeps the bytes in the application bucket,
//! which `verify` does not read.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read};

use serde::Serialize;
use tidemark_store::objects::{self, PassRecord, OBJECTS_PREFIX};
use tidemark_store::repository::{RepoError, Repository};

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
    /// Whether every record and copy read back as recorded.
    pub sound: bool,
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
pub(super) async fn survey(repo: &Repository) -> Result<Survey, RepoError> {
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
        verdicts.push(BucketVerdict {
            bucket: bucket.clone(),
            mode: recs
                .iter()
                .max_by_key(|r| r.clock.at)
                .map_or("versions", |r| r.mode.as_str()),
            passes: recs.len(),
            copies: referenced.len(),
            sound,
        });
    }
    Ok(Survey {
        verdicts,
        copies,
        problems,
    })
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
