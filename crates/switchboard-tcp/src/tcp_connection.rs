//! One framed TCP connection: the core's I/O layer
//! (`switchboard_core::transport::io`) and a codec.

use std::any::Any;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use switchboard_core::transport::io::{Keepalive, ReadBuffer, WriteBuffer};
use switchboard_core::transport::{OutboundCheck, Received, TransportConn, WriteProgress};
use switchboard_core::{CloseFrame, Config, Error as CoreError, Message, Result};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::Codec;
use crate::error::{Error, into_core};

/// First read size of a burst; small messages never need more.
const READ_INITIAL: usize = 1024;
/// `poll_ready` writes before encoding more once this much is copied into
/// the write buffer: one write carries many small messages, and a slow
/// reader holds at most this (plus one message, and large payloads up to
/// 256 KiB in their own memory) here, the rest staying in the core's
/// bounded queue where the slow-consumer policy sees it.
const WRITE_BOUNDARY: usize = 8 * 1024;
/// Undecoded bytes allowed beyond the configured maximum before a codec
/// that does not bound its own buffering is stopped (room for headers).
const GUARD_SLACK: usize = 4 * 1024;

/// A framed connection over any byte stream: the [`TransportConn`] that
/// [`TcpTransport`](crate::TcpTransport) and [`connect`](crate::connect)
/// build. Useful directly when wrapping another stream (TLS, Unix sockets).
///
/// # Buffers
///
/// The core's [`ReadBuffer`] and [`WriteBuffer`], whose docs give the
/// policy: no read buffer while the peer is silent, reads of 1 KiB at
/// first that grow to 64 KiB (or what a frame in progress needs),
/// messages split off without copying. The built-in [`Codec`] writes
/// payloads over 4 KiB from their own memory; your own codec encodes into
/// the write buffer's `BytesMut`. The write buffer is written out at 8 KiB
/// and at the end of each batch, and let go once written out.
///
/// # Limits
///
/// The codec enforces its maximum length. As a guard for codecs that do
/// not, more than the larger of [`Config::max_frame_size`] and
/// [`Config::max_message_size`] plus 4 KiB of undecoded input is an
/// [`Error::FrameTooLong`] too.
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
    read: ReadBuffer,
    out: WriteBuffer,
    /// The idle timeout; no pings, so reads and successful writes both
    /// count as activity.
    keepalive: Keepalive,
    /// Undecoded bytes above this are an error, whatever the codec.
    guard: usize,
    state: ReadState,
    /// The peer ended its stream (or the socket failed): nothing more can
    /// arrive, so closing need not wait for it.
    peer_done: bool,
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

// The codec is only ever used through `&mut`, never pinned, so the
// connection can move whatever the codec is.
impl<IO: Unpin, C> Unpin for TcpConn<IO, C> {}

impl<IO, C> TcpConn<IO, C> {
    /// Frames `io` with `codec` under the limits and the idle timeout of
    /// `config` (raw TCP has no pings: what the peer sends and what is
    /// written to it both count as activity). The codec is used as given: for a
    /// built-in [`Codec`](crate::Codec), pass
    /// [`codec.for_config(config)`](crate::Codec::for_config).
    ///
    /// Over an in-memory pipe, driven by hand as the core's driver would:
    ///
    /// ```
    /// use std::future::poll_fn;
    ///
    /// use switchboard::tcp::{Codec, TcpConn};
    /// use switchboard::transport::{Received, TransportConn};
    /// use switchboard::{Config, Message};
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
            read: ReadBuffer::new(READ_INITIAL),
            out: WriteBuffer::new(WRITE_BOUNDARY),
            keepalive: Keepalive::new(None, config.idle_timeout),
            guard: max.saturating_add(GUARD_SLACK),
            state: ReadState::Open,
            peer_done: false,
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

    /// The socket took bytes since the write buffer's count was `written`,
    /// which counts as activity for the idle timeout (see
    /// [`Config::idle_timeout`]: a peer that only reads is not idle while
    /// messages flow to it).
    #[inline]
    fn wrote_since(&mut self, written: u64) {
        if self.out.written() != written {
            self.keepalive.wrote();
        }
    }

    fn fail(&mut self, err: CoreError) -> Poll<Result<Received>> {
        self.state = ReadState::Done;
        match &err {
            CoreError::Protocol { code, source } => {
                tracing::info!(code = %code, reason = %source, "closing tcp connection: bad input");
            }
            CoreError::IdleTimeout => tracing::info!("closing tcp connection: peer idle"),
            other => tracing::debug!(error = %other, "tcp read failed"),
        }
        Poll::Ready(Err(err))
    }
}

impl<IO, C> TransportConn for TcpConn<IO, C>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    C: Decoder<Item = Message> + Encoder<Message> + Send + 'static,
    <C as Decoder>::Error: std::error::Error + Send + Sync + 'static,
    <C as Encoder<Message>>::Error: std::error::Error + Send + Sync + 'static,
{
    #[inline]
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Received>> {
        loop {
            // Every frame already buffered is delivered before reading again.
            match self.state {
                ReadState::Open => match self.codec.decode(&mut self.read) {
                    Ok(Some(msg)) => return Poll::Ready(Ok(Received::Message(msg))),
                    Ok(None) if self.read.len() > self.guard => {
                        let (len, max) = (self.read.len(), self.guard - GUARD_SLACK);
                        return self.fail(Error::FrameTooLong { len, max }.into());
                    }
                    Ok(None) => {}
                    Err(err) => return self.fail(into_core(err)),
                },
                ReadState::Eof => {
                    return match self.codec.decode_eof(&mut self.read) {
                        Ok(Some(msg)) => Poll::Ready(Ok(Received::Message(msg))),
                        Ok(None) => {
                            self.state = ReadState::Done;
                            Poll::Ready(Ok(Received::Closed(None)))
                        }
                        Err(err) => self.fail(into_core(err)),
                    };
                }
                ReadState::Done => return Poll::Ready(Ok(Received::Closed(None))),
            }
            match self.read.poll_read(&mut self.io, cx) {
                Poll::Ready(Ok(0)) => {
                    self.state = ReadState::Eof;
                    self.peer_done = true;
                }
                Poll::Ready(Ok(_)) => self.keepalive.seen(),
                Poll::Ready(Err(err)) => {
                    self.peer_done = true;
                    return self.fail(CoreError::Io(err));
                }
                // Nothing more to read: the idle timeout's turn (raw TCP
                // has no pings, so the only thing due is the timeout of a
                // connection with no traffic either way; the server's
                // sweep wakes the connection to ask).
                Poll::Pending => {
                    if self.keepalive.due().is_none() {
                        return Poll::Pending;
                    }
                    return self.fail(CoreError::IdleTimeout);
                }
            }
        }
    }

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let written = self.out.written();
        let ready = self.out.poll_ready(&mut self.io, cx);
        self.wrote_since(written);
        ready.map_err(Into::into)
    }

    #[inline]
    fn start_send(&mut self, msg: Message) -> Result<()> {
        // The built-in codec puts a large payload in as its own `Bytes`
        // instead of copying it; any other codec encodes into a `BytesMut`.
        // The type check is resolved at compile time.
        let codec: &mut dyn Any = &mut self.codec;
        if let Some(codec) = codec.downcast_mut::<Codec>() {
            return codec.encode_to(msg, &mut self.out).map_err(Into::into);
        }
        self.codec
            .encode(msg, self.out.buf_mut())
            .map_err(into_core)
    }

    #[inline]
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let written = self.out.written();
        let flushed = self.out.poll_flush(&mut self.io, cx);
        self.wrote_since(written);
        flushed.map_err(Into::into)
    }

    /// The built-in codec's check ([`Codec::outbound_check`]: lines refuse
    /// a message that is not one line); none for any other codec.
    fn outbound_check(&self) -> Option<OutboundCheck> {
        let codec: &dyn Any = &self.codec;
        codec.downcast_ref::<Codec>()?.outbound_check()
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
        self.state = ReadState::Done;
        while !self.peer_done {
            self.read.clear();
            match ready!(self.read.poll_read(&mut self.io, cx)) {
                Ok(0) | Err(_) => self.peer_done = true,
                Ok(_) => {}
            }
        }
        self.read.release();
        Poll::Ready(Ok(()))
    }

    fn abort(&mut self, _: &mut Context<'_>, frame: &CloseFrame) {
        self.out.clear();
        self.read.release();
        self.state = ReadState::Done;
        tracing::debug!(code = %frame.code, reason = %frame.reason, "tcp connection aborted");
    }

    #[inline]
    fn write_progress(&self) -> Option<WriteProgress> {
        Some(self.out.progress())
    }
}

impl<IO, C> std::fmt::Debug for TcpConn<IO, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpConn")
            .field("buffered_in", &self.read.len())
            .field("buffered_out", &self.out.len())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::task::Waker;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_waiting_connection_holds_no_read_buffer() {
        let (mut peer, io) = tokio::io::duplex(4096);
        let mut conn = TcpConn::new(io, Codec::lines(), &Config::default());
        peer.write_all(b"a\nb\n").await.expect("write");
        let a = poll_fn(|cx| conn.poll_recv(cx)).await.expect("a");
        let b = poll_fn(|cx| conn.poll_recv(cx)).await.expect("b");
        let pending = conn.poll_recv(&mut Context::from_waker(Waker::noop()));
        assert!(pending.is_pending());
        assert_eq!(conn.read.capacity(), 0);
        // The messages split off the released buffer keep their bytes.
        assert!(matches!(a, Received::Message(m) if m == Message::text("a")));
        assert!(matches!(b, Received::Message(m) if m == Message::text("b")));
    }

    #[tokio::test]
    async fn close_flushes_shuts_down_and_waits_for_the_peer() {
        let (mut peer, io) = tokio::io::duplex(4096);
        let mut conn = TcpConn::new(io, Codec::lines(), &Config::default());
        conn.start_send(Message::text("bye")).expect("encode");
        let frame = CloseFrame::new(switchboard_core::CloseCode::NORMAL, "");
        // Written and shut down, then waiting for the peer's end of stream.
        let closing = conn.poll_close(&mut Context::from_waker(Waker::noop()), &frame);
        assert!(closing.is_pending());
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"bye\n");
        peer.write_all(b"ignored\n").await.expect("write");
        drop(peer);
        poll_fn(|cx| conn.poll_close(cx, &frame))
            .await
            .expect("closed");
    }
}
