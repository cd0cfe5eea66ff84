//! The error type of switchboard-core.

use std::io;

use crate::close::CloseCode;
use crate::message::Message;

/// A boxed error, the type handlers return: `?` converts any
/// `std::error::Error + Send + Sync` into it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in switchboard-core and its transports.
///
/// Per-connection errors reach [`MessageComponent::on_error`](crate::MessageComponent::on_error);
/// server-level errors (binding, configuration) are returned from
/// [`ServerBuilder::start`](crate::ServerBuilder::start).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on the connection (reset, broken pipe). Nothing more can
    /// be sent; the connection is closed with 1006.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),

    /// The peer broke the transport's protocol or a limit; the connection is
    /// closed with `code` (1002 protocol, 1007 invalid UTF-8, 1009 too big).
    #[error("protocol error (close {code}): {source}")]
    Protocol {
        /// The close code sent to the peer.
        code: CloseCode,
        /// What exactly was wrong.
        #[source]
        source: BoxError,
    },

    /// The transport handshake failed or timed out (the connection never opened).
    #[error("handshake failed: {0}")]
    Handshake(#[source] BoxError),

    /// A handler (`on_open`, `on_message`, `on_close`) returned this error.
    #[error("handler error: {0}")]
    Handler(#[source] BoxError),

    /// A handler or the transport (a custom codec) panicked; the payload's
    /// message, if it had one.
    #[error("handler or codec panicked: {0}")]
    Panic(String),

    /// The outbound queue of the connection overflowed.
    #[error(transparent)]
    Send(#[from] SendError),

    /// The peer sent nothing (not even a pong) for longer than the idle timeout.
    #[error("idle timeout: no traffic from the peer")]
    IdleTimeout,

    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Binding a listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that could not be bound.
        addr: String,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A broker (room fan-out across processes) failed.
    #[error("broker error: {0}")]
    Broker(#[source] BoxError),

    /// A room operation that cannot be done: the connection has closed, or
    /// is already in the room.
    #[error("room {room}: {reason}")]
    Room {
        /// The room.
        room: String,
        /// What stopped it.
        reason: &'static str,
    },
}

impl Error {
    /// A protocol error with the given close code.
    pub fn protocol(code: CloseCode, source: impl Into<BoxError>) -> Self {
        Error::Protocol {
            code,
            source: source.into(),
        }
    }
}

/// Why [`Connection::send`](crate::Connection::send) did not take a message.
/// The message is handed back, so nothing is lost silently.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed or closing.
    #[error("connection closed")]
    Closed(Message),
    /// The outbound queue is full (bounded in messages and bytes). Under the
    /// `Close` slow-consumer policy the connection is now closing.
    #[error("outbound queue full")]
    Full(Message),
    /// The connection's transport cannot carry this message as one message
    /// (see [`TransportConn::outbound_check`](crate::transport::TransportConn::outbound_check)):
    /// a line break or invalid UTF-8 in a message to a TCP lines peer, say.
    /// Nothing was queued and the connection stays open; counted in
    /// [`Counters::invalid_sends`](crate::Counters::invalid_sends).
    #[error("message refused by the transport: {reason}")]
    Invalid {
        /// The message, unchanged.
        msg: Message,
        /// Why the transport refused it.
        reason: &'static str,
    },
}

impl SendError {
    /// The message that was not sent.
    pub fn into_inner(self) -> Message {
        match self {
            SendError::Closed(m) | SendError::Full(m) | SendError::Invalid { msg: m, .. } => m,
        }
    }
}
