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
    #[error("invalid redis url {url}: {source}")]
    InvalidUrl {
        /// The URL, its password replaced by `***`.
        url: String,
        /// What the `redis` crate said.
        #[source]
        source: BoxError,
    },

    /// Connecting at start-up ([`RedisBroker::connect`](crate::RedisBroker::connect),
    /// [`Emitter::connect`](crate::Emitter::connect)) failed: Redis was
    /// unreachable ([`Unavailable`](Self::Unavailable)) or did not answer
    /// in time ([`Timeout`](Self::Timeout)).
    #[error("cannot connect to redis at {url}: {source}")]
    Connect {
        /// The URL, its password replaced by `***`.
        url: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },

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

    pub(crate) fn invalid_url(url: &str, source: impl Into<BoxError>) -> Self {
        Error::InvalidUrl {
            url: redacted(url),
            source: source.into(),
        }
    }

    /// `self`, raised while connecting to `url` at start-up.
    pub(crate) fn connecting_to(self, url: &str) -> Self {
        Error::Connect {
            url: redacted(url),
            source: Box::new(self),
        }
    }

    /// Whether this error is about reaching Redis (down, slow, link lost)
    /// rather than about the configuration or the message: retrying later
    /// may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unavailable(_) | Error::Timeout { .. } => true,
            Error::Connect { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

/// Awaits one exchange with Redis for at most `after`: its error becomes
/// [`Error::Unavailable`], running out of time [`Error::Timeout`].
pub(crate) async fn bounded<T, E: Into<BoxError>>(
    operation: &'static str,
    after: Duration,
    exchange: impl Future<Output = Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(after, exchange).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(Error::unavailable(err)),
        Err(_) => Err(Error::Timeout { operation, after }),
    }
}

/// `url` fit for an error message that ends up in a log: the password of
/// `redis://user:password@host` and the `pass` parameter of
/// `redis+unix:///path?pass=...` replaced by `***`.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<&str> = query
                .split('&')
                .map(|pair| pair.strip_prefix("pass=").map_or(pair, |_| "pass=***"))
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

impl From<Error> for switchboard_core::Error {
    fn from(err: Error) -> Self {
        switchboard_core::Error::Broker(Box::new(err))
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_do_not_reach_messages() {
        assert_eq!(
            redacted("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redacted("redis://ann:s3cret@cache.internal:6379/2"),
            "redis://ann:***@cache.internal:6379/2"
        );
        assert_eq!(
            redacted("redis://:s3cret@cache.internal"),
            "redis://:***@cache.internal"
        );
        assert_eq!(
            redacted("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(redacted("not a url"), "not a url");
    }
}
