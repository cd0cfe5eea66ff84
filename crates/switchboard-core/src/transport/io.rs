//! The byte-stream side of a connection, for transports over a socket:
//! written once here, so that a transport is this layer plus its codec
//! and its protocol's state.
//!
//! A [`TransportConn`](super::TransportConn) over them reads with
//! [`ReadBuffer::poll_read`], calls [`Keepalive::seen`] when bytes arrived
//! and [`Keepalive::due`] when nothing more did, encodes into the
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
