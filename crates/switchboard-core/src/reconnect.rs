//! Reconnecting clients: a connect function, a component and a backoff policy.
//!
//! The machinery is transport-neutral: it needs only "make a new
//! connection" ([`Dialed`]) and the component.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::client::{ClientHandle, start_client};
use crate::component::MessageComponent;
use crate::config::Config;
use crate::error::{BoxError, Result, SendError};
use crate::extensions::Extensions;
use crate::message::Message;
use crate::transport::{TransportConn, TransportInfo};

/// When to try again after a connection ended or an attempt failed:
/// exponential backoff from `initial` up to `max`, with random jitter, for
/// ever or up to `max_attempts` failed attempts in a row.
///
/// The delay after *n + 1* failed attempts in a row (and, for *n* = 0,
/// after a connection ended) is `min(max, initial × factor^n)`, less a random
/// fraction of up to `jitter` of it, so many clients of a restarted server
/// do not all come back in the same millisecond. It never exceeds `max`.
///
/// ```
/// use std::time::Duration;
/// use switchboard::ReconnectPolicy;
///
/// let policy = ReconnectPolicy::default()
///     .initial(Duration::from_millis(50))
///     .max(Duration::from_secs(5))
///     .max_attempts(Some(20));
/// assert!(policy.delay(10) <= Duration::from_secs(5));
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// The first delay (default 100 ms).
    pub initial: Duration,
    /// The cap on any delay (default 30 s).
    pub max: Duration,
    /// Growth per failed attempt (default 2.0; at least 1.0).
    pub factor: f64,
    /// Up to this fraction of each delay is taken off at random (default
    /// 0.5; 0.0 to 1.0).
    pub jitter: f64,
    /// Give up after this many failed attempts in a row (default `None`:
    /// never). A connection that opened resets the count.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            factor: 2.0,
            jitter: 0.5,
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    setters! {
        initial: Duration,
        max: Duration,
        factor: f64,
        jitter: f64,
        max_attempts: Option<u32>,
    }

    /// The delay before the next attempt after `failures` failed attempts
    /// in a row, jitter included. At most [`max`](Self::max).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = if self.factor.is_finite() {
            self.factor.max(1.0)
        } else {
            1.0
        };
        let max = self.max.as_secs_f64();
        let exp = i32::try_from(failures).unwrap_or(i32::MAX);
        let base = (self.initial.as_secs_f64() * factor.powi(exp)).min(max);
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let delay = base * (1.0 - jitter * random_unit());
        // `base` is finite and within 0..=max here.
        Duration::try_from_secs_f64(delay.clamp(0.0, max)).unwrap_or(self.max)
    }
}

/// A random number in `0.0..1.0`, from the standard library's per-instance
/// random hasher keys (no dependency, no shared state).
fn random_unit() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u8(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// One established client-side connection, as a connect function returns
/// it to [`spawn_reconnecting`].
#[derive(Debug)]
pub struct Dialed<C> {
    /// The connection, past its handshake.
    pub conn: C,
    /// The server's address.
    pub peer: SocketAddr,
    /// What the component sees in [`Connection::transport`](crate::Connection::transport).
    pub info: TransportInfo,
}

impl<C> Dialed<C> {
    /// Bundles the parts.
    pub fn new(conn: C, peer: SocketAddr, info: TransportInfo) -> Self {
        Dialed { conn, peer, info }
    }
}

/// What every connection of a reconnecting client carries in its
/// extensions: which connection this is and how to stop reconnecting.
///
/// ```
/// use switchboard::{BoxError, Connection, Message, MessageComponent, Reconnect};
///
/// struct Feed;
///
/// impl MessageComponent for Feed {
///     async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
///         if conn.extension::<Reconnect>().is_some_and(|r| r.is_reconnect()) {
///             conn.send("resume")?; // ask for what was missed
///         }
///         Ok(())
///     }
///
///     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
///         if msg.as_text() == Some("bye") {
///             // No more reconnecting: this connection is the last one.
///             if let Some(r) = conn.extension::<Reconnect>() {
///                 r.stop();
///             }
///         }
///         Ok(())
///     }
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Reconnect {
    connection: u64,
    attempt: u32,
    stop: CancellationToken,
}

impl Reconnect {
    /// Which connection of this client this is: 1 for the first.
    pub fn connection(&self) -> u64 {
        self.connection
    }

    /// Whether an earlier connection of this client was open before.
    pub fn is_reconnect(&self) -> bool {
        self.connection > 1
    }

    /// How many attempts this connection took (1: the first one succeeded).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Stops reconnecting and closes this connection normally; the same as
    /// [`Reconnecting::stop`].
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Why a reconnecting client ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReconnectEnd {
    /// [`Reconnecting::stop`] or [`Reconnect::stop`] was called.
    Stopped,
    /// [`ReconnectPolicy::max_attempts`] attempts in a row failed; the last
    /// error.
    GaveUp(String),
}

impl fmt::Display for ReconnectEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReconnectEnd::Stopped => f.write_str("stopped"),
            ReconnectEnd::GaveUp(err) => write!(f, "gave up reconnecting: {err}"),
        }
    }
}

#[derive(Clone, Default)]
struct State {
    current: Option<ClientHandle>,
    connections: u64,
    end: Option<ReconnectEnd>,
}

/// Runs `component` over connections made by `connect`, one after the
/// other: when a connection ends (the server went away, closed it, or it
/// broke), `connect` is called again after the policy's delay. Each
/// connection has its own lifecycle (`on_open` … `on_close`) and carries a
/// [`Reconnect`] in its extensions. Failed attempts are logged and retried
/// with exponential backoff; [`Config::handshake_timeout`] bounds each.
///
/// Returns at once; the first attempt runs in the background (see
/// [`Reconnecting::connected`]). Must be called within a tokio runtime.
/// Transport crates wrap this: `ws::Client::reconnecting`,
/// `tcp::Client::reconnecting`.
pub fn spawn_reconnecting<F, Fut, C, K>(
    mut connect: F,
    component: Arc<K>,
    config: Config,
    policy: ReconnectPolicy,
) -> Result<Reconnecting>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<Dialed<C>, BoxError>> + Send + 'static,
    C: TransportConn,
    K: MessageComponent + ?Sized,
{
    config.validate()?;
    let stop = CancellationToken::new();
    let (tx, rx) = watch::channel(State::default());
    let task_stop = stop.clone();
    tokio::spawn(async move {
        let stop = task_stop;
        let end = async {
            let mut connections = 0u64;
            let mut failures = 0u32;
            loop {
                let attempt = tokio::time::timeout(config.handshake_timeout, connect());
                let dialed = tokio::select! {
                    () = stop.cancelled() => return ReconnectEnd::Stopped,
                    res = attempt => res,
                };
                let error = match dialed {
                    Ok(Ok(Dialed { conn, peer, info })) => {
                        connections += 1;
                        let mut extensions = Extensions::default();
                        extensions.insert(Reconnect {
                            connection: connections,
                            attempt: failures + 1,
                            stop: stop.clone(),
                        });
                        failures = 0;
                        let (component, config) = (component.clone(), config.clone());
                        let handle = start_client(conn, peer, info, extensions, component, config);
                        tx.send_modify(|state| {
                            state.current = Some(handle.clone());
                            state.connections = connections;
                        });
                        let reason = tokio::select! {
                            () = stop.cancelled() => {
                                handle.close();
                                handle.closed().await;
                                return ReconnectEnd::Stopped;
                            }
                            reason = handle.closed() => reason,
                        };
                        tx.send_modify(|state| state.current = None);
                        tracing::info!(%peer, %reason, "connection ended; reconnecting");
                        None
                    }
                    Ok(Err(err)) => Some(err.to_string()),
                    Err(_) => Some(format!(
                        "no connection within {:?} (handshake_timeout)",
                        config.handshake_timeout
                    )),
                };
                if let Some(error) = error {
                    failures = failures.saturating_add(1);
                    if policy.max_attempts.is_some_and(|max| failures >= max) {
                        return ReconnectEnd::GaveUp(error);
                    }
                    tracing::warn!(%error, attempt = failures, "connect failed; retrying");
                }
                // After a connection ended: the first delay; after n failures
                // in a row: delay(n - 1).
                let delay = policy.delay(failures.saturating_sub(1));
                tokio::select! {
                    () = stop.cancelled() => return ReconnectEnd::Stopped,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
        .await;
        tracing::debug!(%end, "reconnecting client ended");
        tx.send_modify(|state| {
            state.current = None;
            state.end = Some(end);
        });
    });
    Ok(Reconnecting { state: rx, stop })
}

/// A reconnecting client: send on the current connection, wait for one,
/// stop. Cheap to clone; dropping it does not stop the client (call
/// [`stop`](Self::stop)).
#[derive(Clone)]
pub struct Reconnecting {
    state: watch::Receiver<State>,
    stop: CancellationToken,
}

impl Reconnecting {
    /// The open connection, if there is one now.
    pub fn current(&self) -> Option<ClientHandle> {
        self.state.borrow().current.clone()
    }

    /// How many connections opened so far.
    pub fn connections(&self) -> u64 {
        self.state.borrow().connections
    }

    /// Queues a message on the current connection; without one it is
    /// handed back in [`SendError::Closed`].
    pub fn send(&self, msg: impl Into<Message>) -> std::result::Result<(), SendError> {
        match self.current() {
            Some(handle) => handle.send(msg),
            None => Err(SendError::Closed(msg.into())),
        }
    }

    /// Waits until a connection is open and returns it; `None` once the
    /// client has ended.
    pub async fn connected(&self) -> Option<ClientHandle> {
        self.wait(|state| state.current.is_some() || state.end.is_some())
            .await
            .current
    }

    /// Waits until the `n`-th connection (1 for the first) has opened and
    /// returns it if it is still open; `None` once the client has ended.
    pub async fn connection(&self, n: u64) -> Option<ClientHandle> {
        self.wait(|state| state.connections >= n || state.end.is_some())
            .await
            .current
    }

    /// Stops reconnecting and closes the current connection normally
    /// (its `on_close` runs). [`finished`](Self::finished) tells when done.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits until the client has ended (after the last `on_close`).
    pub async fn finished(&self) -> ReconnectEnd {
        self.wait(|state| state.end.is_some())
            .await
            .end
            .unwrap_or(ReconnectEnd::Stopped)
    }

    /// Whether the client has ended.
    pub fn is_finished(&self) -> bool {
        self.state.borrow().end.is_some()
    }

    async fn wait(&self, done: impl Fn(&State) -> bool) -> State {
        let mut rx = self.state.clone();
        let found = rx.wait_for(done).await.map(|state| state.clone());
        // The task is gone (its runtime shut down): report it ended.
        found.unwrap_or_else(|_| State {
            end: Some(ReconnectEnd::Stopped),
            ..rx.borrow().clone()
        })
    }
}

impl fmt::Debug for Reconnecting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.borrow();
        f.debug_struct("Reconnecting")
            .field("connections", &state.connections)
            .field("connected", &state.current.is_some())
            .field("end", &state.end)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_under_the_cap_and_jitter_within_its_fraction() {
        let policy = ReconnectPolicy::default()
            .initial(Duration::from_millis(100))
            .max(Duration::from_secs(2))
            .jitter(0.0);
        for (failures, ms) in [(0, 100), (1, 200), (3, 800), (10, 2000), (u32::MAX, 2000)] {
            assert_eq!(policy.delay(failures), Duration::from_millis(ms));
        }
        // Half of the delay at most is taken off, and not always the same.
        let second = Duration::from_secs(1);
        let policy = policy.initial(second).max(second).jitter(0.5);
        let delays: Vec<Duration> = (0..200).map(|_| policy.delay(4)).collect();
        let range = Duration::from_millis(500)..=second;
        assert!(delays.iter().all(|d| range.contains(d)));
        assert!(delays.iter().any(|d| *d != delays[0]));
    }

    #[test]
    fn odd_settings_do_not_panic() {
        let policy = ReconnectPolicy::default()
            .factor(f64::NAN)
            .jitter(f64::INFINITY)
            .initial(Duration::MAX);
        assert!(policy.delay(3) <= policy.max);
    }
}
