//! `ReplicationStream`: the CopyBoth phase of START_REPLICATION. Decodes XLogData ('w')
//! and primary keepalive ('k') messages, sends standby status updates ('r'), and
//! handles the server ending the timeline (CopyDone, then the next-timeline result set).
//!
//! All progress lives in the struct, so `next_message` is cancel-safe.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::client::{next_timeline, ReplicationClient};
use super::connection::{log_notice, server_error, Backend};
use super::error::ReplicationError;
use super::query::QueryResponse;
use crate::lsn::Lsn;
use crate::timeline::TimelineId;

/// One message of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage {
    /// WAL bytes starting at `wal_start`.
    XLogData {
        wal_start: Lsn,
        server_wal_end: Lsn,
        server_time: DateTime<Utc>,
        data: Bytes,
    },
    /// The server's heartbeat; answer with `send_status` when `reply_requested`.
    Keepalive {
        server_wal_end: Lsn,
        server_time: DateTime<Utc>,
        reply_requested: bool,
    },
    /// Server sent CopyDone (timeline ended, e.g. after promotion): CopyDone was answered
    /// and the result set read; the connection is back in command mode (`into_client`).
    EndOfTimeline {
        next_timeline: TimelineId,
        switch_lsn: Lsn,
    },
}

enum Phase {
    /// Copy-both mode.
    Copying,
    /// The server sent CopyDone; our CopyDone is queued and the result set is being read.
    Ending(QueryResponse),
    /// Back in command mode.
    Ended,
}

/// A START_REPLICATION stream in copy-both mode.
pub struct ReplicationStream {
    client: ReplicationClient,
    phase: Phase,
}

impl ReplicationStream {
    pub(crate) fn new(client: ReplicationClient) -> Self {
        ReplicationStream {
            client,
            phase: Phase::Copying,
        }
    }

    /// The next message. Cancel-safe (fit for `tokio::select!` with timers): partially
    /// read input stays buffered in the struct and a dropped call loses nothing.
    /// After `EndOfTimeline`, further calls fail; use `into_client`.
    pub async fn next_message(&mut self) -> Result<StreamMessage, ReplicationError> {
        let ReplicationStream { client, phase } = self;
        loop {
            match phase {
                Phase::Copying => match client.conn.read_message().await? {
                    Backend::Message(Message::CopyData(body)) => {
                        return decode_copy_data(body.into_bytes())
                    }
                    Backend::Message(Message::CopyDone) => {
                        frontend::copy_done(&mut client.conn.write_buf);
                        *phase = Phase::Ending(QueryResponse::default());
                    }
                    Backend::Message(Message::NoticeResponse(body)) => log_notice(body.fields()),
                    Backend::Message(Message::ErrorResponse(body)) => {
                        return Err(server_error(body.fields()))
                    }
                    Backend::Message(Message::ParameterStatus(_)) => {}
                    // A walsender that finished a shutdown (every byte sent was confirmed
                    // flushed) ends the copy with CommandComplete and exits.
                    Backend::Message(Message::CommandComplete(_)) => {
                        return Err(ReplicationError::Closed)
                    }
                    _ => {
                        return Err(ReplicationError::Protocol(
                            "unexpected message in the replication stream".to_string(),
                        ))
                    }
                },
                Phase::Ending(response) => {
                    client.conn.flush().await?;
                    loop {
                        match client.conn.read_message().await? {
                            Backend::Message(m) => {
                                if response.absorb(m)? {
                                    break;
                                }
                            }
                            Backend::CopyBothResponse => {
                                return Err(ReplicationError::Protocol(
                                    "unexpected CopyBothResponse after CopyDone".to_string(),
                                ))
                            }
                        }
                    }
                    let response = std::mem::take(response);
                    *phase = Phase::Ended;
                    let (next_timeline, switch_lsn) = next_timeline(&response.finish()?)?;
                    return Ok(StreamMessage::EndOfTimeline {
                        next_timeline,
                        switch_lsn,
                    });
                }
                Phase::Ended => {
                    return Err(ReplicationError::Protocol(
                        "the replication stream has ended; use into_client".to_string(),
                    ))
                }
            }
        }
    }

    /// Standby status update ('r'): write, flush, apply LSNs, client clock (µs since
    /// 2000-01-01), reply-requested flag. Flushes the socket.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(write.0);
        body.put_u64(flush.0);
        body.put_u64(apply.0);
        body.put_i64(crate::pgtime::to_postgres(Utc::now()));
        body.put_u8(u8::from(reply_requested));
        frontend::CopyData::new(body.freeze())?.write(&mut self.client.conn.write_buf);
        self.client.conn.flush().await
    }

    /// Bytes to let queue in the socket before the reader is woken (1: every arrival);
    /// see [`Connection::set_read_low_water`](super::connection::Connection).
    pub fn set_read_low_water(&self, bytes: usize) -> Result<(), ReplicationError> {
        Ok(self.client.conn.set_read_low_water(bytes)?)
    }

    /// After `StreamMessage::EndOfTimeline`: the client, back in command mode. Before
    /// that the connection is still streaming and this fails with `Protocol`.
    pub fn into_client(self) -> Result<ReplicationClient, ReplicationError> {
        match self.phase {
            Phase::Ended => Ok(self.client),
            _ => Err(ReplicationError::Protocol(
                "the replication stream is still running; read until EndOfTimeline first"
                    .to_string(),
            )),
        }
    }
}

/// Decode the payload of one CopyData message from the walsender.
fn decode_copy_data(mut data: Bytes) -> Result<StreamMessage, ReplicationError> {
    let short = |what| ReplicationError::Protocol(format!("{what} message too short"));
    match data.first() {
        Some(b'w') => {
            if data.len() < 25 {
                return Err(short("XLogData"));
            }
            data.advance(1);
            let wal_start = Lsn(data.get_u64());
            let server_wal_end = Lsn(data.get_u64());
            let server_time = postgres_time(data.get_i64())?;
            Ok(StreamMessage::XLogData {
                wal_start,
                server_wal_end,
                server_time,
                data,
            })
        }
        Some(b'k') => {
            if data.len() < 18 {
                return Err(short("keepalive"));
            }
            data.advance(1);
            let server_wal_end = Lsn(data.get_u64());
            let server_time = postgres_time(data.get_i64())?;
            Ok(StreamMessage::Keepalive {
                server_wal_end,
                server_time,
                reply_requested: data.get_u8() != 0,
            })
        }
        other => Err(ReplicationError::Protocol(format!(
            "unknown replication message type {:?}",
            other.map(|b| *b as char)
        ))),
    }
}

/// A PostgreSQL timestamp (µs since 2000-01-01 UTC) as a `DateTime`.
fn postgres_time(micros: i64) -> Result<DateTime<Utc>, ReplicationError> {
    crate::pgtime::from_postgres(micros)
        .ok_or_else(|| ReplicationError::Protocol(format!("timestamp {micros} out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_xlogdata_and_keepalive() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(0x1_0000_0028);
        w.put_u64(0x1_0000_1000);
        w.put_i64(1_000_000);
        w.put_slice(b"wal bytes");
        assert_eq!(
            decode_copy_data(w.freeze()).unwrap(),
            StreamMessage::XLogData {
                wal_start: Lsn(0x1_0000_0028),
                server_wal_end: Lsn(0x1_0000_1000),
                server_time: DateTime::parse_from_rfc3339("2000-01-01T00:00:01Z")
                    .unwrap()
                    .with_timezone(&Utc),
                data: Bytes::from_static(b"wal bytes"),
            }
        );
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(42);
        k.put_i64(-1_000_000);
        k.put_u8(1);
        assert_eq!(
            decode_copy_data(k.freeze()).unwrap(),
            StreamMessage::Keepalive {
                server_wal_end: Lsn(42),
                server_time: DateTime::parse_from_rfc3339("1999-12-31T23:59:59Z")
                    .unwrap()
                    .with_timezone(&Utc),
                reply_requested: true,
            }
        );
    }

    #[test]
    fn rejects_bad_copy_data() {
        for bad in [&b""[..], b"w123", b"k", b"x0000000000000000000"] {
            assert!(
                decode_copy_data(Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(0);
        k.put_i64(i64::MAX);
        k.put_u8(0);
        assert!(decode_copy_data(k.freeze()).is_err());
    }
}
