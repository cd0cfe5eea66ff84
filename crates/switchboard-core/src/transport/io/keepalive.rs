//! Pings for a silent peer, and the idle timeout.

use std::future::Future;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// What the [`Keepalive`] timer asks the connection to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Send a ping (only with a ping interval).
    Ping,
    /// The peer was silent past the idle timeout.
    Idle,
}

/// A connection's idle timeout and, for protocols that have them, pings
/// after an interval of silence, on one timer: when it fires it looks at
/// how long the peer has been silent, and pings, times out or sleeps again.
///
/// Call [`seen`](Self::seen) after each read that brought bytes (one clock
/// read, no timer operation) and [`poll`](Self::poll) when the socket has
/// nothing more to read. A transport without pings calls `seen` after
/// successful writes too (see `Config::idle_timeout`). The timer is
/// created on the first `poll`, so a connection can be built outside a
/// runtime.
#[derive(Debug)]
pub struct Keepalive {
    /// The ping interval and the idle timeout in nanoseconds (`None`: off),
    /// 16 bytes less than two `Option<Duration>`s in every connection.
    ping_interval: Option<NonZeroU64>,
    idle_timeout: Option<NonZeroU64>,
    /// Last inbound traffic (or write, where the transport counts them),
    /// or the open.
    last_seen: Instant,
    /// Last ping sent (pings wait for an interval of silence since either).
    last_ping: Instant,
    /// Created on the first poll; never while both settings are off.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Keepalive {
    /// A timer that pings after `ping_interval` of silence and reports the
    /// peer idle after `idle_timeout` of silence; `None` (or zero, which
    /// would fire without end) turns either off.
    pub fn new(ping_interval: Option<Duration>, idle_timeout: Option<Duration>) -> Self {
        let now = Instant::now();
        Keepalive {
            ping_interval: nanos(ping_interval),
            idle_timeout: nanos(idle_timeout),
            last_seen: now,
            last_ping: now,
            timer: None,
        }
    }

    /// The peer sent something (or, on a transport without pings, took
    /// something we wrote).
    #[inline]
    pub fn seen(&mut self) {
        if self.ping_interval.is_some() || self.idle_timeout.is_some() {
            self.last_seen = Instant::now();
        }
    }

    fn ping_interval(&self) -> Option<Duration> {
        self.ping_interval.map(|n| Duration::from_nanos(n.get()))
    }

    fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout.map(|n| Duration::from_nanos(n.get()))
    }

    fn next_deadline(&self) -> Option<Instant> {
        let ping = self
            .ping_interval()
            .map(|i| self.last_seen.max(self.last_ping) + i);
        let idle = self.idle_timeout().map(|t| self.last_seen + t);
        ping.into_iter().chain(idle).min()
    }

    /// Ready when a ping is due or the peer is idle; registers the waker
    /// otherwise. Never ready when both settings are off.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Due> {
        if self.timer.is_none() {
            let Some(deadline) = self.next_deadline() else {
                return Poll::Pending;
            };
            self.timer = Some(Box::pin(tokio::time::sleep_until(deadline)));
        }
        while let Some(timer) = self.timer.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            let now = Instant::now();
            if self
                .idle_timeout()
                .is_some_and(|t| now >= self.last_seen + t)
            {
                return Poll::Ready(Due::Idle);
            }
            let ping_due = self
                .ping_interval()
                .is_some_and(|i| now >= self.last_seen.max(self.last_ping) + i);
            if ping_due {
                self.last_ping = now;
            }
            if let (Some(next), Some(timer)) = (self.next_deadline(), self.timer.as_mut()) {
                timer.as_mut().reset(next);
            }
            if ping_due {
                return Poll::Ready(Due::Ping);
            }
        }
        Poll::Pending
    }
}

/// A duration in nanoseconds, `None` for `None` or zero (saturating past
/// 584 years).
fn nanos(duration: Option<Duration>) -> Option<NonZeroU64> {
    NonZeroU64::new(u64::try_from(duration?.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Waker;

    async fn next(k: &mut Keepalive) -> (Due, Duration) {
        let start = Instant::now();
        let due = poll_fn(|cx| k.poll(cx)).await;
        (due, start.elapsed())
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn pings_then_idles() {
        let mut k = Keepalive::new(Some(secs(10)), Some(secs(25)));
        assert_eq!(next(&mut k).await, (Due::Ping, secs(10)));
        assert_eq!(next(&mut k).await, (Due::Ping, secs(10)));
        assert_eq!(next(&mut k).await, (Due::Idle, secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_postpones_what_is_due() {
        // (ping interval, idle timeout, traffic after, then due, how long after)
        for (ping, idle, traffic, due, after) in [
            // Fires at 10 s, sees the traffic at 8 s and sleeps until 18 s.
            (Some(10), 25, 8, Due::Ping, 10),
            // Fires at 3 s, sees the traffic at 2 s and sleeps until 5 s.
            (None, 3, 2, Due::Idle, 3),
        ] {
            let mut k = Keepalive::new(ping.map(secs), Some(secs(idle)));
            assert!(k.poll(&mut Context::from_waker(Waker::noop())).is_pending());
            tokio::time::advance(secs(traffic)).await;
            k.seen();
            assert_eq!(next(&mut k).await, (due, secs(after)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn off_never_fires_and_holds_no_timer() {
        let waker = Waker::noop();
        for mut off in [
            Keepalive::new(None, None),
            Keepalive::new(Some(Duration::ZERO), Some(Duration::ZERO)),
        ] {
            assert!(off.poll(&mut Context::from_waker(waker)).is_pending());
            assert!(off.timer.is_none());
            tokio::time::advance(secs(3600)).await;
            assert!(off.poll(&mut Context::from_waker(waker)).is_pending());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn durations_keep_their_nanoseconds_and_saturate() {
        let k = Keepalive::new(Some(Duration::new(1, 1)), Some(Duration::MAX));
        assert_eq!(k.ping_interval(), Some(Duration::new(1, 1)));
        assert_eq!(k.idle_timeout(), Some(Duration::from_nanos(u64::MAX)));
        // 584 years from now: a deadline, not an overflow.
        assert!(k.next_deadline().is_some());
    }
}
