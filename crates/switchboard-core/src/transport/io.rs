//! The byte-stream side of a connection, for transports over a socket:
//! written once here, so that a transport is this layer plus its codec
//! and its protocol's state.
//!
//! - [`ReadBuffer`]: where input goes; no memory while the peer is silent,
//!   reads that grow while data flows, messages cut out without copying;
//! - [`WriteBuffer`]: output, small messages coalesced into one write,
//!   large payloads written from their own memory;
//! - [`Keepalive`]: the idle timeout and pings, on one timer;
//! - [`ClientOptions`], [`HostPort`]: how a client reaches its server.
//!
//! A [`TransportConn`](super::TransportConn) over them reads with
//! [`ReadBuffer::poll_read`], calls [`Keepalive::seen`] when bytes arrived
//! and [`Keepalive::poll`] when nothing more did, encodes into the
//! [`WriteBuffer`] in `start_send`, and maps `poll_ready` and `poll_flush`
//! onto the buffer's own.

mod client;
mod keepalive;
mod read;
mod write;

pub use client::{ClientOptions, ConnectTimeout, HostPort};
pub use keepalive::{Due, Keepalive};
pub use read::ReadBuffer;
pub use write::WriteBuffer;
