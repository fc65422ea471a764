//! The replication client against a real PostgreSQL 15: a throw-away cluster under /tmp
//! (run as the `postgres` OS user when the tests run as root) with SCRAM, MD5 and
//! non-replication roles, TLS with a test CA, and a Unix socket. Fails, never skips,
//! when PostgreSQL is missing.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tidemark_protocol::{
    ConnInfo, Lsn, ReplicationClient, ReplicationError, StartOutcome, StreamMessage, TimelineId,
};

const BINDIR: &str = "/usr/lib/postgresql/15/bin";
/// First two bytes of every WAL page on PostgreSQL 15 (XLOG_PAGE_MAGIC, little-endian).
const XLOG_PAGE_MAGIC_PG15: u16 = 0xD110;

/// uid/gid to run server-side programs as: `postgres` when we are root, else ourselves.
fn server_identity() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns null or a pointer to a static passwd entry, read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root but there is no `postgres` OS user"
    );
    // SAFETY: checked non-null above.
    let pw = unsafe { &*pw };
    Some((pw.pw_uid, pw.pw_gid))
}

/// A running throw-away cluster; stopped (SIGINT, then SIGKILL) and removed on drop.
struct Cluster {
    base: tempfile::TempDir,
    port: u16,
    server: Child,
}

impl Cluster {
    fn sock_dir(&self) -> PathBuf {
        self.base.path().join("sock")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.base.path().join(name)
    }

    /// Run a server-side program (as `postgres` when root), panicking on failure.
    fn run_as_server(identity: Option<(u32, u32)>, program: &str, args: &[&str], cwd: &Path) {
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(cwd);
        if let Some((uid, gid)) = identity {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is PostgreSQL 15 installed?)"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start() -> Cluster {
        let bin = |name: &str| format!("{BINDIR}/{name}");
        assert!(
            Path::new(&bin("postgres")).exists(),
            "PostgreSQL 15 is required at {BINDIR} (apt-get install postgresql-15)"
        );
        let identity = server_identity();
        let base = tempfile::Builder::new()
            .prefix("tm-proto-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::create_dir(base.path().join("sock")).unwrap();
        if let Some((uid, gid)) = identity {
            for dir in [base.path().to_path_buf(), base.path().join("sock")] {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
            }
        }
        let data = base.path().join("data");
        let data_str = data.to_str().unwrap();
        Self::run_as_server(
            identity,
            &bin("initdb"),
            &[
                "-D",
                data_str,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-N",
                "--wal-segsize=1",
            ],
            base.path(),
        );
        make_certificates(identity, base.path(), &data);
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             local replication all trust\n\
             host replication rep_md5 127.0.0.1/32 md5\n\
             host replication all 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(base.path().join("server.log")).unwrap();
        let mut cmd = Command::new(bin("postgres"));
        cmd.args(["-D", data_str, "-p", &port.to_string()])
            .args(["-k", base.path().join("sock").to_str().unwrap()])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "wal_level=replica",
            ])
            .args(["-c", "max_wal_senders=4", "-c", "fsync=off", "-c", "ssl=on"])
            .args([
                "-c",
                "ssl_cert_file=server.crt",
                "-c",
                "ssl_key_file=server.key",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some((uid, gid)) = identity {
            cmd.uid(uid).gid(gid);
        }
        let server = cmd.spawn().expect("cannot start postgres");
        let cluster = Cluster { base, port, server };
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.try_psql("SELECT 1").is_none() {
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(cluster.file("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        cluster.psql(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE rep_scram LOGIN REPLICATION PASSWORD 'scram-pw';
             CREATE ROLE norepl LOGIN PASSWORD 'norepl-pw';
             SET password_encryption = 'md5';
             CREATE ROLE rep_md5 LOGIN REPLICATION PASSWORD 'md5-pw';",
        );
        cluster
    }

    fn try_psql(&self, sql: &str) -> Option<String> {
        let out = Command::new(format!("{BINDIR}/psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args([
                "-h",
                self.sock_dir().to_str().unwrap(),
                "-p",
                &self.port.to_string(),
            ])
            .args(["-c", sql])
            .output()
            .expect("cannot run psql");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|| panic!("psql failed: {sql}"))
    }

    /// ConnInfo for this cluster; the environment is empty so no real ~/.pgpass or
    /// PG* variable leaks in.
    fn conninfo(&self, settings: &str) -> ConnInfo {
        ConnInfo::parse_with_env(
            &format!("port={} connect_timeout=10 {settings}", self.port),
            &|var| (var == "HOME").then(|| "/nonexistent".to_string()),
        )
        .unwrap()
    }

    fn tcp(&self, user: &str, password: &str, settings: &str) -> ConnInfo {
        self.conninfo(&format!(
            "host=127.0.0.1 user={user} password={password} {settings}"
        ))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pid = self.server.id() as libc::pid_t;
        for (signal, wait) in [(libc::SIGINT, 10), (libc::SIGKILL, 5)] {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(pid, signal) };
            let deadline = Instant::now() + Duration::from_secs(wait);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.server.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A test CA, a server certificate for 127.0.0.1/localhost signed by it, and an
/// unrelated CA, made with the `openssl` CLI.
fn make_certificates(identity: Option<(u32, u32)>, base: &Path, data: &Path) {
    let openssl = |args: &[&str]| Cluster::run_as_server(identity, "openssl", args, base);
    for (name, cn) in [("ca", "tidemark test ca"), ("wrong-ca", "someone else")] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }
    std::fs::write(
        base.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let key = data.join("server.key");
    let crt = data.join("server.crt");
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        crt.to_str().unwrap(),
    ]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
}

async fn connect(info: &ConnInfo) -> ReplicationClient {
    ReplicationClient::connect(info)
        .await
        .unwrap_or_else(|e| panic!("connect {info}: {e}"))
}

async fn connect_err(info: &ConnInfo) -> ReplicationError {
    match ReplicationClient::connect(info).await {
        Ok(_) => panic!("connect {info} should fail"),
        Err(e) => e,
    }
}

/// Superuser over the Unix socket: IDENTIFY_SYSTEM and SHOW agree with SQL.
async fn unix_socket_identify_system(c: &Cluster) {
    let info = c.conninfo(&format!("host={} user=postgres", c.sock_dir().display()));
    let mut client = connect(&info).await;
    assert!(client.server_version_num() >= 150000 && client.server_version_num() < 160000);
    let id = client.identify_system().await.unwrap();
    let sysid = c.psql("SELECT system_identifier FROM pg_control_system()");
    assert_eq!(id.system_id.to_string(), sysid);
    assert_eq!(id.timeline, TimelineId(1));
    assert!(id.xlogpos > Lsn(0));
    assert_eq!(client.wal_segment_size().await.unwrap().bytes(), 1 << 20);
    assert_eq!(client.show("wal_level").await.unwrap(), "replica");
    // Timeline 1 has no history file.
    let err = client.timeline_history(TimelineId(1)).await.unwrap_err();
    assert!(err.server_error().is_some(), "{err}");
    client.close().await.unwrap();
}

/// SCRAM login; slot created once, then reported as existing; READ_REPLICATION_SLOT.
async fn scram_and_slots(c: &Cluster) {
    let mut client = connect(&c.tcp("rep_scram", "scram-pw", "sslmode=disable")).await;
    assert!(client.create_physical_slot("tm_slot").await.unwrap());
    assert!(!client.create_physical_slot("tm_slot").await.unwrap());
    let slot = client
        .read_replication_slot("tm_slot")
        .await
        .unwrap()
        .unwrap();
    assert!(slot.physical);
    assert!(slot.restart_lsn.is_some_and(|l| l > Lsn(0)));
    assert_eq!(slot.restart_timeline, Some(TimelineId(1)));
    assert_eq!(
        client.read_replication_slot("no_such_slot").await.unwrap(),
        None
    );
}

/// START_REPLICATION on the slot: real WAL arrives (page magic at the segment start),
/// and a status update moves the slot's restart_lsn.
async fn streaming_and_feedback(c: &Cluster) {
    let mut client = connect(&c.tcp("rep_scram", "scram-pw", "sslmode=prefer")).await;
    let seg = client.wal_segment_size().await.unwrap();
    let id = client.identify_system().await.unwrap();
    let start = id.xlogpos.segment_start(seg);
    let StartOutcome::Streaming(mut stream) = client
        .start_replication(Some("tm_slot"), start, id.timeline)
        .await
        .unwrap()
    else {
        panic!("expected streaming");
    };
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 20000) AS x");
    let target: Lsn = c.psql("SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    c.psql("SELECT pg_switch_wal()");

    let mut received = start;
    let mut saw_page_magic = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received < target {
        assert!(
            Instant::now() < deadline,
            "only got WAL up to {received}, want {target}"
        );
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next_message())
            .await
            .expect("no message within 10 s")
            .unwrap();
        match message {
            StreamMessage::XLogData {
                wal_start, data, ..
            } => {
                assert_eq!(wal_start, received, "WAL must arrive contiguously");
                if wal_start == start && data.len() >= 2 {
                    saw_page_magic = u16::from_le_bytes([data[0], data[1]]) == XLOG_PAGE_MAGIC_PG15;
                }
                received = wal_start + data.len() as u64;
            }
            StreamMessage::Keepalive {
                reply_requested: true,
                ..
            } => {
                stream
                    .send_status(received, received, Lsn(0), false)
                    .await
                    .unwrap();
            }
            StreamMessage::Keepalive { .. } => {}
            StreamMessage::EndOfTimeline { .. } => panic!("timeline must not end"),
        }
    }
    assert!(
        saw_page_magic,
        "first WAL page should start with the PG15 page magic"
    );
    stream
        .send_status(received, received, Lsn(0), true)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let restart: Lsn = c
            .psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'tm_slot'")
            .parse()
            .unwrap();
        if restart >= received {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slot stayed at {restart}, flushed {received}"
        );
        // Keep reading so the walsender processes our feedback.
        let _ = tokio::time::timeout(Duration::from_millis(50), stream.next_message()).await;
    }
}

/// MD5 login works; wrong passwords and missing REPLICATION are told apart.
async fn md5_and_failures(c: &Cluster) {
    let mut client = connect(&c.tcp("rep_md5", "md5-pw", "sslmode=disable")).await;
    client.identify_system().await.unwrap();

    for (user, password) in [("rep_md5", "nope"), ("rep_scram", "nope")] {
        let err = connect_err(&c.tcp(user, password, "sslmode=disable")).await;
        assert!(
            err.is_auth_failure() && !err.is_replication_denied(),
            "{user}: {err}"
        );
        assert_eq!(err.sqlstate(), Some("28P01"), "{user}: {err}");
    }
    let err = connect_err(&c.tcp("norepl", "norepl-pw", "sslmode=disable")).await;
    assert!(
        err.is_replication_denied() && !err.is_auth_failure(),
        "{err}"
    );
}

/// TLS: require encrypts (the server sees ssl), verify-full/verify-ca accept the right
/// CA and reject a wrong one.
async fn tls_modes(c: &Cluster) {
    let ca = c.file("ca.crt");
    let wrong = c.file("wrong-ca.crt");
    let mut client = connect(&c.tcp("rep_scram", "scram-pw", "sslmode=require")).await;
    client.identify_system().await.unwrap();
    let encrypted = c.psql(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.usename = 'rep_scram' AND s.ssl",
    );
    assert_eq!(encrypted, "1");
    client.close().await.unwrap();

    for host in ["127.0.0.1", "localhost"] {
        let info = c.conninfo(&format!(
            "host={host} user=rep_scram password=scram-pw sslmode=verify-full sslrootcert={}",
            ca.display()
        ));
        connect(&info).await.identify_system().await.unwrap();
    }
    let info = c.tcp(
        "rep_scram",
        "scram-pw",
        &format!("sslmode=verify-ca sslrootcert={}", ca.display()),
    );
    connect(&info).await;
    for mode in ["verify-full", "verify-ca"] {
        let info = c.tcp(
            "rep_scram",
            "scram-pw",
            &format!("sslmode={mode} sslrootcert={}", wrong.display()),
        );
        let err = connect_err(&info).await;
        assert!(matches!(err, ReplicationError::Tls { .. }), "{mode}: {err}");
    }
    let info = c.tcp(
        "rep_scram",
        "scram-pw",
        "sslmode=verify-full sslrootcert=/nonexistent/ca.crt",
    );
    let err = connect_err(&info).await;
    assert!(
        matches!(err, ReplicationError::Tls { .. }) && err.to_string().contains("sslrootcert"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_client_against_postgres_15() {
    let cluster = Cluster::start();
    unix_socket_identify_system(&cluster).await;
    scram_and_slots(&cluster).await;
    streaming_and_feedback(&cluster).await;
    md5_and_failures(&cluster).await;
    tls_modes(&cluster).await;
}
