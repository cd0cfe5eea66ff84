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

    /// The peer closed the connection before it finished its request.
    #[error("the peer closed the connection during the handshake")]
    Eof,

    /// Reading the request or writing the response failed.
    #[error("i/o error during the handshake: {0}")]
    Io(#[from] io::Error),
}

impl From<Error> for switchboard_core::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Io(io) => switchboard_core::Error::Handshake(Box::new(io)),
            Error::InvalidPath(_)
            | Error::DuplicateRoute(_)
            | Error::InvalidSubprotocol(_)
            | Error::Config(_)
            | Error::NoRoutes => switchboard_core::Error::Config(err.to_string()),
            other => switchboard_core::Error::Handshake(Box::new(other)),
        }
    }
}
