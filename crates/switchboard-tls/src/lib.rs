//! TLS for switchboard, on rustls with the *ring* provider.
//!
//! One layer serves every transport: [`TlsTransport`] wraps any transport
//! that accepts a byte stream, `wss://` and TLS over TCP alike, and runs
//! the handshake under the server's handshake timeout.
//!
//! The client side is [`TlsConnector`], which the WebSocket client uses for
//! `wss://` URLs and the TCP client for TLS over TCP (feature `tls` of those
//! crates, on in the `switchboard` facade by default).
//!
//! Use it through the facade: `switchboard::tls`.
//!
//! ```no_run
//! use switchboard::tcp::TcpTransport;
//! use switchboard::tls::{ServerTls, TlsTransport};
//! use switchboard::ws::WsTransport;
//! use switchboard::{BoxError, Connection, Message, MessageComponent, Server};
//! use std::sync::Arc;
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
//! let tls = ServerTls::from_pem_files("cert.pem", "key.pem")?;
//! let server = Server::builder()
//!     .bind("127.0.0.1:8443", TlsTransport::new(tls.clone(), WsTransport::new(Echo)))
//!     .bind("127.0.0.1:9443", TlsTransport::new(tls, TcpTransport::lines(Echo)))
//!     .start()
//!     .await?;
//! # server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `transport`: [`ServerTls`] (certificate and key) and [`TlsTransport`];
//! - `connector`: [`TlsConnector`], the client side;
//! - `pem`: reading PEM files;
//! - `error`: [`Error`].

#![cfg_attr(docsrs, feature(doc_cfg))]

mod connector;
mod error;
mod pem;
mod transport;

use std::sync::Arc;

pub use connector::TlsConnector;
pub use error::{Error, Result};
/// The stream a client connection runs over.
pub use tokio_rustls::client::TlsStream as ClientTlsStream;
/// rustls itself, for configurations built by hand
/// ([`ServerTls::from_rustls`], [`TlsConnector::from_rustls`]).
pub use tokio_rustls::rustls;
/// The stream a transport wrapped in [`TlsTransport`] receives.
pub use tokio_rustls::server::TlsStream as ServerTlsStream;
pub use transport::{ServerTls, TlsTransport};

/// The crypto provider every configuration of this crate uses: *ring*,
/// chosen explicitly so that no process-wide default is needed.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
