//! The connection driver: one task per connection runs both directions.
//!
//! Inbound, the driver reads one message, runs `on_message` to completion and
//! only then reads the next (the inbound back-pressure). Outbound, it moves
//! the whole queue into a local batch under one lock, hands each message to
//! the transport and flushes once per batch. Writing goes on while a handler
//! runs, so a handler that sends and then awaits something does not stall
//! its own replies.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::close::{CloseCode, CloseFrame, CloseReason};
use crate::component::MessageComponent;
use crate::connection::{CloseRequest, Connection, Signals};
use crate::error::{BoxError, Error};
use crate::limits::{RateLimit, RateLimitAction, TokenBucket};
use crate::message::Message;
use crate::stats::Stats;
use crate::transport::{Received, TransportConn};

/// Runs one established connection from `on_open` to `on_close`.
pub(crate) async fn drive<T: TransportConn, K: MessageComponent + ?Sized>(
    io: T,
    conn: Connection,
    component: Arc<K>,
) -> CloseReason {
    let ctx = conn.context().clone();
    Stats::add(&ctx.stats.open, 1);
    Stats::add(&ctx.stats.opened_total, 1);
    let rate = ctx
        .config
        .rate_limit
        .map(|limit| (limit, TokenBucket::new(&limit)));
    let mut driver = Driver {
        drain_at: (
            ctx.config.queue_max_messages.div_ceil(4),
            ctx.config.queue_max_bytes.div_ceil(4),
        ),
        rate,
        io,
        conn: conn.clone(),
        batch: VecDeque::new(),
        unflushed: false,
        broken: None,
        received: (0, 0),
    };

    let reason = driver.run(&*component).await;
    driver.discard_batch();
    tracing::debug!(%reason, "connection closed");
    // The call inside the guarded future: a handler written as a plain
    // `fn` returning a future can panic before any future exists.
    let on_close =
        AssertUnwindSafe(async { component.on_close(&conn, reason.clone()).await }).catch_unwind();
    if let Err(panic) = on_close.await {
        Stats::add(&ctx.stats.panics, 1);
        tracing::error!(conn = %conn.id(), panic = %panic_message(&*panic), "on_close panicked");
    }
    conn.finish();
    ctx.unregister(&conn);
    ctx.stats
        .open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    reason
}

struct Driver<T> {
    io: T,
    conn: Connection,
    /// Messages taken from the shared queue, not yet given to the transport.
    batch: VecDeque<Message>,
    /// Something was given to the transport since the last flush.
    unflushed: bool,
    /// The first write error; after it nothing more is written.
    broken: Option<Error>,
    /// The inbound rate limit and this connection's bucket, if configured.
    rate: Option<(RateLimit, TokenBucket)>,
    /// Messages and bytes received and not yet added to the server's
    /// counters: they are added once per batch, before its replies are
    /// flushed and whenever a handler waits.
    received: (u64, u64),
    /// Queued messages and bytes at which the queue is taken before the
    /// next read (a quarter of the bounds): below them, replies wait while
    /// more input is readable.
    drain_at: (usize, usize),
}

/// What ended the wait for the next message, if not a message.
enum Step {
    /// The peer closed: its close frame, or `None` for a plain end of stream.
    PeerClosed(Option<CloseFrame>),
    /// Reading failed, or the peer broke the protocol.
    ReadFailed(Error),
    /// A close was requested (by the application, a limit or shutdown).
    Close(CloseRequest),
    /// Shutdown's grace period is over.
    Forced,
    /// Writing failed.
    WriteFailed(Error),
}

impl Step {
    /// A read as the next message, or as the step that ends the wait.
    fn read(received: Result<Received, Error>) -> Result<Message, Step> {
        match received {
            Ok(Received::Message(msg)) => Ok(msg),
            Ok(Received::Closed(frame)) => Err(Step::PeerClosed(frame)),
            Err(err) => Err(Step::ReadFailed(err)),
        }
    }
}

/// How the message loop ended: what closing has to do.
enum End {
    /// Report the error (if any) to `on_error`, then close with the
    /// request (already begun).
    Close(CloseRequest, Option<Error>),
    /// A handler (or the transport) panicked in the message loop.
    Panicked(String),
    /// Writing failed: the connection is gone.
    WriteFailed(Error),
    /// Shutdown's grace period is over: stop now.
    Shutdown,
}

/// Where the message loop stopped.
enum Flow {
    /// A handler returned an error, to report before going on.
    Failed(BoxError),
    /// The connection ends.
    End(End),
}

/// How a handler run ended.
enum Outcome<T> {
    /// The handler's output.
    Done(T),
    /// Shutdown's grace period ended while it waited.
    Forced,
}

impl<T: TransportConn> Driver<T> {
    /// The open phase and the message loop, then the close; returns why the
    /// connection ended, after the close (if any) was carried out.
    ///
    /// The loop and the close are separate futures, and the close (with its
    /// timer and `on_error` call) is boxed when it starts: an idle
    /// connection's task holds only the loop's small state.
    ///
    /// Panics in the loop (from `on_open`, `on_message` or the transport)
    /// are caught once around it, so that a panicking codec is handled like
    /// a panicking handler: the loop ends, its future is dropped, and the
    /// close path reports the panic. Handlers and the transport are called
    /// between the driver's own updates, never during one, so the driver's
    /// state is whole for the close.
    async fn run<K: MessageComponent + ?Sized>(&mut self, component: &K) -> CloseReason {
        let end = match AssertUnwindSafe(self.serve(component)).catch_unwind().await {
            Ok(end) => end,
            Err(panic) => End::Panicked(panic_message(&*panic)),
        };
        self.count_received();
        self.end(component, end).await
    }

    /// Runs `on_open` and then one `on_message` per inbound message until
    /// something ends the connection.
    async fn serve<K: MessageComponent + ?Sized>(&mut self, component: &K) -> End {
        let conn = self.conn.clone();
        // Boxed: held inline, `on_open`'s future would size the state of
        // every connection's task for its whole life (idle ones included).
        match self.handle(Box::pin(component.on_open(&conn))).await {
            Outcome::Done(Ok(())) => {}
            Outcome::Done(Err(err)) => {
                let req = self.conn.begin_close(request(
                    CloseCode::POLICY,
                    "rejected",
                    CloseReason::Rejected,
                ));
                return End::Close(req, Some(Error::Handler(err)));
            }
            Outcome::Forced => return End::Shutdown,
        }

        // The running handler's future, held in place here: the only thing
        // kept across a wait besides the driver itself.
        let mut handler = std::pin::pin!(None);
        loop {
            let flow = poll_fn(|cx| {
                let call = |msg| component.on_message(&conn, msg);
                self.poll_messages(call, handler.as_mut(), cx)
            });
            let err = match flow.await {
                Flow::Failed(err) => err,
                Flow::End(end) => return end,
            };
            self.report(component, Error::Handler(err)).await;
            if let Some(err) = self.broken.take() {
                return End::WriteFailed(err);
            }
        }
    }

    /// The message loop: reads a message, runs its handler, reads the
    /// next, until a handler fails or something ends the connection. One
    /// poll function rather than awaits, so that a message goes from the
    /// transport to its handler without passing through the loop's state.
    fn poll_messages<F, C>(
        &mut self,
        call: C,
        mut handler: Pin<&mut Option<F>>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Flow>
    where
        F: Future<Output = Result<(), BoxError>>,
        C: Fn(Message) -> F,
    {
        loop {
            if let Some(fut) = handler.as_mut().as_pin_mut() {
                let out = ready!(self.poll_handler(fut, cx));
                handler.set(None);
                match out {
                    Outcome::Done(Ok(())) => {}
                    Outcome::Done(Err(err)) => return Poll::Ready(Flow::Failed(err)),
                    Outcome::Forced => return Poll::Ready(Flow::End(End::Shutdown)),
                }
                if let Some(err) = self.broken.take() {
                    return Poll::Ready(Flow::End(End::WriteFailed(err)));
                }
            }
            let msg = match ready!(self.poll_step(cx)) {
                Ok(msg) => msg,
                Err(step) => return Poll::Ready(Flow::End(self.end_of(step))),
            };
            self.received.0 += 1;
            self.received.1 += msg.len() as u64;
            if let Some((limit, bucket)) = &mut self.rate
                && !bucket.take(limit)
            {
                let stats = &self.conn.context().stats;
                Stats::add(&stats.rate_limited, 1);
                match limit.action {
                    RateLimitAction::Drop => continue,
                    RateLimitAction::Close => {
                        let err = Error::protocol(CloseCode::POLICY, "rate limit exceeded");
                        let frame =
                            CloseFrame::from_static(CloseCode::POLICY, "rate limit exceeded");
                        let req = self.conn.begin_close(CloseRequest {
                            frame: frame.clone(),
                            reason: CloseReason::Error(frame),
                            discard: false,
                        });
                        return Poll::Ready(Flow::End(End::Close(req, Some(err))));
                    }
                }
            }
            handler.set(Some(call(msg)));
        }
    }

    /// How the connection ends after `step` (its close begun). Out of
    /// line, so its locals take no room in the connection's future.
    #[inline(never)]
    fn end_of(&self, step: Step) -> End {
        match step {
            Step::PeerClosed(frame) => {
                let reply = frame
                    .clone()
                    .unwrap_or_else(|| CloseFrame::from_static(CloseCode::NORMAL, ""));
                let req = self.conn.begin_close(CloseRequest {
                    frame: reply,
                    reason: CloseReason::Peer(frame),
                    discard: false,
                });
                End::Close(req, None)
            }
            Step::ReadFailed(err) => {
                let req = match &err {
                    Error::IdleTimeout => {
                        request(CloseCode::AWAY, "idle timeout", CloseReason::IdleTimeout)
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
                let req = self.conn.begin_close(req);
                End::Close(req, Some(err))
            }
            Step::Close(req) => End::Close(req, None),
            Step::Forced => End::Shutdown,
            Step::WriteFailed(err) => End::WriteFailed(err),
        }
    }

    /// Carries out the end: reports the error (if any) to `on_error`, then
    /// flushes and closes.
    fn end<'a, K: MessageComponent + ?Sized>(
        &'a mut self,
        component: &'a K,
        end: End,
    ) -> BoxFuture<'a, CloseReason> {
        Box::pin(async move {
            match end {
                End::Close(req, err) => {
                    if let Some(err) = err {
                        self.report(component, err).await;
                    }
                    self.finish_close(req).await
                }
                End::Panicked(msg) => self.panicked(component, msg).await,
                End::WriteFailed(err) => self.write_failed(component, err).await,
                End::Shutdown => CloseReason::Shutdown,
            }
        })
    }

    /// Waits for the next inbound message or a close signal, writing meanwhile.
    ///
    /// The flush waits until nothing more is readable: the replies to every
    /// message that arrived together then leave in one write, not one each.
    /// While input is readable, the queue is left to fill (up to a quarter of
    /// its bounds) and taken once, when the input runs out: one lock and one
    /// pass over the transport per batch rather than per message.
    fn poll_step(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Message, Step>> {
        if !self.must_write_first() {
            if let Poll::Ready(received) = self.io.poll_recv(cx) {
                return Poll::Ready(Step::read(received));
            }
            return self.poll_idle(cx);
        }
        if let Some(step) = self.write_queue(cx) {
            return Poll::Ready(Err(step));
        }
        match self.io.poll_recv(cx) {
            Poll::Ready(received) => Poll::Ready(Step::read(received)),
            Poll::Pending => {
                self.count_received();
                self.poll_flush_idle(cx)
            }
        }
    }

    /// Writes out the queue (without flushing) and reads the signals: the
    /// step they call for, if any.
    fn write_queue(&mut self, cx: &mut TaskContext<'_>) -> Option<Step> {
        match self.poll_write(cx, false) {
            Err(err) => Some(Step::WriteFailed(err)),
            Ok(signals) if signals.force => Some(Step::Forced),
            Ok(signals) => signals.close.map(Step::Close),
        }
    }

    /// Whether the queue (or a signal) has to be looked at before the next
    /// message is read: when a close or force was requested, or what waits
    /// for the transport (the shared queue, and the batch with the
    /// handler's own replies in it) reaches a quarter of the bounds.
    /// Otherwise everything is written when the input runs out.
    fn must_write_first(&self) -> bool {
        self.conn.has_signals()
            || self.conn.queued_messages() >= self.drain_at.0
            || self.conn.queued_bytes() >= self.drain_at.1
    }

    /// Nothing more is readable (the transport registered the waker): count
    /// what arrived, write out the queue, look at the signals and flush.
    fn poll_idle(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Message, Step>> {
        self.count_received();
        if let Some(step) = self.write_queue(cx) {
            return Poll::Ready(Err(step));
        }
        self.poll_flush_idle(cx)
    }

    /// Flushes what was written since the last flush; always `Pending`
    /// unless the flush fails.
    fn poll_flush_idle(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Message, Step>> {
        if self.unflushed {
            match self.io.poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(Step::WriteFailed(err))),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// Adds the messages received since the last call to the counters.
    fn count_received(&mut self) {
        let (msgs, bytes) = std::mem::take(&mut self.received);
        if msgs > 0 {
            let stats = &self.conn.context().stats;
            Stats::add(&stats.messages_in, msgs);
            Stats::add(&stats.bytes_in, bytes);
        }
    }

    /// Runs a handler future to completion (or until forced), writing what it
    /// queues as it goes.
    async fn handle<F: Future>(&mut self, fut: F) -> Outcome<F::Output> {
        let mut fut = std::pin::pin!(fut);
        poll_fn(|cx| self.poll_handler(fut.as_mut(), cx)).await
    }

    /// One poll of [`handle`](Self::handle); the message loop calls it
    /// directly, without a future of its own per message.
    ///
    /// Inline, so that the handler's output is matched where its poll
    /// wrote it rather than copied out first.
    #[inline(always)]
    fn poll_handler<F: Future>(
        &mut self,
        fut: Pin<&mut F>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Outcome<F::Output>> {
        // The handler first: one that completes at once (the common case)
        // leaves its replies to `poll_step`, which flushes them together
        // with those of the messages already readable. Its sends need not
        // wake this task: `poll_step` or `poll_handler_waits` takes the
        // lock and looks at the queue before the task sleeps.
        self.conn.set_awake();
        let own = self.conn.own_sends();
        let polled = fut.poll(cx);
        own.finish(&mut self.batch);
        if let Poll::Ready(out) = polled {
            return Poll::Ready(Outcome::Done(out));
        }
        if self.poll_handler_waits(cx) {
            return Poll::Ready(Outcome::Forced);
        }
        Poll::Pending
    }

    /// The handler waits: writes and flushes what is queued meanwhile, so
    /// a handler that sends and then awaits does not stall replies.
    /// Returns whether shutdown forces the connection.
    fn poll_handler_waits(&mut self, cx: &mut TaskContext<'_>) -> bool {
        self.count_received();
        if self.broken.is_none() {
            match self.poll_write(cx, true) {
                Ok(signals) => signals.force,
                Err(err) => {
                    self.broken = Some(err);
                    false
                }
            }
        } else {
            self.conn.poll_signals(cx.waker()).force
        }
    }

    /// Registers the waker, then writes out everything queued and, if
    /// `flush`, flushes once. Returns the close signals read under the same
    /// lock, so a close requested at any moment is either seen now or wakes
    /// the task later.
    fn poll_write(&mut self, cx: &mut TaskContext<'_>, flush: bool) -> Result<Signals, Error> {
        loop {
            let signals = self.conn.poll_state(cx.waker(), &mut self.batch);
            if signals.force || signals.close.as_ref().is_some_and(|c| c.discard) {
                return Ok(signals);
            }
            if self.batch.is_empty() {
                if self.unflushed && flush {
                    match self.io.poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.unflushed = false,
                        Poll::Ready(Err(err)) => return Err(err),
                        Poll::Pending => {}
                    }
                }
                return Ok(signals);
            }
            let stats = &self.conn.context().stats;
            let (mut count, mut bytes) = (0u64, 0u64);
            // The transport is asked for room only for a message that waits:
            // after the batch's last one it may not write (a peer that read
            // it would then find the queue counters not yet released).
            let result = loop {
                let Some(msg) = self.batch.pop_front() else {
                    break Ok(true);
                };
                match self.io.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(err)) => {
                        self.batch.push_front(msg);
                        break Err(err);
                    }
                    Poll::Pending => {
                        self.batch.push_front(msg);
                        break Ok(false);
                    }
                }
                count += 1;
                bytes += msg.len() as u64;
                self.unflushed = true;
                if let Err(err) = self.io.start_send(msg) {
                    break Err(err);
                }
            };
            // Released once per batch, before anything awaits: the bound
            // still covers every message not yet given to the transport.
            self.conn.dequeued(count as usize, bytes as usize);
            Stats::add(&stats.messages_out, count);
            Stats::add(&stats.bytes_out, bytes);
            match result {
                // The batch is written. Nothing queued meanwhile (the count
                // covers the queue): no need to take the lock again, since a
                // send or close from now on wakes the task, whose waker is
                // registered. Otherwise look for more before flushing once.
                Ok(true) if self.conn.queued_messages() == 0 => {
                    if self.unflushed && flush {
                        match self.io.poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.unflushed = false,
                            Poll::Ready(Err(err)) => return Err(err),
                            Poll::Pending => {}
                        }
                    }
                    return Ok(signals);
                }
                Ok(true) => continue,
                // The transport is full. Flushing is what frees it (for
                // buffering sinks poll_ready already did; this is cheap).
                Ok(false) => {
                    if self.unflushed
                        && let Poll::Ready(Err(err)) = self.io.poll_flush(cx)
                    {
                        return Err(err);
                    }
                    return Ok(signals);
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Flushes what was queued before the close (unless discarding), then
    /// closes the transport, bounded by `close_timeout` and by `force`.
    fn finish_close(&mut self, req: CloseRequest) -> BoxFuture<'_, CloseReason> {
        Box::pin(async move {
            if matches!(req.reason, CloseReason::Error(ref f) if f.code == CloseCode::ABNORMAL) {
                return req.reason;
            }
            let timeout = self.conn.context().config.close_timeout;
            let closing = poll_fn(|cx| {
                let signals = self.conn.poll_signals(cx.waker());
                if signals.force {
                    return Poll::Ready(());
                }
                if !req.discard && self.broken.is_none() {
                    match self.poll_write(cx, true) {
                        Ok(_)
                            if self.batch.is_empty()
                                && !self.unflushed
                                && self.conn.queued_messages() == 0 => {}
                        Ok(_) => return Poll::Pending,
                        Err(err) => {
                            tracing::debug!(error = %err, "flush before close failed");
                            self.broken = Some(err);
                        }
                    }
                } else {
                    self.discard_batch();
                }
                match ready!(self.io.poll_close(cx, &req.frame)) {
                    Ok(()) => {}
                    Err(err) => tracing::debug!(error = %err, "close failed"),
                }
                Poll::Ready(())
            });
            if tokio::time::timeout(timeout, closing).await.is_err() {
                tracing::debug!(?timeout, "close timed out");
            }
            req.reason
        })
    }

    fn panicked<'a, K: MessageComponent + ?Sized>(
        &'a mut self,
        component: &'a K,
        msg: String,
    ) -> BoxFuture<'a, CloseReason> {
        Box::pin(async move {
            Stats::add(&self.conn.context().stats.panics, 1);
            let req = self.conn.begin_close(request(
                CloseCode::ERROR,
                "internal error",
                CloseReason::Panic,
            ));
            self.report(component, Error::Panic(msg)).await;
            self.finish_close(req).await
        })
    }

    fn write_failed<'a, K: MessageComponent + ?Sized>(
        &'a mut self,
        component: &'a K,
        err: Error,
    ) -> BoxFuture<'a, CloseReason> {
        Box::pin(async move {
            let req = self.conn.begin_close(abnormal());
            self.report(component, err).await;
            self.finish_close(req).await
        })
    }

    /// Runs `on_error`; a panic in it is logged and otherwise ignored
    /// (caught here, since the close path runs outside the loop's catch).
    fn report<'a, K: MessageComponent + ?Sized>(
        &'a mut self,
        component: &'a K,
        err: Error,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let conn = self.conn.clone();
            // Called inside the guard, as `on_close` is in `drive`.
            let on_error =
                AssertUnwindSafe(async { component.on_error(&conn, err).await }).catch_unwind();
            match self.handle(on_error).await {
                Outcome::Done(Err(panic)) => {
                    let msg = panic_message(&*panic);
                    Stats::add(&self.conn.context().stats.panics, 1);
                    tracing::error!(panic = %msg, "on_error panicked");
                    self.conn.begin_close(request(
                        CloseCode::ERROR,
                        "internal error",
                        CloseReason::Panic,
                    ));
                }
                Outcome::Done(Ok(())) | Outcome::Forced => {}
            }
        })
    }

    /// Drops the local batch, keeping the queue counters honest.
    fn discard_batch(&mut self) {
        let msgs = self.batch.len();
        let bytes = self.batch.drain(..).map(|msg| msg.len()).sum();
        self.conn.dequeued(msgs, bytes);
    }
}

fn request(code: CloseCode, reason: &'static str, why: CloseReason) -> CloseRequest {
    CloseRequest {
        frame: CloseFrame::from_static(code, reason),
        reason: why,
        discard: false,
    }
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

    use super::*;
    use crate::config::Config;
    use crate::error::{BoxError, Result};
    use crate::server::Context;
    use crate::transport::TransportInfo;

    /// A transport connection one pointer wide, like the WebSocket one.
    struct Tiny(#[allow(dead_code)] Box<u64>);

    impl TransportConn for Tiny {
        fn poll_recv(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<Received>> {
            Poll::Pending
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
            Poll::Ready(Ok(()))
        }
    }

    struct Quiet;

    impl MessageComponent for Quiet {
        async fn on_message(&self, _: &Connection, _: Message) -> Result<(), BoxError> {
            Ok(())
        }
    }

    /// Every idle connection pays for its task: the driver's future keeps
    /// only the message loop's state inline (the close path and `on_open`
    /// are boxed when they start). It was 1,104 bytes before that; keep it
    /// well under, for a component served directly (its `on_message`
    /// future held inline) and as a `DynComponent` (a box).
    #[test]
    fn the_connection_future_stays_small() {
        let ctx = Context::new(Config::default());
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let open = || ctx.open(peer, TransportInfo::new("test"), Default::default());
        let direct = drive(Tiny(Box::new(0)), open(), Arc::new(Quiet));
        let size = std::mem::size_of_val(&direct);
        assert!(size <= 600, "the connection future is {size} bytes");
        let object: Arc<dyn crate::DynComponent> = Arc::new(Quiet);
        let boxed = drive(Tiny(Box::new(0)), open(), object);
        let size = std::mem::size_of_val(&boxed);
        assert!(
            size <= 600,
            "the connection future is {size} bytes with a DynComponent"
        );
    }
}
