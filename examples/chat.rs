//! A chat room: every message a client sends goes to every other connected
//! client (not back to the sender), as text lines.
//!
//! ```sh
//! cargo run --release --example chat            # open http://127.0.0.1:8080/ in two tabs
//! nc 127.0.0.1 9000                              # and chat from a terminal in the same room
//! cargo run --release --example chat -- --ws 127.0.0.1:8081 --tcp 127.0.0.1:9001
//!
//! # two nodes, one room (each message exactly once on both), through Redis:
//! cargo run --release --example chat -- --redis redis://127.0.0.1:6379
//! cargo run --release --example chat -- --redis redis://127.0.0.1:6379 \
//!     --ws 127.0.0.1:8081 --tcp 127.0.0.1:9001
//!
//! # permessage-deflate for browsers that offer it (all do):
//! cargo run --release --example chat -- --deflate
//!
//! # https/wss and TLS lines (feature `tls`, on by default):
//! cargo run --release --example chat -- --tls-cert cert.pem --tls-key key.pem
//! ```
//!
//! Flags: `--ws ADDR` (default 127.0.0.1:8080) and `--tcp ADDR` (newline-
//! delimited lines, default 127.0.0.1:9000; `--tcp off` disables it). Browser
//! users and `nc` users share one room: one component serves both listeners.
//! `--redis URL` (feature `redis`) makes this process one node of a cluster:
//! the room spans every chat process on that Redis (see `docs/scaling.md`).
//! `--tls-cert FILE --tls-key FILE` (PEM) serve both listeners over TLS:
//! https/wss for browsers, TLS lines for `examples/client.rs`. `--deflate`
//! accepts permessage-deflate (`Deflate::new()`: each relayed message is
//! compressed once for all the browsers that agreed to it).
//!
//! The page (`examples/chat.html`) is served at `/` on the same port as the
//! socket (`/chat`), so both share one origin and the default origin policy
//! applies. Ctrl-C stops the server cleanly.
//!
//! An `nc` user who only reads stays in the room while messages reach it:
//! raw TCP has no pings, so the idle timeout (90 s by default) counts what
//! the server writes to a TCP peer as well as what it reads. Only a
//! connection with no traffic either way for 90 s is closed (a browser
//! answers pings, so it stays). An `nc` that vanished without closing (its
//! machine gone, the network cut) is found by TCP keepalive within about
//! 60 s of its last traffic (`Config::tcp_keepalive`).
//!
//! # What is relayed
//!
//! A message is relayed as lines, the same for browsers and terminals, so
//! that no one can make a terminal show a line they did not write:
//!
//! - a text message with line breaks (`\n`, `\r\n`) is split, and each of
//!   its lines is relayed as its own message, in order, with nothing added
//!   (the chat has no name prefix); a message relays at most
//!   [`MAX_LINES`] lines, and the sender is told when the rest was left out;
//! - terminal control characters are removed first, for everyone: C0 except
//!   tab (so `ESC ]0;…BEL` and `ESC [2J` lose their `ESC` and `BEL` and
//!   arrive as plain text), DEL, and C1 (U+0080 to U+009F);
//! - a binary message (browsers can send one; `nc` cannot) closes the
//!   sender with 1003 (unsupported data): a chat of text lines has nothing
//!   to show for it.
//!
//! # Limits
//!
//! [`config`] sets them, and the chat prints them at start-up:
//!
//! - each connection may send [`RATE`] messages a second, in bursts of up
//!   to [`BURST`]; what it sends past that is dropped before it reaches
//!   the room (`RateLimitAction::Drop`, counted in `rate_limited`), so a
//!   client that floods the room floods only itself, not its readers. A
//!   person pasting many lines loses the lines past the burst rather than
//!   the connection, and a flooder has no reason to reconnect;
//! - a message is at most [`MAX_MESSAGE`] bytes (16 KiB; 1009 past it);
//! - each reader's outbound queue keeps the library's defaults (1,024
//!   messages, 2 MiB). A full burst of the largest messages split into the
//!   most lines is `BURST × MAX_LINES` = 800 messages and `BURST ×
//!   MAX_MESSAGE` = 800 KiB: within one reader's queue even if that reader
//!   reads nothing meanwhile. Sustained, a sender adds at most 10 × 16 KiB
//!   = 160 KiB/s to each reader. So readers that keep up with that are never
//!   closed as slow consumers because of someone else's flood.
//!
//! The limit is per connection: a client that connects again and again
//! gets a new burst each time. `docs/reliability.md` says more.

use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpStream;

use switchboard::tcp::TcpTransport;
use switchboard::transport::Transport;
use switchboard::ws::{Deflate, Page, WsTransport};
use switchboard::{
    BoxError, Broker, CloseCode, Config, Connection, Hub, Message, MessageComponent, RateLimit,
    RateLimitAction, Server, ServerBuilder,
};

/// mimalloc hands freed memory back to the system (a second or so after
/// the free, as the server goes on working), where glibc's malloc keeps
/// what a burst of large buffers freed: see "Memory after an attack" in
/// docs/reliability.md. The library sets no allocator; a binary does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Messages a second each connection may send, sustained.
const RATE: f64 = 10.0;
/// Messages a connection may send at once.
const BURST: u32 = 50;
/// The largest message, in bytes.
const MAX_MESSAGE: usize = 16 * 1024;
/// The most lines one message is relayed as.
const MAX_LINES: usize = 16;

/// The chat's limits (see the module docs).
fn config() -> Config {
    Config::default()
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .rate_limit(Some(
            RateLimit::new(RATE, BURST).action(RateLimitAction::Drop),
        ))
}

/// The room: one component for every connection, whatever the transport.
#[derive(Default)]
struct Chat {
    hub: Hub,
}

/// Whether `c` is a terminal control character: C0 except tab, DEL, C1.
fn is_control(c: char) -> bool {
    c != '\t' && c.is_control()
}

/// The lines of `text` to relay, control characters removed: at most
/// `MAX_LINES`, and whether some were left out. An empty message is one
/// empty line.
fn lines_to_relay(text: &str) -> (Vec<String>, bool) {
    let mut lines = text
        .lines()
        .map(|line| line.chars().filter(|c| !is_control(*c)).collect());
    let mut out: Vec<String> = lines.by_ref().take(MAX_LINES).collect();
    if out.is_empty() {
        out.push(String::new());
    }
    (out, lines.next().is_some())
}

impl MessageComponent for Chat {
    async fn on_open(&self, conn: &Connection) -> Result<(), BoxError> {
        self.hub.join(conn);
        tracing::info!(conn = %conn.id(), peer = %conn.peer_addr(), "joined");
        Ok(())
    }

    async fn on_message(&self, conn: &Connection, msg: Message) -> Result<(), BoxError> {
        let Some(text) = msg.as_text() else {
            conn.close_with(CloseCode::UNSUPPORTED, "binary messages are not supported");
            return Ok(());
        };
        let (lines, cut) = lines_to_relay(text);
        for line in lines {
            // An error means only that other nodes missed it (Redis down):
            // the local members got it, so log rather than close the sender.
            // Each line is one line: no member refuses it.
            if let Err(err) = self.hub.broadcast_except(line, conn.id()).await {
                tracing::warn!(%err, "not delivered to other nodes");
            }
        }
        if cut {
            // Full queue or closing: the sender's problem, not an error.
            let _ = conn.send(format!(
                "* only the first {MAX_LINES} lines of a message are relayed"
            ));
        }
        Ok(())
    }
}

struct Args {
    ws: String,
    /// `None` with `--tcp off`.
    tcp: Option<String>,
    /// `--redis URL`: scale out through Redis; alone without it.
    redis: Option<String>,
    /// `--tls-cert FILE` and `--tls-key FILE`: serve over TLS.
    tls_cert: Option<String>,
    tls_key: Option<String>,
    /// `--deflate`: accept permessage-deflate.
    deflate: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        ws: "127.0.0.1:8080".into(),
        tcp: Some("127.0.0.1:9000".into()),
        redis: None,
        tls_cert: None,
        tls_key: None,
        deflate: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ws" => args.ws = value()?,
            "--tcp" => args.tcp = Some(value()?).filter(|v| v != "off"),
            "--redis" => args.redis = Some(value()?),
            "--tls-cert" => args.tls_cert = Some(value()?),
            "--tls-key" => args.tls_key = Some(value()?),
            "--deflate" => args.deflate = true,
            "-h" | "--help" => {
                return Err("usage: chat [--ws ADDR] [--tcp ADDR|off] [--redis URL] [--tls-cert FILE --tls-key FILE] [--deflate]".into());
            }
            other => return Err(format!("unknown flag {other}; try --help")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chat: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    // Shared, so further listeners (another transport) join the same room.
    let hub = Hub::with_broker(broker(args.redis.as_deref()).await?);
    let chat = Arc::new(Chat { hub });
    let mut ws = WsTransport::builder()
        .route("/chat", chat.clone())
        .page("/", Page::html(include_str!("chat.html")));
    if args.deflate {
        ws = ws.deflate(Deflate::new());
    }
    let ws = ws.build()?;
    let tls = server_tls(args.tls_cert.as_deref(), args.tls_key.as_deref())?;
    let config = config();
    let mut builder = bind(
        Server::builder().config(config.clone()),
        args.ws,
        ws,
        tls.as_ref(),
    );
    if let Some(tcp) = args.tcp {
        let lines = TcpTransport::lines(chat);
        builder = bind(builder, tcp, lines, tls.as_ref());
    }
    let server = builder.start().await?;
    let ws_addr = server.local_addrs()[0];
    let (http, ws) = if tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    println!("chat: open {http}://{ws_addr}/ in two browser tabs (socket: {ws}://{ws_addr}/chat)");
    if let (Some(tcp), Some(_)) = (server.local_addrs().get(1), &tls) {
        println!("chat: or from a terminal: cargo run --example client -- tls://{tcp} --ca CERT");
    } else if let Some(tcp) = server.local_addrs().get(1) {
        println!(
            "chat: or join from a terminal: nc {} {}",
            tcp.ip(),
            tcp.port()
        );
    }
    // One line the tests read: the bounds their checks are derived from.
    println!(
        "chat: limits: rate={RATE}/s burst={BURST} max_message={} queue_messages={} queue_bytes={}",
        config.max_message_size, config.queue_max_messages, config.queue_max_bytes
    );
    println!("press Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    println!("chat: shutting down");
    server.shutdown().await;
    Ok(())
}

/// Redis when a URL is given, the in-process broker otherwise.
#[cfg(feature = "redis")]
async fn broker(url: Option<&str>) -> Result<Arc<dyn Broker>, BoxError> {
    use switchboard::redis::{RedisOptions, broker_from_url};
    Ok(broker_from_url(url, RedisOptions::default()).await?)
}

#[cfg(not(feature = "redis"))]
async fn broker(url: Option<&str>) -> Result<Arc<dyn Broker>, BoxError> {
    match url {
        None => Ok(Arc::new(switchboard::LocalBroker)),
        Some(_) => Err("--redis needs the `redis` feature, which is on by default: build without --no-default-features".into()),
    }
}

#[cfg(feature = "tls")]
type Tls = switchboard::tls::ServerTls;
#[cfg(not(feature = "tls"))]
type Tls = std::convert::Infallible;

/// The certificate and key of `--tls-cert` and `--tls-key`, if given.
#[cfg(feature = "tls")]
fn server_tls(cert: Option<&str>, key: Option<&str>) -> Result<Option<Tls>, BoxError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(Tls::from_pem_files(cert, key)?)),
        (None, None) => Ok(None),
        _ => Err("--tls-cert and --tls-key go together".into()),
    }
}

#[cfg(not(feature = "tls"))]
fn server_tls(cert: Option<&str>, key: Option<&str>) -> Result<Option<Tls>, BoxError> {
    match (cert, key) {
        (None, None) => Ok(None),
        _ => Err("--tls-cert needs the `tls` feature, which is on by default".into()),
    }
}

/// Binds `transport` on `addr`, inside TLS when a certificate was given.
#[cfg(feature = "tls")]
fn bind<T>(builder: ServerBuilder, addr: String, transport: T, tls: Option<&Tls>) -> ServerBuilder
where
    T: Transport<TcpStream> + Transport<switchboard::tls::ServerTlsStream<TcpStream>>,
{
    match tls {
        Some(tls) => builder.bind(
            addr,
            switchboard::tls::TlsTransport::new(tls.clone(), transport),
        ),
        None => builder.bind(addr, transport),
    }
}

#[cfg(not(feature = "tls"))]
fn bind<T>(builder: ServerBuilder, addr: String, transport: T, tls: Option<&Tls>) -> ServerBuilder
where
    T: Transport<TcpStream>,
{
    match tls {
        Some(never) => match *never {},
        None => builder.bind(addr, transport),
    }
}
