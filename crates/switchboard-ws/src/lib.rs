//! The WebSocket transport of switchboard (RFC 6455).
//!
//! [`WsTransport`] turns accepted byte streams into connections for the
//! core: it answers the HTTP request itself (routing by path, static pages,
//! origin checks, subprotocols, an async handshake hook for authentication)
//! and then hands the connection, framed by this crate, to the core's
//! connection driver, adding pings and an idle timeout. All limits come from the core
//! [`Config`](switchboard_core::Config); transport settings (buffers, routes,
//! pages, origins, hook) live on the [`WsTransportBuilder`].
//!
//! Use it through the facade: `switchboard::ws`.
//!
//! ```no_run
//! use switchboard::ws::{Page, WsTransport};
//! use switchboard::{BoxError, Connection, Message, MessageComponent, Server};
//!
//! struct Echo;
//!
//! impl MessageComponent for Echo {
//!     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
//!         conn.send(msg)?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), BoxError> {
//! let ws = WsTransport::builder()
//!     .route("/echo", Echo)
//!     .page("/", Page::html("<!doctype html><script>new WebSocket('ws://' + location.host + '/echo')</script>"))
//!     .build()?;
//! let server = Server::builder().bind("127.0.0.1:8080", ws).start().await?;
//! # server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `config`: the builder, [`OriginPolicy`], [`Page`];
//! - `handshake`: reading and judging the HTTP request, writing the answer
//!   (pure functions over bytes, tested without sockets);
//! - `hook`: what the handshake hook sees and returns ([`Request`],
//!   [`Accept`], [`Reject`]);
//! - `transport`: [`WsTransport`], the core's `Transport`;
//! - `frame`: RFC 6455 frame headers, masking, close payloads and the
//!   frame encoder (pure functions over bytes);
//! - `deflate`: permessage-deflate (RFC 7692): [`Deflate`], negotiating it,
//!   and compressing and inflating messages with flate2 (idle connections
//!   hold no zlib stream; a broadcast is compressed once);
//! - `ws_connection`: [`WsConnection`], the core's `TransportConn`: the
//!   core's I/O layer (`switchboard_core::transport::io`: read and write
//!   buffers, the keepalive checks) with fragments, UTF-8, control frames
//!   and the closing handshake over it;
//! - `client`: [`connect`] and [`Client`], a component on the client side
//!   of a connection, reconnecting and over TLS (`wss://`, feature `tls`);
//! - `error`: [`Error`].
//!
//! # Framing and memory
//!
//! tungstenite (through tokio-tungstenite) builds the client's request and
//! the accept key; the frames of an established connection are this
//! crate's own, because tungstenite's frame layer reads into a buffer it
//! allocates with the connection and zero-fills before every read, so one
//! buffer size cannot serve both an idle connection and a large message.
//! Here frames are cut out of the core's read buffer without copying and
//! unmasked in place; [`WsTransportBuilder::read_buffer_size`] and
//! [`write_buffer_size`](WsTransportBuilder::write_buffer_size) say how the
//! buffers come and go. An idle connection holds neither: only the
//! request's path, query and headers (minus the handshake-only ones), a
//! timer and the connection's state. The rules are RFC 6455's and RFC
//! 7692's (permessage-deflate, off by default: [`WsTransportBuilder::deflate`]),
//! checked by the Autobahn test suite (`scripts/autobahn.sh`, every case)
//! and the `ws_connection` and `ws_deflate` fuzz targets.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod config;
mod deflate;
mod error;
mod frame;
mod handshake;
mod hook;
mod router;
mod transport;
mod upgrade;
mod ws_connection;

pub use client::{Client, connect, connect_with, connect_with_config};
pub use config::{
    DEFAULT_MAX_REQUEST_HEAD, DEFAULT_READ_BUFFER_SIZE, DEFAULT_WRITE_BUFFER_SIZE, OriginPolicy,
    Page, WsTransportBuilder,
};
pub use deflate::{DEFAULT_LEVEL, DEFAULT_MAX_CONTEXT_TAKEOVER, DEFAULT_THRESHOLD, Deflate};
pub use error::{Error, Result};
pub use hook::{Accept, Reject, Request};
pub use transport::WsTransport;
pub use upgrade::{HttpAnswer, PendingUpgrade, UpgradeRequest};
pub use ws_connection::WsConnection;

/// Compiles and runs the code of `docs/guide.md` as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide.md")]
struct GuideDoctests;
