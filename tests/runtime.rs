//! The core runtime's contracts over real sockets (TCP lines on 127.0.0.1:0).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{LIMIT, LineClient, lines_server};
use switchboard::{
    BoxError, CloseReason, Config, Connection, ConnectionId, Hub, Message, MessageComponent,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::time::timeout;

/// Echoes, with commands: `panic`, `fail`, `flood N`, `all TEXT`.
#[derive(Default)]
struct Service {
    hub: Hub,
    in_flight: Mutex<HashMap<ConnectionId, usize>>,
    overlaps: AtomicUsize,
    closes: Mutex<Vec<(ConnectionId, CloseReason)>>,
    closed: Notify,
    floods_done: AtomicUsize,
    flood_notify: Notify,
}

impl Service {
    async fn wait_closes(&self, n: usize) -> Vec<(ConnectionId, CloseReason)> {
        timeout(LIMIT, async {
            loop {
                let notified = self.closed.notified();
                {
                    let closes = self.closes.lock().unwrap();
                    if closes.len() >= n {
                        return closes.clone();
                    }
                }
                notified.await;
            }
        })
        .await
        .expect("on_close in time")
    }
}

impl MessageComponent for Service {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        self.hub.join(conn);
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        {
            let mut in_flight = self.in_flight.lock().unwrap();
            let n = in_flight.entry(conn.id()).or_default();
            if *n > 0 {
                self.overlaps.fetch_add(1, Ordering::SeqCst);
            }
            *n += 1;
        }
        tokio::task::yield_now().await;
        let text = msg.as_text().unwrap_or_default().to_owned();
        let result = if text == "panic" {
            panic!("asked to panic");
        } else if text == "fail" {
            Err("asked to fail".into())
        } else if let Some(n) = text.strip_prefix("flood ") {
            let n: usize = n.parse()?;
            let sent = (0..n).try_for_each(|i| conn.send(format!("f{i}")));
            self.floods_done.fetch_add(1, Ordering::SeqCst);
            self.flood_notify.notify_waiters();
            sent.map_err(Into::into)
        } else if let Some(rest) = text.strip_prefix("all ") {
            self.hub
                .broadcast(rest.to_owned())
                .await
                .map(drop)
                .map_err(Into::into)
        } else {
            conn.send(msg).map_err(Into::into)
        };
        *self.in_flight.lock().unwrap().get_mut(&conn.id()).unwrap() -= 1;
        result
    }

    async fn on_close(&self, conn: &Connection, reason: CloseReason) {
        self.closes.lock().unwrap().push((conn.id(), reason));
        self.closed.notify_waiters();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_delivery_under_many_concurrent_clients() {
    let service = Arc::new(Service::default());
    let server = lines_server(service.clone(), Config::default()).await;
    let addr = server.local_addr();
    const CLIENTS: usize = 50;
    const LINES: usize = 400;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await.unwrap();
                let (reader, mut writer) = stream.into_split();
                // Write in uneven batches while reading concurrently.
                let write = tokio::spawn(async move {
                    let mut batch = String::new();
                    for i in 0..LINES {
                        batch.push_str(&format!("{c}:{i}\n"));
                        if i % 37 == 0 {
                            writer.write_all(batch.as_bytes()).await.unwrap();
                            batch.clear();
                        }
                    }
                    writer.write_all(batch.as_bytes()).await.unwrap();
                    writer
                });
                let mut lines = BufReader::new(reader).lines();
                for i in 0..LINES {
                    let line = lines.next_line().await.unwrap();
                    assert_eq!(line, Some(format!("{c}:{i}")), "client {c}");
                }
                drop(write.await.unwrap());
            })
        })
        .collect();
    for task in tasks {
        timeout(LIMIT, task)
            .await
            .expect("client in time")
            .expect("client ok");
    }
    assert_eq!(service.overlaps.load(Ordering::SeqCst), 0);
    assert_eq!(server.stats().messages_in, (CLIENTS * LINES) as u64);
    server.shutdown().await;
    assert_eq!(service.wait_closes(CLIENTS).await.len(), CLIENTS);
}

#[tokio::test]
async fn a_panic_closes_only_that_connection() {
    let service = Arc::new(Service::default());
    let server = lines_server(service.clone(), Config::default()).await;
    let mut others = Vec::new();
    for _ in 0..5 {
        others.push(LineClient::connect(server.local_addr()).await);
    }
    let mut victim = LineClient::connect(server.local_addr()).await;
    victim.send("panic").await;
    assert_eq!(
        victim.recv().await,
        None,
        "the panicking connection is closed"
    );
    // The server lingers until the peer's end of stream: hang up.
    drop(victim);
    let closes = service.wait_closes(1).await;
    assert_eq!(closes[0].1, CloseReason::Panic);
    for (i, other) in others.iter_mut().enumerate() {
        other.send(&format!("still {i}")).await;
        assert_eq!(
            other.recv().await.as_deref(),
            Some(format!("still {i}").as_str())
        );
    }
    assert_eq!(server.stats().panics, 1);
    assert_eq!(server.stats().open_connections, 5);
    drop(others);
    server.shutdown().await;
}

/// A runtime dropped under open connections drops their pending tasks:
/// each connection still leaves its hubs and the server's count, though
/// its `on_close` never runs.
#[test]
fn connections_whose_runtime_shuts_down_leave_their_hubs_and_the_count() {
    let service = Arc::new(Service::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (server, clients) = runtime.block_on(async {
        let server = lines_server(service.clone(), Config::default()).await;
        let mut clients = Vec::new();
        for i in 0..3 {
            let mut client = LineClient::connect(server.local_addr()).await;
            // An echo: `on_open` has run, the connection is in the hub.
            client.send(&format!("hello {i}")).await;
            assert_eq!(client.recv().await, Some(format!("hello {i}")));
            clients.push(client);
        }
        (server, clients)
    });
    assert_eq!(service.hub.len(), 3);
    assert_eq!(server.stats().open_connections, 3);

    drop(runtime);
    assert_eq!(service.hub.len(), 0);
    assert_eq!(server.stats().open_connections, 0);
    assert!(service.closes.lock().unwrap().is_empty());
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_closed_and_the_others_get_everything() {
    let service = Arc::new(Service::default());
    let config = Config::default()
        .queue_max_messages(256)
        .queue_max_bytes(256 << 10)
        .close_timeout(Duration::from_millis(500));
    let server = lines_server(service.clone(), config).await;
    let addr = server.local_addr();

    // Connects and never reads: the kernel buffers fill, then its queue.
    let stuck = TcpStream::connect(addr).await.unwrap();

    const N: usize = 20_000;
    // The publisher stays at most WINDOW messages ahead of the readers that
    // keep up (well under the 256-message queue bound), so only the peer
    // that does not read at all can overflow its queue.
    const WINDOW: usize = 64;
    let pad = "x".repeat(1000);
    let (progress_tx, progress_rx) = watch::channel(0usize);
    let reader = {
        let mut client = LineClient::connect(addr).await;
        client.send("ready").await;
        assert_eq!(client.recv().await.as_deref(), Some("ready"));
        let pad = pad.clone();
        tokio::spawn(async move {
            for i in 0..N {
                assert_eq!(
                    client.recv().await,
                    Some(format!("{i}:{pad}")),
                    "reader lost or reordered a message"
                );
                progress_tx.send_replace(i + 1);
            }
        })
    };
    let stream = TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    let (own_tx, own_rx) = watch::channel(0usize);
    let sender_reads = {
        let pad = pad.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(r).lines();
            for i in 0..N {
                assert_eq!(lines.next_line().await.unwrap(), Some(format!("{i}:{pad}")));
                own_tx.send_replace(i + 1);
            }
        })
    };
    for i in 0..N {
        for rx in [&progress_rx, &own_rx] {
            let mut rx = rx.clone();
            timeout(LIMIT, rx.wait_for(|done| done + WINDOW > i))
                .await
                .expect("readers keep up")
                .unwrap();
        }
        w.write_all(format!("all {i}:{pad}\n").as_bytes())
            .await
            .unwrap();
    }
    timeout(LIMIT, reader)
        .await
        .expect("reader in time")
        .unwrap();
    timeout(LIMIT, sender_reads)
        .await
        .expect("sender in time")
        .unwrap();

    // The reader has gone by now (Peer close); the stuck peer was closed by
    // the policy, and no one else.
    let closes = service.wait_closes(2).await;
    let slow: Vec<_> = closes
        .iter()
        .filter(|(_, r)| *r == CloseReason::SlowConsumer)
        .collect();
    assert_eq!(slow.len(), 1, "{closes:?}");
    assert!(
        closes
            .iter()
            .all(|(_, r)| matches!(r, CloseReason::SlowConsumer | CloseReason::Peer(None))),
        "{closes:?}"
    );
    let stats = server.stats();
    assert_eq!(stats.slow_consumer_closes, 1);
    assert!(stats.dropped > 0);
    drop((stuck, w));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_everything_queued_before_it() {
    let service = Arc::new(Service::default());
    let config = Config::default()
        .queue_max_messages(1 << 20)
        .queue_max_bytes(1 << 30);
    let server = lines_server(service.clone(), config).await;
    const FLOOD: usize = 20_000;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = LineClient::connect(server.local_addr()).await;
        c.send(&format!("flood {FLOOD}")).await;
        clients.push(c);
    }
    // Every flood is fully queued before shutdown starts.
    timeout(LIMIT, async {
        loop {
            let notified = service.flood_notify.notified();
            if service.floods_done.load(Ordering::SeqCst) == 3 {
                return;
            }
            notified.await;
        }
    })
    .await
    .expect("floods queued");
    let shutdown = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown().await }
    });
    for mut client in clients {
        for i in 0..FLOOD {
            assert_eq!(
                client.recv().await,
                Some(format!("f{i}")),
                "lost message {i}"
            );
        }
        assert_eq!(
            client.recv().await,
            None,
            "closed after the last queued message"
        );
    }
    timeout(LIMIT, shutdown)
        .await
        .expect("shutdown in time")
        .unwrap();
    let closes = service.wait_closes(3).await;
    assert!(
        closes.iter().all(|(_, r)| *r == CloseReason::Shutdown),
        "{closes:?}"
    );
    assert_eq!(server.stats().open_connections, 0);
}

#[tokio::test]
async fn connections_past_max_connections_are_refused_and_service_resumes() {
    let service = Arc::new(Service::default());
    let server = lines_server(service.clone(), Config::default().max_connections(Some(3))).await;
    let addr = server.local_addr();
    let mut held = Vec::new();
    for i in 0..3 {
        let mut c = LineClient::connect(addr).await;
        c.send(&format!("hello {i}")).await;
        assert_eq!(
            c.recv().await.as_deref(),
            Some(format!("hello {i}").as_str())
        );
        held.push(c);
    }
    let mut refused = LineClient::connect(addr).await;
    assert_eq!(
        refused.recv().await,
        None,
        "the fourth connection is dropped"
    );
    assert_eq!(server.stats().connections_rejected, 1);

    drop(held.pop());
    service.wait_closes(1).await;
    // The slot is released right after on_close returns; a client that was
    // refused in that instant simply tries again.
    let served = timeout(LIMIT, async {
        loop {
            let mut again = LineClient::connect(addr).await;
            again.send("back").await;
            if again.recv().await.as_deref() == Some("back") {
                return again;
            }
        }
    })
    .await
    .expect("service resumed");
    drop((served, held, refused));
    server.shutdown().await;
}

#[tokio::test]
async fn the_ip_filter_refuses_peers_before_any_handshake() {
    use switchboard::IpFilter;

    let service = Arc::new(Service::default());
    // Only 127.0.0.2 may connect; this test connects from 127.0.0.1.
    let filter = IpFilter::default().allow(["127.0.0.2/32"]).unwrap();
    let server = lines_server(service.clone(), Config::default().ip_filter(filter)).await;
    let mut refused = LineClient::connect(server.local_addr()).await;
    refused.send("hello").await;
    assert_eq!(refused.recv().await, None, "refused at once");
    assert_eq!(server.stats().connections_denied, 1);
    assert_eq!(server.stats().connections_total, 0);

    // Bound to 127.0.0.2, the same client is served.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(server.local_addr()).await.unwrap();
    let (r, w) = stream.into_split();
    let mut allowed = LineClient {
        reader: BufReader::new(r),
        writer: w,
    };
    allowed.send("hello").await;
    assert_eq!(allowed.recv().await.as_deref(), Some("hello"));
    drop((refused, allowed));
    server.shutdown().await;
}

#[tokio::test]
async fn a_failed_bind_names_the_address_as_written() {
    use switchboard::Server;
    use switchboard::tcp::TcpTransport;

    // A port that is taken: another listener holds it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();

    let as_text = addr.to_string();
    let err = Server::builder()
        .bind(as_text.clone(), TcpTransport::lines(Service::default()))
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, switchboard::Error::Bind { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("cannot listen on {as_text}: ")),
        "{message}"
    );

    let err = Server::builder()
        .bind(addr, TcpTransport::lines(Service::default()))
        .start()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot listen on {addr}: ")),
        "{err}"
    );

    // No port: the address cannot be resolved, and is shown as typed.
    let err = Server::builder()
        .bind("127.0.0.1", TcpTransport::lines(Service::default()))
        .start()
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("cannot listen on 127.0.0.1: "),
        "{err}"
    );
    drop(taken);
}

/// Logs one event per message, inside the connection's span.
struct Logged;

impl MessageComponent for Logged {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        tracing::info!("handled a message");
        conn.send(msg)?;
        Ok(())
    }
}

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// With a subscriber that records the connection's span (INFO), a
/// handler's events carry it: the connection's id, peer and transport.
/// (Without one, the task holds no span at all.)
#[tokio::test(flavor = "current_thread")]
async fn handler_events_carry_the_connection_span() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // One thread: the server's tasks run under this subscriber too.
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = lines_server(Arc::new(Logged), Config::default()).await;
    let mut client = LineClient::connect(server.local_addrs()[0]).await;
    client.send("hello").await;
    assert_eq!(client.recv().await.as_deref(), Some("hello"));
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("handled a message"))
        .unwrap_or_else(|| panic!("no event in {text:?}"));
    assert!(
        line.contains("conn{id=")
            && line.contains("peer=127.0.0.1:")
            && line.contains("transport=\"tcp\"}"),
        "the event lacks the connection's span: {line}"
    );
    drop(client);
    server.shutdown().await;
}
