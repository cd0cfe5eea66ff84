//! The server runtime: listeners, limits, the connection registry and shutdown.

mod driver;
mod listener;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::Either;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use crate::close::{CloseCode, CloseReason};
use crate::component::MessageComponent;
use crate::config::Config;
use crate::connection::{Connection, ConnectionId};
use crate::error::{Error, Result};
use crate::extensions::Extensions;
use crate::outbox::{Bounds, CloseRequest};
use crate::stats::{Counters, Stats};
use crate::transport::io::Keepalive;
use crate::transport::{Accepted, OutboundCheck, Transport, TransportConn, TransportInfo};

/// State shared by a server's listeners and connections.
#[derive(Default)]
pub(crate) struct Context {
    pub(crate) config: Config,
    /// The outbound queue's bounds, shared by every connection's outbox.
    pub(crate) bounds: Arc<Bounds>,
    pub(crate) stats: Stats,
    /// Every connection past its handshake, for shutdown to close.
    registry: Mutex<HashMap<ConnectionId, Connection>>,
    /// Set once shutdown began: connections registering afterwards are
    /// closed at once.
    shutting_down: AtomicBool,
    /// Cancelled at shutdown: accept loops and handshakes stop.
    stopping: CancellationToken,
    /// Tracks connection tasks (handshake included), so shutdown can wait.
    pub(crate) tracker: TaskTracker,
    /// Admitted connections, handshakes included (for `max_connections`).
    admitted: AtomicUsize,
    /// Admitted connections per peer IP (only when a per-IP limit is set).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Context {
    pub(crate) fn new(config: Config) -> Arc<Self> {
        Arc::new(Context {
            bounds: Arc::new(Bounds::new(&config)),
            config,
            ..Context::default()
        })
    }

    /// Wakes every connection once per keepalive period
    /// ([`Keepalive::sweep_period`]), for each to ask its keepalive what is
    /// due: one timer for the pings and idle timeouts of all of them,
    /// rather than one per connection. Holds the context weakly: ends when
    /// the server stops or nothing else holds it any more (a client's task
    /// drops it when its connection ends); at once when both settings are
    /// off.
    pub(crate) fn sweep(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let period = Keepalive::sweep_period(self.config.ping_interval, self.config.idle_timeout);
        let (ctx, stopping) = (Arc::downgrade(self), self.stopping.clone());
        async move {
            let Some(period) = period else {
                return;
            };
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            // The first tick completes at once.
            ticks.tick().await;
            loop {
                tokio::select! {
                    () = stopping.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let Some(ctx) = ctx.upgrade() else {
                    return;
                };
                // The registry's lock only while the handles are cloned;
                // each connection's outbox is locked after it is released.
                let conns: Vec<Connection> = ctx.registry().values().cloned().collect();
                drop(ctx);
                for conn in conns {
                    if let Some(waker) = conn.outbox().take_waker() {
                        waker.wake();
                    }
                }
            }
        }
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<ConnectionId, Connection>> {
        // Map operations do not panic midway; poisoning cannot tear the map.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates and registers the handle of an established connection.
    pub(crate) fn open(
        self: &Arc<Self>,
        peer: SocketAddr,
        info: TransportInfo,
        extensions: Extensions,
        check: Option<OutboundCheck>,
    ) -> Connection {
        let conn = Connection::new(peer, info, extensions, check, self.clone());
        let mut registry = self.registry();
        registry.insert(conn.id(), conn.clone());
        if self.shutting_down.load(Ordering::Acquire) {
            conn.begin_close(shutdown_request());
        }
        conn
    }

    /// Drives an opened connection from `on_open` to `on_close`, then
    /// gives back its `place` (a server's connection has one, a client's
    /// none).
    ///
    /// Not an `async fn`: an `async fn` layer would keep its own copy of
    /// its arguments (the transport connection) for the connection's whole
    /// life, and idle connections pay for every byte of their task.
    pub(crate) fn drive<C: TransportConn, K: MessageComponent + ?Sized>(
        io: C,
        conn: Connection,
        component: Arc<K>,
        place: Option<Place>,
    ) -> impl Future<Output = CloseReason> + Send + use<C, K> {
        let span = tracing::info_span!("conn", id = conn.id().as_u64(), peer = %conn.peer_addr(), transport = conn.transport().kind());
        let connection = driver::drive(io, conn, component, place);
        // A span is 40 bytes that every idle connection's task would hold:
        // when tracing records it, the instrumented future goes in a box of
        // its own; when not, the task holds the plain future.
        if span.is_disabled() {
            Either::Left(connection)
        } else {
            Either::Right(Box::pin(connection.instrument(span)))
        }
    }

    pub(crate) fn unregister(&self, conn: &Connection) {
        self.registry().remove(&conn.id());
    }

    /// Takes a place for a connection from `peer` under the IP filter and
    /// the connection limits, or refuses it (counted and logged).
    pub(crate) fn reserve(self: &Arc<Self>, peer: SocketAddr) -> Result<Reservation, Refusal> {
        // Taken before the check: a shutdown that begins from here on
        // waits for this connection, and one that began is seen.
        let task = self.tracker.token();
        if self.stopping.is_cancelled() {
            return Err(Refusal::ShuttingDown);
        }
        if !self.config.ip_filter.permits(peer.ip()) {
            Stats::add(&self.stats.denied, 1);
            tracing::debug!(%peer, "connection refused: address not permitted by ip_filter");
            return Err(Refusal::Denied);
        }
        let total = self.admitted.fetch_add(1, Ordering::AcqRel) + 1;
        // Counted from here on: dropping it on refusal takes the count back.
        let mut place = Place {
            ctx: self.clone(),
            per_ip: None,
            _task: task,
        };
        let full = if self.config.max_connections.is_some_and(|max| total > max) {
            true
        } else if let Some(max) = self.config.max_connections_per_ip {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = per_ip.entry(peer.ip()).or_insert(0);
            if *n < max {
                *n += 1;
                place.per_ip = Some(peer.ip());
            }
            place.per_ip.is_none()
        } else {
            false
        };
        if full {
            Stats::add(&self.stats.rejected, 1);
            tracing::debug!(%peer, "connection refused: connection limit reached");
            return Err(Refusal::Full);
        }
        Ok(Reservation { place, peer })
    }

    /// Stops accepting, closes every connection with 1001 and waits for
    /// them, forcing the stragglers after the grace period.
    pub(crate) async fn shutdown(&self) {
        let conns: Vec<Connection> = {
            let registry = self.registry();
            self.shutting_down.store(true, Ordering::Release);
            registry.values().cloned().collect()
        };
        self.stopping.cancel();
        for conn in &conns {
            conn.begin_close(shutdown_request());
        }
        self.tracker.close();
        let grace = self.config.shutdown_grace;
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return;
        }
        let stragglers: Vec<Connection> = self.registry().values().cloned().collect();
        tracing::warn!(
            count = stragglers.len(),
            ?grace,
            "shutdown grace period over: stopping connections"
        );
        for conn in &stragglers {
            conn.outbox().force();
        }
        let bound = self.config.close_timeout;
        if tokio::time::timeout(bound, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::error!(
                count = self.registry().len(),
                "connections still running after shutdown: an on_close handler does not return"
            );
        }
    }
}

fn shutdown_request() -> CloseRequest {
    CloseRequest::new(
        CloseCode::AWAY,
        "server shutting down",
        CloseReason::Shutdown,
    )
}

/// Why a server refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The peer's address is not permitted by [`Config::ip_filter`].
    #[error("address not permitted by the IP filter")]
    Denied,
    /// [`Config::max_connections`] or [`Config::max_connections_per_ip`]
    /// is reached.
    #[error("connection limit reached")]
    Full,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// A place for one connection under a server's limits, taken before its
/// handshake ([`ServerHandle::reserve`]) and held until the connection
/// ends; dropping it unused gives the place back.
///
/// A server that accepts on its own listeners takes one for each
/// connection before reading a byte from it. A server that receives
/// connections from elsewhere (an upgrade made by another HTTP server)
/// takes one before it answers, so that a peer over a limit is refused
/// with an HTTP status rather than upgraded and dropped.
pub struct Reservation {
    place: Place,
    peer: SocketAddr,
}

/// What a connection holds of its [`Reservation`] until it ends (its
/// handshake, then its driver's state); dropping it gives the place back.
/// Without the peer's address (the connection has it): 16 bytes less in
/// every connection's driver state.
pub(crate) struct Place {
    ctx: Arc<Context>,
    /// The address counted in the per-IP table (a per-IP limit is set).
    per_ip: Option<IpAddr>,
    /// Keeps shutdown waiting for this connection.
    _task: TaskTrackerToken,
}

impl Reservation {
    /// The peer the place was taken for.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The limits of the server the place belongs to.
    pub fn config(&self) -> &Config {
        &self.place.ctx.config
    }

    /// Runs `accepted` as one of the server's connections, on a task of
    /// its own: its [`Config`] limits, counters, hubs, slow-consumer
    /// policy and graceful shutdown (1001) hold for it. The place is held
    /// until it ends.
    pub fn serve<C, K>(self, accepted: Accepted<C, K>)
    where
        C: TransportConn,
        K: MessageComponent + ?Sized,
    {
        let Reservation { place, peer } = self;
        tokio::spawn(listener::run(accepted, peer, place));
    }

    /// The place alone, for the connection's handshake and then its driver
    /// to hold, and the peer.
    pub(crate) fn into_place(self) -> (Place, SocketAddr) {
        (self.place, self.peer)
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("peer", &self.peer)
            .finish()
    }
}

impl Place {
    pub(crate) fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.ctx.admitted.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.per_ip {
            let mut per_ip = self.ctx.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

type BindFn = Box<
    dyn FnOnce(Arc<Context>) -> Pin<Box<dyn Future<Output = Result<SocketAddr>> + Send>> + Send,
>;

/// Entry point: `Server::builder()`.
///
/// ```
/// use switchboard::tcp::TcpTransport;
/// use switchboard::{BoxError, Connection, Message, MessageComponent, Server};
///
/// struct Echo;
///
/// impl MessageComponent for Echo {
///     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
///         conn.send(msg)?;
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// // Port 0: the system picks a free port.
/// let server = Server::builder()
///     .bind("127.0.0.1:0", TcpTransport::lines(Echo))
///     .start()
///     .await?;
/// println!("try: nc {} {}", server.local_addr().ip(), server.local_addr().port());
/// server.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Server(());

impl Server {
    /// A builder with the default [`Config`] and no listeners.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            config: Config::default(),
            listeners: Vec::new(),
        }
    }
}

/// Configures listeners and limits, then [`start`](Self::start)s the server.
///
/// Each listener has its own transport; transports carry the component(s)
/// they serve, so one component can serve WebSocket browsers and raw TCP
/// peers at once.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use switchboard::tcp::TcpTransport;
/// use switchboard::ws::WsTransport;
/// use switchboard::{BoxError, Config, Connection, Message, MessageComponent, Server};
///
/// # struct Echo;
/// # impl MessageComponent for Echo {
/// #     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
/// #         conn.send(msg)?;
/// #         Ok(())
/// #     }
/// # }
/// # #[tokio::main]
/// # async fn main() -> Result<(), BoxError> {
/// let config = Config::default()
///     .max_message_size(64 * 1024)
///     .idle_timeout(Some(Duration::from_secs(60)))
///     .max_connections(Some(10_000));
/// let echo = Arc::new(Echo);
/// let server = Server::builder()
///     .config(config)
///     .bind("0.0.0.0:8080", WsTransport::new(echo.clone()))
///     .bind("0.0.0.0:7000", TcpTransport::lines(echo))
///     // Fails, with nothing left listening, if an address cannot be bound:
///     // "cannot listen on 0.0.0.0:8080: Address already in use ..."
///     .start()
///     .await?;
/// tokio::signal::ctrl_c().await?;
/// server.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct ServerBuilder {
    config: Config,
    listeners: Vec<BindFn>,
}

impl ServerBuilder {
    /// Sets the limits shared by every listener.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Listens on `addr` (port 0 picks a free port; see
    /// [`ServerHandle::local_addr`]) with `transport`.
    pub fn bind<A, T>(mut self, addr: A, transport: T) -> Self
    where
        A: ToSocketAddrs + fmt::Debug + Send + Sync + 'static,
        T: Transport<TcpStream>,
    {
        self.listeners.push(Box::new(move |ctx| {
            Box::pin(async move {
                let listener = TcpListener::bind(&addr)
                    .await
                    .map_err(|source| Error::Bind {
                        addr: shown(&addr),
                        source,
                    })?;
                start_listener(listener, transport, ctx)
            })
        }));
        self
    }

    /// Serves `transport` on a listener that is already bound.
    pub fn listener<T: Transport<TcpStream>>(
        mut self,
        listener: TcpListener,
        transport: T,
    ) -> Self {
        self.listeners.push(Box::new(move |ctx| {
            Box::pin(async move { start_listener(listener, transport, ctx) })
        }));
        self
    }

    /// Validates the config, binds every listener and starts accepting.
    /// Nothing is left listening if any bind fails. A server with no
    /// listener serves only what is handed to it
    /// ([`ServerHandle::serve_stream`], [`ServerHandle::serve_connection`]):
    /// the sockets of a web framework, say.
    pub async fn start(self) -> Result<ServerHandle> {
        self.config.validate()?;
        let ctx = Context::new(self.config);
        let mut addrs = Vec::with_capacity(self.listeners.len());
        for bind in self.listeners {
            match bind(ctx.clone()).await {
                Ok(addr) => addrs.push(addr),
                Err(err) => {
                    ctx.stopping.cancel();
                    return Err(err);
                }
            }
        }
        for addr in &addrs {
            tracing::info!(%addr, "listening");
        }
        tokio::spawn(ctx.sweep());
        Ok(ServerHandle {
            inner: Arc::new(HandleInner {
                ctx,
                addrs,
                shutdown_once: tokio::sync::OnceCell::new(),
            }),
        })
    }
}

/// An address as the user wrote it: `Debug` is the one format every
/// `ToSocketAddrs` type has, and it puts a string in quotes.
fn shown(addr: &impl fmt::Debug) -> String {
    let debug = format!("{addr:?}");
    match debug.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(unquoted) => unquoted.to_owned(),
        None => debug,
    }
}

fn start_listener<T: Transport<TcpStream>>(
    listener: TcpListener,
    transport: T,
    ctx: Arc<Context>,
) -> Result<SocketAddr> {
    let addr = listener.local_addr()?;
    tokio::spawn(listener::accept_loop(listener, Arc::new(transport), ctx));
    Ok(addr)
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

/// A running server. Cheap to clone. Dropping every handle does not stop
/// the server; call [`shutdown`](Self::shutdown).
///
/// ```
/// use switchboard::tcp::TcpTransport;
/// use switchboard::{BoxError, Connection, Message, MessageComponent, Server};
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
/// use tokio::net::TcpStream;
///
/// # struct Echo;
/// # impl MessageComponent for Echo {
/// #     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
/// #         conn.send(msg)?;
/// #         Ok(())
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let server = Server::builder()
///     .bind("127.0.0.1:0", TcpTransport::lines(Echo))
///     .start()
///     .await?;
///
/// let mut peer = BufReader::new(TcpStream::connect(server.local_addr()).await?);
/// peer.get_mut().write_all(b"hello\n").await?;
/// let mut line = String::new();
/// peer.read_line(&mut line).await?;
/// assert_eq!(line, "hello\n");
/// assert_eq!(server.stats().connections_total, 1);
///
/// // Shutdown closes each connection after what was queued for it and
/// // waits, up to `Config::close_timeout`, for the peer to hang up.
/// let hang_up = async move {
///     let mut rest = String::new();
///     peer.read_line(&mut rest).await // 0 bytes: the end of the stream
/// };
/// let ((), read) = tokio::join!(server.shutdown(), hang_up);
/// assert_eq!(read?, 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ServerHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    ctx: Arc<Context>,
    addrs: Vec<SocketAddr>,
    shutdown_once: tokio::sync::OnceCell<()>,
}

impl ServerHandle {
    /// The address of the first listener (the actual port after a port-0 bind).
    ///
    /// # Panics
    ///
    /// If the server has no listener (see [`local_addrs`](Self::local_addrs)).
    pub fn local_addr(&self) -> SocketAddr {
        match self.inner.addrs.first() {
            Some(addr) => *addr,
            None => panic!("ServerHandle::local_addr: this server has no listener"),
        }
    }

    /// The addresses of all listeners, in `bind` order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.inner.addrs
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Counters {
        self.inner.ctx.stats.snapshot()
    }

    /// The limits this server runs with.
    pub fn config(&self) -> &Config {
        &self.inner.ctx.config
    }

    /// Serves a byte stream accepted elsewhere (a Unix socket, a listener
    /// of your own, a socket handed over by the system) with `transport`,
    /// as this server's own listeners serve theirs: the IP filter and the
    /// connection limits, the handshake timeout, the same [`Config`],
    /// counters and graceful shutdown. Socket options are the caller's
    /// (the server's listeners set `TCP_NODELAY` and the keepalive).
    ///
    /// Returns false, dropping `io`, if the server refuses it (the filter,
    /// a limit) or is shutting down; otherwise the connection runs on a
    /// task of its own.
    ///
    /// ```
    /// use switchboard::tcp::TcpTransport;
    /// use switchboard::{BoxError, Connection, Message, MessageComponent, Server};
    /// use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    ///
    /// # struct Echo;
    /// # impl MessageComponent for Echo {
    /// #     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
    /// #         conn.send(msg)?;
    /// #         Ok(())
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// // A server with no listener of its own.
    /// let server = Server::builder().start().await?;
    /// let transport = TcpTransport::lines(Echo);
    ///
    /// // Any byte stream: here one end of an in-memory pipe.
    /// let (ours, theirs) = tokio::io::duplex(1024);
    /// let peer = "127.0.0.1:50000".parse()?;
    /// assert!(server.serve_stream(&transport, theirs, peer));
    ///
    /// let mut ours = BufReader::new(ours);
    /// ours.get_mut().write_all(b"hello\n").await?;
    /// let mut line = String::new();
    /// ours.read_line(&mut line).await?;
    /// assert_eq!(line, "hello\n");
    /// assert_eq!(server.stats().open_connections, 1);
    /// # drop(ours);
    /// # server.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn serve_stream<T, IO>(&self, transport: &T, io: IO, peer: SocketAddr) -> bool
    where
        T: Transport<IO> + Clone,
        IO: Send + 'static,
    {
        let Ok(reservation) = self.reserve(peer) else {
            return false;
        };
        let transport = Arc::new(transport.clone());
        tokio::spawn(listener::serve(io, transport, reservation));
        true
    }

    /// Serves a connection whose handshake was made elsewhere, as one of
    /// this server's own: [`reserve`](Self::reserve) and
    /// [`Reservation::serve`] in one call. Returns false, dropping the
    /// connection, if the server refuses it. A server that answers the
    /// handshake itself (an HTTP upgrade) should reserve before it
    /// answers, to refuse with a status rather than drop the connection.
    pub fn serve_connection<C, K>(&self, accepted: Accepted<C, K>, peer: SocketAddr) -> bool
    where
        C: TransportConn,
        K: MessageComponent + ?Sized,
    {
        match self.reserve(peer) {
            Ok(reservation) => {
                reservation.serve(accepted);
                true
            }
            Err(_) => false,
        }
    }

    /// Takes a place for a connection from `peer` under the IP filter and
    /// the connection limits (counted and logged when refused), before its
    /// handshake; see [`Reservation`].
    pub fn reserve(&self, peer: SocketAddr) -> Result<Reservation, Refusal> {
        self.inner.ctx.reserve(peer)
    }

    /// Graceful shutdown: stops accepting, closes every connection with 1001
    /// after flushing what was already queued, waits up to
    /// [`Config::shutdown_grace`] and then stops the rest. `on_close` runs for
    /// every connection. Calling it again (or concurrently) waits for the
    /// same shutdown.
    pub async fn shutdown(&self) {
        let ctx = &self.inner.ctx;
        self.inner
            .shutdown_once
            .get_or_init(|| ctx.shutdown())
            .await;
    }
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addrs", &self.inner.addrs)
            .finish()
    }
}
