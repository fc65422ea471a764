//! `RepoUrl`: where a repository lives, `s3://bucket/prefix` or `file:///absolute/path`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

const ACCEPTED: &str = "s3://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH";

/// A repository location as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoUrl {
    /// An S3 (or S3-compatible) bucket; `prefix` has no leading or trailing `/` and may be empty.
    S3 { bucket: String, prefix: String },
    /// A directory on a local or mounted filesystem.
    File { path: PathBuf },
}

/// A string that is not a repository URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid repository URL {value:?}: {reason}; HINT: use {ACCEPTED}")]
pub struct ParseRepoUrlError {
    /// The rejected value, as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for RepoUrl {
    type Err = ParseRepoUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| ParseRepoUrlError {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(fail("missing bucket name"));
            }
            check_bucket_name(bucket).map_err(|why| fail(&format!("bucket {bucket:?} {why}")))?;
            let prefix = prefix.trim_matches('/');
            if !prefix.is_empty()
                && prefix
                    .split('/')
                    .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            {
                return Err(fail("prefix has an empty, '.' or '..' segment"));
            }
            return Ok(RepoUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if s.starts_with("file:") {
            if !s.starts_with("file:///") {
                return Err(fail(
                    "file URLs need an absolute path and no host (three slashes)",
                ));
            }
            let url = ::url::Url::parse(s).map_err(|e| fail(&e.to_string()))?;
            if url.query().is_some() || url.fragment().is_some() {
                return Err(fail("file URLs take no query or fragment"));
            }
            let path = url
                .to_file_path()
                .map_err(|()| fail("not a local absolute path"))?;
            return Ok(RepoUrl::File { path });
        }
        match s.split_once("://") {
            Some((scheme, _)) => Err(fail(&format!("unknown scheme {scheme:?}"))),
            None => Err(fail("not a URL")),
        }
    }
}

/// S3's bucket naming rules (general purpose buckets).
fn check_bucket_name(b: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&b.len()) {
        return Err("must be 3 to 63 characters long");
    }
    if !b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
    {
        return Err("may hold only lowercase letters, digits, '.' and '-'");
    }
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !edge(b.as_bytes()[0]) || !edge(b.as_bytes()[b.len() - 1]) {
        return Err("must begin and end with a letter or digit");
    }
    if b.contains("..") {
        return Err("must not contain two adjacent periods");
    }
    if b.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("must not look like an IP address");
    }
    if b.starts_with("xn--") || b.starts_with("sthree-") || b.ends_with("-s3alias") {
        return Err("uses a prefix or suffix reserved by S3");
    }
    Ok(())
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            RepoUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            RepoUrl::File { path } => match ::url::Url::from_file_path(path) {
                Ok(url) => write!(f, "{url}"),
                // Only relative paths fail, and parsing never produces one.
                Err(()) => write!(f, "file://{}", path.display()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(bucket: &str, prefix: &str) -> RepoUrl {
        RepoUrl::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn parses_accepted_forms_and_round_trips() {
        for (text, want, shown) in [
            ("s3://my-bucket", s3("my-bucket", ""), "s3://my-bucket"),
            ("s3://my-bucket/", s3("my-bucket", ""), "s3://my-bucket"),
            (
                "s3://b.example/pg/main/",
                s3("b.example", "pg/main"),
                "s3://b.example/pg/main",
            ),
            (
                "file:///var/lib/tidemark",
                RepoUrl::File {
                    path: "/var/lib/tidemark".into(),
                },
                "file:///var/lib/tidemark",
            ),
            (
                "file:///tmp/with%20space",
                RepoUrl::File {
                    path: "/tmp/with space".into(),
                },
                "file:///tmp/with%20space",
            ),
        ] {
            let url: RepoUrl = text.parse().unwrap();
            assert_eq!(url, want, "{text}");
            assert_eq!(url.to_string(), shown);
            assert_eq!(shown.parse::<RepoUrl>().unwrap(), want);
        }
    }

    #[test]
    fn rejects_everything_else_with_the_value_and_accepted_forms() {
        for (bad, why) in [
            ("s3://", "missing bucket"),
            ("s3:///prefix", "missing bucket"),
            ("s3://ab", "3 to 63"),
            ("s3://My_Bucket", "lowercase"),
            ("s3://-bucket", "begin and end"),
            ("s3://a..b", "adjacent periods"),
            ("s3://192.168.1.1", "IP address"),
            ("s3://bucket/a//b", "empty"),
            ("s3://bucket/../x", "'..'"),
            ("gs://bucket", "unknown scheme \"gs\""),
            ("file://relative/path", "absolute path"),
            ("file:relative", "absolute path"),
            ("/var/lib/repo", "not a URL"),
            ("", "not a URL"),
        ] {
            let err = bad.parse::<RepoUrl>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(
                err.contains("s3://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH"),
                "{err}"
            );
        }
    }
}
