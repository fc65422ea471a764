//! What may be acknowledged to the server: the end of the longest unbroken run of WAL
//! that is stored in the repository and recorded in the catalog (DESIGN invariant 1).
//!
//! Uploads finish out of order; the flush position only moves over a contiguous prefix.

use std::collections::BTreeMap;

use tidemark_protocol::Lsn;

#[derive(Debug)]
pub struct AckTracker {
    durable: Lsn,
    /// Stored ranges beyond `durable`, by start; the value is the farthest end seen.
    pending: BTreeMap<Lsn, Lsn>,
}

impl AckTracker {
    /// Everything before `durable` is already stored.
    pub fn new(durable: Lsn) -> Self {
        AckTracker {
            durable,
            pending: BTreeMap::new(),
        }
    }

    /// The flush position to report: every byte before it is stored.
    pub fn durable(&self) -> Lsn {
        self.durable
    }

    /// Record that `start..end` is stored; returns true when `durable` moved.
    pub fn stored(&mut self, start: Lsn, end: Lsn) -> bool {
        if end <= self.durable {
            return false;
        }
        let slot = self.pending.entry(start).or_insert(end);
        *slot = (*slot).max(end);
        let before = self.durable;
        while let Some((&s, &e)) = self.pending.first_key_value() {
            if s > self.durable {
                break;
            }
            self.pending.pop_first();
            self.durable = self.durable.max(e);
        }
        self.durable != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_only_over_contiguous_ranges() {
        let mut t = AckTracker::new(Lsn(100));
        assert!(!t.stored(Lsn(200), Lsn(300)));
        assert_eq!(t.durable(), Lsn(100));
        assert!(!t.stored(Lsn(300), Lsn(400)));
        assert!(t.stored(Lsn(100), Lsn(200)));
        assert_eq!(t.durable(), Lsn(400));
        // Old or overlapping news changes nothing backwards.
        assert!(!t.stored(Lsn(0), Lsn(50)));
        assert!(t.stored(Lsn(300), Lsn(450)));
        assert_eq!(t.durable(), Lsn(450));
    }
}
