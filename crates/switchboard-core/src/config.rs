//! Every limit of a server, in one place.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::limits::{IpFilter, RateLimit};

/// What happens when a connection's outbound queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Close the connection (1008, "slow consumer") and drop what it had
    /// queued. The other connections are not affected. This is the default.
    #[default]
    Close,
    /// Refuse the message (`send` returns [`SendError::Full`](crate::SendError::Full)),
    /// count it in `dropped`, and keep the connection.
    Drop,
}

/// TCP keepalive on accepted sockets (`SO_KEEPALIVE`): after `idle` without
/// traffic the kernel sends a probe every `interval`, and after `retries`
/// unanswered probes it drops the connection, which the server then sees as
/// an error on the socket. A live peer's kernel answers the probes by
/// itself, so this finds peers that vanished (host gone, cable pulled, NAT
/// entry expired) without closing peers that are only silent, on
/// transports without pings too.
///
/// The kernel counts whole seconds: each duration must be at least 1 s.
/// Where the platform cannot set the interval or the count (Windows: the
/// count), its own default is used for that part.
///
/// ```
/// use std::time::Duration;
/// use switchboard::{Config, TcpKeepalive};
///
/// // A vanished peer is found within 30 s + 3 × 10 s by default; here
/// // within 10 s + 5 × 2 s.
/// let probes = TcpKeepalive::new(Duration::from_secs(10), Duration::from_secs(2), 5);
/// let config = Config::default().tcp_keepalive(Some(probes));
/// assert!(config.validate().is_ok());
/// // Off: the kernel's defaults for the socket (usually no keepalive).
/// let _off = Config::default().tcp_keepalive(None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpKeepalive {
    /// Silence before the first probe (`TCP_KEEPIDLE`). Default 30 s.
    pub idle: Duration,
    /// Time between unanswered probes (`TCP_KEEPINTVL`). Default 10 s.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`).
    /// Default 3.
    pub retries: u32,
}

impl TcpKeepalive {
    /// Probes after `idle` of silence, every `interval`, `retries` times.
    pub const fn new(idle: Duration, interval: Duration, retries: u32) -> Self {
        TcpKeepalive {
            idle,
            interval,
            retries,
        }
    }

    /// The longest a vanished peer can go unnoticed on an otherwise idle
    /// connection: `idle + interval × retries`.
    pub fn detection_time(&self) -> Duration {
        self.idle + self.interval * self.retries
    }
}

impl Default for TcpKeepalive {
    fn default() -> Self {
        TcpKeepalive::new(Duration::from_secs(30), Duration::from_secs(10), 3)
    }
}

/// Limits and timeouts shared by the server and every transport.
///
/// Built with [`Default`] and chainable setters; every field documents its
/// default. [`Config::validate`] runs when a server starts.
///
/// ```
/// use std::time::Duration;
/// use switchboard::Config;
///
/// let config = Config::default()
///     .max_message_size(64 * 1024)
///     .idle_timeout(Some(Duration::from_secs(60)))
///     .max_connections_per_ip(Some(100));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Largest inbound message in bytes, after reassembly of fragments
    /// (WebSocket: close 1009). Default 1 MiB. A WebSocket connection
    /// holds it as a 32-bit count: a limit above `u32::MAX` bytes (4 GiB
    /// less one byte) is that much.
    pub max_message_size: usize,
    /// Largest single frame or line in bytes (WebSocket frame, TCP line or
    /// length-delimited frame). Default 1 MiB. Like `max_message_size`, at
    /// most `u32::MAX` bytes on a WebSocket connection.
    pub max_frame_size: usize,
    /// Most messages waiting in one connection's outbound queue, from
    /// [`Connection::send`](crate::Connection::send) until the socket has
    /// taken all of their bytes. Default 1024; values above `u32::MAX`
    /// count as `u32::MAX`.
    pub queue_max_messages: usize,
    /// Most payload bytes waiting in one connection's outbound queue, from
    /// `send` until the socket has taken them (a single larger message
    /// still goes through an empty queue). Default 2 MiB.
    ///
    /// A message counts until its last byte is written, so a large one
    /// holds its share of the bound while it drains: keep this at least
    /// twice the largest message you send, or a message queued behind a
    /// large one on a slow link finds the queue full.
    pub queue_max_bytes: usize,
    /// What to do when the outbound queue is full. Default [`SlowConsumerPolicy::Close`].
    pub slow_consumer: SlowConsumerPolicy,
    /// Close a connection as a slow consumer (1008, its queue discarded)
    /// when its socket takes no byte for this long while output waits,
    /// whatever its queue holds. Default 30 s, longer than TCP's
    /// retransmission backoff takes to get through a short outage.
    ///
    /// Progress is seen as the kernel reports the socket writable again
    /// (once a good part of its send buffer is free) and, over TLS, in
    /// steps of the TLS layer's own buffer (up to 64 KiB): a peer must
    /// take that much per `write_timeout` to stay. While a queue past a
    /// quarter of its bounds waits for the socket, the connection's input
    /// is not read (so neither pings nor the idle timeout run): this
    /// timeout is then what ends a peer that stopped reading. With `None`,
    /// input is read on while output waits, and only the queue bounds
    /// limit a peer that does not read.
    pub write_timeout: Option<Duration>,
    /// Time allowed for the transport handshake (WebSocket upgrade) after
    /// the TCP accept. Default 10 s.
    pub handshake_timeout: Duration,
    /// Send a ping this often (transports with pings). Default 30 s.
    ///
    /// Pings and the idle timeout are checked when the server (or the
    /// client) wakes its connections, once per period: a quarter of the
    /// shortest of `ping_interval`, `idle_timeout` and their difference
    /// (7.5 s with the defaults). No connection holds a timer of its own,
    /// and one with traffic reads no clock: silence is timed from the
    /// first check that finds none, so either can come up to two periods
    /// late (see `transport::io::Keepalive`).
    pub ping_interval: Option<Duration>,
    /// Close a connection that showed no sign of life for this long.
    /// Default 90 s.
    ///
    /// On transports with pings (WebSocket) that means the peer sent
    /// nothing, no message and no pong: pings keep a silent but healthy
    /// peer answering. Raw TCP has no pings, so there a successful write to
    /// the peer counts as activity too: a peer that only reads (`nc` in a
    /// chat room) stays while messages flow to it, and a connection with no
    /// traffic either way is still closed. Writes are taken as a sign of
    /// life there because a peer that vanished is found by
    /// [`tcp_keepalive`](Self::tcp_keepalive) (or, while data is in flight,
    /// by the kernel's retransmission limit and the slow-consumer policy),
    /// not by this timeout; what it still bounds is connections nobody
    /// uses. `None` turns it off. With pings, it must be at least 1.25x
    /// `ping_interval`, so that a pong has time to come back. Checked on
    /// the same sweep as pings (see `ping_interval`): the close can come up
    /// to two sweep periods late.
    pub idle_timeout: Option<Duration>,
    /// TCP keepalive probes on every accepted socket, whatever the
    /// transport (TCP, WebSocket, TLS over either). Default
    /// `Some(TcpKeepalive::default())`: 30 s idle, then 3 probes 10 s apart,
    /// so a vanished peer is dropped within 60 s of its last traffic.
    /// `None` leaves the socket as the kernel made it.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Time allowed for flushing and the closing handshake once a close has
    /// started. Default 5 s.
    pub close_timeout: Duration,
    /// Most connections open at once (including those still in the
    /// handshake); past it new connections are accepted and dropped at once.
    /// Default 65,536.
    pub max_connections: Option<usize>,
    /// Most connections open at once from one IP address. Default: no limit.
    pub max_connections_per_ip: Option<usize>,
    /// Which peer addresses may connect. Default: everyone.
    pub ip_filter: IpFilter,
    /// Per-connection limit on inbound messages. Default: none.
    pub rate_limit: Option<RateLimit>,
    /// How long [`ServerHandle::shutdown`](crate::ServerHandle::shutdown)
    /// waits for connections to flush and close before it stops them.
    /// Default 10 s.
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_size: 1 << 20,
            max_frame_size: 1 << 20,
            queue_max_messages: 1024,
            queue_max_bytes: 2 << 20,
            slow_consumer: SlowConsumerPolicy::Close,
            write_timeout: Some(Duration::from_secs(30)),
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(30)),
            idle_timeout: Some(Duration::from_secs(90)),
            tcp_keepalive: Some(TcpKeepalive::default()),
            close_timeout: Duration::from_secs(5),
            max_connections: Some(65_536),
            max_connections_per_ip: None,
            ip_filter: IpFilter::default(),
            rate_limit: None,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Config {
    setters! {
        max_message_size: usize,
        max_frame_size: usize,
        queue_max_messages: usize,
        queue_max_bytes: usize,
        slow_consumer: SlowConsumerPolicy,
        write_timeout: Option<Duration>,
        handshake_timeout: Duration,
        ping_interval: Option<Duration>,
        idle_timeout: Option<Duration>,
        tcp_keepalive: Option<TcpKeepalive>,
        close_timeout: Duration,
        max_connections: Option<usize>,
        max_connections_per_ip: Option<usize>,
        shutdown_grace: Duration,
        ip_filter: IpFilter,
        rate_limit: Option<RateLimit>,
    }

    /// Checks that the limits make sense together.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: &str| Err(Error::Config(msg.to_owned()));
        if self.max_message_size == 0 || self.max_frame_size == 0 {
            return fail("max_message_size and max_frame_size must be at least 1");
        }
        if self.queue_max_messages == 0 || self.queue_max_bytes == 0 {
            return fail("queue_max_messages and queue_max_bytes must be at least 1");
        }
        if self.handshake_timeout.is_zero() || self.close_timeout.is_zero() {
            return fail("handshake_timeout and close_timeout must be longer than zero");
        }
        if self.ping_interval.is_some_and(|d| d.is_zero()) {
            return fail("ping_interval must be longer than zero (None disables pings)");
        }
        if let (Some(ping), Some(idle)) = (self.ping_interval, self.idle_timeout)
            && idle < ping + ping / 4
        {
            return fail(
                "idle_timeout must be at least 1.25 x ping_interval, or a healthy peer could time out before it is pinged",
            );
        }
        if self.write_timeout.is_some_and(|d| d.is_zero()) {
            return fail("write_timeout must be longer than zero (None disables it)");
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            return fail("idle_timeout must be longer than zero (None disables it)");
        }
        if let Some(k) = &self.tcp_keepalive
            && (k.idle < Duration::from_secs(1)
                || k.interval < Duration::from_secs(1)
                || k.retries == 0)
        {
            return fail(
                "tcp_keepalive needs idle and interval of at least 1 s and at least 1 retry (None disables it)",
            );
        }
        if let Some(limit) = &self.rate_limit
            && (!(limit.per_second > 0.0 && limit.per_second.is_finite()) || limit.burst == 0)
        {
            return fail(
                "rate_limit needs a finite per_second above zero and a burst of at least 1",
            );
        }
        if self.max_connections == Some(0) || self.max_connections_per_ip == Some(0) {
            return fail("connection limits must be at least 1 (None means no limit)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        Config::default()
            .validate()
            .expect("default config is valid");
        Config::default()
            .ping_interval(Some(Duration::from_secs(8)))
            .idle_timeout(Some(Duration::from_secs(10)))
            .validate()
            .expect("1.25 x the ping interval is enough");
        let secs = |n| Some(Duration::from_secs(n));
        for bad in [
            Config::default()
                .ping_interval(secs(10))
                .idle_timeout(secs(5)),
            // Too close to the ping interval for a pong to come back.
            Config::default()
                .ping_interval(secs(30))
                .idle_timeout(Some(Duration::from_millis(30_001))),
            Config::default().queue_max_messages(0),
            Config::default().tcp_keepalive(Some(TcpKeepalive::new(
                Duration::from_millis(500),
                Duration::from_secs(1),
                3,
            ))),
            Config::default().tcp_keepalive(Some(TcpKeepalive::new(
                Duration::from_secs(1),
                Duration::from_secs(1),
                0,
            ))),
        ] {
            assert!(matches!(bad.validate(), Err(Error::Config(_))), "{bad:?}");
        }
    }
}
