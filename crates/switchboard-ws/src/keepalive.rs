//! Pings for a silent peer, and the idle timeout.
//!
//! One timer per connection. Inbound traffic only records the time (no
//! timer is touched per message); when the timer fires it looks at how long
//! the peer has been silent, and pings, times out or sleeps again.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// What the timer asks the connection to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// Send a ping.
    Ping,
    /// The peer was silent past the idle timeout.
    Idle,
}

#[derive(Debug)]
pub(crate) struct Keepalive {
    ping_interval: Option<Duration>,
    idle_timeout: Option<Duration>,
    /// Last inbound traffic (message, ping, pong), or the open.
    last_seen: Instant,
    /// Last ping sent (pings wait for an interval of silence since either).
    last_ping: Instant,
    /// `None` when both settings are off.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Keepalive {
    pub(crate) fn new(ping_interval: Option<Duration>, idle_timeout: Option<Duration>) -> Self {
        let now = Instant::now();
        let mut keepalive = Keepalive {
            ping_interval,
            idle_timeout,
            last_seen: now,
            last_ping: now,
            timer: None,
        };
        if let Some(deadline) = keepalive.next_deadline() {
            keepalive.timer = Some(Box::pin(tokio::time::sleep_until(deadline)));
        }
        keepalive
    }

    /// The peer sent something.
    pub(crate) fn seen(&mut self) {
        if self.timer.is_some() {
            self.last_seen = Instant::now();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let ping = self
            .ping_interval
            .map(|i| self.last_seen.max(self.last_ping) + i);
        let idle = self.idle_timeout.map(|t| self.last_seen + t);
        match (ping, idle) {
            (Some(p), Some(i)) => Some(p.min(i)),
            (p, i) => p.or(i),
        }
    }

    /// Ready when a ping is due or the peer is idle; registers the waker
    /// otherwise.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Due> {
        loop {
            let Some(timer) = self.timer.as_mut() else {
                return Poll::Pending;
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if self.idle_timeout.is_some_and(|t| now >= self.last_seen + t) {
                return Poll::Ready(Due::Idle);
            }
            let ping_due = self
                .ping_interval
                .is_some_and(|i| now >= self.last_seen.max(self.last_ping) + i);
            if ping_due {
                self.last_ping = now;
            }
            if let (Some(deadline), Some(timer)) = (self.next_deadline(), self.timer.as_mut()) {
                timer.as_mut().reset(deadline);
            }
            if ping_due {
                return Poll::Ready(Due::Ping);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    async fn next(k: &mut Keepalive) -> (Due, Duration) {
        let start = Instant::now();
        let due = poll_fn(|cx| k.poll(cx)).await;
        (due, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn pings_then_idles() {
        let mut k = Keepalive::new(Some(Duration::from_secs(10)), Some(Duration::from_secs(25)));
        assert_eq!(next(&mut k).await, (Due::Ping, Duration::from_secs(10)));
        assert_eq!(next(&mut k).await, (Due::Ping, Duration::from_secs(10)));
        assert_eq!(next(&mut k).await, (Due::Idle, Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_postpones() {
        let mut k = Keepalive::new(Some(Duration::from_secs(10)), Some(Duration::from_secs(25)));
        tokio::time::advance(Duration::from_secs(8)).await;
        k.seen();
        // The timer fires at 10 s, sees traffic at 8 s and sleeps until 18 s.
        assert_eq!(next(&mut k).await, (Due::Ping, Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_only() {
        let mut k = Keepalive::new(None, Some(Duration::from_secs(3)));
        assert_eq!(next(&mut k).await, (Due::Idle, Duration::from_secs(3)));
        let mut off = Keepalive::new(None, None);
        assert!(off.timer.is_none());
        let waker = std::task::Waker::noop();
        assert!(off.poll(&mut Context::from_waker(waker)).is_pending());
    }
}
