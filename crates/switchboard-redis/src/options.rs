//! Settings of a [`RedisBroker`](crate::RedisBroker) or an
//! [`Emitter`](crate::Emitter), and the channel names they derive.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// Longest node id, in bytes (the envelope stores its length in one byte).
pub const MAX_NODE_ID_LEN: usize = 255;

/// Settings shared by [`RedisBroker`](crate::RedisBroker) and
/// [`Emitter`](crate::Emitter).
///
/// Built with [`Default`] and chainable setters, like the core
/// [`Config`](switchboard_core::Config); every field documents its default.
/// Nodes and emitters of one cluster must use the same
/// [`prefix`](Self::prefix).
///
/// ```
/// use std::time::Duration;
/// use switchboard::redis::RedisOptions;
///
/// let options = RedisOptions::default()
///     .prefix("chat")
///     .node_id("eu-1")
///     .timeout(Duration::from_millis(500));
/// assert!(options.validate().is_ok());
/// assert!(RedisOptions::default().prefix("").validate().is_err());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Start of every channel name: `{prefix}:room:{name}`, `{prefix}:all`,
    /// `{prefix}:node:{id}`. Lets several applications share one Redis.
    /// Default `"switchboard"`.
    pub prefix: String,
    /// This process's name in the cluster, carried in every envelope it
    /// publishes (a node drops the echo of its own `publish` and
    /// `broadcast`: its local members already had them; room messages
    /// with history and presence changes come back to it like to any
    /// node). At most 255 bytes. Default: `None`, a random id made at
    /// connect time. Room presence adds a random part per process, so a
    /// node restarted under the same id is a new member of the cluster.
    pub node_id: Option<String>,
    /// Upper bound for every exchange with Redis: connecting, one
    /// `PUBLISH`, one `SUBSCRIBE`/`UNSUBSCRIBE` confirmation, one watchdog
    /// `PING`. A publish never waits longer than this. Default 1 s.
    pub timeout: Duration,
    /// How often the watchdog pings both links to Redis while they are up.
    /// A link that does not answer within [`timeout`](Self::timeout) is
    /// dropped and re-established, which catches half-open connections
    /// that the operating system would notice only much later. Default 1 s.
    pub ping_interval: Duration,
    /// First delay before reconnecting after a failure; it doubles at each
    /// failed attempt up to [`reconnect_max`](Self::reconnect_max).
    /// Default 50 ms.
    pub reconnect_min: Duration,
    /// Longest delay between reconnect attempts. The broker retries for as
    /// long as it lives, so this bounds how long after Redis comes back the
    /// broker notices. Default 1 s.
    pub reconnect_max: Duration,
    /// How long a node may stay silent before the others count it dead and
    /// remove its room members (announcing their leaves). Each node
    /// beats every quarter of it, so a dead node's members are gone within
    /// about 1.25 × this. Default 10 s.
    pub node_ttl: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "switchboard".into(),
            node_id: None,
            timeout: Duration::from_secs(1),
            ping_interval: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(1),
            node_ttl: Duration::from_secs(10),
        }
    }
}

impl RedisOptions {
    /// Sets [`prefix`](Self::prefix).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`node_id`](Self::node_id).
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// Sets [`timeout`](Self::timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`ping_interval`](Self::ping_interval).
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Sets [`node_ttl`](Self::node_ttl).
    pub fn node_ttl(mut self, ttl: Duration) -> Self {
        self.node_ttl = ttl;
        self
    }

    /// Sets [`reconnect_min`](Self::reconnect_min) and
    /// [`reconnect_max`](Self::reconnect_max).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// Checks every field; [`RedisBroker::connect`](crate::RedisBroker::connect)
    /// and [`Emitter::connect`](crate::Emitter::connect) call it.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Config(msg));
        if self.prefix.is_empty() || self.prefix.chars().any(char::is_whitespace) {
            return fail("prefix must be non-empty and without whitespace".into());
        }
        if let Some(id) = &self.node_id
            && (id.is_empty() || id.len() > MAX_NODE_ID_LEN)
        {
            return fail(format!(
                "node id must be 1 to {MAX_NODE_ID_LEN} bytes, not {}",
                id.len()
            ));
        }
        if self.timeout.is_zero() || self.ping_interval.is_zero() || self.reconnect_min.is_zero() {
            return fail("timeout, ping_interval and reconnect_min must be above zero".into());
        }
        if self.node_ttl < Duration::from_millis(100) {
            return fail("node_ttl must be at least 100 ms".into());
        }
        if self.reconnect_min > self.reconnect_max {
            return fail("reconnect_min must not exceed reconnect_max".into());
        }
        Ok(())
    }

    /// The configured node id, or a fresh random one.
    pub(crate) fn node_id_or_random(&self, kind: &str) -> String {
        self.node_id.clone().unwrap_or_else(|| random_id(kind))
    }
}

/// A random number, from the same sources as [`random_id`].
pub(crate) fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.finish()
}

/// `{kind}-{16 hex digits}`: random enough that two processes never pick
/// the same id (std's `RandomState` is seeded from the OS per process),
/// mixed with the time and pid for processes forked from one another.
fn random_id(kind: &str) -> String {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    format!("{kind}-{:016x}", hasher.finish())
}

/// Channel names of one cluster.
#[derive(Clone, Debug)]
pub(crate) struct Channels {
    /// `{prefix}:room:`
    room_prefix: String,
    all: String,
    node_prefix: String,
}

impl Channels {
    pub(crate) fn new(prefix: &str) -> Self {
        Channels {
            room_prefix: format!("{prefix}:room:"),
            all: format!("{prefix}:all"),
            node_prefix: format!("{prefix}:node:"),
        }
    }

    pub(crate) fn room(&self, room: &str) -> String {
        format!("{}{room}", self.room_prefix)
    }

    /// The room a channel name stands for, if it is a room channel.
    pub(crate) fn room_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(self.room_prefix.as_str())
    }

    pub(crate) fn all(&self) -> &str {
        &self.all
    }

    pub(crate) fn node(&self, node: &str) -> String {
        format!("{}{node}", self.node_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        let ch = Channels::new("app");
        assert_eq!(ch.room("lobby"), "app:room:lobby");
        assert_eq!(ch.room_of("app:room:lobby"), Some("lobby"));
        assert_eq!(ch.room_of("app:all"), None);
        assert_eq!(ch.all(), "app:all");
        assert_eq!(ch.node("n1"), "app:node:n1");
    }

    #[test]
    fn random_ids_differ() {
        let a = random_id("node");
        let b = random_id("node");
        assert_ne!(a, b);
        assert!(a.starts_with("node-") && a.len() == 21);
    }

    #[test]
    fn validation() {
        assert!(RedisOptions::default().validate().is_ok());
        for bad in [
            RedisOptions::default().prefix("a b"),
            RedisOptions::default().node_id("x".repeat(256)),
            RedisOptions::default().timeout(Duration::ZERO),
            RedisOptions::default()
                .reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1)),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
