//! CRC-32C (Castagnoli), the checksum of every WAL record and of the files listed in a
//! `backup_manifest` (its default algorithm): reflected polynomial 0x82F63B78, initial
//! value and final XOR 0xFFFFFFFF. Computed by the `crc32c` crate, which uses the CPU's
//! CRC-32C instructions (SSE 4.2 on x86-64, the CRC extension on ARMv8) where present:
//! every received WAL record is checked, so this is on the archiver's hot path.

/// A CRC-32C being computed over bytes fed in any number of pieces. Holds the finished
/// CRC of the bytes so far, the form `crc32c_append` continues from.
#[derive(Debug, Clone, Copy)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Crc32c::new()
    }
}

impl Crc32c {
    pub fn new() -> Self {
        Crc32c(0)
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, data);
    }

    pub fn finish(self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crc(data: &[u8]) -> u32 {
        let mut c = Crc32c::new();
        c.update(data);
        c.finish()
    }

    /// The reflected Castagnoli polynomial.
    const POLYNOMIAL: u32 = 0x82F6_3B78;

    /// Bit-at-a-time reference, straight from the definition.
    fn reference(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLYNOMIAL
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn known_check_values() {
        // The standard CRC-32C check value, and RFC 3720 (iSCSI) test vectors.
        assert_eq!(crc(b"123456789"), 0xE306_9283);
        assert_eq!(crc(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc(&ascending), 0x46DD_794E);
        assert_eq!(crc(b""), 0);
    }

    #[test]
    fn matches_reference_for_every_length_and_split() {
        let data: Vec<u8> = (0..100u32).map(|i| (i * 37 + 11) as u8).collect();
        for len in 0..data.len() {
            let want = reference(&data[..len]);
            assert_eq!(crc(&data[..len]), want, "len {len}");
            for split in 0..=len {
                let mut c = Crc32c::new();
                c.update(&data[..split]);
                c.update(&data[split..len]);
                assert_eq!(c.finish(), want, "len {len} split {split}");
            }
        }
    }
}
