//! Raw TCP has no pings: what keeps a silent reader connected and what
//! finds a peer that vanished. Successful writes count as activity for the
//! idle timeout, and every accepted socket has TCP keepalive on.
#![allow(clippy::unwrap_used)]

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::SockRef;
use switchboard::tcp::TcpTransport;
use switchboard::transport::{Accepted, Transport};
use switchboard::{Config, Result, TcpKeepalive};
use tokio::net::TcpStream;

use support::{Recorder, echo_server, peer, read_n, read_to_end, recorder};

const IDLE: Duration = Duration::from_secs(1);

fn short_idle() -> Config {
    // No pings on raw TCP anyway; off so that the short idle timeout is valid.
    Config::default()
        .ping_interval(None)
        .idle_timeout(Some(IDLE))
        .close_timeout(Duration::from_millis(500))
}

#[tokio::test]
async fn a_reader_stays_while_messages_flow_and_an_idle_peer_is_closed() {
    let (server, mut events) = echo_server(TcpTransport::lines, short_idle()).await;
    let (mut reader, reader_conn) = peer(&server, &mut events).await;
    let (mut idle, idle_conn) = peer(&server, &mut events).await;
    let started = Instant::now();
    let idle_closed = tokio::spawn(async move {
        let rest = read_to_end(&mut idle).await;
        (rest, started.elapsed())
    });

    // Three idle timeouts of messages to a peer that never writes.
    let flow = 3 * IDLE;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut sent = 0;
    while started.elapsed() < flow {
        tick.tick().await;
        let line = format!("tick {sent:04}");
        reader_conn.send(line.as_str()).unwrap();
        assert_eq!(
            read_n(&mut reader, line.len() + 1).await,
            format!("{line}\n").as_bytes()
        );
        sent += 1;
    }
    let last_write = Instant::now();
    assert!(
        !reader_conn.is_closed(),
        "the reader was closed while messages flowed"
    );

    // The peer with no traffic either way was closed by the idle timeout.
    let (rest, idle_after) = idle_closed.await.unwrap();
    assert!(rest.is_empty());
    let (seen, _) = events.error_then_close(idle_conn.id()).await;
    assert!(seen.idle, "{seen:?}");
    assert!(idle_after >= IDLE, "closed too early: {idle_after:?}");
    // The sweep checks every quarter of IDLE, so the close comes within
    // 1.5 IDLE; the rest is room for a loaded machine.
    assert!(idle_after < 3 * IDLE, "closed too late: {idle_after:?}");
    assert_eq!(events.closes_left(reader_conn.id()), 0);

    // Once nothing flows, the reader is idle too.
    assert!(read_to_end(&mut reader).await.is_empty());
    let reader_after = last_write.elapsed();
    let (seen, _) = events.error_then_close(reader_conn.id()).await;
    assert!(seen.idle, "{seen:?}");
    assert!(
        reader_after >= IDLE - Duration::from_millis(150),
        "{reader_after:?}"
    );
    assert!(reader_after < 3 * IDLE, "{reader_after:?}");
    println!(
        "FIGURE read-only peer: {sent} messages over {:.1} s kept it (idle timeout {IDLE:?}); \
         idle peer closed after {:.2} s, the reader {:.2} s after its last message",
        flow.as_secs_f64(),
        idle_after.as_secs_f64(),
        reader_after.as_secs_f64(),
    );
    server.shutdown().await;
}

/// What a server-side socket's keepalive options read back as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Options {
    on: bool,
    idle: Duration,
    interval: Duration,
    retries: u32,
}

/// A transport that reads the keepalive options of each accepted socket,
/// as the server's accept loop left them, before the TCP transport takes it.
struct Probe {
    inner: TcpTransport<Recorder>,
    seen: Arc<Mutex<Vec<Options>>>,
}

impl Transport<TcpStream> for Probe {
    type Conn = <TcpTransport<Recorder> as Transport<TcpStream>>::Conn;
    type Component = Recorder;

    fn accept(
        &self,
        io: TcpStream,
        peer: SocketAddr,
        config: &Config,
    ) -> impl Future<Output = Result<Accepted<Self::Conn, Recorder>>> + Send {
        let socket = SockRef::from(&io);
        let options = Options {
            on: socket.keepalive().unwrap(),
            idle: socket.tcp_keepalive_time().unwrap(),
            interval: socket.tcp_keepalive_interval().unwrap(),
            retries: socket.tcp_keepalive_retries().unwrap(),
        };
        self.seen.lock().unwrap().push(options);
        self.inner.accept(io, peer, config)
    }
}

#[tokio::test]
async fn accepted_sockets_get_the_configured_keepalive() {
    let secs = Duration::from_secs;
    let custom = TcpKeepalive::new(secs(7), secs(3), 4);
    let cases = [
        (Some(TcpKeepalive::default()), (secs(30), secs(10), 3)),
        (Some(custom), (secs(7), secs(3), 4)),
        (None, (secs(0), secs(0), 0)),
    ];
    for (keepalive, (idle, interval, retries)) in cases {
        let (component, mut events) = recorder(true);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe {
            inner: TcpTransport::lines(component),
            seen: seen.clone(),
        };
        let config = Config::default().tcp_keepalive(keepalive);
        let server = serve_probe(probe, config).await;
        let (mut stream, conn) = peer(&server, &mut events).await;
        support::roundtrip(&mut stream, "hello").await;
        let got = seen.lock().unwrap()[0];
        match keepalive {
            Some(_) => assert_eq!(
                got,
                Options {
                    on: true,
                    idle,
                    interval,
                    retries
                }
            ),
            // Off: the kernel's socket as it was made, without keepalive.
            None => assert!(!got.on, "{got:?}"),
        }
        println!("FIGURE keepalive {keepalive:?}: accepted socket reads {got:?}");
        drop(stream);
        events.close_of(conn.id()).await;
        server.shutdown().await;
    }
}

async fn serve_probe(probe: Probe, config: Config) -> switchboard::ServerHandle {
    support::within(
        "server start",
        switchboard::Server::builder()
            .config(config)
            .bind("127.0.0.1:0", probe)
            .start(),
    )
    .await
    .expect("server starts")
}

/// A peer that vanishes without a FIN or a reset, found by keepalive alone
/// (no idle timeout). Loopback always answers probes, so this needs a
/// network namespace of its own, where the test takes `lo` down under the
/// open connection: the probes then go unanswered, as they would for a
/// host that is gone. Run it as root:
///
/// ```sh
/// unshare -n sh -c 'ip link set lo up && SWITCHBOARD_NETNS=1 \
///     cargo test -p switchboard-tcp --test liveness -- --ignored --nocapture vanished'
/// ```
#[tokio::test]
#[ignore = "needs a network namespace of its own (see the doc comment)"]
async fn vanished_peer_is_found_by_keepalive() {
    assert!(
        std::env::var_os("SWITCHBOARD_NETNS").is_some(),
        "run in a network namespace of its own: this test takes lo down"
    );
    let secs = Duration::from_secs;
    let keepalive = TcpKeepalive::new(secs(1), secs(1), 2);
    let config = Config::default()
        .ping_interval(None)
        .idle_timeout(None)
        .tcp_keepalive(Some(keepalive));
    let (server, mut events) = echo_server(TcpTransport::lines, config.clone()).await;
    let (mut stream, conn) = peer(&server, &mut events).await;
    support::roundtrip(&mut stream, "hello").await;
    events.message(conn.id()).await;
    // The control: the same, without keepalive.
    let without = config.tcp_keepalive(None);
    let (server_off, mut events_off) = echo_server(TcpTransport::lines, without).await;
    let (mut stream_off, conn_off) = peer(&server_off, &mut events_off).await;
    support::roundtrip(&mut stream_off, "hello").await;

    let lo = |state: &str| {
        let status = std::process::Command::new("ip")
            .args(["link", "set", "lo", state])
            .status()
            .expect("run ip");
        assert!(status.success(), "ip link set lo {state}");
    };
    lo("down");
    let vanished = Instant::now();
    let (seen, _) = events.error_then_close(conn.id()).await;
    let found = vanished.elapsed();
    // A second later, the connection without keepalive knows nothing.
    tokio::time::sleep(secs(1)).await;
    assert!(!conn_off.is_closed(), "closed without keepalive");
    lo("up");
    println!(
        "FIGURE vanished peer found by keepalive {keepalive:?} after {:.2} s \
         (bound {:?}): {}",
        found.as_secs_f64(),
        keepalive.detection_time(),
        seen.text
    );
    assert!(found >= keepalive.idle, "found too early: {found:?}");
    assert!(
        found <= keepalive.detection_time() + secs(1),
        "found too late: {found:?}"
    );
    drop((stream, stream_off));
    server.shutdown().await;
    server_off.shutdown().await;
}
