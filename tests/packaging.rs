//! What ships beside the binary: the systemd units in `packaging/systemd` pass
//! `systemd-analyze verify` and their commands, run as written with only the config
//! file, archive, back up, mark and expire a real cluster and stop cleanly on their
//! `KillSignal`; the completion script and the man pages are generated from the options.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tidemark_fixtures::Cluster;

const UNITS: [&str; 7] = [
    "tidemark-stream@.service",
    "tidemark-backup@.service",
    "tidemark-backup@.timer",
    "tidemark-expire@.service",
    "tidemark-expire@.timer",
    "tidemark-group-mark@.service",
    "tidemark-group-mark@.timer",
];

fn unit_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/systemd")
        .join(name)
}

/// `key=` of the `[Service]` section of unit `name`.
fn service_key(name: &str, key: &str) -> String {
    let text = fs::read_to_string(unit_path(name)).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{name} has no {key}="))
        .to_string()
}

/// The unit's `ExecStart` for instance `main`, with the built binary in place of the
/// installed one.
fn exec_start(name: &str) -> Command {
    exec_start_for(name, "main")
}

/// The unit's `ExecStart` for `instance`.
fn exec_start_for(name: &str, instance: &str) -> Command {
    let line = service_key(name, "ExecStart").replace("%i", instance);
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/tidemark"), "{line}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    cmd.args(words);
    cmd
}

#[test]
fn the_shipped_systemd_units_pass_systemd_analyze_verify() {
    let root = tidemark_fixtures::test_dir("systemd-root");
    let r = root.path();
    // The system's own units (for the targets ours name), the binary where ExecStart
    // looks for it, and ours as an administrator installs them.
    let system = r.join("usr/lib/systemd");
    fs::create_dir_all(&system).unwrap();
    let copied = Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/systemd/system")
        .arg(&system)
        .status()
        .unwrap();
    assert!(copied.success());
    let bin = r.join("usr/local/bin");
    fs::create_dir_all(&bin).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_tidemark"));
    if fs::hard_link(exe, bin.join("tidemark")).is_err() {
        fs::copy(exe, bin.join("tidemark")).unwrap();
    }
    let etc = r.join("etc/systemd/system");
    fs::create_dir_all(&etc).unwrap();
    for unit in UNITS {
        fs::copy(unit_path(unit), etc.join(unit)).unwrap();
    }
    // The pages their Documentation= names, as `tidemark man` writes them.
    let man1 = r.join("man/man1");
    fs::create_dir_all(&man1).unwrap();
    for command in ["stream", "backup", "expire", "group"] {
        let page = Command::new(exe).args(["man", command]).output().unwrap();
        assert!(page.status.success());
        fs::write(man1.join(format!("tidemark-{command}.1")), page.stdout).unwrap();
    }
    let instances: Vec<String> = UNITS.iter().map(|u| u.replace("@.", "@main.")).collect();
    let out = Command::new("systemd-analyze")
        .env("MANPATH", r.join("man"))
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .args(&instances)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.trim().is_empty(), "warnings: {said}");
}

#[test]
fn the_units_commands_archive_back_up_and_expire_with_only_the_config_file() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let repo = Repo::file();
    let etc = tidemark_fixtures::test_dir("etc");
    let catalog = etc.path().join("main.db");
    let config = etc.path().join("tidemark.toml");
    fs::write(
        &config,
        format!(
            "[cluster.main]\npg = \"{}\"\nrepo = \"{}\"\ncatalog = \"{}\"\n\n\
             [cluster.main.stream]\npartial_interval = 1\n\n\
             [cluster.main.expire]\nretention = \"14d\"\n\n\
             [group.all]\nclusters = [\"main\"]\n",
            cluster.conninfo(),
            repo.url(),
            catalog.display()
        ),
    )
    .unwrap();
    let unit_env = |mut cmd: Command| {
        for (var, _) in std::env::vars() {
            if var.starts_with("TIDEMARK_") || var.starts_with("AWS_") {
                cmd.env_remove(var);
            }
        }
        cmd.env("TIDEMARK_CONFIG", &config).stdin(Stdio::null());
        cmd
    };
    let init = run(unit_env(
        Archiver::configured(&config, "main", &repo.url(), catalog.clone()).command(&["init"]),
    ));
    assert!(init.status.success(), "{}", stderr(&init));

    let log = etc.path().join("stream.log");
    let mut stream = unit_env(exec_start("tidemark-stream@.service"))
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    cluster
        .psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
        .unwrap();
    let mark = run(unit_env(exec_start_for(
        "tidemark-group-mark@.service",
        "all",
    )));
    assert!(mark.status.success(), "group mark: {}", stderr(&mark));
    let backup = run(unit_env(exec_start("tidemark-backup@.service")));
    assert!(backup.status.success(), "backup: {}", stderr(&backup));
    let expire = run(unit_env(exec_start("tidemark-expire@.service")));
    assert!(expire.status.success(), "expire: {}", stderr(&expire));
    let list = run(unit_env(
        Archiver::configured(&config, "main", &repo.url(), catalog.clone())
            .command(&["list", "backups", "--json"]),
    ));
    let backups: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(backups.as_array().map(Vec::len), Some(1), "{backups:#}");

    // systemd stops the service with its KillSignal and waits TimeoutStopSec.
    assert_eq!(
        service_key("tidemark-stream@.service", "KillSignal"),
        "SIGTERM"
    );
    let patience: u64 = service_key("tidemark-stream@.service", "TimeoutStopSec")
        .parse()
        .unwrap();
    // SAFETY: kill with a valid signal on our own child.
    unsafe { libc::kill(stream.id() as i32, libc::SIGTERM) };
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = stream.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(patience),
            "stream did not stop within TimeoutStopSec"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        fs::read_to_string(&log).unwrap()
    );
}

#[test]
fn completions_and_man_pages_are_generated_from_the_options() {
    let exe = env!("CARGO_BIN_EXE_tidemark");
    // Bash completes a subcommand from its prefix.
    let script = format!(
        "source <({exe} completions bash)\nCOMP_WORDS=(tidemark veri)\nCOMP_CWORD=1\n_tidemark tidemark veri tidemark\necho \"${{COMPREPLY[@]}}\""
    );
    let mut bash = Command::new("bash");
    bash.arg("-c").arg(&script);
    assert_eq!(succeeded(bash), "verify");

    for page in [vec!["man"], vec!["man", "stream"]] {
        let roff = Command::new(exe).args(&page).output().unwrap();
        assert!(
            roff.status.success(),
            "{}",
            String::from_utf8_lossy(&roff.stderr)
        );
        let mut groff = Command::new("groff")
            .args(["-man", "-T", "utf8", "-ww", "-P", "-bou"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("groff (Debian package groff-base)");
        use std::io::Write;
        groff.stdin.take().unwrap().write_all(&roff.stdout).unwrap();
        let shown = groff.wait_with_output().unwrap();
        let warnings = String::from_utf8_lossy(&shown.stderr);
        assert!(shown.status.success() && warnings.is_empty(), "{warnings}");
        let text = String::from_utf8_lossy(&shown.stdout);
        let expected = match page.len() {
            1 => "verify",
            _ => "metrics-listen",
        };
        assert!(text.contains(expected), "{page:?}: {text}");
    }
    let unknown = Command::new(exe).args(["man", "nope"]).output().unwrap();
    assert_eq!(unknown.status.code(), Some(2));
}
