//! `BlockingReader`: reads an async stream from a blocking thread (`spawn_blocking`), so the
//! synchronous zstd decoder can consume an object body without buffering it.

use std::io;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::runtime::Handle;

/// A `std::io::Read` over an `AsyncRead`. Must be used outside the runtime's worker threads
/// (inside `spawn_blocking`), where `Handle::block_on` is allowed.
pub(crate) struct BlockingReader {
    handle: Handle,
    inner: Pin<Box<dyn AsyncRead + Send>>,
}

impl BlockingReader {
    pub(crate) fn new(handle: Handle, inner: Pin<Box<dyn AsyncRead + Send>>) -> Self {
        BlockingReader { handle, inner }
    }
}

impl io::Read for BlockingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.handle.block_on(self.inner.read(buf))
    }
}
