//! One established WebSocket connection, as the core's driver sees it.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use switchboard_core::{CloseCode, CloseFrame, Error, Message, Received, TransportConn, Utf8Bytes};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as WsCloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{
    CloseCode as WsCloseCode, Data, OpCode,
};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use crate::keepalive::{Due, Keepalive};
use crate::read_ahead::ReadAhead;

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
    /// Under tungstenite, a read-ahead layer: large messages arrive in few
    /// reads although tungstenite's own read buffer is small.
    ws: WebSocketStream<ReadAhead<IO>>,
    keepalive: Keepalive,
    /// A ping was buffered and not yet flushed.
    ping_unflushed: bool,
    close: CloseState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CloseState {
    Open,
    /// The peer's close frame arrived; tungstenite answers it by itself.
    PeerClosed,
    /// The stream ended (EOF or error): nothing more can be exchanged.
    Ended,
    /// Our close frame is queued; flushing it.
    Flushing,
    /// Our close frame is out; waiting for the peer's reply or EOF.
    Draining,
    Done,
}

impl<IO> WsConnection<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    pub(crate) fn new(ws: WebSocketStream<ReadAhead<IO>>, keepalive: Keepalive) -> Self {
        WsConnection {
            inner: Box::new(Inner {
                ws,
                keepalive,
                ping_unflushed: false,
                close: CloseState::Open,
            }),
        }
    }
}

impl<IO> Inner<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn ws(&mut self) -> Pin<&mut WebSocketStream<ReadAhead<IO>>> {
        Pin::new(&mut self.ws)
    }
}

impl<IO> TransportConn for WsConnection<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Received, Error>> {
        self.inner.poll_recv(cx)
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn start_send(&mut self, msg: Message) -> Result<(), Error> {
        self.inner.start_send(msg)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_flush(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, frame: &CloseFrame) -> Poll<Result<(), Error>> {
        self.inner.poll_close(cx, frame)
    }
}

impl<IO> Inner<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Received, Error>> {
        loop {
            if let Poll::Ready(due) = self.keepalive.poll(cx) {
                match due {
                    Due::Idle => return Poll::Ready(Err(Error::IdleTimeout)),
                    Due::Ping => {
                        self.ws()
                            .start_send(WsMessage::Ping(Bytes::new()))
                            .map_err(write_error)?;
                        self.ping_unflushed = true;
                    }
                }
            }
            if self.ping_unflushed {
                match self.ws().poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.ping_unflushed = false,
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(write_error(err))),
                    Poll::Pending => {}
                }
            }
            let msg = match ready!(self.ws().poll_next(cx)) {
                None => {
                    self.close = CloseState::Ended;
                    return Poll::Ready(Ok(Received::Closed(None)));
                }
                Some(Ok(msg)) => msg,
                Some(Err(err)) => {
                    let result = read_error(err);
                    // After a protocol error the socket still takes our close
                    // frame; after EOF or an I/O error nothing can be sent.
                    if !matches!(result, Err(Error::Protocol { .. })) {
                        self.close = CloseState::Ended;
                    }
                    return Poll::Ready(result);
                }
            };
            self.keepalive.seen();
            match msg {
                WsMessage::Text(text) => {
                    // tungstenite validated it: the core type takes the same
                    // memory without checking it again.
                    let text = Utf8Bytes::from_validated(Bytes::from(text.clone()), text.as_str())
                        .map_err(|e| Error::protocol(CloseCode::INVALID, e))?;
                    return Poll::Ready(Ok(Received::Message(Message::Text(text))));
                }
                WsMessage::Binary(data) => {
                    return Poll::Ready(Ok(Received::Message(Message::Binary(data))));
                }
                WsMessage::Close(frame) => {
                    self.close = CloseState::PeerClosed;
                    let frame =
                        frame.map(|f| CloseFrame::new(CloseCode(f.code.into()), f.reason.as_str()));
                    return Poll::Ready(Ok(Received::Closed(frame)));
                }
                // Pongs are answered by tungstenite; both only count as traffic.
                WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
            }
        }
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.ws().poll_ready(cx).map_err(write_error)
    }

    fn start_send(&mut self, msg: Message) -> Result<(), Error> {
        let frame = match msg {
            // Already valid UTF-8: framed directly, so it is not validated again.
            Message::Text(text) => {
                Frame::message(text.into_bytes(), OpCode::Data(Data::Text), true)
            }
            Message::Binary(data) => Frame::message(data, OpCode::Data(Data::Binary), true),
        };
        self.ws()
            .start_send(WsMessage::Frame(frame))
            .map_err(write_error)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        ready!(self.ws().poll_flush(cx)).map_err(write_error)?;
        self.ping_unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, frame: &CloseFrame) -> Poll<Result<(), Error>> {
        loop {
            match self.close {
                CloseState::Open => {
                    ready!(self.ws().poll_ready(cx)).map_err(write_error)?;
                    let frame = WsCloseFrame {
                        code: wire_code(frame.code),
                        reason: wire_reason(&frame.reason),
                    };
                    self.ws()
                        .start_send(WsMessage::Close(Some(frame)))
                        .map_err(write_error)?;
                    self.close = CloseState::Flushing;
                }
                CloseState::PeerClosed | CloseState::Flushing => {
                    let peer_closed = self.close == CloseState::PeerClosed;
                    // After the peer's close this writes tungstenite's reply.
                    ready!(self.ws().poll_flush(cx)).map_err(write_error)?;
                    self.close = if peer_closed {
                        CloseState::Done
                    } else {
                        CloseState::Draining
                    };
                }
                CloseState::Draining => match ready!(self.ws().poll_next(cx)) {
                    // The peer's reply, the end of the stream or an error:
                    // either way the closing handshake is over.
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => {
                        self.close = CloseState::Done
                    }
                    // Messages the peer sent before it saw our close.
                    Some(Ok(_)) => {}
                },
                CloseState::Ended | CloseState::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// A code that may go on the wire: 1005, 1006 and 1015 are reserved for
/// reporting, and codes below 1000 do not exist.
fn wire_code(code: CloseCode) -> WsCloseCode {
    match code.0 {
        1005 | 1006 | 1015 | 0..=999 | 5000.. => WsCloseCode::Normal,
        n => WsCloseCode::from(n),
    }
}

/// Close reasons are limited to 123 bytes (125 minus the code).
fn wire_reason(reason: &Utf8Bytes) -> tungstenite::Utf8Bytes {
    let s = reason.as_str();
    let mut end = s.len().min(123);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    tungstenite::Utf8Bytes::from(&s[..end])
}

/// Maps a read error to what the core expects: a clean end for a peer that
/// simply went away, and 1009 / 1007 / 1002 for limits and violations.
fn read_error(err: tungstenite::Error) -> Result<Received, Error> {
    use tungstenite::error::ProtocolError;
    match err {
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Ok(Received::Closed(None))
        }
        tungstenite::Error::Io(err) => Err(Error::Io(err)),
        tungstenite::Error::Capacity(err) => Err(Error::protocol(CloseCode::SIZE, err)),
        err @ tungstenite::Error::Utf8(_) => Err(Error::protocol(CloseCode::INVALID, err)),
        err => Err(Error::protocol(CloseCode::PROTOCOL, err)),
    }
}

fn write_error(err: tungstenite::Error) -> Error {
    match err {
        tungstenite::Error::Io(err) => Error::Io(err),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            Error::Io(io::ErrorKind::BrokenPipe.into())
        }
        err => Error::Io(io::Error::other(err)),
    }
}

impl<IO> fmt::Debug for WsConnection<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsConnection")
            .field("close", &self.inner.close)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_codes_are_not_sent() {
        assert_eq!(u16::from(wire_code(CloseCode::ABNORMAL)), 1000);
        assert_eq!(u16::from(wire_code(CloseCode::SIZE)), 1009);
        assert_eq!(u16::from(wire_code(CloseCode(4001))), 4001);
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let long = Utf8Bytes::from("é".repeat(100));
        let cut = wire_reason(&long);
        assert_eq!(cut.len(), 122);
    }
}
