//! Command-line arguments as typed (clap), before they are resolved and validated.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Continuous archiving and point-in-time recovery for PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "tidemark", version, about, propagate_version = true)]
pub struct Cli {
    /// Repository URL: s3://bucket/prefix or file:///absolute/path
    #[arg(long, global = true, env = "TIDEMARK_REPO", value_name = "URL")]
    pub repo: Option<String>,

    /// PostgreSQL connection: libpq key=value string or postgres:// URL (password from
    /// PGPASSWORD or ~/.pgpass)
    #[arg(
        long,
        global = true,
        env = "TIDEMARK_PG",
        value_name = "CONNINFO",
        hide_env_values = true
    )]
    pub pg: Option<String>,

    /// Local catalog file [default: ~/.local/state/tidemark/<repository>.db]
    #[arg(long, global = true, env = "TIDEMARK_CATALOG", value_name = "PATH")]
    pub catalog: Option<PathBuf>,

    /// Read storage settings (AWS_*, TIDEMARK_S3_* lines, mode 0600) from this file
    /// first; `restore` writes one for the restored server's restore_command
    #[arg(long, global = true, value_name = "PATH")]
    pub env_file: Option<PathBuf>,

    /// Config file (tidemark.toml) whose values are the defaults of these options
    /// [default: /etc/tidemark/tidemark.toml if it exists]
    #[arg(long, global = true, env = "TIDEMARK_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// The [cluster.NAME] of the config file to use [default: the one with default =
    /// true, else the only one]
    #[arg(long, global = true, env = "TIDEMARK_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,

    /// Log filter (tracing syntax), e.g. info or tidemark_archiver=debug
    #[arg(long, global = true, env = "TIDEMARK_LOG", default_value = "info")]
    pub log: String,

    /// Log lines on stderr as text or as JSON objects, one a line
    #[arg(long, global = true, env = "TIDEMARK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// The config file in use, once resolved (not an option).
    #[arg(skip)]
    pub config_in_use: Option<crate::config::InUse>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The value of option `long` (`--long VALUE` or `--long=VALUE`) on this command line,
/// else of variable `env`: for the options needed before the command line is parsed.
pub fn early_value(long: &str, env: Option<&str>) -> Option<OsString> {
    let mut args = std::env::args_os().skip(1);
    let with_eq = format!("{long}=");
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == long {
            return args.next();
        }
        if let Some(value) = arg.to_str().and_then(|a| a.strip_prefix(&with_eq)) {
            return Some(value.into());
        }
    }
    env.and_then(std::env::var_os).filter(|v| !v.is_empty())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prepare a repository for the cluster at --pg (writes tidemark.json)
    Init,
    /// Stream WAL from --pg into --repo continuously
    Stream(StreamArgs),
    /// Take a base backup of --pg into --repo (needs `tidemark stream` running)
    Backup(BackupArgs),
    /// Show how far archiving has got and the lag behind the server; exits non-zero when
    /// unhealthy (3 server unreachable, 4 repository unreachable, 7 lag over --max-lag)
    Status(StatusArgs),
    /// Check end to end that archiving works now: repository, server, settings, slot,
    /// archiving, backups, restorability; exits 0 ok, 1 warning, 2 failure (as Nagios)
    Check(CheckArgs),
    /// Read back everything stored (WAL, history files, backups against their manifests)
    /// and prove each backup restorable; exits 0 when sound, 8 when anything is damaged
    Verify(VerifyArgs),
    /// Restore a base backup and prepare recovery to a target (one at most; none = latest)
    Restore(Box<RestoreArgs>),
    /// Show what `restore` would do, without doing it
    Plan {
        #[command(flatten)]
        target: TargetOpts,
        /// Use this backup instead of the newest one before the target
        #[arg(long)]
        backup: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the local catalog from the repository alone
    Reindex {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove what the retention window no longer needs: old backups, their WAL, and
    /// bucket history from before the database's window
    Expire(ExpireArgs),
    /// Track the application's bucket, or restore it to an instant
    Objects {
        #[command(subcommand)]
        what: ObjectsCommand,
    },
    /// List what the repository holds
    List {
        #[command(subcommand)]
        what: ListWhat,
    },
    /// restore_command hook: fetch WAL file FILE (%f) into DEST (%p)
    ///
    /// Exit status: 0 restored; 1 not in the repository; any other failure, after retries,
    /// 200 so that PostgreSQL aborts archive recovery instead of promoting early — or 1 in
    /// standby mode (standby.signal in the working directory), where PostgreSQL retries.
    #[command(name = "wal-fetch")]
    WalFetch(WalFetchArgs),
    /// recovery_end_command hook: remove wal-fetch's prefetch cache once recovery ends
    #[command(name = "wal-fetch-end")]
    WalFetchEnd {
        /// The cache directory, if wal-fetch was given --prefetch-dir
        #[arg(long, value_name = "DIR")]
        prefetch_dir: Option<PathBuf>,
    },
    /// Mark and list instants across a `[group.NAME]` of the config file: several
    /// clusters (and their buckets) brought back to one instant
    Group {
        #[command(subcommand)]
        what: GroupCommand,
    },
    /// Print a shell completion script (e.g. `tidemark completions bash >
    /// /etc/bash_completion.d/tidemark`)
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page tidemark(1), or tidemark-COMMAND(1), in roff (e.g. `tidemark
    /// man > /usr/local/share/man/man1/tidemark.1`)
    Man {
        /// A command, for its own page
        command: Option<String>,
    },
    /// Fill the prefetch cache (started by wal-fetch in the background)
    #[command(name = "wal-prefetch", hide = true)]
    WalPrefetch {
        /// The segment just served; the ones after it are fetched
        after: String,
        #[arg(long)]
        count: u32,
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a restore point of one name on every member at once (all or none) and
    /// record the mark in every member's repository
    Mark {
        /// The group (`[group.NAME]` in the config file)
        group: String,
        /// The restore point's name (letters, digits, _ . -); default GROUP-<UTC time>
        #[arg(long)]
        name: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Restore every member of the group to a mark or a time: all members planned first
    /// (if one cannot reach the target, nothing is written), then restored side by side
    /// into INTO/<cluster>
    Restore {
        /// The group (`[group.NAME]` in the config file)
        group: String,
        /// The mark (`tidemark group list GROUP`)
        #[arg(
            long,
            value_name = "NAME",
            required_unless_present = "target_time",
            conflicts_with = "target_time"
        )]
        target_mark: Option<String>,
        /// A time (as `restore --target-time`), reached by each member on its own clock
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        target_time: Option<chrono::DateTime<chrono::FixedOffset>>,
        /// Where the members' data directories go: INTO/<cluster> (absent or empty)
        #[arg(long, value_name = "DIR")]
        into: PathBuf,
        /// Start each restored server once it is written (as `restore --start`)
        #[arg(long)]
        start: bool,
        /// Members restored at once
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
        parallel: u16,
        /// Also restore the group's buckets, each into URL/<bucket> (s3://bucket[/prefix],
        /// an empty prefix), to the same instant
        #[arg(long, value_name = "URL")]
        objects_to: Option<String>,
    },
    /// List a group's marks, oldest first
    List {
        /// The group (`[group.NAME]` in the config file)
        group: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the repository and for the server before reporting them
    /// unreachable
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// Archiving lag (seconds behind the server) above which status is unhealthy
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    pub max_lag: f64,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print JSON
    #[arg(long, conflicts_with = "nagios")]
    pub json: bool,
    /// Print one line for a Nagios-style monitor (the exit status is the same)
    #[arg(long)]
    pub nagios: bool,
    /// Seconds to wait for the repository and for the server before failing them
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// The replication slot `stream` uses
    #[arg(long, default_value = "tidemark")]
    pub slot: String,
    /// Age of the newest archived WAL, while the server has more, above which archiving
    /// has stalled (a failure)
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    pub max_archive_age: f64,
    /// WAL the slot may hold on the server before it is a warning, in MiB
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub max_slot_lag_mb: u64,
    /// Age of the newest base backup above which it is a warning: a number and a unit
    /// (s, m, h, d, w)
    #[arg(long, default_value = "8d", value_name = "DURATION", value_parser = parse_retention)]
    pub max_backup_age: chrono::Duration,
    /// Age of a tracked bucket's newest tracking pass above which tracking has stalled (a
    /// failure)
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    pub max_track_age: f64,
    /// Also have the server switch to a new WAL segment (pg_switch_wal(), which needs a
    /// superuser or a grant) and wait for the finished one to reach the repository
    #[arg(long)]
    pub switch: bool,
    /// How long --switch waits for the segment
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub switch_timeout: f64,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Only this backup, and the WAL from its start on
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Only backups started and objects written at or after this time (as --target-time)
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// Objects read at once
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

fn parse_since(raw: &str) -> Result<chrono::DateTime<chrono::FixedOffset>, String> {
    tidemark_restorer::target::parse_time(raw).map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct ExpireArgs {
    /// How far back every store stays restorable: a number and a unit (s, m, h, d, w),
    /// e.g. 14d or 36h
    #[arg(long, value_name = "DURATION", value_parser = parse_retention)]
    pub retention: chrono::Duration,
    /// Show what would be removed; remove nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// A retention such as `14d`, `36h` or `1w2d`: numbers each followed by a unit.
fn parse_retention(raw: &str) -> Result<chrono::Duration, String> {
    let bad = || {
        format!("{raw:?} is not a retention; write a number and a unit (s, m, h, d, w), e.g. 14d or 36h")
    };
    let mut total = chrono::Duration::zero();
    let mut digits = String::new();
    for c in raw.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        let unit = match c {
            's' => chrono::Duration::try_seconds(n),
            'm' => chrono::Duration::try_minutes(n),
            'h' => chrono::Duration::try_hours(n),
            'd' => chrono::Duration::try_days(n),
            'w' => chrono::Duration::try_weeks(n),
            _ => None,
        };
        total = unit.and_then(|u| total.checked_add(&u)).ok_or_else(bad)?;
    }
    if !digits.is_empty() || total <= chrono::Duration::zero() {
        return Err(bad());
    }
    // Beyond a century the window reaches before any backup could exist: expire nothing.
    if total > chrono::Duration::days(36_500) {
        return Err(format!("{raw:?} is longer than 100 years"));
    }
    Ok(total)
}

#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// File name PostgreSQL asks for (%f)
    pub file: String,
    /// Where to write it (%p), relative to the data directory
    pub dest: PathBuf,
    /// Segments to prefetch in the background after this one (0: none)
    #[arg(long, default_value_t = 8)]
    pub prefetch: u32,
    /// Fetch exactly the requested file: no prefetch cache read or filled (for
    /// pg_rewind --restore-target-wal)
    #[arg(long, conflicts_with_all = ["prefetch", "prefetch_dir"])]
    pub no_prefetch: bool,
    /// Prefetch cache directory [default: pg_wal/.tidemark-prefetch in the data directory]
    #[arg(long, value_name = "DIR")]
    pub prefetch_dir: Option<PathBuf>,
    /// How long to retry failures other than absence before giving up
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub retry_seconds: f64,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Label written into backup_label
    #[arg(long, default_value = "tidemark")]
    pub label: String,
    /// Checkpoint at the start: fast (immediate) or spread
    #[arg(long, value_enum, default_value_t = Checkpoint::Fast)]
    pub checkpoint: Checkpoint,
    /// Uncompressed MiB per chunk
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub chunk_size_mb: u64,
    /// zstd compression level (1-19)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub compression_level: i32,
    /// Chunks compressed and uploaded at once
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub upload_concurrency: u16,
    /// Seconds to wait for the archiver to store the WAL the backup needs
    #[arg(long, default_value_t = 300)]
    pub wal_wait: u64,
    /// Where chunks wait for upload [default: beside the catalog]
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Require --pg to be a standby (refused if it is a primary); a standby is detected
    /// without it too
    #[arg(long)]
    pub from_standby: bool,
    /// Throttle the server's sending to this many kB/s (32-1048576) [default: unlimited]
    #[arg(long, value_name = "KB", value_parser = clap::value_parser!(u32).range(32..=1_048_576))]
    pub max_rate_kb: Option<u32>,
    /// Print the backup's record (its backup.json) as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("occurs").args(["target_name", "target_xid"]).multiple(true)))]
pub struct TargetOpts {
    /// Recover to this time (with a zone: "2026-11-21 09:30:00+00" or RFC 3339)
    #[arg(long)]
    pub target_time: Option<String>,
    /// Recover to this LSN (X/Y)
    #[arg(long)]
    pub target_lsn: Option<String>,
    /// Recover to this restore point (pg_create_restore_point)
    #[arg(long)]
    pub target_name: Option<String>,
    /// Recover to the end of this transaction: its full id (epoch * 2^32 + xid, as
    /// pg_current_xact_id() prints it) or its 32 bits
    #[arg(long)]
    pub target_xid: Option<String>,
    /// Recover only until the backup is consistent
    #[arg(long)]
    pub target_immediate: bool,
    /// With --target-name made more than once, or a 32-bit --target-xid that ended in
    /// more than one epoch: oldest, newest or N (1 = oldest)
    #[arg(long, value_name = "WHICH", requires = "occurs")]
    pub target_occurrence: Option<String>,
    /// Timeline to follow: latest, current or a number
    #[arg(long, default_value = "latest")]
    pub target_timeline: String,
    /// What PostgreSQL does at the target (also at the end of the archive, for latest)
    #[arg(long, value_enum, default_value_t = Action::Promote)]
    pub target_action: Action,
    /// Stop after (true) or just before (false) the target
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub target_inclusive: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The data directory to create (must be empty or absent, unless --delta)
    #[arg(long, value_name = "DIR", required_unless_present = "patroni")]
    pub pgdata: Option<PathBuf>,
    /// Restore a standby: standby.signal instead of recovery.signal, no target; it replays
    /// the repository's WAL, then streams from --primary-conninfo (without one: an
    /// archive-only standby)
    #[arg(long)]
    pub standby: bool,
    /// The primary the standby streams from (libpq connection string; written to
    /// primary_conninfo, never logged)
    #[arg(long, value_name = "CONNINFO", requires = "standby")]
    pub primary_conninfo: Option<String>,
    /// Replication slot on the primary for the standby (primary_slot_name)
    #[arg(long, value_name = "NAME", requires = "standby")]
    pub primary_slot_name: Option<String>,
    /// Rebuild an existing data directory (a failed old primary): files whose size and
    /// CRC-32C match the backup's manifest are kept, the rest written, files the backup
    /// lacks removed. Refused while a server runs there
    #[arg(long, conflicts_with = "resume")]
    pub delta: bool,
    /// Called by Patroni (create_replica_methods or a bootstrap method): --datadir is the
    /// data directory; --role=replica restores the latest backup as a standby of
    /// --connstring, without --role a new cluster to the target; Patroni then configures
    /// and starts it
    #[arg(long, conflicts_with_all = ["pgdata", "standby", "start"])]
    pub patroni: bool,
    #[command(flatten)]
    pub patroni_args: PatroniArgs,
    #[command(flatten)]
    pub target: TargetOpts,
    /// Use this backup instead of the newest one before the target
    #[arg(long)]
    pub backup: Option<String>,
    /// Keep archive_mode as it was in the backup (default: off, so a side restore never
    /// archives into production's repository)
    #[arg(long)]
    pub archive: bool,
    /// Where tablespaces go, as <DIR>/<oid> [default: <pgdata>.tablespaces]
    #[arg(long, value_name = "DIR")]
    pub tablespace_dir: Option<PathBuf>,
    /// Chunks fetched and unpacked at once
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Finish an interrupted restore into --pgdata (its journal <pgdata>.tidemark-restore
    /// says which chunks are done; they are kept)
    #[arg(long)]
    pub resume: bool,
    /// Start PostgreSQL on the restored directory, wait until recovery reaches the
    /// target, and report where it stopped (the server keeps running)
    #[arg(long)]
    pub start: bool,
    /// Directory of the PostgreSQL binaries for --start; they must be of the backup's
    /// major [default: the first of /usr/lib/postgresql/<major>/bin,
    /// /opt/tidemark/pg/<major>/bin, `pg_config --bindir` and `postgres` on PATH that is of that major]
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// Port for --start [default: a free one]
    #[arg(long)]
    pub port: Option<u16>,
    /// Seconds --start waits for recovery
    #[arg(long, default_value_t = 3600)]
    pub start_timeout: u64,
    /// Also restore this tracked application bucket to the same instant (the bucket may be
    /// omitted when the catalog tracks exactly one). A time target is used as is; other
    /// targets need --start and use the commit time where recovery stopped.
    #[arg(long, value_name = "BUCKET", num_args = 0..=1, default_missing_value = "")]
    pub objects: Option<String>,
    #[command(flatten)]
    pub objects_dest: ObjectsDestination,
    /// With --start: run this SQL on the restored cluster; it returns object keys, and the
    /// report lists those missing from the restored bucket
    #[arg(long, value_name = "SQL")]
    pub verify_refs: Option<String>,
    /// Print the report as one JSON object (plan, restored, started, objects)
    #[arg(long)]
    pub json: bool,
}

/// The arguments Patroni passes to a replica-creation or bootstrap command (each
/// `--name=value`).
#[derive(Debug, Args)]
pub struct PatroniArgs {
    /// Patroni: the cluster's name (logged only)
    #[arg(long, requires = "patroni")]
    pub scope: Option<String>,
    /// Patroni: the data directory to restore into
    #[arg(long, value_name = "DIR", requires = "patroni")]
    pub datadir: Option<PathBuf>,
    /// Patroni: `replica` (create_replica_methods); absent for a bootstrap method
    #[arg(long, requires = "patroni")]
    pub role: Option<String>,
    /// Patroni: the leader to clone from (empty when there is none)
    #[arg(long, value_name = "CONNINFO", requires = "patroni")]
    pub connstring: Option<String>,
    /// Patroni's own method options, passed on as arguments; accepted and ignored
    #[arg(long = "keep_data", hide = true, requires = "patroni")]
    pub keep_data: Option<String>,
    #[arg(long = "no_master", hide = true, requires = "patroni")]
    pub no_master: Option<String>,
    #[arg(long = "no_leader", hide = true, requires = "patroni")]
    pub no_leader: Option<String>,
    #[arg(long = "no_params", hide = true, requires = "patroni")]
    pub no_params: Option<String>,
}

#[derive(Debug, Args)]
pub struct ObjectsDestination {
    /// Restore the bucket into this new bucket or empty prefix: s3://bucket[/prefix]
    #[arg(long, value_name = "URL", conflicts_with = "objects_in_place")]
    pub objects_to: Option<String>,
    /// Restore the bucket in place: new versions and delete markers, no version deleted
    #[arg(long)]
    pub objects_in_place: bool,
    /// Objects copied at once
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub objects_concurrency: u16,
}

#[derive(Debug, Subcommand)]
pub enum ObjectsCommand {
    /// Record the bucket's history continuously (or once with --once)
    Track(TrackArgs),
    /// Restore the bucket as it stood at an instant
    Restore(ObjectsRestoreArgs),
}

#[derive(Debug, Args)]
pub struct TrackArgs {
    /// The application's bucket
    #[arg(long)]
    pub bucket: String,
    #[command(flatten)]
    pub tracking: TrackingOpts,
    /// One pass, then exit
    #[arg(long)]
    pub once: bool,
    /// With --once: print what the catalog now holds for the bucket as JSON
    #[arg(long, requires = "once")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TrackingOpts {
    /// Only keys starting with this
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// versions: record S3 versions (needs versioning); copy: copy objects into the
    /// repository (no versioning; the interval is then the bucket's RPO)
    #[arg(long, value_enum, default_value_t = TrackModeArg::Versions)]
    pub mode: TrackModeArg,
    /// Seconds between passes
    #[arg(
        long = "track-interval",
        default_value_t = 10.0,
        value_name = "SECONDS"
    )]
    pub interval: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrackModeArg {
    Versions,
    Copy,
}

#[derive(Debug, Args)]
pub struct ObjectsRestoreArgs {
    /// The tracked bucket [default: the only one tracked]
    #[arg(long)]
    pub bucket: Option<String>,
    /// The instant, on PostgreSQL's clock, with a zone
    #[arg(long)]
    pub target_time: String,
    #[command(flatten)]
    pub destination: ObjectsDestination,
    /// Run this SQL on --pg (e.g. the restored cluster); it returns object keys, and the
    /// report lists those missing from the restored bucket
    #[arg(long, value_name = "SQL")]
    pub verify_refs: Option<String>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    Promote,
    Pause,
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Checkpoint {
    Fast,
    Spread,
}

#[derive(Debug, Subcommand)]
pub enum ListWhat {
    /// Complete base backups in the repository
    Backups {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Archived WAL segments
    Wal {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct StreamArgs {
    /// Physical replication slot to use (created if missing)
    #[arg(long, default_value = "tidemark")]
    pub slot: String,
    /// Seconds between uploads of the partial segment while WAL flows (bounds the RPO)
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub partial_interval: f64,
    /// zstd compression level (1-19)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub compression_level: i32,
    /// Uploads running at once
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub upload_concurrency: u16,
    /// Seconds between rewrites of the archive-complete marker while idle (it proves a
    /// time target after the last commit reachable) [default: the partial interval]
    #[arg(long, value_name = "SECONDS")]
    pub complete_marker_interval: Option<f64>,
    /// Act as a synchronous standby when the server chooses one: acknowledge WAL once it
    /// is fsync'd in the spool, before it reaches the repository. Without it, a server
    /// whose synchronous_standby_names could choose tidemark is refused
    #[arg(long)]
    pub synchronous: bool,
    /// When the server no longer has the WAL the archive needs next (exit 5 otherwise),
    /// record the gap in the repository and start archiving again at the server's current
    /// position; then take a new base backup. Set it once, deliberately
    #[arg(long)]
    pub accept_gap: bool,
    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics, e.g.
    /// 127.0.0.1:9187: positions, lag, RPO, uploads, spool, backups, restorable windows
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Spool directory for received WAL [default: beside the catalog]
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Also track this application bucket (repeatable), as `objects track` does
    #[arg(long, value_name = "BUCKET")]
    pub track_bucket: Vec<String>,
    #[command(flatten)]
    pub tracking: TrackingOpts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions_parse_and_junk_is_refused() {
        let d = chrono::Duration::days;
        assert_eq!(parse_retention("14d"), Ok(d(14)));
        assert_eq!(parse_retention("1w2d"), Ok(d(9)));
        assert_eq!(parse_retention("36h"), Ok(chrono::Duration::hours(36)));
        assert_eq!(parse_retention("90s"), Ok(chrono::Duration::seconds(90)));
        for bad in [
            "",
            "14",
            "d",
            "0d",
            "-1d",
            "14x",
            "1.5d",
            "14 d",
            "99999999999999999999d",
            "200000w",
        ] {
            assert!(parse_retention(bad).is_err(), "{bad:?}");
        }
    }
}
