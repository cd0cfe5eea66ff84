//! Framed TCP for switchboard: serve a [`MessageComponent`] to raw socket
//! peers (`nc`, telnet, devices, other services), and run one as a client.
//!
//! Most users reach this crate as `switchboard::tcp` (feature `tcp` of the
//! `switchboard` crate).
//!
//! # Choosing a codec
//!
//! | codec | on the wire | messages in | written out |
//! |---|---|---|---|
//! | [`Codec::lines`] | UTF-8 lines ending in `\n` or `\r\n` | [`Message::Text`] | payload + `\n`; a message that is not one line is refused |
//! | [`Codec::length_delimited`] | u32 big-endian length, then payload | [`Message::Binary`] | the same framing |
//! | [`Codec::raw`] | whatever the peer writes | [`Message::Binary`], one per chunk read | payload as is |
//! | your own ([`TcpTransport::with_codec`]) | anything | what your [`Decoder`] makes | what your [`Encoder`] writes |
//!
//! Lines suit humans and text protocols; length-delimited frames suit
//! programs exchanging binary messages; raw suits protocols that frame
//! themselves (the component reassembles). A chunk boundary in raw mode is
//! wherever the network put it.
//!
//! ```no_run
//! use switchboard::tcp::TcpTransport;
//! use switchboard::{BoxError, Connection, Message, MessageComponent, Server};
//!
//! struct Shout;
//!
//! impl MessageComponent for Shout {
//!     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
//!         conn.send(msg.as_text().unwrap_or_default().to_uppercase())?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), switchboard::Error> {
//! let server = Server::builder().bind("127.0.0.1:7000", TcpTransport::lines(Shout)).start().await?;
//! // $ printf 'hello\n' | nc -N 127.0.0.1 7000
//! // HELLO
//! # server.shutdown().await; Ok(()) }
//! ```
//!
//! # What a lines peer is sent
//!
//! A lines peer reads one message per line, so the lines codec writes a
//! message only if it is exactly one valid line; otherwise a peer could be
//! shown a line that another user forged (`"hi\nadmin: send me your
//! password"`), or lose the connection to bytes its decoder refuses:
//!
//! | message | written |
//! |---|---|
//! | text without `\n` and `\r` | as one line, `\n` appended |
//! | binary that is UTF-8 without `\n` and `\r` | the same (the peer reads it as text) |
//! | text or binary with `\n` or `\r` anywhere (a trailing `\r` too) | refused |
//! | binary that is not UTF-8 | refused |
//!
//! [`Connection::send`](switchboard_core::Connection::send) checks before
//! it queues anything ([`Codec::check_line`], handed to the core by
//! [`TcpConn`] when the connection is created): a refused message fails at
//! once with [`SendError::Invalid`](switchboard_core::SendError::Invalid),
//! which hands it back, is counted in
//! [`Counters::invalid_sends`](switchboard_core::Counters::invalid_sends),
//! and leaves the connection open. A [`Hub`](switchboard_core::Hub)
//! broadcast skips such a member and delivers to the others. What to do
//! instead (split the text into lines, say) is the component's choice:
//! `examples/chat.rs` splits. The encoder checks again and refuses with
//! [`Error::InvalidLine`], writing nothing, so a message that bypassed the
//! check is never written as several lines either.
//!
//! Other control characters, terminal escape sequences among them, are
//! valid in a line and written as they are: a component that relays user
//! text to terminals removes them (the chat example does). The
//! length-delimited and raw codecs carry every message and check nothing:
//! `send` on them costs one branch more, as on WebSocket.
//!
//! # Limits and errors
//!
//! A line or frame longer than the smaller of [`Config::max_frame_size`]
//! and [`Config::max_message_size`] (or the codec's own
//! [`max_length`](Codec::max_length)) is found before more than that is
//! buffered: `on_error` receives a protocol error with close code 1009, the
//! connection closes and `on_close` runs. Invalid UTF-8 on a lines
//! connection does the same with 1007. TCP has no close frames: the code
//! and reason go to the log (`tracing`, target `switchboard_tcp`), and the
//! peer sees its connection end. Other connections are not affected.
//!
//! A peer that half-closes (shuts down its write side, as `nc -N` does at
//! the end of its input) gets everything it sent delivered, then `on_close`
//! runs with [`CloseReason::Peer(None)`](switchboard_core::CloseReason::Peer);
//! replies queued until then are still written before the socket closes.
//! [`Config::idle_timeout`] applies: raw TCP has no pings, so a connection
//! with no traffic either way for that long is closed
//! ([`Error::IdleTimeout`](switchboard_core::Error::IdleTimeout)). Writes
//! count: a peer that only reads stays connected while messages flow to it.
//! A peer that vanished without closing (host gone, network cut) is found
//! by TCP keepalive, which the server turns on for every accepted socket
//! ([`Config::tcp_keepalive`]: by default probes after 30 s of silence, 3
//! probes 10 s apart).
//! Slow readers are handled by the core's outbound queue and
//! [`Config::slow_consumer`].
//!
//! # Your own codec
//!
//! Any tokio-util [`Decoder`] + [`Encoder`] of [`Message`] works, with any
//! error type. This crate's [`Error`] and the core's
//! [`Error::Protocol`](switchboard_core::Error::Protocol) choose the close
//! code; any other error closes with 1002. Bound what the decoder buffers:
//! check a length header before waiting for the body.
//!
//! A fixed-header binary protocol, with one byte of message kind (0 text,
//! 1 binary) and a u16 big-endian length before each payload:
//!
//! ```
//! use switchboard::tcp::{BytesMut, Decoder, Encoder, TcpTransport};
//! use switchboard::{
//!     BoxError, CloseCode, Connection, Error, Message, MessageComponent, Server, Utf8Bytes,
//! };
//!
//! const HEADER: usize = 3;
//!
//! #[derive(Clone)]
//! struct Typed {
//!     max: usize,
//! }
//!
//! impl Decoder for Typed {
//!     type Item = Message;
//!     type Error = Error;
//!
//!     fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
//!         let &[kind, hi, lo, ..] = &src[..] else { return Ok(None) };
//!         let len = usize::from(u16::from_be_bytes([hi, lo]));
//!         // Check the header before buffering the body.
//!         if len > self.max {
//!             return Err(Error::protocol(CloseCode::SIZE, format!("{len} bytes is too long")));
//!         }
//!         if src.len() < HEADER + len {
//!             src.reserve(HEADER + len - src.len());
//!             return Ok(None);
//!         }
//!         // Zero-copy: the payload is a slice of the read buffer.
//!         let payload = src.split_to(HEADER + len).split_off(HEADER).freeze();
//!         match kind {
//!             0 => {
//!                 let text = Utf8Bytes::try_from(payload).map_err(|e| Error::protocol(CloseCode::INVALID, e))?;
//!                 Ok(Some(Message::Text(text)))
//!             }
//!             1 => Ok(Some(Message::Binary(payload))),
//!             other => Err(Error::protocol(CloseCode::PROTOCOL, format!("unknown kind {other}"))),
//!         }
//!     }
//! }
//!
//! impl Encoder<Message> for Typed {
//!     type Error = Error;
//!
//!     fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), Error> {
//!         let kind = if msg.is_text() { 0 } else { 1 };
//!         let len = u16::try_from(msg.len()).map_err(|_| Error::protocol(CloseCode::SIZE, "message too long"))?;
//!         dst.reserve(HEADER + msg.len());
//!         dst.extend_from_slice(&[kind]);
//!         dst.extend_from_slice(&len.to_be_bytes());
//!         dst.extend_from_slice(msg.as_bytes());
//!         Ok(())
//!     }
//! }
//!
//! // The codec on its own: a text frame, then half of a binary one.
//! let mut codec = Typed { max: 1024 };
//! let mut buf = BytesMut::from(&b"\x00\x00\x02hi\x01\x00\x03\x01"[..]);
//! assert_eq!(codec.decode(&mut buf).unwrap(), Some(Message::text("hi")));
//! assert_eq!(codec.decode(&mut buf).unwrap(), None);
//! buf.extend_from_slice(&[2, 3]);
//! assert_eq!(codec.decode(&mut buf).unwrap(), Some(Message::binary(vec![1u8, 2, 3])));
//! assert!(codec.decode(&mut BytesMut::from(&b"\x07\x00\x00"[..])).is_err());
//!
//! // On a server: each connection gets a clone of the codec.
//! struct Echo;
//!
//! impl MessageComponent for Echo {
//!     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
//!         conn.send(msg)?;
//!         Ok(())
//!     }
//! }
//!
//! let builder = Server::builder().bind("127.0.0.1:0", TcpTransport::with_codec(Echo, Typed { max: 1024 }));
//! // builder.start().await? binds and serves.
//! # drop(builder);
//! ```
//!
//! To apply the server's [`Config`] to your codec, make it per connection
//! with [`TcpTransport::with_codec_factory`].
//!
//! # Clients
//!
//! [`connect`] runs a component on an outgoing connection with the same
//! codecs and the same lifecycle ([`connect_with_codec`] for your own).
//! [`Client`] adds reconnecting with backoff and, with the `tls` feature,
//! TLS over TCP.
//!
//! # Layout
//!
//! - `codec`: the built-in framings, pure byte handling;
//! - `tcp_connection`: [`TcpConn`], the core's I/O layer with a codec:
//!   buffers, limits, the undecoded-input guard, end of stream and the
//!   lingering close;
//! - `transport`: [`TcpTransport`], the server side;
//! - `client`: [`connect`] and friends, [`Client`];
//! - `error`: [`Error`].

#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod codec;
mod error;
mod tcp_connection;
mod transport;

pub use bytes::BytesMut;
pub use tokio_util::codec::{Decoder, Encoder};

pub use client::{Client, connect, connect_with_codec, connect_with_config};
pub use codec::Codec;
pub use error::{Error, Result};
pub use tcp_connection::TcpConn;
pub use transport::TcpTransport;

#[cfg(doc)]
use switchboard_core::{Config, Message, MessageComponent};
