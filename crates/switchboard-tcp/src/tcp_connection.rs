//! One framed TCP connection: read buffer, write buffer, idle timer.
//!
//! This is where the bytes meet the codec. The core's connection driver
//! calls `poll_recv` when the component wants the next message, and
//! `poll_ready`/`start_send` for each queued message, then `poll_flush` once
//! per batch; everything here is shaped by that.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use switchboard_core::{
    CloseFrame, Config, Error as CoreError, Message, Received, Result, TransportConn,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::io::poll_read_buf;

use crate::error::{Error, into_core};

/// First read size, and the least room offered to a read; small messages
/// never need more. A connection with nothing buffered reads this much into
/// the stack and allocates only when bytes arrive, so waiting costs no
/// read buffer at all.
const READ_INITIAL: usize = 1024;
/// Reads grow (doubling while they fill all the room offered) up to this.
const READ_MAX: usize = 16 * 1024;
/// `poll_ready` flushes before encoding more once this much is buffered:
/// one write carries many small messages, and a slow reader holds at most
/// this (plus one message) here, the rest staying in the core's bounded
/// queue where the slow-consumer policy sees it.
const WRITE_BOUNDARY: usize = 8 * 1024;
/// A write buffer that grew past this is let go after it was written out.
const WRITE_KEEP: usize = 8 * 1024;
/// Undecoded bytes allowed beyond the configured maximum before a codec
/// that does not bound its own buffering is stopped (room for headers).
const GUARD_SLACK: usize = 4 * 1024;

/// A framed connection over any byte stream: the [`TransportConn`] that
/// [`TcpTransport`](crate::TcpTransport) and [`connect`](crate::connect)
/// build. Useful directly when wrapping another stream (TLS, Unix sockets).
///
/// # Buffers
///
/// Both buffers start empty, and a connection waiting for its peer holds no
/// read buffer: an empty one is released whenever the socket has nothing
/// more, and the next read goes to a 1 KiB stack buffer first, so the heap
/// is used only once bytes arrive. While busy, the read buffer starts at
/// 1 KiB and grows only while reads fill it (to 16 KiB per read, or what a
/// frame in progress needs, which the codec bounds); messages are split off
/// it without copying. The write buffer grows to what one batch encodes,
/// flushing at 8 KiB, and is released after a write when it grew past 8 KiB.
///
/// # Limits
///
/// The codec enforces its maximum length. As a guard for codecs that do
/// not, more than the larger of [`Config::max_frame_size`] and
/// [`Config::max_message_size`] plus 4 KiB of undecoded input is an
/// [`Error::FrameTooLong`] too. [`Config::idle_timeout`] closes a connection
/// whose peer sent nothing for that long (raw TCP has no pings).
///
/// # Closing
///
/// `poll_close` writes out what is buffered, shuts down the write side (the
/// peer reads end of stream) and then reads and discards until the peer
/// closes too, so that closing a socket with unread input does not reset
/// the connection before the peer has read the last replies. The core
/// bounds all of it with [`Config::close_timeout`].
pub struct TcpConn<IO, C> {
    io: IO,
    codec: C,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// Room offered to the next read; adapts to the traffic.
    read_size: usize,
    /// Undecoded bytes above this are an error, whatever the codec.
    guard: usize,
    read: ReadState,
    /// The peer ended its stream (or the socket failed): nothing more can
    /// arrive, so closing need not wait for it.
    peer_done: bool,
    idle: Option<Idle>,
    /// The write side is shut down; `poll_close` is draining input.
    write_shut: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadState {
    Open,
    /// The peer ended its side; frames still buffered are delivered first.
    Eof,
    /// Nothing more is decoded: end of stream delivered, or an error.
    Done,
}

/// The idle timer: one sleep, reset only when it fires before the deadline.
/// Each read just moves `deadline`, which costs a clock read, not a timer
/// operation.
struct Idle {
    timeout: Duration,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

// The codec is only ever used through `&mut`, never pinned, so the
// connection can move whatever the codec is.
impl<IO: Unpin, C> Unpin for TcpConn<IO, C> {}

impl<IO, C> TcpConn<IO, C>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    C: Decoder<Item = Message> + Encoder<Message> + Send + 'static,
    <C as Decoder>::Error: std::error::Error + Send + Sync + 'static,
    <C as Encoder<Message>>::Error: std::error::Error + Send + Sync + 'static,
{
    /// Frames `io` with `codec` under the limits of `config`. The codec is
    /// used as given: for a built-in [`Codec`](crate::Codec), pass
    /// [`codec.for_config(config)`](crate::Codec::for_config).
    ///
    /// Over an in-memory pipe, driven by hand as the core's driver would:
    ///
    /// ```
    /// use std::future::poll_fn;
    ///
    /// use switchboard::tcp::{Codec, TcpConn};
    /// use switchboard::{Config, Message, Received, TransportConn};
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (mut peer, io) = tokio::io::duplex(1024);
    /// let config = Config::default();
    /// let mut conn = TcpConn::new(io, Codec::lines().for_config(&config), &config);
    ///
    /// peer.write_all(b"ping\r\n").await.unwrap();
    /// let got = poll_fn(|cx| conn.poll_recv(cx)).await.unwrap();
    /// assert!(matches!(got, Received::Message(m) if m == Message::text("ping")));
    ///
    /// conn.start_send(Message::text("pong")).unwrap();
    /// poll_fn(|cx| conn.poll_flush(cx)).await.unwrap();
    /// let mut reply = [0; 5];
    /// peer.read_exact(&mut reply).await.unwrap();
    /// assert_eq!(&reply, b"pong\n");
    ///
    /// // The peer ends its side: end of stream, then the close finishes.
    /// drop(peer);
    /// let got = poll_fn(|cx| conn.poll_recv(cx)).await.unwrap();
    /// assert!(matches!(got, Received::Closed(None)));
    /// # }
    /// ```
    pub fn new(io: IO, codec: C, config: &Config) -> Self {
        let max = config.max_frame_size.max(config.max_message_size);
        TcpConn {
            io,
            codec,
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
            read_size: READ_INITIAL,
            guard: max.saturating_add(GUARD_SLACK),
            read: ReadState::Open,
            peer_done: false,
            idle: config.idle_timeout.map(|timeout| Idle {
                timeout,
                deadline: Instant::now() + timeout,
                sleep: None,
            }),
            write_shut: false,
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The codec.
    pub fn codec(&self) -> &C {
        &self.codec
    }

    /// Reads once into the read buffer; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() == 0 {
            return self.poll_fill_unbuffered(cx);
        }
        if self.read_buf.capacity() - self.read_buf.len() < self.read_size / 2 {
            self.read_buf.reserve(self.read_size);
        }
        let room = self.read_buf.capacity() - self.read_buf.len();
        let n = ready!(poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.read_buf
        ))?;
        self.after_read(n, room);
        Poll::Ready(Ok(n))
    }

    /// Reads with no buffer allocated (a connection that was idle): into the
    /// stack first, so that waiting costs no buffer; one is allocated only
    /// when bytes arrive.
    fn poll_fill_unbuffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut scratch = [MaybeUninit::<u8>::uninit(); READ_INITIAL];
        let mut buf = ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let read = buf.filled();
        if !read.is_empty() {
            self.read_buf.reserve(self.read_size.max(read.len()));
            self.read_buf.extend_from_slice(read);
        }
        let n = read.len();
        self.after_read(n, READ_INITIAL);
        Poll::Ready(Ok(n))
    }

    /// Adapts the read size (`n` bytes arrived where `room` were offered)
    /// and moves the idle deadline.
    fn after_read(&mut self, n: usize, room: usize) {
        if n == room && self.read_size < READ_MAX {
            self.read_size *= 2;
        } else if n <= self.read_size / 4 && self.read_size > READ_INITIAL {
            self.read_size /= 2;
        }
        if n > 0
            && let Some(idle) = &mut self.idle
        {
            idle.deadline = Instant::now() + idle.timeout;
        }
    }

    /// Called when the socket has nothing to read: releases an empty read
    /// buffer (a waiting connection holds none; the messages split off it
    /// keep their bytes alive on their own) and checks the idle timer.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Result<Received>> {
        if self.read_buf.is_empty() {
            self.read_buf = BytesMut::new();
        }
        let Some(idle) = &mut self.idle else {
            return Poll::Pending;
        };
        let deadline = idle.deadline;
        let sleep = idle
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= idle.deadline {
                tracing::info!(timeout = ?idle.timeout, "closing tcp connection: peer idle");
                self.read = ReadState::Done;
                return Poll::Ready(Err(CoreError::IdleTimeout));
            }
            // Data arrived since the timer was set: wait for the new deadline.
            sleep.as_mut().reset(idle.deadline);
        }
    }

    fn fail(&mut self, err: CoreError) -> Poll<Result<Received>> {
        self.read = ReadState::Done;
        match &err {
            CoreError::Protocol { code, source } => {
                tracing::info!(code = %code, reason = %source, "closing tcp connection: bad input");
            }
            other => tracing::debug!(error = %other, "tcp read failed"),
        }
        Poll::Ready(Err(err))
    }

    /// Writes the whole write buffer to the socket.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let grown = self.write_buf.capacity() > WRITE_KEEP;
        while !self.write_buf.is_empty() {
            // One contiguous buffer: a plain write, no vectored call.
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.write_buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.write_buf.advance(n);
        }
        if grown {
            self.write_buf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO, C> TransportConn for TcpConn<IO, C>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    C: Decoder<Item = Message> + Encoder<Message> + Send + 'static,
    <C as Decoder>::Error: std::error::Error + Send + Sync + 'static,
    <C as Encoder<Message>>::Error: std::error::Error + Send + Sync + 'static,
{
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Received>> {
        loop {
            // Every frame already buffered is delivered before reading again.
            match self.read {
                ReadState::Open => match self.codec.decode(&mut self.read_buf) {
                    Ok(Some(msg)) => return Poll::Ready(Ok(Received::Message(msg))),
                    Ok(None) if self.read_buf.len() > self.guard => {
                        let len = self.read_buf.len();
                        return self.fail(
                            Error::FrameTooLong {
                                len,
                                max: self.guard - GUARD_SLACK,
                            }
                            .into(),
                        );
                    }
                    Ok(None) => {}
                    Err(err) => return self.fail(into_core(err)),
                },
                ReadState::Eof => {
                    return match self.codec.decode_eof(&mut self.read_buf) {
                        Ok(Some(msg)) => Poll::Ready(Ok(Received::Message(msg))),
                        Ok(None) => {
                            self.read = ReadState::Done;
                            Poll::Ready(Ok(Received::Closed(None)))
                        }
                        Err(err) => self.fail(into_core(err)),
                    };
                }
                ReadState::Done => return Poll::Ready(Ok(Received::Closed(None))),
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    self.read = ReadState::Eof;
                    self.peer_done = true;
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(err)) => {
                    self.peer_done = true;
                    return self.fail(CoreError::Io(err));
                }
                Poll::Pending => return self.poll_idle(cx),
            }
        }
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.write_buf.len() >= WRITE_BOUNDARY {
            ready!(self.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(&mut self, msg: Message) -> Result<()> {
        self.codec
            .encode(msg, &mut self.write_buf)
            .map_err(into_core)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        ready!(self.poll_write_out(cx))?;
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, frame: &CloseFrame) -> Poll<Result<()>> {
        if !self.write_shut {
            ready!(self.poll_flush(cx))?;
            ready!(Pin::new(&mut self.io).poll_shutdown(cx))?;
            self.write_shut = true;
            // No close frames on raw TCP: the code is for the log only.
            tracing::debug!(code = %frame.code, reason = %frame.reason, "tcp write side shut down");
        }
        // Lingering close: discard input until the peer's end of stream, on
        // errors too, so the peer reads what was written before the end.
        self.read = ReadState::Done;
        while !self.peer_done {
            self.read_buf.clear();
            self.read_buf.reserve(READ_INITIAL);
            match ready!(poll_read_buf(
                Pin::new(&mut self.io),
                cx,
                &mut self.read_buf
            )) {
                Ok(0) | Err(_) => self.peer_done = true,
                Ok(_) => {}
            }
        }
        self.read_buf = BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

impl<IO, C> std::fmt::Debug for TcpConn<IO, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpConn")
            .field("buffered_in", &self.read_buf.len())
            .field("buffered_out", &self.write_buf.len())
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::AsyncWriteExt;
    use tokio::time::Instant;

    use super::*;
    use crate::Codec;

    fn lines(
        io: tokio::io::DuplexStream,
        config: &Config,
    ) -> TcpConn<tokio::io::DuplexStream, Codec> {
        TcpConn::new(io, Codec::lines().for_config(config), config)
    }

    async fn recv<IO, C>(conn: &mut TcpConn<IO, C>) -> Result<Received>
    where
        TcpConn<IO, C>: TransportConn,
    {
        poll_fn(|cx| conn.poll_recv(cx)).await
    }

    #[tokio::test]
    async fn a_waiting_connection_holds_no_read_buffer() {
        let (mut peer, io) = tokio::io::duplex(4096);
        let mut conn = lines(io, &Config::default());
        peer.write_all(b"a\nb\n").await.expect("write");
        let a = recv(&mut conn).await.expect("a");
        let b = recv(&mut conn).await.expect("b");
        let pending = poll_fn(|cx| Poll::Ready(conn.poll_recv(cx).is_pending())).await;
        assert!(pending);
        assert_eq!(conn.read_buf.capacity(), 0);
        // The messages split off the released buffer keep their bytes.
        assert!(matches!(a, Received::Message(m) if m == Message::text("a")));
        assert!(matches!(b, Received::Message(m) if m == Message::text("b")));
        peer.write_all(b"c\n").await.expect("write");
        assert!(
            matches!(recv(&mut conn).await, Ok(Received::Message(m)) if m == Message::text("c"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_counts_from_the_last_read() {
        let idle = Duration::from_secs(10);
        let config = Config::default()
            .ping_interval(None)
            .idle_timeout(Some(idle));
        let (mut peer, io) = tokio::io::duplex(4096);
        let mut conn = lines(io, &config);
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(6)).await;
            peer.write_all(b"late\n").await.expect("write");
            // Keep the pipe open past the timeout.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(peer);
        });
        assert!(matches!(recv(&mut conn).await, Ok(Received::Message(_))));
        assert_eq!(start.elapsed(), Duration::from_secs(6));
        assert!(matches!(recv(&mut conn).await, Err(CoreError::IdleTimeout)));
        assert_eq!(start.elapsed(), Duration::from_secs(16));
        writer.abort();
    }

    #[tokio::test]
    async fn close_flushes_shuts_down_and_waits_for_the_peer() {
        let (mut peer, io) = tokio::io::duplex(4096);
        let mut conn = lines(io, &Config::default());
        conn.start_send(Message::text("bye")).expect("encode");
        let frame = CloseFrame::new(switchboard_core::CloseCode::NORMAL, "");
        let closing = poll_fn(|cx| Poll::Ready(conn.poll_close(cx, &frame).is_pending())).await;
        // Written and shut down, now waiting for the peer's end of stream.
        assert!(closing);
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut peer, &mut got)
            .await
            .expect("read");
        assert_eq!(got, b"bye\n");
        peer.write_all(b"ignored\n").await.expect("write");
        drop(peer);
        poll_fn(|cx| conn.poll_close(cx, &frame))
            .await
            .expect("closed");
    }
}
