//! The connection driver: one task per connection runs both directions,
//! from `on_open` to `on_close`.
//!
//! The message loop ([`Driver::serve`]) reads one message, runs
//! `on_message` to completion and only then reads the next: that is the
//! inbound back-pressure. After `MESSAGES_PER_POLL` messages in one poll
//! it yields to the other tasks, however many more one read brought.
//! Outbound, the driver takes everything queued in the connection's
//! [`Outbox`](crate::outbox::Outbox) in one batch, hands it to the
//! transport and flushes once per batch:
//! - when nothing more is readable, so that the replies to every message
//!   that arrived together leave in one write;
//! - before reading more when the outbox asks for attention (a close,
//!   shutdown, or a queue past a quarter of its bounds);
//! - whenever a handler waits, so that a handler that sends and then
//!   awaits something does not stall its own replies.
//!
//! Then the close path ([`Driver::close`]): `on_error` when there is an
//! error to report, what was queued flushed (unless the peer is gone or
//! not reading), and the transport's close, bounded by `close_timeout`.
//!
//! Every connection's task, idle or not, holds the loop's state for its
//! whole life, so the paths that run once or rarely (`on_open`, `on_error`,
//! and everything after the loop: the close, `on_close`) are boxed
//! futures, allocated only when they start. The connection leaves the
//! server when the driver is dropped (`impl Drop for Driver`).

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::{Instant, Sleep, sleep};

use crate::close::{CloseCode, CloseFrame, CloseReason};
use crate::component::MessageComponent;
use crate::connection::Connection;
use crate::error::Error;
use crate::limits::{RateLimitAction, TokenBucket};
use crate::message::Message;
use crate::outbox::{CloseRequest, Signal};
use crate::server::Place;
use crate::stats::Stats;
use crate::transport::{Received, TransportConn};

/// Runs one established connection from `on_open` to `on_close`, then
/// drops `place` (a server connection's place under its limits).
///
/// Not an `async fn`: one would keep its arguments beside the driver that
/// holds them for the connection's whole life, and every idle connection
/// pays for each byte of its task. The future holds the driver and the
/// component, once each.
pub(crate) fn drive<T: TransportConn, K: MessageComponent + ?Sized>(
    io: T,
    conn: Connection,
    component: Arc<K>,
    place: Option<Place>,
) -> impl Future<Output = CloseReason> + Send + use<T, K> {
    let mut driver = Driver {
        io,
        state: Box::new(State {
            rate: conn
                .context()
                .config
                .rate_limit
                .as_ref()
                .map(|limit| Box::new(TokenBucket::new(limit))),
            conn,
            batch: VecDeque::new(),
            handed: VecDeque::new(),
            unflushed: false,
            stall: None,
            broken: None,
            received_messages: 0,
            received_bytes: 0,
            _place: place,
        }),
    };
    // Counted now, not at the first poll: the driver's `Drop` takes the
    // connection back off, whether it ends or is dropped first.
    let stats = &driver.state.conn.context().stats;
    Stats::add(&stats.open, 1);
    Stats::add(&stats.opened_total, 1);
    async move {
        // A panic in `on_open`, `on_message` or the transport ends the
        // loop like a handler error: its future is dropped and the close
        // path reports the panic. Handlers and the transport are called
        // between the driver's own updates, never during one, so its state
        // is whole.
        let end = match AssertUnwindSafe(driver.serve(&*component))
            .catch_unwind()
            .await
        {
            Ok(end) => end,
            Err(panic) => {
                Stats::add(&driver.state.conn.context().stats.panics, 1);
                End::close(
                    CloseRequest::new(CloseCode::ERROR, "internal error", CloseReason::Panic),
                    Some(Error::Panic(panic_message(&*panic))),
                )
            }
        };
        let reason = driver.finish(&*component, end).await;
        // The connection leaves the server now, before the task's output
        // is seen (see `impl Drop for Driver`).
        drop(driver);
        reason
    }
}

/// The connection's driver: its transport, inline (the WebSocket one is a
/// pointer), and the rest of its state in a box.
///
/// The box keeps a WebSocket connection's task in tokio's 256-byte cell
/// (tokio's header and trailer, this struct, the component handle and
/// the message loop's state; cells are aligned to 128 bytes); with the
/// state and the place inline it took a 384-byte cell, which mimalloc
/// serves from a 512-byte block, where the box takes a 160-byte one. The
/// transport stays out of the box: the TCP transport's state is inline,
/// and in the box it would take a block as large as the task saves. A
/// unit test holds the future and the box to their sizes,
/// `tests/idle_memory.rs` the task.
struct Driver<T> {
    io: T,
    state: Box<State>,
}

/// Everything the driver keeps besides the transport. The methods that
/// need no transport are its own.
struct State {
    conn: Connection,
    /// Messages taken from the outbox, not yet handed to the transport.
    batch: VecDeque<Message>,
    /// Messages handed to the transport and not yet written out, oldest
    /// first: each leaves the outbox's bounds once the stream has taken
    /// its last byte.
    handed: VecDeque<Handed>,
    /// Something was handed to the transport since the last flush.
    unflushed: bool,
    /// The write timeout's clock, while a flush waits for the socket.
    stall: Option<Box<Stall>>,
    /// The first write error. Nothing more is written after it, and the
    /// connection ends once the running handler returns. Boxed, as are
    /// the other rare states: every idle connection holds this struct for
    /// its whole life.
    broken: Option<Box<Error>>,
    /// This connection's bucket, if an inbound rate limit is configured.
    rate: Option<Box<TokenBucket>>,
    /// Messages and bytes received and not yet added to the server's
    /// counters: they are added once per batch of input, at most
    /// `MESSAGES_PER_POLL` messages. Messages are counted in a `u32`,
    /// which packs with `unflushed`.
    received_messages: u32,
    received_bytes: u64,
    /// The connection's place under the server's limits (none for a
    /// client), given back when the driver is dropped: after `on_close`,
    /// once the connection has left the server.
    _place: Option<Place>,
}

/// The connection leaves the server when its driver is dropped: after
/// `on_close` when it ends, or wherever its task is dropped before that
/// (aborted, or pending when its runtime shuts down; then `on_close` does
/// not run, or does not finish). Its outbox refuses further sends and
/// lets go of its queue, its hubs forget it, the registry and the count of
/// open connections let it go. Then the fields drop: the transport (the
/// socket closes, if nothing closed it before), then the state with the
/// place, dropped last.
impl<T> Drop for Driver<T> {
    fn drop(&mut self) {
        let conn = &self.state.conn;
        conn.finish();
        let ctx = conn.context();
        ctx.unregister(conn);
        ctx.stats
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The most messages the loop handles in one poll of its task before it
/// yields to the other tasks (see `Driver::poll_next`); tokio's own
/// cooperative budget is 128 operations.
const MESSAGES_PER_POLL: u32 = 128;

/// A message in the transport's hands.
struct Handed {
    /// The transport's `buffered` count once the message was in: the
    /// message is written out when `written` reaches it.
    end: u64,
    /// Its payload length, as the outbox counted it.
    len: usize,
}

/// The write timeout's clock: restarted whenever the stream takes bytes.
struct Stall {
    timer: Pin<Box<Sleep>>,
    /// The transport's `written` count when the clock last started.
    written: u64,
}

/// How the message loop ended. Boxed where large: it is returned through
/// every poll of the loop, and a connection ends only once.
enum End {
    /// Close with this request (unless an earlier one is in force), after
    /// reporting the error, if any, to `on_error`.
    Close(Box<(CloseRequest, Option<Error>)>),
    /// Shutdown's grace period is over: stop now.
    Forced,
}

impl End {
    fn close(req: CloseRequest, err: Option<Error>) -> Self {
        End::Close(Box::new((req, err)))
    }
}

impl<T: TransportConn> Driver<T> {
    /// Runs `on_open` and then one `on_message` per inbound message until
    /// something ends the connection.
    ///
    /// Not an `async fn`: one keeps a second copy of its arguments beside
    /// the state that uses them, in every connection's task.
    #[allow(clippy::manual_async_fn)]
    fn serve<'a, K: MessageComponent + ?Sized>(
        &'a mut self,
        component: &'a K,
    ) -> impl Future<Output = End> + Send + use<'a, T, K> {
        async move {
            let conn = self.state.conn.clone();
            // Each result is matched where it is made, and each handler's
            // future dropped before anything else is awaited: a value
            // still alive at an `.await` takes room in every connection's
            // task for its whole life.
            {
                // Boxed: a rare path (see the module docs); dropped once done.
                let mut on_open = Box::pin(component.on_open(&conn));
                match poll_fn(|cx| self.poll_handler(on_open.as_mut(), cx)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        let req =
                            CloseRequest::new(CloseCode::POLICY, "rejected", CloseReason::Rejected);
                        return End::close(req, Some(Error::Handler(err)));
                    }
                    Err(end) => return end,
                }
            }
            loop {
                if let Some(err) = self.state.broken.take() {
                    return End::close(abnormal(), Some(*err));
                }
                let msg = match poll_fn(|cx| self.poll_next(cx)).await {
                    Ok(msg) => msg,
                    Err(end) => return end,
                };
                if self.state.rate.is_some() {
                    match self.state.admit() {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(end) => return end,
                    }
                }
                let err = {
                    let mut handler = pin!(component.on_message(&conn, msg));
                    // Moved into the poll: the task holds one pointer to
                    // the handler, not two.
                    let this = &mut *self;
                    match poll_fn(move |cx| this.poll_handler(handler.as_mut(), cx)).await {
                        Ok(Ok(())) => continue,
                        Ok(Err(err)) => err,
                        Err(end) => return end,
                    }
                };
                self.report(component, Error::Handler(err)).await;
            }
        }
    }

    /// The next inbound message, or what ends the connection instead.
    ///
    /// While input is readable, replies wait in the outbox (unless it asks
    /// for attention) and are written and flushed once, when the input
    /// runs out: one look at the queue and one write per batch of input
    /// rather than per message. An outbox past a quarter of its bounds
    /// that the transport cannot take yet stops the reading until it can,
    /// where the write timeout guards the wait: a peer that sends without
    /// reading its replies is read no faster than it reads.
    fn poll_next(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Message, End>> {
        if self.state.conn.outbox().needs_attention() {
            if let Some(end) = self.write(cx) {
                return Poll::Ready(Err(end));
            }
            if self.state.unflushed
                && self.state.conn.outbox().needs_attention()
                && self.write_guarded()
            {
                return Poll::Pending;
            }
        }
        // One read can hold thousands of small messages. Handled in one
        // poll, what they send to other connections would pass those
        // connections' queue bounds before their tasks could write any of
        // it out (one client's burst of 1,100 lines closed every other
        // member of a chat as a slow consumer). So after
        // `MESSAGES_PER_POLL`, what is queued is written and the task
        // yields. tokio's cooperative budget does the same with a
        // thread-local access per message: 945 -> 973 instructions per
        // message in the TCP echo (`scripts/callgrind.sh`), where this
        // count is kept anyway.
        if self.state.received_messages >= MESSAGES_PER_POLL {
            cx.waker().wake_by_ref();
            return self.write_and_wait(cx);
        }
        match self.io.poll_recv(cx) {
            Poll::Ready(Ok(Received::Message(msg))) => {
                self.state.received_messages += 1;
                self.state.received_bytes += msg.len() as u64;
                Poll::Ready(Ok(msg))
            }
            Poll::Ready(Ok(Received::Closed(frame))) => Poll::Ready(Err(peer_closed(frame))),
            Poll::Ready(Err(err)) => Poll::Ready(Err(read_failed(err))),
            Poll::Pending => self.write_and_wait(cx),
        }
    }

    /// The end of a batch of input: counts it, writes out what is queued
    /// and waits (unless the write ended the connection).
    fn write_and_wait(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Message, End>> {
        self.state.count_received();
        match self.write(cx) {
            Some(end) => Poll::Ready(Err(end)),
            None => Poll::Pending,
        }
    }

    /// One poll of a running handler: `Ready` with its output, or with
    /// `Err(End::Forced)` if shutdown's grace period ends first; while it
    /// waits, what is queued is written out and flushed. The loop awaits
    /// it through `poll_fn` in place, so the handler's future lives in the
    /// loop's own state rather than in a future of its own.
    fn poll_handler<F: Future>(
        &mut self,
        fut: Pin<&mut F>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<F::Output, End>> {
        // The handler first: one that completes at once (the common case)
        // leaves its replies to `poll_next`, which writes them with those
        // of the other messages already readable.
        self.state.conn.outbox().set_running();
        if let Poll::Ready(out) = fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        self.state.count_received();
        match self.poll_write(cx) {
            Ok(Some(Signal::Force)) => Poll::Ready(Err(End::Forced)),
            Ok(_) => Poll::Pending,
            // The loop ends on it once the handler returns.
            Err(err) => {
                self.state.broken = Some(Box::new(err));
                Poll::Pending
            }
        }
    }

    /// Writes out the queue and turns a signal or a write error into the
    /// end of the connection.
    fn write(&mut self, cx: &mut TaskContext<'_>) -> Option<End> {
        match self.poll_write(cx) {
            Ok(None) => None,
            Ok(Some(Signal::Force)) => Some(End::Forced),
            Ok(Some(Signal::Close(req))) => Some(End::close(req, None)),
            Err(err) => Some(End::close(abnormal(), Some(err))),
        }
    }

    /// Registers the task's waker, hands everything queued to the
    /// transport and flushes; after a write error, only the first. What
    /// the stream has taken leaves the outbox's bounds, and what was
    /// queued meanwhile goes the same way. Returns the signal read with
    /// the queue, so that a close or force requested at any moment is
    /// either seen now or wakes the task later.
    fn poll_write(&mut self, cx: &mut TaskContext<'_>) -> Result<Option<Signal>, Error> {
        // Woken with nothing in flight: if nothing was queued either (a
        // keepalive tick, a ping, a message that needs no answer), the
        // connection is idle and lets go of its storage for messages. Not
        // on every flush: a connection that keeps sending would allocate
        // it again for every batch.
        let mut idle =
            !self.state.unflushed && self.state.batch.is_empty() && self.state.handed.is_empty();
        loop {
            let state = &mut *self.state;
            let signal = state.conn.outbox().take(cx.waker(), &mut state.batch, idle);
            if idle && state.batch.is_empty() {
                state.handed = VecDeque::new();
            }
            idle = false;
            match &signal {
                Some(Signal::Force) => return Ok(signal),
                Some(Signal::Close(req)) if req.discard => return Ok(signal),
                _ => {}
            }
            if self.state.broken.is_some() {
                return Ok(signal);
            }
            if !self.state.batch.is_empty() {
                self.hand_over(cx)?;
            }
            if !self.state.unflushed {
                return Ok(signal);
            }
            match self.io.poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.state.unflushed = false;
                    self.state.stall = None;
                    // A batch the full transport left, or messages queued
                    // meanwhile: round again.
                    let more_queued = self.release_written();
                    if !more_queued && self.state.batch.is_empty() {
                        return Ok(signal);
                    }
                }
                Poll::Ready(Err(err)) => return Err(err),
                Poll::Pending => {
                    self.release_written();
                    if self.stalled(cx) {
                        return Ok(Some(self.state.cut_off()));
                    }
                    return Ok(signal);
                }
            }
        }
    }

    /// Hands the batch to the transport until it is empty or the transport
    /// is full (the flush that follows frees it).
    fn hand_over(&mut self, cx: &mut TaskContext<'_>) -> Result<(), Error> {
        let (mut count, mut bytes) = (0, 0);
        let result = loop {
            let Some(msg) = self.state.batch.pop_front() else {
                break Ok(());
            };
            match self.io.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(err)) => {
                    self.state.batch.push_front(msg);
                    break Err(err);
                }
                Poll::Pending => {
                    self.state.batch.push_front(msg);
                    break Ok(());
                }
            }
            let len = msg.len();
            count += 1;
            bytes += len;
            self.state.unflushed = true;
            if let Err(err) = self.io.start_send(msg) {
                break Err(err);
            }
            let end = self.io.write_progress().map_or(0, |p| p.buffered);
            self.state.handed.push_back(Handed { end, len });
        };
        let stats = &self.state.conn.context().stats;
        Stats::add(&stats.messages_out, count as u64);
        Stats::add(&stats.bytes_out, bytes as u64);
        result
    }

    /// Releases from the outbox's bounds the messages the stream has taken
    /// all of (all of them, for a transport that does not count). Returns
    /// whether more waits in the queue.
    fn release_written(&mut self) -> bool {
        let written = self.io.write_progress().map_or(u64::MAX, |p| p.written);
        let (mut messages, mut bytes) = (0, 0);
        while let Some(handed) = self.state.handed.front()
            && handed.end <= written
        {
            messages += 1;
            bytes += handed.len;
            self.state.handed.pop_front();
        }
        messages > 0 && self.state.conn.outbox().release(messages, bytes)
    }

    /// Whether a write timeout guards the waits of this connection's
    /// writes (configured, and the transport counts what it writes).
    fn write_guarded(&self) -> bool {
        self.state.conn.context().config.write_timeout.is_some()
            && self.io.write_progress().is_some()
    }

    /// Whether the stream has taken no byte for `write_timeout` while
    /// output waits. A peer that reads slowly but steadily is not stalled:
    /// each byte taken restarts the clock. The timer is allocated only
    /// when a write first waits.
    fn stalled(&mut self, cx: &mut TaskContext<'_>) -> bool {
        let (Some(timeout), Some(progress)) = (
            self.state.conn.context().config.write_timeout,
            self.io.write_progress(),
        ) else {
            return false;
        };
        let stall = self.state.stall.get_or_insert_with(|| {
            Box::new(Stall {
                timer: Box::pin(sleep(timeout)),
                written: progress.written,
            })
        });
        if stall.written != progress.written {
            stall.written = progress.written;
            stall.timer.as_mut().reset(Instant::now() + timeout);
        }
        stall.timer.as_mut().poll(cx).is_ready()
    }

    /// Runs `on_error`. A panic in it is logged and closes the connection;
    /// it is caught here, so that the close path that called it goes on.
    fn report<'a, K: MessageComponent + ?Sized>(
        &'a mut self,
        component: &'a K,
        err: Error,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let conn = self.state.conn.clone();
            // Called inside the guard, as `on_close` is in `drive`.
            let on_error =
                AssertUnwindSafe(async { component.on_error(&conn, err).await }).catch_unwind();
            let mut on_error = pin!(on_error);
            let done = poll_fn(|cx| self.poll_handler(on_error.as_mut(), cx)).await;
            if let Ok(Err(panic)) = done {
                Stats::add(&conn.context().stats.panics, 1);
                tracing::error!(panic = %panic_message(&*panic), "on_error panicked");
                conn.begin_close(CloseRequest::new(
                    CloseCode::ERROR,
                    "internal error",
                    CloseReason::Panic,
                ));
            }
        })
    }

    /// What follows the message loop: the close, then `on_close` (the
    /// connection leaves the server when the driver is dropped, just
    /// after). Returns why it ended. Boxed, so that
    /// its state is allocated only when it starts, not held beside the
    /// loop's by every connection's task.
    fn finish<'a, K: MessageComponent + ?Sized>(
        &'a mut self,
        component: &'a K,
        end: End,
    ) -> BoxFuture<'a, CloseReason> {
        Box::pin(async move {
            self.state.count_received();
            // A transport that panics while closing still lets `on_close`
            // run, with the reason the close began for, and the connection
            // leave the server.
            let reason = match AssertUnwindSafe(self.close(component, end))
                .catch_unwind()
                .await
            {
                Ok(reason) => reason,
                Err(panic) => {
                    Stats::add(&self.state.conn.context().stats.panics, 1);
                    tracing::error!(conn = %self.state.conn.id(), panic = %panic_message(&*panic), "transport panicked while closing");
                    let panicked =
                        CloseRequest::new(CloseCode::ERROR, "internal error", CloseReason::Panic);
                    self.state.conn.begin_close(panicked).reason
                }
            };
            self.state.discard_batch();
            tracing::debug!(%reason, "connection closed");

            // The call inside the guarded future: a handler written as a
            // plain `fn` returning a future can panic before any future
            // exists.
            let conn = &self.state.conn;
            let on_close =
                AssertUnwindSafe(async { component.on_close(conn, reason.clone()).await })
                    .catch_unwind();
            let ctx = conn.context();
            if let Err(panic) = on_close.await {
                Stats::add(&ctx.stats.panics, 1);
                tracing::error!(conn = %conn.id(), panic = %panic_message(&*panic), "on_close panicked");
            }
            reason
        })
    }

    /// Carries out the end: begins the close (an earlier request wins),
    /// reports the error (if any) to `on_error`, flushes what was queued
    /// (unless discarding) and closes the transport, bounded by
    /// `close_timeout` and by shutdown's force. Returns why the connection
    /// ended.
    async fn close<K: MessageComponent + ?Sized>(
        &mut self,
        component: &K,
        end: End,
    ) -> CloseReason {
        let (req, err) = match end {
            End::Forced => return CloseReason::Shutdown,
            End::Close(closing) => {
                let (req, err) = *closing;
                (self.state.conn.begin_close(req), err)
            }
        };
        if let Some(err) = err {
            self.report(component, err).await;
        }
        // The connection is gone: no close frame can be sent.
        if matches!(req.reason, CloseReason::Error(ref f) if f.code == CloseCode::ABNORMAL) {
            return req.reason;
        }
        // The peer is not reading: no flush, no closing handshake to
        // wait for; the socket is let go now.
        if req.discard {
            // The outbox counted the queue it dropped; the batch taken
            // from it and not yet handed over is dropped too.
            let discarded = self.state.discard_batch();
            if matches!(req.reason, CloseReason::SlowConsumer) {
                Stats::add(&self.state.conn.context().stats.dropped, discarded as u64);
            }
            poll_fn(|cx| {
                self.io.abort(cx, &req.frame);
                Poll::Ready(())
            })
            .await;
            return req.reason;
        }
        let timeout = self.state.conn.context().config.close_timeout;
        let closing = poll_fn(|cx| {
            if let Some(Signal::Force) = self.state.conn.outbox().signal(cx.waker()) {
                return Poll::Ready(());
            }
            if self.state.broken.is_some() {
                self.state.discard_batch();
            } else {
                // What the transport holds unflushed, its close writes
                // out first; the batch it had no room for waits here.
                match self.poll_write(cx) {
                    Ok(_) if self.state.batch.is_empty() => {}
                    Ok(_) => return Poll::Pending,
                    Err(err) => {
                        tracing::debug!(error = %err, "flush before close failed");
                        self.state.broken = Some(Box::new(err));
                    }
                }
            }
            if let Err(err) = ready!(self.io.poll_close(cx, &req.frame)) {
                tracing::debug!(error = %err, "close failed");
            }
            Poll::Ready(())
        });
        if tokio::time::timeout(timeout, closing).await.is_err() {
            tracing::debug!(?timeout, "close timed out");
        }
        req.reason
    }
}

impl State {
    /// Closes a stalled connection as a slow consumer (unless a close is
    /// in force already) and returns the close in force.
    fn cut_off(&mut self) -> Signal {
        self.stall = None;
        let req = self.conn.begin_close(CloseRequest::slow_consumer());
        if matches!(req.reason, CloseReason::SlowConsumer) {
            let timeout = self.conn.context().config.write_timeout;
            Stats::add(&self.conn.context().stats.slow_consumer_closes, 1);
            tracing::info!(conn = %self.conn.id(), peer = %self.conn.peer_addr(), ?timeout, "closing slow consumer: its socket took no byte");
        }
        Signal::Close(req)
    }

    /// Applies the inbound rate limit to the message just read: whether to
    /// handle it, or the end of the connection.
    fn admit(&mut self) -> Result<bool, End> {
        let (Some(bucket), Some(limit)) = (&mut self.rate, &self.conn.context().config.rate_limit)
        else {
            return Ok(true);
        };
        if bucket.take(limit) {
            return Ok(true);
        }
        Stats::add(&self.conn.context().stats.rate_limited, 1);
        match limit.action {
            RateLimitAction::Drop => Ok(false),
            RateLimitAction::Close => {
                let frame = CloseFrame::from_static(CloseCode::POLICY, "rate limit exceeded");
                let req = CloseRequest {
                    frame: frame.clone(),
                    reason: CloseReason::Error(frame),
                    discard: false,
                };
                let err = Error::protocol(CloseCode::POLICY, "rate limit exceeded");
                Err(End::close(req, Some(err)))
            }
        }
    }

    /// Adds the messages received since the last call to the counters.
    fn count_received(&mut self) {
        let messages = std::mem::take(&mut self.received_messages);
        let bytes = std::mem::take(&mut self.received_bytes);
        if messages > 0 {
            let stats = &self.conn.context().stats;
            Stats::add(&stats.messages_in, u64::from(messages));
            Stats::add(&stats.bytes_in, bytes);
        }
    }

    /// Drops the batch, releasing it and what the transport holds from the
    /// outbox's bounds; returns how many messages the batch held (those
    /// handed to the transport are counted as sent already).
    fn discard_batch(&mut self) -> usize {
        let count = self.batch.len();
        let messages = count + self.handed.len();
        let bytes = self.batch.iter().map(Message::len).sum::<usize>()
            + self.handed.iter().map(|h| h.len).sum::<usize>();
        self.conn.outbox().release(messages, bytes);
        self.handed.clear();
        self.batch.clear();
        count
    }
}

fn peer_closed(frame: Option<CloseFrame>) -> End {
    let reply = frame
        .clone()
        .unwrap_or_else(|| CloseFrame::from_static(CloseCode::NORMAL, ""));
    let req = CloseRequest {
        frame: reply,
        reason: CloseReason::Peer(frame),
        discard: false,
    };
    End::close(req, None)
}

fn read_failed(err: Error) -> End {
    let req = match &err {
        Error::IdleTimeout => {
            CloseRequest::new(CloseCode::AWAY, "idle timeout", CloseReason::IdleTimeout)
        }
        Error::Protocol { code, source } => {
            let frame = CloseFrame::new(*code, truncate_reason(&source.to_string()));
            CloseRequest {
                frame: frame.clone(),
                reason: CloseReason::Error(frame),
                discard: false,
            }
        }
        _ => abnormal(),
    };
    End::close(req, Some(err))
}

/// The connection is gone (reset, broken pipe): no close frame can be sent.
fn abnormal() -> CloseRequest {
    let frame = CloseFrame::from_static(CloseCode::ABNORMAL, "");
    CloseRequest {
        frame: frame.clone(),
        reason: CloseReason::Error(frame),
        discard: true,
    }
}

/// WebSocket close reasons are limited to 123 bytes.
fn truncate_reason(s: &str) -> String {
    let mut end = s.len().min(123);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::task::{Context as TaskContext, Poll};
    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::error::{BoxError, Result};
    use crate::server::Context;
    use crate::test_support::{Quiet, Tiny};
    use crate::transport::TransportInfo;

    /// A transport that records what it is handed and writes it all at
    /// once, but is full, without waking anyone, for the second message
    /// it is offered.
    struct FullOnce {
        sent: Arc<std::sync::Mutex<Vec<Message>>>,
        offered: usize,
        buffered: u64,
    }

    impl TransportConn for FullOnce {
        fn poll_recv(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<Received>> {
            Poll::Pending
        }
        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<()>> {
            self.offered += 1;
            if self.offered == 2 {
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }
        fn start_send(&mut self, msg: Message) -> Result<()> {
            self.buffered += msg.len() as u64;
            self.sent.lock().expect("not poisoned").push(msg);
            Ok(())
        }
        fn poll_flush(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(&mut self, _: &mut TaskContext<'_>, _: &CloseFrame) -> Poll<Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn write_progress(&self) -> Option<crate::transport::WriteProgress> {
            Some(crate::transport::WriteProgress {
                buffered: self.buffered,
                written: self.buffered,
            })
        }
    }

    #[test]
    fn what_a_full_transport_left_goes_out_once_a_flush_frees_it() {
        let ctx = Context::new(Config::default().queue_max_bytes(100));
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let conn = ctx.open(peer, TransportInfo::new("test"), Default::default(), None);
        for i in 0..3 {
            conn.send(format!("m{i}")).expect("room");
        }
        let sent = Arc::default();
        let transport = FullOnce {
            sent: Arc::clone(&sent),
            offered: 0,
            buffered: 0,
        };
        let mut task = std::pin::pin!(drive(transport, conn.clone(), Arc::new(Quiet), None));
        // Polled with a waker nothing calls: the flush that frees the
        // transport is the only chance for the rest of the batch.
        let mut poll = || {
            let mut cx = TaskContext::from_waker(std::task::Waker::noop());
            assert!(task.as_mut().poll(&mut cx).is_pending());
        };
        poll();
        assert_eq!(sent.lock().expect("not poisoned").len(), 3);

        // Written out, messages leave the byte bound: 100 bytes go through
        // a 100-byte bound ten times over.
        for _ in 0..10 {
            for _ in 0..10 {
                conn.send(Message::binary(vec![0; 10])).expect("room");
            }
            poll();
        }
        assert_eq!(sent.lock().expect("not poisoned").len(), 103);
        let stats = ctx.stats.snapshot();
        assert_eq!((stats.messages_out, stats.bytes_out), (103, 6 + 1000));
        assert_eq!(conn.queued_messages(), 0);
    }

    /// A peer that sends 1,000 messages at once and a socket that takes
    /// nothing.
    #[derive(Default)]
    struct Stuck {
        received: usize,
        buffered: u64,
    }

    impl TransportConn for Stuck {
        fn poll_recv(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<Received>> {
            if self.received == 1000 {
                return Poll::Pending;
            }
            self.received += 1;
            Poll::Ready(Ok(Received::Message(Message::text("ping"))))
        }
        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(&mut self, msg: Message) -> Result<()> {
            self.buffered += msg.len() as u64;
            Ok(())
        }
        fn poll_flush(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<()>> {
            Poll::Pending
        }
        fn poll_close(&mut self, _: &mut TaskContext<'_>, _: &CloseFrame) -> Poll<Result<()>> {
            Poll::Pending
        }
        fn write_progress(&self) -> Option<crate::transport::WriteProgress> {
            Some(crate::transport::WriteProgress {
                buffered: self.buffered,
                written: 0,
            })
        }
    }

    struct Echo;

    impl MessageComponent for Echo {
        async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
            let _ = conn.send(msg);
            Ok(())
        }
    }

    #[test]
    fn without_a_write_timeout_reading_goes_on_and_the_queue_bound_ends_it() {
        // No timer would end a pause behind the full socket, so there is
        // none: the peer is read on until its replies overflow the queue.
        let config = Config::default().write_timeout(None).queue_max_messages(8);
        let ctx = Context::new(config);
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let conn = ctx.open(peer, TransportInfo::new("test"), Default::default(), None);
        let task = drive(Stuck::default(), conn, Arc::new(Echo), None);
        let mut cx = TaskContext::from_waker(std::task::Waker::noop());
        let reason = match std::pin::pin!(task).poll(&mut cx) {
            Poll::Ready(reason) => reason,
            Poll::Pending => panic!("the connection waits behind a socket with no timer"),
        };
        assert_eq!(reason, CloseReason::SlowConsumer);
        assert_eq!(ctx.stats.snapshot().slow_consumer_closes, 1);
    }

    /// Every idle connection pays for its task: the driver's future keeps
    /// only the message loop's state inline (what follows the loop and
    /// `on_open` are boxed when they start, the driver's state is boxed),
    /// for a component served directly (its `on_message` future held
    /// inline) and as a `DynComponent` (a box). The bounds are the sizes
    /// measured when the WebSocket connection's whole task fitted tokio's
    /// 256-byte cell with 24 bytes to spare (`tests/idle_memory.rs` counts
    /// the task itself): a future that grows past them may push every
    /// connection's task to the next size, 384, a 512-byte block.
    #[test]
    fn the_connection_future_stays_small() {
        let ctx = Context::new(Config::default());
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let open = || ctx.open(peer, TransportInfo::new("test"), Default::default(), None);
        let direct = drive(Tiny::new(), open(), Arc::new(Quiet), None);
        let size = std::mem::size_of_val(&direct);
        assert!(size <= 144, "the connection future is {size} bytes");
        let object: Arc<dyn crate::DynComponent> = Arc::new(Quiet);
        let boxed = drive(Tiny::new(), open(), object, None);
        let size = std::mem::size_of_val(&boxed);
        assert!(
            size <= 112,
            "the connection future is {size} bytes with a DynComponent"
        );
        // A 152-byte request takes mimalloc's 160-byte block; 8 more
        // would take a 192-byte one in every connection.
        let state = std::mem::size_of::<State>();
        assert!(state <= 152, "the driver's state is {state} bytes");
    }

    /// A scripted socket, shared between a transport and the test: what
    /// the peer sends, how many messages the transport buffers, how many
    /// the stream will take, and a record of what it took.
    #[derive(Default)]
    struct Wire {
        inbound: VecDeque<Result<Received>>,
        /// Messages the transport buffers before it is full (0: no limit).
        capacity: usize,
        /// Messages the stream takes from now on (`None`: all of them).
        budget: Option<usize>,
        /// Messages the stream takes per flush before it asks to be polled
        /// again (0: no limit).
        per_flush: usize,
        buffer: VecDeque<Message>,
        written: Vec<Message>,
        buffered_bytes: u64,
        written_bytes: u64,
        closed: Option<CloseFrame>,
        aborted: Option<CloseFrame>,
        waker: Option<std::task::Waker>,
    }

    #[derive(Clone, Default)]
    struct Socket(Arc<std::sync::Mutex<Wire>>);

    impl Socket {
        fn wire(&self) -> std::sync::MutexGuard<'_, Wire> {
            self.0.lock().expect("not poisoned")
        }

        /// Changes the script and wakes the connection's task.
        fn update(&self, change: impl FnOnce(&mut Wire)) {
            let mut wire = self.wire();
            change(&mut wire);
            if let Some(waker) = wire.waker.take() {
                waker.wake();
            }
        }

        fn written(&self) -> Vec<Message> {
            self.wire().written.clone()
        }
    }

    impl Wire {
        /// Moves what the stream takes from the buffer to `written`.
        fn poll_write_out(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
            let mut moved = 0;
            while !self.buffer.is_empty() && self.budget != Some(0) {
                if self.per_flush > 0 && moved == self.per_flush {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                let msg = self.buffer.pop_front().expect("not empty");
                self.written_bytes += msg.len() as u64;
                self.written.push(msg);
                self.budget = self.budget.map(|b| b - 1);
                moved += 1;
            }
            if self.buffer.is_empty() {
                return Poll::Ready(Ok(()));
            }
            self.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    impl TransportConn for Socket {
        fn poll_recv(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Received>> {
            let mut wire = self.wire();
            match wire.inbound.pop_front() {
                Some(received) => Poll::Ready(received),
                None => {
                    wire.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
        fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
            let mut wire = self.wire();
            if wire.capacity > 0 && wire.buffer.len() >= wire.capacity {
                wire.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }
        fn start_send(&mut self, msg: Message) -> Result<()> {
            let mut wire = self.wire();
            wire.buffered_bytes += msg.len() as u64;
            wire.buffer.push_back(msg);
            Ok(())
        }
        fn poll_flush(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
            self.wire().poll_write_out(cx)
        }
        fn poll_close(&mut self, cx: &mut TaskContext<'_>, frame: &CloseFrame) -> Poll<Result<()>> {
            let mut wire = self.wire();
            ready!(wire.poll_write_out(cx))?;
            wire.closed = Some(frame.clone());
            Poll::Ready(Ok(()))
        }
        fn abort(&mut self, _: &mut TaskContext<'_>, frame: &CloseFrame) {
            let mut wire = self.wire();
            wire.buffer.clear();
            wire.aborted = Some(frame.clone());
        }
        fn write_progress(&self) -> Option<crate::transport::WriteProgress> {
            let wire = self.wire();
            Some(crate::transport::WriteProgress {
                buffered: wire.buffered_bytes,
                written: wire.written_bytes,
            })
        }
    }

    fn open(config: Config) -> (Arc<Context>, Connection) {
        let ctx = Context::new(config);
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let conn = ctx.open(peer, TransportInfo::new("test"), Default::default(), None);
        (ctx, conn)
    }

    fn texts(messages: &[Message]) -> Vec<&str> {
        messages
            .iter()
            .map(|m| m.as_text().expect("text"))
            .collect()
    }

    /// Waits for a connection's task, failing the test if it never ends.
    async fn ended(task: tokio::task::JoinHandle<CloseReason>) -> CloseReason {
        tokio::time::timeout(Duration::from_secs(3600), task)
            .await
            .expect("the connection ends")
            .expect("no panic")
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_takes_no_byte_is_cut_off_at_the_write_timeout() {
        let (ctx, conn) = open(Config::default().write_timeout(Some(Duration::from_secs(1))));
        let socket = Socket::default();
        socket.update(|w| w.budget = Some(0));
        conn.send("waiting").expect("room");
        let start = Instant::now();
        let task = tokio::spawn(drive(socket.clone(), conn, Arc::new(Quiet), None));

        tokio::time::sleep(Duration::from_millis(999)).await;
        assert!(!task.is_finished(), "cut off before the write timeout");
        assert_eq!(ended(task).await, CloseReason::SlowConsumer);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let aborted = socket.wire().aborted.clone().expect("let go at once");
        assert_eq!(
            (aborted.code, &*aborted.reason),
            (CloseCode::POLICY, "slow consumer")
        );
        assert_eq!(ctx.stats.snapshot().slow_consumer_closes, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn each_byte_the_socket_takes_restarts_the_write_timeout() {
        let (_ctx, conn) = open(Config::default().write_timeout(Some(Duration::from_secs(1))));
        let socket = Socket::default();
        socket.update(|w| w.budget = Some(0));
        conn.send("first").expect("room");
        conn.send("second").expect("room");
        let start = Instant::now();
        let task = tokio::spawn(drive(socket.clone(), conn, Arc::new(Quiet), None));

        tokio::time::sleep(Duration::from_millis(800)).await;
        socket.update(|w| w.budget = Some(1));
        assert_eq!(ended(task).await, CloseReason::SlowConsumer);
        assert_eq!(start.elapsed(), Duration::from_millis(1800));
        assert_eq!(texts(&socket.written()), ["first"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_does_not_read_is_not_read_either_until_the_write_timeout() {
        let config = Config::default()
            .write_timeout(Some(Duration::from_secs(1)))
            .queue_max_messages(8);
        let (ctx, conn) = open(config);
        let socket = Socket::default();
        socket.update(|w| {
            w.budget = Some(0);
            w.inbound = (0..1000)
                .map(|_| Ok(Received::Message(Message::text("ping"))))
                .collect();
        });
        let start = Instant::now();
        let task = tokio::spawn(drive(socket.clone(), conn, Arc::new(Echo), None));

        // Paused behind the full socket rather than reading on until the
        // replies overflow the queue (what happens without a write timeout).
        assert_eq!(ended(task).await, CloseReason::SlowConsumer);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let read = 1000 - socket.wire().inbound.len();
        assert!(
            read <= 8,
            "{read} messages read from a peer that reads nothing"
        );
        assert_eq!(ctx.stats.snapshot().messages_in, read as u64);
    }

    /// Sends five messages and closes.
    struct FiveThenClose;

    impl MessageComponent for FiveThenClose {
        async fn on_message(&self, conn: &Connection, _: Message) -> Result<(), BoxError> {
            for i in 0..5 {
                conn.send(format!("m{i}"))?;
            }
            conn.close();
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_close_writes_out_everything_queued_before_it() {
        let (_ctx, conn) = open(Config::default());
        let socket = Socket::default();
        socket.update(|w| {
            w.capacity = 2;
            w.per_flush = 1;
            w.inbound
                .push_back(Ok(Received::Message(Message::text("go"))));
        });
        let reason = drive(socket.clone(), conn, Arc::new(FiveThenClose), None).await;
        assert!(matches!(reason, CloseReason::Local(_)), "{reason:?}");
        assert_eq!(texts(&socket.written()), ["m0", "m1", "m2", "m3", "m4"]);
        let closed = socket.wire().closed.clone().expect("closed");
        assert_eq!(closed.code, CloseCode::NORMAL);
    }

    /// Records how many messages its connection had queued at `on_close`.
    #[derive(Default)]
    struct QueuedAtClose(std::sync::atomic::AtomicUsize);

    impl MessageComponent for QueuedAtClose {
        async fn on_message(&self, _: &Connection, _: Message) -> Result<(), BoxError> {
            Ok(())
        }
        async fn on_close(&self, conn: &Connection, _: CloseReason) {
            let queued = conn.queued_messages();
            self.0.store(queued, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A transport whose peer has gone and whose close panics.
    struct PanicsOnClose;

    impl TransportConn for PanicsOnClose {
        fn poll_recv(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<Received>> {
            Poll::Ready(Ok(Received::Closed(None)))
        }
        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(&mut self, _: Message) -> Result<()> {
            Ok(())
        }
        fn poll_flush(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(&mut self, _: &mut TaskContext<'_>, _: &CloseFrame) -> Poll<Result<()>> {
            panic!("close failed")
        }
    }

    /// Records the reason `on_close` was given.
    #[derive(Default)]
    struct ClosedWith(std::sync::Mutex<Option<CloseReason>>);

    impl MessageComponent for ClosedWith {
        async fn on_message(&self, _: &Connection, _: Message) -> Result<(), BoxError> {
            Ok(())
        }
        async fn on_close(&self, _: &Connection, reason: CloseReason) {
            *self.0.lock().expect("not poisoned") = Some(reason);
        }
    }

    #[tokio::test]
    async fn a_transport_that_panics_while_closing_still_gets_on_close_and_leaves() {
        let (ctx, conn) = open(Config::default());
        let component = Arc::new(ClosedWith::default());
        let task = tokio::spawn(drive(PanicsOnClose, conn.clone(), component.clone(), None));
        // The peer's close began it: that is why the connection closed.
        assert!(matches!(ended(task).await, CloseReason::Peer(None)));
        let closed_with = component.0.lock().expect("not poisoned").take();
        assert!(matches!(closed_with, Some(CloseReason::Peer(None))));
        let counters = ctx.stats.snapshot();
        assert_eq!(counters.panics, 1);
        assert_eq!(counters.open_connections, 0);
        assert!(ctx.registry().is_empty());
        assert!(conn.send("after the end").is_err());
    }

    /// Joins one hub when it opens; records whether `on_close` ran.
    #[derive(Default)]
    struct Member {
        hub: crate::Hub,
        closed: std::sync::atomic::AtomicBool,
    }

    impl MessageComponent for Member {
        async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
            self.hub.join(conn);
            Ok(())
        }
        async fn on_message(&self, _: &Connection, _: Message) -> Result<(), BoxError> {
            Ok(())
        }
        async fn on_close(&self, _: &Connection, _: CloseReason) {
            self.closed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn a_driver_dropped_before_its_first_poll_takes_its_connection_off_the_server() {
        let (ctx, conn) = open(Config::default());
        let component = Arc::new(Member::default());
        let driver = drive(Tiny::new(), conn.clone(), component.clone(), None);
        assert_eq!(ctx.stats.snapshot().open_connections, 1);
        assert_eq!(ctx.registry().len(), 1);

        drop(driver);
        assert_eq!(ctx.stats.snapshot().open_connections, 0);
        assert!(ctx.registry().is_empty());
        assert!(conn.send("after the end").is_err());
        assert!(!component.closed.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_driver_dropped_while_it_waits_leaves_its_hubs_and_the_server() {
        let (ctx, conn) = open(Config::default());
        let component = Arc::new(Member::default());
        let mut driver = Box::pin(drive(Tiny::new(), conn.clone(), component.clone(), None));
        // One poll runs `on_open` and leaves the loop waiting on a
        // transport that never has input.
        let first = std::future::poll_fn(|cx| Poll::Ready(driver.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        assert_eq!(component.hub.len(), 1);
        conn.send("queued").expect("open");

        // What a task aborted, or pending when its runtime shuts down, does.
        drop(driver);
        assert_eq!(component.hub.len(), 0);
        assert_eq!(ctx.stats.snapshot().open_connections, 0);
        assert!(ctx.registry().is_empty());
        assert!(conn.send("after the end").is_err());
        assert_eq!(conn.queued_messages(), 0);
        // Nothing holds the server's context but this test: no cycle
        // through the registry is left.
        drop(conn);
        assert_eq!(Arc::strong_count(&ctx), 1);
        // The loop never ended, so `on_close` did not run.
        assert!(!component.closed.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_slow_consumer_gets_nothing_more_and_its_counts_are_released() {
        let (ctx, conn) = open(Config::default().queue_max_messages(8));
        let socket = Socket::default();
        socket.update(|w| {
            w.capacity = 2;
            w.budget = Some(0);
        });
        for i in 0..5 {
            conn.send(Message::text(format!("first-{i:02}")))
                .expect("room");
        }
        let component = Arc::new(QueuedAtClose::default());
        component
            .0
            .store(usize::MAX, std::sync::atomic::Ordering::Relaxed);
        let task = drive(socket.clone(), conn.clone(), Arc::clone(&component), None);
        let mut task = std::pin::pin!(task);
        let mut cx = TaskContext::from_waker(std::task::Waker::noop());
        // Two in the transport's buffer, three in the batch it had no room for.
        assert!(task.as_mut().poll(&mut cx).is_pending());
        assert_eq!(socket.wire().buffer.len(), 2);

        // The socket could take everything now, but the connection is
        // declared slow first: three more queued, the fourth overflows.
        socket.update(|w| w.budget = None);
        for i in 0..3 {
            conn.send(Message::text(format!("later-{i:02}")))
                .expect("room");
        }
        assert!(conn.send("overflow").is_err());
        let Poll::Ready(reason) = task.as_mut().poll(&mut cx) else {
            panic!("a slow consumer is let go at once");
        };
        assert_eq!(reason, CloseReason::SlowConsumer);
        assert_eq!(socket.written(), []);
        assert_eq!(
            socket.wire().aborted.as_ref().map(|f| f.code),
            Some(CloseCode::POLICY)
        );
        let queued = component.0.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(queued, 0, "messages still counted as queued at on_close");
        // The three queued later and the one refused, then the batch of
        // three; the two in the transport's buffer count as sent.
        let stats = ctx.stats.snapshot();
        assert_eq!((stats.dropped, stats.messages_out), (3 + 1 + 3, 2));
    }

    #[tokio::test]
    async fn what_was_queued_while_the_transport_was_full_follows_what_it_left() {
        let (_ctx, conn) = open(Config::default());
        let socket = Socket::default();
        socket.update(|w| {
            w.capacity = 1;
            w.budget = Some(0);
        });
        conn.send("a").expect("room");
        conn.send("b").expect("room");
        let mut task = std::pin::pin!(drive(socket.clone(), conn.clone(), Arc::new(Quiet), None));
        let mut cx = TaskContext::from_waker(std::task::Waker::noop());
        // "a" in the transport, "b" in the batch it had no room for.
        assert!(task.as_mut().poll(&mut cx).is_pending());
        // Queued behind the batch; its push is the task's one wake-up.
        conn.send("c").expect("room");
        socket.update(|w| w.budget = None);
        assert!(task.as_mut().poll(&mut cx).is_pending());
        assert_eq!(texts(&socket.written()), ["a", "b", "c"]);
        assert_eq!(conn.queued_messages(), 0);
    }

    #[tokio::test]
    async fn nothing_more_is_written_once_shutdown_forces_the_end() {
        let (_ctx, conn) = open(Config::default());
        let socket = Socket::default();
        let mut task = std::pin::pin!(drive(socket.clone(), conn.clone(), Arc::new(Quiet), None));
        let mut cx = TaskContext::from_waker(std::task::Waker::noop());
        conn.send("before").expect("room");
        assert!(task.as_mut().poll(&mut cx).is_pending());
        conn.send("after").expect("room");
        conn.outbox().force();
        assert_eq!(
            task.as_mut().poll(&mut cx),
            Poll::Ready(CloseReason::Shutdown)
        );
        assert_eq!(texts(&socket.written()), ["before"]);
        assert_eq!(socket.wire().closed, None);
    }

    #[tokio::test]
    async fn an_idle_peer_is_closed_with_1001() {
        let (_ctx, conn) = open(Config::default());
        let socket = Socket::default();
        socket.update(|w| w.inbound.push_back(Err(Error::IdleTimeout)));
        let reason = drive(socket.clone(), conn, Arc::new(Quiet), None).await;
        assert_eq!(reason, CloseReason::IdleTimeout);
        let closed = socket.wire().closed.clone().expect("closed");
        assert_eq!(
            (closed.code, &*closed.reason),
            (CloseCode::AWAY, "idle timeout")
        );
    }

    #[tokio::test]
    async fn a_protocol_error_closes_with_its_code_and_a_reason_cut_to_123_bytes() {
        let (_ctx, conn) = open(Config::default());
        let socket = Socket::default();
        // Two-byte characters: byte 123 falls inside one.
        let long = "é".repeat(100);
        let err = Error::protocol(CloseCode::INVALID, long.clone());
        socket.update(|w| w.inbound.push_back(Err(err)));
        let reason = drive(socket.clone(), conn, Arc::new(Quiet), None).await;
        let closed = socket.wire().closed.clone().expect("closed");
        assert_eq!(closed.code, CloseCode::INVALID);
        assert_eq!(&*closed.reason, &long[..122]);
        assert_eq!(reason, CloseReason::Error(closed));
    }
}
