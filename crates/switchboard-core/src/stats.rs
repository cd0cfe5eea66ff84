//! Server counters, updated with relaxed atomics and read as a snapshot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters of one server (or test server). Read them with
/// [`ServerHandle::stats`](crate::ServerHandle::stats).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) open: AtomicU64,
    pub(crate) opened_total: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) denied: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) slow_consumer_closes: AtomicU64,
    pub(crate) panics: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Counters {
        Counters {
            open_connections: self.open.load(Relaxed),
            connections_total: self.opened_total.load(Relaxed),
            connections_rejected: self.rejected.load(Relaxed),
            connections_denied: self.denied.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            handshake_failures: self.handshake_failures.load(Relaxed),
            accept_errors: self.accept_errors.load(Relaxed),
            messages_in: self.messages_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            messages_out: self.messages_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            slow_consumer_closes: self.slow_consumer_closes.load(Relaxed),
            panics: self.panics.load(Relaxed),
        }
    }
}

/// A snapshot of a server's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Connections open now (past the handshake, before `on_close` returned).
    pub open_connections: u64,
    /// Connections opened since the start.
    pub connections_total: u64,
    /// Connections refused by `max_connections` / `max_connections_per_ip`.
    pub connections_rejected: u64,
    /// Connections refused by [`Config::ip_filter`](crate::Config::ip_filter).
    pub connections_denied: u64,
    /// Inbound messages over [`Config::rate_limit`](crate::Config::rate_limit)
    /// (dropped, or the one that closed its connection).
    pub rate_limited: u64,
    /// Handshakes that failed or timed out.
    pub handshake_failures: u64,
    /// Failed `accept` calls (survived).
    pub accept_errors: u64,
    /// Messages received from peers.
    pub messages_in: u64,
    /// Payload bytes received from peers.
    pub bytes_in: u64,
    /// Messages handed to the transport for writing.
    pub messages_out: u64,
    /// Payload bytes handed to the transport for writing.
    pub bytes_out: u64,
    /// Messages refused because a queue was full (`Drop` policy), or
    /// discarded from the queue of a connection closed as a slow consumer.
    pub dropped: u64,
    /// Connections closed by the `Close` slow-consumer policy.
    pub slow_consumer_closes: u64,
    /// Handler panics caught.
    pub panics: u64,
}
