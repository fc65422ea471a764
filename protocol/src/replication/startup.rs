//! Opening a connection: socket, SSLRequest and TLS handshake per `sslmode`, the startup
//! message (with `replication=true` for a walsender, without for a plain SQL session), and
//! authentication (trust, cleartext, MD5, SCRAM-SHA-256), all within `connect_timeout`;
//! with several hosts, each in turn until one matches `target_session_attrs` (libpq's
//! rules, judged by the `in_hot_standby` and `default_transaction_read_only` parameters
//! that PostgreSQL 14+ reports at startup, walsenders included).

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::connection::{log_notice, server_error, Backend, Connection, Socket};
use super::error::ReplicationError;
use super::tls;
use crate::conninfo::{ConnInfo, Endpoint, Host, SslMode, TargetSessionAttrs};

/// Which kind of backend the startup message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionKind {
    /// A physical walsender (`replication=true`): replication commands only.
    Walsender,
    /// An ordinary backend: SQL.
    Sql,
}

/// A logged-in connection, ready for replication commands or SQL.
pub(crate) struct Session {
    pub(crate) conn: Connection,
    /// The `server_version` parameter, e.g. `15.18 (Debian 15.18-1.pgdg120+1)`.
    pub(crate) server_version: String,
    /// What the server reported about itself at startup.
    pub(crate) state: ServerState,
    /// The host reached, `host:port` or the socket path.
    pub(crate) target: String,
}

/// The startup parameters that tell a primary from a standby (PostgreSQL 14+).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ServerState {
    pub(crate) in_hot_standby: Option<bool>,
    pub(crate) default_transaction_read_only: Option<bool>,
}

/// Connect and log in to the first host of `info` that matches its
/// `target_session_attrs` (`any` when unset), each attempt bounded by
/// `info.connect_timeout`. With one host its own error is returned; with several,
/// `NoHostMatched` lists every host's.
pub(crate) async fn connect(
    info: &ConnInfo,
    kind: SessionKind,
) -> Result<Session, ReplicationError> {
    let wanted = info.target_session_attrs.unwrap_or_default();
    // prefer-standby: the standbys first, then any server (libpq tries all hosts again).
    let passes: &[TargetSessionAttrs] = match wanted {
        TargetSessionAttrs::PreferStandby => {
            &[TargetSessionAttrs::Standby, TargetSessionAttrs::Any]
        }
        _ => std::slice::from_ref(&wanted),
    };
    let mut failures = Vec::new();
    for pass in passes {
        for endpoint in info.hosts() {
            match connect_one(info, endpoint, kind, *pass).await {
                Ok(session) => return Ok(session),
                Err(e) => {
                    tracing::debug!(host = %endpoint.describe(), error = %e, "host not used");
                    failures.push(e);
                }
            }
        }
    }
    if failures.len() == 1 {
        return Err(failures.remove(0));
    }
    Err(ReplicationError::NoHostMatched {
        attempts: failures.iter().map(ToString::to_string).collect(),
        all_transient: failures.iter().all(ReplicationError::is_connection_failure),
    })
}

/// One host: connect, log in, and check it is what `wanted` asks for.
async fn connect_one(
    info: &ConnInfo,
    endpoint: &Endpoint,
    kind: SessionKind,
    wanted: TargetSessionAttrs,
) -> Result<Session, ReplicationError> {
    let target = endpoint.describe();
    let attempt = establish(info, endpoint, &target, kind);
    let session = match info.connect_timeout {
        None => attempt.await?,
        Some(timeout) => tokio::time::timeout(timeout, attempt).await.map_err(|_| {
            ReplicationError::ConnectTimeout {
                target: target.clone(),
                timeout,
            }
        })??,
    };
    if wanted == TargetSessionAttrs::Any {
        return Ok(session);
    }
    let (Some(in_hot_standby), Some(read_only)) = (
        session.state.in_hot_standby,
        session.state.default_transaction_read_only,
    ) else {
        return Err(ReplicationError::Protocol(format!(
            "{target} did not report in_hot_standby and default_transaction_read_only at startup (PostgreSQL 14+ does), so target_session_attrs={wanted} cannot be checked"
        )));
    };
    if wanted.accepts(in_hot_standby, read_only) {
        Ok(session)
    } else {
        Err(ReplicationError::WrongRole {
            target,
            wanted,
            found: if in_hot_standby {
                "a standby (in hot standby)"
            } else if read_only {
                "a primary with default_transaction_read_only = on"
            } else {
                "a primary (read-write)"
            },
        })
    }
}

async fn establish(
    info: &ConnInfo,
    endpoint: &Endpoint,
    target: &str,
    kind: SessionKind,
) -> Result<Session, ReplicationError> {
    let connect_error = |source| ReplicationError::Connect {
        target: target.to_string(),
        source,
    };
    let socket = match (&endpoint.host, endpoint.hostaddr) {
        // libpq never uses TLS on Unix sockets, whatever sslmode says.
        (Host::Unix(dir), None) => Socket::Unix(
            UnixStream::connect(endpoint.socket_path(dir))
                .await
                .map_err(connect_error)?,
        ),
        (host, addr) => {
            // hostaddr is connected to; the host name (if any) is what TLS verifies.
            let name = match host {
                Host::Tcp(h) => h.clone(),
                Host::Unix(_) => addr.map(|a| a.to_string()).unwrap_or_default(),
            };
            let tcp = match addr {
                Some(a) => TcpStream::connect((a, endpoint.port)).await,
                None => TcpStream::connect((name.as_str(), endpoint.port)).await,
            }
            .map_err(connect_error)?;
            let host = &name;
            tcp.set_nodelay(true)?;
            negotiate_tls(tcp, host, info, target).await?
        }
    };
    let mut conn = Connection::new(socket);
    let mut params = vec![("user", info.user.as_str())];
    if kind == SessionKind::Walsender {
        params.push(("replication", "true"));
    }
    if let Some(db) = &info.dbname {
        params.push(("database", db));
    }
    if let Some(app) = &info.application_name {
        params.push(("application_name", app));
    }
    frontend::startup_message(params, &mut conn.write_buf)?;
    conn.flush().await?;
    let (server_version, state) = authenticate(&mut conn, info, endpoint, target).await?;
    tracing::debug!(target_addr = %target, %server_version, ?state, ?kind, "connection ready");
    Ok(Session {
        conn,
        server_version,
        state,
        target: target.to_string(),
    })
}

/// SSLRequest and TLS handshake as `sslmode` asks; plain TCP when TLS is not wanted
/// or (for `prefer`/`allow`) not offered.
async fn negotiate_tls(
    mut tcp: TcpStream,
    host: &str,
    info: &ConnInfo,
    target: &str,
) -> Result<Socket, ReplicationError> {
    if info.sslmode == SslMode::Disable {
        return Ok(Socket::Tcp(tcp));
    }
    let tls_error = |reason: String| ReplicationError::Tls {
        target: target.to_string(),
        reason,
    };
    // Build the configuration first: a bad sslrootcert should fail before any I/O.
    let config = tls::client_config(info).map_err(tls_error)?;
    let name = tls::server_name(host).map_err(tls_error)?;
    let mut request = bytes::BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    // Exactly one byte: anything after it must come through TLS.
    match tcp.read_u8().await? {
        b'S' => {
            let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| tls_error(format!("handshake failed: {e}")))?;
            Ok(Socket::Tls(Box::new(stream)))
        }
        b'N' if matches!(info.sslmode, SslMode::Prefer | SslMode::Allow) => Ok(Socket::Tcp(tcp)),
        b'N' => Err(tls_error(format!(
            "the server does not accept tls but sslmode={}; enable ssl on the server or lower sslmode",
            info.sslmode
        ))),
        other => Err(ReplicationError::Protocol(format!(
            "unexpected answer {:?} to SSLRequest",
            other as char
        ))),
    }
}

/// Answer authentication requests until ReadyForQuery; returns `server_version` and the
/// reported server state.
async fn authenticate(
    conn: &mut Connection,
    info: &ConnInfo,
    endpoint: &Endpoint,
    target: &str,
) -> Result<(String, ServerState), ReplicationError> {
    let auth_error = |reason: String| ReplicationError::Auth {
        target: target.to_string(),
        reason,
    };
    let password = || {
        info.password_for(endpoint).ok_or_else(|| {
            auth_error(
                "the server asks for a password and none was given; set password=, PGPASSWORD or a password file"
                    .to_string(),
            )
        })
    };
    let mut scram: Option<ScramSha256> = None;
    let mut server_version = String::new();
    let mut state = ServerState::default();
    loop {
        let message = match conn.read_message().await? {
            Backend::Message(m) => m,
            Backend::CopyBothResponse => {
                return Err(ReplicationError::Protocol(
                    "CopyBothResponse during startup".to_string(),
                ))
            }
        };
        match message {
            Message::AuthenticationOk | Message::BackendKeyData(_) => {}
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password()?.as_bytes(), &mut conn.write_buf)?;
                conn.flush().await?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(info.user.as_bytes(), password()?.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), &mut conn.write_buf)?;
                conn.flush().await?;
            }
            Message::AuthenticationSasl(body) => {
                let mut offered = Vec::new();
                let mut mechanisms = body.mechanisms();
                while let Some(m) = fallible_iterator::FallibleIterator::next(&mut mechanisms)
                    .map_err(|e| ReplicationError::Protocol(format!("bad SASL mechanisms: {e}")))?
                {
                    offered.push(m.to_string());
                }
                if !offered.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(auth_error(format!(
                        "no supported SASL mechanism among {offered:?}"
                    )));
                }
                // "n": we do not do channel binding, even when SCRAM-SHA-256-PLUS is offered.
                let client = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), &mut conn.write_buf)?;
                conn.flush().await?;
                scram = Some(client);
            }
            Message::AuthenticationSaslContinue(body) => {
                let client = scram.as_mut().ok_or_else(|| {
                    ReplicationError::Protocol("SASL continue before SASL start".to_string())
                })?;
                client
                    .update(body.data())
                    .map_err(|e| auth_error(format!("bad SCRAM server message: {e}")))?;
                frontend::sasl_response(client.message(), &mut conn.write_buf)?;
                conn.flush().await?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let client = scram.as_mut().ok_or_else(|| {
                    ReplicationError::Protocol("SASL final before SASL start".to_string())
                })?;
                client.finish(body.data()).map_err(|e| {
                    auth_error(format!("the server failed to prove it knows the password: {e}"))
                })?;
            }
            Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationGss
            | Message::AuthenticationGssContinue(_)
            | Message::AuthenticationSspi => {
                return Err(auth_error(
                    "the server asks for an unsupported method (Kerberos/GSSAPI/SSPI); use scram-sha-256, md5 or password in pg_hba.conf"
                        .to_string(),
                ))
            }
            Message::ParameterStatus(body) => {
                let on = |v: &str| v == "on";
                match body.name()? {
                    "server_version" => server_version = body.value()?.to_string(),
                    "in_hot_standby" => state.in_hot_standby = Some(on(body.value()?)),
                    "default_transaction_read_only" => {
                        state.default_transaction_read_only = Some(on(body.value()?))
                    }
                    _ => {}
                }
            }
            Message::NoticeResponse(body) => log_notice(body.fields()),
            Message::ErrorResponse(body) => return Err(server_error(body.fields())),
            Message::ReadyForQuery(_) => return Ok((server_version, state)),
            _ => {
                return Err(ReplicationError::Protocol(
                    "unexpected message during startup".to_string(),
                ))
            }
        }
    }
}
