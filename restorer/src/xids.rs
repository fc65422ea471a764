//! Which transaction a `--target-xid` means, and which backups reach it. PostgreSQL
//! truncates `recovery_target_xid` to its low 32 bits and stops at the first transaction
//! end with those bits after the backup's start; so a 32-bit xid that ended in more than
//! one epoch is ambiguous, and a full xid (epoch × 2^32 + xid) is reached only from a
//! backup that starts after every earlier transaction sharing its low bits (its twins).

use tidemark_protocol::{xid, Lsn};
use tidemark_store::wal_summary::{FullXids, WalSummary};

use crate::target::Occurrence;

/// A WAL object whose summary may hold a transaction end with the target's low bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    /// The full xid it may hold, when the object's epochs are known.
    pub full: Option<u64>,
    /// Where the object starts and ends.
    pub start: Lsn,
    pub end: Lsn,
}

/// Whether `summary` may hold a transaction end with the low bits `low`: `Some(full)`
/// with the full xid when its epochs are known, `Some(None)` when they are not.
pub fn sighting(summary: &WalSummary, low: u32) -> Option<Option<u64>> {
    let holds = matches!((summary.xid_min, summary.xid_max),
        (Some(lo), Some(hi)) if lo <= low && low <= hi);
    if !holds {
        return None;
    }
    match summary.full_xids {
        FullXids::Range(a, b) => xid::next_with_low_bits(a, low)
            .filter(|f| *f <= b)
            .map(Some),
        FullXids::Unknown => Some(None),
        FullXids::None => None,
    }
}

/// Where the target transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidLocation {
    /// The start of the object it ended in.
    pub lsn: Lsn,
    /// A usable backup must start at or after this: the end of the last object before
    /// it that may hold a twin.
    pub not_before: Option<Lsn>,
    pub note: Option<String>,
}

/// Why the target cannot be told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XidChoice {
    /// The low bits ended in several epochs and no occurrence was chosen.
    Ambiguous { occurrences: String },
    /// `--target-occurrence K` beyond the epochs seen.
    NoSuchOccurrence { asked: usize, count: usize },
}

/// Resolve `target` (a full xid when above 2^32 - 1, else its low 32 bits alone) among
/// `sightings`, oldest first along the line. `Ok(None)`: not sighted.
pub fn locate(
    target: u64,
    occurrence: Occurrence,
    sightings: &[Sighting],
) -> Result<Option<XidLocation>, XidChoice> {
    let explicit = target > u64::from(u32::MAX);
    let mut epochs: Vec<u64> = Vec::new();
    for full in sightings.iter().filter_map(|s| s.full) {
        if !epochs.contains(&full) {
            epochs.push(full);
        }
    }
    let count = epochs.len().max(1);
    let pick = |n: usize| -> Result<usize, XidChoice> {
        match occurrence {
            Occurrence::Only if n == 1 => Ok(0),
            Occurrence::Only => Err(XidChoice::Ambiguous {
                occurrences: epochs
                    .iter()
                    .enumerate()
                    .map(|(i, f)| format!("{}: {f} ({})", i + 1, xid::display(*f)))
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
            Occurrence::Oldest => Ok(0),
            Occurrence::Newest => Ok(n - 1),
            Occurrence::Nth(k) if (1..=n).contains(&k) => Ok(k - 1),
            Occurrence::Nth(k) => Err(XidChoice::NoSuchOccurrence { asked: k, count: n }),
        }
    };
    let full = if explicit {
        Some(target)
    } else if epochs.len() > 1 {
        Some(epochs[pick(epochs.len())?])
    } else {
        pick(count)?;
        None
    };
    let Some(full) = full else {
        // One epoch (or none known): the first sighting, as PostgreSQL would stop there.
        return Ok(sightings.first().map(|s| XidLocation {
            lsn: s.start,
            not_before: None,
            note: None,
        }));
    };
    let at = sightings
        .iter()
        .position(|s| s.full == Some(full))
        .or_else(|| sightings.iter().position(|s| s.full.is_none()));
    let Some(at) = at else {
        return Ok(None);
    };
    let twins = &sightings[..at];
    let not_before = twins.iter().map(|s| s.end).max();
    let mut notes = Vec::new();
    if sightings[at].full.is_none() {
        notes.push(format!(
            "the epoch of transaction {full} ({}) could not be checked: the archiver had seen no checkpoint when it ended",
            xid::display(full)
        ));
    }
    if let Some(end) = not_before {
        notes.push(format!(
            "transaction {full} ({}) shares its low 32 bits with an earlier transaction end in the archive (by LSN {end}); PostgreSQL stops at the first, so only a backup starting after it is used",
            xid::display(full)
        ));
    }
    Ok(Some(XidLocation {
        lsn: sightings[at].start,
        not_before,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: u64 = 1 << 32;

    fn seen(full: Option<u64>, at: u64) -> Sighting {
        Sighting {
            full,
            start: Lsn(at << 20),
            end: Lsn((at + 1) << 20),
        }
    }

    fn summary(lo: u32, hi: u32, full: FullXids) -> WalSummary {
        WalSummary {
            xid_min: Some(lo),
            xid_max: Some(hi),
            full_xids: full,
            ..WalSummary::default()
        }
    }

    #[test]
    fn a_summary_sights_the_low_bits_in_its_epoch() {
        let known = summary(700, 900, FullXids::Range(EPOCH + 700, EPOCH + 900));
        assert_eq!(sighting(&known, 800), Some(Some(EPOCH + 800)));
        assert_eq!(sighting(&known, 901), None);
        let unknown = summary(700, 900, FullXids::Unknown);
        assert_eq!(sighting(&unknown, 800), Some(None));
        // Across a wraparound the 32-bit range covers everything; the full one does not.
        let wrapped = summary(3, u32::MAX, FullXids::Range(EPOCH - 4, EPOCH + 3));
        assert_eq!(sighting(&wrapped, 3), Some(Some(EPOCH + 3)));
        assert_eq!(sighting(&wrapped, u32::MAX - 1), Some(Some(EPOCH - 2)));
        assert_eq!(sighting(&wrapped, 500), None);
    }

    #[test]
    fn low_bits_in_two_epochs_are_ambiguous_until_one_is_chosen() {
        let s = [seen(Some(5000), 2), seen(Some(EPOCH + 5000), 9)];
        let err = locate(5000, Occurrence::Only, &s).unwrap_err();
        assert!(
            matches!(&err, XidChoice::Ambiguous { occurrences } if occurrences.contains("0:5000") && occurrences.contains("1:5000")),
            "{err:?}"
        );
        let oldest = locate(5000, Occurrence::Oldest, &s).unwrap().unwrap();
        assert_eq!((oldest.lsn, oldest.not_before), (Lsn(2 << 20), None));
        let newest = locate(5000, Occurrence::Nth(2), &s).unwrap().unwrap();
        assert_eq!(
            (newest.lsn, newest.not_before),
            (Lsn(9 << 20), Some(Lsn(3 << 20)))
        );
        assert_eq!(
            locate(5000, Occurrence::Nth(3), &s),
            Err(XidChoice::NoSuchOccurrence { asked: 3, count: 2 })
        );
    }

    #[test]
    fn a_full_xid_keeps_its_epoch_and_needs_a_backup_after_its_twins() {
        let s = [
            seen(None, 1),
            seen(Some(5000), 2),
            seen(Some(EPOCH + 5000), 9),
        ];
        let got = locate(EPOCH + 5000, Occurrence::Only, &s).unwrap().unwrap();
        assert_eq!(
            (got.lsn, got.not_before),
            (Lsn(9 << 20), Some(Lsn(3 << 20)))
        );
        assert!(got.note.unwrap().contains("1:5000"));
        // Not in the archive in its epoch: not sighted.
        assert_eq!(
            locate(2 * EPOCH + 5000, Occurrence::Only, &s[1..]),
            Ok(None)
        );
        // Its epoch unknown where it may be: there, with a note, after the known twin.
        let got = locate(2 * EPOCH + 5000, Occurrence::Only, &s)
            .unwrap()
            .unwrap();
        assert_eq!((got.lsn, got.not_before), (Lsn(1 << 20), None));
        assert!(got.note.unwrap().contains("could not be checked"));
    }

    #[test]
    fn one_epoch_resolves_as_postgresql_does() {
        let s = [seen(None, 1), seen(Some(5000), 2)];
        let got = locate(5000, Occurrence::Only, &s).unwrap().unwrap();
        assert_eq!(
            got,
            XidLocation {
                lsn: Lsn(1 << 20),
                not_before: None,
                note: None
            }
        );
        assert!(locate(5000, Occurrence::Newest, &s).is_ok());
        assert_eq!(
            locate(5000, Occurrence::Nth(2), &s),
            Err(XidChoice::NoSuchOccurrence { asked: 2, count: 1 })
        );
        assert_eq!(locate(5000, Occurrence::Only, &[]), Ok(None));
    }
}
