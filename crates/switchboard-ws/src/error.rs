//! The error type of switchboard-ws.

use std::io;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the WebSocket transport.
///
/// Configuration mistakes come back from
/// [`WsTransportBuilder::build`](crate::WsTransportBuilder::build). Handshake
/// failures are handed to the core wrapped in
/// [`switchboard::Error::Handshake`](switchboard_core::Error::Handshake) and
/// only logged (at debug level) and counted in `handshake_failures`: the
/// connection never opened, so no component hears of it. Errors on an open
/// connection reach `on_error` as core errors (close 1002, 1007, 1009).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A route or page path does not start with `/`, or holds a `?` or `#`.
    #[error("invalid path {0:?}: a path starts with '/' and holds no '?' or '#'")]
    InvalidPath(String),

    /// The same path was routed twice.
    #[error("path {0:?} is routed twice")]
    DuplicateRoute(String),

    /// Two routes with parameters match the same paths (`/rooms/{a}` and
    /// `/rooms/{b}`).
    #[error("routes {0:?} and {1:?} match the same paths")]
    OverlappingRoutes(String, String),

    /// A route's parameters are malformed: the reason says how.
    #[error("invalid route {route:?}: {reason}")]
    InvalidRoute {
        /// The route as given.
        route: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A subprotocol name is empty or holds characters RFC 6455 forbids
    /// (anything but visible ASCII except separators).
    #[error("invalid subprotocol name {0:?}")]
    InvalidSubprotocol(String),

    /// Some other setting is out of range; the message says which.
    #[error("invalid WebSocket configuration: {0}")]
    Config(&'static str),

    /// The transport has no component to serve: add a route or a fallback.
    #[error("a WsTransport needs at least one route or a fallback component")]
    NoRoutes,

    /// The request was answered with plain HTTP instead of an upgrade: a
    /// page (200), or a refusal such as 400, 403, 404, 426 or a status
    /// chosen by the handshake hook. Not a fault of the server.
    #[error("answered HTTP {status} instead of upgrading: {reason}")]
    Answered {
        /// The HTTP status sent.
        status: u16,
        /// Why, for the logs.
        reason: String,
    },

    /// The peer closed the connection before it finished its request (or,
    /// client, before the server finished its response).
    #[error("the peer closed the connection during the handshake")]
    Eof,

    /// Reading the request or writing the response failed, or (client)
    /// the TCP connection could not be made.
    #[error("i/o error during the handshake: {0}")]
    Io(#[from] io::Error),

    /// (client) The URL is not a `ws://` (or, with the `tls` feature,
    /// `wss://`) URL with a host.
    #[error("invalid WebSocket URL {0}")]
    InvalidUrl(String),

    /// (client) An extra request header has an invalid name or value.
    #[error("invalid request header {0:?}")]
    InvalidHeader(String),

    /// (client) The server answered the upgrade with this HTTP status.
    #[error("the server refused the upgrade with HTTP {status}")]
    Refused {
        /// The status the server sent (401, 403, 404, ...).
        status: u16,
    },

    /// (client) The upgrade failed for another reason (a bad `101`, a
    /// protocol error during the handshake).
    #[error("WebSocket handshake failed: {0}")]
    Handshake(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),

    /// (client) Connecting and upgrading took longer than the handshake timeout.
    #[error("no connection within {0:?}")]
    Timeout(std::time::Duration),

    /// (client, feature `tls`) The TLS handshake of a `wss://` URL failed
    /// (the server's certificate was rejected, say), or the root
    /// certificates could not be loaded.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    #[error(transparent)]
    Tls(#[from] switchboard_tls::Error),

    /// An error of the core, such as an invalid [`Config`](switchboard_core::Config).
    #[error(transparent)]
    Core(#[from] switchboard_core::Error),
}

impl From<switchboard_core::transport::io::ConnectTimeout> for Error {
    fn from(timeout: switchboard_core::transport::io::ConnectTimeout) -> Self {
        Error::Timeout(timeout.0)
    }
}

impl From<Error> for switchboard_core::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Io(io) => switchboard_core::Error::Handshake(Box::new(io)),
            Error::Core(core) => core,
            Error::InvalidPath(_)
            | Error::DuplicateRoute(_)
            | Error::InvalidSubprotocol(_)
            | Error::Config(_)
            | Error::NoRoutes => switchboard_core::Error::Config(err.to_string()),
            other => switchboard_core::Error::Handshake(Box::new(other)),
        }
    }
}
