//! The publishing link: one multiplexed connection, replaced by a watchdog
//! whenever it fails, so that a publish never waits for a reconnect.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use tokio::sync::Notify;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::broker::Status;
use crate::error::{Error, Result, bounded};
use crate::options::RedisOptions;

/// Counters shared by the links of one broker or emitter.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) published: AtomicU64,
    pub(crate) publish_errors: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) reconnects: AtomicU64,
}

impl Stats {
    /// The counters, with what the links say.
    pub(crate) fn status(&self, connected: bool, rooms: usize) -> Status {
        Status {
            connected,
            rooms,
            published: self.published.load(Relaxed),
            publish_errors: self.publish_errors.load(Relaxed),
            received: self.received.load(Relaxed),
            invalid: self.invalid.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
        }
    }
}

pub(crate) struct Publisher {
    pub(crate) client: Client,
    config: AsyncConnectionConfig,
    options: RedisOptions,
    /// The live connection, or `None` while the watchdog reconnects. A
    /// std mutex: it is held only to clone or replace the handle, never
    /// across an `.await`.
    link: Mutex<Link>,
    /// Wakes the watchdog to check the link now, instead of at its next
    /// ping or the end of its backoff: a publish broke the link, or the
    /// subscription link is back (so Redis probably is).
    pub(crate) broken: Notify,
    /// The counters of the broker or emitter this link belongs to.
    pub(crate) stats: Arc<Stats>,
}

#[derive(Default)]
struct Link {
    conn: Option<MultiplexedConnection>,
    /// Bumped at each new connection, so that a failure seen on an old
    /// connection does not drop its replacement.
    generation: u64,
}

impl Publisher {
    /// Checks `options` and connects to `url` once, for a broker's or an
    /// emitter's start-up: fails if Redis cannot be reached within the
    /// timeout.
    pub(crate) async fn connect(url: &str, options: &RedisOptions) -> Result<Arc<Self>> {
        options.validate()?;
        let client = Client::open(url).map_err(|e| Error::invalid_url(url, e))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout));
        let publisher = Publisher {
            client,
            config,
            options: options.clone(),
            link: Mutex::default(),
            broken: Notify::new(),
            stats: Arc::default(),
        };
        publisher
            .open()
            .await
            .map_err(|err| err.connecting_to(url))?;
        Ok(Arc::new(publisher))
    }

    /// Whether the link is up (as far as the last command or ping knows).
    pub(crate) fn is_up(&self) -> bool {
        self.lock().conn.is_some()
    }

    /// `PUBLISH channel payload`: how many subscriber connections received
    /// it. Fails at once while the link is down, and within the timeout
    /// otherwise.
    pub(crate) async fn publish(&self, channel: &str, payload: &[u8]) -> Result<usize> {
        let result = self.publish_inner(channel, payload).await;
        match &result {
            Ok(_) => self.stats.published.fetch_add(1, Relaxed),
            Err(_) => self.stats.publish_errors.fetch_add(1, Relaxed),
        };
        result
    }

    async fn publish_inner(&self, channel: &str, payload: &[u8]) -> Result<usize> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload);
        self.run("PUBLISH", |mut conn| async move {
            cmd.query_async::<usize>(&mut conn).await
        })
        .await
    }

    /// Runs one script (presence, history) on the link, with the same
    /// failure handling as a publish.
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        self.run(operation, |mut conn| async move {
            script.invoke_async::<T>(&mut conn).await
        })
        .await
    }

    /// Runs one command on the link, with the same failure handling as a
    /// publish.
    pub(crate) async fn command<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        cmd: redis::Cmd,
    ) -> Result<T> {
        self.run(operation, |mut conn| async move {
            cmd.query_async::<T>(&mut conn).await
        })
        .await
    }

    /// Runs `query` on the live connection: fails at once while the link
    /// is down, and within the timeout otherwise.
    async fn run<T, F, Fut>(&self, operation: &'static str, query: F) -> Result<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let Some((generation, conn)) = self.current() else {
            let down = "not connected to redis (reconnecting in the background)";
            return Err(Error::unavailable(down));
        };
        let timed_out = Error::Timeout {
            operation,
            after: self.options.timeout,
        };
        match timeout(self.options.timeout, query(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                // After I/O errors (response timeouts included, which
                // redis-rs reports as such but does not treat as fatal) and
                // protocol corruption the connection cannot be trusted; a
                // server error reply (`ERR`, `NOPERM`) leaves it usable.
                if err.is_io_error() || err.is_unrecoverable_error() || err.is_timeout() {
                    self.drop_link(generation, &err);
                }
                // redis-rs's own response timeout is set to the same value.
                Err(if err.is_timeout() {
                    timed_out
                } else {
                    Error::unavailable(err)
                })
            }
            Err(_) => {
                self.drop_link(generation, &format_args!("no answer to {operation}"));
                Err(timed_out)
            }
        }
    }

    /// Keeps the link alive for as long as `stop` is not cancelled: pings
    /// it while it is up, reconnects with capped exponential backoff while
    /// it is down. It never gives up.
    pub(crate) async fn watchdog(&self, stop: &CancellationToken) {
        let mut backoff = self.options.reconnect_min;
        loop {
            match self.current() {
                Some((generation, mut conn)) => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = self.broken.notified() => continue,
                        _ = sleep(self.options.ping_interval) => {}
                    }
                    let cmd = redis::cmd("PING");
                    let ping = cmd.query_async::<String>(&mut conn);
                    match timeout(self.options.timeout, ping).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(err)) => self.drop_link(generation, &err),
                        Err(_) => self.drop_link(generation, &"no answer to PING"),
                    }
                }
                None => {
                    let attempt = tokio::select! {
                        _ = stop.cancelled() => return,
                        attempt = self.open() => attempt,
                    };
                    match attempt {
                        Ok(()) => {
                            self.stats.reconnects.fetch_add(1, Relaxed);
                            tracing::info!("redis publish link re-established");
                            backoff = self.options.reconnect_min;
                        }
                        Err(err) => {
                            tracing::debug!(error = %err, ?backoff, "redis publish link: reconnect failed");
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                _ = self.broken.notified() => {}
                                _ = sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(self.options.reconnect_max);
                        }
                    }
                }
            }
        }
    }

    /// The live connection and its generation, if the link is up.
    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        let link = self.lock();
        link.conn.clone().map(|conn| (link.generation, conn))
    }

    /// Connects and makes the new connection the link.
    async fn open(&self) -> Result<()> {
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config);
        let conn = bounded("CONNECT", self.options.timeout, connect).await?;
        let mut link = self.lock();
        link.generation += 1;
        link.conn = Some(conn);
        Ok(())
    }

    fn drop_link(&self, generation: u64, why: &dyn std::fmt::Display) {
        let mut link = self.lock();
        if link.generation == generation && link.conn.take().is_some() {
            tracing::warn!(error = %why, "redis publish link lost; reconnecting");
            drop(link);
            self.broken.notify_one();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Link> {
        // Nothing panics while holding it; a poisoned lock still guards a
        // whole value.
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }
}
