//! Read-ahead under tungstenite, for large messages on a small read buffer.
//!
//! tungstenite reads at most `read_buffer_size` bytes per read call, and
//! that buffer is allocated (and zero-filled) for the whole life of the
//! connection, so it is kept small (1 KiB) for idle memory. A 64 KiB
//! message would then take 64 read system calls. [`ReadAhead`] passes small
//! traffic straight through, and once a read fills all the room tungstenite
//! offered (more is probably waiting), reads up to [`AHEAD`] bytes at once
//! into a buffer of its own and serves tungstenite's next reads from it. The
//! buffer exists only while data flows: it is let go as soon as it is empty
//! and the socket has nothing more, so an idle connection holds none.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes read ahead in one system call.
pub(crate) const AHEAD: usize = 64 * 1024;
/// A direct read must fill at least this much room to switch to reading
/// ahead: tungstenite sometimes offers only the few bytes left in its
/// buffer, and filling those says nothing about what is waiting.
const TRIGGER: usize = 512;

/// A byte stream with adaptive read-ahead; writes pass through.
#[derive(Debug)]
pub(crate) struct ReadAhead<IO> {
    io: IO,
    /// Read-ahead storage; empty (no allocation) unless data is flowing.
    buf: Vec<u8>,
    /// `buf[start..end]` is read and not yet handed out.
    start: usize,
    end: usize,
    /// The last direct read filled the caller's buffer: read ahead next.
    ahead: bool,
}

impl<IO> ReadAhead<IO> {
    pub(crate) fn new(io: IO) -> Self {
        ReadAhead {
            io,
            buf: Vec::new(),
            start: 0,
            end: 0,
            ahead: false,
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
        let wanted = dst.remaining();
        if !this.ahead || wanted >= AHEAD {
            let before = dst.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, dst))?;
            let n = dst.filled().len() - before;
            this.ahead = n == wanted && n >= TRIGGER;
            return Poll::Ready(Ok(()));
        }
        if this.buf.is_empty() {
            this.buf = vec![0; AHEAD];
        }
        this.start = 0;
        this.end = 0;
        let mut ahead = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.io).poll_read(cx, &mut ahead) {
            Poll::Ready(Ok(())) => {
                let n = ahead.filled().len();
                this.end = n;
                // A read that brought no more than the caller asked for:
                // the burst is over, back to direct reads.
                if n <= wanted {
                    this.ahead = false;
                }
                this.take_buffered(dst);
                if this.start == this.end {
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
                this.ahead = false;
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
        assert!(!rx.ahead);
        tx.write_all(b"hi").await.unwrap();
        assert_eq!(rx.read(&mut chunk).await.unwrap(), 2);
        assert_eq!(&chunk[..2], b"hi");
    }
}
