//! What `verify` reads in a backup: each chunk's tar entries, every regular file's size
//! and checksum computed as it passes, then compared with PostgreSQL's `backup_manifest`
//! as `pg_verifybackup` compares a data directory — without unpacking anything.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use tidemark_store::backup::{plain_path, BackupInfo};

use crate::manifest::{self, FileDigest, Manifest};

/// One regular file found in a chunk: its manifest path, size and checksum (as the
/// manifest writes it; `None` when the manifest names no algorithm tidemark computes).
#[derive(Debug)]
pub struct FileSeen {
    pub path: String,
    pub size: u64,
    pub checksum: Option<String>,
}

/// What one chunk holds.
#[derive(Debug, Default)]
pub struct ChunkRead {
    pub files: Vec<FileSeen>,
    /// The tar stream could not be read to its end.
    pub tar_error: Option<String>,
}

/// The manifest path of an entry of archive `archive` (`base.tar` or `<oid>.tar`).
pub fn manifest_path(archive: &str, entry: &str) -> Option<String> {
    let plain = plain_path(entry)?;
    match archive.strip_suffix(".tar") {
        Some("base") | None => Some(plain),
        Some(oid) => Some(format!("pg_tblspc/{oid}/{plain}")),
    }
}

/// Read the tar stream of a chunk of `archive`, computing each regular file's checksum
/// with the algorithm `algorithms` (manifest path to entry) records for it.
pub fn read_chunk(
    bytes: &mut dyn Read,
    archive: &str,
    algorithms: &HashMap<String, manifest::ManifestFile>,
) -> ChunkRead {
    let mut out = ChunkRead::default();
    let mut tar = tar::Archive::new(bytes);
    let entries = match tar.entries() {
        Ok(entries) => entries,
        Err(e) => {
            out.tar_error = Some(e.to_string());
            return out;
        }
    };
    let mut buf = vec![0; 1 << 16];
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                out.tar_error = Some(e.to_string());
                return out;
            }
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(path) = manifest_path(archive, &name) else {
            out.tar_error = Some(format!("entry {name:?} is not a plain relative path"));
            return out;
        };
        let mut digest = algorithms
            .get(&path)
            .map_or(FileDigest::Unchecked, FileDigest::for_file);
        let mut size = 0;
        loop {
            match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    digest.update(&buf[..n]);
                    size += n as u64;
                }
                Err(e) => {
                    out.tar_error = Some(format!("entry {name:?}: {e}"));
                    return out;
                }
            }
        }
        out.files.push(FileSeen {
            path,
            size,
            checksum: digest.finish(),
        });
    }
    out
}

/// The manifest's entries by path.
pub fn by_path(manifest: &Manifest) -> HashMap<String, manifest::ManifestFile> {
    manifest
        .files
        .iter()
        .filter_map(|f| Some((f.path.clone()?, f.clone())))
        .collect()
}

/// Where the files of `backup` (found in its chunks) differ from its manifest, and where
/// the manifest's own checksum, system identifier and WAL range disagree with
/// `backup.json`: one line each.
pub fn compare(
    backup: &BackupInfo,
    manifest_bytes: &[u8],
    manifest: &Manifest,
    seen: &[FileSeen],
) -> Vec<String> {
    let mut found = Vec::new();
    if let Err(e) = manifest::check_own_checksum(manifest_bytes, manifest) {
        found.push(format!("backup_manifest is damaged: {e}"));
    }
    if let Some(sysid) = manifest.system_identifier {
        if sysid != backup.system_identifier {
            found.push(format!(
                "backup_manifest names system identifier {sysid}, backup.json {}",
                backup.system_identifier
            ));
        }
    }
    let range = manifest.wal_ranges.first().zip(manifest.wal_ranges.last());
    match range.and_then(|(first, last)| Some((first.lsns()?.0, last.lsns()?.1))) {
        Some((start, end)) if (start, end) == (backup.start_lsn, backup.stop_lsn) => {}
        Some((start, end)) => found.push(format!(
            "backup_manifest needs WAL {start} to {end}, backup.json records {} to {}",
            backup.start_lsn, backup.stop_lsn
        )),
        None => found.push("backup_manifest has no WAL range".to_string()),
    }
    let wanted = by_path(manifest);
    let mut present = HashSet::new();
    for file in seen {
        if !present.insert(file.path.as_str()) {
            found.push(format!("{} is in the backup twice", file.path));
            continue;
        }
        let Some(entry) = wanted.get(&file.path) else {
            found.push(format!(
                "{} is in the backup but not in backup_manifest",
                file.path
            ));
            continue;
        };
        if entry.size != file.size {
            found.push(format!(
                "{}: backup_manifest records {} bytes, the backup holds {}",
                file.path, entry.size, file.size
            ));
            continue;
        }
        if let (Some(expected), Some(actual)) = (&entry.checksum, &file.checksum) {
            if !expected.eq_ignore_ascii_case(actual) {
                found.push(format!(
                    "{}: backup_manifest records checksum {expected}, the backup holds {actual}",
                    file.path
                ));
            }
        }
    }
    let mut missing: Vec<&String> = wanted
        .keys()
        .filter(|p| !present.contains(p.as_str()) && !backup.skipped_files.contains(p))
        .collect();
    missing.sort();
    for path in missing {
        found.push(format!(
            "{path} is in backup_manifest but not in the backup"
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tablespace_entries_are_named_as_the_manifest_names_them() {
        assert_eq!(
            manifest_path("base.tar", "./base/1/112").as_deref(),
            Some("base/1/112")
        );
        assert_eq!(
            manifest_path("16400.tar", "PG_16_202307071/5/16401").as_deref(),
            Some("pg_tblspc/16400/PG_16_202307071/5/16401")
        );
        assert_eq!(manifest_path("base.tar", "../etc/passwd"), None);
    }
}
