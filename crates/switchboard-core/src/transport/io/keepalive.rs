//! Pings for a silent peer, and the idle timeout, checked on the sweeps
//! of the connection's server (or client).

use std::num::NonZeroU64;
use std::time::Duration;

use tokio::time::Instant;

/// What [`Keepalive::due`] asks the connection to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Send a ping (only with a ping interval).
    Ping,
    /// The peer was silent past the idle timeout.
    Idle,
}

/// A connection's idle timeout and, for protocols that have them, pings
/// after an interval of silence. It holds no timer: the server (or the
/// client) that drives the connection wakes each of its connections once
/// per [`sweep_period`](Self::sweep_period), and the woken connection asks
/// [`due`](Self::due) what to do. That is one timer per server instead of
/// one per connection (a tokio `Sleep` is 112 bytes, 128 once allocated,
/// in every idle connection).
///
/// Call [`seen`](Self::seen) after each read that brought bytes and
/// [`due`](Self::due) (the check) when the socket has nothing more to
/// read. A transport without pings also calls [`wrote`](Self::wrote)
/// after writes the socket took (see `Config::idle_timeout`). The
/// durations are the connection's `Config`'s (`ping_interval`,
/// `idle_timeout`), from which the period is taken.
///
/// A connection with traffic reads no clock: `seen` and `wrote` only note
/// it, and a check that finds a read since the check before knows that
/// nothing can be due. Silence is timed from a later check that finds
/// none, at most one period after the last traffic; with a check at least
/// once per period, a ping or an idle timeout comes up to two periods
/// late. Reading the clock at every read, write and check instead cost
/// 1.5 % of the server's CPU time in the 32-byte TCP echo (`perf record`,
/// three clock reads per batch of input).
#[derive(Debug)]
pub struct Keepalive {
    /// The ping interval and the idle timeout in nanoseconds (`None`: off),
    /// 16 bytes less than two `Option<Duration>`s in every connection.
    ping_interval: Option<NonZeroU64>,
    idle_timeout: Option<NonZeroU64>,
    /// When the peer was last seen (or the open), as far as the checks
    /// know.
    last_seen: LastSeen,
    /// Last ping sent (pings wait for an interval of silence since either).
    last_ping: Instant,
}

/// When a connection's peer was last seen. The same 16 bytes as an
/// `Instant`.
#[derive(Clone, Copy, Debug)]
enum LastSeen {
    /// At this instant: the open, or the check that stamped the last
    /// traffic.
    At(Instant),
    /// A read since the last check: the next check knows that nothing is
    /// due and reads no clock.
    SinceCheck,
    /// Traffic before the last check (or a write after it) and none
    /// since: the next check stamps it with its own time.
    BeforeCheck,
}

impl Keepalive {
    /// Pings after `ping_interval` of silence and reports the peer idle
    /// after `idle_timeout` of silence; `None` (or zero) turns either off.
    pub fn new(ping_interval: Option<Duration>, idle_timeout: Option<Duration>) -> Self {
        let now = Instant::now();
        Keepalive {
            ping_interval: nanos(ping_interval),
            idle_timeout: nanos(idle_timeout),
            last_seen: LastSeen::At(now),
            last_ping: now,
        }
    }

    /// How often the connections of a server (or a client) with these
    /// settings must be woken to ask [`due`](Self::due): a quarter of the
    /// shortest of the ping interval, the idle timeout and their
    /// difference (so that a peer answering pings is pinged before the
    /// idle timeout can be seen), at least a millisecond. `None` when
    /// both are off.
    pub fn sweep_period(
        ping_interval: Option<Duration>,
        idle_timeout: Option<Duration>,
    ) -> Option<Duration> {
        let (ping, idle) = (nanos(ping_interval), nanos(idle_timeout));
        let margin = match (ping, idle) {
            (Some(p), Some(i)) => NonZeroU64::new(i.get().saturating_sub(p.get())),
            _ => None,
        };
        let shortest = [ping, idle, margin].into_iter().flatten().min()?;
        Some(Duration::from_nanos(shortest.get() / 4).max(Duration::from_millis(1)))
    }

    /// The peer sent something. Reads no clock.
    #[inline]
    pub fn seen(&mut self) {
        self.last_seen = LastSeen::SinceCheck;
    }

    /// The socket took bytes we wrote, on a transport that counts writes
    /// as traffic (one without pings). Reads no clock. A write comes
    /// after the check of the same wake, so the next check, not the one
    /// after, must count it: it stamps it with its own time.
    #[inline]
    pub fn wrote(&mut self) {
        if !matches!(self.last_seen, LastSeen::SinceCheck) {
            self.last_seen = LastSeen::BeforeCheck;
        }
    }

    fn ping_interval(&self) -> Option<Duration> {
        self.ping_interval.map(|n| Duration::from_nanos(n.get()))
    }

    fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout.map(|n| Duration::from_nanos(n.get()))
    }

    /// What is due now: the idle timeout past `idle_timeout` of silence,
    /// else a ping past `ping_interval` of silence since the last traffic
    /// or ping (counted as sent). `None` when nothing is; always `None`
    /// when both settings are off, and without a clock read when the
    /// peer sent something since the last check.
    pub fn due(&mut self) -> Option<Due> {
        if self.ping_interval.is_none() && self.idle_timeout.is_none() {
            return None;
        }
        let last_seen = match self.last_seen {
            LastSeen::SinceCheck => {
                self.last_seen = LastSeen::BeforeCheck;
                return None;
            }
            LastSeen::BeforeCheck => {
                self.last_seen = LastSeen::At(Instant::now());
                return None;
            }
            LastSeen::At(at) => at,
        };
        let now = Instant::now();
        if self.idle_timeout().is_some_and(|t| now >= last_seen + t) {
            return Some(Due::Idle);
        }
        let ping_due = self
            .ping_interval()
            .is_some_and(|i| now >= last_seen.max(self.last_ping) + i);
        if ping_due {
            self.last_ping = now;
            return Some(Due::Ping);
        }
        None
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

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Advances the paused clock by `by` and asks what is due.
    async fn after(k: &mut Keepalive, by: Duration) -> Option<Due> {
        tokio::time::advance(by).await;
        k.due()
    }

    #[tokio::test(start_paused = true)]
    async fn pings_after_each_interval_of_silence_then_idles() {
        let mut k = Keepalive::new(Some(secs(10)), Some(secs(25)));
        assert_eq!(after(&mut k, secs(9)).await, None);
        assert_eq!(after(&mut k, secs(1)).await, Some(Due::Ping));
        // The ping counts as sent: the next one after another interval.
        assert_eq!(k.due(), None);
        assert_eq!(after(&mut k, secs(9)).await, None);
        assert_eq!(after(&mut k, secs(1)).await, Some(Due::Ping));
        assert_eq!(after(&mut k, secs(4)).await, None);
        assert_eq!(after(&mut k, secs(1)).await, Some(Due::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_postpones_what_is_due() {
        let mut k = Keepalive::new(Some(secs(10)), Some(secs(25)));
        tokio::time::advance(secs(8)).await;
        k.seen();
        // The check after the traffic; silence is timed from the next
        // check that finds none, 2 s later.
        assert_eq!(k.due(), None);
        assert_eq!(after(&mut k, secs(2)).await, None);
        assert_eq!(after(&mut k, secs(9)).await, None);
        assert_eq!(after(&mut k, secs(1)).await, Some(Due::Ping));

        let mut idle_only = Keepalive::new(None, Some(secs(3)));
        tokio::time::advance(secs(2)).await;
        idle_only.seen();
        assert_eq!(after(&mut idle_only, secs(1)).await, None);
        assert_eq!(after(&mut idle_only, secs(1)).await, None);
        assert_eq!(after(&mut idle_only, secs(2)).await, None);
        assert_eq!(after(&mut idle_only, secs(1)).await, Some(Due::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_counts_from_the_check_that_stamps_it() {
        // Long past the idle timeout since the open, the peer sends: the
        // check after it finds the read (no clock read), the next one
        // stamps it. The bounds assume a check at least once per period;
        // here the second comes 10 s later and counts from then.
        let mut k = Keepalive::new(Some(secs(1)), Some(secs(3)));
        tokio::time::advance(secs(10)).await;
        k.seen();
        assert_eq!(k.due(), None);
        assert_eq!(after(&mut k, secs(10)).await, None);
        // A ping after an interval, the idle timeout after three.
        assert_eq!(after(&mut k, secs(1)).await, Some(Due::Ping));
        assert_eq!(after(&mut k, secs(2)).await, Some(Due::Idle));
        // Kept in an `Instant`'s own 16 bytes.
        assert_eq!(size_of::<LastSeen>(), size_of::<Instant>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_after_the_check_is_stamped_by_the_next_one() {
        // Raw TCP: no pings, writes count. The write comes after the
        // wake's check; the next check (a period later) stamps it.
        let mut k = Keepalive::new(None, Some(secs(4)));
        tokio::time::advance(secs(3)).await;
        assert_eq!(k.due(), None);
        k.wrote();
        assert_eq!(after(&mut k, secs(1)).await, None);
        // Idle 4 s after that stamp (t = 4), not after the open.
        assert_eq!(after(&mut k, secs(3)).await, None);
        assert_eq!(after(&mut k, secs(1)).await, Some(Due::Idle));

        // A write does not undo a read the next check has yet to see:
        // that check passes (t = 5), the one after stamps (t = 7).
        let mut k = Keepalive::new(None, Some(secs(4)));
        tokio::time::advance(secs(5)).await;
        k.seen();
        k.wrote();
        assert_eq!(k.due(), None);
        assert_eq!(after(&mut k, secs(2)).await, None);
        assert_eq!(after(&mut k, secs(3)).await, None);
        assert_eq!(after(&mut k, secs(1)).await, Some(Due::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn off_is_never_due_and_needs_no_sweep() {
        for mut off in [
            Keepalive::new(None, None),
            Keepalive::new(Some(Duration::ZERO), Some(Duration::ZERO)),
        ] {
            assert_eq!(after(&mut off, secs(3600)).await, None);
        }
        assert_eq!(Keepalive::sweep_period(None, None), None);
        assert_eq!(Keepalive::sweep_period(Some(Duration::ZERO), None), None);
    }

    #[test]
    fn the_sweep_is_a_quarter_of_the_shortest_setting() {
        let ms = Duration::from_millis;
        assert_eq!(
            Keepalive::sweep_period(Some(secs(30)), Some(secs(90))),
            Some(ms(7_500))
        );
        assert_eq!(Keepalive::sweep_period(None, Some(secs(1))), Some(ms(250)));
        assert_eq!(Keepalive::sweep_period(Some(secs(8)), None), Some(secs(2)));
        // Pinged before the idle timeout can be seen: a quarter of 1 s.
        assert_eq!(
            Keepalive::sweep_period(Some(secs(30)), Some(secs(31))),
            Some(ms(250))
        );
        assert_eq!(Keepalive::sweep_period(Some(ms(2)), None), Some(ms(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn durations_keep_their_nanoseconds_and_saturate() {
        let mut k = Keepalive::new(Some(Duration::new(1, 1)), Some(Duration::MAX));
        assert_eq!(k.ping_interval(), Some(Duration::new(1, 1)));
        assert_eq!(k.idle_timeout(), Some(Duration::from_nanos(u64::MAX)));
        // 584 years from now: a deadline, not an overflow.
        assert_eq!(after(&mut k, secs(1)).await, None);
        assert_eq!(
            after(&mut k, Duration::from_nanos(1)).await,
            Some(Due::Ping)
        );
    }
}
