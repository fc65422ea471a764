//! Collecting a simple-query response (RowDescription, DataRows, CommandComplete,
//! ErrorResponse, ReadyForQuery) into columns and raw rows.

use std::str::FromStr;

use bytes::Bytes;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;

use super::connection::{log_notice, server_error};
use super::error::ReplicationError;

/// One simple-query response, fed message by message so that reading it can resume
/// after a cancelled read.
#[derive(Default)]
pub(crate) struct QueryResponse {
    columns: Vec<String>,
    rows: Vec<Vec<Option<Bytes>>>,
    error: Option<ReplicationError>,
}

impl QueryResponse {
    /// Take one message; `Ok(true)` once ReadyForQuery ends the response.
    pub(crate) fn absorb(&mut self, message: Message) -> Result<bool, ReplicationError> {
        match message {
            Message::RowDescription(body) => {
                self.columns = body
                    .fields()
                    .map(|f| Ok(f.name().to_string()))
                    .collect()
                    .map_err(|e| ReplicationError::Protocol(format!("bad row description: {e}")))?;
            }
            Message::DataRow(body) => {
                let buffer = body.buffer_bytes().clone();
                let row = body
                    .ranges()
                    .map(|r| Ok(r.map(|r| buffer.slice(r))))
                    .collect()
                    .map_err(|e| ReplicationError::Protocol(format!("bad data row: {e}")))?;
                self.rows.push(row);
            }
            Message::ErrorResponse(body) => {
                if self.error.is_none() {
                    self.error = Some(server_error(body.fields()));
                }
            }
            Message::NoticeResponse(body) => log_notice(body.fields()),
            Message::CommandComplete(_)
            | Message::EmptyQueryResponse
            | Message::ParameterStatus(_) => {}
            Message::ReadyForQuery(_) => return Ok(true),
            _ => {
                return Err(ReplicationError::Protocol(
                    "unexpected message in a command response".to_string(),
                ))
            }
        }
        Ok(false)
    }

    /// The response, or the server's error if it sent one.
    pub(crate) fn finish(mut self) -> Result<QueryResponse, ReplicationError> {
        match self.error.take() {
            Some(err) => Err(err),
            None => Ok(self),
        }
    }

    /// Raw value of `column` in the first row; `None` for SQL NULL.
    pub(crate) fn raw(
        &self,
        command: &str,
        column: &str,
    ) -> Result<Option<&Bytes>, ReplicationError> {
        let index = self.columns.iter().position(|c| c == column);
        match (index, self.rows.first()) {
            (Some(i), Some(row)) if i < row.len() => Ok(row[i].as_ref()),
            _ => Err(ReplicationError::Protocol(format!(
                "{command} returned no column {column:?}"
            ))),
        }
    }

    /// Text of `column` in the first row; `None` for SQL NULL.
    pub(crate) fn text(
        &self,
        command: &str,
        column: &str,
    ) -> Result<Option<String>, ReplicationError> {
        self.raw(command, column)?
            .map(|b| {
                std::str::from_utf8(b).map(str::to_string).map_err(|_| {
                    ReplicationError::Protocol(format!("{command} returned non-utf8 {column:?}"))
                })
            })
            .transpose()
    }

    /// `column` of the first row parsed as `T`; NULL and parse failures are errors.
    pub(crate) fn parse<T: FromStr>(
        &self,
        command: &str,
        column: &str,
    ) -> Result<T, ReplicationError> {
        let text = self.text(command, column)?;
        text.as_deref().and_then(|t| t.parse().ok()).ok_or_else(|| {
            ReplicationError::Protocol(format!("{command} returned invalid {column} {text:?}"))
        })
    }

    /// `column` of the first row parsed as `T`, `None` for NULL.
    pub(crate) fn parse_opt<T: FromStr>(
        &self,
        command: &str,
        column: &str,
    ) -> Result<Option<T>, ReplicationError> {
        match self.raw(command, column)? {
            None => Ok(None),
            Some(_) => self.parse(command, column).map(Some),
        }
    }

    /// One response per row, each with all the columns, so that the first-row accessors
    /// read every row of a multi-row result in turn.
    pub(crate) fn into_rows(self) -> Vec<QueryResponse> {
        let QueryResponse { columns, rows, .. } = self;
        rows.into_iter()
            .map(|row| QueryResponse {
                columns: columns.clone(),
                rows: vec![row],
                error: None,
            })
            .collect()
    }

    /// The first column of every row as text (`None` for NULL); no rows when the statement
    /// returned no result set.
    pub(crate) fn first_column_text(
        &self,
        command: &str,
    ) -> Result<Vec<Option<String>>, ReplicationError> {
        self.rows
            .iter()
            .map(|row| {
                row.first()
                    .cloned()
                    .flatten()
                    .map(|b| {
                        String::from_utf8(b.to_vec()).map_err(|_| {
                            ReplicationError::Protocol(format!("{command} returned non-utf8 text"))
                        })
                    })
                    .transpose()
            })
            .collect()
    }

    /// Whether the response has at least one row.
    pub(crate) fn has_rows(&self) -> bool {
        !self.rows.is_empty()
    }
}
