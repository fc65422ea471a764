//! `stream --metrics-listen`: the endpoint's text passes `promtool check metrics`, a real
//! Prometheus server scrapes it, and its values follow what really happens — positions
//! and the RPO while WAL is archived, an RPO that grows while S3 is down and falls once
//! it is back, a taken address refused before anything starts.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tidemark_fixtures::{free_port, Cluster, OutageProxy};
use tidemark_protocol::WalSegmentSize;

/// `GET path` on 127.0.0.1:`port`: the status line and the body; `None` while nothing
/// answers there.
fn try_get(port: u16, path: &str) -> Option<(String, String)> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    Some((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

fn http_get(port: u16, path: &str) -> (String, String) {
    try_get(port, path).unwrap_or_else(|| panic!("no HTTP answer on port {port} for {path}"))
}

/// Every sample of a scrape: `name{labels}` (as written) to value.
fn scrape(port: u16) -> (String, BTreeMap<String, f64>) {
    let (status, text) = http_get(port, "/metrics");
    assert!(status.contains("200"), "{status}\n{text}");
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect();
    (text, samples)
}

fn value(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing from {samples:#?}"))
}

fn metrics_archiver(cluster: &Cluster, repo: &Repo, port: u16) -> Archiver {
    let listen = format!("127.0.0.1:{port}");
    Archiver::new(
        cluster,
        repo,
        &["--partial-interval", "1", "--metrics-listen", &listen],
    )
}

/// A Prometheus server scraping `target` every second, stopped when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tidemark\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/setup.sh installs it)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// The value of the instant query `query`, once Prometheus has a sample for it.
    fn query(&self, query: &str) -> f64 {
        wait_for(query, Duration::from_secs(60), || {
            let path = format!("/api/v1/query?query={query}");
            let (status, body) = try_get(self.port, &path)?;
            if !status.contains("200") {
                return None;
            }
            let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
            let first = doc["data"]["result"].get(0)?;
            assert_eq!(first["metric"]["job"], "tidemark", "{doc:#}");
            first["value"][1].as_str()?.parse().ok()
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn stream_metrics_pass_promtool_and_a_real_prometheus_scrape_reads_the_rpo() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    let repo = Repo::s3("metrics");
    let port = free_port();
    let mut archiver = metrics_archiver(&cluster, &repo, port);
    archiver.init();
    archiver.start();
    cluster
        .psql("CREATE TABLE t AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 5000) g")
        .unwrap();
    backup(&archiver, &[]);
    // Restarted, so that its first reading of the repository sees the backup.
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
    archiver.start();
    cluster
        .psql("INSERT INTO t SELECT g, 'later' FROM generate_series(1, 5000) g")
        .unwrap();
    let end = switch_wal(&cluster);
    archiver.wait_contiguous_through(end, seg, Duration::from_secs(60));

    let (text, samples) = wait_for("the archived position", Duration::from_secs(30), || {
        let (text, samples) = scrape(port);
        let archived = samples.get("tidemark_wal_archived_position_bytes")?;
        (*archived >= end.0 as f64).then_some((text, samples))
    });
    assert_eq!(value(&samples, "tidemark_server_connected"), 1.0, "{text}");
    assert!(
        value(&samples, "tidemark_server_position_bytes") >= end.0 as f64,
        "{text}"
    );
    assert!(value(&samples, "tidemark_rpo_seconds") < 30.0, "{text}");
    assert!(
        value(
            &samples,
            "tidemark_upload_duration_seconds_count{kind=\"segment\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        value(
            &samples,
            "tidemark_upload_stored_bytes_total{kind=\"segment\"}"
        ) > 0.0,
        "{text}"
    );
    assert!(
        value(&samples, "tidemark_wal_archived_bytes_total") > 0.0,
        "{text}"
    );
    let age = value(&samples, "tidemark_backup_newest_age_seconds");
    assert!((0.0..600.0).contains(&age), "{text}");
    assert!(
        value(
            &samples,
            "tidemark_restorable_window_seconds{store=\"database\"}"
        ) >= 0.0,
        "{text}"
    );
    assert!(samples.contains_key("tidemark_spool_bytes"), "{text}");
    // Asked for OpenMetrics (as Prometheus asks), it gets that format.
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        conn,
        "GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("application/openmetrics-text"), "{reply}");
    assert!(
        reply.contains("# TYPE tidemark_wal_archived_bytes counter"),
        "{reply}"
    );
    assert!(reply.ends_with("# EOF\n"), "{reply}");

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/setup.sh installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let (status, _) = http_get(port, "/other");
    assert!(status.contains("404"), "{status}");

    let prometheus = Prometheus::start(port);
    let rpo = prometheus.query("tidemark_rpo_seconds");
    assert!((0.0..60.0).contains(&rpo), "RPO {rpo}");
    let archived = prometheus.query("tidemark_wal_archived_position_bytes");
    assert!(archived >= end.0 as f64, "archived position {archived}");
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
}

#[test]
fn the_rpo_grows_while_s3_is_down_and_falls_once_it_is_back() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let seg = WalSegmentSize::new(1 << 20).unwrap();
    hold_wal(&cluster);
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let proxy = OutageProxy::start(s3.endpoint.trim_start_matches("http://")).expect("proxy");
    let repo = Repo::s3_via("metrics-outage", proxy.endpoint());
    let port = free_port();
    let mut archiver = metrics_archiver(&cluster, &repo, port);
    archiver.init();
    archiver.start();
    let first = switch_wal(&cluster);
    archiver.wait_contiguous_through(first, seg, Duration::from_secs(60));

    proxy.cut();
    cluster
        .psql("CREATE TABLE during AS SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
        .unwrap();
    let during = switch_wal(&cluster);
    // The SDK's own retries come first: a failed attempt reaches tidemark (and the
    // counter) some seconds into the outage.
    let errors = "tidemark_upload_errors_total{error=\"transient\"}";
    let what = "the RPO past 5 s and a failed upload";
    let (text, samples) = wait_for(what, Duration::from_secs(60), || {
        let (text, samples) = scrape(port);
        let late = *samples.get("tidemark_rpo_seconds")? >= 5.0;
        (late && *samples.get(errors)? >= 1.0).then_some((text, samples))
    });
    assert!(
        value(&samples, "tidemark_wal_archived_position_bytes") < during.0 as f64,
        "{text}"
    );
    assert!(
        value(&samples, "tidemark_archive_lag_bytes") > 0.0,
        "{text}"
    );
    assert!(
        value(&samples, "tidemark_archive_lag_seconds") >= 5.0,
        "{text}"
    );

    proxy.restore();
    archiver.wait_contiguous_through(during, seg, Duration::from_secs(120));
    let (text, _) = wait_for("the RPO to fall", Duration::from_secs(30), || {
        let (text, samples) = scrape(port);
        (*samples.get("tidemark_rpo_seconds")? < 5.0).then_some((text, samples))
    });
    assert!(text.contains("tidemark_server_connected 1"), "{text}");
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
}

#[test]
fn a_taken_metrics_address_is_refused_before_streaming_starts() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let repo = Repo::file();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let archiver = metrics_archiver(&cluster, &repo, port);
    archiver.init();
    let out = run(archiver.command(&["stream", "--metrics-listen", &format!("127.0.0.1:{port}")]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cannot listen on 127.0.0.1:{port} for metrics")),
        "{}",
        stderr(&out)
    );
    let wal: Vec<_> = repo
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("wal/"))
        .collect();
    assert!(wal.is_empty(), "archived {wal:?}");
}

#[test]
fn bucket_tracking_beside_streaming_reports_each_pass_and_the_bucket_window() {
    let cluster = Cluster::start(one_mb()).expect("cluster");
    let s3 = tidemark_fixtures::s3().expect("S3 test server");
    let bucket = s3.create_bucket("app", true).unwrap();
    let repo = Repo::s3("metrics-tracking");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut archiver = Archiver::new(
        &cluster,
        &repo,
        &[
            "--track-bucket",
            &bucket,
            "--track-interval",
            "1",
            "--metrics-listen",
            &listen,
        ],
    );
    archiver.init();
    archiver.start();
    s3.put_object(&bucket, "a.txt", b"one").unwrap();
    let window =
        format!("tidemark_restorable_window_seconds{{store=\"bucket\",bucket=\"{bucket}\"}}");
    let (text, samples) = wait_for(
        "two seconds of bucket history",
        Duration::from_secs(60),
        || {
            let (text, samples) = scrape(port);
            (*samples.get(&window)? >= 2.0).then_some((text, samples))
        },
    );
    let age = value(
        &samples,
        &format!("tidemark_bucket_pass_age_seconds{{bucket=\"{bucket}\"}}"),
    );
    assert!(age < 10.0, "{text}");
    let took = value(
        &samples,
        &format!("tidemark_bucket_pass_duration_seconds{{bucket=\"{bucket}\"}}"),
    );
    assert!(took > 0.0 && took < 30.0, "{text}");
    assert_eq!(archiver.terminate(), 0, "{}", archiver.log());
}
