//! Default locations of the local catalog and its working directories, one set per
//! repository.

use std::path::PathBuf;

/// `$XDG_STATE_HOME/tidemark`, else `~/.local/state/tidemark`, else `./.tidemark`.
fn state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    match base {
        Some(b) => b.join("tidemark"),
        None => PathBuf::from(".tidemark"),
    }
}

/// A file name that identifies the repository URL unambiguously: letters and digits
/// stay, every other byte becomes `_` plus two hex digits.
fn slug(repo_url: &str) -> String {
    let mut out = String::with_capacity(repo_url.len());
    for b in repo_url.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

pub fn default_catalog(repo_url: &str) -> PathBuf {
    state_dir().join(format!("{}.db", slug(repo_url)))
}

/// Working directories sit beside the catalog: `<catalog>.<what>/` (the spool, backup
/// chunks, object copies).
pub fn beside_catalog(catalog: &std::path::Path, what: &str) -> PathBuf {
    let mut name = catalog.as_os_str().to_owned();
    name.push(".");
    name.push(what);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_distinct_and_safe() {
        assert_eq!(slug("s3://a/b"), "s3_3a_2f_2fa_2fb");
        assert_ne!(slug("s3://a/b"), slug("s3://a_b"));
        assert!(!slug("file:///x/../y").contains('/'));
        assert_eq!(
            beside_catalog(std::path::Path::new("/s/r.db"), "spool"),
            PathBuf::from("/s/r.db.spool")
        );
    }
}
