//! One `stream` per repository, spool and catalog (DESIGN invariant 9). Exclusive locks
//! on local files, taken before anything local is touched, keep two archivers on one
//! host apart; the repository lease `locks/stream.json`, renewed while streaming, keeps
//! archivers on different hosts apart. A second archiver is refused, naming the holder,
//! before it writes anything.

use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tidemark_store::crashsafe;
use tidemark_store::lease::{self, Lease, LeaseError};
use tidemark_store::repository::Repository;

use crate::error::ArchiverError;
use crate::uploads::with_retry;

/// The repository lease's name.
const LEASE: &str = "stream";
/// How long the lease outlives its last renewal: how long a crashed archiver keeps its
/// successor waiting.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often it is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// An exclusive lock on a local file, held until dropped (or the process dies).
#[derive(Debug)]
pub struct LocalLock {
    _file: File,
}

/// Lock `path` (created `0600`, in a `0700` directory if missing) for `what`, recording
/// this process in it; refused with the recorded holder when another process has it.
pub fn lock_local(path: &Path, what: &'static str) -> Result<LocalLock, ArchiverError> {
    let io = |source| ArchiverError::LocalLock {
        path: path.to_path_buf(),
        source,
    };
    crashsafe::create_private_dir(crashsafe::parent_dir(path)).map_err(io)?;
    let mut file = crashsafe::private_file_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(ArchiverError::SecondArchiver {
                what: what.to_string(),
                holder: holder.trim().to_string(),
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", lease::holder("tidemark stream")).map_err(io)?;
    Ok(LocalLock { _file: file })
}

/// Where `stream` locks its catalog: beside it (other commands share the catalog).
pub fn catalog_lock_path(catalog: &Path) -> PathBuf {
    let mut name = catalog.as_os_str().to_owned();
    name.push(".stream-lock");
    PathBuf::from(name)
}

/// Take the repository's stream lease. A holder that is this host's own dead archiver
/// (a crash, a `kill -9`) is waited out; a live one is refused.
pub async fn take_lease(repo: &Repository) -> Result<Lease, ArchiverError> {
    let me = lease::holder("tidemark stream");
    match Lease::take(repo, LEASE, &me, LEASE_TTL, Duration::ZERO).await {
        Err(LeaseError::Held { holder, until, .. }) if died_here(&holder) => {
            tracing::warn!(%holder, %until, "the previous archiver on this host died holding the repository lease; waiting for it to expire");
            let wait =
                (until - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(2);
            Ok(Lease::take(repo, LEASE, &me, LEASE_TTL, wait).await?)
        }
        Err(LeaseError::Held { holder, until, .. }) => Err(ArchiverError::SecondArchiver {
            what: format!("repository {} (lease held until {until})", repo.url),
            holder,
        }),
        other => Ok(other?),
    }
}

/// Renew `lease` for as long as it is awaited; returns only when it was lost to another
/// archiver, or renewing failed beyond the retry policy. Failures are retried as uploads
/// are: until the lease expires nobody can take it, and after that a taker is noticed
/// at the next renewal.
pub async fn keep_lease(lease: &Lease) -> ArchiverError {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let renewed = with_retry("renew the repository lease", || async {
            match lease.renew(LEASE_TTL).await {
                Err(LeaseError::Repository(e)) => Err(e),
                other => Ok(other),
            }
        })
        .await;
        match renewed {
            Ok(Ok(())) => {}
            Ok(Err(lost)) => return lost.into(),
            Err(e) => return e,
        }
    }
}

/// Whether `holder` (as `lease::holder` writes it) names a process of this host that is
/// no longer running.
fn died_here(holder: &str) -> bool {
    let Some((rest, pid)) = holder.rsplit_once(" (pid ") else {
        return false;
    };
    let Ok(pid) = pid.trim_end_matches(')').parse::<i32>() else {
        return false;
    };
    let me = lease::holder("tidemark stream");
    let this_host = me.rsplit_once(" (pid ").map(|(r, _)| r);
    if Some(rest) != this_host || pid == std::process::id() as i32 {
        return false;
    }
    // SAFETY: signal 0 only probes whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    !alive
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_local_lock_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/catalog.db.stream-lock");
        let first = lock_local(&path, "catalog").unwrap();
        let err = lock_local(&path, "catalog").unwrap_err();
        assert!(
            matches!(&err, ArchiverError::SecondArchiver { holder, .. } if holder.contains(&format!("(pid {})", std::process::id()))),
            "{err}"
        );
        drop(first);
        lock_local(&path, "catalog").unwrap();
    }

    #[test]
    fn only_dead_processes_of_this_host_are_waited_out() {
        let me = lease::holder("tidemark stream");
        assert!(!died_here(&me), "this process is alive");
        let host_part = me.rsplit_once(" (pid ").unwrap().0;
        // Pid 1 is alive on every Linux host.
        assert!(!died_here(&format!("{host_part} (pid 1)")));
        assert!(died_here(&format!("{host_part} (pid 999999999)")));
        assert!(!died_here("tidemark stream on elsewhere (pid 999999999)"));
        assert!(!died_here("unreadable lease"));
    }
}
