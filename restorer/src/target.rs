//! Recovery targets as a DBA gives them (`--target-time`, `--target-lsn`, …), validated
//! before anything is written: at most one target, times only with a zone.

use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use tidemark_protocol::{Lsn, TimelineId};

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the archived WAL.
    Latest,
    /// As soon as the base backup is consistent.
    Immediate,
    Time(DateTime<FixedOffset>),
    Lsn(Lsn),
    /// A restore point made with `pg_create_restore_point()`.
    Name(String),
    Xid(u64),
}

/// Which timeline recovery follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineTarget {
    Latest,
    Current,
    Id(TimelineId),
}

/// What PostgreSQL does at the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAction {
    Promote,
    Pause,
    Shutdown,
}

/// Which occurrence of a restore point name to stop at, when it was made more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Occurrence {
    /// The name must be unique in the archive.
    #[default]
    Only,
    Oldest,
    Newest,
    /// The n-th, counting from 1 at the oldest.
    Nth(usize),
}

impl std::str::FromStr for Occurrence {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "oldest" => Ok(Occurrence::Oldest),
            "newest" => Ok(Occurrence::Newest),
            n => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Occurrence::Nth(n)),
                _ => Err(TargetError::BadOccurrence(s.to_string())),
            },
        }
    }
}

/// The raw target options, as typed.
#[derive(Debug, Clone, Default)]
pub struct TargetArgs {
    pub time: Option<String>,
    pub lsn: Option<String>,
    pub name: Option<String>,
    pub xid: Option<String>,
    pub immediate: bool,
}

/// A target that cannot be used, with what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{0} targets given ({1}); HINT: give at most one of --target-time, --target-lsn, --target-name, --target-xid, --target-immediate")]
    Several(usize, String),
    #[error("target time {0:?} has no time zone; HINT: add one, e.g. \"2026-11-21 09:30:00+00\" or \"2026-11-21T09:30:00Z\"")]
    NoZone(String),
    #[error("target time {0:?} is not a time; HINT: use \"YYYY-MM-DD HH:MM:SS[.ffffff]+HH[:MM]\" or RFC 3339")]
    BadTime(String),
    #[error("target LSN {0:?} is not an LSN; HINT: use the X/Y form, e.g. 16/B374D848")]
    BadLsn(String),
    #[error("target xid {0:?} is not a transaction id; HINT: use a positive number")]
    BadXid(String),
    #[error("restore point name {0:?} is empty or longer than 63 bytes")]
    BadName(String),
    #[error("--target-occurrence {0:?} is not oldest, newest or a positive number")]
    BadOccurrence(String),
}

impl TargetArgs {
    /// The one target these options name (`Latest` when none).
    pub fn resolve(&self) -> Result<RecoveryTarget, TargetError> {
        let given: Vec<&str> = [
            self.time.as_ref().map(|_| "--target-time"),
            self.lsn.as_ref().map(|_| "--target-lsn"),
            self.name.as_ref().map(|_| "--target-name"),
            self.xid.as_ref().map(|_| "--target-xid"),
            self.immediate.then_some("--target-immediate"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() > 1 {
            return Err(TargetError::Several(given.len(), given.join(", ")));
        }
        if let Some(t) = &self.time {
            return parse_time(t).map(RecoveryTarget::Time);
        }
        if let Some(l) = &self.lsn {
            return l
                .trim()
                .parse()
                .map(RecoveryTarget::Lsn)
                .map_err(|_| TargetError::BadLsn(l.clone()));
        }
        if let Some(n) = &self.name {
            if n.is_empty() || n.len() > 63 {
                return Err(TargetError::BadName(n.clone()));
            }
            return Ok(RecoveryTarget::Name(n.clone()));
        }
        if let Some(x) = &self.xid {
            return match x.trim().parse::<u64>() {
                Ok(v) if v > 0 => Ok(RecoveryTarget::Xid(v)),
                _ => Err(TargetError::BadXid(x.clone())),
            };
        }
        Ok(if self.immediate {
            RecoveryTarget::Immediate
        } else {
            RecoveryTarget::Latest
        })
    }
}

/// A time with an explicit zone: RFC 3339, or PostgreSQL's own output form
/// (`2026-11-21 09:30:00.123+02`, `… +02:30`, `… UTC`).
pub fn parse_time(text: &str) -> Result<DateTime<FixedOffset>, TargetError> {
    let s = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t);
    }
    let utc_named = s
        .strip_suffix(" UTC")
        .or_else(|| s.strip_suffix(" GMT"))
        .or_else(|| s.strip_suffix('Z'));
    if let Some(naive) = utc_named {
        return parse_naive(naive.trim_end())
            .map(|n| n.and_utc().fixed_offset())
            .ok_or_else(|| TargetError::BadTime(text.to_string()));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Ok(t);
        }
        // chrono wants minutes in the offset; PostgreSQL prints "+02".
        if let Ok(t) = DateTime::parse_from_str(&format!("{s}00"), fmt) {
            return Ok(t);
        }
    }
    if parse_naive(s).is_some() {
        return Err(TargetError::NoZone(text.to_string()));
    }
    Err(TargetError::BadTime(text.to_string()))
}

fn parse_naive(s: &str) -> Option<NaiveDateTime> {
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d",
    ]
    .iter()
    .find_map(|fmt| {
        NaiveDateTime::parse_from_str(s, fmt).ok().or_else(|| {
            chrono::NaiveDate::parse_from_str(s, fmt)
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
    })
}

/// The form PostgreSQL's `recovery_target_time` reads without ambiguity.
pub fn postgres_time(t: &DateTime<FixedOffset>) -> String {
    t.with_timezone(&Utc)
        .format("%Y-%m-%d %H:%M:%S%.6f+00")
        .to_string()
}

impl fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryTarget::Latest => write!(f, "the end of the archived WAL"),
            RecoveryTarget::Immediate => write!(f, "the end of the base backup"),
            RecoveryTarget::Time(t) => write!(f, "time {}", postgres_time(t)),
            RecoveryTarget::Lsn(l) => write!(f, "LSN {l}"),
            RecoveryTarget::Name(n) => write!(f, "restore point {n:?}"),
            RecoveryTarget::Xid(x) => write!(f, "transaction {x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut TargetArgs)) -> TargetArgs {
        let mut a = TargetArgs::default();
        f(&mut a);
        a
    }

    #[test]
    fn times_need_a_zone() {
        let utc = |s: &str| parse_time(s).map(|t| t.with_timezone(&Utc).to_rfc3339());
        let want = Ok("2026-11-21T09:30:00+00:00".to_string());
        for ok in [
            "2026-11-21T09:30:00Z",
            "2026-11-21 09:30:00+00",
            "2026-11-21 11:30:00+02",
            "2026-11-21 11:30:00+02:00",
            "2026-11-21 09:30:00 UTC",
            "2026-11-21T04:00:00-05:30",
        ] {
            assert_eq!(utc(ok), want, "{ok}");
        }
        assert_eq!(
            utc("2026-11-21 09:30:00.123456+00"),
            Ok("2026-11-21T09:30:00.123456+00:00".into())
        );
        for zoneless in ["2026-11-21 09:30:00", "2026-11-21T09:30:00", "2026-11-21"] {
            assert_eq!(
                parse_time(zoneless),
                Err(TargetError::NoZone(zoneless.into()))
            );
        }
        for bad in ["yesterday", "2026-13-01 00:00:00+00", "09:30"] {
            assert!(
                matches!(parse_time(bad), Err(TargetError::BadTime(_))),
                "{bad}"
            );
        }
        let t = parse_time("2026-11-21 11:30:00.5+02").unwrap();
        assert_eq!(postgres_time(&t), "2026-11-21 09:30:00.500000+00");
    }

    #[test]
    fn one_target_at_most() {
        assert_eq!(TargetArgs::default().resolve(), Ok(RecoveryTarget::Latest));
        assert_eq!(
            args(|a| a.immediate = true).resolve(),
            Ok(RecoveryTarget::Immediate)
        );
        assert_eq!(
            args(|a| a.lsn = Some("0/3000028".into())).resolve(),
            Ok(RecoveryTarget::Lsn(Lsn(0x300_0028)))
        );
        assert_eq!(
            args(|a| a.xid = Some("735".into())).resolve(),
            Ok(RecoveryTarget::Xid(735))
        );
        let two = args(|a| {
            a.time = Some("2026-11-21 09:30:00+00".into());
            a.name = Some("before_upgrade".into());
        });
        assert!(matches!(two.resolve(), Err(TargetError::Several(2, _))));
        assert!(matches!(
            args(|a| a.lsn = Some("nope".into())).resolve(),
            Err(TargetError::BadLsn(_))
        ));
        assert!(matches!(
            args(|a| a.xid = Some("-1".into())).resolve(),
            Err(TargetError::BadXid(_))
        ));
        assert!(matches!(
            args(|a| a.name = Some("x".repeat(64))).resolve(),
            Err(TargetError::BadName(_))
        ));
        assert_eq!("newest".parse(), Ok(Occurrence::Newest));
        assert_eq!("2".parse(), Ok(Occurrence::Nth(2)));
        assert!(matches!(
            "0".parse::<Occurrence>(),
            Err(TargetError::BadOccurrence(_))
        ));
    }
}
