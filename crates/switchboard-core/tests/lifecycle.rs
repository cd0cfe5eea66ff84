//! Contract tests of the connection lifecycle, run on the real connection
#![allow(clippy::unwrap_used)]
//! driver through the in-memory test kit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard::testing::{TestClient, TestServer};
use switchboard::{
    BoxError, CloseCode, CloseReason, Config, Connection, ConnectionId, Error, Hub, Message,
    MessageComponent, SlowConsumerPolicy,
};
use tokio::sync::Notify;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

/// Records every lifecycle event and answers a small command language.
#[derive(Default)]
struct Recorder {
    hub: Hub,
    opens: Mutex<HashMap<ConnectionId, usize>>,
    closes: Mutex<HashMap<ConnectionId, Vec<CloseReason>>>,
    errors: Mutex<Vec<String>>,
    /// Per connection: a handler is running (detects overlapping calls).
    busy: Mutex<HashMap<ConnectionId, Arc<AtomicBool>>>,
    overlaps: AtomicUsize,
    message_before_open: AtomicUsize,
    closed_notify: Notify,
}

impl Recorder {
    fn close_reasons(&self) -> HashMap<ConnectionId, Vec<CloseReason>> {
        self.closes.lock().unwrap().clone()
    }

    async fn wait_closes(&self, n: usize) {
        timeout(LIMIT, async {
            loop {
                let notified = self.closed_notify.notified();
                if self
                    .closes
                    .lock()
                    .unwrap()
                    .values()
                    .map(Vec::len)
                    .sum::<usize>()
                    >= n
                {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("on_close did not run in time");
    }
}

impl MessageComponent for Recorder {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        *self.opens.lock().unwrap().entry(conn.id()).or_default() += 1;
        self.busy.lock().unwrap().insert(conn.id(), Arc::default());
        self.hub.join(conn);
        if conn.transport().path() == "/reject" {
            return Err("not allowed".into());
        }
        if conn.transport().path() == "/panic-open" {
            panic!("on_open panic");
        }
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        if !self.opens.lock().unwrap().contains_key(&conn.id()) {
            self.message_before_open.fetch_add(1, Ordering::SeqCst);
        }
        let busy = self
            .busy
            .lock()
            .unwrap()
            .get(&conn.id())
            .cloned()
            .expect("opened");
        if busy.swap(true, Ordering::SeqCst) {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        // Yield a few times so overlapping calls would actually interleave.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        let result = match msg.as_text() {
            Some("fail") => Err("handler failed".into()),
            Some("panic") => panic!("handler panic"),
            Some(cmd) if cmd.starts_with("burst ") => {
                // "burst N SIZE": N messages of SIZE bytes (the sequence
                // number, padded), sent in one go; refusals are ignored, so
                // the bounds alone decide what is queued.
                let (n, size) = cmd[6..].split_once(' ').ok_or("burst N SIZE")?;
                let (n, size): (usize, usize) = (n.parse()?, size.parse()?);
                for i in 0..n {
                    let _ = conn.send(format!("{i:.<size$}"));
                }
                Ok(())
            }
            Some(cmd) if cmd.starts_with("panic after ") => {
                // Replies, then panics: the replies go out before the close.
                let n: usize = cmd[12..].parse()?;
                for i in 0..n {
                    conn.send(format!("last {i}"))?;
                }
                panic!("handler panic")
            }
            Some(cmd) if cmd.starts_with("flood ") => {
                let n: usize = cmd[6..].parse()?;
                for i in 0..n {
                    conn.send(format!("f{i}"))?;
                }
                Ok(())
            }
            Some(cmd) if cmd.starts_with("all ") => {
                self.hub.broadcast(cmd[4..].to_owned()).await?;
                Ok(())
            }
            _ => conn.send(msg).map_err(Into::into),
        };
        busy.store(false, Ordering::SeqCst);
        result
    }

    async fn on_close(&self, conn: &Connection, reason: CloseReason) {
        self.closes
            .lock()
            .unwrap()
            .entry(conn.id())
            .or_default()
            .push(reason);
        self.closed_notify.notify_waiters();
    }

    async fn on_error(&self, conn: &Connection, err: Error) {
        self.errors.lock().unwrap().push(err.to_string());
        conn.close_with(CloseCode::ERROR, "internal error");
    }
}

fn server(config: Config) -> (Arc<Recorder>, TestServer) {
    let rec = Arc::new(Recorder::default());
    let server = TestServer::with_config(rec.clone(), config);
    (rec, server)
}

async fn recv(client: &mut TestClient) -> Option<Message> {
    timeout(LIMIT, client.recv())
        .await
        .expect("no message in time")
}

/// The code of the close frame `client` gets, skipping messages.
async fn close_code(client: &mut TestClient) -> Option<CloseCode> {
    let frame = timeout(LIMIT, client.closed()).await.expect("closed");
    frame.map(|f| f.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_in_order_one_at_a_time_across_many_clients() {
    let (rec, server) = server(Config::default());
    const CLIENTS: usize = 40;
    const MESSAGES: usize = 200;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut client = server.connect().await;
        tasks.push(tokio::spawn(async move {
            // 200 replies fit in the outbound queue (1024), so sending all
            // first cannot deadlock; the clients run in parallel.
            for i in 0..MESSAGES {
                assert!(client.send(format!("{c}:{i}")).await);
            }
            for i in 0..MESSAGES {
                assert_eq!(
                    recv(&mut client).await,
                    Some(Message::text(format!("{c}:{i}"))),
                    "client {c}"
                );
            }
        }));
    }
    for task in tasks {
        timeout(LIMIT, task)
            .await
            .expect("client finished in time")
            .expect("client task");
    }
    assert_eq!(
        rec.overlaps.load(Ordering::SeqCst),
        0,
        "on_message overlapped for one connection"
    );
    assert_eq!(
        rec.message_before_open.load(Ordering::SeqCst),
        0,
        "on_message before on_open"
    );
    assert_eq!(server.stats().messages_in, (CLIENTS * MESSAGES) as u64);
}

#[tokio::test]
async fn on_close_runs_exactly_once_on_every_path() {
    let config = Config::default()
        .queue_max_messages(8)
        .shutdown_grace(Duration::from_secs(5));
    let (rec, server) = server(config);
    let info = |path: &str| switchboard::TransportInfo::new("memory").with_path(path.to_owned());

    // Peer close.
    let mut peer = server.connect().await;
    assert!(peer.send("hi").await);
    assert_eq!(recv(&mut peer).await, Some(Message::text("hi")));
    peer.close().await;
    assert_eq!(close_code(&mut peer).await, Some(CloseCode::NORMAL));

    // A handler error (the on_error above closes with 1011), a panic, a
    // rejection by on_open, a panic in on_open, and a limit: the queue bound
    // (8) with a peer that does not read.
    for (path, msg, code) in [
        ("/", Some("fail"), CloseCode::ERROR),
        ("/", Some("panic"), CloseCode::ERROR),
        ("/reject", None, CloseCode::POLICY),
        ("/panic-open", None, CloseCode::ERROR),
        ("/", Some("flood 100"), CloseCode::POLICY),
    ] {
        let mut client = server.connect_with(info(path)).await;
        if let Some(msg) = msg {
            assert!(client.send(msg).await);
        }
        assert_eq!(close_code(&mut client).await, Some(code), "{path} {msg:?}");
    }

    // Shutdown.
    let mut last = server.connect().await;
    assert!(last.send("still here").await);
    assert_eq!(recv(&mut last).await, Some(Message::text("still here")));
    timeout(LIMIT, server.shutdown())
        .await
        .expect("shutdown in time");
    assert_eq!(close_code(&mut last).await, Some(CloseCode::AWAY));

    rec.wait_closes(7).await;
    let closes = rec.close_reasons();
    assert_eq!(closes.len(), 7, "one entry per connection: {closes:?}");
    for (id, reasons) in &closes {
        assert_eq!(
            reasons.len(),
            1,
            "connection {id} closed {} times: {reasons:?}",
            reasons.len()
        );
    }
    let mut kinds: Vec<String> = closes
        .values()
        .map(|r| {
            match &r[0] {
                CloseReason::Peer(_) => "peer",
                CloseReason::Local(f) if f.code == CloseCode::ERROR => "handler-error",
                CloseReason::Panic => "panic",
                CloseReason::Rejected => "rejected",
                CloseReason::SlowConsumer => "slow",
                CloseReason::Shutdown => "shutdown",
                other => panic!("unexpected reason {other:?}"),
            }
            .to_owned()
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "handler-error",
            "panic",
            "panic",
            "peer",
            "rejected",
            "shutdown",
            "slow"
        ]
    );
    let opens = rec.opens.lock().unwrap();
    assert!(opens.values().all(|n| *n == 1));
    let stats = server.stats();
    assert_eq!(stats.open_connections, 0);
    assert_eq!(stats.panics, 2);
    assert_eq!(stats.slow_consumer_closes, 1);
    let errors = rec.errors.lock().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("handler or codec panicked: handler panic")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("handler error: not allowed")),
        "{errors:?}"
    );
}

#[tokio::test]
async fn a_panic_closes_only_its_own_connection() {
    let (rec, server) = server(Config::default());
    let mut others = Vec::new();
    for _ in 0..5 {
        others.push(server.connect().await);
    }
    let mut victim = server.connect().await;
    assert!(victim.send("panic").await);
    assert_eq!(close_code(&mut victim).await, Some(CloseCode::ERROR));
    // A handler that replies and then panics: its replies, more than the
    // transport takes at once (16 in flight), leave in order before the
    // close, and the message after the panic is never handled.
    let mut victim = server.connect().await;
    assert!(victim.send("a").await);
    assert!(victim.send("panic after 40").await);
    let _ = victim.send("b").await;
    assert_eq!(recv(&mut victim).await, Some(Message::text("a")));
    for i in 0..40 {
        assert_eq!(
            recv(&mut victim).await,
            Some(Message::text(format!("last {i}")))
        );
    }
    assert_eq!(recv(&mut victim).await, None, "answered after the panic");
    assert_eq!(victim.close_frame().map(|f| f.code), Some(CloseCode::ERROR));
    for (i, other) in others.iter_mut().enumerate() {
        assert!(other.send(format!("after {i}")).await);
        assert_eq!(recv(other).await, Some(Message::text(format!("after {i}"))));
    }
    rec.wait_closes(2).await;
    assert_eq!(server.stats().open_connections, 5);
    assert_eq!(server.stats().panics, 2);
}

#[tokio::test]
async fn a_peer_that_never_reads_is_closed_while_others_get_everything() {
    // The close waits for the stuck peer to take its close frame: long
    // enough for it to read everything that reached it.
    const QUEUE: usize = 64;
    let config = Config::default()
        .queue_max_messages(QUEUE)
        .queue_max_bytes(4096)
        .close_timeout(LIMIT);
    let (rec, server) = server(config);
    let mut stuck = server.connect().await; // does not read until the end
    let mut reader = server.connect().await;
    let mut sender = server.connect().await;
    const N: usize = 2000;
    for i in 0..N {
        assert!(sender.send(format!("all {i}")).await);
        // The reader keeps up; the sender's own copies are read too.
        assert_eq!(recv(&mut reader).await, Some(Message::text(i.to_string())));
        assert_eq!(recv(&mut sender).await, Some(Message::text(i.to_string())));
    }
    let stats = server.stats();
    assert_eq!(stats.slow_consumer_closes, 1);
    // What the stuck peer cost, exactly: the transport took what it holds
    // in flight (16 frames of the in-memory transport); the outbox then
    // held the bound, QUEUE messages, and the next one closed it. All of
    // those QUEUE + 1 were dropped, none delivered.
    const IN_FLIGHT: usize = 16;
    assert_eq!(stats.dropped, QUEUE as u64 + 1, "{stats:?}");
    assert_eq!(stats.messages_out, (2 * N + IN_FLIGHT) as u64, "{stats:?}");
    // It reads now: what reached it before the close, then the close; the
    // discarded backlog never comes.
    for i in 0..IN_FLIGHT {
        assert_eq!(recv(&mut stuck).await, Some(Message::text(i.to_string())));
    }
    assert_eq!(recv(&mut stuck).await, None, "the discarded backlog came");
    assert_eq!(stuck.close_frame().map(|f| f.code), Some(CloseCode::POLICY));
    rec.wait_closes(1).await;
    let closes = rec.close_reasons();
    assert_eq!(closes.len(), 1);
    assert_eq!(
        closes.values().next().unwrap(),
        &vec![CloseReason::SlowConsumer]
    );
}

#[tokio::test]
async fn drop_policy_refuses_and_counts_but_keeps_the_connection() {
    const QUEUE: usize = 4;
    let config = Config::default()
        .queue_max_messages(QUEUE)
        .slow_consumer(SlowConsumerPolicy::Drop);
    let (rec, server) = server(config);
    // `client` does not read while the sender broadcasts through the hub,
    // which skips members that refuse a message.
    let mut client = server.connect().await;
    let mut sender = server.connect().await;
    for i in 0..100 {
        assert!(sender.send(format!("all {i}")).await);
        assert_eq!(recv(&mut sender).await, Some(Message::text(i.to_string())));
    }
    // The transport took 16 (what the in-memory transport holds in
    // flight), the queue exactly its bound: the rest was dropped.
    const IN_FLIGHT: usize = 16;
    let stats = server.stats();
    assert_eq!(stats.dropped, (100 - IN_FLIGHT - QUEUE) as u64, "{stats:?}");
    assert_eq!(stats.slow_consumer_closes, 0);
    // The connection is still open and serves again once it reads.
    for i in 0..IN_FLIGHT + QUEUE {
        assert_eq!(recv(&mut client).await, Some(Message::text(i.to_string())));
    }
    assert!(client.send("ping").await);
    assert_eq!(recv(&mut client).await, Some(Message::text("ping")));
    assert!(rec.close_reasons().is_empty());
}

/// A handler's burst of `n` messages of `size` bytes against the bounds:
/// what the client receives before the marker that follows the burst, and
/// the `dropped` counter.
async fn burst(config: Config, n: usize, size: usize) -> (Vec<String>, Option<CloseCode>, u64) {
    let (_rec, server) = server(config);
    let mut client = server.connect().await;
    assert!(client.send(format!("burst {n} {size}")).await);
    assert!(client.send("mark").await);
    let mut got = Vec::new();
    loop {
        match recv(&mut client).await {
            Some(m) if m.as_text() == Some("mark") => break,
            Some(m) => got.push(m.as_text().unwrap().to_owned()),
            None => break,
        }
    }
    let code = client.close_frame().map(|f| f.code);
    (got, code, server.stats().dropped)
}

fn padded(i: usize, size: usize) -> String {
    format!("{i:.<size$}")
}

#[tokio::test]
async fn the_message_bound_is_exact() {
    // The burst is queued in one handler call, before the transport takes
    // any of it: the queue holds exactly queue_max_messages.
    let config = Config::default()
        .queue_max_messages(8)
        .slow_consumer(SlowConsumerPolicy::Drop);
    let (got, code, dropped) = burst(config, 20, 10).await;
    let want: Vec<String> = (0..8).map(|i| padded(i, 10)).collect();
    assert_eq!(got, want);
    assert_eq!(code, None);
    assert_eq!(dropped, 12);
}

#[tokio::test]
async fn the_byte_bound_is_exact_and_is_what_drops() {
    // Room for 100 messages, 8 × 100 bytes: the 9th message of 100 bytes
    // is the first one refused.
    let config = Config::default()
        .queue_max_messages(100)
        .queue_max_bytes(8 * 100)
        .slow_consumer(SlowConsumerPolicy::Drop);
    let (got, code, dropped) = burst(config, 20, 100).await;
    let want: Vec<String> = (0..8).map(|i| padded(i, 100)).collect();
    assert_eq!(got, want);
    assert_eq!(code, None);
    assert_eq!(dropped, 12);
}

#[tokio::test]
async fn the_byte_bound_is_what_closes_a_slow_consumer() {
    // The same burst under the Close policy: the 9th message closes the
    // connection (1008) and the 8 queued are discarded, not delivered.
    let config = Config::default()
        .queue_max_messages(100)
        .queue_max_bytes(8 * 100);
    let (got, code, dropped) = burst(config.clone(), 20, 100).await;
    assert_eq!(got, Vec::<String>::new());
    assert_eq!(code, Some(CloseCode::POLICY));
    assert_eq!(dropped, 9);
    // One message fewer fits exactly: nothing is dropped.
    let (got, code, dropped) = burst(config, 8, 100).await;
    assert_eq!(got.len(), 8);
    assert_eq!(code, None);
    assert_eq!(dropped, 0);
}

#[tokio::test]
async fn shutdown_delivers_everything_queued_before_it() {
    let config = Config::default()
        .queue_max_messages(100_000)
        .queue_max_bytes(64 << 20);
    let (rec, server) = server(config);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = server.connect().await;
        assert!(c.send("flood 5000").await);
        // The handler ran once a later message is answered.
        assert!(c.send("mark").await);
        clients.push(c);
    }
    // Wait until every flood is queued: each client's "mark" comes last.
    let mut received = vec![Vec::new(); 3];
    for (c, client) in clients.iter_mut().enumerate() {
        loop {
            let m = recv(client).await.expect("message");
            if m.as_text() == Some("mark") {
                break;
            }
            received[c].push(m);
            if received[c].len() == 10 {
                break;
            }
        }
    }
    let shutdown = tokio::spawn({
        let server = Arc::new(server);
        async move { server.shutdown().await }
    });
    for (c, client) in clients.iter_mut().enumerate() {
        while let Some(m) = recv(client).await {
            if m.as_text() != Some("mark") {
                received[c].push(m);
            }
        }
        assert_eq!(client.close_frame().map(|f| f.code), Some(CloseCode::AWAY));
    }
    for r in &received {
        assert_eq!(r.len(), 5000);
        for (i, m) in r.iter().enumerate() {
            assert_eq!(m.as_text(), Some(format!("f{i}").as_str()));
        }
    }
    timeout(LIMIT, shutdown)
        .await
        .expect("shutdown finished")
        .expect("task");
    rec.wait_closes(3).await;
    assert!(
        rec.close_reasons()
            .values()
            .all(|r| r == &vec![CloseReason::Shutdown])
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_stragglers_after_the_grace_period() {
    struct Stuck;
    impl MessageComponent for Stuck {
        async fn on_message(&self, _conn: &Connection, _msg: Message) -> Result<(), BoxError> {
            std::future::pending::<()>().await;
            Ok(())
        }
    }
    let closed = Arc::new(AtomicUsize::new(0));
    struct Counting(Stuck, Arc<AtomicUsize>);
    impl MessageComponent for Counting {
        async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
            self.0.on_message(conn, msg).await
        }
        async fn on_close(&self, _conn: &Connection, reason: CloseReason) {
            assert_eq!(reason, CloseReason::Shutdown);
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }
    let server = TestServer::with_config(
        Counting(Stuck, closed.clone()),
        Config::default().shutdown_grace(Duration::from_secs(3)),
    );
    let client = server.connect().await;
    assert!(client.send("block forever").await);
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    server.shutdown().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    assert_eq!(closed.load(Ordering::SeqCst), 1);
    assert_eq!(server.stats().open_connections, 0);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_closes_with_1008_or_drops() {
    use switchboard::{RateLimit, RateLimitAction};

    /// Connects, sends `sent` messages `m0`, `m1`, ... at once and receives
    /// the first five back.
    async fn burst(server: &TestServer, sent: usize) -> TestClient {
        let mut client = server.connect().await;
        for i in 0..sent {
            assert!(client.send(format!("m{i}")).await);
        }
        for i in 0..5 {
            let expected = Message::text(format!("m{i}"));
            assert_eq!(recv(&mut client).await, Some(expected));
        }
        client
    }

    // Close: a burst of 5, then the 6th message closes the connection.
    let (rec, closing) = server(Config::default().rate_limit(Some(RateLimit::new(10.0, 5))));
    let mut client = burst(&closing, 6).await;
    let frame = timeout(LIMIT, client.closed())
        .await
        .expect("closed")
        .expect("close frame");
    assert_eq!(
        (frame.code, frame.reason.as_str()),
        (CloseCode::POLICY, "rate limit exceeded")
    );
    rec.wait_closes(1).await;
    assert_eq!(closing.stats().rate_limited, 1);
    assert!(
        rec.errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("rate limit exceeded"))
    );

    // Drop: over-limit messages vanish, the connection stays, tokens refill.
    let limit = RateLimit::new(10.0, 5).action(RateLimitAction::Drop);
    let (rec, dropping) = server(Config::default().rate_limit(Some(limit)));
    let mut client = burst(&dropping, 8).await;
    tokio::time::advance(Duration::from_millis(250)).await; // 2.5 tokens
    assert!(client.send("later").await);
    assert_eq!(recv(&mut client).await, Some(Message::text("later")));
    assert_eq!(dropping.stats().rate_limited, 3);
    assert!(rec.close_reasons().is_empty());
}

/// Hands each message's connection to a helper thread that sends on it, and
/// waits (spinning inside the handler's poll, or awaiting) until it has.
struct Relay {
    to_helper: Mutex<std::sync::mpsc::Sender<(Connection, String)>>,
    sent: Arc<AtomicUsize>,
    release: Notify,
}

impl Relay {
    /// The component and its helper thread, which sends "from helper N" on
    /// the connection for each message N and then counts it in `sent`; a
    /// server of it and a client.
    async fn serve() -> (Arc<Self>, TestServer, TestClient) {
        let (tx, rx) = std::sync::mpsc::channel::<(Connection, String)>();
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        std::thread::spawn(move || {
            for (conn, text) in rx {
                conn.send(format!("from helper {text}")).unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let relay = Arc::new(Relay {
            to_helper: Mutex::new(tx),
            sent,
            release: Notify::new(),
        });
        let server = TestServer::new(relay.clone());
        let client = server.connect().await;
        (relay, server, client)
    }
}

/// Sends `text` and expects the helper thread's reply to it.
async fn relayed(client: &mut TestClient, text: String) {
    assert!(client.send(text.clone()).await);
    let reply = Message::text(format!("from helper {text}"));
    assert_eq!(recv(client).await, Some(reply));
}

impl MessageComponent for Relay {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        let text = msg.as_text().ok_or("text only")?.to_owned();
        let before = self.sent.load(Ordering::SeqCst);
        let wait = text.starts_with("wait");
        self.to_helper.lock().unwrap().send((conn.clone(), text))?;
        if wait {
            // Awaits: the driver writes what the helper queued meanwhile.
            self.release.notified().await;
            conn.send("released")?;
        } else {
            // Spins inside this poll, so the helper's send lands while the
            // driver is polling the handler (and skips waking it); returns
            // without sending anything itself.
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while self.sent.load(Ordering::SeqCst) == before && std::time::Instant::now() < deadline
            {
                std::hint::spin_loop();
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_from_another_thread_during_a_handler_is_delivered_without_more_input() {
    let (relay, _server, mut client) = Relay::serve().await;
    // Nothing else arrives to wake the connection: each reply has to leave
    // because the driver looked at the queue before sleeping.
    for i in 0..200 {
        relayed(&mut client, i.to_string()).await;
    }
    assert_eq!(relay.sent.load(Ordering::SeqCst), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_from_another_thread_while_a_handler_waits_is_delivered_at_once() {
    let (relay, server, mut client) = Relay::serve().await;
    for i in 0..20 {
        relayed(&mut client, format!("wait {i}")).await;
        // Counted while its handler is still running.
        assert_eq!(server.stats().messages_in, i + 1);
        relay.release.notify_one();
        assert_eq!(recv(&mut client).await, Some(Message::text("released")));
    }
}

struct Twice;

impl MessageComponent for Twice {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        conn.send(msg.clone())?;
        conn.send(msg)?;
        Ok(())
    }
}

#[tokio::test]
async fn pipelined_input_with_a_small_queue_bound_gets_every_reply_in_order() {
    // 12 messages wait together; the replies of those read before the queue
    // is written out must stay within its bound of 8.
    let config = Config::default().queue_max_messages(8);
    let server = TestServer::with_config(Arc::new(Twice), config);
    let mut client = server.connect().await;
    for i in 0..12 {
        assert!(client.send(format!("m{i}")).await);
    }
    for i in 0..12 {
        for _ in 0..2 {
            assert_eq!(
                recv(&mut client).await,
                Some(Message::text(format!("m{i}")))
            );
        }
    }
    let stats = server.stats();
    assert_eq!(stats.slow_consumer_closes, 0, "{stats:?}");
    assert_eq!((stats.messages_in, stats.messages_out), (12, 24));
    assert_eq!(stats.bytes_in, 10 * 2 + 2 * 3);
}

/// Handlers written as plain functions that return a future can panic when
/// called, before any future exists. `on_error` and `on_close` run outside
/// the message loop's guard, so each call is guarded on its own.
#[derive(Default)]
struct PanicsWhenCalled {
    closes: AtomicUsize,
    notify: Notify,
}

impl MessageComponent for PanicsWhenCalled {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        if msg.as_text() == Some("fail") {
            return Err("refused".into());
        }
        conn.send(msg)?;
        Ok(())
    }

    fn on_error<'a>(
        &'a self,
        _: &'a Connection,
        err: Error,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        if matches!(err, Error::Handler(_)) {
            panic!("on_error panicked when called");
        }
        std::future::ready(())
    }

    fn on_close<'a>(
        &'a self,
        _: &'a Connection,
        reason: CloseReason,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        self.closes.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
        if reason == CloseReason::Panic {
            panic!("on_close panicked when called");
        }
        std::future::ready(())
    }
}

#[tokio::test]
async fn handlers_that_panic_when_called_are_caught_like_any_other() {
    let component = Arc::new(PanicsWhenCalled::default());
    let server = TestServer::with_config(component.clone(), Config::default());
    let mut bystander = server.connect().await;
    let mut client = server.connect().await;
    let closed = component.notify.notified();
    assert!(client.send("fail").await);
    assert_eq!(close_code(&mut client).await, Some(CloseCode::ERROR));
    timeout(LIMIT, closed).await.expect("on_close ran");
    assert_eq!(component.closes.load(Ordering::SeqCst), 1);
    // Both panics were caught and counted; the server serves on.
    assert!(bystander.send("still here").await);
    assert_eq!(
        recv(&mut bystander).await,
        Some(Message::text("still here"))
    );
    assert_eq!(server.stats().panics, 2);
    assert_eq!(server.stats().open_connections, 1);
}
