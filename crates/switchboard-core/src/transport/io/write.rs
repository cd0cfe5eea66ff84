//! Outbound bytes: small ones coalesced, large payloads written from their
//! own memory.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use crate::transport::WriteProgress;

/// Payloads up to this size are copied next to their framing; larger ones
/// are written from their own memory, never copied.
const COPY_MAX: usize = 4 * 1024;
/// At most this many slices per vectored write.
const MAX_SLICES: usize = 64;
/// Pending bytes, large payloads included, that make
/// [`poll_ready`](WriteBuffer::poll_ready) write first. Large payloads cost
/// no memory here (they are the messages' own), and each write wakes the
/// peer, so a batch of them goes out in few large writes.
const MAX_PENDING: usize = 256 * 1024;
/// The least a coalescing buffer with no room allocates, so that a batch
/// of small messages is one allocation rather than a doubling series.
const MIN_ALLOC: usize = 1024;

/// A connection's outbound bytes, in order: framing and small payloads
/// coalesced into one buffer, large payloads (over 4 KiB) kept in their own
/// memory and written with vectored writes.
///
/// Encoders append through [`frame`](Self::frame) (framing bytes around a
/// payload that is not copied when large) or [`buf_mut`](Self::buf_mut) (a
/// `BytesMut`, for tokio-util encoders). With no large payload pending, a
/// write is one plain `poll_write` of the coalesced bytes.
///
/// Once everything was written, the coalescing buffer's memory is let go:
/// an idle connection holds no write buffer. Keeping a small buffer for
/// the next batch would save an allocation per batch, but it was
/// measured to cost more CPU time per delivery in a broadcast, most
/// likely because each subscriber's kept buffer is cold in the cache when
/// its turn comes, while the block freed after one delivery and handed
/// out for the next stays hot (docs/performance.md, "Idle memory per
/// connection").
///
/// ```
/// use std::future::poll_fn;
///
/// use bytes::Bytes;
/// use switchboard_core::transport::io::WriteBuffer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let mut out = WriteBuffer::new(16 * 1024);
/// // A line: the payload, then its end.
/// out.frame(b"", Bytes::from_static(b"hello"), b"\n");
/// let mut sink: Vec<u8> = Vec::new();
/// poll_fn(|cx| out.poll_flush(&mut sink, cx)).await?;
/// assert_eq!(sink, b"hello\n");
/// assert!(!out.is_allocated());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct WriteBuffer {
    /// Being coalesced; written after `queued`.
    buf: BytesMut,
    /// Large payloads and what was coalesced before each; `None` when
    /// there are none.
    queued: Option<Box<Queued>>,
    /// Copied bytes that make `poll_ready` write first.
    limit: u32,
    /// Bytes written to the stream so far.
    written: u64,
}

#[derive(Debug, Default)]
struct Queued {
    /// None of them empty.
    segments: VecDeque<Bytes>,
    /// Bytes in `segments`.
    len: usize,
}

impl Queued {
    fn push(&mut self, bytes: Bytes) {
        self.len += bytes.len();
        self.segments.push_back(bytes);
    }
}

impl WriteBuffer {
    /// An empty buffer (no allocation). `limit`: copied bytes at which
    /// [`poll_ready`](Self::poll_ready) writes before taking more.
    pub fn new(limit: usize) -> Self {
        WriteBuffer {
            buf: BytesMut::new(),
            queued: None,
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            written: 0,
        }
    }

    /// The `limit` it was made with: copied bytes at which
    /// [`poll_ready`](Self::poll_ready) writes before taking more.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// Bytes not yet written.
    #[inline]
    pub fn len(&self) -> usize {
        self.queued.as_ref().map_or(0, |q| q.len) + self.buf.len()
    }

    /// Whether everything was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes written to the stream so far.
    #[inline]
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes taken in and bytes written so far, for
    /// [`TransportConn::write_progress`](crate::transport::TransportConn::write_progress).
    #[inline]
    pub fn progress(&self) -> WriteProgress {
        WriteProgress {
            buffered: self.written + self.len() as u64,
            written: self.written,
        }
    }

    /// Bytes in the coalescing buffer, not yet written: what `poll_ready`
    /// holds against the limit.
    pub fn copied(&self) -> usize {
        self.buf.len()
    }

    /// Whether the buffer holds memory of its own.
    pub fn is_allocated(&self) -> bool {
        self.buf.capacity() > 0 || self.queued.is_some()
    }

    /// Appends `head`, `payload` and `tail`: a payload of up to 4 KiB is
    /// copied with its framing, a larger one is written from its own
    /// memory.
    #[inline(always)]
    pub fn frame(&mut self, head: &[u8], payload: Bytes, tail: &[u8]) {
        if payload.len() <= COPY_MAX {
            self.copy([head, &payload, tail]);
        } else {
            self.frame_large(head, payload, tail);
        }
    }

    /// [`frame`](Self::frame) for a payload written from its own memory;
    /// out of line, so that the small case inlines into each encoder.
    #[inline(never)]
    fn frame_large(&mut self, head: &[u8], payload: Bytes, tail: &[u8]) {
        self.copy([head]);
        let queued = self.queued.get_or_insert_with(Box::default);
        if !self.buf.is_empty() {
            queued.push(self.buf.split().freeze());
        }
        queued.push(payload);
        self.copy([tail]);
    }

    /// Copies `parts` into the coalescing buffer; an empty part costs no
    /// call.
    #[inline(always)]
    fn copy<const N: usize>(&mut self, parts: [&[u8]; N]) {
        let n = parts.iter().map(|part| part.len()).sum::<usize>();
        if self.buf.capacity() - self.buf.len() < n {
            self.buf.reserve(n.max(MIN_ALLOC));
        }
        for part in parts {
            if !part.is_empty() {
                self.buf.extend_from_slice(part);
            }
        }
    }

    /// Drops everything not yet written, and the memory with it.
    pub fn clear(&mut self) {
        self.buf = BytesMut::new();
        self.queued = None;
    }

    /// The coalescing buffer, for an encoder that writes into a `BytesMut`
    /// (a tokio-util `Encoder`): what it appends is written in order.
    #[inline]
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        if self.buf.capacity() == 0 {
            self.buf.reserve(MIN_ALLOC);
        }
        &mut self.buf
    }

    /// Ready to take one more message: writes first once the copied bytes
    /// reach the limit, or everything pending 256 KiB.
    pub fn poll_ready<IO>(&mut self, io: &mut IO, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        IO: AsyncWrite + Unpin + ?Sized,
    {
        if self.buf.len() >= self.limit as usize || self.len() >= MAX_PENDING {
            ready!(self.poll_write(io, cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes everything and flushes the stream.
    pub fn poll_flush<IO>(&mut self, io: &mut IO, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        IO: AsyncWrite + Unpin + ?Sized,
    {
        ready!(self.poll_write(io, cx))?;
        Pin::new(io).poll_flush(cx)
    }

    /// Writes everything, without flushing; then lets go of the memory
    /// (see [`WriteBuffer`]).
    pub fn poll_write<IO>(&mut self, io: &mut IO, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        IO: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            let n = match &self.queued {
                None if self.buf.is_empty() => break,
                // The common case: one contiguous buffer, one plain write.
                None => ready!(Pin::new(&mut *io).poll_write(cx, &self.buf))?,
                // Payloads of their own: one vectored write (a stream
                // without vectored writes takes the first slice).
                Some(queued) => {
                    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                    let mut count = 0;
                    let tail = Some(&self.buf[..]).filter(|b| !b.is_empty());
                    let all = queued.segments.iter().map(|s| &s[..]).chain(tail);
                    for (slice, bytes) in slices.iter_mut().zip(all) {
                        *slice = IoSlice::new(bytes);
                        count += 1;
                    }
                    ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?
                }
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        // Everything written: let go of the memory (see `WriteBuffer`).
        self.buf = BytesMut::new();
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        self.written += n as u64;
        if let Some(queued) = &mut self.queued {
            while n > 0
                && let Some(seg) = queued.segments.front_mut()
            {
                let take = n.min(seg.len());
                seg.advance(take);
                queued.len -= take;
                n -= take;
                if seg.is_empty() {
                    queued.segments.pop_front();
                }
            }
            if queued.segments.is_empty() {
                self.queued = None;
            }
        }
        self.buf.advance(n);
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::task::Waker;

    use super::*;

    /// A stream that records each write it is given.
    #[derive(Default)]
    struct Recording {
        data: Vec<u8>,
        /// (vectored, slices, bytes) per write.
        writes: Vec<(bool, usize, usize)>,
        /// Takes at most this much per write.
        max: Option<usize>,
    }

    impl Recording {
        /// Takes what fits of `bufs`, as one write.
        fn take(&mut self, vectored: bool, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
            let start = self.data.len();
            for buf in bufs {
                let left = self.max.unwrap_or(usize::MAX) - (self.data.len() - start);
                self.data.extend_from_slice(&buf[..buf.len().min(left)]);
            }
            let n = self.data.len() - start;
            self.writes.push((vectored, bufs.len(), n));
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Recording {
        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.take(true, bufs)
        }

        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.take(false, &[IoSlice::new(buf)])
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn flush(out: &mut WriteBuffer, io: &mut Recording) {
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(out.poll_flush(io, &mut cx), Poll::Ready(Ok(()))));
    }

    #[test]
    fn small_frames_are_coalesced_into_one_plain_write() {
        let mut out = WriteBuffer::new(16 * 1024);
        for word in ["one", "two", "three"] {
            out.frame(b">", Bytes::from(word), b"\n");
        }
        assert_eq!(out.copied(), out.len());
        let mut io = Recording::default();
        flush(&mut out, &mut io);
        assert_eq!(io.data, b">one\n>two\n>three\n");
        assert_eq!(io.writes, vec![(false, 1, 17)]);
        assert!(out.is_empty());
        assert!(!out.is_allocated());
    }

    #[test]
    fn a_large_payload_is_written_from_its_own_bytes() {
        let big = Bytes::from(vec![7u8; 100_000]);
        let mut out = WriteBuffer::new(16 * 1024);
        out.frame(b"", Bytes::from_static(b"a"), b"\n");
        out.frame(b"<", big.clone(), b">");
        // An encoder's bytes go after it too.
        out.buf_mut().extend_from_slice(b"b\n");
        // Only the framing and the small payloads were copied; those
        // before the large payload went out of the coalescing buffer.
        assert_eq!(out.copied(), 3);
        assert_eq!(out.len(), 2 + 1 + 100_000 + 1 + 2);
        let segments = &out.queued.as_ref().unwrap().segments;
        assert_eq!(segments[1].as_ptr(), big.as_ptr());

        let mut io = Recording::default();
        flush(&mut out, &mut io);
        let mut expected = b"a\n<".to_vec();
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b">b\n");
        assert_eq!(io.data, expected);
        // One vectored write: the copied bytes before, the payload, the
        // copied bytes after.
        assert_eq!(io.writes, vec![(true, 3, expected.len())]);
        assert!(!out.is_allocated());
    }

    #[tokio::test]
    async fn short_writes_and_writes_of_one_slice_keep_the_order() {
        let mut out = WriteBuffer::new(16 * 1024);
        let mut expected = Vec::new();
        for i in 0..20u8 {
            let payload = Bytes::from(vec![i; if i % 3 == 0 { 5000 } else { 10 }]);
            out.frame(&[0xF0, i], payload.clone(), &[0x0F]);
            expected.extend_from_slice(&[0xF0, i]);
            expected.extend_from_slice(&payload);
            expected.push(0x0F);
        }
        let mut io = Recording {
            max: Some(999),
            ..Recording::default()
        };
        flush(&mut out, &mut io);
        assert_eq!(io.data, expected);
        assert!(io.writes.iter().all(|&(_, _, n)| n <= 999));

        // A stream without vectored writes takes the first slice each time.
        let (mut tx, mut rx) = tokio::io::duplex(1 << 20);
        let big = Bytes::from(vec![1u8; 10_000]);
        out.frame(b"head", big.clone(), b"tail");
        poll_fn(|cx| out.poll_flush(&mut tx, cx)).await.unwrap();
        drop(tx);
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut rx, &mut got)
            .await
            .unwrap();
        assert_eq!(got, [&b"head"[..], &big, b"tail"].concat());
    }

    #[test]
    fn poll_ready_writes_at_the_copied_limit_or_at_256_kib_pending() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut io = Recording::default();
        let mut out = WriteBuffer::new(100);
        out.frame(b"", Bytes::from(vec![0u8; 99]), b"");
        assert!(out.poll_ready(&mut io, &mut cx).is_ready());
        assert!(io.writes.is_empty());
        out.frame(b"", Bytes::from_static(b"!"), b"");
        assert!(out.poll_ready(&mut io, &mut cx).is_ready());
        assert_eq!(io.writes.len(), 1);

        // Large payloads are not copied: only their total counts.
        let mut io = Recording::default();
        let payload = Bytes::from(vec![5u8; 64 * 1024]);
        for _ in 0..3 {
            out.frame(b"h", payload.clone(), b"");
            assert!(out.poll_ready(&mut io, &mut cx).is_ready());
        }
        assert!(io.writes.is_empty());
        out.frame(b"h", payload.clone(), b"");
        assert!(out.poll_ready(&mut io, &mut cx).is_ready());
        assert_eq!(io.writes.len(), 1);
        assert_eq!(io.data.len(), 4 * (1 + 64 * 1024));
    }
}
