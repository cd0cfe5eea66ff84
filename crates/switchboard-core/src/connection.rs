//! The `Connection` handle: what a component holds to send to and close
//! one connection. The queue behind it is the [`Outbox`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::close::{CloseCode, CloseFrame, CloseReason};
use crate::error::SendError;
use crate::extensions::Extensions;
use crate::hub::HubShared;
use crate::message::{Message, Utf8Bytes};
use crate::outbox::{CloseRequest, Outbox, Refused};
use crate::server::Context;
use crate::stats::Stats;
use crate::transport::{OutboundCheck, TransportInfo};

/// Identifies a connection; unique within the process for its lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

impl ConnectionId {
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnectionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The id whose number is `n` (what [`as_u64`](Self::as_u64) gave):
    /// for ids that travelled between processes, such as a broker's.
    pub fn from_u64(n: u64) -> Self {
        ConnectionId(n)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A handle to one connection.
///
/// Cheap to clone (an `Arc` inside) and `Send + Sync`: keep clones in a
/// [`Hub`](crate::Hub) or a map, and send from any task. All clones refer to
/// the same connection; holding one after the connection ended is harmless
/// (`send` then returns [`SendError::Closed`]).
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    id: ConnectionId,
    peer: SocketAddr,
    info: TransportInfo,
    ctx: Arc<Context>,
    outbox: Outbox,
    /// The transport's check of outbound messages (TCP lines), if any.
    check: Option<OutboundCheck>,
    /// Hubs this connection is a member of, left when it finishes; `None`
    /// once it finished, so that no hub takes it in afterwards.
    /// A boxed slice rather than a `Vec`: 8 bytes less in every
    /// connection, and a connection joins few hubs.
    hubs: Mutex<Option<Box<[Weak<HubShared>]>>>,
    extensions: Mutex<Extensions>,
}

impl Connection {
    pub(crate) fn new(
        peer: SocketAddr,
        info: TransportInfo,
        extensions: Extensions,
        check: Option<OutboundCheck>,
        ctx: Arc<Context>,
    ) -> Self {
        Connection {
            inner: Arc::new(Inner {
                id: ConnectionId::next(),
                peer,
                info,
                outbox: Outbox::new(ctx.bounds.clone()),
                check,
                ctx,
                hubs: Mutex::new(Some(Box::default())),
                extensions: Mutex::new(extensions),
            }),
        }
    }

    /// This connection's id.
    pub fn id(&self) -> ConnectionId {
        self.inner.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer
    }

    /// How the connection arrived: transport kind and, for WebSocket, the
    /// request path, query, headers and subprotocol.
    pub fn transport(&self) -> &TransportInfo {
        &self.inner.info
    }

    /// The value of the route parameter `name`, percent-decoded: for a
    /// WebSocket route `/rooms/{room}` and a request for `/rooms/news`,
    /// `conn.param("room")` is `Some("news")`. Short for
    /// `conn.transport().param(name)`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.inner.info.param(name)
    }

    /// Queues `msg` for this connection without blocking.
    ///
    /// The connection's task writes everything queued and flushes once per
    /// batch. Fails with [`SendError::Closed`] once the connection is closing,
    /// and with [`SendError::Full`] when the queue holds
    /// [`Config::queue_max_messages`](crate::Config::queue_max_messages) or
    /// [`Config::queue_max_bytes`](crate::Config::queue_max_bytes); under the
    /// default slow-consumer policy the connection then closes with 1008.
    /// Either way the message is handed back in the error.
    ///
    /// A message that the connection's transport cannot carry as one message
    /// fails at once with [`SendError::Invalid`], is not queued and leaves
    /// the connection open: on a TCP lines connection, a message with `\n`
    /// or `\r` in it, or a binary message that is not UTF-8 (the rules are
    /// on `switchboard::tcp::Codec::lines`). WebSocket carries every message.
    /// Refusals are counted in
    /// [`Counters::invalid_sends`](crate::Counters::invalid_sends).
    pub fn send(&self, msg: impl Into<Message>) -> Result<(), SendError> {
        let msg = msg.into();
        if let Some(check) = self.inner.check
            && let Err(reason) = check(&msg)
        {
            return Err(self.invalid(msg, reason));
        }
        match self.inner.outbox.push(msg) {
            Ok(()) => Ok(()),
            Err(refused) => Err(self.refused(refused)),
        }
    }

    /// Counts and logs a refused send. Out of line: the common path of
    /// `send` stays small.
    #[cold]
    #[inline(never)]
    fn refused(&self, refused: Refused) -> SendError {
        let stats = &self.inner.ctx.stats;
        match refused {
            Refused::Closed(msg) => SendError::Closed(msg),
            Refused::Dropped(msg) => {
                Stats::add(&stats.dropped, 1);
                SendError::Full(msg)
            }
            Refused::SlowConsumer { msg, discarded } => {
                Stats::add(&stats.slow_consumer_closes, 1);
                Stats::add(&stats.dropped, discarded as u64 + 1);
                tracing::info!(conn = %self.inner.id, peer = %self.inner.peer, "closing slow consumer: outbound queue full");
                SendError::Full(msg)
            }
        }
    }

    /// Counts and logs a message the transport refused.
    #[cold]
    #[inline(never)]
    fn invalid(&self, msg: Message, reason: &'static str) -> SendError {
        Stats::add(&self.inner.ctx.stats.invalid_sends, 1);
        tracing::debug!(conn = %self.inner.id, peer = %self.inner.peer, reason, "message refused by the transport");
        SendError::Invalid { msg, reason }
    }

    /// Closes the connection normally (1000) after flushing what is queued.
    pub fn close(&self) {
        self.close_with(CloseCode::NORMAL, "");
    }

    /// Closes the connection with `code` and `reason` after flushing what is
    /// queued. Only the first close takes effect; `on_close` receives
    /// [`CloseReason::Local`].
    pub fn close_with(&self, code: CloseCode, reason: impl Into<Utf8Bytes>) {
        let frame = CloseFrame::new(code, reason);
        self.inner.outbox.close(CloseRequest {
            reason: CloseReason::Local(frame.clone()),
            frame,
            discard: false,
        });
    }

    /// Whether a close has started (or the connection has ended).
    pub fn is_closed(&self) -> bool {
        self.inner.outbox.is_closed()
    }

    /// Messages sent and not yet written to the socket: the queue's
    /// length, as [`Config::queue_max_messages`](crate::Config::queue_max_messages) bounds it.
    pub fn queued_messages(&self) -> usize {
        self.inner.outbox.len()
    }

    /// Stores `value` as this connection's state of type `T` (one value
    /// per type, as in [`Extensions`]), returning the value it replaces.
    /// Every later handler of the connection can read it; the WebSocket
    /// handshake hook can attach state before `on_open`
    /// (`Accept::new().with(user)`).
    ///
    /// ```
    /// use switchboard::{BoxError, Connection, Message, MessageComponent};
    ///
    /// #[derive(Clone, Debug, PartialEq)]
    /// struct User(String);
    ///
    /// /// How many messages this connection sent.
    /// struct Sent(u64);
    ///
    /// struct Greeter;
    ///
    /// impl MessageComponent for Greeter {
    ///     async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
    ///         conn.insert_extension(Sent(0));
    ///         Ok(())
    ///     }
    ///
    ///     async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
    ///         let count = conn.with_extension(|sent: &mut Sent| {
    ///             sent.0 += 1;
    ///             sent.0
    ///         });
    ///         if let Some(name) = msg.as_text().and_then(|t| t.strip_prefix("i am ")) {
    ///             conn.insert_extension(User(name.to_owned()));
    ///         }
    ///         match conn.extension::<User>() {
    ///             Some(User(name)) => conn.send(format!("hello, {name} ({count:?})"))?,
    ///             None => conn.send("who are you?")?,
    ///         }
    ///         if msg.as_text() == Some("forget me") {
    ///             conn.remove_extension::<User>();
    ///         }
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use switchboard::testing::TestServer;
    ///
    /// let server = TestServer::new(Greeter);
    /// let mut client = server.connect().await;
    /// client.send("hi").await;
    /// assert_eq!(client.recv().await, Some(Message::text("who are you?")));
    /// client.send("i am ann").await;
    /// assert_eq!(client.recv().await, Some(Message::text("hello, ann (Some(2))")));
    /// client.send("forget me").await;
    /// assert_eq!(client.recv().await, Some(Message::text("hello, ann (Some(3))")));
    /// client.send("hi").await;
    /// assert_eq!(client.recv().await, Some(Message::text("who are you?")));
    /// # }
    /// ```
    pub fn insert_extension<T: Send + Sync + 'static>(&self, value: T) -> Option<T> {
        self.extensions().insert(value)
    }

    /// A clone of this connection's state of type `T`, if any.
    pub fn extension<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.extensions().get::<T>().cloned()
    }

    /// Runs `f` on this connection's state of type `T`, to read it without
    /// a clone or to change it in place; `None` if there is none. `f` runs
    /// under the connection's state lock: it must not call the
    /// `*_extension` methods of the same connection (that would deadlock
    /// or panic), and should be quick.
    pub fn with_extension<T: Send + Sync + 'static, R>(
        &self,
        f: impl FnOnce(&mut T) -> R,
    ) -> Option<R> {
        self.extensions().get_mut::<T>().map(f)
    }

    /// Removes and returns this connection's state of type `T`.
    pub fn remove_extension<T: Send + Sync + 'static>(&self) -> Option<T> {
        self.extensions().remove::<T>()
    }

    fn extensions(&self) -> MutexGuard<'_, Extensions> {
        // A panic while the lock was held cannot leave the map half-updated
        // (HashMap operations are not interrupted), so poisoning is ignored.
        self.inner
            .extensions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    #[inline]
    pub(crate) fn context(&self) -> &Arc<Context> {
        &self.inner.ctx
    }

    /// The outbound queue, for the connection's driver.
    #[inline]
    pub(crate) fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    /// Starts a close unless one has started; returns the request in force.
    pub(crate) fn begin_close(&self, req: CloseRequest) -> CloseRequest {
        self.inner.outbox.close(req)
    }

    /// Records hub membership, so the connection leaves when it finishes.
    /// Returns false when the connection already finished.
    pub(crate) fn add_hub(&self, hub: &Arc<HubShared>) -> bool {
        let mut hubs = self.lock_hubs();
        let Some(hubs) = hubs.as_mut() else {
            return false;
        };
        if !hubs
            .iter()
            .any(|h| std::ptr::eq(h.as_ptr(), Arc::as_ptr(hub)))
        {
            let mut grown = std::mem::take(hubs).into_vec();
            // Hubs dropped since go while the list is rebuilt anyway.
            grown.retain(|h| h.strong_count() > 0);
            grown.push(Arc::downgrade(hub));
            *hubs = grown.into_boxed_slice();
        }
        true
    }

    /// The connection ended: refuse sends, drop the queue, leave hubs.
    pub(crate) fn finish(&self) {
        self.inner.outbox.finish();
        let hubs = self.lock_hubs().take().unwrap_or_default();
        for hub in hubs.iter().filter_map(Weak::upgrade) {
            hub.remove_everywhere(self.id());
        }
    }

    fn lock_hubs(&self) -> MutexGuard<'_, Option<Box<[Weak<HubShared>]>>> {
        // Nothing here panics midway; poisoning cannot tear the list.
        self.inner.hubs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.id)
            .field("peer", &self.inner.peer)
            .field("transport", &self.inner.info.kind())
            .field("closed", &self.is_closed())
            .finish()
    }
}
