//! The outbound queue of one connection, and the close and shutdown
//! signals that travel with it.
//!
//! [`Connection`](crate::Connection) handles push messages and request a
//! close from any task; the connection's driver takes everything queued in
//! one batch, hands it to the transport and releases it from the bounds
//! once the transport has written it out. One mutex guards all of it:
//! every critical section is a few pointer moves and never spans an
//! `.await`. It is `parking_lot`'s, whose lock and unlock skip std's
//! poisoning checks: 961 → 937 user-space instructions per message in the
//! 32-byte TCP echo (`scripts/callgrind.sh`).
//!
//! A message counts against the bounds from the push until the socket has
//! taken all of its bytes, whether it is still in the queue, in the
//! driver's batch or in the transport's write buffer: what one connection
//! holds for its peer never exceeds the bounds. The bounds are exact: a
//! push that would pass either one is refused (a single message larger
//! than the byte bound still goes through an empty queue; otherwise it
//! could never be sent at all).

use parking_lot::{Mutex, MutexGuard};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Waker;

use crate::close::{CloseCode, CloseFrame, CloseReason};
use crate::config::{Config, SlowConsumerPolicy};
use crate::message::Message;

/// A close to carry out, as requested by the application, a limit, the
/// peer or shutdown.
#[derive(Clone, Debug)]
pub(crate) struct CloseRequest {
    pub(crate) frame: CloseFrame,
    pub(crate) reason: CloseReason,
    /// Skip flushing the queue (the peer is not reading, or is gone).
    pub(crate) discard: bool,
}

impl CloseRequest {
    pub(crate) fn new(code: CloseCode, reason: &'static str, why: CloseReason) -> Self {
        CloseRequest {
            frame: CloseFrame::from_static(code, reason),
            reason: why,
            discard: false,
        }
    }

    /// 1008 "slow consumer": the peer is not reading, so what is queued
    /// is discarded and the connection let go without waiting for it.
    pub(crate) fn slow_consumer() -> Self {
        CloseRequest {
            discard: true,
            ..CloseRequest::new(
                CloseCode::POLICY,
                "slow consumer",
                CloseReason::SlowConsumer,
            )
        }
    }
}

/// What the driver has to act on besides messages.
#[derive(Debug)]
pub(crate) enum Signal {
    /// A close was requested.
    Close(CloseRequest),
    /// Shutdown's grace period is over: stop flushing, finish now.
    Force,
}

/// Why a push was refused; the message comes back in each case.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The connection is closing or has ended.
    Closed(Message),
    /// The queue is full and the policy drops the message.
    Dropped(Message),
    /// The queue is full and the policy closes the connection: the backlog
    /// of `discarded` messages was dropped and the close began.
    SlowConsumer { msg: Message, discarded: usize },
}

/// The queue's bounds and slow-consumer policy, from the server's
/// [`Config`]: one copy per server, shared by its connections' outboxes.
#[derive(Debug)]
pub(crate) struct Bounds {
    /// Messages are counted in a `u32` (a bound above `u32::MAX` is that
    /// much): 8 bytes less in every connection's state.
    max_messages: u32,
    max_bytes: usize,
    /// A quarter of the bounds: past them the driver writes before reading
    /// more input (see `Outbox::attention`).
    drain_messages: u32,
    drain_bytes: usize,
    policy: SlowConsumerPolicy,
}

impl Bounds {
    pub(crate) fn new(config: &Config) -> Self {
        Bounds {
            max_messages: count(config.queue_max_messages),
            max_bytes: config.queue_max_bytes,
            drain_messages: count(config.queue_max_messages).div_ceil(4),
            drain_bytes: config.queue_max_bytes.div_ceil(4),
            policy: config.slow_consumer,
        }
    }
}

/// A number of messages as the outbox counts them.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds::new(&Config::default())
    }
}

pub(crate) struct Outbox {
    bounds: Arc<Bounds>,
    state: Mutex<State>,
    /// The driver is running (polling its handler) and takes the lock to
    /// look at the queue before it sleeps, so a push need not wake it.
    /// Without it, a handler's reply to its own connection would wake the
    /// task it runs in, for a second poll per batch of input: 1,055 instead
    /// of 937 user-space instructions per message in the 32-byte TCP echo
    /// (`scripts/callgrind.sh switchboard-tcp-echo`). Set by the driver
    /// without the lock before each handler poll; cleared under the lock
    /// by [`take`](Outbox::take) and [`signal`](Outbox::signal).
    running: AtomicBool,
    /// Something the driver must look at before it reads the next message:
    /// a close, shutdown's force, or a queue past a quarter of its bounds
    /// (written out first, and waited for if the socket cannot take it).
    /// Set and cleared under the lock, read by the driver without it once
    /// per inbound message: taking the lock there instead cost 960
    /// instead of 937 instructions per message in the same measurement.
    attention: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Empty `VecDeque`s do not allocate: an idle connection that never
    /// sent anything holds no queue storage.
    queue: VecDeque<Message>,
    /// Messages and payload bytes pushed and not yet released: the queue,
    /// the driver's batch and what the transport has not written out.
    messages: u32,
    bytes: usize,
    /// The driver's waker, taken by whatever wakes it: a push, a close,
    /// shutdown's force or the keepalive sweep.
    waker: Option<Waker>,
    /// The first close request wins; later ones are ignored. Boxed: an
    /// idle connection holds this struct for its whole life.
    close: Option<Box<CloseRequest>>,
    force: bool,
    /// The connection ended: pushes are refused for good.
    finished: bool,
}

impl Outbox {
    pub(crate) fn new(bounds: Arc<Bounds>) -> Self {
        Outbox {
            bounds,
            state: Mutex::default(),
            running: AtomicBool::new(false),
            attention: AtomicBool::new(false),
        }
    }

    #[inline]
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    // ---- the handle's side ----------------------------------------------

    /// Queues `msg`, or refuses it (applying the slow-consumer policy when
    /// the queue is full). Inline, since every send comes here; the full
    /// queue's path is out of line.
    #[inline]
    pub(crate) fn push(&self, msg: Message) -> Result<(), Refused> {
        let len = msg.len();
        let mut state = self.lock();
        if state.close.is_some() || state.finished {
            return Err(Refused::Closed(msg));
        }
        let full = state.messages >= self.bounds.max_messages
            || (state.messages > 0 && state.bytes + len > self.bounds.max_bytes);
        if full {
            return Err(self.refuse_full(state, msg));
        }
        state.queue.push_back(msg);
        state.messages += 1;
        state.bytes += len;
        if self.over_drain(&state) {
            self.attention.store(true, Ordering::Release);
        }
        if self.running.load(Ordering::Relaxed) {
            return Ok(());
        }
        let waker = state.waker.take();
        drop(state);
        wake(waker);
        Ok(())
    }

    /// The queue is full: applies the slow-consumer policy. Out of line,
    /// so that `push` inlines small.
    #[cold]
    #[inline(never)]
    fn refuse_full(&self, mut state: MutexGuard<'_, State>, msg: Message) -> Refused {
        match self.bounds.policy {
            SlowConsumerPolicy::Drop => Refused::Dropped(msg),
            SlowConsumerPolicy::Close => {
                // Free the backlog now: the peer is not reading it.
                let backlog = std::mem::take(&mut state.queue);
                state.messages -= count(backlog.len());
                state.bytes -= backlog.iter().map(Message::len).sum::<usize>();
                let waker = self.request_close(&mut state, CloseRequest::slow_consumer());
                drop(state);
                wake(waker);
                Refused::SlowConsumer {
                    msg,
                    discarded: backlog.len(),
                }
            }
        }
    }

    /// Requests a close unless one was requested already; returns the
    /// request in force.
    pub(crate) fn close(&self, req: CloseRequest) -> CloseRequest {
        let mut state = self.lock();
        let waker = self.request_close(&mut state, req);
        let current = state.close.clone();
        drop(state);
        wake(waker);
        *current.unwrap_or_else(|| unreachable!("request_close always leaves a request"))
    }

    fn request_close(&self, state: &mut State, req: CloseRequest) -> Option<Waker> {
        if state.close.is_none() {
            state.close = Some(Box::new(req));
            self.attention.store(true, Ordering::Release);
        }
        state.waker.take()
    }

    /// Whether a close was requested or the connection ended.
    pub(crate) fn is_closed(&self) -> bool {
        let state = self.lock();
        state.close.is_some() || state.finished
    }

    /// Messages pushed and not yet written out.
    pub(crate) fn len(&self) -> usize {
        self.lock().messages as usize
    }

    // ---- the driver's side ----------------------------------------------

    /// The driver is about to poll a handler: until its next
    /// [`take`](Self::take) or [`signal`](Self::signal), pushes do not
    /// wake it.
    #[inline]
    pub(crate) fn set_running(&self) {
        self.running.store(true, Ordering::Relaxed);
    }

    /// Whether the driver should look at the outbox before reading more.
    #[inline]
    pub(crate) fn needs_attention(&self) -> bool {
        self.attention.load(Ordering::Acquire)
    }

    /// Registers the driver's waker and, when `batch` is empty, moves the
    /// whole queue into it (one lock per batch). Returns the signal in
    /// force: a push, close or force from now on wakes the driver.
    ///
    /// The queue and the batch trade their storage, so a connection that
    /// keeps sending allocates none. With `idle` (the driver was woken and
    /// has nothing in flight) and nothing queued, both let go of it: an
    /// idle connection holds no storage for messages.
    #[inline]
    pub(crate) fn take(
        &self,
        waker: &Waker,
        batch: &mut VecDeque<Message>,
        idle: bool,
    ) -> Option<Signal> {
        let mut state = self.lock();
        if batch.is_empty() {
            if idle && state.queue.is_empty() {
                state.queue = VecDeque::new();
                *batch = VecDeque::new();
            } else {
                std::mem::swap(&mut state.queue, batch);
            }
        }
        self.sleep_locked(&mut state, waker)
    }

    /// Like [`take`](Self::take), leaving the queue alone.
    pub(crate) fn signal(&self, waker: &Waker) -> Option<Signal> {
        let mut state = self.lock();
        self.sleep_locked(&mut state, waker)
    }

    fn sleep_locked(&self, state: &mut State, waker: &Waker) -> Option<Signal> {
        self.running.store(false, Ordering::Relaxed);
        match &state.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => state.waker = Some(waker.clone()),
        }
        let over_drain = self.over_drain(state);
        let signal = if state.force {
            Some(Signal::Force)
        } else {
            state.close.as_deref().cloned().map(Signal::Close)
        };
        // A signal stays in force once seen, so attention stays set: the
        // driver acts on it before it reads again.
        self.attention
            .store(signal.is_some() || over_drain, Ordering::Release);
        signal
    }

    /// `messages` of `bytes` in all were written out (or discarded). Returns
    /// whether more wait in the queue.
    #[inline]
    pub(crate) fn release(&self, messages: usize, bytes: usize) -> bool {
        let mut state = self.lock();
        state.messages -= count(messages);
        state.bytes -= bytes;
        self.attention.store(
            state.close.is_some() || state.force || self.over_drain(&state),
            Ordering::Release,
        );
        !state.queue.is_empty()
    }

    /// Past a quarter of either bound.
    fn over_drain(&self, state: &State) -> bool {
        state.messages >= self.bounds.drain_messages || state.bytes >= self.bounds.drain_bytes
    }

    /// Shutdown's grace period is over: the driver stops flushing and
    /// finishes.
    pub(crate) fn force(&self) {
        let mut state = self.lock();
        state.force = true;
        self.attention.store(true, Ordering::Release);
        let waker = state.waker.take();
        drop(state);
        wake(waker);
    }

    /// Takes the driver's waker, if it sleeps, for the keepalive sweep to
    /// wake it (`Context::sweep`); it registers again when it next sleeps.
    pub(crate) fn take_waker(&self) -> Option<Waker> {
        self.lock().waker.take()
    }

    /// The connection ended: refuse pushes for good and drop the queue.
    pub(crate) fn finish(&self) {
        let mut state = self.lock();
        state.finished = true;
        state.queue = VecDeque::new();
        state.messages = 0;
        state.bytes = 0;
        state.waker = None;
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A driver gone to sleep on `outbox`: its wake count, waker and batch.
    fn asleep(outbox: &Outbox) -> (Arc<Count>, Waker, VecDeque<Message>) {
        let count = Arc::new(Count(0.into()));
        let waker = Waker::from(count.clone());
        let mut batch = VecDeque::new();
        outbox.take(&waker, &mut batch, false);
        (count, waker, batch)
    }

    fn outbox(messages: usize, bytes: usize, policy: SlowConsumerPolicy) -> Outbox {
        Outbox::new(Arc::new(Bounds::new(
            &Config::default()
                .queue_max_messages(messages)
                .queue_max_bytes(bytes)
                .slow_consumer(policy),
        )))
    }

    #[test]
    fn a_slow_consumer_close_empties_the_queue_and_a_finished_outbox_refuses_all() {
        let outbox = outbox(2, 1 << 20, SlowConsumerPolicy::Close);
        assert!(!outbox.is_closed());
        outbox.push(Message::text("a")).expect("room");
        outbox.push(Message::text("b")).expect("room");
        assert!(matches!(
            outbox.push(Message::text("c")),
            Err(Refused::SlowConsumer { discarded: 2, .. })
        ));
        // The discarded backlog left the bounds with the queue.
        assert_eq!(outbox.len(), 0);
        assert!(outbox.is_closed());

        let ended = self::outbox(2, 1 << 20, SlowConsumerPolicy::Close);
        ended.push(Message::text("a")).expect("room");
        ended.finish();
        assert!(ended.is_closed());
        assert!(matches!(
            ended.push(Message::text("b")),
            Err(Refused::Closed(_))
        ));
    }

    #[test]
    fn release_asks_for_attention_past_a_quarter_or_with_a_close() {
        // A quarter of 8 messages is 2.
        let outbox = outbox(8, 1 << 20, SlowConsumerPolicy::Drop);
        for _ in 0..3 {
            outbox.push(Message::text("x")).expect("room");
        }
        let (_, _, _batch) = asleep(&outbox);
        assert!(outbox.needs_attention());
        outbox.release(1, 1);
        assert!(outbox.needs_attention(), "2 of 8 still counted");
        outbox.release(1, 1);
        assert!(!outbox.needs_attention(), "1 of 8 counted");
        outbox.close(CloseRequest::new(
            CloseCode::NORMAL,
            "",
            CloseReason::Local(CloseFrame::from_static(CloseCode::NORMAL, "")),
        ));
        outbox.release(1, 1);
        assert!(outbox.needs_attention(), "a close stays in force");

        // A quarter of 100 bytes is 25.
        let bytes = self::outbox(100, 100, SlowConsumerPolicy::Drop);
        bytes.push(Message::binary(vec![0; 30])).expect("room");
        let (_, _, _batch) = asleep(&bytes);
        bytes.release(0, 4);
        assert!(bytes.needs_attention(), "26 of 100 bytes counted");
        bytes.release(1, 26);
        assert!(!bytes.needs_attention());
    }

    #[test]
    fn the_message_bound_is_exact() {
        let outbox = outbox(3, 1 << 20, SlowConsumerPolicy::Drop);
        for _ in 0..3 {
            outbox.push(Message::text("x")).expect("room");
        }
        assert!(matches!(
            outbox.push(Message::text("x")),
            Err(Refused::Dropped(_))
        ));
        assert_eq!(outbox.len(), 3);
    }

    #[test]
    fn the_byte_bound_is_exact_and_lets_one_large_message_through() {
        let outbox = outbox(100, 10, SlowConsumerPolicy::Drop);
        outbox.push(Message::binary(vec![0; 64])).expect("alone");
        assert!(matches!(
            outbox.push(Message::binary(vec![0; 1])),
            Err(Refused::Dropped(_))
        ));
        let (_, _, batch) = asleep(&outbox);
        assert_eq!(batch.len(), 1);
        assert!(!outbox.release(1, 64));
        outbox.push(Message::binary(vec![0; 6])).expect("room");
        outbox
            .push(Message::binary(vec![0; 4]))
            .expect("exactly at the bound");
        assert!(matches!(
            outbox.push(Message::binary(vec![0; 1])),
            Err(Refused::Dropped(_))
        ));
    }

    #[test]
    fn a_taken_batch_counts_until_released() {
        let outbox = outbox(2, 1 << 20, SlowConsumerPolicy::Drop);
        outbox.push(Message::text("a")).expect("room");
        outbox.push(Message::text("b")).expect("room");
        let (_, _, batch) = asleep(&outbox);
        assert_eq!(batch.len(), 2);
        // Still in the driver's hands: the bound covers it.
        assert!(matches!(
            outbox.push(Message::text("c")),
            Err(Refused::Dropped(_))
        ));
        assert!(!outbox.release(2, 2));
        outbox.push(Message::text("c")).expect("released");
    }

    #[test]
    fn a_slow_consumer_loses_its_backlog_and_closes_once() {
        let outbox = outbox(2, 1 << 20, SlowConsumerPolicy::Close);
        let (wakes, waker, mut batch) = asleep(&outbox);
        outbox.push(Message::text("a")).expect("room");
        outbox.push(Message::text("b")).expect("room");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "one wake per sleep");
        match outbox.push(Message::text("c")) {
            Err(Refused::SlowConsumer { msg, discarded }) => {
                assert_eq!(msg, Message::text("c"));
                assert_eq!(discarded, 2);
            }
            other => panic!("expected a slow-consumer close, got {other:?}"),
        }
        assert_eq!(outbox.len(), 0);
        assert!(outbox.is_closed());
        assert!(outbox.needs_attention());
        match outbox.take(&waker, &mut batch, false) {
            Some(Signal::Close(req)) => {
                assert!(req.discard);
                assert_eq!(req.frame.code, CloseCode::POLICY);
            }
            other => panic!("expected the close, got {other:?}"),
        }
        assert!(matches!(
            outbox.push(Message::text("d")),
            Err(Refused::Closed(_))
        ));
    }

    #[test]
    fn a_running_driver_is_not_woken_and_a_sleeping_one_is() {
        let outbox = outbox(100, 1 << 20, SlowConsumerPolicy::Close);
        let (wakes, waker, mut batch) = asleep(&outbox);
        outbox.set_running();
        outbox.push(Message::text("reply")).expect("room");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        // The driver looks before it sleeps, and finds the reply.
        outbox.take(&waker, &mut batch, false);
        assert_eq!(batch.len(), 1);
        outbox.push(Message::text("later")).expect("room");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn attention_past_a_quarter_of_the_bounds_and_on_signals() {
        let outbox = outbox(8, 1 << 20, SlowConsumerPolicy::Close);
        outbox.push(Message::text("1")).expect("room");
        assert!(!outbox.needs_attention());
        outbox.push(Message::text("2")).expect("room");
        assert!(outbox.needs_attention());
        let (_, waker, _) = asleep(&outbox);
        // Taken but not released: still past the quarter.
        assert!(outbox.needs_attention());
        outbox.release(2, 2);
        outbox.signal(&waker);
        assert!(!outbox.needs_attention());
        outbox.force();
        assert!(outbox.needs_attention());
        assert!(matches!(outbox.signal(&waker), Some(Signal::Force)));
    }

    #[test]
    fn the_first_close_wins_and_finish_refuses_for_good() {
        let outbox = outbox(8, 1 << 20, SlowConsumerPolicy::Close);
        let first = outbox.close(CloseRequest::new(
            CloseCode::NORMAL,
            "bye",
            CloseReason::Shutdown,
        ));
        let second = outbox.close(CloseRequest::new(
            CloseCode::AWAY,
            "later",
            CloseReason::Shutdown,
        ));
        assert_eq!(first.frame, second.frame);
        outbox.finish();
        assert!(matches!(
            outbox.push(Message::text("x")),
            Err(Refused::Closed(_))
        ));
    }

    #[test]
    fn a_busy_outbox_reuses_its_storage_and_an_idle_one_lets_it_go() {
        let outbox = outbox(8, 1 << 20, SlowConsumerPolicy::Close);
        let (_, waker, mut batch) = asleep(&outbox);
        outbox.push(Message::text("a")).expect("room");
        outbox.take(&waker, &mut batch, false);
        batch.clear();
        outbox.release(1, 1);
        // The next push finds the spent batch's storage in the queue.
        outbox.push(Message::text("b")).expect("room");
        assert!(outbox.lock().queue.capacity() > 0);
        outbox.take(&waker, &mut batch, false);
        assert_eq!(batch.len(), 1);
        batch.clear();
        outbox.release(1, 1);
        // Not idle (the flush of this batch): both keep their storage.
        outbox.take(&waker, &mut batch, false);
        assert!(batch.capacity() > 0 && outbox.lock().queue.capacity() > 0);
        outbox.push(Message::text("c")).expect("room");
        outbox.take(&waker, &mut batch, true);
        // Idle, but something was queued: it goes as usual.
        assert_eq!(batch.len(), 1);
        batch.clear();
        outbox.release(1, 1);
        // Idle with nothing queued: neither keeps any.
        outbox.take(&waker, &mut batch, true);
        assert_eq!(batch.capacity(), 0);
        assert_eq!(outbox.lock().queue.capacity(), 0);
    }
}
