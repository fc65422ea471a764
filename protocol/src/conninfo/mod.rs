//! `ConnInfo`: a libpq connection string (`key=value` pairs or a `postgresql://` URL)
//! resolved with libpq's defaults: `PG*` environment variables, the OS user name, the
//! Unix socket directory, and the password file (looked up for each host of the list).
//!
//! The environment is injectable (`ConnInfo::parse_with_env`) so that parsing is testable
//! without touching the process environment. The password never appears in `Display`
//! or `Debug`.

mod hosts;
mod pgpass;
mod syntax;

pub use hosts::{Endpoint, TargetSessionAttrs};

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The Unix socket directory Debian's libpq uses when no host is given.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// The fallback socket directory when [`DEFAULT_SOCKET_DIR`] does not exist.
pub const FALLBACK_SOCKET_DIR: &str = "/tmp";
pub const DEFAULT_PORT: u16 = 5432;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection string that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    /// The string is neither valid `key=value` pairs nor a valid URL.
    #[error("invalid connection string: {0}")]
    Syntax(String),
    /// A keyword libpq does not know, or that tidemark does not support.
    #[error("invalid connection string: unknown keyword {0:?}")]
    UnknownKeyword(String),
    /// A known keyword with a value it cannot take.
    #[error("invalid connection string: invalid {key} {value:?}: {expected}")]
    InvalidValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A `port` or `hostaddr` list whose length fits neither one entry for all hosts nor
    /// one per host.
    #[error("invalid connection string: {given} {what} entries for {hosts} {}; HINT: give one {what} for all hosts or one per host, in the order of host=", if *hosts == 1 { "host" } else { "hosts" })]
    ListLengths {
        what: &'static str,
        given: usize,
        hosts: usize,
    },
    /// The OS user name is needed as the default user but cannot be found.
    #[error("no user name given and the OS user is unknown: set user= or PGUSER")]
    NoUser,
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// Host name or IP address.
    Tcp(String),
    /// Directory holding the socket file `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    /// Treated like `prefer`: TLS when the server offers it, plain otherwise.
    Allow,
    #[default]
    Prefer,
    /// Encrypt, but verify neither the certificate chain nor the host name.
    Require,
    /// Verify the chain against `sslrootcert`, not the host name.
    VerifyCa,
    /// Verify the chain and that the certificate names the host.
    VerifyFull,
}

/// Trusted roots for `verify-ca` / `verify-full`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the well-known public CAs.
    System,
}

/// A resolved connection configuration: one or more servers to try in order, and the
/// settings they share.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Never empty.
    hosts: Vec<Endpoint>,
    /// `target_session_attrs` (or `PGTARGETSESSIONATTRS`); `None` when not given, which
    /// libpq reads as `any` and a caller may read otherwise.
    pub target_session_attrs: Option<TargetSessionAttrs>,
    pub user: String,
    /// The password given (keyword, URL or `PGPASSWORD`); else each host's password file
    /// entry is used.
    password: Option<String>,
    /// The database named at startup, if any (a physical walsender ignores it).
    pub dbname: Option<String>,
    pub sslmode: SslMode,
    pub sslrootcert: RootCert,
    /// Client certificate and key (PEM), both or neither.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub application_name: Option<String>,
    /// `None` waits forever (`connect_timeout=0`).
    pub connect_timeout: Option<Duration>,
}

/// Keywords accepted in a connection string.
const KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "target_session_attrs",
    "user",
    "password",
    "passfile",
    "dbname",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "application_name",
    "connect_timeout",
];

impl ConnInfo {
    /// Parse `s` and resolve defaults from `env` (a lookup like `std::env::var`) instead
    /// of the process environment. The OS user name and home directory still come from
    /// the password database when `env` has no `PGUSER` / `HOME`.
    pub fn parse_with_env(
        s: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConnInfo, ConnInfoError> {
        let mut given: Vec<(&'static str, String)> = Vec::new();
        for (key, value) in syntax::parse_pairs(s)? {
            let known = KEYWORDS
                .iter()
                .find(|k| **k == key)
                .ok_or(ConnInfoError::UnknownKeyword(key))?;
            given.retain(|(k, _)| k != known);
            // An empty value means "not set", as in libpq.
            if !value.is_empty() {
                given.push((known, value));
            }
        }
        let setting = |key: &str, var: &str| -> Option<String> {
            given
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| env(var).filter(|v| !v.is_empty()))
        };
        let home = || env("HOME").map(PathBuf::from).or_else(os_home_dir);

        let hosts = hosts::endpoints(
            setting("host", "PGHOST").as_deref(),
            setting("hostaddr", "PGHOSTADDR").as_deref(),
            setting("port", "PGPORT").as_deref(),
        )?;
        let target_session_attrs = setting("target_session_attrs", "PGTARGETSESSIONATTRS")
            .map(|v| v.parse())
            .transpose()?;
        let user = match setting("user", "PGUSER") {
            Some(u) => u,
            None => os_user_name().ok_or(ConnInfoError::NoUser)?,
        };
        let dbname = setting("dbname", "PGDATABASE");
        let sslmode = match setting("sslmode", "PGSSLMODE") {
            None => SslMode::default(),
            Some(m) => m.parse()?,
        };
        let sslrootcert = match setting("sslrootcert", "PGSSLROOTCERT") {
            Some(s) if s == "system" => RootCert::System,
            Some(path) => RootCert::File(PathBuf::from(path)),
            None => RootCert::File(
                home()
                    .unwrap_or_default()
                    .join(".postgresql")
                    .join("root.crt"),
            ),
        };
        let client_cert = match (
            setting("sslcert", "PGSSLCERT"),
            setting("sslkey", "PGSSLKEY"),
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (cert, _) => {
                return Err(ConnInfoError::InvalidValue {
                    key: if cert.is_some() { "sslcert" } else { "sslkey" },
                    value: cert.unwrap_or_default(),
                    expected: "sslcert and sslkey must be given together",
                })
            }
        };
        let application_name = setting("application_name", "PGAPPNAME");
        let connect_timeout = match setting("connect_timeout", "PGCONNECT_TIMEOUT") {
            None => Some(DEFAULT_CONNECT_TIMEOUT),
            Some(t) => match t.trim().parse::<u64>() {
                Ok(0) => None,
                // libpq's minimum: shorter timeouts fail spuriously.
                Ok(secs) => Some(Duration::from_secs(secs.max(2))),
                Err(_) => {
                    return Err(ConnInfoError::InvalidValue {
                        key: "connect_timeout",
                        value: t,
                        expected: "whole seconds, 0 to wait forever",
                    })
                }
            },
        };

        let mut info = ConnInfo {
            hosts,
            target_session_attrs,
            user,
            password: None,
            dbname,
            sslmode,
            sslrootcert,
            client_cert,
            application_name,
            connect_timeout,
        };
        info.password = setting("password", "PGPASSWORD");
        if info.password.is_none() {
            if let Some(path) = setting("passfile", "PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| home().map(|h| h.join(".pgpass")))
            {
                let dbname = info.dbname.clone();
                for endpoint in &mut info.hosts {
                    endpoint.passfile_password = pgpass::lookup(
                        &path,
                        &pgpass::PassKey {
                            host: &endpoint.pgpass_host,
                            port: &endpoint.port.to_string(),
                            // pg_receivewal and pg_basebackup use "replication" for
                            // physical replication connections without a database.
                            dbname: dbname.as_deref().unwrap_or("replication"),
                            user: &info.user,
                        },
                    );
                }
            }
        }
        Ok(info)
    }

    /// The servers to try, in order (at least one).
    pub fn hosts(&self) -> &[Endpoint] {
        &self.hosts
    }

    /// The same settings with only the `index`-th host (`None` past the end).
    pub fn only_host(&self, index: usize) -> Option<ConnInfo> {
        let endpoint = self.hosts.get(index)?.clone();
        Some(ConnInfo {
            hosts: vec![endpoint],
            ..self.clone()
        })
    }

    /// The password to answer `endpoint`'s password request with, if any: the one given,
    /// else that host's password file entry.
    pub fn password_for<'a>(&'a self, endpoint: &'a Endpoint) -> Option<&'a str> {
        self.password
            .as_deref()
            .or(endpoint.passfile_password.as_deref())
    }

    /// The password for the first host (see [`ConnInfo::password_for`]).
    pub fn password(&self) -> Option<&str> {
        self.password_for(&self.hosts[0])
    }

    /// Replace the password for every host (e.g. one read from a secret store).
    pub fn set_password(&mut self, password: Option<String>) {
        self.password = password;
    }

    /// The hosts as `host:port` or socket file paths, comma-separated, for messages.
    pub fn endpoint(&self) -> String {
        let all: Vec<String> = self.hosts.iter().map(Endpoint::describe).collect();
        all.join(",")
    }
}

impl FromStr for ConnInfo {
    type Err = ConnInfoError;

    /// Parse with defaults from the process environment.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConnInfo::parse_with_env(s, &|var| std::env::var(var).ok())
    }
}

impl FromStr for SslMode {
    type Err = ConnInfoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(ConnInfoError::InvalidValue {
                    key: "sslmode",
                    value: s.to_string(),
                    expected: "disable, allow, prefer, require, verify-ca or verify-full",
                })
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// Key=value form without the password; parses back to the same settings except the
/// password.
impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn pair(f: &mut fmt::Formatter<'_>, key: &str, value: &str) -> fmt::Result {
            let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
            write!(f, " {key}='{escaped}'")
        }
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|e| match &e.host {
                Host::Tcp(h) => h.clone(),
                Host::Unix(dir) => dir.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = self.hosts.iter().map(|e| e.port.to_string()).collect();
        write!(
            f,
            "host='{}' port={}",
            hosts.join(",").replace('\\', "\\\\").replace('\'', "\\'"),
            ports.join(",")
        )?;
        if self.hosts.iter().any(|e| e.hostaddr.is_some()) {
            let addrs: Vec<String> = self
                .hosts
                .iter()
                .map(|e| e.hostaddr.map(|a| a.to_string()).unwrap_or_default())
                .collect();
            write!(f, " hostaddr={}", addrs.join(","))?;
        }
        if let Some(attrs) = self.target_session_attrs {
            write!(f, " target_session_attrs={attrs}")?;
        }
        pair(f, "user", &self.user)?;
        if let Some(db) = &self.dbname {
            pair(f, "dbname", db)?;
        }
        write!(f, " sslmode={}", self.sslmode)?;
        if let RootCert::File(path) = &self.sslrootcert {
            pair(f, "sslrootcert", &path.display().to_string())?;
        } else {
            f.write_str(" sslrootcert=system")?;
        }
        if let Some((cert, key)) = &self.client_cert {
            pair(f, "sslcert", &cert.display().to_string())?;
            pair(f, "sslkey", &key.display().to_string())?;
        }
        if let Some(app) = &self.application_name {
            pair(f, "application_name", app)?;
        }
        let timeout = self.connect_timeout.map_or(0, |t| t.as_secs());
        write!(f, " connect_timeout={timeout}")
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field(
                "hosts",
                &self
                    .hosts
                    .iter()
                    .map(Endpoint::describe)
                    .collect::<Vec<_>>(),
            )
            .field("target_session_attrs", &self.target_session_attrs)
            .field("user", &self.user)
            .field(
                "password",
                &(self.password.is_some()
                    || self.hosts.iter().any(|e| e.passfile_password.is_some()))
                .then_some("<redacted>"),
            )
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("client_cert", &self.client_cert)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

fn os_user_name() -> Option<String> {
    crate::os_user::effective().map(|u| u.name)
}

fn os_home_dir() -> Option<PathBuf> {
    crate::os_user::effective().map(|u| u.home)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn parse(s: &str, env: &[(&str, &str)]) -> Result<ConnInfo, ConnInfoError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // HOME points nowhere so that the real ~/.pgpass never leaks into tests.
        ConnInfo::parse_with_env(s, &|var| match var {
            "HOME" => Some(env.get("HOME").cloned().unwrap_or("/nonexistent".into())),
            _ => env.get(var).cloned(),
        })
    }

    #[test]
    fn keyword_string() {
        let info = parse(
            "host=db.example port=6543 user=arch password='se cr\\'et' dbname=replication \
             sslmode=verify-full sslrootcert=/etc/ca.pem sslcert=/c.pem sslkey=/k.pem \
             application_name=tidemark connect_timeout=3",
            &[],
        )
        .unwrap();
        assert_eq!(info.hosts()[0].host, Host::Tcp("db.example".into()));
        assert_eq!(info.hosts()[0].port, 6543);
        assert_eq!(info.user, "arch");
        assert_eq!(info.password(), Some("se cr'et"));
        assert_eq!(info.dbname.as_deref(), Some("replication"));
        assert_eq!(info.sslmode, SslMode::VerifyFull);
        assert_eq!(info.sslrootcert, RootCert::File("/etc/ca.pem".into()));
        assert_eq!(info.client_cert, Some(("/c.pem".into(), "/k.pem".into())));
        assert_eq!(info.application_name.as_deref(), Some("tidemark"));
        assert_eq!(info.connect_timeout, Some(Duration::from_secs(3)));
        assert_eq!(info.endpoint(), "db.example:6543");
    }

    #[test]
    fn url_string() {
        let info = parse(
            "postgresql://arch:p%40ss@[::1]:6000/?sslmode=require&application_name=t%20m",
            &[("PGPASSWORD", "ignored")],
        )
        .unwrap();
        assert_eq!(info.hosts()[0].host, Host::Tcp("::1".into()));
        assert_eq!(info.hosts()[0].port, 6000);
        assert_eq!(info.password(), Some("p@ss"));
        assert_eq!(info.dbname, None);
        assert_eq!(info.sslmode, SslMode::Require);
        assert_eq!(info.application_name.as_deref(), Some("t m"));
        assert_eq!(info.endpoint(), "[::1]:6000");

        let info = parse("postgres://%2Fsock%2Fdir:7000", &[("PGUSER", "u")]).unwrap();
        assert_eq!(info.hosts()[0].host, Host::Unix("/sock/dir".into()));
        assert_eq!(info.endpoint(), "/sock/dir/.s.PGSQL.7000");
    }

    #[test]
    fn environment_defaults() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "5440"),
            ("PGUSER", "envuser"),
            ("PGDATABASE", "envdb"),
            ("PGSSLMODE", "verify-ca"),
            ("PGPASSWORD", "envpw"),
            ("PGSSLROOTCERT", "system"),
            ("PGCONNECT_TIMEOUT", "0"),
            ("PGAPPNAME", "envapp"),
        ];
        let info = parse("", &env).unwrap();
        assert_eq!(info.hosts()[0].host, Host::Tcp("envhost".into()));
        assert_eq!(info.hosts()[0].port, 5440);
        assert_eq!(info.user, "envuser");
        assert_eq!(info.dbname.as_deref(), Some("envdb"));
        assert_eq!(info.sslmode, SslMode::VerifyCa);
        assert_eq!(info.password(), Some("envpw"));
        assert_eq!(info.sslrootcert, RootCert::System);
        assert_eq!(info.connect_timeout, None);
        assert_eq!(info.application_name.as_deref(), Some("envapp"));

        // Explicit keywords beat the environment; an empty value means unset.
        let info = parse("host=h port=1 user=u password='' connect_timeout=1", &env).unwrap();
        assert_eq!(
            (
                &info.hosts()[0].host,
                info.hosts()[0].port,
                info.user.as_str()
            ),
            (&Host::Tcp("h".into()), 1, "u")
        );
        assert_eq!(info.password(), Some("envpw"));
        assert_eq!(info.connect_timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn built_in_defaults() {
        let info = parse("", &[("HOME", "/home/x")]).unwrap();
        let expected_dir = if Path::new(DEFAULT_SOCKET_DIR).is_dir() {
            DEFAULT_SOCKET_DIR
        } else {
            FALLBACK_SOCKET_DIR
        };
        assert_eq!(info.hosts()[0].host, Host::Unix(expected_dir.into()));
        assert_eq!(info.hosts()[0].port, 5432);
        assert_eq!(Some(info.user.clone()), os_user_name());
        assert_eq!(info.password(), None);
        assert_eq!(info.sslmode, SslMode::Prefer);
        assert_eq!(
            info.sslrootcert,
            RootCert::File("/home/x/.postgresql/root.crt".into())
        );
        assert_eq!(info.connect_timeout, Some(DEFAULT_CONNECT_TIMEOUT));
    }

    #[test]
    fn rejects_bad_strings() {
        for (input, needle) in [
            ("hots=x", "unknown keyword \"hots\""),
            ("replication=true", "unknown keyword"),
            ("port=70000", "invalid port"),
            ("port=0", "invalid port"),
            ("sslmode=verify", "invalid sslmode"),
            ("connect_timeout=soon", "invalid connect_timeout"),
            ("sslcert=/c.pem", "given together"),
            ("host=a,b port=1,2,3", "3 port entries for 2 hosts"),
            (
                "host=a,b hostaddr=127.0.0.1",
                "1 hostaddr entries for 2 hosts",
            ),
            (
                "target_session_attrs=master",
                "invalid target_session_attrs",
            ),
            ("postgresql://a:1,b:x/db", "invalid port"),
            ("host=a port", "missing \"=\""),
            ("postgresql://h?foo=1", "unknown keyword \"foo\""),
        ] {
            let err = parse(input, &[("PGUSER", "u")]).unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
    }

    #[test]
    fn password_never_shown() {
        let info = parse(
            "host=h user=u password=hunter2 application_name='it\\'s'",
            &[],
        )
        .unwrap();
        let shown = format!("{info} {info:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
        // Display round-trips everything but the password.
        let mut again = parse(&info.to_string(), &[]).unwrap();
        assert_eq!(again.password(), None);
        again.set_password(Some("hunter2".into()));
        assert_eq!(again, info);
    }

    #[test]
    fn several_hosts() {
        let info = parse(
            "host=a,b,c port=5433 target_session_attrs=read-write",
            &[("PGUSER", "u")],
        )
        .unwrap();
        assert_eq!(info.endpoint(), "a:5433,b:5433,c:5433");
        assert_eq!(
            info.target_session_attrs,
            Some(TargetSessionAttrs::ReadWrite)
        );
        let second = info.only_host(1).unwrap();
        assert_eq!(second.endpoint(), "b:5433");
        assert_eq!(second.target_session_attrs, info.target_session_attrs);
        assert!(info.only_host(3).is_none());

        let info = parse(
            "postgresql://u@a:5432,[::1]:5433,c/db?target_session_attrs=primary",
            &[],
        )
        .unwrap();
        assert_eq!(info.endpoint(), "a:5432,[::1]:5433,c:5432");
        assert_eq!(info.dbname.as_deref(), Some("db"));
        assert_eq!(info.target_session_attrs, Some(TargetSessionAttrs::Primary));

        // From the environment, like libpq; unset stays unset.
        let env = [
            ("PGUSER", "u"),
            ("PGHOST", "x,y"),
            ("PGPORT", "1,2"),
            ("PGTARGETSESSIONATTRS", "standby"),
        ];
        let info = parse("", &env).unwrap();
        assert_eq!(info.endpoint(), "x:1,y:2");
        assert_eq!(info.target_session_attrs, Some(TargetSessionAttrs::Standby));
        assert_eq!(
            parse("host=h user=u", &[]).unwrap().target_session_attrs,
            None
        );

        // Display round-trips the lists.
        let info = parse(
            "host=a,b hostaddr=10.0.0.1,10.0.0.2 port=1,2 target_session_attrs=prefer-standby user=u",
            &[],
        )
        .unwrap();
        assert_eq!(parse(&info.to_string(), &[]).unwrap(), info);
    }

    #[test]
    fn password_file_is_looked_up_for_each_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = passfile(
            dir.path(),
            "a:5432:replication:arch:pw-a\nb:5433:replication:arch:pw-b\n",
        );
        let info = parse(
            &format!(
                "host=a,b,c port=5432,5433,5432 user=arch passfile={}",
                path.display()
            ),
            &[],
        )
        .unwrap();
        let passwords: Vec<Option<&str>> =
            info.hosts().iter().map(|e| info.password_for(e)).collect();
        assert_eq!(passwords, [Some("pw-a"), Some("pw-b"), None]);
        assert_eq!(info.only_host(1).unwrap().password(), Some("pw-b"));
        let shown = format!("{info} {info:?}");
        assert!(
            !shown.contains("pw-a") && !shown.contains("pw-b"),
            "{shown}"
        );
        // A given password serves every host.
        let info = parse(
            &format!(
                "host=a,b port=5432,5433 user=arch password=given passfile={}",
                path.display()
            ),
            &[],
        )
        .unwrap();
        assert_eq!(info.password_for(&info.hosts()[1]), Some("given"));
    }

    fn passfile(dir: &Path, content: &str) -> PathBuf {
        let path = dir.join("pgpass");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(content.as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn password_from_passfile() {
        let dir = tempfile::tempdir().unwrap();
        let path = passfile(
            dir.path(),
            "h:5432:replication:arch:by-replication\n\
             localhost:5432:*:sock:by-localhost\n\
             /my/sock:5432:*:sock:by-path\n\
             h:*:appdb:*:by-db\n",
        );
        let file = path.to_str().unwrap();
        let lookup =
            |s: &str, env: &[(&str, &str)]| parse(s, env).unwrap().password().map(str::to_string);
        let by_kw = format!("passfile={file}");
        assert_eq!(
            lookup(&format!("host=h user=arch {by_kw}"), &[]).as_deref(),
            Some("by-replication")
        );
        assert_eq!(
            lookup(&format!("host=h user=z dbname=appdb {by_kw}"), &[]).as_deref(),
            Some("by-db")
        );
        assert_eq!(
            lookup("host=h user=arch", &[("PGPASSFILE", file)]).as_deref(),
            Some("by-replication")
        );
        assert_eq!(
            lookup(&format!("host=h port=5433 user=arch {by_kw}"), &[]),
            None
        );
        // The default socket directory matches "localhost", another one its path.
        assert_eq!(
            lookup(&format!("user=sock {by_kw}"), &[]).as_deref(),
            Some("by-localhost")
        );
        assert_eq!(
            lookup(&format!("host=/my/sock user=sock {by_kw}"), &[]).as_deref(),
            Some("by-path")
        );
        // Explicit password and PGPASSWORD come first.
        assert_eq!(
            lookup(&format!("host=h user=arch password=kw {by_kw}"), &[]).as_deref(),
            Some("kw")
        );
        assert_eq!(
            lookup(
                &format!("host=h user=arch {by_kw}"),
                &[("PGPASSWORD", "env")]
            )
            .as_deref(),
            Some("env")
        );
        // ~/.pgpass via HOME.
        std::fs::rename(&path, dir.path().join(".pgpass")).unwrap();
        let home = dir.path().to_str().unwrap();
        assert_eq!(
            lookup("host=h user=arch", &[("HOME", home)]).as_deref(),
            Some("by-replication")
        );
    }
}
