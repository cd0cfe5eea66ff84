//! Where a connection's input goes: a buffer that exists only while data
//! flows.

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::io::poll_read_buf;

/// The most a read with nothing allocated takes, on the stack.
const SCRATCH: usize = 4 * 1024;
/// Reads grow up to this (or the initial size, if larger).
const READ_MAX: usize = 64 * 1024;

/// A connection's read buffer, for a codec to cut messages out of.
///
/// The policy, the same for every transport:
///
/// - **Nothing allocated while idle.** With no buffer (a connection
///   waiting for its peer, or one whose every byte was handed out), a read
///   goes to the stack, at most the read size and 4 KiB, and a buffer is
///   allocated only once bytes arrive, which are copied in. Waiting thus
///   costs no memory, and after a large message the next read brings the
///   next header first instead of reading far into the message after it.
/// - **Grown by what arrived.** While the read size is at most 4 KiB, a
///   read the buffer has too little room for goes to the stack too, and
///   the buffer grows by what arrived (by the read size, when that is
///   larger and the read filled the stack). An allocation thus holds about
///   what was read into it (at most twice that, from the allocator's
///   doubling), and a message cut from it keeps about its own bytes alive
///   however long it is kept (a slow peer's queue, a room's history), not
///   a read buffer around them. Over a transport whose reads stop short of
///   what is waiting (TLS returns a record at a time) this costs a copy
///   per read.
/// - **Released when the socket has nothing more.** A read that finds
///   nothing lets go of an empty buffer; messages split off it keep their
///   own bytes alive.
/// - **Straight into the buffer while data flows**, never zero-filled:
///   into room of at least half the read size (a codec that knows a large
///   frame's length [reserves](BytesMut::reserve) room for all of it, so
///   the frame arrives in as few reads as the socket allows); and once the
///   read size has grown past 4 KiB, into a buffer topped up by the read
///   size.
/// - **The read size adapts**: it doubles (up to 64 KiB) while reads fill
///   room of at least half of it, halves when a read that left room
///   brought a quarter of it or less, and starts over at the initial size
///   after the connection went idle.
///
/// Messages are cut out with [`BytesMut::split_to`] through `DerefMut`,
/// without copying.
pub struct ReadBuffer {
    buf: BytesMut,
    /// Room offered to the next read.
    size: u32,
    /// The first read of a burst, and the least the size shrinks to.
    initial: u32,
}

impl ReadBuffer {
    /// An empty buffer whose bursts start with reads of `initial` bytes
    /// (at least 1).
    pub fn new(initial: usize) -> Self {
        let initial = u32::try_from(initial.max(1)).unwrap_or(u32::MAX);
        ReadBuffer {
            buf: BytesMut::new(),
            size: initial,
            initial,
        }
    }

    /// A buffer that starts with `bytes`: what a handshake read past its
    /// end.
    pub fn with_bytes(initial: usize, bytes: &[u8]) -> Self {
        ReadBuffer {
            buf: BytesMut::from(bytes),
            ..Self::new(initial)
        }
    }

    /// Reads once: `Ok(0)` is the end of the stream. `Pending` when the
    /// socket has nothing more, after letting go of an empty buffer.
    pub fn poll_read<IO>(&mut self, io: &mut IO, cx: &mut Context<'_>) -> Poll<io::Result<usize>>
    where
        IO: AsyncRead + Unpin + ?Sized,
    {
        let size = self.size as usize;
        let left = self.buf.capacity() - self.buf.len();
        let polled = if left > 0 && left >= size / 2 {
            // Into the room left: at least half the read size.
            poll_read_buf(Pin::new(io), cx, &mut self.buf).map_ok(|n| (n, left))
        } else if size > SCRATCH && (self.buf.capacity() > 0 || size > self.initial as usize) {
            // Past what the stack takes, in a burst or with a buffer in
            // use: straight into a buffer of the read size.
            self.buf.reserve(size);
            let room = self.buf.capacity() - self.buf.len();
            poll_read_buf(Pin::new(io), cx, &mut self.buf).map_ok(|n| (n, room))
        } else {
            // To the stack, then into the buffer, grown by what arrived.
            let room = size.min(SCRATCH);
            let mut scratch = [MaybeUninit::<u8>::uninit(); SCRATCH];
            let mut read = ReadBuf::uninit(&mut scratch[..room]);
            Pin::new(io).poll_read(cx, &mut read).map_ok(|()| {
                let bytes = read.filled();
                // No more is allocated than arrived, unless the read size is
                // more than the stack took and the read filled it.
                let more = if bytes.len() < room { 0 } else { size };
                self.buf.reserve(bytes.len().max(more));
                self.buf.extend_from_slice(bytes);
                (bytes.len(), room)
            })
        };
        let (n, room) = match polled {
            Poll::Pending => {
                if self.buf.is_empty() {
                    self.release();
                }
                return Poll::Pending;
            }
            Poll::Ready(read) => read?,
        };
        let max = READ_MAX.max(self.initial as usize);
        if n == room && room >= size / 2 && size < max {
            self.size = u32::try_from(size.saturating_mul(2).min(max)).unwrap_or(u32::MAX);
        } else if n < room && n <= size / 4 && self.size > self.initial {
            self.size = (self.size / 2).max(self.initial);
        }
        Poll::Ready(Ok(n))
    }

    /// Lets go of the buffer and what it holds (a closed connection), and
    /// starts the next burst at the initial read size.
    pub fn release(&mut self) {
        self.buf = BytesMut::new();
        self.size = self.initial;
    }
}

impl Deref for ReadBuffer {
    type Target = BytesMut;

    fn deref(&self) -> &BytesMut {
        &self.buf
    }
}

impl DerefMut for ReadBuffer {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
}

impl fmt::Debug for ReadBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadBuffer")
            .field("buffered", &self.buf.len())
            .field("capacity", &self.buf.capacity())
            .field("read_size", &self.size)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use bytes::Buf;
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn poll_once(
        buf: &mut ReadBuffer,
        io: &mut tokio::io::DuplexStream,
    ) -> Poll<io::Result<usize>> {
        buf.poll_read(io, &mut Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test]
    async fn a_buffer_exists_only_while_bytes_wait() {
        let (mut peer, mut io) = tokio::io::duplex(1 << 16);
        let mut buf = ReadBuffer::new(1024);
        assert!(poll_once(&mut buf, &mut io).is_pending());
        assert_eq!(buf.capacity(), 0);

        peer.write_all(b"hello").await.unwrap();
        let n = poll_fn(|cx| buf.poll_read(&mut io, cx)).await.unwrap();
        assert_eq!((n, &buf[..]), (5, &b"hello"[..]));
        // The read took all there was: only that is allocated, so the
        // message split off it keeps 5 bytes alive, not 1 KiB.
        assert!(buf.capacity() < 64, "{}", buf.capacity());

        // Handed out, then nothing more to read: the buffer goes, and the
        // message keeps its bytes.
        let msg = buf.split_to(5).freeze();
        assert!(poll_once(&mut buf, &mut io).is_pending());
        assert_eq!(buf.capacity(), 0);
        assert_eq!(&msg[..], b"hello");

        // Part of a message keeps its buffer while waiting for the rest.
        peer.write_all(b"hel").await.unwrap();
        poll_fn(|cx| buf.poll_read(&mut io, cx)).await.unwrap();
        assert!(poll_once(&mut buf, &mut io).is_pending());
        peer.write_all(b"lo").await.unwrap();
        poll_fn(|cx| buf.poll_read(&mut io, cx)).await.unwrap();
        assert_eq!(&buf[..], b"hello");

        // Released, then the end of the stream: zero, and nothing allocated.
        buf.release();
        drop(peer);
        assert_eq!(poll_fn(|cx| buf.poll_read(&mut io, cx)).await.unwrap(), 0);
        assert_eq!(buf.capacity(), 0);
    }

    #[tokio::test]
    async fn reads_grow_while_they_fill_the_room_and_restart_after_idle() {
        let (mut peer, mut io) = tokio::io::duplex(1 << 20);
        let mut buf = ReadBuffer::new(1024);
        peer.write_all(&vec![7u8; 200_000]).await.unwrap();
        let mut sizes = Vec::new();
        for _ in 0..8 {
            let n = poll_fn(|cx| buf.poll_read(&mut io, cx)).await.unwrap();
            sizes.push(n);
            buf.advance(n);
        }
        // Each read fills the room offered, which grows: 1 KiB on the
        // stack first, then more each time (a read that took everything
        // leaves no room, so the next one goes through the stack again).
        assert_eq!(&sizes[..3], &[1024, 2048, 4096], "{sizes:?}");
        assert!(sizes.iter().any(|&n| n > 16 * 1024), "{sizes:?}");
        // Drained: the next burst starts small again.
        let mut total: usize = sizes.iter().sum();
        while total < 200_000 {
            let n = poll_fn(|cx| buf.poll_read(&mut io, cx)).await.unwrap();
            buf.advance(n);
            total += n;
        }
        assert!(poll_once(&mut buf, &mut io).is_pending());
        peer.write_all(&[1u8; 4096]).await.unwrap();
        let n = poll_fn(|cx| buf.poll_read(&mut io, cx)).await.unwrap();
        assert_eq!(n, 1024);
    }

    #[tokio::test]
    async fn a_reserved_frame_arrives_in_one_read() {
        let (mut peer, mut io) = tokio::io::duplex(1 << 20);
        let mut buf = ReadBuffer::new(16);
        peer.write_all(&vec![3u8; 100_000]).await.unwrap();
        let first = poll_fn(|cx| buf.poll_read(&mut io, cx)).await.unwrap();
        assert_eq!(first, 16);
        // A codec that read a header announcing 100,000 bytes.
        let len = buf.len();
        buf.reserve(100_000 - len);
        let rest = poll_fn(|cx| buf.poll_read(&mut io, cx)).await.unwrap();
        assert_eq!(first + rest, 100_000);
    }

    /// What a message cut from the buffer keeps alive: the allocation it
    /// shares, from the message to the allocation's end.
    fn kept(buf: &mut ReadBuffer, len: usize) -> usize {
        let msg = buf.split_to(len);
        msg.capacity() + buf.capacity()
    }

    #[tokio::test]
    async fn a_message_split_across_reads_keeps_only_its_own_bytes() {
        let (mut peer, mut io) = tokio::io::duplex(1 << 16);
        let mut buf = ReadBuffer::new(4096);
        peer.write_all(b"hel").await.unwrap();
        poll_fn(|cx| buf.poll_read(&mut io, cx)).await.unwrap();
        // Waiting for the rest holds what arrived, not a read buffer.
        assert!(poll_once(&mut buf, &mut io).is_pending());
        assert!(buf.capacity() < 64, "{}", buf.capacity());
        peer.write_all(b"lo\n").await.unwrap();
        poll_fn(|cx| buf.poll_read(&mut io, cx)).await.unwrap();
        assert_eq!(&buf[..], b"hello\n");
        assert!(kept(&mut buf, 6) < 64);

        // The same after messages were cut from the allocation the rest
        // of a message waits in.
        peer.write_all(b"a\nb\nc").await.unwrap();
        poll_fn(|cx| buf.poll_read(&mut io, cx)).await.unwrap();
        let (a, b) = (buf.split_to(2), buf.split_to(2));
        assert!(poll_once(&mut buf, &mut io).is_pending());
        peer.write_all(b"d\n").await.unwrap();
        poll_fn(|cx| buf.poll_read(&mut io, cx)).await.unwrap();
        assert_eq!(&buf[..], b"cd\n");
        assert!(kept(&mut buf, 3) < 64);
        assert_eq!((&a[..], &b[..]), (&b"a\n"[..], &b"b\n"[..]));
    }

    #[tokio::test]
    async fn a_frame_in_progress_holds_what_arrived_and_the_room_reserved() {
        let (mut peer, mut io) = tokio::io::duplex(1 << 16);
        let mut buf = ReadBuffer::new(4096);
        // 1,500 bytes of a 1,600-byte frame, for which the codec reserves.
        peer.write_all(&[1u8; 1500]).await.unwrap();
        poll_fn(|cx| buf.poll_read(&mut io, cx)).await.unwrap();
        buf.reserve(100);
        assert!(poll_once(&mut buf, &mut io).is_pending());
        // The allocator's doubling at most, not a read size on top.
        assert!(buf.capacity() <= 3000, "{}", buf.capacity());
        peer.write_all(&[2u8; 100]).await.unwrap();
        poll_fn(|cx| buf.poll_read(&mut io, cx)).await.unwrap();
        assert_eq!(buf.len(), 1600);
    }

    #[tokio::test]
    async fn frames_back_to_back_take_reads_of_the_grown_size() {
        const FRAME: usize = 3000;
        const FRAMES: usize = 700;
        let (mut peer, mut io) = tokio::io::duplex(4 << 20);
        let mut wire = Vec::new();
        for _ in 0..FRAMES {
            wire.extend_from_slice(&(FRAME as u32).to_be_bytes());
            wire.extend(std::iter::repeat_n(9u8, FRAME));
        }
        peer.write_all(&wire).await.unwrap();
        let mut buf = ReadBuffer::new(4096);
        let (mut reads, mut frames) = (0, 0);
        while frames < FRAMES {
            // A codec that reserves for the whole frame once it has read
            // the frame's length.
            if buf.len() >= 4 {
                let len = 4 + u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                if buf.len() >= len {
                    drop(buf.split_to(len));
                    frames += 1;
                    continue;
                }
                let missing = len - buf.len();
                buf.reserve(missing);
            }
            poll_fn(|cx| buf.poll_read(&mut io, cx)).await.unwrap();
            reads += 1;
        }
        // 2 MiB in reads that grow to 64 KiB: about 35, where a read per
        // frame would be 700.
        assert!(reads <= 100, "{reads} reads");
    }

    #[tokio::test]
    async fn bytes_given_at_the_start_come_first() {
        let (_peer, mut io) = tokio::io::duplex(64);
        let mut buf = ReadBuffer::with_bytes(1024, b"left over");
        assert_eq!(&buf[..], b"left over");
        // Nothing to read: what is buffered stays.
        assert!(poll_once(&mut buf, &mut io).is_pending());
        assert_eq!(&buf[..], b"left over");
        assert!(ReadBuffer::with_bytes(1024, b"").capacity() == 0);
    }
}
