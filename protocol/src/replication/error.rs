//! `ReplicationError`: what can go wrong talking to a walsender, in variants callers
//! can act on (retry a connection, fix credentials, grant REPLICATION, report a bug).

use std::fmt;
use std::io;
use std::time::Duration;

/// SQLSTATE `invalid_password`.
pub const SQLSTATE_INVALID_PASSWORD: &str = "28P01";
/// SQLSTATE `invalid_authorization_specification` (also used for pg_hba.conf rejections).
pub const SQLSTATE_INVALID_AUTHORIZATION: &str = "28000";
/// SQLSTATE `insufficient_privilege`.
pub const SQLSTATE_INSUFFICIENT_PRIVILEGE: &str = "42501";
/// SQLSTATE `duplicate_object` (e.g. a replication slot that already exists).
pub const SQLSTATE_DUPLICATE_OBJECT: &str = "42710";

/// An ErrorResponse from the server, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// `ERROR`, `FATAL` or `PANIC`.
    pub severity: String,
    /// SQLSTATE, e.g. `28P01`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(detail) = &self.detail {
            write!(f, "; DETAIL: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; HINT: {hint}")?;
        }
        Ok(())
    }
}

/// A failure of the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The server cannot be reached (refused, unreachable, name not resolved).
    #[error(
        "cannot connect to {target}: {source}; check host, port and that the server is running"
    )]
    Connect {
        /// `host:port` or the socket path.
        target: String,
        #[source]
        source: io::Error,
    },
    /// Connecting and logging in took longer than `connect_timeout`.
    #[error("timed out after {timeout:?} connecting to {target}; check the network or raise connect_timeout")]
    ConnectTimeout { target: String, timeout: Duration },
    /// TLS could not be set up: refused by the server, bad certificate, failed
    /// verification or an unreadable certificate file.
    #[error("tls with {target} failed: {reason}")]
    Tls { target: String, reason: String },
    /// Authentication failed on our side (no password, unsupported method, server
    /// proof mismatch). Failures reported by the server are `Server` errors.
    #[error("authentication with {target} failed: {reason}")]
    Auth { target: String, reason: String },
    /// The server reported an error; see the helper methods to classify it.
    #[error("server error: {0}")]
    Server(ServerError),
    /// The server sent something the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The server closed the connection.
    #[error("connection closed by the server")]
    Closed,
    /// Reading or writing the established connection failed.
    #[error("connection i/o failed: {0}")]
    Io(#[from] io::Error),
    /// The server was reached but is not what `target_session_attrs` asks for.
    #[error("{target} is {found}, not what target_session_attrs={wanted} asks for")]
    WrongRole {
        target: String,
        wanted: crate::conninfo::TargetSessionAttrs,
        found: &'static str,
    },
    /// Several hosts were given and none could be used; each host's reason, in order.
    #[error("no host of the connection string could be used: {}; HINT: check that the servers are running and that one of them is what target_session_attrs asks for", attempts.join("; "))]
    NoHostMatched {
        attempts: Vec<String>,
        /// Every host failed in a way a later attempt may cure.
        all_transient: bool,
    },
    /// The server's version lacks a command we need.
    #[error("{what} needs PostgreSQL {needs}+, the server is {server_version_num}")]
    Unsupported {
        what: &'static str,
        needs: u32,
        server_version_num: u32,
    },
    /// A caller-supplied name that cannot be sent safely (slot or setting name).
    #[error("invalid {what} {value:?}: use lower-case letters, digits and underscores")]
    InvalidName { what: &'static str, value: String },
}

impl ReplicationError {
    /// The server's error, if this is one.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            ReplicationError::Server(e) => Some(e),
            _ => None,
        }
    }

    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        self.server_error().map(|e| e.code.as_str())
    }

    /// Wrong password, unknown user, or a failed client-side authentication step.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            ReplicationError::Auth { .. } => true,
            ReplicationError::Server(e) => {
                e.code == SQLSTATE_INVALID_PASSWORD
                    || (e.code == SQLSTATE_INVALID_AUTHORIZATION && !self.is_replication_denied())
            }
            _ => false,
        }
    }

    /// The role may not start a walsender (no REPLICATION attribute) or pg_hba.conf
    /// has no `replication` entry for this connection.
    pub fn is_replication_denied(&self) -> bool {
        match self {
            ReplicationError::Server(e) => {
                e.code == SQLSTATE_INSUFFICIENT_PRIVILEGE
                    || (e.code == SQLSTATE_INVALID_AUTHORIZATION
                        && e.message.contains("replication"))
            }
            _ => false,
        }
    }

    /// Worth retrying later with a new connection: the server could not be reached, the
    /// connection broke, or the server is shutting down, restarting or not yet accepting
    /// connections (SQLSTATE class 57P: admin_shutdown, crash_shutdown,
    /// cannot_connect_now).
    pub fn is_connection_failure(&self) -> bool {
        match self {
            ReplicationError::Connect { .. }
            | ReplicationError::ConnectTimeout { .. }
            | ReplicationError::Closed
            | ReplicationError::Io(_)
            // A standby may be promoted, a primary may come back as a standby.
            | ReplicationError::WrongRole { .. } => true,
            ReplicationError::NoHostMatched { all_transient, .. } => *all_transient,
            ReplicationError::Server(e) => e.code.starts_with("57P"),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, message: &str) -> ReplicationError {
        ReplicationError::Server(ServerError {
            severity: "FATAL".into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        })
    }

    #[test]
    fn classifies_server_errors() {
        let wrong_password = server("28P01", "password authentication failed for user \"x\"");
        assert!(wrong_password.is_auth_failure() && !wrong_password.is_replication_denied());
        let no_role = server("28000", "role \"x\" does not exist");
        assert!(no_role.is_auth_failure() && !no_role.is_replication_denied());
        let hba = server(
            "28000",
            "no pg_hba.conf entry for replication connection from host \"1.2.3.4\"",
        );
        assert!(hba.is_replication_denied() && !hba.is_auth_failure());
        let privilege = server("42501", "permission denied to start WAL sender");
        assert!(privilege.is_replication_denied() && !privilege.is_auth_failure());
        assert_eq!(privilege.sqlstate(), Some("42501"));
        assert!(!ReplicationError::Closed.is_auth_failure());
        assert!(ReplicationError::Closed.is_connection_failure());
    }

    #[test]
    fn server_error_message_keeps_everything() {
        let err = ReplicationError::Server(ServerError {
            severity: "ERROR".into(),
            code: "58P01".into(),
            message: "requested WAL segment has already been removed".into(),
            detail: Some("d".into()),
            hint: Some("h".into()),
        });
        assert_eq!(
            err.to_string(),
            "server error: ERROR: requested WAL segment has already been removed \
             (SQLSTATE 58P01); DETAIL: d; HINT: h"
        );
    }
}
