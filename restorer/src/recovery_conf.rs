//! The recovery settings a restored data directory starts with: `restore_command`,
//! `recovery_end_command` (which removes `wal-fetch`'s prefetch cache), the target,
//! `recovery.signal`, and `archive_mode = off` unless asked (a side restore must never
//! push WAL into the production archive). A standby gets `standby.signal` instead, no
//! target, and its `primary_conninfo` and `primary_slot_name` when given. Written into
//! `postgresql.auto.conf`, which PostgreSQL reads last, atomically (temp, fsync, rename;
//! mode 0600, as PostgreSQL itself creates it: `primary_conninfo` may hold a password).
//! Recovery settings the backed-up cluster carried (a cluster that was itself restored
//! keeps its old target) are commented out there and overridden for any other
//! configuration file, so only tidemark's own apply; the signal file it carried that is
//! not the one asked for is removed.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use crate::target::{postgres_time, RecoveryTarget, TargetAction, TimelineTarget};

/// Everything recovery needs to know.
#[derive(Debug, Clone)]
pub struct RecoverySettings {
    pub restore_command: String,
    /// The command PostgreSQL runs once recovery has ended (`… wal-fetch-end`).
    pub recovery_end_command: String,
    pub target: RecoveryTarget,
    pub timeline: TimelineTarget,
    pub action: TargetAction,
    pub inclusive: bool,
    /// Keep the cluster's own `archive_mode` (off by default: a restored copy must not
    /// archive into the repository it came from).
    pub keep_archiving: bool,
    /// Start as a standby (`standby.signal`) rather than recover and end (`None`).
    pub standby: Option<Standby>,
}

/// What a standby streams from (neither: an archive-only standby, which replays from
/// the repository only).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Standby {
    /// libpq connection string of the primary (may hold a password: never logged).
    pub primary_conninfo: Option<String>,
    pub primary_slot_name: Option<String>,
}

impl std::fmt::Debug for Standby {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standby")
            .field(
                "primary_conninfo",
                &self.primary_conninfo.as_ref().map(|_| "(set, not shown)"),
            )
            .field("primary_slot_name", &self.primary_slot_name)
            .finish()
    }
}

/// Settings that steer recovery, with the value that makes each inert: any that
/// tidemark does not write itself is set to it, ahead of tidemark's own lines, so a value
/// from `postgresql.conf` or an included file cannot add a second target. (Every name
/// exists on PostgreSQL 14–18: an unknown one would stop the server.)
const INERT: &[(&str, &str)] = &[
    ("recovery_target", "''"),
    ("recovery_target_name", "''"),
    ("recovery_target_time", "''"),
    ("recovery_target_xid", "''"),
    ("recovery_target_lsn", "''"),
    ("recovery_target_inclusive", "on"),
    ("recovery_target_action", "'pause'"),
    ("recovery_end_command", "''"),
    ("archive_cleanup_command", "''"),
    ("recovery_min_apply_delay", "0"),
    ("primary_conninfo", "''"),
    ("primary_slot_name", "''"),
];

/// A value as a quoted configuration-file string (PostgreSQL reads backslash escapes in
/// quoted values, so backslashes are doubled too).
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// The setting a configuration line assigns, if any (`name = value` or `name value`).
fn setting_name(line: &str) -> Option<String> {
    let line = line.trim_start();
    if line.starts_with('#') {
        return None;
    }
    let end = line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))?;
    (end > 0).then(|| line[..end].to_ascii_lowercase())
}

impl RecoverySettings {
    /// The `name = value` lines, in order.
    pub fn lines(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("restore_command".to_string(), quote(&self.restore_command)),
            (
                "recovery_end_command".to_string(),
                quote(&self.recovery_end_command),
            ),
        ];
        if let Some(standby) = &self.standby {
            if let Some(conninfo) = &standby.primary_conninfo {
                out.push(("primary_conninfo".into(), quote(conninfo)));
            }
            if let Some(slot) = &standby.primary_slot_name {
                out.push(("primary_slot_name".into(), quote(slot)));
            }
        }
        let target = match &self.target {
            RecoveryTarget::Latest => None,
            RecoveryTarget::Immediate => Some(("recovery_target", quote("immediate"))),
            RecoveryTarget::Time(t) => Some(("recovery_target_time", quote(&postgres_time(t)))),
            RecoveryTarget::Lsn(l) => Some(("recovery_target_lsn", quote(&l.to_string()))),
            RecoveryTarget::Name(n) => Some(("recovery_target_name", quote(n))),
            RecoveryTarget::Xid(x) => Some(("recovery_target_xid", quote(&x.to_string()))),
        };
        if let Some((name, value)) = target {
            out.push((name.to_string(), value));
            if !matches!(
                self.target,
                RecoveryTarget::Immediate | RecoveryTarget::Name(_)
            ) {
                let inclusive = if self.inclusive { "on" } else { "off" };
                out.push(("recovery_target_inclusive".into(), inclusive.into()));
            }
            let action = match self.action {
                TargetAction::Promote => "promote",
                TargetAction::Pause => "pause",
                TargetAction::Shutdown => "shutdown",
            };
            out.push(("recovery_target_action".into(), quote(action)));
        }
        let timeline = match self.timeline {
            TimelineTarget::Latest => "latest".to_string(),
            TimelineTarget::Current => "current".to_string(),
            TimelineTarget::Id(t) => t.0.to_string(),
        };
        out.push(("recovery_target_timeline".into(), quote(&timeline)));
        if !self.keep_archiving {
            out.push(("archive_mode".into(), quote("off")));
        }
        out
    }

    /// Every line to append: inert values for the recovery settings tidemark does not
    /// write, then its own.
    fn all_lines(&self) -> Vec<(String, String)> {
        let own = self.lines();
        let mut out: Vec<(String, String)> = INERT
            .iter()
            .filter(|(name, _)| !own.iter().any(|(n, _)| n == name))
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        out.extend(own);
        out
    }

    /// Comment out the recovery settings already in `<data_dir>/postgresql.auto.conf`,
    /// append tidemark's, create `recovery.signal` (a standby: `standby.signal`) and
    /// remove the other signal file.
    pub fn write(&self, data_dir: &Path) -> io::Result<()> {
        let auto = data_dir.join("postgresql.auto.conf");
        let old = match fs::read_to_string(&auto) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let lines = self.all_lines();
        let mut content = String::new();
        for line in old.lines() {
            let ours = setting_name(line).is_some_and(|n| lines.iter().any(|(o, _)| *o == n));
            if ours {
                content.push_str("# (disabled by tidemark restore) ");
            }
            content.push_str(line);
            content.push('\n');
        }
        content.push_str("# recovery settings written by tidemark restore\n");
        for (name, value) in lines {
            content.push_str(&format!("{name} = {value}\n"));
        }
        write_atomically(&auto, content.as_bytes())?;
        let (signal, other) = match self.standby {
            Some(_) => ("standby.signal", "recovery.signal"),
            None => ("recovery.signal", "standby.signal"),
        };
        write_atomically(&data_dir.join(signal), b"")?;
        match fs::remove_file(data_dir.join(other)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tidemark-tmp");
    let tmp = path.with_file_name(tmp_name);
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::parse_time;
    use tidemark_protocol::{Lsn, TimelineId};

    fn settings(target: RecoveryTarget) -> RecoverySettings {
        RecoverySettings {
            restore_command: "tidemark --repo 's3://b/p' wal-fetch %f %p".into(),
            recovery_end_command: "tidemark wal-fetch-end".into(),
            target,
            timeline: TimelineTarget::Latest,
            action: TargetAction::Promote,
            inclusive: true,
            keep_archiving: false,
            standby: None,
        }
    }

    #[test]
    fn each_target_becomes_its_setting() {
        let time = parse_time("2026-11-21 11:30:00+02").unwrap();
        let lines = settings(RecoveryTarget::Time(time)).lines();
        assert_eq!(
            lines,
            [
                (
                    "restore_command",
                    "'tidemark --repo ''s3://b/p'' wal-fetch %f %p'"
                ),
                ("recovery_end_command", "'tidemark wal-fetch-end'"),
                ("recovery_target_time", "'2026-11-21 09:30:00.000000+00'"),
                ("recovery_target_inclusive", "on"),
                ("recovery_target_action", "'promote'"),
                ("recovery_target_timeline", "'latest'"),
                ("archive_mode", "'off'"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let mut s = settings(RecoveryTarget::Lsn(Lsn(0x300_0028)));
        s.inclusive = false;
        s.timeline = TimelineTarget::Id(TimelineId(3));
        s.action = TargetAction::Pause;
        s.keep_archiving = true;
        let lines = s.lines();
        assert!(lines.contains(&("recovery_target_lsn".into(), "'0/3000028'".into())));
        assert!(lines.contains(&("recovery_target_inclusive".into(), "off".into())));
        assert!(lines.contains(&("recovery_target_timeline".into(), "'3'".into())));
        assert!(lines.contains(&("recovery_target_action".into(), "'pause'".into())));
        assert!(!lines.iter().any(|(n, _)| n == "archive_mode"));
        let latest = settings(RecoveryTarget::Latest).lines();
        assert!(!latest
            .iter()
            .any(|(n, _)| n.starts_with("recovery_target_") && n != "recovery_target_timeline"));
        let imm = settings(RecoveryTarget::Immediate).lines();
        assert!(imm.contains(&("recovery_target".into(), "'immediate'".into())));
    }

    #[test]
    fn quoting_survives_quotes_backslashes_and_spaces() {
        assert_eq!(quote(r"C:\a b\it's"), r"'C:\\a b\\it''s'");
    }

    #[test]
    fn old_recovery_settings_are_disabled_and_overridden() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("postgresql.auto.conf"),
            "work_mem = '8MB'\nrecovery_target_name = 'old'\nrestore_command='cp x %p'\nRecovery_Target_Action = promote\n",
        )
        .unwrap();
        fs::write(dir.path().join("standby.signal"), "").unwrap();
        settings(RecoveryTarget::Latest).write(dir.path()).unwrap();
        let conf = fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        let active: Vec<&str> = conf
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        assert_eq!(active[0], "work_mem = '8MB'");
        assert!(active.contains(&"recovery_target_name = ''"), "{conf}");
        assert!(
            active.contains(&"recovery_target_action = 'pause'"),
            "{conf}"
        );
        assert_eq!(
            active
                .iter()
                .filter(|l| l.starts_with("restore_command"))
                .count(),
            1,
            "{conf}"
        );
        assert!(conf.contains("# (disabled by tidemark restore) recovery_target_name = 'old'"));
        assert!(!dir.path().join("standby.signal").exists());
    }

    #[test]
    fn writes_auto_conf_and_the_signal_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("postgresql.auto.conf"), "work_mem = '8MB'").unwrap();
        settings(RecoveryTarget::Name("before".into()))
            .write(dir.path())
            .unwrap();
        let conf = fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        assert!(conf.starts_with("work_mem = '8MB'\n# recovery settings"));
        assert!(conf.contains("recovery_target_name = 'before'\n"));
        assert!(dir.path().join("recovery.signal").exists());
    }

    #[test]
    fn a_standby_gets_standby_signal_its_primary_and_a_private_conf_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("recovery.signal"), "").unwrap();
        let mut s = settings(RecoveryTarget::Latest);
        s.standby = Some(Standby {
            primary_conninfo: Some("host=a password='s3cr%t'".into()),
            primary_slot_name: Some("replica_1".into()),
        });
        assert!(!format!("{s:?}").contains("s3cr"), "{s:?}");
        s.write(dir.path()).unwrap();
        let auto = dir.path().join("postgresql.auto.conf");
        let conf = fs::read_to_string(&auto).unwrap();
        assert!(conf.contains("primary_conninfo = 'host=a password=''s3cr%t'''\n"));
        assert!(conf.contains("primary_slot_name = 'replica_1'\n"));
        assert!(!conf.contains("primary_conninfo = ''"), "{conf}");
        assert!(dir.path().join("standby.signal").exists());
        assert!(!dir.path().join("recovery.signal").exists());
        let mode = fs::metadata(&auto).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
