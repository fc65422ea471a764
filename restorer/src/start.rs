//! `restore --start`: run PostgreSQL on the restored directory until recovery reaches
//! its target (a standby: until it streams from its primary, or, archive-only, accepts
//! read-only connections), then report where it stopped — read from the server's own log
//! (with `lc_messages = C`), so no login to the restored cluster is needed. The server
//! keeps running afterwards (detached), unless the target action was `shutdown`.
//!
//! The binaries are those of the backup's major ([`find_bindir`], checked before anything
//! is restored); as root the server runs as `postgres`, and every restored directory is
//! handed to it without following a single link. When recovery fails, the server's own
//! FATAL and PANIC lines are the reason reported.

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
    /// Directory holding `postgres` of the backup's major (see [`find_bindir`]).
    pub bindir: PathBuf,
    /// Restored directories besides the data directory (the tablespaces): as root, they
    /// are handed to the server's user too.
    pub also_owned: Vec<PathBuf>,
    pub port: u16,
    /// How long recovery may take.
    pub timeout: Duration,
}

/// What `start_and_wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Recovery reaches its target and ends as the action says.
    Target(TargetAction),
    /// A standby's WAL receiver streams from the primary.
    Streaming,
    /// An archive-only standby accepts read-only connections (hot standby).
    ReadOnly,
}

/// PostgreSQL 14–18's WAL receiver, once it streams.
const STREAMING: &str = "started streaming WAL from primary";
/// A hot standby, once consistent.
const READ_ONLY: &str = "database system is ready to accept read-only connections";

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
    #[error("the backup is from PostgreSQL {major}, and no PostgreSQL {major} binaries were found (looked at {}); nothing was restored; HINT: install PostgreSQL {major}, or pass --pg-bin with the directory of its binaries", looked.join(", "))]
    NoBinaries { major: u32, looked: Vec<String> },
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
    #[error("PostgreSQL stopped during recovery: {reason}; the data directory is left as it is for inspection (log: {})", log.display())]
    Failed { reason: String, log: PathBuf },
    #[error("recovery ended and PostgreSQL was promoted, but {asked} at the target was asked: {reason}; the server was stopped and the data directory is left as it is for inspection (log: {})", log.display())]
    UnexpectedPromotion {
        asked: &'static str,
        reason: String,
        log: PathBuf,
    },
    #[error("recovery did not reach its target within {0:?}; PostgreSQL is still running")]
    Timeout(Duration),
    #[error("the standby did not start streaming from its primary within {timeout:?}: {reason}; PostgreSQL is still running as a standby (log: {}); HINT: check primary_conninfo (host, port, user, password or .pgpass of the server's user), the primary's pg_hba.conf replication line and max_wal_senders", log.display())]
    NotStreaming {
        timeout: Duration,
        reason: String,
        log: PathBuf,
    },
}

/// The major of the `postgres` in `bindir`, from `postgres --version`
/// ("postgres (PostgreSQL) 16.4 …"); `None` when there is none or it does not run.
fn bindir_major(bindir: &Path) -> Option<u32> {
    let out = Command::new(bindir.join("postgres"))
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split(')').nth(1)?.split_whitespace().next()?;
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The directory of PostgreSQL `major`'s binaries: `explicit` (`--pg-bin`) if given,
/// else the first of `/usr/lib/postgresql/<major>/bin`, `/opt/tidemark/pg/<major>/bin`,
/// `pg_config --bindir` and `postgres` on `PATH` whose `postgres --version` is that
/// major. Refuses, naming every place it looked, when none is.
pub fn find_bindir(major: u32, explicit: Option<&Path>) -> Result<PathBuf, StartError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    match explicit {
        Some(dir) => candidates.push(dir.to_path_buf()),
        None => {
            candidates.push(format!("/usr/lib/postgresql/{major}/bin").into());
            candidates.push(format!("/opt/tidemark/pg/{major}/bin").into());
            let pg_config = Command::new("pg_config")
                .arg("--bindir")
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output();
            if let Some(out) = pg_config.ok().filter(|o| o.status.success()) {
                let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if !dir.is_empty() {
                    candidates.push(dir.into());
                }
            }
            let path = std::env::var_os("PATH").unwrap_or_default();
            candidates
                .extend(std::env::split_paths(&path).filter(|d| d.join("postgres").is_file()));
        }
    }
    let mut looked = Vec::new();
    for dir in candidates {
        match bindir_major(&dir) {
            Some(m) if m == major => return Ok(dir),
            Some(m) => looked.push(format!("{} (PostgreSQL {m})", dir.display())),
            None => looked.push(format!("{} (no postgres)", dir.display())),
        }
    }
    Err(StartError::NoBinaries { major, looked })
}

/// The server's own reason for stopping: its FATAL and PANIC lines (the last few,
/// without the prefix), else the last lines of its log.
fn failure_reason(log: &str) -> String {
    let mut fatal: Vec<&str> = log
        .lines()
        .filter_map(|l| {
            ["FATAL:  ", "PANIC:  "]
                .iter()
                .find_map(|tag| l.split_once(tag).map(|(_, m)| m.trim()))
        })
        .collect();
    fatal.dedup();
    let lines: Vec<&str> = if fatal.is_empty() {
        log.lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect()
    } else {
        fatal.split_off(fatal.len().saturating_sub(3))
    };
    lines.join(" | ")
}

/// Whether the log says recovery ended and the server now runs as a primary.
fn promoted(log: &str) -> bool {
    log.contains("database system is ready to accept connections")
}

/// Start PostgreSQL on `pgdata` and wait for `goal`.
pub fn start_and_wait(
    pgdata: &Path,
    major: u32,
    opts: &StartOptions,
    goal: Goal,
) -> Result<Restored, StartError> {
    let io = |what: String| move |source| StartError::Io { what, source };
    let owner = server_owner();
    if let Some((uid, gid)) = owner {
        for dir in std::iter::once(pgdata).chain(opts.also_owned.iter().map(PathBuf::as_path)) {
            chown_tree(dir, uid, gid).map_err(io(format!("chown {}", dir.display())))?;
        }
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
        match progress(&text, goal, exited.is_some()) {
            Progress::Reached => return Ok(report(&text, goal, log, child.id())),
            Progress::Stopped(reason) => return Err(StartError::Failed { reason, log }),
            Progress::Promoted(reason) => {
                // Never wait for a pause or shutdown that cannot come: stop the primary
                // nobody asked for (fast shutdown) and say why recovery ended.
                // SAFETY: signalling the server this function started.
                unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
                let _ = child.wait();
                return Err(StartError::UnexpectedPromotion {
                    asked: match goal {
                        Goal::Target(TargetAction::Pause) => "a pause",
                        Goal::Target(_) => "a shutdown",
                        Goal::Streaming | Goal::ReadOnly => "a standby",
                    },
                    reason,
                    log,
                });
            }
            Progress::Recovering => {}
        }
        if started.elapsed() > opts.timeout {
            return Err(match goal {
                Goal::Streaming => StartError::NotStreaming {
                    timeout: opts.timeout,
                    reason: receiver_error(&text),
                    log,
                },
                _ => StartError::Timeout(opts.timeout),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where recovery is, read from the server's log.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Recovering,
    /// Ended as the target action said.
    Reached,
    /// The server exited otherwise; its reason.
    Stopped(String),
    /// Promoted although a pause or shutdown was asked; where recovery ended.
    Promoted(String),
}

/// Why a standby's WAL receiver does not stream: its last error in the log.
fn receiver_error(log: &str) -> String {
    log.lines()
        .rev()
        .find_map(|l| {
            ["FATAL:  ", "ERROR:  "]
                .iter()
                .find_map(|tag| l.split_once(tag).map(|(_, m)| m.trim().to_string()))
        })
        .unwrap_or_else(|| "the server logged no error".to_string())
}

fn progress(log: &str, goal: Goal, exited: bool) -> Progress {
    let reached = match goal {
        Goal::Target(TargetAction::Promote) => promoted(log),
        // PostgreSQL 14+ logs this when it pauses at the recovery target.
        Goal::Target(TargetAction::Pause) => log.contains("pausing at the end of recovery"),
        Goal::Target(TargetAction::Shutdown) => {
            exited && log.contains("shutdown at recovery target")
        }
        Goal::Streaming => !exited && log.contains(STREAMING),
        Goal::ReadOnly => !exited && log.contains(READ_ONLY),
    };
    if reached {
        Progress::Reached
    } else if exited {
        Progress::Stopped(failure_reason(log))
    } else if promoted(log) {
        let ended: Vec<&str> = log
            .lines()
            .filter(|l| {
                [
                    "recovery stopping",
                    "redo done at",
                    "selected new timeline ID",
                ]
                .iter()
                .any(|m| l.contains(m))
            })
            .map(|l| l.split_once("LOG:  ").map_or(l, |(_, m)| m).trim())
            .collect();
        Progress::Promoted(ended.join(" | "))
    } else {
        Progress::Recovering
    }
}

fn report(log: &str, goal: Goal, path: PathBuf, pid: u32) -> Restored {
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
        state: match goal {
            Goal::Target(TargetAction::Promote) => "promoted",
            Goal::Target(TargetAction::Pause) => "paused at the target",
            Goal::Target(TargetAction::Shutdown) => "shut down at the target",
            Goal::Streaming => "a standby, streaming from its primary",
            Goal::ReadOnly => "an archive-only standby, accepting read-only connections",
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
    let user = tidemark_protocol::os_user::named("postgres").ok()??;
    Some((user.uid, user.gid))
}

/// Give `path` and everything under it to `uid:gid`. Links are changed themselves
/// (`lchown`), never followed: a restored backup is outside input, and what its links
/// point at is not ours to give away.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let mut pending = vec![path.to_path_buf()];
    while let Some(path) = pending.pop() {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        if fs::symlink_metadata(&path)?.is_dir() {
            for entry in fs::read_dir(&path)? {
                pending.push(entry?.path());
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
        let r = report(
            log,
            Goal::Target(TargetAction::Promote),
            PathBuf::from("/x.log"),
            7,
        );
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

    #[test]
    fn a_failed_recovery_is_explained_by_the_servers_fatal_lines() {
        let log = "2026-11-21 10:00:00 UTC [1] LOG:  starting point-in-time recovery to 2026-11-21 09:30:00+00
2026-11-21 10:00:01 UTC [2] LOG:  redo done at 0/3000148
2026-11-21 10:00:01 UTC [2] FATAL:  recovery ended before configured recovery target was reached
2026-11-21 10:00:01 UTC [1] LOG:  startup process (PID 2) exited with exit code 1
2026-11-21 10:00:01 UTC [1] LOG:  terminating any other active server processes
2026-11-21 10:00:01 UTC [1] LOG:  database system is shut down";
        assert_eq!(
            failure_reason(log),
            "recovery ended before configured recovery target was reached"
        );
        assert_eq!(failure_reason("a\nb\nc\nd"), "b | c | d");
    }

    #[test]
    fn a_promotion_when_a_pause_was_asked_fails_at_once() {
        let log = "2026-11-21 10:00:01 UTC [2] LOG:  redo done at 0/3000148 system usage: CPU: user: 0.00 s
2026-11-21 10:00:01 UTC [2] LOG:  selected new timeline ID: 2
2026-11-21 10:00:01 UTC [1] LOG:  database system is ready to accept connections";
        for action in [TargetAction::Pause, TargetAction::Shutdown] {
            assert_eq!(
                progress(log, Goal::Target(action), false),
                Progress::Promoted(
                    "redo done at 0/3000148 system usage: CPU: user: 0.00 s | selected new timeline ID: 2"
                        .into()
                )
            );
        }
        assert_eq!(
            progress(log, Goal::Target(TargetAction::Promote), false),
            Progress::Reached
        );
        let paused = "LOG:  recovery stopping after commit\nLOG:  pausing at the end of recovery";
        assert_eq!(
            progress(paused, Goal::Target(TargetAction::Pause), false),
            Progress::Reached
        );
        let hot = "LOG:  database system is ready to accept read-only connections";
        assert_eq!(
            progress(hot, Goal::Target(TargetAction::Pause), false),
            Progress::Recovering
        );
        assert_eq!(
            progress(
                "FATAL:  could not open file \"x\": Permission denied",
                Goal::Target(TargetAction::Pause),
                true
            ),
            Progress::Stopped("could not open file \"x\": Permission denied".into())
        );
    }

    #[test]
    fn a_standby_is_up_when_it_streams_or_archive_only_when_it_accepts_reads() {
        let hot = "LOG:  database system is ready to accept read-only connections";
        assert_eq!(progress(hot, Goal::ReadOnly, false), Progress::Reached);
        assert_eq!(progress(hot, Goal::Streaming, false), Progress::Recovering);
        let failing =
            format!("{hot}\nFATAL:  could not connect to the primary server: connection refused");
        assert_eq!(
            progress(&failing, Goal::Streaming, false),
            Progress::Recovering
        );
        assert_eq!(
            receiver_error(&failing),
            "could not connect to the primary server: connection refused"
        );
        let streaming = format!(
            "{failing}\nLOG:  started streaming WAL from primary at 0/3000000 on timeline 1"
        );
        assert_eq!(
            progress(&streaming, Goal::Streaming, false),
            Progress::Reached
        );
        assert_eq!(
            report(&streaming, Goal::Streaming, PathBuf::from("/x.log"), 7).state,
            "a standby, streaming from its primary"
        );
    }
}
