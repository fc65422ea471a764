//! Transaction ids with their epoch. WAL records carry 32-bit xids; checkpoints carry
//! the full 64-bit counter (`FullTransactionId`: epoch in the high half). A 32-bit xid
//! is widened against a nearby full one by modular distance, as PostgreSQL does: every
//! xid a record can carry lies within 2^31 of the counter (wraparound protection).

/// The full xid with the low 32 bits `xid` that is nearest to the full xid `near`.
/// `None` if that would fall before epoch 0.
pub fn widen(near: u64, xid: u32) -> Option<u64> {
    let distance = xid.wrapping_sub(near as u32) as i32;
    near.checked_add_signed(i64::from(distance))
}

/// The first full xid at or after `from` whose low 32 bits are `xid`.
pub fn next_with_low_bits(from: u64, xid: u32) -> Option<u64> {
    let candidate = (from & !u64::from(u32::MAX)) | u64::from(xid);
    if candidate >= from {
        Some(candidate)
    } else {
        candidate.checked_add(1 << 32)
    }
}

/// `EPOCH:XID`, the form `pg_waldump` and `pg_controldata` print.
pub fn display(full: u64) -> String {
    format!("{}:{}", full >> 32, full as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: u64 = 1 << 32;

    #[test]
    fn widening_takes_the_nearest_epoch() {
        assert_eq!(widen(3 * EPOCH + 5000, 4990), Some(3 * EPOCH + 4990));
        assert_eq!(widen(3 * EPOCH + 5000, 6000), Some(3 * EPOCH + 6000));
        // Just after a wraparound, an xid from just before it is in the previous epoch.
        assert_eq!(
            widen(3 * EPOCH + 10, u32::MAX - 5),
            Some(2 * EPOCH + u64::from(u32::MAX - 5))
        );
        // Just before one, a small xid is already in the next epoch.
        assert_eq!(
            widen(3 * EPOCH + u64::from(u32::MAX - 5), 10),
            Some(4 * EPOCH + 10)
        );
        assert_eq!(widen(10, u32::MAX - 5), None);
    }

    #[test]
    fn the_next_full_xid_with_given_low_bits() {
        assert_eq!(next_with_low_bits(EPOCH + 100, 100), Some(EPOCH + 100));
        assert_eq!(next_with_low_bits(EPOCH + 100, 200), Some(EPOCH + 200));
        assert_eq!(next_with_low_bits(EPOCH + 100, 50), Some(2 * EPOCH + 50));
        assert_eq!(next_with_low_bits(u64::MAX - 1, 0), None);
    }

    #[test]
    fn displayed_as_epoch_and_xid() {
        assert_eq!(display(2 * EPOCH + 735), "2:735");
        assert_eq!(display(735), "0:735");
    }
}
