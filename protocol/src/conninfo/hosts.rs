//! Several hosts in one connection string, as libpq defines them: `host`, `hostaddr`
//! and `port` are comma-separated lists (one port for all hosts, or one per host), tried
//! in order; `target_session_attrs` says which server of the list is wanted.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::{ConnInfoError, Host, DEFAULT_PORT, DEFAULT_SOCKET_DIR, FALLBACK_SOCKET_DIR};

/// One server of a connection string's host list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The host name (for TLS verification and the password file) or socket directory.
    pub host: Host,
    /// `hostaddr`: the numeric address connected to instead of resolving `host`.
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
    /// The name this host has in the password file (libpq: the host, else hostaddr;
    /// `localhost` for the default socket directory).
    pub(super) pgpass_host: String,
    /// The password file's entry for this host, if any.
    pub(super) passfile_password: Option<String>,
}

impl Endpoint {
    /// `host:port` or the socket file path, for messages.
    pub fn describe(&self) -> String {
        match (&self.hostaddr, &self.host) {
            (Some(IpAddr::V6(a)), _) => format!("[{a}]:{}", self.port),
            (Some(a), _) => format!("{a}:{}", self.port),
            (None, Host::Tcp(h)) if h.contains(':') => format!("[{h}]:{}", self.port),
            (None, Host::Tcp(h)) => format!("{h}:{}", self.port),
            (None, Host::Unix(dir)) => self.socket_path(dir).display().to_string(),
        }
    }

    /// The socket file in directory `dir` for this port.
    pub fn socket_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!(".s.PGSQL.{}", self.port))
    }
}

/// libpq's `target_session_attrs`: which server of the host list is acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    /// Any server (libpq's default).
    #[default]
    Any,
    /// A server that accepts writes: not in hot standby, `default_transaction_read_only`
    /// off.
    ReadWrite,
    /// The opposite of `ReadWrite`.
    ReadOnly,
    /// A server not in recovery.
    Primary,
    /// A server in hot standby.
    Standby,
    /// A standby if any host is one, else any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// Whether a server in this state is acceptable. `PreferStandby` accepts anything
    /// here; the caller tries the standbys first.
    pub fn accepts(self, in_hot_standby: bool, read_only: bool) -> bool {
        match self {
            TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby => true,
            TargetSessionAttrs::ReadWrite => !in_hot_standby && !read_only,
            TargetSessionAttrs::ReadOnly => in_hot_standby || read_only,
            TargetSessionAttrs::Primary => !in_hot_standby,
            TargetSessionAttrs::Standby => in_hot_standby,
        }
    }
}

impl FromStr for TargetSessionAttrs {
    type Err = ConnInfoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            "primary" => TargetSessionAttrs::Primary,
            "standby" => TargetSessionAttrs::Standby,
            "prefer-standby" => TargetSessionAttrs::PreferStandby,
            _ => {
                return Err(ConnInfoError::InvalidValue {
                    key: "target_session_attrs",
                    value: s.to_string(),
                    expected: "any, read-write, read-only, primary, standby or prefer-standby",
                })
            }
        })
    }
}

impl fmt::Display for TargetSessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        })
    }
}

/// The host list from the `host`, `hostaddr` and `port` settings (each possibly a
/// comma-separated list, `None` when unset), without passwords. libpq's rules: `host`
/// and `hostaddr` lists, when both are given, have the same length; `port` has one
/// entry for all hosts or one per host; an empty entry takes the default.
pub(super) fn endpoints(
    host: Option<&str>,
    hostaddr: Option<&str>,
    port: Option<&str>,
) -> Result<Vec<Endpoint>, ConnInfoError> {
    let names: Vec<&str> = host.map_or_else(Vec::new, |h| h.split(',').collect());
    let addrs: Vec<Option<IpAddr>> = match hostaddr {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|a| match a.trim() {
                "" => Ok(None),
                a => a
                    .parse()
                    .map(Some)
                    .map_err(|_| ConnInfoError::InvalidValue {
                        key: "hostaddr",
                        value: a.to_string(),
                        expected: "a numeric IPv4 or IPv6 address (use host= for names)",
                    }),
            })
            .collect::<Result<_, _>>()?,
    };
    if !names.is_empty() && !addrs.is_empty() && names.len() != addrs.len() {
        return Err(ConnInfoError::ListLengths {
            what: "hostaddr",
            given: addrs.len(),
            hosts: names.len(),
        });
    }
    let count = names.len().max(addrs.len()).max(1);
    let ports: Vec<u16> = match port {
        None => vec![DEFAULT_PORT],
        Some(list) => list.split(',').map(parse_port).collect::<Result<_, _>>()?,
    };
    if ports.len() != 1 && ports.len() != count {
        return Err(ConnInfoError::ListLengths {
            what: "port",
            given: ports.len(),
            hosts: count,
        });
    }
    let default_dir = if Path::new(DEFAULT_SOCKET_DIR).is_dir() {
        DEFAULT_SOCKET_DIR
    } else {
        FALLBACK_SOCKET_DIR
    };
    Ok((0..count)
        .map(|i| {
            let name = names.get(i).copied().unwrap_or("").trim();
            let addr = addrs.get(i).copied().flatten();
            let (host, pgpass_host) = match (name, addr) {
                ("", Some(a)) => (Host::Tcp(a.to_string()), a.to_string()),
                ("", None) => (Host::Unix(PathBuf::from(default_dir)), "localhost".into()),
                (dir, _) if dir.starts_with('/') => {
                    let pw = if dir == DEFAULT_SOCKET_DIR {
                        "localhost".to_string()
                    } else {
                        dir.to_string()
                    };
                    (Host::Unix(PathBuf::from(dir)), pw)
                }
                (name, _) => (Host::Tcp(name.to_string()), name.to_string()),
            };
            Endpoint {
                host,
                hostaddr: addr,
                port: *ports.get(i).unwrap_or(&ports[0]),
                pgpass_host,
                passfile_password: None,
            }
        })
        .collect())
}

fn parse_port(p: &str) -> Result<u16, ConnInfoError> {
    match p.trim() {
        "" => Ok(DEFAULT_PORT),
        p => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or(ConnInfoError::InvalidValue {
                key: "port",
                value: p.to_string(),
                expected: "a number from 1 to 65535 (or a comma-separated list, one per host)",
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(host: Option<&str>, addr: Option<&str>, port: Option<&str>) -> Vec<String> {
        endpoints(host, addr, port)
            .unwrap()
            .iter()
            .map(Endpoint::describe)
            .collect()
    }

    #[test]
    fn host_and_port_lists() {
        assert_eq!(
            hosts(Some("a,b,c"), None, Some("5433")),
            ["a:5433", "b:5433", "c:5433"]
        );
        assert_eq!(hosts(Some("a,b"), None, Some("1,2")), ["a:1", "b:2"]);
        assert_eq!(hosts(Some("a,b"), None, Some("1,")), ["a:1", "b:5432"]);
        assert_eq!(hosts(Some("a,::1"), None, None), ["a:5432", "[::1]:5432"]);
        // hostaddr is what is connected to; host keeps naming the server.
        let eps = endpoints(Some("db1,db2"), Some("10.0.0.1,"), Some("7")).unwrap();
        assert_eq!(eps[0].describe(), "10.0.0.1:7");
        assert_eq!(eps[0].host, Host::Tcp("db1".into()));
        assert_eq!(eps[0].pgpass_host, "db1");
        assert_eq!(eps[1].describe(), "db2:7");
        let eps = endpoints(None, Some("127.0.0.1,::1"), None).unwrap();
        assert_eq!(eps[1].describe(), "[::1]:5432");
        assert_eq!(eps[1].pgpass_host, "::1");
        let eps = endpoints(Some("/s1,/var/run/postgresql"), None, Some("9")).unwrap();
        assert_eq!(eps[0].describe(), "/s1/.s.PGSQL.9");
        assert_eq!(eps[0].pgpass_host, "/s1");
        assert_eq!(eps[1].pgpass_host, "localhost");
    }

    #[test]
    fn mismatched_lists_are_errors() {
        for (host, addr, port, needle) in [
            (
                Some("a,b,c"),
                None,
                Some("1,2"),
                "2 port entries for 3 hosts",
            ),
            (Some("a"), None, Some("1,2"), "2 port entries for 1 host"),
            (
                Some("a,b"),
                Some("10.0.0.1"),
                None,
                "1 hostaddr entries for 2 hosts",
            ),
            (Some("a"), Some("db.example"), None, "invalid hostaddr"),
            (Some("a,b"), None, Some("1,x"), "invalid port"),
            (Some("a,b"), None, Some("1,0"), "invalid port"),
        ] {
            let err = endpoints(host, addr, port).unwrap_err().to_string();
            assert!(err.contains(needle), "{host:?} {addr:?} {port:?}: {err}");
        }
    }

    #[test]
    fn target_session_attrs_values() {
        use TargetSessionAttrs::*;
        // (value, accepts a primary, accepts a read-only primary, accepts a standby)
        for (text, attrs, primary, read_only_primary, standby) in [
            ("any", Any, true, true, true),
            ("read-write", ReadWrite, true, false, false),
            ("read-only", ReadOnly, false, true, true),
            ("primary", Primary, true, true, false),
            ("standby", Standby, false, false, true),
            ("prefer-standby", PreferStandby, true, true, true),
        ] {
            assert_eq!(text.parse::<TargetSessionAttrs>().unwrap(), attrs);
            assert_eq!(attrs.to_string(), text);
            assert_eq!(attrs.accepts(false, false), primary, "{text}");
            assert_eq!(attrs.accepts(false, true), read_only_primary, "{text}");
            assert_eq!(attrs.accepts(true, true), standby, "{text}");
        }
        assert!("readwrite".parse::<TargetSessionAttrs>().is_err());
    }
}
