//! PostgreSQL's `backup_manifest`, stored with every backup: the files it lists with their
//! sizes and checksums, the WAL range the backup needs, and the manifest's own SHA-256.
//! `delta` compares a directory with it; `verify` compares a stored backup's chunks with
//! it, as `pg_verifybackup` compares a directory.

use serde::Deserialize;
use tidemark_protocol::crc32c::Crc32c;
use tidemark_protocol::Lsn;

/// The parts of a manifest tidemark reads.
#[derive(Debug, Deserialize)]
pub struct Manifest {
    /// Only in version 2 manifests (PostgreSQL 17 and later).
    #[serde(rename = "System-Identifier")]
    pub system_identifier: Option<u64>,
    #[serde(rename = "Files")]
    pub files: Vec<ManifestFile>,
    #[serde(rename = "WAL-Ranges", default)]
    pub wal_ranges: Vec<WalRange>,
    #[serde(rename = "Manifest-Checksum")]
    pub manifest_checksum: Option<String>,
}

/// One file of the backup.
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestFile {
    /// Absent for a name that is not UTF-8 (`Encoded-Path`).
    #[serde(rename = "Path")]
    pub path: Option<String>,
    #[serde(rename = "Size")]
    pub size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    pub algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    pub checksum: Option<String>,
}

/// The WAL of one timeline that recovery from the backup needs to become consistent.
#[derive(Debug, Deserialize)]
pub struct WalRange {
    #[serde(rename = "Timeline")]
    pub timeline: u32,
    #[serde(rename = "Start-LSN")]
    pub start_lsn: String,
    #[serde(rename = "End-LSN")]
    pub end_lsn: String,
}

impl WalRange {
    /// Start and end, when both are LSNs.
    pub fn lsns(&self) -> Option<(Lsn, Lsn)> {
        Some((self.start_lsn.parse().ok()?, self.end_lsn.parse().ok()?))
    }
}

/// Parse a manifest.
pub fn parse(bytes: &[u8]) -> Result<Manifest, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// A manifest's CRC-32C: PostgreSQL writes the checksum's bytes as they lie in memory
/// (`pg_checksum_final` copies the `uint32`), hex-encoded — little-endian on every
/// platform tidemark runs on.
pub fn crc32c(hex: &str) -> Option<u32> {
    if hex.len() != 8 || !hex.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(u32::from_le_bytes(bytes))
}

/// Whether the manifest's own checksum (the SHA-256 of everything before its last line,
/// as PostgreSQL computes it) is the one it records. `Err` says what is wrong.
pub fn check_own_checksum(bytes: &[u8], manifest: &Manifest) -> Result<(), String> {
    let recorded = manifest
        .manifest_checksum
        .as_deref()
        .ok_or("it has no Manifest-Checksum")?;
    let newlines: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    let [.., penultimate, _] = newlines[..] else {
        return Err("it has fewer than two lines".into());
    };
    let actual = ring::digest::digest(&ring::digest::SHA256, &bytes[..=penultimate]);
    match hex(actual.as_ref()).eq_ignore_ascii_case(recorded) {
        true => Ok(()),
        false => Err(format!(
            "its SHA-256 is {}, it records {recorded}",
            hex(actual.as_ref())
        )),
    }
}

/// Lowercase hex, as manifests write checksums.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Computes a file's checksum with the algorithm its manifest entry names.
pub enum FileDigest {
    Crc32c(Crc32c),
    Sha(Box<ring::digest::Context>),
    /// No checksum recorded (`NONE`), or one of an algorithm tidemark does not compute.
    Unchecked,
}

impl FileDigest {
    /// The digest for `file`'s recorded algorithm.
    pub fn for_file(file: &ManifestFile) -> FileDigest {
        let sha = |alg| FileDigest::Sha(Box::new(ring::digest::Context::new(alg)));
        match file
            .algorithm
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("CRC32C") => FileDigest::Crc32c(Crc32c::new()),
            Some("SHA256") => sha(&ring::digest::SHA256),
            Some("SHA384") => sha(&ring::digest::SHA384),
            Some("SHA512") => sha(&ring::digest::SHA512),
            _ => FileDigest::Unchecked,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            FileDigest::Crc32c(c) => c.update(data),
            FileDigest::Sha(c) => c.update(data),
            FileDigest::Unchecked => {}
        }
    }

    /// The checksum as the manifest writes it (lowercase hex), `None` when unchecked.
    pub fn finish(self) -> Option<String> {
        match self {
            FileDigest::Crc32c(c) => Some(hex(&c.finish().to_le_bytes())),
            FileDigest::Sha(c) => Some(hex((*c).finish().as_ref())),
            FileDigest::Unchecked => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_the_crcs_bytes_in_memory_order() {
        // The CRC-32C check value ("123456789": 0xE3069283) as a manifest writes it.
        assert_eq!(crc32c("839206e3"), Some(0xE306_9283));
        assert_eq!(crc32c("8392"), None);
        assert_eq!(crc32c("zz9206e3"), None);
        let file = ManifestFile {
            path: Some("x".into()),
            size: 9,
            algorithm: Some("CRC32C".into()),
            checksum: None,
        };
        let mut d = FileDigest::for_file(&file);
        d.update(b"123456789");
        assert_eq!(d.finish().as_deref(), Some("839206e3"));
    }

    fn with_checksum(body: &str) -> Vec<u8> {
        let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
        format!(
            "{body}\"Manifest-Checksum\": \"{}\"}}\n",
            hex(digest.as_ref())
        )
        .into_bytes()
    }

    #[test]
    fn the_manifest_checksum_covers_everything_before_its_line() {
        let body = "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n],\n";
        let good = with_checksum(body);
        let manifest = parse(&good).unwrap();
        assert_eq!(check_own_checksum(&good, &manifest), Ok(()));
        let bad = String::from_utf8(good.clone())
            .unwrap()
            .replace("\"Files\"", "\"Files\" ")
            .into_bytes();
        let err = check_own_checksum(&bad, &parse(&bad).unwrap()).unwrap_err();
        assert!(err.contains("SHA-256"), "{err}");
    }
}
