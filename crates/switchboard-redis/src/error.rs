//! The error type of switchboard-redis.

use std::time::Duration;

use switchboard_core::BoxError;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when talking to Redis.
///
/// Through the [`Broker`](switchboard_core::Broker) trait these arrive
/// wrapped in the core's
/// [`Error::Broker`](switchboard_core::Error::Broker); find them again
/// with `std::error::Error::source` and `downcast_ref::<Error>()`.
///
/// None of them is fatal to the broker: it keeps reconnecting in the
/// background, and the next call may succeed.
///
/// ```
/// use switchboard::redis::Error as RedisError;
///
/// /// Whether a hub call failed only because other nodes are unreachable.
/// fn other_nodes_missed_it(err: &switchboard::Error) -> bool {
///     std::error::Error::source(err)
///         .and_then(|source| source.downcast_ref::<RedisError>())
///         .is_some_and(RedisError::is_transient)
/// }
///
/// let down: switchboard::Error = RedisError::Timeout {
///     operation: "PUBLISH",
///     after: std::time::Duration::from_secs(1),
/// }
/// .into();
/// assert!(other_nodes_missed_it(&down));
/// assert!(!other_nodes_missed_it(&switchboard::Error::Config("x".into())));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL could not be understood (`redis://host:port/db`,
    /// `redis+unix:///path`; `rediss://` needs a TLS build of the `redis`
    /// crate). Fix the configuration.
    #[error("invalid redis url: {0}")]
    InvalidUrl(#[source] BoxError),

    /// An option is out of range (an empty prefix, a zero timeout, a node
    /// id longer than 255 bytes). Fix the configuration.
    #[error("invalid redis options: {0}")]
    Config(String),

    /// Redis is unreachable, the link to it broke, or it refused the
    /// command. Local delivery is not affected; the broker is reconnecting
    /// in the background, so a later call may succeed.
    #[error("redis unavailable: {0}")]
    Unavailable(#[source] BoxError),

    /// Redis did not answer `operation` within the configured timeout
    /// ([`RedisOptions::timeout`](crate::RedisOptions::timeout)). The link is
    /// dropped and re-established in the background.
    #[error("redis did not answer {operation} within {after:?}")]
    Timeout {
        /// What was waiting: `"CONNECT"`, `"PUBLISH"`, `"SUBSCRIBE"`, ...
        operation: &'static str,
        /// The timeout that expired.
        after: Duration,
    },

    /// The message cannot be put in an envelope: a room name longer than
    /// 65,535 bytes. Nothing was sent.
    #[error("cannot encode message: {0}")]
    Encode(&'static str),
}

impl Error {
    pub(crate) fn unavailable(source: impl Into<BoxError>) -> Self {
        Error::Unavailable(source.into())
    }

    /// Whether this error is about reaching Redis (down, slow, link lost)
    /// rather than about the configuration or the message: retrying later
    /// may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Timeout { .. })
    }
}

impl From<Error> for switchboard_core::Error {
    fn from(err: Error) -> Self {
        switchboard_core::Error::Broker(Box::new(err))
    }
}
