//! Runs `restore_command` once, the way PostgreSQL will, before a restore writes anything:
//! through `sh -c`, as the server's OS user, with an empty environment but `PATH`, from
//! `/`. It asks for `00000001.history`, a file PostgreSQL never archives (timeline 1 has
//! no history), so a working command answers "not in the repository" (exit 1) after
//! reading the repository's identity. Anything else — a repository or binary the server's
//! user cannot read, storage settings that do not reach the command — is found now, not
//! when recovery starts.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Never archived by PostgreSQL: the probe's answer must be "not found".
const PROBE_FILE: &str = "00000001.history";

/// Why the server's user could not run `restore_command`.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot run restore_command as {user} to check it: {source}")]
    Spawn {
        user: String,
        #[source]
        source: std::io::Error,
    },
    #[error("restore_command fails when run as {user} (exit status {status}): {stderr}; HINT: the server runs it with only what tidemark wrote: give that user read access to the repository and the tidemark binary (a file:// repository written by another user is private to it; run the archiver as the server's user, or restore from S3), then rerun")]
    Fails {
        user: String,
        status: String,
        stderr: String,
    },
}

/// Run `command` (a `restore_command` value, `%f`/`%p`/`%%` placeholders) as `owner`
/// (uid, gid; `None`: the current user).
pub fn probe(command: &str, owner: Option<(u32, u32)>) -> Result<(), ProbeError> {
    let user = match owner {
        Some((uid, _)) => format!("the server's user (uid {uid})"),
        None => "the current user".to_string(),
    };
    let dest = std::env::temp_dir().join(format!("tidemark-probe-{}", std::process::id()));
    let line = substitute(command, PROBE_FILE, &dest);
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&line)
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    let out = cmd.output().map_err(|source| ProbeError::Spawn {
        user: user.clone(),
        source,
    })?;
    let _ = std::fs::remove_file(&dest);
    match out.status.code() {
        Some(0) | Some(1) => Ok(()),
        _ => Err(ProbeError::Fails {
            user,
            status: out.status.to_string(),
            stderr: last_line(&String::from_utf8_lossy(&out.stderr)),
        }),
    }
}

/// PostgreSQL's placeholders: `%f` the file name, `%p` the destination, `%%` a `%`.
fn substitute(command: &str, file: &str, dest: &Path) -> String {
    let mut out = String::new();
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('f') => out.push_str(file),
            Some('p') => out.push_str(&dest.display().to_string()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The command's last non-empty stderr line: its error.
fn last_line(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no error output)")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_as_postgresql_does() {
        let dest = Path::new("/tmp/x");
        assert_eq!(
            substitute("'a%%b' wal-fetch %f %p %r", "F", dest),
            "'a%b' wal-fetch F /tmp/x %r"
        );
    }

    #[test]
    fn a_command_that_answers_not_found_passes_and_one_that_fails_is_quoted() {
        probe("exit 1", None).unwrap();
        match probe("echo 'error: permission denied' >&2; exit 200", None) {
            Err(ProbeError::Fails { stderr, .. }) => {
                assert_eq!(stderr, "error: permission denied")
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}
