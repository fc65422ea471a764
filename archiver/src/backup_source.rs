//! Where a base backup is taken — the primary or a standby — and what that changes: a
//! standby makes no segment switch at the backup's end (its consistency WAL comes from the
//! archive of the primary's stream, a stored partial included), and a standby promoted
//! while its backup runs leaves a backup that is not consistent on one timeline.

use tidemark_protocol::replication::ReplicationError;
use tidemark_protocol::TimelineId;

use crate::error::ArchiverError;

/// SQLSTATE `object_not_in_prerequisite_state`, which PostgreSQL's backup stop raises for
/// "the standby was promoted during online backup".
const SQLSTATE_NOT_IN_PREREQUISITE_STATE: &str = "55000";

/// The server a backup is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Primary,
    /// A server in recovery (a streaming or archive-fed standby).
    Standby,
}

/// The source of a backup from a server that is `in_recovery` (or not), when the user
/// required a standby (`--from-standby`) or not. Requiring one of a primary is refused.
pub fn source(require_standby: bool, in_recovery: bool) -> Result<Source, ArchiverError> {
    match (require_standby, in_recovery) {
        (_, true) => Ok(Source::Standby),
        (true, false) => Err(ArchiverError::NotAStandby),
        (false, false) => Ok(Source::Primary),
    }
}

/// Refuse a standby backup whose start and stop timelines differ: the standby was promoted
/// (or followed its primary onto a new timeline) while it ran.
pub fn check_timelines(
    source: Source,
    start: TimelineId,
    stop: TimelineId,
) -> Result<(), ArchiverError> {
    if source == Source::Standby && start != stop {
        return Err(ArchiverError::StandbyPromoted {
            reason: format!("it started on timeline {start} and stopped on timeline {stop}"),
        });
    }
    Ok(())
}

/// A standby backup's failure as the promotion it reports, if it is one: PostgreSQL ends
/// the backup of a standby promoted meanwhile with an error (SQLSTATE 55000).
pub fn promoted(source: Source, err: ArchiverError) -> ArchiverError {
    match err {
        ArchiverError::Postgres(ReplicationError::Server(e))
            if source == Source::Standby
                && e.code == SQLSTATE_NOT_IN_PREREQUISITE_STATE
                && e.message.contains("promoted") =>
        {
            ArchiverError::StandbyPromoted {
                reason: format!("the server said: {}", e.message),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_protocol::replication::ServerError;

    #[test]
    fn a_standby_is_detected_with_or_without_the_flag_and_the_flag_refuses_a_primary() {
        assert_eq!(source(false, false).unwrap(), Source::Primary);
        assert_eq!(source(false, true).unwrap(), Source::Standby);
        assert_eq!(source(true, true).unwrap(), Source::Standby);
        assert!(matches!(
            source(true, false),
            Err(ArchiverError::NotAStandby)
        ));
    }

    #[test]
    fn a_standby_backup_across_a_timeline_switch_is_refused_a_primarys_never() {
        let (one, two) = (TimelineId(1), TimelineId(2));
        check_timelines(Source::Standby, one, one).unwrap();
        check_timelines(Source::Primary, one, two).unwrap();
        let err = check_timelines(Source::Standby, one, two).unwrap_err();
        assert!(matches!(err, ArchiverError::StandbyPromoted { .. }));
        let text = err.to_string();
        assert!(
            text.contains("timeline 1")
                && text.contains("timeline 2")
                && text.contains("incomplete"),
            "{text}"
        );
    }

    fn server(code: &str, message: &str) -> ArchiverError {
        ArchiverError::Postgres(ReplicationError::Server(ServerError {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }))
    }

    #[test]
    fn the_servers_promotion_error_becomes_a_standby_promoted_error_only_for_a_standby() {
        let said = "the standby was promoted during online backup";
        let err = promoted(Source::Standby, server("55000", said));
        assert!(
            matches!(&err, ArchiverError::StandbyPromoted { reason } if reason.contains(said)),
            "{err}"
        );
        for (source, code, message) in [
            (Source::Primary, "55000", said),
            (Source::Standby, "57P01", said),
            (Source::Standby, "55000", "some other prerequisite"),
        ] {
            let err = promoted(source, server(code, message));
            assert!(matches!(err, ArchiverError::Postgres(_)), "{err}");
        }
    }
}
