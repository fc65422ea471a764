//! `--env-file`: the storage settings (`AWS_*`, `TIDEMARK_*`) a restored server's
//! `restore_command` needs, in a file only its owner can read, so `wal-fetch` reaches an
//! S3 repository with only what `restore` wrote — secrets never on a command line, and
//! never inside the data directory (where the next base backup would copy them).
//!
//! `restore` writes the file beside the data directory from its own environment; every
//! invocation names it with `--env-file`, read before the command line is parsed (so its
//! `TIDEMARK_*` values act as environment variables) and before any thread starts.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const OPTION: &str = "--env-file";

/// Why an environment file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error("cannot read the environment file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the environment file {} can be read by others (mode {mode:o}); HINT: chmod 600 it", path.display())]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("line {line} of the environment file {} is not NAME=VALUE with an AWS_ or TIDEMARK_S3_ name", path.display())]
    BadLine { path: PathBuf, line: usize },
    #[error("cannot write the environment file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Whether a variable is a storage setting that belongs in the file.
fn carried(name: &str) -> bool {
    (name.starts_with("AWS_") || name.starts_with("TIDEMARK_S3_"))
        && name.len() > 4
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Load the file named by `--env-file` into the environment, if one is named. Call
/// before any thread starts.
pub fn load_from_args() -> Result<(), EnvFileError> {
    let Some(path) = crate::cli::early_value(OPTION, None).map(PathBuf::from) else {
        return Ok(());
    };
    for (name, value) in read(&path)? {
        std::env::set_var(name, value);
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<(String, String)>, EnvFileError> {
    let read_err = |source| EnvFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    if meta.mode() & 0o077 != 0 {
        return Err(EnvFileError::TooOpen {
            path: path.to_path_buf(),
            mode: meta.mode() & 0o777,
        });
    }
    let text = fs::read_to_string(path).map_err(read_err)?;
    parse(&text).map_err(|line| EnvFileError::BadLine {
        path: path.to_path_buf(),
        line,
    })
}

/// `NAME=VALUE` lines (blank lines and `#` comments allowed); `Err(line number)`.
fn parse(text: &str) -> Result<Vec<(String, String)>, usize> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((name, value)) if carried(name) => out.push((name.to_string(), value.to_string())),
            _ => return Err(i + 1),
        }
    }
    Ok(out)
}

/// The storage settings in this process's environment, sorted.
pub fn current() -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(name, value)| carried(name) && !value.contains('\n'))
        .collect();
    vars.sort();
    vars
}

/// Write `vars` to `path` (mode 0600, owned by `owner` when given).
pub fn write(
    path: &Path,
    vars: &[(String, String)],
    owner: Option<(u32, u32)>,
) -> Result<(), EnvFileError> {
    let write_err = |source| EnvFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut text =
        String::from("# storage settings for tidemark wal-fetch, written by tidemark restore\n");
    for (name, value) in vars {
        text.push_str(&format!("{name}={value}\n"));
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(write_err)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(write_err)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(write_err)?;
    }
    file.write_all(text.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_storage_settings_and_refuses_anything_else() {
        assert_eq!(
            parse("# c\n\nAWS_REGION=eu-west-1\nAWS_SECRET_ACCESS_KEY=a=b\n"),
            Ok(vec![
                ("AWS_REGION".into(), "eu-west-1".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "a=b".into())
            ])
        );
        assert_eq!(parse("AWS_REGION=x\nPATH=/tmp\n"), Err(2));
        assert_eq!(parse("AWS_REGION\n"), Err(1));
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        fs::write(&path, "AWS_REGION=x\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read(&path), Err(EnvFileError::TooOpen { .. })));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&path).unwrap().len(), 1);
    }
}
