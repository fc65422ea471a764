//! tidemark-restorer: the restore side — `wal-fetch` for `restore_command`, restore
//! planning, base backup fetch and unpack, recovery configuration.
//!
//! Empty until the base-backup-and-restore work lands; the crate exists now so that the
//! dependency rule (`archiver` and `restorer` never import each other) is fixed from the
//! start.
