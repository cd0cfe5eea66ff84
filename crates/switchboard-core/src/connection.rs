//! The `Connection` handle and its bounded outbound queue.

use std::cell::Cell;
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
    /// Messages and bytes sent by the connection's own handler without the
    /// lock ([`OwnSends`]) and not yet handed to the transport. Written
    /// only on the thread of the driver's current poll, by the driver and
    /// by those sends, as plain loads and stores; read anywhere.
    own_msgs: AtomicUsize,
    own_bytes: AtomicUsize,
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
                own_msgs: AtomicUsize::new(0),
                own_bytes: AtomicUsize::new(0),
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
        match self.inner.send_own(msg) {
            Ok(()) => Ok(()),
            Err(msg) => self.send_shared(msg),
        }
    }

    /// Queues `msg` in the shared queue, under its lock.
    fn send_shared(&self, msg: Message) -> Result<(), SendError> {
        let inner = &*self.inner;
        let config = &inner.ctx.config;
        let len = msg.len();
        let mut state = inner.lock_state();
        if state.close.is_some() || state.finished {
            return Err(SendError::Closed(msg));
        }
        let msgs = inner.queued_msgs.load(Ordering::Acquire);
        let bytes = inner.queued_bytes.load(Ordering::Acquire);
        let all_msgs = msgs + inner.own_msgs.load(Ordering::Acquire);
        let all_bytes = bytes + inner.own_bytes.load(Ordering::Acquire);
        // A single message larger than the byte bound still goes through an
        // empty queue; otherwise it could never be sent at all.
        if all_msgs >= config.queue_max_messages
            || (all_msgs > 0 && all_bytes + len > config.queue_max_bytes)
        {
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
        self.inner.queued_msgs.load(Ordering::Acquire) + self.inner.own_msgs.load(Ordering::Acquire)
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
            + self.inner.own_bytes.load(Ordering::Acquire)
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
    ///
    /// A batch holds either messages taken from the shared queue or the
    /// handler's own sends (made only while nothing shared waits), so the
    /// counts it came from are known: own ones are released without the
    /// lock.
    pub(crate) fn dequeued(&self, msgs: usize, bytes: usize) {
        let inner = &*self.inner;
        let own = inner.own_msgs.load(Ordering::Relaxed);
        if own > 0 {
            debug_assert!(msgs <= own, "a batch of own sends holds only those");
            let own_bytes = inner.own_bytes.load(Ordering::Relaxed);
            inner.own_msgs.store(own - msgs, Ordering::Release);
            inner.own_bytes.store(own_bytes - bytes, Ordering::Release);
        } else if msgs > 0 {
            let mut state = inner.lock_state();
            inner.release_locked(&mut state, msgs, bytes);
        }
    }

    /// The driver is about to poll one of this connection's handlers: until
    /// the guard is finished, the handler's first send to this connection
    /// goes to a slot of this thread, without the lock, and
    /// [`OwnSends::finish`] appends it to the driver's batch.
    #[inline]
    pub(crate) fn own_sends(&self) -> OwnSends<'_> {
        let me = Arc::as_ptr(&self.inner) as usize;
        // Taken only when free: a handler polled inside another's poll (not
        // something the server does) sends through the lock.
        let active = OWN_CONN.get() == NO_CONN && OWN_SLOT.try_with(|_| ()).is_ok();
        if active {
            OWN_CONN.set(me);
        }
        OwnSends {
            inner: &self.inner,
            active,
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
    /// Puts `msg` in this thread's slot when this connection's driver is
    /// polling its handler here and the slot is unused (a handler replying
    /// to its own connection, the common case), nothing sent by another
    /// task waits before it, and the bounds leave room. Otherwise hands
    /// `msg` back for the shared queue, which applies the slow-consumer
    /// policy when the bound is reached.
    #[inline]
    fn send_own(&self, msg: Message) -> Result<(), Message> {
        let me = self as *const Inner as usize;
        if OWN_CONN.get() != me
            || self.closing.load(Ordering::Acquire)
            || self.queued_msgs.load(Ordering::Acquire) != 0
        {
            return Err(msg);
        }
        let config = &self.ctx.config;
        let len = msg.len();
        let msgs = self.own_msgs.load(Ordering::Relaxed);
        let bytes = self.own_bytes.load(Ordering::Relaxed);
        if msgs >= config.queue_max_messages || (msgs > 0 && bytes + len > config.queue_max_bytes) {
            return Err(msg);
        }
        self.own_msgs.store(msgs + 1, Ordering::Release);
        self.own_bytes.store(bytes + len, Ordering::Release);
        OWN_CONN.set(USED);
        // `own_sends` found the slot alive, and it lives until the thread
        // ends: this cannot fail.
        OWN_SLOT.with(|slot| slot.set(Some(msg)));
        Ok(())
    }

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

/// [`OWN_CONN`] when no handler is being polled on the thread.
const NO_CONN: usize = 0;
/// [`OWN_CONN`] once [`OWN_SLOT`] holds the polled handler's first send.
/// No connection has this address.
const USED: usize = 1;

thread_local! {
    /// The address of the connection whose handler this thread's driver is
    /// polling, [`NO_CONN`] or [`USED`]. Compared, never dereferenced.
    static OWN_CONN: Cell<usize> = const { Cell::new(NO_CONN) };
    /// That handler's first send to its own connection: no lock, no
    /// wake-up.
    static OWN_SLOT: Cell<Option<Message>> = const { Cell::new(None) };
}

/// This thread's slot, lent to one handler poll by
/// [`Connection::own_sends`].
pub(crate) struct OwnSends<'a> {
    inner: &'a Inner,
    active: bool,
}

impl OwnSends<'_> {
    /// The handler's poll is over: its send in the slot, if any, joins the
    /// end of `batch`, after the older messages there.
    #[inline]
    pub(crate) fn finish(self, batch: &mut VecDeque<Message>) {
        if self.active
            && OWN_CONN.replace(NO_CONN) == USED
            && let Ok(Some(msg)) = OWN_SLOT.try_with(Cell::take)
        {
            batch.push_back(msg);
        }
        std::mem::forget(self);
    }
}

impl Drop for OwnSends<'_> {
    /// Not finished: the handler panicked.
    fn drop(&mut self) {
        if self.active {
            unwind_own(self.inner);
        }
    }
}

/// The send in the slot goes to the front of the shared queue, so the
/// close after the panic still writes it before anything sent later.
#[cold]
fn unwind_own(inner: &Inner) {
    if OWN_CONN.replace(NO_CONN) != USED {
        return;
    }
    let Ok(Some(msg)) = OWN_SLOT.try_with(Cell::take) else {
        return;
    };
    let len = msg.len();
    let mut state = inner.lock_state();
    let (own, own_bytes) = (
        inner.own_msgs.load(Ordering::Relaxed),
        inner.own_bytes.load(Ordering::Relaxed),
    );
    inner.own_msgs.store(own - 1, Ordering::Release);
    inner.own_bytes.store(own_bytes - len, Ordering::Release);
    let (queued, queued_bytes) = (
        inner.queued_msgs.load(Ordering::Relaxed),
        inner.queued_bytes.load(Ordering::Relaxed),
    );
    inner.queued_msgs.store(queued + 1, Ordering::Release);
    inner
        .queued_bytes
        .store(queued_bytes + len, Ordering::Release);
    state.queue.push_front(msg);
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
