//! What a WAL object holds, for resolving recovery targets without replaying: the first
//! and last transaction-end times, the range of xids that ended (32-bit, as records carry
//! them, and with their epoch when a checkpoint before them gave it), and the restore
//! points.
//! The archiver decodes it as WAL streams in and stores it in the object's metadata (so
//! `reindex` and a catalog-less restore read it back); an object without it is unknown
//! ground, which planners must treat conservatively.

use chrono::{DateTime, Utc};
use tidemark_protocol::Lsn;

use crate::storage::Metadata;

const XACT_FIRST: &str = "xact-first";
const XACT_LAST: &str = "xact-last";
const XID_MIN: &str = "xid-min";
const XID_MAX: &str = "xid-max";
const FULL_XID_MIN: &str = "fxid-min";
const FULL_XID_MAX: &str = "fxid-max";
const RESTORE_POINTS: &str = "restore-points";
/// S3 allows 2 KiB of user metadata per object.
const MAX_RESTORE_POINTS_TEXT: usize = 1200;
/// Present (`complete`) only when every record ending in the object was decoded.
const EVENTS: &str = "events";

/// A restore point found in the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePoint {
    pub lsn: Lsn,
    pub name: String,
    pub time: DateTime<Utc>,
}

/// The summary of one WAL object (records are counted where they end).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalSummary {
    pub first_xact: Option<DateTime<Utc>>,
    pub last_xact: Option<DateTime<Utc>>,
    pub xid_min: Option<u32>,
    pub xid_max: Option<u32>,
    pub full_xids: FullXids,
    pub restore_points: Vec<RestorePoint>,
}

/// The xids that ended in an object, with their epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FullXids {
    /// No transaction ended in it.
    #[default]
    None,
    /// The smallest and largest full xid that ended.
    Range(u64, u64),
    /// Some ended before the archiver knew the epoch (no checkpoint decoded yet).
    Unknown,
}

impl WalSummary {
    /// A transaction ended (commit or abort, prepared or not) at `time`; `full` is its xid
    /// with the epoch, when known.
    pub fn xact(&mut self, xid: u32, full: Option<u64>, time: DateTime<Utc>) {
        self.full_xids = match (self.full_xids, full) {
            (FullXids::Unknown, _) | (_, None) => FullXids::Unknown,
            (FullXids::None, Some(f)) => FullXids::Range(f, f),
            (FullXids::Range(a, b), Some(f)) => FullXids::Range(a.min(f), b.max(f)),
        };
        self.first_xact = Some(self.first_xact.map_or(time, |t| t.min(time)));
        self.last_xact = Some(self.last_xact.map_or(time, |t| t.max(time)));
        self.xid_min = Some(self.xid_min.map_or(xid, |x| x.min(xid)));
        self.xid_max = Some(self.xid_max.map_or(xid, |x| x.max(xid)));
    }

    /// Metadata entries for a complete summary.
    pub fn metadata(&self) -> Metadata {
        let mut m = Metadata::from([(EVENTS.to_string(), "complete".to_string())]);
        let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        if let (Some(a), Some(b)) = (&self.first_xact, &self.last_xact) {
            m.insert(XACT_FIRST.into(), time(a));
            m.insert(XACT_LAST.into(), time(b));
        }
        if let (Some(a), Some(b)) = (self.xid_min, self.xid_max) {
            m.insert(XID_MIN.into(), a.to_string());
            m.insert(XID_MAX.into(), b.to_string());
        }
        if let FullXids::Range(a, b) = self.full_xids {
            m.insert(FULL_XID_MIN.into(), a.to_string());
            m.insert(FULL_XID_MAX.into(), b.to_string());
        }
        if !self.restore_points.is_empty() {
            // lsn,time,hex(name);… — metadata is ASCII, names need not be.
            let list: Vec<String> = self
                .restore_points
                .iter()
                .map(|r| {
                    format!(
                        "{},{},{}",
                        r.lsn,
                        time(&r.time),
                        hex::encode(r.name.as_bytes())
                    )
                })
                .collect();
            let list = list.join(";");
            if list.len() > MAX_RESTORE_POINTS_TEXT {
                // Too many for object metadata: leave the object unknown (conservative).
                return Metadata::new();
            }
            m.insert(RESTORE_POINTS.into(), list);
        }
        m
    }

    /// The summary stored in `m`; `None` when the object has none (or a damaged one).
    pub fn from_metadata(m: &Metadata) -> Option<WalSummary> {
        if m.get(EVENTS).map(String::as_str) != Some("complete") {
            return None;
        }
        let time = |k: &str| -> Option<Option<DateTime<Utc>>> {
            match m.get(k) {
                None => Some(None),
                Some(v) => DateTime::parse_from_rfc3339(v)
                    .ok()
                    .map(|t| Some(t.with_timezone(&Utc))),
            }
        };
        fn number<T: std::str::FromStr>(m: &Metadata, k: &str) -> Option<Option<T>> {
            match m.get(k) {
                None => Some(None),
                Some(v) => v.parse().ok().map(Some),
            }
        }
        let (xid_min, xid_max) = (number(m, XID_MIN)?, number(m, XID_MAX)?);
        let full_xids = match (number(m, FULL_XID_MIN)?, number(m, FULL_XID_MAX)?) {
            (Some(a), Some(b)) => FullXids::Range(a, b),
            // Summarised before epochs were recorded, or before the epoch was known.
            _ if xid_min.is_some() => FullXids::Unknown,
            _ => FullXids::None,
        };
        let mut restore_points = Vec::new();
        if let Some(list) = m.get(RESTORE_POINTS) {
            for item in list.split(';') {
                let mut parts = item.splitn(3, ',');
                let lsn = parts.next()?.parse().ok()?;
                let time = DateTime::parse_from_rfc3339(parts.next()?)
                    .ok()?
                    .with_timezone(&Utc);
                let name = String::from_utf8(hex::decode(parts.next()?).ok()?).ok()?;
                restore_points.push(RestorePoint { lsn, name, time });
            }
        }
        Some(WalSummary {
            first_xact: time(XACT_FIRST)?,
            last_xact: time(XACT_LAST)?,
            xid_min,
            xid_max,
            full_xids,
            restore_points,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn round_trips_through_metadata() {
        let t = |s: i64| Utc.timestamp_opt(1_800_000_000 + s, 123_456_000).unwrap();
        let mut s = WalSummary::default();
        assert_eq!(WalSummary::from_metadata(&s.metadata()), Some(s.clone()));
        const EPOCH: u64 = 1 << 32;
        s.xact(900, Some(2 * EPOCH + 900), t(5));
        s.xact(700, Some(2 * EPOCH + 700), t(1));
        s.xact(800, Some(2 * EPOCH + 800), t(9));
        s.restore_points.push(RestorePoint {
            lsn: Lsn(0x1_0000_0028),
            name: "before upgrade; ünï".into(),
            time: t(3),
        });
        let m = s.metadata();
        assert!(m.values().all(|v| v.is_ascii()));
        let back = WalSummary::from_metadata(&m).unwrap();
        assert_eq!(back, s);
        assert_eq!((back.first_xact, back.last_xact), (Some(t(1)), Some(t(9))));
        assert_eq!((back.xid_min, back.xid_max), (Some(700), Some(900)));
        assert_eq!(
            back.full_xids,
            FullXids::Range(2 * EPOCH + 700, 2 * EPOCH + 900)
        );
        // One transaction of unknown epoch makes the object's epochs unknown, and so
        // does a summary written before epochs were recorded.
        let mut mixed = s.clone();
        mixed.xact(950, None, t(10));
        let back = WalSummary::from_metadata(&mixed.metadata()).unwrap();
        assert_eq!(back.full_xids, FullXids::Unknown);
        let mut old = m.clone();
        old.retain(|k, _| !k.starts_with("fxid-"));
        assert_eq!(
            WalSummary::from_metadata(&old).unwrap().full_xids,
            FullXids::Unknown
        );
        // No summary, or a damaged one, is unknown.
        assert_eq!(WalSummary::from_metadata(&Metadata::new()), None);
        let mut bad = m.clone();
        bad.insert(XACT_LAST.into(), "yesterday".into());
        assert_eq!(WalSummary::from_metadata(&bad), None);
    }
}
