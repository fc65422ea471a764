//! PostgreSQL's display of memory and size settings (`SHOW wal_segment_size` says `16MB`,
//! `SHOW max_slot_wal_keep_size` says `10GB` or `-1`), read back as bytes.

/// Bytes of a size as `SHOW` prints it: digits and a unit (B, kB, MB, GB, TB, as
/// PostgreSQL's GUC units), or digits alone (bytes). `None` for anything else, `-1`
/// (unbounded) included: callers decide what that means.
pub fn size_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |i| text.split_at(i));
    let n: u64 = digits.parse().ok()?;
    let unit: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_units_show_prints() {
        assert_eq!(size_bytes("16MB"), Some(16 << 20));
        assert_eq!(size_bytes("1024kB"), Some(1 << 20));
        assert_eq!(size_bytes("10GB"), Some(10 << 30));
        assert_eq!(size_bytes("2TB"), Some(2 << 40));
        assert_eq!(size_bytes("8192"), Some(8192));
        for bad in ["-1", "", "MB", "3 parsecs", "99999999999999999999TB"] {
            assert_eq!(size_bytes(bad), None, "{bad}");
        }
    }
}
