//! Read-ahead under tungstenite: the connection's read buffer, held only
//! while data flows.
//!
//! tungstenite allocates its read buffer with the connection, zero-fills it
//! before every read, and reads at most that much per call, so its size is
//! both the idle memory of every connection and a limit on how much one
//! system call brings in (a 64 KiB message in 1 KiB reads takes 64 of them).
//! [`ReadAhead`] takes that job: the socket is read into a buffer of its own
//! ([`SMALL`], or [`AHEAD`] once a read fills it), tungstenite's small reads
//! are served from it, and it is let go as soon as it is empty and the
//! socket has nothing more. tungstenite's own buffer can then be tiny
//! (`DEFAULT_READ_BUFFER_SIZE`), and an idle connection holds no read buffer
//! beyond it. A caller that offers at least [`SMALL`] bytes of room (a
//! large `read_buffer_size`) is read into directly.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The buffer of a burst of small messages.
pub(crate) const SMALL: usize = 4 * 1024;
/// The buffer once a read filled the small one: most bytes per system call.
pub(crate) const AHEAD: usize = 64 * 1024;

/// A byte stream with a read buffer that exists only while data flows;
/// writes pass through.
#[derive(Debug)]
pub(crate) struct ReadAhead<IO> {
    io: IO,
    /// Read-ahead storage; empty (no allocation) unless data is flowing.
    buf: Vec<u8>,
    /// `buf[start..end]` is read and not yet handed out.
    start: usize,
    end: usize,
    /// The size of the next buffer: [`AHEAD`] after a read filled a buffer,
    /// [`SMALL`] after one that did not.
    size: usize,
}

impl<IO> ReadAhead<IO> {
    pub(crate) fn new(io: IO) -> Self {
        ReadAhead {
            io,
            buf: Vec::new(),
            start: 0,
            end: 0,
            size: SMALL,
        }
    }

    /// Hands out buffered bytes; true if there were any.
    fn take_buffered(&mut self, dst: &mut ReadBuf<'_>) -> bool {
        if self.start == self.end {
            return false;
        }
        let n = (self.end - self.start).min(dst.remaining());
        dst.put_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        true
    }

    fn release(&mut self) {
        self.buf = Vec::new();
        self.start = 0;
        self.end = 0;
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ReadAhead<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.take_buffered(dst) {
            return Poll::Ready(Ok(()));
        }
        if dst.remaining() >= SMALL && this.buf.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, dst);
        }
        if this.buf.len() != this.size {
            this.buf = vec![0; this.size];
        }
        this.start = 0;
        this.end = 0;
        let mut ahead = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.io).poll_read(cx, &mut ahead) {
            Poll::Ready(Ok(())) => {
                let n = ahead.filled().len();
                this.end = n;
                this.size = if n == this.buf.len() { AHEAD } else { SMALL };
                this.take_buffered(dst);
                if n == 0 {
                    this.release();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => {
                this.release();
                Poll::Ready(Err(err))
            }
            Poll::Pending => {
                // Nothing more for now: an idle connection keeps no buffer.
                this.release();
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ReadAhead<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_of_a_large_burst_see_every_byte_in_order() {
        let (mut tx, rx) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&data).await.unwrap();
        drop(tx);
        let mut rx = ReadAhead::new(rx);
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        let mut reads = 0;
        loop {
            let n = rx.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            reads += 1;
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data);
        assert!(reads >= data.len() / 1024);
        assert!(rx.buf.is_empty(), "released at the end of the stream");
    }

    #[tokio::test]
    async fn an_idle_stream_holds_no_buffer() {
        let (mut tx, rx) = tokio::io::duplex(256 * 1024);
        let mut rx = ReadAhead::new(rx);
        tx.write_all(&[7u8; 5000]).await.unwrap();
        let mut chunk = [0u8; 1024];
        let mut total = 0;
        while total < 5000 {
            total += rx.read(&mut chunk).await.unwrap();
        }
        // Nothing more: the next read waits, and the buffer is gone.
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(20), rx.read(&mut chunk)).await;
        assert!(pending.is_err());
        assert!(rx.buf.is_empty());
        assert_eq!(rx.size, SMALL);
        tx.write_all(b"hi").await.unwrap();
        assert_eq!(rx.read(&mut chunk).await.unwrap(), 2);
        assert_eq!(&chunk[..2], b"hi");
    }
}
