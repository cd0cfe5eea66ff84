//! Shared by the reliability tests: a server in a child process (so its
//! memory can be read from `/proc`), raw WebSocket and line clients that
//! control every byte, descriptor limits and bounded waits.
//!
//! The child is this same test binary, re-run with `--ignored --exact
//! reliability_child`: the test file declares that test and has it call
//! [`child_main`]. Settings go in through the environment, commands
//! through stdin (`stats`, `flood`, `shutdown`), answers come back as
//! tagged lines on stdout.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard::tcp::TcpTransport;
use switchboard::ws::WsTransport;
use switchboard::{
    BoxError, CloseReason, Config, Connection, ConnectionId, DynComponent, Hub, IpFilter, Message,
    MessageComponent, RateLimit, RateLimitAction, Server, ServerHandle, SlowConsumerPolicy,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::timeout;

/// Upper bound for any single wait; never a sleep.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Environment variable that carries the child's settings.
const CHILD_ENV: &str = "SWITCHBOARD_RELIABILITY_CHILD";

/// Scale factor for soak runs: `SWITCHBOARD_SOAK=10` multiplies the
/// message counts and durations of the load tests (not the connection
/// counts, which the descriptor limits bound). 1 in CI.
pub fn soak() -> usize {
    std::env::var("SWITCHBOARD_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

/// Raises this process's soft descriptor limit to at least `want` (within
/// the hard limit) and returns the limit in force. Children inherit it.
pub fn raise_fd_limit(want: u64) -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= want {
        return current;
    }
    let target = limit.maximum.map_or(want, |max| max.min(want));
    limit.current = Some(target);
    setrlimit(Resource::Nofile, limit).expect("raise RLIMIT_NOFILE");
    target
}

/// Makes sure `need` descriptors are available, or fails with what to do.
pub fn need_fds(need: u64) {
    let got = raise_fd_limit(need);
    assert!(
        got >= need,
        "this test needs {need} file descriptors; the hard limit is {got} (raise it with ulimit -Hn)"
    );
}

/// Awaits `fut` for at most `LIMIT`, failing with `what` if it takes longer.
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match timeout(LIMIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {LIMIT:?}: {what}"),
    }
}

/// The rest of the first line of a child server's output that carries
/// `tag` (libtest may print "test NAME ... " before it on the same line).
pub async fn read_tagged(out: &mut Lines<BufReader<ChildStdout>>, tag: &str) -> String {
    within(tag, async {
        loop {
            let line = out
                .next_line()
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("child exited before {tag:?}"));
            if let Some((_, rest)) = line.split_once(tag) {
                return rest.to_owned();
            }
        }
    })
    .await
}

/// Polls `cond` every few milliseconds until it holds, for at most `LIMIT`.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut cond: F) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Polls `get` until it returns `want` (bounded by `LIMIT`); on timeout,
/// fails showing both.
pub async fn eventually_eq<T: PartialEq + std::fmt::Debug, F: FnMut() -> T>(
    what: &str,
    mut get: F,
    want: T,
) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let got = get();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: got {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A TCP connection from `source` (any 127.0.0.0/8 address) to `addr`.
pub async fn dial_from(addr: SocketAddr, source: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    }
    let stream = timeout(LIMIT, socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads until the peer ends the stream (or resets it); what was read.
pub async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    within("end of stream", async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    out
}

/// The status code of an HTTP response.
pub fn http_status(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A deterministic pseudo-random generator (xorshift64*), so that every
/// run tries the same inputs and a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// Between 1 and `max` random bytes.
    pub fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = 1 + self.below(max);
        self.bytes(n)
    }
}

// ---- WebSocket client ------------------------------------------------------

/// A plain upgrade request for `path`.
pub fn upgrade_request(addr: SocketAddr, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// Encodes a client frame (masked, as RFC 6455 requires of clients). The
/// length field is written as given, so it can lie about the payload.
pub fn frame_with_len(first: u8, len: u64, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A whole masked frame: FIN + `opcode`.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_with_len(0x80 | opcode, payload.len() as u64, payload)
}

/// What a WebSocket client read.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent {
    Text(String),
    Binary(Vec<u8>),
    Close(Option<u16>),
    /// The stream ended (or was reset) without a close frame.
    Eof,
}

/// A WebSocket client over a raw socket, for tests that control every byte.
pub struct WsClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl WsClient {
    /// Connects and upgrades; panics if the server refuses.
    pub async fn connect(addr: SocketAddr) -> WsClient {
        Self::try_connect(addr, None, "/")
            .await
            .unwrap_or_else(|e| panic!("WebSocket upgrade failed: {e}"))
    }

    /// Connects from `source` and upgrades; the error says what the server
    /// answered instead (an HTTP status, or nothing at all).
    pub async fn try_connect(
        addr: SocketAddr,
        source: Option<Ipv4Addr>,
        path: &str,
    ) -> Result<WsClient, String> {
        let mut stream = dial_from(addr, source).await.map_err(|e| e.to_string())?;
        stream
            .write_all(upgrade_request(addr, path).as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let head_end = within("upgrade response", async {
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return Ok(end + 4);
                }
                let mut chunk = [0u8; 1024];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        return Err(format!(
                            "closed before a response: {:?}",
                            String::from_utf8_lossy(&buf)
                        ));
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await?;
        match http_status(&buf) {
            Some(101) => {}
            other => return Err(format!("status {other:?}")),
        }
        buf.drain(..head_end);
        Ok(WsClient { stream, buf })
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_raw(&frame(0x1, text.as_bytes()))
            .await
            .expect("write frame");
    }

    /// The next data message or close; pings are answered, pongs skipped.
    /// Not bounded in time: wrap it when waiting for something specific.
    pub async fn next(&mut self) -> WsEvent {
        loop {
            if let Some((fin_opcode, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                match fin_opcode & 0x0F {
                    0x1 => return WsEvent::Text(String::from_utf8(payload).expect("UTF-8")),
                    0x2 => return WsEvent::Binary(payload),
                    0x8 => {
                        let code = (payload.len() >= 2)
                            .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                        return WsEvent::Close(code);
                    }
                    0x9 => {
                        let _ = self.send_raw(&frame(0xA, &payload)).await;
                    }
                    _ => {}
                }
                continue;
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return WsEvent::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next event, within `LIMIT`.
    pub async fn recv(&mut self) -> WsEvent {
        within("WebSocket event", self.next()).await
    }

    /// Sends `text` and expects it back.
    pub async fn roundtrip(&mut self, text: &str) {
        self.send_text(text).await;
        assert_eq!(self.recv().await, WsEvent::Text(text.to_owned()));
    }

    /// Reads until a close frame (its code) or the end of the stream.
    pub async fn until_close(&mut self) -> WsEvent {
        within("close", async {
            loop {
                if let e @ (WsEvent::Close(_) | WsEvent::Eof) = self.next().await {
                    return e;
                }
            }
        })
        .await
    }
}

/// Parses one server frame: (first byte, payload, bytes used).
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let first = *buf.first()?;
    let second = *buf.get(1)?;
    let (len, mut pos) = match second & 0x7F {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (usize::from(n), 2),
    };
    if second & 0x80 != 0 {
        pos += 4;
    }
    let payload = buf.get(pos..pos + len)?.to_vec();
    Some((first, payload, pos + len))
}

// ---- Line client -----------------------------------------------------------

/// A newline-delimited TCP client.
pub struct LineClient {
    pub reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    pub writer: tokio::net::tcp::OwnedWriteHalf,
}

impl LineClient {
    pub async fn connect(addr: SocketAddr) -> LineClient {
        Self::from_stream(dial_from(addr, None).await.expect("connect"))
    }

    pub fn from_stream(stream: TcpStream) -> LineClient {
        let (r, w) = stream.into_split();
        LineClient {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    pub async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write line");
    }

    /// The next line, or `None` at the end of the stream; not bounded in time.
    pub async fn next(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_owned()),
        }
    }

    /// The next line within `LIMIT`.
    pub async fn recv(&mut self) -> Option<String> {
        within("line", self.next()).await
    }

    pub async fn roundtrip(&mut self, line: &str) {
        self.send(line).await;
        assert_eq!(self.recv().await.as_deref(), Some(line));
    }
}

// ---- The component ---------------------------------------------------------

/// How connections ended, by kind of reason.
#[derive(Debug, Default, Clone)]
pub struct Closes {
    pub total: u64,
    pub by_kind: HashMap<&'static str, u64>,
}

fn kind(reason: &CloseReason) -> &'static str {
    match reason {
        CloseReason::Peer(_) => "peer",
        CloseReason::Local(_) => "local",
        CloseReason::Rejected => "rejected",
        CloseReason::Error(_) => "error",
        CloseReason::Panic => "panic",
        CloseReason::SlowConsumer => "slow",
        CloseReason::IdleTimeout => "idle",
        CloseReason::Shutdown => "shutdown",
        _ => "other",
    }
}

/// One connection as the flood publisher sees it.
struct Member {
    conn: Connection,
    /// Messages `send` accepted for this connection.
    accepted: AtomicU64,
}

/// Echoes, with commands: `all TEXT` (to every other connection; a binary
/// message starting with `all ` too), `panic`,
/// `fail`. Counts opens, closes (by reason) and protocol errors (by code),
/// and can flood every connection with sequence numbers.
#[derive(Default)]
pub struct Service {
    hub: Hub,
    members: Mutex<HashMap<ConnectionId, Arc<Member>>>,
    /// Accepted counts of connections that ended, by transport and peer
    /// address (a WebSocket and a TCP client may share a local port: they
    /// connect to different server ports).
    finished: Mutex<HashMap<(&'static str, SocketAddr), u64>>,
    pub opens: AtomicU64,
    closes: Mutex<Closes>,
    /// Codes of the protocol errors `on_error` saw.
    error_codes: Mutex<HashMap<u16, u64>>,
    pub handler_errors: AtomicU64,
}

impl Service {
    pub fn closes(&self) -> Closes {
        self.closes.lock().unwrap().clone()
    }

    pub fn error_codes(&self) -> HashMap<u16, u64> {
        self.error_codes.lock().unwrap().clone()
    }

    /// Sends sequence numbers to every connection, as long as its queue has
    /// room for them, until `stop`: only what `send` accepted is counted.
    pub async fn flood(&self, stop: &AtomicBool, keep_below: usize) {
        while !stop.load(Ordering::Acquire) {
            let members: Vec<Arc<Member>> =
                self.members.lock().unwrap().values().cloned().collect();
            let mut progress = false;
            for m in members {
                while m.conn.queued_messages() < keep_below {
                    let n = m.accepted.load(Ordering::Relaxed);
                    if m.conn.send(n.to_string()).is_err() {
                        break;
                    }
                    m.accepted.store(n + 1, Ordering::Relaxed);
                    progress = true;
                }
            }
            if !progress {
                tokio::time::sleep(Duration::from_millis(1)).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
    }

    /// The connections open now, as `transport/peer`.
    pub fn live(&self) -> Vec<String> {
        let members = self.members.lock().unwrap();
        let live = members.values().map(|m| &m.conn);
        live.map(|c| format!("{}/{}", c.transport().kind(), c.peer_addr()))
            .collect()
    }

    /// What `send` accepted for each connection, live or ended, by
    /// transport and peer.
    pub fn accepted(&self) -> HashMap<(&'static str, SocketAddr), u64> {
        let mut all = self.finished.lock().unwrap().clone();
        for m in self.members.lock().unwrap().values() {
            let key = (m.conn.transport().kind(), m.conn.peer_addr());
            all.insert(key, m.accepted.load(Ordering::Relaxed));
        }
        all
    }
}

impl MessageComponent for Service {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        self.hub.join(conn);
        self.members.lock().unwrap().insert(
            conn.id(),
            Arc::new(Member {
                conn: conn.clone(),
                accepted: AtomicU64::new(0),
            }),
        );
        self.opens.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        match msg.as_text() {
            Some(text) if text.starts_with("all ") => {
                self.hub
                    .broadcast_except(text["all ".len()..].to_owned(), conn.id())
                    .await?;
            }
            // The same for binary, bytes as they are.
            None if msg.as_bytes().starts_with(b"all ") => {
                let rest = msg.into_bytes().slice("all ".len()..);
                self.hub
                    .broadcast_except(Message::binary(rest), conn.id())
                    .await?;
            }
            Some("panic") => panic!("asked to panic"),
            Some("fail") => return Err("asked to fail".into()),
            _ => conn.send(msg)?,
        }
        Ok(())
    }

    async fn on_error(&self, conn: &Connection, err: switchboard::Error) {
        match &err {
            switchboard::Error::Protocol { code, .. } => {
                *self.error_codes.lock().unwrap().entry(code.0).or_default() += 1;
            }
            switchboard::Error::Handler(_) => {
                self.handler_errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        conn.close_with(switchboard::CloseCode::ERROR, "error");
    }

    async fn on_close(&self, conn: &Connection, reason: CloseReason) {
        if let Some(m) = self.members.lock().unwrap().remove(&conn.id()) {
            // Only flooded connections are reported, so that the map does
            // not grow with every connection of a long test.
            let accepted = m.accepted.load(Ordering::Relaxed);
            if accepted > 0 {
                self.finished
                    .lock()
                    .unwrap()
                    .insert((conn.transport().kind(), conn.peer_addr()), accepted);
            }
        }
        let mut closes = self.closes.lock().unwrap();
        closes.total += 1;
        *closes.by_kind.entry(kind(&reason)).or_default() += 1;
    }
}

// ---- Servers ---------------------------------------------------------------

/// Server settings as `key=value` pairs separated by spaces, so the same
/// text configures an in-process server and a child process.
///
/// Keys: `queue_msgs`, `queue_bytes`, `policy` (`close`/`drop`),
/// `handshake_ms`, `idle_ms` (0: none), `close_ms`, `write_ms` (0: none),
/// `grace_ms`,
/// `max_conns`, `max_per_ip`, `max_msg`, `rate` (per second) and `burst`,
/// `rate_action` (`close`/`drop`), `deny` (a CIDR).
pub fn config_from(settings: &str) -> Config {
    let mut config = Config::default()
        .ping_interval(None)
        .idle_timeout(None)
        .close_timeout(Duration::from_millis(500))
        .shutdown_grace(Duration::from_secs(5));
    let mut rate = None;
    let mut rate_action = RateLimitAction::Close;
    for pair in settings.split_whitespace() {
        let (key, value) = pair.split_once('=').expect("key=value");
        let n = || value.parse::<u64>().expect("a number");
        let ms = || Duration::from_millis(n());
        config = match key {
            "queue_msgs" => config.queue_max_messages(n() as usize),
            "queue_bytes" => config.queue_max_bytes(n() as usize),
            "policy" if value == "drop" => config.slow_consumer(SlowConsumerPolicy::Drop),
            "policy" => config.slow_consumer(SlowConsumerPolicy::Close),
            "handshake_ms" => config.handshake_timeout(ms()),
            "idle_ms" => config.idle_timeout((n() > 0).then(ms)),
            "close_ms" => config.close_timeout(ms()),
            "write_ms" => config.write_timeout((n() > 0).then(ms)),
            "grace_ms" => config.shutdown_grace(ms()),
            "max_conns" => config.max_connections(Some(n() as usize)),
            "max_per_ip" => config.max_connections_per_ip(Some(n() as usize)),
            "max_msg" => config
                .max_message_size(n() as usize)
                .max_frame_size(n() as usize),
            // The message limit alone: the frame limit stays at its default.
            "max_message" => config.max_message_size(n() as usize),
            "rate" => {
                rate = Some((value.parse::<f64>().expect("rate"), 1));
                config
            }
            "burst" => {
                rate = rate.map(|(r, _)| (r, n() as u32));
                config
            }
            "rate_action" => {
                rate_action = if value == "drop" {
                    RateLimitAction::Drop
                } else {
                    RateLimitAction::Close
                };
                config
            }
            "deny" => config.ip_filter(IpFilter::default().deny([value]).expect("CIDR")),
            "allow" => config.ip_filter(IpFilter::default().allow([value]).expect("CIDR")),
            other => panic!("unknown setting {other}"),
        };
    }
    if let Some((per_second, burst)) = rate {
        config = config.rate_limit(Some(RateLimit::new(per_second, burst).action(rate_action)));
    }
    config
}

/// Where a test server listens.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    /// WebSocket, every path.
    pub ws: SocketAddr,
    /// TCP lines.
    pub tcp: SocketAddr,
    /// TCP length-delimited frames.
    pub frames: SocketAddr,
}

impl Addrs {
    fn parse(text: &str) -> Addrs {
        let addr = |key: &str| -> SocketAddr {
            text.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .unwrap()
                .parse()
                .unwrap()
        };
        Addrs {
            ws: addr("ws="),
            tcp: addr("tcp="),
            frames: addr("frames="),
        }
    }
}

impl std::fmt::Display for Addrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ws={} tcp={} frames={}", self.ws, self.tcp, self.frames)
    }
}

/// A server with one component on three listeners on 127.0.0.1:0:
/// WebSocket (every path), TCP lines and TCP length-delimited frames.
pub async fn start_server(service: Arc<Service>, config: Config) -> (ServerHandle, Addrs) {
    let component: Arc<dyn DynComponent> = service;
    let server = Server::builder()
        .config(config)
        .bind("127.0.0.1:0", WsTransport::new(component.clone()))
        .bind("127.0.0.1:0", TcpTransport::lines(component.clone()))
        .bind("127.0.0.1:0", TcpTransport::length_delimited(component))
        .start()
        .await
        .expect("server starts");
    let a = server.local_addrs().to_vec();
    (
        server,
        Addrs {
            ws: a[0],
            tcp: a[1],
            frames: a[2],
        },
    )
}

fn stats_line(server: &ServerHandle, service: &Service) -> String {
    // The component's closes first: the server counts a connection (as a
    // slow consumer, say) before its `on_close` runs, so counters read
    // afterwards include every close already seen here. The other order
    // raced: 20 slow-consumer closes seen, 2 of them counted yet.
    let closes = service.closes();
    let s = server.stats();
    let mut line = format!(
        "open={} total={} rejected={} denied={} rate_limited={} handshake_failures={} \
         accept_errors={} messages_in={} messages_out={} dropped={} slow={} invalid_sends={} \
         panics={} opens={} closes={} handler_errors={}",
        s.open_connections,
        s.connections_total,
        s.connections_rejected,
        s.connections_denied,
        s.rate_limited,
        s.handshake_failures,
        s.accept_errors,
        s.messages_in,
        s.messages_out,
        s.dropped,
        s.slow_consumer_closes,
        s.invalid_sends,
        s.panics,
        service.opens.load(Ordering::Relaxed),
        closes.total,
        service.handler_errors.load(Ordering::Relaxed),
    );
    for (kind, n) in &closes.by_kind {
        line.push_str(&format!(" close_{kind}={n}"));
    }
    for (code, n) in service.error_codes() {
        line.push_str(&format!(" code_{code}={n}"));
    }
    line
}

/// The child's side: runs a server with the settings from the environment
/// and answers commands from stdin until `shutdown` or the end of stdin.
/// `heap` tells the live heap bytes, reported as the `heap` counter; the
/// `tasks` counter is the runtime's live tasks (a connection's task ends,
/// and frees what it holds, after `open` stopped counting it).
pub async fn child_main(heap: fn() -> usize) {
    let Some(settings) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let settings = settings.into_string().expect("UTF-8 settings");
    // The panics the tests ask for are expected: keep them out of the output.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"asked to panic") {
            report(info);
        }
    }));
    let service = Arc::new(Service::default());
    let (server, addrs) = start_server(service.clone(), config_from(&settings)).await;
    println!("READY {addrs}");
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = None;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(cmd)) = lines.next_line().await {
        match cmd.split_whitespace().collect::<Vec<_>>()[..] {
            ["stats"] => {
                // Read in the order a connection ends: it leaves `open`,
                // then its task ends, freeing what it held.
                let line = stats_line(&server, &service);
                let tasks = tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks();
                println!("STATS {line} tasks={tasks} heap={}", heap());
            }
            ["live"] => println!("LIVE {}", service.live().join(" ")),
            ["flood", keep_below] => {
                let keep_below: usize = keep_below.parse().unwrap();
                let (service, stop) = (service.clone(), stop.clone());
                flood = Some(tokio::spawn(async move {
                    service.flood(&stop, keep_below).await;
                }));
                println!("FLOODING");
            }
            ["shutdown"] => {
                let started = Instant::now();
                server.shutdown().await;
                let took = started.elapsed();
                stop.store(true, Ordering::Release);
                if let Some(task) = flood.take() {
                    task.await.unwrap();
                }
                for ((kind, peer), n) in service.accepted() {
                    println!("ACCEPTED {kind} {peer} {n}");
                }
                println!("STATS {}", stats_line(&server, &service));
                println!("SHUTDOWN ms={}", took.as_millis());
                return;
            }
            _ => panic!("unknown command {cmd:?}"),
        }
    }
    server.shutdown().await;
}

/// Counters of a server, as the child reported them.
#[derive(Debug, Clone)]
pub struct Stats(pub HashMap<String, u64>);

impl Stats {
    fn parse(line: &str) -> Stats {
        Stats(
            line.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
                .collect(),
        )
    }

    /// A counter; 0 when absent.
    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }
}

/// A server running in a child process.
pub struct ChildServer {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    out: Lines<BufReader<ChildStdout>>,
    pub addrs: Addrs,
}

impl ChildServer {
    /// Runs this test binary's `reliability_child` test in a child process
    /// with `settings` (see [`config_from`]), under `ulimit -n fd_limit`
    /// when given.
    pub async fn start(settings: &str, fd_limit: Option<u64>) -> ChildServer {
        let exe = std::env::current_exe().unwrap();
        let ulimit = fd_limit.map_or(String::new(), |n| format!("ulimit -n {n} && "));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{ulimit}exec \"$0\" --exact reliability_child --ignored --nocapture --test-threads=1"
            ))
            .arg(&exe)
            .env(CHILD_ENV, settings)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let stdin = child.stdin.take();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = read_tagged(&mut out, "READY ").await;
        ChildServer {
            addrs: Addrs::parse(&ready),
            child,
            pid,
            stdin,
            out,
        }
    }

    async fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("child stdin");
        stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// The child's counters now.
    pub async fn stats(&mut self) -> Stats {
        self.send("stats").await;
        Stats::parse(&read_tagged(&mut self.out, "STATS ").await)
    }

    /// Polls the counters until `cond` holds (bounded by `LIMIT`).
    pub async fn stats_until<F: Fn(&Stats) -> bool>(&mut self, what: &str, cond: F) -> Stats {
        let deadline = Instant::now() + LIMIT;
        loop {
            let stats = self.stats().await;
            if cond(&stats) {
                return stats;
            }
            if Instant::now() >= deadline {
                self.send("live").await;
                let live = read_tagged(&mut self.out, "LIVE ").await;
                panic!("timed out: {what}: {stats:?}; open: [{live}]");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the flood publisher (see [`Service::flood`]).
    pub async fn flood(&mut self, keep_below: usize) {
        self.send(&format!("flood {keep_below}")).await;
        read_tagged(&mut self.out, "FLOODING").await;
    }

    /// A line of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn proc_kib(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} in /proc/{}/status", self.pid))
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_kib("VmRSS")
    }

    /// Peak resident memory so far, in KiB.
    pub fn peak_kib(&self) -> u64 {
        self.proc_kib("VmHWM")
    }

    /// Calls `shutdown` in the child and waits for the process to exit.
    /// Returns what `send` accepted per peer, the final counters, how long
    /// `shutdown()` took inside the child and how long until the process
    /// was gone.
    pub async fn shutdown(mut self) -> Shutdown {
        let started = Instant::now();
        self.send("shutdown").await;
        let mut accepted = HashMap::new();
        let mut stats = None;
        let in_child = within("shutdown report", async {
            loop {
                let line = self
                    .out
                    .next_line()
                    .await
                    .unwrap()
                    .expect("shutdown report");
                if let Some((_, rest)) = line.split_once("ACCEPTED ") {
                    let mut parts = rest.split_whitespace();
                    let (kind, peer, n) = (
                        parts.next().unwrap().to_owned(),
                        parts.next().unwrap().parse::<SocketAddr>().unwrap(),
                        parts.next().unwrap().parse::<u64>().unwrap(),
                    );
                    accepted.insert((kind, peer), n);
                } else if let Some((_, rest)) = line.split_once("STATS ") {
                    stats = Some(Stats::parse(rest));
                } else if let Some((_, rest)) = line.split_once("SHUTDOWN ms=") {
                    return Duration::from_millis(rest.trim().parse().unwrap());
                }
            }
        })
        .await;
        drop(self.stdin.take());
        let status = within("child exit", self.child.wait()).await.unwrap();
        assert!(status.success(), "child failed: {status}");
        Shutdown {
            accepted,
            stats: stats.expect("final stats"),
            in_child,
            until_exit: started.elapsed(),
        }
    }
}

/// What a child reported when it shut down.
#[derive(Debug)]
pub struct Shutdown {
    /// By transport kind (`"ws"`, `"tcp"`) and peer address.
    pub accepted: HashMap<(String, SocketAddr), u64>,
    pub stats: Stats,
    pub in_child: Duration,
    pub until_exit: Duration,
}

/// Prints a figure for docs/reliability.md (visible with `--nocapture`).
pub fn figure(test: &str, text: impl std::fmt::Display) {
    println!("FIGURE {test}: {text}");
}
