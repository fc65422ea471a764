//! `restore --start`: run PostgreSQL on the restored directory until recovery reaches
//! its target, then report where it stopped — read from the server's own log (with
//! `lc_messages = C`), so no login to the restored cluster is needed. The server keeps
//! running afterwards (detached), unless the target action was `shutdown`.

use std::fs::{self, File};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::restore::sibling;
use crate::target::TargetAction;

/// How to run the restored cluster.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Directory holding `postgres`.
    pub bindir: PathBuf,
    pub port: u16,
    /// How long recovery may take.
    pub timeout: Duration,
}

/// Where recovery stopped, as the server reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// "recovery stopping …" or "redo done at …", as logged.
    pub stop: Option<String>,
    /// The time of the last transaction replayed.
    pub last_transaction: Option<String>,
    /// The timeline the promoted cluster continues on.
    pub new_timeline: Option<String>,
    /// promoted, paused or shut down.
    pub state: &'static str,
    pub log: PathBuf,
    pub pid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot run {}: {source}; HINT: pass --pg-bin with the directory of PostgreSQL {major}'s binaries", path.display())]
    Spawn {
        path: PathBuf,
        major: u32,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("PostgreSQL stopped during recovery: {last_lines}; the data directory is left as it is for inspection (log: {})", log.display())]
    Failed { last_lines: String, log: PathBuf },
    #[error("recovery did not reach its target within {0:?}; PostgreSQL is still running")]
    Timeout(Duration),
}

/// Start PostgreSQL on `pgdata` and wait for recovery to end as `action` says.
pub fn start_and_wait(
    pgdata: &Path,
    major: u32,
    opts: &StartOptions,
    action: TargetAction,
) -> Result<Restored, StartError> {
    let io = |what: String| move |source| StartError::Io { what, source };
    let owner = server_owner();
    if let Some((uid, gid)) = owner {
        chown_tree(pgdata, uid, gid).map_err(io(format!("chown {}", pgdata.display())))?;
    }
    let log = sibling(pgdata, ".log");
    let log_file = File::create(&log).map_err(io(format!("create {}", log.display())))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&log, Some(uid), Some(gid))
            .map_err(io(format!("chown {}", log.display())))?;
    }
    let postgres = opts.bindir.join("postgres");
    let mut cmd = Command::new(&postgres);
    cmd.arg("-D")
        .arg(pgdata)
        .arg("-p")
        .arg(opts.port.to_string())
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "lc_messages=C"])
        .arg("-c")
        .arg(format!(
            "unix_socket_directories={}",
            std::env::temp_dir().display()
        ))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(io("log".into()))?)
        .stderr(log_file)
        .process_group(0);
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd.spawn().map_err(|source| StartError::Spawn {
        path: postgres.clone(),
        major,
        source,
    })?;
    let started = Instant::now();
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let exited = child.try_wait().map_err(io("wait for postgres".into()))?;
        let done = match action {
            TargetAction::Promote => {
                text.contains("database system is ready to accept connections")
            }
            // PostgreSQL 14+ logs this when it pauses at the recovery target.
            TargetAction::Pause => text.contains("pausing at the end of recovery"),
            TargetAction::Shutdown => {
                exited.is_some() && text.contains("shutdown at recovery target")
            }
        };
        if done {
            return Ok(report(&text, action, log, child.id()));
        }
        if exited.is_some() {
            let last_lines: Vec<&str> = text.lines().rev().take(3).collect();
            let last_lines: Vec<&str> = last_lines.into_iter().rev().collect();
            return Err(StartError::Failed {
                last_lines: last_lines.join(" | "),
                log,
            });
        }
        if started.elapsed() > opts.timeout {
            return Err(StartError::Timeout(opts.timeout));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn report(log: &str, action: TargetAction, path: PathBuf, pid: u32) -> Restored {
    let after = |needle: &str| {
        log.lines()
            .filter_map(|l| {
                l.split_once(needle)
                    .map(|(_, rest)| rest.trim().to_string())
            })
            .next_back()
    };
    Restored {
        stop: after("LOG:  recovery stopping ")
            .map(|s| format!("recovery stopping {s}"))
            .or_else(|| after("LOG:  redo done at ").map(|s| format!("redo done at {s}"))),
        last_transaction: after("last completed transaction was at log time "),
        new_timeline: after("selected new timeline ID: "),
        state: match action {
            TargetAction::Promote => "promoted",
            TargetAction::Pause => "paused at the target",
            TargetAction::Shutdown => "shut down at the target",
        },
        log: path,
        pid,
    }
}

/// `postgres` refuses root: when running as root, the server runs as the `postgres` user
/// (uid, gid); `None` when not root.
pub fn server_owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres") && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    } else if meta.file_type().is_symlink() {
        // Tablespace links: give the target tree too.
        if let Ok(target) = fs::canonicalize(path) {
            if target.is_dir() {
                chown_tree(&target, uid, gid)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_restored_point_from_the_server_log() {
        let log = "2026-11-21 10:00:00 UTC [1] LOG:  starting point-in-time recovery to 2026-11-21 09:30:00+00
2026-11-21 10:00:01 UTC [2] LOG:  recovery stopping before commit of transaction 742, time 2026-11-21 09:30:01.5+00
2026-11-21 10:00:01 UTC [2] LOG:  redo done at 0/3000148 system usage: CPU: user: 0.00 s
2026-11-21 10:00:01 UTC [2] LOG:  last completed transaction was at log time 2026-11-21 09:29:59.9+00
2026-11-21 10:00:01 UTC [2] LOG:  selected new timeline ID: 2
2026-11-21 10:00:01 UTC [1] LOG:  database system is ready to accept connections";
        let r = report(log, TargetAction::Promote, PathBuf::from("/x.log"), 7);
        assert_eq!(
            r.stop.as_deref(),
            Some(
                "recovery stopping before commit of transaction 742, time 2026-11-21 09:30:01.5+00"
            )
        );
        assert_eq!(
            r.last_transaction.as_deref(),
            Some("2026-11-21 09:29:59.9+00")
        );
        assert_eq!(r.new_timeline.as_deref(), Some("2"));
        assert_eq!(r.state, "promoted");
    }
}
