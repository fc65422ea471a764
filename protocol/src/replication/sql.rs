//! `SqlSession`: an ordinary (non-replication) connection for the few SQL questions
//! tidemark asks — the server's clock for matching it to an object store's, and a
//! user's query on a restored cluster. Same connection string, TLS and authentication as
//! the walsender connection.

use chrono::{DateTime, Utc};
use postgres_protocol::message::frontend;

use super::client::simple_query;
use super::connection::Connection;
use super::error::ReplicationError;
use super::startup::{self, SessionKind};
use crate::conninfo::ConnInfo;
use crate::pgtime;

/// A logged-in SQL session.
pub struct SqlSession {
    conn: Connection,
}

impl SqlSession {
    /// Connect without `replication`, so the server runs SQL. The database is `dbname`,
    /// else the user's name (as libpq).
    pub async fn connect(info: &ConnInfo) -> Result<SqlSession, ReplicationError> {
        let session = startup::connect(info, SessionKind::Sql).await?;
        Ok(SqlSession { conn: session.conn })
    }

    /// Connect, run `sql` as [`SqlSession::first_column`] does, and say goodbye: one
    /// question on a session of its own.
    pub async fn ask(info: &ConnInfo, sql: &str) -> Result<Vec<Option<String>>, ReplicationError> {
        let mut session = SqlSession::connect(info).await?;
        let rows = session.first_column(sql).await;
        if let Err(e) = session.close().await {
            tracing::debug!(error = %e, "closing the SQL session");
        }
        rows
    }

    /// Run `sql` (one statement, simple protocol) and return the first column of every
    /// row as text, `None` for NULL. A statement without a result set gives no rows.
    pub async fn first_column(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Option<String>>, ReplicationError> {
        let response = simple_query(&mut self.conn, sql).await?;
        response.first_column_text(sql)
    }

    /// The server's `now()`: its clock at the start of this statement's transaction.
    pub async fn now(&mut self) -> Result<DateTime<Utc>, ReplicationError> {
        const SQL: &str = "SELECT ((extract(epoch FROM now()) - 946684800) * 1000000)::bigint";
        let values = self.first_column(SQL).await?;
        values
            .first()
            .and_then(|v| v.as_deref())
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(pgtime::from_postgres)
            .ok_or_else(|| ReplicationError::Protocol(format!("{SQL} returned {values:?}")))
    }

    /// Say goodbye (Terminate) and close the connection.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        frontend::terminate(&mut self.conn.write_buf);
        self.conn.flush().await
    }
}
