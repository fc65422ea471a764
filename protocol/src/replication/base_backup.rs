//! `BaseBackup`: the BASE_BACKUP replication command and its response, handed over one
//! piece at a time (`BackupEvent`) so that memory stays bounded whatever the size of the
//! database. Always asks for a manifest with CRC32C checksums, a `tablespace_map`, progress
//! sizes and no wait for WAL archiving (tidemark archives WAL itself).
//!
//! The two wire formats live here and are hidden behind one event sequence:
//! - PostgreSQL 15+ sends one COPY stream whose CopyData messages start with a type byte:
//!   `n` new archive, `d` archive or manifest data, `p` progress, `m` manifest follows.
//! - PostgreSQL 14 sends one COPY stream per tablespace (raw tar without its two closing
//!   zero blocks, in the order of the tablespace result set) and one more for the
//!   manifest; here the names, the closing blocks and the progress reports are made up
//!   to match the newer format.
//!
//! All progress lives in the struct, so `next` is cancel-safe.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use postgres_protocol::message::backend::Message;

use super::client::ReplicationClient;
use super::connection::{server_error, Backend};
use super::error::ReplicationError;
use super::query::QueryResponse;
use crate::lsn::Lsn;
use crate::timeline::TimelineId;

const CMD: &str = "BASE_BACKUP";
/// First server version with the parenthesised option list and the typed COPY stream.
const TYPED_STREAM_SINCE: u32 = 150000;
/// Oldest supported server.
const OLDEST_SUPPORTED: u32 = 140000;
/// A tar archive ends with two zero-filled 512-byte blocks; PostgreSQL 14 omits them.
const TAR_END_OF_ARCHIVE: [u8; 1024] = [0; 1024];
/// On PostgreSQL 14, the least time between two made-up progress reports (the
/// interval PostgreSQL 15+ uses for its own).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// How to take the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupOptions {
    /// Written to `backup_label` (`LABEL:`); at most 1023 bytes, no NUL.
    pub label: String,
    /// Request an immediate checkpoint instead of a spread one.
    pub fast_checkpoint: bool,
    /// Server-side throttle in kB/s (PostgreSQL accepts 32 to 1048576); `None` for
    /// unlimited.
    pub max_rate_kb: Option<u32>,
}

/// One tablespace in the backup, as listed by the server before the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    /// The tablespace's OID; `None` for the base directory.
    pub oid: Option<u32>,
    /// Its directory on the server; `None` for the base directory.
    pub location: Option<String>,
    /// The server's size estimate in kB, taken before the data was read.
    pub size_kb: Option<u64>,
}

/// One piece of a running base backup, in stream order: for each tablespace an
/// `Archive` followed by its `Data`, then `Manifest` followed by its `ManifestData`,
/// `Progress` and `Notice` anywhere in between, and `End` last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupEvent {
    /// A new tar archive begins: "base.tar" or "<oid>.tar"; tablespace location for
    /// non-base. Following `Data` belong to it.
    Archive {
        name: String,
        tablespace: Option<String>,
    },
    /// Bytes of the current archive. Every archive is a complete tar file, end-of-archive
    /// blocks included.
    Data(Bytes),
    /// The manifest begins; following `ManifestData` belong to it.
    Manifest,
    /// Bytes of the manifest (`backup_manifest`, JSON).
    ManifestData(Bytes),
    /// Archive bytes produced so far, all tablespaces together; compare with the sum of
    /// `Tablespace::size_kb`. Reported at least at the end of every archive.
    Progress { done_bytes: u64 },
    /// A notice the server sent while backing up, e.g. the WARNING `skipping special
    /// file "./server.crt"` for a file it leaves out (a symlink outside `pg_tblspc`, a
    /// socket). See [`skipped_file`].
    Notice { severity: String, message: String },
    /// The backup is complete; WAL from the start to this position (on `end_timeline`)
    /// makes it consistent.
    End {
        end_lsn: Lsn,
        end_timeline: TimelineId,
    },
}

/// What CopyData carries at the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// No archive or manifest has begun (or the last one has ended).
    Nothing,
    Archive,
    Manifest,
}

/// The server's framing of the COPY data.
enum Framing {
    /// PostgreSQL 15+: one COPY stream of typed messages.
    Typed,
    /// PostgreSQL 14: one COPY stream per archive, then one for the manifest.
    PerArchive {
        /// CopyOutResponses seen so far.
        copies: usize,
        /// Archive bytes handed out so far.
        done_bytes: u64,
        /// When progress was last reported.
        last_report: Instant,
    },
}

enum Phase {
    /// Reading the response; `in_copy` between CopyOutResponse and CopyDone.
    Running {
        in_copy: bool,
        target: Target,
        manifest_seen: bool,
        /// The final result set, absorbed as it comes.
        tail: QueryResponse,
    },
    /// `End` has been handed out; the connection is back in command mode.
    Ended,
    /// `next` returned an error; the connection cannot be used any more.
    Failed,
}

/// A running BASE_BACKUP. Read it with `next` until `BackupEvent::End`, then take the
/// connection back with `into_client`.
pub struct BaseBackup {
    client: ReplicationClient,
    start_lsn: Lsn,
    start_timeline: TimelineId,
    tablespaces: Vec<Tablespace>,
    framing: Framing,
    phase: Phase,
    /// Events decoded but not yet handed out.
    pending: VecDeque<BackupEvent>,
}

impl BaseBackup {
    /// Send BASE_BACKUP and read the response up to the archive data: the start
    /// position and the tablespace list.
    pub(crate) async fn start(
        mut client: ReplicationClient,
        opts: &BaseBackupOptions,
    ) -> Result<BaseBackup, ReplicationError> {
        let version = client.server_version_num();
        if version < OLDEST_SUPPORTED {
            return Err(ReplicationError::Unsupported {
                what: CMD,
                needs: OLDEST_SUPPORTED / 10000,
                server_version_num: version,
            });
        }
        let command = command(opts, version);
        tracing::debug!(%command, "starting base backup");
        client.send_query(&command).await?;

        // Start position, then tablespaces, each a RowDescription and DataRows; then
        // the (first) CopyOutResponse. Errors end it at once (a FATAL one is followed by
        // the server closing the connection); anything else (notices, CommandComplete)
        // goes to `rest`.
        let mut sets: Vec<QueryResponse> = Vec::new();
        let mut rest = QueryResponse::default();
        loop {
            match client.conn.read_message().await? {
                Backend::Message(Message::CopyOutResponse(_)) => break,
                Backend::Message(m @ Message::RowDescription(_)) => {
                    let mut set = QueryResponse::default();
                    set.absorb(m)?;
                    sets.push(set);
                }
                Backend::Message(m @ Message::DataRow(_)) => match sets.last_mut() {
                    Some(set) => {
                        set.absorb(m)?;
                    }
                    None => return Err(protocol("a data row before its row description")),
                },
                Backend::Message(Message::ErrorResponse(body)) => {
                    return Err(server_error(body.fields()))
                }
                Backend::Message(m) => {
                    if rest.absorb(m)? {
                        return Err(protocol("the command finished without sending a backup"));
                    }
                }
                Backend::CopyBothResponse => return Err(protocol("unexpected CopyBothResponse")),
            }
        }
        let [start, tablespaces] = <[QueryResponse; 2]>::try_from(sets).map_err(|sets| {
            protocol(&format!(
                "expected 2 result sets before the data, got {}",
                sets.len()
            ))
        })?;
        let tablespaces = tablespaces
            .into_rows()
            .iter()
            .map(|row| {
                Ok(Tablespace {
                    oid: row.parse_opt(CMD, "spcoid")?,
                    location: row.text(CMD, "spclocation")?,
                    size_kb: row.parse_opt(CMD, "size")?,
                })
            })
            .collect::<Result<Vec<_>, ReplicationError>>()?;

        let mut pending = VecDeque::new();
        let (framing, target) = if version >= TYPED_STREAM_SINCE {
            (Framing::Typed, Target::Nothing)
        } else {
            // The CopyOutResponse just read is the first archive's.
            let mut framing = Framing::PerArchive {
                copies: 0,
                done_bytes: 0,
                last_report: Instant::now(),
            };
            let target = copy_started(&mut framing, &tablespaces, &mut pending)?;
            (framing, target)
        };
        Ok(BaseBackup {
            start_lsn: start.parse(CMD, "recptr")?,
            start_timeline: start.parse(CMD, "tli")?,
            client,
            tablespaces,
            framing,
            phase: running(target),
            pending,
        })
    }

    /// Where WAL replay for this backup starts (`START WAL LOCATION` in `backup_label`).
    pub fn start_lsn(&self) -> Lsn {
        self.start_lsn
    }

    /// The timeline of `start_lsn`.
    pub fn start_timeline(&self) -> TimelineId {
        self.start_timeline
    }

    /// The tablespaces in the backup, the base directory included (its `oid` is `None`).
    pub fn tablespaces(&self) -> &[Tablespace] {
        &self.tablespaces
    }

    /// The next piece; the same shape on every major. Ends with `BackupEvent::End`;
    /// calling again after that, or after an error, fails with `Protocol`. A server
    /// error (e.g. the walsender was terminated) is `ReplicationError::Server`, and the
    /// connection is then unusable.
    ///
    /// Cancel-safe (fit for `tokio::select!`): a dropped call loses nothing.
    pub async fn next(&mut self) -> Result<BackupEvent, ReplicationError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            match self.phase {
                Phase::Running { .. } => {}
                Phase::Ended => return Err(protocol("the base backup has ended; use into_client")),
                Phase::Failed => return Err(protocol("the base backup failed earlier")),
            }
            let message = match self.client.conn.read_message().await {
                Ok(Backend::Message(m)) => m,
                Ok(Backend::CopyBothResponse) => {
                    return Err(self.fail(protocol("unexpected CopyBothResponse")))
                }
                Err(e) => return Err(self.fail(e)),
            };
            if let Err(e) = self.absorb(message) {
                return Err(self.fail(e));
            }
        }
    }

    /// After `BackupEvent::End`: the client, back in command mode. Before that the
    /// connection is still busy with the backup and this fails with `Protocol`.
    pub fn into_client(self) -> Result<ReplicationClient, ReplicationError> {
        match self.phase {
            Phase::Ended => Ok(self.client),
            Phase::Running { .. } => Err(protocol(
                "the base backup is still running; read until BackupEvent::End first",
            )),
            Phase::Failed => Err(protocol(
                "the base backup failed and left the connection unusable; connect again",
            )),
        }
    }

    fn fail(&mut self, err: ReplicationError) -> ReplicationError {
        self.phase = Phase::Failed;
        err
    }

    /// Take one backend message, queueing the events it yields.
    fn absorb(&mut self, message: Message) -> Result<(), ReplicationError> {
        let Phase::Running {
            in_copy,
            target,
            manifest_seen,
            tail,
        } = &mut self.phase
        else {
            return Err(protocol("the base backup is not running"));
        };
        match message {
            Message::CopyOutResponse(_) => {
                if *in_copy {
                    return Err(protocol("a CopyOutResponse inside a COPY"));
                }
                *in_copy = true;
                *target = copy_started(&mut self.framing, &self.tablespaces, &mut self.pending)?;
                *manifest_seen |= *target == Target::Manifest;
            }
            Message::CopyData(body) => {
                if !*in_copy {
                    return Err(protocol("CopyData outside a COPY"));
                }
                let data = body.into_bytes();
                match &mut self.framing {
                    Framing::Typed => {
                        let event = decode_typed(data, *target)?;
                        match event {
                            BackupEvent::Archive { .. } => *target = Target::Archive,
                            BackupEvent::Manifest => {
                                *target = Target::Manifest;
                                *manifest_seen = true;
                            }
                            _ => {}
                        }
                        self.pending.push_back(event);
                    }
                    Framing::PerArchive {
                        done_bytes,
                        last_report,
                        ..
                    } => match target {
                        Target::Archive => {
                            *done_bytes += data.len() as u64;
                            self.pending.push_back(BackupEvent::Data(data));
                            if last_report.elapsed() >= PROGRESS_INTERVAL {
                                *last_report = Instant::now();
                                self.pending.push_back(BackupEvent::Progress {
                                    done_bytes: *done_bytes,
                                });
                            }
                        }
                        Target::Manifest => self.pending.push_back(BackupEvent::ManifestData(data)),
                        Target::Nothing => return Err(protocol("CopyData outside an archive")),
                    },
                }
            }
            Message::ErrorResponse(body) => return Err(server_error(body.fields())),
            Message::NoticeResponse(body) => match server_error(body.fields()) {
                ReplicationError::Server(n) => self.pending.push_back(BackupEvent::Notice {
                    severity: n.severity,
                    message: n.message,
                }),
                other => return Err(other),
            },
            Message::CopyDone => {
                if !*in_copy {
                    return Err(protocol("CopyDone outside a COPY"));
                }
                if let Framing::PerArchive {
                    done_bytes,
                    last_report,
                    ..
                } = &mut self.framing
                {
                    if *target == Target::Archive {
                        let end = Bytes::from_static(&TAR_END_OF_ARCHIVE);
                        *done_bytes += end.len() as u64;
                        *last_report = Instant::now();
                        self.pending.push_back(BackupEvent::Data(end));
                        self.pending.push_back(BackupEvent::Progress {
                            done_bytes: *done_bytes,
                        });
                    }
                }
                *in_copy = false;
                *target = Target::Nothing;
            }
            other => {
                if tail.absorb(other)? {
                    let tail = std::mem::take(tail);
                    if *in_copy || !*manifest_seen {
                        return Err(protocol(
                            "the server ended the backup without completing its manifest",
                        ));
                    }
                    let end_lsn = tail.parse(CMD, "recptr")?;
                    let end_timeline = tail.parse(CMD, "tli")?;
                    tracing::debug!(%end_lsn, %end_timeline, "base backup complete");
                    self.phase = Phase::Ended;
                    self.pending.push_back(BackupEvent::End {
                        end_lsn,
                        end_timeline,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The file a `Notice` says the server left out of the backup, as it named it relative
/// to the data directory (`server.crt`, `pg_tblspc/…` inside a tablespace), if it is that
/// notice. BASE_BACKUP skips, with this warning, every file that is not a regular file
/// or a directory: symlinks outside `pg_tblspc` (and `pg_wal`), sockets, devices.
pub fn skipped_file(message: &str) -> Option<&str> {
    let path = message
        .strip_prefix("skipping special file \"")?
        .strip_suffix('"')?;
    Some(path.strip_prefix("./").unwrap_or(path))
}

fn running(target: Target) -> Phase {
    Phase::Running {
        in_copy: true,
        target,
        manifest_seen: target == Target::Manifest,
        tail: QueryResponse::default(),
    }
}

/// A CopyOutResponse arrived. On PostgreSQL 14 it starts the next archive (in
/// tablespace order) or, after the last, the manifest; queue the matching event and
/// return what the COPY carries. On 15+ the only COPY is already running.
fn copy_started(
    framing: &mut Framing,
    tablespaces: &[Tablespace],
    pending: &mut VecDeque<BackupEvent>,
) -> Result<Target, ReplicationError> {
    let Framing::PerArchive { copies, .. } = framing else {
        return Err(protocol("a second CopyOutResponse"));
    };
    let index = *copies;
    *copies += 1;
    match tablespaces.get(index) {
        Some(ts) => {
            pending.push_back(BackupEvent::Archive {
                name: archive_name(ts.oid),
                tablespace: ts.location.clone(),
            });
            Ok(Target::Archive)
        }
        None if index == tablespaces.len() => {
            pending.push_back(BackupEvent::Manifest);
            Ok(Target::Manifest)
        }
        None => Err(protocol(&format!(
            "COPY number {} but only {} tablespaces and a manifest",
            index + 1,
            tablespaces.len()
        ))),
    }
}

/// The tar file name PostgreSQL 15+ gives an archive.
fn archive_name(oid: Option<u32>) -> String {
    match oid {
        Some(oid) => format!("{oid}.tar"),
        None => "base.tar".to_string(),
    }
}

/// The BASE_BACKUP command for a server of `version` (`PG_VERSION_NUM`).
fn command(opts: &BaseBackupOptions, version: u32) -> String {
    let label = quote(&opts.label);
    if version >= TYPED_STREAM_SINCE {
        let checkpoint = if opts.fast_checkpoint {
            "fast"
        } else {
            "spread"
        };
        let mut options = vec![
            format!("LABEL {label}"),
            "PROGRESS".to_string(),
            format!("CHECKPOINT '{checkpoint}'"),
            "WAIT false".to_string(),
            "MANIFEST 'yes'".to_string(),
            "MANIFEST_CHECKSUMS 'CRC32C'".to_string(),
            "TABLESPACE_MAP true".to_string(),
        ];
        if let Some(rate) = opts.max_rate_kb {
            options.push(format!("MAX_RATE {rate}"));
        }
        format!("{CMD} ( {} )", options.join(", "))
    } else {
        let mut command = format!("{CMD} LABEL {label} PROGRESS");
        if opts.fast_checkpoint {
            command.push_str(" FAST");
        }
        command.push_str(" NOWAIT MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C' TABLESPACE_MAP");
        if let Some(rate) = opts.max_rate_kb {
            command.push_str(&format!(" MAX_RATE {rate}"));
        }
        command
    }
}

/// A string literal for the replication command grammar: quotes doubled, nothing else
/// is special.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Decode one CopyData payload of the typed stream (PostgreSQL 15+); `target` says
/// where `d` data belongs.
fn decode_typed(mut data: Bytes, target: Target) -> Result<BackupEvent, ReplicationError> {
    let Some(&kind) = data.first() else {
        return Err(protocol("an empty CopyData message"));
    };
    data.advance(1);
    match kind {
        b'n' => {
            let name = take_cstring(&mut data, "new-archive message")?;
            let location = take_cstring(&mut data, "new-archive message")?;
            Ok(BackupEvent::Archive {
                name,
                tablespace: (!location.is_empty()).then_some(location),
            })
        }
        b'd' => match target {
            Target::Archive => Ok(BackupEvent::Data(data)),
            Target::Manifest => Ok(BackupEvent::ManifestData(data)),
            Target::Nothing => Err(protocol("data before the first archive")),
        },
        b'p' => {
            if data.len() < 8 {
                return Err(protocol("progress message too short"));
            }
            let done = data.get_i64();
            let done_bytes =
                u64::try_from(done).map_err(|_| protocol(&format!("negative progress {done}")))?;
            Ok(BackupEvent::Progress { done_bytes })
        }
        b'm' => Ok(BackupEvent::Manifest),
        other => Err(protocol(&format!(
            "unknown base backup message type {:?}",
            other as char
        ))),
    }
}

/// Split a NUL-terminated UTF-8 string off the front of `data`.
fn take_cstring(data: &mut Bytes, what: &str) -> Result<String, ReplicationError> {
    let end = data
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| protocol(&format!("unterminated string in {what}")))?;
    let text = data.split_to(end);
    data.advance(1);
    String::from_utf8(text.to_vec()).map_err(|_| protocol(&format!("non-utf8 string in {what}")))
}

fn protocol(what: &str) -> ReplicationError {
    ReplicationError::Protocol(format!("{CMD}: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(label: &str, fast: bool, rate: Option<u32>) -> BaseBackupOptions {
        BaseBackupOptions {
            label: label.to_string(),
            fast_checkpoint: fast,
            max_rate_kb: rate,
        }
    }

    #[test]
    fn builds_commands_for_each_syntax() {
        for (opts, version, expected) in [
            (
                opts("tm", true, None),
                150000,
                "BASE_BACKUP ( LABEL 'tm', PROGRESS, CHECKPOINT 'fast', WAIT false, \
                 MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP true )",
            ),
            (
                opts("it's", false, Some(1024)),
                180006,
                "BASE_BACKUP ( LABEL 'it''s', PROGRESS, CHECKPOINT 'spread', WAIT false, \
                 MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP true, \
                 MAX_RATE 1024 )",
            ),
            (
                opts("tm", true, None),
                140023,
                "BASE_BACKUP LABEL 'tm' PROGRESS FAST NOWAIT MANIFEST 'yes' \
                 MANIFEST_CHECKSUMS 'CRC32C' TABLESPACE_MAP",
            ),
            (
                opts("a''b", false, Some(32)),
                140000,
                "BASE_BACKUP LABEL 'a''''b' PROGRESS NOWAIT MANIFEST 'yes' \
                 MANIFEST_CHECKSUMS 'CRC32C' TABLESPACE_MAP MAX_RATE 32",
            ),
        ] {
            assert_eq!(command(&opts, version), expected);
        }
    }

    #[test]
    fn names_the_files_the_server_skipped() {
        assert_eq!(
            skipped_file("skipping special file \"./server.crt\""),
            Some("server.crt")
        );
        assert_eq!(
            skipped_file("skipping special file \"./conf/my link\""),
            Some("conf/my link")
        );
        assert_eq!(skipped_file("some other warning"), None);
    }

    #[test]
    fn decodes_typed_messages() {
        let archive = decode_typed(
            Bytes::from_static(b"n16384.tar\0/srv/ts\0"),
            Target::Nothing,
        );
        assert_eq!(
            archive.unwrap(),
            BackupEvent::Archive {
                name: "16384.tar".into(),
                tablespace: Some("/srv/ts".into())
            }
        );
        let base = decode_typed(Bytes::from_static(b"nbase.tar\0\0"), Target::Archive);
        assert_eq!(
            base.unwrap(),
            BackupEvent::Archive {
                name: "base.tar".into(),
                tablespace: None
            }
        );
        assert_eq!(
            decode_typed(Bytes::from_static(b"dtar"), Target::Archive).unwrap(),
            BackupEvent::Data(Bytes::from_static(b"tar"))
        );
        assert_eq!(
            decode_typed(Bytes::from_static(b"d{}"), Target::Manifest).unwrap(),
            BackupEvent::ManifestData(Bytes::from_static(b"{}"))
        );
        assert_eq!(
            decode_typed(Bytes::from_static(b"m"), Target::Archive).unwrap(),
            BackupEvent::Manifest
        );
        let mut progress = vec![b'p'];
        progress.extend_from_slice(&123_456_789i64.to_be_bytes());
        assert_eq!(
            decode_typed(Bytes::from(progress), Target::Archive).unwrap(),
            BackupEvent::Progress {
                done_bytes: 123_456_789
            }
        );
    }

    #[test]
    fn rejects_bad_typed_messages() {
        let mut negative = vec![b'p'];
        negative.extend_from_slice(&(-1i64).to_be_bytes());
        for (bad, target) in [
            (&b""[..], Target::Archive),
            (b"dtar", Target::Nothing),
            (b"nbase.tar", Target::Nothing),
            (b"nbase.tar\0", Target::Nothing),
            (b"n\xff\0\0", Target::Nothing),
            (b"p1234", Target::Archive),
            (&negative, Target::Archive),
            (b"x", Target::Archive),
        ] {
            assert!(
                decode_typed(Bytes::copy_from_slice(bad), target).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pg14_copies_follow_the_tablespace_list() {
        let tablespaces = [
            Tablespace {
                oid: Some(16384),
                location: Some("/srv/ts".into()),
                size_kb: Some(8),
            },
            Tablespace {
                oid: None,
                location: None,
                size_kb: Some(30000),
            },
        ];
        let mut framing = Framing::PerArchive {
            copies: 0,
            done_bytes: 0,
            last_report: Instant::now(),
        };
        let mut pending = VecDeque::new();
        let targets: Vec<Target> = (0..3)
            .map(|_| copy_started(&mut framing, &tablespaces, &mut pending).unwrap())
            .collect();
        assert_eq!(
            targets,
            [Target::Archive, Target::Archive, Target::Manifest]
        );
        assert_eq!(
            Vec::from(pending),
            [
                BackupEvent::Archive {
                    name: "16384.tar".into(),
                    tablespace: Some("/srv/ts".into())
                },
                BackupEvent::Archive {
                    name: "base.tar".into(),
                    tablespace: None
                },
                BackupEvent::Manifest,
            ]
        );
        let mut more = VecDeque::new();
        assert!(copy_started(&mut framing, &tablespaces, &mut more).is_err());
        assert!(copy_started(&mut Framing::Typed, &tablespaces, &mut more).is_err());
    }
}
