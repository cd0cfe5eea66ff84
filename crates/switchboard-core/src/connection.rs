//! The `Connection` handle and its bounded outbound queue.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Waker;

use crate::close::{CloseCode, CloseFrame, CloseReason};
use crate::config::SlowConsumerPolicy;
use crate::error::SendError;
use crate::extensions::Extensions;
use crate::hub::HubShared;
use crate::message::{Message, Utf8Bytes};
use crate::server::Context;
use crate::stats::Stats;
use crate::transport::TransportInfo;

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
    /// Messages and payload bytes accepted by `send` and not yet handed to
    /// the transport. Counted until the writer passes a message on, not
    /// until it moves the queue into its batch, so the bound covers both.
    /// Changed only under `state`'s lock (plain loads and stores, no
    /// read-modify-write), read without it.
    queued_msgs: AtomicUsize,
    queued_bytes: AtomicUsize,
    /// Set (under `state`) once a close was requested; read by the driver
    /// on every poll without taking the lock.
    closing: AtomicBool,
    /// Set (under `state`) when shutdown forces the connection; read by the
    /// driver without taking the lock, like `closing`.
    forced: AtomicBool,
    /// The driver is running and will take the lock (in `poll_state` or
    /// `poll_signals`) before it next sleeps, so `send` need not wake it.
    /// Set by the driver, without the lock, before it polls a handler;
    /// cleared under the lock by `poll_state`/`poll_signals`. A `send` that
    /// reads it set (under the lock) therefore queued its message before
    /// that next look at the queue.
    awake: AtomicBool,
    state: Mutex<State>,
    extensions: Mutex<Extensions>,
}

/// Guarded by a std mutex: every critical section is a few pointer moves
/// and never spans an `.await`.
#[derive(Default)]
struct State {
    /// Empty `VecDeque`s do not allocate: an idle connection that never
    /// sent anything holds no queue storage.
    queue: VecDeque<Message>,
    /// The connection task's waker, woken by `send`, `close` and shutdown.
    waker: Option<Waker>,
    /// The first close request wins; later ones are ignored.
    close: Option<CloseRequest>,
    /// Set when shutdown's grace period ran out: stop flushing, finish now.
    force: bool,
    /// Set after `on_close` returned.
    finished: bool,
    /// Hubs this connection is a member of, left when it finishes.
    hubs: Vec<Weak<HubShared>>,
}

#[derive(Clone, Debug)]
pub(crate) struct CloseRequest {
    pub(crate) frame: CloseFrame,
    pub(crate) reason: CloseReason,
    /// Skip flushing the queue (the peer is not reading, or is gone).
    pub(crate) discard: bool,
}

impl Connection {
    pub(crate) fn new(
        peer: SocketAddr,
        info: TransportInfo,
        extensions: Extensions,
        ctx: Arc<Context>,
    ) -> Self {
        Connection {
            inner: Arc::new(Inner {
                id: ConnectionId::next(),
                peer,
                info,
                ctx,
                queued_msgs: AtomicUsize::new(0),
                queued_bytes: AtomicUsize::new(0),
                closing: AtomicBool::new(false),
                forced: AtomicBool::new(false),
                awake: AtomicBool::new(false),
                state: Mutex::new(State::default()),
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

    /// Queues `msg` for this connection without blocking.
    ///
    /// The connection's task writes everything queued and flushes once per
    /// batch. Fails with [`SendError::Closed`] once the connection is closing,
    /// and with [`SendError::Full`] when the queue holds
    /// [`Config::queue_max_messages`](crate::Config::queue_max_messages) or
    /// [`Config::queue_max_bytes`](crate::Config::queue_max_bytes); under the
    /// default slow-consumer policy the connection then closes with 1008.
    /// Either way the message is handed back in the error.
    #[inline]
    pub fn send(&self, msg: impl Into<Message>) -> Result<(), SendError> {
        self.send_message(msg.into())
    }

    /// The body of [`send`](Self::send), once for every argument type.
    #[inline]
    fn send_message(&self, msg: Message) -> Result<(), SendError> {
        let inner = &*self.inner;
        let config = &inner.ctx.config;
        let len = msg.len();
        let mut state = inner.lock_state();
        if state.close.is_some() || state.finished {
            return Err(SendError::Closed(msg));
        }
        let msgs = inner.queued_msgs.load(Ordering::Acquire);
        let bytes = inner.queued_bytes.load(Ordering::Acquire);
        // A single message larger than the byte bound still goes through an
        // empty queue; otherwise it could never be sent at all.
        if msgs >= config.queue_max_messages || (msgs > 0 && bytes + len > config.queue_max_bytes) {
            let stats = &inner.ctx.stats;
            match config.slow_consumer {
                SlowConsumerPolicy::Drop => Stats::add(&stats.dropped, 1),
                SlowConsumerPolicy::Close => {
                    Stats::add(&stats.slow_consumer_closes, 1);
                    // Free the backlog now: the peer is not reading it.
                    let backlog = std::mem::take(&mut state.queue);
                    let bytes = backlog.iter().map(Message::len).sum();
                    inner.release_locked(&mut state, backlog.len(), bytes);
                    Stats::add(&stats.dropped, backlog.len() as u64 + 1);
                    let waker = inner.request_close(
                        &mut state,
                        CloseRequest {
                            frame: CloseFrame::from_static(CloseCode::POLICY, "slow consumer"),
                            reason: CloseReason::SlowConsumer,
                            discard: true,
                        },
                    );
                    drop(state);
                    tracing::info!(conn = %inner.id, peer = %inner.peer, "closing slow consumer: outbound queue full");
                    wake(waker);
                }
            }
            return Err(SendError::Full(msg));
        }
        inner.queued_msgs.store(msgs + 1, Ordering::Release);
        inner.queued_bytes.store(bytes + len, Ordering::Release);
        state.queue.push_back(msg);
        // The driver is awake (typically running this very handler): it
        // looks at the queue before it sleeps, so no wake-up is needed, and
        // its waker stays registered.
        if inner.awake.load(Ordering::Relaxed) {
            return Ok(());
        }
        let waker = state.waker.take();
        drop(state);
        wake(waker);
        Ok(())
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
        self.inner.close(CloseRequest {
            reason: CloseReason::Local(frame.clone()),
            frame,
            discard: false,
        });
    }

    /// Whether a close has started (or the connection has ended).
    pub fn is_closed(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    /// Messages waiting in the outbound queue.
    #[inline]
    pub fn queued_messages(&self) -> usize {
        self.inner.queued_msgs.load(Ordering::Acquire)
    }

    /// Typed per-connection state. Do not hold the guard across an `.await`
    /// (the future would not be `Send`, so the compiler stops you).
    ///
    /// ```
    /// # use switchboard::Connection;
    /// #[derive(Clone)]
    /// struct User { name: String }
    ///
    /// fn login(conn: &Connection, name: &str) {
    ///     conn.extensions().insert(User { name: name.to_owned() });
    /// }
    ///
    /// fn name(conn: &Connection) -> Option<String> {
    ///     conn.extensions().get::<User>().map(|u| u.name.clone())
    /// }
    /// ```
    pub fn extensions(&self) -> MutexGuard<'_, Extensions> {
        // A panic while the guard was held cannot leave the map half-updated
        // (HashMap operations are not interrupted), so poisoning is ignored.
        self.inner
            .extensions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A clone of the stored value of type `T`, if any.
    pub fn extension<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.extensions().get::<T>().cloned()
    }

    pub(crate) fn context(&self) -> &Arc<Context> {
        &self.inner.ctx
    }

    /// Records hub membership, so the connection leaves when it finishes.
    /// Returns false when the connection already finished.
    pub(crate) fn add_hub(&self, hub: &Arc<HubShared>) -> bool {
        let mut state = self.inner.lock_state();
        if state.finished {
            return false;
        }
        if !state
            .hubs
            .iter()
            .any(|h| std::ptr::eq(h.as_ptr(), Arc::as_ptr(hub)))
        {
            state.hubs.push(Arc::downgrade(hub));
        }
        true
    }

    // ---- driver side -------------------------------------------------------

    /// Starts a close unless one has started; returns the request in force.
    pub(crate) fn begin_close(&self, req: CloseRequest) -> CloseRequest {
        self.inner.close(req)
    }

    /// Grace period over: the driver stops flushing and finishes.
    pub(crate) fn force(&self) {
        let waker = {
            let mut state = self.inner.lock_state();
            state.force = true;
            self.inner.forced.store(true, Ordering::Release);
            state.waker.take()
        };
        wake(waker);
    }

    /// The driver is about to poll a handler: until its next
    /// [`poll_state`](Self::poll_state) or [`poll_signals`](Self::poll_signals),
    /// sends to this connection do not wake it.
    #[inline]
    pub(crate) fn set_awake(&self) {
        self.inner.awake.store(true, Ordering::Relaxed);
    }

    /// Whether a close or shutdown's force was requested (without the lock;
    /// `poll_state` gives the details).
    #[inline]
    pub(crate) fn has_signals(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire) || self.inner.forced.load(Ordering::Acquire)
    }

    /// Payload bytes waiting in the outbound queue.
    #[inline]
    pub(crate) fn queued_bytes(&self) -> usize {
        self.inner.queued_bytes.load(Ordering::Acquire)
    }

    /// Registers the task's waker, reads the close signals and, when `batch`
    /// is empty, moves the whole queue into it (one lock per batch).
    pub(crate) fn poll_state(&self, waker: &Waker, batch: &mut VecDeque<Message>) -> Signals {
        let mut state = self.inner.lock_state();
        self.inner.awake.store(false, Ordering::Relaxed);
        match &state.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => state.waker = Some(waker.clone()),
        }
        if batch.is_empty() {
            std::mem::swap(&mut state.queue, batch);
        }
        Signals {
            close: state.close.clone(),
            force: state.force,
        }
    }

    /// Like [`poll_state`](Self::poll_state), leaving the queue alone.
    pub(crate) fn poll_signals(&self, waker: &Waker) -> Signals {
        let mut state = self.inner.lock_state();
        self.inner.awake.store(false, Ordering::Relaxed);
        match &state.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => state.waker = Some(waker.clone()),
        }
        Signals {
            close: state.close.clone(),
            force: state.force,
        }
    }

    /// `msgs` messages of `bytes` in all left the queue for the transport.
    pub(crate) fn dequeued(&self, msgs: usize, bytes: usize) {
        if msgs > 0 {
            let mut state = self.inner.lock_state();
            self.inner.release_locked(&mut state, msgs, bytes);
        }
    }

    /// The connection ended: refuse sends, drop the queue, leave hubs.
    pub(crate) fn finish(&self) {
        let hubs = {
            let mut state = self.inner.lock_state();
            state.finished = true;
            let queue = std::mem::take(&mut state.queue);
            let bytes = queue.iter().map(Message::len).sum();
            self.inner.release_locked(&mut state, queue.len(), bytes);
            state.waker = None;
            std::mem::take(&mut state.hubs)
        };
        self.inner.closing.store(true, Ordering::Release);
        for hub in hubs.iter().filter_map(Weak::upgrade) {
            hub.remove_everywhere(self.id());
        }
    }
}

pub(crate) struct Signals {
    pub(crate) close: Option<CloseRequest>,
    pub(crate) force: bool,
}

impl Inner {
    #[inline]
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // Critical sections are panic-free pointer moves, so a poisoned lock
        // still guards consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `msgs` messages of `bytes` off the counts; the guard shows
    /// the lock is held, so a plain load and store cannot lose an update.
    fn release_locked(&self, _: &mut State, msgs: usize, bytes: usize) {
        let (queued, queued_bytes) = (&self.queued_msgs, &self.queued_bytes);
        queued.store(queued.load(Ordering::Relaxed) - msgs, Ordering::Release);
        queued_bytes.store(
            queued_bytes.load(Ordering::Relaxed) - bytes,
            Ordering::Release,
        );
    }

    fn close(&self, req: CloseRequest) -> CloseRequest {
        let mut state = self.lock_state();
        let waker = self.request_close(&mut state, req);
        let current = state.close.clone();
        drop(state);
        wake(waker);
        current.unwrap_or_else(|| unreachable!("request_close always sets a request"))
    }

    fn request_close(&self, state: &mut State, req: CloseRequest) -> Option<Waker> {
        if state.close.is_none() {
            state.close = Some(req);
            self.closing.store(true, Ordering::Release);
        }
        state.waker.take()
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
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
