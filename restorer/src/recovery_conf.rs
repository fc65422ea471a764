//! The recovery settings a restored data directory starts with: `restore_command`, the
//! target, `recovery.signal`, and `archive_mode = off` unless asked (a side restore must
//! never push WAL into the production archive). Written into `postgresql.auto.conf`,
//! which PostgreSQL reads last, atomically (temp, fsync, rename).

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use crate::target::{postgres_time, RecoveryTarget, TargetAction, TimelineTarget};

/// Everything recovery needs to know.
#[derive(Debug, Clone)]
pub struct RecoverySettings {
    pub restore_command: String,
    pub target: RecoveryTarget,
    pub timeline: TimelineTarget,
    pub action: TargetAction,
    pub inclusive: bool,
    /// Keep the cluster's own `archive_mode` (off by default: a restored copy must not
    /// archive into the repository it came from).
    pub keep_archiving: bool,
}

/// A value as a quoted configuration-file string.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

impl RecoverySettings {
    /// The `name = value` lines, in order.
    pub fn lines(&self) -> Vec<(String, String)> {
        let mut out = vec![("restore_command".to_string(), quote(&self.restore_command))];
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

    /// Append the settings to `<data_dir>/postgresql.auto.conf` and create
    /// `recovery.signal`.
    pub fn write(&self, data_dir: &Path) -> io::Result<()> {
        let auto = data_dir.join("postgresql.auto.conf");
        let mut content = match fs::read_to_string(&auto) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        if !content.is_empty() && !content.ends_with('\n') {
            content.push('\n');
        }
        content.push_str("# recovery settings written by tidemark restore\n");
        for (name, value) in self.lines() {
            content.push_str(&format!("{name} = {value}\n"));
        }
        write_atomically(&auto, content.as_bytes())?;
        write_atomically(&data_dir.join("recovery.signal"), b"")
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tidemark-tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = fs::File::create(&tmp)?;
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
            target,
            timeline: TimelineTarget::Latest,
            action: TargetAction::Promote,
            inclusive: true,
            keep_archiving: false,
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
}
