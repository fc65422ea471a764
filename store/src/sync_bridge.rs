//! `BlockingReader`: reads an async stream from a blocking thread (`spawn_blocking`), so the
//! synchronous zstd decoder can consume an object body without buffering it. A body that
//! ends before its announced length fails with a read error (a cut transfer), never a
//! clean end of file that would read as a truncated — damaged — object.

use std::io;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::runtime::Handle;

/// A `std::io::Read` over an `AsyncRead`. Must be used outside the runtime's worker threads
/// (inside `spawn_blocking`), where `Handle::block_on` is allowed.
pub(crate) struct BlockingReader {
    handle: Handle,
    inner: Pin<Box<dyn AsyncRead + Send>>,
    /// The body's length as announced by the server, and what has been read so far.
    announced: u64,
    received: u64,
}

impl BlockingReader {
    pub(crate) fn new(
        handle: Handle,
        inner: Pin<Box<dyn AsyncRead + Send>>,
        announced: u64,
    ) -> Self {
        BlockingReader {
            handle,
            inner,
            announced,
            received: 0,
        }
    }
}

impl io::Read for BlockingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.handle.block_on(self.inner.read(buf))?;
        if n == 0 && !buf.is_empty() && self.received < self.announced {
            return Err(crate::repository::short_transfer(
                self.received,
                self.announced,
            ));
        }
        self.received += n as u64;
        Ok(n)
    }
}
