//! The servers under test, each on one tokio `current_thread` runtime (one
//! server core; pin it with `taskset`).
//!
//! ```text
//! bench-server KIND [ADDR] [--max-seconds N]
//! ```
//!
//! | KIND | what |
//! |---|---|
//! | `switchboard-ws-echo`, `switchboard-tcp-echo` | an echo component on the WebSocket / TCP lines transport, default `Config` |
//! | `switchboard-ws-chat`, `switchboard-tcp-chat` | a `Hub` chat: every message to every other member |
//! | `switchboard-ws-echo-deflate`, `switchboard-ws-chat-deflate` | the same WebSocket echo and chat accepting permessage-deflate with `Deflate::new()` (level 2, messages of 256 bytes or more compressed, no context takeover) |
//! | `axum-ws-echo` | the same echo component mounted on an axum route (`switchboard::axum::ws`), served by `axum::serve` with `TCP_NODELAY` |
//! | `naive-ws-echo` | tokio-tungstenite, a task per connection, `send()` per message, default config |
//! | `naive-ws-chat` | tokio-tungstenite's own chat example: a task per connection, a map of unbounded channels behind a mutex, `send()` per message |
//! | `plain-tcp-echo` | plain tokio lines: `BufReader::lines`, a `BufWriter` flushed when no input is buffered |
//! | `plain-tcp-chat` | plain tokio lines chat: unbounded channels, a writer task per connection flushing when its channel is empty |
//! | `floor-ws-idle` | the floor of a task per connection: the WebSocket upgrade (its buffer freed after), then a task that waits for readability and reads into a stack buffer (nothing held across the await); for the idle scenarios only |
//! | `floor-ws-idle-timer` | the same with an idle `Sleep` in the task, reset by traffic |
//! | `model-parked-ws-idle` | a model, not switchboard's design: after the upgrade, idle connections own no task, each an entry of one `FuturesUnordered` holding allocations of the sizes switchboard's idle connection holds (see `model_parked`); for the idle scenarios only |
//! | `model-parked-ws-idle-timer` | the same with a boxed idle `Sleep` per entry, as switchboard's keepalive had before its sweep |
//! | `model-wake-ws-chat` | a model of fan-out, not switchboard's design: each message framed once, queued to every other member whose task is woken to write it (see `model_fanout`) |
//! | `model-direct-ws-chat` | the same, but the publishing task writes each frame into a member's socket itself when nothing waits before it there |
//! | `model-drain-ws-chat` | the same, but each delivery only queues the frame, and one drain task, woken once per broadcast, writes every member's queue into its socket after the publisher's batch, several frames per write, as uWebSockets does at the end of its event loop's iteration |
//!
//! Prints `listening on ADDR pid PID` once bound, then serves until killed
//! or until `--max-seconds` (default 900) have passed. `--ws-read-buffer N`
//! sets the switchboard WebSocket transport's `read_buffer_size` (default
//! 4 KiB), to see its trade-off between idle memory and large messages.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchboard::tcp::TcpTransport;
use switchboard::ws::{Deflate, WsTransport};
use switchboard::{BoxError, Connection, Hub, Message, MessageComponent, Server};
use switchboard_bench::args::Args;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// mimalloc hands freed memory back to the system (a second or so after
/// the free, as the server goes on working), where glibc's malloc keeps
/// what a burst of large buffers freed: see "Memory after an attack" in
/// docs/reliability.md. The library sets no allocator; a binary does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KINDS: &[&str] = &[
    "switchboard-ws-echo",
    "switchboard-ws-chat",
    "switchboard-ws-echo-deflate",
    "switchboard-ws-chat-deflate",
    "switchboard-tcp-echo",
    "switchboard-tcp-chat",
    "axum-ws-echo",
    "naive-ws-echo",
    "naive-ws-chat",
    "plain-tcp-echo",
    "plain-tcp-chat",
    "floor-ws-idle",
    "floor-ws-idle-timer",
    "model-parked-ws-idle",
    "model-parked-ws-idle-timer",
    "model-wake-ws-chat",
    "model-direct-ws-chat",
    "model-drain-ws-chat",
];

fn main() {
    let args = Args::parse(std::env::args().skip(1));
    let Some(kind) = args.positional.first().cloned() else {
        eprintln!(
            "usage: bench-server KIND [ADDR] [--max-seconds N]\nkinds: {}",
            KINDS.join(", ")
        );
        std::process::exit(2);
    };
    if !KINDS.contains(&kind.as_str()) {
        eprintln!("unknown kind {kind}; kinds: {}", KINDS.join(", "));
        std::process::exit(2);
    }
    let addr = args
        .positional
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let max = Duration::from_secs(args.get("max-seconds", 900u64));
    let read_buffer: Option<usize> = args.opt("ws-read-buffer");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let serve = serve(&kind, &addr, read_buffer);
        match tokio::time::timeout(max, serve).await {
            Ok(Err(err)) => {
                eprintln!("bench-server {kind}: {err}");
                std::process::exit(1);
            }
            Ok(Ok(())) => {}
            Err(_) => eprintln!("bench-server {kind}: --max-seconds reached, exiting"),
        }
    });
}

fn announce(addr: SocketAddr) {
    println!("listening on {addr} pid {}", std::process::id());
}

/// The next connection, with `TCP_NODELAY` set, for the servers written
/// without switchboard. Accept errors (out of file descriptors in the idle
/// runs) are printed and retried after a pause.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(err) => {
                eprintln!("accept: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve(kind: &str, addr: &str, read_buffer: Option<usize>) -> Result<(), BoxError> {
    let ws = |deflate| Kind::Ws {
        read_buffer,
        deflate,
    };
    match kind {
        "switchboard-ws-echo" => switchboard_server(addr, ws(false), Arc::new(Echo)).await,
        "switchboard-ws-echo-deflate" => switchboard_server(addr, ws(true), Arc::new(Echo)).await,
        "switchboard-tcp-echo" => switchboard_server(addr, Kind::Tcp, Arc::new(Echo)).await,
        "switchboard-ws-chat" => {
            switchboard_server(addr, ws(false), Arc::new(Chat::default())).await
        }
        "switchboard-ws-chat-deflate" => {
            switchboard_server(addr, ws(true), Arc::new(Chat::default())).await
        }
        "switchboard-tcp-chat" => {
            switchboard_server(addr, Kind::Tcp, Arc::new(Chat::default())).await
        }
        "axum-ws-echo" => axum_echo(addr).await,
        "naive-ws-echo" => naive_ws(addr, false).await,
        "naive-ws-chat" => naive_ws(addr, true).await,
        "plain-tcp-echo" => plain_tcp(addr, false).await,
        "plain-tcp-chat" => plain_tcp(addr, true).await,
        "floor-ws-idle" => floor_ws_idle(addr, false).await,
        "floor-ws-idle-timer" => floor_ws_idle(addr, true).await,
        "model-parked-ws-idle" => model_parked(addr, false).await,
        "model-parked-ws-idle-timer" => model_parked(addr, true).await,
        "model-wake-ws-chat" => model_fanout(addr, Fan::Wake).await,
        "model-direct-ws-chat" => model_fanout(addr, Fan::Direct).await,
        "model-drain-ws-chat" => model_fanout(addr, Fan::Drain).await,
        _ => unreachable!("kinds are checked in main"),
    }
}

// ---- switchboard -------------------------------------------------------------

enum Kind {
    Ws {
        /// The read buffer size, if not the default.
        read_buffer: Option<usize>,
        /// Accept permessage-deflate with `Deflate::new()`.
        deflate: bool,
    },
    Tcp,
}

struct Echo;

impl MessageComponent for Echo {
    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        conn.send(msg)?;
        Ok(())
    }
}

#[derive(Default)]
struct Chat {
    hub: Hub,
}

impl MessageComponent for Chat {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        self.hub.join(conn);
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        self.hub.broadcast_except(msg, conn.id()).await?;
        Ok(())
    }
}

/// The component exactly as an application would write it, default `Config`
/// (and `Deflate::new()` for the `-deflate` kinds).
async fn switchboard_server<K: MessageComponent>(
    addr: &str,
    kind: Kind,
    component: Arc<K>,
) -> Result<(), BoxError> {
    let addr = addr.to_owned();
    let builder = Server::builder();
    let builder = match kind {
        Kind::Ws {
            read_buffer: None,
            deflate: false,
        } => builder.bind(addr, WsTransport::new(component)),
        Kind::Ws {
            read_buffer,
            deflate,
        } => {
            let mut ws = WsTransport::builder().fallback(component);
            if let Some(size) = read_buffer {
                ws = ws.read_buffer_size(size);
            }
            if deflate {
                ws = ws.deflate(Deflate::new());
            }
            builder.bind(addr, ws.build()?)
        }
        Kind::Tcp => builder.bind(addr, TcpTransport::lines(component)),
    };
    let server = builder.start().await?;
    announce(server.local_addr());
    std::future::pending::<()>().await;
    Ok(())
}

/// The echo component on an axum route: axum accepts and upgrades, a
/// switchboard server with no listener runs the connections.
async fn axum_echo(addr: &str) -> Result<(), BoxError> {
    let sockets = Server::builder().start().await?;
    let app = axum::Router::new().route("/", switchboard::axum::ws(&sockets, Echo));
    let listener = TcpListener::bind(addr).await?;
    announce(listener.local_addr()?);
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream: &mut TcpStream| {
        let _ = stream.set_nodelay(true);
    });
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service).await?;
    Ok(())
}

// ---- naive tokio-tungstenite -------------------------------------------------

type PeerMap = Arc<Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<WsMessage>>>>;

/// tokio-tungstenite as its examples use it: a task per connection,
/// `accept_async` with the default configuration, `send().await` per
/// message; the chat fans out through unbounded channels in a shared map.
async fn naive_ws(addr: &str, chat: bool) -> Result<(), BoxError> {
    let listener = TcpListener::bind(addr).await?;
    announce(listener.local_addr()?);
    let peers = PeerMap::default();
    loop {
        let (stream, peer) = accept(&listener).await;
        if chat {
            tokio::spawn(naive_chat_conn(stream, peer, peers.clone()));
        } else {
            tokio::spawn(naive_echo_conn(stream));
        }
    }
}

async fn naive_echo_conn(stream: TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}

async fn naive_chat_conn(stream: TcpStream, peer: SocketAddr, peers: PeerMap) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    peers.lock().unwrap().insert(peer, tx);
    let (mut outgoing, mut incoming) = ws.split();
    let broadcast_incoming = async {
        while let Some(Ok(msg)) = incoming.next().await {
            if !(msg.is_text() || msg.is_binary()) {
                continue;
            }
            let peers = peers.lock().unwrap();
            for (_, tx) in peers.iter().filter(|(addr, _)| **addr != peer) {
                let _ = tx.send(msg.clone());
            }
        }
    };
    let receive_from_others = async {
        while let Some(msg) = rx.recv().await {
            if outgoing.send(msg).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = broadcast_incoming => {}
        () = receive_from_others => {}
    }
    peers.lock().unwrap().remove(&peer);
}

// ---- plain tokio lines -------------------------------------------------------

type LinePeers = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Arc<str>>>>>;

/// Plain tokio, written with care but without a framework: lines in
/// through a `BufReader`, out through a `BufWriter` flushed once no more
/// input is buffered (echo) or the channel is empty (chat).
async fn plain_tcp(addr: &str, chat: bool) -> Result<(), BoxError> {
    let listener = TcpListener::bind(addr).await?;
    announce(listener.local_addr()?);
    let peers = LinePeers::default();
    let ids = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = accept(&listener).await;
        if chat {
            let id = ids.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(plain_chat_conn(stream, id, peers.clone()));
        } else {
            tokio::spawn(plain_echo_conn(stream));
        }
    }
}

async fn plain_echo_conn(mut stream: TcpStream) {
    let (r, w) = stream.split();
    let mut lines = BufReader::new(r).lines();
    let mut w = BufWriter::new(w);
    while let Ok(Some(line)) = lines.next_line().await {
        if w.write_all(line.as_bytes()).await.is_err() || w.write_all(b"\n").await.is_err() {
            return;
        }
        if lines.get_ref().buffer().is_empty() && w.flush().await.is_err() {
            return;
        }
    }
}

async fn plain_chat_conn(stream: TcpStream, id: u64, peers: LinePeers) {
    let (r, w) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Arc<str>>();
    peers.lock().unwrap().insert(id, tx);
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::new(w);
        while let Some(line) = rx.recv().await {
            let mut next = Some(line);
            while let Some(line) = next {
                if w.write_all(line.as_bytes()).await.is_err() || w.write_all(b"\n").await.is_err()
                {
                    return;
                }
                next = rx.try_recv().ok();
            }
            if w.flush().await.is_err() {
                return;
            }
        }
    });
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line: Arc<str> = line.into();
        let peers = peers.lock().unwrap();
        for (_, tx) in peers.iter().filter(|(other, _)| **other != id) {
            let _ = tx.send(line.clone());
        }
    }
    peers.lock().unwrap().remove(&id);
    writer.abort();
}

// ---- the floor of a task per connection -----------------------------------

/// Upgrades each connection (the request read into a stack buffer), then
/// spawns a task that only waits for the socket to be readable and drains
/// it into a stack buffer: the least a task per idle connection holds.
/// With `timer`, the task also holds an idle `Sleep` (90 s, reset by
/// traffic), as a server with idle timeouts does.
async fn floor_ws_idle(addr: &str, timer: bool) -> Result<(), BoxError> {
    let listener = TcpListener::bind(addr).await?;
    announce(listener.local_addr()?);
    loop {
        let (stream, _) = accept(&listener).await;
        // Two task types, so that the bare one holds no timer's memory.
        if timer {
            tokio::spawn(idle_with_timer(stream));
        } else {
            tokio::spawn(idle_bare(stream));
        }
    }
}

async fn idle_bare(stream: TcpStream) {
    if upgrade(&stream).await.is_none() {
        return;
    }
    while stream.readable().await.is_ok() && drain(&stream).is_some() {}
}

async fn idle_with_timer(stream: TcpStream) {
    if upgrade(&stream).await.is_none() {
        return;
    }
    const IDLE: Duration = Duration::from_secs(90);
    let idle = tokio::time::sleep(IDLE);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            ready = stream.readable() => if ready.is_err() { return },
            _ = &mut idle => return,
        }
        match drain(&stream) {
            None => return,
            Some(true) => idle.as_mut().reset(tokio::time::Instant::now() + IDLE),
            Some(false) => {}
        }
    }
}

/// Reads what is there into a stack buffer: `Some(true)` if it read,
/// `Some(false)` if nothing was there, `None` at the end or on an error.
fn drain(stream: &TcpStream) -> Option<bool> {
    let mut buf = [0u8; 512];
    match stream.try_read(&mut buf) {
        Ok(0) => None,
        Ok(_) => Some(true),
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Some(false),
        Err(_) => None,
    }
}

/// Reads an upgrade request and answers 101; `None` if the request is not
/// one. The buffer is on the heap and freed on return: an array here
/// would live in the task's future for the connection's whole life. Bytes
/// read past the request are dropped: the load generator sends frames
/// only after the 101.
async fn upgrade(stream: &TcpStream) -> Option<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    let key = loop {
        stream.readable().await.ok()?;
        match stream.try_read(&mut buf[len..]) {
            Ok(0) => return None,
            Ok(n) => len += n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
        let head = &buf[..len];
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            let text = std::str::from_utf8(head).ok()?;
            let key = text.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_owned())
            })?;
            break key;
        }
        if len == buf.len() {
            return None;
        }
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    let mut written = 0;
    while written < response.len() {
        stream.writable().await.ok()?;
        match stream.try_write(&response.as_bytes()[written..]) {
            Ok(n) => written += n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
    }
    Some(())
}

// ---- a model: idle connections that own no task --------------------------

/// What switchboard's idle WebSocket connection held at 3b43763 besides
/// its task, its socket and its keepalive timer, as allocations of the
/// same requested sizes (today's transport state is 216 bytes and there
/// is no timer): the
/// transport's state, the connection's shared state (an `Arc`), and the
/// request's text and string ends (the load generator's request: `/` and
/// `Host: 127.0.0.1:PORT`).
struct ModelState {
    _transport: Box<[u8; 256]>,
    _shared: Arc<[u8; 240]>,
    _text: Box<[u8; 20]>,
    _ends: Box<[u32; 6]>,
}

impl ModelState {
    fn new() -> Self {
        ModelState {
            _transport: Box::new([0; 256]),
            _shared: Arc::new([0; 240]),
            _text: Box::new([0; 20]),
            _ends: Box::new([0; 6]),
        }
    }
}

/// A model (not switchboard's design) of a server whose idle connections
/// own no task: each upgraded connection becomes an entry of one
/// `FuturesUnordered` that a single task polls, holding the socket, a
/// `ModelState`, the message loop's state inline (the 144 bytes of
/// switchboard's driver and component handle) and, with `timer`, a boxed
/// idle `Sleep` as switchboard's keepalive had. An entry waits for
/// readability the way a transport's read does (`poll_read_ready`, no
/// waiter of its own) and drains into a stack buffer. Only the handshake
/// runs on a task of its own. For the idle scenarios only: it answers
/// nothing.
async fn model_parked(addr: &str, timer: bool) -> Result<(), BoxError> {
    use futures_util::stream::FuturesUnordered;

    let listener = TcpListener::bind(addr).await?;
    announce(listener.local_addr()?);
    let (upgraded, mut arrivals) = mpsc::unbounded_channel::<TcpStream>();
    tokio::spawn(async move {
        loop {
            let (stream, _) = accept(&listener).await;
            let upgraded = upgraded.clone();
            tokio::spawn(async move {
                if upgrade(&stream).await.is_some() {
                    let _ = upgraded.send(stream);
                }
            });
        }
    });
    let mut parked = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(stream) = arrivals.recv() => parked.push(park(stream, timer)),
            Some(()) = parked.next(), if !parked.is_empty() => {}
        }
    }
}

/// One parked connection: done when the peer closes or, with `timer`, when
/// it was silent for 90 s.
fn park(stream: TcpStream, timer: bool) -> impl std::future::Future<Output = ()> {
    const IDLE: Duration = Duration::from_secs(90);
    let state = ModelState::new();
    let driver = [0u64; 18];
    let mut idle = timer.then(|| Box::pin(tokio::time::sleep(IDLE)));
    std::future::poll_fn(move |cx| {
        let _ = (&state, std::hint::black_box(&driver));
        if let Some(idle) = idle.as_mut()
            && idle.as_mut().poll(cx).is_ready()
        {
            return std::task::Poll::Ready(());
        }
        loop {
            match stream.poll_read_ready(cx) {
                std::task::Poll::Pending => return std::task::Poll::Pending,
                std::task::Poll::Ready(Err(_)) => return std::task::Poll::Ready(()),
                std::task::Poll::Ready(Ok(())) => match drain(&stream) {
                    None => return std::task::Poll::Ready(()),
                    Some(true) => {
                        if let Some(idle) = idle.as_mut() {
                            idle.as_mut().reset(tokio::time::Instant::now() + IDLE);
                        }
                    }
                    Some(false) => {}
                },
            }
        }
    })
}

// ---- models of fan-out ------------------------------------------------------

/// One member of a fan-out model: its socket, shared by its own task and
/// every publisher, and what waits to be written to it.
struct FanMember {
    stream: TcpStream,
    out: Mutex<FanOut>,
}

#[derive(Default)]
struct FanOut {
    /// Frames (or the rest of one) not yet taken by the socket, in order.
    /// Once not empty, one party answers for writing it: the drain task
    /// (the member is in its list) or the member's own task (woken).
    queue: std::collections::VecDeque<bytes::Bytes>,
    /// The member's task, to write the queue out.
    waker: Option<std::task::Waker>,
    closed: bool,
}

type FanMembers = Arc<Mutex<std::collections::BTreeMap<u64, Arc<FanMember>>>>;

/// How a fan-out model hands a frame to a member.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fan {
    /// Queued, and the member's task woken to write it.
    Wake,
    /// Written by the publisher at once if nothing waits before it and the
    /// socket takes it; else as `Wake`.
    Direct,
    /// Queued without a wake; the drain task writes it after the
    /// publisher's batch.
    Drain,
}

/// The members whose queue the drain task writes next, and its waker.
#[derive(Default)]
struct Drain {
    pending: Mutex<(Vec<Arc<FanMember>>, Option<std::task::Waker>)>,
}

impl Drain {
    /// Hands `members` (each with a queue that was empty) to the drain
    /// task: one lock and at most one wake per broadcast.
    fn add(&self, members: &mut Vec<Arc<FanMember>>) {
        if members.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap();
        pending.0.append(members);
        if let Some(waker) = pending.1.take() {
            waker.wake();
        }
    }

    /// The drain task: runs after the publisher's poll (it is woken, not
    /// polled, by a broadcast), so that the frames of every broadcast in
    /// that batch go to each member in one write.
    async fn run(self: Arc<Self>) {
        let mut batch = Vec::new();
        loop {
            std::future::poll_fn(|cx| {
                let mut pending = self.pending.lock().unwrap();
                if pending.0.is_empty() {
                    pending.1 = Some(cx.waker().clone());
                    return std::task::Poll::Pending;
                }
                std::mem::swap(&mut pending.0, &mut batch);
                std::task::Poll::Ready(())
            })
            .await;
            for member in batch.drain(..) {
                let mut out = member.out.lock().unwrap();
                if out.closed {
                    // Its task has ended: nothing more goes to its socket.
                    out.queue.clear();
                    continue;
                }
                if member.write_queue(&mut out).is_err() && !out.queue.is_empty() {
                    // The socket is full: the member's task waits for it.
                    if let Some(waker) = out.waker.take() {
                        waker.wake();
                    }
                }
            }
        }
    }
}

impl FanMember {
    /// Hands `frame` over as `fan` says. Returns whether the member is to
    /// be handed to the drain task (`Drain`, and its queue was empty).
    fn deliver(&self, frame: &bytes::Bytes, fan: Fan) -> bool {
        let mut out = self.out.lock().unwrap();
        if out.closed {
            return false;
        }
        match fan {
            Fan::Drain => {
                out.queue.push_back(frame.clone());
                return out.queue.len() == 1;
            }
            Fan::Direct if out.queue.is_empty() => match self.stream.try_write(frame) {
                Ok(n) if n == frame.len() => return false,
                Ok(n) => out.queue.push_back(frame.slice(n..)),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    out.queue.push_back(frame.clone())
                }
                Err(_) => {
                    out.closed = true;
                    return false;
                }
            },
            Fan::Wake | Fan::Direct => out.queue.push_back(frame.clone()),
        }
        if let Some(waker) = out.waker.take() {
            waker.wake();
        }
        false
    }

    /// Writes the queue into the socket, several frames per write, until
    /// it is empty (`Ok`) or the socket is full or failed (`Err`; a
    /// failure also closes the member).
    fn write_queue(&self, out: &mut FanOut) -> std::io::Result<()> {
        while !out.queue.is_empty() {
            let mut slices = [std::io::IoSlice::new(&[]); 64];
            let mut count = 0;
            for (slice, frame) in slices.iter_mut().zip(&out.queue) {
                *slice = std::io::IoSlice::new(frame);
                count += 1;
            }
            let written = match self.stream.try_write_vectored(&slices[..count]) {
                Ok(n) => n,
                Err(err) => {
                    if err.kind() != std::io::ErrorKind::WouldBlock {
                        out.closed = true;
                    }
                    return Err(err);
                }
            };
            let mut left = written;
            while left > 0 {
                let front = out.queue.front_mut().unwrap();
                if front.len() <= left {
                    left -= front.len();
                    out.queue.pop_front();
                } else {
                    bytes::Buf::advance(front, left);
                    left = 0;
                }
            }
        }
        Ok(())
    }

    /// The member's own task writes its queue out until it is empty or the
    /// socket is full; `false` once writing failed.
    fn poll_write_queue(&self, cx: &mut std::task::Context<'_>) -> bool {
        let mut out = self.out.lock().unwrap();
        while !out.queue.is_empty() && self.stream.poll_write_ready(cx).is_ready() {
            if self.write_queue(&mut out).is_err() && out.closed {
                return false;
            }
        }
        match &out.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => out.waker = Some(cx.waker().clone()),
        }
        true
    }
}

/// Three models (not switchboard's design) of a WebSocket chat's fan-out,
/// for what a tokio server can reach per delivery: every message goes to
/// every other member as one unmasked frame built once per message.
/// `Fan::Wake`: each delivery queues the frame and wakes the member's
/// task, which writes its queue (the least a design that writes from each
/// member's own task does). `Fan::Direct`: the publishing task writes the
/// frame into the member's socket itself when nothing waits before it and
/// the socket takes it, and queues it otherwise. `Fan::Drain`: each
/// delivery only queues the frame; one drain task, woken once per
/// broadcast, runs after the publisher's batch and writes each member's
/// queue (every frame of that batch) in one write, as uWebSockets drains
/// its topics at the end of each event loop iteration; what the socket
/// does not take, the member's task writes when it can.
/// Text and binary frames of up to 64 KiB, unfragmented, are fanned out,
/// pings and pongs skipped; anything else (a close, a fragment, a larger
/// frame) ends the connection. The member map's lock is held while a
/// message is delivered, which serializes publishers: fair with the one
/// publisher of the broadcast scenarios. docs/performance.md ("Against
/// uWebSockets.js") has the figures.
async fn model_fanout(addr: &str, fan: Fan) -> Result<(), BoxError> {
    let listener = TcpListener::bind(addr).await?;
    announce(listener.local_addr()?);
    let members: FanMembers = Arc::default();
    let drain = Arc::new(Drain::default());
    if fan == Fan::Drain {
        tokio::spawn(drain.clone().run());
    }
    let mut next_id = 0u64;
    loop {
        let (stream, _) = accept(&listener).await;
        next_id += 1;
        tokio::spawn(fan_member(
            stream,
            next_id,
            members.clone(),
            fan,
            drain.clone(),
        ));
    }
}

async fn fan_member(stream: TcpStream, id: u64, members: FanMembers, fan: Fan, drain: Arc<Drain>) {
    if upgrade(&stream).await.is_none() {
        return;
    }
    let me = Arc::new(FanMember {
        stream,
        out: Mutex::default(),
    });
    members.lock().unwrap().insert(id, me.clone());
    let mut input: Vec<u8> = Vec::new();
    let mut to_drain = Vec::new();
    std::future::poll_fn(|cx| {
        loop {
            match me.stream.poll_read_ready(cx) {
                std::task::Poll::Pending => break,
                std::task::Poll::Ready(Err(_)) => return std::task::Poll::Ready(()),
                std::task::Poll::Ready(Ok(())) => {}
            }
            let mut chunk = [0u8; 4096];
            match me.stream.try_read(&mut chunk) {
                Ok(0) => return std::task::Poll::Ready(()),
                Ok(n) => input.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return std::task::Poll::Ready(()),
            }
            while let Some((used, frame)) = client_frame(&input) {
                input.drain(..used);
                let frame = match frame {
                    ClientFrame::Data(frame) => frame,
                    ClientFrame::Skip => continue,
                    ClientFrame::End => return std::task::Poll::Ready(()),
                };
                for (other, member) in members.lock().unwrap().iter() {
                    if *other != id && member.deliver(&frame, fan) {
                        to_drain.push(member.clone());
                    }
                }
                drain.add(&mut to_drain);
            }
        }
        if !me.poll_write_queue(cx) {
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    })
    .await;
    let mut out = me.out.lock().unwrap();
    out.closed = true;
    out.queue.clear();
    drop(out);
    members.lock().unwrap().remove(&id);
}

/// A client frame, as the fan-out models see it.
enum ClientFrame {
    /// A data frame, as the server frame to fan out.
    Data(bytes::Bytes),
    /// A control frame other than close: skipped.
    Skip,
    /// A close, or a frame this model does not handle (fragmented, over
    /// 64 KiB): the connection ends.
    End,
}

/// The first whole client frame in `input`, with the bytes it took.
fn client_frame(input: &[u8]) -> Option<(usize, ClientFrame)> {
    let (first, second) = (*input.first()?, *input.get(1)?);
    if second & 0x80 == 0 {
        // Clients must mask their frames.
        return Some((input.len(), ClientFrame::End));
    }
    let (len, mut at) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*input.get(2)?, *input.get(3)?])),
            4,
        ),
        127 => return Some((input.len(), ClientFrame::End)),
        n => (usize::from(n), 2),
    };
    let mask: [u8; 4] = input.get(at..at + 4)?.try_into().ok()?;
    at += 4;
    let payload = input.get(at..at + len)?;
    let used = at + len;
    match first & 0x0f {
        1 | 2 if first & 0x80 != 0 => {}
        9 | 10 => return Some((used, ClientFrame::Skip)),
        _ => return Some((used, ClientFrame::End)),
    }
    let mut frame = Vec::with_capacity(4 + len);
    frame.push(first);
    match u8::try_from(len) {
        Ok(short) if short < 126 => frame.push(short),
        _ => {
            frame.push(126);
            frame.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        }
    }
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    Some((used, ClientFrame::Data(frame.into())))
}
