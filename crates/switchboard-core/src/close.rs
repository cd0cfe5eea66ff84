//! Close codes, close frames and the reasons a connection ended.

use std::fmt;

use crate::message::Utf8Bytes;

/// A close status code, as in RFC 6455 §7.4. Transports without close frames
/// (raw TCP) log the code instead of sending it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection was fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the server is going away (shutdown) or the page navigated away.
    pub const AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer violated the protocol.
    pub const PROTOCOL: CloseCode = CloseCode(1002);
    /// 1003: a kind of data the endpoint does not accept.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// 1005: no status code was present (never sent on the wire).
    pub const STATUS: CloseCode = CloseCode(1005);
    /// 1006: closed without a close frame (never sent on the wire).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: a text message was not valid UTF-8.
    pub const INVALID: CloseCode = CloseCode(1007);
    /// 1008: a policy was violated (rate limit, slow consumer, ...).
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: a message or frame was larger than the configured limit.
    pub const SIZE: CloseCode = CloseCode(1009);
    /// 1011: the server hit an unexpected condition (handler error or panic).
    pub const ERROR: CloseCode = CloseCode(1011);
    /// 1012: the service is restarting; reconnect (the client may resume
    /// where it was).
    pub const RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later (the server is overloaded for now).
    pub const TRY_AGAIN: CloseCode = CloseCode(1013);
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

/// A close code with a human-readable reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// The reason; at most 123 bytes go on a WebSocket wire.
    pub reason: Utf8Bytes,
}

impl CloseFrame {
    /// A close frame with the given code and reason.
    pub fn new(code: CloseCode, reason: impl Into<Utf8Bytes>) -> Self {
        CloseFrame {
            code,
            reason: reason.into(),
        }
    }

    pub(crate) const fn from_static(code: CloseCode, reason: &'static str) -> Self {
        CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }
    }
}

impl fmt::Display for CloseFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reason.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} ({})", self.code, self.reason)
        }
    }
}

/// Why a connection ended, as passed to
/// [`MessageComponent::on_close`](crate::MessageComponent::on_close).
///
/// Errors that led to a close were first passed to `on_error`; this value
/// only says which path ended the connection and which close frame (if any)
/// went to, or came from, the peer.
///
/// ```
/// use switchboard::{BoxError, CloseCode, CloseFrame, CloseReason, Connection, Message, MessageComponent};
///
/// struct Presence;
///
/// impl MessageComponent for Presence {
///     async fn on_message(&self, _: &Connection, _: Message) -> Result<(), BoxError> {
///         Ok(())
///     }
///
///     async fn on_close(&self, conn: &Connection, reason: CloseReason) {
///         match &reason {
///             // The user closed the tab, or the client said goodbye.
///             CloseReason::Peer(_) | CloseReason::Local(_) => {}
///             // Gone quiet or too slow: worth a line in the log.
///             CloseReason::IdleTimeout | CloseReason::SlowConsumer => {
///                 eprintln!("{}: {reason}", conn.peer_addr());
///             }
///             // The enum grows: match the rest.
///             _ => eprintln!("{}: {reason} (code {:?})", conn.peer_addr(), reason.code()),
///         }
///     }
/// }
///
/// let bye = CloseReason::Peer(Some(CloseFrame::new(CloseCode::NORMAL, "bye")));
/// assert_eq!(bye.to_string(), "closed by peer: 1000 (bye)");
/// assert_eq!(CloseReason::Shutdown.code(), Some(CloseCode::AWAY));
/// assert_eq!(CloseReason::Peer(None).code(), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed: with a close frame (WebSocket), or by ending the
    /// stream (`None`: TCP EOF, or a WebSocket close without a status).
    Peer(Option<CloseFrame>),
    /// This side closed through [`Connection::close`](crate::Connection::close)
    /// or [`close_with`](crate::Connection::close_with); the default
    /// `on_error` closes with 1011 this way.
    Local(CloseFrame),
    /// `on_open` returned an error; the connection never opened for
    /// messages. The peer got 1008.
    Rejected,
    /// A transport or protocol error (oversized message, invalid UTF-8,
    /// reset). The frame is what was sent to the peer; 1006 when nothing
    /// could be sent.
    Error(CloseFrame),
    /// A handler, a custom codec or the transport panicked; the peer got
    /// 1011. (A panic while the connection was already closing keeps the
    /// reason the close began for.)
    Panic,
    /// The outbound queue overflowed under the `Close` slow-consumer policy;
    /// the peer got 1008.
    SlowConsumer,
    /// The peer was silent for longer than the idle timeout.
    IdleTimeout,
    /// The server shut down; the peer got 1001.
    Shutdown,
}

impl CloseReason {
    /// The close code sent or received, if there was one.
    pub fn code(&self) -> Option<CloseCode> {
        match self {
            CloseReason::Peer(frame) => frame.as_ref().map(|f| f.code),
            CloseReason::Local(frame) | CloseReason::Error(frame) => Some(frame.code),
            CloseReason::Rejected | CloseReason::SlowConsumer => Some(CloseCode::POLICY),
            CloseReason::Panic => Some(CloseCode::ERROR),
            CloseReason::IdleTimeout | CloseReason::Shutdown => Some(CloseCode::AWAY),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Peer(Some(frame)) => write!(f, "closed by peer: {frame}"),
            CloseReason::Peer(None) => f.write_str("closed by peer"),
            CloseReason::Local(frame) => write!(f, "closed locally: {frame}"),
            CloseReason::Rejected => f.write_str("rejected by on_open"),
            CloseReason::Error(frame) => write!(f, "closed on error: {frame}"),
            CloseReason::Panic => f.write_str("closed after a handler panic"),
            CloseReason::SlowConsumer => f.write_str("closed: slow consumer"),
            CloseReason::IdleTimeout => f.write_str("closed: idle timeout"),
            CloseReason::Shutdown => f.write_str("closed: server shutdown"),
        }
    }
}
