//! The framed byte stream under the client: a TCP, Unix or TLS socket with a read buffer
//! and a write buffer, yielding one backend message at a time.
//!
//! Both directions keep their progress in the struct, so `read_message` and `flush` are
//! cancel-safe: dropping either future loses no bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend::{ErrorFields, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use super::error::{ReplicationError, ServerError};

/// Largest backend message accepted; walsender messages are far smaller.
const MAX_MESSAGE_LEN: usize = 1 << 30;
/// Read-buffer growth step: walsender sends XLogData of up to 128 kB. (1 MiB was tried:
/// no faster in `benches/stream_throughput`, and more CPU per GB in two runs of two.)
const READ_CHUNK: usize = 64 * 1024;
/// CopyBothResponse, which `postgres-protocol` does not decode.
const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// A connected socket of any kind.
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One backend message.
pub(crate) enum Backend {
    /// Everything `postgres-protocol` decodes.
    Message(Message),
    /// CopyBothResponse: the server entered copy-both mode.
    CopyBothResponse,
}

/// A socket framed into PostgreSQL messages.
pub(crate) struct Connection {
    socket: Socket,
    read_buf: BytesMut,
    /// Frontend messages not yet written; fill with `postgres_protocol` encoders.
    pub(crate) write_buf: BytesMut,
}

impl Connection {
    pub(crate) fn new(socket: Socket) -> Self {
        Connection {
            socket,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(1024),
        }
    }

    /// The next backend message. Cancel-safe: partial input stays in the buffer.
    pub(crate) async fn read_message(&mut self) -> Result<Backend, ReplicationError> {
        loop {
            if let Some(message) = self.parse_buffered()? {
                return Ok(message);
            }
            if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
                self.read_buf.reserve(READ_CHUNK);
            }
            if self.socket.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ReplicationError::Closed);
            }
        }
    }

    fn parse_buffered(&mut self) -> Result<Option<Backend>, ReplicationError> {
        if self.read_buf.len() < 5 {
            return Ok(None);
        }
        let tag = self.read_buf[0];
        let len = u32::from_be_bytes([
            self.read_buf[1],
            self.read_buf[2],
            self.read_buf[3],
            self.read_buf[4],
        ]) as usize;
        if !(4..=MAX_MESSAGE_LEN).contains(&len) {
            return Err(ReplicationError::Protocol(format!(
                "message {:?} has invalid length {len}",
                tag as char
            )));
        }
        if self.read_buf.len() < len + 1 {
            self.read_buf.reserve(len + 1 - self.read_buf.len());
            return Ok(None);
        }
        if tag == COPY_BOTH_RESPONSE_TAG {
            self.read_buf.advance(len + 1);
            return Ok(Some(Backend::CopyBothResponse));
        }
        match Message::parse(&mut self.read_buf) {
            Ok(Some(message)) => Ok(Some(Backend::Message(message))),
            Ok(None) => Err(ReplicationError::Protocol(
                "incomplete message after framing".to_string(),
            )),
            Err(err) => Err(ReplicationError::Protocol(format!(
                "cannot decode message {:?}: {err}",
                tag as char
            ))),
        }
    }

    /// Write everything in `write_buf` and flush. Cancel-safe: unwritten bytes stay
    /// in the buffer for the next call.
    pub(crate) async fn flush(&mut self) -> Result<(), ReplicationError> {
        while !self.write_buf.is_empty() {
            let n = self.socket.write(&self.write_buf).await?;
            if n == 0 {
                return Err(ReplicationError::Closed);
            }
            self.write_buf.advance(n);
        }
        self.socket.flush().await?;
        Ok(())
    }
}

/// Turn ErrorResponse fields into a `ServerError`.
pub(crate) fn server_error(mut fields: ErrorFields<'_>) -> ReplicationError {
    use fallible_iterator::FallibleIterator;
    let mut err = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    loop {
        match fields.next() {
            Ok(Some(field)) => {
                let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
                match field.type_() {
                    b'V' => err.severity = value,
                    b'S' if err.severity.is_empty() => err.severity = value,
                    b'C' => err.code = value,
                    b'M' => err.message = value,
                    b'D' => err.detail = Some(value),
                    b'H' => err.hint = Some(value),
                    _ => {}
                }
            }
            Ok(None) => return ReplicationError::Server(err),
            Err(e) => return ReplicationError::Protocol(format!("malformed error response: {e}")),
        }
    }
}

/// Log a NoticeResponse at a level matching its severity.
pub(crate) fn log_notice(fields: ErrorFields<'_>) {
    match server_error(fields) {
        ReplicationError::Server(n) if n.severity == "WARNING" => {
            tracing::warn!(code = %n.code, detail = ?n.detail, hint = ?n.hint, "server: {}", n.message);
        }
        ReplicationError::Server(n) => {
            tracing::info!(code = %n.code, detail = ?n.detail, severity = %n.severity, "server: {}", n.message);
        }
        other => tracing::warn!("ignoring notice: {other}"),
    }
}

impl Socket {
    fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Socket::Tcp(s) => s.as_raw_fd(),
            Socket::Unix(s) => s.as_raw_fd(),
            Socket::Tls(s) => s.get_ref().0.as_raw_fd(),
        }
    }
}

impl Connection {
    /// Sets the socket's receive low-water mark (`SO_RCVLOWAT`) to `bytes`, at most a
    /// quarter of its receive buffer: on Linux a TCP socket is then signalled readable only
    /// once that much is queued, so small arrivals do not each wake the reader; setting it
    /// back to 1 signals at once if anything is queued. The cap keeps the kernel from
    /// growing the buffer and clamping the receive window to fit the mark.
    pub(crate) fn set_read_low_water(&self, bytes: usize) -> io::Result<()> {
        let fd = self.socket.raw_fd();
        let mut value = i32::try_from(bytes).unwrap_or(i32::MAX).max(1);
        if value > 1 {
            value = value.min(sockopt(fd, libc::SO_RCVBUF)? / 4).max(1);
        }
        let len = std::mem::size_of::<i32>() as libc::socklen_t;
        let at = (&value as *const i32).cast();
        // SAFETY: `fd` is this connection's open socket; `at` points to an i32 of `len` bytes.
        if unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, at, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn sockopt(fd: std::os::fd::RawFd, name: libc::c_int) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    let at = (&mut value as *mut i32).cast();
    // SAFETY: `fd` is an open socket; `at` points to an i32 of `len` bytes.
    if unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, name, at, &mut len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// What `stream` relies on while it lets WAL accumulate: with the mark raised a small
    /// arrival does not wake the reader, and lowering it wakes the reader at once.
    #[tokio::test]
    async fn lowering_the_low_water_mark_wakes_a_reader_for_bytes_already_queued() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut conn = Connection::new(Socket::Tcp(client.unwrap()));
        let (mut peer, _) = server.unwrap();
        conn.set_read_low_water(32 << 10).unwrap();
        let mut buf = [0u8; 64];
        peer.write_all(b"small").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let early = tokio::time::timeout(Duration::from_millis(200), conn.socket.read(&mut buf));
        assert!(
            early.await.is_err(),
            "5 bytes woke a reader waiting for 32 KiB"
        );
        conn.set_read_low_water(1).unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), conn.socket.read(&mut buf))
            .await
            .expect("lowering the mark must wake the reader")
            .unwrap();
        assert_eq!(&buf[..n], b"small");
    }
}
