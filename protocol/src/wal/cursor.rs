//! `Cursor`: bounds-checked little-endian reads over a byte slice, for the
//! fixed layouts of WAL page headers, record headers and record payloads.

/// The slice ended before the field being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Truncated;

/// Reads fields front to back; every read either succeeds whole or fails
/// with [`Truncated`] and leaves the position unspecified.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let end = self.pos.checked_add(n).ok_or(Truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or(Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    /// Skips `count` items of `size` bytes each.
    pub(crate) fn skip_items(&mut self, count: usize, size: usize) -> Result<(), Truncated> {
        self.take(count.checked_mul(size).ok_or(Truncated)?)
            .map(drop)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Truncated> {
        self.array::<1>().map(|[b]| b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Truncated> {
        self.array().map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Truncated> {
        self.array().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Truncated> {
        self.array().map(u64::from_le_bytes)
    }

    pub(crate) fn i64(&mut self) -> Result<i64, Truncated> {
        self.array().map(i64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_fields_in_order() {
        let bytes = [1, 0x34, 0x12, 0x78, 0x56, 0x34, 0x12, 9, 9];
        let mut c = Cursor::new(&bytes);
        assert_eq!(c.u8(), Ok(1));
        assert_eq!(c.u16(), Ok(0x1234));
        assert_eq!(c.u32(), Ok(0x1234_5678));
        assert_eq!(c.remaining(), 2);
        assert_eq!(c.u32(), Err(Truncated));
    }

    #[test]
    fn skipping_past_the_end_or_overflowing_is_truncation() {
        let bytes = [0u8; 8];
        let mut c = Cursor::new(&bytes);
        assert_eq!(c.skip_items(2, 4), Ok(()));
        assert_eq!(c.skip_items(1, 1), Err(Truncated));
        let mut c = Cursor::new(&bytes);
        assert_eq!(c.skip_items(usize::MAX, 2), Err(Truncated));
        assert_eq!(c.i64(), Ok(0));
        assert_eq!(c.u64(), Err(Truncated));
    }
}
