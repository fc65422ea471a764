//! `tidemark.toml`: a named cluster in a config file drives init, stream, backup and
//! restore against real PostgreSQL and S3 with no flags or variables but `--config` and
//! `--cluster`; the restored server recovers through the config-based restore_command.
//! Precedence is flag > environment > file > default, one test per boundary. Also the
//! log options: JSON lines, colour only on a terminal and never with `NO_COLOR`, a bad
//! filter refused.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tidemark_fixtures::Cluster;

/// Rows `from..to` tagged `tag`; returns the WAL position after the commit.
fn rows(cluster: &Cluster, tag: &str, from: u32, to: u32) -> tidemark_protocol::Lsn {
    cluster
        .psql(&format!(
            "INSERT INTO t SELECT g, '{tag}' FROM generate_series({from}, {to}) g"
        ))
        .unwrap();
    current_lsn(cluster)
}

/// Mode 0600, owned by the server's user (who runs restore_command) when we are root.
fn private_to_postgres(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let ok = Command::new("chown")
            .arg("postgres:postgres")
            .arg(path)
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

fn var(env: &[(String, String)], name: &str) -> String {
    env.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{name} in the S3 test environment"))
}

#[test]
fn a_named_cluster_in_a_config_file_archives_backs_up_and_restores_through_it() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let bucket = s3.create_bucket("config", false).unwrap();
    let env = s3.env();
    let etc = tidemark_fixtures::test_dir("etc");
    share_with_postgres(etc.path());
    // Credentials by reference: a profile in an AWS credentials file.
    let credentials = etc.path().join("aws-credentials");
    fs::write(
        &credentials,
        format!(
            "[tidemark]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            var(&env, "AWS_ACCESS_KEY_ID"),
            var(&env, "AWS_SECRET_ACCESS_KEY")
        ),
    )
    .unwrap();
    private_to_postgres(&credentials);
    let repo_url = format!("s3://{bucket}/main");
    let catalog = etc.path().join("main.db");
    let config = etc.path().join("tidemark.toml");
    fs::write(
        &config,
        format!(
            "log_format = \"json\"\n\n\
             [s3]\nendpoint = \"{}\"\nregion = \"{}\"\nprofile = \"tidemark\"\ncredentials_file = \"{}\"\n\n\
             [cluster.other]\nrepo = \"s3://{bucket}/other\"\npg = \"host=/nonexistent\"\n\n\
             [cluster.main]\npg = \"{}\"\nrepo = \"{repo_url}\"\ncatalog = \"{}\"\n\n\
             [cluster.main.stream]\npartial_interval = 1\n",
            var(&env, "AWS_ENDPOINT_URL_S3"),
            var(&env, "AWS_REGION"),
            credentials.display(),
            cluster.conninfo(),
            catalog.display(),
        ),
    )
    .unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();

    let mut archiver = Archiver::configured(&config, "main", &repo_url, catalog);
    archiver.init();
    archiver.start();
    cluster.psql("CREATE TABLE t(id int, tag text)").unwrap();
    rows(&cluster, "before-backup", 1, 50);
    // A flag beats the file's log_format: this command logs text.
    let out = run(archiver.command(&["--log-format", "text", "backup", "--json"]));
    assert!(out.status.success(), "backup: {}", stderr(&out));
    let backup: serde_json::Value = serde_json::from_slice(&out.stdout).expect("backup --json");
    let listed = run(archiver.command(&["list", "backups", "--json"]));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("list --json");
    assert_eq!(listed[0]["id"], backup["id"], "{backup:#}");
    assert!(backup["id"].is_string(), "{backup:#}");
    let backup_log = stderr(&out);
    assert!(!backup_log.contains('\u{1b}'), "{backup_log}");
    assert!(!backup_log.trim_start().starts_with('{'), "{backup_log}");
    let target = rows(&cluster, "before-target", 51, 80);
    rows(&cluster, "after-target", 81, 100);
    let end = switch_wal(&cluster);
    archiver.wait_stored(end, Duration::from_secs(60));

    // The file's log_format: every line of the stream log is a JSON object, no colour.
    let log = archiver.log();
    assert!(!log.contains('\u{1b}'), "{log}");
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        lines += 1;
    }
    assert!(lines > 0, "no log lines");

    // A reader that goes away is no error: `list wal | head -0`.
    let mut child = archiver
        .command(&["list", "wal"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert_eq!(archiver.terminate(), 0);

    // The catalog rebuilt from the repository, reported as JSON.
    let out = run(archiver.command(&["reindex", "--json"]));
    assert!(out.status.success(), "reindex: {}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("reindex --json");
    assert!(summary["segments"].as_u64().unwrap() >= 2, "{summary:#}");
    assert_eq!(summary["repository"], repo_url.as_str());

    let dir = tidemark_fixtures::test_dir("config-restore");
    let data = dir.path().join("data");
    let target_text = target.to_string();
    let out = run(archiver.command(&[
        "restore",
        "--pgdata",
        data.to_str().unwrap(),
        "--target-lsn",
        &target_text,
        "--json",
    ]));
    assert!(out.status.success(), "restore: {}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("restore --json");
    assert_eq!(report["plan"]["backup"], backup["id"], "{report:#}");
    assert_eq!(
        report["plan"]["target"],
        format!("LSN {target_text}"),
        "{report:#}"
    );
    assert!(
        report["restored"]["chunks"].as_u64().unwrap() >= 1,
        "{report:#}"
    );
    assert!(report["restored"]["env_file"].is_null(), "{report:#}");
    let auto = fs::read_to_string(dir.path().join("data/postgresql.auto.conf")).unwrap();
    assert!(
        // Quoted for the shell, and again for postgresql.auto.conf.
        auto.contains(&format!(
            "--config ''{}'' --cluster ''main''",
            config.display()
        )),
        "{auto}"
    );
    assert!(!dir.path().join("data.tidemark.env").exists());
    // Started with no storage variables: the server's restore_command has only the file.
    let restored = start_recovered(dir, one_mb());
    let counts = restored
        .psql("SELECT string_agg(tag || ':' || n, ',' ORDER BY tag) FROM (SELECT tag, count(*) n FROM t GROUP BY tag) s")
        .unwrap();
    assert_eq!(counts, "before-backup:50,before-target:30");
}

/// `tidemark list wal` with a file that names a catalog, and what the error says it
/// looked for: the catalog path that won.
fn catalog_used(config: &Path, env: Option<&str>, flag: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    cmd.env_remove("TIDEMARK_CATALOG")
        .env_remove("TIDEMARK_REPO")
        .env("XDG_STATE_HOME", "/nonexistent/state")
        .arg("--config")
        .arg(config);
    if let Some(e) = env {
        cmd.env("TIDEMARK_CATALOG", e);
    }
    if let Some(f) = flag {
        cmd.args(["--catalog", f]);
    }
    let out = run({
        cmd.args(["list", "wal"]);
        cmd
    });
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stderr(&out);
    text.split("catalog ")
        .nth(1)
        .and_then(|r| r.split(" does not exist").next())
        .unwrap_or_else(|| panic!("no catalog path in {text}"))
        .to_string()
}

fn config_with(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tidemark.toml");
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let with = config_with(
        dir.path(),
        "repo = \"file:///nonexistent/repo\"\ncatalog = \"/from/file.db\"\n",
    );
    assert_eq!(
        catalog_used(&with, Some("/from/env.db"), Some("/from/flag.db")),
        "/from/flag.db"
    );
    assert_eq!(
        catalog_used(&with, Some("/from/env.db"), None),
        "/from/env.db"
    );
    assert_eq!(catalog_used(&with, None, None), "/from/file.db");
    let without = config_with(dir.path(), "repo = \"file:///nonexistent/repo\"\n");
    assert!(catalog_used(&without, None, None).starts_with("/nonexistent/state/tidemark/"));
}

#[test]
fn the_environment_beats_the_files_s3_endpoint() {
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let bucket = s3.create_bucket("config-endpoint", false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let real = var(&s3.env(), "AWS_ENDPOINT_URL_S3");
    let list = |file_endpoint: &str, env_endpoint: Option<&str>| {
        let config = config_with(
            dir.path(),
            &format!("repo = \"s3://{bucket}/r\"\n[s3]\nendpoint = \"{file_endpoint}\"\n"),
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemark"));
        cmd.envs(s3.env())
            .env_remove("AWS_ENDPOINT_URL_S3")
            .env_remove("TIDEMARK_REPO")
            .arg("--config")
            .arg(&config)
            .args(["list", "backups", "--json"]);
        if let Some(e) = env_endpoint {
            cmd.env("AWS_ENDPOINT_URL_S3", e);
        }
        run(cmd)
    };
    // The file's endpoint is used when the environment has none.
    let out = list(&real, None);
    assert!(out.status.success(), "{}", stderr(&out));
    // An endpoint in the environment wins over a wrong one in the file.
    let out = list("http://127.0.0.1:9", Some(&real));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn config_mistakes_and_bad_log_filters_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let typo = config_with(
        dir.path(),
        "repo = \"file:///x\"\n\n[stream]\nslto = \"s\"\n",
    );
    let out = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_tidemark"));
        c.arg("--config").arg(&typo).args(["list", "wal"]);
        c
    });
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(
        text.contains("unknown key `slto`") && text.contains("line 4"),
        "{text}"
    );

    let out = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_tidemark"));
        c.args(["--log", "info,tidemark=loud", "list", "wal"]);
        c
    });
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a log filter"),
        "{}",
        stderr(&out)
    );

    let out = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_tidemark"));
        c.env_remove("TIDEMARK_CONFIG")
            .args(["--cluster", "main", "list", "wal"]);
        c
    });
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs a config file"),
        "{}",
        stderr(&out)
    );
}

/// `status` of a repository that is not there, which logs a warning; stdout and stderr
/// merged. `pty`: run under `script`, on a terminal.
fn warning_output(pty: bool, no_color: bool) -> String {
    let work = tidemark_fixtures::test_dir("colour");
    let catalog = work.path().join("catalog.db");
    tidemark_store::catalog::Catalog::open(&catalog).unwrap();
    let line = format!(
        "{} --repo file:///nonexistent/repo --catalog {} status 2>&1",
        env!("CARGO_BIN_EXE_tidemark"),
        catalog.display()
    );
    let mut cmd = match pty {
        true => {
            let mut c = Command::new("script");
            c.args(["-qec", &line, "/dev/null"]);
            c
        }
        false => {
            let mut c = Command::new("sh");
            c.args(["-c", &line]);
            c
        }
    };
    cmd.env_remove("NO_COLOR").env_remove("TIDEMARK_LOG");
    if no_color {
        cmd.env("NO_COLOR", "1");
    }
    let out = run(cmd);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("WARN"), "{text}");
    text
}

#[test]
fn log_colours_only_on_a_terminal_and_never_with_no_color() {
    assert!(warning_output(true, false).contains("\u{1b}["));
    assert!(!warning_output(true, true).contains('\u{1b}'));
    assert!(!warning_output(false, false).contains('\u{1b}'));
}
