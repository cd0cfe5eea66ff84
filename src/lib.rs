//! switchboard: real-time messaging servers for WebSocket and raw TCP, on tokio.
//!
//! Write one type that implements [`MessageComponent`] (`on_open`,
//! `on_message`, `on_close`, `on_error`) and serve it on any transport:
//! WebSocket for browsers, framed TCP for `nc`, devices and services, or both
//! at once with one component value.
//!
//! # Example
//!
//! ```no_run
//! use switchboard::tcp::TcpTransport;
//! use switchboard::ws::WsTransport;
//! use switchboard::{BoxError, Connection, Hub, Message, MessageComponent, Server};
//! use std::sync::Arc;
//!
//! #[derive(Default)]
//! struct Chat {
//!     hub: Hub,
//! }
//!
//! impl MessageComponent for Chat {
//!     async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
//!         self.hub.join(conn);
//!         Ok(())
//!     }
//!
//!     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
//!         self.hub.broadcast_except(msg, conn.id()).await?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), BoxError> {
//! let chat = Arc::new(Chat::default());
//! let server = Server::builder()
//!     .bind("127.0.0.1:8080", WsTransport::new(chat.clone()))
//!     .bind("127.0.0.1:9000", TcpTransport::lines(chat))
//!     .start()
//!     .await?;
//! tokio::signal::ctrl_c().await?;
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Every function that takes a component takes it as a value, as an `Arc`
//! shared with other listeners (as here), or as an `Arc<dyn DynComponent>`:
//! see [`IntoComponent`].
//!
//! # Contracts
//!
//! Ordering, back-pressure and close semantics are documented on
//! [`MessageComponent`]; limits on [`Config`]; the architecture in
//! `docs/architecture.md`.
//!
//! # Where things are
//!
//! The crate root holds what an application uses: the component trait,
//! [`Connection`], [`Message`], [`Server`], [`Hub`], limits and errors.
//! Presence, history and recovery for the hub's rooms are in [`rooms`].
//! Each transport is a module ([`ws`], [`tcp`], [`tls`]; scale-out in
//! [`redis`]). [`transport`] is for writing a transport of your own: the
//! [`Transport`](transport::Transport) trait and the client plumbing.
//!
//! # Feature flags
//!
//! | feature | default | what |
//! |---|---|---|
//! | `ws` | yes | [`ws`]: the WebSocket transport, with its own RFC 6455 framing, and a WebSocket client |
//! | `tcp` | yes | [`tcp`]: the framed TCP transport |
//! | `redis` | yes | [`redis`]: scale-out across nodes on Redis, and pushes from any process |
//! | `tls` | yes | [`tls`]: TLS on rustls (*ring*) around any transport (`wss://`, TLS over TCP), and TLS clients |
//! | `test-util` | no | [`testing`]: run a component over in-memory connections in unit tests |
//! | `axum` | no | [`axum`]: mount components on axum routes, served by a running switchboard server |

#![cfg_attr(docsrs, feature(doc_cfg))]

pub use switchboard_core::*;

/// The WebSocket transport (feature `ws`, on by default).
#[cfg(feature = "ws")]
#[cfg_attr(docsrs, doc(cfg(feature = "ws")))]
#[doc(inline)]
pub use switchboard_ws as ws;

/// The framed TCP transport: lines, length-delimited frames, raw bytes or
/// your own codec (feature `tcp`).
#[cfg(feature = "tcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "tcp")))]
#[doc(inline)]
pub use switchboard_tcp as tcp;

/// Scale-out on Redis: a broker that spans nodes, an emitter for processes
/// without sockets (feature `redis`).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[doc(inline)]
pub use switchboard_redis as redis;

/// Components on axum routes: the upgrade is axum's, the frames are
/// switchboard's, and the connections belong to a running server (feature
/// `axum`).
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[doc(inline)]
pub use switchboard_axum as axum;

/// TLS on rustls: [`TlsTransport`](tls::TlsTransport) wraps any transport
/// (`wss://`, TLS over TCP); [`TlsConnector`](tls::TlsConnector) for
/// clients (feature `tls`).
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
#[doc(inline)]
pub use switchboard_tls as tls;
