//! One established WebSocket connection, as the core's driver sees it:
//! RFC 6455's state machine over the core's I/O layer
//! (`switchboard_core::transport::io`), after the handshake. The crate
//! docs ("Framing", "Memory") say how it reads and writes.

use std::fmt;
use std::io;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use switchboard_core::transport::io::{Due, Keepalive, ReadBuffer, WriteBuffer};
use switchboard_core::transport::{Received, TransportConn, WriteProgress};
use switchboard_core::{CloseCode, CloseFrame, Config, Error, Message, Utf8Bytes};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::deflate::{PerMessage, wire_limit};
use crate::frame::{
    self, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, RSV1, Role, protocol,
};

/// Limits and sizes of one connection. The limits are `u32`s (a limit
/// above `u32::MAX` bytes is that much): with them, the connection's state
/// takes a 224-byte block of mimalloc's rather than a 256-byte one.
#[derive(Clone, Copy, Debug)]
struct Settings {
    role: Role,
    max_frame: u32,
    max_message: u32,
}

impl Settings {
    fn max_frame(self) -> usize {
        self.max_frame as usize
    }

    fn max_message(self) -> usize {
        self.max_message as usize
    }
}

fn limit(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// A WebSocket connection after the upgrade: a message stream and sink over
/// any byte stream (`TcpStream`, a TLS stream). The core drives it; users
/// never touch it directly.
///
/// One pointer wide: the state lives in one heap allocation, because the
/// core's connection task holds the transport connection inline in several
/// nested futures, and every byte here would be paid several times over by
/// each idle connection.
pub struct WsConnection<IO> {
    inner: Box<Inner<IO>>,
}

struct Inner<IO> {
    io: IO,
    settings: Settings,
    /// Read and not yet parsed.
    read: ReadBuffer,
    /// A fragmented message being received (boxed, as are the other rare
    /// states: every idle connection holds this struct).
    fragments: Option<Box<Fragments>>,
    out: WriteBuffer,
    /// The payload of the latest ping not yet answered: only the latest is
    /// answered when pings arrive faster than the peer reads (RFC 6455,
    /// 5.5.3), so a ping flood holds at most one pong.
    pong: Option<Box<Bytes>>,
    /// A ping or pong was queued by the read side and not yet flushed.
    control_unflushed: bool,
    keepalive: Keepalive,
    close: CloseState,
    /// permessage-deflate, if agreed (boxed: most connections have none).
    deflate: Option<Box<PerMessage>>,
}

/// A fragmented message so far.
struct Fragments {
    opcode: u8,
    /// Compressed: checked as UTF-8 once inflated.
    compressed: bool,
    data: BytesMut,
    /// For uncompressed text: the prefix known to be valid UTF-8.
    checked: usize,
}

impl Fragments {
    /// Fails as soon as the text so far cannot be UTF-8; an incomplete
    /// character at the end waits for the next fragment unless `fin`.
    fn check(&mut self, fin: bool) -> Result<(), Error> {
        match std::str::from_utf8(&self.data[self.checked..]) {
            Ok(_) => {
                self.checked = self.data.len();
                Ok(())
            }
            Err(e) if e.error_len().is_none() && !fin => {
                self.checked += e.valid_up_to();
                Ok(())
            }
            Err(e) => Err(Error::protocol(CloseCode::INVALID, e)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CloseState {
    Open,
    /// The peer's close frame arrived; ours answers it.
    PeerClosed,
    /// The stream ended (EOF or error): nothing more can be exchanged.
    Ended,
    /// Our close frame is queued; flushing it, then reading the peer's.
    Flushing,
    /// Our answer to the peer's close is queued; flushing it.
    Answering,
    /// Our close frame is out; waiting for the peer's reply or EOF.
    Draining,
    Done,
}

/// One frame as read: fin bit, opcode, RSV1, unmasked payload.
struct Frame {
    fin: bool,
    opcode: u8,
    compressed: bool,
    payload: BytesMut,
}

impl<IO> WsConnection<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// The `role` end of a connection under the limits and keepalive of
    /// `config`. `read_size`: room for the first read of a burst;
    /// `write_buffer`: see `WriteBuffer::new`; `leftover`: bytes read after the
    /// handshake's HTTP head; `deflate`: permessage-deflate, if agreed.
    pub(crate) fn new(
        io: IO,
        role: Role,
        config: &Config,
        (read_size, write_buffer): (usize, usize),
        leftover: &[u8],
        deflate: Option<PerMessage>,
    ) -> Self {
        let settings = Settings {
            role,
            max_frame: limit(config.max_frame_size),
            max_message: limit(config.max_message_size),
        };
        WsConnection {
            inner: Box::new(Inner {
                io,
                settings,
                read: ReadBuffer::with_bytes(read_size, leftover),
                fragments: None,
                out: WriteBuffer::new(write_buffer),
                pong: None,
                control_unflushed: false,
                keepalive: Keepalive::new(config.ping_interval, config.idle_timeout),
                close: CloseState::Open,
                deflate: deflate.map(Box::new),
            }),
        }
    }
}

impl<IO> TransportConn for WsConnection<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Received, Error>> {
        let this = &mut *self.inner;
        loop {
            this.queue_pong();
            if this.control_unflushed {
                match this.poll_write_out(cx) {
                    Poll::Ready(Ok(())) => this.control_unflushed = false,
                    Poll::Ready(Err(err)) => {
                        this.close = CloseState::Ended;
                        return Poll::Ready(Err(err));
                    }
                    Poll::Pending => {}
                }
            }
            let frame = match this.poll_frame(cx) {
                // Nothing more to read: the keepalive's turn (the
                // server's sweep wakes the connection to ask it).
                Poll::Pending => match this.keepalive.due() {
                    None => return Poll::Pending,
                    Some(Due::Idle) => return Poll::Ready(Err(Error::IdleTimeout)),
                    Some(Due::Ping) => {
                        frame::encode(&mut this.out, this.settings.role, OP_PING, Bytes::new());
                        this.control_unflushed = true;
                        continue;
                    }
                },
                Poll::Ready(Ok(Some(frame))) => frame,
                // The peer went away, with or without finishing a frame.
                Poll::Ready(Ok(None)) => {
                    this.close = CloseState::Ended;
                    return Poll::Ready(Ok(Received::Closed(None)));
                }
                Poll::Ready(Err(err)) => {
                    // After a protocol error the socket still takes our
                    // close frame; after an I/O error nothing can be sent.
                    if !matches!(err, Error::Protocol { .. }) {
                        this.close = CloseState::Ended;
                    }
                    return Poll::Ready(Err(err));
                }
            };
            if let Some(received) = this.on_frame(frame)? {
                return Poll::Ready(Ok(received));
            }
        }
    }

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = &mut *self.inner;
        this.out.poll_ready(&mut this.io, cx).map_err(Error::Io)
    }

    #[inline]
    fn start_send(&mut self, msg: Message) -> Result<(), Error> {
        let this = &mut *self.inner;
        // No data after our close frame. After the peer's end of stream
        // the write half may still be open: what was queued goes out (or
        // fails there with the stream's own error).
        if matches!(
            this.close,
            CloseState::Flushing | CloseState::Answering | CloseState::Draining | CloseState::Done
        ) {
            return Err(Error::Io(io::ErrorKind::BrokenPipe.into()));
        }
        let (opcode, payload) = match msg {
            // Already valid UTF-8: framed as it is.
            Message::Text(text) => (OP_TEXT, text.into_bytes()),
            Message::Binary(data) => (OP_BINARY, data),
        };
        let compressed = this.deflate.as_mut().and_then(|d| d.compress(&payload));
        let (opcode, payload) = match compressed {
            Some(compressed) => (opcode | RSV1, compressed),
            None => (opcode, payload),
        };
        frame::encode(&mut this.out, this.settings.role, opcode, payload);
        Ok(())
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = &mut *self.inner;
        this.queue_pong();
        ready!(this.poll_write_out(cx))?;
        this.control_unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, frame: &CloseFrame) -> Poll<Result<(), Error>> {
        let this = &mut *self.inner;
        loop {
            match this.close {
                CloseState::Open | CloseState::PeerClosed => {
                    let answering = this.close == CloseState::PeerClosed;
                    this.queue_pong();
                    let payload = frame::close_payload(frame);
                    frame::encode(&mut this.out, this.settings.role, OP_CLOSE, payload);
                    this.close = if answering {
                        CloseState::Answering
                    } else {
                        CloseState::Flushing
                    };
                }
                CloseState::Flushing | CloseState::Answering => {
                    let answering = this.close == CloseState::Answering;
                    if let Err(err) = ready!(this.poll_write_out(cx)) {
                        this.close = CloseState::Done;
                        this.release_after_close();
                        return Poll::Ready(Err(err));
                    }
                    this.close = if answering {
                        CloseState::Done
                    } else {
                        CloseState::Draining
                    };
                }
                CloseState::Draining => match ready!(this.poll_frame(cx)) {
                    // The peer's reply, the end of the stream or an error:
                    // either way the closing handshake is over.
                    Ok(Some(Frame {
                        opcode: OP_CLOSE, ..
                    }))
                    | Ok(None)
                    | Err(_) => this.close = CloseState::Done,
                    // Messages the peer sent before it saw our close.
                    Ok(Some(_)) => {}
                },
                CloseState::Ended | CloseState::Done => {
                    this.release_after_close();
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    fn abort(&mut self, cx: &mut Context<'_>, frame: &CloseFrame) {
        let this = &mut *self.inner;
        // A frame partly written cannot be followed by a close frame: the
        // close frame goes only onto a clean frame boundary.
        let clean = this.out.is_empty();
        this.out.clear();
        if clean && matches!(this.close, CloseState::Open | CloseState::PeerClosed) {
            frame::encode(
                &mut this.out,
                this.settings.role,
                OP_CLOSE,
                frame::close_payload(frame),
            );
            // One try; whatever the socket does not take now is dropped.
            let _ = this.out.poll_flush(&mut this.io, cx);
            this.out.clear();
        }
        this.close = CloseState::Done;
        this.release_after_close();
    }

    #[inline]
    fn write_progress(&self) -> Option<WriteProgress> {
        Some(self.inner.out.progress())
    }
}

impl<IO> Inner<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// What a frame means: a message, the peer's close, or nothing yet
    /// (a fragment, a ping, a pong).
    fn on_frame(&mut self, frame: Frame) -> Result<Option<Received>, Error> {
        let Frame {
            fin,
            opcode,
            compressed,
            payload,
        } = frame;
        match opcode {
            OP_TEXT | OP_BINARY => {
                if self.fragments.is_some() {
                    return Err(protocol("a new message before the last one ended"));
                }
                if fin {
                    return self.message(opcode, compressed, payload).map(Some);
                }
                let mut fragments = Box::new(Fragments {
                    opcode,
                    compressed,
                    data: payload,
                    checked: 0,
                });
                if opcode == OP_TEXT && !compressed {
                    fragments.check(false)?;
                }
                self.fragments = Some(fragments);
                Ok(None)
            }
            OP_CONTINUATION => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(protocol("a continuation frame without a message"));
                };
                fragments.data.extend_from_slice(&payload);
                if fragments.opcode == OP_TEXT && !fragments.compressed {
                    fragments.check(fin)?;
                }
                match self.fragments.take_if(|_| fin) {
                    Some(done) => self
                        .message(done.opcode, done.compressed, done.data)
                        .map(Some),
                    None => Ok(None),
                }
            }
            OP_CLOSE => {
                // Set first: even an invalid close frame ended the peer's
                // side, so ours (1002 or 1007 then) is an answer and the
                // connection does not wait for another close.
                self.close = CloseState::PeerClosed;
                let frame = frame::parse_close(&payload)?;
                Ok(Some(Received::Closed(frame)))
            }
            OP_PING => {
                self.pong = Some(Box::new(payload.freeze()));
                Ok(None)
            }
            // A pong needs no answer (its bytes counted as traffic when
            // read). `parse_header` lets no other opcode through.
            _ => {
                debug_assert_eq!(opcode, OP_PONG);
                Ok(None)
            }
        }
    }

    /// A complete message, inflated if `compressed` (to at most
    /// `max_message` bytes); text must be UTF-8 (1007 otherwise).
    fn message(&mut self, opcode: u8, compressed: bool, data: BytesMut) -> Result<Received, Error> {
        let payload = match self.deflate.as_mut() {
            Some(deflate) if compressed => deflate.inflate(&data, self.settings.max_message())?,
            _ => data.freeze(),
        };
        let msg = if opcode == OP_TEXT {
            Message::Text(
                Utf8Bytes::try_from(payload).map_err(|e| Error::protocol(CloseCode::INVALID, e))?,
            )
        } else {
            Message::Binary(payload)
        };
        Ok(Received::Message(msg))
    }

    /// The next complete frame: `Ok(None)` at the end of the stream.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, Error>> {
        let s = self.settings;
        loop {
            let deflate = self.deflate.is_some();
            // A compressed message may take more bytes on the wire than
            // the limit it fits once inflated (`wire_limit`); what is not
            // compressed is held to the limits exactly, just below.
            let most = if deflate {
                wire_limit(s.max_frame())
            } else {
                s.max_frame()
            };
            if let Some(header) = frame::parse_header(&self.read, s.role, most, deflate)? {
                if !header.is_control() {
                    let (so_far, compressed) = match &self.fragments {
                        Some(f) => (f.data.len(), f.compressed),
                        None => (0, header.compressed),
                    };
                    let (max_frame, max_message) = if compressed {
                        (wire_limit(s.max_frame()), wire_limit(s.max_message()))
                    } else {
                        (s.max_frame(), s.max_message())
                    };
                    let len = header.payload_len;
                    let too_large = if len > max_frame {
                        Some(format!(
                            "frame of {len} bytes exceeds the limit of {max_frame}"
                        ))
                    } else if so_far + len > max_message {
                        let len = so_far + len;
                        Some(format!(
                            "message of {len} bytes or more exceeds the limit of {max_message}"
                        ))
                    } else {
                        None
                    };
                    if let Some(reason) = too_large {
                        return Poll::Ready(Err(Error::protocol(CloseCode::SIZE, reason)));
                    }
                }
                let total = header.header_len + header.payload_len;
                if self.read.len() >= total {
                    let mut payload = self.read.split_to(total);
                    payload.advance(header.header_len);
                    if let Some(key) = header.mask {
                        frame::apply_mask(&mut payload, key);
                    }
                    return Poll::Ready(Ok(Some(Frame {
                        fin: header.fin,
                        opcode: header.opcode,
                        compressed: header.compressed,
                        payload,
                    })));
                }
                // Room for the whole frame (its size is within the limits),
                // so that it arrives in as few reads as the socket allows.
                let len = self.read.len();
                self.read.reserve(total - len);
            }
            match ready!(self.read.poll_read(&mut self.io, cx)) {
                Ok(0) => return Poll::Ready(Ok(None)),
                // Any bytes from the peer are traffic.
                Ok(_) => self.keepalive.seen(),
                Err(err) => return Poll::Ready(Err(Error::Io(err))),
            }
        }
    }

    /// The connection is closed: what it held for reading goes, and so
    /// does its permessage-deflate state, which gives a place for context
    /// takeover back to the server at once rather than when the driver
    /// lets go of the connection (after `on_close`).
    fn release_after_close(&mut self) {
        self.read.release();
        self.fragments = None;
        self.deflate = None;
    }

    /// Queues the answer to the latest ping when the output has room.
    fn queue_pong(&mut self) {
        // Pongs wait while the write buffer's limit is pending.
        if self.out.len() < self.out.limit()
            && let Some(payload) = self.pong.take()
        {
            frame::encode(&mut self.out, self.settings.role, OP_PONG, *payload);
            self.control_unflushed = true;
        }
    }

    /// Writes everything pending and flushes the stream.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.out.poll_flush(&mut self.io, cx).map_err(Error::Io)
    }
}

impl<IO> fmt::Debug for WsConnection<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsConnection")
            .field("role", &self.inner.settings.role)
            .field("close", &self.inner.close)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::tests::masked;
    use std::future::poll_fn;
    use std::pin::Pin;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server's connection without keepalive, with `read_size` and
    /// `leftover` read with the handshake.
    fn server<IO>(io: IO, read_size: usize, leftover: &[u8]) -> WsConnection<IO>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let config = Config::default()
            .max_frame_size(1 << 20)
            .max_message_size(1 << 20)
            .ping_interval(None)
            .idle_timeout(None);
        WsConnection::new(
            io,
            Role::Server,
            &config,
            (read_size, 16 * 1024),
            leftover,
            None,
        )
    }

    #[tokio::test]
    async fn a_connection_between_bursts_holds_no_buffers() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let mut conn = server(io, 4096, b"");
        let big = vec![b'x'; 100_000];
        peer.write_all(&masked(OP_TEXT, b"hi")).await.unwrap();
        peer.write_all(&masked(OP_BINARY, &big)).await.unwrap();

        for expected in [Message::text("hi"), Message::binary(big.clone())] {
            let got = poll_fn(|cx| conn.poll_recv(cx)).await.unwrap();
            assert!(matches!(got, Received::Message(m) if m == expected));
            conn.start_send(expected).unwrap();
        }
        poll_fn(|cx| conn.poll_flush(cx)).await.unwrap();
        // Nothing more to read: the buffers go.
        let waker = std::task::Waker::noop();
        let pending = conn.poll_recv(&mut Context::from_waker(waker));
        assert!(pending.is_pending());
        assert_eq!(conn.inner.read.capacity(), 0);
        assert_eq!(conn.inner.out.len(), 0);
        assert!(!conn.inner.out.is_allocated());

        // What was written is the two messages, unmasked, in order.
        let mut echoed = vec![0u8; 4 + 10 + big.len()];
        peer.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed[..4], &[0x81, 2, b'h', b'i']);
        assert_eq!(&echoed[4..6], &[0x82, 127]);
        assert_eq!(&echoed[6..14], &(big.len() as u64).to_be_bytes());
        assert_eq!(&echoed[14..], &big[..]);
    }

    #[tokio::test]
    async fn frames_come_whole_from_the_leftover_and_from_the_smallest_reads() {
        // The handshake's last read brought a frame and the start of the
        // next; the rest arrives with a read size of one byte.
        let (mut peer, io) = tokio::io::duplex(1024);
        let binary = masked(OP_BINARY, &[7; 300]);
        let leftover = [masked(OP_TEXT, b"one"), binary[..5].to_vec()].concat();
        let mut conn = server(io, 1, &leftover);
        let rest = [&binary[5..], &masked(OP_TEXT, b"two")].concat();
        peer.write_all(&rest).await.unwrap();
        for expected in [
            Message::text("one"),
            Message::binary(vec![7; 300]),
            Message::text("two"),
        ] {
            let got = poll_fn(|cx| conn.poll_recv(cx)).await.unwrap();
            assert!(matches!(got, Received::Message(m) if m == expected));
        }
    }

    /// A sink that keeps what it is given and counts the writes.
    #[derive(Default)]
    struct Counting {
        data: Vec<u8>,
        writes: usize,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            Pin::new(&mut self.data).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.data).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.data).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_batch_of_large_replies_goes_out_in_few_writes() {
        let io = tokio::io::join(tokio::io::empty(), Counting::default());
        let mut conn = server(io, 4096, b"");
        let payload = Bytes::from(vec![5u8; 64 * 1024]);
        for _ in 0..8 {
            poll_fn(|cx| conn.poll_ready(cx)).await.unwrap();
            conn.start_send(Message::Binary(payload.clone())).unwrap();
        }
        poll_fn(|cx| conn.poll_flush(cx)).await.unwrap();
        // 8 x 64 KiB in writes of up to 256 KiB.
        let written = conn.inner.io.writer();
        assert!(written.writes <= 3, "{} writes", written.writes);
        assert_eq!(written.data.len(), 8 * (10 + payload.len()));
        for frame in written.data.chunks(10 + payload.len()) {
            assert_eq!(&frame[..2], &[0x82, 127]);
            assert_eq!(&frame[10..], &payload[..]);
        }
    }
}
