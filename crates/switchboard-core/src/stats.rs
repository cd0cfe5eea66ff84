//! Server counters, updated with relaxed atomics and read as a snapshot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Declares the live counters ([`Stats`], by their short internal names)
/// and their snapshot ([`Counters`], by their public names) from one list.
macro_rules! counters {
    ($($(#[$doc:meta])* $public:ident: $field:ident,)*) => {
        /// Live counters of one server (or test server). Read them with
        /// [`ServerHandle::stats`](crate::ServerHandle::stats).
        #[derive(Debug, Default)]
        pub(crate) struct Stats {
            $(pub(crate) $field: AtomicU64,)*
        }

        impl Stats {
            pub(crate) fn snapshot(&self) -> Counters {
                Counters {
                    $($public: self.$field.load(Relaxed),)*
                }
            }
        }

        /// A snapshot of a server's counters.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Counters {
            $($(#[$doc])* pub $public: u64,)*
        }
    };
}

counters! {
    /// Connections open now (past the handshake, before `on_close` returned).
    open_connections: open,
    /// Connections opened since the start.
    connections_total: opened_total,
    /// Connections refused by `max_connections` / `max_connections_per_ip`.
    connections_rejected: rejected,
    /// Connections refused by [`Config::ip_filter`](crate::Config::ip_filter).
    connections_denied: denied,
    /// Inbound messages over [`Config::rate_limit`](crate::Config::rate_limit)
    /// (dropped, or the one that closed its connection).
    rate_limited: rate_limited,
    /// Handshakes that failed or timed out.
    handshake_failures: handshake_failures,
    /// Failed `accept` calls (survived).
    accept_errors: accept_errors,
    /// Messages received from peers.
    messages_in: messages_in,
    /// Payload bytes received from peers.
    bytes_in: bytes_in,
    /// Messages handed to the transport for writing.
    messages_out: messages_out,
    /// Payload bytes handed to the transport for writing.
    bytes_out: bytes_out,
    /// Messages refused because a queue was full (`Drop` policy), or
    /// discarded by a connection closed as a slow consumer: the message
    /// that found the queue full and every message queued and not yet
    /// handed to the transport.
    dropped: dropped,
    /// Connections closed by the `Close` slow-consumer policy.
    slow_consumer_closes: slow_consumer_closes,
    /// Messages refused by [`Connection::send`](crate::Connection::send)
    /// because the connection's transport cannot carry them as one message
    /// ([`SendError::Invalid`](crate::SendError::Invalid): a line break in a
    /// message to a TCP lines peer, say). Hub deliveries count here too.
    invalid_sends: invalid_sends,
    /// Panics caught, each one: of handlers, and of transports and codecs
    /// (one that panics again while its connection closes counts twice).
    panics: panics,
}

impl Stats {
    #[inline]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}
