//! The one place that turns errors into a message line and an exit code.
//!
//! Exit codes (documented in docs/cli.md):
//! 0 success; 1 internal error; 2 usage or malformed input (`backup --from-standby` of a
//! primary too); 3 PostgreSQL unreachable,
//! refused the login or lacks privileges; 4 repository storage unreachable, missing or
//! denied; 5 the repository refused the operation (a backup whose WAL was not archived
//! in time or whose standby was promoted mid-backup, another cluster's repository, not
//! initialised, split-brain WAL, a bucket without versioning, an object target outside
//! the tracked window, a non-empty destination, a lease another process holds, storage
//! that ignores conditional puts, a delta restore over a running server); 6 local files
//! (catalog, spool) failed; 7 `status`: archiving lags the server by more than `--max-lag`
//! (`status` also exits 3 when the server, 4 when the repository does not answer);
//! 8 `verify`: something stored is damaged.
//! `wal-fetch` has its own contract with PostgreSQL: 0 restored, 1 absent, 200 failed
//! (1 in standby mode).

use tidemark_archiver::ArchiverError;
use tidemark_protocol::conninfo::ConnInfoError;
use tidemark_protocol::replication::ReplicationError;
use tidemark_restorer::delta::DeltaError;
use tidemark_restorer::objects::ObjectRestoreError;
use tidemark_restorer::plan::PlanError;
use tidemark_restorer::probe::ProbeError;
use tidemark_restorer::restore::RestoreError;
use tidemark_restorer::start::StartError;
use tidemark_restorer::target::TargetError;
use tidemark_restorer::unpack::UnpackError;
use tidemark_restorer::verify::VerifyError;
use tidemark_store::backup::BadBackupId;
use tidemark_store::catalog::CatalogError;
use tidemark_store::lease::LeaseError;
use tidemark_store::reindex::ReindexError;
use tidemark_store::repository::RepoError;
use tidemark_store::storage::StorageError;
use tidemark_store::url::ParseRepoUrlError;

pub const INTERNAL: u8 = 1;
pub const USAGE: u8 = 2;
pub const POSTGRES: u8 = 3;
pub const STORAGE: u8 = 4;
pub const REFUSED: u8 = 5;
pub const LOCAL: u8 = 6;
/// `status`: archiving lags the server by more than the bound.
pub const UNHEALTHY: u8 = 7;
/// `verify`: something stored is damaged (the report says what).
pub const DAMAGED: u8 = 8;
/// `wal-fetch`: the file is not in the repository (PostgreSQL: "not available").
pub const FETCH_ABSENT: u8 = 1;
/// `wal-fetch` failed for another reason in archive recovery: above 125 and not 143, so
/// PostgreSQL aborts recovery rather than ending it at the wrong point (invariant 6).
pub const FETCH_FATAL: u8 = 200;

/// A usage mistake caught by the binary itself; the text includes its hint.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub &'static str);

/// Report a command-line error. As `restore_command`, a malformed `wal-fetch` call must
/// not look like "file not found" (clap's usage status 2 would end recovery early), so it
/// exits with the fatal fetch status.
pub fn usage_exit(err: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    let informational = matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    let _ = err.print();
    if informational {
        return std::process::ExitCode::SUCCESS;
    }
    usage_status()
}

/// The exit status of a usage error: `USAGE`, except as `restore_command`.
pub fn usage_status() -> std::process::ExitCode {
    if std::env::args().any(|a| a == "wal-fetch") {
        return std::process::ExitCode::from(FETCH_FATAL);
    }
    std::process::ExitCode::from(USAGE)
}

/// The exit code and the one line to print for `err`: the causes joined by `: `, then
/// every `HINT:` any of them gave, so the advice always comes last.
pub fn describe(err: &anyhow::Error) -> (u8, String) {
    let mut what = Vec::new();
    let mut hints = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string().replace('\n', " ");
        match text.split_once("; HINT: ") {
            Some((msg, hint)) => {
                what.push(msg.to_string());
                hints.push(hint.to_string());
            }
            None => what.push(text),
        }
    }
    let mut line = what.join(": ");
    if !hints.is_empty() {
        line.push_str("; HINT: ");
        line.push_str(&hints.join("; "));
    }
    (code(err), line)
}

/// The exit code of an archiver error (a group member's is its own error's).
fn archiver_code(e: &ArchiverError) -> u8 {
    match e {
        ArchiverError::Postgres(_) => POSTGRES,
        ArchiverError::NotAStandby | ArchiverError::MetricsListen { .. } => USAGE,
        ArchiverError::Repository(e) => repo_code(e),
        ArchiverError::Catalog(e) => catalog_code(e),
        ArchiverError::Lease(LeaseError::Repository(e)) => repo_code(e),
        ArchiverError::Lease(LeaseError::Lapsed { .. }) => STORAGE,
        ArchiverError::Lease(LeaseError::Held { .. } | LeaseError::Lost { .. }) => REFUSED,
        ArchiverError::Spool(_) | ArchiverError::LocalLock { .. } => LOCAL,
        ArchiverError::NotInitialised { .. }
        | ArchiverError::Append(_)
        | ArchiverError::WalRemoved { .. }
        | ArchiverError::WalNotArchived { .. }
        | ArchiverError::StandbyPromoted { .. }
        | ArchiverError::BackupIdsExhausted { .. }
        | ArchiverError::Tar(_)
        | ArchiverError::DivergentTimeline { .. }
        | ArchiverError::OldTimeline { .. }
        | ArchiverError::BadHistory { .. }
        | ArchiverError::VersioningOff { .. }
        | ArchiverError::SecondArchiver { .. }
        | ArchiverError::GroupWrongCluster { .. }
        | ArchiverError::MarkExists { .. }
        | ArchiverError::SynchronousStandby { .. } => REFUSED,
        ArchiverError::Bucket { .. } => STORAGE,
        ArchiverError::Interrupted { .. } | ArchiverError::Task(_) => INTERNAL,
        ArchiverError::GroupMember { source, .. } => archiver_code(source),
    }
}

fn code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<Usage>() || cause.is::<ParseRepoUrlError>() || cause.is::<ConnInfoError>() {
            return USAGE;
        }
        if let Some(e) = cause.downcast_ref::<ArchiverError>() {
            return archiver_code(e);
        }
        if cause.is::<ReplicationError>() {
            return POSTGRES;
        }
        if let Some(e) = cause.downcast_ref::<RepoError>() {
            return repo_code(e);
        }
        if cause.is::<StorageError>() {
            return STORAGE;
        }
        if cause.is::<TargetError>() || cause.is::<BadBackupId>() {
            return USAGE;
        }
        if let Some(e) = cause.downcast_ref::<RestoreError>() {
            return match e {
                RestoreError::Repository(e) | RestoreError::Plan(PlanError::Repository(e)) => {
                    repo_code(e)
                }
                RestoreError::Plan(_)
                | RestoreError::NotEmpty(_)
                | RestoreError::Interrupted { .. }
                | RestoreError::ResumeOtherBackup { .. }
                | RestoreError::NotARepository => REFUSED,
                RestoreError::Unpack(UnpackError::Io { .. } | UnpackError::Check { .. })
                | RestoreError::Io { .. } => LOCAL,
                RestoreError::Unpack(_) => REFUSED,
                RestoreError::Delta(DeltaError::Io { .. }) => LOCAL,
                RestoreError::Delta(_) => REFUSED,
                RestoreError::Task(_) => INTERNAL,
            };
        }
        if let Some(e) = cause.downcast_ref::<ObjectRestoreError>() {
            return match e {
                ObjectRestoreError::Bucket { .. } => STORAGE,
                ObjectRestoreError::Repository(e) => repo_code(e),
                _ => REFUSED,
            };
        }
        if cause.is::<StartError>() || cause.is::<ProbeError>() {
            return LOCAL;
        }
        if let Some(e) = cause.downcast_ref::<PlanError>() {
            return match e {
                PlanError::Repository(e) => repo_code(e),
                _ => REFUSED,
            };
        }
        if let Some(e) = cause.downcast_ref::<VerifyError>() {
            return match e {
                VerifyError::Repo(e) => repo_code(e),
                VerifyError::NotARepository | VerifyError::UnknownBackup(_) => REFUSED,
            };
        }
        if let Some(e) = cause.downcast_ref::<ReindexError>() {
            return match e {
                ReindexError::Repository(e) => repo_code(e),
                ReindexError::Catalog(e) => catalog_code(e),
            };
        }
        if let Some(e) = cause.downcast_ref::<CatalogError>() {
            return catalog_code(e);
        }
    }
    INTERNAL
}

fn repo_code(e: &RepoError) -> u8 {
    if e.is_disk_full() {
        return LOCAL;
    }
    match e {
        RepoError::BadIdentity { .. }
        | RepoError::UnsupportedFormat { .. }
        | RepoError::OtherCluster { .. }
        | RepoError::SegmentSizeMismatch { .. }
        | RepoError::SplitBrain { .. }
        | RepoError::MissingChecksum { .. }
        | RepoError::BadDocument { .. }
        | RepoError::NoConditionalPut { .. } => REFUSED,
        RepoError::Open { .. }
        | RepoError::Storage { .. }
        | RepoError::Read { .. }
        | RepoError::Envelope { .. } => STORAGE,
        RepoError::Local { .. } | RepoError::IncompleteSegment { .. } => LOCAL,
        RepoError::Task { .. } => INTERNAL,
        RepoError::GaveUp { source, .. } => repo_code(source),
    }
}

fn catalog_code(e: &CatalogError) -> u8 {
    match e {
        CatalogError::OtherRepository { .. } | CatalogError::TooNew { .. } => REFUSED,
        _ => LOCAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_come_last_and_codes_follow_the_cause() {
        let err = anyhow::Error::new(Usage("bad --repo; HINT: use file:///path"))
            .context("cannot start; HINT: read the docs");
        let (code, line) = describe(&err);
        assert_eq!(code, USAGE);
        assert_eq!(
            line,
            "cannot start: bad --repo; HINT: read the docs; use file:///path"
        );
        let (code, line) = describe(&anyhow::anyhow!("boom\nsecond line"));
        assert_eq!((code, line.as_str()), (INTERNAL, "boom second line"));
    }
}
